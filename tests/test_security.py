"""Security of the annotation app, tested over raw HTTP as an attacker would reach it.

Sign-in throttle, expiring and revocable sessions (across two app processes on one database),
admin endpoints and every other route as seen by an annotator and by nobody, secrets kept out of
logs, and ``rewardlab.paths.confine``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import HTTPException
from sqlalchemy import select
from test_app import PASSWORD, app, clients, fill, free_port, running  # noqa: F401 (fixtures)
from test_browser import browser  # noqa: F401 (fixture)

from annotate.accounts import add_user, disable_user, set_password, verify_password
from annotate.security import Guard
from annotate.store import Annotator, LoginFailure, Store, WebSession
from rewardlab.errors import RewardlabError
from rewardlab.paths import confine
from rewardlab.workspace import WorkspaceConfig, load_config

REPO = Path(__file__).resolve().parents[1]
BOB_NOTE = "BOBS-PRIVATE-NOTE-7f3a"


def age(store: Store, column, delta: timedelta) -> None:
    """Move a timestamp column of every row back by ``delta`` (as if that much time had passed)."""
    with store.write() as s:
        for row in s.scalars(select(column.class_)).all():
            setattr(row, column.key, getattr(row, column.key) - delta)


def login(url: str, name: str, password: str = PASSWORD, address: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": address} if address else {}
    return httpx.post(url + "login", data={"username": name, "password": password}, headers=headers)


def session(url: str, name: str) -> httpx.Client:
    r = login(url, name)
    assert r.status_code == 200, r.text
    return httpx.Client(base_url=url, cookies=r.cookies, timeout=30)


def run(client: httpx.Client, endpoint: str, *data) -> httpx.Response:
    return client.post(f"gradio_api/run/{endpoint}", json={"data": list(data)})


def queue_call(client: httpx.Client, fn_index: int, data: list) -> dict:
    """What the page does: join the queue for one event, read its stream to the end."""
    session_hash = uuid.uuid4().hex[:11]
    r = client.post("gradio_api/queue/join", json={
        "data": data, "fn_index": fn_index, "session_hash": session_hash, "event_data": None, "trigger_id": None,
    })
    if r.status_code != 200:
        return {"status": r.status_code, "text": r.text}
    with client.stream("GET", "gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return {"status": 200, "text": json.dumps(msg), "success": msg.get("success")}
    raise AssertionError("the event never completed")


@pytest.fixture
def config():
    return WorkspaceConfig(login_max_failures=3, login_window_minutes=5, login_cooldown_minutes=15)


@pytest.fixture
def labelled(store):
    """The app's url; alice, bob (who labelled a pair with a private note) and the admin root."""
    fill(store)
    with running(store) as url:
        bob = session(url, "bob")
        pair = run(bob, "next_pair").json()["data"][0]
        r = run(bob, "submit_label", pair["comparison_id"], "A", "clear", BOB_NOTE)
        assert r.status_code == 200, r.text
        bob.close()
        yield url


# --- passwords ------------------------------------------------------------------------------------

def test_passwords_are_stored_as_salted_scrypt(store):
    add_user(store, "alice", PASSWORD)
    add_user(store, "bob", PASSWORD)
    with store.read() as s:
        hashes = dict(s.execute(select(Annotator.name, Annotator.password_hash)).all())
    assert hashes["alice"].startswith("scrypt$16384$8$1$") and PASSWORD not in hashes["alice"]
    assert hashes["alice"] != hashes["bob"]  # salted
    assert verify_password(PASSWORD, hashes["alice"]) and not verify_password(PASSWORD + "x", hashes["alice"])
    assert not verify_password(PASSWORD, "plain$text") and not verify_password(PASSWORD, None)
    with pytest.raises(RewardlabError, match="too long"):
        add_user(store, "carol", "x" * 2000)


# --- sign-in throttle -----------------------------------------------------------------------------

def test_throttle_counts_per_name_and_per_address(store, config):
    fill(store)
    guard = Guard(store, config)
    for _ in range(3):
        assert guard.login("alice", "wrong password", "10.0.0.1") is False
    with pytest.raises(HTTPException) as refused:  # the right password, now refused
        guard.login("alice", PASSWORD, "10.0.0.2")
    assert refused.value.status_code == 400
    assert "try again in 15 minutes" in refused.value.detail
    # the address 10.0.0.1 is locked too, for every name; another address signs bob in
    with pytest.raises(HTTPException):
        guard.login("bob", PASSWORD, "10.0.0.1")
    assert guard.login("bob", PASSWORD, "10.0.0.3") is True
    # 16 minutes later both open again
    age(store, LoginFailure.at, timedelta(minutes=16))
    assert guard.login("alice", PASSWORD, "10.0.0.1") is True


