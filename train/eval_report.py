"""The files an evaluation writes: report.json, samples.jsonl, report.md and PNG plots."""

from __future__ import annotations

import html
import json
from pathlib import Path

from reward_models.plots import plot_reward_histograms
from rewardlab.formats import write_jsonl


def write_outputs(out: Path, report: dict, rows: list[dict], samples: int) -> dict:
    """Write everything into ``out``; returns {what: path}."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"report_json": out / "report.json", "report_md": out / "report.md", "samples": out / "samples.jsonl",
             "reward_hist": out / "reward_hist.png", "reward_delta": out / "reward_delta.png"}
    write_jsonl(files["samples"], rows)
    _plots(rows, report, files["reward_hist"], files["reward_delta"])
    files = {k: str(v) for k, v in files.items()}
    files["report_md"] = str(_markdown(out / "report.md", {**report, "files": files}, rows, samples))
    Path(files["report_json"]).write_text(json.dumps({**report, "files": files}, indent=2, default=str) + "\n")
    return files


def _fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:+.{digits}f}" if isinstance(x, float) else str(x)


def _ci(ci, sign: str = "+") -> str:
    return "n/a" if not ci else f"[{ci[0]:{sign}.3f}, {ci[1]:{sign}.3f}]"


def _cell(text, limit: int = 300) -> str:
    """Model text as one Markdown table cell, shown literally (no HTML, no breaking the table)."""

    text = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)
    text = text if len(text) <= limit else text[:limit] + " …"
    return html.escape(text).replace("|", "&#124;").replace("\n", "<br>") or "*(empty)*"


def _prompt(messages: list[dict]) -> str:
    return messages[-1]["content"] if len(messages) == 1 else "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _markdown(path: Path, r: dict, rows: list[dict], samples: int) -> Path:
    judge = r["judge_win_rate"] is not None
    lines = [
        "# Base vs aligned", "",
        f"Base: `{r['base']['name']}`  ", f"Aligned: `{r['aligned']['path']}` ("
        + (f"LoRA adapter trained on `{r['aligned']['adapter_base']}`)  " if r["aligned"]["kind"] == "lora_adapter"
           else "model folder)  "), f"Reward: {r['reward']}  ",
        f"Judge: {r['judge'] or 'none'}  ",
        f"Prompts: {r['n']} ({r['identical_replies']} with identical replies); decoding: "
        f"{'greedy' if r['config']['temperature'] == 0 else 'temperature %s, top-p %s' % (r['config']['temperature'], r['config']['top_p'])}, "
        f"at most {r['config']['max_new_tokens']} new tokens, seed {r['config']['seed']}", "",
        "| measure | base | aligned | aligned - base (95% CI) | win rate of aligned (95% CI) |", "|---|---|---|---|---|",
        f"| reward | {_fmt(r['reward_base_mean'])} {_ci(r['reward_base_ci'])} | {_fmt(r['reward_aligned_mean'])} "
        f"{_ci(r['reward_aligned_ci'])} | {_fmt(r['reward_delta'])} {_ci(r['reward_delta_ci'])} | "
        f"{r['win_rate']:.3f} {_ci(r['win_rate_ci'], '')} |",
    ]
    if judge:
        lines.append(f"| judge | {_fmt(r['judge_base_mean'])} {_ci(r['judge_base_ci'])} | {_fmt(r['judge_aligned_mean'])} "
                     f"{_ci(r['judge_aligned_ci'])} | {_fmt(r['judge_delta'])} {_ci(r['judge_delta_ci'])} | "
                     f"{r['judge_win_rate']:.3f} {_ci(r['judge_win_rate_ci'], '')} |")
    lines += [
        f"| reply tokens (mean) | {r['response_tokens_base']:.1f} | {r['response_tokens_aligned']:.1f} | | |",
        f"| reply characters (mean) | {r['response_chars_base']:.1f} | {r['response_chars_aligned']:.1f} | | |",
        f"| replies without end of turn | {r['no_eos_base']} | {r['no_eos_aligned']} | | |", "",
        f"KL(aligned ‖ base) per reply: **{_fmt(r['kl'])}** nats {_ci(r['kl_ci'])} (full-vocabulary, summed over "
        f"the aligned reply's positions); log-ratio of the reply's tokens: {_fmt(r['kl_sampled'])}. "
        f"{r.get('kl_note', '')}", "",
        "Reward up but judge flat or down, or KL large, suggests reward hacking: read the samples.", "",
        "![rewards](reward_hist.png) ![per-prompt delta](reward_delta.png)", "",
    ]
    order = sorted(range(len(rows)), key=lambda i: rows[i]["reward_delta"])
    sections = [(f"Samples (first {min(samples, len(rows))} prompts)", list(range(min(samples, len(rows))))),
                ("Largest gains", order[::-1][:3]), ("Largest losses", order[:3])]
    for title, idx in sections:
        lines += [f"## {title}", "", "| # | prompt | base | aligned | reward base → aligned |"
                  + (" judge base → aligned |" if judge else ""), "|---|---|---|---|---|" + ("---|" if judge else "")]
        for i in idx:
            x = rows[i]
            cells = [str(i), _cell(_prompt(x["prompt"]), 200), _cell(x["base"]), _cell(x["aligned"]),
                     f"{x['reward_base']:.3f} → {x['reward_aligned']:.3f}"]
            if judge:
                cells.append(f"{x['judge_base']:.3f} → {x['judge_aligned']:.3f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _plots(rows: list[dict], report: dict, hist_path: Path, delta_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = [r["reward_base"] for r in rows]
    aligned = [r["reward_aligned"] for r in rows]
    plot_reward_histograms(base, aligned, hist_path, names=("base", "aligned"), unit="prompts",
                           title="Reward of the replies: base vs aligned")

    deltas = sorted(r["reward_delta"] for r in rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(range(len(deltas)), deltas, color=["tab:green" if d > 0 else "tab:red" for d in deltas])
    ax.axhline(0, color="grey", lw=1)
    ax.axhline(report["reward_delta"], color="black", ls="--", label=f"mean {report['reward_delta']:+.3f}")
    ax.set(xlabel="prompts (sorted)", ylabel="reward aligned - base", title="Per-prompt reward change")
    ax.legend()
    fig.tight_layout()
    fig.savefig(delta_path, dpi=100)
    plt.close(fig)
