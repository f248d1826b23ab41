"""Shared pieces of the GPU benchmarks: model shapes, FLOP counts, timing, and the JSON record.

Imported by the scripts beside it (`python bench/<script>.py` puts bench/ on sys.path).
FLOPs are counted the usual way (matrix products only, 2 per multiply-add):
- forward of L tokens = 2 * N_mm * L + n_layers * 2 * L^2 * H * hd, where N_mm counts
  every weight used in a matrix product (the lm_head too, not the embedding lookup) and
  the second term is causal attention (QK^T and PV over the lower triangle: half of 4*L^2*H*hd);
- training = 3 x forward (the backward is twice the forward), with no credit for recomputation
  under activation checkpointing: that is what MFU means (model FLOPs, not hardware FLOPs).
`torchtitan_flops_per_token` is torchtitan's convention, for comparing with its published MFU:
6 * N (parameters less the embedding) + 12 * n_layers * H * hd * L (non-causal attention).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

DEVICE = "cuda"  # the one GPU of this process (torchrun sets CUDA_VISIBLE_DEVICES or LOCAL_RANK)

# Dense bf16 tensor-core peak of the SXM H100 and H200 by NVIDIA's datasheets (989.4 TFLOP/s without sparsity).
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12}

SHAPES = {
    # LLaMA-2-7B (meta-llama/Llama-2-7b-hf config.json)
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, head_dim=128, rope_theta=10000.0,
                      tie_word_embeddings=False, max_position_embeddings=4096, rms_norm_eps=1e-5),
    # LLaMA-2-13B (meta-llama/Llama-2-13b-hf config.json)
    "llama2-13b": dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                       num_attention_heads=40, num_key_value_heads=40, head_dim=128, rope_theta=10000.0,
                       tie_word_embeddings=False, max_position_embeddings=4096, rms_norm_eps=1e-5),
    # SmolLM2-135M (HuggingFaceTB/SmolLM2-135M config.json)
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0,
                         tie_word_embeddings=True, max_position_embeddings=8192, rms_norm_eps=1e-5),
}


def llama_config(shape: str, layers: int | None = None, attn: str = "sdpa"):
    from transformers import LlamaConfig

    spec = dict(SHAPES[shape])
    theta = spec.pop("rope_theta")
    if layers is not None:
        spec["num_hidden_layers"] = layers
    return LlamaConfig(**spec, rope_parameters={"rope_type": "default", "rope_theta": theta},
                       attn_implementation=attn, use_cache=False)


def attention_function(choice: str) -> str:
    """The `attn_implementation` for a bench's --attn (sdpa, flash4), as `ropelaw evaluate` resolves it
    (`ropelaw.flash4.resolve`): flash4 where it cannot run stops the script in one line."""
    from ropelaw import UserError, flash4

    try:
        return flash4.resolve(choice, key="--attn")
    except UserError as err:
        raise SystemExit(str(err)) from None


def random_llama(shape: str, tiny: dict | None = None, cap_gib: float | None = None, use_cache: bool = False):
    """(model, device): a LLaMA of `shape` (SHAPES) with random weights, bf16 on the GPU, in eval mode; with
    `tiny` (a spec like SHAPES' values), that shape in fp32 on the CPU. `cap_gib` caps the process's GPU
    memory (`torch.cuda.set_per_process_memory_fraction`), as an A100-80GB's 80 GiB."""
    from transformers import LlamaConfig, LlamaForCausalLM

    device = "cpu" if tiny or not torch.cuda.is_available() else "cuda"
    if cap_gib and device == "cuda":
        torch.cuda.set_per_process_memory_fraction(cap_gib * 2**30 / torch.cuda.get_device_properties(0).total_memory)
    if tiny:
        spec = dict(tiny)
        theta = spec.pop("rope_theta")
        config = LlamaConfig(**spec, rope_parameters={"rope_type": "default", "rope_theta": theta},
                             attn_implementation="sdpa")
    else:
        config = llama_config(shape)
    config.use_cache = use_cache
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.float32 if device == "cpu" else torch.bfloat16)
    return model.eval(), device