def test_throttle_needs_the_failures_within_the_window(store, config):
    fill(store)
    guard = Guard(store, config)
    for _ in range(2):
        assert guard.login("alice", "wrong password", "10.0.0.1") is False
    age(store, LoginFailure.at, timedelta(minutes=6))  # the first two fall out of the 5-minute window
    assert guard.login("alice", "wrong password", "10.0.0.1") is False
    assert guard.login("alice", PASSWORD, "10.0.0.1") is True
    # a good sign-in clears the name's count: two more failures do not lock it
    for _ in range(2):
        guard.login("alice", "wrong password", "10.0.0.4")
    assert guard.login("alice", PASSWORD, "10.0.0.4") is True
    # the stored keys never hold the typed name (people type passwords there)
    guard.login("hunter2-typed-as-name", "x", "")
    with store.read() as s:
        keys = s.scalars(select(LoginFailure.key)).all()
    assert keys and not any("hunter2" in k or "alice" in k for k in keys)


@contextmanager
def two_apps(url_db: str, config: WorkspaceConfig):
    """Two app servers, each with its own Store on one database (as two processes would be)."""
    with ExitStack() as stack:
        stores = [Store(url_db), Store(url_db)]
        for s in stores:
            stack.callback(s.close)
        fill(stores[0])
        yield stores, stack.enter_context(running(stores[0], config)), stack.enter_context(running(stores[1], config))


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)  # tests/conftest.py
def test_throttle_over_http_holds_across_two_app_processes(db_url, config):
    with two_apps(db_url, config) as (_stores, one, two):
        for _ in range(3):
            r = login(one, "alice", "wrong password", address="203.0.113.5")
            assert r.status_code == 400 and r.json()["detail"] == "Incorrect credentials."
        # the other process refuses her too, even with the right password and from another address
        r = login(two, "alice", address="198.51.100.7")
        assert r.status_code == 400
        assert "Too many failed sign-ins" in r.json()["detail"] and int(r.headers["retry-after"]) > 800
        assert "access-token" not in r.headers.get("set-cookie", "")
        # per address: bob's right password from the attacking address is refused, elsewhere it works
        assert login(two, "bob", address="203.0.113.5").status_code == 400
        assert login(two, "bob", address="198.51.100.7").status_code == 200
        assert "sign-in pauses for 15 minutes" in httpx.get(one + "config").text  # the rule on the login page


# --- sessions -------------------------------------------------------------------------------------

@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)  # tests/conftest.py
def test_sessions_are_shared_by_processes_and_expire(db_url):
    url_db = db_url
    config = WorkspaceConfig(session_idle_hours=12, session_max_hours=48)
    with two_apps(url_db, config) as (stores, one, two):
        r = login(one, "alice")
        cookies = r.cookies
        token = next(v for k, v in cookies.items() if k.startswith("access-token-unsecure"))
        for url in (one, two):  # signed in at one, served by both
            assert httpx.post(url + "gradio_api/run/progress", json={"data": []}, cookies=cookies).status_code == 200
        with stores[0].read() as s:
            stored = s.scalars(select(WebSession.token_hash)).all()
        assert len(stored) == 1 and token not in stored[0]  # only a hash of the token is kept
        # 11 idle hours: still in; 13: out
        age(stores[0], WebSession.last_seen, timedelta(hours=11))
        assert httpx.post(two + "gradio_api/run/progress", json={"data": []}, cookies=cookies).status_code == 200
        age(stores[0], WebSession.last_seen, timedelta(hours=13))
        assert httpx.post(one + "gradio_api/run/progress", json={"data": []}, cookies=cookies).status_code == 401
        assert httpx.get(one + "config", cookies=cookies).status_code == 401
        # however active, a session ends session_max_hours after sign-in
        cookies = login(one, "alice").cookies
        age(stores[0], WebSession.created_at, timedelta(hours=49))
        assert httpx.post(one + "gradio_api/run/progress", json={"data": []}, cookies=cookies).status_code == 401


