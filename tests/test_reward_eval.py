"""The reward-model report card and `reward eval` / `reward score` on constructed cases and a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reward_models.evaluate import calibration, evaluate_reward_model
from rewardlab.stats import wilson_interval
from reward_models.scorer import RewardModelScorer
from rewardlab.formats import PreferenceRecord

PNG = b"\x89PNG\r\n\x1a\n"


class LengthScorer:
    """A 'reward model' that only likes long replies."""

    def score(self, prompts, responses):
        return [float(len(r)) for r in responses]


class FixedMarginScorer:
    """Rewards the chosen reply by ``margin`` more than the rejected one (chosen replies start with 'c')."""

    def __init__(self, margin: float):
        self.margin = margin

    def score(self, prompts, responses):
        return [self.margin if r.startswith("c") else 0.0 for r in responses]


def pair(chosen: str, rejected: str, **meta) -> PreferenceRecord:
    return PreferenceRecord(prompt=[{"role": "user", "content": "q?"}], chosen=chosen, rejected=rejected, meta=meta)


def cli() -> list[str]:
    """The rewardlab command, run as a user runs it."""
    return [sys.executable, "-m", "rewardlab.cli"]


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) == [0.0, 1.0]
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(1 - hi)


def test_length_scorer_matches_length_baseline(tmp_path):
    records = [pair("c" + "x" * 20, "r" + "x" * 5), pair("c" + "x" * 30, "r" + "x" * 2),
               pair("c" + "x" * 3, "r" + "x" * 40), pair("c" + "x" * 7, "r" + "x" * 7)]
    r = evaluate_reward_model(LengthScorer(), records, out_dir=tmp_path / "eval")
    assert r["n"] == 4
    assert r["longer_wins_accuracy"] == pytest.approx(2.5 / 4)  # one tie in length counts half
    assert r["accuracy"] == pytest.approx(r["longer_wins_accuracy"])
    assert r["length_baseline_accuracy"] == pytest.approx(2.5 / 4)
    assert r["length_reward_correlation"] == pytest.approx(1.0)
    assert r["accuracy_ci"][0] < r["accuracy"] < r["accuracy_ci"][1]
    assert not r["beats_length_baseline"]
    for name in ("calibration.png", "reward_hist.png"):
        assert (tmp_path / "eval" / name).read_bytes()[:8] == PNG
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["accuracy"] == r["accuracy"]
    assert len((tmp_path / "eval" / "pair_scores.jsonl").read_text().splitlines()) == 4


def test_calibration_and_ece():
    buckets, ece = calibration([10.0] * 20)  # confident and right
    assert ece == pytest.approx(0.0, abs=1e-3) and sum(b["n"] for b in buckets) == 20
    _, ece = calibration([-10.0] * 20)  # confident and wrong
    assert ece == pytest.approx(1.0, abs=1e-3)
    _, ece = calibration([0.0] * 20)  # no preference: predicted 0.5, observed 0.5 (ties count half)
    assert ece == pytest.approx(0.0)
    records = [pair(f"c{i}", f"r{i}") for i in range(10)]
    r = evaluate_reward_model(FixedMarginScorer(2.0), records)
    assert r["accuracy"] == 1.0 and r["mean_margin"] == pytest.approx(2.0)
    assert r["ece"] == pytest.approx(1 - 1 / (1 + 2.718281828 ** -2.0), abs=1e-4)


def test_per_annotator_agreement():
    records = [pair("c1", "r1", annotator="ann"), pair("c2", "r2", annotator="bob"),
               pair("r3", "c3", annotator="bob"), pair("c4", "r4")]
    r = evaluate_reward_model(FixedMarginScorer(1.0), records)
    assert r["per_annotator"] == {"ann": {"n": 1, "agreement": 1.0}, "bob": {"n": 2, "agreement": 0.5}}
    assert evaluate_reward_model(FixedMarginScorer(1.0), records[:1] + records[3:])["per_annotator"] == {"ann": {"n": 1, "agreement": 1.0}}
    assert evaluate_reward_model(FixedMarginScorer(1.0), records[3:])["per_annotator"] is None


@pytest.fixture(scope="module")
def tiny_reward_model(tiny_model_dir, tmp_path_factory) -> Path:
    from reward_models.config import RewardTrainConfig
    from reward_models.train import train_reward_model

    records = [PreferenceRecord(prompt=[{"role": "user", "content": f"tea {i}?"}], chosen=f"blue sea {i} please",
                                rejected=f"blue sea {i} sorry") for i in range(16)]
    out = tmp_path_factory.mktemp("rm") / "model"
    train_reward_model(RewardTrainConfig(model=str(tiny_model_dir), max_steps=2, batch_size=4, max_length=64,
                                         save_steps=0, eval_fraction=0.0), records, out)
    return out


def test_cli_eval_json_last_line(tiny_reward_model, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q {i}?", "chosen": f"yes {i} please", "rejected": f"no {i}"}) + "\n"
                            for i in range(6)))
    done = subprocess.run(cli() + ["reward", "eval", "--model", str(tiny_reward_model), "--data", str(data),
                                   "--out", str(tmp_path / "ev"), "--json"], check=False, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("accuracy", "accuracy_ci", "n", "mean_margin", "ece", "calibration", "length_baseline_accuracy",
                "longer_wins_accuracy", "length_reward_correlation", "per_annotator"):
        assert key in report, key
    assert report["n"] == 6 and 0 <= report["accuracy"] <= 1 and report["longer_wins_accuracy"] == 1.0
    assert (tmp_path / "ev" / "calibration.png").is_file()


def test_cli_score_adds_reward(tiny_reward_model, tmp_path):
    rows = [{"prompt": "tea 3?", "response": "blue sea please", "id": 1},
            {"prompt": [{"role": "user", "content": "tea 3?"}], "response": "blue sea sorry", "id": 2}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = cli() + ["reward", "score", "--model", str(tiny_reward_model), "--input", str(tmp_path / "in.jsonl"),
                   "--out", str(tmp_path / "out.jsonl"), "--normalized"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    scored = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in scored] == [1, 2]
    expected = RewardModelScorer(tiny_reward_model).score([r["prompt"] for r in rows], [r["response"] for r in rows])
    assert [r["reward"] for r in scored] == pytest.approx(expected, abs=1e-4)
    assert all("reward_normalized" in r for r in scored)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "x"}) + "\n")
    bad = subprocess.run(cmd[:-5] + ["--input", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o2.jsonl")],
                         check=False, capture_output=True, text=True, timeout=240)
    assert bad.returncode == 2 and "row 1: missing response" in bad.stderr
