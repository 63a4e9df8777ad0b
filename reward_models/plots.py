"""PNG plots of a reward model: calibration curve, reward histograms, training curves (matplotlib Agg)."""

from __future__ import annotations

import json
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_calibration(buckets: list[dict], ece: float, path) -> Path:
    """Confidence sigmoid(|margin|) against observed agreement with the labels, per bucket."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0.5, 1], [0.5, 1], ls="--", color="grey", label="perfect calibration")
    pts = [b for b in buckets if b["n"]]
    ax.plot([b["predicted"] for b in pts], [b["observed"] for b in pts], marker="o", label="reward model")
    for b in pts:
        ax.annotate(str(b["n"]), (b["predicted"], b["observed"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set(xlim=(0.5, 1), ylim=(0, 1), xlabel="predicted P(preferred reply is chosen) = sigmoid(|margin|)",
           ylabel="observed share chosen", title=f"Calibration (ECE {ece:.3f}; labels = pairs per bucket)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_reward_histograms(chosen: list[float], rejected: list[float], path, names=("chosen", "rejected"),
                           unit: str = "replies", title: str = "Rewards: chosen vs rejected") -> Path:
    """Histograms of two sets of rewards (chosen vs rejected, base vs aligned) on shared bins."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    lo, hi = min(chosen + rejected), max(chosen + rejected)
    bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 10
    ax.hist(chosen, bins=bins, alpha=0.6, label=f"{names[0]} (mean {sum(chosen) / len(chosen):.3f})")
    ax.hist(rejected, bins=bins, alpha=0.6, label=f"{names[1]} (mean {sum(rejected) / len(rejected):.3f})")
    ax.set(xlabel="reward", ylabel=unit, title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_training_curves(metrics_jsonl, path) -> Path | None:
    """Loss and accuracy per logged step from metrics.jsonl (training, and eval when logged)."""
    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r and "step" in r]
    evals = [r for r in rows if "eval_accuracy" in r]
    if not train and not evals:
        return None
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if evals:
        a1.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], marker="o", label="held-out")
    a1.set(xlabel="step", ylabel="loss", title="Loss")
    a2.plot([r["step"] for r in train if "accuracy" in r], [r["accuracy"] for r in train if "accuracy" in r],
            label="train (batch)")
    if evals:
        a2.plot([r["step"] for r in evals], [r["eval_accuracy"] for r in evals], marker="o", label="held-out")
    a2.axhline(0.5, ls="--", color="grey")
    a2.set(xlabel="step", ylabel="pairwise accuracy", ylim=(0, 1), title="Accuracy")
    for a in (a1, a2):
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
