"""Reward-model training on tiny real models: it learns, it saves a standard folder, it fails clearly."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reward_models.config import RewardTrainConfig, load_config
from reward_models.scorer import RewardModelScorer
from reward_models.train import train_reward_model
from rewardlab.errors import RewardlabError

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "sea", "blue", "water", "tea", "cup", "light", "sun", "air"]
FAST = {"learning_rate": 3e-3, "batch_size": 8, "gradient_accumulation_steps": 1, "lora": False,
        "logging_steps": 5, "save_steps": 0, "max_length": 64, "warmup_ratio": 0.0}


def separable_rows(n: int, seed: int = 0) -> list[dict]:
    """Chosen replies end in "please", rejected in "thanks": same length, only the word tells them apart."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(5)) + f" {i}?"
        base = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
        rows.append({"prompt": prompt, "chosen": f"{base} please", "rejected": f"{base} thanks"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cli() -> list[str]:
    """The rewardlab command, run as a user runs it."""
    return [sys.executable, "-m", "rewardlab.cli"]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One full fine-tune on 96 separable pairs plus 3 identical and 2 empty ones."""
    tmp = tmp_path_factory.mktemp("rm")
    rows = separable_rows(96)
    rows += [{"prompt": "same?", "chosen": "same answer", "rejected": "same answer"}] * 3
    rows += [{"prompt": "empty?", "chosen": "", "rejected": "something"},
             {"prompt": "empty?", "chosen": "something", "rejected": "  "}]
    data = write_jsonl(tmp / "prefs.jsonl", rows)
    # head_init random: this shows RewardTrainer itself learning (the probe alone would separate these)
    config = RewardTrainConfig(model=str(tiny_model_dir), max_steps=30, eval_fraction=0.25, head_init="random", **FAST)
    summary = train_reward_model(config, data, tmp / "out")
    return summary, tmp / "out"


def test_learns_separable_pairs(trained):
    summary, _ = trained
    assert summary["eval"]["n"] == 24
    assert summary["eval"]["accuracy"] >= 0.9, summary["eval"]
    assert summary["eval"]["length_baseline_accuracy"] == 0.5  # same lengths: length cannot explain it


def test_identical_and_empty_pairs_skipped_and_counted(trained):
    summary, _ = trained
    assert summary["skipped_identical"] == 3
    assert summary["skipped_empty"] == 2
    assert summary["pairs_train"] + summary["pairs_eval"] == 96


def test_output_folder_is_standard(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    summary, out = trained
    for name in ("config.json", "reward_config.yaml", "metrics.jsonl", "reward_stats.json",
                 "rewardlab_reward.json", "training_curves.png", "eval/calibration.png", "eval/reward_hist.png"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists()
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_labels == 1 and tok.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id
    stats = json.loads((out / "reward_stats.json").read_text())
    assert stats["std"] > 0 and stats["n"] == 2 * summary["pairs_train"]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in row for row in logged) and logged[-1]["final"]
    assert load_config(out / "reward_config.yaml").max_steps == 30


def test_scorer_matches_training_format(trained):
    _, out = trained
    scorer = RewardModelScorer(out, batch_size=4)
    prompt = [{"role": "user", "content": "the sea is blue 3?"}]
    good, bad = scorer.score([prompt, "the sea is blue 3?"], ["tea cup please", "tea cup sorry"])
    assert good > bad
    norm = scorer.normalized([prompt], ["tea cup please"])[0]
    assert norm == pytest.approx((good - scorer.stats["mean"]) / scorer.stats["std"])


def test_lora_merged_into_plain_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    data = write_jsonl(tmp_path / "p.jsonl", separable_rows(64, seed=1))
    config = RewardTrainConfig(model=str(tiny_model_dir), lora_r=8, max_steps=20, eval_fraction=0.25,
                               **{**FAST, "learning_rate": 1e-2, "lora": True})
    summary = train_reward_model(config, data, tmp_path / "out")
    assert summary["lora"] and summary["eval"]["accuracy"] > 0.6, summary["eval"]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_cut_backbone_and_top_layer_lora(tiny_model_dir, tmp_path):
    """max_layers keeps the first layers (a plain, smaller model folder); lora_top_layers adapts only
    the last ones, so the layers below come out of training exactly as they went in."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    data = write_jsonl(tmp_path / "p.jsonl", separable_rows(48, seed=2))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # 2 layers
    config = RewardTrainConfig(model=str(tiny_model_dir), lora_r=8, max_steps=4, eval_fraction=0.25,
                               **{**FAST, "learning_rate": 1e-2, "lora": True}, lora_top_layers=1)
    summary = train_reward_model(config, data, tmp_path / "top")
    assert summary["layers"] == 2
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "top")
    layers, base_layers = model.model.layers, base.model.layers
    assert torch.equal(layers[0].self_attn.q_proj.weight, base_layers[0].self_attn.q_proj.weight)
    assert not torch.equal(layers[1].self_attn.q_proj.weight, base_layers[1].self_attn.q_proj.weight)

    config = RewardTrainConfig(model=str(tiny_model_dir), max_steps=2, eval_fraction=0.25, **FAST, max_layers=1)
    summary = train_reward_model(config, data, tmp_path / "cut")
    cut = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cut")
    assert summary["layers"] == 1 and cut.config.num_hidden_layers == 1 and len(cut.model.layers) == 1
    scores = RewardModelScorer(tmp_path / "cut").score(["hi?", "hi?"], ["tea please", "tea thanks"])
    assert all(map(math.isfinite, scores)) and scores[0] != scores[1]
    config.max_layers = 5  # more than the backbone has: all of its layers
    assert train_reward_model(config, data, tmp_path / "all")["layers"] == 2
    with pytest.raises(RewardlabError, match="max_layers must be at least 1"):
        load_config(None, ["--max_layers", "0"])


def test_unknown_config_key_lists_valid_keys(tmp_path):
    with pytest.raises(RewardlabError, match=r"unknown config key 'learning_rat'.*valid keys: model, .*learning_rate"):
        load_config(None, ["--learning_rat", "1e-4"])
    (tmp_path / "bad.yaml").write_text("epochz: 3\n")
    with pytest.raises(RewardlabError, match="epochz.*valid keys"):
        load_config(tmp_path / "bad.yaml")


def test_yaml_then_command_line_override(tmp_path):
    (tmp_path / "run.yaml").write_text("learning_rate: 1e-4\nlora: true\nepochs: 3\nlora_target_modules: [q_proj, v_proj]\n")
    config = load_config(tmp_path / "run.yaml", ["--epochs", "5", "--time-budget-s=60", "--center_rewards_coefficient", "null"])
    assert config.learning_rate == 1e-4 and config.lora and config.lora_target_modules == ["q_proj", "v_proj"]
    assert config.epochs == 5 and config.time_budget_s == 60 and config.center_rewards_coefficient is None
    with pytest.raises(RewardlabError, match="'epochs' must be float"):
        load_config(None, ["--epochs", "many"])


def test_missing_column_is_a_clear_error(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi", "chosen": "hello"}] * 3)
    with pytest.raises(RewardlabError, match=r"p.jsonl:row 1: missing field 'rejected'"):
        train_reward_model(RewardTrainConfig(model=str(tiny_model_dir)), data, tmp_path / "out")
    (tmp_path / "p.csv").write_text("prompt,answer\nhi,hello\n")
    with pytest.raises(RewardlabError, match="needs 'chosen' and 'rejected' columns"):
        train_reward_model(RewardTrainConfig(model=str(tiny_model_dir)), tmp_path / "p.csv", tmp_path / "out")


def test_non_finite_loss_stops_and_keeps_checkpoint(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", separable_rows(40))
    config = RewardTrainConfig(model=str(tiny_model_dir), max_steps=20, eval_fraction=0.0,
                               **{**FAST, "learning_rate": 1e30, "save_steps": 1, "center_rewards_coefficient": None})
    with pytest.raises(RewardlabError, match=r"loss became (nan|inf).*last checkpoint kept: .*checkpoint-\d+"):
        train_reward_model(config, data, tmp_path / "out")
    assert list((tmp_path / "out" / "checkpoints").glob("checkpoint-*"))
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_cli_train_smoke(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", separable_rows(24))
    (tmp_path / "run.yaml").write_text("max_steps: 3\nbatch_size: 4\nmax_length: 64\neval_fraction: 0.25\n")
    cmd = cli() + ["reward", "train", "--data", str(data), "--out", str(tmp_path / "out"), "--model", str(tiny_model_dir),
                   "--config", str(tmp_path / "run.yaml"), "--logging_steps", "1", "--save_steps", "0"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["pairs_train"] == 18
    bad = subprocess.run(cmd[:-4] + ["--learnin_rate", "1"], check=False, capture_output=True, text=True, timeout=240)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("rewardlab: unknown config key 'learnin_rate'") and "learning_rate" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_probe_head_alone_ranks_pairs_before_training(tiny_model_dir, tmp_path):
    """head_init probe: with a learning rate of ~0 the fitted head already separates held-out pairs."""
    data = write_jsonl(tmp_path / "prefs.jsonl", separable_rows(96, seed=3))
    config = RewardTrainConfig(model=str(tiny_model_dir), eval_fraction=0.25, head_init="probe",
                               **{**FAST, "learning_rate": 1e-12}, max_steps=1)
    summary = train_reward_model(config, data, tmp_path / "out")
    assert summary["probe"]["pairs"] == 72 and summary["probe"]["l2"] > 0
    assert summary["eval"]["accuracy"] >= 0.8, (summary["probe"], summary["eval"])
    # a random head on the same data and step count separates nothing with any confidence (its
    # accuracy is a coin flip of one sign here: the pairs differ in one token)
    config.head_init = "random"
    baseline = train_reward_model(config, data, tmp_path / "out_random")
    assert baseline["probe"] is None
    assert summary["eval"]["mean_margin"] > 1.0
    assert abs(baseline["eval"]["mean_margin"]) < 0.1 * summary["eval"]["mean_margin"], baseline["eval"]


def test_length_buckets_cover_every_pair_once_and_cut_padding():
    """The sampler yields each pair once per epoch, in batches of similar length, in a new order
    every epoch that a new sampler with the same seed replays (a resumed run sees the same data)."""
    from reward_models.train import LengthBucketSampler

    rng = random.Random(0)
    lengths = [rng.randint(5, 256) for _ in range(1003)]  # not a multiple of the batch size

    def batches(order):  # the DataLoader's batches of 16, as lists of pair lengths
        return [[lengths[i] for i in order[k:k + 16]] for k in range(0, len(order), 16)]

    def padded(order):  # tokens the batches cost once each is padded to its longest pair
        return sum(max(b) * len(b) for b in batches(order))

    sampler = LengthBucketSampler(lengths, batch_size=16, seed=7)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == sorted(second) == list(range(1003))
    assert first != second
    assert list(LengthBucketSampler(lengths, batch_size=16, seed=7)) == first
    resumed = LengthBucketSampler(lengths, batch_size=16, seed=7)
    resumed.set_epoch(1)  # what the Trainer does when a run resumes in its second epoch
    assert list(resumed) == second
    shuffled = list(range(1003))
    rng.shuffle(shuffled)
    assert padded(first) < 0.7 * padded(shuffled), (padded(first), padded(shuffled))
    # the only short batch (1003 = 62 x 16 + 11) is the last, so batches stay on the buckets
    full = batches(first)[:62]
    assert all(max(b) - min(b) < 40 for b in full)
    # and batch order is not sorted by length (batches are shuffled, not a curriculum)
    maxima = [max(b) for b in full]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


@pytest.mark.slow
def test_default_config_on_the_real_backbone(tmp_path):
    """The shipped default: SmolLM2-135M cut to its first 18 layers, probe head, LoRA in layers 9-17.
    Two optimizer steps on the project's sample pairs: the saved folder is a plain 18-layer model
    whose lower nine layers are the pretrained ones, untouched."""
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification

    from rewardlab.models import resolve_model

    repo = Path(__file__).resolve().parents[1]
    config = load_config(None, {"max_steps": 2, "eval_fraction": 0.0, "save_steps": 0, "logging_steps": 1})
    assert (config.model, config.max_layers, config.lora, config.lora_top_layers) == ("smollm2-135m", 18, True, 9)
    summary = train_reward_model(config, repo / "data" / "pairs.jsonl", tmp_path / "rm")
    assert summary["layers"] == 18 and summary["steps"] == 2 and summary["probe"]["pairs"] == 6
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert model.config.num_hidden_layers == 18 and len(model.model.layers) == 18
    with safe_open(str(Path(resolve_model("smollm2-135m")) / "model.safetensors"), "pt") as base:
        for layer, same in ((0, True), (8, True), (9, False), (17, False)):
            name = f"model.layers.{layer}.self_attn.q_proj.weight"
            trained = model.model.layers[layer].self_attn.q_proj.weight.float()
            assert torch.equal(trained, base.get_tensor(name).float()) is same, layer
