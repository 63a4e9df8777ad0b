"""Base vs aligned on held-out prompts: did the policy really get better, or did the reward go up?

``evaluate(EvalConfig(...))`` reads top to bottom:

1. load the prompts (first ``n`` of the file), the reward (a composed-reward YAML or a ``reward
   train`` folder) and the optional judge reward;
2. load the two policies: an aligned LoRA adapter folder is put on the base model once, and the base
   is the same module with its adapters switched off (no second copy); a full model folder is loaded
   beside the base;
3. generate from both with the same settings (chat template, left padding, batched; greedy by
   default; when sampling, every batch is seeded the same for both models);
4. score both replies of every prompt with the reward (and the judge);
5. KL of the aligned policy to the base on the aligned model's own replies, by teacher-forcing both
   models on them (needs a shared vocabulary);
6. statistics (see ``docs/evaluate.md``), then ``report.json``, ``report.md``, ``samples.jsonl`` and
   two PNG plots in ``out``.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from reward_models.compose import ComposedReward
from rewardlab.stats import mean_ci, wilson_interval
from train.eval_report import write_outputs
from rewardlab.errors import RewardlabError
from rewardlab.formats import load_prompts
from rewardlab.models import (
    DEFAULT_MODEL, ensure_distinct_pad, format_prompt, load_causal_lm, load_tokenizer, model_label, resolve_model,
)


@dataclass
class EvalConfig:
    """Settings of one base-vs-aligned evaluation; saved in ``report.json`` under ``config``."""

    aligned: str
    """The aligned policy: a LoRA adapter folder (peft ``save_pretrained``) or a full model folder."""
    reward: str
    """The reward: a composed-reward YAML file or a ``rewardlab reward train`` folder."""
    prompts: str
    """Held-out prompts: any file, datasets folder or hub name ``load_prompts`` reads."""
    out: str
    """Output folder for report.json, report.md, samples.jsonl and the plots."""
    base: str | None = None
    """The base policy (alias, folder, hub id); default: the adapter's base, else smollm2-135m."""
    judge: str | None = None
    """A second reward (YAML or folder) the policy was not trained on, so reward hacking shows."""
    n: int | None = None
    """Evaluate the first ``n`` prompts (default: all)."""
    field: str | None = None
    """Column of the prompt file holding the prompt (default: detected)."""
    max_new_tokens: int = 128
    """Longest reply, in tokens."""
    temperature: float = 0.0
    """Sampling temperature; 0 means greedy decoding (the default, for a like-for-like comparison)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (only when temperature > 0)."""
    seed: int = 0
    """Seed of every generation batch (the same for both models)."""
    batch_size: int = 8
    """Prompts generated, teacher-forced and scored together."""
    device: str = "auto"
    """``cpu``, ``cuda`` or ``auto`` (cuda when available)."""
    samples_in_report: int = 8
    """Sample pairs shown in report.md (plus the 3 largest gains and losses)."""
    queue: str | None = None
    """Annotation store (SQLite file or URL) to put the pairs into for blind human evaluation."""
    tag: str | None = None
    """Name of this evaluation in the store (comparisons tagged ``eval:<tag>``); default: the aligned folder's name."""
    overlap: int = 1
    """Labels each queued comparison collects (distinct annotators)."""


@dataclass
class Policy:
    """A model as one of the two sides; ``adapter_off`` runs a shared PeftModel with adapters disabled."""

    label: str
    model: object
    tokenizer: object
    adapter_off: bool = False
    info: dict = field(default_factory=dict)

    def active(self):
        return self.model.disable_adapter() if self.adapter_off else nullcontext()


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_reward(spec: str, what: str = "--reward") -> tuple[ComposedReward, str]:
    """A composed reward from a YAML file, or a one-term composed reward from a reward-model folder
    (normalized with its saved statistics when it has them, as PPO does); and a description."""
    path = Path(str(spec)).expanduser()
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        return ComposedReward.from_yaml(path), f"composed reward {path}"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RewardlabError(f"{what} {spec}: folder without config.json; give a `rewardlab reward train` "
                                 "folder or a composed-reward YAML")
        from reward_models.scorer import STATS_FILE

        norm = "stats" if (path / STATS_FILE).is_file() else "none"
        term = {"type": "reward_model", "path": str(path), "name": "reward_model", "normalize": norm}
        return ComposedReward.from_config({"terms": [term]}, where=str(path)), f"reward model {path} ({norm})"
    if path.is_file():
        raise RewardlabError(f"{what} {spec}: not a .yaml/.yml composed-reward file nor a reward-model folder")
    raise RewardlabError(f"{what} {spec}: no such file or folder; give a composed-reward YAML or a "
                         "`rewardlab reward train` folder")


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _model_folder(aligned: str) -> Path:
    """The adapter or model folder ``--aligned`` names (a run folder holding exactly one is accepted)."""
    path = Path(aligned).expanduser()
    if not path.is_dir():
        raise RewardlabError(f"--aligned {aligned}: no such folder; give a LoRA adapter or model folder")
    if (path / "adapter_config.json").is_file() or (path / "config.json").is_file():
        return path
    inner = sorted(p for p in path.iterdir() if p.is_dir() and
                   ((p / "adapter_config.json").is_file() or (p / "config.json").is_file()))
    if len(inner) == 1:
        return inner[0]
    found = f" (it holds {', '.join(p.name for p in inner)}: name one)" if inner else ""
    raise RewardlabError(f"--aligned {aligned}: neither a LoRA adapter folder (adapter_config.json) nor a model "
                         f"folder (config.json){found}")


