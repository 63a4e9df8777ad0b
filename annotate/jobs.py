"""Background jobs: ``rewardlab`` CLI commands run as processes, recorded in the store's ``jobs`` table.

The admin console starts long work (generation, reward training, PPO, evaluation) exactly as a
user would in a terminal, ``python -m rewardlab.cli ARGS``, never inside the web server. Each job
gets a folder ``<workspace>/jobs/<id>/`` holding::

    log.txt      everything the command printed (stdout and stderr; progress bars included)
    exit_code    written by the wrapper when the command ends (absent while it runs)

The wrapper is a one-line ``sh`` that runs the command and then writes its exit status to
``exit_code`` (through a temporary file and a rename, so a half-written code is never read). It
starts in a new session, so the job is one process group: cancelling kills the group (SIGTERM,
then SIGKILL after a grace period), the command and anything it started alike.

Status (``annotate.store.JOB_STATUSES``) is recovered from the files and the process, so it is
right after a page reload and after an app restart alike:

- ``exit_code`` present: ``succeeded`` (0) or ``failed`` (anything else);
- else the recorded pid is alive *and* started at the recorded time: ``running`` (a pid the system
  gave to another process since is not mistaken for the job);
- else ``cancelled`` when an admin cancelled it, otherwise ``lost`` (the process vanished without
  an exit code: killed from outside, or the machine restarted).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from sqlalchemy import select

from annotate.store import Job, Store, utcnow
from rewardlab.errors import RewardlabError

LOG_FILE = "log.txt"
EXIT_FILE = "exit_code"
FINISHED = ("succeeded", "failed", "cancelled", "lost")
CANCEL_GRACE_S = 5.0
# Runs the command, then records its exit status atomically. "$@" is the command, never re-parsed.
_WRAPPER = 'rc_file="$1"; shift; "$@"; rc=$?; echo "$rc" > "$rc_file.tmp" && mv "$rc_file.tmp" "$rc_file"'
_REPO = Path(__file__).resolve().parents[1]
_children: dict[int, subprocess.Popen] = {}  # wrappers this process started, reaped on refresh
_lock = threading.Lock()


def _start_time(pid: int) -> float | None:
    """When the process ``pid`` started (epoch seconds), or None when there is none (or a zombie)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def _alive(job: Job) -> bool:
    if not job.pid or job.proc_start is None:
        return False
    child = _children.get(job.pid)
    if child is not None and child.poll() is not None:
        _children.pop(job.pid, None)
        return False
    started = _start_time(job.pid)
    return started is not None and abs(started - job.proc_start) < 0.05


