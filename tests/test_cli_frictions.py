"""What a new user hit on 2026-11-25, each with the test that would have caught it."""

import datetime
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, cli_process, run_cli as cli
from vggt_bench.core.results import ResultStore, load_results, locked


def one_line(done):
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["model.atention=sdpa"], "unknown key model.atention; did you mean model.attention?"),
    (["+model.atention=eager"], "unknown key model.atention; did you mean model.attention?"),
    (["frames=abc"], "frames='abc' does not fit frames (int)"),
    (["experiment=smok"], "unknown experiment 'smok'; did you mean smoke?"),
    (["hydra/launcher=slurm"], "unknown hydra/launcher 'slurm'"),
])
def test_a_misspelled_key_or_value_is_refused_in_one_line_with_exit_2(args, message, tmp_path):
    done = cli("run", "experiment=smoke", *args, f"out={tmp_path}") if args[0].startswith(("model", "+", "frames")) \
        else cli("sweep", *args, f"out={tmp_path}")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in one_line(done)


def test_ctrl_c_during_a_sweep_is_one_line_keeps_the_points_and_exits_130(tmp_path):
    proc = cli_process("sweep", "experiment=smoke", "frames=1,2,3,4,5,6,7,8", "model.frame_exec=fused",
                       "measure.repeats=20", f"out={tmp_path}", "report=false", stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    points = tmp_path / "points"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (points.is_dir() and any(points.iterdir())):
            time.sleep(0.2)
        assert points.is_dir() and any(points.iterdir()), "no point was measured in time"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:  # a sweep that hangs must not outlive its test (CI 2026-12-06: it ran on, 20 repeats a point)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    kept = len(list(points.glob("*.json")))
    assert last == f"vggt_bench: interrupted; {kept} point{'s' if kept != 1 else ''} kept in {tmp_path}; rerun the same command to resume"
    assert kept >= 1 and len(load_results(str(tmp_path))) == kept
    assert not list(tmp_path.glob(".tmp-*")) and not list(points.glob(".tmp-*")), "half-written files left behind"


def test_ctrl_c_leaves_within_its_bound_when_the_tables_rebuild_hangs(tmp_path):
    # The handler's rebuild once waited forever on an import lock the interrupted code held (acd110d
    # removed that cause); whatever the next one is, Ctrl-C still ends the run: the same one line, which
    # says the tables were not updated, and exit 130.
    (tmp_path / "points").mkdir()
    (tmp_path / "points" / "a.json").write_text('{"point_id": "a", "status": "ok", "timestamp": 1.0}')
    code = ("import time; from vggt_bench import cli; from vggt_bench.core import results; "
            "results.ResultStore.rebuild_before_exit = lambda self: time.sleep(600); cli.REBUILD_WITHIN_S = 2; "
            f"cli.leave_interrupted({str(tmp_path)!r})")
    start = time.time()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 130 and time.time() - start < 60, done.stderr[-2000:]
    assert one_line(done) == (f"vggt_bench: interrupted; 1 point kept in {tmp_path} (tables not updated within 2 s: "
                              "the next run rebuilds them); rerun the same command to resume")


def test_a_second_ctrl_c_while_leaving_is_ignored(tmp_path):
    # The handler (installed as the CLI installs it) ignores SIGINT from its first line: a second Ctrl-C
    # during the rebuild neither starts another rebuild nor prints a second line.
    (tmp_path / "points").mkdir()
    (tmp_path / "points" / "a.json").write_text('{"point_id": "a", "status": "ok", "timestamp": 1.0}')
    code = ("import os, signal, time; from vggt_bench import cli; from vggt_bench.core import results; "
            f"signal.signal(signal.SIGINT, lambda *_: cli.leave_interrupted({str(tmp_path)!r})); calls = []; "
            "results.ResultStore.rebuild_before_exit = lambda self: (calls.append(1), "
            "os.kill(os.getpid(), signal.SIGINT), time.sleep(0.5), print(len(calls), flush=True)); "
            f"cli.leave_interrupted({str(tmp_path)!r})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 130 and done.stdout.strip() == "1", (done.stdout, done.stderr[-2000:])
    assert one_line(done).startswith("vggt_bench: interrupted; 1 point kept in ")


def test_the_parquet_writer_is_imported_before_any_point_is_measured(tmp_path):
    # CI-like loop, 2026-12-06: one Ctrl-C in ~20 landed while the first table write was importing
    # pyarrow.parquet; the handler's own write then failed on the half-made module and left points with no
    # table. Opening the store (before any point) imports it now: in a fresh interpreter, checked here.
    # CI, later that day: the sweep hung after one Ctrl-C; py-spy showed the handler's table build waiting
    # on pyarrow's pandas shim's import lock, held by the interrupted first table build below it (importing
    # pyarrow.vendored.version). The whole table path now runs once when the store opens.
    lazy = ["pyarrow.parquet", "pyarrow.vendored.version", "pyarrow.pandas_compat"]
    code = (f"import sys; from vggt_bench.core.results import ResultStore; lazy = {lazy!r}; "
            "assert not [m for m in lazy if m in sys.modules], [m for m in lazy if m in sys.modules]; "
            f"ResultStore({str(tmp_path)!r}).ensure_writable(); "
            "assert all(m in sys.modules for m in lazy), [m for m in lazy if m not in sys.modules]; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_ctrl_c_inside_our_own_table_rebuild_still_leaves_the_tables(tmp_path):
    # CI 2026-11-25: the signal landed while this process held the tables' lock mid-rebuild; the
    # handler's rebuild could not take the lock, and the run was left with points but no table.
    store = ResultStore(str(tmp_path))
    store.ensure_writable()
    store.add({"point_id": "a", "status": "ok", "timestamp": 1.0})
    with open(os.path.join(store.points_dir, "b.json"), "w") as f:
        f.write('{"point_id": "b", "status": "ok", "timestamp": 2.0}')
    with locked(str(tmp_path)):  # what the interrupted rebuild holds
        stale = tmp_path / f".tmp-{os.getpid()}-abcresults.csv"
        stale.write_text("half")
        store.rebuild_before_exit()
    assert list(load_results(str(tmp_path))["point_id"]) == ["a", "b"]
    assert not stale.exists()


def test_verify_on_a_non_checkpoint_never_suggests_unsafe_loading(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(2), "optimizer": torch.optim.SGD}, path)  # a class: not weights-only
    done = cli("verify", f"checkpoint={path}")
    assert done.returncode == 2
    line = one_line(done)
    assert "not a weights-only PyTorch state dict" in line and "weights_only=False" not in done.stderr


def test_the_default_out_is_a_new_run_and_latest_points_at_it(tmp_path):
    done = cli("run", "experiment=smoke", "frames=1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    latest = tmp_path / "reports" / "runs" / "latest-run"
    assert latest.is_symlink() and (latest / "results.parquet").exists()
    assert f"results go to reports/runs/{os.readlink(latest)} (reports/runs/latest-run points at it)" in done.stdout
    assert "row: " in done.stdout and "results.parquet" in done.stdout  # `run` says where its row went


def test_two_runs_starting_in_one_second_get_a_folder_each(tmp_path, monkeypatch):
    # new_run_dir looked for a free <timestamp> name, then made it: another process starting in the same
    # second could make it in between, and this one died on FileExistsError. A check that says "free" for a
    # folder that exists is that race, replayed.
    from vggt_bench.core import results

    first = results.new_run_dir(str(tmp_path))
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda path: False if str(path).startswith(first) else real_exists(path))
    frozen = datetime.datetime.strptime(os.path.basename(first)[:19], "%Y-%m-%d_%H-%M-%S")
    monkeypatch.setattr(results.datetime, "datetime", type("Frozen", (datetime.datetime,), {"now": lambda: frozen}))
    second = results.new_run_dir(str(tmp_path))
    assert second == first + "_2" and os.path.isdir(second)
    assert os.readlink(tmp_path / "latest") == os.path.basename(second)


def test_latest_is_the_latest_sweep_whatever_ran_after_it(tmp_path):
    # 2026-12-07: `profile` and `run` without out= moved reports/runs/latest, so the README's
    # `report results=reports/runs/latest` rendered a single run, not the sweep
    tiny = ["experiment=smoke", "measure.warmup=0", "measure.repeats=1"]
    for args in (["sweep", *tiny, "frames=1", "model.frame_exec=fused", "report=false"], ["run", *tiny, "frames=2"],
                 ["profile", "profiler=torch", "model.arch=small", "inputs.height=56", "inputs.width=84", "frames=1",
                  "iterations=1", "measure.warmup=0"]):
        done = cli(*args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    runs = tmp_path / "reports" / "runs"
    targets = {name: os.readlink(runs / name) for name in ("latest", "latest-run", "latest-profile")}
    assert len(set(targets.values())) == 3, targets
    report = cli("report", "results=reports/runs/latest", "notebook=false", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    assert list(load_results(str(runs / "latest"))["frames"]) == [1]  # the sweep's point, not the run's


def test_help_shows_the_out_a_command_really_writes_to():
    # 2026-12-07: `sweep --help` showed `out: reports/runs/latest` while results went to a new folder
    done = cli("sweep", "--help")
    assert done.returncode == 0 and "out: reports/runs/<timestamp>" in done.stdout, done.stdout[-2000:]


def test_results_files_are_as_readable_as_the_users_other_files(tmp_path):
    done = cli("run", "experiment=smoke", "frames=1", f"out={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    mask = os.umask(0)
    os.umask(mask)
    for path in [tmp_path / "results.csv", tmp_path / "results.parquet", *(tmp_path / "points").glob("*.json")]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask, path


@pytest.mark.parametrize("name, content", [("report.sqlite", "not a database"), ("trace.json", '{"broken'),
                                           ("notes.txt", "plain text")])
def test_analyze_on_a_file_that_is_not_a_trace_is_one_line(name, content, tmp_path):
    path = tmp_path / name
    path.write_text(content)
    done = cli("profile", f"analyze={path}", f"out={tmp_path / 'out'}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"analyze={path}" in one_line(done)


@pytest.mark.parametrize("args, message", [
    (["--run"], "--run is not an option of `python -m vggt_bench sweep`"),
    (["--multirun"], "--multirun is not an option"),
    (["--shell-completion"], "--shell-completion is not an option"),
    (["--hydra-help"], "--hydra-help is not an option"),
    (["--config-name", "x"], "--config-name is not an option"),
    (["--cfg=jobs"], "--cfg takes one of job|hydra|all, got 'jobs'"),
    (["--resolve"], "--resolve goes with --cfg"),
    (["--nope"], "unknown option '--nope'; options are --help, --cfg job|hydra|all"),
    (["--cfg", "job", "frames=1,2"], "--cfg and --info show one configuration"),
    (["--cfg", "job", "model.atention=sdpa"], "unknown key model.atention"),
])
def test_hydras_own_flags_that_cannot_work_here_are_one_line_with_exit_2(args, message, tmp_path):
    """2026-12-06: `sweep --cfg=job`, `--run`, `--resolve` and `--hydra-help` ended in a Hydra traceback and
    exit 1 (sweep adds --multirun, which Hydra refuses beside them)."""
    done = cli("sweep", *args, f"out={tmp_path / 'out'}")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in one_line(done)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags", [["--cfg", "job"], ["--cfg=job", "--resolve"], ["-c", "job", "-p", "model"],
                                   ["--info", "defaults"]])
def test_hydras_inspection_flags_print_the_configuration_and_run_nothing(flags, tmp_path):
    done = cli("sweep", "experiment=smoke", "frames=4", *flags, f"out={tmp_path / 'out'}")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    if "-p" in flags:
        assert "# @package model" in done.stdout and "kv_keep: 1.0" in done.stdout
    elif "--info" in flags:
        assert "Defaults List" in done.stdout
    else:
        assert "frames: 4" in done.stdout
    assert not (tmp_path / "out" / "points").exists() and not (tmp_path / "out" / "results.csv").exists()


def test_without_a_terminal_there_is_no_bar_and_each_point_is_one_line(tmp_path):
    # 2026-12-07: in a log file the bar's redraws interleaved with the points' lines
    done = cli("sweep", "experiment=smoke", "frames=1,2", "model.frame_exec=fused", "measure.warmup=0",
               "measure.repeats=1", "report=false", f"out={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "\r" not in done.stdout + done.stderr and "point/s" not in done.stderr, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("ok ")]
    assert [line.split(":")[0] for line in lines] == ["ok    small S=1 fused k=0 sdpa fp32 aggregator",
                                                      "ok    small S=2 fused k=0 sdpa fp32 aggregator"]


def test_the_sweeps_first_line_names_each_axis_and_where_it_comes_from(tmp_path):
    # 2026-12-07: `sweep frames=4,8 model.frame_exec=fused` also swept the default preset's prune_depth: 0,4,
    # and the screen said only "4 points"
    done = cli("sweep", "frames=4,8", "model.frame_exec=fused", "measure.warmup=0", "measure.repeats=1",
               "report=false", f"out={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0] == (
        f"vggt_bench sweep: 4 points (frames=4,8 from the command line x model.prune_depth=0,4 from "
        f"experiment=default; pass experiment=adhoc for only yours) -> {tmp_path}")
