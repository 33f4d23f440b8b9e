"""Strict checkpoint loading from ``.pt`` (weights only) or ``.safetensors``."""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

import torch
import torch.nn as nn


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not match the model.

    ``str(err)`` is one line; ``err.details`` lists every missing / unexpected key and
    shape mismatch.
    """

    def __init__(self, message: str, details: List[str] = ()):
        super().__init__(message)
        self.details = list(details)


def _why_unreadable(exc: Exception) -> str:
    """One line on why a file is not a checkpoint, without PyTorch's advice to load it unsafely
    (``weights_only=False`` would run whatever code the file holds: never suggested here)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines if line.startswith("WeightsUnpickler error")), None)
    if detail is None and lines and "weights_only" not in lines[0] and "Weights only load failed" not in lines[0]:
        detail = lines[0]
    kind = "not a weights-only PyTorch state dict nor a .safetensors file"
    return f"{kind} ({type(exc).__name__}{': ' + detail[:200] if detail else ''})"


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, on the CPU. ``.pt``/``.pth``/``.bin`` are read weights-only."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path} (give the path of model.pt or a .safetensors file)")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {_why_unreadable(exc)}")
    # Training checkpoints often wrap the weights.
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and set(state) == {key} and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state


def compare(model: nn.Module, state: Dict[str, torch.Tensor]) -> Tuple[List[str], List[str], List[str]]:
    """(missing keys, unexpected keys, shape mismatches) of ``state`` against ``model.state_dict()``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    return missing, unexpected, mismatched


def check(model: nn.Module, state: Dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    missing, unexpected, mismatched = compare(model, state)
    if missing or unexpected or mismatched:
        def head(items):
            return ", ".join(items[:3]) + (f", ... ({len(items)} in all)" if len(items) > 3 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({head(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({head(unexpected)})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches ({head(mismatched)})")
        details = [f"missing: {k}" for k in missing] + [f"unexpected: {k}" for k in unexpected] + [f"shape: {m}" for m in mismatched]
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(parts), details)


def load(model: nn.Module, path: str) -> nn.Module:
    """Load ``path`` into ``model`` strictly; raise ``CheckpointError`` naming every difference."""
    state = read_state_dict(path)
    check(model, state, path)
    model.load_state_dict(state, strict=True)
    return model
