"""Tiny real models for tests, built on the fly in well under a second, no downloads.

``build_tiny_causal_lm`` writes a ``save_pretrained`` folder that plain transformers loads: a
byte-level BPE tokenizer shaped like SmolLM2's (ChatML template, ``eos = <|im_end|>`` and,
deliberately, ``pad = eos``, so rewardlab's pad fix is exercised) and a 2-layer Llama with random
weights. ``vocab_variant="other"`` gives a tokenizer with different special-token ids and merges,
for "a reward model with another tokenizer".
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# ChatML, as SmolLM2 uses it (without SmolLM2's default system line, to keep prompts short).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """\
The quick brown fox jumps over the lazy dog. What is the capital of France? The capital of France
is Paris. Please write a short poem about the sea. The sea is wide and the waves are blue.
How do I make a cup of tea? Boil the water, add the tea, and wait for three minutes.
Thank you for the answer. You are welcome, and I hope that this helps with the question.
Explain why the sky is blue in one sentence. Light from the sun is scattered by the air.
""".split("\n")

# variant -> (special tokens in id order, vocabulary size, corpus lines used for training)
_VARIANTS = {
    "default": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 320, _CORPUS),
    "other": (["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|unused|>"], 360, _CORPUS[::-1]),
}


def build_tiny_tokenizer(vocab_variant: str = "default") -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer: special tokens, 256 bytes, then merges from a tiny corpus."""
    specials, vocab_size, corpus = _VARIANTS[vocab_variant]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",  # pad == eos on purpose, as SmolLM2 ships it
        chat_template=CHATML_TEMPLATE,
    )


def build_tiny_causal_lm(out_dir: Path, seed: int = 0, vocab_variant: str = "default") -> Path:
    """Write a tiny random Llama and its tokenizer to ``out_dir``; return ``out_dir``."""
    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer(vocab_variant)
    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