def test_logout_ends_every_session_of_the_user(app):  # noqa: F811 (fixture)
    url, _, _ = app
    laptop, phone, bob = session(url, "alice"), session(url, "alice"), session(url, "bob")
    r = laptop.get("logout")
    assert r.status_code == 302 and r.headers["location"] == "/"
    assert 'Max-Age=0' in r.headers["set-cookie"]
    for who, code in ((laptop, 401), (phone, 401), (bob, 200)):
        assert run(who, "progress").status_code == code
    assert httpx.get(url + "logout").status_code == 302  # without a session: just back to sign-in


@pytest.mark.parametrize("change", ["disable", "new password"])
def test_disabling_or_new_password_ends_sessions_at_once(app, change):  # noqa: F811 (fixture)
    url, store, _ = app
    alice = session(url, "alice")
    assert run(alice, "progress").status_code == 200
    if change == "disable":
        disable_user(store, "alice")
    else:
        set_password(store, "alice", "a brand new password")
    assert run(alice, "progress").status_code == 401
    assert alice.get("config").status_code == 401


@pytest.mark.browser
def test_log_out_button_in_a_real_browser(browser, app):  # noqa: F811 (fixtures)
    """The page's Log out button ends the session: back to the sign-in form, the cookie is dead."""
    from test_browser import login as browser_login

    url, _, _ = app
    page = browser_login(browser, url, "alice")
    cookies = {c["name"]: c["value"] for c in page.context.cookies() if c["name"].startswith("access-token")}
    assert cookies and run(httpx.Client(base_url=url, cookies=cookies), "progress").status_code == 200
    page.get_by_text("Log out").click()
    page.wait_for_selector("input[type=password]", timeout=20_000)
    assert run(httpx.Client(base_url=url, cookies=cookies), "progress").status_code == 401
    # a wrong password in the page: Gradio's own message; the throttle rule is on the form
    page.locator("input[type=text]").first.fill("alice")
    page.locator("input[type=password]").first.fill("wrong password")
    page.keyboard.press("Enter")
    page.get_by_text("Incorrect Credentials").wait_for(timeout=10_000)
    assert "After 5 failed sign-ins in 5 minutes" in page.content()
    page.close()


# --- what an annotator (or nobody) can reach ------------------------------------------------------

def _dependencies(client: httpx.Client) -> list[dict]:
    return client.get("config").json()["dependencies"]


def test_admin_endpoints_refuse_annotators_and_strangers(store, labelled):
    url = labelled
    alice, root, nobody = session(url, "alice"), session(url, "root"), httpx.Client(base_url=url)
    # the scripting API
    assert nobody.post("gradio_api/run/admin_stats", json={"data": []}).status_code == 401
    r = run(alice, "admin_stats")
    assert r.status_code != 200 and "admins only" in r.text and "bob" not in r.text
    r = run(root, "admin_stats")
    assert r.status_code == 200 and any(a["name"] == "bob" for a in r.json()["data"][0]["annotators"])
    # the page's own event (Admin tab's Refresh) through the queue, as the browser sends it
    deps = _dependencies(root)
    refresh = next(d["id"] for d in deps if d["api_name"] == "ui_admin_refresh")
    assert queue_call(nobody, refresh, [])["status"] == 401
    got = queue_call(alice, refresh, [])
    assert got["success"] is False and "admins only" in got["text"] and "bob" not in got["text"]
    got = queue_call(root, refresh, [])
    assert got["success"] is True and "bob" in got["text"]  # the control: the admin does see it
    for c in (alice, root, nobody):
        c.close()


