from mhtrain.models.cnn import SimpleCNN
from mhtrain.models.module import MultiheadLitModule

__all__ = ["MultiheadLitModule", "SimpleCNN"]
