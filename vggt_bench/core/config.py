"""Structured configs (Hydra ConfigStore). Presets live in ``experiments/`` as YAML.

A value of ``auto`` is resolved at run time from the machine: with a CUDA GPU the
default is VGGT-1B in bf16 autocast on 336 x 518 frames (upstream's published setting);
without one it is the ``small`` architecture in fp32 on 70 x 112 frames, sized so the
default sweep finishes in minutes on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore

from vggt_model.config import ExecutionConfig


@dataclass
class ModelSettings(ExecutionConfig):
    """``model.*``: what the harness builds, plus every execution knob of the model itself.

    The execution knobs are ExecutionConfig's own fields, inherited, so ``model.frame_exec`` and
    friends are declared once (vggt_model/config.py). Only ``dtype`` gets another default here:
    ``auto`` resolves from the machine (bf16_autocast with a GPU, fp32 without).
    """

    arch: str = "auto"                 # auto | vggt1b | small
    impl: str = "ours"                 # ours | upstream (facebookresearch/vggt's own code, same runner)
    upstream_path: Optional[str] = None  # a checkout holding upstream's vggt/ (None: `import vggt`)
    checkpoint: Optional[str] = None   # .pt / .safetensors; None: random weights from `seed`
    seed: int = 0
    dtype: str = "auto"                # auto, or one of vggt_model.PRECISIONS


def execution_config(settings, **resolved) -> ExecutionConfig:
    """The model's ExecutionConfig from a ``model.*`` node (a DictConfig or ModelSettings);
    ``resolved`` replaces values the harness resolved (e.g. ``dtype`` from ``auto``)."""
    names = [f.name for f in dataclasses.fields(ExecutionConfig)]
    values = {n: settings[n] if hasattr(settings, "__getitem__") else getattr(settings, n) for n in names}
    values.update(resolved)
    return ExecutionConfig(**values)


def approx_label(values) -> str:
    """`` kv_keep=0.5`` (`` @layers 4-23`` when not all layers) for a point with an attention
    approximation on, else ""; ``values`` is a mapping or an object with the knobs as attributes."""
    from vggt_model.config import _EXACT

    get = values.get if hasattr(values, "get") else (lambda name, default=None: getattr(values, name, default))
    parts = []
    for name, exact in _EXACT.items():
        value = get(name, exact)
        if value is not None and value == value and value != exact:
            parts.append(f"{name}={value:g}")
    layers = get("approx_layers", "all")
    if parts and layers not in (None, "all"):
        parts.append(f"@layers {layers}")
    return (" " + " ".join(parts)) if parts else ""


@dataclass
class InputSettings:
    height: Optional[int] = None       # None: 336 on GPU, 70 on CPU
    width: Optional[int] = None        # None: 518 on GPU, 112 on CPU
    batch: int = 1
    image_dir: Optional[str] = None    # real images instead of synthetic ones
    mode: str = "crop"                 # upstream preprocessing for image_dir: crop | pad
    query_points: int = 0              # track head runs (part=full) when > 0
    seed: int = 0


@dataclass
class MeasureSettings:
    warmup: int = 2
    repeats: int = 5
    drift: bool = False                # also measure output drift against the exact model (not-exact points;
                                       # heads held, untimed, with part=aggregator: drift_* columns)
    eager_reference: bool = True       # with drift: also drift_vs_eager, the last layer against our eager fp32
                                       # model (an fp32 forward per point: minutes at hundreds of frames;
                                       # experiment=approximations turns it off)
    adaptive: bool = False             # repeat (repeats at least) until the median's 95% CI is within +-target_ci
    target_ci: float = 0.02            # adaptive: CI half-width as a fraction of the median
    budget_s: float = 60.0             # adaptive: seconds of timed calls at most (the last call may overrun)
    max_repeats: int = 200             # adaptive: timed calls at most


@dataclass
class BenchConfig:
    experiment: str = "default"
    frames: int = 8
    device: str = "auto"               # auto | cuda | cuda:N | cpu
    part: str = "aggregator"           # aggregator | full
    out: str = "reports/runs/latest"   # the CLI stamps a fresh directory per sweep when not given
    resume: bool = True
    report: bool = True                # render plots and the notebook at the end of a sweep
    # Profiling each point of a sweep, AFTER its timing row is measured (timings never come from a
    # profiled run): none | torch (PyTorch profiler, in process) | nsys (each point re-runs itself
    # under `nsys profile --capture-range=cudaProfilerApi`) | external (you run the sweep under your
    # own `nsys profile --capture-range=cudaProfilerApi --capture-range-end=repeat`; each point's
    # captured forwards sit between their own cudaProfilerStart/Stop inside NVTX range point:<point_id>).
    profiler: str = "none"
    iterations: int = 3                # captured forwards per profile (after measure.warmup untimed ones)
    nsys: Optional[str] = None         # path to the nsys binary; None: look on PATH
    nsys_args: List[str] = field(default_factory=lambda: ["--trace=cuda,nvtx", "--sample=none", "--cpuctxsw=none"])
    model: ModelSettings = field(default_factory=ModelSettings)
    inputs: InputSettings = field(default_factory=InputSettings)
    measure: MeasureSettings = field(default_factory=MeasureSettings)


@dataclass
class VerifyConfig:
    case: Optional[str] = None         # a reference case directory (case.json, state_dict/io .safetensors)
    checkpoint: Optional[str] = None   # check that a checkpoint loads strictly into `arch`
    arch: str = "vggt1b"
    device: str = "cpu"
    model: ModelSettings = field(default_factory=lambda: ModelSettings(dtype="fp32", attention="sdpa_math"))
    tolerance_scale: float = 1.0       # multiply the case's tolerances (e.g. 10 for fp32 on GPU)


@dataclass
class ProfileConfig(BenchConfig):
    profiler: str = "torch"            # torch | nsys | none (capture loop only, under your own nsys) | memory
    dry_run: bool = False              # print the nsys command and exit
    analyze: Optional[str] = None      # re-read an existing .sqlite / .nsys-rep / torch trace .json, or a
                                       # folder of reports (or one report) holding point:<point_id> ranges
    results: Optional[str] = None      # analyze: the sweep's out directory to join points to (default: out)
    tag: Optional[str] = None          # name of this profile inside <out>/profiles/


@dataclass
class ReportConfig:
    results: Optional[str] = None      # a results directory (with results.parquet / profiles/)
    notebook: bool = True
    execute: bool = True
    reference: Optional[str] = "upstream_h100"  # labelled reference points on the scaling wall; null: none


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="bench_schema", node=BenchConfig)
    cs.store(name="verify_schema", node=VerifyConfig)
    cs.store(name="profile_schema", node=ProfileConfig)
    cs.store(name="report_schema", node=ReportConfig)

