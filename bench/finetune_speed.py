"""Small-model fine-tuning, plain path against the fast path (`finetune.fused_loss`), side by side.

    python bench/finetune_speed.py                                 # SmolLM2-135M shape, random weights, 8K, GPU
    python bench/finetune_speed.py --model-dir results/smollm2/hf  # a GGUF-converted SmolLM2: its config and weights
    python bench/finetune_speed.py --tiny                          # a tiny shape on the CPU, to check the script

Both runs call `ropelaw.finetune.train`, the function behind `ropelaw finetune`, in this one
process, from the same starting weights, on the same packed random rows, with the same seed:
first `fused_loss: false` (transformers' loss over fp32 logits of the whole vocabulary), then
`fused_loss: true` (chunked lm_head + cross-entropy); both with torch's fused AdamW, the Trainer's
default (the manifest's `optimizer`). Each
prints and appends to $OUT/finetune_speed.jsonl (default bench/results/) its steps/s and
tokens/s (median step after `--skip` steps), peak GPU memory (reset before each run) and
per-step losses; the last line is the fast path's speed-up, the largest relative difference of
the per-step losses, and a table row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

import benchlib
from benchlib import environment, gib, out_path, write_record


class StepTimer(TrainerCallback):
    """Wall time at the end of every optimizer step (after synchronising the GPU)."""

    def __init__(self):
        self.ends: list[float] = []

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends.append(self._now())

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(self._now())


def prepare(root: Path, args) -> tuple[Path, int]:
    """A model folder (the given one, or random weights of the shape) and packed random rows."""
    from tokenizers import Tokenizer, models
    from transformers import AutoConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from ropelaw.manifests import PackManifest

    if args.model_dir:
        model_dir = Path(args.model_dir)
        vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    else:
        config = benchlib.llama_config("smollm2-135m")
        if args.tiny:
            config.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=16, vocab_size=1024))
        torch.manual_seed(0)
        model_dir, vocab = root / "model", config.vocab_size
        LlamaForCausalLM(config).save_pretrained(model_dir)
        PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>")),
            eos_token="</s>", unk_token="<unk>").save_pretrained(model_dir)
    data = root / "data"
    data.mkdir()
    rows = args.steps * args.global_batch
    np.random.default_rng(0).integers(0, vocab, size=(rows, args.seq)).astype("<u4").tofile(data / "tokens.bin")
    PackManifest(n_sequences=rows, seq_len=args.seq, dtype="<u4").write(data)
    return model_dir, vocab


def run_path(root: Path, model_dir: Path, fused: bool, args) -> dict:
    from ropelaw.finetune import TrainSpec, train

    spec = TrainSpec(
        steps=args.steps, global_batch_size=args.global_batch, micro_batch_size=args.micro_batch, lr=1e-4,
        lr_schedule="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, seed=1234, precision="fp32" if args.tiny else "auto",
        gradient_checkpointing=args.ac, attn_implementation="sdpa", deepspeed=None, checkpoint_every=10**6,
        length_multiple=64, logging_steps=1, compile=args.compile, fused_loss=fused,
    )
    timer = StepTimer()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    tag = "fast" if fused else "plain"
    record = train(str(model_dir), str(root / "data"), args.base, spec, str(root / f"ckpt_{tag}"),
                   str(root / f"out_{tag}"), callbacks=[timer])
    step_s = float(np.median(np.diff(timer.ends)[args.skip:]))
    return {
        "bench": "finetune_speed", **environment(), "path": tag, "fused_loss": fused,
        "optimizer": record["optimizer"], "model": str(args.model_dir or ("tiny" if args.tiny else "smollm2-135m random")),
        "seq": args.seq, "global_batch": args.global_batch, "micro_batch": args.micro_batch, "steps": args.steps,
        "ac": args.ac, "compile": args.compile, "steps_per_s": 1 / step_s,
        "tokens_per_s": args.global_batch * args.seq / step_s, "step_s_all": np.diff(timer.ends).tolist(),
        "peak_allocated_gib": gib(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None,
        "losses": [row["loss"] for row in record["log_history"] if "loss" in row],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", default=None, help="a model folder (e.g. a GGUF-converted SmolLM2)")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape, fp32, on the CPU")
    parser.add_argument("--seq", type=int, default=None, help="tokens per row (default 8192; --tiny: 128)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per path (default 20; --tiny: 4)")
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--skip", type=int, default=None, help="steps left out of the median (default 3; --tiny: 1)")
    parser.add_argument("--base", type=float, default=1e6, help="the rotary base the cell tunes with")
    parser.add_argument("--ac", action="store_true", help="finetune.gradient_checkpointing")
    parser.add_argument("--compile", action="store_true", help="finetune.compile (both paths)")
    args = parser.parse_args()
    args.seq = args.seq or (128 if args.tiny else 8192)
    args.steps = args.steps or (4 if args.tiny else 20)
    args.skip = args.skip if args.skip is not None else (1 if args.tiny else 3)
    with tempfile.TemporaryDirectory(prefix="finetune_speed_") as tmp:
        root = Path(tmp)
        model_dir, _ = prepare(root, args)
        plain, fast = (run_path(root, model_dir, fused, args) for fused in (False, True))
    for record in (plain, fast):
        write_record(out_path("finetune_speed.jsonl"), record)
    loss_diff = max(abs(a - b) / abs(a) for a, b in zip(plain["losses"], fast["losses"]))
    memory = ("n/a" if plain["peak_allocated_gib"] is None else
              f"{plain['peak_allocated_gib']:.1f} → {fast['peak_allocated_gib']:.1f} GiB")
    row = (f"| finetune {fast['model']}, {args.seq} tokens, batch {args.global_batch} (micro {args.micro_batch})"
           f"{', compiled' if args.compile else ''} | {fast.get('device', 'CPU')} | plain {plain['tokens_per_s']:,.0f} "
           f"→ fast {fast['tokens_per_s']:,.0f} tokens/s ({fast['tokens_per_s'] / plain['tokens_per_s']:.2f}×; "
           f"{plain['steps_per_s']:.2f} → {fast['steps_per_s']:.2f} steps/s) | {memory} | max rel. loss diff "
           f"{loss_diff:.1e} over {args.steps} steps | `python bench/finetune_speed.py{' --tiny' if args.tiny else ''}` |")
    write_record(out_path("finetune_speed.jsonl"), {
        "bench": "finetune_speed", "speedup": fast["tokens_per_s"] / plain["tokens_per_s"],
        "max_rel_loss_diff": loss_diff, "table_row": row})
    print(row)
    print(json.dumps({"plain_losses": plain["losses"], "fast_losses": fast["losses"]}))


if __name__ == "__main__":
    main()
