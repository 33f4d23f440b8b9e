"""Live tensor memory of a forward on any device, counted from the tensors themselves.

The CUDA caching allocator reports its peak (``torch.cuda.max_memory_allocated``); the CPU has
no such counter, and a process's resident set mixes in the interpreter, libraries and freed
pages. ``LiveTensorMemory`` is a ``TorchDispatchMode`` that sees every tensor an operator makes
while it is active, groups them by storage, and counts a storage's bytes from its first tensor
until the last Python tensor on it is gone. Its ``peak_bytes`` is the most memory the code's own
intermediate tensors held at once: what a memory plan changes, without allocator slack. Tensors
made before the mode (weights, inputs) are not counted, nor views of them made inside it (a slice
of the input is the input's memory). A tensor handed to a collective ends when the backend lets go
of it too: gloo's worker thread does so some time after the call returns, so around collectives
the count depends on thread scheduling (tests run them on copies the mode does not see). Slow (a
Python callback per operator): for tests and small models.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorMemory(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._refs = {}  # storage key -> [bytes, live tensor count]
        self._seen = set()  # id() of live tensors already counted

    def _release(self, key, ident):
        self._seen.discard(ident)
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live_bytes -= entry[0]
            del self._refs[key]

    @staticmethod
    def _key(t: torch.Tensor):
        storage = t.untyped_storage()
        return storage.device.type, storage.device.index, storage.data_ptr()

    def _track(self, t: torch.Tensor, outside=frozenset()) -> None:
        if id(t) in self._seen:
            return  # an in-place op hands back the tensor it was given
        key = self._key(t)
        if key in outside:
            return  # a view of a tensor made before the mode: its memory is not the code's
        self._seen.add(id(t))
        storage = t.untyped_storage()
        if key not in self._refs:
            self._refs[key] = [storage.nbytes(), 0]
            self.live_bytes += storage.nbytes()
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self._refs[key][1] += 1
        weakref.finalize(t, self._release, key, id(t))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outside = frozenset(k for k in map(self._key, inputs) if k not in self._refs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr():
                self._track(t, outside)
        return out
