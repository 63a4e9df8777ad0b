"""The annotation store: SQLAlchemy 2 schema, the engine, and the bulk writes of imports.

Tables (``SCHEMA_VERSION`` is recorded in ``meta``; changes go through migrations, see
``annotate/migrate.py``):

- ``annotators``: name, role (``annotator`` | ``admin``), scrypt password hash, active flag.
  Imported labels belong to inactive accounts named ``import:<source>`` with no password.
- ``prompts``: a conversation ending in a user turn (JSON messages), unique by content hash.
- ``responses``: a model's reply to a prompt, with the model name and generation settings.
- ``comparisons``: a prompt and two distinct responses, stored canonically (``response_a_id`` <
  ``response_b_id``), the number of labels it should collect (``overlap``) and has (``label_count``).
- ``labels``: one annotator's judgement of one comparison, canonical (``A`` means response_a).
  Unique per (comparison, annotator): nobody labels a pair twice.
- ``assignments``: which annotator was shown which pair, in which left/right order, and whether
  it is open, skipped or done; an open one holds the pair back from others until it expires.
- ``jobs``: background work the admin console started (a CLI command as a process): command,
  config, status, pid and its start time, job folder (log, exit code), start and end.

SQLite runs in WAL mode with foreign keys on; every write transaction starts with
``BEGIN IMMEDIATE`` (and, within one process, behind a lock) so concurrent annotators never hit
"database is locked" half-way through. On PostgreSQL (``postgresql+psycopg://...``), several app
processes can share one database: the rules of ``annotate/assignment.py`` hold through row locks
and conditional updates instead.
"""

from __future__ import annotations

import hashlib
import json
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from rewardlab.errors import RewardlabError

SCHEMA_VERSION = 3  # 1: the first tables; 2: web_sessions, login_failures, jobs; 3: active learning, gold
CHOICES = ("A", "B", "tie", "both_bad")
STRENGTHS = ("slight", "clear")
# Strength -> the `margin` column of an exported dataset (TRL RewardTrainer subtracts it inside the
# loss, as in Llama 2's reward model). A label given without a strength counts as slight.
STRENGTH_MARGIN = {"slight": 0.5, "clear": 1.0, None: 0.5}


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Annotator(Base):
    __tablename__ = "annotators"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="annotator")
    password_hash: Mapped[str | None] = mapped_column(String(300), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    __table_args__ = (CheckConstraint("role in ('annotator', 'admin')", name="ck_role"),)


class Prompt(Base):
    __tablename__ = "prompts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    messages: Mapped[str] = mapped_column(Text)  # JSON list of {"role", "content"}
    source: Mapped[str] = mapped_column(String(500), default="")
    meta: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Response(Base):
    __tablename__ = "responses"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(500))
    settings: Mapped[str] = mapped_column(Text, default="{}")  # JSON generation settings
    text: Mapped[str] = mapped_column(Text)
    text_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    __table_args__ = (UniqueConstraint("prompt_id", "model", "text_hash", name="uq_response"),)


class Comparison(Base):
    __tablename__ = "comparisons"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    response_a_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"))
    response_b_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"))
    overlap: Mapped[int] = mapped_column(Integer, default=1)
    label_count: Mapped[int] = mapped_column(Integer, default=0)
    tag: Mapped[str] = mapped_column(String(200), default="")  # e.g. "generate", "import:hh", "eval:run1"
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    __table_args__ = (
        UniqueConstraint("response_a_id", "response_b_id", name="uq_comparison"),
        CheckConstraint("response_a_id < response_b_id", name="ck_canonical"),
        CheckConstraint("label_count <= overlap", name="ck_overlap"),
        Index("ix_comparisons_open", "label_count", "overlap"),
        # next_pair walks open comparisons in this order and stops at the first one open to the
        # caller; partial, so finished pairs cost nothing (5 us vs 4 ms at 50k pairs, 90% done).
        Index(
            "ix_comparisons_next", label_count.desc(), "id",
            sqlite_where=label_count < overlap, postgresql_where=label_count < overlap,
        ),
    )


class Label(Base):
    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    choice: Mapped[str] = mapped_column(String(8))  # canonical: A = response_a
    strength: Mapped[str | None] = mapped_column(String(8), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    __table_args__ = (
        UniqueConstraint("comparison_id", "annotator_id", name="uq_label"),
        CheckConstraint("choice in ('A', 'B', 'tie', 'both_bad')", name="ck_choice"),
        CheckConstraint("strength is null or strength in ('slight', 'clear')", name="ck_strength"),
    )


class Assignment(Base):
    __tablename__ = "assignments"
    comparison_id: Mapped[int] = mapped_column(
        ForeignKey("comparisons.id", ondelete="CASCADE"), primary_key=True
    )
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), primary_key=True)
    swapped: Mapped[bool] = mapped_column(Boolean, default=False)  # shown A = canonical B
    status: Mapped[str] = mapped_column(String(8), default="open")  # open | skipped | done
    shown_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    __table_args__ = (
        Index("ix_assignments_annotator", "annotator_id", "status"),
        Index("ix_assignments_open", "comparison_id", "status", "expires_at"),
    )


