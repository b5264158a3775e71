"""Weights: the fingerprint that ties every result to the exact tensors it came from.

The fingerprint is a SHA-256 over the state dict's tensors in key order: for each, its name,
dtype, shape and raw bytes (CPU, contiguous). It depends on nothing else, so a checkpoint keeps
its fingerprint whether its weights sit in ``weights.pt`` or in a safetensors file.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import torch
from torch import nn

FINGERPRINT_PREFIX = "sha256:"


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor (CPU, contiguous); dtypes numpy lacks are viewed as integers."""
    t = t.detach().to("cpu").contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    elif t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.numpy().tobytes()


def fingerprint_state(state: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of a state dict: name, dtype, shape and bytes of each tensor, by name.

    Non-tensor entries (rare: extra state) enter by their ``repr``."""
    h = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        h.update(name.encode("utf-8", "surrogatepass") + b"\0")
        if isinstance(value, torch.Tensor):
            h.update(f"{value.dtype}|{tuple(value.shape)}\0".encode())
            h.update(_tensor_bytes(value))
        else:
            h.update(f"object|{value!r}\0".encode())
    return FINGERPRINT_PREFIX + h.hexdigest()


def fingerprint_model(model: nn.Module) -> str:
    """The fingerprint of a model's ``state_dict`` (parameters and buffers)."""
    return fingerprint_state(model.state_dict())


def short(fingerprint: str, length: int = 12) -> str:
    """The first ``length`` hex digits, for tables."""
    return fingerprint.removeprefix(FINGERPRINT_PREFIX)[:length]
