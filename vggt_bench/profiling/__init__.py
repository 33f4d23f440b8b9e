"""Profiling: capturing a configuration's forwards under a profiler, and its traces as tables.

``capture`` (one function per profiler: torch, nsys, a bare capture for an nsys outside),
``nsys_cli`` (the Nsight Systems command line), ``store`` (profiles on disk and the tables
across them); the readers turn traces (Nsight Systems SQLite exports, PyTorch profiler Chrome
traces) into tidy DataFrames whose columns ``vggt_bench.core.schema`` fixes; reports and plots
read only these. ``nsys_sqlite.read_report(path)`` and ``torch_trace.read_trace(path)`` both
return ``{"nvtx_ranges", "kernels", "cuda_api", "gpu_activity"}`` -> DataFrame. Memory:
``memory`` (allocator snapshots and a stage tracker as tables), ``memory_capture`` (recording one
forward for them), ``tensor_memory`` (live tensor bytes, on any device).
"""

from vggt_bench.profiling.nsys_sqlite import TABLES, NoProfileData, read_report
from vggt_bench.profiling.torch_trace import read_trace

__all__ = ["TABLES", "NoProfileData", "read_report", "read_trace"]
