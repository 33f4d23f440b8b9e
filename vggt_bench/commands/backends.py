"""``python -m vggt_bench backends``: each attention backend, and whether it can run here."""

from __future__ import annotations

import torch

from vggt_model import attention


def main() -> int:
    """One line per backend, per device and dtype: available, or why not."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in (torch.float32, torch.bfloat16):
            print(f"{device} {str(dtype).replace('torch.', '')} head_dim 64:")
            for name, reason in attention.available(device, dtype, 64).items():
                print(f"  {name:<15} {'available' if reason is None else 'unavailable: ' + reason}")
    return 0
