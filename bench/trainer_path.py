"""Throughput of the workflow's own fine-tuning code (`ropelaw.finetune.train`) on 1..N GPUs.

    python bench/trainer_path.py prepare --dir /tmp/tp --layers 8 --seq 4096 --rows 64
    python bench/trainer_path.py run --dir /tmp/tp --global-batch 8 --steps 6 [--ac] [--deepspeed config/deepspeed/zero3.json] [--compile]
    torchrun --standalone --nproc-per-node 2 bench/trainer_path.py run --dir /tmp/tp ... --deepspeed ...

`prepare` writes what the finetune rule reads: a LLaMA-2-7B-shaped model with fewer layers and
random fp32 weights (save_pretrained, a throwaway word-level tokenizer beside it) and a
`ropelaw pack`-format folder of random token rows. `run` calls `ropelaw.finetune.train`, the
function behind `ropelaw finetune`, exactly as the rule does (Trainer, AdamW, bf16, global batch
kept by accumulation, DeepSpeed when given), with one extra callback that times every optimizer
step (synchronised) and skips the end-of-run checkpoint, which only costs disk time here.
Reports tokens/s/GPU from the median step after the first two, and MFU as bench/train_step.py.
A 7B full fine-tune with AdamW does not fit one 80 GB GPU without offload, hence fewer layers:
every layer does the same work, so tokens/s x layers is what 32 layers would do, less the
embedding and lm_head share.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

import benchlib
from benchlib import (environment, gib, llama_config, matmul_params, median, out_path, peak_flops,
                      torchtitan_flops_per_token, train_flops_per_token, write_record)


class StepTimer(TrainerCallback):
    def __init__(self):
        self.ends = []

    def on_train_begin(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        self.ends.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        self.ends.append(time.perf_counter())
        control.should_save = False  # no end-of-run checkpoint: disk time, not training
        return control


def prepare(args) -> None:
    from tokenizers import Tokenizer, models
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    root = Path(args.dir)
    config = llama_config("llama2-7b", args.layers)
    torch.manual_seed(0)
    with torch.device(benchlib.DEVICE):
        model = LlamaForCausalLM._from_config(config, dtype=torch.float32)
    model.save_pretrained(root / "model")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>")),
        eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(root / "model")
    for seq in args.seq:
        data = root / f"data_len{seq}"
        data.mkdir(parents=True, exist_ok=True)
        rows = np.random.default_rng(seq).integers(0, config.vocab_size, size=(args.rows, seq)).astype("<u2")
        rows.tofile(data / "tokens.bin")
        (data / "manifest.json").write_text(json.dumps({"n_sequences": args.rows, "seq_len": seq, "dtype": "<u2"}))


def run(args) -> None:
    from transformers import AutoConfig

    from ropelaw.finetune import TrainSpec, train

    root = Path(args.dir)
    data = root / f"data_len{args.seq}"
    spec = TrainSpec(
        steps=args.steps, global_batch_size=args.global_batch, micro_batch_size=1, lr=2e-5, lr_schedule="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=2.5, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        seed=1234, precision="bf16", gradient_checkpointing=args.ac, attn_implementation="sdpa",
        deepspeed=args.deepspeed, checkpoint_every=10**6, length_multiple=64, logging_steps=1, compile=args.compile,
    )
    timer = StepTimer()
    tag = f"{'zero3' if args.deepspeed else 'plain'}_len{args.seq}_ac{int(args.ac)}_c{int(args.compile)}_w{os.environ.get('WORLD_SIZE', '1')}"
    torch.cuda.reset_peak_memory_stats()
    record = train(str(root / "model"), str(data), 10000.0, spec, str(root / f"ckpt_{tag}"),
                   str(root / f"out_{tag}"), callbacks=[timer])
    if int(os.environ.get("RANK", "0")) != 0:
        return
    steps = np.diff(timer.ends)[2:]  # the first two steps carry start-up work
    world = record["world_size"]
    config = AutoConfig.from_pretrained(root / "model")
    tokens_per_s_gpu = args.global_batch * args.seq / float(np.median(steps)) / world
    write_record(out_path("trainer_path.jsonl"), {
        "bench": "trainer_path", **environment(), "shape": "llama2-7b", "layers": config.num_hidden_layers,
        "seq": args.seq, "world_size": world, "global_batch": args.global_batch,
        "accumulation": record["gradient_accumulation_steps"], "ac": args.ac, "compile": args.compile,
        "ds_config": args.deepspeed, "what": "ropelaw.finetune.train: Trainer, AdamW, bf16, full optimizer steps",
        "step_s": float(np.median(steps)), "step_s_all": np.diff(timer.ends).tolist(),
        "tokens_per_s_per_gpu": tokens_per_s_gpu,
        "mfu": train_flops_per_token(config, args.seq) * tokens_per_s_gpu / peak_flops(),
        "mfu_torchtitan_convention": torchtitan_flops_per_token(config, args.seq) * tokens_per_s_gpu / peak_flops(),
        "matmul_params": matmul_params(config), "peak_allocated_gib_rank0": gib(torch.cuda.max_memory_allocated()),
        "losses": [row["loss"] for row in record["log_history"] if "loss" in row],
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--dir", required=True)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--seq", type=int, nargs="+", default=[4096])
    p.add_argument("--rows", type=int, default=64)
    r = sub.add_parser("run")
    r.add_argument("--dir", required=True)
    r.add_argument("--seq", type=int, default=4096)
    r.add_argument("--global-batch", type=int, default=8)
    r.add_argument("--steps", type=int, default=6)
    r.add_argument("--ac", action="store_true")
    r.add_argument("--deepspeed", default=None)
    r.add_argument("--compile", action="store_true", help="finetune.compile: torch.compile each decoder layer")
    args = parser.parse_args()
    prepare(args) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    main()
