"""The default evaluation path against plain transformers, side by side in one process.

    python bench/eval_vs_plain.py --shape llama2-7b --tokens 32768 100000 --repeat 2   # one GPU
    python bench/eval_vs_plain.py --tiny                                               # CPU, a small shape

For each length, one row of random token ids is scored twice on a model of the given shape with
random weights (bf16 on a GPU, fp32 on CPU):
- `default`: what `ropelaw evaluate` runs with `evaluation.chunk_size: auto` — the chunk chosen
  by `ropelaw.chunking.choose_chunk` from the free memory, then `ropelaw.scoring.score_window`;
- `plain`: `model(ids, labels=ids)`, the forward a transformers user would write.
Each is timed (best of --repeat, after a warm-up at a short length) with its peak allocated
memory (GPU only), and the row records time and memory ratios (default / plain), the chunk and
why, and the relative difference of the two perplexities. A plain forward that runs out of
memory is recorded as such. Issue 14's goal: ratio of time <= 1 and of memory <= 0.5 wherever
plain fits. Results: JSON lines in $OUT/eval_vs_plain.jsonl (bench/results/ without $OUT).
"""

import argparse
import time

import torch

from benchlib import SHAPES, environment, gib, llama_config, out_path, write_record
from ropelaw.chunking import choose_chunk
from ropelaw.scoring import Scoring, score_window

TINY = dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, head_dim=64, rope_theta=10000.0, tie_word_embeddings=False,
            max_position_embeddings=4096, rms_norm_eps=1e-5)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(fn, device: str, repeat: int) -> tuple[float, float | None, object]:
    """(best seconds, peak allocated GiB or None on CPU, the last result)."""
    times, peak, result = [], None, None
    for _ in range(repeat):
        _sync(device)
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        if device == "cuda":
            peak = max(peak or 0.0, gib(torch.cuda.max_memory_allocated()))
    return min(times), peak, result


def default_path(model, ids_bl, length, budget_gib):
    chunk, why = choose_chunk(model, length, 1, "auto", budget_gib)
    stats = score_window(model, ids_bl, length, Scoring(), chunk_size=chunk)
    return float(torch.exp(torch.as_tensor(stats["nll"]).mean())), why


def plain_path(model, ids_bl):
    with torch.inference_mode():
        return float(torch.exp(model(input_ids=ids_bl, labels=ids_bl, use_cache=False).loss.float()))


def compare(model, ids_bl, length, device, repeat, budget_gib) -> dict:
    ids = ids_bl[:, :length]
    row = {"tokens": length}
    row["default_s"], row["default_peak_gib"], (ppl_default, why) = measure(
        lambda: default_path(model, ids, length, budget_gib), device, repeat)
    row.update(chunk_size=why["chunk_size"], chunk_reason=why["reason"], chunking=why)
    try:
        row["plain_s"], row["plain_peak_gib"], ppl_plain = measure(lambda: plain_path(model, ids.to(device)), device, repeat)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {**row, "plain": "out of memory"}
    row.update(time_ratio=row["default_s"] / row["plain_s"], ppl_default=ppl_default, ppl_plain=ppl_plain,
               ppl_rel_diff=abs(ppl_default / ppl_plain - 1))
    if row["default_peak_gib"] is not None:
        row["memory_ratio"] = row["default_peak_gib"] / row["plain_peak_gib"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="llama2-7b", choices=sorted(SHAPES))
    parser.add_argument("--tokens", type=int, nargs="+", default=None, help="lengths (default 32768 100000; --tiny 1024 4096)")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer shape with LLaMA's vocabulary, on CPU")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--budget-gib", type=float, default=None, help="evaluation.memory_budget_gib")
    args = parser.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    if args.tiny:
        spec = dict(TINY)
        theta = spec.pop("rope_theta")
        config = LlamaConfig(**spec, rope_parameters={"rope_type": "default", "rope_theta": theta},
                             attn_implementation="sdpa", use_cache=False)
    else:
        config = llama_config(args.shape)
    lengths = args.tokens or ([1024, 4096] if args.tiny else [32768, 100000])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.float32 if device == "cpu" else torch.bfloat16)
    model.eval()
    ids_bl = torch.randint(0, config.vocab_size, (1, max(lengths)), generator=torch.Generator().manual_seed(1))
    warm = min(lengths[0], 2048)
    default_path(model, ids_bl[:, :warm], warm, args.budget_gib)  # warm-up: kernels, handles
    plain_path(model, ids_bl[:, :warm].to(device))
    for length in lengths:
        row = compare(model, ids_bl, length, device, args.repeat, args.budget_gib)
        write_record(out_path("eval_vs_plain.jsonl"), {"bench": "eval_vs_plain", **environment(),
                                                        "shape": "tiny" if args.tiny else args.shape,
                                                        "weights": "random", **row})


if __name__ == "__main__":
    main()
