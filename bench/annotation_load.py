"""Annotation under load: simulated annotators labelling through the real scripting API.

``python bench/annotation_load.py [--quick]``

Builds a fresh SQLite workspace (``--comparisons`` pairs, ``--overlap`` labels each, ``--annotators``
accounts), starts ``python -m rewardlab.cli annotate`` as its own process, and lets the annotators
work for ``--seconds``: each one, through rewardlab's client (``annotate.client.LabelClient``, which
waits on the event stream as the browser does; ``--client gradio_client`` for gradio_client, which
looks for each result every 50 ms and so adds up to 50 ms per call), thinks (``--think``
seconds on average, uniform 0..2x; default 1 s, several times faster than a person), submits a
random label for its current pair and gets the next pair back (``/submit_label``). Then, on the same
server, ``--max-load-seconds`` without thinking: what the server sustains (``max_*``). With zero
think time, 32 annotators keep 32 calls in flight, so latency is 32 / throughput by Little's law
whatever the code does; the latency target is met or missed at the thinking load.

The annotators (``bench/annotators.py``, shared with ``bench/team_load.py``) are spread over
``--client-procs`` processes; with gradio_client each process shares one ``ssl.SSLContext``
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

The stock way, in the same run on a copy of the same database: the same app with Gradio's defaults,
i.e. per-event concurrency ``concurrency_limit="default"`` (one call of an endpoint at a time) and
the queue's analytics for ``/monitoring`` on (a pandas summary of up to 10,000 events rebuilt after
every event), started by this script's own ``--serve`` launcher which sets
``annotate.app.CONCURRENCY_LIMIT``, ``QUEUE_ANALYTICS_ENV`` and ``ENABLE_MONITORING``.
``--profile`` starts both sides through that launcher with timers (wall and thread CPU) around the
API handlers and the store calls inside them; ``--experiment`` applies proposed changes to the
store in the rewardlab side's server only (see EXPERIMENTS).

The last line of output is one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from annotators import (  # noqa: E402 - the shared simulated annotators (bench/annotators.py)
    _pct,
    annotate_cmd,
    build_db,
    check_db,
    drive,
    free_port,
    start_app,
    stop_server,
)


def log(msg: str) -> None:
    print(f"[annotation_load {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the workspace ------------------------------------------------------------------------------

def copy_db(src: Path, dst: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        if Path(str(src) + suffix).exists():
            shutil.copyfile(str(src) + suffix, str(dst) + suffix)


# --- the server ---------------------------------------------------------------------------------

def start_server(db: Path, workdir: Path, *, stock: bool, profile: Path | None, log_path: Path,
                 experiments: str = ""):
    """Start the app as its own process; returns (Popen, url) once it answers HTTP.

    The rewardlab side is the real command (``python -m rewardlab.cli annotate``); the stock side,
    profiling and experiments go through this script's ``--serve`` launcher.
    """
    port = free_port()
    url = "sqlite:///" + str(db)
    if stock or profile is not None or experiments:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve",
               "--concurrency", "default" if stock else "app",
               "--db", url, "--port", str(port), "--workspace", str(workdir)]
        if profile is not None:
            cmd += ["--profile-out", str(profile)]
        if experiments:
            cmd += ["--experiment", experiments]
    else:
        cmd = annotate_cmd(url, port, workdir)
    return start_app(cmd, port, log_path)


def serve_main(args) -> None:
    """``--serve``: the launcher used for the stock side and for profiling."""
    import annotate.app as app

    if args.concurrency != "app":
        app.CONCURRENCY_LIMIT = "default" if args.concurrency == "default" else int(args.concurrency)
    if args.concurrency == "default":  # the stock side: Gradio's queue analytics and /monitoring too
        app.QUEUE_ANALYTICS_ENV, app.ENABLE_MONITORING = {}, None
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

# --- the check ----------------------------------------------------------------------------------

# --- one side, and the whole run -----------------------------------------------------------------

def run_side(db: Path, workdir: Path, names: list[str], *, stock: bool, seconds: float, think: float,
             client_procs: int, profile: bool = False, seed: int = 0, shared_ssl: bool = True,
             experiments: str = "", max_load_seconds: float = 0.0, client: str = "rewardlab") -> dict:
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
                    server_pid=proc.pid, seed=seed, shared_ssl=shared_ssl, client=client)
        acks = fig.pop("acks")
        if max_load_seconds > 0:
            log(f"{tag}: {fig['labels_per_s']} labels/s, p50 {fig['p50_ms']} ms, p99 {fig['p99_ms']} ms; "
                f"now {max_load_seconds:g} s without thinking")
            mx = drive(url, names, seconds=max_load_seconds, think=0.0, client_procs=client_procs,
                       server_pid=proc.pid, seed=seed + 1, shared_ssl=shared_ssl, client=client)
            acks += mx.pop("acks")
            fig["max_load"] = mx
            fig["errors"] += mx["errors"]
    finally:
        stop_server(proc)
    fig.update(check_db("sqlite:///" + str(db), acks, names))
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
          max_load_seconds: float = 0.0, client: str = "rewardlab") -> dict:
    """Both sides on copies of one fresh database; the figures as the JSON line prints them."""
    tmp = Path(tempfile.mkdtemp(prefix="rl-annload-")) if keep is None else keep
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        t = time.time()
        base = tmp / "base.db"
        names = build_db("sqlite:///" + str(base), comparisons, overlap, annotators, seed=seed)
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
                                   max_load_seconds=max_load_seconds, client=client)
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
        "client": client, "client_shared_ssl_context": shared_ssl if client == "gradio_client" else None,
        "experiments": experiments or None,
        "stock": "the same app with Gradio's defaults: concurrency_limit='default' (one call per "
                 "endpoint at a time), queue analytics and /monitoring on",
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
    p.add_argument("--client", choices=("rewardlab", "gradio_client"), default="rewardlab",
                   help="the annotators' client: annotate.client.LabelClient (default; event-driven, like "
                        "the browser) or gradio_client (polls for each result every 50 ms)")
    p.add_argument("--stock-client", action="store_true",
                   help="with --client gradio_client: plain gradio_client (a new CA bundle load per "
                        "request) instead of a shared SSLContext")
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
                experiments=args.experiment, client=args.client,
                max_load_seconds=(args.max_load_seconds if args.max_load_seconds is not None
                                  else 0.0 if args.quick else 15.0))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