def _read_exit_code(folder: Path) -> int | None:
    try:
        return int((folder / EXIT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def as_dict(job: Job) -> dict:
    """A job as plain JSON-able values (what the API returns)."""
    return {
        "id": job.id,
        "kind": job.kind,
        "command": json.loads(job.command),
        "config": json.loads(job.config or "{}"),
        "status": job.status,
        "pid": job.pid,
        "folder": job.folder,
        "log": str(Path(job.folder) / LOG_FILE),
        "out": job.out,
        "created_by": job.created_by,
        "started_at": job.started_at.isoformat(timespec="seconds") + "Z",
        "ended_at": job.ended_at.isoformat(timespec="seconds") + "Z" if job.ended_at else None,
        "exit_code": job.exit_code,
    }


def start(store: Store, workspace: Path, kind: str, args: list[str], *, config: dict | None = None,
          out: str = "", created_by: str = "", extra_env: dict | None = None) -> dict:
    """Run ``python -m rewardlab.cli *args`` in the background as job ``kind``; return the job.

    The command runs in the workspace folder with this process's Python and this rewardlab on its
    path, so the job runs the same code as the app.
    """
    workspace = Path(workspace).resolve()
    with store.write() as s:
        job = Job(kind=kind, command=json.dumps([str(a) for a in args]), config=json.dumps(config or {}, default=str),
                  status="running", out=str(out), created_by=created_by)
        s.add(job)
        s.flush()
        job_id = job.id
    folder = workspace / "jobs" / str(job_id)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **(extra_env or {})}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(folder / LOG_FILE, "ab") as log:
            child = subprocess.Popen(
                ["sh", "-c", _WRAPPER, "rewardlab-job", str(folder / EXIT_FILE),
                 sys.executable, "-m", "rewardlab.cli", *map(str, args)],
                cwd=workspace, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    except OSError as exc:
        with store.write() as s:
            row = s.get(Job, job_id)
            row.status, row.ended_at, row.folder = "failed", utcnow(), str(folder)
        raise RewardlabError(f"cannot start the {kind} job: {exc}") from None
    _children[child.pid] = child
    started = _start_time(child.pid)
    if started is None:  # it already ended: the exit code file says how
        started = time.time()
    with store.write() as s:
        row = s.get(Job, job_id)
        row.pid, row.proc_start, row.folder = child.pid, started, str(folder)
    return get(store, job_id)


def refresh(store: Store, job_id: int) -> Job | None:
    """Bring one job's status up to date from its files and process; the job, or None."""
    with _lock:
        with store.read() as s:
            job = s.get(Job, job_id)
        if job is None or job.status in FINISHED:
            return job
        code = _read_exit_code(Path(job.folder)) if job.folder else None
        if code is None and _alive(job):
            return job
        if code is None:  # the wrapper may have written it between the two checks
            code = _read_exit_code(Path(job.folder)) if job.folder else None
        with store.write() as s:
            row = s.get(Job, job_id)
            if row.status in FINISHED:
                return row
            if code is not None:
                row.status, row.exit_code = ("succeeded" if code == 0 else "failed"), code
                try:
                    row.ended_at = _mtime(Path(row.folder) / EXIT_FILE)
                except OSError:
                    row.ended_at = utcnow()
            else:
                row.status, row.ended_at = "lost", utcnow()
            return row


def _mtime(path: Path):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).replace(tzinfo=None)


def get(store: Store, job_id: int) -> dict:
    """One job (status recovered); RewardlabError when there is no such job."""
    job = refresh(store, job_id)
    if job is None:
        raise RewardlabError(f"no job {job_id}; see the jobs list for the ids")
    return as_dict(job)


def list_jobs(store: Store, kind: str | None = None, limit: int = 50) -> list[dict]:
    """The latest jobs (of ``kind`` when given), newest first, statuses recovered."""
    query = select(Job.id).order_by(Job.id.desc()).limit(limit)
    if kind:
        query = query.where(Job.kind == kind)
    with store.read() as s:
        ids = list(s.scalars(query))
    return [as_dict(refresh(store, i)) for i in ids]


def latest(store: Store, kind: str) -> dict | None:
    jobs = list_jobs(store, kind, limit=1)
    return jobs[0] if jobs else None


def cancel(store: Store, job_id: int, grace_s: float = CANCEL_GRACE_S) -> dict:
    """Stop a running job: SIGTERM to its process group, SIGKILL after ``grace_s``; status cancelled."""
    job = refresh(store, job_id)
    if job is None:
        raise RewardlabError(f"no job {job_id}; see the jobs list for the ids")
    if job.status != "running":
        raise RewardlabError(f"job {job_id} is {job.status}, not running: nothing to cancel")
    if _alive(job):
        _signal_group(job.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _alive(job) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(job):
            _signal_group(job.pid, signal.SIGKILL)
            while _alive(job) and time.monotonic() < deadline + 5:
                time.sleep(0.1)
    with store.write() as s:
        row = s.get(Job, job_id)
        if row.status == "running":
            code = _read_exit_code(Path(row.folder))
            if code is not None and code == 0:  # it finished on its own just before
                row.status, row.exit_code = "succeeded", 0
            else:
                row.status, row.exit_code = "cancelled", code
            row.ended_at = utcnow()
    return get(store, job_id)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the wrapper leads its own session, so its pid is the group id
    except ProcessLookupError:
        pass


def log_tail(job: dict, max_chars: int = 6000) -> str:
    """The end of a job's log as a person reads it: progress-bar redraws (\\r) keep their last state."""
    path = Path(job["log"])
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4 * max_chars))
            raw = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
             for line in raw.split("\n")]
    return "\n".join(lines)[-max_chars:]


def read_jsonl(path: Path, limit: int = 5000) -> list[dict]:
    """Rows of a metrics/samples JSONL file a job is still writing (a partial last line is skipped)."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except OSError:
        return []
    return rows[-limit:]
