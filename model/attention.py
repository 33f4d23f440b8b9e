"""One registry of attention backends, one signature.

Every backend computes ``softmax(q k^T / sqrt(D)) v`` for ``q, k, v`` of shape
``[B, H, N, D]`` and returns ``[B, H, N, D]``. Each says whether it can run for a
device, dtype and head dim, and why not. Adding a backend is adding one entry.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class BackendUnavailable(RuntimeError):
    """The chosen attention backend cannot run here; the message lists what can."""


@dataclass(frozen=True)
class Backend:
    """``fn`` is called per attention; ``context`` is entered once around a whole forward
    (SDPA kernel selection lives there, so per-call cost stays that of plain SDPA)."""

    name: str
    fn: AttnFn
    describe: str
    probe: Callable[[torch.device, torch.dtype, int], Optional[str]]  # None: available, else why not
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def run(self, q, k, v):
        with self.context():
            return self.fn(q, k, v)


def eager(q, k, v):
    """Explicit softmax(QK^T)V, as upstream's non-fused path (scale applied to q first)."""
    q = q * (q.shape[-1] ** -0.5)
    attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
    return attn @ v


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def _flash_attn_fn() -> Optional[AttnFn]:
    """flash-attn's FA3 interface when installed, else FA2 (``flash_attn``)."""
    for mod, name in (("flash_attn_interface", "flash_attn_func"), ("flash_attn", "flash_attn_func")):
        if importlib.util.find_spec(mod) is not None:
            func = getattr(importlib.import_module(mod), name)

            def fn(q, k, v, _func=func):
                out = _func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
                if isinstance(out, tuple):  # FA3 returns (out, lse)
                    out = out[0]
                return out.transpose(1, 2)

            return fn
    return None


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex(q, k, v):
    if q.is_cuda:
        return _compiled_flex()(q, k, v)
    from torch.nn.attention.flex_attention import flex_attention

    # On CPU flex runs unfused (exact, slow); compiling it there costs minutes of C++ builds.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, v)


# ---- availability probes ----------------------------------------------------------------
def _run_probe(fn: AttnFn, device: torch.device, dtype: torch.dtype, head_dim: int, context=contextlib.nullcontext) -> Optional[str]:
    try:
        q = torch.randn(1, 2, 32, head_dim, device=device, dtype=dtype)
        with context(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SDPA explains its refusal in warnings; the exception is the reason
            out = fn(q, q, q)
        if not torch.isfinite(out.float()).all():
            return "probe gave non-finite output"
    except Exception as exc:  # the kernel's own refusal is the reason
        reason = _first_line(exc)
        if "No available kernel" in reason and dtype == torch.float32:
            reason += " (this kernel needs fp16 or bf16)"
        return reason
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {msg}"[:300]


def _probe_by_running(fn: AttnFn, context=contextlib.nullcontext, cuda_only: str = ""):
    def probe(device, dtype, head_dim):
        if cuda_only and device.type != "cuda":
            return f"{cuda_only} runs on CUDA only"
        return _run_probe(fn, device, dtype, head_dim, context)

    return probe


def _probe_flash_attn(device, dtype, head_dim):
    if _flash_attn_fn() is None:
        return "the flash-attn package is not installed (optional extra: pip install flash-attn)"
    if device.type != "cuda":
        return "flash-attn runs on CUDA only"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"flash-attn needs fp16 or bf16, not {dtype}"
    return _run_probe(_flash_attn_fn(), device, dtype, head_dim)


def _probe_flex(device, dtype, head_dim):
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError as exc:
        return _first_line(exc)
    return _run_probe(flex, device, dtype, head_dim)


def _build_registry() -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    entries = [
        Backend("eager", eager, "explicit softmax(QK^T)V in PyTorch ops", _probe_by_running(eager)),
        Backend("sdpa", sdpa, "F.scaled_dot_product_attention, PyTorch picks the kernel", _probe_by_running(sdpa)),
    ]
    for name, kernel, text, cuda_only in (
        ("sdpa_flash", SDPBackend.FLASH_ATTENTION, "SDPA forced to FlashAttention-2 (CPU: its flash kernel)", ""),
        ("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION, "SDPA forced to memory-efficient attention", "SDPA's memory-efficient kernel"),
        ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION, "SDPA forced to cuDNN attention", "SDPA's cuDNN kernel"),
        ("sdpa_math", SDPBackend.MATH, "SDPA forced to the math (reference) kernel", ""),
    ):
        context = functools.partial(sdpa_kernel, kernel)
        entries.append(Backend(name, sdpa, text, _probe_by_running(sdpa, context, cuda_only), context))

    def flash_attn(q, k, v):
        fn = _flash_attn_fn()
        if fn is None:
            raise BackendUnavailable("flash-attn is not installed")
        return fn(q, k, v)

    entries.append(Backend("flash_attn", flash_attn, "Dao-AILab flash-attn (FA3 interface if installed, else FA2)", _probe_flash_attn))
    entries.append(Backend("flex", flex, "torch flex_attention (compiled on CUDA)", _probe_flex))
    return {b.name: b for b in entries}


BACKENDS = _build_registry()


@functools.lru_cache(maxsize=None)
def why_unavailable(name: str, device: str, dtype: torch.dtype, head_dim: int) -> Optional[str]:
    """None if backend ``name`` runs for this device, dtype and head dim; else the reason."""
    if name not in BACKENDS:
        return f"unknown attention backend {name!r}"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available"
    return BACKENDS[name].probe(dev, dtype, head_dim)


def available(device, dtype: torch.dtype, head_dim: int) -> dict:
    """``{name: None or reason}`` for every backend."""
    return {name: why_unavailable(name, str(device), dtype, head_dim) for name in BACKENDS}


def get(name: str, device=None, dtype: Optional[torch.dtype] = None, head_dim: Optional[int] = None) -> Backend:
    """The backend; with device/dtype/head_dim given, refuse one that cannot run there."""
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown attention backend {name!r}; choose one of {list(BACKENDS)}")
    if device is not None and dtype is not None and head_dim is not None:
        reason = why_unavailable(name, str(device), dtype, head_dim)
        if reason is not None:
            ok = [n for n, r in available(device, dtype, head_dim).items() if r is None]
            raise BackendUnavailable(
                f"attention backend {name!r} is unavailable on {device} for {str(dtype).replace('torch.', '')} "
                f"head_dim {head_dim} ({reason}); available here: {', '.join(ok)}"
            )
    return BACKENDS[name]

