from mhtrain.data.datamodule import MNISTDataModule
from mhtrain.data.heads import Head, parse_heads

__all__ = ["Head", "MNISTDataModule", "parse_heads"]
