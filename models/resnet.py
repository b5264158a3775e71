"""CIFAR-style ResNet-18 and pre-activation ResNet-18.

Both use a 3x3 stride-1 stem and no max-pool (the CIFAR form of He et al.), four stages of two
basic blocks with widths 64-128-256-512 and strides 1-2-2-2, then global average pooling and a
Linear head. Parameter names follow the usual CIFAR code (kuangliu/pytorch-cifar; Wong et al.'s
``PreActResNet18``), so their checkpoints map over by adding our ``normalize`` buffers.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from bench.models.common import Normalize, init_weights

# Three stride-2 stages: 8 is the smallest input that every stage still halves (8 -> 4 -> 2 -> 1).
# Smaller inputs would run, but later stages would "downsample" a 1x1 map.
MIN_IMAGE_SIZE = 8
STAGES: tuple[tuple[int, int], ...] = ((64, 1), (128, 2), (256, 2), (512, 2))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus shortcut (1x1 conv + BN when the shape changes), then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv plus shortcut (He et al. 2016, "Identity Mappings")."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        # The projection shortcut takes the pre-activated input, the identity one the raw input.
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class _ResNet18Base(nn.Module):
    """Stem, four stages of two blocks, pooling and head; subclasses pick the block type."""

    preact: bool = False

    def __init__(
        self,
        *,
        channels: int,
        num_classes: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        del image_size  # global average pooling adapts to any size >= MIN_IMAGE_SIZE
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        if not self.preact:
            self.bn1 = nn.BatchNorm2d(64)
        block = PreActBlock if self.preact else BasicBlock
        self.feature_layers: list[str] = []
        in_planes = 64
        for i, (planes, stride) in enumerate(STAGES, start=1):
            blocks = [block(in_planes, planes, stride), block(planes, planes, 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            self.feature_layers += [f"layer{i}.{j}" for j in range(len(blocks))]
            in_planes = planes
        if self.preact:
            # Pre-activation blocks end un-activated: one more BN-ReLU before pooling.
            self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.normalize(x))
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.preact:
            out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class ResNet18(_ResNet18Base):
    """CIFAR ResNet-18 (post-activation basic blocks), ~11.2M parameters on CIFAR-10."""

    preact = False


class PreActResNet18(_ResNet18Base):
    """Pre-activation ResNet-18 as in Wong et al. 2020 and Rice et al. 2020."""

    preact = True
