"""Tests of the documentation: it names every module, its configuration reference is the one
generated from the code, its links lead somewhere, and the README stays a front page.

These fail when the docs drift from the code: a module added without a line in
``docs/architecture.md``, a configuration key changed without regenerating
``docs/operating.md`` (``python -m worker.config_reference --write docs/operating.md``), a
heading renamed under a link, a README that grows back into a manual.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from worker import config_reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
ARCHITECTURE = DOCS / "architecture.md"
OPERATING = DOCS / "operating.md"
#: The packages whose every module ``docs/architecture.md`` names.
PACKAGES = ("worker", "dicom_io", "models")
#: The README is a front page, not a manual.
README_MAX_LINES = 250
#: The pictures the docs show stay small.
IMAGE_MAX_BYTES = 300 * 1024

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines of a Markdown text outside fenced code blocks, numbered from 1."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def module_names() -> list[str]:
    """Dotted names of every module of :data:`PACKAGES` (a package's ``__init__`` is the
    package itself)."""
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names.append(".".join(parts))
    return names


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lower-cased, without punctuation, spaces
    as hyphens."""
    text = _CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link: its text
    text = unicodedata.normalize("NFC", text).lower()
    kept = "".join(c for c in text if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (repeated headings get ``-1``, ``-2``...)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """The link and image targets of a Markdown file outside code, with their line."""
    found = []
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        line = _CODE_SPAN.sub("", line)
        found += [(number, m.group(1)) for m in _LINK.finditer(line)]
    return found


# --- (a) every module is named in docs/architecture.md -----------------------------------------


def test_module_names_cover_the_packages() -> None:
    names = module_names()
    assert {"worker", "worker.config", "worker.store.core", "dicom_io.pixels",
            "models.datasets.phantom", "models.serving.engine"} <= set(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", module_names())
def test_architecture_names_every_module(name: str) -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    assert f"`{name}`" in text, (
        f"docs/architecture.md does not name the module `{name}`: add a row to its module "
        "tables saying what it owns")


def test_architecture_module_tables_name_only_modules_that_exist() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("\n## Modules\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([\w.]+)` \|", section, flags=re.M)
    listed = [row for row in rows if row.split(".")[0] in PACKAGES]
    assert listed, "no module rows found under '## Modules'"
    stale = sorted(set(listed) - set(module_names()))
    assert not stale, f"docs/architecture.md lists modules that do not exist: {stale}"


# --- (b) the configuration reference is the generated one -------------------------------------


def test_operating_holds_the_generated_configuration_reference() -> None:
    text = OPERATING.read_text(encoding="utf-8")
    assert config_reference.block_of(text) == config_reference.render(), (
        "docs/operating.md's configuration reference is out of date: run "
        "python -m worker.config_reference --write docs/operating.md")


def test_the_reference_has_every_key_of_the_configuration() -> None:
    reference = config_reference.render()
    for heading in ("`[listener]`", "`[listener.tls]`", "`[storage]`", "`[http]`",
                    '`[[destinations]]` with `type = "dimse"`',
                    '`[[destinations]]` with `type = "stowrs"`', "`[destinations.tls]`",
                    '`[[sources]]` with `type = "dicomweb"`',
                    '`[[sources]]` with `type = "dimse"`', "`[sources.tls]`"):
        assert f"#### {heading}" in reference
    assert '| `port` | integer, >= 1, <= 65535 | `11112` |' in reference
    assert "| `enabled` | boolean | `false` |" in reference
    assert "| `url` | string, matching" in reference
    # every field has a description (a field docstring in worker/config.py)
    rows = [line for line in reference.splitlines() if line.startswith("| `")]
    assert rows and all(not line.rstrip().endswith("|  |") for line in rows), [
        line for line in rows if line.rstrip().endswith("|  |")]


def test_replace_block_round_trips_and_refuses_a_document_without_markers() -> None:
    document = f"# Doc\n\n{config_reference.START}\nold\n{config_reference.END}\n\nafter\n"
    written = config_reference.replace_block(document, "new table\n")
    assert config_reference.block_of(written) == "new table\n"
    assert written.startswith("# Doc\n\n") and written.endswith("\n\nafter\n")
    with pytest.raises(ValueError, match="marker"):
        config_reference.replace_block("# no markers\n", "x")


def test_check_exits_1_when_the_block_is_stale(tmp_path: Path) -> None:
    stale = tmp_path / "operating.md"
    stale.write_text(f"{config_reference.START}\n\nold\n{config_reference.END}\n",
                     encoding="utf-8")
    assert config_reference.main(["--check", str(stale)]) == 1
    assert config_reference.main(["--write", str(stale)]) == 0
    assert config_reference.main(["--check", str(stale)]) == 0


# --- (c) every relative link leads to a file and heading that exist ---------------------------


def test_slug_follows_github() -> None:
    assert slug("4.2.1.4.1 Activity: receive radiographs") == "42141-activity-receive-radiographs"
    assert slug('`[[sources]]` with `type = "dimse"`') == "sources-with-type--dimse"
    assert slug('Taxonomy and "not assessed"') == "taxonomy-and-not-assessed"


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for number, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        linked = path if not file_part else (path.parent / file_part).resolve()
        if not linked.exists():
            broken.append(f"line {number}: {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"line {number}: {target}: no heading #{anchor} in {linked.name}")
    assert not broken, f"{path.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_readme_and_docs_link_each_other() -> None:
    readme = {target.split("#")[0] for _, target in links(README)}
    for name in ("architecture.md", "operating.md", "results.md", "models.md",
                 "benchmarks.md", "reliability.md", "conformance.md", "deployment.md"):
        assert f"docs/{name}" in readme, f"README.md does not link docs/{name}"


def test_pictures_exist_and_stay_small() -> None:
    for name in ("capture.png", "status-page.png"):
        picture = DOCS / "images" / name
        assert picture.is_file(), picture
        assert picture.stat().st_size <= IMAGE_MAX_BYTES, picture


# --- (d) the README is a front page -----------------------------------------------------------


def test_readme_is_a_front_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "Research software. Not a diagnosis." in text
    # the two set-up commands CI and the quick start rely on (.ci/run calls make test)
    assert "\nmake run     # " in text and "\nmake test    # " in text
