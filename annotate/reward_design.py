"""The admin console's *Reward design* tab: a composed reward term by term, and where a reward
disagrees with the annotators.

Both take a reward the way ``rewardlab ppo --reward`` does (``train.evaluate.load_reward``): a
composed-reward YAML (``reward_models/compose.py``) or a ``rewardlab reward train`` folder, chosen
inside the workspace. Loaded rewards are kept (keyed by path and modification time) so a second
look costs no reload. This module belongs to the app (a face, which may call any stage).

- ``breakdown``: each term's raw, normalized and weighted value for one (prompt, response), and the
  total (``ComposedReward.breakdown``).
- ``disagreements``: the reward over every labelled pair that survives aggregation (the pairs
  ``rewardlab export`` would write, ``annotate.export``), and the pairs it ranks the other way
  round from the annotators: ``margin = reward(chosen) - reward(rejected) < 0``, most negative
  first (or by any column the caller sorts on).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from annotate.confine import confine, relative
from annotate.export import _collect
from annotate.store import Prompt, Store
from rewardlab.errors import RewardlabError

MAX_PAIRS = 2000
_cache: dict[tuple[str, float], object] = {}
_cache_lock = threading.Lock()


def load(workspace: Path, spec: str):
    """The composed reward at ``spec`` (a YAML file or a reward-model folder inside the workspace)."""
    from train.evaluate import load_reward

    path = confine(workspace, spec, "reward", must_exist=True)
    stamp = max([path.stat().st_mtime] + ([p.stat().st_mtime for p in path.iterdir()] if path.is_dir() else []))
    key = (str(path), stamp)
    with _cache_lock:
        if key not in _cache:
            _cache.clear()  # one reward at a time: a reward model can be large
            _cache[key] = load_reward(str(path), what="reward")[0]
        return _cache[key]


def prompt_messages(store: Store, prompt_id: int | None, text: str | None) -> list[dict]:
    """A stored prompt's messages (by id), else the pasted text as one user turn."""
    if prompt_id not in (None, ""):
        if isinstance(prompt_id, bool) or not isinstance(prompt_id, (int, float)) or int(prompt_id) != prompt_id:
            raise RewardlabError(f"prompt_id must be a whole number, got {prompt_id!r}")
        with store.read() as s:
            row = s.get(Prompt, int(prompt_id))
        if row is None:
            raise RewardlabError(f"no prompt {int(prompt_id)} in the store")
        return json.loads(row.messages)
    if not isinstance(text, str) or not text.strip():
        raise RewardlabError("give a prompt: pick one from the store or paste its text")
    return [{"role": "user", "content": text}]


def breakdown(store: Store, workspace: Path, reward: str, response: str, prompt_id: int | None = None,
              prompt_text: str | None = None) -> dict:
    """``{"reward", "prompt", "total", "terms": [{"name", "type", "raw", "normalized", "weight", "weighted"}]}``."""
    if not isinstance(response, str):
        raise RewardlabError("response must be text")
    messages = prompt_messages(store, prompt_id, prompt_text)
    composed = load(workspace, reward)
    row = composed.breakdown(messages, response)
    terms = [{"name": name, **values} for name, values in row["terms"].items()]
    return {"reward": relative(workspace, confine(workspace, reward, "reward")), "prompt": messages,
            "total": row["total"], "terms": terms}


def disagreements(store: Store, workspace: Path, reward: str, tag: str | None = None,
                  max_pairs: int = MAX_PAIRS) -> dict:
    """Score the labelled pairs; ``{"n", "agreement", "disagreements": [...]}`` sorted by margin.

    Each disagreement: ``comparison_id``, ``prompt`` (text of the last turn), ``chosen`` and
    ``rejected`` (by the annotators), ``reward_chosen``, ``reward_rejected``, ``margin`` (< 0),
    ``n_labels``. ``agreement``: the share of pairs where the reward prefers the chosen reply.
    """
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
        raise RewardlabError(f"max_pairs must be a whole number >= 1, got {max_pairs!r}")
    records, _counts, _agreement = _collect(store, tag or None)
    if not records:
        raise RewardlabError("no labelled pairs with a clear majority yet: label some pairs first")
    records = records[-max_pairs:]
    composed = load(workspace, reward)
    prompts = [r.prompt for r in records]
    chosen = composed.score(prompts, [r.chosen for r in records])
    rejected = composed.score(prompts, [r.rejected for r in records])
    rows = []
    for r, c, j in zip(records, chosen, rejected):
        if c - j < 0:
            last = r.prompt[-1]["content"] if isinstance(r.prompt, list) and r.prompt else str(r.prompt)
            rows.append({"comparison_id": r.meta["comparison_id"], "prompt": last, "chosen": r.chosen,
                         "rejected": r.rejected, "reward_chosen": c, "reward_rejected": j, "margin": c - j,
                         "n_labels": r.meta["n_labels"]})
    rows.sort(key=lambda d: d["margin"])
    agree = sum(c > j for c, j in zip(chosen, rejected)) / len(records)
    return {"n": len(records), "agreement": agree, "disagreements": rows}
