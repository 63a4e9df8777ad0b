"""Composed reward (weights, normalization, breakdown, YAML errors, callables, learned reward models)
and its PPO adapter: exact prompt/response recovery from policy token ids, and one real
trl.experimental.ppo.PPOTrainer update with a same-tokenizer, an other-tokenizer and a rule-only reward."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch

from rewardlab.errors import RewardlabError
from rewardlab.models import format_prompt, load_causal_lm, load_sequence_classifier, load_tokenizer
from reward_models.compose import ComposedReward, Term, load_function

P1 = [{"role": "user", "content": "What is the capital of France?"}]
P2 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi 你好"}]

RULES_ONLY = {
    "terms": [
        {"type": "length", "min": 5, "max": 20, "weight": 2.0},
        {"type": "keywords", "reward": ["paris"], "weight": 0.5},
        {"type": "repetition", "n": 2, "normalize": "fixed", "shift": -1.0, "scale": 2.0},
    ]
}


# ---- weights, normalization, breakdown -----------------------------------------------------


def test_weighted_sum_of_normalized_terms_and_breakdown():
    reward = ComposedReward.from_config(RULES_ONLY)
    b = reward.breakdown(P1, "Paris")
    assert list(b["terms"]) == ["length", "keywords", "repetition"]
    assert b["terms"]["length"] == {"type": "length", "raw": 0.0, "normalized": 0.0, "weight": 2.0, "weighted": 0.0}
    assert b["terms"]["keywords"]["weighted"] == 0.5
    rep = b["terms"]["repetition"]  # fixed: (raw - shift) / scale = (0 - -1) / 2
    assert (rep["raw"], rep["normalized"], rep["weighted"]) == (0.0, 0.5, 0.5)
    assert b["total"] == pytest.approx(1.0)

    long = "Paris Paris Paris Paris Paris"  # 29 chars, bigram repetition 3/4
    b = reward.breakdown(P1, long)
    assert b["terms"]["length"]["weighted"] == pytest.approx(2.0 * -(29 - 20) / 20)
    assert b["terms"]["repetition"]["normalized"] == pytest.approx((-0.75 + 1) / 2)
    assert b["total"] == pytest.approx(sum(t["weighted"] for t in b["terms"].values()))
    assert reward.score([P1, P2, "plain text prompt"], ["Paris", long, "x"]) == pytest.approx(
        [reward.breakdown(p, r)["total"] for p, r in [(P1, "Paris"), (P2, long), ("plain text prompt", "x")]]
    )
    assert reward(P1, "Paris") == pytest.approx(1.0)
    assert reward.score([], []) == []


def test_repeated_types_get_numbered_names_and_explicit_names_must_be_unique():
    reward = ComposedReward.from_config({"terms": [{"type": "length", "max": 5}, {"type": "length", "min": 1}]})
    assert reward.names == ["length", "length_2"]
    with pytest.raises(RewardlabError, match="unique; repeated: a"):
        ComposedReward.from_config({"terms": [{"type": "length", "max": 5, "name": "a"}, {"type": "repetition", "name": "a"}]})


def test_python_terms_and_non_finite_values_name_the_term():
    reward = ComposedReward([Term("half", lambda ps, rs: [0.5] * len(rs), weight=4.0)])
    assert reward.score([P1], ["x"]) == [2.0]
    nan = ComposedReward([Term("broken", lambda ps, rs: [float("nan")] * len(rs))])
    with pytest.raises(RewardlabError, match="reward term 'broken' returned a non-finite value"):
        nan.score([P1], ["x"])
    huge = ComposedReward([Term("huge", lambda ps, rs: [1e308], weight=1e10)])
    with pytest.raises(RewardlabError, match="'huge' gave a non-finite value"):
        huge.score([P1], ["x"])
    text = ComposedReward([Term("texty", lambda ps, rs: ["high"])])
    with pytest.raises(RewardlabError, match="'texty' returned 'high' for row 0; it must return a number"):
        text.score([P1], ["x"])
    with pytest.raises(RewardlabError, match="2 prompts but 1 responses"):
        ComposedReward.from_config(RULES_ONLY).score([P1, P1], ["x"])


# ---- config and YAML errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    "config, message",
    [
        ({"terms": []}, "'terms' must be a non-empty list"),
        ({"term": [{"type": "length"}]}, "unknown key\\(s\\) term; valid: terms, device"),
        ({"terms": [{"weight": 1}]}, "term 1: each term is a mapping with a 'type'"),
        ({"terms": [{"type": "lenght"}]}, "unknown term type 'lenght'; valid types: reward_model, callable, format, keywords, length"),
        ({"terms": [{"type": "length", "max": 5, "wieght": 2}]}, "term 1 \\(length\\): unknown key\\(s\\) wieght; valid: name, type, weight, normalize, shift, scale, min, max"),
        ({"terms": [{"type": "length", "max": 5, "weight": "big"}]}, "'weight' must be a finite number"),
        ({"terms": [{"type": "length", "max": 5, "normalize": "zscore"}]}, "normalize must be one of none, stats, fixed"),
        ({"terms": [{"type": "length", "max": 5, "normalize": "stats"}]}, "only reward_model terms have"),
        ({"terms": [{"type": "length", "max": 5, "normalize": "none", "scale": 2}]}, "shift and scale apply only with normalize: fixed"),
        ({"terms": [{"type": "length", "max": 5, "scale": 0}]}, "scale must not be 0"),
        ({"terms": [{"type": "reward_model"}]}, "needs 'path'"),
        ({"terms": [{"type": "reward_model", "path": "/nonexistent/rm"}]}, "folder '/nonexistent/rm' does not exist"),
        ({"terms": [{"type": "callable"}]}, "needs 'function'"),
        ([{"type": "length"}], "must be a mapping with a 'terms' list"),
    ],
)
def test_config_errors_say_what_and_list_valid_choices(config, message):
    with pytest.raises(RewardlabError, match=message):
        ComposedReward.from_config(config)


def test_from_yaml_and_its_errors_name_file_and_line(tmp_path):
    good = tmp_path / "reward.yaml"
    good.write_text(textwrap.dedent("""\
        # a rule-only reward
        terms:
          - type: length
            min: 5
            max: 20
            weight: 2.0
          - type: keywords
            reward: [paris, 北京]
            weight: 0.5
        """), encoding="utf-8")
    reward = ComposedReward.from_yaml(good)
    assert reward.names == ["length", "keywords"]
    assert reward.breakdown(P1, "我爱北京")["total"] == pytest.approx(2.0 * -(5 - 4) / 5 + 0.5)

    bad = tmp_path / "bad.yaml"
    bad.write_text("terms:\n  - type: length\n    max: 5\n  - type: regex\n    must: ['x']\n")
    with pytest.raises(RewardlabError, match=r"bad.yaml:4: term 2 \(regex\): unknown key\(s\) must; valid: .*must_match"):
        ComposedReward.from_yaml(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("terms: [\n")
    with pytest.raises(RewardlabError, match="broken.yaml: not valid YAML"):
        ComposedReward.from_yaml(broken)
    with pytest.raises(RewardlabError, match="no such reward config file"):
        ComposedReward.from_yaml(tmp_path / "missing.yaml")


# ---- callables -----------------------------------------------------------------------------


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""\
        import math

        def mentions_prompt(prompt, response, bonus=1.0):
            words = prompt[-1]["content"].lower().split()
            return bonus * sum(w.strip("?") in response.lower() for w in words)

        def lengths(prompts, responses):
            return [len(r) for r in responses]

        def nan(prompt, response):
            return math.nan

        def boom(prompt, response):
            raise ValueError("no model loaded")

        class Scorers:
            @staticmethod
            def one(prompt, response):
                return 1
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_callable_terms(reward_module):
    reward = ComposedReward.from_config({"terms": [
        {"type": "callable", "function": f"{reward_module}:mentions_prompt", "kwargs": {"bonus": 2.0}},
        {"type": "callable", "function": f"{reward_module}:lengths", "batched": True, "name": "chars",
         "normalize": "fixed", "shift": 10, "scale": 5},
        {"type": "callable", "function": f"{reward_module}:Scorers.one", "weight": -1},
    ]})
    b = reward.breakdown(P1, "The capital is Paris")
    assert b["terms"]["callable"]["raw"] == 2 * 3  # "the", "capital", "is"
    assert b["terms"]["chars"]["normalized"] == pytest.approx((20 - 10) / 5)
    assert b["terms"]["callable_2"]["weighted"] == -1.0
    assert b["total"] == pytest.approx(6 + 2 - 1)


def test_callable_errors(reward_module):
    with pytest.raises(RewardlabError, match="must be 'module:function'"):
        load_function("my_rewards.mentions_prompt")
    with pytest.raises(RewardlabError, match="cannot import module 'no_such_mod'"):
        load_function("no_such_mod:f")
    with pytest.raises(RewardlabError, match="module 'my_rewards' has no 'missing'"):
        load_function("my_rewards:missing")
    nan = ComposedReward.from_config({"terms": [{"type": "callable", "function": "my_rewards:nan", "name": "judge"}]})
    with pytest.raises(RewardlabError, match="reward term 'judge' returned a non-finite value \\(nan\\) for row 0"):
        nan.score([P1], ["x"])
    boom = ComposedReward.from_config({"terms": [{"type": "callable", "function": "my_rewards:boom"}]})
    with pytest.raises(RewardlabError, match="reward term 'callable' failed: ValueError: no model loaded"):
        boom.score([P1], ["x"])


# ---- learned reward models -----------------------------------------------------------------


def build_reward_model(out_dir, vocab_variant: str, seed: int, stats: dict | None = None):
    """A tiny rewardlab reward-model folder (random score head) as `reward train` leaves one."""
    from reward_models.scorer import STATS_FILE, RewardFormat
    from tiny_models import build_tiny_causal_lm

    lm = build_tiny_causal_lm(out_dir / "lm", seed=seed, vocab_variant=vocab_variant)
    tokenizer = load_tokenizer(str(lm), padding_side="right")
    torch.manual_seed(seed)
    model = load_sequence_classifier(str(lm), tokenizer=tokenizer)
    with torch.no_grad():
        model.score.weight.normal_(0, 5.0)  # a head with a spread of rewards
    rm = out_dir / "rm"
    model.save_pretrained(rm)
    tokenizer.save_pretrained(rm)
    RewardFormat(style="conversational", max_length=128).save(rm)
    if stats is not None:
        (rm / STATS_FILE).write_text(json.dumps(stats))
    return rm


@pytest.fixture(scope="module")
def rm_same(tmp_path_factory):
    return build_reward_model(tmp_path_factory.mktemp("rm-same"), "default", seed=1, stats={"mean": 0.5, "std": 2.0})


@pytest.fixture(scope="module")
def rm_other(tmp_path_factory):
    return build_reward_model(tmp_path_factory.mktemp("rm-other"), "other", seed=2, stats={"mean": -1.0, "std": 0.5})


def test_reward_model_term_normalizes_with_saved_stats(rm_other, tmp_path):
    from reward_models.scorer import RewardModelScorer

    prompts, responses = [P1, P2], ["Paris.", "Hi!"]
    raw = RewardModelScorer(rm_other).score(prompts, responses)
    assert len(set(raw)) == 2
    reward = ComposedReward.from_config({"terms": [{"type": "reward_model", "path": str(rm_other), "weight": 3.0}]})
    b = reward.breakdown(P1, "Paris.")["terms"]["reward_model"]
    assert b["raw"] == pytest.approx(raw[0], abs=1e-5)
    assert b["normalized"] == pytest.approx((raw[0] + 1.0) / 0.5, abs=1e-4)
    assert reward.score(prompts, responses) == pytest.approx([3 * (r + 1.0) / 0.5 for r in raw], abs=1e-4)

    # relative path next to the YAML file; normalize: none gives the raw score
    (tmp_path / "rm").symlink_to(rm_other, target_is_directory=True)
    (tmp_path / "r.yaml").write_text("terms:\n  - type: reward_model\n    path: rm\n    normalize: none\n")
    assert ComposedReward.from_yaml(tmp_path / "r.yaml").score([P1], ["Paris."]) == pytest.approx([raw[0]], abs=1e-5)


def test_reward_model_without_stats_needs_another_normalization(tmp_path):
    rm = build_reward_model(tmp_path, "default", seed=3, stats=None)
    with pytest.raises(RewardlabError, match="no usable reward statistics.*normalize: none or fixed"):
        ComposedReward.from_config({"terms": [{"type": "reward_model", "path": str(rm)}]})
    reward = ComposedReward.from_config({"terms": [{"type": "reward_model", "path": str(rm), "normalize": "none"}]})
    assert math.isfinite(reward(P1, "Paris."))


# ---- the PPO adapter -----------------------------------------------------------------------


def _rollout(tokenizer, prompts, response_texts):
    """query_responses as PPOTrainer builds them: left-padded queries, then responses cut after
    EOS and right-padded with pad (TRL's truncate_response)."""
    queries = [tokenizer(format_prompt(tokenizer, m), add_special_tokens=False)["input_ids"] for m in prompts]
    width = max(map(len, queries))
    pad = tokenizer.pad_token_id
    queries = [[pad] * (width - len(q)) + q for q in queries]
    responses = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in response_texts]
    rwidth = max(map(len, responses)) + 2
    responses = [r + [pad] * (rwidth - len(r)) for r in responses]
    return torch.tensor([q + r for q, r in zip(queries, responses)]), width


