"""Score (prompt, response) pairs with a trained reward model, formatted exactly as in training.

A reward model only means something on text laid out the way it was trained on. Training and
scoring therefore share one function, :func:`encode`, and the training run records its choices in
``rewardlab_reward.json`` next to the weights (``RewardFormat``); the scorer reads them back.

Two layouts (``style``):

* ``conversational``: the tokenizer's chat template over ``prompt + [assistant reply]`` (what TRL's
  RewardTrainer does with conversational data).
* ``explicit``: ``"User: ...\\n\\nAssistant:"`` then ``" " + reply`` (TRL's explicit prompt format),
  then EOS for a causal LM; an encoder (BERT-like: CLS and SEP tokens) gets
  ``[CLS] prompt [SEP] reply [SEP]``.

Too long for ``max_length`` tokens? The prompt is cut from the left (its oldest turns go first)
and, only if the reply alone still does not fit, the end of the reply is cut; the template's
closing tokens and EOS are always kept. TRL 1.12 would instead drop such pairs silently; rewardlab
tokenizes itself, so nothing is dropped and the count of cut pairs is reported.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rewardlab.errors import RewardlabError
from rewardlab.models import format_prompt, has_chat_template

FORMAT_FILE = "rewardlab_reward.json"
STATS_FILE = "reward_stats.json"
STYLES = ("auto", "conversational", "explicit")


@dataclass
class RewardFormat:
    """How (prompt, response) became tokens in training; saved as ``rewardlab_reward.json``."""

    style: str
    """``conversational`` (chat template) or ``explicit`` (plain text; CLS/SEP for encoders)."""
    max_length: int
    """Longest token sequence; longer ones are cut (prompt from the left, then the reply's end)."""
    version: int = 1
    """Version of this layout, bumped if encode() ever changes."""

    def save(self, folder: Path) -> None:
        (Path(folder) / FORMAT_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> RewardFormat:
        path = Path(folder) / FORMAT_FILE
        if not path.is_file():
            raise RewardlabError(
                f"{folder}: no {FORMAT_FILE}, so it is not a rewardlab reward model; "
                "train one with `rewardlab reward train`"
            )
        data = json.loads(path.read_text())
        return cls(**{k: data[k] for k in ("style", "max_length", "version") if k in data})


def resolve_style(tokenizer, style: str) -> str:
    """``auto`` -> ``conversational`` when the tokenizer has a chat template, else ``explicit``."""
    if style not in STYLES:
        raise RewardlabError(f"unknown style {style!r}; use one of {', '.join(STYLES)}")
    if style == "auto":
        return "conversational" if has_chat_template(tokenizer) else "explicit"
    if style == "conversational" and not has_chat_template(tokenizer):
        raise RewardlabError("style 'conversational' needs a tokenizer with a chat template; use 'explicit'")
    return style


def _is_encoder(tokenizer) -> bool:
    return tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] if text else []


def _split_chat(tokenizer, messages: list[dict], response: str) -> tuple[str, str, str]:
    """(prompt text up to the reply, the reply, the template's text after the reply)."""
    head = format_prompt(tokenizer, messages)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": response}], tokenize=False
    )
    if not full.startswith(head):  # a template that renders history differently: no split point
        return "", full, ""
    rest = full[len(head):]
    at = rest.find(response)
    if at < 0:  # the template rewrote the reply (e.g. stripped it): treat it all as reply
        return head, rest, ""
    return head + rest[:at], response, rest[at + len(response):]


