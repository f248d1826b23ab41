"""A tiny evaluation setup on disk for the evaluation tests: corpus, tokenizer, rows, model folder.

`make_kit(root)` trains a byte-level BPE on a small English-like corpus, prepares rows of
`ROW` tokens (short documents joined with EOS, so rows hold special tokens), and saves a tiny
random LLaMA with the tokenizer beside it. Takes about a second on CPU.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import torch
import transformers

from ropelaw.evaldata import load_eval_docs, prepare_eval
from ropelaw.pile import write_shard
from ropelaw.tokenizer import train_tokenizer

ROW = 160
WORDS = "the of and to in a is that it was he for on are as with his they at be this from".split()
PUNCT = [" ", " ", " ", " ", "  ", "\n", "\n\n", ", ", ". ", "\t"]


def text(rng: random.Random, n_words: int) -> str:
    return "".join(rng.choice(WORDS) + rng.choice(PUNCT) for _ in range(n_words))


def tiny_llama(vocab: int, seed: int = 0):
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        initializer_range=0.2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).float().eval()


def make_kit(root: Path) -> SimpleNamespace:
    rng = random.Random(0)
    records = [{"text": text(rng, rng.randint(20, 120)), "meta": {"pile_set_name": "Books3", "title": f"b{i}"}}
               for i in range(40)]
    write_shard(root / "00.jsonl.zst", records)
    train_tokenizer([root / "00.jsonl.zst"], 300, root / "tokenizer")
    prepare_eval([root / "00.jsonl.zst"], root / "tokenizer", ROW, root / "eval", short_docs="concatenate",
                 max_docs=3)
    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "tokenizer")
    model = tiny_llama(len(tokenizer))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return SimpleNamespace(root=root, tokenizer=tokenizer, model=model, docs=load_eval_docs(root / "eval"),
                           model_dir=root / "model", eval_dir=root / "eval", tokenizer_dir=root / "tokenizer")


def cell_json(**overrides) -> str:
    cell = dict(model="t", method="base", base=10000, tune_len=64, head_dim=16, train_len=64, orig_base=10000.0,
                eval_set="e", seed=None, kind="base", method_options={}, eval_lengths=[64], untuned_dir="",
                training=None)
    return json.dumps({**cell, **overrides})
