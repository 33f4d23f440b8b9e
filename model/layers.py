"""Transformer building blocks shared by the aggregator, the DINOv2 encoder and the camera head.

Shapes: tokens ``[B, N, C]``; per-head tensors ``[B, H, N, D]`` with ``D = C / H``.
Parameter names follow upstream so the official checkpoint loads strictly.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .nvtx import OFF, Ranges


def row_chunks(n: int, step: int) -> Iterator[slice]:
    """Slices covering ``range(n)`` in steps of ``step`` rows (one slice when ``step`` is 0 or >= n)."""
    if step <= 0 or step >= n:
        yield slice(0, n)
        return
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def attention_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype an attention kernel receives ``t`` in: autocast's dtype where autocast is on for
    ``t``'s device (SDPA is on its lower-precision list), else ``t``'s own."""
    kind = t.device.type
    if torch.is_autocast_enabled(kind) and t.dtype == torch.float32:
        return torch.get_autocast_dtype(kind)
    return t.dtype


def linear_rows(linear: nn.Linear, x: torch.Tensor, rows: slice) -> torch.Tensor:
    """``linear(x)`` for the output features ``rows`` only (the Q, or the K and V, of a QKV projection),
    without computing the others. A linear layer with its own ``forward_rows`` (FP8) computes it."""
    own = getattr(linear, "forward_rows", None)
    if own is not None:
        return own(x, rows)
    bias = linear.bias
    return F.linear(x, linear.weight[rows], None if bias is None else bias[rows])


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))``; GELU is the exact (erf) one, as upstream."""

    def __init__(self, in_features: int, hidden_features: Optional[int] = None, out_features: Optional[int] = None, bias: bool = True):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))

    def forward_inplace_act(self, x):
        """The same, with GELU applied in place on fc1's output (no second hidden-size tensor): the
        lean memory plan's MLP. The same kernel, so the same bits."""
        h = self.fc1(x)
        if isinstance(self.act, nn.GELU) and self.act.approximate == "none":
            return self.fc2(torch.ops.aten.gelu_(h))
        return self.fc2(self.act(h))


