"""The two ceilings of this GPU, measured: bf16 matrix-product rate and device-memory copy bandwidth.

    python bench/ceilings.py        # one JSON line to $OUT/ceilings.jsonl (or bench/results/)

8192^3 bf16 products on random data (never zeros), median of 20 after 5 warm-ups; a 4 GiB
device-to-device copy, counting bytes read plus written, median of 20.
"""

import torch

import benchlib
from benchlib import environment, median, out_path, timed, write_record


def main() -> None:
    n = 8192
    a, b = (torch.randn(n, n, device=benchlib.DEVICE, dtype=torch.bfloat16) for _ in range(2))
    gemm_s = median(timed(lambda: a @ b, repeat=20, warmup=5))
    src = torch.randn(2**30, device=benchlib.DEVICE)  # 4 GiB of fp32
    dst = torch.empty_like(src)
    copy_s = median(timed(lambda: dst.copy_(src), repeat=20, warmup=3))
    write_record(out_path("ceilings.jsonl"), {
        "bench": "ceilings", **environment(),
        "gemm_bf16_tflops": 2 * n**3 / gemm_s / 1e12,
        "copy_tb_per_s": 2 * src.numel() * 4 / copy_s / 1e12,
    })


if __name__ == "__main__":
    main()
