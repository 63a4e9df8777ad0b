"""Sign-in protection for the annotation app: throttled logins, expiring sessions, logout.

Gradio's ``launch(auth=...)`` checks a password and then keeps ``token -> user name`` in a plain
dict in memory, for ever. rewardlab plugs three things into that, without touching Gradio itself
(``launch_kwargs`` gives them to ``Blocks.launch``):

- **Throttled sign-in** (``Guard.login``, the ``auth`` callable): after ``login_max_failures``
  failed sign-ins within ``login_window_minutes`` for one user name, or from one client address,
  every sign-in for it is refused for ``login_cooldown_minutes``, even with the right password.
  Failures are rows of ``login_failures`` in the store, so all app processes on one database count
  together. A refused sign-in answers HTTP 400 with a message saying when to retry (Gradio's login
  page shows its own "Incorrect Credentials" for any 400; the page's ``auth_message`` states the
  rule).
- **Expiring sessions** (``SessionTokens``, which replaces Gradio's token dict): sessions live in
  ``web_sessions`` (the sha256 of each token, never the token), expire after
  ``session_idle_hours`` without a request and ``session_max_hours`` after sign-in, and end at once
  when the account is disabled or its password changes. The cookie name is derived from the
  database, so every app process behind one proxy accepts the same sign-in.
- **Logout** (``/logout``): ends every session of the user (all browsers and scripts), clears the
  cookies and returns to the sign-in page.

The ASGI middleware (``SecurityMiddleware``) installs the token store on Gradio's app before its
first request, remembers the client address for the throttle (behind a proxy, uvicorn takes it from
``X-Forwarded-For`` when the proxy's address is in ``FORWARDED_ALLOW_IPS``; default 127.0.0.1),
answers ``/logout``, and refuses ``/gradio_api/token``, a Gradio route that hands the http-only
session cookie's value to page scripts.
"""

from __future__ import annotations

import contextvars
import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from urllib.parse import quote

from fastapi import HTTPException
from sqlalchemy import delete, select, update
from starlette.middleware import Middleware

from annotate import accounts
from annotate.store import Annotator, LoginFailure, Store, WebSession, utcnow
from rewardlab.errors import RewardlabError
from rewardlab.workspace import WorkspaceConfig

_client_address: contextvars.ContextVar[str] = contextvars.ContextVar("rewardlab_client_address", default="")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# --- sessions -------------------------------------------------------------------------------------

