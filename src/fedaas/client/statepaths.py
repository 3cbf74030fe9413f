"""Names a coordinator chooses, made safe before they touch the member's file system.

A member keeps state (its privacy ledger, OU noise, the specs it accepted) in
its own folder, and some of those files are per job. The job id comes from
the coordinator, which the member does not fully trust: an id such as
``x/../../../../elsewhere/NAME`` must never name a file outside that folder.
Every identifier from the wire is checked here against one strict, ASCII-only
rule (:func:`check_id`), and state paths are built only by
:func:`state_file` (and :func:`state_folder` for a finished job's folder),
which check the parts again and that the result lies directly inside the
state folder.
"""

from __future__ import annotations

import re
from pathlib import Path

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
"""A coordinator-chosen identifier: ASCII letters, digits, ``_`` and ``-``; 1 to 64 long."""
_KIND = re.compile(r"^[a-z][a-z0-9\-]{0,31}$")
_SUFFIX = re.compile(r"^(\.[a-z0-9]{1,16})+$")


class UnsafeName(ValueError):
    """An identifier from the coordinator that the member will not use (in a path or URL)."""


def check_id(value: object, what: str = "job id") -> str:
    """``value`` if it is a safe identifier, else :class:`UnsafeName` saying why."""
    if not isinstance(value, str) or not SAFE_ID.match(value):
        shown = repr(value)[:80]
        raise UnsafeName(
            f"the {what} {shown} is not acceptable: use 1 to 64 ASCII letters, digits, "
            "'_' or '-', starting with a letter or digit"
        )
    return value


def is_safe_id(value: object) -> bool:
    return isinstance(value, str) and SAFE_ID.match(value) is not None


def state_file(root: Path, kind: str, ident: str, suffix: str) -> Path:
    """``root / f"{kind}-{ident}{suffix}"``, every part checked; never outside ``root``."""
    if not _KIND.match(kind) or not _SUFFIX.match(suffix):
        raise ValueError(f"bad state file kind {kind!r} or suffix {suffix!r}")
    return _inside(root, kind, ident, suffix, "state file")


def state_folder(root: Path, kind: str, ident: str) -> Path:
    """``root / f"{kind}-{ident}"``: a per-job folder, every part checked; never outside ``root``."""
    if not _KIND.match(kind):
        raise ValueError(f"bad state folder kind {kind!r}")
    return _inside(root, kind, ident, "", "state folder")


def _inside(root: Path, kind: str, ident: str, suffix: str, what: str) -> Path:
    check_id(ident, f"{kind} identifier")
    path = Path(root) / f"{kind}-{ident}{suffix}"
    if path.parent != Path(root) or path.name in (".", ".."):  # belt and braces
        raise UnsafeName(f"{what} {path} would lie outside {root}")
    return path
