"""``python -m vggt_bench <command> [Hydra overrides]``."""

from __future__ import annotations

import os
import sys

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")

COMMANDS = {
    "sweep": ("bench", "sweep a grid (a Hydra multirun); default: the `default` preset for this machine"),
    "run": ("bench", "measure one configuration"),
    "verify": ("verify", "check our model against a reference case (case=DIR) or a checkpoint (checkpoint=PATH)"),
    "profile": ("profile", "profile one configuration under profiler=torch|nsys, or analyze=PATH an existing trace"),
    "report": ("report", "render figures and the report notebook from results=DIR"),
    "backends": (None, "list attention backends and whether each can run here"),
}

USAGE = """usage: python -m vggt_bench <command> [key=value ...] [--help]

commands:
{commands}

Overrides are Hydra's: `python -m vggt_bench sweep experiment=scaling_wall frames=1,8,32`.
`python -m vggt_bench <command> --help` shows that command's configuration.
Presets: experiments/experiment/*.yaml (default, scaling_wall, pruning, backends, smoke).
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

    from model import attention

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in (torch.float32, torch.bfloat16):
            print(f"{device} {str(dtype).replace('torch.', '')} head_dim 64:")
            for name, reason in attention.available(device, dtype, 64).items():
                print(f"  {name:<15} {'available' if reason is None else 'unavailable: ' + reason}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"vggt_bench: error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if command == "backends":
        return list_backends()

    import hydra

    from .config import register

    if command in ("run", "sweep", "profile") and not any(a.startswith("out=") for a in rest) and "--help" not in rest:
        from .sweep import stamped_out

        rest = stamped_out() + rest  # first: Hydra takes overrides before its own flags
    out = next((a.split("=", 1)[1] for a in reversed(rest) if a.startswith("out=")), None)
    if out is not None and "--help" not in rest:
        # Hydra writes its own logs under out/ before our code runs: check it first, in one line.
        from .results import unwritable

        problem = unwritable(out)
        if problem:
            print(f"vggt_bench: error: cannot write results to out={out} ({problem}); choose a writable directory "
                  f"with out=PATH", file=sys.stderr)
            return 2
    if command == "sweep":
        rest = ["--multirun"] + rest
    register()
    sys.argv = [f"vggt_bench-{command}"] + rest
    config_name = COMMANDS[command][0]
    app = hydra.main(version_base=None, config_path=EXPERIMENTS, config_name=config_name)(_task(command))
    app()
    return 0
