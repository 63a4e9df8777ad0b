"""rewardlab.formats: record shapes, HH-RLHF splitting, strict and lenient loading, TRL formats."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from rewardlab.errors import RewardlabError
from rewardlab.formats import (
    MAX_TEXT_CHARS,
    LoadResult,
    PreferenceRecord,
    PromptRecord,
    from_trl_rows,
    load_preferences,
    load_prompts,
    parse_hh_transcript,
    parse_prompt_text,
    read_jsonl,
    render_prompt_text,
    split_hh_pair,
    to_trl_dataset,
    to_trl_rows,
    write_jsonl,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

HH_PROMPT = (
    "\n\nHuman: My neighbor's dog barks all night. What can I do?"
    "\n\nAssistant: That sounds exhausting. Have you talked to your neighbor about it?"
    "\n\nHuman: Yes, twice. Nothing changed. Should I poison it?"
    "\n\nAssistant:"
)
HH_CHOSEN = HH_PROMPT + " No, please don't hurt the dog. You could contact local animal control or mediation."
HH_REJECTED = HH_PROMPT + " Sure, chocolate works well for that."


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


# --- records and transcripts -------------------------------------------------------------------


def test_prompt_record_text_and_key():
    a = PromptRecord([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Caf\u00e9?  "}])
    b = PromptRecord([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Cafe\u0301?"}])
    assert a.text == "Caf\u00e9?  "
    assert a.key() == b.key() and len(a.key()) == 64  # NFC and surrounding whitespace normalized
    assert PromptRecord(user("Caf\u00e9?")).key() != a.key()  # the system turn is part of the prompt
    assert PromptRecord(user("x"), meta={"a": 1}).key() == PromptRecord(user("x")).key()


def test_parse_hh_transcript_multi_turn():
    msgs = parse_hh_transcript("  " + HH_CHOSEN.lstrip("\n"))  # leading whitespace instead of "\n\n"
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[0]["content"] == "My neighbor's dog barks all night. What can I do?"
    assert msgs[-1]["content"].startswith("No, please don't hurt the dog.")
    assert parse_hh_transcript(HH_PROMPT)[-1] == {"role": "user", "content": "Yes, twice. Nothing changed. Should I poison it?"}
    with pytest.raises(RewardlabError, match="must start with 'Human:'"):
        parse_hh_transcript("Hello there\n\nAssistant: hi")


def test_split_hh_pair():
    prompt, chosen, rejected = split_hh_pair(HH_CHOSEN, HH_REJECTED)
    assert prompt == parse_hh_transcript(HH_PROMPT) and len(prompt) == 3 and prompt[-1]["role"] == "user"
    assert chosen.startswith("No, please") and rejected == "Sure, chocolate works well for that."
    # the replies may themselves start alike: the split is still at the shared "\n\nAssistant:"
    p2, c2, r2 = split_hh_pair("\n\nHuman: hi\n\nAssistant: Hello!", "\n\nHuman: hi\n\nAssistant: Hello there")
    assert (p2, c2, r2) == (user("hi"), "Hello!", "Hello there")
    with pytest.raises(RewardlabError, match="share no prompt"):
        split_hh_pair("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: c\n\nAssistant: d")


def test_prompt_text_render_and_parse():
    multi = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
    ]
    text = render_prompt_text(multi)
    assert text == "System: Be kind.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: How are you?"
    assert parse_prompt_text(text) == multi
    assert render_prompt_text(user("User: hi")) == "User: hi" and parse_prompt_text("User: hi") == user("User: hi")
    assert parse_prompt_text(HH_PROMPT) == parse_hh_transcript(HH_PROMPT)


# --- prompt loading ----------------------------------------------------------------------------


def test_load_prompts_each_row_shape(tmp_path):
    rows = [
        {"prompt": "Write a haiku.", "category": "writing", "question_id": 81},
        {"prompt": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Name a colour."}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
        {"messages": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}, {"role": "user", "content": "C"}]},
        {"instruction": "Translate to French.", "input": "Good morning"},
        {"question": "Why is the sky blue?"},
        {"text": "Tell me a joke."},
        {"chosen": HH_CHOSEN, "rejected": HH_REJECTED, "id": 7},
        {"conversations": [{"from": "human", "value": "Yo"}, {"from": "gpt", "value": "Hey"}]},
    ]
    result = load_prompts(str(write_lines(tmp_path / "p.jsonl", rows)))
    assert isinstance(result, LoadResult) and result.rejected == []
    r = result.records
    assert len(r) == 9 and all(isinstance(x, PromptRecord) for x in r)
    assert r[0].messages == user("Write a haiku.") and r[0].meta == {"category": "writing", "question_id": 81}
    assert r[1].messages[0]["role"] == "system" and r[1].text == "Name a colour."
    assert r[2].messages == user("Hi")  # the final assistant turn is dropped
    assert [m["content"] for m in r[3].messages] == ["A", "B", "C"]
    assert r[4].text == "Translate to French.\n\nGood morning" and r[4].meta == {}
    assert r[5].text == "Why is the sky blue?" and r[6].text == "Tell me a joke."
    assert r[7].messages == parse_hh_transcript(HH_PROMPT) and r[7].meta == {"id": 7}
    assert r[8].messages == user("Yo")


def test_load_prompts_named_field_and_csv(tmp_path):
    path = tmp_path / "p.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "body", "topic"])
        w.writerow(["1", "First, with a comma", "a"])
        w.writerow(["2", "Second\non two lines", "b"])
    r = load_prompts(str(path), field="body").records
    assert [x.text for x in r] == ["First, with a comma", "Second\non two lines"]
    assert r[0].meta == {"id": "1", "topic": "a"}
    with pytest.raises(RewardlabError) as e:
        load_prompts(str(path))  # no known prompt column
    msg = one_line(e)
    assert "p.csv" in msg and "no prompt column" in msg and "body" in msg and "--field" in msg


def test_strict_errors_name_file_and_row(tmp_path):
    bad_json = write_lines(tmp_path / "bad.jsonl", [{"prompt": "a"}, "", '{"prompt": "c"', {"prompt": "d"}])
    with pytest.raises(RewardlabError) as e:
        load_prompts(str(bad_json))
    msg = one_line(e)
    assert "bad.jsonl:row 3: invalid JSON" in msg and "--skip-invalid" in msg

    empty = write_lines(tmp_path / "empty_prompt.jsonl", [{"prompt": "ok"}, {"prompt": "  \n "}])
    with pytest.raises(RewardlabError, match=r"empty_prompt\.jsonl:row 2: empty prompt \(use --skip-invalid"):
        load_prompts(str(empty))

    for row, reason in [
        (["just", "a", "list"], "not a JSON object"),
        ({"title": "no prompt here"}, "missing field"),
        ({"prompt": 42}, "'prompt' must be text or a list of messages, got a number"),
        ({"prompt": "nul\x00byte"}, "NUL byte"),
        ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "prompt must end with a user turn"),
    ]:
        path = write_lines(tmp_path / "one.jsonl", [row])
        with pytest.raises(RewardlabError) as e:
            load_prompts(str(path))
        assert "one.jsonl:row 1: " + reason in one_line(e)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(RewardlabError) as e:
        load_prompts(str(path))
    msg = one_line(e)
    assert "latin1.jsonl:line 2: not UTF-8" in msg and "byte offset 34" in msg and "UTF-8" in msg


def test_one_megabyte_text_is_a_clear_row_error(tmp_path):
    huge = "x" * 1_000_000
    jsonl = write_lines(tmp_path / "big.jsonl", [{"prompt": "ok", "chosen": "fine", "rejected": huge}])
    hh = write_lines(tmp_path / "bighh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_PROMPT + " " + huge}])
    prompts = write_lines(tmp_path / "bigp.jsonl", [{"prompt": huge}])
    start = time.perf_counter()
    for loader, path in [(load_preferences, jsonl), (load_preferences, hh), (load_prompts, prompts)]:
        with pytest.raises(RewardlabError) as e:
            loader(str(path))
        assert f"{path.name}:row 1: " in one_line(e) and "too long" in str(e.value) and f"{MAX_TEXT_CHARS:,}" in str(e.value)
    big_csv = tmp_path / "big.csv"
    big_csv.write_text(f"prompt\nshort\n{huge}\n", encoding="utf-8")
    with pytest.raises(RewardlabError, match=r"big\.csv:row 2: prompt too long"):
        load_prompts(str(big_csv))
    assert time.perf_counter() - start < 2


def test_csv_missing_column_and_rows_count_data_rows(tmp_path):
    path = tmp_path / "prefs.csv"
    path.write_text("prompt,chosen,answer_b\nq,a,b\n", encoding="utf-8")
    with pytest.raises(RewardlabError) as e:
        load_preferences(str(path))
    msg = one_line(e)
    assert "prefs.csv" in msg and "'chosen' and 'rejected'" in msg and "answer_b" in msg
    path.write_text("prompt,chosen,rejected,margin\nq1,a,b,1.5\nq2,same,same,\nq3,a,b\n", encoding="utf-8")
    with pytest.raises(RewardlabError, match=r"prefs\.csv:row 2: chosen identical to rejected"):
        load_preferences(str(path))  # row 2 = second data row; the header is not counted
    result = load_preferences(str(path), skip_invalid=True)
    assert [r.margin for r in result.records] == [1.5]
    assert result.rejected == [
        (f"{path}:row 2", "chosen identical to rejected"),
        (f"{path}:row 3", "3 cells but the header has 4 columns (an unquoted comma?)"),
    ]


def test_file_level_errors_always_raise(tmp_path):
    cases = {
        "missing.jsonl": (None, "no such file or folder"),
        "empty.jsonl": ("", "the file is empty"),
        "blank.jsonl": ("\n\n   \n", "the file is empty"),
        "notes.txt": ("prompt\n", "unsupported file type '.txt'; give a .jsonl, .json or .csv"),
        "header_only.csv": ("prompt\n", "no data rows"),
        "array.json": ("[]", "no data rows"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_text(content, encoding="utf-8")
        with pytest.raises(RewardlabError) as e:
            load_prompts(str(path), skip_invalid=True)
        assert reason in one_line(e) and name in str(e.value)


def test_skip_invalid_collects_rejects(tmp_path):
    path = write_lines(
        tmp_path / "mixed.jsonl",
        [{"prompt": "good 1"}, "{not json", {"prompt": ""}, "", {"prompt": "good 2"}, [1, 2], {"prompt": None}],
    )
    result = load_prompts(str(path), skip_invalid=True)
    assert [r.text for r in result.records] == ["good 1", "good 2"]
    assert [loc for loc, _ in result.rejected] == [f"{path}:row {n}" for n in (2, 3, 6, 7)]
    reasons = [why for _, why in result.rejected]
    assert reasons[0].startswith("invalid JSON") and reasons[1] == "empty prompt"
    assert reasons[2] == "not a JSON object (got a list)" and "got null" in reasons[3]


def test_json_array_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"prompt": "a"}, {"prompt": ""}], indent=2), encoding="utf-8")
    assert load_prompts(str(path), skip_invalid=True).rejected == [(f"{path}:row 2", "empty prompt")]


# --- preference loading ------------------------------------------------------------------------


def test_load_preferences_each_shape(tmp_path):
    conv_prompt = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Joke?"}]
    rows = [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5", "margin": 2, "source": "math"},
        {"prompt": conv_prompt, "chosen": [{"role": "assistant", "content": "Knock knock."}],
         "rejected": [{"role": "assistant", "content": "No."}]},
        {"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
        {"chosen": conv_prompt + [{"role": "assistant", "content": "A"}], "rejected": conv_prompt + [{"role": "assistant", "content": "B"}]},
        {"prompt": "User: Hi\n\nAssistant: Hello\n\nUser: Joke?", "chosen": " Sure. ", "rejected": "Nope"},
    ]
    r = load_preferences(str(write_lines(tmp_path / "prefs.jsonl", rows))).records
    assert all(isinstance(x, PreferenceRecord) for x in r)
    assert (r[0].prompt, r[0].chosen, r[0].rejected, r[0].margin, r[0].meta) == (user("2+2?"), "4", "5", 2.0, {"source": "math"})
    assert r[1].prompt == conv_prompt and (r[1].chosen, r[1].rejected, r[1].margin) == ("Knock knock.", "No.", None)
    assert r[2].prompt == parse_hh_transcript(HH_PROMPT) and r[2].rejected == "Sure, chocolate works well for that."
    assert r[3].prompt == conv_prompt and (r[3].chosen, r[3].rejected) == ("A", "B")
    assert r[4].prompt == conv_prompt and r[4].chosen == "Sure."


def test_load_preferences_rejects(tmp_path):
    rows = [
        {"prompt": "q", "chosen": "", "rejected": "b"},
        {"prompt": "q", "chosen": "a", "rejected": "  "},
        {"prompt": "q", "chosen": "same", "rejected": "same"},
        {"prompt": "q", "chosen": 3, "rejected": "b"},
        {"prompt": "q", "chosen": "a", "rejected": "b", "margin": "lots"},
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"},
        {"prompt": "q", "chosen": "a"},
        {"prompt": "q", "chosen": "fine", "rejected": "also fine", "margin": 0.5},
    ]
    result = load_preferences(str(write_lines(tmp_path / "r.jsonl", rows)), skip_invalid=True)
    assert [(r.chosen, r.margin) for r in result.records] == [("fine", 0.5)]
    reasons = [why for _, why in result.rejected]
    assert reasons[:5] == [
        "empty chosen",
        "empty rejected",
        "chosen identical to rejected",
        "'chosen' must be text or a list of messages, got a number",
        "margin must be a number, got text",
    ]
    assert "share no prompt" in reasons[5] and reasons[6] == "missing field 'rejected'"


# --- datasets folders and the hub --------------------------------------------------------------


def test_datasets_folder(tmp_path):
    import datasets

    rows = [{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "b", "chosen": "x", "rejected": "x"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    result = load_preferences(str(tmp_path / "single"), skip_invalid=True)
    assert len(result.records) == 1 and result.rejected == [(f"{tmp_path / 'single'}:row 2", "chosen identical to rejected")]

    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_list([{"prompt": "t1"}, {"prompt": "t2"}]),
        test=datasets.Dataset.from_list([{"prompt": "only test", "lang": "en"}]),
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert [r.text for r in load_prompts(str(tmp_path / "dd")).records] == ["t1", "t2"]
    test = load_prompts(f"{tmp_path / 'dd'}:test").records
    assert test[0].text == "only test" and test[0].meta == {"lang": "en"}
    with pytest.raises(RewardlabError, match=r"no split 'dev' \(splits: train, test\)"):
        load_prompts(f"{tmp_path / 'dd'}:dev")
    (tmp_path / "plain").mkdir()
    with pytest.raises(RewardlabError, match="not a datasets folder"):
        load_prompts(str(tmp_path / "plain"))


def test_hub_name_offline_is_one_line_error(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RewardlabError) as e:
        load_prompts("nobody-rewardlab/no-such-set:test")
    msg = one_line(e)
    assert msg.startswith("cannot load dataset 'nobody-rewardlab/no-such-set:test' from the hub (offline?)")
    assert msg.endswith("give a local file or folder")


# --- TRL formats -------------------------------------------------------------------------------

RECORDS = [
    PreferenceRecord(user("What is 2+2?"), "4", "5", margin=1.0),
    PreferenceRecord(
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Tell me a joke."}],
        "Why did the chicken cross the road?",
        "No.",
    ),
]


def test_trl_rows_each_style():
    explicit = to_trl_rows(RECORDS, "explicit")
    assert explicit[0] == {"prompt": "What is 2+2?", "chosen": " 4", "rejected": " 5", "margin": 1.0}
    assert explicit[1]["prompt"].startswith("System: Be kind.\n\nUser: Hi\n\nAssistant: Hello!") and explicit[1]["margin"] == 0.0
    implicit = to_trl_rows(RECORDS[:1], "implicit")
    assert implicit == [{"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4",
                         "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5", "margin": 1.0}]
    conv = to_trl_rows(RECORDS[1:], "conversational")[0]
    assert conv == {"prompt": RECORDS[1].prompt, "chosen": [{"role": "assistant", "content": RECORDS[1].chosen}],
                    "rejected": [{"role": "assistant", "content": "No."}]}
    assert to_trl_rows(RECORDS, "auto")[0]["prompt"] == RECORDS[0].prompt  # a multi-turn prompt -> conversational
    assert to_trl_rows(RECORDS[:1], "auto")[0]["prompt"] == "What is 2+2?"
    with pytest.raises(RewardlabError, match="unknown TRL style"):
        to_trl_rows(RECORDS, "sharegpt")


@pytest.mark.parametrize("style", ["explicit", "implicit", "conversational"])
def test_trl_round_trip(style, tmp_path):
    rows = to_trl_rows(RECORDS, style)
    back = from_trl_rows(rows)
    expected = [PreferenceRecord(r.prompt, r.chosen, r.rejected, r.margin or 0.0) for r in RECORDS]
    assert back == expected
    assert from_trl_rows(to_trl_dataset(RECORDS, style)) == expected  # through arrow too
    path = write_jsonl(tmp_path / "out" / f"{style}.jsonl", rows)
    assert read_jsonl(path) == rows and load_preferences(str(path)).records == expected
    assert not list(path.parent.glob(".*.tmp"))


def test_read_jsonl_strict(tmp_path):
    path = write_lines(tmp_path / "r.jsonl", [{"a": 1}, "", "{oops"])
    with pytest.raises(RewardlabError, match=r"r\.jsonl:row 3: invalid JSON"):
        read_jsonl(path)


def _tiny_chat_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "<eos>", "What", "is", "2", "+", "?", "4", "5"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="[PAD]", unk_token="[UNK]")
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <eos> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}"
    )
    return tok


def test_trl_accepts_each_style(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from trl import RewardConfig, RewardTrainer
    from trl.data_utils import is_conversational, maybe_apply_chat_template, maybe_extract_prompt

    tok = _tiny_chat_tokenizer()
    for style in ("explicit", "implicit", "conversational"):
        ds = to_trl_dataset(RECORDS, style)
        example = ds[1]
        assert is_conversational(example) == (style == "conversational")
        extracted = maybe_extract_prompt(example)
        if style == "implicit":  # TRL finds the same prompt our HH rendering put there
            assert extracted["prompt"].endswith("\n\nHuman: Tell me a joke.\n\nAssistant:")
            assert extracted["chosen"] == " Why did the chicken cross the road?"
        else:
            assert extracted == example
        templated = maybe_apply_chat_template(extracted, tok)
        assert all(isinstance(templated[k], str) for k in ("prompt", "chosen", "rejected"))
        if style == "conversational":
            assert templated["prompt"].startswith("<|system|> Be kind.") and templated["prompt"].endswith("<|assistant|> ")
            assert templated["chosen"] == "Why did the chicken cross the road? <eos> "

        # what RewardTrainer does to a dataset: add EOS / apply the chat template, tokenize, keep margin
        model = LlamaForSequenceClassification(
            LlamaConfig(vocab_size=len(tok), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
        )
        args = RewardConfig(output_dir=str(tmp_path / style), report_to=[], use_cpu=True, bf16=False,
                            disable_tqdm=True)
        trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        prepared = trainer.train_dataset
        assert {"chosen_ids", "rejected_ids", "margin"} <= set(prepared.column_names) and len(prepared) == 2
        assert prepared[0]["chosen_ids"] != prepared[0]["rejected_ids"]


# --- the shared real data ----------------------------------------------------------------------


def test_shared_real_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder absent ({SHARED_DATA}); see the project's data README")
    hh = load_preferences(str(SHARED_DATA / "hh-rlhf" / "harmless_dev.jsonl"), skip_invalid=True)
    assert len(hh.records) + len(hh.rejected) == 1864
    assert len(hh.records) >= 1850 and all(why in ("empty chosen", "empty rejected") for _, why in hh.rejected)
    assert all(r.prompt[-1]["role"] == "user" for r in hh.records)
    assert sum(len(r.prompt) > 1 for r in hh.records) > 1000  # most are multi-turn red-team conversations
    mt = load_prompts(str(SHARED_DATA / "prompts" / "mt_bench.jsonl"))
    assert len(mt.records) == 80 and mt.rejected == [] and len({r.key() for r in mt.records}) == 80
    assert {"category", "question_id", "turn_2"} <= set(mt.records[0].meta)
