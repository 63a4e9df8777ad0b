"""Simulated annotators for the load benchmarks, and the check of what they were told.

Shared by ``bench/annotation_load.py`` (one app process on SQLite) and ``bench/team_load.py``
(several app processes on PostgreSQL):

- ``build_db``: a fresh store (any SQLAlchemy URL) with pairs and annotator accounts;
- ``start_app`` / ``stop_server``: an app process in its own session, and its stop;
- ``drive``: annotators labelling through the real scripting API, spread over client processes,
  with rewardlab's own client (``annotate.client.LabelClient``: one keep-alive connection, waits
  on the event stream like the browser) or with ``gradio_client`` (sharing one ``ssl.SSLContext``
  per process: plain gradio_client builds a new httpx client per request and loads the CA bundle
  every time, ~60 ms of client CPU per call; and it polls for each result every 50 ms); each
  thinks, submits a random label for its current pair and gets the next one back
  (``/submit_label``), failing over to another app process when its own stops answering;
- ``check_db``: acknowledged labels against the database: stored, lost, duplicated, over overlap.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PASSWORD = "bench-password"
CHOICES = ("A", "B", "tie", "both_bad")
_SWAP = {"A": "B", "B": "A", "tie": "tie", "both_bad": "both_bad"}


# --- the workspace ------------------------------------------------------------------------------

def build_db(url: str, comparisons: int, overlap: int, annotators: int, seed: int = 0) -> list[str]:
    """A fresh store at ``url`` (SQLAlchemy URL) with ``comparisons`` pairs and ``annotators`` accounts."""
    from annotate.accounts import add_user
    from annotate.store import Store
    from rewardlab.formats import PromptRecord

    rng = random.Random(seed)
    words = "the a model answer question reward policy label pair human prefer better worse clear".split()
    store = Store(url)
    try:
        with store.write() as s:
            for i in range(comparisons):
                q = f"Question {i}: " + " ".join(rng.choice(words) for _ in range(20)) + "?"
                pid = store.prompt_id_for(s, PromptRecord(messages=[{"role": "user", "content": q}]),
                                          source="bench")
                r1 = store.response_id_for(s, pid, "model-x", " ".join(rng.choice(words) for _ in range(80)))
                r2 = store.response_id_for(s, pid, "model-y", " ".join(rng.choice(words) for _ in range(80)))
                store.comparison_for(s, pid, r1, r2, overlap=overlap, tag="bench")
        names = [f"bench{i:03d}" for i in range(annotators)]
        for name in names:
            add_user(store, name, PASSWORD)
    finally:
        store.close()  # SQLite: the last connection checkpoints the WAL into the file
    return names



# --- the app processes --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env() -> dict:
    env = dict(os.environ)
    env.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("GRADIO_DEFAULT_CONCURRENCY_LIMIT", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_app(cmd: list[str], port: int, log_path: Path, timeout: float = 120.0):
    """Start an app process (``cmd``, listening on ``port``) in its own session; (Popen, url) once
    it answers HTTP. Its output goes to ``log_path``."""
    out = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=server_env(), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    out.close()
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}; see {log_path}:\n"
                               + log_path.read_text(errors="replace")[-2000:])
        try:
            with urllib.request.urlopen(url + "config", timeout=2):
                pass
            return proc, url
        except urllib.error.HTTPError:
            return proc, url  # it answers (401 before login)
        except (urllib.error.URLError, OSError):
            time.sleep(0.25)
    stop_server(proc)
    raise RuntimeError(f"the server did not answer on {url} within {timeout:g} s; see {log_path}")


def annotate_cmd(db_url: str, port: int, workspace: Path) -> list[str]:
    """The real command a user runs: ``python -m rewardlab.cli annotate``."""
    return [sys.executable, "-m", "rewardlab.cli", "annotate", "--db", db_url, "--port", str(port),
            "--workspace", str(workspace), "--no-demo"]


def stop_server(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and nothing else
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)



# --- the annotators -----------------------------------------------------------------------------

def _annotator(urls: list[str], name: str, think: float, seed: int, ready: threading.Barrier,
               go: mp.Event, t0, seconds: float, result: dict, ssl_verify, kind: str) -> None:
    """One annotator: logs in at ``urls[0]``; when that app process stops answering, logs in at the
    next one (as a proxy would send them elsewhere) and carries on."""
    from gradio_client import Client

    from annotate.client import LabelClient

    rng = random.Random(seed)
    lat, acks, errors = [], [], []
    client = None
    failovers = 0

    def connect(url):
        if kind == "gradio_client":
            c = Client(url, auth=(name, PASSWORD), verbose=False, analytics_enabled=False, ssl_verify=ssl_verify)
            c.call = lambda api, *args: c.predict(*args, api_name="/" + api)
        else:
            c = LabelClient(url, name, PASSWORD, timeout=120.0)
        return c, c.call("next_pair")

    try:
        client, pair = connect(urls[0])
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        errors.append(f"login/next_pair: {type(exc).__name__}: {exc}")
        pair = None
    ready.wait()
    go.wait()
    start = t0.value
    end = start + seconds
    try:
        while pair is not None and time.time() < end:
            if think > 0:
                time.sleep(rng.uniform(0, 2 * think))
                if time.time() >= end:
                    break
            choice = rng.choice(CHOICES)
            cid = pair["comparison_id"]
            done_before = pair["progress"]["done"]
            t = time.time()
            try:
                nxt = client.call("submit_label", cid, choice, None, "")
            except Exception as exc:  # noqa: BLE001
                errors.append(f"submit_label: {type(exc).__name__}: {exc}")
                try:
                    pair = client.call("next_pair")
                except Exception as exc2:  # noqa: BLE001
                    errors.append(f"next_pair: {type(exc2).__name__}: {exc2}")
                    if failovers + 1 >= len(urls):
                        break
                    failovers += 1
                    try:
                        client.close()
                    except Exception:  # noqa: BLE001 - its server is gone
                        pass
                    try:
                        client, pair = connect(urls[failovers])
                    except Exception as exc3:  # noqa: BLE001
                        errors.append(f"failover: {type(exc3).__name__}: {exc3}")
                        client = None
                        break
                continue
            done = time.time()
            lat.append((t - start, done - t))
            # The API returns the next pair whether or not the label was stored (a full pair is
            # skipped silently); progress.done tells them apart.
            stored_said = nxt is None or nxt["progress"]["done"] == done_before + 1
            acks.append((cid, name, choice, done - start, stored_said))
            pair = nxt
    finally:
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - its server may be gone
                pass
    result.update(lat=lat, acks=acks, errors=errors, exhausted=pair is None, failovers=failovers)


def _client_proc(urls: list[str], names: list[str], think: float, seed: int, ready_q, go, t0,
                 seconds: float, out_q, shared_ssl: bool, kind: str) -> None:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    # gradio_client makes a new httpx client for every POST and every SSE stream, and each one
    # loads the CA bundle (~25 ms of CPU, even for plain http): ~60 ms of client CPU per call.
    # One SSLContext shared by all of them takes that to ~5 ms (ssl_verify is passed to httpx).
    import ssl

    ssl_verify = ssl.create_default_context() if shared_ssl else True
    results = [dict() for _ in names]
    barrier = threading.Barrier(len(names) + 1)
    threads = [threading.Thread(target=_annotator, daemon=True,
                                args=(urls[i % len(urls):] + urls[:i % len(urls)], n, think, seed * 1000 + i,
                                      barrier, go, t0, seconds, results[i], ssl_verify, kind))
               for i, n in enumerate(names)]
    for th in threads:
        th.start()
    barrier.wait()
    ready_q.put(os.getpid())
    go.wait()
    cpu0 = os.times()
    for th in threads:
        th.join()
    cpu1 = os.times()
    out_q.put({"results": results,
               "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)})


def _get(q, procs, timeout: float, what: str):
    """The next item of ``q``; fails fast when a client process died instead of waiting it out."""
    import queue

    deadline = time.time() + timeout
    while True:
        try:
            return q.get(timeout=1.0)
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a client process exited with {dead[0]} before it could {what}") from None
            if time.time() > deadline:
                raise RuntimeError(f"the client processes did not {what} within {timeout:g} s") from None


def _cpu_seconds(pids: list[int]) -> float:
    """CPU seconds used so far by these processes and their children (a killed one counts 0)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _machine_busy() -> tuple[float, float]:
    import psutil

    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle, sum(t)


