"""Reading a TOML file with one-line errors, and the checks of its tables (unknown keys with the
closest known one, numbers, choices), shared by model specs, protocols and fidelity protocols."""

from __future__ import annotations

import difflib
import math
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


# -- table checks shared by model specs, protocols and fidelity protocols --------------------


def is_number(v) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v) -> bool:
    """An int (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool)


def hint(value, allowed) -> str:
    """``"; did you mean 'x'?"`` for the entry of ``allowed`` closest to ``value``, or ``""``."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def unknown(key: str, allowed, named: bool = False) -> str:
    """The message for a key that is not one of ``allowed``, with the closest one (``named``:
    the key is quoted in it, for callers whose prefix does not name it)."""
    close = difflib.get_close_matches(key, list(allowed), n=1)
    near = f"did you mean {close[0]!r}? " if close else ""
    what = f"unknown key {key!r}" if named else "unknown key"
    return f"{what}; {near}expected one of {sorted(allowed)}"


def not_a_choice(value, allowed) -> str:
    """The message for a ``value`` that is not one of ``allowed``, with the closest one."""
    return f"expected one of {list(allowed)}, got {value!r}{hint(value, allowed)}"
