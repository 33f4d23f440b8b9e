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


def setting(default, help: str, *, factory=None):
    """A harness config field with its help text in the field's metadata (``help``), which
    scripts/knobs_doc.py writes into docs/knobs.md. Hydra and OmegaConf do not read metadata:
    the field behaves as a plain ``field(default=...)`` (``factory``: ``default_factory``)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelSettings(ExecutionConfig):
    """``model.*``: what the harness builds, plus every execution knob of the model itself.

    The execution knobs are ExecutionConfig's own fields, inherited, so ``model.frame_exec`` and
    friends are declared once (vggt_model/config.py). Only ``dtype`` gets another default here:
    ``auto`` resolves from the machine (bf16_autocast with a GPU, fp32 without).
    """

    arch: str = setting("auto", "vggt1b | small (VGGT's structure at 1/8 width, 8 + 8 layers) | auto (vggt1b with a "
                        "GPU, small without)")
    impl: str = setting("ours", "ours | upstream: our model, or upstream's own code (facebookresearch/vggt: `import vggt`, "
                        "or model.upstream_path) through the same runner: same inputs, weights, columns; NVTX ranges "
                        "through forward hooks. What upstream's code has no equivalent for is an unavailable row "
                        "with the reason")
    upstream_path: Optional[str] = setting(None, "a checkout holding upstream's vggt/ (null: `import vggt`)")
    checkpoint: Optional[str] = setting(None, "the official model.pt or a .safetensors, loaded strictly; null: random "
                                        "weights from model.seed, and every row says so (random_weights)")
    seed: int = setting(0, "seed of the random weights (without model.checkpoint)")
    dtype: str = setting("auto", "auto: bf16_autocast with a GPU, fp32 without")


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
    height: Optional[int] = setting(None, "pixels of the synthetic frames; null: 336 on a GPU, 70 on the CPU")
    width: Optional[int] = setting(None, "pixels of the synthetic frames; null: 518 on a GPU, 112 on the CPU")
    batch: int = setting(1, "B, scenes per forward")
    image_dir: Optional[str] = setting(None, "a folder of real images (upstream's preprocessing) instead of synthetic "
                                       "frames")
    mode: str = setting("crop", "upstream's preprocessing for image_dir: crop | pad")
    query_points: int = setting(0, "points the track head follows; it runs (part=full) when > 0")
    seed: int = setting(0, "seed of the synthetic frames (and query points)")


@dataclass
class MeasureSettings:
    warmup: int = setting(2, "untimed forwards before timing (the first is timed as first_call_ms)")
    repeats: int = setting(5, "timed forwards (measure.adaptive: at least this many)")
    drift: bool = setting(False, "also measure output drift against the exact model (not-exact points; heads held, "
                                 "untimed, with part=aggregator: drift_* columns)")
    eager_reference: bool = setting(True, "with drift: also drift_vs_eager, the last layer against our eager fp32 "
                                          "model (an fp32 forward per weights and inputs: minutes at hundreds of "
                                          "frames; experiment=approximations turns it off)")
    adaptive: bool = setting(False, "repeat (repeats at least) until the median's 95% CI is within +-target_ci")
    target_ci: float = setting(0.02, "adaptive: CI half-width as a fraction of the median")
    budget_s: float = setting(60.0, "adaptive: seconds of timed calls at most (the last call may overrun)")
    max_repeats: int = setting(200, "adaptive: timed calls at most")


@dataclass
class BenchConfig:
    experiment: str = setting("default", "the preset's name, recorded in every row; experiment=NAME picks a preset "
                                         "of experiments/experiment/ (its grid and measure settings)")
    frames: int = setting(8, "S, frames per scene (>= 1)")
    device: str = setting("auto", "auto | cuda | cuda:N | cpu")
    part: str = setting("aggregator", "what is timed: aggregator (as upstream's table) | full (the whole model)")
    out: str = setting("reports/runs/<timestamp>", "the results directory; without out= each sweep, run and profile "
                                                   "writes a new reports/runs/<timestamp>/, and reports/runs/latest "
                                                   "points at the latest sweep's (latest-run, latest-profile: the "
                                                   "others')")
    resume: bool = setting(True, "skip measured points on rerun: a point is its configuration, so a rerun with more "
                                 "measure.repeats skips it too, and its skip line names the kept and the asked counts; "
                                 "false measures again, replacing the row")
    report: bool = setting(True, "render plots and the notebook at the end of a sweep")
    profiler: str = setting("none", "profile each point of a sweep AFTER its timing row is measured (timings never "
                                    "come from a profiled run): none | torch (PyTorch profiler, in process) | nsys "
                                    "(each point re-runs itself under `nsys profile --capture-range=cudaProfilerApi`) | "
                                    "external (you run the sweep under your own `nsys profile "
                                    "--capture-range=cudaProfilerApi --capture-range-end=repeat`; each point's captured "
                                    "forwards sit between their own cudaProfilerStart/Stop inside NVTX range "
                                    "point:<point_id>)")
    iterations: int = setting(3, "captured forwards per profile (after measure.warmup untimed ones)")
    nsys: Optional[str] = setting(None, "path to the nsys binary; null: look on PATH")
    nsys_args: List[str] = setting(None, "what nsys records (profiler=nsys)",
                                   factory=lambda: ["--trace=cuda,nvtx", "--sample=none", "--cpuctxsw=none"])
    model: ModelSettings = field(default_factory=ModelSettings)
    inputs: InputSettings = field(default_factory=InputSettings)
    measure: MeasureSettings = field(default_factory=MeasureSettings)


@dataclass
class VerifyConfig:
    case: Optional[str] = setting(None, "a reference case directory (case.json, state_dict/io .safetensors)")
    checkpoint: Optional[str] = setting(None, "check that a checkpoint loads strictly into `arch`")
    arch: str = setting("vggt1b", "the architecture a checkpoint is loaded into: vggt1b | small")
    device: str = setting("cpu", "where the case runs: cpu | cuda | cuda:N | auto")
    model: ModelSettings = field(default_factory=lambda: ModelSettings(dtype="fp32", attention="sdpa_math"))
    tolerance_scale: float = setting(1.0, "multiply the case's tolerances (e.g. 10 for fp32 on GPU)")


@dataclass
class ProfileConfig(BenchConfig):
    profiler: str = setting("torch", "torch | nsys | none (capture loop only, under your own nsys) | memory")
    dry_run: bool = setting(False, "print the nsys command and exit")
    analyze: Optional[str] = setting(None, "re-read an existing .sqlite / .nsys-rep / torch trace .json / "
                                           "memory_snapshot.pickle, or a folder of reports (or one report) holding "
                                           "point:<point_id> ranges")
    results: Optional[str] = setting(None, "analyze: the sweep's out directory to join points to (default: out)")
    tag: Optional[str] = setting(None, "name of this profile inside <out>/profiles/")


@dataclass
class ReportConfig:
    results: Optional[str] = setting(None, "a results directory (with results.parquet / profiles/)")
    notebook: bool = setting(True, "write the report notebook (false: figures only)")
    execute: bool = setting(True, "execute the notebook and export report.html")
    reference: Optional[str] = setting("upstream_h100", "labelled reference points on the scaling wall; null: none")
    baseline: Optional[str] = setting(None, "a results directory to compare results= against: the notebook's "
                                            "section \"A against B\" (python -m vggt_bench compare); null: none")
    ignore: List[str] = setting(None, "with baseline: fields left out of the match, as compare's ignore=",
                                factory=list)


@dataclass
class CompareConfig:
    baseline: Optional[str] = setting(None, "results directory A: a sweep's out, or a study under reports/")
    candidate: Optional[str] = setting(None, "results directory B, compared against A (ratio = B / A)")
    out: Optional[str] = setting(None, "where compare.parquet|csv and the figures go; null: <candidate>/compare/")
    fail_above: Optional[float] = setting(None, "the gate: exit 1 when a point's ratio interval lies wholly above "
                                                "1 + fail_above (0.05: slower by more than 5% beyond doubt); null: "
                                                "no gate")
    ignore: List[str] = setting(None, "fields left out of the match: model.frame_exec,model.dtype ... (a knob as "
                                      "model.KNOB, frames, inputs.batch, ...)", factory=list)
    noise_floor: float = setting(0.02, "a ratio within this of 1 is `same`, whatever its interval: two runs of the "
                                       "same code differ by about this much (docs/compare.md)")


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="bench_schema", node=BenchConfig)
    cs.store(name="verify_schema", node=VerifyConfig)
    cs.store(name="profile_schema", node=ProfileConfig)
    cs.store(name="report_schema", node=ReportConfig)
    cs.store(name="compare_schema", node=CompareConfig)

