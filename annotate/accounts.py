"""Annotator accounts: scrypt password hashes, adding, listing, disabling, logging in."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from annotate.store import Annotator, Label, Store, WebSession
from rewardlab.errors import RewardlabError

ROLES = ("annotator", "admin")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# scrypt cost: 2**14 x 8 x 1 takes ~16 MB and ~40 ms, the interactive-login setting of RFC 7914.
_N, _R, _P = 2**14, 8, 1
MAX_PASSWORD_CHARS = 1024
_dummy_hash: str | None = None  # checked against for unknown names, so both paths cost one scrypt


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        algo, n, r, p, salt, digest = stored.split("$")
        if algo != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode("utf-8"), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
            dklen=len(bytes.fromhex(digest)),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


def _check_password(password: str) -> None:
    if len(password) < 8:
        raise RewardlabError("password too short: use at least 8 characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise RewardlabError(f"password too long: use at most {MAX_PASSWORD_CHARS} characters")


@dataclass
class Account:
    id: int
    name: str
    role: str
    active: bool

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _account(a: Annotator) -> Account:
    return Account(id=a.id, name=a.name, role=a.role, active=a.active)


def add_user(store: Store, name: str, password: str, role: str = "annotator") -> Account:
    if not _NAME.match(name or ""):
        raise RewardlabError(
            f"invalid user name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-'"
        )
    if role not in ROLES:
        raise RewardlabError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    _check_password(password)
    try:
        with store.write() as s:
            a = Annotator(name=name, role=role, password_hash=hash_password(password), active=True)
            s.add(a)
            s.flush()
            return _account(a)
    except IntegrityError:
        raise RewardlabError(f"user {name!r} already exists (disable it or pick another name)") from None


def set_password(store: Store, name: str, password: str) -> None:
    _check_password(password)
    with store.write() as s:
        a = s.scalar(select(Annotator).where(Annotator.name == name))
        if a is None or a.name.startswith("import:"):
            raise RewardlabError(f"no user named {name!r} (see `rewardlab users list`)")
        a.password_hash = hash_password(password)
        a.active = True
        s.execute(delete(WebSession).where(WebSession.annotator_id == a.id))  # signed out everywhere


def disable_user(store: Store, name: str) -> None:
    with store.write() as s:
        a = s.scalar(select(Annotator).where(Annotator.name == name))
        if a is None:
            raise RewardlabError(f"no user named {name!r} (see `rewardlab users list`)")
        a.active = False
        s.execute(delete(WebSession).where(WebSession.annotator_id == a.id))  # signed out at once


def list_users(store: Store) -> list[dict]:
    from sqlalchemy import func

    with store.read() as s:
        counts = dict(s.execute(select(Label.annotator_id, func.count()).group_by(Label.annotator_id)).all())
        rows = s.scalars(select(Annotator).order_by(Annotator.name)).all()
        return [
            {"name": a.name, "role": a.role, "active": a.active, "labels": counts.get(a.id, 0)}
            for a in rows
        ]


def authenticate(store: Store, name: str, password: str) -> Account | None:
    """The active account with this name and password, else None."""
    with store.read() as s:
        a = s.scalar(select(Annotator).where(Annotator.name == name))
        if a is None or not a.active or len(password) > MAX_PASSWORD_CHARS:
            # Spend the same time as a real check (one scrypt) so names cannot be probed by timing.
            global _dummy_hash
            if _dummy_hash is None:
                _dummy_hash = hash_password(secrets.token_urlsafe(12))
            verify_password(password[:MAX_PASSWORD_CHARS], _dummy_hash)
            return None
        return _account(a) if verify_password(password, a.password_hash) else None


def get_account(store: Store, name: str) -> Account | None:
    with store.read() as s:
        a = s.scalar(select(Annotator).where(Annotator.name == name))
        return _account(a) if a is not None and a.active else None


def import_account(store: Store, s, source: str) -> int:
    """The id of the inactive pseudo-account ``import:<source>`` that owns imported labels."""
    name = f"import:{source}"[:200]
    aid = s.scalar(select(Annotator.id).where(Annotator.name == name))
    if aid is None:
        a = Annotator(name=name, role="annotator", password_hash=None, active=False)
        s.add(a)
        s.flush()
        aid = a.id
    return aid