# --- security tables (annotate/security.py) -------------------------------------------------------
# Kept in the database, not in memory, so that every app process serving one database sees the
# same sessions and the same failed sign-ins. Added in schema version 2 (migration
# annotate/migrations/versions/0002_sessions_and_jobs.py).


class WebSession(Base):
    """A signed-in browser or script: the sha256 of its cookie token (never the token itself)."""

    __tablename__ = "web_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class LoginFailure(Base):
    """One failed sign-in, counted against a key: ``user:<sha256 of the name>`` or ``addr:<ip>``."""

    __tablename__ = "login_failures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    __table_args__ = (Index("ix_login_failures_key_at", "key", "at"),)


# --- end of security tables -----------------------------------------------------------------------


# --- jobs (the admin console's background work) ---------------------------------------------------
# Added in schema version 2 (migration 0002_sessions_and_jobs.py); see annotate/jobs.py for what
# the columns mean and how a status is recovered.

JOB_STATUSES = ("running", "succeeded", "failed", "cancelled", "lost")


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # generate | reward_train | ppo | evaluate | ...
    command: Mapped[str] = mapped_column(Text)  # JSON list: the CLI arguments after `rewardlab`
    config: Mapped[str] = mapped_column(Text, default="{}")  # JSON: the form's values, as given
    status: Mapped[str] = mapped_column(String(16), default="running")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the wrapper; its process group
    proc_start: Mapped[float | None] = mapped_column(Float, nullable=True)  # the pid's start time (epoch s)
    folder: Mapped[str] = mapped_column(Text, default="")  # job folder: log.txt, exit_code
    out: Mapped[str] = mapped_column(Text, default="")  # the artifact folder the job writes
    created_by: Mapped[str] = mapped_column(String(200), default="")
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    __table_args__ = (
        CheckConstraint(
            "status in ('running', 'succeeded', 'failed', 'cancelled', 'lost')", name="ck_job_status"
        ),
        Index("ix_jobs_kind", "kind", "id"),
    )


# --- active learning and gold pairs (issue 7: annotate/strategies.py, annotate/refresh.py, annotate/gold.py)
# A separate block on purpose: four new tables that nothing above refers to, so a migration adds
# them alone (tables ``response_features``, ``pair_priorities``, ``gold_pairs``, ``gold_answers``).


class ResponseFeature(Base):
    """A reply's frozen reward-backbone features (float32 bytes), cached so a refresh is milliseconds."""

    __tablename__ = "response_features"
    response_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), primary_key=True)
    featurizer: Mapped[str] = mapped_column(String(200), primary_key=True)  # e.g. all-minilm-l6-v2@128
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class PairPriority(Base):
    """How soon an open comparison should be labelled (higher first), from the latest refresh."""

    __tablename__ = "pair_priorities"
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"), primary_key=True)
    priority: Mapped[float] = mapped_column(Float)
    strategy: Mapped[str] = mapped_column(String(32))
    refreshed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class GoldPair(Base):
    """A control pair with a known answer (canonical: ``A`` = response_a). Its comparison has overlap 0."""

    __tablename__ = "gold_pairs"
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"), primary_key=True)
    answer: Mapped[str] = mapped_column(String(8))
    __table_args__ = (CheckConstraint("answer in ('A', 'B')", name="ck_gold_answer"),)


class GoldAnswer(Base):
    """One annotator's answer to a gold pair (canonical), and whether it matched."""

    __tablename__ = "gold_answers"
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"), primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), primary_key=True)
    choice: Mapped[str] = mapped_column(String(8))
    correct: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# --- end of active learning and gold pairs -------------------------------------------------------


