"""The Gymnasium-compatible text environment: reset/step/seed, the Gymnasium checker, gym.make,
duck-typed use without gymnasium, and the example loop run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rewardlab.errors import RewardlabError
from rewardlab.formats import PromptRecord
from reward_models.compose import ComposedReward
from reward_models.env import TextEnv

REPO = Path(__file__).resolve().parents[1]
PROMPTS_FILE = REPO / "data" / "prompts.jsonl"
REWARD = {"terms": [{"type": "length", "min": 10, "max": 40}, {"type": "keywords", "reward": ["paris", "北京"], "weight": 2}]}


def records() -> list[PromptRecord]:
    return [
        PromptRecord(messages=[{"role": "user", "content": f"question {i}"}], source="t", meta={"i": i})
        for i in range(6)
    ] + [PromptRecord(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "首都?"}])]


@pytest.fixture
def reward() -> ComposedReward:
    return ComposedReward.from_config(REWARD)


def test_reset_and_one_step_episode(reward):
    env = TextEnv(records(), reward, seed=0)
    obs, info = env.reset(options={"index": 6})
    assert obs == "System: Be brief.\n\nUser: 首都?"
    assert info["messages"] == records()[6].messages and info["index"] == 6
    obs2, r, terminated, truncated, info = env.step("北京 is the capital city.")
    assert (obs2, terminated, truncated) == (obs, True, False)
    expected = reward.breakdown(records()[6].messages, "北京 is the capital city.")
    assert r == pytest.approx(expected["total"]) and r == pytest.approx(2.0)
    assert info["breakdown"] == expected["terms"]
    assert info["response"] == "北京 is the capital city."
    assert set(info["breakdown"]["keywords"]) == {"type", "raw", "normalized", "weight", "weighted"}

    obs, info = env.reset(options={"index": 0})
    assert obs == "question 0" and info["meta"] == {"i": 0} and info["source"] == "t"


def test_seeding_is_reproducible(reward):
    def draws(env, n=12):
        return [env.reset()[1]["index"] for _ in range(n)]

    a, b = TextEnv(records(), reward, seed=7), TextEnv(records(), reward, seed=7)
    assert draws(a) == draws(b)
    first = draws(TextEnv(records(), reward, seed=7))
    env = TextEnv(records(), reward)
    env.reset(seed=7)
    assert [env.reset()[1]["index"] for _ in range(11)] == first[1:]  # reset(seed) == constructor seed
    assert env.reset(seed=7)[1]["index"] == first[0]
    assert draws(TextEnv(records(), reward, seed=8)) != first
    assert len(set(draws(TextEnv(records(), reward, seed=1), 60))) == 7  # all prompts get drawn


def test_step_errors(reward):
    env = TextEnv(records(), reward, seed=0)
    with pytest.raises(RewardlabError, match="call reset\\(\\) before step"):
        env.step("hi")
    env.reset()
    with pytest.raises(RewardlabError, match="the action is the response text \\(str\\), got int"):
        env.step(3)
    env.step("hi")
    with pytest.raises(RewardlabError, match="call reset\\(\\) before step"):
        env.step("again")  # the episode is over
    with pytest.raises(RewardlabError, match="options\\['index'\\] must be an int in 0..6"):
        env.reset(options={"index": 7})
    with pytest.raises(RewardlabError, match="at least one prompt"):
        TextEnv([], reward)
    with pytest.raises(RewardlabError, match="limit is 5"):
        short = TextEnv(records(), reward, max_response_chars=5)
        short.reset()
        short.step("too long")


def test_prompt_file_and_render(reward):
    env = TextEnv(str(PROMPTS_FILE), reward, seed=0, render_mode="ansi")
    assert len(env.prompts) > 10
    obs, info = env.reset(seed=0)
    assert obs == info["messages"][-1]["content"]
    env.step("The answer is Paris.")
    shown = env.render()
    assert "response: The answer is Paris." in shown and "keywords=+2.000" in shown


def test_gymnasium_env_passes_the_checker_and_make(reward):
    gymnasium = pytest.importorskip("gymnasium")
    from gymnasium.utils.env_checker import check_env

    env = TextEnv(records(), reward, seed=0)
    assert isinstance(env, gymnasium.Env)
    assert isinstance(env.observation_space, gymnasium.spaces.Text)
    assert isinstance(env.action_space, gymnasium.spaces.Text)
    assert env.observation_space.contains("首都? 😀") and env.action_space.contains("any ünïcode ✓")
    check_env(env, skip_render_check=True)

    made = gymnasium.make("rewardlab/TextEnv-v0", prompts=records(), reward=reward)
    obs, info = made.reset(seed=3)
    _, r, terminated, _, info = made.step("Paris, the capital.")
    assert terminated and r == pytest.approx(2.0) and "length" in info["breakdown"]
    made.close()


def test_works_duck_typed_without_gymnasium():
    code = (
        "import sys; sys.modules['gymnasium'] = None\n"  # makes `import gymnasium` fail
        "from reward_models.env import TextEnv\n"
        "from reward_models.compose import ComposedReward\n"
        "from rewardlab.formats import PromptRecord\n"
        "env = TextEnv([PromptRecord([{'role': 'user', 'content': 'q'}])], "
        f"ComposedReward.from_config({REWARD!r}), seed=0)\n"
        "assert env.observation_space is None and type(env).__mro__[1] is object\n"
        "obs, info = env.reset(seed=1)\n"
        "print(env.step('paris is here'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "('q', 2.0, True, False," in out.stdout


def test_example_gym_loop_runs():
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "gym_loop.py"), "--no-model", "--episodes", "4", "--seed", "1"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 4
    assert set(summary["term_means"]) == {"length", "repetition", "format"}
    assert summary["term_means"]["repetition"] < 0  # the canned degenerate reply is penalized
