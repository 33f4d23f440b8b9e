"""Command-line overrides checked against the command's schema before Hydra runs.

Hydra answers a misspelled key with a multi-line hint, and following that hint
(``+model.atention=eager``) silently adds a key nothing reads, so the default runs. Here every
key must exist in the schema (vggt_bench.core.config), and every value must fit its field's type;
otherwise one line names the key (with the closest existing one) and the command exits with
EXIT_USER_ERROR like every other user error. Keys under ``hydra`` and config-group choices
(``experiment=``, ``hydra/launcher=``) are left to Hydra.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Iterator, List, Optional, Tuple

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

GROUPS = ("experiment", "approx")  # config groups of our own whose option is chosen with key=option
# launchers Hydra and its submitit plugin provide, besides the presets in experiments/hydra/launcher/
PLUGIN_LAUNCHERS = ("basic", "submitit_local", "submitit_slurm")


def group_options(group: str):
    """The options of a config group: its YAML files (``experiment``, ``hydra/launcher``)."""
    import os

    from .resources import experiments_dir

    folder = os.path.join(experiments_dir(), group)
    found = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if os.path.isdir(folder) else []
    return found + (list(PLUGIN_LAUNCHERS) if group == "hydra/launcher" else [])


def schema_keys(schema) -> Iterator[Tuple[str, type]]:
    """Every dotted key of a (nested) dataclass schema, with its field type."""
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(f.type) or (isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory)):
            inner = f.type if dataclasses.is_dataclass(f.type) else f.default_factory
            for key, kind in schema_keys(inner):
                yield f"{f.name}.{key}", kind
        elif f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory()):
            for key, kind in schema_keys(type(f.default_factory())):
                yield f"{f.name}.{key}", kind
        else:
            yield f.name, f.type


def check(schema, overrides: List[str], command: str) -> Optional[str]:
    """None when every override fits ``schema``; else the one-line reason."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    flags = [o for o in overrides if not o.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(flags)
    except HydraException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"cannot parse the overrides: {first}"
    keys = dict(schema_keys(schema))
    config = OmegaConf.structured(schema)
    for o in parsed:
        key = o.key_or_group
        if key in GROUPS or key == "hydra/launcher":
            options = group_options(key)
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
            for value in values:
                if value not in options:
                    close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.6)
                    hint = f"; did you mean {close[0]}?" if close else ""
                    return f"unknown {key} {value!r}{hint} (choose one of {options})"
            continue
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            return (f"unknown key {key}{hint} (`python -m vggt_bench {command} --help` lists every key; "
                    f"`+key=value` cannot add new ones)")
        if o.is_delete():
            continue
        values = list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]
        for value in values:
            try:
                OmegaConf.update(config, key, value, merge=False)
            except OmegaConfBaseException as exc:
                kind = getattr(keys[key], "__name__", str(keys[key])).replace("typing.", "")
                return f"{key}={value!r} does not fit {key} ({kind}): {str(exc).splitlines()[0]}"
    return None
