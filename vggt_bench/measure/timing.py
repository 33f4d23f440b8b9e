"""Timing a point's forward: the fixed loop, adaptive repeats until the median is known well
enough, the 95% confidence interval of a median, and the cold costs of a point (first call,
compilation).

Entry points:

* :func:`time_calls` -- the fixed loop: ``measure.repeats`` single calls (``KeepLast`` keeps the
  last call's output for drift).
* :func:`time_adaptive` -- single calls until the median's 95% CI is within ``+-target_ci`` of
  it, or ``max_repeats`` calls, or ``budget_s`` seconds of timed calls.
* :func:`median_ci95` -- distribution-free 95% CI of a median from per-call latencies.
* :func:`ci_columns` -- the CI row columns for any list of latencies (fixed or adaptive loop).
* :func:`warm_up` / :func:`cold_columns` -- the warm-up loop, timed per call, and the
  ``first_call_ms`` / ``compile_s`` columns it gives.
* :func:`adaptive_settings` -- :class:`AdaptiveSettings` from the ``measure`` config group.

Why not ``torch.utils.benchmark``: its ``Timer`` measures blocks of ``number`` calls between
two host clock reads (after ``torch.accelerator.synchronize()``) and reports per-block means,
so it never yields the per-call latencies the rows need for median / p10 / p90, and per-block
means hide exactly the outliers the noise check looks for. ``Timer.adaptive_autorange`` stops on
a spread criterion (IQR / median below a threshold), not on the precision of the median, and
``Measurement.significant_figures`` is, in its own words, "by no means statistically rigorous"
(a normal approximation over the interquartile points). So this module times single calls
itself -- CUDA events around each call on a GPU, ``time.perf_counter`` on the CPU
(:func:`call_timer`, for the fixed loop and the adaptive one alike) -- and bounds the median with order statistics, which need no
assumption about the latency distribution (latencies are skewed and often multi-modal).

Units are in the names: ``_ms`` milliseconds, ``_s`` seconds, ``rel_`` a fraction of the median.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

NAN = float("nan")

CI_LEVEL = 0.95
# Fewer calls cannot give a distribution-free 95% CI of the median: with n = 5 even
# [min, max] covers the median with probability 1 - 2 / 2**5 = 0.9375 < 0.95.
MIN_CI_REPEATS = 6
_EXACT_UP_TO = 1000  # exact binomial order statistics up to here, normal approximation above

STOPPED_BY = ("repeats", "converged", "budget", "max_repeats")  # "repeats": the fixed loop


class SettingsError(ValueError):
    """A bad adaptive-timing setting (printed as a one-line error by the CLI)."""


@dataclass
class AdaptiveSettings:
    target_ci: float = 0.02   # stop when the 95% CI half-width of the median is <= target_ci * median
    budget_s: float = 60.0    # seconds of timed calls after which the loop stops, converged or not
    min_repeats: int = MIN_CI_REPEATS  # calls always made (the budget does not cut below this)
    max_repeats: int = 200    # calls at most

    def __post_init__(self):
        if not (self.target_ci > 0):
            raise SettingsError(f"measure.target_ci must be > 0 (a fraction of the median, e.g. 0.02), got {self.target_ci}")
        if not (self.budget_s > 0):
            raise SettingsError(f"measure.budget_s must be > 0 seconds, got {self.budget_s}")
        if self.min_repeats < 1:
            raise SettingsError(f"measure.repeats must be >= 1, got {self.min_repeats}")
        if self.max_repeats < self.min_repeats:
            raise SettingsError(
                f"measure.max_repeats ({self.max_repeats}) must be >= measure.repeats ({self.min_repeats})"
            )


def adaptive_settings(measure) -> Optional[AdaptiveSettings]:
    """The adaptive settings of a ``measure`` config (``None`` when ``measure.adaptive`` is off).

    ``measure.repeats`` is the minimum number of calls in adaptive mode.
    """
    if not bool(getattr(measure, "adaptive", False)):
        return None
    return AdaptiveSettings(
        target_ci=float(measure.target_ci), budget_s=float(measure.budget_s),
        min_repeats=int(measure.repeats), max_repeats=int(measure.max_repeats),
    )


# ---- the CI of a median -----------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def median_ci_ranks(n: int) -> Optional[int]:
    """k such that [x_(k), x_(n+1-k)] (1-based order statistics) is a >= 95% CI of the median.

    The number of samples below the median is Binomial(n, 1/2), so that interval covers it with
    probability 1 - 2 P(B <= k-1); k is the largest with P(B <= k-1) <= 2.5%. None for n < 6.
    Exact up to n = 1000, the normal approximation above.
    """
    alpha = (1 - CI_LEVEL) / 2
    if n < MIN_CI_REPEATS:
        return None
    if n > _EXACT_UP_TO:
        return max(1, int(math.floor(n / 2 - 1.959964 * math.sqrt(n) / 2)))
    log_half_n = n * math.log(0.5)
    cdf, k = 0.0, 0
    for j in range(n + 1):
        cdf += math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + log_half_n)
        if cdf > alpha:
            break
        k = j + 1  # P(B <= j) <= alpha, so x_(j+1) is a valid lower bound
    return k or None


def median_ci95(times_ms) -> Tuple[float, float]:
    """(low, high) ms: distribution-free 95% CI of the median; (NaN, NaN) with fewer than 6 values."""
    values = sorted(times_ms)
    k = median_ci_ranks(len(values))
    if k is None:
        return NAN, NAN
    return values[k - 1], values[len(values) - k]


def rel_half_width(low: float, high: float, median: float) -> float:
    """Half the CI's width as a fraction of the median (NaN when unknown)."""
    if not (median > 0) or math.isnan(low) or math.isnan(high):
        return NAN
    return (high - low) / 2 / median


