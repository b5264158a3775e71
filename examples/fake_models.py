"""Model factories for ``bench eval --model-factory``: an honest model and two that fake
robustness, each the plain Fashion-MNIST cnn (load the quick benchmark's standard checkpoint into
it with ``--weights``). The fakes change the forward pass by hooks, so the weights' names are the
cnn's own. Used by the README's example of a flagged leaderboard row:

    bench eval --model-factory examples/fake_models.py:saturated --dataset fashion-mnist \
        --weights checkpoints/quick/quick-standard/weights.safetensors --attack fgsm,pgd,autoattack
"""

from __future__ import annotations

import torch
from torch import nn

from bench.data import dataset_info
from bench.models import create_model


def honest() -> nn.Module:
    """The plain cnn for Fashion-MNIST."""
    info = dataset_info("fashion-mnist")
    return create_model(
        "cnn",
        channels=info.channels,
        num_classes=info.num_classes,
        image_size=info.image_size,
        mean=info.mean,
        std=info.std,
    )


def saturated() -> nn.Module:
    """Logits scaled by 1e4: softmax saturates and cross-entropy gradients vanish."""
    model = honest()
    model.register_forward_hook(lambda module, inputs, out: 1e4 * out)
    return model


def quantized() -> nn.Module:
    """Inputs rounded to 4 grey levels first: non-differentiable preprocessing, zero gradients."""
    model = honest()
    model.register_forward_pre_hook(lambda module, inputs: (torch.round(inputs[0] * 3) / 3,))
    return model
