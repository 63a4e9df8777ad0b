"""``rewardlab ppo``: align a policy with a composed reward, TRL 1.12's PPOTrainer with LoRA.

The whole run reads top to bottom in ``run_ppo``:

1. config and batch arithmetic checked (``train/ppo_config.py``), before anything is loaded;
2. tokenizer with a pad token distinct from EOS (TRL masks ``ids != pad_token_id``), left padding;
3. prompts rendered with the chat template, tokenized, cut to max_prompt_length (``train/ppo_data.py``);
4. reward: a composed-reward YAML, or a ``rewardlab reward train`` folder wrapped as a one-term
   composed reward normalized with its saved statistics; always through ``ComposedRewardForPPO``,
   which re-tokenizes the text for each reward model, so any tokenizer works;
5. policy = base model + LoRA adapters (peft). The reference is the same model with the adapters
   switched off: with a PeftModel and ``ref_model=None``, TRL 1.12 computes reference log-probs
   under ``disable_adapter()`` (``PPOTrainer.null_ref_context``), so there is no second copy;
6. value model (``value_model``): ``shared`` (default) is a linear value head on the policy's own
   LoRA trunk; in the PPO loss TRL's PolicyAndValueWrapper calls the critic and then the policy on
   the same inputs, and ``SharedTrunk`` hands the policy the trunk output the critic just computed,
   so one forward/backward serves both and no weights are copied. ``separate`` is a sequence
   classifier of the same base with its own LoRA adapters (a second base copy, two passes);
7. ``PPOTrainer.train()``, with callbacks that write metrics, samples, plots and checkpoints.

Resume. TRL 1.12's ``PPOTrainer.train`` has no ``resume_from_checkpoint`` and always starts at
update 1, so checkpoints are rewardlab's own (``checkpoints/update-NNNNNN``: adapters, value
weights, optimizer, scheduler, every process's RNG state). ``--resume`` restores them, skips the
prompt batches already used (the prompt order is replayed exactly) and runs only the remaining
updates, so an interrupted run ends at the same update count as an uninterrupted one.
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from rewardlab.errors import RewardlabError
from rewardlab.models import load_causal_lm, load_sequence_classifier, load_tokenizer, model_label
from train.ppo_config import CONFIG_FILE, PPORunConfig, batch_plan, load_config, save_config

CHECKPOINTS = "checkpoints"
DONE_MARKER = "complete"
SUMMARY_FILE = "ppo_summary.json"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
RESUME_FREE_KEYS = ("save_every", "keep_checkpoints", "sample_every", "num_samples", "merge", "cpu_threads")
"""Config keys that may change between a run and its --resume."""


# ---------------------------------------------------------------------------------------------
# Reward: always a composed reward behind TRL's reward-model interface
# ---------------------------------------------------------------------------------------------


def load_reward(spec: str, policy_tokenizer, device: str = "cpu"):
    """``ComposedRewardForPPO`` for ``--reward``: a composed-reward YAML or a reward-model folder
    (scored on ``device``; a YAML names its own, ``device:`` at the top or per term)."""
    from reward_models.compose import ComposedReward
    from reward_models.ppo_adapter import ComposedRewardForPPO, check_reward_model_for_ppo
    from reward_models.scorer import FORMAT_FILE

    path = Path(spec).expanduser()
    if path.is_dir() and (path / FORMAT_FILE).is_file():
        # The common case: a learned reward model alone, normalized with its saved statistics.
        reward = ComposedReward.from_config(
            {"device": device, "terms": [{"type": "reward_model", "path": str(path), "normalize": "stats"}]},
            where=f"--reward {spec}",
        )
    elif path.is_dir() and (path / "config.json").is_file():
        from transformers import AutoModelForSequenceClassification

        try:
            plain = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
        except Exception as e:
            raise RewardlabError(f"--reward {spec}: not a reward model ({type(e).__name__}: {e})"[:300]) from None
        check_reward_model_for_ppo(plain, policy_tokenizer)  # another tokenizer: points to the composed reward
        raise RewardlabError(
            f"--reward {spec}: a plain sequence classifier without {FORMAT_FILE}, so rewardlab does not know how "
            "its text was laid out in training; train it with `rewardlab reward train`, or score it from a "
            "composed reward YAML with a callable term (docs/reward_design.md)"
        )
    elif path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        reward = ComposedReward.from_yaml(path)
    elif path.exists():
        raise RewardlabError(
            f"--reward {spec}: give a composed-reward YAML file or a `rewardlab reward train` folder"
        )
    else:
        raise RewardlabError(f"--reward {spec}: no such file or folder")
    adapter = ComposedRewardForPPO(reward, policy_tokenizer)
    check_reward_model_for_ppo(adapter, policy_tokenizer)
    return adapter


class RolloutRecorder:
    """Watches the reward adapter during rollouts: the scored rows (for samples), response lengths
    in tokens and whether they ended with EOS; and whether an exception came from the reward."""

    def __init__(self, adapter, eos_token_id: int):
        self.adapter, self.eos = adapter, eos_token_id
        self.rows: list[dict] = []
        self.lengths: list[int] = []
        self.ended: list[bool] = []
        self.in_reward = False
        adapter.backbone.register_forward_pre_hook(self._before)
        adapter.backbone.register_forward_hook(self._after, with_kwargs=True)

    def _before(self, module, args):
        self.in_reward = True

    def _after(self, module, args, kwargs, output):
        self.in_reward = False
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        context = self.adapter.context_length
        if ids is None or mask is None or context is None:
            return
        tail = mask[:, context:].long().cumprod(dim=1)  # the response runs to the first pad
        lengths = tail.sum(dim=1)
        for row, n in enumerate(lengths.tolist()):
            self.lengths.append(n)
            self.ended.append(n > 0 and int(ids[row, context + n - 1]) == self.eos)
        self.rows.extend(self.adapter.last_batch)

    def pop(self) -> tuple[list[dict], list[int], list[bool]]:
        out = self.rows, self.lengths, self.ended
        self.rows, self.lengths, self.ended = [], [], []
        return out


# ---------------------------------------------------------------------------------------------
# Value models
# ---------------------------------------------------------------------------------------------


class SharedTrunk:
    """Lets the critic and the policy share one trunk pass in TRL's PPO loss.

    TRL's ``PolicyAndValueWrapper.forward(**kw)`` runs ``critic_backbone(**kw)`` and then
    ``policy(**kw)`` with the same tensors. The critic call computes the trunk (LoRA on) and keeps
    the output; the policy's own call of the trunk, arriving next with the very same ``input_ids``
    object, gets that output back instead of recomputing it. Gradients of both heads meet in the
    one graph. Only with gradients on (the PPO loss); rollouts, generation and the adapters-off
    reference pass always compute.
    """

    def __init__(self, trunk: nn.Module):
        self.trunk = trunk
        self._compute = trunk.forward  # the class's forward, bound
        self._pending = None
        trunk.forward = self._forward  # instance attribute: the module tree and state_dict are unchanged

    def critic(self, **kwargs):
        kwargs["use_cache"] = False
        self._pending = None
        output = self.trunk(**kwargs)
        if torch.is_grad_enabled():
            self._pending = (kwargs.get("input_ids"), output)
        return output

    def _forward(self, *args, **kwargs):
        pending, self._pending = self._pending, None
        if pending is not None and not args and kwargs.get("input_ids") is pending[0] is not None:
            return pending[1]
        return self._compute(*args, **kwargs)


class SharedValueHead(nn.Module):
    """Value model for ``value_model: shared``: a linear head (zero-initialized, so values start at
    0) on the last hidden state of the policy's LoRA trunk. Its only own weights are the head's;
    the value loss also trains the policy's LoRA adapters (scaled by vf_coef)."""

    base_model_prefix = "critic_trunk"

    def __init__(self, policy):
        super().__init__()
        lm = policy.get_base_model()
        trunk = getattr(lm, lm.base_model_prefix)
        self.score = nn.Linear(lm.config.hidden_size, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)
        self._shared = SharedTrunk(trunk)  # a plain object: the trunk stays the policy's module

    def critic_trunk(self, **kwargs):
        return self._shared.critic(**kwargs)