class Store:
    """A connection to one annotation database. Thread-safe; share one per process."""

    def __init__(self, url: str, init_schema: bool = True):
        self.url = url
        try:
            parsed = make_url(url)
        except Exception:
            raise RewardlabError(f"not a database URL: {url!r} (e.g. sqlite:///path.db or postgresql+psycopg://...)") from None
        self.shown_url = parsed.render_as_string(hide_password=True)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self._write_lock = threading.Lock() if self.is_sqlite else None
        kwargs: dict = {}
        if self.is_sqlite:
            database = parsed.database or ""
            if database and database != ":memory:":
                folder = Path(database).expanduser().resolve().parent
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise RewardlabError(
                        f"cannot create the database folder {folder}: {exc.strerror}; "
                        "choose a writable --db path or --workspace"
                    ) from None
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 20
        try:
            self.engine = create_engine(url, **kwargs)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise RewardlabError(f"cannot use database URL '{self.shown_url}': {exc}") from None
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self._write_engine = self.engine.execution_options(rewardlab_write=True)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self._write_engine, expire_on_commit=False)
        if init_schema:
            self._init_schema()

    def _init_schema(self) -> None:
        """Build a new database from the models, or check that an existing one is current.

        An older schema is refused with the command that upgrades it (``annotate/migrate.py``):
        upgrades are a deliberate step, taken once, not something each app process races to do.
        """
        from annotate.migrate import lock_schema, read_version, stamp_head

        try:
            with self._write_lock_ctx(), self._write_engine.begin() as conn:
                lock_schema(conn)
                version, _ = read_version(conn)
                if version is None and not inspect(conn).has_table("meta"):
                    Base.metadata.create_all(conn)
                    conn.execute(insert(Meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
                    stamp_head(conn)
                    return
        except OperationalError as exc:
            raise self.open_error(exc) from None
        if version == SCHEMA_VERSION:
            return
        if version is None:
            raise RewardlabError(
                f"database {self.shown_url} has a 'meta' table without a schema version: "
                "not a rewardlab database, or a damaged one"
            )
        hint = (f"run `rewardlab db upgrade --db {self.shown_url}` (back it up first, see docs/deploy.md)"
                if version < SCHEMA_VERSION else "upgrade rewardlab or use another --db")
        raise RewardlabError(
            f"database {self.shown_url} has schema version {version}; this rewardlab reads version "
            f"{SCHEMA_VERSION}: {hint}"
        )

    def open_error(self, exc: OperationalError) -> RewardlabError:
        """The one-line error for a database that cannot be reached or opened."""
        hint = "is the path writable?" if self.is_sqlite else "is the server running, and the URL right?"
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(getattr(exc, "orig", exc)).strip() else exc
        return RewardlabError(f"cannot open database {self.shown_url}: {reason} ({hint})")

    @contextmanager
    def _write_lock_ctx(self):
        if self._write_lock is None:
            yield
        else:
            with self._write_lock:
                yield

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session (a consistent snapshot on SQLite WAL)."""
        with self._read() as s:
            yield s

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed on success, rolled back whole on any error."""
        with self._write_lock_ctx():
            with self._write.begin() as s:
                yield s

    def schema_version(self) -> int:
        with self.read() as s:
            return int(s.get(Meta, "schema_version").value)

    def close(self) -> None:
        self.engine.dispose()

    # --- bulk writes used by imports and generation -------------------------------------------

    def add_prompts(self, records, source: str = "") -> tuple[int, int]:
        """Insert prompt records (``rewardlab.formats.PromptRecord``) in one transaction.

        Returns (added, duplicates); a duplicate is a prompt already stored or repeated in the
        input. Nothing is written if anything fails.
        """
        added = dup = 0
        with self.write() as s:
            seen = set()
            keys = [r.key() for r in records]
            existing = set()
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                existing.update(s.scalars(select(Prompt.key).where(Prompt.key.in_(chunk))))
            for rec, key in zip(records, keys):
                if key in existing or key in seen:
                    dup += 1
                    continue
                seen.add(key)
                s.add(
                    Prompt(
                        key=key,
                        messages=json.dumps(rec.messages, ensure_ascii=False),
                        source=rec.source or source,
                        meta=json.dumps(rec.meta or {}, ensure_ascii=False, default=str),
                    )
                )
                added += 1
        return added, dup

    def prompt_id_for(self, s: Session, record, source: str = "") -> int:
        """The id of a prompt record, inserting it when new (inside the caller's transaction)."""
        key = record.key()
        pid = s.scalar(select(Prompt.id).where(Prompt.key == key))
        if pid is None:
            p = Prompt(
                key=key,
                messages=json.dumps(record.messages, ensure_ascii=False),
                source=record.source or source,
                meta=json.dumps(record.meta or {}, ensure_ascii=False, default=str),
            )
            s.add(p)
            s.flush()
            pid = p.id
        return pid

    def response_id_for(self, s: Session, prompt_id: int, model: str, text: str, settings=None) -> int:
        """The id of a response, inserting it when new (inside the caller's transaction)."""
        h = text_hash(text)
        rid = s.scalar(
            select(Response.id).where(
                Response.prompt_id == prompt_id, Response.model == model, Response.text_hash == h
            )
        )
        if rid is None:
            r = Response(
                prompt_id=prompt_id,
                model=model,
                settings=json.dumps(settings or {}, sort_keys=True),
                text=text,
                text_hash=h,
            )
            s.add(r)
            s.flush()
            rid = r.id
        return rid

    def comparison_for(
        self, s: Session, prompt_id: int, rid1: int, rid2: int, overlap: int, tag: str = ""
    ) -> tuple[int, bool, bool]:
        """The comparison of two responses, created when new.

        Returns (comparison id, created, flipped) where flipped means rid1 is canonical B.
        """
        if rid1 == rid2:
            raise ValueError("a comparison needs two distinct responses")
        a, b = sorted((rid1, rid2))
        cid = s.scalar(
            select(Comparison.id).where(Comparison.response_a_id == a, Comparison.response_b_id == b)
        )
        created = cid is None
        if created:
            c = Comparison(prompt_id=prompt_id, response_a_id=a, response_b_id=b, overlap=overlap, tag=tag)
            s.add(c)
            s.flush()
            cid = c.id
        return cid, created, rid1 != a


def _configure_sqlite(engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # transactions are begun explicitly below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        write = conn.get_execution_options().get("rewardlab_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
