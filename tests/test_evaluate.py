"""Base-vs-aligned evaluation: report fields and values (KL 0 for an identity adapter, > 0 for a perturbed
one, the same through a merged folder), blind pairs queued in a real store without duplicates on rerun,
the human win-rate from real labels, the CLI as a user runs it, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import func, select, update

from rewardlab.errors import RewardlabError
from rewardlab.stats import t_quantile
from train.evaluate import EvalConfig, evaluate, load_reward
from train.human_eval import human_win_rate, queue_pairs

N_PROMPTS = 6


def cli() -> list[str]:
    """The rewardlab command, run as a user runs it."""
    return [sys.executable, "-m", "rewardlab.cli"]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory) -> dict:
    """Adapters (identity and perturbed), the perturbed one merged into a full folder, prompts, rewards."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reward_models.scorer import STATS_FILE, RewardFormat
    from rewardlab.models import load_sequence_classifier, load_tokenizer

    d = tmp_path_factory.mktemp("evaluate")
    lora = dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    for name, init in (("same", True), ("perturbed", False)):  # peft's default init leaves B = 0: no change
        torch.manual_seed(1)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                               LoraConfig(**lora, init_lora_weights=init))
        model.save_pretrained(d / name)
    merged = model.merge_and_unload()
    merged.save_pretrained(d / "merged")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(d / "merged")

    judge = d / "judge"  # an untrained tiny reward model: a real `reward train`-shaped folder
    tok = load_tokenizer(str(tiny_model_dir), padding_side="right")
    load_sequence_classifier(str(tiny_model_dir), tokenizer=tok).save_pretrained(judge)
    tok.save_pretrained(judge)
    RewardFormat(style="conversational", max_length=128).save(judge)
    (judge / STATS_FILE).write_text(json.dumps({"mean": 0.0, "std": 2.0}))

    prompts = d / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What is the capital of France? ({i})"}) + "\n"
                               for i in range(N_PROMPTS)))
    reward = d / "reward.yaml"
    reward.write_text("terms:\n  - type: length\n    min: 5\n    max: 20\n  - type: repetition\n    weight: 0.5\n")
    return {"dir": d, "base": str(tiny_model_dir), "prompts": str(prompts), "reward": str(reward), "judge": str(judge)}


def run(setup, aligned: str, out: str, **kw) -> dict:
    cfg = EvalConfig(base=setup["base"], aligned=str(setup["dir"] / aligned), reward=setup["reward"],
                     prompts=setup["prompts"], out=str(setup["dir"] / out), max_new_tokens=10, batch_size=4, **kw)
    return evaluate(cfg, progress=False)


@pytest.fixture(scope="module")
def perturbed(setup) -> dict:
    return run(setup, "perturbed", "out-perturbed", judge=setup["judge"])


def test_report_fields_and_files(perturbed, setup):
    r = perturbed
    for key in ("n", "reward_delta", "reward_delta_ci", "win_rate", "win_rate_ci", "judge_win_rate", "judge_delta",
                "kl", "kl_ci", "kl_sampled", "reward_base_mean", "reward_base_ci", "reward_aligned_mean",
                "reward_aligned_ci", "response_tokens_base", "response_tokens_aligned", "response_chars_base",
                "response_chars_aligned", "identical_replies", "config", "files"):
        assert key in r, key
    assert r["n"] == N_PROMPTS
    assert 0 <= r["win_rate"] <= 1 and 0 <= r["judge_win_rate"] <= 1
    assert r["reward_delta"] == pytest.approx(r["reward_aligned_mean"] - r["reward_base_mean"])
    lo, hi = r["reward_delta_ci"]
    assert lo <= r["reward_delta"] <= hi
    assert r["kl"] > 1e-3, "a perturbed adapter must move the policy"
    assert 0 < r["response_tokens_aligned"] <= 10 and r["aligned"]["kind"] == "lora_adapter"
    out = setup["dir"] / "out-perturbed"
    assert json.loads((out / "report.json").read_text())["kl"] == pytest.approx(r["kl"])
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == N_PROMPTS and {"base", "aligned", "reward_base", "reward_aligned", "judge_base", "kl"} <= set(rows[0])
    md = (out / "report.md").read_text()
    assert "| # | prompt | base | aligned |" in md and "judge" in md
    assert (out / "reward_hist.png").stat().st_size > 1000 and (out / "reward_delta.png").stat().st_size > 1000


def test_identity_adapter_has_zero_kl_and_even_win_rate(setup):
    r = run(setup, "same", "out-same")
    assert r["kl"] == pytest.approx(0.0, abs=1e-5) and r["kl_sampled"] == pytest.approx(0.0, abs=1e-5)
    assert r["identical_replies"] == N_PROMPTS
    assert r["win_rate"] == 0.5 and r["reward_delta"] == 0.0 and r["judge_win_rate"] is None
    sampled = run(setup, "same", "out-same-sampled", temperature=1.0, top_p=0.9, seed=3)  # same seed for both sides
    assert sampled["identical_replies"] == N_PROMPTS and sampled["kl"] == pytest.approx(0.0, abs=1e-5)
    assert sampled["response_chars_aligned"] != r["response_chars_aligned"]  # it did sample


def test_merged_full_folder_matches_the_adapter(setup, perturbed):
    r = run(setup, "merged", "out-merged")
    assert r["aligned"]["kind"] == "model"
    assert r["kl"] == pytest.approx(perturbed["kl"], rel=1e-3, abs=1e-4)
    assert r["reward_delta"] == pytest.approx(perturbed["reward_delta"], abs=1e-6)


