"""annotate.client.LabelClient against the real app, launched in-process (as in test_app.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from annotate.accounts import disable_user
from annotate.client import ApiError, LabelClient, LoginError
from annotate.store import Label
from test_app import HOSTILE_A, HOSTILE_B, PASSWORD, fill, running


@pytest.fixture
def served(store):
    ids = fill(store, n=4)
    with running(store) as url:
        yield url, store, ids


def test_a_whole_session_of_labelling(served):
    url, store, ids = served
    with LabelClient(url, "alice", PASSWORD) as c:
        pair = c.next_pair()
        assert pair["comparison_id"] in ids and pair["progress"] == {"done": 0, "remaining": 4}
        assert c.next_pair()["comparison_id"] == pair["comparison_id"]  # stable until labelled
        seen = [pair["comparison_id"]]
        nxt = c.submit_label(pair["comparison_id"], "A", "clear", "a note")
        assert nxt["progress"]["done"] == 1 and nxt["comparison_id"] not in seen
        back = c.undo()
        assert back["comparison_id"] == pair["comparison_id"]
        assert back["response_a"] == pair["response_a"]  # same left/right order after undo
        nxt = c.submit_label(back["comparison_id"], "tie")
        skipped = nxt["comparison_id"]
        nxt = c.skip(skipped)
        assert nxt["comparison_id"] not in (skipped, pair["comparison_id"])
        while nxt is not None:
            if HOSTILE_A in (nxt["response_a"], nxt["response_b"]):  # HTML comes back as text
                assert {nxt["response_a"], nxt["response_b"]} == {HOSTILE_A, HOSTILE_B}
            nxt = c.submit_label(nxt["comparison_id"], "B")
        assert c.next_pair() is None
        assert c.progress() == {"done": 3, "remaining": 0}
    with store.read() as s:
        rows = s.execute(select(Label.comparison_id, Label.strength, Label.note)).all()
    assert len(rows) == 3 and skipped not in {r[0] for r in rows}
    assert (pair["comparison_id"], None, "") in rows  # the undone label was replaced by the tie


def test_refusals_come_back_as_one_line_errors(served):
    url, store, ids = served
    with LabelClient(url, "alice", PASSWORD) as c:
        pair = c.next_pair()
        with pytest.raises(ApiError, match="choice must be one of"):
            c.submit_label(pair["comparison_id"], "C")
        other = next(i for i in ids if i != pair["comparison_id"])
        with pytest.raises(ApiError, match="not shown to you"):
            c.submit_label(other, "A")
        with pytest.raises(ApiError, match="admins only"):
            c.admin_stats()
        with pytest.raises(ApiError, match="no endpoint /nope"):
            c.call("nope")
        assert c.submit_label(pair["comparison_id"], "A")["progress"]["done"] == 1  # still usable
    with LabelClient(url, "root", PASSWORD) as admin:
        stats = admin.admin_stats()
        assert any(r["name"] == "alice" for r in stats["annotators"])


def test_wrong_password_and_ended_sessions(served):
    url, store, _ = served
    with pytest.raises(LoginError, match="sign-in as 'alice' refused"):
        LabelClient(url, "alice", "not her password")
    c = LabelClient(url, "alice", PASSWORD)
    assert c.next_pair() is not None
    disable_user(store, "alice")
    with pytest.raises(LoginError, match="not signed in"):
        c.next_pair()
    c.close()
    with pytest.raises(ApiError, match="cannot reach"):
        LabelClient("http://127.0.0.1:9/", "alice", PASSWORD, timeout=2)


def test_gradio_queue_analytics_and_monitoring_are_off(store):
    """Gradio rebuilds a pandas summary of up to 10,000 events after every event for /monitoring
    unless told otherwise; the app turns that off (docs/benchmarks.md, annotation service)."""
    import httpx

    from annotate.app import build_app
    from rewardlab.workspace import WorkspaceConfig

    fill(store, n=2)
    demo = build_app(store, WorkspaceConfig())
    assert demo._queue.ANAYLTICS_CACHE_FREQUENCY >= 1000  # the pinned Gradio's (misspelt) attribute
    assert demo._queue.ANALYTICS_MAX_EVENTS <= 100
    with running(store) as url:
        http = httpx.Client(base_url=url)
        assert http.post("login", data={"username": "root", "password": PASSWORD}).status_code == 200
        assert http.get("monitoring").status_code == 403


def test_the_admin_console_through_call(served):
    url, _, _ = served
    with LabelClient(url, "root", PASSWORD) as admin:
        assert isinstance(admin.call("console_jobs"), list)
        with pytest.raises(ApiError, match="kind must be one of generate"):
            admin.call("console_start", "no_such_kind", {})
    with LabelClient(url, "alice", PASSWORD) as c, pytest.raises(ApiError, match="admins only"):
        c.call("console_jobs")
