"""Names that become paths: what a safe name is, and joins that cannot leave their folder.

A group name, scene id or inbox base becomes a folder or file name (``OUT/groups/{group}``, tile ids,
detection folders), and some of those folders are replaced with ``rmtree``. Two lines of defence:
:func:`name_problem` refuses unsafe names where they are read (config, inbox scan), and
:func:`contained` refuses any join whose result would not lie strictly inside its root.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pipeline.errors import InputError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MAX_NAME_LENGTH = 100  # leaves room for the prefixes and suffixes added to it under the 255-byte file name limit
_SHOWN = 60  # characters of a refused name shown in a message


def shown(name: object) -> str:
    """A name as an error message shows it: quoted, escaped (NUL, newlines), long ones cut.

    Args:
        name: the name (any object; its ``str``).

    Returns:
        ``repr`` of the name, or of its first characters followed by its length.
    """
    text = str(name)
    if len(text) <= _SHOWN:
        return repr(text)
    return f"{text[:_SHOWN]!r}… ({len(text)} characters)"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a group name, scene id or inbox base; None when it can.

    A safe name starts with an ASCII letter or digit, holds only ASCII letters, digits, ``_``, ``.``
    and ``-``, has no ``..`` and is at most ``MAX_NAME_LENGTH`` characters long.

    Args:
        name: the name to check.

    Returns:
        The problem, to follow the name in a message; None for a safe name.
    """
    if len(name) > MAX_NAME_LENGTH:
        return f"is too long: {len(name)} characters, at most {MAX_NAME_LENGTH} are allowed"
    if ".." in name or SAFE_NAME.fullmatch(name) is None:
        return "is not a safe name: use letters, digits, '_', '.' and '-', starting with a letter or digit, no '..'"
    return None


def safe_name(name: str) -> str:
    """``name`` unchanged when it is safe (see :func:`name_problem`); a pydantic field validator.

    Args:
        name: the name to check.

    Returns:
        ``name``.

    Raises:
        ValueError: the name is not safe; the message shows the name and the problem.
    """
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(f"{shown(name)} {problem}")
    return name


class UnsafePathError(InputError):
    """A user-given name would put a path outside its folder (``..``, an absolute path, a separator, NUL)."""

    def __init__(self, root: Path, name: object, problem: str) -> None:
        self.name = str(name)
        super().__init__(root, f"refusing the name {shown(name)}: {problem}")


def contained(root: Path | str, *parts: str) -> Path:
    """``root / part / ...``, refused unless each part is one plain name and the result lies inside ``root``.

    A part may not be empty, ``.`` or ``..``, nor hold a path separator or NUL (so an absolute path is
    refused too). The folders above the last part are resolved (symbolic links followed), so a link
    leading out of ``root`` is refused as well; the last part itself is not followed, as it is what
    a caller creates, replaces or removes.

    Args:
        root: the folder the result must lie in.
        *parts: the names to join, e.g. a group name and a file name.

    Returns:
        The joined path (not resolved).

    Raises:
        UnsafePathError: a part is not one plain name, or the result is ``root`` itself or outside it;
            the message names ``root`` and the offending name.
    """
    root = Path(root)
    if not parts:
        raise UnsafePathError(root, "", "no name to join")
    separators = {os.sep, os.altsep or os.sep, "\x00"}
    for part in parts:
        text = os.fspath(part)
        if text in ("", ".", "..") or any(s in text for s in separators):
            raise UnsafePathError(root, text, "not a single file or folder name")
    path = root.joinpath(*parts)
    base = root.resolve()
    inside = path.parent.resolve() / path.name
    if inside == base or base not in inside.parents:
        raise UnsafePathError(root, os.path.join(*parts), f"resolves to {inside}, outside {base}")
    return path