@pytest.mark.parametrize("policy_variant", ["default", "other"])
def test_adapter_recovers_prompt_and_response_from_policy_ids(tmp_path, policy_variant):
    from tiny_models import build_tiny_causal_lm
    from trl.experimental import utils as trl_utils

    from reward_models.ppo_adapter import ComposedRewardForPPO

    tokenizer = load_tokenizer(str(build_tiny_causal_lm(tmp_path, vocab_variant=policy_variant)))
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    reward = ComposedReward.from_config(RULES_ONLY)
    adapter = ComposedRewardForPPO(reward, tokenizer)
    prompts = [P1, P2, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c?"}]]
    eos = tokenizer.eos_token
    texts = [f"Paris Paris.{eos}", f"Hi 😀 你好{eos}", f"{eos}"]  # the last reply is empty
    ids, context = _rollout(tokenizer, prompts, texts)
    expected = reward.score(prompts, ["Paris Paris.", "Hi 😀 你好", ""])
    assert len(set(expected)) == 3

    # through trl's get_reward (hooked: exact context length); TRL masks pads to id 0
    logits, scores, lengths = trl_utils.get_reward(adapter, ids, tokenizer.pad_token_id, context)
    assert scores.tolist() == pytest.approx(expected)
    assert [row["prompt"] for row in adapter.last_batch] == prompts
    assert [row["response"] for row in adapter.last_batch] == ["Paris Paris.", "Hi 😀 你好", ""]
    assert adapter.context_length is None  # only set during the call

    # without the hook the adapter finds the prompt end itself
    logits, scores, _ = trl_utils.get_reward.__wrapped__(adapter, ids, tokenizer.pad_token_id, context)
    assert scores.tolist() == pytest.approx(expected)
    assert [row["prompt"] for row in adapter.last_batch] == prompts


def test_check_reward_model_for_ppo(tiny_model_dir, rm_same, rm_other):
    from reward_models.ppo_adapter import ComposedRewardForPPO, check_reward_model_for_ppo
    from transformers import AutoModelForSequenceClassification

    policy_tokenizer = load_tokenizer(str(tiny_model_dir))
    same = AutoModelForSequenceClassification.from_pretrained(rm_same)
    check_reward_model_for_ppo(same, policy_tokenizer)  # same tokenizer: fine as it is
    other = AutoModelForSequenceClassification.from_pretrained(rm_other)
    with pytest.raises(RewardlabError, match="different tokenizer than the policy.*composed reward.*type: reward_model"):
        check_reward_model_for_ppo(other, policy_tokenizer)
    reward = ComposedReward.from_config({"terms": [{"type": "reward_model", "path": str(rm_other)}]})
    with pytest.raises(RewardlabError, match="wrapped for TRL: pass ComposedRewardForPPO"):
        check_reward_model_for_ppo(reward, policy_tokenizer)
    check_reward_model_for_ppo(ComposedRewardForPPO(reward, policy_tokenizer), policy_tokenizer)
    with pytest.raises(RewardlabError, match="another tokenizer than the policy's"):
        check_reward_model_for_ppo(ComposedRewardForPPO(reward, load_tokenizer(str(rm_other))), policy_tokenizer)
    with pytest.raises(RewardlabError, match="needs a backbone and a 'score' head"):
        check_reward_model_for_ppo(torch.nn.Linear(2, 2), policy_tokenizer)


PPO_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a short poem about the sea."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I make tea?"}],
    [{"role": "user", "content": "Why is the sky blue?"}],
]


