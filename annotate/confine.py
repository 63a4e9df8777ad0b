"""Form fields naming paths in the admin console: ``rewardlab.paths.confine`` plus the field's name.

The containment check itself (``..``, absolute paths elsewhere, symbolic links pointing out, NUL
bytes) is ``rewardlab.paths.confine``; this adds what a form needs: the field named in the error,
an optional existence and type check, and the path shown relative to the workspace.
"""

from __future__ import annotations

from pathlib import Path

from rewardlab.errors import RewardlabError
from rewardlab.paths import confine as confine_path


def confine(workspace: Path, value, what: str, *, must_exist: bool = False, kind: str | None = None) -> Path:
    """``value`` as a resolved path inside ``workspace``; RewardlabError naming ``what`` otherwise.

    ``kind``: "file" or "dir" to require that type when the path exists (and ``must_exist``).
    """
    root = Path(workspace).resolve()
    text = "" if value is None else str(value).strip()
    if not text:
        raise RewardlabError(f"{what}: give a path inside the workspace {root}")
    try:
        resolved = confine_path(text, root)
    except RewardlabError as exc:
        raise RewardlabError(f"{what}: {exc}") from None
    if must_exist and not resolved.exists():
        raise RewardlabError(f"{what}: {text} does not exist in the workspace {root}")
    if resolved.exists() and kind == "file" and not resolved.is_file():
        raise RewardlabError(f"{what}: {text} is a folder; give a file")
    if resolved.exists() and kind == "dir" and not resolved.is_dir():
        raise RewardlabError(f"{what}: {text} is a file; give a folder")
    return resolved


def relative(workspace: Path, path) -> str:
    """How a path inside the workspace is shown: relative to it."""
    root = Path(workspace).resolve()
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)
