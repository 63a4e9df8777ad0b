"""A short real load run through bench/annotation_load.py: the server as its own process, annotators
in client processes through gradio_client, then the database checked against what they were told.

No timing is asserted (the machine is shared); only that every acknowledged label is stored once
and no comparison gets more labels than its overlap.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def annotation_load():
    # Imported by name from a folder on sys.path: the client processes (spawned) import it again.
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module("annotation_load")


def test_every_acknowledged_label_is_stored_once(annotation_load, tmp_path):
    # Few pairs for 8 annotators with overlap 2: they run out mid-run, so pairs fill up while
    # others hold them and the overlap limit is really contended.
    out = annotation_load.bench(comparisons=40, overlap=2, annotators=8, seconds=5.0, think=0.0,
                                client_procs=2, stock=False, keep=tmp_path)
    side = out["detail"]["rewardlab"]
    assert out["acknowledged"] > 0, side
    assert out["errors"] == 0, side["error_samples"]
    assert out["acknowledged"] == out["stored"], side
    assert out["lost"] == 0
    assert out["duplicated"] == 0
    assert out["over_overlap"] == 0
    assert side["label_count_mismatch"] == 0
    assert side["stored_not_acknowledged"] == 0
    assert side["wrong_choice"] == 0
    assert out["stored"] <= 40 * 2