class SessionTokens:
    """Gradio's ``app.tokens`` (token -> user name), kept in the store with expiry.

    Gradio reads it with ``get(token)`` on every request, writes ``tokens[token] = name`` after a
    good sign-in; ``/logout`` is answered by the middleware (``end_user_sessions``).
    """

    def __init__(self, store: Store, idle: timedelta, lifetime: timedelta):
        self.store, self.idle, self.lifetime = store, idle, lifetime
        # last_seen is written at most this often per session (a write per request would be waste)
        self.touch_every = min(timedelta(seconds=60), idle / 4)
        self._toucher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardlab-sessions")
        self._touching: set[str] = set()

    def __setitem__(self, token: str, username: str) -> None:
        now = utcnow()
        with self.store.write() as s:
            annotator_id = s.scalar(select(Annotator.id).where(Annotator.name == username))
            if annotator_id is None:
                raise RewardlabError(f"no user named {username!r}")
            s.execute(delete(WebSession).where(  # forget expired sessions while here
                (WebSession.last_seen < now - self.idle) | (WebSession.created_at < now - self.lifetime)
            ))
            s.add(WebSession(token_hash=token_hash(token), annotator_id=annotator_id, created_at=now,
                             last_seen=now))

    def get(self, token: str | None, default=None):
        """The user name of a live session, else ``default`` (expired sessions are deleted)."""
        if not token or not isinstance(token, str):
            return default
        h = token_hash(token)
        with self.store.read() as s:
            row = s.execute(
                select(WebSession.created_at, WebSession.last_seen, Annotator.name, Annotator.active)
                .join(Annotator, Annotator.id == WebSession.annotator_id)
                .where(WebSession.token_hash == h)
            ).first()
        if row is None:
            return default
        created, last_seen, name, active = row
        now = utcnow()
        if not active or now - last_seen > self.idle or now - created > self.lifetime:
            with self.store.write() as s:
                s.execute(delete(WebSession).where(WebSession.token_hash == h))
            return default
        if now - last_seen > self.touch_every and h not in self._touching:
            # Gradio asks from its event loop: the write goes to a worker thread, never blocking it.
            self._touching.add(h)
            self._toucher.submit(self._touch, h, now)
        return name

    def _touch(self, h: str, now: datetime) -> None:
        try:
            with self.store.write() as s:
                s.execute(update(WebSession).where(WebSession.token_hash == h).values(last_seen=now))
        finally:
            self._touching.discard(h)

    def __getitem__(self, token: str) -> str:
        name = self.get(token)
        if name is None:
            raise KeyError("no such session")
        return name

    def __contains__(self, token) -> bool:
        return self.get(token) is not None

    def __delitem__(self, token: str) -> None:
        with self.store.write() as s:
            s.execute(delete(WebSession).where(WebSession.token_hash == token_hash(token)))

    def end_user_sessions(self, username: str) -> int:
        """Sign a user out everywhere; returns how many sessions ended."""
        with self.store.write() as s:
            ids = select(Annotator.id).where(Annotator.name == username).scalar_subquery()
            return s.execute(delete(WebSession).where(WebSession.annotator_id == ids)).rowcount or 0


# --- throttled sign-in ----------------------------------------------------------------------------

