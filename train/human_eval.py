"""Back to humans: base-vs-aligned pairs into the annotation store, and the human win-rate out of it.

``train`` does not import ``annotate`` (see DESIGN.md), so this file talks to the store through its
documented schema with plain SQLAlchemy Core: the tables are reflected, and the schema version in
``meta`` must be one of those listed here (``SCHEMA_VERSIONS``).

What is stored, so that annotation stays blind and reruns add nothing twice:

- the prompt (found by its key, the sha256 of its normalized messages, or added with source
  ``eval:<tag>``);
- each reply as a response whose ``model`` is ``base:<label>`` or ``aligned:<label>`` (the role
  prefix is how the report knows who wrote what; the app never shows model names) and whose
  ``settings`` hold the generation settings, the role and the tag; found again by (prompt, model,
  text hash), the store's own unique key;
- one comparison per prompt, canonical (``response_a_id < response_b_id``), tagged ``eval:<tag>``;
  found again by its two responses. Prompts where both models wrote the same text are not queued
  (nothing to judge) and are counted.

The human win-rate counts labels (several annotators of one pair each count): aligned wins, base
wins, ties (count half) and both-bad (reported, not in the rate); the interval is Wilson's, 95%.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import MetaData, and_, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from rewardlab.errors import RewardlabError
from rewardlab.formats import PromptRecord
from rewardlab.stats import wilson_interval
from rewardlab.workspace import db_url

# Store schema versions whose tables read and written here (TABLES) are as this file expects: 2 only
# added tables of its own (web_sessions, login_failures, jobs; annotate/migrations/versions/).
SCHEMA_VERSIONS = (1, 2, 3)
TAG_PREFIX = "eval:"
ROLES = ("base", "aligned")
TABLES = ("meta", "prompts", "responses", "comparisons", "labels")


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def full_tag(tag: str) -> str:
    """``run1`` -> ``eval:run1`` (a tag already starting with ``eval:`` is kept)."""
    tag = str(tag).strip()
    if not tag or tag == TAG_PREFIX:
        raise RewardlabError("--tag must not be empty")
    return tag if tag.startswith(TAG_PREFIX) else TAG_PREFIX + tag


class StoreTables:
    """An existing annotation store: engine and reflected tables; writes begin IMMEDIATE on SQLite."""

    def __init__(self, db: str):
        url = db_url(db)
        try:
            parsed = make_url(url)
        except Exception:
            raise RewardlabError(f"not a database URL or file: {db!r}") from None
        self.shown = parsed.render_as_string(hide_password=True)
        sqlite = parsed.get_backend_name() == "sqlite"
        if sqlite and (not parsed.database or not Path(parsed.database).is_file()):
            raise RewardlabError(f"no annotation store at {parsed.database or db}: create it first (e.g. "
                                 "`rewardlab users add NAME --db DB`), or check the path")
        try:
            self.engine = create_engine(url, **({"connect_args": {"timeout": 60}} if sqlite else {}))
            if sqlite:
                _immediate_writes(self.engine)
            meta = MetaData()
            meta.reflect(self.engine, only=lambda name, _: name in TABLES)
        except (SQLAlchemyError, ImportError) as e:
            raise RewardlabError(f"cannot open the annotation store {self.shown}: {str(e).splitlines()[0][:200]}") from None
        missing = [t for t in TABLES if t not in meta.tables]
        if missing:
            raise RewardlabError(f"{self.shown} is not a rewardlab annotation store (no table {', '.join(missing)})")
        self.t = meta.tables
        with self.engine.connect() as c:
            version = c.scalar(select(self.t["meta"].c.value).where(self.t["meta"].c.key == "schema_version"))
        if version not in {str(v) for v in SCHEMA_VERSIONS}:
            raise RewardlabError(f"{self.shown} has store schema version {version}; this evaluation reads versions "
                                 f"{', '.join(map(str, SCHEMA_VERSIONS))}: use a matching rewardlab")

    @contextmanager
    def write(self):
        with self.engine.execution_options(rewardlab_write=True).begin() as c:
            yield c

    def close(self) -> None:
        self.engine.dispose()


def _immediate_writes(engine) -> None:
    """As the store does: foreign keys on, and BEGIN IMMEDIATE so concurrent writers wait, not fail."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA foreign_keys=ON")
        dbapi_conn.execute("PRAGMA busy_timeout=60000")

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("rewardlab_write") else "BEGIN")


def _get_or_insert(c, table, where: dict, values: dict) -> tuple[int, bool]:
    """Id of the row matching ``where``, inserting ``where | values`` when there is none."""
    found = c.scalar(select(table.c.id).where(and_(*(table.c[k] == v for k, v in where.items()))))
    if found is not None:
        return found, False
    return c.execute(table.insert().values(**where, **values)).inserted_primary_key[0], True


