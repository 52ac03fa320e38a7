"""The README's Layout section names only what is in the tree, and every top-level folder."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def layout_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1]
    return section.split("```", 2)[1].splitlines()


def named_paths() -> list[Path]:
    """Each line's leading path (indented lines are inside the folder above), and files listed."""
    paths: list[Path] = []
    parent = ROOT
    for line in layout_block():
        if not line.strip() or line.startswith(" " * 4):
            continue  # a continuation of the description above
        indented = line.startswith("  ")
        names = re.split(r"\s{2,}", line.strip())[0].split()
        base = parent if indented else ROOT
        for name in names:
            if "<" in name:
                name = name.split("<", 1)[0]
            paths.append(base / name)
        if not indented and names:
            parent = ROOT / names[0]
    return paths


def test_every_path_the_layout_names_exists() -> None:
    missing = [str(p.relative_to(ROOT)) for p in named_paths() if not p.exists()]
    assert not missing, f"README Layout names what is not in the tree: {missing}"


def test_every_top_level_folder_is_in_the_layout() -> None:
    named = {p.relative_to(ROOT).parts[0] for p in named_paths()}
    folders = {
        p.name
        for p in ROOT.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and p.name not in {"data", "node_modules"}
        and not p.name.endswith(".egg-info")
    }
    assert folders <= named, f"folders missing from README Layout: {sorted(folders - named)}"
