"""The README's first command: `rewardlab annotate` with no arguments, on the real default model."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cwd: Path, port: int) -> tuple[subprocess.Popen, str, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "REWARDLAB_WORKSPACE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rewardlab.cli", "annotate", "--port", str(port)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    deadline = time.time() + 900
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        m = re.search(r"log in as (\S+) / (\S+)\)", line)
        if m:
            return proc, m.group(2), lines
    proc.kill()
    raise AssertionError("the app did not start:\n" + "\n".join(lines[-30:]))


def _wait_http(port: int) -> None:
    import urllib.request

    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return
        except Exception:
            time.sleep(0.5)
    raise AssertionError("the app never answered")


def test_demo_starts_ready_and_second_start_reuses_everything(tmp_path):
    from gradio_client import Client

    port = _free_port()
    proc, password, lines = _start(tmp_path, port)
    try:
        _wait_http(port)
        client = Client(f"http://127.0.0.1:{port}/", auth=("admin", password), verbose=False)
        pair = client.predict(api_name="/next_pair")
        assert pair["response_a"].strip() and pair["response_b"].strip()
        assert pair["response_a"] != pair["response_b"]
        assert pair["progress"]["remaining"] >= 20
        nxt = client.predict(pair["comparison_id"], "A", "clear", "demo check", api_name="/submit_label")
        assert nxt["comparison_id"] != pair["comparison_id"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert any("generating sample pairs" in line for line in lines)

    db = tmp_path / "rewardlab_workspace" / "rewardlab.db"
    count = lambda: sqlite3.connect(db).execute("select count(*) from comparisons").fetchone()[0]  # noqa: E731
    before = count()
    assert before >= 20

    proc, password2, lines = _start(tmp_path, port)
    try:
        assert password2 == password  # the same admin login
        assert not any("generating" in line for line in lines)  # nothing regenerated
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert count() == before
    labels = sqlite3.connect(db).execute("select choice, note from labels").fetchall()
    assert len(labels) == 1 and labels[0][1] == "demo check"
