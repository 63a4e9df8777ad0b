"""The shared run-config machinery: YAML < --key value, type coercion, unknown keys."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from rewardlab.config import documented, help_epilog, load_dataclass, save_dataclass
from rewardlab.errors import RewardlabError


@documented
@dataclass
class Demo:
    steps: int = 10
    """Optimizer steps to run."""
    rate: float = 1e-4
    """Learning rate."""
    name: str | None = None
    """Run name (null: none)."""
    lora: bool = False
    """Train LoRA adapters."""


def test_yaml_then_overrides(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("steps: 20\nrate: 3e-4\nname: first\n")
    cfg = load_dataclass(Demo, cfg_file, ["--steps", "30", "--lora", "--name=second"])
    assert (cfg.steps, cfg.rate, cfg.name, cfg.lora) == (30, 3e-4, "second", True)


@pytest.mark.parametrize("overrides, message", [
    (["--steps", "1.5"], "'steps' must be int"),
    (["--rate", "fast"], "'rate' must be float"),
    (["--lora", "maybe"], "'lora' must be bool"),
    (["--stpes", "3"], "unknown config key 'stpes'"),
])
def test_bad_values_are_one_line_errors(overrides, message):
    with pytest.raises(RewardlabError, match=message) as exc:
        load_dataclass(Demo, None, overrides)
    assert "\n" not in str(exc.value)


def test_unknown_yaml_key_lists_valid_keys(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("steps: 2\nbatch: 4\n")
    with pytest.raises(RewardlabError, match=r"unknown config key 'batch'.*valid keys: steps, rate, name, lora"):
        load_dataclass(Demo, cfg_file, None)


def test_saved_config_loads_back_with_its_docs(tmp_path):
    cfg = load_dataclass(Demo, None, {"steps": 7, "name": "x"})
    path = save_dataclass(cfg, tmp_path / "config.yaml", "demo config")
    text = path.read_text()
    assert "# Optimizer steps to run." in text
    assert load_dataclass(Demo, path, None) == cfg
    assert "--rate" in help_epilog(Demo)