@pytest.mark.parametrize("kind", ["same_tokenizer", "other_tokenizer", "rules_only"])
def test_adapter_drives_a_real_ppo_update(kind, tiny_model_dir, rm_same, rm_other, tmp_path):
    import datasets
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from reward_models.ppo_adapter import ComposedRewardForPPO, check_reward_model_for_ppo

    terms = {
        "same_tokenizer": [{"type": "reward_model", "path": str(rm_same)}],
        "other_tokenizer": [{"type": "reward_model", "path": str(rm_other)}, {"type": "repetition"}],
        "rules_only": RULES_ONLY["terms"],
    }[kind]
    reward = ComposedReward.from_config({"terms": terms})
    tokenizer = load_tokenizer(str(tiny_model_dir), padding_side="left")
    assert tokenizer.pad_token_id != tokenizer.eos_token_id  # FINDINGS: TRL masks ids == pad
    adapter = ComposedRewardForPPO(reward, tokenizer)
    check_reward_model_for_ppo(adapter, tokenizer)

    torch.manual_seed(0)
    policy = load_causal_lm(str(tiny_model_dir), tokenizer=tokenizer)
    ref = load_causal_lm(str(tiny_model_dir), tokenizer=tokenizer)
    value = load_sequence_classifier(str(tiny_model_dir), tokenizer=tokenizer)
    rows = [tokenizer(format_prompt(tokenizer, m), add_special_tokens=False)["input_ids"] for m in PPO_PROMPTS]
    dataset = datasets.Dataset.from_dict({"input_ids": rows})
    config = PPOConfig(
        output_dir=str(tmp_path / "ppo"), bf16=False, report_to=[], seed=0, save_strategy="no",
        per_device_train_batch_size=2, gradient_accumulation_steps=1, num_mini_batches=1,
        local_rollout_forward_batch_size=2, total_episodes=2, num_ppo_epochs=1, response_length=8,
        stop_token="eos", num_sample_generations=0, learning_rate=1e-3, disable_tqdm=True,
    )
    before = {k: v.detach().clone() for k, v in policy.named_parameters()}
    trainer = PPOTrainer(
        args=config, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=adapter,
        train_dataset=dataset, value_model=value, eval_dataset=dataset,
    )
    trainer.train()

    import trl.experimental.ppo.ppo_trainer as ppo_module

    assert ppo_module.get_reward._rewardlab_hook  # PPO called the adapter with the exact context length
    assert trainer.state.global_step == 1
    changed = sum(not torch.equal(before[k], v.detach()) for k, v in policy.named_parameters())
    assert changed > 0
    # the reward PPO used is the composed reward of the decoded rollouts
    batch = adapter.last_batch
    assert len(batch) == 2 and all(row["prompt"] in PPO_PROMPTS for row in batch)
    assert [row["reward"] for row in batch] == pytest.approx(
        reward.score([row["prompt"] for row in batch], [row["response"] for row in batch]), abs=1e-5
    )
    scores = [log["objective/scores"] for log in trainer.state.log_history if "objective/scores" in log]
    assert scores and all(math.isfinite(s) for s in scores)
