"""The networks (plain ``nn.Module``s) and the one LightningModule that trains any of them."""

from fmnist_lightning.models.classifier import FashionMNISTClassifier
from fmnist_lightning.models.nets import ThreeConvNet, TwoConv5x5Net, TwoConvBNNet, TwoConvNet, VGGBNNet

__all__ = ["FashionMNISTClassifier", "ThreeConvNet", "TwoConv5x5Net", "TwoConvBNNet", "TwoConvNet", "VGGBNNet"]
