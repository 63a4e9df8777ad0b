"""Labels -> preference dataset -> TRL RewardTrainer, and the agreement numbers that come with it."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from sqlalchemy import func, select

from annotate.accounts import add_user
from annotate.agreement import agreement_report, krippendorff_alpha_nominal, percent_agreement
from annotate.assignment import next_pair, skip, submit_label
from annotate.export import aggregate, export
from annotate.importing import import_pairs
from annotate.store import Comparison, Prompt, Response, Store
from rewardlab.errors import RewardlabError
from rewardlab.formats import PromptRecord

REPO = Path(__file__).resolve().parents[1]
SWAP = {"A": "B", "B": "A", "tie": "tie", "both_bad": "both_bad"}


# --- building a labelled store through the real assignment functions -----------------------------

def add_pairs(store: Store, prompts: list[list[dict]], overlap: int) -> list[int]:
    """One comparison per prompt: responses "good i" and "bad i" (canonical A = "good i")."""
    store.add_prompts([PromptRecord(messages=m) for m in prompts], source="test")
    cids = []
    with store.write() as s:
        for i, messages in enumerate(prompts):
            pid = store.prompt_id_for(s, PromptRecord(messages=messages))
            good = store.response_id_for(s, pid, "model-x", f"good {i}")
            bad = store.response_id_for(s, pid, "model-y", f"bad {i}")
            cid, _, flipped = store.comparison_for(s, pid, good, bad, overlap=overlap, tag="generate")
            assert not flipped
            cids.append(cid)
    return cids


def label_by_plan(store: Store, plan: dict[int, list], names: list[str], seed: int = 0) -> None:
    """plan[cid][k] = (canonical choice, strength) for annotator k, or None to skip the pair.

    Annotators go through next_pair/submit_label/skip as in the app; what they are shown may be
    swapped, so each canonical choice is turned into the choice as shown.
    """
    rng = random.Random(seed)
    for k, name in enumerate(names):
        user = add_user(store, name, "correct horse")
        while (pair := next_pair(store, user, rng=rng)) is not None:
            cid = pair["comparison_id"]
            step = plan[cid][k]
            if step is None:
                skip(store, user, cid)
                continue
            choice, strength = step
            with store.read() as s:
                a_text = s.get(Response, s.get(Comparison, cid).response_a_id).text
            shown = choice if pair["response_a"] == a_text else SWAP[choice]
            submit_label(store, user, cid, shown, strength=strength)


def single(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Question number {i}?"}]


MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Name a colour."},
]


@pytest.fixture
def labelled(store):
    """Seven pairs, overlap 3, three annotators: every aggregation case once."""
    cids = add_pairs(store, [single(i) for i in range(7)], overlap=3)
    p1, p2, p3, p4, p5, p6, p7 = cids
    plan = {
        p1: [("A", "clear"), ("A", "clear"), ("A", "slight")],  # A, margin (1 + 1 + .5) / 3
        p2: [("B", "slight"), ("B", "clear"), ("A", "clear")],  # B, margin (.5 + 1) / 2
        p3: [("tie", None), ("tie", None), ("A", "clear")],  # dropped: tie
        p4: [("A", "clear"), ("B", "clear"), ("tie", None)],  # dropped: disagreement
        p5: [("both_bad", None), ("both_bad", None), ("both_bad", None)],  # dropped: both bad
        p6: [None, None, None],  # skipped by all: unlabelled
        p7: [("A", None), None, None],  # one label so far: A, margin .5 (no strength = slight)
    }
    label_by_plan(store, plan, ["ann", "bob", "cat"])
    return store, cids


def hidden(folder: Path) -> list[str]:
    """Temporary (dot) entries an export could leave beside its output folder."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# --- agreement math -------------------------------------------------------------------------------

def test_krippendorff_textbook_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers,
    # 12 units, nominal values 1-5 with missing data; alpha_nominal = 0.743.
    n = None
    obs = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
        [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
    ]
    units = {u: [o[u] for o in obs if o[u] is not None] for u in range(12)}
    assert krippendorff_alpha_nominal(units) == pytest.approx(0.743, abs=5e-4)
    # Unit 12 (one value) is not pairable: n = 40 values; alpha = 113/152 exactly.
    assert krippendorff_alpha_nominal(units) == pytest.approx(113 / 152)


