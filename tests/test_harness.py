"""The harness as a user drives it: `python -m vggt_bench ...`, its tables, resume, failures as data."""

import os

import pandas as pd
import pytest
import torch

from conftest import run_cli as cli, run_cli_subprocess
from vggt_bench.measure import build, drift, run, timing
from vggt_bench.measure.point import Point
from vggt_bench.core.results import ResultStore, load_results
from vggt_bench.core.schema import EXECUTION, KNOBS, RESULT_COLUMNS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")




@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    done = cli("sweep", "experiment=smoke", f"out={out}", "report=false")
    assert done.returncode == 0, done.stderr[-2000:]
    return out, done


def test_sweep_writes_every_column_for_every_point(smoke):
    out, done = smoke
    table = load_results(str(out))
    assert list(table.columns[: len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    assert len(table) == 4  # frames 1,2 x fused,sequential
    assert set(table["status"]) == {"ok"}
    assert sorted(table["frames"]) == [1, 1, 2, 2]
    assert set(table["frame_exec"]) == {"fused", "sequential"}
    for col in ("latency_ms_median", "latency_ms_p10", "latency_ms_p90", "peak_rss_gib", "fps", "flops", "achieved_tflops"):
        assert (pd.to_numeric(table[col]) > 0).all(), col
    assert (table["latency_ms_p10"] <= table["latency_ms_median"]).all()
    assert (table["latency_ms_median"] <= table["latency_ms_p90"]).all()
    assert (table["repeats"] == 2).all() and (table["warmup"] == 1).all()
    assert table["random_weights"].all()  # no checkpoint: every row says so
    assert (table["device"] == "cpu").all() and (table["torch_version"] == torch.__version__).all()
    assert table["git_commit"].str.len().gt(0).all() and table["timestamp"].str.len().gt(0).all()
    assert os.path.exists(out / "results.csv") and len(pd.read_csv(out / "results.csv")) == 4
    assert "4 points" in done.stdout


def test_rerun_with_same_out_measures_nothing_again(smoke):
    out, _ = smoke
    before = {p: os.path.getmtime(out / "points" / p) for p in os.listdir(out / "points")}
    again = cli("sweep", "experiment=smoke", f"out={out}", "report=false")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("skip") == 4 and "where this sweep asks for" not in again.stdout
    after = {p: os.path.getmtime(out / "points" / p) for p in os.listdir(out / "points")}
    assert before == after
    assert len(load_results(str(out))) == 4  # no duplicate rows


def test_a_skip_says_when_the_kept_row_was_timed_with_other_counts(smoke):
    # 2026-12-06, H100: a rerun asking for measure.repeats=2 at a point kept with one timed forward
    # skipped it silently, as "already measured (ok)"; the row stayed a single forward
    out, _ = smoke
    before = {p: os.path.getmtime(out / "points" / p) for p in os.listdir(out / "points")}
    again = cli("run", "model.arch=small", "inputs.height=56", "inputs.width=84", "frames=1", "measure.repeats=5",
                "measure.warmup=1", "experiment=smoke", f"out={out}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert ("already measured (ok), with warmup=1 repeats=2 where this sweep asks for warmup=1 repeats=5 "
            "(resume=false measures it again, replacing the row)") in again.stdout, again.stdout
    assert {p: os.path.getmtime(out / "points" / p) for p in os.listdir(out / "points")} == before


def test_resume_false_measures_again_without_duplicating(smoke, tmp_path):
    out, _ = smoke
    again = cli("run", "model.arch=small", "inputs.height=56", "inputs.width=84", "frames=1", "measure.repeats=2",
                "measure.warmup=1", "experiment=smoke", "resume=false", f"out={out}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "skip" not in again.stdout
    assert len(load_results(str(out))) == 4


def _point(**changes):
    from vggt_model import ExecutionConfig

    execution = {k: changes.pop(k) for k in list(changes) if k in EXECUTION}
    base = dict(arch="small", device="cpu", frames=2, batch=1, height=28, width=42, part="aggregator",
                query_points=0, inputs="synthetic", execution=ExecutionConfig(**execution))
    base.update(changes)
    return Point(**base)


def test_out_of_memory_is_a_result_and_the_next_point_runs(tmp_path, monkeypatch):
    real = timing.time_calls
    freed, calls = [], []

    def flaky(fn, device, repeats):
        calls.append(1)
        if len(calls) == 1:  # the first point "runs out of memory" mid-forward
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 475.32 GiB.")
        return real(fn, device, repeats)

    monkeypatch.setattr(timing, "time_calls", flaky)
    monkeypatch.setattr(build, "free_memory", lambda: freed.append("freed"))
    store = ResultStore(str(tmp_path))
    store.ensure_writable()
    for frames in (4, 2):
        store.add(run.run_point(_point(frames=frames), run.Method(warmup=0, repeats=1)))
    table = store.table().set_index("frames")
    assert table.loc[4, "status"] == "oom" and "Tried to allocate" in table.loc[4, "message"]
    assert pd.isna(table.loc[4, "latency_ms_median"])
    assert table.loc[2, "status"] == "ok" and table.loc[2, "latency_ms_median"] > 0
    assert "freed" in freed  # memory released after the failure
    assert not store.is_done("nope") and store.is_done(table.loc[4, "point_id"])  # oom is final: resume skips it


def test_an_error_is_recorded_with_its_message(monkeypatch, tmp_path):
    def broken(*a, **k):
        raise RuntimeError("kernel exploded\nsecond line")

    monkeypatch.setattr(timing, "time_calls", broken)
    row = run.run_point(_point(), run.Method(warmup=0, repeats=1))
    assert row["status"] == "error" and row["message"] == "RuntimeError: kernel exploded"
    store = ResultStore(str(tmp_path))
    store.ensure_writable()
    store.add(row)
    assert not store.is_done(row["point_id"])  # errors are measured again on resume


def test_unavailable_backend_is_recorded_with_the_reason():
    row = run.run_point(_point(attention="sdpa_cudnn"), run.Method(warmup=0, repeats=1))
    assert row["status"] == "unavailable" and "CUDA" in row["message"]


def test_point_id_depends_on_every_knob():
    base = _point()
    changed = {
        "frames": 3, "frame_exec": "sequential", "prune_depth": 1, "attention": "eager", "dtype": "bf16",
        "compile": "default", "nvtx": True, "query_points": 4, "part": "full", "height": 56,
    }
    ids = {base.point_id}
    for key, value in changed.items():
        assert key in KNOBS
        ids.add(_point(**{key: value}).point_id)
    assert len(ids) == len(changed) + 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["frames=0"], "frames must be >= 1"),
        (["model.attention=flashy"], "unknown model.attention 'flashy'; choose one of ['eager', 'sdpa'"),
        (["model.frame_exec=nonsense"], "unknown model.frame_exec 'nonsense'; choose one of ['fused', 'sequential', 'chunked']"),
        (["model.prune_depth=30"], "model.prune_depth must be in 0..8 (depth), got 30"),
        (["model.compile=fast"], "unknown model.compile 'fast'; choose one of ['off', 'default'"),
        (["part=heads"], "unknown part 'heads'; choose one of ['aggregator', 'full']"),
        (["device=cuda"], "no CUDA GPU"),
        (["inputs.height=50"], "multiples of 14"),
        (["model.checkpoint=/nonexistent/model.pt"], "checkpoint not found"),
        (["model.dtype=fp8"], "unknown model.dtype 'fp8'; choose one of ['fp32', 'bf16_autocast'"),
        (["out=/proc/vggt-bench-cannot-write"], "cannot write results"),
    ],
)
def test_bad_input_is_one_line_naming_the_fix(args, message, tmp_path):
    if not any(a.startswith("out=") for a in args):
        args = args + [f"out={tmp_path}"]
    if torch.cuda.is_available() and args[0] == "device=cuda":
        pytest.skip("this machine has a GPU")
    done = cli("run", "experiment=smoke", *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [l for l in done.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("vggt_bench: error:"), done.stderr
    assert message in lines[0]
    assert "Traceback" not in done.stderr


def test_unknown_command_and_help():
    assert "sweep" in cli("--help").stdout and "verify" in cli("--help").stdout
    bad = cli("benchmark")
    assert bad.returncode == 2 and "unknown command" in bad.stderr
    for command in ("run", "verify", "profile", "report"):
        done = cli(command, "--help")
        assert done.returncode == 0 and "== Config ==" in done.stdout, command


def test_exit_codes_and_one_line_errors_as_a_shell_sees_them(tmp_path):
    """The process itself: `python -m vggt_bench` (__main__'s sys.exit, Hydra's exit inside the job) gives
    the shell the codes the other tests read from the CLI run in process (conftest.run_cli)."""
    assert run_cli_subprocess("--help").returncode == 0
    bad = run_cli_subprocess("benchmark")
    assert bad.returncode == 2 and bad.stderr.startswith("vggt_bench: error: unknown command 'benchmark'")
    done = run_cli_subprocess("run", "experiment=smoke", "frames=0", f"out={tmp_path}")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines() == ["vggt_bench: error: frames must be >= 1, got frames=0"], done.stderr


def test_grid_size_counts_preset_and_command_line():
    from omegaconf import OmegaConf

    from vggt_bench.commands.sweep import grid_size

    def size(params, task):
        return grid_size(OmegaConf.create({"hydra": {"sweeper": {"params": params}, "overrides": {"task": task}}}))

    assert size({"frames": "1,2", "model.prune_depth": "0,4"}, []) == 4
    assert size({"frames": "1,2", "model.prune_depth": "0,4"}, ["frames=1,2,4,8"]) == 8  # command line wins
    assert size({}, ["frames=1,2,3", "model.frame_exec=fused,sequential", "out=x"]) == 6


def test_submitit_local_runs_each_point_in_its_own_process(tmp_path):
    done = cli("sweep", "experiment=smoke", "hydra/launcher=submitit_local", f"out={tmp_path}", "report=false",
               "frames=1", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = load_results(str(tmp_path))
    assert len(table) == 2 and set(table["status"]) == {"ok"}
    assert os.path.isdir(tmp_path / "hydra" / ".submitit")  # the launcher's own job folders
    # without a terminal, a line as each job ends in its own process (a bar on one), counted by the sweep
    assert "2/2 points ended" in done.stdout and "2 points in" in done.stdout


def test_image_folder_input_uses_upstream_preprocessing(tmp_path):
    from vggt_model.inputs import image_folder, load_images

    folder = os.path.join(FIXTURES, "images")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    crop = load_images(files, "crop")
    assert crop.shape == (2, 3, 392, 518)  # width 518, height 384*518/512 rounded to 14
    assert 0.0 <= float(crop.min()) and float(crop.max()) <= 1.0
    pad = load_images(files, "pad")
    assert pad.shape == (2, 3, 518, 518)
    assert torch.all(pad[:, :, :63] == 1.0) and torch.all(pad[:, :, -63:] == 1.0)  # white padding, centred
    cycled = image_folder(folder, frames=3)
    assert cycled.shape == (1, 3, 3, 392, 518) and torch.equal(cycled[0, 2], cycled[0, 0])
    done = cli("run", f"inputs.image_dir={folder}", "frames=2", "measure.repeats=1", "measure.warmup=0",
               f"out={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    row = load_results(str(tmp_path)).iloc[0]
    assert row["height"] == 392 and row["width"] == 518 and row["inputs"] == folder


def test_run_full_model_with_tracks(tmp_path):
    done = cli("run", "part=full", "inputs.query_points=4", "frames=2", "inputs.height=56", "inputs.width=84",
               "measure.repeats=1", "measure.warmup=0", f"out={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    row = load_results(str(tmp_path)).iloc[0]
    assert row["status"] == "ok" and row["part"] == "full" and row["query_points"] == 4
    from vggt_bench.measure.flops import aggregator_flops
    from vggt_model.config import VGGTConfig

    assert row["flops"] > aggregator_flops(VGGTConfig.small(), 56, 84, 2)["total"]  # heads counted


def test_default_preset_shows_the_effects_it_promises():
    # the default CPU grid must contain what its claims need: frames growing, fused and sequential
    from hydra import compose, initialize_config_dir

    from vggt_bench.core.config import register

    register()
    from vggt_bench.core.resources import experiments_dir

    with initialize_config_dir(config_dir=experiments_dir(), version_base=None):
        cfg = compose("bench", return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert len(str(params["frames"]).split(",")) >= 4
    assert set(str(params["model.frame_exec"]).split(",")) == {"fused", "sequential"}


def test_system_exit_inside_a_point_is_not_swallowed(monkeypatch):
    """A launcher's requeue (or any SystemExit) must leave the job, not become an error row."""
    def requeue(*a, **k):
        raise SystemExit(3)

    monkeypatch.setattr(timing, "time_calls", requeue)
    with pytest.raises(SystemExit):
        run.run_point(_point(), run.Method(warmup=0, repeats=1))


def test_flops_of_huge_frame_counts_fit_the_table(tmp_path):
    """10^8 frames: the analytic count passes 2**63; the row (an unavailable point) must still be stored."""
    row = run.run_point(_point(frames=10**8, attention="sdpa_cudnn"), run.Method(warmup=0, repeats=1))
    assert row["status"] == "unavailable" and row["flops"] > 2**63
    store = ResultStore(str(tmp_path))
    store.ensure_writable()
    store.add(row)
    assert load_results(str(tmp_path)).iloc[0]["flops"] > 2**63


def test_a_folder_of_unreadable_images_is_one_line(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    done = cli("run", f"inputs.image_dir={folder}", "frames=1", f"out={tmp_path / 'out'}")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot read the images" in lines[0] and "Traceback" not in done.stderr


@pytest.mark.parametrize("setting", ["model.compile=default", "model.memory_plan=offload", "model.attention=eager"])
def test_settings_that_claim_the_same_function_are_checked_against_eager_fp32(setting, tmp_path):
    """measure.drift=true: every row says how far the setting is from the eager fp32 model on the same
    weights and inputs; in fp32 that is rounding, far below any real change (prune_depth=1 is ~1e-3)."""
    done = cli("run", "experiment=smoke", "frames=2", setting, "measure.drift=true", "measure.repeats=1",
               "measure.warmup=1", f"out={tmp_path}", timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    row = load_results(str(tmp_path)).iloc[0]
    assert row["status"] == "ok" and 0 <= row["drift_vs_eager"] < 1e-5, row["drift_vs_eager"]
    pruned = cli("run", "experiment=smoke", "frames=2", "model.prune_depth=2", "measure.drift=true",
                 "measure.repeats=1", f"out={tmp_path / 'k'}")
    assert pruned.returncode == 0, pruned.stderr[-2000:]
    assert load_results(str(tmp_path / "k")).iloc[0]["drift_vs_eager"] > 1e-4  # the check can fail


def test_the_eager_fp32_reference_is_built_once_per_workload(monkeypatch):
    """measure.drift built and ran a fresh fp32 model for every point's drift_vs_eager (the 2026-12-06
    GPU study: ~20 s per 100-frame point, and minutes per 400-frame point). Points that share the
    weights and inputs now share one reference; another frame count gets its own."""
    built = []
    real = build.build_weights
    monkeypatch.setattr(build, "build_weights", lambda point, heads: built.append(point.frames) or real(point, heads))
    drift._EAGER.clear()
    rows = [run.measure(_point(**knobs), run.Method(0, 1, drift=True))
            for knobs in ({}, {"frame_exec": "sequential"}, {"prune_depth": 1}, {"frames": 3})]
    assert [r["status"] for r in rows] == ["ok"] * 4
    # the timed model once (its weights do not depend on the frames), then one reference per frame count
    assert built == [2, 2, 3], built
    assert rows[0]["drift_vs_eager"] < 1e-5 and rows[1]["drift_vs_eager"] < 1e-5  # exact settings
    assert rows[2]["drift_vs_eager"] > 1e-4  # prune_depth=1 changes the function: the check can fail