def test_statistics_helpers():
    assert t_quantile(0.975, 1) == pytest.approx(12.706, abs=2e-3)
    assert t_quantile(0.975, 5) == pytest.approx(2.571, abs=1e-3)
    assert t_quantile(0.975, 200) == pytest.approx(1.972, abs=1e-3)


def test_queue_then_human_win_rate(setup, tmp_path, capsys):
    from annotate.accounts import add_user
    from annotate.assignment import next_pair, submit_label
    from annotate.store import Comparison, Response, Store

    db = tmp_path / "store.db"
    store = Store("sqlite:///" + str(db))
    r = run(setup, "perturbed", "out-queue", queue=str(db), tag="run1")
    q = r["queue"]
    pairs = N_PROMPTS - r["identical_replies"]
    assert q["tag"] == "eval:run1" and q["queued"] == pairs and q["already_queued"] == 0 and pairs >= 3

    # rerun from the command line: nothing is added twice
    cmd = cli() + ["evaluate", "--base", setup["base"], "--aligned", str(setup["dir"] / "perturbed"),
                   "--reward", setup["reward"], "--prompts", setup["prompts"], "--out", str(tmp_path / "again"),
                   "--max-new-tokens", "10", "--batch-size", "4", "--queue", str(db), "--tag", "run1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["queue"]["queued"] == 0 and summary["queue"]["already_queued"] == pairs
    assert summary["kl"] == pytest.approx(r["kl"], rel=1e-4)
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(Comparison)) == pairs
        assert s.scalar(select(func.count()).select_from(Response)) == 2 * pairs
        models = set(s.scalars(select(Response.model)))
    assert {m.split(":")[0] for m in models} == {"base", "aligned"}

    # label: annotator 1 prefers aligned on the first two pairs and base on the rest; annotator 2 says tie, then both bad
    aligned_text = {row["aligned"] for row in map(json.loads, (setup["dir"] / "out-queue" / "samples.jsonl").read_text().splitlines())}
    with store.write() as s:
        s.execute(update(Comparison).values(overlap=2))
    expect = {"aligned": 0, "base": 0, "tie": 0, "both_bad": 0}
    for who in ("ann1", "ann2"):
        user = add_user(store, who, "pw-123456")
        k = 0
        while (pair := next_pair(store, user)) is not None:
            shown_aligned = "A" if pair["response_a"] in aligned_text else "B"
            if who == "ann1":
                want = "aligned" if k < 2 else "base"
                choice = shown_aligned if want == "aligned" else {"A": "B", "B": "A"}[shown_aligned]
            else:
                want = choice = "tie" if k < 1 else "both_bad"
            expect[want] += 1
            submit_label(store, user, pair["comparison_id"], choice)
            k += 1
    store.close()
    h = human_win_rate(str(db), "run1")
    n = expect["aligned"] + expect["base"] + expect["tie"]
    assert (h["aligned_wins"], h["base_wins"], h["ties"], h["both_bad"]) == (2, pairs - 2, 1, pairs - 1)
    assert h["n"] == n and h["win_rate"] == pytest.approx((2 + 0.5) / n)
    assert h["win_rate_ci"][0] < h["win_rate"] < h["win_rate_ci"][1] and h["labels"] == 2 * pairs

    from rewardlab.cli import main

    assert main(["evaluate", "--human", str(db)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["win_rate"] == pytest.approx(h["win_rate"])


def test_store_errors(setup, tmp_path):
    from annotate.store import Meta, Store

    with pytest.raises(RewardlabError, match="no annotation store"):
        queue_pairs(str(tmp_path / "missing.db"), [], [], [], base_label="b", aligned_label="a", tag="t")
    db = tmp_path / "s.db"
    store = Store("sqlite:///" + str(db))
    with pytest.raises(RewardlabError, match="holds no evaluation pairs"):
        human_win_rate(str(db))
    msgs = [[{"role": "user", "content": "hi"}]]
    queue_pairs(str(db), msgs, ["x"], ["y"], base_label="b", aligned_label="a", tag="one")
    queue_pairs(str(db), msgs, ["x"], ["z"], base_label="b", aligned_label="a", tag="two")
    with pytest.raises(RewardlabError, match="several evaluations .*eval:one, eval:two.*--tag"):
        human_win_rate(str(db))
    assert human_win_rate(str(db), "eval:two")["win_rate"] is None
    with store.write() as s:
        s.get(Meta, "schema_version").value = "999"  # a store newer than this evaluation knows
    store.close()
    with pytest.raises(RewardlabError, match="schema version 999"):
        human_win_rate(str(db))


def test_bad_input_gives_one_line_errors(setup, tmp_path, capsys):
    from rewardlab.cli import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    good = {"--base": setup["base"], "--aligned": str(setup["dir"] / "perturbed"), "--reward": setup["reward"],
            "--prompts": setup["prompts"], "--out": str(tmp_path / "o")}
    cases = [
        ({"--prompts": str(empty)}, "the file is empty"),
        ({"--base": "./no/such/model"}, "does not exist"),
        ({"--reward": str(tmp_path / "nope.yaml")}, "no such file or folder"),
        ({"--aligned": str(tmp_path)}, "neither a LoRA adapter folder"),
        ({"--n": "0"}, "--n must be at least 1"),
        ({"--queue": str(tmp_path / "none.db")}, "no annotation store"),
    ]
    for change, message in cases:
        argv = ["evaluate"] + [x for k, v in {**good, **change}.items() for x in (k, v)]
        assert main(argv) == 2, change
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (change, err)
    assert main(["evaluate", "--aligned", "x"]) == 2
    assert "needs --reward, --prompts, --out" in capsys.readouterr().err
    with pytest.raises(RewardlabError, match="not a .yaml"):
        load_reward(setup["prompts"])
