"""Dense (no sparsity) peak FLOP rates of known GPUs, and where each number comes from."""

from __future__ import annotations

import math
from typing import Tuple

# name fragment (lower case) -> {dtype kind: TFLOP/s}, source. First match wins: keep specific names first.
PEAKS = [
    ("h200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}, "NVIDIA H200 datasheet (SXM), dense"),
    ("h100 pcie", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2}, "NVIDIA H100 PCIe datasheet, dense"),
    ("h100", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}, "NVIDIA H100 SXM5 datasheet, dense"),
    ("a100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}, "NVIDIA A100 datasheet, dense"),
    ("a40", {"bf16": 149.7, "fp16": 149.7, "tf32": 74.8, "fp32": 37.4}, "NVIDIA A40 datasheet, dense"),
    ("l40s", {"bf16": 362.1, "fp16": 362.1, "tf32": 183.0, "fp32": 91.6}, "NVIDIA L40S datasheet, dense"),
    ("l4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}, "NVIDIA L4 datasheet, dense"),
    ("rtx 4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6}, "NVIDIA Ada RTX 4090 whitepaper, dense, fp32 accumulate"),
]


def peak_tflops(gpu_name: str, dtype: str, tf32: bool) -> Tuple[float, str]:
    """(peak TFLOP/s, source) for the matrix units at this precision; NaN and a reason if unknown."""
    if not gpu_name:
        return math.nan, "no GPU (CPU peak not tabulated)"
    kind = {"bf16_autocast": "bf16", "bf16": "bf16", "fp16": "fp16"}.get(dtype, "tf32" if tf32 else "fp32")
    name = gpu_name.lower()
    for fragment, peaks, source in PEAKS:
        if fragment in name:
            return peaks[kind], f"{source}, {kind}"
    return math.nan, f"{gpu_name} not in vggt_bench/measure/gpus.py"
