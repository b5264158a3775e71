"""A small CNN: the quick default for CPU runs (Fashion-MNIST trains in minutes on 2 cores)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from bench.models.common import Normalize, init_weights

MIN_IMAGE_SIZE = 4  # two 2x2 max-pools: 4 -> 2 -> 1


class SmallCNN(nn.Module):
    """conv3x3(32) -> pool -> conv3x3(64) -> pool -> fc 128 -> fc classes, ReLU throughout.

    Feature layers: ``features.0`` and ``features.1`` (each conv + pool + ReLU).
    """

    def __init__(
        self,
        *,
        channels: int,
        num_classes: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        widths: tuple[int, int] = (32, 64),
        hidden: int = 128,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        blocks: list[nn.Module] = []
        in_ch, size = channels, image_size
        for width in widths:
            # Max-pool before ReLU: the same function (both are monotone), but the ReLU and its
            # backward run on a map 4x smaller, which matters on a CPU.
            blocks.append(
                nn.Sequential(nn.Conv2d(in_ch, width, 3, padding=1), nn.MaxPool2d(2), nn.ReLU())
            )
            in_ch, size = width, size // 2
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_ch * size * size, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
        self.feature_layers: list[str] = [f"features.{i}" for i in range(len(blocks))]
        init_weights(self)
        # Channels-last conv weights make the convs and max-pools run in NHWC, which nearly
        # doubles CPU training speed (oneDNN); .to(device) and load_state_dict keep the layout.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(self.normalize(x)))
