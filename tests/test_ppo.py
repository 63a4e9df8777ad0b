"""``rewardlab ppo``: a tiny policy and a tiny rule reward, end to end; resume; bad input; the CLI;
two processes under accelerate.

The reward favours the letter "e" (its share of the response's characters, x10). The tiny model's
logits come from RMS-normed states times small tied embeddings, so LoRA on q/v alone barely moves
them; the runs here also adapt ``lm_head``, which the policy can learn from in a few updates.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rewardlab.errors import RewardlabError

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

PROMPTS = [
    "What is the capital of France?", "Write a poem about the sea.", "How do I make tea?",
    "Why is the sky blue?", "Thank you for the answer.", "Tell me about the fox.", "What is the weather?",
    "Explain the waves.", "Is the dog lazy?", "Please write a short answer.", "How are you?",
    "What is blue?", "Boil the water.", "Add the tea.", "Wait three minutes.", "Light from the sun.",
]


def letter_e(prompt, response: str) -> float:
    """Share of the response's characters that are "e"."""
    return response.count("e") / max(len(response), 1)


NAN_STATE = {"calls": 0, "after": 10**9}


def nan_later(prompt, response: str) -> float:
    """letter_e until NAN_STATE["after"] calls, then NaN (a reward gone wrong mid-run)."""
    NAN_STATE["calls"] += 1
    return float("nan") if NAN_STATE["calls"] > NAN_STATE["after"] else letter_e(prompt, response)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("ppo-inputs")
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    reward = folder / "reward.yaml"
    reward.write_text("terms:\n  - type: callable\n    function: test_ppo:letter_e\n    weight: 10\n")
    nan_reward = folder / "nan_reward.yaml"
    nan_reward.write_text("terms:\n  - type: callable\n    function: test_ppo:nan_later\n")
    return {"prompts": prompts, "reward": reward, "nan_reward": nan_reward, "policy": str(tiny_model_dir)}


