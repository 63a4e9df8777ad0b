"""Background jobs (annotate/jobs.py) with real processes, and path confinement (annotate/confine.py)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import update

from annotate import jobs
from annotate.confine import confine
from annotate.store import Job, Store
from rewardlab.errors import RewardlabError
from test_app import free_port


def wait_for(store, job_id, statuses=jobs.FINISHED, timeout=120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = jobs.get(store, job_id)
        if job["status"] in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {jobs.get(store, job_id)['status']} after {timeout} s")


@pytest.fixture
def ws(tmp_path) -> Path:
    return tmp_path


def serve_job(store: Store, ws: Path) -> dict:
    """A CLI command that runs until stopped: the annotation server on a free port."""
    return jobs.start(store, ws, "serve", ["annotate", "--no-demo", "--workspace", str(ws), "--port", str(free_port())])


def test_exit_code_gives_succeeded_or_failed_and_the_log_is_kept(store, ws):
    ok = jobs.start(store, ws, "users", ["users", "list", "--db", store.url], created_by="root")
    bad = jobs.start(store, ws, "export", ["export", "--out", str(ws / "out"), "--db", store.url])
    assert ok["status"] == "running" and ok["pid"] and ok["created_by"] == "root"
    ok, bad = wait_for(store, ok["id"]), wait_for(store, bad["id"])
    assert (ok["status"], ok["exit_code"]) == ("succeeded", 0)
    assert (bad["status"], bad["exit_code"]) == ("failed", 2)
    assert "no labelled pairs to export" in jobs.log_tail(bad)
    assert "name" in jobs.log_tail(ok) and ok["ended_at"] >= ok["started_at"]
    assert Path(bad["folder"]) == ws / "jobs" / str(bad["id"]) and (Path(bad["folder"]) / "exit_code").is_file()
    assert [j["id"] for j in jobs.list_jobs(store)] == [bad["id"], ok["id"]]
    assert jobs.latest(store, "users")["id"] == ok["id"]
    with pytest.raises(RewardlabError, match="not running"):
        jobs.cancel(store, ok["id"])
    with pytest.raises(RewardlabError, match="no job 999"):
        jobs.get(store, 999)


def test_running_job_survives_a_restart_and_cancel_kills_its_group(store, ws):
    job = serve_job(store, ws)
    wrapper = psutil.Process(job["pid"])
    deadline = time.monotonic() + 30
    while not wrapper.children() and time.monotonic() < deadline:
        time.sleep(0.1)
    [cli] = wrapper.children()  # the python running rewardlab.cli, in the same process group
    # "Restart": a fresh Store over the same database sees the job running, from the process.
    again = Store(store.url)
    try:
        assert jobs.get(again, job["id"])["status"] == "running"
        cancelled = jobs.cancel(again, job["id"])
    finally:
        again.close()
    assert cancelled["status"] == "cancelled" and cancelled["ended_at"]
    assert not cli.is_running() or cli.status() == psutil.STATUS_ZOMBIE
    assert jobs.get(store, job["id"])["status"] == "cancelled"


def test_a_reused_pid_or_a_vanished_process_is_lost_not_running(store, ws):
    job = serve_job(store, ws)
    with store.write() as s:  # the same pid, but a process that started at another time
        s.execute(update(Job).where(Job.id == job["id"]).values(proc_start=job_start(job) - 1000))
    assert jobs.get(store, job["id"])["status"] == "lost"
    os.killpg(job["pid"], signal.SIGKILL)  # clean up the real process

    other = serve_job(store, ws)
    os.killpg(other["pid"], signal.SIGKILL)  # killed from outside: no exit code is ever written
    deadline = time.monotonic() + 10
    while jobs.get(store, other["id"])["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert jobs.get(store, other["id"])["status"] == "lost"


def job_start(job: dict) -> float:
    return psutil.Process(job["pid"]).create_time()


def test_log_tail_keeps_the_last_state_of_progress_bars(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("loading\ngenerating:  10%\rgenerating:  50%\rgenerating: 100%\ndone\n")
    assert jobs.log_tail({"log": str(log)}) == "loading\ngenerating: 100%\ndone\n"
    assert jobs.log_tail({"log": str(tmp_path / "none.txt")}) == ""


def test_read_jsonl_skips_a_line_being_written(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"ste')
    assert jobs.read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_paths_are_confined_to_the_workspace(tmp_path):
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    (ws / "data" / "p.jsonl").write_text("{}\n")
    outside = tmp_path / "secret"
    outside.mkdir()
    (ws / "link").symlink_to(outside)
    assert confine(ws, "data/p.jsonl", "prompts", must_exist=True) == ws.resolve() / "data" / "p.jsonl"
    assert confine(ws, str(ws / "runs" / "new"), "out") == ws.resolve() / "runs" / "new"
    for bad, message in [
        ("../secret", "outside the workspace"),
        (str(outside), "outside the workspace"),
        ("data/../../secret", "outside the workspace"),
        ("link", "outside the workspace"),
        ("link/x.txt", "outside the workspace"),
        ("", "give a path inside the workspace"),
        ("data/none.jsonl", "does not exist"),
    ]:
        with pytest.raises(RewardlabError, match=message):
            confine(ws, bad, "prompts", must_exist=True)
    with pytest.raises(RewardlabError, match="is a folder"):
        confine(ws, "data", "prompts", kind="file")
