"""One registry of attention backends, one signature.

Every backend computes ``softmax(q k^T / sqrt(D)) v`` for ``q [B, H, Nq, D]`` and
``k, v [B, H, Nk, D]`` and returns ``[B, H, Nq, D]``. Each says whether it can run for a
device, dtype and head dim, and why not. Adding a backend is adding one entry.

``Auto`` is the backend chosen by measurement: at its first call for a shape and dtype it
times every available exact fused kernel on the call's own tensors and keeps the fastest.
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
    auto: bool = False  # a candidate for ``auto``: an exact fused kernel, cheap to try at any shape

    def run(self, q, k, v):
        with self.context():
            return self.fn(q, k, v)

    def label(self) -> str:
        return self.name


def eager(q, k, v):
    """Explicit softmax(QK^T)V, as upstream's non-fused path (scale applied to q first)."""
    q = q * (q.shape[-1] ** -0.5)
    attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
    return attn @ v


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def _kernel_dtype(t: torch.Tensor) -> torch.dtype:
    """What SDPA would compute in: autocast's dtype where autocast is on (SDPA is on its list)."""
    if t.dtype == torch.float32 and torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


def _token_major(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, H, N, D]`` -> ``[B, N, H, D]`` in ``dtype`` with a unit-stride last dim (a view when it can be)."""
    t = t.transpose(1, 2).to(dtype)
    return t if t.stride(-1) == 1 else t.contiguous()


def _flash_attn_fn() -> Optional[AttnFn]:
    """flash-attn's FA3 interface when installed, else FA2 (``flash_attn``). FlashAttention-4 installs
    ``flash_attn.cute`` only, under a ``flash_attn`` namespace without ``flash_attn_func``: not this."""
    for mod, name in (("flash_attn_interface", "flash_attn_func"), ("flash_attn", "flash_attn_func")):
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            func = getattr(importlib.import_module(mod), name, None)
            if func is None:
                continue

            def fn(q, k, v, _func=func):
                dtype = _kernel_dtype(q)
                out = _func(_token_major(q, dtype), _token_major(k, dtype), _token_major(v, dtype))
                if isinstance(out, tuple):  # FA3 returns (out, lse)
                    out = out[0]
                return out.transpose(1, 2)

            return fn
    return None


@functools.lru_cache(maxsize=None)
def _flash_attn4_fn() -> Optional[AttnFn]:
    """FlashAttention-4 (``pip install flash-attn-4``: the CuTe-DSL kernels, ``flash_attn.cute``), or None."""
    try:
        from flash_attn.cute import flash_attn_func
    except Exception:  # not installed, or its CUDA/CuTe stack does not load here
        return None

    def fn(q, k, v):
        dtype = _kernel_dtype(q)  # as SDPA under autocast would receive them
        out = flash_attn_func(_token_major(q, dtype), _token_major(k, dtype), _token_major(v, dtype), causal=False)
        if isinstance(out, tuple):  # (out, lse)
            out = out[0]
        return out.transpose(1, 2)

    return fn


def _fa4_import_error() -> str:
    try:
        import flash_attn.cute  # noqa: F401
    except Exception as exc:
        return _first_line(exc)
    return ""


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


def _probe_flash_attn4(device, dtype, head_dim):
    if _flash_attn4_fn() is None:
        why = _fa4_import_error()
        return ("FlashAttention-4 is not installed (optional extra: pip install flash-attn-4)"
                + (f"; importing flash_attn.cute: {why}" if why and "No module named" not in why else ""))
    if device.type != "cuda":
        return "FlashAttention-4 runs on CUDA only"
    major, _ = torch.cuda.get_device_capability(device)
    if major < 9:
        return f"FlashAttention-4 needs a Hopper or Blackwell GPU (compute capability 9.0+), this one is {major}.x"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"FlashAttention-4 needs fp16 or bf16, not {str(dtype).replace('torch.', '')}"
    if head_dim % 8 or head_dim > 256:
        return f"FlashAttention-4 needs a head dim that is a multiple of 8, at most 256 (got {head_dim})"
    return _run_probe(_flash_attn4_fn(), device, dtype, head_dim)


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
        Backend("sdpa", sdpa, "F.scaled_dot_product_attention, PyTorch picks the kernel", _probe_by_running(sdpa),
                auto=True),
    ]
    for name, kernel, text, cuda_only in (
        ("sdpa_flash", SDPBackend.FLASH_ATTENTION, "SDPA forced to FlashAttention-2 (CPU: its flash kernel)", ""),
        ("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION, "SDPA forced to memory-efficient attention", "SDPA's memory-efficient kernel"),
        ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION, "SDPA forced to cuDNN attention", "SDPA's cuDNN kernel"),
        ("sdpa_math", SDPBackend.MATH, "SDPA forced to the math (reference) kernel", ""),
    ):
        context = functools.partial(sdpa_kernel, kernel)
        entries.append(Backend(name, sdpa, text, _probe_by_running(sdpa, context, cuda_only), context,
                               auto=name != "sdpa_math"))

    def flash_attn(q, k, v):
        fn = _flash_attn_fn()
        if fn is None:
            raise BackendUnavailable("flash-attn is not installed")
        return fn(q, k, v)

    def flash_attn4(q, k, v):
        fn = _flash_attn4_fn()
        if fn is None:
            raise BackendUnavailable("FlashAttention-4 is not installed (pip install flash-attn-4)")
        return fn(q, k, v)

    entries.append(Backend("flash_attn", flash_attn, "Dao-AILab flash-attn (FA3 interface if installed, else FA2)",
                           _probe_flash_attn, auto=True))
    entries.append(Backend("flash_attn4", flash_attn4, "FlashAttention-4 (flash-attn-4, CuTe DSL; Hopper/Blackwell)",
                           _probe_flash_attn4, auto=True))
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



# ---- chosen by measurement ------------------------------------------------------------------------
AUTO = "auto"
AUTO_REPEATS = 3  # timed calls per candidate (after one untimed call) when a shape is first seen


def auto_candidates(device, dtype: torch.dtype, head_dim: int) -> list:
    """The exact fused backends that run here, in registry order."""
    return [b for b in BACKENDS.values() if b.auto and why_unavailable(b.name, str(device), dtype, head_dim) is None]


class Auto:
    """The backend of one call site chosen by measurement.

    At the first call for a (query shape, key shape, dtype) it runs every candidate on the call's
    own tensors (one untimed call, then AUTO_REPEATS timed ones: CUDA events on a GPU, a wall clock
    on the CPU), keeps the fastest median and uses it from then on; a candidate that fails there
    (out of memory, unsupported layout) is skipped with its reason. ``chosen`` and ``timings`` say
    what was picked and why. Called outside torch.compile (a compiled block calls it eagerly).
    """

    name = AUTO

    def __init__(self, site: str, candidates: list):
        if not candidates:
            raise BackendUnavailable(f"attention=auto at the {site} layers: no exact fused backend runs here")
        self.site = site
        self.candidates = list(candidates)
        self.chosen: dict = {}   # key -> Backend
        self.timings: dict = {}  # key -> {backend name: median ms, or the reason it failed}
        self.fn = self.run

    @staticmethod
    def context():
        return contextlib.nullcontext()

    @staticmethod
    def _key(q, k):
        return tuple(q.shape), tuple(k.shape), str(_kernel_dtype(q)).replace("torch.", "")

    @torch._dynamo.disable
    def run(self, q, k, v):
        key = self._key(q, k)
        backend = self.chosen.get(key)
        if backend is None:
            backend = self._choose(key, q, k, v)
        return backend.run(q, k, v)

    __call__ = run

    def _choose(self, key, q, k, v):
        import statistics
        import time

        cuda = q.is_cuda
        results = {}
        for b in self.candidates:
            try:
                b.run(q, k, v)
                times = []
                for _ in range(AUTO_REPEATS):
                    if cuda:
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                        b.run(q, k, v)
                        end.record()
                        end.synchronize()
                        times.append(start.elapsed_time(end))
                    else:
                        t0 = time.perf_counter()
                        b.run(q, k, v)
                        times.append((time.perf_counter() - t0) * 1e3)
                results[b.name] = statistics.median(times)
            except Exception as exc:  # this candidate cannot run this call: the next one may
                results[b.name] = _first_line(exc)
                if cuda:
                    torch.cuda.empty_cache()
        timed = {n: t for n, t in results.items() if isinstance(t, float)}
        if not timed:
            raise BackendUnavailable(f"attention=auto at the {self.site} layers: no candidate ran "
                                     f"({'; '.join(f'{n}: {r}' for n, r in results.items())})")
        best = min(timed, key=timed.get)
        self.timings[key] = results
        self.chosen[key] = next(b for b in self.candidates if b.name == best)
        return self.chosen[key]

    def label(self) -> str:
        names = sorted({b.name for b in self.chosen.values()})
        return f"auto({','.join(names)})" if names else "auto(not run yet)"