class Rope2D:
    """2D rotary position tables for one frame's token grid, shared by every layer.

    The first half of each head is rotated by the token's row, the second half by its
    column, each by rotate-half with ``inv_freq = base^(-2k/(D/2))``. ``cos``/``sin`` are
    ``[P, 1, D]`` for the ``P`` tokens of one frame (broadcast over heads); the sign of
    rotate-half is folded into ``sin``. A sequence of ``N = S * P`` tokens (global
    attention) reuses the same tables frame by frame, as upstream gives every frame the
    same positions.
    """

    def __init__(self, positions: torch.Tensor, head_dim: int, base: float, max_position: int):
        # positions: [P, 2] integer (row, col), all < max_position (known on the host: no sync)
        device = positions.device
        quarter, half = head_dim // 4, head_dim // 2
        exponents = torch.arange(0, half, 2, device=device).float() / half
        inv_freq = 1.0 / (base**exponents)  # [D/4]
        angles = torch.outer(torch.arange(max_position, device=device, dtype=inv_freq.dtype), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)  # [max_position, D/2]
        cos_t, sin_t = angles.cos(), angles.sin()
        rows, cols = positions[:, 0], positions[:, 1]
        sign = torch.ones(head_dim, device=device)
        sign[:quarter] = -1
        sign[half : half + quarter] = -1
        self.cos = torch.cat((cos_t[rows], cos_t[cols]), dim=-1).unsqueeze(1)  # [P, 1, D]
        self.sin = (torch.cat((sin_t[rows], sin_t[cols]), dim=-1) * sign).unsqueeze(1)
        self.tokens_per_frame = positions.shape[0]
        self._by_dtype = {}

    def _tables(self, dtype):
        if dtype not in self._by_dtype:
            self._by_dtype[dtype] = (self.cos.to(dtype), self.sin.to(dtype))
        return self._by_dtype[dtype]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` of shape ``[B, N, H, D]``, ``N`` a multiple of the frame's token count."""
        B, N, H, D = x.shape
        cos, sin = self._tables(x.dtype)
        xf = x.unflatten(1, (N // self.tokens_per_frame, self.tokens_per_frame))  # [B, S, P, H, D]
        # rotate-half within each half of D: quarters (a, b, c, e) -> (b, a, e, c); signs are in sin
        swapped = xf.unflatten(-1, (2, 2, D // 4)).flip(-2).flatten(-3)
        return (xf * cos + swapped * sin).flatten(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with optional qk-norm and 2D RoPE.

    ``forward(x [B, N, C]) -> [B, N, C]``; the kernel is the ``attend`` function given
    (see ``model.attention``).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True, qk_norm: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x, attend, rope: Optional[Rope2D] = None):
        B, N, C = x.shape
        # Norm and RoPE work token-major ([B, N, H, D]); the kernel gets [B, H, N, D] views of
        # that memory, and its output comes back token-major, so no transpose copies are made.
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).unbind(2)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope.apply(q), rope.apply(k)
        x = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1 x))``, then ``x + ls2(mlp(norm2 x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        init_values: Optional[float] = None,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x, attend=None, rope: Optional[Rope2D] = None, ranges: Ranges = OFF, mode: str = "return",
                rows: int = 0, attended: Optional[torch.Tensor] = None):
        """``x [B, N, C]`` -> the block's output, computed one of three ways (the same function):

        ``return`` (upstream's way): a new tensor; ``x`` is left as it was.
        ``inplace``: the output is written into ``x`` (residual adds in place), no copy of the stream.
        ``chunked``: in place, and every per-token step runs over chunks of ``rows`` tokens: keys and
            values of all N tokens first (pass 1, in the dtype the attention kernel receives them in),
            then per chunk its queries, attention, projection and MLP (pass 2). Only K and V are ever
            whole; ``rows`` must be a multiple of the RoPE table's tokens per frame.

        Or the block's per-token parts around an attention computed elsewhere (``vggt_model.approximate``),
        through the same call so that ``model.compile`` (which compiles ``forward``) covers them too:
        ``qkv`` / ``q`` / ``kv``: ``(q, k, v)`` / ``q`` / ``(k, v)`` of ``x`` (``project``); ``finish``: ``x`` with the attention
        output ``attended`` added through the projection, then the MLP, in place (``finish``).
        """
        if mode in ("qkv", "q", "kv"):
            return self.project(x, rope, mode)
        if mode == "finish":
            return self.finish(x, attended, ranges)
        if mode == "return":
            with ranges("attention"):
                x = x + self.ls1(self.attn(self.norm1(x), attend, rope))
            with ranges("mlp"):
                x = x + self.ls2(self.mlp(self.norm2(x)))
            return x
        if mode == "inplace":
            with ranges("attention"):
                x.add_(self.ls1(self.attn(self.norm1(x), attend, rope)))
            with ranges("mlp"):
                x.add_(self.ls2(self.mlp.forward_inplace_act(self.norm2(x))))
            return x
        return self._chunked(x, attend, rope, ranges, rows)

    def project(self, x: torch.Tensor, rope: Optional[Rope2D], parts: str = "qkv", normed: bool = False):
        """``parts`` (``qkv``, ``q`` or ``kv``) of ``x [B, n, C]``, each ``[B, n, H, D]`` token-major: norm1 (not
        with ``normed``: ``x`` is norm1's output already), those rows of the QKV projection alone (all of it for
        ``qkv``), qk-norm, RoPE, in the dtype the attention kernel receives. A tuple, or the tensor for ``q``."""
        attn = self.attn
        B, n, C = x.shape
        h = x if normed else self.norm1(x)
        rows = {"qkv": slice(None), "q": slice(0, C), "kv": slice(C, None)}[parts]
        y = attn.qkv(h) if parts == "qkv" else linear_rows(attn.qkv, h, rows)
        made = dict(zip(parts, y.view(B, n, len(parts), attn.num_heads, attn.head_dim).unbind(2)))
        for name, norm in (("q", attn.q_norm), ("k", attn.k_norm)):
            if name in made:
                made[name] = norm(made[name])
                if rope is not None:
                    made[name] = rope.apply(made[name])
        out = tuple(t.to(attention_dtype(t)) for t in made.values())
        return out[0] if parts == "q" else out

    def finish(self, x: torch.Tensor, o: torch.Tensor, ranges: Ranges = OFF) -> torch.Tensor:
        """``x [B, n, C]`` in place: ``x += ls1(proj(o))`` for the attention output ``o [B, n, H, D]``
        (token-major), then ``x += ls2(mlp(norm2 x))``; returns ``x``."""
        B, n, C = x.shape
        with ranges("attention"):
            x.add_(self.ls1(self.attn.proj(o.reshape(B, n, C))))
        with ranges("mlp"):
            x.add_(self.ls2(self.mlp.forward_inplace_act(self.norm2(x))))
        return x

    def _chunked(self, x, attend, rope, ranges, rows):
        attn = self.attn
        B, N, C = x.shape
        H, D = attn.num_heads, attn.head_dim
        k_all = v_all = None
        with ranges("attention"):
            for part in row_chunks(N, rows):
                n = part.stop - part.start
                kv = linear_rows(attn.qkv, self.norm1(x[:, part]), slice(C, None)).view(B, n, 2, H, D)
                k, v = kv.unbind(2)
                k = attn.k_norm(k)
                if rope is not None:
                    k = rope.apply(k)
                if k_all is None:
                    k_all = x.new_empty((B, N, H, D), dtype=attention_dtype(k))
                    v_all = x.new_empty((B, N, H, D), dtype=attention_dtype(v))
                k_all[:, part] = k
                v_all[:, part] = v
                del kv, k, v
        keys, values = k_all.transpose(1, 2), v_all.transpose(1, 2)
        for part in row_chunks(N, rows):
            n = part.stop - part.start
            xc = x[:, part]
            with ranges("attention"):
                q = linear_rows(attn.qkv, self.norm1(xc), slice(0, C)).view(B, n, H, D)
                q = attn.q_norm(q)
                if rope is not None:
                    q = rope.apply(q)
                o = attend(q.transpose(1, 2), keys, values)
                xc.add_(self.ls1(attn.proj(o.transpose(1, 2).reshape(B, n, C))))
                del q, o
            with ranges("mlp"):
                xc.add_(self.ls2(self.mlp.forward_inplace_act(self.norm2(xc))))
        return x
