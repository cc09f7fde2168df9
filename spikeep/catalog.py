"""Built-in models and protocols, by name: ``spikeep train quickstart``, ``--model tiny``.

The repository's top-level ``models/`` and ``protocols/`` are the source of truth. The wheel
ships a copy of both inside the package (``spikeep/_builtin/models``, ``spikeep/_builtin/
protocols``; the build step in ``setup.py`` copies them), so an installed spikeep finds them with
no checkout. A name (a bare file name, with or without ``.toml``) is looked up in the package's
copy first, then in the checkout's folders; a path to a file that exists is taken as it is. The
protocols name their models relative to themselves (``../models/x.toml``), which holds in both
places.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

__all__ = ["KINDS", "folders", "resolve", "entries"]

KINDS = ("models", "protocols")
_PACKAGE = Path(__file__).resolve().parent / "_builtin"  # in an installed wheel
_CHECKOUT = Path(__file__).resolve().parents[1]  # the repository root, in a source checkout


def folders(kind: str) -> list[Path]:
    """The folders holding the built-in ``kind`` (``"models"`` or ``"protocols"``), in the order
    names are looked up; only those that exist."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}, expected one of {list(KINDS)}")
    return [f for f in (_PACKAGE / kind, _CHECKOUT / kind) if f.is_dir()]


def resolve(text: str | Path, kind: str) -> Path:
    """The file ``text`` names: itself when it is a file, else the built-in ``kind`` of that
    name (``quickstart``, ``quickstart.toml``), else ``text`` unchanged (whose reader then
    reports that there is no such file)."""
    path = Path(text)
    if path.is_file() or len(path.parts) != 1:
        return path
    stem = path.name.removesuffix(".toml")
    for folder in folders(kind):
        candidate = folder / f"{stem}.toml"
        if candidate.is_file():
            return candidate
    return path


def entries(kind: str) -> list[tuple[str, str, Path]]:
    """``(name, description, path)`` of every built-in ``kind``, sorted by name (a name in
    the package's copy hides the checkout's)."""
    found: dict[str, tuple[str, str, Path]] = {}
    for folder in folders(kind):
        for path in sorted(folder.glob("*.toml")):
            if path.stem in found:
                continue
            try:
                table = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                table = {}
            description = table.get("description", "")
            found[path.stem] = (
                path.stem,
                description if isinstance(description, str) else "",
                path,
            )
    return [found[k] for k in sorted(found)]
