"""The documentation stays true to the code: docs/knobs.md is what scripts/knobs_doc.py writes from
the knobs' own metadata, every relative link in README.md and docs/*.md resolves, and every results
column has a line in docs/results-columns.md. No torch work: a few seconds."""

import dataclasses
import importlib.util
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
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


# [text](target) outside code; images too. Autolinks and reference-style links are not used here.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The page without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(page: Path) -> set:
    """GitHub's heading anchors: backticks and punctuation dropped, lower case, spaces to hyphens,
    -1, -2 ... for repeated headings."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    seen, out = {}, set()
    for line in text.splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = "".join(c for c in m.group(1).lower() if c in " -_" or unicodedata.category(c)[0] in "LN")
        slug = slug.replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(page: Path):
    for target in _LINK.findall(_prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        yield target


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_the_link_check_sees_links():
    readme = list(_links(ROOT / "README.md"))
    assert "docs/knobs.md" in readme and len(readme) > 10


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the manual belongs in docs/"
    text = "\n".join(lines)
    for command in ("./scripts/setup.sh && .venv/bin/python -m vggt_bench sweep", ".venv/bin/python -m pytest -q"):
        assert command in text


def test_every_results_column_is_documented():
    from vggt_bench.core.schema import EXECUTION, RESULT_COLUMNS  # one column per knob: docs/knobs.md covers those

    page = (ROOT / "docs" / "results-columns.md").read_text()
    missing = [c for c in RESULT_COLUMNS if c not in EXECUTION and f"`{c}`" not in page]
    assert not missing, f"results columns with no line in docs/results-columns.md: {missing}"
