"""How far a row can be trusted: machine telemetry, noise classification, adaptive timing, cold costs."""

import json
import math
import os
import random
import subprocess
import sys
import time
import types

import pandas as pd
import pytest

from conftest import run_cli as cli
from vggt_bench.commands import sweep
from vggt_bench.measure import noise, run, telemetry, timing
from vggt_bench.measure.point import Point
from vggt_bench.core.results import load_results
from vggt_bench.core.schema import MEASUREMENTS


# ---- classify ------------------------------------------------------------------------------------
def _row(**changes):
    """A clean, well-measured GPU row on a quiet machine."""
    base = dict(
        status="ok", device="cuda", repeats=20, latency_ms_p10=100.0, latency_ms_median=102.0, latency_ms_p90=105.0,
        load_avg_1m=1.0, cpu_cores=16, cpu_usable_cores=16, cpu_self_share=0.06, cpu_other_share=0.01,
        throttle_reasons="gpu_idle", stopped_by="repeats", rel_ci95=0.01,
    )
    base.update(changes)
    return base


def test_a_clean_row_is_not_noisy():
    assert noise.classify(_row()) == (False, "")
    assert noise.columns(_row()) == {"spread": pytest.approx(1.05), "noisy": False, "noise_reason": "",
                                     "backs_claim": True, "claim_note": ""}


def test_a_cpu_row_backs_no_claim_even_when_clean():
    """The developers' guide: CPU timings move whenever anything else runs; they back no claim, and the
    tool must say so in its rows. A clean CPU row was indistinguishable from a clean GPU row."""
    clean = noise.columns(_row(device="cpu", cpu_cores=2, cpu_usable_cores=2, load_avg_1m=1.0))
    assert clean["noisy"] is False and clean["backs_claim"] is False
    assert clean["claim_note"].startswith("CPU timing:") and "backs no speed claim" in clean["claim_note"]
    noisy = noise.columns(_row(latency_ms_p90=134.0))
    assert noisy["backs_claim"] is False and noisy["claim_note"] == "noisy: see noise_reason"
    assert noise.columns(_row(status="oom"))["backs_claim"] is False


def test_spread_over_the_device_threshold_is_noisy():
    noisy, reason = noise.classify(_row(latency_ms_p90=134.0))
    assert noisy and reason == "spread p90/p10 1.34 > 1.10"
    # the same spread is fine on a CPU, whose threshold is 1.5 ...
    assert noise.classify(_row(device="cpu", latency_ms_p90=134.0)) == (False, "")
    # ... but not 1.6
    assert noise.classify(_row(device="cpu", latency_ms_p90=160.0)) == (True, "spread p90/p10 1.60 > 1.50")
    # thresholds are configurable
    assert noise.classify(_row(latency_ms_p90=134.0), noise.Thresholds(spread_gpu=1.5)) == (False, "")


def test_other_processes_taking_the_cpu_is_noisy():
    assert noise.classify(_row(cpu_other_share=0.41)) == (True, "other processes took 41% of the CPU")
    assert noise.classify(_row(cpu_other_share=0.2))[0] is False


def test_load_beyond_the_cores_is_noisy_unless_this_process_explains_it():
    # a 2-core box, 3.2 runnable tasks, this process used 1 of the 2 cores: 2.2 from others
    noisy, reason = noise.classify(_row(device="cpu", cpu_cores=2, cpu_usable_cores=2, load_avg_1m=3.2, cpu_self_share=0.5))
    assert noisy and reason == "load 3.2 on 2 cores (2.2 from other processes)"
    # a quiet 2-core box where torch's own 2 threads make the load 2.1: not noisy
    assert noise.classify(_row(device="cpu", cpu_cores=2, cpu_usable_cores=2, load_avg_1m=2.1, cpu_self_share=1.0))[0] is False
    # without the own share (older rows) the load alone decides
    assert noise.classify(_row(device="cpu", cpu_cores=2, load_avg_1m=3.2, cpu_self_share=None)) == (True, "load 3.2 on 2 cores")


