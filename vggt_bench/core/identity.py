"""A point's identity: which fields define its work, their canonical values, and its id.

A point's id hashes the fields that define its work (``schema.KNOBS``: the workload and every
execution knob) *that differ from their default*: an execution knob at ExecutionConfig's default, or
a workload field at ``schema.WORKLOAD_DEFAULTS``, does not enter it. So a knob added later at a
default that keeps the old behaviour leaves every existing id as it was: old results directories
still resume, and old rows still match new ones. (Until format 2 the id hashed every knob, so each
new knob re-id'd every point; ``store_format`` upgrades those rows.)

Values are made canonical by the field's type before hashing, so an id is the same whether the row
came from a Point, a JSON point file, Parquet (numpy scalars) or CSV (``800.0``, ``"True"``).
``point_id(knobs, drop=...)`` with fields dropped is how ``compare`` matches rows on fewer fields.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Iterable

from vggt_model.config import ExecutionConfig, knob_fields

from .schema import KNOBS, WORKLOAD_DEFAULTS

_KNOB_FIELDS = knob_fields(ExecutionConfig)
DEFAULTS = {**WORKLOAD_DEFAULTS, **{f.name: f.default for f in _KNOB_FIELDS}}
_WORKLOAD_TYPES = {"impl": str, "arch": str, "device": str, "frames": int, "batch": int, "height": int,
                   "width": int, "part": str, "query_points": int, "inputs": str, "seed": int, "input_seed": int}
_NAMES = {"str": str, "int": int, "float": float, "bool": bool}
_NO_DEFAULT = object()  # a field resolved from the machine: always in the id
TYPES = {**_WORKLOAD_TYPES,
         **{f.name: _NAMES.get(f.type, str) if isinstance(f.type, str) else f.type for f in _KNOB_FIELDS}}


def is_missing(value) -> bool:
    """None, NaN or pandas' NA: a field the row does not have."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return type(value).__name__ in ("NAType", "NaTType")


def canonical(key: str, value):
    """``value`` as the type field ``key`` declares (None when missing): numpy scalars as Python
    values, ``800.0`` as 800 for an int field, ``"True"`` as True for a bool field."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if is_missing(value):
        return None
    kind = TYPES.get(key)
    try:
        if kind is bool:
            return value.strip().lower() in ("true", "1", "yes") if isinstance(value, str) else bool(value)
        if kind is int and not isinstance(value, bool):
            number = float(value)
            return int(number) if number.is_integer() else number
        if kind is float and not isinstance(value, bool):
            return float(value)
    except (TypeError, ValueError):
        pass
    return str(value) if kind is str or isinstance(value, str) else value


def identity(knobs: dict, drop: Iterable[str] = ()) -> dict:
    """The fields of ``knobs`` that enter the id: every ``schema.KNOBS`` field not in ``drop`` whose
    canonical value is present and not its default."""
    dropped = set(drop)
    out = {}
    for key in KNOBS:
        if key in dropped:
            continue
        value = canonical(key, knobs.get(key))
        if value is not None and value != DEFAULTS.get(key, _NO_DEFAULT):
            out[key] = value
    return out


def point_id(knobs: dict, drop: Iterable[str] = ()) -> str:
    """Stable id of a configuration (16 hex digits): a hash of ``identity(knobs, drop)``."""
    canonical_json = json.dumps(identity(knobs, drop), sort_keys=True)
    return hashlib.sha1(canonical_json.encode()).hexdigest()[:16]
