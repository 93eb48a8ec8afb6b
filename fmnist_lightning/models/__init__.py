"""The networks (plain ``nn.Module``s), the training losses, and the LightningModule composed
from them by config."""

from fmnist_lightning.models.classifier import FashionMNISTClassifier
from fmnist_lightning.models.nets import ThreeConvNet, TwoConv5x5Net, TwoConvBNNet, TwoConvNet, VGGBNNet

__all__ = ["FashionMNISTClassifier", "ThreeConvNet", "TwoConv5x5Net", "TwoConvBNNet", "TwoConvNet", "VGGBNNet"]
