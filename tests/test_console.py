"""The admin console through gradio_client: the whole loop on tiny models, admins only, jobs that
outlive the app."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from gradio_client.exceptions import AppError
from sqlalchemy import func, select

from annotate.accounts import add_user
from annotate.store import Job, Store
from test_app import PASSWORD, call, clients, label, running  # noqa: F401 (clients is a fixture)

PROMPTS = ["What is the capital of France?", "Write a short poem about the sea.", "How do I make tea?",
           "Why is the sky blue?", "Say thank you.", "Explain the fox and the dog.",
           "Describe the waves.", "What should I answer?"]


@pytest.fixture
def ws(tmp_path) -> Path:
    """A workspace: a tiny model inside it, a prompt file, users alice, bob and root."""
    from tiny_models import build_tiny_causal_lm

    build_tiny_causal_lm(tmp_path / "models" / "tiny", seed=0)
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return tmp_path


@pytest.fixture
def ws_store(ws):
    store = Store("sqlite:///" + str(ws / "rewardlab.db"))
    add_user(store, "alice", PASSWORD)
    add_user(store, "root", PASSWORD, role="admin")
    yield store
    store.close()


def wait_job(client, job_id: int, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = call(client, "console_job", job_id=job_id)
        if job["status"] != "running":
            assert job["status"] == "succeeded", f"job {job_id} {job['status']}:\n{job['log_tail']}"
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still running after {timeout} s")


def label_all(client, choose=lambda pair: "A") -> int:
    n, pair = 0, call(client, "next_pair")
    while pair is not None:
        pair, n = label(client, pair, choose(pair)), n + 1
    return n


def test_annotators_are_refused_by_every_console_endpoint(ws_store, clients):
    with running(ws_store) as url:
        alice = clients(url, "alice")
        calls = [
            ("console_import_prompts", dict(path="prompts.jsonl", field=None, skip_invalid=False)),
            ("console_start", dict(kind="generate", params={"models": "models/tiny"})),
            ("console_jobs", {}), ("console_job", dict(job_id=1)), ("console_cancel", dict(job_id=1)),
            ("console_resume", dict(job_id=1)), ("console_export", dict(out="x", style="auto", tag=None)),
            ("console_progress", {}), ("console_human_win_rate", dict(tag=None)),
            ("console_reward_breakdown", dict(reward="r.yaml", response="x", prompt_id=None, prompt_text="y")),
            ("console_disagreements", dict(reward="r.yaml", tag=None)),
        ]
        for endpoint, kwargs in calls:
            with pytest.raises(AppError, match="admins only"):
                call(alice, endpoint, **kwargs)
    with ws_store.read() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
    assert not (ws_store_path(ws_store) / "exports").exists()


def ws_store_path(store: Store) -> Path:
    return Path(store.url.removeprefix("sqlite:///")).parent


def test_forms_are_checked_before_anything_starts(ws_store, clients, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "p.jsonl").write_text('{"prompt": "hi"}\n')
    with running(ws_store) as url:
        root = clients(url, "root")
        bad = [
            (dict(kind="reward_train", params={"data": str(outside)}), "outside the workspace"),
            (dict(kind="reward_train", params={"data": "prompts.jsonl", "config": {"learnin_rate": 1}}),
             "unknown config key 'learnin_rate'"),
            (dict(kind="reward_train", params={"data": "prompts.jsonl", "config": "max_steps: 0.5"}),
             "'max_steps' must be int"),
            (dict(kind="reward_train", params={"data": "prompts.jsonl", "config": {"model": "../x"}}),
             "outside the workspace"),
            (dict(kind="ppo", params={"reward": "prompts.jsonl", "policy": "/etc"}), "outside the workspace"),
            (dict(kind="generate", params={"models": "models/tiny", "temprature": 1}), "unknown setting temprature"),
            (dict(kind="generate", params={"models": "models/tiny", "per_prompt": 1.5}), "whole number"),
            (dict(kind="train", params={}), "kind must be one of"),
        ]
        for kwargs, message in bad:
            with pytest.raises(AppError, match=message):
                call(root, "console_start", **kwargs)
        with pytest.raises(AppError, match="outside the workspace"):
            call(root, "console_import_prompts", path=str(outside / "p.jsonl"), field=None, skip_invalid=False)
        with pytest.raises(AppError, match="outside the workspace"):
            call(root, "console_export", out="../elsewhere", style="auto", tag=None)
        with pytest.raises(AppError, match="job_id must be a whole number"):
            call(root, "console_job", job_id="one")
    with ws_store.read() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_a_job_outlives_an_app_restart(ws, ws_store, clients):
    with running(ws_store) as url:
        root = clients(url, "root")
        assert call(root, "console_import_prompts", path="prompts.jsonl", field=None, skip_invalid=False)["added"] == 8
        job = call(root, "console_start", kind="generate",
                   params={"models": "models/tiny", "per_prompt": 2, "max_new_tokens": 4, "temperature": 1.0})
        assert job["status"] == "running"
    # The app stops (the job does not) and starts again over the same database.
    restarted = Store(ws_store.url)
    try:
        with running(restarted) as url:
            root = clients(url, "root")
            [listed] = call(root, "console_jobs")
            assert (listed["id"], listed["kind"], listed["status"]) == (job["id"], "generate", "running")
            done = wait_job(root, job["id"])
            assert done["exit_code"] == 0 and '"new_responses": 16' in done["log_tail"]
            # the database URL travels in the job's environment, never in its recorded command line
            assert "env:REWARDLAB_JOB_DB" in listed["command"] and ws_store.url not in listed["command"]
    finally:
        restarted.close()


@pytest.mark.slow  # six real CLI jobs on tiny models, 75-90 s; CI runs it (make test)
def test_admin_walks_the_whole_loop(ws, ws_store, clients):
    with running(ws_store) as url:
        root, alice = clients(url, "root"), clients(url, "alice")
        # Data: import, generate, label, export.
        assert call(root, "console_import_prompts", path="prompts.jsonl", field=None, skip_invalid=False)["added"] == 8
        job = call(root, "console_start", kind="generate",
                   params={"models": "models/tiny", "per_prompt": 2, "max_new_tokens": 8, "temperature": 1.0})
        wait_job(root, job["id"])
        assert label_all(alice, lambda p: "A" if len(p["response_a"]) >= len(p["response_b"]) else "B") == 8
        progress = call(root, "console_progress")
        assert progress["comparisons"]["labels"] == 8
        [tiny] = progress["models"]
        assert (tiny["model"], tiny["labels"]) == ("tiny", 8) and progress["pairs"] == []  # one model: no pairs
        exported = call(root, "console_export", out="exports/prefs", style="auto", tag=None)
        assert exported["pairs_exported"] == 8 and (ws / "exports" / "prefs" / "export.json").is_file()

        # Reward model: train from the form, watch its metrics, read its report.
        job = call(root, "console_start", kind="reward_train", params={
            "data": "exports/prefs", "out": "runs/rm", "model": "models/tiny",
            "config": "max_steps: 2\nbatch_size: 4\nmax_length: 64\neval_fraction: 0.25\nlogging_steps: 1\n"
                      "save_steps: 0\n"})
        rm = wait_job(root, job["id"])
        assert [r["step"] for r in rm["metrics"] if "loss" in r][:2] == [1, 2]
        assert "accuracy" in json.loads(rm["report"])
        assert {Path(p).name for p in rm["plots"]} >= {"training_curves.png", "calibration.png"}

        # Reward design: one pair term by term, and where the model disagrees with alice.
        broken = call(root, "console_reward_breakdown", reward="runs/rm", response="Paris.", prompt_id=None,
                      prompt_text="What is the capital of France?")
        [term] = broken["terms"]
        assert term["name"] == "reward_model" and math.isclose(broken["total"], term["weighted"])
        found = call(root, "console_disagreements", reward="runs/rm", tag=None)
        margins = [d["margin"] for d in found["disagreements"]]
        assert found["n"] == 8 and margins == sorted(margins) and all(m < 0 for m in margins)
        assert math.isclose(found["agreement"], 1 - len(margins) / 8)

        # PPO: start, stop after a checkpoint, resume to the end; reward, KL and samples are there.
        job = call(root, "console_start", kind="ppo", params={
            "reward": "runs/rm", "prompts": "store", "out": "runs/ppo", "policy": "models/tiny",
            "config": {"total_episodes": 48, "response_length": 6, "per_device_train_batch_size": 4,
                       "local_rollout_forward_batch_size": 4, "save_every": 1, "sample_every": 1,
                       "learning_rate": 0.01, "lora_target_modules": ["q_proj", "v_proj", "lm_head"]}})
        deadline = time.monotonic() + 240
        while not list((ws / "runs" / "ppo" / "checkpoints").glob("update-*")) and time.monotonic() < deadline:
            assert call(root, "console_job", job_id=job["id"])["status"] == "running"
            time.sleep(0.3)
        stopped = call(root, "console_cancel", job_id=job["id"])
        assert stopped["status"] == "cancelled"
        resumed = call(root, "console_resume", job_id=job["id"])
        assert "--resume" in resumed["command"] and resumed["config"]["resumed_from"] == job["id"]
        ppo = wait_job(root, resumed["id"])
        assert [r["update"] for r in ppo["metrics"]] == list(range(1, 13))
        assert all(math.isfinite(r["reward"]) and math.isfinite(r["kl"]) for r in ppo["metrics"])
        assert ppo["samples"] and "response" in ppo["samples"][-1]
        assert (ws / "runs" / "ppo" / "adapter").is_dir()

        # Evaluate base vs aligned, queue the blind pairs, label them, read the human win-rate.
        job = call(root, "console_start", kind="evaluate", params={
            "aligned": "runs/ppo/adapter", "reward": "runs/rm", "prompts": "prompts.jsonl", "out": "runs/eval",
            "tag": "run1", "max_new_tokens": 6, "temperature": 1.0})
        ev = wait_job(root, job["id"])
        assert "win rate" in ev["report"].lower() and ev["plots"]
        queued = label_all(alice, lambda p: "B")
        human = call(root, "console_human_win_rate", tag="run1")
        assert human["n"] == queued and queued >= 1 and 0 <= human["win_rate"] <= 1
        assert human["aligned_wins"] + human["base_wins"] == queued

        kinds = [(j["kind"], j["status"]) for j in call(root, "console_jobs")]
        assert kinds == [("evaluate", "succeeded"), ("ppo", "succeeded"), ("ppo", "cancelled"),
                         ("reward_train", "succeeded"), ("generate", "succeeded")]