def test_agreement_edge_cases():
    assert krippendorff_alpha_nominal({}) is None
    assert percent_agreement({1: ["A"], 2: ["B"]}) is None  # no item with two labels
    assert krippendorff_alpha_nominal({1: ["A", "A"], 2: ["A", "A"]}) is None  # no variation
    assert percent_agreement({1: ["A", "A"], 2: ["A", "A"]}) == 1.0
    assert krippendorff_alpha_nominal({1: ["A", "B"], 2: ["B", "A"]}) < 0  # systematic disagreement
    assert krippendorff_alpha_nominal({1: ["A", "A"], 2: ["B", "B"]}) == 1.0
    assert percent_agreement({1: ["A", "A", "B"], 2: ["tie", "tie"]}) == pytest.approx(2 / 4)


def test_aggregate():
    assert aggregate([("A", "clear")]) == ("A", 1.0)
    assert aggregate([("B", "slight"), ("B", "clear"), ("A", "clear")]) == ("B", 0.75)
    assert aggregate([("A", "clear"), ("B", "clear")]) == ("disagreement", None)
    assert aggregate([("tie", None), ("tie", None), ("B", None)]) == ("tie", None)
    assert aggregate([("both_bad", None)]) == ("both_bad", None)
    assert aggregate([("A", None), ("B", None), ("tie", None), ("A", None)]) == ("disagreement", None)


def test_agreement_report(labelled):
    store, _ = labelled
    report = agreement_report(store)
    overall = report["overall"]
    assert overall["n_items"] == 5 and overall["n_labels"] == 16
    assert overall["percent_agreement"] == pytest.approx(8 / 15)
    # n_A = 6, n_B = 3, n_tie = 3, n_both_bad = 3, n = 15; sum_c o_cc = 8:
    # alpha = (14 * 8 - (30 + 6 + 6 + 6)) / (15 * 14 - 48) = 64 / 162
    assert overall["krippendorff_alpha"] == pytest.approx(64 / 162)
    per = report["per_annotator"]
    assert per["ann"] == {"labels": 6, "percent_agreement": pytest.approx(6 / 10), "n_shared": 5}
    assert per["bob"] == {"labels": 5, "percent_agreement": pytest.approx(6 / 10), "n_shared": 5}
    assert per["cat"] == {"labels": 5, "percent_agreement": pytest.approx(4 / 10), "n_shared": 5}
    assert agreement_report(store, tag="nothing-has-this")["overall"] == {
        "percent_agreement": None, "krippendorff_alpha": None, "n_items": 0, "n_labels": 0,
    }


# --- export ---------------------------------------------------------------------------------------

def test_export_counts_margins_and_files(labelled, tmp_path):
    store, cids = labelled
    out = tmp_path / "prefs"
    summary = export(store, out, jsonl=True)
    assert {k: summary[k] for k in (
        "pairs_exported", "dropped_tie", "dropped_both_bad", "dropped_disagreement",
        "comparisons_unlabelled", "labels", "style", "tag",
    )} == {
        "pairs_exported": 3, "dropped_tie": 1, "dropped_both_bad": 1, "dropped_disagreement": 1,
        "comparisons_unlabelled": 1, "labels": 16, "style": "explicit", "tag": None,
    }
    assert summary["agreement"]["krippendorff_alpha"] == pytest.approx(64 / 162)
    assert json.loads((out / "export.json").read_text()) == summary
    assert json.loads((out / "agreement.json").read_text()) == json.loads(json.dumps(agreement_report(store)))

    ds = datasets.load_from_disk(str(out))
    assert ds.column_names == ["prompt", "chosen", "rejected", "margin"]
    rows = {r["prompt"]: r for r in ds}
    # explicit replies carry formats' leading space (TRL joins prompt + reply with nothing between)
    assert rows["Question number 0?"]["chosen"].strip() == "good 0"
    assert rows["Question number 0?"]["margin"] == pytest.approx(2.5 / 3)
    assert (rows["Question number 1?"]["chosen"].strip(), rows["Question number 1?"]["rejected"].strip()) == (
        "bad 1", "good 1")
    assert rows["Question number 1?"]["margin"] == pytest.approx(0.75)
    assert rows["Question number 6?"]["margin"] == pytest.approx(0.5)
    assert len(rows) == 3

    lines = [json.loads(line) for line in (out / "preferences.jsonl").read_text().splitlines()]
    assert lines == ds.to_list()
    assert hidden(tmp_path) == []  # no temp folders left behind


