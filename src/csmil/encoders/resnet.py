"""ResNet-18 and ResNet-50 (He et al., CVPR 2016), without torchvision.

The same network as ``torchvision.models.resnet18`` / ``resnet50`` with ``weights=None``:
module names (so state dicts are interchangeable), layer order, and the initialisation in the
same order of random draws (so a seed gives the same weights). Embedding a slide needs only
this and torch: importing torchvision costs a job about as long as importing torch itself,
which on a toy slide is most of the job. ``tests/test_simsiam.py`` checks the equivalence
against torchvision.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: The input normalisation of torchvision's ResNets (ImageNet channel statistics).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalize(x: Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    """uint8 (B, 3, P, P) -> float32 (B, 3, P, P), scaled to [0, 1] then mean/std normalised
    per channel (the arithmetic of torchvision's ``normalize``)."""
    x = x.float().div_(255.0)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x.sub_(mean_t).div_(std_t)


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(c_in, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        out += shortcut
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a residual connection (ResNet-50)."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(c_in, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, width * self.expansion)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        out += shortcut
        return self.relu(out)


class ResNet(nn.Module):
    """Stem (7x7/2 convolution, batch norm, ReLU, 3x3/2 max pool), four stages of blocks
    (widths 64, 128, 256, 512; stages 2-4 halve the resolution), global average pool, fc."""

    def __init__(self, block: type[BasicBlock | Bottleneck], depths: tuple[int, int, int, int]):
        super().__init__()
        self._channels = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._stage(block, 64, depths[0], stride=1)
        self.layer2 = self._stage(block, 128, depths[1], stride=2)
        self.layer3 = self._stage(block, 256, depths[2], stride=2)
        self.layer4 = self._stage(block, 512, depths[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, 1000)
        for m in self.modules():  # He-normal convolutions, unit batch norms
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _stage(self, block, width: int, depth: int, stride: int) -> nn.Sequential:
        c_out = width * block.expansion
        downsample = None
        if stride != 1 or self._channels != c_out:  # created before the block, as torchvision
            downsample = nn.Sequential(
                _conv1x1(self._channels, c_out, stride), nn.BatchNorm2d(c_out)
            )
        blocks = [block(self._channels, width, stride, downsample)]
        self._channels = c_out
        blocks += [block(c_out, width) for _ in range(1, depth)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet18() -> ResNet:
    """ResNet-18, randomly initialised (torchvision's ``resnet18(weights=None)``)."""
    return ResNet(BasicBlock, (2, 2, 2, 2))


def resnet50() -> ResNet:
    """ResNet-50, randomly initialised (torchvision's ``resnet50(weights=None)``)."""
    return ResNet(Bottleneck, (3, 4, 6, 3))


#: Backbone name -> constructor.
RESNETS = {"resnet18": resnet18, "resnet50": resnet50}
