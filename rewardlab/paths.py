"""Paths typed into forms (the admin console, job settings) kept inside the workspace.

``confine(path, root)`` is the one check: call it on every path a web user gives, and use only the
path it returns. It resolves ``..`` and symbolic links, so neither a relative escape
(``../../etc/passwd``), an absolute path elsewhere, nor a link inside the workspace that points out
of it gets through. The check is made when it is called: a link created afterwards is not covered,
so open the returned path soon after.
"""

from __future__ import annotations

import os
from pathlib import Path

from rewardlab.errors import RewardlabError


def confine(path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """``path`` (relative to ``root``, or absolute) as an absolute, resolved path inside ``root``.

    Raises RewardlabError when it is empty, holds a NUL byte, or resolves (following symbolic
    links, also of folders on the way) to a place outside ``root``. ``path`` is taken literally:
    no ``~`` or ``$VAR`` expansion. The path need not exist.
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        raise RewardlabError(f"path {text!r}: give the path as text")
    if not text.strip():
        raise RewardlabError("empty path: give a path inside the workspace")
    if "\x00" in text:
        raise RewardlabError(f"path {text!r} contains a NUL byte")
    base = Path(root).expanduser().resolve()
    candidate = Path(text)
    if not candidate.is_absolute():
        candidate = base / candidate
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, an unreadable folder
        raise RewardlabError(f"path {text!r}: cannot be resolved ({exc}); give a plain path inside the workspace") from None
    if resolved != base and base not in resolved.parents:
        raise RewardlabError(
            f"path {text!r} leads outside the workspace {base} (to {resolved}); "
            "give a path inside the workspace"
        )
    return resolved
