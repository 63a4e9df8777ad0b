"""Annotation under load: simulated annotators labelling through the real scripting API.

``python bench/annotation_load.py [--quick]``

Builds a fresh SQLite workspace (``--comparisons`` pairs, ``--overlap`` labels each, ``--annotators``
accounts), starts ``python -m rewardlab.cli annotate`` as its own process, and lets the annotators
work for ``--seconds``: each one, through ``gradio_client.Client(url, auth=...)``, thinks (``--think``
seconds on average, uniform 0..2x; default 1 s, several times faster than a person), submits a
random label for its current pair and gets the next pair back (``/submit_label``). Then, on the same
server, ``--max-load-seconds`` without thinking: what the server sustains (``max_*``). With zero
think time, 32 annotators keep 32 calls in flight, so latency is 32 / throughput by Little's law
whatever the code does; the latency target is met or missed at the thinking load.

The annotators are spread over ``--client-procs`` processes, each sharing one ``ssl.SSLContext``
(passed as ``ssl_verify``): plain gradio_client builds a new httpx client per request, and each loads
the CA bundle, ~60 ms of client CPU per call, which on 2 cores would be what is measured
(``--stock-client`` measures it that way). CPU used by the server, the clients and everything else on
the machine (other users) over the window is reported.

Measured: labels per second (acknowledged within the window), p50/p99 latency of one
submit-then-next round trip, and after the server is stopped, straight from the database:
``stored`` (labels by the bench accounts), ``lost`` (acknowledged, not stored), ``duplicated``
((comparison, annotator) repeated, plus acknowledged labels stored more than once),
``over_overlap`` (comparisons with label_count or label rows above their overlap),
``wrong_choice`` (stored choice differs from the acknowledged one once un-swapped).

The stock way, in the same run on a copy of the same database: the same app with Gradio's default
per-event concurrency (``concurrency_limit="default"``, i.e. one call of an endpoint at a time),
started by this script's own ``--serve`` launcher which sets ``annotate.app.CONCURRENCY_LIMIT``.
``--profile`` starts both sides through that launcher with timers (wall and thread CPU) around the
API handlers and the store calls inside them; ``--experiment`` applies proposed changes to the
store in the rewardlab side's server only (see EXPERIMENTS).

The last line of output is one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
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


def log(msg: str) -> None:
    print(f"[annotation_load {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the workspace ------------------------------------------------------------------------------

def build_db(path: Path, comparisons: int, overlap: int, annotators: int, seed: int = 0) -> list[str]:
    """A fresh SQLite store at ``path`` with ``comparisons`` pairs and ``annotators`` accounts."""
    from annotate.accounts import add_user
    from annotate.store import Store
    from rewardlab.formats import PromptRecord

    rng = random.Random(seed)
    words = "the a model answer question reward policy label pair human prefer better worse clear".split()
    store = Store("sqlite:///" + str(path))
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
        store.close()  # last connection: the WAL is checkpointed into the file
    return names


def copy_db(src: Path, dst: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        if Path(str(src) + suffix).exists():
            shutil.copyfile(str(src) + suffix, str(dst) + suffix)


# --- the server ---------------------------------------------------------------------------------

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


def start_server(db: Path, workdir: Path, *, stock: bool, profile: Path | None, log_path: Path,
                 experiments: str = ""):
    """Start the app as its own process; returns (Popen, url) once it answers HTTP.

    The rewardlab side is the real command (``python -m rewardlab.cli annotate``); the stock side,
    profiling and experiments go through this script's ``--serve`` launcher.
    """
    port = free_port()
    common = ["--db", "sqlite:///" + str(db), "--port", str(port), "--workspace", str(workdir)]
    if stock or profile is not None or experiments:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve",
               "--concurrency", "default" if stock else "app", *common]
        if profile is not None:
            cmd += ["--profile-out", str(profile)]
        if experiments:
            cmd += ["--experiment", experiments]
    else:
        cmd = [sys.executable, "-m", "rewardlab.cli", "annotate", *common, "--no-demo"]
    out = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=server_env(), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    out.close()
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
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
    raise RuntimeError(f"the server did not answer on {url} within 120 s; see {log_path}")


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


def serve_main(args) -> None:
    """``--serve``: the launcher used for the stock side and for profiling."""
    import annotate.app as app

    if args.concurrency != "app":
        app.CONCURRENCY_LIMIT = "default" if args.concurrency == "default" else int(args.concurrency)
    for name in filter(None, (args.experiment or "").split(",")):
        EXPERIMENTS[name](args.db)
    if args.profile_out:
        _install_timers(app, Path(args.profile_out))
    from rewardlab.cli import main

    sys.exit(main(["annotate", "--db", args.db, "--port", str(args.port), "--workspace",
                   args.workspace, "--no-demo"]))


# --- experiments: proposed changes to the store, measured without editing it --------------------
# Applied in the server process before it starts (``--experiment a,b``); the timers, if any, wrap them.

def _exp_partial_index(db_url: str) -> None:
    """ix_comparisons_next as a partial index (WHERE label_count < overlap): next_pair's walk then
    skips no completed comparisons (4 ms -> 0.005 ms per pick at 50k pairs, 90% complete)."""
    import sqlite3

    con = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    con.execute("DROP INDEX IF EXISTS ix_comparisons_next")
    con.execute("CREATE INDEX ix_comparisons_next ON comparisons (label_count DESC, id) "
                "WHERE label_count < overlap")
    con.commit()
    con.close()


def _exp_account_cache(_db_url: str) -> None:
    """accounts.get_account cached for 5 s per name (every API call looks its caller up)."""
    from annotate import accounts

    real, cache = accounts.get_account, {}

    def get_account(store, name):
        hit = cache.get(name)
        if hit is not None and time.monotonic() - hit[0] < 5.0:
            return hit[1]
        account = real(store, name)
        cache[name] = (time.monotonic(), account)
        return account

    accounts.get_account = get_account


EXPERIMENTS = {"partial-index": _exp_partial_index, "account-cache": _exp_account_cache}

_TIMES: dict[str, list[tuple[float, float]]] = {}
_TIMES_LOCK = threading.Lock()


def _timed(name: str, fn):
    """fn, recording (wall seconds, this thread's CPU seconds) of every call under ``name``."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        t, c = time.perf_counter(), time.thread_time()
        try:
            return fn(*a, **kw)
        finally:
            dt, dc = time.perf_counter() - t, time.thread_time() - c
            with _TIMES_LOCK:
                _TIMES.setdefault(name, []).append((dt, dc))

    return wrapper


def _install_timers(app, out: Path) -> None:
    """Time the API handlers (as Gradio calls them) and the store calls they make."""
    import gradio as gr

    from annotate import accounts, assignment

    for mod, names in ((assignment, ("submit_label", "next_pair", "progress")), (accounts, ("get_account",))):
        for n in names:
            setattr(mod, n, _timed(n, getattr(mod, n)))
    real_api = gr.api

    def api(fn, *a, **kw):
        return real_api(_timed("handler:" + kw.get("api_name", fn.__name__), fn), *a, **kw)

    gr.api = api  # app.py calls it as `gr.api` at build time

    def dump(*_):
        with _TIMES_LOCK:
            data = {k: list(v) for k, v in _TIMES.items()}
        out.write_text(json.dumps(data))
        os._exit(0)

    signal.signal(signal.SIGTERM, dump)


# --- the annotators -----------------------------------------------------------------------------

def _annotator(url: str, name: str, think: float, seed: int, ready: threading.Barrier,
               go: mp.Event, t0, seconds: float, result: dict, ssl_verify) -> None:
    from gradio_client import Client

    rng = random.Random(seed)
    lat, acks, errors = [], [], []
    client = None
    try:
        client = Client(url, auth=(name, PASSWORD), verbose=False, analytics_enabled=False,
                        ssl_verify=ssl_verify)
        pair = client.predict(api_name="/next_pair")
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
                nxt = client.predict(cid, choice, None, "", api_name="/submit_label")
            except Exception as exc:  # noqa: BLE001
                errors.append(f"submit_label: {type(exc).__name__}: {exc}")
                try:
                    pair = client.predict(api_name="/next_pair")
                except Exception as exc2:  # noqa: BLE001
                    errors.append(f"next_pair: {type(exc2).__name__}: {exc2}")
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
            client.close()
    result.update(lat=lat, acks=acks, errors=errors, exhausted=pair is None)


def _client_proc(url: str, names: list[str], think: float, seed: int, ready_q, go, t0,
                 seconds: float, out_q, shared_ssl: bool) -> None:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    # gradio_client makes a new httpx client for every POST and every SSE stream, and each one
    # loads the CA bundle (~25 ms of CPU, even for plain http): ~60 ms of client CPU per call.
    # One SSLContext shared by all of them takes that to ~5 ms (ssl_verify is passed to httpx).
    import ssl

    ssl_verify = ssl.create_default_context() if shared_ssl else True
    results = [dict() for _ in names]
    barrier = threading.Barrier(len(names) + 1)
    threads = [threading.Thread(target=_annotator, daemon=True,
                                args=(url, n, think, seed * 1000 + i, barrier, go, t0, seconds, results[i],
                                      ssl_verify))
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


def _cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _machine_busy() -> tuple[float, float]:
    import psutil

    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle, sum(t)


def drive(url: str, names: list[str], *, seconds: float, think: float, client_procs: int,
          server_pid: int | None = None, seed: int = 0, shared_ssl: bool = True) -> dict:
    """Run the annotators against ``url`` for ``seconds``; latency, acks and CPU figures."""
    ctx = mp.get_context("spawn")
    ready_q, out_q, go, t0 = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    groups = [names[i::client_procs] for i in range(client_procs)]
    groups = [g for g in groups if g]
    procs = [ctx.Process(target=_client_proc, daemon=True,
                         args=(url, g, think, seed * 100 + k, ready_q, go, t0, seconds, out_q, shared_ssl))
             for k, g in enumerate(groups)]
    outs = []
    try:
        for p in procs:
            p.start()
        for _ in procs:
            _get(ready_q, procs, 300, "log in")
        srv0 = _cpu_seconds(server_pid) if server_pid else None
        busy0, all0 = _machine_busy()
        t0.value = time.time()
        go.set()
        for _ in procs:
            outs.append(_get(out_q, procs, seconds + 300, "finish"))
        wall = time.time() - t0.value
        srv1 = _cpu_seconds(server_pid) if server_pid else None
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
    server_pct = 100 * (srv1 - srv0) / wall if server_pid else 0.0
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
        "wall_s": round(wall, 2),
        "server_cpu_pct": round(server_pct, 1),
        "client_cpu_pct": round(client_pct, 1),
        "client_cpu_ms_per_call": round(1000 * sum(o["cpu_s"] for o in outs) / max(1, len(lat)), 2),
        "server_cpu_ms_per_call": round(10 * server_pct * wall / max(1, len(lat)), 2),
        "machine_busy_pct": round(machine_pct, 1),
        "other_cpu_pct": round(max(0.0, machine_pct - server_pct - client_pct), 1),
        "cores": n_cores,
    }


def _pct(sorted_ms: list[float], q: float) -> float:
    if len(sorted_ms) == 1:
        return sorted_ms[0]
    k = (len(sorted_ms) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (k - lo)


# --- the check ----------------------------------------------------------------------------------

def check_db(db: Path, acks: list, names: list[str]) -> dict:
    """Compare what the clients were told with what the database holds (server stopped)."""
    from sqlalchemy import func, select

    from annotate.store import Annotator, Assignment, Comparison, Label, Store

    store = Store("sqlite:///" + str(db))
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
    }


# --- one side, and the whole run -----------------------------------------------------------------

def run_side(db: Path, workdir: Path, names: list[str], *, stock: bool, seconds: float, think: float,
             client_procs: int, profile: bool = False, seed: int = 0, shared_ssl: bool = True,
             experiments: str = "", max_load_seconds: float = 0.0) -> dict:
    """Start a server on ``db``, drive it, stop it, check the database. One side of the bench.

    With ``max_load_seconds``, a second phase on the same server lets the annotators label without
    thinking (``max_*`` figures: what the server sustains); its labels are checked too.
    """
    tag = "stock" if stock else "rewardlab"
    prof_path = workdir / f"profile-{tag}.json" if profile else None
    proc = None
    try:
        t = time.time()
        proc, url = start_server(db, workdir, stock=stock, profile=prof_path,
                                 log_path=workdir / f"server-{tag}.log",
                                 experiments="" if stock else experiments)
        log(f"{tag}: server up at {url} in {time.time() - t:.1f} s; {len(names)} annotators for {seconds:g} s")
        fig = drive(url, names, seconds=seconds, think=think, client_procs=client_procs,
                    server_pid=proc.pid, seed=seed, shared_ssl=shared_ssl)
        acks = fig.pop("acks")
        if max_load_seconds > 0:
            log(f"{tag}: {fig['labels_per_s']} labels/s, p50 {fig['p50_ms']} ms, p99 {fig['p99_ms']} ms; "
                f"now {max_load_seconds:g} s without thinking")
            mx = drive(url, names, seconds=max_load_seconds, think=0.0, client_procs=client_procs,
                       server_pid=proc.pid, seed=seed + 1, shared_ssl=shared_ssl)
            acks += mx.pop("acks")
            fig["max_load"] = mx
            fig["errors"] += mx["errors"]
    finally:
        stop_server(proc)
    fig.update(check_db(db, acks, names))
    if prof_path is not None and prof_path.exists():
        fig["server_ms"] = {k: {"n": len(v), "mean": round(1000 * statistics.fmean(w for w, _ in v), 2),
                                "p50": round(_pct(sorted(1000 * w for w, _ in v), 50), 2),
                                "p99": round(_pct(sorted(1000 * w for w, _ in v), 99), 2),
                                "cpu_mean": round(1000 * statistics.fmean(c for _, c in v), 2)}
                            for k, v in json.loads(prof_path.read_text()).items() if v}
    log(f"{tag}: {fig['labels_per_s']} labels/s, p50 {fig['p50_ms']} ms, p99 {fig['p99_ms']} ms, "
        f"acked {fig['acknowledged']}, stored {fig['stored']}, lost {fig['lost']}, errors {fig['errors']}, "
        f"cpu: server {fig['server_cpu_pct']}%, clients {fig['client_cpu_pct']}%, "
        f"others {fig['other_cpu_pct']}% (of {fig['cores']} cores x 100%)"
        + (f"; max load {fig['max_load']['labels_per_s']} labels/s, p99 {fig['max_load']['p99_ms']} ms"
           if "max_load" in fig else ""))
    return fig


def bench(*, comparisons: int, overlap: int, annotators: int, seconds: float, think: float,
          client_procs: int, stock: bool = True, profile: bool = False, keep: Path | None = None,
          seed: int = 0, shared_ssl: bool = True, experiments: str = "",
          max_load_seconds: float = 0.0) -> dict:
    """Both sides on copies of one fresh database; the figures as the JSON line prints them."""
    tmp = Path(tempfile.mkdtemp(prefix="rl-annload-")) if keep is None else keep
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        t = time.time()
        base = tmp / "base.db"
        names = build_db(base, comparisons, overlap, annotators, seed=seed)
        log(f"built {comparisons} comparisons (overlap {overlap}) and {annotators} accounts "
            f"in {time.time() - t:.1f} s")
        sides = {}
        for side in (["rewardlab", "stock"] if stock else ["rewardlab"]):
            work = tmp / side
            work.mkdir(exist_ok=True)
            copy_db(base, work / "rewardlab.db")
            sides[side] = run_side(work / "rewardlab.db", work, names, stock=side == "stock", seconds=seconds,
                                   think=think, client_procs=client_procs, profile=profile, seed=seed,
                                   shared_ssl=shared_ssl, experiments=experiments,
                                   max_load_seconds=max_load_seconds)
    finally:
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    r = sides["rewardlab"]
    out = {k: r[k] for k in ("labels_per_s", "p50_ms", "p99_ms", "acknowledged", "stored", "duplicated",
                             "lost", "over_overlap")}
    out.update(annotators=annotators, seconds=seconds, errors=r["errors"],
               server_cpu_pct=r["server_cpu_pct"], client_cpu_pct=r["client_cpu_pct"],
               other_cpu_pct=r["other_cpu_pct"])
    if "max_load" in r:
        out["max_labels_per_s"] = r["max_load"]["labels_per_s"]
        out["max_p99_ms"] = r["max_load"]["p99_ms"]
    if stock:
        s = sides["stock"]
        out.update(stock_labels_per_s=s["labels_per_s"], stock_p50_ms=s["p50_ms"], stock_p99_ms=s["p99_ms"],
                   p99_ratio=round(r["p99_ms"] / s["p99_ms"], 3) if s["p99_ms"] else None,
                   labels_per_s_ratio=round(r["labels_per_s"] / s["labels_per_s"], 3) if s["labels_per_s"] else None)
        if "max_load" in s:
            out["stock_max_labels_per_s"] = s["max_load"]["labels_per_s"]
            out["stock_max_p99_ms"] = s["max_load"]["p99_ms"]
    out["target_p99_ms"] = 150
    out["meets_target"] = bool(r["p99_ms"] <= 150 and r["lost"] == 0 and r["duplicated"] == 0
                               and r["over_overlap"] == 0)
    out["settings"] = {
        "comparisons": comparisons, "overlap": overlap, "db": "sqlite",
        "think_s_mean": think, "think": "uniform 0..2x the mean, before each label",
        "max_load_seconds": max_load_seconds, "client_procs": client_procs,
        "client_shared_ssl_context": shared_ssl, "experiments": experiments or None,
        "stock": "the same app, concurrency_limit='default' (one call per endpoint at a time)",
    }
    out["detail"] = sides
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="about a minute in all: 15 s per side, 1000 pairs, no max-load phase")
    p.add_argument("--annotators", type=int, default=32)
    p.add_argument("--seconds", type=float, default=None, help="measured window per side (default 60; 15 quick)")
    p.add_argument("--comparisons", type=int, default=None, help="pairs in the workspace (default 5000; 1000 quick)")
    p.add_argument("--overlap", type=int, default=2)
    p.add_argument("--think", type=float, default=1.0,
                   help="mean seconds an annotator thinks between labels (uniform 0..2x; humans take 5-30 s)")
    p.add_argument("--max-load-seconds", type=float, default=None,
                   help="then this long without thinking, same server (default 15; 0 quick)")
    p.add_argument("--client-procs", type=int, default=4, help="client processes the annotators are spread over")
    p.add_argument("--stock-client", action="store_true",
                   help="plain gradio_client (a new CA bundle load per request) instead of a shared SSLContext")
    p.add_argument("--no-stock", action="store_true", help="skip the stock side")
    p.add_argument("--profile", action="store_true", help="time the server's handlers (both sides via --serve)")
    p.add_argument("--keep", type=Path, default=None, help="keep the databases and server logs in this folder")
    p.add_argument("--seed", type=int, default=0)
    # the launcher (internal): serve the app with a chosen per-event concurrency
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--concurrency", default="app", help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--workspace", help=argparse.SUPPRESS)
    p.add_argument("--profile-out", help=argparse.SUPPRESS)
    p.add_argument("--experiment", default="",
                   help=f"rewardlab side only: comma list of proposed changes to apply in the server "
                        f"({', '.join(EXPERIMENTS)}); via the --serve launcher")
    args = p.parse_args(argv)
    if args.serve:
        serve_main(args)
        return 0

    def on_sigterm(*_):
        raise KeyboardInterrupt  # so the finally blocks stop the servers and remove the temp folder

    signal.signal(signal.SIGTERM, on_sigterm)
    seconds = args.seconds if args.seconds is not None else (15.0 if args.quick else 60.0)
    comparisons = args.comparisons if args.comparisons is not None else (1000 if args.quick else 5000)
    out = bench(comparisons=comparisons, overlap=args.overlap, annotators=args.annotators, seconds=seconds,
                think=args.think, client_procs=args.client_procs, stock=not args.no_stock,
                profile=args.profile, keep=args.keep, seed=args.seed, shared_ssl=not args.stock_client,
                experiments=args.experiment,
                max_load_seconds=(args.max_load_seconds if args.max_load_seconds is not None
                                  else 0.0 if args.quick else 15.0))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