def test_throttled_gpu_is_noisy_and_idle_or_application_clocks_are_not():
    assert noise.classify(_row(throttle_reasons="gpu_idle,sw_power_cap")) == (False, "")  # an H100's steady state
    assert noise.classify(_row(throttle_reasons="sw_power_cap,hw_slowdown")) == (True, "GPU throttled: hw_slowdown")
    assert noise.classify(_row(throttle_reasons="hw_slowdown,hw_thermal_slowdown"))[1] == "GPU throttled: hw_slowdown, hw_thermal_slowdown"
    assert noise.classify(_row(throttle_reasons="gpu_idle,applications_clocks_setting")) == (False, "")
    assert noise.classify(_row(throttle_reasons="")) == (False, "")
    strict = noise.Thresholds(benign_throttle=frozenset({"gpu_idle"}))
    assert noise.classify(_row(throttle_reasons="gpu_idle,sw_power_cap"), strict) == (True, "GPU throttled: sw_power_cap")


def test_too_few_repeats_is_noisy_and_says_so():
    noisy, reason = noise.classify(_row(repeats=2))
    assert noisy and reason == "only 2 repeats: too few to judge the spread (need >= 3)"
    assert noise.classify(_row(repeats=3)) == (False, "")
    assert noise.classify(_row(repeats=2), noise.Thresholds(few_repeats_noisy=False)) == (False, "")


def test_adaptive_timing_that_did_not_converge_is_noisy():
    noisy, reason = noise.classify(_row(stopped_by="budget", rel_ci95=0.073, repeats=40))
    assert noisy and reason == "median not converged: 95% CI +-7.3% after 40 repeats (stopped by budget)"
    assert noise.classify(_row(stopped_by="converged", rel_ci95=0.015)) == (False, "")


def test_reasons_are_joined_and_failed_points_are_not_judged():
    noisy, reason = noise.classify(_row(latency_ms_p90=134.0, cpu_other_share=0.5, throttle_reasons="sw_thermal_slowdown"))
    assert noisy and reason.split("; ") == [
        "spread p90/p10 1.34 > 1.10", "other processes took 50% of the CPU", "GPU throttled: sw_thermal_slowdown",
    ]
    assert noise.classify({"status": "oom", "device": "cuda"}) == (False, "")


def test_flag_noisy_on_an_old_table_without_telemetry_columns():
    old = pd.DataFrame([
        dict(status="ok", device="cpu", repeats=5, latency_ms_p10=10.0, latency_ms_p90=30.0),
        dict(status="ok", device="cpu", repeats=5, latency_ms_p10=10.0, latency_ms_p90=11.0),
        dict(status="oom", device="cpu", repeats=None, latency_ms_p10=None, latency_ms_p90=None),
    ])
    flagged = noise.flag_noisy(old)
    assert list(flagged["noisy"]) == [True, False, False]
    assert flagged["noise_reason"][0] == "spread p90/p10 3.00 > 1.50"
    assert flagged["spread"][1] == pytest.approx(1.1) and math.isnan(flagged["spread"][2])
    assert "noisy" not in old.columns  # the input is left alone


def test_console_line_says_noisy():
    row = dict(status="ok", latency_ms_median=12.0, latency_ms_p10=10.0, latency_ms_p90=16.0, peak_alloc_gib=math.nan,
               peak_rss_gib=0.4, noisy=True, noise_reason="spread p90/p10 1.60 > 1.50")
    assert sweep._result(row).endswith("0.40 GiB peak NOISY (spread p90/p10 1.60 > 1.50)")
    assert "NOISY" not in sweep._result(dict(row, noisy=False, noise_reason=""))
    cpu = dict(row, noisy=False, noise_reason="", claim_note=noise.CPU_NOTE)
    assert sweep._result(cpu).endswith("0.40 GiB peak (CPU timing: backs no claim)")


