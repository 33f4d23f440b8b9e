"""The documentation stays true to the code: docs/knobs.md is what scripts/knobs_doc.py writes from
the knobs' own metadata. No torch work: a few seconds."""

import dataclasses
import importlib.util
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
REGENERATE = ".venv/bin/python scripts/knobs_doc.py"


def _knobs_doc():
    spec = importlib.util.spec_from_file_location("knobs_doc", ROOT / "scripts" / "knobs_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_knobs_md_is_what_the_generator_writes():
    written = (ROOT / "docs" / "knobs.md").read_text()
    assert written == _knobs_doc().render(), f"docs/knobs.md is not current; regenerate it: {REGENERATE}"


def test_a_new_knob_appears_in_knobs_md_with_no_edit_to_the_generator(monkeypatch):
    from vggt_model.config import ExecutionConfig, knob

    @dataclasses.dataclass
    class WithANewKnob(ExecutionConfig):
        stream_count: int = knob(2, minimum=1, maximum=8, help="streams the new knob runs on")

    doc = _knobs_doc()
    monkeypatch.setattr(doc, "ExecutionConfig", WithANewKnob)
    row = next(line for line in doc.render().splitlines() if line.startswith("| `model.stream_count` |"))
    assert row == "| `model.stream_count` | `2` | 1..8 | same | configure | streams the new knob runs on |"