def queue_pairs(db: str, prompts: list[list[dict]], base_texts: list[str], aligned_texts: list[str], *,
                base_label: str, aligned_label: str, tag: str, settings: dict | None = None,
                overlap: int = 1) -> dict:
    """Put one blind base-vs-aligned comparison per prompt into the store (one transaction)."""
    if overlap < 1:
        raise RewardlabError(f"--overlap must be at least 1, got {overlap}")
    tag = full_tag(tag)
    store = StoreTables(db)
    P, R, C = store.t["prompts"], store.t["responses"], store.t["comparisons"]
    counts = {"queued": 0, "already_queued": 0, "identical_skipped": 0, "prompts_added": 0}
    try:
        with store.write() as c:
            for messages, base_text, aligned_text in zip(prompts, base_texts, aligned_texts):
                now = _now()
                pid, added = _get_or_insert(c, P, {"key": PromptRecord(messages).key()}, {
                    "messages": json.dumps(messages, ensure_ascii=False), "source": tag, "meta": "{}",
                    "created_at": now})
                counts["prompts_added"] += added
                if base_text == aligned_text:
                    counts["identical_skipped"] += 1
                    continue
                rids = []
                for role, label, text in (("base", base_label, base_text), ("aligned", aligned_label, aligned_text)):
                    info = {**(settings or {}), "eval_role": role, "eval_tag": tag}
                    rid, _ = _get_or_insert(c, R, {"prompt_id": pid, "model": f"{role}:{label}",
                                                   "text_hash": hashlib.sha256(text.encode("utf-8")).hexdigest()},
                                            {"text": text, "settings": json.dumps(info, sort_keys=True),
                                             "created_at": now})
                    rids.append(rid)
                a, b = sorted(rids)
                _, created = _get_or_insert(c, C, {"response_a_id": a, "response_b_id": b}, {
                    "prompt_id": pid, "overlap": overlap, "label_count": 0, "tag": tag, "created_at": now})
                counts["queued" if created else "already_queued"] += 1
    except SQLAlchemyError as e:
        raise RewardlabError(f"writing to {store.shown} failed, nothing was queued: {str(e).splitlines()[0][:200]}") from None
    finally:
        store.close()
    return {"db": store.shown, "tag": tag, **counts}


def _role(model: str) -> str | None:
    role = model.split(":", 1)[0]
    return role if role in ROLES else None


def human_win_rate(db: str, tag: str | None = None) -> dict:
    """The human win-rate of aligned over base on the comparisons tagged ``eval:<tag>``.

    Without ``tag`` the store must hold exactly one evaluation. Labels are canonical (A = response_a);
    each is mapped to the role of the model that wrote the chosen response.
    """
    store = StoreTables(db)
    R, C, L = (store.t[k] for k in ("responses", "comparisons", "labels"))
    try:
        with store.engine.connect() as c:
            tags = sorted(c.scalars(select(C.c.tag).where(C.c.tag.like(TAG_PREFIX + "%")).distinct()))
            if tag is None:
                if len(tags) != 1:
                    raise RewardlabError(
                        f"{store.shown} holds no evaluation pairs; queue some with `rewardlab evaluate ... --queue DB`"
                        if not tags else f"{store.shown} holds several evaluations ({', '.join(tags)}); pick one with --tag")
                tag = tags[0]
            tag = full_tag(tag)
            if tag not in tags:
                raise RewardlabError(f"no comparisons tagged {tag} in {store.shown}; "
                                     f"evaluations there: {', '.join(tags) or 'none'}")
            ra, rb = R.alias("ra"), R.alias("rb")
            pairs = c.execute(select(C.c.id, C.c.label_count, C.c.overlap, ra.c.model, rb.c.model)
                              .join(ra, ra.c.id == C.c.response_a_id).join(rb, rb.c.id == C.c.response_b_id)
                              .where(C.c.tag == tag)).all()
            labels = c.execute(select(L.c.comparison_id, L.c.choice).join(C, C.c.id == L.c.comparison_id)
                               .where(C.c.tag == tag)).all()
    finally:
        store.close()
    roles = {cid: (_role(ma), _role(mb)) for cid, _, _, ma, mb in pairs}
    counts = {"aligned": 0, "base": 0, "tie": 0, "both_bad": 0}
    unknown = 0
    for cid, choice in labels:
        a, b = roles[cid]
        if {a, b} != set(ROLES):
            unknown += 1
        elif choice in ("A", "B"):
            counts[a if choice == "A" else b] += 1
        elif choice in ("tie", "both_bad"):
            counts[choice] += 1
    n = counts["aligned"] + counts["base"] + counts["tie"]
    wins = counts["aligned"] + 0.5 * counts["tie"]
    return {
        "db": store.shown, "tag": tag, "n": n,
        "win_rate": wins / n if n else None, "win_rate_ci": wilson_interval(wins, n) if n else None,
        "aligned_wins": counts["aligned"], "base_wins": counts["base"], "ties": counts["tie"],
        "both_bad": counts["both_bad"], "labels": len(labels), "unrecognised_labels": unknown,
        "comparisons": len(pairs), "labelled_comparisons": len({cid for cid, _ in labels}),
        "open_comparisons": sum(lc < ov for _, lc, ov, _, _ in pairs),
        "method": "labels as units; aligned wins + ties/2 over aligned + base + ties (both-bad left out); Wilson 95%",
    }
