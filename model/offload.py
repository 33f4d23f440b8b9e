"""Kept layer outputs in pinned host memory (the ``offload`` memory plan).

The aggregator keeps four layer outputs ``[B, S, P, 2C]`` for the heads; in fp32 they are most
of an exact forward's memory. ``Offloader`` snapshots a device tensor (a device-to-device copy,
so later in-place updates of the residual stream cannot reach it) and copies the snapshot to
pinned host memory on a side stream, overlapped with the layers that follow. ``HostLayer`` is
one kept output held that way; indexing it brings the indexed part back to the device, so the
heads can read it a chunk of frames at a time.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch


class Offloader:
    """Copies device tensors to pinned host memory on a side stream (on the CPU: plain copies)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.ready: Optional[torch.cuda.Event] = None

    def snapshot(self, t: torch.Tensor) -> torch.Tensor:
        """A host copy of ``t`` as it is now; on CUDA the copy may be in flight until ``finish``."""
        if not self.cuda:
            return t.clone()  # nothing to offload: host memory is where the tensor already is
        snapshot = t.clone()
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            host.copy_(snapshot, non_blocking=True)
        snapshot.record_stream(self.stream)  # the allocator keeps it until the side stream is done
        return host

    def finish(self) -> None:
        """Make later work on the current stream wait for every copy; remember when they end."""
        if self.cuda:
            self.ready = torch.cuda.Event()
            self.ready.record(self.stream)
            torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def wait(self) -> None:
        """Block the host until every copy has landed (before the host reads the copies)."""
        if self.ready is not None:
            self.ready.synchronize()


class HostLayer:
    """A kept layer output ``[B, S, P, 2C]`` held in (pinned) host memory as its two halves
    ``[B, S, P, C]`` (the frame and the global block's output). ``layer[index]`` indexes the leading
    dimensions and returns that part on ``device``: ``cat(first[index], second[index], -1)``, the
    values the exact model keeps on the device."""

    def __init__(self, first: torch.Tensor, second: torch.Tensor, shape: Tuple[int, ...], device, mover: Offloader):
        half = tuple(shape[:-1]) + (shape[-1] // 2,)
        self.halves = (first.view(half), second.view(half))
        self.shape = torch.Size(shape)
        self.device = torch.device(device)
        self.mover = mover

    @property
    def dtype(self) -> torch.dtype:
        return self.halves[0].dtype

    @property
    def nbytes(self) -> int:
        return sum(h.numel() * h.element_size() for h in self.halves)

    def __getitem__(self, index) -> torch.Tensor:
        self.mover.wait()
        parts = [h[index] for h in self.halves]
        return torch.cat([p.contiguous().to(self.device, non_blocking=True) for p in parts], dim=-1)


def materialize(layer) -> Optional[torch.Tensor]:
    """A kept layer output as one tensor on its device, whichever way it is held (None stays None)."""
    if layer is None or isinstance(layer, torch.Tensor):
        return layer
    return layer[...]