def test_no_route_shows_an_annotator_other_peoples_labels(store, labelled, tmp_path):
    """Every route Gradio serves and every event of the page, called as alice: nothing of bob's."""
    url = labelled
    alice, root, nobody = session(url, "alice"), session(url, "root"), httpx.Client(base_url=url)
    seen: dict[str, str] = {}

    def look(who: str, what: str, text: str) -> None:
        seen[f"{who} {what}"] = text

    # every parameterless GET route of the app
    info = alice.get("gradio_api/info").json()
    routes = {"/", "/config", "/gradio_api/info", "/gradio_api/info?all_endpoints=true",
              "/gradio_api/openapi.json", "/gradio_api/token", "/gradio_api/app_id", "/gradio_api/user",
              "/gradio_api/login_check", "/gradio_api/startup-events", "/manifest.json",
              "/gradio_api/monitoring", "/gradio_api/monitoring/summary", "/gradio_api/deep_link",
              "/gradio_api/runs", "/gradio_api/upload_progress", "/gradio_api/heartbeat/x"}
    routes.add(f"/gradio_api/file={store.url.removeprefix('sqlite:///')}")  # the database itself
    routes.add(f"/gradio_api/file={Path(store.url.removeprefix('sqlite:///')).parent}/rewardlab.db")
    for route in sorted(routes):
        for who, client in (("alice", alice), ("nobody", nobody)):
            try:
                r = client.get(route.lstrip("/"), timeout=1 if "heartbeat" in route else 10)
                look(who, route, f"{r.status_code} {r.text}")
            except httpx.ReadTimeout:  # a stream that stays open (heartbeat): nothing sent
                look(who, route, "open stream")
    assert seen["alice /gradio_api/token"].startswith("404")  # would hand the cookie to scripts
    assert seen["alice /config"].startswith("200")
    public = {"/", "/gradio_api/runs", "/manifest.json", "/gradio_api/app_id", "/gradio_api/token",
              "/gradio_api/user", "/gradio_api/heartbeat/x", "/gradio_api/startup-events"}
    for route in routes - public:
        assert not seen[f"nobody {route}"].startswith("200"), route
    for page in ("/", "/gradio_api/runs"):  # pages: the sign-in form, nothing more
        assert '"auth_required":true' in seen[f"nobody {page}"].replace(" ", ""), page
    assert not any(seen[f"{w} /gradio_api/file={store.url.removeprefix('sqlite:///')}"].startswith("200")
                   for w in ("alice", "nobody"))
    # every event of the page, by fn_index through the queue and by name through /run
    for dep in _dependencies(alice):
        n_inputs = len(dep["inputs"])
        for who, client in (("alice", alice), ("nobody", nobody)):
            got = queue_call(client, dep["id"], [None] * n_inputs)
            look(who, f"queue {dep['id']} {dep['api_name']}", f"{got['status']} {got['text']}")
            if dep["api_name"]:
                r = run(client, dep["api_name"], *([None] * n_inputs))
                look(who, f"run {dep['api_name']}", f"{r.status_code} {r.text}")
    # every named endpoint of the scripting API, with and without plausible arguments
    named = {**info["named_endpoints"], **alice.get("gradio_api/info?all_endpoints=true").json()["named_endpoints"]}
    assert {"/next_pair", "/submit_label", "/admin_stats"} <= set(named)
    for name, spec in named.items():
        args = [None] * len(spec["parameters"])
        for who, client in (("alice", alice), ("nobody", nobody)):
            r = run(client, name.lstrip("/"), *args)
            look(who, f"run {name}", f"{r.status_code} {r.text}")
    assert seen["nobody run /next_pair"].startswith("401")
    assert seen["alice run /next_pair"].startswith("200")  # the control: alice gets her own pair
    leaks = {k: v[:200] for k, v in seen.items() if "bob" in v.lower() or BOB_NOTE in v or '"agreement"' in v}
    assert not leaks
    # and the same machinery does find bob's data when the admin asks (the test can fail)
    assert "bob" in run(root, "admin_stats").text
    for c in (alice, root, nobody):
        c.close()


# --- secrets in logs ------------------------------------------------------------------------------

