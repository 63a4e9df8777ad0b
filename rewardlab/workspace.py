"""A workspace: one folder holding a project's database, its settings and its artifacts.

Layout::

    <workspace>/
        workspace.yaml   settings (annotation guidelines, overlap), see WorkspaceConfig
        rewardlab.db     the SQLite store (unless --db names another database)

The folder is ``--workspace``, else ``$REWARDLAB_WORKSPACE``, else ``./rewardlab_workspace``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rewardlab.errors import RewardlabError

DEFAULT_GUIDELINES = """\
**Which response is better?** Read the prompt, then both responses.

- Prefer the response that is **helpful, honest and harmless**: it answers what was asked,
  is correct, and does not assist with anything dangerous.
- **Tie** when both are about equally good; **both bad** when neither is acceptable.
- **Strength**: *slight* when it is a close call, *clear* when one is obviously better.
- Length is not quality: a short correct answer beats a long rambling one.

Keys: `1` A better, `2` B better, `3` tie, `4` both bad, `s` skip, `u` undo last.
"""


@dataclass
class WorkspaceConfig:
    """Settings of one workspace, read from ``workspace.yaml``."""

    title: str = "rewardlab"
    """Name shown at the top of the annotation app."""
    guidelines: str = DEFAULT_GUIDELINES
    """Markdown shown to annotators above every pair."""
    overlap: int = 1
    """How many distinct annotators label each new comparison (agreement needs 2 or more)."""
    lease_minutes: float = 10.0
    """How long a pair shown to one annotator is held back from others before it is offered again."""
    session_idle_hours: float = 12.0
    """A signed-in session ends after this many hours without a request (sign in again)."""
    session_max_hours: float = 168.0
    """A session ends this many hours after sign-in, however active (one week by default)."""
    login_max_failures: int = 5
    """Failed sign-ins, per user name and per client address, that pause sign-in (0: never pause)."""
    login_window_minutes: float = 5.0
    """The failures above count when they fall within this many minutes."""
    login_cooldown_minutes: float = 15.0
    """How long sign-in stays refused after the last of those failures, even with the right password."""
    extra: dict = field(default_factory=dict)
    """Settings of later stages, kept as written."""


def default_workspace() -> Path:
    return Path(os.environ.get("REWARDLAB_WORKSPACE") or "rewardlab_workspace")


DB_ENV = "REWARDLAB_DB"
"""Environment variable with the default database URL (used when ``--db`` is not given)."""


def db_url(value: str | None, workspace: Path | None = None) -> str:
    """Turn ``--db`` (an SQLAlchemy URL, a file path, ``env:NAME``, or nothing) into a URL.

    ``env:NAME`` reads the URL from the environment variable NAME, so a URL with a password never
    appears in a process list or a job's recorded command; with no value, ``$REWARDLAB_DB`` is used
    when set, else the workspace's SQLite file.
    """
    if value and value.startswith("env:"):
        name = value[4:]
        if not os.environ.get(name):
            raise RewardlabError(f"database {value}: the environment variable {name} is not set")
        value = os.environ[name]
    elif not value and os.environ.get(DB_ENV):
        value = os.environ[DB_ENV]
    if value and "://" in value:
        return value
    if value:
        return "sqlite:///" + str(Path(value).expanduser().resolve())
    ws = (workspace or default_workspace()).expanduser().resolve()
    return "sqlite:///" + str(ws / "rewardlab.db")


def load_config(workspace: Path) -> WorkspaceConfig:
    path = Path(workspace) / "workspace.yaml"
    if not path.exists():
        return WorkspaceConfig()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RewardlabError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise RewardlabError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(WorkspaceConfig)} - {"extra"}
    cfg = WorkspaceConfig(**{k: v for k, v in raw.items() if k in known})
    cfg.extra = {k: v for k, v in raw.items() if k not in known}
    if not isinstance(cfg.overlap, int) or cfg.overlap < 1:
        raise RewardlabError(f"{path}: overlap must be a whole number >= 1, got {cfg.overlap!r}")
    for name in ("session_idle_hours", "session_max_hours", "login_window_minutes", "login_cooldown_minutes"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
            raise RewardlabError(f"{path}: {name} must be a number > 0 (and < 1e6), got {value!r}")
    if isinstance(cfg.login_max_failures, bool) or not isinstance(cfg.login_max_failures, int) \
            or cfg.login_max_failures < 0:
        raise RewardlabError(
            f"{path}: login_max_failures must be a whole number >= 0 (0 turns the pause off), "
            f"got {cfg.login_max_failures!r}"
        )
    return cfg


def save_config(workspace: Path, cfg: WorkspaceConfig) -> Path:
    path = Path(workspace) / "workspace.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "extra"}
    data.update(cfg.extra)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    os.replace(tmp, path)
    return path
