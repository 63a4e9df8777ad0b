"""A team on PostgreSQL: several app processes, many annotators, and one process killed mid-run.

``python bench/team_load.py [--quick] [--db postgresql+psycopg://...]``

Fills a fresh PostgreSQL database (``--db``, an empty one; by default a throwaway server this
script starts on loopback with ``tests/pg.py``, fsync on) with ``--comparisons`` pairs
(``--overlap`` labels each) and ``--annotators`` accounts, starts ``--app-procs`` app processes on
it (``python -m rewardlab.cli annotate --db URL --port P``, the real command), and lets the
annotators of ``bench/annotators.py`` work for ``--seconds``: annotator i logs in at process
i mod n, thinks (``--think`` seconds on average, uniform 0..2x), submits a random label and gets
the next pair back, through ``annotate.client.LabelClient`` (``--client gradio_client`` for
gradio_client). At ``--kill-at`` (fraction of the window) the first app process gets
``kill -9``; its annotators log in at the next process and go on, as a proxy would send them.

Measured: labels per second acknowledged in the window, p50/p99 latency of one submit-then-next
round trip, labels per second acknowledged after the kill (the survivors serving). Then, after the
survivors are stopped, straight from the database: ``stored``, ``duplicated``, ``over_overlap``,
``lost`` (acknowledged, not stored), ``lost_after_kill`` (acknowledged before the kill, not stored
after it). A label in flight at the kill may be stored without an acknowledgement; it is counted
in ``stored_not_acknowledged``, not as an error.

No stock side: the comparison of interest is with one process on SQLite
(``bench/annotation_load.py``). The last line of output is one JSON object; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from annotators import (  # noqa: E402 - the shared simulated annotators (bench/annotators.py)
    REPO,
    annotate_cmd,
    build_db,
    check_db,
    drive,
    free_port,
    start_app,
    stop_server,
)


def log(msg: str) -> None:
    print(f"[team_load {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def throwaway_postgres(folder: Path) -> str:
    """Start a PostgreSQL server in ``folder`` (tests/pg.py, fsync on); the URL of a new database."""
    sys.path.insert(0, str(REPO / "tests"))
    import pg

    admin = pg.start(folder, fast=False)
    return pg.create_database(admin, "team_load")


def bench(*, db: str | None, annotators: int, seconds: float, think: float, comparisons: int,
          overlap: int, app_procs: int, client_procs: int, kill_at: float | None,
          keep: Path | None = None, seed: int = 0, client: str = "rewardlab") -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="rl-teamload-")) if keep is None else keep
    tmp.mkdir(parents=True, exist_ok=True)
    pg_folder = None
    procs: list = []
    try:
        if db is None:
            pg_folder = Path(tempfile.mkdtemp(prefix="rl-teamload-pg-"))
            db = throwaway_postgres(pg_folder)
            log(f"started PostgreSQL in {pg_folder}")
        t = time.time()
        names = build_db(db, comparisons, overlap, annotators, seed=seed)
        log(f"built {comparisons} comparisons (overlap {overlap}) and {annotators} accounts in {time.time() - t:.1f} s")

        def start(k):
            port = free_port()
            return start_app(annotate_cmd(db, port, tmp), port, tmp / f"app{k}.log")

        t = time.time()
        with ThreadPoolExecutor(app_procs) as pool:
            started = list(pool.map(start, range(app_procs)))
        procs = [p for p, _ in started]
        urls = [u for _, u in started]
        log(f"{app_procs} app processes up in {time.time() - t:.1f} s: {', '.join(urls)}")

        killed = {}

        def kill():
            os.killpg(procs[0].pid, signal.SIGKILL)  # its own session: that app process, nothing else
            killed["t"] = time.time()
            log(f"kill -9 {procs[0].pid} ({urls[0]})")

        fault = (kill_at * seconds, kill) if kill_at is not None else None
        fig = drive(urls, names, seconds=seconds, think=think, client_procs=client_procs,
                    server_pid=[p.pid for p in procs], seed=seed, at=fault, client=client)
        acks = fig.pop("acks")
        kill_rel = killed["t"] - fig["t0"] if killed else None
        survivors_alive = all(p.poll() is None for p in procs[1:])
    finally:
        for p in procs:
            stop_server(p)
    try:
        check = check_db(db, acks, names, acked_before=kill_rel)
    finally:
        if pg_folder is not None:
            import pg

            pg.stop(pg_folder)
            shutil.rmtree(pg_folder, ignore_errors=True)
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    after = [a for a in acks if kill_rel is not None and kill_rel < a[3] <= seconds]
    out = {
        "labels_per_s": fig["labels_per_s"],
        "p50_ms": fig["p50_ms"],
        "p99_ms": fig["p99_ms"],
        "acknowledged": check["acknowledged"],
        "stored": check["stored"],
        "duplicated": check["duplicated"],
        "over_overlap": check["over_overlap"],
        "lost": check["lost"],
        "lost_after_kill": check.get("lost_acked_before", 0),
        "killed_at_s": round(kill_rel, 2) if kill_rel is not None else None,
        "acknowledged_before_kill": sum(1 for a in acks if kill_rel is not None and a[3] <= kill_rel),
        "survivor_labels_per_s": round(len(after) / (seconds - kill_rel), 2) if kill_rel is not None else None,
        "survivors_alive": survivors_alive,
        "failovers": fig["failovers"],
        "stored_not_acknowledged": check["stored_not_acknowledged"],
        "label_count_mismatch": check["label_count_mismatch"],
        "wrong_choice": check["wrong_choice"],
        "errors": fig["errors"],
        "error_samples": fig["error_samples"],
        "annotators": annotators,
        "seconds": seconds,
        "app_procs": app_procs,
        "server_cpu_pct": fig["server_cpu_pct"],
        "client_cpu_pct": fig["client_cpu_pct"],
        "other_cpu_pct": fig["other_cpu_pct"],
        "cores": fig["cores"],
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "settings": {"comparisons": comparisons, "overlap": overlap, "think_s_mean": think,
                     "client_procs": client_procs, "kill_at_fraction": kill_at, "db": "postgresql",
                     "client": client},
    }
    log(f"{out['labels_per_s']} labels/s, p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms; acked "
        f"{out['acknowledged']}, stored {out['stored']}, duplicated {out['duplicated']}, over overlap "
        f"{out['over_overlap']}, lost after kill {out['lost_after_kill']}, survivors "
        f"{out['survivor_labels_per_s']} labels/s, {out['failovers']} failovers")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="about a minute: 30 s window, 2000 pairs")
    p.add_argument("--db", default=None,
                   help="an empty PostgreSQL database (default: a throwaway server on loopback)")
    p.add_argument("--annotators", type=int, default=64)
    p.add_argument("--seconds", type=float, default=None, help="measured window (default 120; 30 quick)")
    p.add_argument("--comparisons", type=int, default=None, help="pairs (default 5000; 2000 quick)")
    p.add_argument("--overlap", type=int, default=2)
    p.add_argument("--think", type=float, default=1.0, help="mean seconds between labels (uniform 0..2x)")
    p.add_argument("--app-procs", type=int, default=2)
    p.add_argument("--client-procs", type=int, default=4)
    p.add_argument("--kill-at", type=float, default=0.5,
                   help="kill -9 the first app process at this fraction of the window (negative: never)")
    p.add_argument("--keep", type=Path, default=None, help="keep the app logs in this folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--client", choices=("rewardlab", "gradio_client"), default="rewardlab",
                   help="the annotators' client (see bench/annotation_load.py)")
    args = p.parse_args(argv)
    if args.app_procs < 1 or (args.kill_at is not None and args.kill_at >= 0 and args.app_procs < 2):
        p.error("killing an app process needs --app-procs 2 or more (or --kill-at -1)")

    def on_sigterm(*_):
        raise KeyboardInterrupt  # so the finally blocks stop the servers

    signal.signal(signal.SIGTERM, on_sigterm)
    out = bench(db=args.db, annotators=args.annotators,
                seconds=args.seconds if args.seconds is not None else (30.0 if args.quick else 120.0),
                think=args.think,
                comparisons=args.comparisons if args.comparisons is not None else (2000 if args.quick else 5000),
                overlap=args.overlap, app_procs=args.app_procs, client_procs=args.client_procs,
                kill_at=args.kill_at if args.kill_at >= 0 else None, keep=args.keep, seed=args.seed,
                client=args.client)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
