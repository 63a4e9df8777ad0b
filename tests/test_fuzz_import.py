"""The import parsers under hostile input (hypothesis): rows or a clear RewardlabError, never a
crash, and never a half import.

Each property runs a bounded number of examples (``FUZZ``) so the file adds seconds, not minutes;
``HYPOTHESIS_PROFILE=long`` runs many more when hunting.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from annotate.importing import import_pairs, import_prompts
from annotate.store import Annotator, Comparison, Label, Prompt, Response, Store
from rewardlab.errors import RewardlabError
from rewardlab.formats import load_preferences, load_prompts

settings.register_profile("default", max_examples=60, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FUZZ = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

EXTENSIONS = (".jsonl", ".json", ".csv")
FIELDS = ("prompt", "chosen", "rejected", "margin", "messages", "conversations", "instruction", "input",
          "question", "text", "role", "content", "from", "value")
TABLES = (Prompt, Response, Comparison, Label, Annotator)


def load(path: Path, kind: str):
    """A loader's result, or None when it refused the input with a RewardlabError."""
    try:
        if kind == "prompts":
            return load_prompts(str(path))
        return load_preferences(str(path), skip_invalid=True)
    except RewardlabError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip(), "the error must be one clear line"
        return None


def write(folder: Path, ext: str, data: bytes) -> Path:
    path = folder / f"input{ext}"
    path.write_bytes(data)
    return path


# --- any bytes ------------------------------------------------------------------------------------

@FUZZ
@given(data=st.binary(max_size=1500), ext=st.sampled_from(EXTENSIONS), kind=st.sampled_from(["prompts", "pairs"]))
@example(data=b"[" * 5000, ext=".json", kind="prompts")  # nesting deeper than Python's recursion limit
@example(data=b'"0\n0"\r\n', ext=".csv", kind="pairs")  # a header cell with a newline
@example(data=b'{"prompt": "\\ud800 lone surrogate"}', ext=".jsonl", kind="prompts")
@example(data=b'{"prompt": "ok", "x": "\\udfff"}', ext=".jsonl", kind="prompts")
@example(data=b'{"prompt":"a","chosen":"b","rejected":"c","margin":1e999}', ext=".jsonl", kind="pairs")
@example(data=b"\xef\xbb\xbfprompt\n\x00", ext=".csv", kind="prompts")
@example(data=b'chosen,rejected\n"[{""role"": 1}]",x', ext=".csv", kind="pairs")
def test_any_bytes_give_rows_or_a_clear_error(tmp_path, data, ext, kind):
    load(write(tmp_path, ext, data), kind)


# --- near-valid structured input ------------------------------------------------------------------

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30) | st.sampled_from(
    ["", " ", "\n\nHuman: hi\n\nAssistant: yo", "\n\nAssistant:", "User: a\n\nAssistant: b\n\nUser: c",
     "System: s\n\nHuman: h", "<script>x</script>", "\x00", "[{", '[{"role": "user"}]'])
_message = st.fixed_dictionaries({}, optional={
    "role": st.sampled_from(["user", "assistant", "system", "human", "gpt", "USER", "tool"]) | _text | st.none(),
    "content": _text | st.none() | st.integers(), "from": _text, "value": _text,
})
_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _text | st.lists(_message, max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FIELDS), inner, max_size=3),
    max_leaves=8,
)
_row = st.dictionaries(st.sampled_from(FIELDS) | _text, _value, max_size=5)


@st.composite
def near_valid_file(draw):
    """(extension, bytes): rows of known fields with odd values, then maybe cut or corrupted."""
    ext = draw(st.sampled_from(EXTENSIONS))
    rows = draw(st.lists(_row, min_size=0, max_size=6))
    if ext == ".csv":
        header = draw(st.lists(st.sampled_from(FIELDS) | _text, min_size=1, max_size=4))
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        for row in rows:
            cells = [row.get(h, "") for h in header]
            w.writerow([c if isinstance(c, str) else json.dumps(c) for c in cells])
        text = buf.getvalue()
    elif ext == ".json" and draw(st.booleans()):
        text = json.dumps(rows, ensure_ascii=draw(st.booleans()))
    else:
        text = "\n".join(json.dumps(r, ensure_ascii=draw(st.booleans())) for r in rows)
    data = text.encode("utf-8")
    mutation = draw(st.sampled_from(["none", "cut", "insert", "flip"]))
    if data and mutation == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif mutation == "insert":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b",", b'"', b"\n", b"{", b"]", b"\\u", b"\xff", b"\x00", b"\r"])) + data[at:]
    elif data and mutation == "flip":
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    return ext, data


@FUZZ
@given(case=near_valid_file(), kind=st.sampled_from(["prompts", "pairs"]))
def test_near_valid_files_give_rows_or_a_clear_error(tmp_path, case, kind):
    ext, data = case
    load(write(tmp_path, ext, data), kind)


# --- imports are all or nothing -------------------------------------------------------------------

def _counts(store: Store) -> dict:
    with store.read() as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t)) for t in TABLES}


@pytest.fixture
def fuzz_store(tmp_path):
    s = Store("sqlite:///" + str(tmp_path / "fuzz.db"))
    yield s
    s.close()


@FUZZ
@given(case=near_valid_file(), kind=st.sampled_from(["prompts", "pairs"]), skip=st.booleans())
@example(case=(".jsonl", b'{"prompt": "fine"}\n{"prompt": "bad \\ud800"}'), kind="prompts", skip=False)
@example(case=(".jsonl", b'{"prompt":"p","chosen":"a","rejected":"b"}\n{"prompt":"q","chosen":"c","rejected":"\\udc00"}'),
         kind="pairs", skip=False)
def test_an_import_is_whole_or_nothing(tmp_path, fuzz_store, case, kind, skip):
    ext, data = case
    path = write(tmp_path, ext, data)
    before = _counts(fuzz_store)
    try:
        if kind == "prompts":
            result = import_prompts(fuzz_store, str(path), skip_invalid=skip)
        else:
            result = import_pairs(fuzz_store, str(path), skip_invalid=skip)
    except RewardlabError:
        assert _counts(fuzz_store) == before, "a refused import left rows behind"
        return
    after = _counts(fuzz_store)
    if kind == "prompts":
        assert after["prompts"] - before["prompts"] == result["added"]
    else:
        assert after["labels"] - before["labels"] == result["added"]
        assert after["comparisons"] - before["comparisons"] == result["added"]


def test_fuzzing_can_see_a_good_file(tmp_path):
    """The control: the same loaders do return rows for a well-formed file."""
    path = write(tmp_path, ".jsonl", b'{"prompt": "hi", "chosen": "a", "rejected": "b"}\n')
    assert len(load(path, "prompts").records) == 1
    assert len(load(path, "pairs").records) == 1


@pytest.mark.parametrize("data, ext, message", [
    (b"[" * 5000, ".json", "input.json:line 1: invalid JSON (nested deeper than 64 levels"),
    (b'{"prompt": "ok"}\n{"prompt": "\\ud800 x"}', ".jsonl", "input.jsonl:row 2: invalid JSON (invalid text: a lone surrogate \\ud800"),
    (b'{"prompt": "ok", "meta": ' + b"[" * 70 + b"]" * 70 + b"}", ".jsonl", "row 1: invalid JSON (nested deeper than 64"),
])
def test_what_the_fuzzer_found_is_refused_clearly(tmp_path, data, ext, message):
    """Found by the properties above: these used to raise RecursionError / UnicodeEncodeError."""
    with pytest.raises(RewardlabError) as err:
        load_prompts(str(write(tmp_path, ext, data)))
    assert message in str(err.value)
