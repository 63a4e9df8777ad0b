"""Prompt and preference records: the formats every stage exchanges, their loaders and TRL converters.

A prompt is always a conversation that ends with a user turn (``[{"role": "user", "content": ...}]``
for a single-turn prompt). A preference is a prompt, a chosen reply and a rejected reply.

Loaders read a ``.jsonl`` / ``.json`` / ``.csv`` file, a ``datasets`` folder (``save_to_disk``,
``folder:split`` for one split of a DatasetDict) or a hub dataset (``owner/name[:split]``). They are
strict by default: the first bad row raises :class:`RewardlabError` naming the file and row; with
``skip_invalid=True`` bad rows are collected in ``LoadResult.rejected`` instead. Rows are numbered
from 1: in JSONL the row number is the line number; in a JSON array, the element; in CSV and
datasets, the data row (the CSV header is not counted). File-level problems always raise.

Converters write TRL's preference formats (https://huggingface.co/docs/trl/dataset_formats):
explicit (``prompt``/``chosen``/``rejected`` texts), implicit (``chosen``/``rejected`` full texts in
HH-RLHF transcript form) and conversational (message lists); ``from_trl_rows`` reads all three back.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import tempfile
import unicodedata
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from rewardlab.errors import RewardlabError

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}

MAX_TEXT_CHARS = 100_000  # a prompt (all turns together) or a reply longer than this is rejected
ROLES = ("system", "user", "assistant")
STYLES = ("explicit", "implicit", "conversational", "auto")
FILE_TYPES = (".jsonl", ".json", ".csv")
SUPPORTED = ".jsonl, .json or .csv file, a datasets folder (save_to_disk) or a hub name owner/name[:split]"
SKIP_HINT = "use --skip-invalid to import the valid rows and list the rejected ones"
PROMPT_FIELDS = ("prompt", "messages", "conversations", "instruction", "question", "text")

_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}
_HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_TEXT_TURN = re.compile(r"\n\n(System|User|Assistant):[ \t]?")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# --- records ------------------------------------------------------------------------------------


@dataclass
class PromptRecord:
    messages: list[dict]
    """The conversation so far, ending with a user turn."""
    source: str = ""
    """Where the prompt came from (a set name); loaders leave it empty for the caller to fill."""
    meta: dict = field(default_factory=dict)
    """The row's other columns (category, ids, ...)."""

    @property
    def text(self) -> str:
        """The last user message."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")

    def key(self) -> str:
        """A stable hash of the normalized messages (sha256 of canonical JSON), for duplicates."""
        norm = [{"role": m["role"], "content": _normalize(m["content"])} for m in self.messages]
        blob = json.dumps(norm, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class PreferenceRecord:
    prompt: list[dict]
    """The conversation the two replies answer, ending with a user turn."""
    chosen: str
    """The preferred assistant reply."""
    rejected: str
    """The other assistant reply."""
    margin: float | None = None
    """How much better chosen is (TRL RewardTrainer's ``margin``), if known."""
    meta: dict = field(default_factory=dict)
    """The row's other columns."""


@dataclass
class LoadResult:
    records: list
    """PromptRecord or PreferenceRecord objects, in file order."""
    rejected: list[tuple[str, str]] = field(default_factory=list)
    """(location like ``file.jsonl:row 7``, reason) for each row left out with skip_invalid."""


def _normalize(text: str) -> str:
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n")).strip()


# --- validation (each raises RewardlabError(reason); loaders add the location) ----------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "text", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _check_text(text: Any, what: str) -> str:
    if not isinstance(text, str):
        raise RewardlabError(f"'{what}' must be text, got {_kind(text)}")
    if len(text) > MAX_TEXT_CHARS:
        raise RewardlabError(f"{what} too long ({len(text):,} characters; the limit is {MAX_TEXT_CHARS:,})")
    if "\x00" in text:
        raise RewardlabError(f"NUL byte in {what}")
    if not text.strip():
        raise RewardlabError(f"empty {what}")
    return text


def _messages(value: Any, what: str) -> list[dict]:
    """A list of {"role", "content"} messages (roles human/gpt and keys from/value accepted)."""
    if not isinstance(value, list):
        raise RewardlabError(f"'{what}' must be text or a list of messages, got {_kind(value)}")
    if not value:
        raise RewardlabError(f"empty {what}")
    out = []
    for i, m in enumerate(value, 1):
        if not isinstance(m, dict):
            raise RewardlabError(f"{what} message {i} must be an object with role and content, got {_kind(m)}")
        role, content = m.get("role", m.get("from")), m.get("content", m.get("value"))
        role = _ROLE_ALIASES.get(role.lower(), role.lower()) if isinstance(role, str) else role
        if role not in ROLES:
            raise RewardlabError(f"{what} message {i} has role {role!r}; use system, user or assistant")
        if role == "system" and i != 1:
            raise RewardlabError(f"{what} message {i}: a system turn may only come first")
        if not isinstance(content, str):
            raise RewardlabError(f"{what} message {i}: content must be text, got {_kind(content)}")
        out.append({"role": role, "content": content})
    return out


def _check_prompt(messages: list[dict]) -> list[dict]:
    if not messages or messages[-1]["role"] != "user":
        last = messages[-1]["role"] if messages else "nothing"
        raise RewardlabError(f"prompt must end with a user turn (it ends with {last})")
    total = sum(len(m["content"]) for m in messages)
    if total > MAX_TEXT_CHARS:
        raise RewardlabError(f"prompt too long ({total:,} characters; the limit is {MAX_TEXT_CHARS:,})")
    for m in messages[:-1]:
        _check_text(m["content"], f"{m['role']} turn in prompt")
    _check_text(messages[-1]["content"], "prompt")
    return messages


def _margin(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise RewardlabError("margin must be a number, got a boolean")
    try:
        margin = float(value)
    except (TypeError, ValueError):
        raise RewardlabError(f"margin must be a number, got {_kind(value)}") from None
    if not math.isfinite(margin):
        raise RewardlabError(f"margin must be a finite number, got {margin}")
    return margin


# --- transcripts and rendered prompts ----------------------------------------------------------


def parse_hh_transcript(text: str) -> list[dict]:
    """Turns of an HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") as messages.

    Leading whitespace is ignored, contents are stripped, a final empty assistant turn ("...Assistant:",
    the prompt convention) is dropped, and a leading "System: ..." segment becomes a system turn.
    """
    if not isinstance(text, str):
        raise RewardlabError(f"an HH-RLHF transcript must be text, got {_kind(text)}")
    body, out = text.lstrip(), []
    if body.startswith("System:"):
        end = body.find("\n\nHuman:")
        if end < 0:
            raise RewardlabError("not an HH-RLHF transcript: no '\\n\\nHuman:' turn after 'System:'")
        out.append({"role": "system", "content": body[len("System:") : end].strip()})
        body = body[end:].lstrip()
    parts = _HH_TURN.split("\n\n" + body)
    if parts[0].strip() or len(parts) < 3:
        raise RewardlabError("not an HH-RLHF transcript: it must start with 'Human:'")
    for speaker, content in zip(parts[1::2], parts[2::2]):
        out.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    if out[-1]["role"] == "assistant" and not out[-1]["content"]:
        out.pop()
    return out


def render_hh_transcript(messages: list[dict]) -> str:
    """The inverse of parse_hh_transcript: "\\n\\nHuman: ...\\n\\nAssistant: ..." (system first)."""
    names = {"system": "System", "user": "Human", "assistant": "Assistant"}
    return "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in messages)


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def split_hh_pair(chosen: str, rejected: str) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen reply, rejected reply) of two HH-RLHF transcripts.

    They are split at the last "\\n\\nAssistant:" both share; replies are stripped.
    """
    for what, text in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str):
            raise RewardlabError(f"'{what}' must be text or a list of messages, got {_kind(text)}")
        if len(text) > 2 * MAX_TEXT_CHARS:
            raise RewardlabError(f"{what} too long ({len(text):,} characters; the limit is {MAX_TEXT_CHARS:,})")
    idx = chosen.rfind(_HH_ASSISTANT, 0, _common_prefix_len(chosen, rejected))
    if idx < 0:
        raise RewardlabError(
            "chosen and rejected share no prompt ending in '\\n\\nAssistant:'; "
            "give a 'prompt' column or HH-RLHF transcripts"
        )
    start = idx + len(_HH_ASSISTANT)
    replies = chosen[start:].strip(), rejected[start:].strip()
    if any("\n\nHuman:" in r for r in replies):
        raise RewardlabError("chosen and rejected differ before their last assistant turn")
    return parse_hh_transcript(chosen[:idx]), replies[0], replies[1]


def render_prompt_text(messages: list[dict]) -> str:
    """A prompt as one text: a single user turn is its content; otherwise "User: ...\\n\\nAssistant: ..."."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def parse_prompt_text(text: str) -> list[dict]:
    """The inverse of render_prompt_text; HH-RLHF prompts ("\\n\\nHuman: ...") are understood too.

    Text that is not a rendered conversation ending with a user turn is one user message, as is.
    """
    body = text.lstrip()
    try:
        if body.startswith("Human:") or (body.startswith("System:") and "\n\nHuman:" in body):
            msgs = parse_hh_transcript(body)
        elif body.startswith(("User:", "System:")) and ("\n\nAssistant:" in body or "\n\nUser:" in body):
            parts = _TEXT_TURN.split("\n\n" + body)
            msgs = [{"role": r.lower(), "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2])]
            if msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
                msgs.pop()
            if any(m["role"] == "system" for m in msgs[1:]):
                msgs = []
        else:
            msgs = []
    except RewardlabError:
        msgs = []
    if msgs and msgs[-1]["role"] == "user":
        return msgs
    return [{"role": "user", "content": text}]


# --- one row -> one record ---------------------------------------------------------------------


def _prompt_value(value: Any, what: str, conversation: bool = False) -> list[dict]:
    if isinstance(value, str):
        _check_text(value, what if what == "prompt" else f"prompt ('{what}')")
        return parse_prompt_text(value)
    msgs = _messages(value, what)
    if conversation and msgs[-1]["role"] == "assistant" and len(msgs) > 1:
        msgs = msgs[:-1]  # a chat log: the prompt is everything before the last reply
    return msgs


def _prompt_from_row(row: dict, field_name: str | None) -> PromptRecord:
    if field_name is not None:
        if field_name not in row:
            raise RewardlabError(f"missing field '{field_name}'")
        used = {field_name}
        msgs = _prompt_value(row[field_name], field_name, conversation=field_name in ("messages", "conversations"))
    elif "prompt" in row:
        used, msgs = {"prompt"}, _prompt_value(row["prompt"], "prompt")
    elif "messages" in row or "conversations" in row:
        key = "messages" if "messages" in row else "conversations"
        used, msgs = {key}, _prompt_value(row[key], key, conversation=True)
    elif "chosen" in row and "rejected" in row:  # HH-RLHF or implicit conversational pair
        used, chosen = {"chosen", "rejected"}, row["chosen"]
        if isinstance(chosen, str):
            rejected = row["rejected"] if isinstance(row["rejected"], str) else ""
            idx = chosen.rfind(_HH_ASSISTANT, 0, _common_prefix_len(chosen, rejected))  # the shared prompt
            idx = idx if idx >= 0 else chosen.rfind(_HH_ASSISTANT)
            if idx < 0:
                raise RewardlabError("'chosen' is not an HH-RLHF transcript (no '\\n\\nAssistant:' turn)")
            msgs = parse_hh_transcript(chosen[:idx])
        else:
            msgs = _prompt_value(chosen, "chosen", conversation=True)
    elif "instruction" in row:
        used, msgs = {"instruction"}, _prompt_value(row["instruction"], "instruction")
        extra = row.get("input")
        if isinstance(extra, str) and extra.strip() and len(msgs) == 1:  # Alpaca: instruction + input
            used.add("input")
            msgs = [{"role": "user", "content": f"{msgs[0]['content']}\n\n{extra}"}]
    elif "question" in row or "text" in row:
        key = "question" if "question" in row else "text"
        used, msgs = {key}, _prompt_value(row[key], key)
    else:
        raise RewardlabError(
            f"missing field: no {', '.join(PROMPT_FIELDS)} or chosen/rejected column; name it with --field"
        )
    _check_prompt(msgs)
    return PromptRecord(messages=msgs, meta={k: v for k, v in row.items() if k not in used})


def _preference_from_row(row: dict) -> PreferenceRecord:
    if "chosen" not in row or "rejected" not in row:
        missing = " and ".join(f"'{k}'" for k in ("chosen", "rejected") if k not in row)
        raise RewardlabError(f"missing field {missing}")
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    margin = _margin(row.get("margin"))
    if isinstance(chosen, list) and isinstance(rejected, list):  # conversational
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise RewardlabError(f"'prompt' must be text or a list of messages, got {_kind(prompt)}")
        full_c, full_r = _messages(chosen, "chosen"), _messages(rejected, "rejected")
        if isinstance(prompt, list):
            pm = _messages(prompt, "prompt")
            full_c, full_r = pm + full_c, pm + full_r
        elif isinstance(prompt, str) and len(full_c) == 1 and len(full_r) == 1:
            pm = parse_prompt_text(_check_text(prompt, "prompt"))
            full_c, full_r = pm + full_c, pm + full_r
        for what, msgs in (("chosen", full_c), ("rejected", full_r)):
            if msgs[-1]["role"] != "assistant":
                raise RewardlabError(f"{what} must end with an assistant turn")
        if full_c[:-1] != full_r[:-1]:
            raise RewardlabError("chosen and rejected conversations differ before their last assistant turn")
        pm, c, r = full_c[:-1], full_c[-1]["content"].strip(), full_r[-1]["content"].strip()
    elif isinstance(chosen, str) and isinstance(rejected, str):
        if prompt is None:
            pm, c, r = split_hh_pair(chosen, rejected)
        else:
            pm = _prompt_value(prompt, "prompt")
            c, r = chosen.strip(), rejected.strip()
    else:
        for what, value in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(value, (str, list)):
                raise RewardlabError(f"'{what}' must be text or a list of messages, got {_kind(value)}")
        raise RewardlabError("'chosen' and 'rejected' must both be text or both be message lists")
    _check_prompt(pm)
    _check_text(c, "chosen")
    _check_text(r, "rejected")
    if c == r:
        raise RewardlabError("chosen identical to rejected")
    meta = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected", "margin")}
    return PreferenceRecord(prompt=pm, chosen=c, rejected=r, margin=margin, meta=meta)


# --- sources -> (location, row) ----------------------------------------------------------------


class _Unreadable:
    """A row that could not even be parsed (bad JSON, wrong cell count); carries the reason."""

    def __init__(self, reason: str):
        self.reason = reason


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise RewardlabError(
            f"{path}:line {line}: not UTF-8 (byte 0x{data[e.start]:02x} at byte offset {e.start}); "
            "re-save the file as UTF-8"
        ) from None


MAX_JSON_DEPTH = 64  # nesting deeper than this is no record (and would exhaust Python's stack)
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _loads(text: str) -> Any:
    """json.loads that also refuses what no store can hold: lone surrogates (``"\\ud800"``, not
    UTF-8) and absurd nesting. Raises json.JSONDecodeError for all of them."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError(f"nested deeper than {MAX_JSON_DEPTH} levels", text, 0) from None
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH or _SURROGATE.search(text):
        _check_json_value(value, text)
    return value


def _check_json_value(value: Any, text: str) -> None:
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise json.JSONDecodeError(f"nested deeper than {MAX_JSON_DEPTH} levels", text, 0)
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
            stack.extend((k, depth) for k in v)
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                raise json.JSONDecodeError(
                    f"invalid text: a lone surrogate \\u{ord(v[e.start]):04x} (not Unicode text)", text,
                    _SURROGATE.search(text).start(),
                ) from None


def _jsonl_rows(name: str, text: str) -> Iterator[tuple[str, Any]]:
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield f"{name}:row {n}", _loads(line)
        except json.JSONDecodeError as e:
            yield f"{name}:row {n}", _Unreadable(f"invalid JSON ({e.msg} at column {e.colno})")


def _json_rows(name: str, text: str) -> Iterator[tuple[str, Any]]:
    body = text.strip()
    if body.startswith("["):
        try:
            rows = _loads(body)
        except json.JSONDecodeError as e:
            raise RewardlabError(
                f"{name}:line {e.lineno}: invalid JSON ({e.msg} at column {e.colno}); fix the file, "
                "or write one JSON object per line (.jsonl)"
            ) from None
        return ((f"{name}:row {i}", row) for i, row in enumerate(rows, 1))
    try:
        return iter([(f"{name}:row 1", _loads(body))])  # one (pretty-printed) object
    except json.JSONDecodeError:
        return _jsonl_rows(name, text)  # JSON lines in a .json file, as datasets accepts


def _csv_rows(name: str, text: str) -> tuple[Iterator[tuple[str, Any]], list[str]]:
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, 64 * MAX_TEXT_CHARS))  # a too-long cell is a row error, not a crash
    try:
        records = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise RewardlabError(f"{name}: cannot read as CSV ({e}); check its quoting") from None
    finally:
        csv.field_size_limit(limit)
    header = [h.strip() for h in records[0]]

    def rows():
        for n, cells in enumerate(records[1:], 1):
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                yield f"{name}:row {n}", _Unreadable(
                    f"{len(cells)} cells but the header has {len(header)} columns (an unquoted comma?)"
                )
                continue
            row = dict(zip(header, cells))
            for k in ("prompt", "messages", "conversations", "chosen", "rejected"):
                v = row.get(k, "").strip()
                if v.startswith("[{") and v.endswith("}]"):  # a message list written as JSON
                    try:
                        row[k] = _loads(v)
                    except json.JSONDecodeError:
                        pass
            yield f"{name}:row {n}", row

    return rows(), header


def _dataset_rows(name: str, ds) -> tuple[Iterator[tuple[str, Any]], list[str]]:
    if len(ds) == 0:
        raise RewardlabError(f"{name}: the dataset has no rows; give one with records")
    return ((f"{name}:row {i}", row) for i, row in enumerate(ds, 1)), list(ds.column_names)


def _pick_split(name: str, dsd, split: str | None):
    splits = list(dsd.keys())
    pick = split or ("train" if "train" in splits else splits[0] if len(splits) == 1 else None)
    if pick not in dsd:
        raise RewardlabError(
            f"{name}: no split {pick or 'train'!r} (splits: {', '.join(splits)}); name one as {name}:SPLIT"
        )
    return dsd[pick]


def _open_rows(source: str) -> tuple[Iterator[tuple[str, Any]], list[str] | None]:
    """(rows as (location, value), column names for tabular sources or None)."""
    path, split = Path(source).expanduser(), None
    if not path.exists() and ":" in source:
        base, _, maybe_split = source.rpartition(":")
        if base and Path(base).expanduser().is_dir():
            path, split = Path(base).expanduser(), maybe_split
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception:
            raise RewardlabError(
                f"{path}: not a datasets folder (written by save_to_disk); give a {SUPPORTED}"
            ) from None
        if isinstance(ds, datasets.DatasetDict):
            ds = _pick_split(str(path), ds, split)
        elif split:
            raise RewardlabError(f"{path}: a dataset without splits; drop ':{split}'")
        return _dataset_rows(source, ds)
    ext = path.suffix.lower()
    if path.is_file():
        if ext not in FILE_TYPES:
            raise RewardlabError(f"{path}: unsupported file type '{ext or 'no extension'}'; give a {SUPPORTED}")
        text = _read_text(path)
        if not text.strip():
            raise RewardlabError(f"{path}: the file is empty; give a file with one record per row")
        if ext == ".csv":
            return _csv_rows(source, text)
        return (_jsonl_rows if ext == ".jsonl" else _json_rows)(source, text), None
    name, _, split = source.partition(":")
    if ext in FILE_TYPES or not _HUB_NAME.match(name):
        raise RewardlabError(f"{source}: no such file or folder; give a {SUPPORTED}")
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:
        cause = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise RewardlabError(
            f"cannot load dataset '{source}' from the hub (offline?) [{cause}]; give a local file or folder"
        ) from None
    return _dataset_rows(source, ds)


def _columns_hint(columns: list[str]) -> str:
    def one(c: str) -> str:  # a header cell may hold anything, newlines included: keep one line
        c = c if len(c) <= 40 else c[:40] + "..."
        return c if c.isprintable() else repr(c)

    shown = ", ".join(one(c) for c in columns[:12]) + (", ..." if len(columns) > 12 else "")
    return f"found: {shown or 'none'}"


def _load(source, parse_row, check_columns, skip_invalid: bool) -> LoadResult:
    source = os.fspath(source)
    rows, columns = _open_rows(source)
    if columns is not None:
        check_columns(source, columns)
    result, seen = LoadResult(records=[]), 0
    for loc, row in rows:
        seen += 1
        try:
            if isinstance(row, _Unreadable):
                raise RewardlabError(row.reason)
            if not isinstance(row, dict):
                raise RewardlabError(f"not a JSON object (got {_kind(row)})")
            record = parse_row(row)
        except RewardlabError as e:
            if not skip_invalid:
                raise RewardlabError(f"{loc}: {e} ({SKIP_HINT})") from None
            result.rejected.append((loc, str(e)))
            continue
        result.records.append(record)
    if not seen:
        raise RewardlabError(f"{source}: no data rows (only blank lines, a header or []); give a file with records")
    return result


# --- public loaders ----------------------------------------------------------------------------


def load_prompts(source: str, field: str | None = None, skip_invalid: bool = False) -> LoadResult:
    """Prompts from a file, datasets folder or hub dataset; ``field`` names the prompt column.

    Row shapes: {"prompt": text | messages}, {"messages": [...]} (a final assistant turn is dropped),
    instruction (+ input) / question / text columns, and HH-RLHF {"chosen", "rejected"} transcripts
    (the prompt is everything before the last "\\n\\nAssistant:"). Other columns go to ``meta``.
    """

    def check(name: str, columns: list[str]) -> None:
        header = " (the first line must be a header naming the columns)" if name.lower().endswith(".csv") else ""
        if field is not None and field not in columns:
            raise RewardlabError(f"{name}: no column '{field}' ({_columns_hint(columns)}); name one with --field{header}")
        if field is None and not (set(PROMPT_FIELDS) & set(columns) or {"chosen", "rejected"} <= set(columns)):
            raise RewardlabError(
                f"{name}: no prompt column (looked for {', '.join(PROMPT_FIELDS)}; {_columns_hint(columns)}); "
                f"name it with --field{header}"
            )

    return _load(source, lambda row: _prompt_from_row(row, field), check, skip_invalid)


def load_preferences(source: str, skip_invalid: bool = False) -> LoadResult:
    """Preference pairs: {prompt, chosen, rejected} (texts or TRL message lists), or HH-RLHF
    {chosen, rejected} transcripts split at the last "\\n\\nAssistant:" they share; optional margin.
    """

    def check(name: str, columns: list[str]) -> None:
        if not {"chosen", "rejected"} <= set(columns):
            header = " (the first line must be the header)" if name.lower().endswith(".csv") else ""
            raise RewardlabError(
                f"{name}: needs 'chosen' and 'rejected' columns ({_columns_hint(columns)}); rename them{header}"
            )

    return _load(source, _preference_from_row, check, skip_invalid)


# --- TRL converters ----------------------------------------------------------------------------


def to_trl_rows(records: Iterable[PreferenceRecord], style: str = "auto") -> list[dict]:
    """Rows in one of TRL's preference formats: explicit, implicit, conversational, or auto
    (conversational when any prompt is multi-turn or has a system turn, else explicit).
    A ``margin`` column is added when any record has one (missing margins become 0.0).
    """
    records = list(records)
    if style not in STYLES:
        raise RewardlabError(f"unknown TRL style {style!r}; use {', '.join(STYLES)}")
    if style == "auto":
        style = "conversational" if any(len(r.prompt) > 1 for r in records) else "explicit"
    with_margin = any(r.margin is not None for r in records)
    rows = []
    for r in records:
        if style == "explicit":
            # TRL joins prompt + reply with nothing between (its own examples write " blue."), so
            # replies get a leading space; readers strip it again.
            row = {
                "prompt": render_prompt_text(r.prompt),
                "chosen": _continuation(r.chosen),
                "rejected": _continuation(r.rejected),
            }
        elif style == "implicit":
            head = render_hh_transcript(r.prompt) + _HH_ASSISTANT
            row = {"chosen": f"{head} {r.chosen}", "rejected": f"{head} {r.rejected}"}
        else:
            row = {
                "prompt": [{"role": m["role"], "content": m["content"]} for m in r.prompt],
                "chosen": [{"role": "assistant", "content": r.chosen}],
                "rejected": [{"role": "assistant", "content": r.rejected}],
            }
        if with_margin:
            row["margin"] = float(r.margin) if r.margin is not None else 0.0
        rows.append(row)
    return rows


def _continuation(reply: str) -> str:
    return reply if reply[:1].isspace() else " " + reply


def to_trl_dataset(records: Iterable[PreferenceRecord], style: str = "auto"):
    """A ``datasets.Dataset`` that TRL's RewardTrainer accepts as it is (see to_trl_rows)."""
    import datasets

    rows = to_trl_rows(records, style)
    if not rows:
        raise RewardlabError("no preference records to convert; label or import some pairs first")
    return datasets.Dataset.from_list(rows)


def from_trl_rows(rows: Iterable[dict]) -> list[PreferenceRecord]:
    """PreferenceRecords from rows (or a Dataset) in any of TRL's three preference formats."""
    out = []
    for n, row in enumerate(rows, 1):
        try:
            if not isinstance(row, dict):
                raise RewardlabError(f"not an object (got {_kind(row)})")
            out.append(_preference_from_row(row))
        except RewardlabError as e:
            raise RewardlabError(f"TRL rows:row {n}: {e}; fix that row") from None
    return out


# --- JSONL helpers -----------------------------------------------------------------------------


def read_jsonl(path) -> list[dict]:
    """The objects of a JSONL file (blank lines skipped); a bad line raises with its row number."""
    path = Path(path)
    if not path.is_file():
        raise RewardlabError(f"{path}: no such file; check the path")
    rows = []
    for loc, row in _jsonl_rows(str(path), _read_text(path)):
        if isinstance(row, _Unreadable):
            raise RewardlabError(f"{loc}: {row.reason}; fix or remove that line")
        if not isinstance(row, dict):
            raise RewardlabError(f"{loc}: not a JSON object (got {_kind(row)}); fix or remove that line")
        rows.append(row)
    return rows


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays from datasets
        return value.tolist()
    return str(value)


def write_jsonl(path, rows: Iterable) -> Path:
    """Write rows (dicts or dataclasses) as JSONL, atomically: a temp file, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                row = asdict(row) if is_dataclass(row) and not isinstance(row, type) else row
                f.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
