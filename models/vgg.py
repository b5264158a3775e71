"""VGG-19 with batch norm, in the common CIFAR form (one Linear after global pooling)."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from bench.models.common import Normalize, init_weights

# Conv widths, "M" for a 2x2 max-pool.
VGG19: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, 256, "M",
    512, 512, 512, 512, "M",
    512, 512, 512, 512, "M",
)  # fmt: skip
MIN_IMAGE_SIZE = 1  # max-pools that would shrink the map below 1x1 are skipped, see VGG


class VGG(nn.Module):
    """Conv-BN-ReLU units with 2x2 max-pools, global average pooling, ``Linear(512, classes)``.

    A max-pool is skipped when the map is already smaller than 2x2, so small inputs still work:
    on 28x28 (Fashion-MNIST) the five pools would go 28 -> 14 -> 7 -> 3 -> 1 -> 0, so the fifth
    is left out; on 32x32 all five apply (32 -> 1). The pooling layout is therefore fixed by
    ``image_size`` at construction. Feature layers: the conv units ``features.<i>`` (16 for
    VGG-19), each module's output being the ReLU'd map.
    """

    def __init__(
        self,
        *,
        channels: int,
        num_classes: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        config: Sequence[int | str] = VGG19,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        self.feature_layers: list[str] = []
        in_ch, size = channels, image_size
        for item in config:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            width = int(item)
            self.feature_layers.append(f"features.{len(layers)}")
            layers.append(
                nn.Sequential(
                    # Conv bias kept (redundant before BN) as in the common CIFAR VGG.
                    nn.Conv2d(in_ch, width, 3, padding=1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                )
            )
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool(self.features(self.normalize(x)))
        return self.classifier(out.flatten(1))
