"""FP8 linear layers (``model.linear_precision=fp8``): an approximation of the bf16 model.

Every linear layer of the transformer blocks (patch embed, frame and global layers) multiplies in
float8 e4m3 through ``torch._scaled_mm``: the input with one scale per token (row), the weight with
one per output channel (rowwise scaling, as torchao's float8 inference does), accumulating in fp32
and returning bf16. The weights are quantized once, when the setting is turned on; the bf16 weights
stay (the state dict is unchanged: the layers' class is swapped in place and the e4m3 copy and its
scales are non-persistent buffers), so turning it off restores the bf16 model exactly.

FlashAttention-4 runs FP8 attention on Blackwell only and PyTorch's SDPA has no FP8 path, so
attention stays bf16 here.
"""

from __future__ import annotations

import functools
from typing import Iterable, Optional

import torch
import torch.nn as nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # the largest finite e4m3 value
SMALLEST_SCALE = 1e-12  # an all-zero row quantizes to zeros instead of dividing by zero


def why_unavailable(device, dtype: torch.dtype) -> Optional[str]:
    """None where FP8 linears run for weights of ``dtype`` on ``device``, else the reason (one line)."""
    device = torch.device(device)
    if device.type != "cuda":
        return (f"model.linear_precision=fp8 needs a CUDA GPU with FP8 tensor cores (compute capability 8.9+: "
                f"Ada, Hopper, Blackwell); this is the {device.type.upper()}")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return (f"model.linear_precision=fp8 needs FP8 tensor cores (compute capability 8.9+); this GPU is "
                f"{major}.{minor}")
    if dtype != torch.bfloat16:
        return f"model.linear_precision=fp8 runs on bf16 activations: use model.dtype=bf16 (not {str(dtype)[6:]})"
    if not hasattr(torch, "_scaled_mm"):
        return f"this PyTorch ({torch.__version__}) has no torch._scaled_mm"
    return None


def _quantize(x: torch.Tensor):
    """``x [M, K]`` -> (e4m3 ``[M, K]``, fp32 scale ``[M, 1]``) with ``x ~ e4m3 * scale`` per row."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=SMALLEST_SCALE) / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


@functools.lru_cache(maxsize=None)
def _fused_quantize():
    """``_quantize`` as one fused kernel on the GPU (eager, it is four passes over the activations)."""
    return torch.compile(_quantize, dynamic=True)


class Fp8Linear(nn.Linear):
    """An ``nn.Linear`` computing in FP8 (``to_fp8`` swaps a layer's class in place)."""

    weight_fp8: torch.Tensor    # [out, in] e4m3, row-major: its transpose is the column-major operand
    weight_scale: torch.Tensor  # [out] fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_rows(x, slice(None))

    def forward_rows(self, x: torch.Tensor, rows: slice) -> torch.Tensor:
        """The layer's output features ``rows`` (``layers.linear_rows``)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        xq, x_scale = (_fused_quantize() if flat.is_cuda else _quantize)(flat)
        w, w_scale = self.weight_fp8[rows], self.weight_scale[rows]
        out = torch._scaled_mm(xq, w.t(), scale_a=x_scale, scale_b=w_scale.unsqueeze(0), out_dtype=x.dtype,
                               use_fast_accum=True)
        if self.bias is not None:
            out.add_(self.bias[rows])
        return out.view(*shape[:-1], out.shape[-1])


def linears(model: nn.Module) -> Iterable[nn.Linear]:
    """The linear layers of every transformer block (those ``apply_compile`` compiles)."""
    agg = model.aggregator
    blocks = list(agg.frame_blocks) + list(agg.global_blocks) + list(getattr(agg.patch_embed, "blocks", []))
    for block in blocks:
        for module in block.modules():
            if isinstance(module, nn.Linear):
                yield module


def to_fp8(linear: nn.Linear) -> None:
    """Quantize ``linear``'s weight (one scale per output channel) and make it an ``Fp8Linear``."""
    if isinstance(linear, Fp8Linear):
        return
    w = linear.weight.detach()
    scale = w.abs().amax(dim=1).float().clamp(min=SMALLEST_SCALE) / E4M3_MAX
    linear.register_buffer("weight_fp8", (w.float() / scale[:, None]).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3),
                           persistent=False)
    linear.register_buffer("weight_scale", scale, persistent=False)
    linear.__class__ = Fp8Linear


def to_bf16(linear: nn.Linear) -> None:
    """Undo ``to_fp8``: the plain layer with its own (never changed) weights."""
    if isinstance(linear, Fp8Linear):
        del linear.weight_fp8, linear.weight_scale
        linear.__class__ = nn.Linear


def set_linear_precision(model: nn.Module, precision: str) -> None:
    """``bf16``: every block's linear layer as built; ``fp8``: each in FP8 (quantized once, kept until
    turned off). Availability is checked by the caller (``why_unavailable``)."""
    convert = to_fp8 if precision == "fp8" else to_bf16
    with torch.no_grad():
        for linear in list(linears(model)):
            convert(linear)