def test_export_conversational_when_multi_turn(store, tmp_path):
    cids = add_pairs(store, [single(0), MULTI_TURN], overlap=1)
    label_by_plan(store, {cids[0]: [("A", "clear")], cids[1]: [("B", "slight")]}, ["ann"])
    summary = export(store, tmp_path / "auto")
    assert summary["style"] == "conversational" and summary["pairs_exported"] == 2
    ds = datasets.load_from_disk(str(tmp_path / "auto"))
    row = next(r for r in ds if len(r["prompt"]) > 1)
    assert row["prompt"] == MULTI_TURN
    assert row["chosen"] == [{"role": "assistant", "content": "bad 1"}]
    assert row["rejected"] == [{"role": "assistant", "content": "good 1"}]

    assert export(store, tmp_path / "explicit", style="explicit")["style"] == "explicit"
    ds = datasets.load_from_disk(str(tmp_path / "explicit"))
    assert all(isinstance(r["prompt"], str) for r in ds)
    assert any(r["prompt"].startswith("System: Be brief.\n\nUser: Hi") for r in ds)


def test_export_empty_and_all_dropped(store, tmp_path):
    with pytest.raises(RewardlabError, match="^no labelled pairs to export"):
        export(store, tmp_path / "out")
    cids = add_pairs(store, [single(0)], overlap=1)
    with pytest.raises(RewardlabError, match="^no labelled pairs to export"):
        export(store, tmp_path / "out")
    label_by_plan(store, {cids[0]: [("tie", None)]}, ["ann"])
    with pytest.raises(RewardlabError, match=r"no labelled pairs to export: all 1 labelled pairs were dropped as ties \(1\)"):
        export(store, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_replaces_atomically(labelled, tmp_path, monkeypatch):
    store, _ = labelled
    out = tmp_path / "prefs"
    first = export(store, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    import annotate.export as export_mod

    real = export_mod._write_json

    def failing(path, obj):
        if path.name == "export.json":
            raise OSError(28, "No space left on device")
        real(path, obj)

    monkeypatch.setattr(export_mod, "_write_json", failing)
    with pytest.raises(RewardlabError, match="cannot write the export"):
        export(store, out, jsonl=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier export, intact
    assert hidden(tmp_path) == []
    monkeypatch.undo()

    second = export(store, out, jsonl=True)
    assert (out / "preferences.jsonl").is_file() and second["pairs_exported"] == first["pairs_exported"]
    assert hidden(tmp_path) == []

    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(RewardlabError, match="not an earlier rewardlab export"):
        export(store, other)
    assert (other / "todo.txt").read_text() == "mine"


HH_ROWS = [
    {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5."},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour.\n\nAssistant: Blue.",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour.\n\nAssistant: Dog."},
    {"chosen": "\n\nHuman: Say yes.\n\nAssistant: Yes.", "rejected": "\n\nHuman: Say yes.\n\nAssistant: No."},
]


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_hh_rlhf_import_then_export(store, tmp_path):
    path = write_rows(tmp_path / "hh.jsonl", HH_ROWS)
    assert import_pairs(store, str(path))["added"] == 3
    cids = add_pairs(store, [single(0)], overlap=1)  # one pair of our own, labelled in the app
    label_by_plan(store, {cids[0]: [("A", "clear")]}, ["ann"])

    summary = export(store, tmp_path / "hh-out", tag="import:hh")
    assert summary["pairs_exported"] == 3 and summary["labels"] == 3 and summary["tag"] == "import:hh"
    assert summary["style"] == "conversational"  # one HH prompt is multi-turn
    ds = datasets.load_from_disk(str(tmp_path / "hh-out"))
    got = {r["prompt"][-1]["content"]: (r["chosen"][0]["content"], r["rejected"][0]["content"], r["margin"]) for r in ds}
    assert got == {
        "What is 2+2?": ("4.", "5.", 0.5),
        "Name a colour.": ("Blue.", "Dog.", 0.5),
        "Say yes.": ("Yes.", "No.", 0.5),
    }
    assert export(store, tmp_path / "all")["pairs_exported"] == 4


# --- TRL RewardTrainer loads the export as it is --------------------------------------------------

@pytest.mark.parametrize("style", ["explicit", "conversational"])
def test_reward_trainer_tokenizes_export(store, tmp_path, tiny_model_dir, style):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    prompts = [single(i) for i in range(3)] + [MULTI_TURN]
    cids = add_pairs(store, prompts, overlap=1)
    label_by_plan(store, {c: [("A" if i % 2 else "B", "clear")] for i, c in enumerate(cids)}, ["ann"])
    export(store, tmp_path / "ds", style=style)
    ds = datasets.load_from_disk(str(tmp_path / "ds"))

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.pad_token = "<|endoftext|>"  # distinct from eos, so the last real token is found
    assert tok.pad_token_id != tok.eos_token_id
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    args = RewardConfig(
        output_dir=str(tmp_path / "rm"), max_steps=1, per_device_train_batch_size=2, report_to=[],
        bf16=False, fp16=False, use_cpu=True, save_strategy="no", logging_steps=1,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    # trl 1.12 names the tokenized columns chosen_ids / rejected_ids (chosen_input_ids is legacy).
    columns = trainer.train_dataset.column_names
    assert {"chosen_ids", "rejected_ids", "margin"} <= set(columns)
    assert len(trainer.train_dataset) == 4
    first = trainer.train_dataset[0]
    assert first["chosen_ids"] != first["rejected_ids"]
    if style == "conversational":
        assert tok.convert_tokens_to_ids("<|im_start|>") in first["chosen_ids"]  # chat template used
    result = trainer.train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))


# --- the CLI, as a user runs it -------------------------------------------------------------------

def rl(*args):
    return subprocess.run(
        [sys.executable, "-m", "rewardlab.cli", *map(str, args)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )


def test_cli_export(labelled, tmp_path):
    store, _ = labelled
    db = store.url.removeprefix("sqlite:///")
    out = tmp_path / "cli-out"
    r = rl("export", "--db", db, "--out", out, "--jsonl")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["pairs_exported"] == 3
    for name in ("dataset_info.json", "state.json", "preferences.jsonl", "agreement.json", "export.json"):
        assert (out / name).is_file(), name
    assert len(datasets.load_from_disk(str(out))) == 3


def test_cli_prompts_import_malformed(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": "oops"\n{"prompt": "also fine"}\n', encoding="utf-8")
    db = tmp_path / "rl.db"
    r = rl("prompts", "import", path, "--db", db)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("rewardlab: ") and "broken.jsonl:row 2" in lines[0]
    store = Store(f"sqlite:///{db}")
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(Prompt)) == 0
    store.close()


def test_real_hh_rlhf_round_trip(store, tmp_path, shared_data):
    src = shared_data / "hh-rlhf" / "harmless_dev.jsonl"
    r = import_pairs(store, str(src), skip_invalid=True)
    assert r["added"] > 1500
    summary = export(store, tmp_path / "hh", jsonl=True)
    assert summary["pairs_exported"] == r["added"] and summary["labels"] == r["added"]
    assert summary["dropped_tie"] == summary["dropped_disagreement"] == 0
    assert summary["style"] == "conversational"
    ds = datasets.load_from_disk(str(tmp_path / "hh"))
    assert len(ds) == r["added"] and set(ds["margin"]) == {0.5}
    first = json.loads(src.read_text(encoding="utf-8").splitlines()[0])
    row = ds[0]
    assert first["chosen"].rstrip().endswith(row["chosen"][0]["content"])
    assert first["rejected"].rstrip().endswith(row["rejected"][0]["content"])
