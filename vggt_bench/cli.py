"""``python -m vggt_bench <command> [Hydra overrides]``: the commands (``vggt_bench.commands``) behind one
command line, with Hydra's flags checked, the overrides checked against the command's schema, and
Ctrl-C said in one line."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from .core.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, say_error

COMMANDS = {
    "sweep": ("bench", "sweep a grid (a Hydra multirun); default: the `default` preset for this machine; "
                       "profiler=torch|nsys|external also profiles every point"),
    "run": ("bench", "measure one configuration"),
    "verify": ("verify", "check our model against a reference case (case=DIR) or a checkpoint (checkpoint=PATH)"),
    "profile": ("profile", "profile one configuration under profiler=torch|nsys, or analyze=PATH an existing trace "
                           "or a folder of a sweep's nsys reports"),
    "report": ("report", "render figures and the report notebook from results=DIR (baseline=DIR: with A against B)"),
    "compare": ("compare", "A against B: baseline=DIR candidate=DIR point by point, ratios with 95% intervals, "
                           "verdicts, trace diffs; fail_above=0.05 gates (exit 1)"),
    "backends": (None, "list attention backends and whether each can run here"),
}
SCHEMAS = {"bench": "BenchConfig", "verify": "VerifyConfig", "profile": "ProfileConfig", "report": "ReportConfig",
           "compare": "CompareConfig"}

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
            from .commands.sweep import run_job

            run_job(cfg)
        elif command == "verify":
            from .commands.verify import main as verify_main

            raise SystemExit(verify_main(cfg))
        elif command == "profile":
            from .commands.profile import main as profile_main

            raise SystemExit(profile_main(cfg))
        elif command == "report":
            from .commands.report import main as report_main

            raise SystemExit(report_main(cfg))
        elif command == "compare":
            from .commands.compare import main as compare_main

            raise SystemExit(compare_main(cfg))

    return task


def as_list(override: str) -> str:
    """``ignore=a,b`` (or ``ignore=a``) as Hydra reads a list, ``ignore=[a,b]``: to Hydra a bare comma
    is a sweep, and one value is not a list."""
    key, _, value = override.partition("=")
    return override if value.startswith("[") else f"{key}=[{value}]"


def _value(override: str) -> str:
    """The value of ``key=value`` as Hydra reads it (quotes removed: out='/a b,c')."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return str(OverridesParser.create().parse_override(override).value())
    except Exception:  # Hydra itself reports what it cannot parse
        return override.split("=", 1)[1]


# Hydra's own command-line flags. Those that inspect the configuration pass through (with or without a
# value); those that would change what the command runs, or where its configuration comes from, are
# refused in one line: the command decides run or multirun, and the presets live in the package.
CFG_CHOICES = ("job", "hydra", "all")
INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
_COMMAND_DECIDES = "the command decides: `run` measures one configuration, `sweep` a grid"
_PRESETS = "the presets are the package's: choose one with experiment=NAME"
REFUSED_FLAGS = {
    **dict.fromkeys(("--run", "-r", "--multirun", "-m"), _COMMAND_DECIDES),
    **dict.fromkeys(("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"), _PRESETS),
    **dict.fromkeys(("--shell-completion", "-sc", "--experimental-rerun"), "not offered"),
    "--hydra-help": "`--help` shows this command's configuration", "--version": "see `pip show vggt-bench hydra-core`",
}
VALUED_FLAGS = {"--cfg": CFG_CHOICES, "-c": CFG_CHOICES, "--package": None, "-p": None}  # flag -> its choices
FLAGS_HELP = "--help, --cfg job|hydra|all [--resolve] [--package KEY], --info [" + "|".join(INFO_CHOICES) + "]"


def split_flags(rest: list, command: str):
    """``rest`` -> (overrides, Hydra flags to pass on, problem): the problem is one line (or None)."""
    overrides, flags, i = [], [], 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("-"):
            overrides.append(arg)
            i += 1
            continue
        name, eq, inline = arg.partition("=")
        if name in REFUSED_FLAGS:
            return overrides, flags, f"{name} is not an option of `python -m vggt_bench {command}`: {REFUSED_FLAGS[name]}"
        if name in VALUED_FLAGS:
            value = inline if eq else (rest[i + 1] if i + 1 < len(rest) else "")
            i += 1 if eq else 2
            choices = VALUED_FLAGS[name]
            if choices and value not in choices:
                return overrides, flags, f"{name} takes one of {'|'.join(choices)}, got {value!r} (e.g. {name} job)"
            if not value or "=" in value:
                return overrides, flags, f"{name} takes a config key (e.g. {name} model), got {value!r}"
            flags += [name, value]
        elif name in ("--info", "-i"):
            value = inline if eq else (rest[i + 1] if i + 1 < len(rest) and rest[i + 1] in INFO_CHOICES else "")
            i += 1 if eq or not value else 2
            if value and value not in INFO_CHOICES:
                return overrides, flags, f"{name} takes one of {'|'.join(INFO_CHOICES)}, got {value!r}"
            flags += [name] + ([value] if value else [])
        elif arg in ("--resolve", "--help", "-h"):
            flags.append("--help" if arg == "-h" else arg)
            i += 1
        else:
            return overrides, flags, f"unknown option {arg!r}; options are {FLAGS_HELP}, then key=value overrides"
    if "--resolve" in flags and not {"--cfg", "-c", "--help"} & set(flags):
        return overrides, flags, "--resolve goes with --cfg (e.g. --cfg job --resolve)"
    if {"--package", "-p"} & set(flags) and not {"--cfg", "-c"} & set(flags):
        return overrides, flags, "--package goes with --cfg (e.g. --cfg job --package model)"
    return overrides, flags, None