def drive(urls: str | list[str], names: list[str], *, seconds: float, think: float, client_procs: int,
          server_pid: int | list[int] | None = None, seed: int = 0, shared_ssl: bool = True,
          at: tuple[float, object] | None = None, client: str = "rewardlab") -> dict:
    """Run the annotators against the app for ``seconds``; latency, acks and CPU figures.

    With several ``urls`` (app processes), annotator i starts at ``urls[i % n]`` and fails over to
    the others in turn. ``at = (t, fn)`` calls ``fn()`` ``t`` seconds into the window (a fault).
    ``client``: ``rewardlab`` (``annotate.client.LabelClient``, event-driven like the browser) or
    ``gradio_client`` (which looks for each result every 50 ms, so no call takes less than ~50 ms).
    """
    if client not in ("rewardlab", "gradio_client"):
        raise ValueError(f"client must be rewardlab or gradio_client, got {client!r}")
    urls = [urls] if isinstance(urls, str) else list(urls)
    pids = [] if server_pid is None else [server_pid] if isinstance(server_pid, int) else list(server_pid)
    ctx = mp.get_context("spawn")
    ready_q, out_q, go, t0 = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    groups = [names[i::client_procs] for i in range(client_procs)]
    groups = [g for g in groups if g]
    procs = [ctx.Process(target=_client_proc, daemon=True,
                         args=(urls, g, think, seed * 100 + k, ready_q, go, t0, seconds, out_q, shared_ssl, client))
             for k, g in enumerate(groups)]
    outs = []
    try:
        for p in procs:
            p.start()
        for _ in procs:
            _get(ready_q, procs, 300, "log in")
        srv0 = _cpu_seconds(pids) if pids else None
        busy0, all0 = _machine_busy()
        t0.value = time.time()
        go.set()
        timer = threading.Timer(at[0], at[1]) if at is not None else None
        if timer is not None:
            timer.start()
        for _ in procs:
            outs.append(_get(out_q, procs, seconds + 300, "finish"))
        wall = time.time() - t0.value
        if timer is not None:
            timer.join()
        srv1 = _cpu_seconds(pids) if pids else None
        busy1, all1 = _machine_busy()
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
    lat = [x for o in outs for r in o["results"] for x in r.get("lat", [])]
    acks = [x for o in outs for r in o["results"] for x in r.get("acks", [])]
    errors = [x for o in outs for r in o["results"] for x in r.get("errors", [])]
    in_window = [d for (s, d) in lat if s + d <= seconds]
    ms = sorted(d * 1000 for d in in_window) or [float("nan")]
    n_cores = os.cpu_count() or 1
    server_pct = 100 * max(0.0, srv1 - srv0) / wall if pids else 0.0
    client_pct = 100 * sum(o["cpu_s"] for o in outs) / wall
    machine_pct = 100 * n_cores * (busy1 - busy0) / max(1e-9, all1 - all0)
    return {
        "labels_per_s": round(sum(1 for a in acks if a[3] <= seconds) / seconds, 2),
        "p50_ms": round(_pct(ms, 50), 1),
        "p90_ms": round(_pct(ms, 90), 1),
        "p99_ms": round(_pct(ms, 99), 1),
        "max_ms": round(ms[-1], 1),
        "acks": acks,
        "errors": len(errors),
        "error_samples": sorted(Counter(e[:200] for e in errors).items(), key=lambda kv: -kv[1])[:5],
        "exhausted_annotators": sum(1 for o in outs for r in o["results"] if r.get("exhausted")),
        "failovers": sum(r.get("failovers", 0) for o in outs for r in o["results"]),
        "wall_s": round(wall, 2),
        "server_cpu_pct": round(server_pct, 1),
        "client_cpu_pct": round(client_pct, 1),
        "client_cpu_ms_per_call": round(1000 * sum(o["cpu_s"] for o in outs) / max(1, len(lat)), 2),
        "server_cpu_ms_per_call": round(10 * server_pct * wall / max(1, len(lat)), 2),
        "machine_busy_pct": round(machine_pct, 1),
        "other_cpu_pct": round(max(0.0, machine_pct - server_pct - client_pct), 1),
        "cores": n_cores,
        "t0": t0.value,
    }