def _folder_tokenizer(folder: Path):
    """The tokenizer saved in an adapter folder, with rewardlab's pad fix; None when there is none."""
    if not (folder / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    ensure_distinct_pad(tok)
    tok.padding_side = "left"
    return tok


def load_policies(base: str | None, aligned: str, device: str) -> tuple[Policy, Policy]:
    """(base, aligned). An adapter is loaded onto ``base`` (default: the base its config names)."""
    folder = _model_folder(aligned)
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        named = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        base = base or named or DEFAULT_MODEL
        tokenizer = _folder_tokenizer(folder) or load_tokenizer(base, padding_side="left")
        model = load_causal_lm(base, tokenizer=tokenizer)
        try:
            shared = PeftModel.from_pretrained(model, str(folder)).to(device).eval()
        except Exception as e:
            raise RewardlabError(f"--aligned {folder}: the adapter does not load on base '{base}' "
                                 f"({type(e).__name__}: {str(e)[:160]}); its adapter_config.json names "
                                 f"'{named}': pass that as --base") from None
        if named and not _same_model(base, named):
            print(f"rewardlab: note: adapter {folder} was trained on '{named}'; loading it on '{base}'", file=sys.stderr)
        info = {"kind": "lora_adapter", "path": str(folder), "adapter_base": named}
        return (Policy(model_label(base), shared, tokenizer, adapter_off=True, info={"kind": "model", "name": base}),
                Policy(model_label(str(folder)), shared, tokenizer, info=info))
    base = base or DEFAULT_MODEL
    sides = []
    for name, info in ((base, {"kind": "model", "name": base}), (str(folder), {"kind": "model", "path": str(folder)})):
        tokenizer = load_tokenizer(name, padding_side="left")
        sides.append(Policy(model_label(name), load_causal_lm(name, tokenizer=tokenizer).to(device).eval(),
                            tokenizer, info=info))
    return sides[0], sides[1]


def _same_model(a: str, b: str) -> bool:
    try:
        return Path(resolve_model(a)).resolve() == Path(resolve_model(b)).resolve()
    except RewardlabError:
        return a == b


# --------------------------------------------------------------------------------------------
# Generation and KL
# --------------------------------------------------------------------------------------------


def _eos_ids(policy: Policy) -> list[int]:
    ids = policy.model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids]) | {policy.tokenizer.eos_token_id}
    return sorted(i for i in ids if i is not None)


def encode_prompts(policy: Policy, prompts: list[list[dict]], max_new_tokens: int) -> tuple[list[list[int]], int]:
    """Chat-templated prompt ids (too long: the start is cut); and how many were cut."""
    limit = getattr(policy.model.config, "max_position_embeddings", None) or 1_000_000
    room = limit - max_new_tokens
    if room < 1:
        raise RewardlabError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt ({limit} positions)")
    out, cut = [], 0
    for messages in prompts:
        ids = policy.tokenizer(format_prompt(policy.tokenizer, messages), add_special_tokens=False)["input_ids"]
        cut += len(ids) > room
        out.append(ids[-room:])
    return out, cut


@torch.inference_mode()
def generate(policy: Policy, prompt_ids: list[list[int]], cfg: EvalConfig, progress: str = "") -> list[dict]:
    """One reply per prompt: ``{"ids": reply ids incl. the end-of-turn token if reached, "text", "eos"}``."""
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    tok, model, eos = policy.tokenizer, policy.model, _eos_ids(policy)
    sample = cfg.temperature > 0
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, do_sample=sample, pad_token_id=tok.pad_token_id,
                           eos_token_id=eos, **({"temperature": cfg.temperature, "top_p": cfg.top_p} if sample else {}))
    device = next(model.parameters()).device
    out = []
    for k in tqdm(range(0, len(prompt_ids), cfg.batch_size), desc=progress, unit="batch", file=sys.stderr,
                  disable=not progress):
        batch = prompt_ids[k: k + cfg.batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        torch.manual_seed(cfg.seed + k)  # same seed per batch for both models
        with policy.active():
            new = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)[:, width:].tolist()
        for row in new:
            end = next((i for i, t in enumerate(row) if t in eos), None)
            reply = row if end is None else row[: end + 1]
            text = tok.decode(reply if end is None else reply[:-1], skip_special_tokens=True).strip()
            out.append({"ids": reply, "text": text, "eos": end is not None})
    return out


