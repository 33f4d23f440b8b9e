"""Approximate global layers: three training-free accelerations from the literature, as knobs.

Each replaces what a global layer's attention computes; the rest of the block (norms, qkv, qk-norm,
RoPE, projection, LayerScale, MLP) is the block's own. With every knob at its exact value the
aggregator never calls this module, so the exact model is untouched (bitwise).

Tokens of the global sequence ``[B, N = S*P, C]``: per frame the camera and register tokens
(``specials = 1 + R``), then its ``rows x cols`` patch tokens in raster order.

``kv_keep`` (AVGGT, Sun et al., arXiv 2512.02541): every query attends to its own frame whole, to
    the camera/register tokens of every frame, and to a fixed strided subsample (a near-uniform grid,
    the same positions in every frame) of the other frames' patch tokens. Each other frame's dropped
    patch tokens are filled in by one token: their mean key and mean value, with ``log(count)`` added
    to its score, so it weighs as much as the ``count`` tokens it stands for would if they all had the
    mean key (a first-order stand-in for the dropped softmax mass). Run by flex attention with a block
    mask, so key blocks a query cannot see cost nothing.
``merge_ratio`` (FastVGGT, Shen et al., arXiv 2509.02560): before attention the tokens are split
    three ways: destinations (every token of the first frame, the camera/register tokens of every
    frame, and one token per 2x2 patch cell of the other frames, chosen once by a seeded generator),
    salient tokens (in each other frame, the 10% of the remaining patch tokens least like their frame's
    mean, by cosine) which are kept as they are, and sources (the rest). Each source's most similar
    destination (cosine of the block's normalised input, over all destinations of all frames) is found;
    the ``merge_ratio * N`` most similar sources (at most all of them) are averaged into their
    destination, in Q, K and V. Attention runs over the reduced set with the configured global
    backend; its output is copied back to every merged source ("unmerge") before the projection is
    added to each token's own residual; the MLP runs on every token. Under the lean and offload plans
    (``_merged_layer``) the same function a chunk of whole frames at a time: only one item's unit
    vectors and the reduced set's Q, K, V, their fp32 sums (two at most at once) and output are whole.
``global_sparsity`` (Faster VGGT with block-sparse global attention, Wang et al., arXiv 2509.07120):
    camera/register queries attend densely to every key (configured backend). Patch queries, in
    blocks of 128, attend to the patch keys in blocks of 128 (frame-major) plus every camera/register
    key (kept blocks, as the paper's "sink" tokens). Per head, each query block scores every patch key
    block by its mean-pooled query against the block's mean-pooled key and keeps the top
    ``int((1 - global_sparsity) * blocks)``, always including the blocks of its own frame(s); the
    others are skipped. Each query block's key blocks are one compact list (``block_lists``: the kept
    blocks, then the camera/register blocks, ascending), run by ``model.approx_kernel``: ``flex``, a
    flex-attention ``BlockMask`` (``BlockMask.from_kv_blocks``, the lists padded to every key block);
    ``dense``, FlashAttention-4's block-sparse forward on the compact lists and the token-major Q, K, V
    where it runs, else the eager kernel on the same lists (``partial_attention``, fp32 scores: the CPU's
    path); ``auto``, both timed at the first layer, the faster kept. Under the lean and offload plans the
    layer runs in two passes over chunks of frames (``_block_sparse_layer``), holding K and V whole as the
    exact lean plan does and nothing else of every token.

On the GPU flex attention is compiled (``vggt_model.attention``); on the CPU it runs unfused, which
computes the same function (tests) but is not fast.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from . import partial_attention
from .config import ExecutionConfig
from .layers import attention_dtype, row_chunks
from .nvtx import Ranges

BLOCK = 128           # flex attention's block: query and key blocks of the block masks
MERGE_CELL = 2        # FastVGGT: one destination per 2 x 2 patch cell of the other frames
MERGE_SALIENT = 0.1   # FastVGGT: the share of the other frames' candidate tokens kept unmerged
MERGE_SEED = 0        # the destination choice per cell is seeded: the same on every run and device
SIM_ELEMENTS = 1 << 26  # similarity scores computed per chunk when matching sources to destinations
FLEX_RECOMPILES = 64  # compiled flex kernels kept per process (one per layout and setting)


def _rows_per_chunk(width: int, least: int = 1) -> int:
    """Rows of ``width`` elements to take at a time so that a chunk holds about SIM_ELEMENTS (at least
    ``least`` rows): the one bound for every chunked step of matching and merging."""
    return max(least, SIM_ELEMENTS // max(1, width))


@dataclass(frozen=True)
class Layout:
    """How the global sequence of one batch item is laid out: ``frames`` x ``tokens`` per frame, the
    first ``specials`` of them camera and register tokens, then a ``rows x cols`` patch grid."""

    frames: int
    tokens: int
    specials: int
    rows: int
    cols: int

    @property
    def patches(self) -> int:
        return self.rows * self.cols

    @property
    def length(self) -> int:
        return self.frames * self.tokens


def _projections(block, x: torch.Tensor, rope, rows: int, keep_normed: bool):
    """``q, k, v [B, N, H, D]`` of ``x [B, N, C]`` (qk-norm, RoPE, in the dtype the attention kernel
    receives them in) and, with ``keep_normed``, ``norm1(x)``; over chunks of ``rows`` tokens into whole
    buffers when ``rows`` (no ``[B, N, 3C]`` projection of every token at once), else in one go."""
    attn = block.attn
    B, N, C = x.shape
    H, D = attn.num_heads, attn.head_dim
    whole = None
    for part in row_chunks(N, rows):
        n = part.stop - part.start
        if keep_normed:
            h = block.norm1(x[:, part])
            q, k, v = block.project(h, rope, normed=True)
        else:  # through the block's call: compiled with it under model.compile
            q, k, v = block(x[:, part], None, rope, mode="qkv")
            h = None
        if n == N:
            return q, k, v, h
        if whole is None:
            whole = [x.new_empty((B, N, H, D), dtype=t.dtype) for t in (q, k, v)]
            whole.append(x.new_empty((B, N, C), dtype=h.dtype) if keep_normed else None)
        for buffer, t in zip(whole, (q, k, v, h)):
            if buffer is not None:
                buffer[:, part] = t
        del q, k, v, h
    return tuple(whole)


def global_layer(block, x: torch.Tensor, attend, rope, ranges: Ranges, execution: ExecutionConfig, layout: Layout,
                 inplace: bool, rows: int = 0, kernel: Optional["KernelChoice"] = None) -> torch.Tensor:
    """Global block ``block`` on ``x [B, N, C]`` with the attention approximation ``execution`` turns on.

    ``inplace``: the result is written into ``x`` (the lean and offload plans) and every per-token step
    (norm, QKV projection, output projection, MLP) runs over chunks of ``rows`` tokens, as the exact
    lean plan does: only Q, K, V are ever whole; token merging (``_merged_layer``) holds only the reduced
    set's and block sparsity (``_block_sparse_layer``) only K and V, as the exact lean plan. Otherwise a new
    tensor is returned and ``x`` is left as it was. ``kernel``: how K/V subsampling and block sparsity run
    (``model.approx_kernel``; None: flex attention).
    """
    technique = execution.approximations()[0]
    if technique == "merge_ratio" and inplace and rows > 0:
        return _merged_layer(block, x, attend, rope, ranges, layout, execution.merge_ratio, rows)
    if technique == "kv_keep" and kernel is not None:
        dense = kernel.for_subsampling(block, x, rope, layout, execution.kv_keep, rows if inplace else 0)
        if dense is not None:
            return _subsampled_layer(block, x, rope, ranges, layout, execution.kv_keep, dense, inplace, rows)
    sparse = None  # block sparsity's kernel (a partial_attention kernel), None for flex attention
    if technique == "global_sparsity" and kernel is not None:
        sparse = kernel.for_sparsity(block, x, rope, layout, execution.global_sparsity, rows if inplace else 0)
    if technique == "global_sparsity" and inplace and rows > 0:  # the lean plans: two passes over chunks
        return _block_sparse_layer(block, x, attend, rope, ranges, layout, execution.global_sparsity, sparse, rows)
    B, N, C = x.shape
    step = rows if inplace else 0
    with ranges("attention"):
        # handed over in a list, never bound here: each technique drops Q, K, V (and the normalised input)
        # as soon as it has made what it attends from them, so the whole tensors do not outlive their use
        given = list(_projections(block, x, rope, step, keep_normed=technique == "merge_ratio"))
        if technique == "kv_keep":
            o = _subsampled(given, layout, execution.kv_keep)
        elif technique == "merge_ratio":
            o = _merged(given, layout, execution.merge_ratio, attend)
        else:
            o = _block_sparse(given, layout, execution.global_sparsity, attend, sparse)
    out = x if inplace else x.clone()
    # projection, residual and MLP a chunk at a time through the block's call (compiled with it under
    # model.compile)
    for part in row_chunks(N, step):
        block(out[:, part], None, None, ranges, mode="finish", attended=o[:, :, part].transpose(1, 2))
    del o
    return out


# ---- flex attention ------------------------------------------------------------------------------
def _flex(q, k, v, block_mask, score_mod=None):
    """flex attention: compiled on the GPU (``vggt_model.attention``), unfused on the CPU."""
    from torch.nn.attention.flex_attention import flex_attention

    if q.is_cuda:
        from .attention import _compiled_flex

        # one compiled kernel per layout and setting (shapes and mask functions differ): a sweep over
        # several would pass dynamo's default of 8 recompiles and silently fall back to the unfused
        # path, which materialises the whole score matrix
        limit = max(torch._dynamo.config.recompile_limit, FLEX_RECOMPILES)
        with torch._dynamo.config.patch(recompile_limit=limit):
            return _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)


def _index_lists(mask: torch.Tensor):
    """``[..., rows, cols]`` bool -> (counts ``[..., rows]`` int32, column indices ``[..., rows, cols]``
    int32 with each row's True columns first, in increasing order): a BlockMask's block lists."""
    counts = mask.sum(-1, dtype=torch.int32)
    order = torch.sort(mask.to(torch.int8), dim=-1, descending=True, stable=True).indices.to(torch.int32)
    return counts, order.contiguous()


def _frames_of_blocks(length: int, per_frame: int, device) -> tuple:
    """First and last frame index in each 128-block of a frame-major sequence of ``length`` tokens."""
    starts = torch.arange(0, length, BLOCK, device=device)
    ends = torch.clamp(starts + BLOCK, max=length) - 1
    return starts // per_frame, ends // per_frame


# ---- kv_keep: AVGGT's K/V subsampling ---------------------------------------------------------------
def kept_patches(patches: int, keep: float) -> torch.Tensor:
    """Patch positions (raster order) kept in every frame: ``round(keep * patches)`` (at least one),
    evenly strided, so on a grid of ``cols`` columns they form a near-uniform lattice."""
    m = max(1, min(patches, round(keep * patches)))
    return torch.div((torch.arange(m) * 2 + 1) * patches, 2 * m, rounding_mode="floor")


class KeptTokens:
    """Which tokens of a frame the other frames see under K/V subsampling (every kernel's).

    ``keep_positions``: the ``per`` tokens of a frame other frames attend to (its camera/register tokens,
    then the ``kept`` patches); ``dropped`` patches are stood in for by one mean token weighted by
    ``log_count`` (None when nothing is dropped).
    """

    def __init__(self, layout: Layout, keep: float, device):
        kept = kept_patches(layout.patches, keep)
        self.specials = layout.specials
        self.dropped = layout.patches - len(kept)
        self.kept = kept.to(device)
        self.keep_positions = torch.cat((torch.arange(layout.specials), layout.specials + kept)).to(device)
        self.per = len(self.keep_positions)
        self.log_count = math.log(self.dropped) if self.dropped else None

    def means(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames [B, F, P, H, D]`` -> each frame's mean over its dropped patches ``[B, F, H, D]``: fp32
        sums of all patches less the kept ones, over the count, in the tensor's dtype."""
        patches = frames[:, :, self.specials:]
        dropped = patches.sum(2, dtype=torch.float32) - patches[:, :, self.kept].sum(2, dtype=torch.float32)
        return (dropped / self.dropped).to(frames.dtype)


class SubsamplePlan(KeptTokens):
    """Everything about K/V subsampling on flex attention that depends on the layout only (shared by
    every layer).

    Keys, concatenated: every token in place (a query sees those of its own frame), then per frame
    its camera/register tokens and kept patches (a query sees other frames'), then one mean token
    per frame for its dropped patches (other frames', with ``log(count)`` on the score).
    """

    def __init__(self, layout: Layout, keep: float, device):
        super().__init__(layout, keep, device)
        S, P = layout.frames, layout.tokens
        N = layout.length
        per = self.per
        means = S if self.dropped else 0
        self.length = N + S * per + means
        frame = torch.cat((torch.arange(N) // P, torch.arange(S).repeat_interleave(per), torch.arange(means)))
        self.kv_frame = frame.to(device)  # each key's frame (own region, kept tokens, means)
        self.first_mean = N + S * per  # keys from here on are the mean tokens
        self.block_mask = self._block_mask(N, P, S * per, device)
        self._score_mod = self._mean_weight() if means else None

    def _block_mask(self, N, P, shared, device):
        from torch.nn.attention.flex_attention import BlockMask

        per, first = len(self.keep_positions), self.first_mean

        def visible(b, h, q_idx, kv_idx):
            # the key's frame from its index (as score_mod's weight: nothing gathered from a tensor in the
            # kernel): the own region is seen by its frame's queries, the other regions by every other frame's
            own = kv_idx < N
            frame = torch.where(own, kv_idx // P, torch.where(kv_idx < first, (kv_idx - N) // per, kv_idx - first))
            return torch.where(own, frame == q_idx // P, frame != q_idx // P)

        q_first, q_last = _frames_of_blocks(N, P, device)
        n_kv = -(-self.length // BLOCK)
        starts = torch.arange(n_kv, device=device) * BLOCK
        ends = torch.clamp(starts + BLOCK, max=self.length) - 1
        own_only = ends < N
        pure_shared = (starts >= N) & (ends < N + shared)
        first_frame, last_frame = self.kv_frame[starts], self.kv_frame[ends]
        overlap = (first_frame[None, :] <= q_last[:, None]) & (last_frame[None, :] >= q_first[:, None])
        # own-region blocks of the query block's frames need the mask; other own blocks are skipped;
        # a shared block holding none of the query block's frames is visible whole
        full = pure_shared[None, :] & ~overlap
        partial = (own_only[None, :] & overlap) | (~own_only[None, :] & ~full)
        kv_num, kv_idx = _index_lists(partial)
        full_num, full_idx = _index_lists(full)
        return BlockMask.from_kv_blocks(kv_num[None, None], kv_idx[None, None], full_num[None, None],
                                        full_idx[None, None], BLOCK_SIZE=BLOCK, mask_mod=visible,
                                        seq_lengths=(N, self.length), compute_q_blocks=False)

    def _mean_weight(self):
        first, log_count = self.first_mean, self.log_count

        def mean_weight(score, b, h, q_idx, kv_idx):
            # log(count) on a mean token's score, from the key's index: gathering it from a captured
            # [keys] tensor (as before) made compiled flex attention 39% slower at 800 frames on an
            # H100 (868 -> 626 ms per layer, the same output bit for bit; benchmarks/gpu/flex_kv_keep.py)
            return score + torch.where(kv_idx >= first, log_count, 0.0)

        return mean_weight

    def score_mod(self):
        """The mean tokens' weight (one function per plan, so compiled flex attention does not
        recompile per layer); None when no patch is dropped."""
        return self._score_mod


_PLANS: dict = {}


def _plan(kind, layout: Layout, value: float, device):
    """Plans depend on the layout only: build once per (kind, layout, value, device); reusing the same
    objects every layer also keeps compiled flex attention from recompiling."""
    key = (kind, layout, value, str(device))
    if key not in _PLANS:
        if len(_PLANS) > 16:
            _PLANS.clear()
        _PLANS[key] = kind(layout, value, device)
    return _PLANS[key]


def subsampled_attention(q, k, v, layout: Layout, keep: float) -> torch.Tensor:
    """``q, k, v [B, N, H, D]`` (token-major) -> ``[B, H, N, D]``: AVGGT's K/V subsampling."""
    return _subsampled([q, k, v], layout, keep)


def _take(given: list) -> list:
    """The tensors of ``given``, which is emptied: the caller's references are gone, so a tensor the
    callee deletes is freed."""
    taken = list(given)
    given.clear()
    return taken


def _subsampled(given: list, layout: Layout, keep: float) -> torch.Tensor:
    """subsampled_attention on ``given = [q, k, v]`` (taken): K and V are freed once their key sets exist."""
    q, k, v = _take(given)[:3]
    plan = _plan(SubsamplePlan, layout, keep, q.device)
    B, N, H, D = k.shape
    S, P = layout.frames, layout.tokens

    def keys(t):
        frames = t.view(B, S, P, H, D)
        parts = [t, frames[:, :, plan.keep_positions].reshape(B, -1, H, D)]
        if plan.dropped:
            parts.append(plan.means(frames))
        return torch.cat(parts, dim=1).transpose(1, 2)

    k_all = keys(k)
    del k
    v_all = keys(v)
    del v
    return _flex(q.transpose(1, 2), k_all, v_all, plan.block_mask, plan.score_mod())


# ---- kv_keep on dense kernels: the same function in three merged parts ------------------------------
# A query of frame f attends to (1) its own frame whole, (2) the camera/register tokens and kept patches of
# every other frame, (3) every other frame's mean token with log(count) on its score. The three key sets
# are disjoint, so each runs as dense attention returning its log-sum-exp and the parts are merged
# (``partial_attention``): (1) is frame attention; for (2) the kept tokens of all frames are laid out twice
# in a row, so frames f+1 .. f+S-1 are one contiguous window of (S-1) x per keys starting at (f+1) x per;
# (3) likewise over the mean tokens, its log-sum-exp shifted by log(count). No mask, no score_mod: every
# key tile a kernel loads is attended whole.
ATTN_ROWS = 1 << 16  # query tokens per call of the windowed parts (whole frames; more fills the GPU's waves)
AUTO_FRAMES = 16     # frames approx_kernel=auto times both kernels on (the layer's own tokens)
AUTO_REPEATS = 3     # timed calls per kernel after one untimed one (compilation, first-call set-up)


class WindowPlan(KeptTokens):
    """Dense K/V subsampling's index work, which depends on the layout only: ``kept_starts[f] = (f+1) x
    per`` and ``mean_starts[f] = f+1``, where frame f's window begins in the doubled pools."""

    def __init__(self, layout: Layout, keep: float, device):
        super().__init__(layout, keep, device)
        S = layout.frames
        self.kept_starts = ((torch.arange(S) + 1) * self.per).to(device=device, dtype=torch.int32)
        self.mean_starts = (torch.arange(S) + 1).to(device=device, dtype=torch.int32)


class _Pools:
    """Per batch item, every frame's kept keys and values twice in a row ``[B, 2 S per, H, D]`` and its
    mean key and value twice ``[B, 2 S, H, D]`` (None when nothing is dropped)."""

    def __init__(self, like: torch.Tensor, B: int, plan: WindowPlan, layout: Layout):
        H, D = like.shape[-2:]
        S = layout.frames
        self.kept = [like.new_empty((B, 2, S, plan.per, H, D)) for _ in range(2)]
        self.means = [like.new_empty((B, 2, S, H, D)) for _ in range(2)] if plan.dropped else None

    def fill(self, k: torch.Tensor, v: torch.Tensor, frames: slice, plan: WindowPlan):
        """Add frames ``frames`` from their keys and values ``k, v [B, F, P, H, D]``."""
        for i, t in enumerate((k, v)):
            chosen = t[:, :, plan.keep_positions]
            self.kept[i][:, 0, frames] = chosen
            self.kept[i][:, 1, frames] = chosen
            if self.means is not None:
                mean = plan.means(t)
                self.means[i][:, 0, frames] = mean
                self.means[i][:, 1, frames] = mean
            del chosen

    def other_frames(self, q: torch.Tensor, b: int, frames: slice, plan: WindowPlan, kernel) -> list:
        """The parts of ``q [F, P, H, D]`` (frames ``frames`` of batch item ``b``) over the other frames:
        their kept tokens, and their mean tokens weighted by ``log(count)``."""
        S = self.kept[0].shape[2]
        if S == 1:
            return []
        H, D = q.shape[-2:]
        pool_k, pool_v = (t[b].view(-1, H, D) for t in self.kept)
        parts = [kernel.windows(q, pool_k, pool_v, plan.kept_starts[frames], (S - 1) * plan.per)]
        if self.means is not None:
            mean_k, mean_v = (t[b].view(-1, H, D) for t in self.means)
            parts.append(partial_attention.shift(
                kernel.windows(q, mean_k, mean_v, plan.mean_starts[frames], S - 1), plan.log_count))
        return parts


def _queries(block, x: torch.Tensor, rope) -> torch.Tensor:
    """``q [B, n, H, D]`` of ``x [B, n, C]`` (qk-norm, RoPE, the attention kernel's dtype): the Q rows of
    the block's QKV projection alone, through the block's call (compiled with it under model.compile)."""
    return block(x, None, rope, mode="q")


def subsampled_attention_dense(q, k, v, layout: Layout, keep: float, kernel=None) -> torch.Tensor:
    """``q, k, v [B, N, H, D]`` (token-major) -> ``[B, H, N, D]``: K/V subsampling as three merged dense
    parts (``kernel``: a ``partial_attention`` kernel, default the fastest here). The same function as
    ``subsampled_attention``; the layer itself runs ``_subsampled_layer``, which never holds K, V whole."""
    B, N, H, D = q.shape
    S, P = layout.frames, layout.tokens
    kernel = kernel or partial_attention.fastest(q.device, q.dtype, D)
    plan = _plan(WindowPlan, layout, keep, q.device)
    pools = _Pools(k, B, plan, layout)
    pools.fill(k.view(B, S, P, H, D), v.view(B, S, P, H, D), slice(0, S), plan)
    out = q.new_empty((B, N, H, D))
    for b in range(B):
        qf, kf, vf = (t[b].view(S, P, H, D) for t in (q, k, v))
        parts = [kernel.attend(qf, kf, vf)] + pools.other_frames(qf, b, slice(0, S), plan, kernel)
        partial_attention.merge(parts, out=out[b].view(S, P, H, D))
    return out.transpose(1, 2)


def _subsampled_layer(block, x: torch.Tensor, rope, ranges: Ranges, layout: Layout, keep: float, kernel,
                      inplace: bool, rows: int) -> torch.Tensor:
    """Global block ``block`` with K/V subsampling on dense kernels, in two passes over whole frames.

    Pass 1, a chunk of ``rows`` tokens at a time: Q, K, V of the chunk; its own-frame attention (output and
    log-sum-exp kept); its frames' kept and mean tokens into the pools. Pass 2, ``ATTN_ROWS`` query tokens
    at a time: Q again, the windows over the other frames, merged into the own-frame output, then the
    projection, residual and MLP. K and V are never whole: the layer holds the own-frame output and the
    pools (about half of the exact lean model's whole K and V at keep 0.1).
    """
    attn = block.attn
    B, N, C = x.shape
    H, D = attn.num_heads, attn.head_dim
    S, P = layout.frames, layout.tokens
    plan = _plan(WindowPlan, layout, keep, x.device)
    step = max(1, rows // P) if rows else S  # frames per chunk of the per-token work
    own = own_lse = pools = None
    with ranges("attention"):
        for frames in row_chunks(S, step):
            F = frames.stop - frames.start
            q, k, v, _ = _projections(block, x[:, frames.start * P: frames.stop * P], rope, 0, keep_normed=False)
            if own is None:
                own = q.new_empty((B, N, H, D))
                own_lse = torch.empty((B, S, H, P), device=x.device, dtype=torch.float32)
                pools = _Pools(k, B, plan, layout)
            q, k, v = (t.view(B, F, P, H, D) for t in (q, k, v))
            for b in range(B):
                o, lse = kernel.attend(q[b], k[b], v[b])
                own[b, frames.start * P: frames.stop * P] = o.view(F * P, H, D)
                own_lse[b, frames] = lse
                del o, lse
            pools.fill(k, v, frames, plan)
            del q, k, v
    out = x if inplace else torch.empty_like(x)
    for chunk in row_chunks(S, max(step, ATTN_ROWS // P)):
        with ranges("attention"):
            tokens = slice(chunk.start * P, chunk.stop * P)
            q = None
            for frames in row_chunks(chunk.stop - chunk.start, step):  # per-token work in chunks of rows
                part = slice(tokens.start + frames.start * P, tokens.start + frames.stop * P)
                q_part = _queries(block, x[:, part], rope)
                if q is None:
                    q = q_part.new_empty((B, tokens.stop - tokens.start) + q_part.shape[2:])
                q[:, part.start - tokens.start: part.stop - tokens.start] = q_part
                del q_part
            for b in range(B):
                qf = q[b].view(chunk.stop - chunk.start, P, H, D)
                others = pools.other_frames(qf, b, chunk, plan, kernel)
                for frames in row_chunks(chunk.stop - chunk.start, step):  # merged a chunk at a time (fp32)
                    mine = own[b, tokens].view(-1, P, H, D)[frames]
                    parts = [(mine, own_lse[b, chunk][frames])] + [(o[frames], lse[frames]) for o, lse in others]
                    partial_attention.merge(parts, out=mine)
                del qf, others
            del q
        for frames in row_chunks(chunk.stop - chunk.start, step):
            part = slice(tokens.start + frames.start * P, tokens.start + frames.stop * P)
            if not inplace:
                out[:, part] = x[:, part]
            # projection, residual and MLP through the block's call (compiled with it under model.compile)
            block(out[:, part], None, None, ranges, mode="finish", attended=own[:, part])
    return out


class KernelChoice:
    """How K/V subsampling and block sparsity run (``model.approx_kernel``), one per configured model.

    ``flex``: flex attention over every key with a block mask (and for K/V subsampling a score_mod:
    ``subsampled_attention``, ``block_sparse_attention``). ``dense``: on the fastest ``partial_attention``
    kernel here (FlashAttention-4 on Hopper/Blackwell, else PyTorch ops), K/V subsampling as three merged
    dense parts (``_subsampled_layer``), block sparsity as the kernel's block-sparse call on the compact
    block lists. ``auto``: at the first layer of a layout and dtype, both are timed on the layer's own
    projections of its first ``AUTO_FRAMES`` frames (one untimed call, then ``AUTO_REPEATS`` timed ones:
    CUDA events on a GPU, a wall clock on the CPU) and the faster is kept. ``label()`` says what ran;
    ``timings`` what auto measured.
    """

    def __init__(self, choice: str, device, dtype: torch.dtype, head_dim: int):
        self.choice = choice
        self.dense = partial_attention.fastest(device, dtype, head_dim)
        self.chosen: dict = {}   # (layout, keep, dtype) -> "flex" or "dense"
        self.timings: dict = {}  # (q shape, k shape, dtype) -> {kernel label: median ms}
        self.used: set = set()

    def _dense_label(self) -> str:
        return f"dense({self.dense.name})"

    def for_subsampling(self, block, x, rope, layout: Layout, keep: float, rows: int = 0):
        """The ``partial_attention`` kernel to run this layer's K/V subsampling on, or None for flex;
        ``rows``: the tokens per chunk of the layer's per-token work (auto projects in such chunks)."""
        return self._pick((layout, keep, x.dtype), lambda: self._measure(block, x, rope, layout, keep, rows))

    def for_sparsity(self, block, x, rope, layout: Layout, sparsity: float, rows: int = 0):
        """The ``partial_attention`` kernel whose ``block_sparse`` runs this layer's block-sparse attention,
        or None for flex; ``rows`` as ``for_subsampling``'s."""
        return self._pick(("global_sparsity", layout, sparsity, x.dtype),
                          lambda: self._measure_sparsity(block, x, rope, layout, sparsity, rows))

    def _pick(self, key, measure):
        pick = self.choice
        if pick == "auto":
            if key not in self.chosen:
                self.chosen[key] = measure()
            pick = self.chosen[key]
        self.used.add(pick)
        return self.dense if pick == "dense" else None

    @staticmethod
    def _first_frames(block, x, rope, layout: Layout, rows: int):
        """Q, K, V of the first batch item's first ``AUTO_FRAMES`` frames, and their layout."""
        frames = min(layout.frames, AUTO_FRAMES)
        small = Layout(frames, layout.tokens, layout.specials, layout.rows, layout.cols)
        q, k, v, _ = _projections(block, x[:1, : small.length], rope, rows, keep_normed=False)
        return q, k, v, small

    def _measure(self, block, x, rope, layout: Layout, keep: float, rows: int) -> str:
        q, k, v, small = self._first_frames(block, x, rope, layout, rows)
        runs = {"flex": lambda: subsampled_attention(q, k, v, small, keep),
                "dense": lambda: subsampled_attention_dense(q, k, v, small, keep, self.dense)}
        return self._faster(runs, q, k)

    def _measure_sparsity(self, block, x, rope, layout: Layout, sparsity: float, rows: int) -> str:
        q, k, v, small = self._first_frames(block, x, rope, layout, rows)

        def specials(q, k, v):  # the camera/register queries' dense part, the same work for both kernels
            return F.scaled_dot_product_attention(q, k, v)

        runs = {"flex": lambda: block_sparse_attention(q, k, v, small, sparsity, specials),
                "dense": lambda: block_sparse_attention(q, k, v, small, sparsity, specials, self.dense)}
        return self._faster(runs, q, k)

    def _faster(self, runs: dict, q, k) -> str:
        """Time each of ``runs`` (``{"flex" or "dense": call}``), record the medians, name the faster."""
        import statistics
        import time

        results = {}
        for name, run in runs.items():
            run()
            times = []
            for _ in range(AUTO_REPEATS):
                if q.is_cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    run()
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
                else:
                    t0 = time.perf_counter()
                    run()
                    times.append((time.perf_counter() - t0) * 1e3)
            results[name] = statistics.median(times)
        self.timings[(tuple(q.shape), tuple(k.shape), str(q.dtype).replace("torch.", ""))] = {
            ("flex" if n == "flex" else self._dense_label()): t for n, t in results.items()}
        return min(results, key=results.get)

    def label(self) -> str:
        names = sorted(self._dense_label() if u == "dense" else u for u in self.used)
        text = ",".join(names) if names else "not run yet"
        return f"auto({text})" if self.choice == "auto" else (text if names else f"{self.choice}(not run yet)")


# ---- global_sparsity: block-sparse attention -------------------------------------------------------
class SparsePlan:
    """Index work of block-sparse attention that depends on the layout only."""

    def __init__(self, layout: Layout, _unused, device):
        S, P, sp, hw = layout.frames, layout.tokens, layout.specials, layout.patches
        frames = torch.arange(S, device=device)[:, None] * P
        self.patch_idx = (frames + sp + torch.arange(hw, device=device)).reshape(-1)
        self.special_idx = (frames + torch.arange(sp, device=device)).reshape(-1)
        self.n_patch = S * hw
        self.length = layout.length
        self.q_blocks = -(-self.n_patch // BLOCK)
        self.kv_blocks = -(-self.length // BLOCK)
        self.scored = self.n_patch // BLOCK  # key blocks of patch tokens only; the rest are always kept
        q_first, q_last = _frames_of_blocks(self.n_patch, hw, device)
        k_first, k_last = _frames_of_blocks(self.scored * BLOCK, hw, device)
        self.own = (k_first[None, :] <= q_last[:, None]) & (k_last[None, :] >= q_first[:, None])  # [q, scored]
        self.own_max = int(self.own.sum(-1).max()) if self.scored else 0
        self.sinks = torch.arange(self.scored, self.kv_blocks, device=device, dtype=torch.int32)


def kept_blocks(scored: int, sparsity: float, own_max: int) -> int:
    """Patch key blocks each query block keeps: ``int((1 - sparsity) * scored)`` (at least one), and
    never fewer than its own frame(s) span."""
    if scored == 0:
        return 0
    return min(scored, max(1, int((1.0 - sparsity) * scored), own_max))


def _block_means(t: torch.Tensor, blocks: int) -> torch.Tensor:
    """``t [B, L, H, D]`` -> the mean of each run of BLOCK tokens ``[B, blocks, H, D]`` (fp32; the last
    run may be short)."""
    B, L, H, D = t.shape
    whole = L // BLOCK
    means = [t[:, : whole * BLOCK].reshape(B, whole, BLOCK, H, D).sum(2, dtype=torch.float32) / BLOCK]
    if blocks > whole:
        means.append(t[:, whole * BLOCK:].sum(1, keepdim=True, dtype=torch.float32) / (L - whole * BLOCK))
    return torch.cat(means, dim=1)


def block_selection(q_patch, k_patch, plan: SparsePlan, sparsity: float) -> torch.Tensor:
    """``[B, H, q_blocks, n]`` int32 indices (in no order) of the patch key blocks each query block keeps, by
    mean-pooled scores, own-frame blocks forced. Scored a chunk of query blocks at a time (about
    SIM_ELEMENTS scores): never the ``[B, H, q_blocks, scored]`` matrix whole (2 GB at 800 frames)."""
    n = kept_blocks(plan.scored, sparsity, plan.own_max)
    q_mean = _block_means(q_patch, plan.q_blocks)
    k_mean = _block_means(k_patch[:, : plan.scored * BLOCK], plan.scored)
    B, _, H, _ = q_mean.shape
    selected = torch.empty((B, H, plan.q_blocks, n), dtype=torch.int32, device=q_patch.device)
    for part, chosen in _chosen_blocks(q_mean, k_mean, plan, sparsity):
        selected[:, :, part] = chosen
    return selected


def _chosen_blocks(q_mean, k_mean, plan: SparsePlan, sparsity: float, first: int = 0):
    """``(part, [B, H, m, n] int64)``, a chunk ``part`` of the query blocks at a time: the top ``n`` patch key
    blocks (in no order) of each query block by its mean query (``q_mean [B, blocks, H, D]``, the means of
    query blocks ``first ..``) against the mean keys ``k_mean [B, scored, H, D]``, own-frame blocks forced.
    About SIM_ELEMENTS words at a time: the scores, the top-n indices and their sort (int64)."""
    n = kept_blocks(plan.scored, sparsity, plan.own_max)
    B, blocks, H, _ = q_mean.shape
    for part in row_chunks(blocks, _rows_per_chunk(B * H * (plan.scored + 6 * n))):
        scores = torch.einsum("bqhd,bkhd->bhqk", q_mean[:, part], k_mean)
        scores.masked_fill_(plan.own[None, None, first + part.start: first + part.stop], float("inf"))
        chosen = scores.topk(n, dim=-1, sorted=False).indices
        del scores
        yield part, chosen


def block_lists(selected: torch.Tensor, plan: SparsePlan):
    """The key blocks each query block attends, as compact block lists (flex's ``BlockMask`` pads them;
    FlashAttention-4 takes them as they are): ``(counts [B, H, q_blocks], indices [B, H, q_blocks, W])``
    int32, ``W = n + sinks``: a query block's ``n`` selected patch key blocks, ascending, then the
    camera/register ("sink") blocks ``scored .. kv_blocks - 1`` (always kept, above every patch block), so
    each list is ascending and ends with the last, possibly partial, key block; every count is ``W``."""
    B, H, nq, n = selected.shape
    step = _rows_per_chunk(B * H * max(1, n))  # sorted a chunk at a time (int64 temporaries)
    return _sorted_lists(((part, selected[:, :, part]) for part in row_chunks(nq, step)), selected.shape, plan,
                         selected.device)


def _block_lists_of(q_mean, k_mean, plan: SparsePlan, sparsity: float, first: int):
    """``block_lists(block_selection(...))`` of the query blocks ``first .. first + blocks - 1`` alone, from
    their means ``q_mean [B, blocks, H, D]`` and the patch key blocks' ``k_mean`` (fp32): each chunk's choice
    sorted straight into the lists, so no ``[B, H, blocks, n]`` selection is whole beside them."""
    B, blocks, H, _ = q_mean.shape
    shape = (B, H, blocks, kept_blocks(plan.scored, sparsity, plan.own_max))
    return _sorted_lists(_chosen_blocks(q_mean, k_mean, plan, sparsity, first), shape, plan, q_mean.device)


def _sorted_lists(chunks, shape, plan: SparsePlan, device):
    """``block_lists``' ``(counts, indices)`` from ``chunks`` of ``(part, chosen [B, H, m, n])``, the query
    blocks ``part`` of ``shape = (B, H, blocks, n)``: each chunk's choice sorted into its rows, the sinks
    after it."""
    B, H, blocks, n = shape
    width = n + len(plan.sinks)
    indices = torch.empty((B, H, blocks, width), dtype=torch.int32, device=device)
    indices[..., n:] = plan.sinks
    for part, chosen in chunks:
        indices[:, :, part, :n] = torch.sort(chosen, dim=-1).values
        del chosen
    return torch.full((B, H, blocks), width, dtype=torch.int32, device=device), indices


def sparse_block_mask(lists, plan: SparsePlan, with_mask_mod: bool, q_length: Optional[int] = None):
    """The BlockMask of ``block_lists``' lists, every listed block visible whole: the indices padded with
    zeros to every key block (``[B, H, q_blocks, kv_blocks]``). ``with_mask_mod``: also say it element-wise
    (the CPU's unfused flex reads only the mask_mod; the GPU kernel only the block lists). ``q_length``: the
    patch queries attended (default all; fewer: the lists are those of their blocks, from a block boundary)."""
    from torch.nn.attention.flex_attention import BlockMask

    counts, indices = lists
    B, H, nq, width = indices.shape
    full_idx = torch.zeros(B, H, nq, plan.kv_blocks, dtype=torch.int32, device=indices.device)
    full_idx[..., :width] = indices
    kv_num = torch.zeros(B, H, nq, dtype=torch.int32, device=indices.device)
    kv_idx = torch.zeros(B, H, nq, 1, dtype=torch.int32, device=indices.device)
    mask_mod = None
    if with_mask_mod:
        table = torch.zeros(B, H, nq, plan.kv_blocks, dtype=torch.bool, device=indices.device)
        table.scatter_(-1, indices.long(), True)  # every entry is listed: each count is the full width

        def listed(b, h, q_idx, kv_idx):
            return table[b, h, q_idx // BLOCK, kv_idx // BLOCK]

        mask_mod = listed
    return BlockMask.from_kv_blocks(kv_num, kv_idx, counts, full_idx, BLOCK_SIZE=BLOCK, mask_mod=mask_mod,
                                    seq_lengths=(plan.n_patch if q_length is None else q_length, plan.length),
                                    compute_q_blocks=False)


def block_sparse_attention(q, k, v, layout: Layout, sparsity: float, attend, kernel=None) -> torch.Tensor:
    """``q, k, v [B, N, H, D]`` (token-major) -> ``[B, H, N, D]``: block-sparse global attention; the patch
    queries on ``kernel.block_sparse`` (a ``partial_attention`` kernel), or flex attention when None."""
    return _block_sparse([q, k, v], layout, sparsity, attend, kernel)


def _block_sparse(given: list, layout: Layout, sparsity: float, attend, kernel=None) -> torch.Tensor:
    """block_sparse_attention on ``given = [q, k, v]`` (taken): each is freed once reordered, the block
    selection once its lists exist, the lists (and flex's mask) and the reordered Q, K, V once attended."""
    q, k, v = _take(given)[:3]
    plan = _plan(SparsePlan, layout, 0.0, q.device)
    B, N, H, D = q.shape
    # camera/register queries attend to everything (few rows)
    specials = plan.special_idx
    o_specials = attend(q[:, specials].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    # patch queries: keys reordered as patches (frame-major) then camera/register tokens
    order = torch.cat((plan.patch_idx, specials))
    q_patch = q[:, plan.patch_idx]
    del q
    k_cat = k[:, order]
    del k
    v_cat = v[:, order]
    del v
    lists = block_lists(block_selection(q_patch, k_cat, plan, sparsity), plan)
    if kernel is None:
        mask = sparse_block_mask(lists, plan, with_mask_mod=not q_patch.is_cuda)
        del lists
        o_patch = _flex(q_patch.transpose(1, 2), k_cat.transpose(1, 2), v_cat.transpose(1, 2), mask).transpose(1, 2)
        del mask
    else:  # token-major in and out: no transposed copies, no padded index
        o_patch = kernel.block_sparse(q_patch, k_cat, v_cat, *lists, BLOCK)
        del lists
    del q_patch, k_cat, v_cat
    out = o_patch.new_empty((B, N, H, D))  # made once the inputs are gone; token-major, as the projection reads it
    out[:, plan.patch_idx] = o_patch
    del o_patch
    out[:, specials] = o_specials.transpose(1, 2)
    return out.transpose(1, 2)


def _patch_queries(carried, q: torch.Tensor, specials: int) -> torch.Tensor:
    """The patch rows of ``q [B, F, P, H, D]`` (whole frames) in block order, after the ``carried`` rows
    ``[B, c, H, D]`` that precede them there: ``[B, c + F * patches, H, D]``, one copy."""
    B, F_, P, H, D = q.shape
    c = carried.shape[1]
    rows = q.new_empty((B, c + F_ * (P - specials), H, D))
    rows[:, :c] = carried
    rows[:, c:].view(B, F_, P - specials, H, D).copy_(q[:, :, specials:])
    return rows


def _frame_outputs(o_specials, o_patches, o, frames: slice, patches: int) -> torch.Tensor:
    """The attention outputs of the pending frames ``frames`` (counted from the first pending one), token-major
    in the original order ``[B, F * P, H, D]``: their camera/register outputs ``o_specials [B, pending, sp, H,
    D]``; their patch outputs in block order, the first pending frame's first ones ``o_patches [B, have, H,
    D]`` (``have < patches``), then ``o`` (from the first pending frame's patch ``have`` on)."""
    B, _, sp, H, D = o_specials.shape
    have = o_patches.shape[1]
    out = o.new_empty((B, frames.stop - frames.start, sp + patches, H, D))
    out[:, :, :sp] = o_specials[:, frames]
    whole = frames.start  # the first frame whose patch outputs are all in o
    if whole == 0:
        out[:, 0, sp: sp + have] = o_patches
        out[:, 0, sp + have:] = o[:, : patches - have]
        whole = 1
    rest = o[:, whole * patches - have: frames.stop * patches - have]
    out[:, whole - frames.start:, sp:] = rest.view(B, frames.stop - whole, patches, H, D)
    return out.view(B, -1, H, D)


def _block_sparse_layer(block, x: torch.Tensor, attend, rope, ranges: Ranges, layout: Layout, sparsity: float,
                        kernel, rows: int) -> torch.Tensor:
    """Global block ``block`` with block-sparse attention, in place on ``x [B, N, C]``, in two passes over
    chunks of whole frames: the function of ``_block_sparse`` (then the block's tail) in the exact lean
    plan's memory, K and V whole plus a chunk's work (and the patch key blocks' means, 1/128 of K in fp32).

    Pass 1, half a chunk of ``rows`` tokens at a time (the block's call holds the chunk's normalised input
    through qk-norm and RoPE, which the exact plan's first pass frees after the projection): K and V through
    the block's ``kv`` call, straight into the reordered whole buffers (``SparsePlan``: every frame's patch
    tokens frame-major, then the camera/register tokens). Then the patch key blocks' means. Pass 2, a chunk of ``rows`` tokens at a time: Q through the
    block's call; its camera/register queries attend every key densely (``attend``); its patch queries,
    after those carried from the chunks before, run in whole query blocks of BLOCK (blocks span frames;
    the last may be short, and runs with the last chunk) and the rows of a block the chunk ends inside are
    carried on: the blocks' means, their selection and block lists (only theirs: the lists are never whole),
    block-sparse attention against the whole reordered K, V (``kernel``: a ``partial_attention`` kernel,
    None for flex attention). A frame is finished (projection, residual, MLP, through the block's call)
    once all of its patch queries have attended; the one a carried block reaches into waits for the next
    chunk. Nothing of every token is held but K and V.
    """
    B, N, C = x.shape
    S, P, sp, hw = layout.frames, layout.tokens, layout.specials, layout.patches
    plan = _plan(SparsePlan, layout, 0.0, x.device)
    step = max(1, rows // P)  # frames per chunk
    k_cat = v_cat = None
    with ranges("attention"):
        for frames in row_chunks(S, max(1, step // 2)):
            F_ = frames.stop - frames.start
            k, v = block(x[:, frames.start * P: frames.stop * P], None, rope, mode="kv")
            H, D = k.shape[-2:]
            if k_cat is None:
                k_cat = k.new_empty((B, plan.length, H, D))
                v_cat = v.new_empty((B, plan.length, H, D))
            patches = slice(frames.start * hw, frames.stop * hw)
            specials = slice(plan.n_patch + frames.start * sp, plan.n_patch + frames.stop * sp)
            for whole, t in ((k_cat, k.view(B, F_, P, H, D)), (v_cat, v.view(B, F_, P, H, D))):
                whole[:, patches].view(B, F_, hw, H, D).copy_(t[:, :, sp:])
                whole[:, specials].view(B, F_, sp, H, D).copy_(t[:, :, :sp])
            del k, v, t
        k_mean = _block_means(k_cat[:, : plan.scored * BLOCK], plan.scored)
    keys, values = k_cat.transpose(1, 2), v_cat.transpose(1, 2)
    carried = None     # patch queries of the block the last chunk ended inside, [B, < BLOCK, H, D]
    o_patches = None   # outputs of the first pending frame's attended patch queries, [B, < patches, H, D]
    o_specials = None  # camera/register outputs of the pending frames, [B, frames, sp, H, D]
    attended = 0       # patch queries attended, in block order (a multiple of BLOCK until the end)
    first = 0          # the first pending frame (not finished)
    for frames in row_chunks(S, step):
        F_ = frames.stop - frames.start
        last = frames.stop == S
        with ranges("attention"):
            q = block(x[:, frames.start * P: frames.stop * P], None, rope, mode="q")
            H, D = q.shape[-2:]
            q = q.view(B, F_, P, H, D)
            if carried is None:
                carried = o_patches = q.new_empty((B, 0, H, D))
            o = attend(q[:, :, :sp].reshape(B, F_ * sp, H, D).transpose(1, 2), keys, values)
            o = o.transpose(1, 2).view(B, F_, sp, H, D)
            o_specials = o if o_specials is None else torch.cat((o_specials, o), dim=1)
            q_rows = _patch_queries(carried, q, sp)
            del q, o
            blocks = -(-q_rows.shape[1] // BLOCK) if last else q_rows.shape[1] // BLOCK
            done = min(q_rows.shape[1], blocks * BLOCK)
            carried = q_rows[:, done:].clone()
            q_rows = q_rows[:, :done].contiguous()  # a copy only where B > 1 and rows are carried
            attended += done
            if blocks:
                lists = _block_lists_of(_block_means(q_rows, blocks), k_mean, plan, sparsity,
                                        (attended - done) // BLOCK)
                o = _sparse_rows(q_rows, k_cat, v_cat, *lists, plan, kernel)
                del lists
            else:
                o = q_rows  # no rows
            del q_rows
        ready = S if last else attended // hw  # frames first .. ready - 1 have every output
        count = ready - first
        # their outputs in the original order, a chunk of frames each (the odd remainder first: the frame a
        # carried block reached into), so that the chunk's patch outputs can go before any MLP runs
        edges = [0] + list(range(count % step or step, count + 1, step)) if count else [0]
        outs = [_frame_outputs(o_specials, o_patches, o, slice(a, b), hw) for a, b in zip(edges, edges[1:])]
        have = o_patches.shape[1]
        o_patches = o[:, count * hw - have:].clone() if count else torch.cat((o_patches, o), dim=1)
        o_specials = o_specials[:, count:]
        del o
        # projection, residual and MLP through the block's call (compiled with it under model.compile)
        for a, b in zip(edges, edges[1:]):
            block(x[:, (first + a) * P: (first + b) * P], None, None, ranges, mode="finish", attended=outs.pop(0))
        first = ready
    return x


def _sparse_rows(q_rows, k_cat, v_cat, counts, indices, plan: SparsePlan, kernel) -> torch.Tensor:
    """Block-sparse attention of the patch query rows ``q_rows [B, L, H, D]`` (from a block boundary; the
    lists ``counts [B, H, m]``, ``indices [B, H, m, W]`` those of its ``m = ceil(L / BLOCK)`` blocks) against
    the whole reordered ``k_cat, v_cat``: ``[B, L, H, D]``, on ``kernel``'s block-sparse call or flex."""
    if kernel is not None:
        return kernel.block_sparse(q_rows, k_cat, v_cat, counts, indices, BLOCK)
    mask = sparse_block_mask((counts, indices), plan, with_mask_mod=not q_rows.is_cuda, q_length=q_rows.shape[1])
    return _flex(q_rows.transpose(1, 2), k_cat.transpose(1, 2), v_cat.transpose(1, 2), mask).transpose(1, 2)


# ---- merge_ratio: FastVGGT's token merging ----------------------------------------------------------
class MergePlan:
    """The fixed part of the three-way split: which tokens are destinations (first frame, every
    camera/register token, one seeded pick per 2x2 patch cell of the other frames)."""

    def __init__(self, layout: Layout, _unused, device):
        S, P, sp, rows, cols = layout.frames, layout.tokens, layout.specials, layout.rows, layout.cols
        gen = torch.Generator().manual_seed(MERGE_SEED)
        cell_rows, cell_cols = -(-rows // MERGE_CELL), -(-cols // MERGE_CELL)
        r = torch.arange(rows)[:, None].expand(rows, cols)
        c = torch.arange(cols)[None, :].expand(rows, cols)
        cell = ((r // MERGE_CELL) * cell_cols + c // MERGE_CELL).reshape(-1)  # each patch's cell
        cells = cell_rows * cell_cols
        cell_size = torch.bincount(cell, minlength=cells)
        # rank of each patch within its cell (raster order): earlier patches of the same cell
        rank = (cell[None, :] == cell[:, None]).tril(-1).sum(-1)
        is_dst = torch.zeros(S, P, dtype=torch.bool)
        is_dst[0] = True
        is_dst[:, :sp] = True
        if S > 1:  # one pick per cell and frame, seeded: the same on every run and device
            pick = (torch.rand(S - 1, cells, generator=gen) * cell_size).long()
            is_dst[1:, sp:] = rank[None, :] == pick[:, cell]
        self.dst = torch.nonzero(is_dst.reshape(-1)).squeeze(1).to(device)
        # per other frame: its candidate patch positions (not destinations), the same count in each
        cand = ~is_dst[1:, sp:]  # [S-1, hw]
        self.candidates_per_frame = int(cand[0].sum()) if S > 1 else 0
        self.candidates = (torch.nonzero(cand)[:, 1].view(S - 1, -1) + sp).to(device) if S > 1 else None
        self.salient = math.ceil(MERGE_SALIENT * self.candidates_per_frame) if self.candidates_per_frame else 0
        self.sources = (S - 1) * (self.candidates_per_frame - self.salient)


def merged_count(layout: Layout, ratio: float) -> int:
    """Tokens merged away: ``round(ratio * N)``, at most the number of source tokens (other frames'
    patches that are neither destinations nor salient)."""
    if ratio <= 0:
        return 0
    plan = MergePlan(layout, None, "cpu") if layout.frames > 1 else None
    return min(round(ratio * layout.length), plan.sources if plan else 0)


def merge_assignment(metric: torch.Tensor, layout: Layout, ratio: float, dtype: torch.dtype = torch.float32):
    """``metric [N, C]`` (the block's normalised input for one batch item) -> ``(slot [N], kept)``:
    the token of the reduced set each original token is averaged into (its own, or its destination's
    when merged), and the reduced set's size. No host synchronisation: every size is known."""
    return _assignment(_units(metric, layout, ratio, dtype), layout, ratio, metric.device)


def _units(metric: torch.Tensor, layout: Layout, ratio: float, dtype: torch.dtype):
    """The tokens as unit vectors in ``dtype`` (None when nothing is merged): cosine in the attention
    kernel's dtype (bf16 under autocast), as FastVGGT matches in bf16. Row by row (each row's result is
    its own), a chunk of rows at a time: no fp32 copy of every token at once."""
    if ratio <= 0:
        return None
    N, C = metric.shape
    unit = torch.empty((N, C), device=metric.device, dtype=dtype)
    for part in row_chunks(N, _rows_per_chunk(C, layout.tokens)):
        unit[part] = _unit_rows(metric[part], dtype)
    return unit


def _unit_rows(h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows of the normalised input as unit vectors in ``dtype`` (normalised in fp32)."""
    return F.normalize(h.float(), dim=-1).to(dtype)


def _assignment(unit, layout: Layout, ratio: float, device):
    """merge_assignment from the unit vectors ``unit [N, C]`` (None: ratio 0, nothing merged)."""
    S, P = layout.frames, layout.tokens
    N = layout.length
    slot = torch.arange(N, device=device)
    if unit is None:
        return slot, N
    plan = _plan(MergePlan, layout, 0.0, device)
    r = min(round(ratio * N), plan.sources)
    if r == 0:
        return slot, N
    C = unit.shape[-1]
    frames = unit.view(S, P, -1)
    # salient: in each other frame, the candidates least like the frame's mean (cosine). Per frame, so a
    # chunk of frames at a time (no copy of every token's vector at once)
    step = _rows_per_chunk(P * C)
    centre = torch.cat([frames[part].float().mean(1) for part in row_chunks(S, step)])
    centre = F.normalize(centre, dim=-1).to(unit.dtype)  # [S, C]
    cand = plan.candidates  # [S-1, m] positions within a frame
    likeness = []
    for part in row_chunks(S - 1, step):
        rows = slice(part.start + 1, part.stop + 1)  # other frames: 1..S-1
        cand_units = torch.gather(frames[rows], 1, cand[part, :, None].expand(-1, -1, C))
        likeness.append((cand_units * centre[rows, None]).sum(-1, dtype=torch.float32))  # [frames, m]
    likeness = torch.cat(likeness)
    order = likeness.argsort(dim=-1)  # least alike (salient) first
    sources = torch.gather(cand, 1, order[:, plan.salient:])  # [S-1, m - salient]
    sources = (sources + torch.arange(1, S, device=device)[:, None] * P).reshape(-1)
    dst_units = unit[plan.dst]
    best = torch.empty(len(sources), device=device, dtype=torch.float32)
    best_dst = torch.empty(len(sources), device=device, dtype=torch.long)
    step = _rows_per_chunk(len(plan.dst))
    for part in row_chunks(len(sources), step):
        sims = unit[sources[part]] @ dst_units.T
        value, index = sims.max(dim=-1)
        best[part], best_dst[part] = value.float(), index
    merged = torch.sort(best, descending=True, stable=True).indices[:r]  # the r most similar (ties: first)
    src, dst = sources[merged], plan.dst[best_dst[merged]]
    kept = torch.ones(N, dtype=torch.bool, device=device)
    kept[src] = False
    position = torch.cumsum(kept, 0) - 1  # slot of each kept token, in original order
    slot = position.clone()
    slot[src] = position[dst]
    return slot, N - r


def merged_attention(q, k, v, metric, layout: Layout, ratio: float, attend) -> torch.Tensor:
    """``q, k, v [B, N, H, D]`` (token-major), ``metric [B, N, C]`` -> ``[B, H, N, D]``: attention over
    the merged tokens (each the mean of a destination and its sources), unmerged by copying."""
    return _merged([q, k, v, metric], layout, ratio, attend)


def _merged(given: list, layout: Layout, ratio: float, attend) -> torch.Tensor:
    """merged_attention on ``given = [q, k, v, metric]`` (taken): the metric is freed once every batch
    item is matched, each of Q, K, V once reduced."""
    q, k, v, metric = _take(given)
    B, N, H, D = q.shape
    dtype = q.dtype
    units = [_units(metric[b], layout, ratio, dtype) for b in range(B)]
    del metric
    assignments = []
    for b in range(B):
        assignments.append(_assignment(units[b], layout, ratio, q.device))
        units[b] = None
    counts = [torch.bincount(slot, minlength=n).to(torch.float32)[:, None] for slot, n in assignments]

    def reduce(t, b):
        slot, n = assignments[b]
        flat = t[b].reshape(N, H * D)
        sums = torch.zeros(n, H * D, device=t.device, dtype=torch.float32)
        for part in row_chunks(N, _rows_per_chunk(H * D, layout.tokens)):  # no fp32 copy of every token
            sums.index_add_(0, slot[part], flat[part].float())
        return _means(sums, counts[b], t.dtype, H)

    qs = [reduce(q, b) for b in range(B)]
    del q
    ks = [reduce(k, b) for b in range(B)]
    del k
    vs = [reduce(v, b) for b in range(B)]
    del v
    out = None
    for b in range(B):
        o = attend(qs[b], ks[b], vs[b])  # [1, H, n, D]
        qs[b] = ks[b] = vs[b] = None
        if out is None:
            out = o.new_empty((B, H, N, D))
        out[b] = o[0][:, assignments[b][0]]
        del o
    return out


def _means(sums: torch.Tensor, counts: torch.Tensor, dtype: torch.dtype, heads: int) -> torch.Tensor:
    """fp32 ``sums [n, H*D]`` of each slot's tokens (divided in place) -> their means ``[1, H, n, D]`` in
    ``dtype``: a view of token-major memory, as the attention kernels take Q, K, V."""
    n = sums.shape[0]
    return sums.div_(counts).to(dtype).view(1, n, heads, -1).transpose(1, 2)


def _merged_layer(block, x: torch.Tensor, attend, rope, ranges: Ranges, layout: Layout, ratio: float,
                  rows: int) -> torch.Tensor:
    """global_layer with token merging under the lean and offload plans: the same function as the
    ``_projections`` + ``_merged`` path, in place in ``x [B, N, C]``, every per-token step over chunks
    of ``rows`` tokens (whole frames, as RoPE needs), so that no ``[N, C]``-sized tensor is whole but
    one batch item's unit vectors while it is matched, the fp32 sums of the reduced set while they
    are made, and the reduced Q, K, V and attention output.

    1. Per batch item: ``norm1`` a chunk at a time into unit vectors, matched (``_assignment``), freed.
    2. K and V of the reduced set: one pass over ``x`` through the block's ``kv`` call (the K and V rows
       of the projection alone), each chunk index-added into the fp32 sums of both, which are then
       divided and cast one after the other. Then Q the same way from the block's ``q`` call. K and V
       first, together, then Q: the same peak as one of the three at a time (two reduced tensors held
       beside one tensor's fp32 sums and its cast either way: 5 x the reduced set in the attention dtype
       under bf16) with two passes over ``x`` instead of three.
    3. Attention over the reduced set per batch item (the configured kernel), Q, K, V freed after.
    4. Unmerge a chunk at a time: each token's output is its slot's, gathered for the chunk and handed
       to the block's ``finish`` (projection, residual, MLP): no unmerged ``[B, N, H, D]`` output.

    Peak in units of one ``[N, C]`` in bf16, with ``f`` the reduced set's share (``1 - merge_ratio``
    while sources last): about ``5 f`` (step 2) or ``1.3`` (step 1: the unit vectors and the
    destinations' copy), against the exact lean layer's ``2`` (K, V), each plus one chunk's working
    set. At 0.65 (``f = 0.35``): 1.75 against 2; below a ratio of 0.6 it holds more than the exact
    lean layer (attention alone holds ``4 f``), though far less than ``_projections`` + ``_merged`` (5+).
    """
    B, N, C = x.shape
    H = block.attn.num_heads
    with ranges("attention"):
        assignments = []
        for b in range(B):  # one batch item's unit vectors at a time
            unit = None
            for part in row_chunks(N, rows):
                h = block.norm1(x[b : b + 1, part])[0]
                if unit is None:
                    unit = x.new_empty((N, C), dtype=attention_dtype(h))
                unit[part] = _unit_rows(h, unit.dtype)
                del h
            assignments.append(_assignment(unit, layout, ratio, x.device))
            del unit
        slots = [slot for slot, _ in assignments]
        counts = [torch.bincount(slot, minlength=n).to(torch.float32)[:, None] for slot, n in assignments]

        def sums():
            return [x.new_zeros((n, C), dtype=torch.float32) for _, n in assignments]

        def add(into, t, part):  # t [B, n, H, D] of the tokens ``part`` into each item's slot sums
            for b in range(B):
                into[b].index_add_(0, slots[b][part], t[b].reshape(part.stop - part.start, C).float())

        k_sums, v_sums = sums(), sums()
        for part in row_chunks(N, rows):
            k, v = block(x[:, part], None, rope, mode="kv")
            add(k_sums, k, part)
            add(v_sums, v, part)
            dtype = k.dtype
            del k, v
        ks = []
        for b in range(B):
            ks.append(_means(k_sums[b], counts[b], dtype, H))
            k_sums[b] = None
        vs = []
        for b in range(B):
            vs.append(_means(v_sums[b], counts[b], dtype, H))
            v_sums[b] = None
        q_sums = sums()
        for part in row_chunks(N, rows):
            q = block(x[:, part], None, rope, mode="q")
            add(q_sums, q, part)
            del q
        qs = []
        for b in range(B):
            qs.append(_means(q_sums[b], counts[b], dtype, H))
            q_sums[b] = None
        outs = []  # per item the reduced set's output, token-major [n, H, D]
        for b in range(B):
            outs.append(attend(qs[b], ks[b], vs[b])[0].transpose(0, 1))
            qs[b] = ks[b] = vs[b] = None
    for part in row_chunks(N, rows):
        gathered = [outs[b][slots[b][part]] for b in range(B)]  # each token's slot's output
        o = gathered[0].unsqueeze(0) if B == 1 else torch.stack(gathered)
        del gathered
        block(x[:, part], None, None, ranges, mode="finish", attended=o)
        del o
    return x


# ---- FLOPs ---------------------------------------------------------------------------------------
def attention_flops(layout: Layout, head_dim_total: int, execution: ExecutionConfig) -> int:
    """Attention-matmul FLOPs (QK^T and AV, 2 per multiply-add) of one approximated global layer for
    one batch item: the keys each query attends to (kv_keep, global_sparsity: skipped blocks cost
    nothing) or the reduced token count (merge_ratio, plus matching sources to destinations).
    ``head_dim_total`` is the width C."""
    d = head_dim_total
    S, P, sp, hw = layout.frames, layout.tokens, layout.specials, layout.patches
    N = layout.length
    technique = execution.approximations()[0]
    if technique == "kv_keep":
        m = len(kept_patches(hw, execution.kv_keep))
        per_query = P + (S - 1) * (sp + m) + ((S - 1) if m < hw else 0)
        return 4 * N * per_query * d
    if technique == "merge_ratio":
        n = N - merged_count(layout, execution.merge_ratio)
        plan = MergePlan(layout, None, "cpu") if S > 1 else None
        matching = 2 * (plan.sources * len(plan.dst)) * d if plan and n < N else 0
        return 4 * n * n * d + matching
    n_patch = S * hw
    scored = n_patch // BLOCK
    kv_blocks = -(-N // BLOCK)
    own_max = int(SparsePlan(layout, None, "cpu").own_max) if scored else 0
    blocks = kept_blocks(scored, execution.global_sparsity, own_max) + (kv_blocks - scored)
    return 4 * S * sp * N * d + 4 * n_patch * min(N, blocks * BLOCK) * d