def _pct(sorted_ms: list[float], q: float) -> float:
    if len(sorted_ms) == 1:
        return sorted_ms[0]
    k = (len(sorted_ms) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (k - lo)


def check_db(url: str, acks: list, names: list[str], acked_before: float | None = None) -> dict:
    """Compare what the clients were told with what the database at ``url`` holds (servers stopped).

    With ``acked_before`` (seconds into the window), ``lost_acked_before`` counts the labels
    acknowledged by then that are not stored (e.g. before an app process was killed).
    """
    from sqlalchemy import func, select

    from annotate.store import Annotator, Assignment, Comparison, Label, Store

    store = Store(url)
    try:
        with store.read() as s:
            rows = s.execute(
                select(Label.comparison_id, Annotator.name, Label.choice, Assignment.swapped)
                .join(Annotator, Annotator.id == Label.annotator_id)
                .outerjoin(Assignment, (Assignment.comparison_id == Label.comparison_id)
                           & (Assignment.annotator_id == Label.annotator_id))
                .where(Annotator.name.in_(names))
            ).all()
            per_cmp = dict(s.execute(select(Label.comparison_id, func.count()).group_by(Label.comparison_id)).all())
            counts = s.execute(select(Comparison.id, Comparison.label_count, Comparison.overlap)).all()
    finally:
        store.close()
    stored = Counter((cid, name) for cid, name, _, _ in rows)
    shown_choice = {(cid, name): (_SWAP[c] if swapped else c) for cid, name, c, swapped in rows}
    acked = Counter((cid, name) for cid, name, *_ in acks)
    ack_choice = {(cid, name): choice for cid, name, choice, *_ in acks}
    duplicated = sum(n - 1 for n in stored.values() if n > 1) + sum(
        1 for k in acked if stored.get(k, 0) > 1) + sum(n - 1 for n in acked.values() if n > 1)
    over = sum(1 for cid, lc, ov in counts if lc > ov or per_cmp.get(cid, 0) > ov)
    mismatch = sum(1 for cid, lc, _ in counts if per_cmp.get(cid, 0) != lc)
    return {
        "acknowledged": sum(acked.values()),
        "stored": sum(stored.values()),
        "lost": sum(1 for k in acked if k not in stored),
        "duplicated": duplicated,
        "over_overlap": over,
        "label_count_mismatch": mismatch,
        "stored_not_acknowledged": sum(1 for k in stored if k not in acked),
        "wrong_choice": sum(1 for k, c in ack_choice.items() if k in shown_choice and shown_choice[k] != c),
        "acks_reported_unstored": sum(1 for a in acks if not a[4]),
        **({} if acked_before is None else {"lost_acked_before": sum(
            1 for cid, name, _, t, _ in acks if t <= acked_before and (cid, name) not in stored)}),
    }
