from mhtrain.models.cnn import SimpleCNN
from mhtrain.models.module import MultiheadLitModule, check_loss_weights, metric_names

__all__ = ["MultiheadLitModule", "SimpleCNN", "check_loss_weights", "metric_names"]
