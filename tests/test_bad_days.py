"""A results directory on a bad day (issue 29): a corrupt point file, a truncated table, a full or
read-only disk, two sweeps into one `out`. Nothing measured is lost; each is one line."""

import json
import os

import pandas as pd
import pytest

from conftest import run_cli as cli
from vggt_bench.core.results import ResultStore, load_results

TINY = ["experiment=smoke", "measure.warmup=0", "measure.repeats=1", "report=false"]


def warnings_of(done):
    return [line for line in done.stderr.splitlines() if line.startswith("vggt_bench: warning:")]


@pytest.fixture
def swept(tmp_path):
    """A sweep of two points into tmp_path/out: (out, [point files])."""
    out = tmp_path / "out"
    done = cli("sweep", *TINY, "frames=1,2", "model.frame_exec=fused", f"out={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    points = sorted((out / "points").glob("*.json"))
    assert len(points) == 2
    return out, points


def test_a_corrupt_point_file_is_set_aside_named_and_measured_again(swept):
    # 2026-12-07, a new user's faults: one truncated points/<id>.json killed every later sweep into the
    # folder (resume=false too) with a JSONDecodeError traceback that never named the file
    out, (broken, kept) = swept
    text = broken.read_text()
    broken.write_text(text[: len(text) // 2])  # a crash mid-write on a filesystem without atomic renames
    again = cli("sweep", *TINY, "frames=1,2", "model.frame_exec=fused", f"out={out}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Traceback" not in again.stderr
    (line,) = warnings_of(again)
    aside = out / "points" / "corrupt" / broken.name
    assert f"{broken} is unreadable (JSONDecodeError" in line and f"set aside to {aside}" in line, line
    assert aside.read_text() == text[: len(text) // 2]  # kept as it was, never deleted
    assert again.stdout.count("skip") == 1 and again.stdout.count("ok    small") == 1  # measured again
    assert json.loads(broken.read_text())["status"] == "ok"
    assert len(load_results(str(out))) == 2


@pytest.mark.parametrize("content", [b"", b"\xff\xfe not utf-8", b"[1, 2]", b'{"status": "ok"}'])
def test_every_reader_of_the_store_skips_and_sets_aside_what_it_cannot_read(tmp_path, content, capsys):
    store = ResultStore(str(tmp_path))
    store.ensure_writable()
    store.add({"point_id": "a", "status": "ok", "timestamp": "1"})
    (tmp_path / "points" / "b.json").write_bytes(content)
    assert list(store.table()["point_id"]) == ["a"]
    assert not store.is_done("b")
    assert (tmp_path / "points" / "corrupt" / "b.json").read_bytes() == content
    assert len(capsys.readouterr().err.strip().splitlines()) == 1  # said once, when set aside
    (tmp_path / "points" / "b.json").write_bytes(content)  # the same name again: both kept
    assert store.existing("b") is None
    assert len(list((tmp_path / "points" / "corrupt").iterdir())) == 2


def test_report_sets_a_corrupt_point_aside_and_draws_the_rest(swept):
    out, (broken, kept) = swept
    broken.write_text("{")
    (out / "results.parquet").unlink()  # the table must come from the points: one of them unreadable
    (out / "results.csv").unlink()
    done = cli("report", f"results={out}", "notebook=false")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert any(f"{broken} is unreadable" in line for line in warnings_of(done)), done.stderr
    assert (out / "points" / "corrupt" / broken.name).read_text() == "{"
    assert list(pd.read_parquet(out / "results.parquet")["point_id"]) == [kept.stem]


def test_report_and_the_sweep_rebuild_a_truncated_table_from_the_points(swept, tmp_path):
    # 2026-12-07: `report results=` a folder whose results.parquet was truncated: a 38-line traceback,
    # exit 1, and no word that the points could rebuild it
    out, points = swept
    for name in ("results.parquet", "results.csv"):
        data = (out / name).read_bytes()
        (out / name).write_bytes(data[: len(data) // 2])
    done = cli("report", f"results={out}", "notebook=false")
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = warnings_of(done)
    assert line.startswith("vggt_bench: warning: results.parquet is unreadable (") and line.endswith(
        f"in {out}; rebuilt results.parquet and results.csv from its 2 points"), line
    assert len(pd.read_parquet(out / "results.parquet")) == 2 and len(pd.read_csv(out / "results.csv")) == 2
    assert (out / "figures" / "scaling_wall.png").exists()
    # the sweep's table step: every point kept, one of them now unreadable, the table truncated again
    (out / "results.parquet").write_bytes(b"PAR1 truncated")
    points[0].write_text("")
    again = cli("sweep", *TINY, "frames=1,2", "model.frame_exec=fused", f"out={out}")
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-2000:]
    assert len(pd.read_parquet(out / "results.parquet")) == 2


def test_a_truncated_table_without_points_is_one_line_naming_the_fix(swept, tmp_path):
    out, _ = swept
    copy = tmp_path / "copy"  # a table copied without its points, cut short on the way
    copy.mkdir()
    data = (out / "results.parquet").read_bytes()
    (copy / "results.parquet").write_bytes(data[: len(data) // 2])
    done = cli("report", f"results={copy}", "notebook=false")
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("vggt_bench: error: results.parquet is unreadable (") and line.endswith(
        f"in {copy}, and there are no points in {copy / 'points'} to rebuild it from: rerun the sweep with "
        f"out={copy} to measure them again"), line
    (copy / "results.csv").write_bytes((out / "results.csv").read_bytes())  # a CSV beside it: read, and said
    done = cli("report", f"results={copy}", "notebook=false")
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = warnings_of(done)
    assert "read results.csv instead" in line, line


@pytest.mark.parametrize("what, code", [("/points/", "ENOSPC"), ("results.parquet", "EROFS")])
def test_a_disk_that_fills_up_or_turns_read_only_mid_sweep_is_one_line_and_exit_2(tmp_path, what, code):
    # 2026-12-07: losing write access mid-sweep (a remounted or full disk) was a traceback and exit 1
    import errno

    from conftest import run_cli_in_process
    from vggt_bench.core import results

    out = tmp_path / "out"
    args = ["sweep", *TINY, "frames=1,2", "model.frame_exec=fused", f"out={out}"]
    real = results.atomic_write

    def fail(f):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    def full(path, write):  # the disk fills up once a point is kept: every later write of `what` fails
        if what in path and len(os.listdir(out / "points")) >= 1:
            write = fail
        return real(path, write)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(results, "atomic_write", full)
        done = run_cli_in_process(*args)
    assert done.returncode == 2, (done.stdout, done.stderr[-3000:])
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    why = os.strerror(getattr(errno, code))
    kept = list((out / "points").glob("*.json"))
    if what == "/points/":  # the second point's row is lost with the write; the first is kept, with its tables
        assert len(kept) == 1 and len(load_results(str(out))) == 1
        assert line.startswith(f"vggt_bench: error: cannot write {out / 'points'}/") and f".json ({why}); kept 1 " \
            f"point in {out / 'points'} (the row of small S=2 fused k=0 sdpa fp32 aggregator was not written: the " \
            f"rerun measures it again); free space or restore write access, then rerun the same command to resume" \
            in line, line
    else:  # the first point's row is kept, its table write fails: the tables lag the points
        assert len(kept) == 1
        assert line == (f"vggt_bench: error: cannot write {out / 'results.parquet'} ({why}); kept 1 point in "
                        f"{out / 'points'}; free space or restore write access, then rerun the same command to "
                        f"resume"), line
    resumed = cli(*args)  # the space is back: the rerun measures what is missing and rebuilds the tables
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert len(load_results(str(out))) == 2


# ---- two sweeps into one out ----------------------------------------------------------------------
GRID = ["experiment=adhoc", "model.arch=small", "frames=2,3,4", "model.frame_exec=fused,sequential",
        "measure.warmup=0", "measure.repeats=1", "report=false"]
HOLD_FIRST_POINT = """
import os, sys, time
from vggt_bench.commands import sweep
real, calls = sweep.run_point, []
def held(point, how, experiment=""):  # the first point is measured, then kept until {go!r} exists
    row = real(point, how, experiment)
    calls.append(1)
    deadline = time.time() + 240
    while len(calls) == 1 and not os.path.exists({go!r}) and time.time() < deadline:
        time.sleep(0.1)
    return row
sweep.run_point = held
from vggt_bench.cli import main
sys.exit(main({args!r}))
"""


def measured(stdout):
    """The points a sweep measured, as its result lines name them."""
    return [line.split(":")[0][6:] for line in stdout.splitlines() if line.startswith(("ok ", "error", "oom "))]


def test_two_sweeps_into_one_out_split_the_grid_and_measure_each_point_once(tmp_path):
    # 2026-12-07: two sweeps started into the same out both measured every point, contending for the
    # machine, and the last writer won; nothing said so. Sweep A holds its first point until sweep B is
    # done: B measures the rest, says who holds that one, and A then skips what B measured.
    import subprocess
    import sys
    import time

    from conftest import ROOT, _cli

    out, go = tmp_path / "out", tmp_path / "go"
    args = ["sweep", *GRID, f"out={out}"]
    _, env = _cli(args)
    first = subprocess.Popen([sys.executable, "-c", HOLD_FIRST_POINT.format(go=str(go), args=args)], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list(out.glob("claims/*.json")):  # A holds its first point
            assert first.poll() is None, first.communicate()
            time.sleep(0.2)
        (held,) = list((out / "claims").glob("*.json"))
        second = cli(*args)
        go.touch()
        a_out, a_err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0 and second.returncode == 0, (a_err[-2000:], second.stderr[-2000:])
    a, b = measured(a_out), measured(second.stdout)
    assert len(a) == 1 and len(b) == 5 and not set(a) & set(b), (a_out, second.stdout)
    (line,) = [line for line in second.stdout.splitlines() if line.startswith("held ")]
    assert line.startswith(f"held  {a[0]}: another sweep is measuring it (host ") and f", pid {first.pid}, since " in line
    assert a_out.count("skip  ") == 5  # A's own later points, measured by B meanwhile
    table = load_results(str(out))
    assert len(table) == 6 and table["point_id"].is_unique and held.stem in set(table["point_id"])
    assert not list((out / "claims").glob("*.json"))  # every claim given up


def test_two_sweeps_started_together_never_measure_a_point_twice(tmp_path):
    from conftest import cli_process

    import subprocess

    out = tmp_path / "out"
    procs = [cli_process("sweep", *GRID, f"out={out}", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        results = [p.communicate(timeout=400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    a, b = (measured(stdout) for stdout, _ in results)
    assert len(a) + len(b) == 6 and not set(a) & set(b), results
    assert len(load_results(str(out))) == 6


def test_a_live_claim_holds_its_point_and_a_stale_one_is_taken_over(tmp_path):
    import socket
    import subprocess
    import time

    from vggt_bench.core import claims

    out = str(tmp_path)
    path = tmp_path / "claims" / "p.json"
    path.parent.mkdir()
    other = subprocess.Popen(["sleep", "120"])
    try:  # a live process of this host holds it
        path.write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid, "started": "then"}))
        holder, taken = claims.claim(out, "p")
        assert holder["pid"] == other.pid and taken is None and claims.held_by_others(out)[0]["point_id"] == "p"
        claims.release(out, "p")  # not ours: left alone
        assert path.exists()
    finally:
        other.kill()
        other.wait()
    holder, taken = claims.claim(out, "p")  # its process is gone: taken over at once
    assert holder is None and taken["why"] == f"its process {other.pid} is gone"
    assert json.loads(path.read_text())["pid"] == os.getpid() and not claims.held_by_others(out)
    claims.release(out, "p")
    assert not path.exists()
    # another host's claim: its pid means nothing here; held while refreshed, taken over once it is not
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "then"}))
    assert claims.claim(out, "p")[0]["host"] == "elsewhere"
    old = time.time() - claims.STALE_S - 5
    os.utime(path, (old, old))
    holder, taken = claims.claim(out, "p")
    assert holder is None and taken["why"].startswith("not refreshed for ")
    claims.release_all()
    path.write_text('{"host": ')  # cut short: holds no one
    assert claims.claim(out, "p")[0] is None
    claims.release_all()
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    claims.release(out, "p", whoever=True)  # a launcher clearing a dead job's claim
    assert not path.exists()


def test_the_write_probe_of_two_sweeps_starting_at_once_never_collides(tmp_path):
    """Two sweeps started together probe `out` at the same moment (the test above, which caught this now and
    then): with one shared probe name, one sweep's unlink took the other's file and it stopped with "cannot
    write results ... (No such file or directory)", exit 2."""
    import threading

    from vggt_bench.core.results import unwritable

    problems = []

    def probe():
        problems.extend(p for p in (unwritable(str(tmp_path)) for _ in range(300)) if p)

    threads = [threading.Thread(target=probe) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == []
    assert os.listdir(tmp_path) == []  # no probe left behind
