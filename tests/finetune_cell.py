"""A tiny training cell for the fine-tuning tests: a random LLaMA with a tokenizer, packed random rows,
and `finetune(...)`, which runs `ropelaw finetune` in this process (`ropelaw.cli.main`, the CLI's code)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers

from ropelaw.manifests import PackManifest

VOCAB, SEQ = 96, 32
SPEC = {
    "steps": 5, "global_batch_size": 4, "micro_batch_size": 2, "lr": 1e-3, "lr_schedule": "constant",
    "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
    "adam_epsilon": 1e-8, "seed": 7, "precision": "fp32", "gradient_checkpointing": False,
    "attn_implementation": "sdpa", "deepspeed": None, "checkpoint_every": 2, "length_multiple": 8,
    "logging_steps": 10, "compile": False, "fused_loss": False,
}


def make_cell(root: Path, rows: int = 16, hidden: int = 32, vocab: int = VOCAB) -> Path:
    """root/model (random LLaMA, word-level tokenizer) and root/data (`rows` packed random rows)."""
    from tokenizers import Tokenizer, models

    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0")),
        eos_token="t1", unk_token="t0",
    )
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, head_dim=hidden // 2, max_position_embeddings=SEQ,
        tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    write_rows(root / "data", np.random.default_rng(0).integers(0, vocab, size=(rows, SEQ)))
    return root


def write_rows(directory: Path, rows: np.ndarray) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rows.astype("<u2").tofile(directory / "tokens.bin")
    from ropelaw.provenance import sha256_file

    PackManifest(n_sequences=len(rows), seq_len=rows.shape[1], dtype="<u2",
                 tokens_bin_sha256=sha256_file(directory / "tokens.bin")).write(directory)


def finetune_args(cell: Path, name: str, spec: dict | None = None, ckpt: str | None = None) -> list[str]:
    return ["finetune", "--model", str(cell / "model"), "--data", str(cell / "data"), "--base", "50000",
            "--spec", json.dumps({**SPEC, **(spec or {})}), "--checkpoints", str(cell / (ckpt or f"{name}_ckpt")),
            "--out", str(cell / name)]


def finetune(cell: Path, name: str, spec: dict | None = None, ckpt: str | None = None) -> int:
    """`ropelaw finetune` of the cell into cell/name (checkpoints in cell/`ckpt`); returns the exit status."""
    from ropelaw.cli import main

    try:
        return main(finetune_args(cell, name, spec, ckpt))
    except SystemExit as stop:  # what the process would exit with (75: stopped by SIGUSR1)
        return stop.code


def manifest(cell: Path, name: str) -> dict:
    return json.loads((cell / name / "ropelaw_manifest.json").read_text())


def weights(cell: Path, name: str) -> bytes:
    return (cell / name / "model.safetensors").read_bytes()
