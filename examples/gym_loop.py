"""A Gym-style loop over rewardlab's text environment: observe a prompt, act with a reply, get a reward.

    python examples/gym_loop.py --no-model                 # canned replies, runs in a second
    python examples/gym_loop.py --episodes 3               # the default model (SmolLM2-135M) replies
    python examples/gym_loop.py --reward my_reward.yaml --prompts data/prompts.jsonl

Each episode is one step: ``reset()`` draws a prompt, ``step(reply)`` returns the composed reward
and its per-term breakdown. Any RL library that speaks Gymnasium can drive ``TextEnv`` the same
way; here the "policy" is either a canned responder or the default model generating greedily.
Without ``--reward`` the reward is a small rule-only one (length, repetition, final punctuation).
The last line printed is a JSON summary: episodes, mean reward, per-term means.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reward_models.compose import ComposedReward
from reward_models.env import TextEnv

REPO = Path(__file__).resolve().parents[1]

DEFAULT_REWARD = {
    "terms": [
        {"type": "length", "min": 20, "max": 400, "weight": 1.0},
        {"type": "repetition", "n": 3, "weight": 1.0},
        {"type": "format", "kind": "punctuation", "weight": 0.5},
    ]
}

CANNED = [
    "Here is a short, direct answer.",
    "I am not sure I understand the question",
    "yes yes yes yes yes yes yes yes",
    "That depends on the details; could you say more about what you need?",
]


def canned_policy(episode: int):
    """A trivial policy: cycles through fixed replies (good, unfinished, degenerate, clarifying)."""
    return lambda messages: CANNED[episode % len(CANNED)]


def model_policy(model_name: str | None, max_new_tokens: int):
    """The given model (default: rewardlab's default model) answering greedily in its chat format."""
    import torch

    from rewardlab.models import format_prompt, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_name, padding_side="left")
    model = load_causal_lm(model_name, tokenizer=tokenizer).eval()

    def act(messages: list[dict]) -> str:
        text = format_prompt(tokenizer, messages)
        inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    return act


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", default=str(REPO / "data" / "prompts.jsonl"), help="prompt file")
    parser.add_argument("--reward", help="composed-reward YAML (default: a small rule-only reward)")
    parser.add_argument("--episodes", type=int, default=4, help="episodes to run (one prompt each)")
    parser.add_argument("--seed", type=int, default=0, help="seed for drawing prompts")
    parser.add_argument("--no-model", action="store_true", help="canned replies instead of a model")
    parser.add_argument("--model", default=None, help="model name, alias or folder (default: smollm2-135m)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="reply length cap, in tokens")
    args = parser.parse_args(argv)

    reward = ComposedReward.from_yaml(args.reward) if args.reward else ComposedReward.from_config(DEFAULT_REWARD)
    env = TextEnv(args.prompts, reward, seed=args.seed)
    act = None if args.no_model else model_policy(args.model, args.max_new_tokens)

    totals, per_term = [], {name: [] for name in reward.names}
    for episode in range(args.episodes):
        prompt, info = env.reset()                       # observation: the prompt text
        policy = act or canned_policy(episode)
        reply = policy(info["messages"])                 # action: the reply text
        _, r, terminated, truncated, info = env.step(reply)
        assert terminated and not truncated              # one-step episodes
        totals.append(r)
        for name, term in info["breakdown"].items():
            per_term[name].append(term["weighted"])
        terms = ", ".join(f"{n} {t['weighted']:+.2f}" for n, t in info["breakdown"].items())
        print(f"[{episode}] {prompt[:70]!r}\n    reply: {reply[:70]!r}\n    reward {r:+.3f} ({terms})")
    env.close()

    summary = {
        "episodes": len(totals),
        "mean_reward": sum(totals) / len(totals) if totals else 0.0,
        "term_means": {n: sum(v) / len(v) for n, v in per_term.items() if v},
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
