"""smallcnn: the small CNN of seed paper 001.

Three conv blocks, each Conv2d(3x3, padding 1) + ReLU + MaxPool2d(2), with 32, 64 and
128 channels; then flatten, Dense(hidden=128) + ReLU, Dropout(p=dropout), Dense(classes).

Any input size: the paper flattens the last feature map directly (224 px gives
128 x 28 x 28 = 100,352 features, a 12.8 M-weight dense layer). Here an
``AdaptiveAvgPool2d((grid, grid))`` with ``grid = 3`` sits before the flatten, so the
dense layer always sees 128 x 3 x 3 = 1,152 features: at 28 px the three pools give
28 -> 14 -> 7 -> 3, the pool is then the identity and the network is exactly the
paper's; larger inputs are averaged down to 3x3. ``params: {grid: 28}`` at 224 px
restores the paper's flatten size. Below 8 px a max-pool whose input is already 1 px is
left out, so tiny images still work.

Weights start as in Keras (the paper's framework): Glorot-uniform kernels, zero biases.

Parameters (``params`` in a suite): ``hidden`` (128), ``grid`` (3).
"""

from __future__ import annotations

from torch import nn

from medbench.api import Classifier, Param
from medbench.errors import PluginError
from medbench.hookspecs import hookimpl

from .torchvision_models import check_build_args

CHANNELS = (32, 64, 128)


class SmallCNNNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: int,
                 dropout: float = 0.0, hidden: int = 128, grid: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for width in CHANNELS:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((grid, grid))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * grid * grid, hidden), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(hidden, num_classes))
        for m in self.modules():           # Keras defaults, as in the paper's model
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


class SmallCNN(Classifier):
    name = "smallcnn"
    description = "small 3-block CNN of seed paper 001 (32-64-128 conv, Dense 128, dropout)"
    default_training = {"optimizer": "adam", "lr": 1e-3}
    supports_pretrained = False
    defaults = {"hidden": 128, "grid": 3}
    declared = {"hidden": Param("int", "units of the dense layer", low=1),
                "grid": Param("int", "side of the pooled feature grid before it", low=1)}

    def build(self, num_classes, in_channels, image_size, *, pretrained=False, dropout=0.0,
              **params):
        check_build_args(self.name, num_classes, in_channels, image_size, dropout, params,
                         accepted=self.defaults)
        opts = self.check("classifier", self.name, params)
        num_classes, in_channels, image_size = int(num_classes), int(in_channels), int(image_size)
        if pretrained:
            raise PluginError(f"classifier {self.name!r} has no pretrained weights; "
                              "set pretrained: false")
        return SmallCNNNet(num_classes, in_channels, image_size, dropout=float(dropout),
                           hidden=opts["hidden"], grid=opts["grid"])


@hookimpl
def register_classifiers(register):
    register(SmallCNN.name, SmallCNN)
