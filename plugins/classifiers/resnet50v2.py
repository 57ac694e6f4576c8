"""ResNet50V2: the pre-activation ResNet-50 (He et al. 2016, "Identity Mappings in Deep
Residual Networks"), laid out like Keras' ``ResNet50V2``, as seed paper 000 uses it.

Layout (Keras ``resnet_v2``):

* stem: 7x7 stride-2 conv with bias (no BN: the blocks pre-activate), zero padding 1
  and 3x3 stride-2 max-pool;
* four stacks of bottleneck blocks, [3, 4, 6, 3] blocks of widths 64/128/256/512
  (output 4x width). Each block: BN-ReLU pre-activation, then 1x1 conv - BN - ReLU -
  3x3 conv (stride) - BN - ReLU - 1x1 conv (with bias). The first block of a stack has
  a 1x1 conv shortcut (with bias) on the pre-activation; the others use the identity,
  or a stride-2 1x1 max-pool in the block that downsamples. As in Keras, the stride 2
  sits in the *last* block of stacks 1-3; stack 4 keeps the resolution;
* a final BN-ReLU, then the head: global average pool, Dropout(p=dropout),
  Linear(2048, num_classes) (seed paper 000: GlobalAvgPool -> Dropout(0.17) -> Dense(4)).

BatchNorm uses Keras' epsilon 1.001e-5. The backbone has 23,519,360 trainable
parameters at 3 input channels (Keras reports 23,564,800 without top, which also counts
the 45,440 BN moving means/variances that are buffers here).

Small inputs (image_size < 64): the stem is a 3x3 stride-1 conv without max-pool (the
MedMNIST / CIFAR adaptation used for the torchvision ResNets), so 28 px ends at 4x4.

There are no torchvision weights for this network (Keras' ImageNet weights are not
loadable here): ``pretrained=True`` is refused.
"""

from __future__ import annotations

from torch import nn

from medbench.api import Classifier
from medbench.errors import PluginError
from medbench.hookspecs import hookimpl

from .torchvision_models import SMALL_INPUT, check_build_args

BN_EPS = 1.001e-5
STAGES = ((64, 3, 2), (128, 4, 2), (256, 6, 2), (512, 3, 1))   # width, blocks, stride


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class PreActBottleneck(nn.Module):
    """Keras ``block2``: pre-activated bottleneck, output ``4 * width`` channels."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1,
                 conv_shortcut: bool = False):
        super().__init__()
        out = width * self.expansion
        self.preact = nn.Sequential(_bn(in_channels), nn.ReLU(inplace=True))
        self.conv_shortcut = conv_shortcut
        if conv_shortcut:
            self.shortcut: nn.Module = nn.Conv2d(in_channels, out, 1, stride=stride, bias=True)
        elif stride > 1:
            self.shortcut = nn.MaxPool2d(1, stride=stride)
        else:
            self.shortcut = nn.Identity()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False), _bn(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False), _bn(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out, 1, bias=True),
        )

    def forward(self, x):
        pre = self.preact(x)
        shortcut = self.shortcut(pre if self.conv_shortcut else x)
        return shortcut + self.body(pre)


def _stack(in_channels: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    """Keras ``stack2``: conv-shortcut block, plain blocks, downsampling block last."""
    out = width * PreActBottleneck.expansion
    layers = [PreActBottleneck(in_channels, width, conv_shortcut=True)]
    layers += [PreActBottleneck(out, width) for _ in range(blocks - 2)]
    layers.append(PreActBottleneck(out, width, stride=stride))
    return nn.Sequential(*layers)


class ResNet50V2Net(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, small_input: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        if small_input:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, stride=1, padding=1,
                                                bias=True))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=True),
                nn.ZeroPad2d(1), nn.MaxPool2d(3, stride=2))
        stages, channels = [], 64
        for width, blocks, stride in STAGES:
            stages.append(_stack(channels, width, blocks, stride))
            channels = width * PreActBottleneck.expansion
        self.stages = nn.Sequential(*stages)
        self.post = nn.Sequential(_bn(channels), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Dropout(p=dropout), nn.Linear(channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.head(self.post(self.stages(self.stem(x))))


class ResNet50V2(Classifier):
    name = "resnet50v2"
    description = ("pre-activation ResNet-50 (Keras ResNet50V2 layout; head GAP-Dropout-Dense; "
                   "3x3 stride-1 stem below 64 px)")
    default_training = {"optimizer": "adam", "lr": 1e-3}
    supports_pretrained = False

    def build(self, num_classes, in_channels, image_size, *, pretrained=False, dropout=0.0,
              **params):
        check_build_args(self.name, num_classes, in_channels, image_size, dropout, params)
        num_classes, in_channels, image_size = int(num_classes), int(in_channels), int(image_size)
        if pretrained:
            raise PluginError(f"classifier {self.name!r} has no pretrained weights (torchvision "
                              "ships none for ResNet50V2); set pretrained: false")
        return ResNet50V2Net(num_classes, in_channels, small_input=image_size < SMALL_INPUT,
                             dropout=float(dropout))


@hookimpl
def register_classifiers(register):
    register(ResNet50V2.name, ResNet50V2)