def build_value_model(config: PPORunConfig, policy, tokenizer, lora_config):
    """The value model TRL trains beside the policy (see the module docstring)."""
    if config.value_model == "shared":
        return SharedValueHead(policy)
    from peft import get_peft_model

    classifier = load_sequence_classifier(config.policy, tokenizer=tokenizer)
    nn.init.zeros_(classifier.score.weight)
    value_lora = type(lora_config)(**{**lora_config.to_dict(), "task_type": "SEQ_CLS"})
    peft_value = get_peft_model(classifier, value_lora)
    return peft_value.get_base_model()  # LoRA layers inside; TRL reads .model and .score


def trainable_state(module: nn.Module) -> dict:
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


def load_trainable_state(module: nn.Module, state: dict, what: str) -> None:
    params = dict(module.named_parameters())
    missing = sorted(set(state) - set(params))
    if missing:
        raise RewardlabError(f"checkpoint does not match the {what} (unknown weights {missing[:3]}); resume with the same config")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = out / CHECKPOINTS
    found = [p for p in root.glob("update-*") if (p / DONE_MARKER).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(trainer, out: Path, update: int, keep: int) -> Path:
    """Write ``checkpoints/update-NNNNNN`` (every process takes part), then drop older ones."""
    acc = trainer.accelerator
    folder = out / CHECKPOINTS / f"update-{update:06d}"
    tmp = out / CHECKPOINTS / f".tmp-update-{update:06d}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng-{acc.process_index}.pt")
    # Per process: identical under DDP, but a ZeRO optimizer holds only this process's shard.
    torch.save(trainer.optimizer.state_dict(), tmp / f"optimizer-{acc.process_index}.pt")
    if acc.is_main_process:
        wrapper = acc.unwrap_model(trainer.model)
        wrapper.policy.save_pretrained(tmp / "adapter")
        torch.save(trainable_state(wrapper.value_model), tmp / "value.pt")
        torch.save(trainer.lr_scheduler.state_dict(), tmp / "scheduler.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / "state.json").write_text(json.dumps({"update": update, "world_size": acc.num_processes}) + "\n")
        (tmp / DONE_MARKER).write_text("")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        for old in checkpoint_dirs(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return folder


class SkipBatches:
    """The trainer's dataloader with the first ``skip`` batches (across epochs) already drawn, so a
    resumed run sees the prompt batches the interrupted run would have seen next."""

    def __init__(self, loader, skip: int):
        self.loader, self._iterator = loader, None
        while skip > 0:  # draw eagerly, before the RNG states are restored
            self._iterator = iter(loader)
            for _ in range(skip):
                if next(self._iterator, None) is None:
                    break
                skip -= 1

    def __iter__(self):
        if self._iterator is not None:
            iterator, self._iterator = self._iterator, None
            yield from iterator
        else:
            yield from self.loader

    def __len__(self):
        return len(self.loader)


def _truncate_jsonl(path: Path, last_update: int) -> None:
    """Drop rows written after the checkpoint a run resumes from."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line).get("update", 0) <= last_update]
        path.write_text("".join(line + "\n" for line in kept))


# ---------------------------------------------------------------------------------------------
# Metrics, samples, plots, checkpoints: one callback
# ---------------------------------------------------------------------------------------------


def _make_callback(config: PPORunConfig, out: Path, recorder: RolloutRecorder, plan, start_update: int):
    from accelerate.utils import gather_object
    from transformers import TrainerCallback

    from train.plots import plot_metrics

    class RunLog(TrainerCallback):
        """Per update: a metrics row, samples every sample_every, a checkpoint every save_every."""

        def __init__(self):
            self.trainer = None  # set after the trainer exists
            self.done = start_update
            self.last_saved = start_update
            self.started = self.last_time = time.perf_counter()
            self.last_cpu = time.process_time()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "objective/scores" not in logs:
                return
            update = start_update + state.global_step
            rows, lengths, ended = recorder.pop()
            everyone = gather_object([(lengths, ended)])  # every process takes part
            lengths = [n for ls, _ in everyone for n in ls]
            ended = [e for _, es in everyone for e in es]
            now, cpu = time.perf_counter(), time.process_time()
            row = {
                "update": update,
                "episode": update * plan.batch_size,
                "reward": logs["objective/scores"],
                "kl": logs["objective/kl"],
                "entropy": logs["objective/entropy"],
                "response_length": sum(lengths) / max(len(lengths), 1),
                "eos_fraction": sum(ended) / max(len(ended), 1),
                "rlhf_reward": logs["objective/rlhf_reward"],
                "non_score_reward": logs["objective/non_score_reward"],
                "policy_loss": logs["loss/policy_avg"],
                "value_loss": logs["loss/value_avg"],
                "approxkl": logs["policy/approxkl_avg"],
                "clipfrac": logs["policy/clipfrac_avg"],
                "lr": logs["lr"],
                "seconds": round(now - self.last_time, 3),
                "cpu_seconds": round(cpu - self.last_cpu, 3),
            }
            self.last_time, self.last_cpu = now, cpu
            bad = [k for k in ("reward", "kl", "policy_loss", "value_loss") if not math.isfinite(row[k])]
            if bad:
                raise RewardlabError(
                    f"update {update}: non-finite {', '.join(bad)} ({', '.join(f'{k}={row[k]}' for k in bad)}); "
                    "training stopped. Lower learning_rate or check the reward; the last checkpoint is kept"
                )
            if state.is_world_process_zero:
                with open(out / METRICS_FILE, "a") as f:
                    f.write(json.dumps(row) + "\n")
                if config.sample_every and update % config.sample_every == 0:
                    with open(out / SAMPLES_FILE, "a") as f:
                        for sample in rows[: config.num_samples]:
                            f.write(json.dumps({"update": update, **sample}, ensure_ascii=False) + "\n")

        def on_step_end(self, args, state, control, **kwargs):
            self.done = start_update + state.global_step
            if config.save_every and self.done % config.save_every == 0 and self.done < plan.updates:
                self.save()

        def save(self):
            save_checkpoint(self.trainer, out, self.done, config.keep_checkpoints)
            self.last_saved = self.done
            if self.trainer.accelerator.is_main_process:
                plot_metrics(out / METRICS_FILE, out / "plots")

    return RunLog()


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _trl_config(config: PPORunConfig, out: Path):
    import importlib.util

    from trl.experimental.ppo import PPOConfig

    c = config
    return PPOConfig(
        output_dir=str(out),  # TensorBoard (when installed) logs under out/runs/
        report_to=["tensorboard"] if importlib.util.find_spec("tensorboard") else [],
        per_device_train_batch_size=c.per_device_train_batch_size,
        gradient_accumulation_steps=c.gradient_accumulation_steps,
        num_mini_batches=c.num_mini_batches,
        local_rollout_forward_batch_size=c.local_rollout_forward_batch_size,
        num_ppo_epochs=c.num_ppo_epochs,
        total_episodes=c.total_episodes,
        response_length=c.response_length,
        temperature=c.temperature,
        kl_coef=c.kl_coef,
        kl_estimator=c.kl_estimator,
        whiten_rewards=c.whiten_rewards,
        missing_eos_penalty=c.missing_eos_penalty,
        cliprange=c.cliprange,
        cliprange_value=c.cliprange_value,
        vf_coef=c.vf_coef,
        gamma=c.gamma,
        lam=c.lam,
        learning_rate=c.learning_rate,
        lr_scheduler_type=c.lr_scheduler_type,
        seed=c.seed,
        stop_token="eos",
        use_cpu=not torch.cuda.is_available(),  # also keeps torchrun-started processes together on CPU (gloo)
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),  # never on CPU
        fp16=False,
        gradient_checkpointing=False,  # TRL 1.12's PPOTrainer ignores it; rewardlab applies its own
        num_sample_generations=0,  # samples come from the rollouts (samples.jsonl)
        save_strategy="no",  # checkpoints are rewardlab's (resumable)
        logging_steps=1,
        disable_tqdm=False,
    )


def _warn_single_cpu_launch(num_processes: int) -> None:
    """``accelerate launch --cpu --num_processes N`` starts one process unless MPI is set up."""
    if num_processes == 1 and os.environ.get("ACCELERATE_USE_CPU") and os.environ.get("MASTER_PORT"):
        import sys

        print(
            "rewardlab: warning: accelerate launch --cpu started a single process (several CPU processes need MPI); "
            "for N processes over gloo use `accelerate launch --multi_gpu --num_processes N` (rewardlab keeps "
            "them on the CPU when there is no GPU) or `torchrun --nproc_per_node N`",
            file=sys.stderr,
        )


def _check_pad(tokenizer) -> None:
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise RewardlabError(
            f"the policy tokenizer's pad token ({tokenizer.pad_token!r}) is its EOS token; TRL's PPO masks "
            "ids != pad_token_id, so every end of turn would look like padding. Give the tokenizer a distinct pad "
            "token (rewardlab.models.load_tokenizer does)"
        )


def _prepare_out(out: Path, config: PPORunConfig, resume: bool, world_size: int) -> Path | None:
    """The checkpoint to resume from (None for a fresh run); refuses to mix runs in one folder."""
    checkpoints = checkpoint_dirs(out)
    if not resume:
        if checkpoints or (out / SUMMARY_FILE).exists() or (out / METRICS_FILE).exists():
            raise RewardlabError(f"--out {out} already holds a PPO run; continue it with --resume or pick another folder")
        return None
    if (out / SUMMARY_FILE).is_file():
        raise RewardlabError(f"--out {out}: that run already finished ({SUMMARY_FILE}); nothing to resume")
    if not checkpoints:
        raise RewardlabError(f"--resume: no checkpoint in {out / CHECKPOINTS}; start the run without --resume")
    saved = load_config(out / CONFIG_FILE) if (out / CONFIG_FILE).is_file() else None
    if saved is not None:
        changed = [k for k, v in asdict(config).items() if k not in RESUME_FREE_KEYS and asdict(saved)[k] != v]
        if changed:
            raise RewardlabError(
                f"--resume with a different config ({', '.join(changed)}); resume with the config saved in "
                f"{out / CONFIG_FILE}"
            )
    state = json.loads((checkpoints[-1] / "state.json").read_text())
    if state["world_size"] != world_size:
        raise RewardlabError(
            f"--resume: the run used {state['world_size']} process(es), this one has {world_size}; relaunch with "
            f"{state['world_size']}"
        )
    return checkpoints[-1]


def run_ppo(
    config: PPORunConfig,
    reward: str,
    prompts: str,
    out: str | Path,
    resume: bool = False,
    callbacks: list | None = None,
) -> dict:
    """Train LoRA adapters on ``config.policy`` with PPO against ``reward`` on ``prompts``; write
    everything into ``out``; return the run summary (also saved as ``ppo_summary.json``; empty on
    processes other than the main one). ``callbacks``: extra ``TrainerCallback``\ s."""
    threads = torch.get_num_threads()
    if config.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(config.cpu_threads)
    try:
        return _run(config, reward, prompts, out, resume, callbacks)
    finally:
        torch.set_num_threads(threads)  # a process-wide setting: leave it as it was


def _run(config: PPORunConfig, reward: str, prompts: str, out, resume: bool, callbacks) -> dict:
    from accelerate import PartialState
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from trl.experimental.ppo import PPOTrainer

    from train.plots import plot_metrics
    from train.ppo_data import build_prompt_dataset

    started = time.perf_counter()
    out = Path(out).expanduser().resolve()
    # On a machine without GPUs, processes started by torchrun (accelerate launch --multi_gpu) must be
    # told to use the CPU, else accelerate runs each as a separate single-process job.
    state = PartialState(cpu=not torch.cuda.is_available())
    is_main = state.is_main_process
    _warn_single_cpu_launch(state.num_processes)
    plan = batch_plan(config, state.num_processes)  # fails fast, before any model is loaded
    resume_from = _prepare_out(out, config, resume, state.num_processes)
    state.wait_for_everyone()
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out)

    tokenizer = load_tokenizer(config.policy, padding_side="left")
    _check_pad(tokenizer)
    dataset, prompt_stats = build_prompt_dataset(prompts, tokenizer, config.max_prompt_length)
    plan = batch_plan(config, state.num_processes, num_prompts=len(dataset))
    reward_model = load_reward(reward, tokenizer, device=str(state.device))
    recorder = RolloutRecorder(reward_model, tokenizer.eos_token_id)
    reward_model.config = SimpleNamespace()  # TRL's DeepSpeed preparation reads .config of the reward model

    torch.manual_seed(config.seed)  # same LoRA and value-head init in every process and on resume
    base = load_causal_lm(config.policy, dtype=torch.float32, tokenizer=tokenizer)
    lora = LoraConfig(
        task_type="CAUSAL_LM", r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
        target_modules=(config.lora_target_modules[0] if config.lora_target_modules == ["all-linear"]
                        else config.lora_target_modules),
    )
    policy = get_peft_model(base, lora)
    if config.gradient_checkpointing:
        policy.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    value_model = build_value_model(config, policy, tokenizer, lora)
    start_update = 0
    if resume_from is not None:
        from safetensors.torch import load_file

        set_peft_model_state_dict(policy, load_file(str(resume_from / "adapter" / "adapter_model.safetensors")))
        load_trainable_state(value_model, torch.load(resume_from / "value.pt"), "value model")
        start_update = json.loads((resume_from / "state.json").read_text())["update"]
        if is_main:
            _truncate_jsonl(out / METRICS_FILE, start_update)
            _truncate_jsonl(out / SAMPLES_FILE, start_update)
    state.wait_for_everyone()

    run_log = _make_callback(config, out, recorder, plan, start_update)
    trainer = PPOTrainer(
        args=_trl_config(config, out),
        processing_class=tokenizer,
        model=policy,
        ref_model=None,  # the reference is the policy with its adapters switched off
        reward_model=reward_model,
        train_dataset=dataset,
        value_model=value_model,
        eval_dataset=dataset.select(range(min(len(dataset), plan.local_batch_size))),
        callbacks=[run_log, *(callbacks or [])],
    )
    run_log.trainer = trainer
    if trainer.is_deepspeed_enabled:
        trainer.reward_model = reward_model  # holds no weights of its own: no DeepSpeed engine around it
    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.model is not wrapper:
        # TRL 1.12 reads `self.model.policy` on the DDP-wrapped model for the adapters-off reference
        # pass (null_ref_context and the ref forward), which fails with several processes. Alias it
        # without registering a submodule, so DDP's parameters and state_dict are unchanged.
        object.__setattr__(trainer.model, "policy", wrapper.policy)
    if resume_from is not None:
        optimizer_file = resume_from / f"optimizer-{state.process_index}.pt"
        trainer.optimizer.load_state_dict(torch.load(optimizer_file, weights_only=False))
        trainer.lr_scheduler.load_state_dict(torch.load(resume_from / "scheduler.pt", weights_only=False))
        trainer.args.num_total_batches = plan.updates - start_update
        trainer.dataloader = SkipBatches(trainer.dataloader, start_update)
        rng_file = resume_from / f"rng-{state.process_index}.pt"
        _set_rng_state(torch.load(rng_file, weights_only=False))
        if is_main:
            print(f"rewardlab: resuming at update {start_update + 1} of {plan.updates} from {resume_from}")

    # TRL calls gc.collect() twice per update; with transformers loaded that walks millions of
    # objects (about 0.5 s each on CPU). Freezing what exists now leaves it only the new ones.
    gc.collect()
    gc.freeze()
    try:
        if trainer.args.num_total_batches > 0:
            trainer.train()
    except Exception as exc:
        from_reward = recorder.in_reward
        recorder.in_reward = False
        if not from_reward and not isinstance(exc, RewardlabError):
            raise
        kept = _keep_state_after_failure(trainer, run_log, out, config, state.num_processes, from_reward)
        where = f"update {run_log.done + 1}"
        raise RewardlabError(f"PPO stopped at {where}: {exc}. {kept}") from None
    finally:
        gc.unfreeze()

    seconds = time.perf_counter() - started
    summary = None
    if is_main:
        summary = _finish(trainer, tokenizer, config, out, reward, prompts, prompt_stats, plan, seconds)
        plot_metrics(out / METRICS_FILE, out / "plots")
    state.wait_for_everyone()
    return summary or {}


def _keep_state_after_failure(trainer, run_log, out, config, world_size: int, from_reward: bool) -> str:
    """After the reward failed mid-rollout the weights are still those of the last finished update:
    checkpoint them (single process; with several, the others are not at a collective to join)."""
    if from_reward and world_size == 1 and run_log.done > run_log.last_saved:
        run_log.save()
    saved = checkpoint_dirs(out)
    if not saved:
        return "No checkpoint was written (no update had finished)."
    return f"Checkpoint kept: {saved[-1]} (fix the cause, then rerun the same command with --resume)."


def _finish(trainer, tokenizer, config, out, reward, prompts, prompt_stats, plan, seconds) -> dict:
    """Save the adapter (and the merged model on request) and the run summary."""
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    policy.save_pretrained(out / "adapter")
    tokenizer.save_pretrained(out / "adapter")
    rows = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines() if line.strip()]
    merged = None
    if config.merge:
        merged_model = policy.merge_and_unload()
        merged_model.save_pretrained(out / "merged")
        tokenizer.save_pretrained(out / "merged")
        merged = str(out / "merged")
    head = rows[: max(1, len(rows) // 4)]
    tail = rows[-max(1, len(rows) // 4):]

    def mean(rs, key):
        return round(sum(r[key] for r in rs) / len(rs), 4) if rs else None

    import resource

    summary = {
        "policy": model_label(config.policy),
        "reward": str(reward),
        "prompts": prompt_stats.as_dict(),
        "updates": rows[-1]["update"] if rows else 0,
        "planned_updates": plan.updates,
        "episodes": (rows[-1]["update"] if rows else 0) * plan.batch_size,
        "world_size": plan.world_size,
        "reward_first_quarter": mean(head, "reward"),
        "reward_last_quarter": mean(tail, "reward"),
        "kl_last_quarter": mean(tail, "kl"),
        "response_length_last_quarter": mean(tail, "response_length"),
        "seconds": round(seconds, 1),
        "seconds_per_update": mean(rows, "seconds"),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "adapter": str(out / "adapter"),
        "merged": merged,
        "value_model": config.value_model,
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
