"""Several app processes on one PostgreSQL database, driven by concurrent annotators through
gradio_client, one process killed with SIGKILL half-way: a short run of bench/team_load.py.

No timing is asserted (the machine is shared); what is asserted is what must hold whatever the
load: every acknowledged label stored exactly once (in particular those acknowledged before the
kill), no comparison over its overlap, nobody labelling a pair twice, the survivor still serving.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def test_two_app_processes_one_killed_no_label_lost_or_doubled(pg_database, tmp_path):
    # Imported by name from a folder on sys.path: the client processes (spawned) import it again.
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    team_load = importlib.import_module("team_load")
    # Overlap 2, and next_pair offers half-labelled pairs first: two annotators, often on different
    # processes, race for the same pairs, so the overlap limit and the leases are really contended.
    out = team_load.bench(db=pg_database, annotators=12, seconds=12.0, think=0.2, comparisons=150,
                          overlap=2, app_procs=2, client_procs=2, kill_at=0.4, keep=tmp_path)
    assert out["acknowledged_before_kill"] > 0, out
    assert out["killed_at_s"] is not None
    assert out["lost_after_kill"] == 0, out
    assert out["lost"] == 0, out
    assert out["duplicated"] == 0, out
    assert out["over_overlap"] == 0, out
    assert out["label_count_mismatch"] == 0, out
    assert out["wrong_choice"] == 0, out
    assert out["survivors_alive"], out
    assert out["failovers"] > 0, out  # the killed process's annotators moved to the survivor...
    assert out["survivor_labels_per_s"] > 0, out  # ...and labels were acknowledged after the kill
    # every stored label was acknowledged, except at most one in flight per annotator at the kill
    assert out["stored"] - out["acknowledged"] == out["stored_not_acknowledged"] <= 12, out
    assert out["stored"] <= 150 * 2
