"""The admin console's actions, without any UI: check what a form sent, then act.

Quick work runs here (import prompts, export, figures, the human win-rate); long work starts a
background job running the same CLI command a user would type (``annotate.jobs``). Every path is
confined to the workspace (``annotate.confine``); a model is a known alias or a folder inside the
workspace. Bad input raises a one-line ``RewardlabError`` before anything starts. The Gradio layer
(``annotate.console_ui``) checks that the caller is an admin, then calls these.

This module belongs to the app (a face, which may call any stage: ``train.human_eval``, the
reward and PPO configs).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from annotate import jobs
from annotate.confine import confine, relative
from annotate.store import Store
from rewardlab.errors import RewardlabError

GENERATE_KEYS = {  # form key -> (CLI option, type)
    "per_prompt": ("--per-prompt", int), "pairs_per_prompt": ("--pairs-per-prompt", int),
    "max_new_tokens": ("--max-new-tokens", int), "temperature": ("--temperature", float),
    "top_p": ("--top-p", float), "batch_size": ("--batch-size", int), "seed": ("--seed", int),
    "limit": ("--limit", int), "overlap": ("--overlap", int),
}
EVALUATE_KEYS = {
    "n": ("--n", int), "max_new_tokens": ("--max-new-tokens", int), "temperature": ("--temperature", float),
    "top_p": ("--top-p", float), "seed": ("--seed", int), "batch_size": ("--batch-size", int),
    "overlap": ("--overlap", int),
}
RUN_FILES = {  # kind -> (metrics JSONL, samples JSONL, report) inside the job's output folder
    "reward_train": ("metrics.jsonl", None, "eval/eval.json"),
    "ppo": ("metrics.jsonl", "samples.jsonl", "ppo_summary.json"),
    "evaluate": (None, "samples.jsonl", "report.md"),
    "generate": (None, None, None),
}


def _known(params, allowed, what: str) -> dict:
    if not isinstance(params, dict):
        raise RewardlabError(f"{what}: give the settings as a mapping of names to values")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise RewardlabError(f"{what}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted(allowed))}")
    return {k: v for k, v in params.items() if v not in (None, "")}


def _number(value, kind, key: str):
    if isinstance(value, bool):
        raise RewardlabError(f"{key} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RewardlabError(f"{key} must be a number, got {value!r}") from None
    if not math.isfinite(number) or (kind is int and not number.is_integer()):
        raise RewardlabError(f"{key} must be a {'whole ' if kind is int else ''}number, got {value!r}")
    return int(number) if kind is int else number


def _options(params: dict, table: dict) -> list[str]:
    args = []
    for key, (option, kind) in table.items():
        if key in params:
            args += [option, str(_number(params[key], kind, key))]
    return args


def _config_overrides(cls_loader, config, what: str, model_key: str, check_model, field_model) -> list[str]:
    """A config mapping checked by the stage's own loader, as ``--key value`` CLI arguments; its
    model key goes through ``check_model`` (an alias, or a folder inside the workspace), and is
    dropped when the form's own model field (``field_model``) is filled: that field wins."""
    if config in (None, ""):
        return []
    if isinstance(config, str):
        import yaml

        try:
            config = yaml.safe_load(config) or {}
        except yaml.YAMLError as exc:
            raise RewardlabError(f"{what} config: not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(config, dict):
        raise RewardlabError(f"{what} config: give a mapping of config keys to values")
    given = {str(k).replace("-", "_"): v for k, v in config.items()}
    if field_model not in (None, ""):
        given.pop(model_key, None)
    if given.get(model_key) not in (None, ""):
        given[model_key] = check_model(given[model_key], model_key)
    cls_loader(None, given)  # unknown keys, types and ranges fail here, before a process starts
    args = []
    for key, value in given.items():
        if isinstance(value, list):
            value = ",".join(map(str, value))
        elif value is None:
            value = "null"
        elif isinstance(value, bool):
            value = "true" if value else "false"
        args += [f"--{key}", str(value)]
    return args


def default_config_yaml(kind: str) -> str:
    """The stage's config with its defaults, one documented key per line (what the form starts from)."""
    import yaml

    from rewardlab.config import docstrings

    cls = _config_class(kind)
    docs, lines = docstrings(cls), []
    for f in dataclasses.fields(cls):
        lines.append(f"# {docs[f.name]}")
        lines.append(yaml.safe_dump({f.name: f.default}, default_flow_style=True, width=1000).strip()[1:-1])
    return "\n".join(lines) + "\n"


def _config_class(kind: str):
    if kind == "reward_train":
        from reward_models.config import RewardTrainConfig

        return RewardTrainConfig
    from train.ppo_config import PPORunConfig

    return PPORunConfig


class Console:
    """The admin actions over one store and workspace."""

    def __init__(self, store: Store, workspace: Path):
        self.store = store
        self.workspace = Path(workspace).expanduser().resolve()

    # --- paths and models ------------------------------------------------------------------------

    def path(self, value, what: str, **kwargs) -> Path:
        return confine(self.workspace, value, what, **kwargs)

    def model(self, value, what: str) -> str:
        """A known alias as it is, else a model folder inside the workspace (absolute)."""
        from reward_models.train import BACKBONES
        from rewardlab.models import ALIASES

        text = str(value or "").strip()
        if text in ALIASES or text in BACKBONES:
            return text
        if not text:
            raise RewardlabError(f"{what}: give a model alias ({', '.join([*ALIASES, *BACKBONES])}) or a folder")
        return str(self.path(text, what, must_exist=True, kind="dir"))

    def out(self, value, kind: str) -> Path:
        if value in (None, ""):
            value = f"runs/{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
        return self.path(value, "out")

    # Jobs name the store as ``env:REWARDLAB_JOB_DB`` and get the URL in their environment, so a
    # PostgreSQL password never lands in a process list, the jobs table or a log.
    JOB_DB = "env:REWARDLAB_JOB_DB"

    def _start(self, kind: str, args: list[str], params: dict, out: Path | str, user: str) -> dict:
        return jobs.start(self.store, self.workspace, kind, args, config=params, out=str(out), created_by=user,
                          extra_env={self.JOB_DB[4:]: self.store.url})

    # --- data ------------------------------------------------------------------------------------

    def import_prompts(self, path, field: str | None = None, skip_invalid: bool = False) -> dict:
        from annotate.importing import import_prompts

        source = self.path(path, "prompts file", must_exist=True)
        r = import_prompts(self.store, str(source), field=field or None, skip_invalid=bool(skip_invalid))
        return {"added": r["added"], "duplicates": r["duplicates"], "rejected": len(r["rejected"]),
                "rejected_rows": [f"{where}: {why}" for where, why in r["rejected"][:20]]}

    def start_generate(self, params: dict, user: str = "") -> dict:
        params = _known(params, {"models", *GENERATE_KEYS}, "generate")
        models = params.get("models") or ["smollm2-135m"]
        if isinstance(models, str):
            models = [m for m in models.replace(",", " ").split() if m]
        args = ["generate", "--db", self.JOB_DB, "--workspace", str(self.workspace)]
        for m in models:
            args += ["--model", self.model(m, "models")]
        args += _options(params, GENERATE_KEYS)
        return self._start("generate", args, params, "", user)

    def export(self, out, style: str = "auto", tag: str | None = None, jsonl: bool = True) -> dict:
        from annotate.export import export

        folder = self.path(out or "exports/preferences", "out")
        summary = export(self.store, folder, style=style or "auto", jsonl=bool(jsonl), tag=tag or None)
        return {**summary, "out": relative(self.workspace, folder)}

    # --- reward model, PPO, evaluation ---------------------------------------------------------

    def start_reward_train(self, params: dict, user: str = "") -> dict:
        from reward_models.config import load_config

        params = _known(params, {"data", "out", "model", "eval_data", "config"}, "reward training")
        data = self.path(params.get("data"), "data", must_exist=True)
        out = self.out(params.get("out"), "reward")
        args = ["reward", "train", "--data", str(data), "--out", str(out)]
        if "model" in params:
            args += ["--model", self.model(params["model"], "model")]
        if "eval_data" in params:
            args += ["--eval-data", str(self.path(params["eval_data"], "eval_data", must_exist=True))]
        args += _config_overrides(load_config, params.get("config"), "reward training", "model", self.model,
                                  params.get("model"))
        return self._start("reward_train", args, params, out, user)

    def start_ppo(self, params: dict, user: str = "") -> dict:
        from train.ppo_config import load_config

        params = _known(params, {"reward", "prompts", "out", "policy", "config"}, "PPO")
        reward = self.path(params.get("reward"), "reward", must_exist=True)
        prompts = params.get("prompts") or "store"
        prompts = self.JOB_DB if prompts == "store" else str(self.path(prompts, "prompts", must_exist=True))
        out = self.out(params.get("out"), "ppo")
        args = ["ppo", "--reward", str(reward), "--prompts", prompts, "--out", str(out)]
        if "policy" in params:
            args += ["--policy", self.model(params["policy"], "policy")]
        args += _config_overrides(load_config, params.get("config"), "PPO", "policy", self.model,
                                  params.get("policy"))
        return self._start("ppo", args, params, out, user)

    def resume_ppo(self, job_id: int, user: str = "") -> dict:
        """Start the same PPO command again with ``--resume`` (from the run's last checkpoint)."""
        job = jobs.get(self.store, job_id)
        if job["kind"] != "ppo":
            raise RewardlabError(f"job {job_id} is a {job['kind']} job; only PPO runs resume")
        if job["status"] == "running":
            raise RewardlabError(f"job {job_id} is still running; stop it first")
        if not (Path(job["out"]) / "checkpoints").is_dir():
            raise RewardlabError(f"job {job_id} left no checkpoint in {job['out']}; start a new run instead")
        args = [a for a in job["command"] if a != "--resume"] + ["--resume"]
        return self._start("ppo", args, {**job["config"], "resumed_from": job_id}, job["out"], user)

    def start_evaluate(self, params: dict, user: str = "") -> dict:
        params = _known(params, {"aligned", "reward", "prompts", "out", "base", "judge", "tag", "queue",
                                 *EVALUATE_KEYS}, "evaluate")
        out = self.out(params.get("out"), "eval")
        args = ["evaluate", "--aligned", str(self.path(params.get("aligned"), "aligned", must_exist=True)),
                "--reward", str(self.path(params.get("reward"), "reward", must_exist=True)),
                "--prompts", str(self.path(params.get("prompts"), "prompts", must_exist=True)),
                "--out", str(out)]
        if "base" in params:
            args += ["--base", self.model(params["base"], "base")]
        if "judge" in params:
            args += ["--judge", str(self.path(params["judge"], "judge", must_exist=True))]
        tag = str(params.get("tag") or Path(str(params.get("aligned"))).name)
        args += ["--tag", tag]
        if params.get("queue", True) not in (False, "false", "no"):
            args += ["--queue", self.JOB_DB]
        args += _options(params, EVALUATE_KEYS)
        return self._start("evaluate", args, {**params, "tag": tag}, out, user)

    def human_win_rate(self, tag: str | None = None) -> dict:
        from train.human_eval import human_win_rate

        return human_win_rate(self.store.url, tag or None)

    # --- watching jobs ---------------------------------------------------------------------------

    def job_view(self, job_id: int, max_rows: int = 2000) -> dict:
        """A job with what is needed to watch it: log tail, metrics rows, latest samples, plots, report."""
        job = jobs.get(self.store, job_id)
        metrics_file, samples_file, report_file = RUN_FILES.get(job["kind"], (None, None, None))
        out = Path(job["out"]) if job["out"] else None
        view = {**job, "log_tail": jobs.log_tail(job), "metrics": [], "samples": [], "plots": [], "report": None}
        if out is None:
            return view
        if metrics_file:
            view["metrics"] = jobs.read_jsonl(out / metrics_file, max_rows)
        if samples_file:
            view["samples"] = jobs.read_jsonl(out / samples_file, 200)[-8:]
        if out.is_dir():
            view["plots"] = [str(p) for p in sorted(out.rglob("*.png")) if "checkpoint" not in str(p)][:20]
        if report_file and (out / report_file).is_file():
            view["report"] = (out / report_file).read_text(encoding="utf-8", errors="replace")[:20000]
        return view
