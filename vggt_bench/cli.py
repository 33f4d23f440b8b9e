"""``python -m vggt_bench <command> [Hydra overrides]``."""

from __future__ import annotations

import os
import signal
import sys

from .errors import EXIT_USER_ERROR, say_error

COMMANDS = {
    "sweep": ("bench", "sweep a grid (a Hydra multirun); default: the `default` preset for this machine; "
                       "profiler=torch|nsys|external also profiles every point"),
    "run": ("bench", "measure one configuration"),
    "verify": ("verify", "check our model against a reference case (case=DIR) or a checkpoint (checkpoint=PATH)"),
    "profile": ("profile", "profile one configuration under profiler=torch|nsys, or analyze=PATH an existing trace "
                           "or a folder of a sweep's nsys reports"),
    "report": ("report", "render figures and the report notebook from results=DIR"),
    "backends": (None, "list attention backends and whether each can run here"),
}
SCHEMAS = {"bench": "BenchConfig", "verify": "VerifyConfig", "profile": "ProfileConfig", "report": "ReportConfig"}

USAGE = """usage: python -m vggt_bench <command> [key=value ...] [--help]

commands:
{commands}

Overrides are Hydra's: `python -m vggt_bench sweep experiment=scaling_wall frames=1,8,32`.
`python -m vggt_bench <command> --help` shows that command's configuration.
Presets: experiment=default|scaling_wall|pruning|backends|approximations|smoke|adhoc (the package's experiments/);
named approximation settings: approx=exact|prune4|kv_keep_25|merge_50|sparse_75|... (experiments/approx/).
"""


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
    return USAGE.format(commands=lines)


def _task(command: str):
    def task(cfg):
        if command in ("run", "sweep"):
            from .sweep import run_job

            run_job(cfg)
        elif command == "verify":
            from .verify import main as verify_main

            raise SystemExit(verify_main(cfg))
        elif command == "profile":
            from .profile import main as profile_main

            raise SystemExit(profile_main(cfg))
        elif command == "report":
            from .report import main as report_main

            raise SystemExit(report_main(cfg))

    return task


def list_backends() -> int:
    import torch

    from vggt_model import attention

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in (torch.float32, torch.bfloat16):
            print(f"{device} {str(dtype).replace('torch.', '')} head_dim 64:")
            for name, reason in attention.available(device, dtype, 64).items():
                print(f"  {name:<15} {'available' if reason is None else 'unavailable: ' + reason}")
    return 0


def _value(override: str) -> str:
    """The value of ``key=value`` as Hydra reads it (quotes removed: out='/a b,c')."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return str(OverridesParser.create().parse_override(override).value())
    except Exception:  # Hydra itself reports what it cannot parse
        return override.split("=", 1)[1]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        say_error(f"unknown command {command!r}; choose one of {', '.join(COMMANDS)}")
        return EXIT_USER_ERROR
    if command == "backends":
        return list_backends()

    import hydra

    from . import config, overrides
    from .resources import experiments_dir

    config_name = COMMANDS[command][0]
    if "--help" not in rest:
        problem = overrides.check(getattr(config, SCHEMAS[config_name]), rest, command)
        if problem:
            say_error(problem)
            return EXIT_USER_ERROR

    from .distributed import launched

    ext = launched()
    if ext is not None and ext.rank != 0 and "--help" not in rest:
        # another rank of torchrun/srun: rank 0 owns the results directory, Hydra's files and `latest`
        import tempfile

        scratch = tempfile.mkdtemp(prefix=f"vggt_bench-rank{ext.rank}-")
        named = command not in ("run", "sweep", "profile") or any(a.startswith("out=") for a in rest)
        rest = ([] if named else [f"out={scratch}/out"]) + rest + [
            f"hydra.run.dir={scratch}/hydra", f"hydra.sweep.dir={scratch}/hydra"]
    if command in ("run", "sweep", "profile") and not any(a.startswith("out=") for a in rest) and "--help" not in rest:
        from .sweep import stamped_out

        rest = stamped_out() + rest  # first: Hydra takes overrides before its own flags
        print(f"vggt_bench: results go to {rest[0].split('=', 1)[1]} (reports/runs/latest points at it)", flush=True)
    out = next((_value(a) for a in reversed(rest) if a.startswith("out=")), None)
    if out is not None and "--help" not in rest:
        # Hydra writes its own logs under out/ before our code runs: check it first, in one line.
        from .results import unwritable

        problem = unwritable(out)
        if problem:
            say_error(f"cannot write results to out={out} ({problem}); choose a writable directory with out=PATH")
            return EXIT_USER_ERROR
    if command == "sweep":
        rest = ["--multirun"] + rest
    config.register()
    sys.argv = [f"vggt_bench-{command}"] + rest
    app = hydra.main(version_base=None, config_path=experiments_dir(), config_name=config_name)(_task(command))

    def interrupted(*_):
        # Ctrl-C can land anywhere, Hydra's config composition included (which would report a
        # mangled state as a config error): leave at once. Every point is already on disk (each
        # written atomically the moment it was measured), so nothing measured is lost.
        kept = _points_in(out) if out else 0
        if kept:  # the tables may lag the last point written (or be mid-rebuild): bring them up to date
            from .results import ResultStore

            try:
                ResultStore(out).rebuild_before_exit()
            except Exception:
                pass  # the points are the record; the next run rebuilds the tables
        where = f"{kept} point{'s' if kept != 1 else ''} kept in {out}; rerun the same command to resume" if out else \
            "nothing was being written"
        print(f"\nvggt_bench: interrupted; {where}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)

    signal.signal(signal.SIGINT, interrupted)
    try:
        app()
    except KeyboardInterrupt:
        interrupted()
    return 0


def _points_in(out: str) -> int:
    import glob
    import os

    return len(glob.glob(os.path.join(out, "points", "*.json")))