# ---- CPU share ---------------------------------------------------------------------------------------
def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _proc_stat(cpu0, cpu1):
    total = [a + b for a, b in zip(cpu0, cpu1)]
    line = lambda name, v: name + " " + " ".join(map(str, v + [0, 0]))
    return "\n".join([line("cpu ", total), line("cpu0", cpu0), line("cpu1", cpu1), "intr 1 2 3", "ctxt 99"]) + "\n"


def _self_stat(utime, stime, cutime=0, cstime=0):
    return f"4242 (py (odd) name) R 1 1 1 0 -1 0 0 0 0 0 {utime} {stime} {cutime} {cstime} 20 0 1 0 5\n"


def test_cpu_meter_arithmetic_on_fake_proc_files(tmp_path, monkeypatch):
    stat, self_stat = tmp_path / "stat", tmp_path / "self_stat"
    monkeypatch.setattr(telemetry, "PROC_STAT", str(stat))
    monkeypatch.setattr(telemetry, "PROC_SELF_STAT", str(self_stat))
    # fields: user nice system idle iowait irq softirq steal
    before = ([50, 0, 25, 400, 5, 0, 0, 0], [50, 0, 25, 400, 5, 0, 0, 0])
    # cpu0: 60 busy + 40 idle ticks; cpu1: 20 user + 10 steal + 70 idle; this process: 40 + 10 ticks
    after = ([110, 0, 25, 440, 5, 0, 0, 0], [70, 0, 25, 470, 5, 0, 0, 10])
    for cpus, want_other, want_own in (({0, 1}, (90 - 50) / 200, 50 / 200), ({0}, (60 - 50) / 100, 50 / 100)):
        _write(stat, _proc_stat(*before))
        _write(self_stat, _self_stat(1000, 200))
        meter = telemetry.CpuMeter(min_window_s=0)
        meter.cpus = cpus
        meter.start()
        _write(stat, _proc_stat(*after))
        _write(self_stat, _self_stat(1040, 210))
        shares = meter.stop()
        assert shares.other == pytest.approx(want_other) and shares.own == pytest.approx(want_own), cpus


def test_cpu_meter_without_proc_gives_nan(tmp_path, monkeypatch):
    monkeypatch.setattr(telemetry, "PROC_STAT", str(tmp_path / "missing"))
    shares = telemetry.CpuMeter(min_window_s=0).start().stop()
    assert math.isnan(shares.other) and math.isnan(shares.own) and shares.seconds >= 0


def test_cpu_meter_extends_a_short_window():
    shares = telemetry.CpuMeter(min_window_s=0.3).start().stop()
    assert shares.seconds >= 0.3


BURN = "import time; print('go', flush=True); t = time.time()\nwhile time.time() - t < 4: pass\n"


def test_cpu_meter_sees_busy_processes_and_not_itself():
    cores = min(telemetry.usable_cores(), 8)
    children = [subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True) for _ in range(cores)]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "go"
        busy = telemetry.CpuMeter(min_window_s=0).start()
        time.sleep(1.0)  # this process idles; one burner per usable core keeps them all busy
        busy = busy.stop()
    finally:
        for child in children:
            child.kill()
            child.wait()
    # Whatever else runs on the box, everything but this process counts as "other".
    assert busy.other > 0.5, busy
    assert busy.own < 0.2, busy
    # and the reverse: this process burning CPU is its own share, not someone else's
    mine = telemetry.CpuMeter(min_window_s=0).start()
    t = time.perf_counter()
    while time.perf_counter() - t < 0.6:
        pass
    mine = mine.stop()
    assert mine.own > 0.25 / telemetry.usable_cores(), mine


# ---- GPU through NVML --------------------------------------------------------------------------------
@pytest.fixture
def fresh_nvml(monkeypatch):
    telemetry.reset_nvml_cache()
    yield
    telemetry.reset_nvml_cache()


def _empty_gpu(snap):
    return (snap.uuid == "" and snap.throttle == []
            and all(math.isnan(v) for v in (snap.sm_clock_mhz, snap.mem_clock_mhz, snap.power_w, snap.temp_c)))


