"""Make a composed reward usable as ``reward_model`` by trl 1.12's ``trl.experimental.ppo.PPOTrainer``.

TRL scores rollouts with ``trl.experimental.utils.get_reward(model, query_responses, pad_token_id,
context_length)``, which assumes a sequence classifier that reads the *policy's* token ids::

    attention_mask = ids != pad_token_id;  input_ids = ids with pads replaced by 0
    hidden = getattr(model, model.base_model_prefix)(input_ids, attention_mask, position_ids, ...)
    logits = model.score(hidden.hidden_states[-1])          # [batch, length, 1]
    reward = logits[row, last non-pad index of the response]

``ComposedRewardForPPO`` fits that shape without being a language model: its backbone decodes the
policy's ids back to text, splits each row into prompt and response, scores the pairs with the
composed reward (which re-tokenizes for each reward model as that model was trained, so any
tokenizer works, and rule rewards need none), and returns the score at every position, so
whichever index TRL reads holds the composed reward. ``score`` is the identity.

Where the prompt ends. The backbone is not told ``context_length``; building the first adapter therefore wraps
``get_reward`` (in ``trl.experimental.utils`` and every loaded ``trl`` module that imported it)
with a pass-through that, only when the model is a ``ComposedRewardForPPO``, hands it the exact
``context_length`` for the duration of the call. PPOTrainer always calls through it, so in PPO
the split is exact: the query is ``ids[:, :context_length]`` minus its left padding, and the
response is what follows, up to the first pad (TRL's own sequence end; the stop token is kept by
TRL and dropped here with the other special tokens). Called any other way, the adapter finds the
column where every row's prefix is a complete rendered prompt (ending in the chat template's
generation prompt), taking the last such column.

The prompt text is turned back into messages by matching it against the policy tokenizer's chat
template rendered with placeholder contents (1 to 8 user turns, with or without a system turn), so
reward models and rules receive the same messages the prompt dataset held.
"""

from __future__ import annotations

import functools
import re
import sys

import torch
from torch import nn

from rewardlab.errors import RewardlabError
from rewardlab.formats import parse_prompt_text
from rewardlab.models import format_prompt
from reward_models.compose import ComposedReward

MAX_USER_TURNS = 8
"""Longest conversation (user turns) the prompt parser recognizes turn by turn."""


