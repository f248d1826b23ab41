"""Causal SDPA kernels of this GPU at the shapes we run: which backend, how fast.

    python bench/attention.py      # JSON lines to $OUT/attention.jsonl (or bench/results/)

For each backend PyTorch offers (flash = its FlashAttention-2 port, cudnn = cuDNN's fused
attention, efficient = memory-efficient), time F.scaled_dot_product_attention(is_causal=True)
on random bf16 q/k/v: forward at 4K/16K/100K for the 7B's 32 heads x 128, forward+backward at
4K/16K, and forward at 128K for SmolLM2's 9 query / 3 KV heads x 64 (grouped, enable_gqa).
Where the package flash-attn-4 imports, `fa4` too: its CuTe kernels through `ropelaw.flash4.attention`
(the function `evaluation.attn_implementation: flash4` runs), with the largest difference of its output from
SDPA's (`max_abs_diff_vs_sdpa`, `rel_l2_diff_vs_sdpa`: the same causal attention, bf16 rounding apart).
TFLOP/s counts the causal half: 2*L^2*H*hd forward, 2.5x that for the backward.
A backend that cannot run a shape is recorded with its error.

    python bench/attention.py --backends cudnn fa4 --lengths 100000 131072   # a subset
"""

import argparse

import torch
import torch.nn.functional as F

import benchlib
from benchlib import environment, median, out_path, sdpa_context, timed, write_record

CASES = [  # (label, heads, kv_heads, head_dim, length, backward)
    ("7b", 32, 32, 128, 4096, False), ("7b", 32, 32, 128, 16384, False), ("7b", 32, 32, 128, 100000, False),
    ("7b", 32, 32, 128, 4096, True), ("7b", 32, 32, 128, 16384, True),
    ("smollm2", 9, 3, 64, 131072, False),
]


def run_case(backend, heads, kv_heads, head_dim, length, backward):
    q = torch.randn(1, heads, length, head_dim, device=benchlib.DEVICE, dtype=torch.bfloat16, requires_grad=backward)
    k, v = (torch.randn(1, kv_heads, length, head_dim, device=benchlib.DEVICE, dtype=torch.bfloat16, requires_grad=backward)
            for _ in range(2))
    gqa = {"enable_gqa": True} if kv_heads != heads else {}

    def forward():
        if backend == "fa4":
            from ropelaw import flash4

            return flash4.attention(None, q, k, v, None)[0].transpose(1, 2)
        with sdpa_context(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)

    def step():
        out = forward()
        if backward:
            out.backward(torch.ones_like(out))

    seconds = median(timed(step, repeat=5 if length > 50000 else 10, warmup=2))
    flops = 2.0 * length**2 * heads * head_dim * (3.5 if backward else 1.0)
    diff = {}
    if backend == "fa4" and not backward:
        with torch.no_grad():
            got, want = forward().float(), F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa).float()
            diff = {"max_abs_diff_vs_sdpa": (got - want).abs().max().item(),
                    "rel_l2_diff_vs_sdpa": ((got - want).norm() / want.norm()).item()}
    return seconds, flops, diff


def fa4_missing() -> str | None:
    from ropelaw import flash4

    return flash4.missing()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=None, choices=["flash", "cudnn", "efficient", "fa4"],
                        help="default: PyTorch's three, and fa4 where it can run")
    parser.add_argument("--lengths", nargs="+", type=int, default=None, help="only the cases of these lengths")
    args = parser.parse_args()
    backends = args.backends or ["flash", "cudnn", "efficient"] + ([] if fa4_missing() else ["fa4"])
    if "fa4" in backends and fa4_missing():
        raise SystemExit(f"bench/attention.py: fa4: {fa4_missing()}")
    out = out_path("attention.jsonl")
    env = environment()
    for label, heads, kv_heads, head_dim, length, backward in CASES:
        if args.lengths and length not in args.lengths:
            continue
        for backend in backends:
            record = {"bench": "attention", "device": env.get("device"), "torch": env["torch"], "cudnn": env["cudnn"],
                      "shape": label, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
                      "length": length, "pass": "fwd+bwd" if backward else "fwd", "backend": backend}
            try:
                seconds, flops, diff = run_case(backend, heads, kv_heads, head_dim, length, backward)
                record.update(ms=seconds * 1e3, tflops=flops / seconds / 1e12, **diff)
            except Exception as err:  # noqa: BLE001 - any kernel's failure is a result here
                record.update(error=str(err).splitlines()[0][:200])
            torch.cuda.empty_cache()
            write_record(out, record)


if __name__ == "__main__":
    main()