def tiny_config(inputs, **overrides):
    from train.ppo_config import load_config

    base = {
        "policy": inputs["policy"], "response_length": 8, "per_device_train_batch_size": 8,
        "local_rollout_forward_batch_size": 8, "num_ppo_epochs": 2, "total_episodes": 80,
        "learning_rate": 0.01, "lora_target_modules": ["q_proj", "v_proj", "lm_head"],
        "save_every": 4, "sample_every": 5, "seed": 0,
    }
    return load_config(None, {**base, **overrides})


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mean_sampled_reward(policy_dir, adapter_dir, n_per_prompt: int = 8) -> float:
    """Mean letter_e of responses sampled (seeded) from the base or the base + adapter."""
    from peft import PeftModel

    from rewardlab.models import format_prompt, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(policy_dir, padding_side="left")
    model = load_causal_lm(policy_dir, tokenizer=tokenizer)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    texts = [format_prompt(tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(123)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, top_k=0, top_p=1.0, temperature=0.7, max_new_tokens=8,
                             num_return_sequences=n_per_prompt, pad_token_id=tokenizer.pad_token_id)
    responses = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return sum(letter_e(None, r) for r in responses) / len(responses)


@pytest.fixture(scope="module")
def full_run(inputs, tmp_path_factory):
    """One uninterrupted tiny run (10 updates), shared by the end-to-end and resume tests."""
    from train.ppo import run_ppo

    out = tmp_path_factory.mktemp("ppo-full") / "run"
    summary = run_ppo(tiny_config(inputs), str(inputs["reward"]), str(inputs["prompts"]), out)
    return out, summary


# ---------------------------------------------------------------------------------------------
# End to end, resume
# ---------------------------------------------------------------------------------------------


def test_end_to_end_changes_lora_weights_and_raises_reward(full_run, inputs):
    from safetensors.torch import load_file

    out, summary = full_run
    assert summary["updates"] == summary["planned_updates"] == 10
    rows = read_rows(out / "metrics.jsonl")
    assert [r["update"] for r in rows] == list(range(1, 11))
    assert all(math.isfinite(r["reward"]) and math.isfinite(r["kl"]) for r in rows)
    assert {"entropy", "response_length", "eos_fraction", "policy_loss", "value_loss"} <= set(rows[0])
    # LoRA B matrices start at zero: any non-zero one was trained.
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    trained = [k for k, v in adapter.items() if "lora_B" in k and v.abs().max() > 1e-4]
    assert trained, "no LoRA weight moved"
    # The policy now earns more reward than the base model (sampled the same way, seeded).
    before = mean_sampled_reward(inputs["policy"], None)
    after = mean_sampled_reward(inputs["policy"], out / "adapter")
    assert after > before * 1.15, (before, after)
    # Everything a person looks at afterwards.
    for name in ("reward.png", "kl.png", "entropy.png", "response_length.png", "overview.png"):
        assert (out / "plots" / name).stat().st_size > 1000
    samples = read_rows(out / "samples.jsonl")
    assert {s["update"] for s in samples} == {5, 10} and {"prompt", "response", "reward"} <= set(samples[0])
    assert "kl_coef" in (out / "ppo_config.yaml").read_text()
    assert json.loads((out / "ppo_summary.json").read_text())["updates"] == 10
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["update-000004", "update-000008"]


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_reaches_the_same_run(full_run, inputs, tmp_path):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from train.ppo import run_ppo

    class StopAtUpdate6(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 6:
                raise _Interrupt  # as if killed after update 6; the last checkpoint is update 4

    out = tmp_path / "run"
    with pytest.raises(_Interrupt):
        run_ppo(tiny_config(inputs), str(inputs["reward"]), str(inputs["prompts"]), out, callbacks=[StopAtUpdate6()])
    assert not (out / "ppo_summary.json").exists()
    with pytest.raises(RewardlabError, match="--resume"):  # a second plain start refuses to mix runs
        run_ppo(tiny_config(inputs), str(inputs["reward"]), str(inputs["prompts"]), out)
    with pytest.raises(RewardlabError, match="different config.*learning_rate"):
        run_ppo(tiny_config(inputs, learning_rate=0.02), str(inputs["reward"]), str(inputs["prompts"]), out,
                resume=True)
    summary = run_ppo(tiny_config(inputs), str(inputs["reward"]), str(inputs["prompts"]), out, resume=True)
    assert summary["updates"] == summary["planned_updates"] == 10
    assert [r["update"] for r in read_rows(out / "metrics.jsonl")] == list(range(1, 11))
    # Same prompt order, RNG and optimizer state: the resumed run ends where the uninterrupted one did.
    full_out, _ = full_run
    ours = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    theirs = load_file(str(full_out / "adapter" / "adapter_model.safetensors"))
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in theirs) < 1e-4
    full_rewards = [r["reward"] for r in read_rows(full_out / "metrics.jsonl")]
    assert [r["reward"] for r in read_rows(out / "metrics.jsonl")] == pytest.approx(full_rewards, abs=1e-5)
    with pytest.raises(RewardlabError, match="already finished"):
        run_ppo(tiny_config(inputs), str(inputs["reward"]), str(inputs["prompts"]), out, resume=True)


def test_non_finite_reward_stops_clearly_and_keeps_a_checkpoint(inputs, tmp_path):
    from train.ppo import run_ppo

    NAN_STATE.update(calls=0, after=16)  # two updates of 8 responses, then NaN
    out = tmp_path / "run"
    config = tiny_config(inputs, total_episodes=40, save_every=0, sample_every=0)
    with pytest.raises(RewardlabError, match=r"update 3.*non-finite.*--resume") as err:
        run_ppo(config, str(inputs["nan_reward"]), str(inputs["prompts"]), out)
    assert "checkpoints/update-000002" in str(err.value)
    assert (out / "checkpoints" / "update-000002" / "complete").is_file()
    assert [r["update"] for r in read_rows(out / "metrics.jsonl")] == [1, 2]


# ---------------------------------------------------------------------------------------------
# The value model: one trunk pass, same numbers as two
# ---------------------------------------------------------------------------------------------


def test_shared_value_head_runs_the_trunk_once_with_the_same_gradients(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from trl.experimental.ppo.ppo_trainer import PolicyAndValueWrapper, forward

    from rewardlab.models import load_causal_lm, load_tokenizer
    from train.ppo import SharedValueHead

    tokenizer = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(0)
    policy = get_peft_model(load_causal_lm(str(tiny_model_dir), tokenizer=tokenizer),
                            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # non-zero, so gradients reach lora_A too
    value = SharedValueHead(policy)
    with torch.no_grad():
        value.score.weight.normal_(0, 0.1)
    wrapper = PolicyAndValueWrapper(policy, value)
    computes = []
    original = value._shared._compute
    value._shared._compute = lambda *a, **k: computes.append(1) or original(*a, **k)
    ids = torch.randint(3, len(tokenizer) - 1, (3, 12))
    ids[0, :4] = tokenizer.pad_token_id  # left padding, as in PPO

    def loss_and_grads(run):
        policy.zero_grad()
        value.zero_grad()
        logits, values = run()
        (logits.square().mean() + values.square().mean()).backward()
        grads = {n: p.grad.clone() for n, p in wrapper.named_parameters() if p.grad is not None}
        return logits.detach(), values.detach(), grads

    one = loss_and_grads(lambda: (lambda o, v: (o.logits, v))(*forward(wrapper, ids, tokenizer.pad_token_id)))
    assert len(computes) == 1  # the policy reused the critic's trunk pass

    def two_passes():
        mask = ids != tokenizer.pad_token_id
        kw = dict(input_ids=torch.masked_fill(ids, ~mask, 0), attention_mask=mask,
                  position_ids=mask.cumsum(1) - mask.long(), return_dict=True, output_hidden_states=True)
        logits = policy(**kw).logits
        trunk = value._shared.trunk
        hidden = original(**{k: v for k, v in kw.items() if k != "return_dict"}, use_cache=False).hidden_states[-1]
        assert trunk is policy.get_base_model().model
        return logits, value.score(hidden)

    two = loss_and_grads(two_passes)
    torch.testing.assert_close(one[0], two[0])
    torch.testing.assert_close(one[1], two[1])
    assert one[2].keys() == two[2].keys() and any("lora_A" in k for k in one[2])
    for name in one[2]:
        torch.testing.assert_close(one[2][name], two[2][name], rtol=1e-4, atol=1e-6)


def test_separate_value_model_trains_its_own_adapters(inputs, tmp_path):
    from train.ppo import run_ppo

    out = tmp_path / "run"
    config = tiny_config(inputs, value_model="separate", total_episodes=24, save_every=2, sample_every=0)
    summary = run_ppo(config, str(inputs["reward"]), str(inputs["prompts"]), out)
    assert summary["updates"] == 3 and summary["value_model"] == "separate"
    value = torch.load(out / "checkpoints" / "update-000002" / "value.pt")
    assert any("lora_A" in k for k in value) and any(k.startswith("score") for k in value)
    assert all(not k.startswith("score") or v.abs().max() > 0 for k, v in value.items())  # the head trained


# ---------------------------------------------------------------------------------------------
# Config, batch arithmetic, pad token, prompts, reward: clear errors before any training
# ---------------------------------------------------------------------------------------------


def test_unknown_config_key_lists_the_valid_ones(tmp_path):
    from train.ppo_config import load_config, save_config

    with pytest.raises(RewardlabError, match=r"unknown config key 'kl_coeff'.*valid keys: .*kl_coef"):
        load_config(None, ["--kl_coeff", "0.1"])
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("kl_coef: 0.1\nlearning_rate: 1e-4\nbatch: 3\n")
    with pytest.raises(RewardlabError, match=r"'batch' in .*run.yaml; valid keys"):
        load_config(yaml_file)
    yaml_file.write_text("kl_coef: 0.1\nlearning_rate: 1e-4\nlora_target_modules: [q_proj, k_proj]\n")
    config = load_config(yaml_file, ["--kl-coef", "0.2", "--whiten_rewards"])
    assert (config.kl_coef, config.learning_rate, config.whiten_rewards) == (0.2, 1e-4, True)
    assert config.lora_target_modules == ["q_proj", "k_proj"]
    with pytest.raises(RewardlabError, match="'num_ppo_epochs' must be int"):
        load_config(None, {"num_ppo_epochs": 1.5})
    saved = load_config(save_config(config, tmp_path))  # the saved config loads back as it was
    assert saved == config


def test_batch_arithmetic_is_checked_up_front():
    from train.ppo_config import batch_plan, load_config

    plan = batch_plan(load_config(None, {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                                         "total_episodes": 20}), world_size=2)
    assert (plan.local_batch_size, plan.batch_size, plan.updates) == (8, 16, 2)
    with pytest.raises(RewardlabError, match=r"4 x 1 = 4, which num_mini_batches \(3\) does not divide"):
        batch_plan(load_config(None, {"num_mini_batches": 3}))
    with pytest.raises(RewardlabError, match="per_device_train_batch_size x gradient_accumulation_steps must equal"):
        batch_plan(load_config(None, {"num_mini_batches": 2, "gradient_accumulation_steps": 2}))
    with pytest.raises(RewardlabError, match="whiten_rewards needs mini-batches of at least 8"):
        batch_plan(load_config(None, {"whiten_rewards": True}))
    with pytest.raises(RewardlabError, match="only 3 prompt"):
        batch_plan(load_config(None, {}), num_prompts=3)
    with pytest.raises(RewardlabError, match="value_model must be one of shared, separate"):
        load_config(None, {"value_model": "big"})


def test_pad_equal_to_eos_is_fixed_or_refused(tiny_model_dir, inputs):
    from transformers import AutoTokenizer

    from rewardlab.models import load_tokenizer
    from train.ppo import _check_pad
    from train.ppo_data import build_prompt_dataset

    shipped = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert shipped.pad_token_id == shipped.eos_token_id  # as SmolLM2 ships
    with pytest.raises(RewardlabError, match="pad token .* is its EOS token"):
        _check_pad(shipped)
    tokenizer = load_tokenizer(str(tiny_model_dir), padding_side="left")
    _check_pad(tokenizer)
    dataset, _ = build_prompt_dataset(str(inputs["prompts"]), tokenizer, 256)
    ids = [t for row in dataset["input_ids"] for t in row]
    assert tokenizer.eos_token_id in ids  # the template's end-of-turn tokens survive TRL's pad mask
    assert tokenizer.pad_token_id not in ids


def test_prompts_from_files_preference_sets_and_the_store(tiny_model_dir, tmp_path, store):
    from rewardlab.formats import PromptRecord
    from rewardlab.models import load_tokenizer
    from train.ppo_data import build_prompt_dataset

    tokenizer = load_tokenizer(str(tiny_model_dir), padding_side="left")
    hh = tmp_path / "hh.jsonl"  # HH-RLHF transcripts: two pairs share one prompt
    rows = [{"chosen": "\n\nHuman: Why is the sky blue?\n\nAssistant: Light scatters.",
             "rejected": "\n\nHuman: Why is the sky blue?\n\nAssistant: No idea."},
            {"chosen": "\n\nHuman: Why is the sky blue?\n\nAssistant: Air.",
             "rejected": "\n\nHuman: Why is the sky blue?\n\nAssistant: Paint."},
            {"chosen": "\n\nHuman: " + "Tell me about the quick brown fox. " * 20 + "\n\nAssistant: Sure.",
             "rejected": "\n\nHuman: " + "Tell me about the quick brown fox. " * 20 + "\n\nAssistant: No."}]
    hh.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset, stats = build_prompt_dataset(str(hh), tokenizer, 48)
    assert (stats.prompts, stats.duplicates, stats.truncated) == (2, 1, 1)
    assert max(len(r) for r in dataset["input_ids"]) == 48 and stats.longest > 48
    assert dataset.column_names == ["input_ids"]

    url = f"sqlite:///{tmp_path / 'rewardlab.db'}"
    with pytest.raises(RewardlabError, match="no prompts"):
        build_prompt_dataset(url, tokenizer, 64)
    store.add_prompts([PromptRecord(messages=[{"role": "user", "content": "Hello there?"}]),
                       PromptRecord(messages=[{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "What is tea?"}])])
    dataset, stats = build_prompt_dataset(url, tokenizer, 64)
    assert stats.prompts == 2
    assert "What is tea?" in tokenizer.decode(dataset["input_ids"][1])
    with pytest.raises(RewardlabError, match="no 'prompts' table"):
        other = tmp_path / "other.db"
        import sqlite3

        sqlite3.connect(other).execute("create table t (x int)").connection.close()
        build_prompt_dataset(str(other), tokenizer, 64)


def test_reward_model_folders(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from rewardlab.models import load_tokenizer
    from reward_models.scorer import RewardFormat
    from tiny_models import build_tiny_causal_lm
    from train.ppo import load_reward

    policy_tokenizer = load_tokenizer(str(tiny_model_dir), padding_side="left")
    # A learned reward model (the common case): wrapped, normalized with its saved statistics.
    rm = tmp_path / "rm"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=1).save_pretrained(rm)
    load_tokenizer(str(tiny_model_dir), padding_side="right").save_pretrained(rm)
    RewardFormat(style="conversational", max_length=128).save(rm)
    (rm / "reward_stats.json").write_text(json.dumps({"mean": 0.5, "std": 2.0}))
    adapter = load_reward(str(rm), policy_tokenizer)
    term = adapter.reward.terms[0]
    assert (term.kind, term.normalize, term.shift, term.scale) == ("reward_model", "stats", 0.5, 2.0)
    # A plain classifier with another tokenizer: PPO would feed it the policy's ids.
    other = build_tiny_causal_lm(tmp_path / "other-lm", seed=1, vocab_variant="other")
    plain = tmp_path / "plain"
    AutoModelForSequenceClassification.from_pretrained(str(other), num_labels=1).save_pretrained(plain)
    load_tokenizer(str(other)).save_pretrained(plain)
    with pytest.raises(RewardlabError, match="different tokenizer.*composed reward"):
        load_reward(str(plain), policy_tokenizer)
    with pytest.raises(RewardlabError, match="no such file"):
        load_reward(str(tmp_path / "missing"), policy_tokenizer)


# ---------------------------------------------------------------------------------------------
# The command, as a user runs it
# ---------------------------------------------------------------------------------------------


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "HF_HUB_OFFLINE": "1",
            "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_cli_runs_and_merges(inputs, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rewardlab.cli", "ppo", "--reward", str(inputs["reward"]),
           "--prompts", str(inputs["prompts"]), "--out", str(out), "--policy", inputs["policy"],
           "--total_episodes", "16", "--response_length", "6", "--save_every", "2", "--merge", "true"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["updates"] == 4 and summary["merged"] == str(out / "merged")
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "merged")  # a plain transformers folder
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "plots" / "overview.png").is_file()


def test_cli_errors_are_one_line_with_status_2(inputs, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    base = [sys.executable, "-m", "rewardlab.cli", "ppo", "--reward", str(inputs["reward"]),
            "--out", str(tmp_path / "run"), "--policy", inputs["policy"]]
    for extra, expected in (
        (["--prompts", str(inputs["prompts"]), "--kl_coeff", "0.1"], "unknown config key 'kl_coeff'"),
        (["--prompts", str(empty)], "the file is empty"),
    ):
        done = subprocess.run(base + extra, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
        assert done.returncode == 2, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("rewardlab: ") and expected in last, last


# ---------------------------------------------------------------------------------------------
# Two processes (DDP over gloo on CPU)
# ---------------------------------------------------------------------------------------------


def test_two_cpu_processes_under_accelerate_killed_and_resumed(inputs, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on a machine without GPUs: torchrun starts two
    processes and rewardlab keeps them on the CPU (gloo). Killed after a checkpoint, then resumed."""
    import signal
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "rewardlab.cli", "ppo", "--reward", str(inputs["reward"]), "--prompts", str(inputs["prompts"]),
           "--out", str(out), "--policy", inputs["policy"], "--total_episodes", "64",
           "--per_device_train_batch_size", "4", "--local_rollout_forward_batch_size", "4",
           "--response_length", "6", "--save_every", "2"]
    env = {**_env(), "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    launcher = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    marker = out / "checkpoints" / "update-000002" / "complete"
    deadline = time.monotonic() + 300
    while not marker.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), launcher.stderr.read()[-3000:] if launcher.poll() is not None else "timed out"
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and both workers, as a crash would
    launcher.wait()
    launcher.stderr.close()
    assert not (out / "ppo_summary.json").exists(), "the run finished before it could be killed"

    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming at update" in done.stdout + done.stderr
    summary = json.loads((out / "ppo_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["updates"] == 8 and summary["episodes"] == 64
    checkpoint = out / "checkpoints" / "update-000006"
    assert (checkpoint / "rng-0.pt").is_file() and (checkpoint / "rng-1.pt").is_file()
    assert [r["update"] for r in read_rows(out / "metrics.jsonl")] == list(range(1, 9))
