"""Named ranges around model stages, for Nsight Systems and the PyTorch profiler.

A module calls ``self.ranges("name")`` as a context manager. With ranges off (the
default) that returns one shared ``nullcontext``: no allocation, no call into CUDA.
With ranges on, each range is pushed to NVTX (domain ``vggt`` through the ``nvtx``
package when installed, else ``torch.cuda.nvtx``) and labelled for the PyTorch
profiler with ``record_function``, so both tools see the same names.

``Ranges.recorder`` (default None) is an optional object with ``on_enter(name)`` and
``on_exit(name)``, called around every range while ranges are on (e.g. a per-stage memory
tracker); ranges off never call it.
"""

from __future__ import annotations

import contextlib
import importlib.util

import torch

DOMAIN = "vggt"
_NULL = contextlib.nullcontext()


def _nvtx_push_pop():
    if importlib.util.find_spec("nvtx") is not None:
        import nvtx

        # A DummyDomain (no-ops) when no NVTX tool is attached to the process.
        domain = nvtx.get_domain(DOMAIN)
        attributes = {}

        def push(name):
            attr = attributes.get(name)
            if attr is None:
                attr = attributes[name] = domain.get_event_attributes(message=name)
            domain.push_range(attr)

        return push, domain.pop_range
    if torch.cuda.is_available():
        return torch.cuda.nvtx.range_push, torch.cuda.nvtx.range_pop
    return None, None


class _Range:
    __slots__ = ("name", "_rf", "_push", "_pop", "_recorder")

    def __init__(self, name, push, pop, recorder=None):
        self.name, self._push, self._pop, self._recorder = name, push, pop, recorder

    def __enter__(self):
        if self._recorder is not None:
            self._recorder.on_enter(self.name)
        if self._push is not None:
            self._push(self.name)
        self._rf = torch.profiler.record_function(self.name)
        self._rf.__enter__()
        return self

    def __exit__(self, *exc):
        self._rf.__exit__(*exc)
        if self._pop is not None:
            self._pop()
        if self._recorder is not None:
            self._recorder.on_exit(self.name)
        return False


class Ranges:
    """Factory of range context managers; ``Ranges(False)`` makes only no-ops."""

    def __init__(self, enabled: bool = False):
        self.enabled = bool(enabled)
        self._push, self._pop = _nvtx_push_pop() if self.enabled else (None, None)
        self.recorder = None  # optional: on_enter(name) / on_exit(name) around every range

    def __call__(self, name: str):
        if not self.enabled:
            return _NULL
        return _Range(name, self._push, self._pop, self.recorder)

    def __repr__(self):
        return f"Ranges(enabled={self.enabled})"


OFF = Ranges(False)
