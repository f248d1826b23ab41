"""Forward+backward throughput of a LLaMA shape on one GPU, in plain PyTorch (no optimizer).

    python bench/train_step.py --shape llama2-7b --seq 4096 [--ac] [--sdpa cudnn] [--compile-layers]

The same measurement as the published anchor ("forward+backward only, 7B, 4K, H200"): the
whole 32-layer model in bf16 (weights and gradients in bf16: an AdamW state for 7B does not
fit one GPU), micro-batch 1, Hugging Face's LlamaForCausalLM with SDPA attention, the loss
from its labels path. `--ac` turns on Hugging Face activation checkpointing (every decoder
layer; non-reentrant); `--compile-layers` compiles each decoder layer with torch.compile.
Reports tokens/s and MFU = model FLOPs (benchlib.train_flops_per_token, no credit for
recomputation) x tokens/s over the datasheet peak, plus torchtitan's convention.
"""

import argparse

import torch

import benchlib
from benchlib import (environment, gib, llama_config, matmul_params, median, out_path, peak_flops, sdpa_context,
                      timed, torchtitan_flops_per_token, train_flops_per_token, write_record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="llama2-7b")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than the shape has")
    parser.add_argument("--seq", type=int, required=True)
    parser.add_argument("--ac", action="store_true", help="activation checkpointing")
    parser.add_argument("--sdpa", default="default", choices=["default", "flash", "cudnn", "efficient"])
    parser.add_argument("--compile-layers", action="store_true")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    from transformers import LlamaForCausalLM

    config = llama_config(args.shape, args.layers)
    torch.manual_seed(0)
    with torch.device(benchlib.DEVICE):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.train()
    if args.ac:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.compile_layers:
        for layer in model.model.layers:
            layer.compile()
    ids_bl = torch.randint(0, config.vocab_size, (1, args.seq), device=benchlib.DEVICE)

    def step():
        with sdpa_context(args.sdpa):
            loss = model(input_ids=ids_bl, labels=ids_bl).loss
            loss.backward()
        for p in model.parameters():
            p.grad = None

    torch.cuda.reset_peak_memory_stats()
    times = timed(step, repeat=args.steps, warmup=args.warmup)
    seconds = median(times)
    tokens_per_s = args.seq / seconds
    record = {
        "bench": "train_step", **environment(), "shape": args.shape, "layers": config.num_hidden_layers,
        "seq": args.seq, "micro_batch": 1, "ac": args.ac, "sdpa": args.sdpa, "compile_layers": args.compile_layers,
        "what": "forward+backward, bf16 weights and grads, no optimizer",
        "step_s": seconds, "step_s_all": times, "tokens_per_s": tokens_per_s,
        "mfu": train_flops_per_token(config, args.seq) * tokens_per_s / peak_flops(),
        "mfu_torchtitan_convention": torchtitan_flops_per_token(config, args.seq) * tokens_per_s / peak_flops(),
        "matmul_params": matmul_params(config), "peak_allocated_gib": gib(torch.cuda.max_memory_allocated()),
    }
    write_record(out_path("train_step.jsonl"), record)


if __name__ == "__main__":
    main()
