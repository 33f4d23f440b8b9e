"""Running the command line from tests.

``run_cli(*args)`` runs ``python -m vggt_bench ARGS`` in this process (``vggt_bench.cli.main``), as a user
types it from the repository root: stdout and stderr captured at the file descriptors (so C-level
output and child processes' output land there too), SystemExit and uncaught exceptions turned into a
returncode (a traceback on stderr, exit 1, as Python does), and the state a fresh interpreter would
start from set up around it and put back afterwards (see ``_InProcess``). It saves a torch import
per call (3-5 s on the 2-core CI machine) and is the default.

``run_cli_subprocess(*args)`` / ``cli_process(*args)`` start a real process. Use them where the
process is the point: exit codes and signals as a shell sees them (Ctrl-C, SIGKILL), Slurm jobs,
torchrun/srun ranks, what a fresh interpreter imports. ``VGGT_TESTS_SUBPROCESS=1`` sends every
``run_cli`` through a subprocess too (to tell an in-process artefact from a real failure).
"""

import contextlib
import faulthandler
import io
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Under pytest-xdist two workers share the machine's cores (two on CI): one torch thread each, set before
# torch is imported here, and inherited by every run and process a test starts (as OMP_NUM_THREADS is
# from a shell). Two workers of two spinning threads each on two cores took 1.3x the CPU time of a serial
# run, and single sweeps up to 3x their time.
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"


