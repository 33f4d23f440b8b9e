"""Attention over part of the keys, with its log-sum-exp, so that parts can be merged exactly.

Softmax attention over a key set that is the union of disjoint parts equals the parts' outputs
weighted by their share of the softmax mass: with ``lse_i`` the log-sum-exp of part ``i``'s
scores, ``out = sum_i exp(lse_i - lse) out_i`` and ``lse = logsumexp_i lse_i`` (what
FlashAttention's split-KV combine does). A uniform additive score bias ``b`` on a part (K/V
subsampling's ``log(count)`` on its mean tokens) only shifts that part's ``lse`` by ``b``.

Two kinds of part, each run by a kernel that returns the log-sum-exp:

``attend``   ``q [F, Lq, H, D]`` against its own ``k, v [F, Lk, H, D]`` (one item per frame).
``windows``  ``q [F, Lq, H, D]``; item ``f`` attends to the contiguous window
             ``pool[starts[f] : starts[f] + length]`` of shared ``k, v`` pools ``[L, H, D]``.
             Windows may overlap, so the keys of every other frame, taken cyclically from a pool
             that holds them twice, are one window per frame: dense work, no mask.

Kernels (``KERNELS``): ``flash_attn4`` (FlashAttention-4's CuTe kernels on Hopper/Blackwell:
``flash_attn_func`` / ``flash_attn_varlen_func`` with ``cu_seqlens_k`` as window starts and
``seqused_k`` as their length, ``return_lse``) and ``eager`` (PyTorch ops, fp32 scores; any device,
for the CPU and for tests). Outputs are token-major ``[F, Lq, H, D]`` in ``q``'s dtype; ``lse`` is
``[F, H, Lq]`` float32, natural log, with the default scale ``1/sqrt(D)``.

Each kernel also runs block-sparse attention (``block_sparse``, for ``model.global_sparsity``), which is
not a part to merge: ``q [B, Lq, H, D]`` against ``k, v [B, Lk, H, D]``, where query block ``m`` (of
``block`` tokens) of batch item ``b`` and head ``h`` attends to the whole key blocks
``indices[b, h, m, :counts[b, h, m]]`` (``counts [B, H, M]``, ``indices [B, H, M, W]`` int32, each list
ascending; ``W`` may be less than the number of key blocks). Keys past ``Lk`` in the last block do not
exist. Returns the output ``[B, Lq, H, D]`` alone. On FlashAttention-4 this is ``flash_attn_func`` with
``block_sparse_tensors`` (every listed block "full": no mask_mod); the eager kernel computes the same
function from the same lists, so CPU tests prove the lists.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Tuple

import torch

EAGER_SCORES = 1 << 26  # scores the eager kernel materialises at a time (fp32): it works in chunks of items


def _eager(q, k, v):
    """Reference attention with its log-sum-exp in fp32: ``q [F, Lq, H, D]``, ``k, v [F, Lk, H, D]``."""
    F, Lq, H, D = q.shape
    out = q.new_empty((F, Lq, H, v.shape[-1]))
    lse = q.new_empty((F, H, Lq), dtype=torch.float32)
    step = max(1, EAGER_SCORES // max(1, Lq * k.shape[1] * H))
    for start in range(0, F, step):
        part = slice(start, min(start + step, F))
        scores = torch.einsum("fqhd,fkhd->fhqk", q[part].float(), k[part].float()) * D ** -0.5
        lse[part] = torch.logsumexp(scores, dim=-1)
        weights = torch.exp(scores - lse[part, ..., None])
        out[part] = torch.einsum("fhqk,fkhd->fqhd", weights, v[part].float()).to(out.dtype)
    return out, lse


def _eager_windows(q, k_pool, v_pool, starts, length):
    index = starts.to(torch.long)[:, None] + torch.arange(length, device=q.device)  # [F, length]
    return _eager(q, k_pool[index], v_pool[index])


def _eager_block_sparse(q, k, v, counts, indices, block: int):
    """Block-sparse reference in fp32 (see the module's docstring): every score computed, the keys outside
    a query block's listed blocks (and past ``Lk``) masked out; a chunk of query blocks at a time. A row
    that sees no key gives zeros."""
    B, Lq, H, D = q.shape
    Lk = k.shape[1]
    M, W = indices.shape[-2:]
    kv_blocks = -(-Lk // block)
    counts = counts.expand(B, H, M)
    indices = indices.expand(B, H, M, W)
    out = q.new_empty((B, Lq, H, v.shape[-1]))
    step = max(1, EAGER_SCORES // max(1, H * block * Lk))  # query blocks per chunk
    listed = torch.arange(W, device=q.device)
    for b in range(B):
        kb, vb = k[b].float(), v[b].float()
        for start in range(0, M, step):
            blocks = slice(start, min(start + step, M))
            rows = slice(blocks.start * block, min(blocks.stop * block, Lq))
            if rows.start >= rows.stop:
                break
            # the listed key blocks of each query block (entries past its count ignored), as a key mask
            chosen = torch.where(listed < counts[b, :, blocks, None], indices[b, :, blocks].long(), kv_blocks)
            seen = torch.zeros(H, chosen.shape[1], kv_blocks + 1, dtype=torch.bool, device=q.device)
            seen.scatter_(-1, chosen, True)
            keys = seen[..., :kv_blocks].repeat_interleave(block, dim=-1)[..., :Lk]  # [H, m, Lk]
            n = rows.stop - rows.start
            visible = keys.repeat_interleave(block, dim=1)[:, :n]  # [H, rows, Lk]
            scores = torch.einsum("qhd,khd->hqk", q[b, rows].float(), kb) * D ** -0.5
            scores.masked_fill_(~visible, float("-inf"))
            del visible
            lse = torch.logsumexp(scores, dim=-1, keepdim=True)
            weights = torch.exp(scores - torch.where(torch.isfinite(lse), lse, 0.0))
            out[b, rows] = torch.einsum("hqk,khd->qhd", weights, vb).to(out.dtype)
            del scores, weights
    return out


@functools.lru_cache(maxsize=None)
def _fa4():
    """FlashAttention-4's entry points, or None when it is not installed or does not load here."""
    try:
        from flash_attn.cute import flash_attn_func, flash_attn_varlen_func
    except Exception:
        return None
    return flash_attn_func, flash_attn_varlen_func


def _fa4_attend(q, k, v):
    out, lse = _fa4()[0](q, k, v, causal=False, return_lse=True)
    return out, lse


def _fa4_block_sparse(q, k, v, counts, indices, block: int):
    # every listed block is "full" (attended whole, no mask_mod), so the partially-masked lists are empty;
    # the kernel takes the lists compact (it reads entries 0..count-1 only) and the tensors token-major.
    # It walks each query tile's list from the last entry down and applies the sequence-length mask to the
    # first block it processes: lists must be ascending, so the partial last key block is that one.
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

    sparse = BlockSparseTensorsTorch(mask_block_cnt=torch.zeros_like(counts),
                                     mask_block_idx=counts.new_zeros(counts.shape + (1,)),
                                     full_block_cnt=counts, full_block_idx=indices, block_size=(block, block))
    out, _ = _fa4()[0](q, k, v, causal=False, block_sparse_tensors=sparse, return_lse=False)
    return out


def _fa4_windows(q, k_pool, v_pool, starts, length):
    # cu_seqlens_k[f] is where item f's keys start in the pool, seqused_k[f] how many it uses: the
    # kernel reads both per item, so windows may overlap (the last entry only completes the shape)
    cu = torch.cat((starts, starts[-1:] + length)).to(torch.int32)
    used = torch.full_like(starts, length, dtype=torch.int32)
    out, lse = _fa4()[1](q, k_pool, v_pool, cu_seqlens_k=cu, seqused_k=used, max_seqlen_k=length,
                         causal=False, return_lse=True)
    return out, lse


class Kernel:
    """One way to run the parts: ``attend(q, k, v)`` and ``windows(q, k_pool, v_pool, starts, length)``,
    each returning ``(out, lse)``; ``why_not(device, dtype, head_dim)`` is None where it runs, else why;
    ``block_sparse(q, k, v, counts, indices, block)`` returns the output alone (None: not offered)."""

    def __init__(self, name: str, attend: Callable, windows: Callable, why_not: Callable,
                 block_sparse: Optional[Callable] = None):
        self.name, self.attend, self.windows, self.why_not = name, attend, windows, why_not
        self.block_sparse = block_sparse


def _fa4_why_not(device, dtype, head_dim) -> Optional[str]:
    from .attention import why_unavailable  # the backend registry's own probe of FlashAttention-4

    if _fa4() is None:
        return "FlashAttention-4 is not installed (pip install flash-attn-4)"
    return why_unavailable("flash_attn4", str(device), dtype, head_dim)


KERNELS = {
    "flash_attn4": Kernel("flash_attn4", _fa4_attend, _fa4_windows, _fa4_why_not, _fa4_block_sparse),
    "eager": Kernel("eager", _eager, _eager_windows, lambda device, dtype, head_dim: None, _eager_block_sparse),
}


def fastest(device, dtype: torch.dtype, head_dim: int) -> Kernel:
    """The fastest kernel that runs here: FlashAttention-4 where it does, else the eager one."""
    if _fa4_why_not(device, dtype, head_dim) is None:
        return KERNELS["flash_attn4"]
    return KERNELS["eager"]


def _union(outs: tuple, lses: tuple) -> torch.Tensor:
    """The merged output in the parts' dtype: fp32 weights ``exp(lse_i - lse)`` and sum."""
    lse = torch.logsumexp(torch.stack(lses), dim=0)  # [F, H, Lq]
    total = None
    for o, part_lse in zip(outs, lses):
        term = o.float() * torch.exp(part_lse - lse).transpose(1, 2).unsqueeze(-1)  # [F, Lq, H, D]
        total = term if total is None else total + term
    return total.to(outs[0].dtype)


@functools.lru_cache(maxsize=None)
def _fused_union():
    """``_union`` as one fused kernel on the GPU (eager, it is a dozen passes with fp32 temporaries)."""
    return torch.compile(_union, dynamic=True)


def merge(parts: Sequence[Tuple[torch.Tensor, torch.Tensor]], out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``parts`` of ``(out [F, Lq, H, D], lse [F, H, Lq])`` over disjoint key sets -> the attention over
    their union ``[F, Lq, H, D]`` in the parts' dtype (written into ``out`` when given), weighed in fp32."""
    if len(parts) == 1:
        merged = parts[0][0]
    else:
        outs, lses = tuple(p[0] for p in parts), tuple(p[1] for p in parts)
        merged = (_fused_union() if outs[0].is_cuda else _union)(outs, lses)
    if out is None:
        return merged
    return out if merged is out else out.copy_(merged)


def shift(part: Tuple[torch.Tensor, torch.Tensor], bias: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """A part whose every score carries ``+bias``: the same output, its log-sum-exp moved by ``bias``."""
    return part[0], part[1] + bias
