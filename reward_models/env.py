"""A Gymnasium-compatible text environment: the task is a prompt, the action is the reply.

Alignment as an agent in an environment: each episode is one step. ``reset()`` draws a prompt from
the prompt set and returns it as the observation; ``step(response_text)`` scores the reply with a
composed reward and ends the episode::

    env = TextEnv("data/prompts.jsonl", ComposedReward.from_yaml("reward.yaml"), seed=0)
    obs, info = env.reset()                      # obs: prompt text; info["messages"]: the turns
    obs, reward, terminated, truncated, info = env.step("Paris.")
    info["breakdown"]                            # per term: raw, normalized, weight, weighted

With ``gymnasium`` installed (``pip install 'rewardlab[gym]'``) ``TextEnv`` is a ``gymnasium.Env``
with ``spaces.Text`` observation and action spaces, registered as ``rewardlab/TextEnv-v0`` for
``gymnasium.make``; without it, the same class works duck-typed (same methods and returns; the
spaces are None). The observation is the prompt as one text (``render_prompt_text``: the user
message itself for a single turn, else "User: ...\\n\\nAssistant: ..." lines); the exact messages
are in ``info["messages"]``, which is what a chat policy should format with its own template.
"""

from __future__ import annotations

import copy
import string
from typing import Any

import numpy as np

from rewardlab.errors import RewardlabError
from rewardlab.formats import PromptRecord, load_prompts, render_prompt_text
from reward_models.compose import ComposedReward

try:
    import gymnasium
    from gymnasium import spaces
except ImportError:  # gymnasium is an optional extra
    gymnasium = None
    spaces = None

ENV_ID = "rewardlab/TextEnv-v0"
"""The id ``gymnasium.make`` knows this environment by."""

MAX_RESPONSE_CHARS = 100_000
"""Default longest accepted action (response text), in characters."""

_Base = gymnasium.Env if gymnasium is not None else object

if spaces is not None:

    class AnyText(spaces.Text):
        """``spaces.Text`` that contains any string of allowed length (any unicode character);
        ``sample()`` draws from printable ASCII."""

        def __init__(self, max_length: int, min_length: int = 0, seed=None):
            super().__init__(max_length, min_length=min_length, charset=string.printable, seed=seed)

        def contains(self, x: Any) -> bool:
            return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

else:
    AnyText = None


class TextEnv(_Base):
    """One-step episodes: observation = a prompt, action = response text, reward = composed reward.

    ``TextEnv(prompts, reward, seed=None, max_response_chars=MAX_RESPONSE_CHARS)``; ``prompts`` is
    a list of PromptRecord or a prompt file/folder that ``rewardlab.formats.load_prompts`` reads.
    ``reset(seed=..., options={"index": i})`` picks prompt ``i`` instead of a random one.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        prompts: list[PromptRecord] | str,
        reward: ComposedReward,
        seed: int | None = None,
        max_response_chars: int = MAX_RESPONSE_CHARS,
        render_mode: str | None = None,
    ):
        if isinstance(prompts, (str, bytes)) or hasattr(prompts, "__fspath__"):
            prompts = load_prompts(str(prompts)).records
        prompts = list(prompts)
        if not prompts:
            raise RewardlabError("TextEnv needs at least one prompt")
        if not all(isinstance(p, PromptRecord) for p in prompts):
            raise RewardlabError("TextEnv prompts must be PromptRecords or a prompt file path")
        if not callable(getattr(reward, "breakdown", None)):
            raise RewardlabError("TextEnv reward must be a ComposedReward (ComposedReward.from_yaml(path))")
        if render_mode not in (None, "ansi"):
            raise RewardlabError(f"render_mode must be None or 'ansi', not {render_mode!r}")
        self.prompts = prompts
        self.reward = reward
        self.render_mode = render_mode
        self.max_response_chars = int(max_response_chars)
        self._texts = [render_prompt_text(p.messages) for p in prompts]
        if AnyText is not None:
            self.observation_space = AnyText(max(len(t) for t in self._texts))
            self.action_space = AnyText(self.max_response_chars)
        else:
            self.observation_space = self.action_space = None
        self._rng = np.random.default_rng(seed)
        self._seed_pending = seed
        self._index: int | None = None
        self._done = True
        self._last: dict | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        """Start an episode: ``(prompt_text, info)``; the same seed gives the same prompts."""
        if seed is None and self._seed_pending is not None:
            seed = self._seed_pending  # the constructor's seed applies to the first reset
        self._seed_pending = None
        if gymnasium is not None:
            super().reset(seed=seed)
            if seed is not None:
                self._rng = self.np_random
        elif seed is not None:
            self._rng = np.random.default_rng(seed)
        index = (options or {}).get("index")
        if index is None:
            index = int(self._rng.integers(len(self.prompts)))
        elif not isinstance(index, int) or not 0 <= index < len(self.prompts):
            raise RewardlabError(f"options['index'] must be an int in 0..{len(self.prompts) - 1}, got {index!r}")
        self._index, self._done, self._last = index, False, None
        return self._texts[index], self._info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        """Score ``action`` (the response text): ``(obs, reward, terminated=True, truncated=False, info)``.

        ``info`` adds ``response`` and ``breakdown`` (per term: type, raw, normalized, weight,
        weighted); ``obs`` is the same prompt text (the episode is over; call reset)."""
        if self._index is None or self._done:
            raise RewardlabError("call reset() before step(): each episode is one prompt and one response")
        if not isinstance(action, str):
            raise RewardlabError(f"the action is the response text (str), got {type(action).__name__}")
        if len(action) > self.max_response_chars:
            raise RewardlabError(f"response is {len(action)} characters; the limit is {self.max_response_chars}")
        record = self.prompts[self._index]
        result = self.reward.breakdown(record.messages, action)
        self._done = True
        info = self._info()
        info.update(response=action, breakdown=result["terms"])
        self._last = copy.deepcopy(info)
        return self._texts[self._index], float(result["total"]), True, False, info

    def render(self) -> str | None:
        """With ``render_mode="ansi"``: the prompt, and after a step the response and its reward."""
        if self.render_mode != "ansi" or self._index is None:
            return None
        lines = [f"prompt: {self._texts[self._index]}"]
        if self._last is not None:
            total = sum(t["weighted"] for t in self._last["breakdown"].values())
            terms = ", ".join(f"{n}={t['weighted']:+.3f}" for n, t in self._last["breakdown"].items())
            lines += [f"response: {self._last['response']}", f"reward: {total:+.3f} ({terms})"]
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        """Nothing to release; present for the Gymnasium API."""

    def _info(self) -> dict:
        record = self.prompts[self._index]  # copies: callers may keep and modify what they get
        return {
            "messages": copy.deepcopy(record.messages), "index": self._index,
            "source": record.source, "meta": copy.deepcopy(record.meta),
        }


if gymnasium is not None and ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="reward_models.env:TextEnv", disable_env_checker=False)