@torch.inference_mode()
def kl_to_base(aligned: Policy, base: Policy, prompt_ids: list[list[int]], replies: list[list[int]],
               temperature: float, batch_size: int) -> tuple[list[float], list[float]]:
    """Per reply: (sum over reply positions of the full-vocabulary KL(p_aligned || p_base) given the
    reply so far, never negative; sum over reply tokens of log p_aligned - log p_base).

    Both models are teacher-forced on prompt + the aligned model's reply (right padding, so positions
    match generation); distributions are softmax(logits / T) when sampling at T, plain when greedy.
    On sampled replies both sums estimate the sequence KL (the first with less variance); on greedy
    replies only the first is a KL: the second can be negative.
    """
    scale = temperature if temperature > 0 else 1.0
    device = next(aligned.model.parameters()).device
    exact, sampled = [], []
    for k in range(0, len(replies), batch_size):
        seqs = [p + r for p, r in zip(prompt_ids[k: k + batch_size], replies[k: k + batch_size])]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        logp = []
        for policy in (aligned, base):
            with policy.active():
                logits = policy.model(input_ids=ids, attention_mask=mask).logits.float()
            logp.append(torch.log_softmax(logits / scale, dim=-1))
        for row, (p, r) in enumerate(zip(prompt_ids[k: k + batch_size], replies[k: k + batch_size])):
            if not r:
                sampled.append(0.0)
                exact.append(0.0)
                continue
            pos = torch.arange(len(p) - 1, len(p) + len(r) - 1, device=device)  # logits predicting the reply
            tokens = torch.tensor(r, device=device)
            la, lb = logp[0][row, pos], logp[1][row, pos]
            sampled.append(float((la.gather(1, tokens[:, None]) - lb.gather(1, tokens[:, None])).sum()))
            exact.append(float((la.exp() * (la - lb)).sum()))
    return exact, sampled


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def compare(base: list[float], aligned: list[float], same_text: list[bool], prefix: str) -> dict:
    """Means with intervals, the paired delta with its paired-t interval, and the win rate (ties half)."""
    deltas = [0.0 if same else a - b for a, b, same in zip(aligned, base, same_text)]  # same reply, same reward
    wins = sum(d > 0 for d in deltas)
    ties = sum(d == 0 for d in deltas)
    mb, cb = mean_ci(base)
    ma, ca = mean_ci(aligned)
    md, cd = mean_ci(deltas)
    rate = (wins + 0.5 * ties) / len(deltas)
    return {f"{prefix}_base_mean": mb, f"{prefix}_base_ci": cb, f"{prefix}_aligned_mean": ma,
            f"{prefix}_aligned_ci": ca, f"{prefix}_delta": md, f"{prefix}_delta_ci": cd,
            f"{prefix}_win_rate": rate, f"{prefix}_win_rate_ci": wilson_interval(wins + 0.5 * ties, len(deltas)),
            f"{prefix}_wins": wins, f"{prefix}_losses": len(deltas) - wins - ties, f"{prefix}_ties": ties,
            f"_{prefix}_deltas": deltas}


# --------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------