def test_no_password_or_token_in_logs(tmp_path):
    """A real `rewardlab annotate` process: sign-ins (good and bad), labelling, logout; its output
    and the database hold neither the passwords nor the session token."""
    ws, port = tmp_path / "ws", free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False"}
    secret, wrong = "S3cret-pass-4711", "Wr0ng-pass-0815"
    cli = [sys.executable, "-m", "rewardlab.cli"]
    added = subprocess.run([*cli, "users", "add", "carol", "--workspace", str(ws)], input=secret + "\n",
                           env=env, capture_output=True, text=True, timeout=120, check=False)
    assert added.returncode == 0, added.stderr
    store = Store("sqlite:///" + str(ws / "rewardlab.db"))
    fill(store, n=3)  # pairs (and alice, bob, root, who stay away)
    store.close()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen([*cli, "annotate", "--workspace", str(ws), "--port", str(port)],
                                  env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            try:
                if httpx.get(url + "config", timeout=2).status_code == 401:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None:
                break
            time.sleep(0.25)
        assert login(url, "carol", wrong).status_code == 400
        assert login(url, "nobody-" + secret, wrong).status_code == 400  # a password typed as a name
        r = login(url, "carol", secret)
        assert r.status_code == 200
        token = next(v for k, v in r.cookies.items() if k.startswith("access-token"))
        with httpx.Client(base_url=url, cookies=r.cookies) as carol:
            pair = run(carol, "next_pair").json()["data"][0]
            assert run(carol, "submit_label", pair["comparison_id"], "A", None, "fine").status_code == 200
            assert run(carol, "submit_label", "not a number", "A", None, "").status_code != 200  # an error path
            carol.get(f"gradio_api/file=/etc/passwd?token={token}")
            carol.get("logout")
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = added.stdout + added.stderr + log.read_text()
    assert "rewardlab annotate: http://127.0.0.1" in text  # the output was captured
    for s in (secret, wrong, token):
        assert s not in text
    db = b"".join(p.read_bytes() for p in ws.glob("rewardlab.db*"))
    for s in (secret, wrong, token):
        assert s.encode() not in db


def test_database_urls_are_shown_without_password():
    with pytest.raises(RewardlabError) as err:
        Store("postgresql+psycopg://rl:Pg-Secret-99@127.0.0.1:9/rewardlab")
    assert "Pg-Secret-99" not in str(err.value) and "rl:***@127.0.0.1" in str(err.value)


# --- settings -------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ("session_idle_hours: 0", "session_idle_hours must be a number > 0"),
    ("session_max_hours: .inf", "session_max_hours must be a number > 0"),
    ("login_max_failures: 2.5", "login_max_failures must be a whole number >= 0"),
    ("login_cooldown_minutes: soon", "login_cooldown_minutes must be a number > 0"),
])
def test_security_settings_are_checked(tmp_path, line, message):
    (tmp_path / "workspace.yaml").write_text(line + "\n")
    with pytest.raises(RewardlabError, match=message):
        load_config(tmp_path)


def test_security_settings_load(tmp_path):
    (tmp_path / "workspace.yaml").write_text("session_idle_hours: 1.5\nlogin_max_failures: 0\n")
    cfg = load_config(tmp_path)
    assert cfg.session_idle_hours == 1.5 and cfg.login_max_failures == 0 and cfg.extra == {}


# --- paths from forms -----------------------------------------------------------------------------

def test_confine_keeps_paths_inside_the_workspace(tmp_path):
    root = tmp_path / "ws"
    (root / "data").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    (root / "data" / "up").symlink_to(tmp_path)
    (root / "inner").symlink_to(root / "data")
    assert confine("data/prompts.jsonl", root) == (root / "data" / "prompts.jsonl").resolve()
    assert confine(str(root / "data"), root) == (root / "data").resolve()
    assert confine("data/../data/x.csv", root) == (root / "data" / "x.csv").resolve()
    assert confine("inner/x.csv", root) == (root / "data" / "x.csv").resolve()  # a link that stays inside
    assert confine(".", root) == root.resolve()
    assert confine("~/x", root) == (root / "~" / "x").resolve()  # taken literally, never the home folder
    for bad in ["../outside/x", "/etc/passwd", str(outside / "x"), "escape/x", "escape",
                "data/up/outside/x", "data/../../outside"]:
        with pytest.raises(RewardlabError, match="outside the workspace"):
            confine(bad, root)
    for bad, message in [("", "empty path"), ("  ", "empty path"), ("data/\x00x", "NUL")]:
        with pytest.raises(RewardlabError, match=message):
            confine(bad, root)
    (root / "loop").symlink_to(root / "loop")
    with pytest.raises(RewardlabError):
        confine("loop/x", root)


def test_database_url_can_come_from_the_environment(tmp_path, monkeypatch):
    """``env:NAME`` and $REWARDLAB_DB keep a password-bearing URL out of argv and job records."""
    from rewardlab.workspace import db_url

    secret = "postgresql+psycopg://u:hunter2@db/rl"
    monkeypatch.setenv("MY_DB", secret)
    assert db_url("env:MY_DB") == secret
    monkeypatch.delenv("MY_DB")
    with pytest.raises(RewardlabError, match="MY_DB is not set"):
        db_url("env:MY_DB")
    monkeypatch.setenv("REWARDLAB_DB", secret)
    assert db_url(None, tmp_path) == secret
    assert db_url(str(tmp_path / "x.db"), tmp_path).startswith("sqlite:///")  # an explicit --db wins
    monkeypatch.delenv("REWARDLAB_DB")
    assert db_url(None, tmp_path) == "sqlite:///" + str((tmp_path / "rewardlab.db").resolve())
