"""The repository stands on its own: packaging names only files that exist, and no comment or
document cites a text that is not in the repository."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SKIP = {".venv", "node_modules", ".git", "test-artifacts", "rendered", "__pycache__", ".cache"}
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".json", ".sh", ".txt", ".mjs"}
# Section and rule numbers of design notes kept outside the repository: a reader of the code
# cannot follow them. Built from parts so that this file does not match itself.
OUTSIDE = re.compile(
    "|".join(
        (
            "DESIGN" + r"(?:\.md)?\s*§",
            r"\b" + "invariant" + r" \d",
            "perf-reliability" + r"\.md",
            "formats" + r"\.md",
            "shared/" + "notes",
        )
    ),
    re.IGNORECASE,
)


def _texts() -> list[Path]:
    out = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP]
        here = Path(folder)
        out.extend(
            here / name for name in files if Path(name).suffix in SUFFIXES or here.name == "scripts"
        )
    return out


def test_package_data_names_files_that_exist() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    for package, patterns in config["tool"]["setuptools"]["package-data"].items():
        for pattern in patterns:
            assert list((REPO / package).glob(pattern)), f"package-data {package}: {pattern}"


def test_no_text_cites_a_document_outside_the_repository() -> None:
    texts = _texts()
    assert len(texts) > 100
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in texts
        if path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
        if OUTSIDE.search(line)
    ]
    assert found == []
