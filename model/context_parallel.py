"""Context parallelism: the S frames of one scene sharded over the ranks of a torch.distributed group.

Everything in VGGT but global attention works within a frame (the patch embed, frame attention,
every norm and MLP, the DPT heads), so each rank runs it on its own frames only. Global attention
stays exact with DeepSpeed-Ulysses (Jacobs et al., 2023): an all-to-all turns each rank's queries,
keys and values ``[its frames, all heads]`` into ``[all frames, its heads]``, the configured
attention backend runs unchanged on that (any backend of ``model.attention``: each head is the
whole softmax over all S x P keys), and a second all-to-all returns the output to ``[its frames,
all heads]``. Per global layer a rank hands other ranks ``4 x B x S_r x P x C x (N-1)/N`` elements
(q, k, v and the output); docs/CONTEXT_PARALLEL.md compares ring attention.

Shards may be uneven in frames and in heads: ``all_to_all_single`` takes one split size per rank,
so nothing is padded and nothing is masked. Ulysses gives every rank at least one head: at most
``num_heads`` ranks (16 for VGGT-1B).

The lean and offload plans run a global layer over chunks of queries (``Block(mode="chunked")``):
keys and values move to head groups once per layer, then every chunk is a round of two
all-to-alls; a rank whose own chunks are done still takes part in the rounds the others need
(``_Rounds``). Memory per rank stays ~1/N: the local K, V plus the head group's K, V over all
frames (each ``B x S x P x C / N``), instead of the whole K, V.

The heads: the camera head attends across all frames' camera tokens, so those (``[B, S, 1, 2C]``)
are gathered and the head runs whole on every rank; the DPT heads run on each rank's frames and
their outputs are gathered; the track head's tracker (attention over time per track) runs whole on
every rank on the gathered feature maps. Every rank returns the same complete outputs.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from .config import ConfigError
from .layers import row_chunks
from .nvtx import OFF, Ranges


def _split(total: int, parts: int, extra_first: bool) -> tuple:
    base, extra = divmod(total, parts)
    return tuple(base + (i < extra if extra_first else i >= parts - extra) for i in range(parts))


@dataclass(frozen=True)
class ShardPlan:
    """Who holds what. ``frames`` (S) over ``ranks`` (N) in contiguous blocks in rank order, the
    first ``S % N`` ranks one frame more; the ``heads`` (H) of the global layers in contiguous
    groups, the last ``H % N`` ranks one head more (so the extra frames and heads fall on
    different ranks)."""

    frames: int
    ranks: int
    rank: int
    heads: int

    @property
    def frame_counts(self) -> tuple:
        return _split(self.frames, self.ranks, extra_first=True)

    @property
    def head_counts(self) -> tuple:
        return _split(self.heads, self.ranks, extra_first=False)

    def frames_of(self, rank: int) -> slice:
        counts = self.frame_counts
        start = sum(counts[:rank])
        return slice(start, start + counts[rank])

    def heads_of(self, rank: int) -> slice:
        counts = self.head_counts
        start = sum(counts[:rank])
        return slice(start, start + counts[rank])

    @property
    def local(self) -> slice:
        return self.frames_of(self.rank)


class CommStats:
    """This rank's collectives since ``reset``: calls, bytes handed to other ranks, time in ms.

    Time: the wall time of each collective on the CPU (gloo's collectives return when done); on
    CUDA, CUDA events on the current stream around it (from the stream reaching the collective to
    its result being usable, so waiting for a slower rank counts), summed when ``ms`` is read.
    Bytes: the payload for other ranks (an all-to-all's blocks for them; an all-gather's input once
    per other rank); what goes over the wire depends on the library's algorithm.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.bytes_sent = 0
        self._ms = 0.0
        self._events = []

    @contextlib.contextmanager
    def timed(self, device: torch.device, nbytes: int):
        self.calls += 1
        self.bytes_sent += int(nbytes)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self._ms += (time.perf_counter() - t0) * 1e3

    @property
    def ms(self) -> float:
        if self._events:
            self._events[-1][1].synchronize()
            self._ms += sum(start.elapsed_time(end) for start, end in self._events)
            self._events.clear()
        return self._ms


class ContextParallel:
    """One model's view of the group: the shard plan of the current scene, the collectives, and
    the global layers' ``attend`` across ranks. Made by ``VGGT.configure`` for
    ``context_parallel > 1`` in a process that has joined a group of exactly that many ranks.

    ``heads``: attention heads of the global layers; ``token_chunk``: the lean plan's chunk size,
    which sets the rounds of a chunked global layer (the same on every rank).
    """

    def __init__(self, ranks: int, heads: int, token_chunk: int = 0, group=None, ranges: Ranges = OFF):
        import torch.distributed as dist

        if not dist.is_available():
            raise ConfigError(f"context_parallel={ranks} needs torch.distributed, which this PyTorch build lacks")
        if not dist.is_initialized():
            raise ConfigError(
                f"context_parallel={ranks} needs torch.distributed initialised with {ranks} ranks "
                f"(torch.distributed.init_process_group in every rank; python -m vggt_bench starts them itself)")
        world = dist.get_world_size(group)
        if world != ranks:
            raise ConfigError(f"context_parallel={ranks} but the torch.distributed group has {world} ranks; "
                              f"make them equal")
        if ranks > heads:
            raise ConfigError(f"context_parallel={ranks} exceeds the {heads} attention heads of the global layers: "
                              f"all-to-all attention (Ulysses) gives every rank at least one head; use at most {heads}")
        self.dist = dist
        self.group = group
        self.ranks = ranks
        self.rank = dist.get_rank(group)
        self.heads = heads
        self.token_chunk = token_chunk
        self.ranges = ranges
        self.comm = CommStats()
        self.inner = None  # the global layers' own backend, set by ``wrap``
        self.plan: Optional[ShardPlan] = None

    # ---- frames ------------------------------------------------------------------------------
    def shard(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, S, ...]`` -> this rank's frames ``[B, S_r, ...]``; plans the shard of this scene."""
        self.plan = ShardPlan(images.shape[1], self.ranks, self.rank, self.heads)
        return images[:, self.plan.local]

    @property
    def holds_first_frame(self) -> bool:
        """Frame 0 (its own camera and register tokens) is on rank 0: every rank holds a frame."""
        return self.rank == 0

    def tokens_per_rank(self, local_tokens: int) -> List[int]:
        """Tokens of every rank's frames, from this rank's count ``S_r x P``."""
        counts = self.plan.frame_counts
        per_frame, rest = divmod(local_tokens, counts[self.rank])
        if rest:
            raise ValueError(f"{local_tokens} tokens are not whole frames of this rank's {counts[self.rank]}")
        return [c * per_frame for c in counts]

    def gather_frames(self, t: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's frames of ``t`` (along ``dim``) -> every rank's, in frame order, on every rank.

        Shards differ by at most one frame: the smaller ones are padded to the largest for
        ``all_gather`` (which needs equal sizes) and the padding is cut off again."""
        counts = self.plan.frame_counts
        t = t.contiguous()
        most = max(counts)
        if t.shape[dim] < most:
            pad = list(t.shape)
            pad[dim] = most - t.shape[dim]
            t = torch.cat((t, t.new_zeros(pad)), dim)
        parts = [torch.empty_like(t) for _ in range(self.ranks)]
        with self.ranges("all_gather"), self.comm.timed(t.device, t.numel() * t.element_size() * (self.ranks - 1)):
            self.dist.all_gather(parts, t, group=self.group)
        return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, counts)], dim)

    # ---- heads <-> frames --------------------------------------------------------------------------
    def _all_to_all(self, recv: torch.Tensor, send: torch.Tensor, recv_splits, send_splits) -> None:
        for_others = (send.numel() - send_splits[self.rank]) * send.element_size()
        with self.ranges("all_to_all"), self.comm.timed(send.device, for_others):
            self.dist.all_to_all_single(recv, send, list(recv_splits), list(send_splits), group=self.group)

    def to_heads(self, t: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
        """``[B, H, n_r, D]`` (this rank's tokens, every head) -> ``[B, H_r, sum(counts), D]`` (every
        rank's tokens in rank order, this rank's heads); ``counts``: the tokens each rank sends.

        The block for rank j is laid out ``[n_r, B, H_j, D]``, so what arrives from the ranks in
        order is one ``[N, B, H_r, D]`` tensor: the result is a view of it, no copy."""
        B, H, n, D = t.shape
        plan = self.plan
        heads = plan.head_counts
        tokens = t.permute(2, 0, 1, 3)  # [n, B, H, D]
        send = t.new_empty(n * B * H * D)
        splits, offset = [], 0
        for j in range(self.ranks):
            size = n * B * heads[j] * D
            send[offset : offset + size].view(n, B, heads[j], D).copy_(tokens[:, :, plan.heads_of(j)])
            splits.append(size)
            offset += size
        h, total = heads[self.rank], sum(counts)
        recv = t.new_empty(total * B * h * D)
        self._all_to_all(recv, send, [c * B * h * D for c in counts], splits)
        return recv.view(total, B, h, D).permute(1, 2, 0, 3)

    def from_heads(self, o: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
        """The way back: ``[B, H_r, sum(counts), D]`` -> ``[B, H, counts[rank], D]`` (blocks laid out
        ``[H_r, c_i, B, D]``, so the arrivals are one ``[H, n_r, B, D]`` tensor)."""
        B, h, total, D = o.shape
        by_head = o.permute(1, 2, 0, 3)  # [h, N, B, D]
        send = o.new_empty(h * total * B * D)
        splits, offset, start = [], 0, 0
        for c in counts:
            size = h * c * B * D
            send[offset : offset + size].view(h, c, B, D).copy_(by_head[:, start : start + c])
            splits.append(size)
            offset += size
            start += c
        heads, n = self.plan.head_counts, counts[self.rank]
        recv = o.new_empty(sum(heads) * n * B * D)
        self._all_to_all(recv, send, [hc * n * B * D for hc in heads], splits)
        return recv.view(sum(heads), n, B, D).permute(2, 0, 1, 3)

    # ---- the global layers -----------------------------------------------------------------------
    def wrap(self, inner) -> "UlyssesAttention":
        """The global layers' ``attend`` across ranks around their backend ``inner``."""
        self.inner = inner
        return UlyssesAttention(self)

    def global_block(self, block, x: torch.Tensor, rope, ranges: Ranges = OFF) -> torch.Tensor:
        """``block(x, mode="chunked")`` for this rank's tokens ``x [B, S_r x P, C]``, in place, exact
        across ranks: the same chunked block (``Block._chunked``), with ``_Rounds`` as its attend.

        Chunks are ``token_chunk`` tokens rounded down to whole frames (every rank alike), or a
        rank's whole shard when ``token_chunk`` is 0."""
        counts = self.tokens_per_rank(x.shape[1])
        per_frame = counts[self.rank] // self.plan.frame_counts[self.rank]
        rows = max(1, self.token_chunk // per_frame) * per_frame if self.token_chunk > 0 else max(counts)
        rounds = _Rounds(self, [[p.stop - p.start for p in row_chunks(n, rows)] for n in counts])
        block(x, rounds, rope, ranges, mode="chunked", rows=rows)
        rounds.finish()
        return x


class UlyssesAttention:
    """``attend(q, k, v)`` of a global layer across the ranks: each rank passes its own frames'
    ``q, k, v [B, H, S_r x P, D]`` and gets its frames' output ``[B, H, S_r x P, D]``; in between,
    the global backend sees ``[B, H_r, S x P, D]``: this rank's heads over every frame."""

    def __init__(self, cp: ContextParallel):
        self.cp = cp

    @torch._dynamo.disable  # collectives with host-side split sizes: run eagerly inside a compiled block
    def __call__(self, q, k, v):
        cp = self.cp
        counts = cp.tokens_per_rank(q.shape[2])
        heads = [cp.to_heads(t, counts) for t in (q, k, v)]
        return cp.from_heads(cp.inner(*heads), counts)


class _Rounds:
    """The attend of one chunked global layer: ``Block(mode="chunked")`` calls it once per chunk of
    its rank's queries, always with the layer's whole local keys and values.

    The first call moves keys and values to head groups (once per layer). Every call is a round:
    each rank sends its next chunk of queries (``schedule[rank][round]`` tokens; none once its own
    are done), computes its heads' attention for all chunks of the round and returns the outputs.
    A rank with fewer chunks plays the rounds the others still need in ``finish``.
    """

    def __init__(self, cp: ContextParallel, schedule: List[List[int]]):
        self.cp = cp
        self.schedule = schedule
        self.rounds = max(len(s) for s in schedule)
        self.done = 0
        self.kv = None
        self.empty = None

    @torch._dynamo.disable
    def __call__(self, q, k, v):
        if self.kv is None:
            totals = [sum(s) for s in self.schedule]
            self.kv = (self.cp.to_heads(k, totals), self.cp.to_heads(v, totals))
            self.empty = q.new_empty(q.shape[:2] + (0, q.shape[3]))  # the queries of a rank whose chunks are done
        return self._round(q)

    def _round(self, q):
        counts = [s[self.done] if self.done < len(s) else 0 for s in self.schedule]
        out = self.cp.inner(self.cp.to_heads(q, counts), *self.kv)
        self.done += 1
        return self.cp.from_heads(out, counts)

    def finish(self) -> None:
        while self.done < self.rounds:
            self._round(self.empty)
        self.kv = self.empty = None
