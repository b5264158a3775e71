"""Model registry: name -> ``factory(*, channels, num_classes, image_size, mean, std)``.

Every model takes pixels in [0, 1] of shape [N, channels, image_size, image_size] and returns
logits [N, num_classes]. Its first submodule, ``normalize``, is a :class:`Normalize`, so the
mean/std are in the state_dict. ``model.feature_layers`` lists, in forward order, the names
(from ``named_modules()``) of the blocks whose output is a [N, C, H, W] feature map that a
feature-space defense may perturb with forward hooks; the classifier head is not among them.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from bench.errors import UsageError
from bench.models import cnn, resnet, vgg, wideresnet
from bench.models.common import Normalize
from bench.registry import Registry

__all__ = ["MODELS", "Normalize", "create_model"]

MODELS: Registry[nn.Module] = Registry("model")

MODELS.add(
    "cnn",
    cnn.SmallCNN,
    "small CNN (conv32-conv64-fc128), the quick default for CPU runs",
    {"widths": "32-64", "hidden": 128, "params": "~0.42M"},
    min_image_size=cnn.MIN_IMAGE_SIZE,
)
MODELS.add(
    "vgg19",
    vgg.VGG,
    "VGG-19 with batch norm, global pooling + one Linear (the BatchOut report's model)",
    {"depth": 19, "params": "~20.0M"},
    min_image_size=vgg.MIN_IMAGE_SIZE,
)
MODELS.add(
    "preact-resnet18",
    resnet.PreActResNet18,
    "pre-activation ResNet-18 (He et al. 2016), as in Wong et al. 2020 / Rice et al. 2020",
    {"depth": 18, "width": 64, "params": "~11.2M"},
    min_image_size=resnet.MIN_IMAGE_SIZE,
)
MODELS.add(
    "resnet18",
    resnet.ResNet18,
    "CIFAR-style ResNet-18 (3x3 stride-1 stem, no max-pool)",
    {"depth": 18, "width": 64, "params": "~11.2M"},
    min_image_size=resnet.MIN_IMAGE_SIZE,
)
MODELS.add(
    "wrn-34-10",
    wideresnet.WideResNet,
    "WideResNet-34-10 as in TRADES / Madry et al. (dropout 0); slow on a CPU",
    {"depth": 34, "width": 10, "params": "~46.2M"},
    min_image_size=wideresnet.MIN_IMAGE_SIZE,
)


def create_model(
    name: str,
    *,
    channels: int,
    num_classes: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    **options: Any,
) -> nn.Module:
    """Build model ``name`` for a data set's shape; a misfit raises UsageError (unknown name:
    UnknownNameError listing the valid ones). ``options`` go to the model's factory (e.g. the
    cnn's ``widths``: ``bench perf --quick``'s narrower cnn)."""
    entry = MODELS[name]
    min_size = int(entry.extra.get("min_image_size", 1))
    problem = ""
    if channels < 1:
        problem = f"needs at least 1 channel, got channels={channels}"
    elif num_classes < 2:
        problem = f"needs at least 2 classes, got num_classes={num_classes}"
    elif image_size < min_size:
        problem = (
            f"needs images of at least {min_size}x{min_size}, "
            f"the data set's are {image_size}x{image_size}"
        )
    elif len(mean) != channels or len(std) != channels:
        problem = f"needs one mean and std per channel ({channels}), got {len(mean)} and {len(std)}"
    elif any(s <= 0 for s in std):
        problem = f"needs positive std, got {list(std)}"
    if problem:
        raise UsageError(f"model {name!r} {problem}")
    return entry.factory(
        channels=channels,
        num_classes=num_classes,
        image_size=image_size,
        mean=mean,
        std=std,
        **options,
    )
