"""Profiler traces (Nsight Systems SQLite exports, PyTorch profiler Chrome traces) as tidy
DataFrames whose columns ``vggt_bench.core.schema`` fixes. Reports and plots read only these.

``nsys_sqlite.read_report(path)`` and ``torch_trace.read_trace(path)`` both return
``{"nvtx_ranges", "kernels", "cuda_api", "gpu_activity"}`` -> DataFrame.
"""

from vggt_bench.profiling.nsys_sqlite import TABLES, NoProfileData, read_report
from vggt_bench.profiling.torch_trace import read_trace

__all__ = ["TABLES", "NoProfileData", "read_report", "read_trace"]