def evaluate(cfg: EvalConfig, progress: bool = True) -> dict:
    """Run the evaluation described in the module docstring; returns the report (also written)."""
    started = time.perf_counter()
    if cfg.n is not None and cfg.n < 1:
        raise RewardlabError(f"--n must be at least 1, got {cfg.n}")
    if cfg.max_new_tokens < 1 or cfg.batch_size < 1 or cfg.temperature < 0 or not 0 < cfg.top_p <= 1:
        raise RewardlabError("--max-new-tokens and --batch-size must be >= 1, --temperature >= 0, 0 < --top-p <= 1")
    if cfg.queue:  # fail before the slow part, not after it
        from train.human_eval import StoreTables, full_tag

        full_tag(cfg.tag or "x")
        if cfg.overlap < 1:
            raise RewardlabError(f"--overlap must be at least 1, got {cfg.overlap}")
        StoreTables(cfg.queue).close()
    records = load_prompts(cfg.prompts, field=cfg.field).records[: cfg.n]
    if not records:
        raise RewardlabError(f"{cfg.prompts}: no prompts to evaluate on; give a file with prompt rows")
    prompts = [r.messages for r in records]
    reward, reward_desc = load_reward(cfg.reward)
    judge, judge_desc = load_reward(cfg.judge, "--judge") if cfg.judge else (None, None)
    base, aligned = load_policies(cfg.base, cfg.aligned, _device(cfg.device))

    side = {}
    for policy, name in ((base, "base"), (aligned, "aligned")):
        ids, cut = encode_prompts(policy, prompts, cfg.max_new_tokens)
        side[name] = {"prompt_ids": ids, "truncated": cut,
                      "replies": generate(policy, ids, cfg, progress=f"generate {name}" if progress else "")}
    texts = {k: [r["text"] for r in v["replies"]] for k, v in side.items()}
    same = [a == b for a, b in zip(texts["base"], texts["aligned"])]
    scores = {k: reward.score(prompts, texts[k]) for k in texts}
    report = compare(scores["base"], scores["aligned"], same, "reward")
    report["win_rate"], report["win_rate_ci"] = report["reward_win_rate"], report["reward_win_rate_ci"]
    judged = {k: judge.score(prompts, texts[k]) for k in texts} if judge else None
    report.update(compare(judged["base"], judged["aligned"], same, "judge") if judged else
                  {"judge_win_rate": None, "judge_win_rate_ci": None, "judge_delta": None})

    shared_vocab = aligned.tokenizer.get_vocab() == base.tokenizer.get_vocab()
    if shared_vocab:
        kl, kl_sampled = kl_to_base(aligned, base, side["aligned"]["prompt_ids"],
                                    [r["ids"] for r in side["aligned"]["replies"]], cfg.temperature, cfg.batch_size)
        report["kl"], report["kl_ci"] = mean_ci(kl)
        report["kl_sampled"] = mean_ci(kl_sampled)[0]
    else:
        kl = kl_sampled = [None] * len(prompts)
        report.update(kl=None, kl_ci=None, kl_sampled=None,
                      kl_note="base and aligned tokenizers differ, so per-token KL is undefined")

    rows = []
    for i, messages in enumerate(prompts):
        b, a = side["base"]["replies"][i], side["aligned"]["replies"][i]
        row = {"index": i, "prompt": messages, "base": b["text"], "aligned": a["text"],
               "reward_base": scores["base"][i], "reward_aligned": scores["aligned"][i],
               "reward_delta": report["_reward_deltas"][i], "tokens_base": len(b["ids"]) - b["eos"],
               "tokens_aligned": len(a["ids"]) - a["eos"], "eos_base": b["eos"], "eos_aligned": a["eos"],
               "kl": kl[i], "kl_sampled": kl_sampled[i], "identical": same[i]}
        if judged:
            row.update(judge_base=judged["base"][i], judge_aligned=judged["aligned"][i])
        rows.append(row)
    for name in ("base", "aligned"):
        report[f"response_tokens_{name}"] = sum(r[f"tokens_{name}"] for r in rows) / len(rows)
        report[f"response_chars_{name}"] = sum(len(r[name]) for r in rows) / len(rows)
        report[f"no_eos_{name}"] = sum(not r[f"eos_{name}"] for r in rows)
        report[f"truncated_prompts_{name}"] = side[name]["truncated"]
    report = {k: v for k, v in report.items() if not k.startswith("_")}
    report.update(n=len(rows), identical_replies=sum(same), reward=reward_desc, judge=judge_desc,
                  base=base.info, aligned=aligned.info, reward_delta_method="paired t (95%)",
                  win_rate_method="ties count half; Wilson 95%", kl_method="mean over prompts of the sum over the aligned "
                  "reply's positions of KL(p_aligned || p_base), teacher-forced (kl_sampled: sum of log-ratios of "
                  "the reply's tokens, TRL's estimator; not a KL on greedy replies)",
                  config=asdict(cfg), seconds=round(time.perf_counter() - started, 2))

    if cfg.queue:
        from train.human_eval import queue_pairs

        settings = {k: getattr(cfg, k) for k in ("max_new_tokens", "temperature", "top_p", "seed")}
        report["queue"] = queue_pairs(cfg.queue, prompts, texts["base"], texts["aligned"], base_label=base.label,
                                      aligned_label=aligned.label, tag=cfg.tag or aligned.label,
                                      settings={**settings, "do_sample": cfg.temperature > 0}, overlap=cfg.overlap)
    report["files"] = write_outputs(Path(cfg.out), report, rows, cfg.samples_in_report)
    return report
