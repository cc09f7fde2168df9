"""Reading a TOML file with one-line errors (shared by model specs and protocols)."""

from __future__ import annotations

import tomllib
from pathlib import Path


def read(path: str | Path, error: type[Exception], what: str) -> dict:
    """The parsed table of ``path``; ``error`` names the file when it is missing or not TOML."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what} file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path}: not valid TOML ({err})") from None
