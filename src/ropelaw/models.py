"""Model directories: the untuned model of a config model, and loading with a given base.

    ropelaw init-model --spec '{...}' --tokenizer DIR --out DIR   # scratch: random LLaMA

A scratch model is a LLaMA-architecture `LlamaForCausalLM` initialised at
random from the config's `architecture`, then pretrained by `ropelaw finetune`
at its `train_len` with its original base. A Hugging Face directory is used in
place (a hub or GGUF model is first made a local directory: `ropelaw.sources`).
Loading applies a RoPE method (`ropelaw.methods`): it sets `rope_parameters` in
the config *before* the model is built, so the rotary module is constructed with
the frequencies we ask for, picks the attention function (log-scaled or not),
and `rope.verify_inv_freq` confirms the inv_freq in effect.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ropelaw import UserError, json_object, methods, provenance, rope

MANIFEST = "ropelaw_manifest.json"


def resolve_dtype(precision: str) -> torch.dtype:
    """'auto' means bf16 on a GPU that supports it, fp32 otherwise."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def load_causal_lm(
    model_dir: str | Path,
    method: float | methods.MethodSpec,
    *,
    precision: str = "auto",
    attn_implementation: str = "sdpa",
    device: str | torch.device | None = None,
):
    """Load a causal LM with a RoPE method in effect; returns (model, inv_freq in effect, float64).

    `method` is a resolved `methods.MethodSpec`, or a number: the paper's method,
    a plain rotary base. The one loader of fine-tuning, evaluation and passkey: a
    method with explicit frequencies (split) is written into the rotary buffers
    here at every load (the saved config cannot hold it), then `rope.verify_inv_freq`
    checks what is in effect.
    """
    spec = method if isinstance(method, methods.MethodSpec) else methods.resolve("base", method)
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir} is not a model directory (no config.json)")
    config = AutoConfig.from_pretrained(model_dir)
    methods.apply_to_config(spec, config)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, config=config, dtype=resolve_dtype(precision),
        attn_implementation=methods.attention_implementation(spec, attn_implementation),
    )
    if spec.inv_freq is not None:
        rope.apply_inv_freq(model, spec)
    if device is not None:
        model.to(device)
    inv_freq = rope.verify_inv_freq(model, spec, head_dim_of(config))
    return model, inv_freq


def compile_layers(model, key: str, mode: str | None = None) -> int:
    """torch.compile every decoder layer in place (with torch.compile's `mode`, None for its default);
    returns how many.

    The layers share one compiled graph (torch compiles a layer's code once and
    guards on its structure, not its weights), recompiled once for a second
    sequence length and then shape-generic. Parameters, state dict and saved
    checkpoints are unchanged. `key` is the config key that asked for it.
    """
    layers = getattr(model.get_decoder(), "layers", None)
    if not layers:
        raise UserError(f"config key '{key}': {type(model).__name__} has no decoder `layers` to compile; set it to false")
    for layer in layers:
        layer.compile(mode=mode)
    return len(layers)


def init_scratch(spec: dict, tokenizer_dir: str | Path, out: str | Path) -> None:
    """Write a randomly initialised LLaMA (weights, config, tokenizer) to `out`."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    arch = spec["architecture"]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch["hidden_size"],
        intermediate_size=arch["intermediate_size"],
        num_hidden_layers=arch["num_layers"],
        num_attention_heads=arch["num_heads"],
        num_key_value_heads=arch["num_heads"],
        head_dim=arch["head_dim"],
        max_position_embeddings=spec["train_len"],
        rope_parameters=rope.rope_parameters(spec["rope_base"]),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec["pretrain"]["seed"])
    model = LlamaForCausalLM(config)
    inv_freq = rope.verify_inv_freq(model, methods.resolve("base", spec["rope_base"]), arch["head_dim"])
    with provenance.atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        provenance.write_json(
            Path(tmp) / MANIFEST,
            provenance.manifest(
                kind="scratch-init",
                spec=spec,
                parameters=sum(p.numel() for p in model.parameters()),
                inv_freq=inv_freq.tolist(),
                inv_freq_sha256=rope.inv_freq_digest(inv_freq),
                tokenizer_sha256=provenance.sha256_file(Path(tokenizer_dir) / "tokenizer.json"),
            ),
        )


def add_arguments(parser) -> None:
    parser.add_argument("--spec", required=True, help="the model's config block, as JSON")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory")
    parser.add_argument("--out", required=True, help="output model directory")


def run(args) -> None:
    from ropelaw.tokenizer import check_trained

    spec = json_object(args.spec, "--spec", "pass the model's config block as the workflow writes it "
                       "(rule init_model's params.spec)")
    if not isinstance(spec, dict) or spec.get("source") != "scratch":
        raise UserError("init-model only makes scratch models (--spec with source: scratch); an hf_dir model is used in place")
    if not (Path(args.tokenizer) / "tokenizer.json").is_file():
        raise UserError(f"--tokenizer {args.tokenizer}: not a tokenizer folder (no tokenizer.json); "
                        "run `ropelaw train-tokenizer` first")
    check_trained(args.tokenizer)
    init_scratch(spec, args.tokenizer, args.out)