def matmul_params(config) -> int:
    d, hd = config.hidden_size, config.head_dim
    per_layer = (d * config.num_attention_heads * hd * 2 + d * config.num_key_value_heads * hd * 2
                 + 3 * d * config.intermediate_size)
    return config.num_hidden_layers * per_layer + config.vocab_size * d


def forward_flops(config, length: int) -> float:
    attention = config.num_hidden_layers * 2.0 * length**2 * config.num_attention_heads * config.head_dim
    return 2.0 * matmul_params(config) * length + attention


def train_flops_per_token(config, length: int) -> float:
    return 3.0 * forward_flops(config, length) / length


def torchtitan_flops_per_token(config, length: int) -> float:
    return 6.0 * matmul_params(config) + 12.0 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * length


def peak_flops() -> float:
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    raise SystemExit(f"no datasheet peak for {name}; add it to PEAK_BF16")


def sdpa_context(backend: str):
    """'default' leaves PyTorch's choice; otherwise SDPA may use that one backend only."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    if backend == "default":
        return contextlib.nullcontext()
    names = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION}
    return sdpa_kernel([names[backend]])


def timed(fn, repeat: int, warmup: int) -> list[float]:
    """Wall seconds of `fn()` (synchronised before and after each call), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def median(values):
    return statistics.median(values)


def gib(nbytes: float) -> float:
    return nbytes / 2**30


def environment() -> dict:
    import transformers

    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "transformers": transformers.__version__,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(), device_count=torch.cuda.device_count(),
                    device_memory_gib=round(gib(props.total_memory), 1), sms=props.multi_processor_count)
    for name in ("accelerate", "deepspeed", "flash-attn", "flash-attn-4", "nvidia-cutlass-dsl"):
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return info


def write_record(out: str | Path, record: dict) -> None:
    """Append one JSON line to `out` and print it."""
    line = json.dumps(record, default=float)
    print(line, flush=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as fh:
        fh.write(line + "\n")


def out_path(name: str) -> Path:
    """Results go to $OUT (the device tool's folder) when set, else bench/results/."""
    return Path(os.environ.get("OUT") or Path(__file__).parent / "results") / name


KERNEL_CLASSES = {  # substrings of CUDA kernel (or, on the CPU, operator) names, in the order they are tried
    "attention": ("fmha", "flash", "attention", "cudnn_generated"),
    "matmul": ("gemm", "nvjet", "xmma", "cutlass", "gemv", "aten::mm", "aten::addmm", "aten::bmm"),
    "optimizer": ("adam", "multi_tensor"),
    "compiled": ("triton",),
}


def kernel_name(key: str, width: int = 120) -> str:
    """A kernel's name for a record: the profiler's key, or its first `width` characters and a digest of the whole
    key where it is longer, so that two template instances sharing a long prefix stay two names (eval13's two
    `direct_copy_kernel_cuda` kernels once shared one)."""
    if len(key) <= width:
        return key
    return f"{key[:width]}…#{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def kernel_breakdown(prof, top: int = 25, per: int = 1) -> dict:
    """Seconds of a torch.profiler run by kernel class (attention, matmul, optimizer, compiled, other) and its top
    kernels, divided by `per` (the steps profiled): GPU kernels, or CPU operators' self time if there are none."""
    events = prof.key_averages()
    kernels = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    on_gpu = bool(kernels)
    if not on_gpu:
        kernels = [e for e in events if e.key.startswith("aten::")]
    total = {kind: 0.0 for kind in (*KERNEL_CLASSES, "other")}
    rows = []
    for event in kernels:
        if on_gpu:
            us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)
        else:
            us = event.self_cpu_time_total
        name = event.key.lower()
        kind = next((k for k, subs in KERNEL_CLASSES.items() if any(s in name for s in subs)), "other")
        total[kind] += us / 1e6 / per
        rows.append({"kernel": kernel_name(event.key), "class": kind, "seconds": us / 1e6 / per, "calls": event.count / per})
    rows.sort(key=lambda r: -r["seconds"])
    return {"gpu_seconds_by_class" if on_gpu else "cpu_seconds_by_class": total, "top_kernels": rows[:top]}
