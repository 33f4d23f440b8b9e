"""Write docs/knobs.md from the knobs' own declarations; nothing in it is copied by hand.

    .venv/bin/python scripts/knobs_doc.py           # (re)write docs/knobs.md
    .venv/bin/python scripts/knobs_doc.py --check   # exit 1 if docs/knobs.md is not current

Sources: the model's execution knobs are the fields of ``vggt_model.config.ExecutionConfig`` declared
with ``knob()`` (help, choices, bounds, fidelity, exact value, when applied); the harness's own keys
are the Hydra schema's dataclass fields (help in each field's metadata, ``setting()``); the named
presets are the YAML files under experiments/ (the first sentence of their leading comment, and the
keys they set, the grid they sweep, or what a launcher's job gets). A knob added to ExecutionConfig or to the schema appears with no edit here.
tests/test_docs.py fails when docs/knobs.md differs from what this writes.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing
from pathlib import Path

import yaml

from vggt_model.config import APPROX, PRECISION, ExecutionConfig, knob_fields

import vggt_bench.core.config as schema  # the harness's Hydra schema: the ONE import of it in this script

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "knobs.md"
EXPERIMENTS = ROOT / "experiments"
COMMAND = ".venv/bin/python scripts/knobs_doc.py"

# The schema's dataclass per command; a field whose type is a dataclass is a group of keys (model.*).
COMMANDS = [
    ("run, sweep", schema.BenchConfig),
    ("profile", schema.ProfileConfig),
    ("verify", schema.VerifyConfig),
    ("report", schema.ReportConfig),
]
# Config groups (experiments/<group>/*.yaml): named settings chosen as group=name.
GROUPS = [
    ("experiment", "presets of `run`/`sweep`: a grid (`hydra.sweeper.params`) and measure settings"),
    ("approx", "named approximation settings, so one sweep can hold settings that are not a grid "
               "(`approx=exact,kv_keep_25,sparse_75`); presets and `model.*` override them"),
    ("hydra/launcher", "where each point runs: Hydra launchers, beside submitit's own `submitit_local` (a fresh "
                       "process per point) and `submitit_slurm`; [cluster.md](cluster.md)"),
]


def plain(value) -> str:
    """A value as a command line writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def code(value) -> str:
    return f"`{plain(value)}`"


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def where(obj) -> str:
    """The file that declares ``obj``, relative to the repository (its module where installed elsewhere)."""
    path = Path(inspect.getsourcefile(obj)).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else obj.__module__