def encode(tokenizer, fmt: RewardFormat, messages: list[dict], response: str) -> tuple[list[int], bool]:
    """Token ids of (prompt messages, response) in layout ``fmt``; and whether they were cut."""
    if fmt.style == "conversational":
        head, body, tail = _split_chat(tokenizer, messages, response)
        start, mid, end = [], [], []
        head_ids, body_ids, tail_ids = _ids(tokenizer, head), _ids(tokenizer, body), _ids(tokenizer, tail)
    elif _is_encoder(tokenizer):
        start, mid, end = [tokenizer.cls_token_id], [tokenizer.sep_token_id], [tokenizer.sep_token_id]
        head_ids, body_ids, tail_ids = _ids(tokenizer, _plain_prompt(messages)), _ids(tokenizer, response), []
    else:
        bos = tokenizer.bos_token_id
        adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
        start, mid = ([bos] if adds_bos else []), []
        end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        head_ids, body_ids = _ids(tokenizer, _plain_prompt(messages)), _ids(tokenizer, " " + response)
        tail_ids = []
    budget = fmt.max_length - len(start) - len(mid) - len(end) - len(tail_ids)
    if budget < 8:
        raise RewardlabError(f"max_length {fmt.max_length} is too small for this model's format; use at least 64")
    cut = len(head_ids) + len(body_ids) > budget
    if cut:
        keep_head = max(budget - len(body_ids), min(len(head_ids), budget // 4))
        head_ids = head_ids[len(head_ids) - keep_head:] if keep_head else []
        body_ids = body_ids[: budget - keep_head]
    return [*start, *head_ids, *mid, *body_ids, *tail_ids, *end], cut


def _plain_prompt(messages: list[dict]) -> str:
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join([*turns, "Assistant:"])


def as_messages(prompt) -> list[dict]:
    """A prompt given as text (one user turn, or a rendered conversation) or as messages."""
    if isinstance(prompt, str):
        from rewardlab.formats import parse_prompt_text

        return parse_prompt_text(prompt)
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        return prompt
    raise RewardlabError(f"a prompt must be text or a list of {{role, content}} messages, got {prompt!r:.80}")


class RewardModelScorer:
    """A trained reward model (a rewardlab ``reward train`` folder) as a function of text.

    ``score(prompts, responses)`` returns one float per pair; ``stats`` holds the mean and std of
    rewards over the training responses, and ``normalized`` returns ``(r - mean) / std``.
    """

    def __init__(self, path, device: str = "cpu", batch_size: int = 16):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = Path(path).expanduser()
        if not (self.path / "config.json").is_file():
            raise RewardlabError(f"{self.path}: not a model folder (no config.json); give a `reward train` --out folder")
        self.format = RewardFormat.load(self.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self.tokenizer.pad_token_id is None:
            raise RewardlabError(f"{self.path}: the saved tokenizer has no pad token; retrain with rewardlab")
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=torch.float32)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device).eval()
        self.device = device
        self.batch_size = max(1, int(batch_size))
        stats_path = self.path / STATS_FILE
        self.stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {"mean": 0.0, "std": 1.0}

    def encode(self, prompt, response: str) -> list[int]:
        """Token ids of one pair, exactly as training saw it."""
        return encode(self.tokenizer, self.format, as_messages(prompt), response)[0]

    @torch.inference_mode()
    def score(self, prompts: list, responses: list[str]) -> list[float]:
        """Rewards of ``responses[i]`` to ``prompts[i]`` (messages lists or texts)."""
        if len(prompts) != len(responses):
            raise RewardlabError(f"{len(prompts)} prompts but {len(responses)} responses; give one prompt per response")
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses)]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths batch together
        out = [0.0] * len(encoded)
        pad = self.tokenizer.pad_token_id
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo: lo + self.batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # right padding, as in training (TRL's collator)
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            for row, i in enumerate(idx):
                out[i] = float(logits[row, 0])
        return out

    def normalized(self, prompts: list, responses: list[str]) -> list[float]:
        """``(reward - mean) / std`` with the training-response statistics in ``stats``."""
        mean, std = float(self.stats.get("mean", 0.0)), float(self.stats.get("std", 1.0))
        std = std if std > 1e-8 and math.isfinite(std) else 1.0
        return [(r - mean) / std for r in self.score(prompts, responses)]
