"""Markdown tables of one benchmark run, for BENCHMARKS.md.

    python bench/summarize.py bench/results/2026-11-22-h200

Reads every *.jsonl below the folder (what bench/run_all.sh writes) and prints one table per
benchmark, with the numbers as measured (no rounding beyond display).
"""

import json
import sys
from pathlib import Path


def rows(folder: Path, name: str) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.rglob(f"{name}.jsonl")) for line in path.open()]


def table(header: list[str], lines: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(cell) for cell in line) + " |" for line in lines]
    return "\n".join(out)


def main() -> None:
    folder = Path(sys.argv[1])
    for r in rows(folder, "ceilings"):
        print(f"{r['device']}, torch {r['torch']}, cuDNN {r['cudnn']}, transformers {r['transformers']}, "
              f"{r['date_utc']}: bf16 GEMM {r['gemm_bf16_tflops']:.0f} TFLOP/s, copy {r['copy_tb_per_s']:.2f} TB/s\n")
    att = rows(folder, "attention")
    keys = sorted({(r["shape"], r["pass"], r["length"]) for r in att}, key=lambda k: (k[0], k[1], k[2]))
    backends = ["flash", "cudnn", "efficient"]
    lines = []
    for key in keys:
        by = {r["backend"]: r for r in att if (r["shape"], r["pass"], r["length"]) == key}
        lines.append([*key, *(f"{by[b]['tflops']:.0f}" if "tflops" in by.get(b, {}) else "n/a" for b in backends)])
    print(table(["shape", "pass", "length", *(f"{b} TFLOP/s" for b in backends)], lines), "\n")
    print(table(["shape", "tokens", "SDPA", "MLP", "compiled", "seconds", "peak alloc GiB", "reserved GiB", "TFLOP/s",
                 "x floor (GEMM)", "x floor (datasheet)"],
                [[r["shape"], r["tokens"], r["sdpa"], r["mlp"], r.get("compile", False), f"{r['seconds']:.2f}", f"{r['peak_allocated_gib']:.2f}",
                  f"{r['peak_reserved_gib']:.2f}", f"{r['achieved_tflops']:.0f}", f"{r.get('x_floor_measured', 0):.2f}",
                  f"{r['x_floor_datasheet']:.2f}"] for r in rows(folder, "eval_long")]), "\n")
    print(table(["layers", "seq", "AC", "SDPA", "compiled", "step s", "tokens/s", "MFU", "MFU (torchtitan)", "peak GiB"],
                [[r["layers"], r["seq"], r["ac"], r["sdpa"], r["compile_layers"], f"{r['step_s']:.3f}",
                  f"{r['tokens_per_s']:,.0f}", f"{r['mfu']:.1%}", f"{r['mfu_torchtitan_convention']:.1%}",
                  f"{r['peak_allocated_gib']:.1f}"] for r in rows(folder, "train_step")]), "\n")
    print(table(["GPUs", "layers", "seq", "AC", "compiled", "DeepSpeed", "accum.", "step s", "tokens/s/GPU", "MFU", "peak GiB rank 0",
                 "device"],
                [[r["world_size"], r["layers"], r["seq"], r["ac"], r.get("compile", False), r["ds_config"] or "-", r["accumulation"],
                  f"{r['step_s']:.3f}", f"{r['tokens_per_s_per_gpu']:,.0f}", f"{r['mfu']:.1%}",
                  f"{r['peak_allocated_gib_rank0']:.1f}", f"{r['device']} x{r['device_count']}"]
                 for r in rows(folder, "trainer_path")]))


if __name__ == "__main__":
    main()