class ComposedRewardForPPO(nn.Module):
    """A composed reward in the shape of the reward model PPOTrainer expects.

    ``ComposedRewardForPPO(reward, policy_tokenizer)``; pass it as ``PPOTrainer(reward_model=...)``.
    ``policy_tokenizer`` must be the tokenizer the PPO dataset and policy use (``processing_class``).
    After each call, ``last_batch`` holds the decoded ``{"prompt", "response", "reward"}`` rows.
    """

    base_model_prefix = "backbone"

    def __init__(self, reward: ComposedReward, policy_tokenizer):
        super().__init__()
        if not isinstance(reward, ComposedReward):
            raise RewardlabError(
                f"ComposedRewardForPPO needs a ComposedReward, got {type(reward).__name__}; "
                "build one with ComposedReward.from_yaml(path)"
            )
        self.reward = reward
        self.tokenizer = policy_tokenizer
        self.backbone = _DecodingBackbone(self._forward)
        self.score = nn.Identity()
        self.parser = PromptParser(policy_tokenizer)
        self.context_length: int | None = None
        """Set by the get_reward hook for the duration of one call; None otherwise."""
        self.last_batch: list[dict] = []
        install_get_reward_hook()

    @classmethod
    def from_yaml(cls, path, policy_tokenizer) -> "ComposedRewardForPPO":
        """Shortcut for ``ComposedRewardForPPO(ComposedReward.from_yaml(path), policy_tokenizer)``."""
        return cls(ComposedReward.from_yaml(path), policy_tokenizer)

    def split(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[tuple[list[dict], str]]:
        """Decode each row into (prompt messages, response text)."""
        context = self.context_length
        if context is None:
            context = self._infer_context(input_ids, attention_mask)
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            query = [t for t, m in zip(ids[:context], mask[:context]) if m]
            response = []
            for t, m in zip(ids[context:], mask[context:]):
                if not m:  # TRL's sequence ends at the first pad after the context
                    break
                response.append(t)
            rows.append((self.prompt_messages(query), self.tokenizer.decode(response, skip_special_tokens=True)))
        return rows

    def prompt_messages(self, query_ids: list[int]) -> list[dict]:
        """The messages a query (policy token ids, no padding) was rendered from."""
        text = self.tokenizer.decode(query_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        found = self.parser.parse(text)
        if found is None:  # an unexpected layout: the plain text, as one user turn
            plain = self.tokenizer.decode(query_ids, skip_special_tokens=True).strip()
            found = parse_prompt_text(plain or text)
        return found

    def _forward(self, input_ids, attention_mask=None, **_ignored):
        if attention_mask is None:
            attention_mask = input_ids != self.tokenizer.pad_token_id
        pairs = self.split(input_ids, attention_mask.bool())
        scores = self.reward.score([p for p, _ in pairs], [r for _, r in pairs]) if pairs else []
        self.last_batch = [{"prompt": p, "response": r, "reward": s} for (p, r), s in zip(pairs, scores)]
        values = torch.tensor(scores, dtype=torch.float32, device=input_ids.device)
        hidden = values.view(-1, 1, 1).expand(input_ids.shape[0], input_ids.shape[1], 1)
        from transformers.modeling_outputs import BaseModelOutput

        return BaseModelOutput(last_hidden_state=hidden, hidden_states=(hidden,))

    def _infer_context(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
        """Without the hook: the last column where every row's unpadded prefix is a whole prompt."""
        ids, mask = input_ids.tolist(), attention_mask.tolist()
        last = self.parser.generation_last_token
        width = len(ids[0]) if ids else 0
        for c in range(width, 0, -1):
            if all(m[c - 1] and (last is None or row[c - 1] == last) for row, m in zip(ids, mask)):
                texts = [
                    self.tokenizer.decode([t for t, k in zip(row[:c], m[:c]) if k], skip_special_tokens=False,
                                          clean_up_tokenization_spaces=False)
                    for row, m in zip(ids, mask)
                ]
                if all(self.parser.parse(t) is not None for t in texts):
                    return c
        raise RewardlabError(
            "cannot tell where the prompt ends in the policy's token ids (no prefix is a complete prompt "
            "in the policy tokenizer's format); call the adapter through trl's get_reward, or set "
            "adapter.context_length"
        )


class _DecodingBackbone(nn.Module):
    """The ``backbone`` get_reward calls; holds no weights, only the owner's scoring function."""

    def __init__(self, fn):
        super().__init__()
        self._fn = fn  # a bound method, not a submodule: no cycle in the module tree

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return self._fn(input_ids, attention_mask, **kwargs)


# --------------------------------------------------------------------------------------------
# Prompt text -> messages, by the policy tokenizer's own format
# --------------------------------------------------------------------------------------------


class PromptParser:
    """Recover the messages of a prompt rendered with ``format_prompt(tokenizer, messages)``.

    Renders conversations of each shape (1..MAX_USER_TURNS user turns, alternating with assistant
    turns, with or without a leading system turn) with placeholder contents, and turns each into a
    regular expression whose groups are the contents. Works for any template whose text around the
    contents does not depend on them (ChatML, Llama, Gemma, ...) and for the plain
    "User: ...\\n\\nAssistant:" layout of tokenizers without a template.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.patterns: list[tuple[list[str], re.Pattern]] = []
        for turns in range(1, MAX_USER_TURNS + 1):
            for system in (False, True):
                roles = (["system"] if system else []) + ["user", "assistant"] * (turns - 1) + ["user"]
                pattern = self._pattern(roles)
                if pattern is not None:
                    self.patterns.append((roles, pattern))
        self.patterns.sort(key=lambda rp: -sum(r == "user" for r in rp[0]))  # most turns first
        self.bos = getattr(tokenizer, "bos_token", None)
        sample = format_prompt(tokenizer, [{"role": "user", "content": "Hi"}])
        sample_ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
        self.generation_last_token: int | None = sample_ids[-1] if sample_ids else None

    def _pattern(self, roles: list[str]) -> re.Pattern | None:
        marks = [f"\x00{i}\x00" for i in range(len(roles))]
        try:
            text = format_prompt(self.tokenizer, [{"role": r, "content": m} for r, m in zip(roles, marks)])
        except Exception:  # the template rejects this shape (e.g. no system role)
            return None
        pieces, rest = [], text
        for mark in marks:
            if rest.count(mark) != 1:
                return None  # the template dropped or repeated a content: not parseable this way
            before, rest = rest.split(mark)
            pieces.append(re.escape(before))
        return re.compile("(.*?)".join(pieces) + "(.*?)" + re.escape(rest), re.DOTALL)

    def parse(self, text: str) -> list[dict] | None:
        """The messages, or None if ``text`` is not a complete prompt in this format."""
        candidates = [text]
        if self.bos and text.startswith(self.bos):  # the tokenizer added BOS the template lacks
            candidates.append(text[len(self.bos):])
        for candidate in candidates:
            for roles, pattern in self.patterns:
                match = pattern.fullmatch(candidate)
                if match:
                    return [{"role": r, "content": c} for r, c in zip(roles, match.groups())]
        return None


# --------------------------------------------------------------------------------------------
# The get_reward hook
# --------------------------------------------------------------------------------------------


def install_get_reward_hook() -> None:
    """Wrap trl's ``get_reward`` so a ComposedRewardForPPO learns the exact context length.

    Idempotent; a pass-through for every other model. Replaces the function in
    ``trl.experimental.utils`` and in loaded ``trl`` modules that imported it by name (PPO's
    trainer module among them); modules imported later pick up the wrapped one from utils.
    """
    import trl.experimental.utils as trl_utils

    if getattr(trl_utils.get_reward, "_rewardlab_hook", False):
        return
    original = trl_utils.get_reward

    @functools.wraps(original)
    def get_reward(model, query_responses, pad_token_id, context_length):
        if not isinstance(model, ComposedRewardForPPO):
            return original(model, query_responses, pad_token_id, context_length)
        model.context_length = int(context_length)
        try:
            return original(model, query_responses, pad_token_id, context_length)
        finally:
            model.context_length = None

    get_reward._rewardlab_hook = True
    for name, module in list(sys.modules.items()):
        if (name == "trl" or name.startswith("trl.")) and getattr(module, "get_reward", None) is original:
            module.get_reward = get_reward


# --------------------------------------------------------------------------------------------
# Guard: a plain reward model with another tokenizer would silently read garbage
# --------------------------------------------------------------------------------------------


def check_reward_model_for_ppo(reward_model, policy_tokenizer) -> None:
    """Raise a RewardlabError if PPO cannot use ``reward_model`` with ``policy_tokenizer``.

    Accepts a ComposedRewardForPPO built with the same tokenizer, and a sequence classifier
    (``base_model_prefix`` and ``score``) whose tokenizer matches the policy's. A classifier with
    another tokenizer would be fed the policy's token ids and score nonsense: the error says to
    wrap it in a composed reward.
    """
    if isinstance(reward_model, ComposedRewardForPPO):
        if _vocab(reward_model.tokenizer) != _vocab(policy_tokenizer):
            raise RewardlabError(
                "the composed-reward adapter was built with another tokenizer than the policy's; "
                "build it with the policy tokenizer: ComposedRewardForPPO(reward, policy_tokenizer)"
            )
        return
    if isinstance(reward_model, ComposedReward):
        raise RewardlabError(
            "PPO needs the composed reward wrapped for TRL: pass ComposedRewardForPPO(reward, policy_tokenizer)"
        )
    prefix = getattr(reward_model, "base_model_prefix", None)
    if not prefix or not hasattr(reward_model, prefix) or not hasattr(reward_model, "score"):
        raise RewardlabError(
            f"{type(reward_model).__name__} cannot be PPO's reward model (it needs a backbone and a "
            "'score' head, like AutoModelForSequenceClassification); use a composed reward "
            "(docs/reward_design.md)"
        )
    path = str(getattr(getattr(reward_model, "config", None), "_name_or_path", "") or "")
    hint = (
        "; wrap it in a composed reward, which re-tokenizes text for it: a YAML with "
        f"`terms: [{{type: reward_model, path: {path or 'DIR'}}}]` loaded with "
        "ComposedRewardForPPO.from_yaml(path, policy_tokenizer) (see docs/reward_design.md)"
    )
    reward_tokenizer = _saved_tokenizer(path)
    if reward_tokenizer is not None:
        ours, theirs = _vocab(policy_tokenizer), _vocab(reward_tokenizer)
        if any(ours.get(tok) != i for tok, i in theirs.items()):
            raise RewardlabError(
                f"reward model '{path}' uses a different tokenizer than the policy, so PPO would feed "
                f"it the policy's token ids{hint}"
            )
    embeddings = reward_model.get_input_embeddings() if hasattr(reward_model, "get_input_embeddings") else None
    size = getattr(embeddings, "num_embeddings", None)
    if size is not None and size < getattr(policy_tokenizer, "vocab_size", 0):
        raise RewardlabError(
            f"reward model '{path or type(reward_model).__name__}' has {size} token embeddings but the "
            f"policy's tokenizer has {policy_tokenizer.vocab_size} tokens: not the same tokenizer{hint}"
        )


def _vocab(tokenizer) -> dict:
    return dict(tokenizer.get_vocab())


def _saved_tokenizer(path: str):
    if not path:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:
        return None
