"""PNG plots of a PPO run over updates: reward, KL to the reference, entropy, response length.

Reads the run's ``metrics.jsonl`` (one row per update) and writes ``reward.png``, ``kl.png``,
``entropy.png``, ``response_length.png`` and ``overview.png`` (the four together) into a folder.
matplotlib runs headless (Agg); a run with no rows yet writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

PANELS = (
    ("reward", "mean reward (composed)", "reward.png"),
    ("kl", "KL to the reference (nats per response)", "kl.png"),
    ("entropy", "policy entropy (nats per response)", "entropy.png"),
    ("response_length", "response length (tokens)", "response_length.png"),
)


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _draw(ax, x, y, key: str, title: str) -> None:
    ax.plot(x, y, marker="o" if len(x) <= 40 else None, markersize=3, linewidth=1, alpha=0.6, label=key)
    if len(y) >= 8:
        ax.plot(x, _smooth(y, max(3, len(y) // 10)), linewidth=2, label="moving average")
        ax.legend(loc="best", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("update")
    ax.grid(alpha=0.3)


def plot_metrics(metrics_file: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the PNGs for ``metrics_file`` into ``out_dir``; return their paths."""
    path = Path(metrics_file)
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x = [r["update"] for r in rows]
    written = []
    for key, title, name in PANELS:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        _draw(ax, x, [r[key] for r in rows], key, title)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (key, title, _) in zip(axes.flat, PANELS):
        _draw(ax, x, [r[key] for r in rows], key, title)
    fig.suptitle(f"PPO run: {len(rows)} updates", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "overview.png", dpi=100)
    plt.close(fig)
    written.append(out / "overview.png")
    return written