class Guard:
    """The sign-in rules of one app process (see the module docstring)."""

    def __init__(self, store: Store, config: WorkspaceConfig):
        self.store = store
        self.max_failures = int(config.login_max_failures)
        self.window = timedelta(minutes=float(config.login_window_minutes))
        self.cooldown = timedelta(minutes=float(config.login_cooldown_minutes))
        self.sessions = SessionTokens(store, timedelta(hours=float(config.session_idle_hours)),
                                      timedelta(hours=float(config.session_max_hours)))
        # The same for every process on this database (never the password): one cookie name for all.
        self.cookie_id = hashlib.sha256(f"rewardlab:{store.shown_url}".encode()).hexdigest()[:32]

    def keys(self, username: str, address: str) -> list[str]:
        # The name is hashed: people type passwords into the name field, and those must not be stored.
        keys = [f"user:{token_hash(username)[:40]}"]
        if address:
            keys.append(f"addr:{address[:90]}")
        return keys

    def locked_for(self, keys: list[str], now: datetime | None = None) -> timedelta | None:
        """How long sign-in stays refused for any of these keys, or None when it is allowed.

        A key is locked when its latest ``max_failures`` failures fall within ``window`` and the
        last of them is less than ``cooldown`` ago. Refused attempts are not counted.
        """
        if self.max_failures <= 0:
            return None
        now = now or utcnow()
        longest = None
        with self.store.read() as s:
            for key in keys:
                times = s.scalars(
                    select(LoginFailure.at).where(LoginFailure.key == key, LoginFailure.at > now - self.window - self.cooldown)
                    .order_by(LoginFailure.at.desc()).limit(self.max_failures)
                ).all()
                if len(times) < self.max_failures or times[0] - times[-1] > self.window:
                    continue
                left = times[0] + self.cooldown - now
                if left > timedelta(0) and (longest is None or left > longest):
                    longest = left
        return longest

    def record_failure(self, keys: list[str]) -> None:
        now = utcnow()
        with self.store.write() as s:
            s.execute(delete(LoginFailure).where(LoginFailure.at < now - self.window - self.cooldown))
            s.add_all([LoginFailure(key=k, at=now) for k in keys])

    def login(self, username: str, password: str, address: str = "") -> bool:
        """Gradio's ``auth`` callable: True for a good sign-in; HTTP 400 with a reason when throttled."""
        keys = self.keys(username, address)
        left = self.locked_for(keys)
        if left is not None:
            minutes = max(1, int(-(-left.total_seconds() // 60)))
            raise HTTPException(
                status_code=400,
                detail=(f"Too many failed sign-ins for this account or from this address: "
                        f"try again in {minutes} minute{'s' if minutes != 1 else ''}"),
                headers={"Retry-After": str(int(left.total_seconds()) + 1)},
            )
        if accounts.authenticate(self.store, username, password) is None:
            self.record_failure(keys)
            return False
        with self.store.write() as s:  # a good sign-in clears the name's count (not the address's)
            s.execute(delete(LoginFailure).where(LoginFailure.key == keys[0]))
        return True

    def auth(self, username: str, password: str) -> bool:
        return self.login(username, password, _client_address.get())

    # --- plugging into Gradio's app ---

    def attach(self, gradio_app) -> None:
        """Replace Gradio's in-memory token dict (idempotent; Gradio resets it on each launch)."""
        if getattr(gradio_app, "tokens", None) is not self.sessions and hasattr(gradio_app, "cookie_id"):
            gradio_app.cookie_id = self.cookie_id
            gradio_app.tokens = self.sessions

    def cookie_names(self) -> tuple[str, str]:
        return f"access-token-{self.cookie_id}", f"access-token-unsecure-{self.cookie_id}"


def _cookies(scope) -> dict[str, str]:
    from http.cookies import CookieError, SimpleCookie

    raw = b"; ".join(v for k, v in scope.get("headers", []) if k == b"cookie").decode("latin-1")
    jar = SimpleCookie()
    try:
        jar.load(raw)
    except CookieError:
        return {}
    return {k: m.value for k, m in jar.items()}


class SecurityMiddleware:
    """Pure ASGI middleware: see the module docstring."""

    def __init__(self, app, guard: Guard):
        self.app, self.guard = app, guard

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        self.guard.attach(scope.get("app"))
        client = scope.get("client")
        _client_address.set(client[0] if client else "")
        path = scope.get("path", "")
        if scope["type"] == "http" and path.rstrip("/") in ("/gradio_api/token", "/token"):
            return await _send(send, 404, b'{"detail":"Not Found"}', [(b"content-type", b"application/json")])
        if scope["type"] == "http" and path.rstrip("/") == "/logout":
            return await self.logout(scope, send)
        return await self.app(scope, receive, send)

    async def logout(self, scope, send):
        import anyio

        cookies = _cookies(scope)
        token = next((cookies[n] for n in self.guard.cookie_names() if cookies.get(n)), None)
        name = await anyio.to_thread.run_sync(self.guard.sessions.get, token)
        if name is not None:
            await anyio.to_thread.run_sync(self.guard.sessions.end_user_sessions, name)
        root = scope.get("root_path", "") or ""
        headers = [(b"location", (quote(root) + "/").encode("latin-1"))]
        for n in self.guard.cookie_names():
            headers.append((b"set-cookie", f'{n}=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/; SameSite=lax'.encode()))
        return await _send(send, 302, b"", headers)


async def _send(send, status: int, body: bytes, headers: list) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def launch_kwargs(store: Store, config: WorkspaceConfig) -> dict:
    """``Blocks.launch`` arguments that put the sign-in rules in place: auth and the middleware."""
    guard = Guard(store, config)
    rule = ""
    if guard.max_failures > 0:
        rule = (f" After {guard.max_failures} failed sign-ins in {config.login_window_minutes:g} minutes, "
                f"sign-in pauses for {config.login_cooldown_minutes:g} minutes.")
    return {
        "auth": guard.auth,
        "auth_message": "Sign in with the account your project admin created for you." + rule,
        "app_kwargs": {"middleware": [Middleware(SecurityMiddleware, guard=guard)]},
    }
