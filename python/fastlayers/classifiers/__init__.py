"""cs231n's classifiers: TwoLayerNet and FullyConnectedNet (fc_net), ThreeLayerConvNet (cnn)."""

from .cnn import ThreeLayerConvNet
from .fc_net import FullyConnectedNet, TwoLayerNet

__all__ = ["FullyConnectedNet", "ThreeLayerConvNet", "TwoLayerNet"]