def test_without_pynvml_the_gpu_fields_are_empty_with_a_reason(monkeypatch, fresh_nvml):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    snap = telemetry.gpu_snapshot("cuda:0")
    assert _empty_gpu(snap) and "not installed" in snap.note
    cols = telemetry.Meter("cuda:0").start().stop()
    assert cols["gpu_uuid"] == "" and cols["throttle_reasons"] == "" and "not installed" in cols["gpu_telemetry_note"]
    assert math.isnan(cols["sm_clock_mhz_start"]) and math.isnan(cols["power_w_end"])


class FakeNVMLError(Exception):
    pass


def _fake_nvml(reasons=0x1 | 0x4 | 0x40, uuids=("GPU-aaaa", "GPU-bbbb", "GPU-cccc", "GPU-dddd"), init_error=None):
    m = types.ModuleType("pynvml")
    m.NVML_CLOCK_SM, m.NVML_CLOCK_MEM, m.NVML_TEMPERATURE_GPU = 1, 2, 0
    m.calls = []

    def init():
        if init_error:
            raise init_error

    def by_index(i):
        m.calls.append(("index", i))
        if i >= len(uuids):
            raise FakeNVMLError("Invalid Argument")
        return i

    def by_uuid(u):
        m.calls.append(("uuid", u))
        if u not in uuids:
            raise FakeNVMLError("Not Found")
        return uuids.index(u)

    m.nvmlInit = init
    m.nvmlDeviceGetCount = lambda: len(uuids)
    m.nvmlDeviceGetHandleByIndex = by_index
    m.nvmlDeviceGetHandleByUUID = by_uuid
    m.nvmlDeviceGetUUID = lambda h: uuids[h].encode()  # old bindings return bytes
    m.nvmlDeviceGetClockInfo = lambda h, kind: {1: 1980, 2: 2619}[kind] - 10 * h
    m.nvmlDeviceGetPowerUsage = lambda h: 412_345  # milliwatts
    m.nvmlDeviceGetTemperature = lambda h, sensor: 71

    def event_reasons(h):
        raise FakeNVMLError("Not Supported")  # the newer call fails: the older one is tried

    m.nvmlDeviceGetCurrentClocksEventReasons = event_reasons
    m.nvmlDeviceGetCurrentClocksThrottleReasons = lambda h: reasons
    return m


def test_nvml_init_failure_gives_empty_fields_and_the_reason(monkeypatch, fresh_nvml):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(init_error=FakeNVMLError("Driver Not Loaded")))
    snap = telemetry.gpu_snapshot("cuda")
    assert _empty_gpu(snap) and snap.note == "NVML unavailable: FakeNVMLError: Driver Not Loaded"


def test_fake_nvml_gives_clocks_power_and_named_throttle_reasons(monkeypatch, fresh_nvml):
    fake = _fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(telemetry, "_torch_uuid", lambda index: None)
    snap = telemetry.gpu_snapshot("cuda:1")
    assert snap.uuid == "GPU-bbbb" and snap.note == ""
    assert (snap.sm_clock_mhz, snap.mem_clock_mhz, snap.power_w, snap.temp_c) == (1970, 2609, pytest.approx(412.345), 71)
    assert snap.throttle == ["gpu_idle", "sw_power_cap", "hw_thermal_slowdown"]
    end = telemetry.GpuSnapshot(uuid="GPU-bbbb", throttle=["gpu_idle", "hw_power_brake"])
    cols = telemetry.columns(snap, end, telemetry.CpuShares(other=0.1, own=0.5, seconds=1.0), threads=4, load_1m=0.5)
    assert cols["throttle_reasons"] == "gpu_idle,sw_power_cap,hw_thermal_slowdown,hw_power_brake"
    assert cols["power_w_start"] == pytest.approx(412.345) and math.isnan(cols["power_w_end"])
    assert set(cols) == set(telemetry.COLUMNS)
    row = _row(**cols)
    assert noise.classify(row) == (True, "GPU throttled: hw_thermal_slowdown, hw_power_brake")


