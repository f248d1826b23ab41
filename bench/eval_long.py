"""Time and peak memory of one long-context evaluation forward, through the workflow's own code.

    python bench/eval_long.py --shape llama2-7b --tokens 100000 [--sdpa cudnn] [--plain-mlp]
    python bench/eval_long.py --shape smollm2-135m --tokens 1048576
    python bench/eval_long.py --shape llama2-7b --tokens 100000 --compile --repeat 2   # evaluation.compile
    python bench/eval_long.py --shape llama2-7b --tokens 100000 --profile              # GPU time by kernel class
    python bench/eval_long.py --shape llama2-7b --tokens 100000 --compile --attn flash4 # FlashAttention-4's kernels

A model of the given shape with random bf16 weights (speed and memory do not depend on the
values; the perplexity of random weights means nothing) scores random token ids with
`ropelaw.perplexity.token_stats`, the function `ropelaw evaluate` runs: one backbone forward
without KV cache, the MLPs in chunks of `--chunk` positions (ropelaw.lean), then lm_head,
log-softmax and argmax in chunks. `--plain-mlp` runs the MLPs whole, to show what the chunking
saves. Memory is torch's peak allocated (weights included) over the timed call; the FLOP floor
is the forward's matrix-product FLOPs (benchlib.forward_flops) over the measured bf16 matrix rate
(--gemm-tflops, from bench/ceilings.py) and over the datasheet peak. `--compile` compiles each
decoder layer as `evaluation.compile: true` does (the first timed call pays the compile: use
--repeat 2); `--profile` adds one profiled call and records GPU time by kernel class. `--attn flash4` runs
attention by `ropelaw.flash4` (the package flash-attn-4) instead of SDPA.
"""

import argparse
import contextlib
import time

import torch

import ropelaw.perplexity
import benchlib
from benchlib import (attention_function, environment, forward_flops, gib, kernel_breakdown, llama_config,
                      matmul_params, out_path, peak_flops, sdpa_context, write_record)
from ropelaw.models import compile_layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--chunk", type=int, default=4096, help="evaluation.chunk_size")
    parser.add_argument("--sdpa", default="default", choices=["default", "flash", "cudnn", "efficient"])
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "flash4"], help="the attention function")
    parser.add_argument("--plain-mlp", action="store_true", help="run each MLP over the whole sequence")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="torch.compile each decoder layer (evaluation.compile)")
    parser.add_argument("--profile", action="store_true", help="profile one more call: GPU time by kernel class")
    parser.add_argument("--gemm-tflops", type=float, default=None, help="measured bf16 matrix rate")
    args = parser.parse_args()

    from transformers import LlamaForCausalLM

    config = llama_config(args.shape, attn=attention_function(args.attn))
    torch.manual_seed(0)
    with torch.device(benchlib.DEVICE):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16).eval()
    if args.plain_mlp:
        ropelaw.perplexity.chunked_mlp = lambda model, chunk, compiled=False: contextlib.nullcontext()
    if args.compile:
        compile_layers(model, "--compile")
    ids_bl = torch.randint(0, config.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(1))
    weights_gib = gib(torch.cuda.memory_allocated())

    with sdpa_context(args.sdpa):
        ropelaw.perplexity.token_stats(model, ids_bl[:, :8192], args.chunk, args.compile)  # warm-up: kernels, handles
        times, peaks = [], []
        for _ in range(args.repeat):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            nll_bt, _ = ropelaw.perplexity.token_stats(model, ids_bl, args.chunk, args.compile)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            peaks.append(gib(torch.cuda.max_memory_allocated()))
        profile = {}
        if args.profile:
            from torch.profiler import ProfilerActivity, profile as profiler

            with profiler(activities=[ProfilerActivity.CUDA]) as prof:
                ropelaw.perplexity.token_stats(model, ids_bl, args.chunk, args.compile)
                torch.cuda.synchronize()
            profile = kernel_breakdown(prof)
    flops = forward_flops(config, args.tokens)
    seconds = min(times)
    record = {
        "bench": "eval_long", **environment(), "shape": args.shape, "tokens": args.tokens, "chunk": args.chunk,
        "sdpa": args.sdpa, "attn": args.attn, "mlp": "whole" if args.plain_mlp else "chunked", "compile": args.compile, "weights": "random",
        "seconds": seconds, "seconds_all": times, "peak_allocated_gib": max(peaks),
        "peak_reserved_gib": gib(torch.cuda.max_memory_reserved()), "weights_gib": weights_gib,
        "matmul_params": matmul_params(config), "forward_tflop": flops / 1e12,
        "achieved_tflops": flops / seconds / 1e12,
        "floor_s_datasheet": flops / peak_flops(), "x_floor_datasheet": seconds * peak_flops() / flops,
        "ppl_random_weights": float(torch.exp(nll_bt.mean())), **profile,
    }
    if args.gemm_tflops:
        record.update(floor_s_measured=flops / (args.gemm_tflops * 1e12),
                      x_floor_measured=seconds * args.gemm_tflops * 1e12 / flops)
    write_record(out_path("eval_long.jsonl"), record)


if __name__ == "__main__":
    main()