def default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def type_name(tp) -> str:
    """``int``, ``int or null``, ``list of str``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return " or ".join(type_name(a) for a in rest) + " or null"
    if origin in (list, typing.List):
        return "list of " + (type_name(args[0]) if args else "values")
    return getattr(tp, "__name__", str(tp))


def values_of(meta: dict, tp) -> str:
    """What a knob accepts, from its metadata: its choices, its bounds, else its type."""
    choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
    if choices is not None:
        return ", ".join(code(c) for c in choices)
    lo, hi = meta["minimum"], meta["maximum"]
    if lo is not None and hi is not None:
        if meta.get("open_min") or meta.get("open_max"):
            return f"{'(' if meta.get('open_min') else '['}{lo:g}, {hi:g}{')' if meta.get('open_max') else ']'}"
        return f"{lo}..{hi}"
    if lo is not None:
        return f"{'>' if meta.get('open_min') else '>='} {lo}"
    if hi is not None:
        return f"{'<' if meta.get('open_max') else '<='} {hi}"
    return type_name(tp)


def function_of(meta: dict) -> str:
    if meta["fidelity"] == APPROX:
        return "approximation" + (f", exact at {code(meta['exact'])}" if meta["exact"] is not None else "")
    if meta["fidelity"] == PRECISION:
        return "precision"
    return "same"


def execution_table() -> list:
    """``model.*`` execution knobs: ExecutionConfig's ``knob()`` fields, with the harness's defaults."""
    hints = typing.get_type_hints(ExecutionConfig)
    harness = {f.name: f for f in dataclasses.fields(schema.ModelSettings)}
    lines = ["| key | default | values | function | applied | meaning |", "|---|---|---|---|---|---|"]
    for f in knob_fields(ExecutionConfig):
        meta, meaning = f.metadata, f.metadata["help"]
        default = code(f.default)
        mine = harness.get(f.name)
        if mine is not None and mine is not f and default_of(mine) != f.default:
            default = f"{code(default_of(mine))} (model: {code(f.default)})"
            if mine.metadata.get("help"):
                meaning += f"; {mine.metadata['help']}"
        lines.append(f"| `model.{f.name}` | {default} | {cell(values_of(meta, hints[f.name]))} | "
                     f"{function_of(meta)} | {meta['applied']} | {cell(meaning)} |")
    return lines


def harness_rows(cls, prefix: str, seen: dict, base=None) -> list:
    """Rows for a schema dataclass's own keys, groups (a dataclass-typed field) flattened as ``prefix.key``.

    ``seen``: group type -> its defaults where listed already; the same group again (verify's
    ``model.*``) is one row naming the defaults that differ. ``base``: an instance of the command
    schema this one extends (profile's, run/sweep's); only keys it lacks or declares otherwise."""
    hints = typing.get_type_hints(cls)
    # the group that carries the model's knobs (model.*): those are in the model's table
    execution = {f.name for f in knob_fields(ExecutionConfig)} if knob_fields(cls) else set()
    base_fields = {f.name: f for f in dataclasses.fields(type(base))} if base is not None else {}
    rows = []
    for f in dataclasses.fields(cls):
        tp, default = hints[f.name], default_of(f)
        if dataclasses.is_dataclass(tp):
            if tp in seen:
                changed = [g.name for g in dataclasses.fields(tp) if getattr(default, g.name) != getattr(seen[tp], g.name)]
                if changed:
                    rows.append((f"`{prefix}{f.name}.*`", "", "", "as for run/sweep, with the defaults " + ", ".join(
                        f"`{prefix}{f.name}.{n}={plain(getattr(default, n))}`" for n in changed)))
                continue
            seen[tp] = default
            rows += harness_rows(tp, f"{prefix}{f.name}.", seen)
            continue
        if f.name in execution:  # the model's knobs (a harness default for one is shown there)
            continue
        old = base_fields.get(f.name)
        if old is not None and default_of(old) == default and old.metadata.get("help") == f.metadata.get("help"):
            continue
        rows.append((f"`{prefix}{f.name}`", code(default), type_name(tp), f.metadata.get("help", "")))
    return rows


def harness_tables() -> list:
    lines, seen, first = [], {}, None
    for name, cls in COMMANDS:
        base = first() if first is not None and issubclass(cls, first) else None
        lines += ["", f"### {name}", ""]
        if base is not None:
            lines += [f"Every key of `{COMMANDS[0][0]}` above, and:", ""]
        lines += ["| key | default | type | meaning |", "|---|---|---|---|"]
        lines += [f"| {k} | {d} | {t} | {cell(m)} |" for k, d, t, m in harness_rows(cls, "", seen, base)]
        first = first or cls
    return lines


def first_comment(path: Path) -> str:
    """A YAML file's description: the first sentence of its leading comment (the ``@package`` line
    left out; it ends at an example command, indented under ``#   ``)."""
    words = []
    for line in path.read_text().splitlines():
        if not line.startswith("#") or (line.startswith("#  ") and words):
            break
        text = line.lstrip("#").strip()
        if not text.startswith("@package"):
            words.append(text)
    text = " ".join(words)
    end = text.find(". ")
    return (text[:end + 1] if end >= 0 else text).rstrip(":") .rstrip(".") + "."


def flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def preset_keys(path: Path) -> str:
    """For an experiment preset: the keys it sets and the grid it sweeps, from the file itself."""
    data = yaml.safe_load(path.read_text()) or {}
    grid = flat(((data.get("hydra") or {}).get("sweeper") or {}).get("params") or {})
    keys = {k: v for k, v in flat(data).items() if k != "experiment" and not k.startswith("hydra.")}
    parts = []
    if keys:
        parts.append("sets " + ", ".join(f"`{k}={plain(v)}`" for k, v in keys.items()))
    if grid:
        parts.append("sweeps " + ", ".join(f"`{k}={plain(v)}`" for k, v in grid.items()))
    text = "; ".join(parts)
    return (" " + text[0].upper() + text[1:] + ".") if parts else ""


def model_keys(path: Path) -> str:
    """For an approx preset: the model keys it sets away from ExecutionConfig's defaults."""
    data = yaml.safe_load(path.read_text()) or {}
    defaults = ExecutionConfig()
    set_ = [f"`model.{k}={v}`" for k, v in (data.get("model") or {}).items() if getattr(defaults, k, None) != v]
    return ", ".join(set_) or "every approximation at its exact value"


def job_resources(path: Path) -> str:
    """For a launcher preset: what a job gets, from its own keys."""
    data = yaml.safe_load(path.read_text()) or {}
    parts = [f"{data[k]} {unit}" for k, unit in (("gpus_per_node", "GPU per node"), ("cpus_per_task", "CPUs"),
                                                   ("mem_gb", "GB"), ("timeout_min", "min")) if k in data]
    if "partition" in data:
        parts.append(f"partition `{data['partition']}`")
    return " A job gets " + ", ".join(parts) + "." if parts else ""


def group_tables() -> list:
    lines = []
    for group, what in GROUPS:
        folder = EXPERIMENTS / group
        lines += ["", f"### `{group}`", "", what[0].upper() + what[1:] + ".", "", "| name | what |", "|---|---|"]
        for path in sorted(folder.glob("*.yaml")):
            text = model_keys(path) if group == "approx" else first_comment(path)
            if group == "hydra/launcher":
                text += job_resources(path)
            if group == "experiment":
                text += preset_keys(path)
            lines.append(f"| `{group}={path.stem}` | {cell(text)} |")
    return lines


def render() -> str:
    lines = [
        "# Knobs",
        "",
        "Every configuration key of the commands, with its default, its values and what it does: "
        f"generated from the knobs' own declarations by `{COMMAND}` (do not edit by hand; "
        "tests/test_docs.py checks it is current).",
        "",
        "Set a key as `key=value` and sweep it as `key=a,b,c`; `python -m vggt_bench <command> --help` "
        "prints the composed configuration. A misspelled key or a bad value stops in one line naming "
        "the fix (exit code 2).",
        "",
        "## Execution knobs of the model (`model.*`)",
        "",
        f"Each is one field of `vggt_model.ExecutionConfig` ({where(ExecutionConfig)}), declared with `knob()`; the "
        "Hydra schema, point ids, results columns (one per knob), validation and the report's lists derive "
        "from it. *function*: `same` computes the same function at any value (an execution strategy), "
        "`precision` the same function with other rounding, `approximation` another function (exact at the "
        "value given; the report tells them apart by this). *applied*: `configure` (handed to "
        "`VGGT.configure`), `build` (once, when the model is built) or `harness` (how the harness calls the "
        "model). A bound named by a word (`depth`) is the built model's: 24 global layers in VGGT-1B, 8 in "
        "`small`.",
        "",
        *execution_table(),
        "",
        "## The harness's keys",
        "",
        f"Fields of the Hydra schema ({where(schema.BenchConfig)}), help from each field's metadata (`setting()`). "
        "Defaults are the schema's; a preset (`experiment=`, below) may set others, and `--help` prints the "
        "composed values.",
        *harness_tables(),
        "",
        "## Named settings (config groups)",
        "",
        "YAML files under experiments/ (installed as `vggt_bench.experiments`), chosen as `group=name`.",
        *group_tables(),
        "",
    ]
    return "\n".join(lines)


def main(argv) -> int:
    text = render()
    if "--check" in argv:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            print(f"docs/knobs.md is not current; regenerate it: {COMMAND}", file=sys.stderr)
            return 1
        print("docs/knobs.md is current")
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
