"""Processes killed with SIGKILL (a crash, an OOM kill, a pulled plug of the process) at the worst
moment, and what must survive it: SQLite stays consistent and keeps every acknowledged label;
reward-model training and PPO resume from their last checkpoint and reach the planned step count.

Everything runs as its own process group, killed with ``os.killpg(..., SIGKILL)``: no handler, no
cleanup, no flush. (Several app processes on PostgreSQL, one killed under load: test_team_load.py.)
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_ppo import PROMPTS
from test_reward_train import separable_rows, write_jsonl

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "HF_HUB_OFFLINE": "1",
            "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def _start(cmd: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=_env(), cwd=REPO, start_new_session=True, **kw)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not path.exists():
        err = proc.stderr.read()[-3000:] if proc.poll() is not None and proc.stderr else "timed out"
        _kill(proc) if proc.poll() is None else None
        raise AssertionError(f"{path} never appeared: {err}")


# --- SQLite: kill -9 in the middle of writes -------------------------------------------------------

# Eight threads label through the real store (submit_and_next, the app's hot path) and print each
# label once its transaction has committed: what the app would acknowledge to the annotator.
WRITER = r"""
import sys, threading
from annotate.accounts import add_user
from annotate.assignment import next_pair, submit_and_next
from annotate.store import Store
from rewardlab.formats import PromptRecord

store = Store(sys.argv[1])
with store.write() as s:
    for i in range(3000):
        pid = store.prompt_id_for(s, PromptRecord(messages=[{"role": "user", "content": f"q{i}?"}]))
        a = store.response_id_for(s, pid, "x", f"first {i} " + "words " * 50)
        b = store.response_id_for(s, pid, "y", f"second {i} " + "words " * 50)
        store.comparison_for(s, pid, a, b, overlap=2)
users = [add_user(store, f"w{k}", "pw-pw-pw-pw") for k in range(8)]
lock = threading.Lock()

def work(user):
    pair = next_pair(store, user)
    while pair is not None:
        stored, nxt = submit_and_next(store, user, pair["comparison_id"], "A", "clear", "note " * 20)
        if stored:
            with lock:
                print(f"ACK {pair['comparison_id']} {user.name}", flush=True)
        pair = nxt

print("READY", flush=True)
threads = [threading.Thread(target=work, args=(u,)) for u in users]
for t in threads: t.start()
for t in threads: t.join()
print("DONE", flush=True)
"""


def test_sqlite_killed_during_writes_stays_consistent_and_keeps_acknowledged_labels(tmp_path):
    db = tmp_path / "rewardlab.db"
    proc = _start([sys.executable, "-c", WRITER, f"sqlite:///{db}"], stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE, text=True)
    acked = set()
    ready = False
    for line in proc.stdout:  # read acknowledgements until 300 have come, then kill mid-stream
        if line.startswith("READY"):
            ready = True
        elif line.startswith("ACK"):
            _, cid, name = line.split()
            acked.add((int(cid), name))
            if len(acked) >= 300:
                break
        elif line.startswith("DONE"):
            break
    _kill(proc)
    # what was printed but not yet read is acknowledged too
    for line in proc.stdout.read().splitlines():
        if line.startswith("ACK"):
            _, cid, name = line.split()
            acked.add((int(cid), name))
    stderr = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert ready and len(acked) >= 300, stderr[-3000:]
    assert "DONE" not in stderr

    con = sqlite3.connect(db)  # as the next process to open it would: recovers from the WAL
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        stored = set(con.execute("SELECT l.comparison_id, a.name FROM labels l "
                                 "JOIN annotators a ON a.id = l.annotator_id").fetchall())
        mismatched = con.execute("SELECT count(*) FROM comparisons c WHERE label_count != "
                                 "(SELECT count(*) FROM labels l WHERE l.comparison_id = c.id) "
                                 "OR label_count > overlap").fetchone()[0]
    finally:
        con.close()
    assert acked <= stored, f"{len(acked - stored)} acknowledged labels lost"
    assert len(stored) - len(acked) <= 8  # at most one committed-but-unprinted label per thread
    assert mismatched == 0

    from annotate.store import Store  # and the store opens it and carries on

    store = Store(f"sqlite:///{db}")
    try:
        from annotate.accounts import get_account
        from annotate.assignment import next_pair, submit_label

        user = get_account(store, "w0")
        pair = next_pair(store, user)
        submit_label(store, user, pair["comparison_id"], "B")
    finally:
        store.close()


# --- reward-model training: kill -9, then --resume ----------------------------------------------


def _kill_then_resume(cmd: list[str], checkpoint: Path, summary: Path, timeout: float):
    """Run ``cmd``, ``kill -9`` it once ``checkpoint`` exists (before ``summary`` does), then run it
    again with ``--resume``; returns that finished run."""
    proc = _start(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(checkpoint, proc)
    _kill(proc)
    proc.stderr.close()
    assert not summary.exists(), "the run finished before it could be killed"
    return subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=timeout)


@pytest.mark.slow  # real CLI training killed and resumed (~30 s each); CI runs it (make test)
def test_reward_training_killed_then_resumed_reaches_the_planned_steps(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", separable_rows(64))
    out = tmp_path / "rm"
    cmd = [sys.executable, "-m", "rewardlab.cli", "reward", "train", "--data", str(data), "--out", str(out),
           "--model", str(tiny_model_dir), "--max_steps", "30", "--save_steps", "5", "--batch_size", "4",
           "--max_length", "64", "--learning_rate", "3e-3", "--logging_steps", "1", "--eval_fraction", "0.25"]
    done = _kill_then_resume(cmd, out / "checkpoints" / "checkpoint-10" / "trainer_state.json",
                             out / "train_summary.json", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 30 and summary["stopped"] == "max_steps"
    assert 10 <= summary["resumed_from_step"] < 30
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 30  # no step logged twice after the resume
    assert (out / "model.safetensors").is_file() and not (out / "checkpoints").exists()

    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
    assert again.returncode == 2 and "already finished" in again.stderr


# --- PPO: kill -9, then --resume --------------------------------------------------------------------


@pytest.mark.slow  # real CLI training killed and resumed (~30 s each); CI runs it (make test)
def test_ppo_killed_then_resumed_reaches_the_planned_updates(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    reward = tmp_path / "reward.yaml"
    reward.write_text("terms:\n  - type: callable\n    function: test_ppo:letter_e\n    weight: 10\n")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rewardlab.cli", "ppo", "--reward", str(reward), "--prompts", str(prompts),
           "--out", str(out), "--policy", str(tiny_model_dir), "--total_episodes", "80",
           "--per_device_train_batch_size", "8", "--local_rollout_forward_batch_size", "8",
           "--response_length", "6", "--save_every", "2"]
    done = _kill_then_resume(cmd, out / "checkpoints" / "update-000002" / "complete", out / "ppo_summary.json",
                             timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming at update" in done.stdout + done.stderr
    summary = json.loads((out / "ppo_summary.json").read_text())
    assert summary["updates"] == 10 and summary["episodes"] == 80
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["update"] for r in rows] == list(range(1, 11))
