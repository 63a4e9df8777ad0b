"""A small Python client for the labelling API: one keep-alive connection, answers as they arrive.

The app's endpoints (``/next_pair``, ``/submit_label``, ``/skip``, ``/undo``, ``/progress``,
``/admin_stats`` and the admin console's) are ordinary Gradio endpoints, so ``gradio_client`` works
with them. But ``gradio_client`` 2.x looks for a finished call's result every 50 ms
(``time.sleep(0.05)`` in ``gradio_client.utils.stream_sse_v1plus``): every call takes at least
about 50 ms however fast the server answered (measured here: 87 ms per label through
``gradio_client`` against 14 ms through this client, same server, one annotator). The browser's
own client waits on the event stream instead, and so does this one:

- ``POST /login`` (form fields ``username``, ``password``) once; the session cookie rides on every
  later request;
- per call, ``POST {api_prefix}/queue/join`` with the endpoint's ``fn_index`` and the arguments,
  then read ``GET {api_prefix}/queue/data`` (server-sent events) until this call's
  ``process_completed`` message, and return its output at once.

    from annotate.client import LabelClient

    with LabelClient("http://127.0.0.1:7860", "alice", "her-password") as c:
        pair = c.next_pair()
        while pair is not None:
            pair = c.submit_label(pair["comparison_id"], "A", strength="clear", note="")

A refusal by the app (bad input, a pair not shown to you, admins only) raises ``ApiError`` with the
app's one-line reason; a wrong password or an ended session raises ``LoginError``. One client per
thread: calls on one client are not meant to overlap.
"""

from __future__ import annotations

import json
import uuid

import httpx

from rewardlab.errors import RewardlabError


class ApiError(RewardlabError):
    """The app refused a call; the message is its reason."""


class LoginError(ApiError):
    """Wrong user name or password, sign-in paused, or the session ended (sign in again)."""


class LabelClient:
    """rewardlab's labelling API over HTTP (see the module docstring)."""

    def __init__(self, url: str, username: str, password: str, *, timeout: float = 60.0,
                 verify=True, http: httpx.Client | None = None):
        self.url = url if url.endswith("/") else url + "/"
        self.username = username
        self._own_http = http is None
        self.http = http or httpx.Client(base_url=self.url, timeout=timeout, verify=verify)
        self.session_hash = uuid.uuid4().hex[:11]
        try:
            self._login(username, password)
            config = self.http.get("config")
            if config.status_code != 200:
                raise ApiError(f"{self.url}: no Gradio app config here (HTTP {config.status_code})")
            config = config.json()
        except httpx.HTTPError as exc:
            self.close()
            raise ApiError(f"cannot reach {self.url}: {exc}") from None
        except ApiError:
            self.close()
            raise
        self.prefix = (config.get("api_prefix") or "/gradio_api").strip("/") + "/"
        self.endpoints: dict[str, int] = {}
        for i, dep in enumerate(config.get("dependencies", [])):
            name = dep.get("api_name")
            if name and dep.get("show_api", True) is not False:
                self.endpoints.setdefault(str(name).lstrip("/"), int(dep.get("id", i)))

    def _login(self, username: str, password: str) -> None:
        r = self.http.post("login", data={"username": username, "password": password})
        if r.status_code != 200:
            raise LoginError(f"sign-in as {username!r} refused: {_detail(r)}")

    # --- the labelling API ------------------------------------------------------------------------

    def next_pair(self) -> dict | None:
        """Your current pair (A/B as shown to you) with ``progress``, or None when nothing is left."""
        return self.call("next_pair")

    def submit_label(self, comparison_id: int, choice: str, strength: str | None = None,
                     note: str = "") -> dict | None:
        """Label the pair you were shown (``A``, ``B``, ``tie``, ``both_bad``); returns the next pair."""
        return self.call("submit_label", comparison_id, choice, strength, note)

    def skip(self, comparison_id: int) -> dict | None:
        """Never show you this pair again; returns the next pair."""
        return self.call("skip", comparison_id)

    def undo(self) -> dict | None:
        """Take back your latest label; returns that pair (current again), or None."""
        return self.call("undo")

    def progress(self) -> dict:
        """``{"done": ..., "remaining": ...}`` for you."""
        return self.call("progress")

    def admin_stats(self) -> dict:
        """Admins only: per-annotator progress, speed, choices and agreement."""
        return self.call("admin_stats")

    def call(self, api_name: str, *args):
        """Any named endpoint of the app, with its positional arguments; returns its output."""
        name = api_name.lstrip("/")
        if name not in self.endpoints:
            raise ApiError(f"no endpoint /{name} here; the app has: "
                           + ", ".join("/" + n for n in sorted(self.endpoints)))
        try:
            joined = self.http.post(self.prefix + "queue/join", json={
                "data": list(args), "fn_index": self.endpoints[name], "session_hash": self.session_hash,
                "event_data": None, "trigger_id": None,
            })
            if joined.status_code == 401:
                raise LoginError(f"/{name}: not signed in (the session ended); sign in again")
            if joined.status_code != 200:
                raise ApiError(f"/{name}: {_detail(joined)}")
            event_id = joined.json()["event_id"]
            with self.http.stream("GET", self.prefix + "queue/data",
                                  params={"session_hash": self.session_hash}) as stream:
                if stream.status_code != 200:
                    stream.read()
                    if stream.status_code == 401:
                        raise LoginError(f"/{name}: not signed in (the session ended); sign in again")
                    raise ApiError(f"/{name}: {_detail(stream)}")
                for line in stream.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    msg = json.loads(line[5:])
                    kind = msg.get("msg")
                    if kind == "unexpected_error":
                        raise ApiError(f"/{name}: {msg.get('message') or 'the server failed'}")
                    if kind == "process_completed" and msg.get("event_id") == event_id:
                        output = msg.get("output") or {}
                        if not msg.get("success", False):
                            raise ApiError(f"/{name}: {output.get('error') or 'the call failed'}")
                        data = output.get("data") or [None]
                        return data[0] if len(data) == 1 else data
        except httpx.HTTPError as exc:
            raise ApiError(f"/{name}: connection to {self.url} failed: {exc}") from None
        raise ApiError(f"/{name}: the event stream ended before the answer came")

    # --- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        if self._own_http:
            self.http.close()

    def __enter__(self) -> LabelClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _detail(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return f"HTTP {r.status_code}"
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, dict):
        detail = detail.get("error") or detail.get("message") or json.dumps(detail)
    return f"{detail} (HTTP {r.status_code})"