def test_throttle_names_cover_unknown_bits():
    assert telemetry.throttle_names(0) == []
    assert telemetry.throttle_names(0x8 | 0x20 | 0x2000) == ["hw_slowdown", "sw_thermal_slowdown", "bit_0x2000"]


def test_cuda_index_maps_to_the_nvml_gpu(monkeypatch, fresh_nvml):
    fake = _fake_nvml()
    # 1. the CUDA runtime's UUID of the device wins over any index
    monkeypatch.setattr(telemetry, "_torch_uuid", lambda index: "cccc")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert telemetry.nvml_handle(fake, 0) == 2
    # 2. without a UUID: CUDA_VISIBLE_DEVICES picks the NVML GPU (numbers or GPU- UUIDs)
    monkeypatch.setattr(telemetry, "_torch_uuid", lambda index: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert telemetry.nvml_handle(fake, 1) == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-dddd,GPU-aaaa")
    assert telemetry.nvml_handle(fake, 1) == 0
    with pytest.raises(RuntimeError, match="not in CUDA_VISIBLE_DEVICES"):
        telemetry.nvml_handle(fake, 2)
    # 3. neither: the same index
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert telemetry.nvml_handle(fake, 3) == 3


def test_cuda_uuid_not_found_by_lookup_is_matched_by_scanning(monkeypatch):
    fake = _fake_nvml(uuids=("GPU-AAAA", "GPU-BBBB"))
    monkeypatch.setattr(telemetry, "_torch_uuid", lambda index: "bbbb")  # torch spells it lower case
    assert telemetry.nvml_handle(fake, 0) == 1


def test_meter_on_cpu_fills_cpu_columns():
    cols = telemetry.Meter("cpu").start().stop()
    assert cols["gpu_telemetry_note"] == "cpu run" and cols["gpu_uuid"] == ""
    assert cols["cpu_cores"] == os.cpu_count() and cols["cpu_usable_cores"] >= 1 and cols["cpu_threads"] >= 1
    assert 0 <= cols["cpu_other_share"] <= 1 and cols["load_avg_1m"] >= 0 and cols["cpu_window_s"] >= 0.25


# ---- adaptive timing ---------------------------------------------------------------------------------
class FakeClock:
    """A clock (seconds) that only the fake callables advance."""

    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _fake_fn(clock, latencies_ms):
    it = iter(latencies_ms)

    def fn():
        clock.t += next(it) / 1e3

    return fn


def _forever(*values):
    while True:
        yield from values


def test_median_ci_uses_binomial_order_statistics():
    assert timing.median_ci_ranks(5) is None and timing.median_ci_ranks(6) == 1
    assert timing.median_ci_ranks(10) == 2 and timing.median_ci_ranks(20) == 6 and timing.median_ci_ranks(100) == 40
    assert all(math.isnan(v) for v in timing.median_ci95([1, 2, 3, 4, 5]))
    assert timing.median_ci95([6, 1, 5, 2, 4, 3]) == (1, 6)
    assert timing.median_ci95(list(range(1, 21))) == (6, 15)
    assert abs(timing.median_ci_ranks(2000) - (1000 - 1.96 * math.sqrt(2000) / 2)) <= 1  # normal approximation


def test_median_ci_covers_the_true_median_95_percent_of_the_time():
    rng = random.Random(0)
    true_median = math.exp(1.0)  # lognormal(mu=1, sigma=0.5): skewed, like latencies
    trials, hits = 2000, 0
    for _ in range(trials):
        low, high = timing.median_ci95([rng.lognormvariate(1.0, 0.5) for _ in range(25)])
        hits += low <= true_median <= high
    assert 0.94 <= hits / trials <= 0.995


def test_adaptive_constant_latency_converges_as_soon_as_a_ci_exists():
    clock = FakeClock()
    result = timing.time_adaptive(_fake_fn(clock, _forever(5.0)), "cpu", timing.AdaptiveSettings(min_repeats=3), clock=clock)
    assert result.stopped_by == "converged" and len(result.times_ms) == 6
    assert result.times_ms == [pytest.approx(5.0)] * 6 and result.rel_ci95 == pytest.approx(0, abs=1e-9)
    clock = FakeClock()
    result = timing.time_adaptive(_fake_fn(clock, _forever(5.0)), "cpu", timing.AdaptiveSettings(min_repeats=10), clock=clock)
    assert result.stopped_by == "converged" and len(result.times_ms) == 10


def test_adaptive_spread_latency_stops_at_max_repeats_or_budget():
    clock = FakeClock()
    settings = timing.AdaptiveSettings(min_repeats=6, max_repeats=50, budget_s=1000.0)
    result = timing.time_adaptive(_fake_fn(clock, _forever(1.0, 100.0)), "cpu", settings, clock=clock)
    assert result.stopped_by == "max_repeats" and len(result.times_ms) == 50
    assert result.ci95_low_ms == pytest.approx(1.0) and result.ci95_high_ms == pytest.approx(100.0)
    assert result.rel_ci95 > 0.02
    clock = FakeClock()
    settings = timing.AdaptiveSettings(min_repeats=6, max_repeats=10_000, budget_s=1.0)
    result = timing.time_adaptive(_fake_fn(clock, _forever(1.0, 100.0)), "cpu", settings, clock=clock)
    assert result.stopped_by == "budget" and result.elapsed_s >= 1.0 and len(result.times_ms) < 25
    assert result.columns()["stopped_by"] == "budget"


def test_adaptive_converges_once_the_median_settles():
    # 10 ms +- 5% uniform jitter: the CI of the median shrinks like 1/sqrt(n) and reaches +-2%
    rng = random.Random(1)
    clock = FakeClock()
    settings = timing.AdaptiveSettings(target_ci=0.02, min_repeats=6, max_repeats=1000, budget_s=1000)
    result = timing.time_adaptive(_fake_fn(clock, (10 * rng.uniform(0.95, 1.05) for _ in range(10**6))), "cpu", settings, clock=clock)
    assert result.stopped_by == "converged" and 6 < len(result.times_ms) < 200 and result.rel_ci95 <= 0.02


def test_adaptive_settings_from_config_and_bad_values():
    off = types.SimpleNamespace(adaptive=False)
    assert timing.adaptive_settings(off) is None
    on = types.SimpleNamespace(adaptive=True, target_ci=0.05, budget_s=3.0, repeats=4, max_repeats=9)
    assert timing.adaptive_settings(on) == timing.AdaptiveSettings(target_ci=0.05, budget_s=3.0, min_repeats=4, max_repeats=9)
    with pytest.raises(timing.SettingsError, match="max_repeats"):
        timing.adaptive_settings(types.SimpleNamespace(adaptive=True, target_ci=0.02, budget_s=3.0, repeats=10, max_repeats=5))
    with pytest.raises(timing.SettingsError, match="target_ci"):
        timing.AdaptiveSettings(target_ci=0)


# ---- cold costs --------------------------------------------------------------------------------------
def test_cold_costs_of_a_callable_whose_first_call_is_slow():
    clock = FakeClock()
    warm = timing.warm_up(_fake_fn(clock, [500.0, 30.0, 10.0]), "cpu", 3, clock=clock)
    assert warm.calls_ms == [pytest.approx(500.0), pytest.approx(30.0), pytest.approx(10.0)]
    cold = timing.cold_columns(warm, [10.0, 11.0, 9.0], compiled=True)
    assert cold["first_call_ms"] == pytest.approx(500.0)
    assert cold["compile_s"] == pytest.approx((490.0 + 20.0) / 1e3)
    assert math.isnan(timing.cold_columns(warm, [10.0, 11.0, 9.0], compiled=False)["compile_s"])
    # no warm-up: the first timed call is the cold one
    none = timing.cold_columns(timing.WarmUp(), [300.0, 10.0, 10.0], compiled=True)
    assert none["first_call_ms"] == 300.0 and none["compile_s"] == pytest.approx(0.29)


def test_warm_up_syncs_after_every_call():
    order = []
    timing.warm_up(lambda: order.append("call"), "cpu", 2, sync=lambda: order.append("sync"))
    assert order == ["call", "sync", "call", "sync"]


# ---- through the runner and the CLI -------------------------------------------------------------------
def _point(**changes):
    from vggt_model import ExecutionConfig

    base = dict(arch="small", device="cpu", frames=1, batch=1, height=28, width=42, part="aggregator",
                query_points=0, inputs="synthetic", execution=ExecutionConfig())
    base.update(changes)
    return Point(**base)


def test_schema_lists_the_new_columns():
    for col in noise.COLUMNS + timing.COLUMNS + telemetry.COLUMNS:
        assert col in MEASUREMENTS, col


def test_run_point_adaptive_fills_the_ci_and_classifies():
    settings = timing.AdaptiveSettings(target_ci=0.5, budget_s=20.0, min_repeats=3, max_repeats=40)
    row = run.run_point(_point(), run.Method(warmup=1, repeats=3, adaptive=settings))
    assert row["status"] == "ok", row["message"]
    assert row["stopped_by"] in ("converged", "budget", "max_repeats") and 6 <= row["repeats"] <= 40
    assert row["ci95_low_ms"] <= row["latency_ms_median"] <= row["ci95_high_ms"]
    assert (row["stopped_by"] == "converged") == (row["rel_ci95"] <= 0.5)
    assert isinstance(row["noisy"], bool) and row["noisy"] == bool(row["noise_reason"])
    assert row["first_call_ms"] > 0 and math.isnan(row["compile_s"])


def test_cli_run_writes_trust_columns(tmp_path):
    done = cli("run", "model.arch=small", "inputs.height=56", "inputs.width=84", "frames=1", "measure.repeats=2",
               "measure.warmup=1", f"out={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    table = load_results(str(tmp_path))
    row = table.iloc[0]
    assert bool(row["noisy"]) is True  # 2 repeats cannot show a spread: never a clean bill of health
    assert "only 2 repeats: too few to judge the spread" in row["noise_reason"]
    assert "NOISY (only 2 repeats" in done.stdout
    assert 0 <= row["cpu_other_share"] <= 1 and 0 <= row["cpu_self_share"] <= 1 and row["cpu_window_s"] >= 0.25
    assert row["load_avg_1m"] >= 0 and row["cpu_cores"] >= 1 and row["cpu_threads"] >= 1
    assert row["first_call_ms"] > 0 and pd.isna(row["compile_s"]) and row["stopped_by"] == "repeats"
    assert row["spread"] == pytest.approx(row["latency_ms_p90"] / row["latency_ms_p10"])
    assert row["gpu_telemetry_note"] == "cpu run"
    with open(next((tmp_path / "points").glob("*.json"))) as f:
        assert json.load(f)["noise_reason"] == row["noise_reason"]
    bad = cli("run", "model.arch=small", "measure.adaptive=true", "measure.max_repeats=2", f"out={tmp_path}")
    assert bad.returncode == 2 and "measure.max_repeats (2) must be >= measure.repeats (5)" in bad.stderr


def test_building_the_forward_counts_in_the_first_call_and_in_compile_time():
    """A CUDA graph is captured (and compiled code first runs) while the forward is built, before
    the warm-up: that time belongs to the cold call (it was missing on the H100)."""
    warm = timing.WarmUp(calls_ms=[5.0, 4.0], setup_ms=3000.0)
    cols = timing.cold_columns(warm, [4.0, 4.0, 4.0], compiled=True)
    assert cols["first_call_ms"] == 3005.0 and abs(cols["compile_s"] - 3.001) < 1e-9


def test_the_report_says_cpu_timings_back_no_claim():
    import pandas as pd

    from vggt_bench.analysis.findings import findings

    def rows(device):
        return pd.DataFrame([dict(point_id=f"p{s}", impl="ours", arch="small", device=device, frames=s, batch=1,
                                  height=28, width=42, part="aggregator", query_points=0, inputs="synthetic",
                                  gpu_name="cpu" if device == "cpu" else "H100", status="ok", random_weights=True,
                                  checkpoint="", frame_exec="fused", attention="sdpa", dtype="fp32", prune_depth=0,
                                  repeats=5, latency_ms_median=10.0 * s, latency_ms_p10=9.9 * s, latency_ms_p90=10.1 * s)
                             for s in (2, 4)])

    said = [line for line in findings(rows("cpu"))[0].lines if "timed on the CPU" in line]
    assert len(said) == 1 and said[0].startswith("2 point(s) were timed on the CPU") and "back no claim" in said[0]
    assert not any("timed on the CPU" in line for line in findings(rows("cuda"))[0].lines)


def _proc(pid, mib):
    return types.SimpleNamespace(pid=pid, usedGpuMemory=None if mib is None else mib * 2**20)


@pytest.mark.parametrize("listed, processes, others", [
    # this process alone, by its own pid
    (lambda me: [_proc(me, 900)], 1.0, ""),
    # a second process on the card (the 2026-12-07 regression check: a killed sweep's child still running)
    (lambda me: [_proc(me, 900), _proc(2087, 22142)], 2.0, "2087:22142MiB"),
    # in a container NVML lists the host's pids: one process is this one; two are this one and another
    (lambda me: [_proc(91234, 900)], 1.0, ""),
    (lambda me: [_proc(91234, 900), _proc(91300, None)], 2.0, "91234:900MiB,91300:?MiB"),
    # NVML sees no process at all (not even this one): unknown, never "alone"
    (lambda me: [], math.nan, ""),
])
def test_other_processes_on_the_gpu_make_a_steady_timing_noisy(monkeypatch, fresh_nvml, listed, processes, others):
    """A regression check on an H100 ran beside a sweep left running on the card: its 8-frame point took
    205.8 ms against 92.6 ms alone, with p90/p10 1.02, and nothing flagged it. The process list now does."""
    fake = _fake_nvml(reasons=0)
    fake.nvmlDeviceGetComputeRunningProcesses = lambda h: listed(os.getpid())
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(telemetry, "_torch_uuid", lambda index: None)
    snap = telemetry.gpu_snapshot("cuda:0")
    alone = telemetry.GpuSnapshot(uuid=snap.uuid, processes=1.0)
    cols = telemetry.columns(alone, snap, telemetry.CpuShares(other=0.0, own=0.5, seconds=1.0), threads=4, load_1m=0.5)
    assert (cols["gpu_processes"], cols["gpu_other_processes"]) == (1.0 if math.isnan(processes) else processes, others)
    noisy, reason = noise.classify(_row(**cols))
    if processes > 1:
        assert noisy and reason == f"1 other process on the GPU ({others})"
    else:
        assert (noisy, reason) == (False, "")
    # the same columns on a CPU row (no GPU to share) and on an old table without them judge nothing
    assert noise.classify(_row(gpu_processes=3.0, gpu_other_processes="1:1MiB,2:2MiB", device="cpu"))[1] == ""
    assert noise.classify(_row(gpu_processes=3.0, gpu_other_processes="1:1MiB,2:2MiB")) == (
        True, "2 other processes on the GPU (1:1MiB,2:2MiB)")


def test_without_a_process_list_the_gpu_processes_are_unknown(monkeypatch, fresh_nvml):
    fake = _fake_nvml(reasons=0)  # no nvmlDeviceGetComputeRunningProcesses, as in old bindings
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(telemetry, "_torch_uuid", lambda index: None)
    snap = telemetry.gpu_snapshot("cuda:0")
    assert math.isnan(snap.processes) and snap.others == []
