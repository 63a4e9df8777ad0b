"""Paths typed into the admin console stay inside the workspace.

A path from a form is taken relative to the workspace (an absolute one is taken as it is), then
resolved, symbolic links included; anything that lands outside the workspace, through ``..``, an
absolute path or a link pointing out, is refused with a one-line error naming the field.
"""

from __future__ import annotations

from pathlib import Path

from rewardlab.errors import RewardlabError


def confine(workspace: Path, value, what: str, *, must_exist: bool = False, kind: str | None = None) -> Path:
    """``value`` as a resolved path inside ``workspace``; RewardlabError otherwise.

    ``kind``: "file" or "dir" to require that type when the path exists (and ``must_exist``).
    """
    root = Path(workspace).resolve()
    text = "" if value is None else str(value).strip()
    if not text:
        raise RewardlabError(f"{what}: give a path inside the workspace {root}")
    if "\x00" in text:
        raise RewardlabError(f"{what}: not a valid path")
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = root / path
    resolved = path.resolve()  # follows every symlink that exists along the way
    if resolved != root and not resolved.is_relative_to(root):
        via = " (through a symbolic link)" if path.absolute() != resolved and _lexically_inside(path, root) else ""
        raise RewardlabError(f"{what}: {text} is outside the workspace {root}{via}; give a path inside it")
    if must_exist and not resolved.exists():
        raise RewardlabError(f"{what}: {text} does not exist in the workspace {root}")
    if resolved.exists() and kind == "file" and not resolved.is_file():
        raise RewardlabError(f"{what}: {text} is a folder; give a file")
    if resolved.exists() and kind == "dir" and not resolved.is_dir():
        raise RewardlabError(f"{what}: {text} is a file; give a folder")
    return resolved


def _lexically_inside(path: Path, root: Path) -> bool:
    import os

    return Path(os.path.normpath(path.absolute())).is_relative_to(root)


def relative(workspace: Path, path) -> str:
    """How a path inside the workspace is shown: relative to it."""
    root = Path(workspace).resolve()
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)
