"""Small-model fine-tuning with each loss of `finetune.fused_loss`, side by side in one process.

    python bench/finetune_speed.py                                 # SmolLM2-135M shape, random weights, 8K, GPU
    python bench/finetune_speed.py --model-dir results/smollm2/hf  # a GGUF-converted SmolLM2: its config and weights
    python bench/finetune_speed.py --micro-batch 4 8 16 --global-batch 16 --compile   # a sweep, one process
    python bench/finetune_speed.py --tiny                          # a tiny shape on the CPU, to check the script

Every run calls `ropelaw.finetune.train`, the function behind `ropelaw finetune`, from the same
starting weights, on the same packed random rows, with the same seed, once per loss path (`--paths`,
in this order by default): `grad_in_forward` (`fused_loss: true`: chunked lm_head + cross-entropy,
both gradients computed in the forward), `checkpointed` (chunked, the lm_head recomputed in the
backward) and `plain` (`fused_loss: false`: transformers' loss over fp32 logits of the whole
vocabulary; last, since it is the one that runs out of memory first), for each `--micro-batch`; all
with torch's fused AdamW, the Trainer's default (the manifest's `optimizer`). A path that runs out
of GPU memory is recorded as such and the next one runs. Each run prints and appends to
$OUT/finetune_speed.jsonl (default bench/results/) its steps/s and tokens/s (median step after
`--skip` steps), peak GPU memory (reset before each run) and per-step losses; then, per
micro-batch, a summary line with each path's speed-up over plain and over checkpointed, the
largest relative difference of its per-step losses from plain's, and a table row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

import benchlib
from benchlib import environment, gib, out_path, write_record

FUSED_LOSS = {"grad_in_forward": "grad_in_forward", "checkpointed": "checkpointed", "plain": False}


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


def run_path(root: Path, model_dir: Path, path: str, micro_batch: int, args) -> dict:
    """One training run with loss `path`; its record (`oom: true` if it ran out of GPU memory)."""
    from ropelaw.finetune import TrainSpec, train

    spec = TrainSpec(
        steps=args.steps, global_batch_size=args.global_batch, micro_batch_size=micro_batch, lr=1e-4,
        lr_schedule="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, seed=1234, precision="fp32" if args.tiny else "auto",
        gradient_checkpointing=args.ac, attn_implementation="sdpa", deepspeed=None, checkpoint_every=10**6,
        length_multiple=64, logging_steps=1, compile=args.compile, fused_loss=FUSED_LOSS[path],
    )
    base = {
        "bench": "finetune_speed", **environment(), "path": path, "fused_loss": FUSED_LOSS[path],
        "model": str(args.model_dir or ("tiny" if args.tiny else "smollm2-135m random")), "seq": args.seq,
        "global_batch": args.global_batch, "micro_batch": micro_batch, "steps": args.steps, "ac": args.ac,
        "compile": args.compile,
    }
    timer = StepTimer()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    tag = f"{path}_mb{micro_batch}"
    try:
        record = train(str(model_dir), str(root / "data"), args.base, spec, str(root / f"ckpt_{tag}"),
                       str(root / f"out_{tag}"), callbacks=[timer])
    except torch.OutOfMemoryError as err:
        message = str(err).splitlines()[0]
        record = None
    if record is None:  # outside the except block, so the failed run's tensors can be freed
        gc.collect()
        torch.cuda.empty_cache()
        return {**base, "oom": True, "error": message, "peak_allocated_gib": gib(torch.cuda.max_memory_allocated())
                if torch.cuda.is_available() else None}
    assert record["loss_path"] == path, record["loss_path"]
    step_s = float(np.median(np.diff(timer.ends)[args.skip:]))
    return {
        **base, "oom": False, "optimizer": record["optimizer"], "steps_per_s": 1 / step_s,
        "tokens_per_s": args.global_batch * args.seq / step_s, "step_s_all": np.diff(timer.ends).tolist(),
        "peak_allocated_gib": gib(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None,
        "losses": [row["loss"] for row in record["log_history"] if "loss" in row],
    }


def summary(runs: dict[str, dict], micro_batch: int, args) -> dict:
    """Speed-ups over plain and over checkpointed, loss differences from plain, and a BENCHMARKS.md row."""
    ok = {path: r for path, r in runs.items() if not r["oom"]}
    out = {"bench": "finetune_speed", "micro_batch": micro_batch, "compile": args.compile, "paths": list(runs)}
    cells = []
    for path, run in runs.items():
        if run["oom"]:
            cells.append(f"{path}: out of memory")
            continue
        memory = "" if run["peak_allocated_gib"] is None else f", {run['peak_allocated_gib']:.1f} GiB"
        cell = f"{path} {run['tokens_per_s']:,.0f} tokens/s{memory}"
        for ref in ("plain", "checkpointed"):
            if ref in ok and ref != path:
                ratio = run["tokens_per_s"] / ok[ref]["tokens_per_s"]
                out[f"{path}_over_{ref}"] = ratio
                cell += f", {ratio:.2f}× {ref}"
        if "plain" in ok and path != "plain":
            diff = max(abs(a - b) / abs(b) for a, b in zip(run["losses"], ok["plain"]["losses"]))
            out[f"{path}_max_rel_loss_diff"] = diff
            cell += f", loss diff {diff:.1e}"
        cells.append(cell)
    flags = f" --micro-batch {micro_batch} --global-batch {args.global_batch}" + (" --compile" if args.compile else "")
    device = next((r.get("device") for r in runs.values() if r.get("device")), "CPU")
    out["table_row"] = (f"| `python bench/finetune_speed.py{' --tiny' if args.tiny else ''}{flags}` | {device} | "
                        f"{args.seq} tokens × {args.global_batch} | " + " | ".join(cells) + " |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", default=None, help="a model folder (e.g. a GGUF-converted SmolLM2)")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape, fp32, on the CPU")
    parser.add_argument("--seq", type=int, default=None, help="tokens per row (default 8192; --tiny: 128)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 20; --tiny: 4)")
    parser.add_argument("--global-batch", type=int, default=8, help="rows per optimizer step")
    parser.add_argument("--micro-batch", type=int, nargs="+", default=[4], help="rows per forward; several: a sweep")
    parser.add_argument("--paths", nargs="+", choices=list(FUSED_LOSS), default=list(FUSED_LOSS),
                        help="loss paths, run in this order (default: all three, plain last)")
    parser.add_argument("--skip", type=int, default=None, help="steps left out of the median (default 3; --tiny: 1)")
    parser.add_argument("--base", type=float, default=1e6, help="the rotary base the cell tunes with")
    parser.add_argument("--ac", action="store_true", help="finetune.gradient_checkpointing")
    parser.add_argument("--compile", action="store_true", help="finetune.compile (every run)")
    args = parser.parse_args()
    args.seq = args.seq or (128 if args.tiny else 8192)
    args.steps = args.steps or (4 if args.tiny else 20)
    args.skip = args.skip if args.skip is not None else (1 if args.tiny else 3)
    bad = [mb for mb in args.micro_batch if args.global_batch % mb]
    if bad:
        parser.error(f"--global-batch {args.global_batch} is not a multiple of --micro-batch {bad}")
    with tempfile.TemporaryDirectory(prefix="finetune_speed_") as tmp:
        root = Path(tmp)
        model_dir, _ = prepare(root, args)
        for micro_batch in args.micro_batch:
            runs = {}
            for path in args.paths:
                runs[path] = run_path(root, model_dir, path, micro_batch, args)
                write_record(out_path("finetune_speed.jsonl"), runs[path])
            line = summary(runs, micro_batch, args)
            write_record(out_path("finetune_speed.jsonl"), line)
            print(line["table_row"])
            print(json.dumps({f"{path}_losses": run.get("losses") for path, run in runs.items()}))


if __name__ == "__main__":
    main()