def _hydra_app(command: str, args: list):
    """The command's Hydra entry point, to be called, with ``args`` as its command line (overrides, then
    Hydra's flags) and our configuration schemas registered."""
    import hydra

    from .core import config
    from .core.resources import experiments_dir

    config.register()
    sys.argv = [f"vggt_bench-{command}"] + args
    return hydra.main(version_base=None, config_path=experiments_dir(), config_name=COMMANDS[command][0])(_task(command))


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
        from .commands.backends import main as backends_main

        return backends_main()

    from .core import config, overrides

    config_name = COMMANDS[command][0]
    given, flags, problem = split_flags(rest, command)
    given = [as_list(a) if command in ("compare", "report") and a.startswith("ignore=") else a for a in given]
    if problem is None and "--help" not in flags:
        problem = overrides.check(getattr(config, SCHEMAS[config_name]), given, command)
    inspect = bool({"--cfg", "-c", "--info", "-i"} & set(flags))  # shows the configuration, runs nothing
    if problem is None and inspect and command == "sweep":
        from hydra.core.override_parser.overrides_parser import OverridesParser

        if any(o.is_sweep_override() for o in OverridesParser.create().parse_overrides(given)):
            problem = "--cfg and --info show one configuration: give single values (frames=8), not a grid"
    if problem:
        say_error(problem)
        return EXIT_USER_ERROR
    rest = given + flags
    if "--help" in flags or inspect:  # Hydra prints and returns: no results directory, no multirun
        _hydra_app(command, rest)()
        return 0

    from .measure.ranks import launched

    ext = launched()
    if ext is not None and ext.rank != 0:
        # another rank of torchrun/srun: rank 0 owns the results directory, Hydra's files and `latest`
        import tempfile

        scratch = tempfile.mkdtemp(prefix=f"vggt_bench-rank{ext.rank}-")
        named = command not in ("run", "sweep", "profile") or any(a.startswith("out=") for a in rest)
        rest = ([] if named else [f"out={scratch}/out"]) + rest + [
            f"hydra.run.dir={scratch}/hydra", f"hydra.sweep.dir={scratch}/hydra"]
    if command in ("run", "sweep", "profile") and not any(a.startswith("out=") for a in rest):
        from .commands.sweep import LATEST, stamped_out

        rest = stamped_out(command) + rest  # first: Hydra takes overrides before its own flags
        print(f"vggt_bench: results go to {rest[0].split('=', 1)[1]} (reports/runs/{LATEST[command]} points at it)",
              flush=True)
    out = next((_value(a) for a in reversed(rest) if a.startswith("out=")), None)
    if command == "compare":
        out = None  # it writes no points; it checks its own out= after reading both sides
    if out is not None:
        # Hydra writes its own logs under out/ before our code runs: check it first, in one line.
        from .core.results import unwritable

        problem = unwritable(out)
        if problem:
            say_error(f"cannot write results to out={out} ({problem}); choose a writable directory with out=PATH")
            return EXIT_USER_ERROR
    if command == "sweep":
        rest = ["--multirun"] + rest
    app = _hydra_app(command, rest)

    def interrupted(*_):
        leave_interrupted(out)

    signal.signal(signal.SIGINT, interrupted)
    try:
        app()
    except KeyboardInterrupt:
        interrupted()
    return 0


REBUILD_WITHIN_S = 20  # what the tables' rebuild may take after Ctrl-C before the process leaves without it


def leave_interrupted(out) -> None:
    """Ctrl-C: say what was kept, in one line, and exit EXIT_INTERRUPTED (130). It can land anywhere,
    Hydra's config composition included (which would report a mangled state as a config error): leave
    at once. Every point is already on disk (each written atomically the moment it was measured), so
    nothing measured is lost; the tables may lag the last point (or be mid-rebuild), so they are
    brought up to date first, within REBUILD_WITHIN_S: a rebuild that hangs (it once waited forever on
    an import lock the interrupted code held) must not keep the user's Ctrl-C from ending the run.
    Further Ctrl-Cs are ignored meanwhile: one message, one exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from .core import claims

    with contextlib.suppress(Exception):  # a point left half-measured is free for the next sweep at once
        claims.release_all()
    kept = _points_in(out) if out else 0
    where = f"{kept} point{'s' if kept != 1 else ''} kept in {out}" if out else "nothing was being written"

    def leave(tables_note: str = "") -> None:
        resume = "; rerun the same command to resume" if out else ""
        print(f"\nvggt_bench: interrupted; {where}{tables_note}{resume}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(EXIT_INTERRUPTED)

    if kept:
        from .core.results import ResultStore

        signal.signal(signal.SIGALRM, lambda *_: leave(f" (tables not updated within {REBUILD_WITHIN_S} s: "
                                                       "the next run rebuilds them)"))
        signal.alarm(REBUILD_WITHIN_S)
        try:
            ResultStore(out).rebuild_before_exit()
        except Exception:
            pass  # the points are the record; the next run rebuilds the tables
        signal.alarm(0)
    leave()


def _points_in(out: str) -> int:
    import glob
    import os

    return len(glob.glob(os.path.join(out, "points", "*.json")))