def _cli(args):
    """The command line and environment of `python -m vggt_bench ARGS` from the repository root."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return [sys.executable, "-m", "vggt_bench", *args], env


def run_cli_subprocess(*args, timeout=300, cwd=ROOT, env=None):
    """`python -m vggt_bench ARGS` in a process of its own, from the repository root (or ``cwd``), with
    this environment (or ``env``) and the repository on PYTHONPATH."""
    command, default_env = _cli(args)
    if env is not None:
        env = dict(env, PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env or default_env)


def cli_process(*args, **popen):
    """`python -m vggt_bench ARGS` in a process of its own, started in the background."""
    command, env = _cli(args)
    return subprocess.Popen(command, cwd=ROOT, env=env, **popen)


def run_cli(*args, timeout=300, cwd=ROOT, env=None):
    """`python -m vggt_bench ARGS` from the repository root (or ``cwd``), as a user types it, run in this
    process, with this environment (or ``env``, as subprocess takes it) and the repository on PYTHONPATH.

    Returns a CompletedProcess (args, returncode, stdout, stderr) like ``run_cli_subprocess``. A run
    past ``timeout`` fails the test (TimeoutExpired); one that hangs there dumps every thread's stack
    and ends the test process, as a killed subprocess would end its test."""
    if os.environ.get("VGGT_TESTS_SUBPROCESS"):
        return run_cli_subprocess(*args, timeout=timeout, cwd=cwd, env=env)
    return run_cli_in_process(*args, timeout=timeout, cwd=cwd, env=env)


def run_cli_in_process(*args, timeout=300, cwd=ROOT, env=None):
    """``run_cli`` in this process whatever VGGT_TESTS_SUBPROCESS says: for a test that patches the code
    the run calls (a disk that fills up mid-sweep)."""
    command = [sys.executable, "-m", "vggt_bench", *args]
    with _InProcess(cwd, env) as run:
        start = time.monotonic()
        faulthandler.dump_traceback_later(timeout + 60, exit=True, file=run.stderr_before)
        try:
            returncode = run(list(args))
        finally:
            faulthandler.cancel_dump_traceback_later()
    stdout, stderr = run.output()
    if time.monotonic() - start > timeout:
        raise subprocess.TimeoutExpired(command, timeout, stdout, stderr)
    return subprocess.CompletedProcess(command, returncode, stdout, stderr)


# A fresh interpreter's warning filters (`python -W`/PYTHONWARNINGS aside): pytest's own (which record
# warnings instead of printing them, and turn some on) must not decide what a run prints on stderr.
_FRESH_FILTERS = [("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, None),
                  ("ignore", PendingDeprecationWarning, None), ("ignore", ImportWarning, None),
                  ("ignore", ResourceWarning, None)]
_SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGALRM", "SIGUSR1", "SIGUSR2", "SIGHUP")
            if hasattr(signal, name)]


class _InProcess:
    """One CLI run in this process, between a fresh interpreter's state and this one's.

    The CLI and the libraries it drives leave global state behind that a process of its own would
    take with it; each item here is put back after the run (and, where a fresh process starts
    without it, cleared before): the file descriptors 1 and 2 and sys.stdout/stderr; sys.argv (the
    CLI sets it for Hydra), sys.path (upstream's checkout is put on it), the current directory and
    the environment; signal handlers (the CLI's SIGINT handler ends the process with os._exit);
    Hydra's singletons (GlobalHydra, HydraConfig, JobRuntime: the commands ask HydraConfig whether
    they run under `run` or `sweep`); logging (Hydra's dictConfig replaces root's handlers, adds
    a file handler and disables every existing logger); warning filters; the model cache and the
    drift references (a fresh process builds its model and reference; a later test in this one
    must not find the run's); torch's thread count, RNG, TF32 and determinism flags, and dynamo's compiled code.
    """

    def __init__(self, cwd=ROOT, env=None):
        self.cwd, self.env = cwd, env

    def __enter__(self):
        import torch

        from vggt_bench.launch import progress
        from vggt_bench.measure import build, drift, run

        self._files = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self._saved_fds = [os.dup(1), os.dup(2)]
        self.stderr_before = self._saved_fds[1]
        self._saved_streams = sys.stdout, sys.stderr
        os.dup2(self._files[0].fileno(), 1)
        os.dup2(self._files[1].fileno(), 2)
        # On the descriptors themselves, never closed: a handler a library made during the run keeps
        # sys.stderr as it was then, and writes where stderr is when it next logs, as in a process.
        sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False)

        self._argv, self._path, self._cwd = list(sys.argv), list(sys.path), os.getcwd()
        self._environ = dict(os.environ)
        if self.env is not None:
            os.environ.clear()
            os.environ.update(self.env)
        os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
        os.chdir(self.cwd)
        self._handlers = {sig: signal.getsignal(sig) for sig in _SIGNALS}

        self._hydra = self._take_hydra()
        self._logging = _logging_state()
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.resetwarnings()
        for action, category, module in _FRESH_FILTERS:
            warnings.filterwarnings(action, category=category, module=module or "")
        warnings.showwarning = warnings._showwarning_orig

        self._model = build.MODELS.key, build.MODELS.model
        build.MODELS.key = build.MODELS.model = None
        self._eager = dict(drift._EAGER)
        drift._EAGER.clear()
        self._stop_after_row = run._STOP_AFTER_ROW
        self._progress = progress._BAR, progress._PROGRESS
        self._torch = (torch.get_num_threads(), torch.random.get_rng_state(),
                       torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                       torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled(),
                       torch.is_deterministic_algorithms_warn_only_enabled())
        # the threads a fresh interpreter starts with: OMP_NUM_THREADS of the run's environment (tests set
        # it to 1 for steady CPU timings, the ranks' split of the cores skips it), else torch's default
        torch.set_num_threads(_fresh_threads(os.environ))
        return self

    def __call__(self, argv):
        from vggt_bench import cli

        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code
        except KeyboardInterrupt:
            raise
        except BaseException:  # what Python does with an uncaught exception: the traceback, exit 1
            traceback.print_exc()
            code = 1
        if code is None:
            return 0
        if not isinstance(code, int):
            print(code, file=sys.stderr)
            return 1
        return code

    def __exit__(self, *exc):
        import torch

        from vggt_bench.launch import progress
        from vggt_bench.measure import build, drift, run

        build.MODELS.key, build.MODELS.model = self._model
        drift._EAGER.clear()
        drift._EAGER.update(self._eager)
        run._STOP_AFTER_ROW = self._stop_after_row
        progress._BAR, progress._PROGRESS = self._progress
        threads, rng, tf32_matmul, tf32_cudnn, precision, deterministic, warn_only = self._torch
        torch.set_num_threads(threads)
        torch.random.set_rng_state(rng)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32_matmul, tf32_cudnn
        torch.set_float32_matmul_precision(precision)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        if "torch._dynamo" in sys.modules:
            torch._dynamo.reset()

        self._warnings.__exit__(None, None, None)
        _restore_logging(self._logging)
        self._put_back_hydra(self._hydra)
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        os.chdir(self._cwd)
        os.environ.clear()
        os.environ.update(self._environ)
        sys.argv[:], sys.path[:] = self._argv, self._path

        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = self._saved_streams
        os.dup2(self._saved_fds[0], 1)
        os.dup2(self._saved_fds[1], 2)
        for fd in self._saved_fds:
            os.close(fd)
        return False

    def output(self):
        """(stdout, stderr) as `subprocess.run(..., text=True)` reads them: universal newlines."""
        texts = []
        for f in self._files:
            f.seek(0)
            texts.append(io.TextIOWrapper(io.BytesIO(f.read()), encoding="utf-8", errors="replace").read())
            f.close()
        return tuple(texts)

    # ---- Hydra ----------------------------------------------------------------------------------
    @staticmethod
    def _take_hydra():
        """Hydra's per-run singletons, taken out (a fresh process has none); put back afterwards."""
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.singleton import Singleton
        from hydra.core.utils import JobRuntime

        return {cls: Singleton._instances.pop(cls) for cls in (GlobalHydra, HydraConfig, JobRuntime)
                if cls in Singleton._instances}

    @staticmethod
    def _put_back_hydra(saved):
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.singleton import Singleton
        from hydra.core.utils import JobRuntime

        for cls in (GlobalHydra, HydraConfig, JobRuntime):
            Singleton._instances.pop(cls, None)
        Singleton._instances.update(saved)


def lean_aggregator_peak(frames: int):
    """``peak(**approx)``: the live tensor peak of the small model's bf16 aggregator over ``frames`` 70 x 112
    frames under the lean plan (96-token chunks, SDPA), in units of one ``[N, C]`` in bf16 (45 tokens a
    frame, C = 128): the memory tests' yardstick for the approximations against the exact lean model."""
    import torch

    import vggt_model
    from vggt_model.config import ExecutionConfig, VGGTConfig
    from vggt_bench.profiling.tensor_memory import LiveTensorMemory

    net = vggt_model.build(VGGTConfig.small(), "cpu", seed=1)
    vggt_model.set_precision(net, "bf16")
    images = torch.rand(1, frames, 3, 70, 112, generator=torch.Generator().manual_seed(0)).bfloat16()
    one = frames * 45 * 128 * 2

    def peak(**approx):
        net.configure(ExecutionConfig(memory_plan="lean", token_chunk=96, attention="sdpa", **approx))
        with torch.inference_mode(), LiveTensorMemory() as counter:
            net.aggregate(images)
        return counter.peak_bytes / one

    peak.net = net
    return peak


def _default_threads():
    """torch's thread count in an interpreter started without OMP_NUM_THREADS (one per physical core)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                          capture_output=True, text=True, timeout=300)
    return int(done.stdout)


# read before any test can change this process's count; a subprocess tells it where OMP_NUM_THREADS is set
_DEFAULT_THREADS = None if "OMP_NUM_THREADS" in os.environ else __import__("torch").get_num_threads()


def _fresh_threads(environ):
    global _DEFAULT_THREADS
    value = environ.get("OMP_NUM_THREADS", "")
    if value.strip().isdigit() and int(value) > 0:
        return int(value)
    if _DEFAULT_THREADS is None:
        _DEFAULT_THREADS = _default_threads()
    return _DEFAULT_THREADS


def _logging_state():
    manager = logging.Logger.manager
    loggers = [logging.root] + [l for l in manager.loggerDict.values() if isinstance(l, logging.Logger)]
    return manager.disable, [(l, l.level, list(l.handlers), list(l.filters), l.propagate, l.disabled)
                             for l in loggers]


def _restore_logging(state):
    """Every logger that existed before the run as it was; the handlers the run gave them are closed
    (Hydra's file handler holds the run's log file open). Loggers the run created (importing their
    library) stay as the import made them, not as the run left them: enabled (Hydra's dictConfig
    disables every logger that exists when it runs, which in a process of its own are only those of
    that run) and without the filters the harness gives them (launchers.OnceSacctWarning, once per
    process)."""
    disable, loggers = state
    before = {id(logger) for logger, *_ in loggers}
    for logger, level, handlers, filters, propagate, disabled in loggers:
        for handler in logger.handlers:
            if handler not in handlers:
                with contextlib.suppress(Exception):
                    handler.close()
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.filters[:] = filters
        logger.propagate, logger.disabled = propagate, disabled
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger) and id(logger) not in before:
            logger.disabled = False
            logger.filters[:] = [f for f in logger.filters if not type(f).__module__.startswith("vggt_bench")]
    logging.disable(disable)


# ---- running in parallel (pytest-xdist, `-n 2 --dist loadfile` in pyproject's addopts) -----------------
# Each file runs whole on one worker (module fixtures: the local Slurm cluster, the sweeps several tests
# read). The files that take longest start first, so that none of them is left running alone at the end;
# measured on the 2-core CI machine, slowest first (the rest keep their order, after these).
SLOW_FILES = ["test_slurm.py", "test_report.py", "test_profiled_sweep.py", "test_approximations.py",
              "test_context_parallel.py", "test_context_parallel_report.py", "test_harness.py", "test_compare.py",
              "test_bad_days.py", "test_cli_frictions.py"]


def pytest_collection_modifyitems(config, items):
    if not hasattr(config, "workerinput"):  # a plain run keeps the files in their order
        return
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))