def ci_columns(times_ms, stopped_by: str = "repeats") -> dict:
    """``ci95_low_ms``, ``ci95_high_ms``, ``rel_ci95`` and ``stopped_by`` for a list of latencies."""
    low, high = median_ci95(times_ms)
    median = statistics.median(times_ms) if len(times_ms) else NAN
    return {"ci95_low_ms": low, "ci95_high_ms": high, "rel_ci95": rel_half_width(low, high, median),
            "stopped_by": stopped_by}


# ---- timing single calls ------------------------------------------------------------------------
def synchronize(device: str) -> None:
    """Wait for the GPU's queued work (nothing to wait for on the CPU)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def call_timer(device: str, clock: Callable[[], float] = time.perf_counter) -> Callable[[Callable], float]:
    """A function that runs ``fn()`` once and returns its latency in ms.

    GPU: CUDA events recorded around the call, waited for (the GPU's time);
    CPU: ``clock`` (seconds) around the call -- CPU work is synchronous.
    """
    if str(device).startswith("cuda"):
        import torch

        def timed(fn) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
    else:
        def timed(fn) -> float:
            t0 = clock()
            fn()
            return (clock() - t0) * 1e3
    return timed


def time_calls(fn: Callable[[], object], device: str, repeats: int) -> List[float]:
    """Latencies (ms) of ``repeats`` single calls of ``fn`` (:func:`call_timer`): the fixed loop.
    The caller warms up first (:func:`warm_up`)."""
    timed = call_timer(device)
    synchronize(device)
    return [timed(fn) for _ in range(repeats)]


class KeepLast:
    """``fn`` timed ``calls`` times, keeping the output of the last call only (``output``): a drift
    measurement reads the aggregator's output of the last timed forward instead of running the
    aggregator once more (at 800 frames a forward is minutes). Earlier outputs are dropped as soon as
    each call returns, so no call runs beside a previous call's output and the peak memory measured
    is the same as without it."""

    def __init__(self, fn: Callable[[], object], calls: int):
        self.fn, self.calls, self.made, self.output = fn, calls, 0, None

    def __call__(self):
        out = self.fn()
        self.made += 1
        if self.made == self.calls:
            self.output = out
        return None


def percentile(values, q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linear between the two nearest."""
    values = sorted(values)
    if len(values) == 1:
        return values[0]
    pos = (len(values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


@dataclass
class AdaptiveResult:
    times_ms: List[float]      # per-call latencies, in call order
    ci95_low_ms: float
    ci95_high_ms: float
    rel_ci95: float            # CI half-width / median
    stopped_by: str            # converged | budget | max_repeats
    elapsed_s: float           # wall seconds of the timed loop

    def columns(self) -> dict:
        return {"ci95_low_ms": self.ci95_low_ms, "ci95_high_ms": self.ci95_high_ms,
                "rel_ci95": self.rel_ci95, "stopped_by": self.stopped_by}


def time_adaptive(fn: Callable[[], object], device: str, settings: AdaptiveSettings,
                  clock: Callable[[], float] = time.perf_counter) -> AdaptiveResult:
    """Time single calls of ``fn`` until the median is known to ``+-settings.target_ci``.

    After each call (once ``min_repeats`` calls are made) the loop stops when, in this order:

    * ``converged``: the distribution-free 95% CI of the median (:func:`median_ci95`) has a
      half-width <= ``target_ci`` x median. It needs at least 6 calls. Checking after every call
      is optional stopping, so the true coverage is somewhat below 95%; the target is a
      precision goal, not a test.
    * ``max_repeats``: that many calls were made.
    * ``budget``: ``budget_s`` seconds (``clock``) have passed since the loop began; the last
      call may overrun it. ``min_repeats`` calls are made even if they take longer.

    Calls are timed as :func:`call_timer` does; ``device`` is ``cpu`` / ``cuda`` / ``cuda:N``
    (the caller warms up first). ``clock`` is injectable for tests: it also times CPU calls.
    """
    timed = call_timer(device, clock)
    synchronize(device)
    times: List[float] = []
    t0 = clock()
    low = high = rel = NAN
    while True:
        times.append(timed(fn))
        n = len(times)
        if n < settings.min_repeats:
            continue
        low, high = median_ci95(times)
        rel = rel_half_width(low, high, statistics.median(times))
        if rel <= settings.target_ci:  # False while NaN (fewer than 6 calls)
            stopped = "converged"
        elif n >= settings.max_repeats:
            stopped = "max_repeats"
        elif clock() - t0 >= settings.budget_s:
            stopped = "budget"
        else:
            continue
        return AdaptiveResult(times, low, high, rel, stopped, clock() - t0)


# ---- cold costs ---------------------------------------------------------------------------------
@dataclass
class WarmUp:
    calls_ms: List[float] = field(default_factory=list)  # wall ms of each warm-up call, first = cold call
    setup_ms: float = 0.0  # wall ms spent building the forward before the first call (a CUDA graph's capture runs it)


def warm_up(fn: Callable[[], object], device: str, warmup: int, sync: Optional[Callable[[], None]] = None,
            clock: Callable[[], float] = time.perf_counter) -> WarmUp:
    """Run ``warmup`` untimed-for-the-table calls, timing each on the wall clock (``clock``).

    Each call is followed by ``sync()`` (default: ``torch.cuda.synchronize`` on a GPU), so a call's
    time covers its host work -- lazy initialisation, compilation, autotuning, CUDA-graph
    recording -- and its GPU work. The first call is the point's cold call.
    """
    sync = sync or (lambda: synchronize(device))
    out = WarmUp()
    for _ in range(warmup):
        t0 = clock()
        fn()
        sync()
        out.calls_ms.append((clock() - t0) * 1e3)
    return out


def cold_columns(warm: WarmUp, times_ms, compiled: bool) -> dict:
    """``first_call_ms`` and ``compile_s`` of a point.

    ``first_call_ms``: the point's first call (ms): the first warm-up call, or the first timed call
    when there was no warm-up. ``compile_s``: with torch.compile on, the seconds the warm-up took
    beyond steady state -- the sum over warm-up calls of (call - median timed call), or the first
    timed call's excess without a warm-up. Compilation (and CUDA-graph recording for
    ``reduce-overhead``, autotuning for ``max-autotune``) dominates it; any other lazy
    initialisation is in it too, so it is an upper bound. NaN when compile is off.
    """
    times_ms = list(times_ms)
    median = statistics.median(times_ms) if times_ms else NAN
    cold = list(warm.calls_ms if warm.calls_ms else times_ms[:1])
    if cold and warm.setup_ms:  # building the forward ran it (a CUDA graph's capture): part of the first call
        cold[0] += warm.setup_ms
    first = cold[0] if cold else NAN
    compile_s = sum(max(0.0, c - median) for c in cold) / 1e3 if compiled and cold else NAN
    return {"first_call_ms": first, "compile_s": compile_s}


COLUMNS = [
    "first_call_ms",  # latency of the point's first call (ms), lazy init / compilation included
    "compile_s",      # torch.compile: warm-up seconds beyond steady state (NaN: compile off)
    "ci95_low_ms",    # distribution-free 95% CI of the median latency (NaN with < 6 repeats)
    "ci95_high_ms",
    "rel_ci95",       # CI half-width / median
    "stopped_by",     # repeats (fixed loop) | converged | budget | max_repeats (adaptive)
]
