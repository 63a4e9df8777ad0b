"""PPO's prompts: read from anywhere rewardlab reads prompts, rendered and tokenized for the policy.

Sources:

* a file (``.jsonl`` / ``.json`` / ``.csv``), a ``datasets`` folder (``folder:split``) or a hub
  dataset (``owner/name[:split]``), read by ``rewardlab.formats.load_prompts``: prompt columns,
  chat logs, and preference datasets (their prompts; HH-RLHF transcripts included);
* the annotation store, as an SQLAlchemy URL (``sqlite:///path/rewardlab.db``,
  ``postgresql+psycopg://...``) or a ``.db`` / ``.sqlite`` file. Its ``prompts`` table is read
  with plain SQLAlchemy Core (table ``prompts``, column ``messages`` = JSON message list), because
  ``train`` does not import the ``annotate`` stage.

Each prompt is rendered with the policy's chat template (``format_prompt``: the generation prompt
is appended), tokenized with ``add_special_tokens=False`` (the template already holds any BOS), and
cut from the left to ``max_prompt_length`` tokens; cut prompts are counted. Identical prompts are
kept once. The result is a ``datasets.Dataset`` with one column, ``input_ids``, which is what TRL's
PPOTrainer takes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rewardlab.errors import RewardlabError
from rewardlab.formats import ROLES, PromptRecord, load_prompts
from rewardlab.models import format_prompt

STORE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


@dataclass
class PromptStats:
    """What happened to the prompts on their way to PPO (saved in the run summary)."""

    source: str
    """Where they came from, as given."""
    prompts: int
    """Prompts in the dataset PPO trains on."""
    duplicates: int
    """Identical prompts dropped (a preference dataset repeats each prompt per pair)."""
    truncated: int
    """Prompts longer than max_prompt_length whose beginning was cut."""
    max_prompt_length: int
    """The limit, in tokens."""
    longest: int
    """Longest prompt in tokens before cutting."""
    mean_length: float
    """Mean prompt length in tokens after cutting."""

    def as_dict(self) -> dict:
        return asdict(self)


def is_store(source: str) -> bool:
    """True if ``source`` names an annotation store (an SQLAlchemy URL or an SQLite file)."""
    return "://" in source or source.startswith("env:") or Path(source).suffix.lower() in STORE_SUFFIXES


def read_store_prompts(url: str) -> list[list[dict]]:
    """The message lists of every prompt in an annotation store, oldest first."""
    from sqlalchemy import MetaData, Table, create_engine, select
    from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError

    if url.startswith("env:"):
        from rewardlab.workspace import db_url

        url = db_url(url)
    if "://" not in url:
        path = Path(url).expanduser()
        if not path.is_file():
            raise RewardlabError(f"--prompts {url}: no such database file")
        url = "sqlite:///" + str(path.resolve())
    try:
        engine = create_engine(url)
    except (SQLAlchemyError, ImportError, ValueError) as e:
        raise RewardlabError(f"--prompts {url}: not a usable database URL ({e})") from None
    try:
        with engine.connect() as conn:
            table = Table("prompts", MetaData(), autoload_with=conn)
            if "messages" not in table.c:
                raise RewardlabError(f"{url}: table 'prompts' has no 'messages' column; not a rewardlab store")
            order = table.c.id if "id" in table.c else table.c.messages
            rows = conn.execute(select(table.c.messages).order_by(order)).scalars().all()
    except NoSuchTableError:
        raise RewardlabError(
            f"{url}: no 'prompts' table; not a rewardlab annotation store (import prompts with "
            "`rewardlab prompts import`)"
        ) from None
    except SQLAlchemyError as e:
        raise RewardlabError(f"{url}: cannot read the prompts ({' '.join(str(e).split())[:200]})") from None
    finally:
        engine.dispose()
    out = []
    for n, raw in enumerate(rows, 1):
        try:
            messages = json.loads(raw)
        except (TypeError, ValueError):
            messages = None
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages
        )
        if not ok or messages[-1]["role"] != "user":
            raise RewardlabError(
                f"{url}: prompts row {n}: 'messages' must be a JSON list of {{role, content}} ending with a user turn"
            )
        out.append([{"role": m["role"], "content": m["content"]} for m in messages])
    return out


def read_prompts(source: str) -> list[list[dict]]:
    """The prompts (message lists) of ``source``, in order, duplicates included."""
    source = str(source)
    if is_store(source):
        return read_store_prompts(source)
    return [record.messages for record in load_prompts(source).records]


def build_prompt_dataset(source: str, tokenizer, max_prompt_length: int):
    """(``datasets.Dataset`` with ``input_ids``, ``PromptStats``) for PPO on ``tokenizer``'s model."""
    from datasets import Dataset

    raw = read_prompts(source)
    seen, prompts = set(), []
    for messages in raw:
        key = PromptRecord(messages=messages).key()
        if key not in seen:
            seen.add(key)
            prompts.append(messages)
    if not prompts:
        raise RewardlabError(f"--prompts {source}: no prompts; give a prompt file, dataset or store with prompts")
    texts = [format_prompt(tokenizer, messages) for messages in prompts]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    longest = max(len(ids) for ids in encoded)
    truncated = sum(len(ids) > max_prompt_length for ids in encoded)
    encoded = [ids[-max_prompt_length:] for ids in encoded]
    if any(not ids for ids in encoded):
        raise RewardlabError(f"--prompts {source}: a prompt rendered to no tokens; check the tokenizer")
    stats = PromptStats(
        source=str(source),
        prompts=len(encoded),
        duplicates=len(raw) - len(prompts),
        truncated=truncated,
        max_prompt_length=max_prompt_length,
        longest=longest,
        mean_length=round(sum(map(len, encoded)) / len(encoded), 1),
    )
    return Dataset.from_dict({"input_ids": encoded}), stats
