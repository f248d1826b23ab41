"""The default evaluation path against plain transformers, side by side in one process.

    python bench/eval_vs_plain.py --shape llama2-7b --tokens 32768 100000 --repeat 2   # one GPU
    python bench/eval_vs_plain.py --shape llama2-13b --tokens 1048576 --no-plain --no-warmup --cap-gib 80 --layer-progress
    python bench/eval_vs_plain.py --tiny --variants whole:1 256:2                       # CPU, a small shape

For each length, one row of random token ids is scored on a model of the given shape with
random weights (bf16 on a GPU, fp32 on CPU), by each path in turn:
- `plain`: `model(ids, labels=ids)`, the forward a transformers user would write;
- `default`: what `ropelaw evaluate` runs with `evaluation.chunk_size: auto` — the chunk and
  head groups chosen by `ropelaw.chunking.choose_chunk` from the free memory, then
  `ropelaw.scoring.score_window`;
- `--variants plain`: plain again, as the path `plain2`: the A/A control (its ratio to plain is what the
  timing resolves; with `--interleave`, of the medians);
- `--variants`: the same with a fixed chunk and/or number of head groups (`CHUNK:GROUPS`, `auto`
  for either; `whole:1` is the previous default with memory to spare: no chunk, no groups), and
  optionally the MLP's slices of the intermediate dimension (`CHUNK:GROUPS:SLICES`, the
  `mlp_slices` of `ropelaw.perplexity.token_stats`: 0, the default, the module's own forward over chunks
  of rows; `8192:1:4` ropelaw's LLaMA MLP over whole rows in four slices, the rest chunked by 8,192).
Every path runs once untimed at each length before it is timed (the first call at a new shape pays
for cuDNN's attention plan; a path timed first would carry it), then --repeat times; the best time
and the peak allocated memory (GPU only) are kept. Rows record the ratios to plain of time and of
memory, and of memory above the weights (at 32K a 7B's bf16 weights alone are more than half of
plain's peak, so only this ratio can be halved), the chunk, the groups and why, and the relative
difference of the perplexities. A path that runs out of memory is recorded as such.
`--peak-report` (GPU) records the allocator's trace and keeps, per row, the largest blocks alive at
its peak and the lines that allocated them: what a memory model must count.
`--profile` adds one more call per path under torch.profiler and records its seconds by kernel class
(attention, matmul, other; `benchlib.kernel_breakdown`: GPU kernels, or CPU operators on the CPU), so that a
difference in time between two paths can be put where it is.
`--interleave R` times every path R more times, one call each per round, the first path rotating from round to
round, and records the medians (`seconds_interleaved`, `time_ratio_interleaved`): a path always timed first or
after another cannot carry an order or clock effect into its ratio.
`--layer-progress` prints a line after each decoder layer of every call (seconds since the call began, the device
synchronised first; the peak allocated so far) and keeps the last call's lines in its row (`layers_done`): a
run as long as a 13B at 1M (17 minutes) shows how far it got, and its peak so far, even if it never ends.
`--attn flash4` runs every path but plain (and plain2) with FlashAttention-4's kernels (`ropelaw.flash4`,
the package flash-attn-4), plain with SDPA as a transformers user's forward does: the model's attention function
is set before each call of each path, interleaved ones too.
`--cap-gib 80` caps the process (`torch.cuda.set_per_process_memory_fraction`) like an A100-80GB.
`--run-layers N` keeps every layer's weights on the GPU but runs only the first N layers: every
layer has the same shape, so the peak memory of a whole forward is measured (weights, one layer's
activations, the final norm and the lm_head with its loss) in N/layers of its time; the time and
perplexity of such a row are not the whole model's.
Issue 14's goal: ratio of time <= 1 and of memory <= 0.5 wherever plain fits.
Results: JSON lines in $OUT/eval_vs_plain.jsonl (bench/results/ without $OUT).
"""

import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np
import torch

from benchlib import SHAPES, attention_function, environment, gib, kernel_breakdown, out_path, random_llama, write_record
from ropelaw.chunking import choose_chunk
from ropelaw.scoring import Scoring, layer_progress, score_window

TINY = dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, head_dim=64, rope_theta=10000.0, tie_word_embeddings=False,
            max_position_embeddings=4096, rms_norm_eps=1e-5)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(fn, device: str, repeat: int, warmup: bool = True) -> tuple[float, float | None, object]:
    """(best seconds, peak allocated GiB or None on CPU, the last result), after one untimed call (`warmup`)."""
    times, peak, result = [], None, None
    for attempt in range(int(not warmup), repeat + 1):
        _sync(device)
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = fn()
        _sync(device)
        if attempt:  # the first call warms this shape up
            times.append(time.perf_counter() - start)
        if device == "cuda":
            peak = max(peak or 0.0, gib(torch.cuda.max_memory_allocated()))
    return min(times), peak, result


def peak_blocks(snapshot, top: int = 25) -> dict:
    """The blocks alive at the highest point of a recorded allocator trace (`--peak-report`).

    Replays `torch.cuda.memory._snapshot()["device_traces"]`: allocations made before the recording
    (the weights) are not in it, so `traced_peak_gib` is the peak above them. Each block: its size
    and the innermost frames of this repository's code and transformers' that allocated it."""
    live, total, best, best_live = {}, 0, 0, {}
    for event in snapshot["device_traces"][0]:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            total += event["size"]
            if total > best:
                best, best_live = total, dict(live)
        elif event["action"] == "free_completed" and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]

    def where(event):
        frames = [f for f in event.get("frames", []) if "/torch/" not in f["filename"]]
        return [f"{f['filename'].rsplit('/', 2)[-1]}:{f['line']} {f['name']}" for f in frames[:4]]

    blocks = sorted(best_live.values(), key=lambda e: -e["size"])
    return {"traced_peak_gib": gib(best), "blocks": len(blocks),
            "largest": [{"gib": round(gib(e["size"]), 3), "at": where(e)} for e in blocks[:top]]}


def _stop_recording(row: dict, peak_report: bool) -> None:
    """With `--peak-report`: the row's largest blocks at the recorded peak, then recording off."""
    if peak_report:
        row["peak_report"] = peak_blocks(torch.cuda.memory._snapshot())
        torch.cuda.memory._record_memory_history(enabled=None)


class LayerProgress:
    """`--layer-progress` (through `ropelaw.scoring.layer_progress`, the device synchronised at each layer's end): a
    line on stderr after each decoder layer with the seconds since the forward began and the peak allocated memory
    so far; `layers_done` keeps the last forward's (seconds, peak GiB or None) per layer."""

    def __init__(self, device: str):
        self.device, self.started, self.layers_done = device, 0.0, []

    def forward(self) -> None:
        self.started, self.layers_done = time.perf_counter(), []

    def layer(self, done: int, total: int) -> None:
        seconds = time.perf_counter() - self.started
        peak = gib(torch.cuda.max_memory_allocated()) if self.device == "cuda" else None
        self.layers_done.append((round(seconds, 3), None if peak is None else round(peak, 3)))
        print(f"layer {done}/{total}: {seconds:.1f} s" + ("" if peak is None else f", peak {peak:.2f} GiB"),
              file=sys.stderr, flush=True)


def scored_path(model, ids_bl, length, budget_gib, chunk="auto", groups="auto", decided=None, slices=None):
    """The scored forward as `ropelaw evaluate` runs it; `slices` (not None) fixes the MLP's slices."""
    chunk_size, why = choose_chunk(model, length, 1, "auto" if chunk == "auto" else chunk, budget_gib,
                                   None if groups == "auto" else groups)
    if slices is not None:
        why.update(mlp_slices=slices, mlp_reason="fixed by the variant")
    if decided is not None:  # the caller's record, kept if the forward runs out of memory
        decided.update(why)
    stats = score_window(model, ids_bl, length, Scoring(), chunk_size=chunk_size, head_groups=why["head_groups"],
                         mlp_slices=why["mlp_slices"])
    return float(torch.exp(torch.as_tensor(stats["nll"]).mean())), why


def plain_path(model, ids_bl):
    with torch.inference_mode():
        return float(torch.exp(model(input_ids=ids_bl, labels=ids_bl, use_cache=False).loss.float()))


def parse_variant(text: str) -> tuple[str, int | str | None, int | str | None, int | None]:
    """`CHUNK:GROUPS[:SLICES]` -> (name, chunk: a number, 'whole' or 'auto', groups: a number or 'auto',
    the MLP's slices: a number, or None (as `choose_chunk` decides) when not given). `plain` -> plain
    transformers' forward again, as the path `plain2`: the A/A control, what the timing resolves."""
    if text == "plain":
        return "plain2", None, None, None
    chunk, _, rest = text.partition(":")
    groups, _, slices = rest.partition(":")
    chunk, groups = chunk or "auto", groups or "auto"
    try:
        return (text, chunk if chunk in ("auto", "whole") else int(chunk), groups if groups == "auto" else int(groups),
                None if slices == "" else int(slices))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use CHUNK:GROUPS[:SLICES], e.g. whole:1, 8192:2, auto:4, "
                                         "whole:1:4") from None


def profiled(fn, device: str) -> dict:
    """Seconds by kernel class of one more call of `fn` (GPU kernels; CPU operators without a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA if device == "cuda" else ProfilerActivity.CPU]) as prof:
        fn()
        _sync(device)
    return kernel_breakdown(prof)


def interleave(calls: dict, rows: list[dict], device: str, rounds: int) -> None:
    """`rounds` more timed calls of every path that ran, one call each per round, each round starting one path
    later than the one before (plain, default, v1; default, v1, plain; ...), so that no path is always first
    (eval10: the same kernels ran about 1.3% slower in the path timed after plain). Adds to each row its median
    `seconds_interleaved`, `time_ratio_interleaved` against the first path, and `interleaved_order`."""
    names = list(calls)
    chunk = {row["path"]: row.get("chunk_size") for row in rows}
    times: dict[str, list[float]] = {name: [] for name in names}
    order = []
    for r in range(rounds):
        turn = names[r % len(names):] + names[:r % len(names)]
        order.append(turn)
        for name in turn:
            _sync(device)
            start = time.perf_counter()
            result = calls[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
            ran = result[1]["chunk_size"] if isinstance(result, tuple) else None
            if ran != chunk[name]:  # a call that ran another path's chunk would time that path
                raise RuntimeError(f"interleaved {name} ran chunk {ran}, its row says {chunk[name]}")
    medians = {name: float(np.median(t)) for name, t in times.items()}
    for row in rows:
        if row["path"] in medians:
            row.update(seconds_interleaved=medians[row["path"]], interleaved_order=order,
                       time_ratio_interleaved=medians[row["path"]] / medians[names[0]])


def attending(model, name: str, call):
    """`call`, with the model's attention function set to `name` first: paths of one process may differ in it."""
    def run():
        model.set_attn_implementation(name)
        return call()

    return run


def compare(model, ids_bl, length, device, repeat, budget_gib, variants, plain=True, warmup=True,
            weights_gib=None, peak_report=False, profile=False, rounds=0, progress=None,
            attn: str = "sdpa") -> list[dict]:
    """One row per path at this length: plain, default, then each variant; with `rounds`, timed again
    interleaved (`interleave`) before the rows are printed; with `progress` (a `LayerProgress`), each row keeps
    its last forward's `layers_done`."""
    ids = ids_bl[:, :length]
    weights_gib = weights_gib or gib(sum(p.numel() * p.element_size() for p in model.parameters()))
    rows, reference, calls = [], None, {}
    paths = [("default", "auto", "auto", None), *variants]
    if plain:
        paths.insert(0, ("plain", None, None, None))
    for name, chunk, groups, slices in paths:
        row, decided = {"tokens": length, "path": name, "weights_gib": weights_gib}, {}
        if peak_report:
            torch.cuda.memory._record_memory_history(max_entries=200_000, stacks="python", clear_history=True)
        try:
            if chunk is None:  # plain, or plain2 (the A/A control)
                call = attending(model, "sdpa", lambda: plain_path(model, ids.to(device)))
                row["seconds"], row["peak_gib"], ppl = measure(call, device, repeat, warmup)
            else:
                fixed = length if chunk == "whole" else chunk
                # the loop's values bound now: `interleave` calls it after the loop has moved on
                call = attending(model, attn, lambda fixed=fixed, groups=groups, decided=decided, slices=slices:
                                 scored_path(model, ids, length, budget_gib, fixed, groups, decided, slices))
                row["attn"] = attn
                row["seconds"], row["peak_gib"], (ppl, why) = measure(call, device, repeat, warmup)
                row.update(chunk_size=why["chunk_size"], head_groups=why["head_groups"], chunk_reason=why["reason"],
                           mlp_slices=why["mlp_slices"], chunking=why)
            if progress:
                row["layers_done"] = progress.layers_done
            if profile:
                row.update(profiled(call, device))
        except torch.OutOfMemoryError as err:
            row.update(result="out of memory", error=str(err).splitlines()[0],
                       peak_gib=gib(torch.cuda.max_memory_allocated()) if device == "cuda" else None)
            if decided:
                row.update(chunk_size=decided["chunk_size"], head_groups=decided["head_groups"], chunking=decided)
            if progress:
                row["layers_done"] = progress.layers_done
            del err
            _stop_recording(row, peak_report)
            torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("chunking", "peak_report")}), flush=True)
            continue
        _stop_recording(row, peak_report)
        row["ppl"] = ppl
        calls[name] = call
        reference = reference or row
        if row is not reference:
            row.update(time_ratio=row["seconds"] / reference["seconds"], ppl_rel_diff=abs(ppl / reference["ppl"] - 1),
                       compared_with=reference["path"])
            if row["peak_gib"] is not None:
                row["memory_ratio"] = row["peak_gib"] / reference["peak_gib"]
                row["above_weights_ratio"] = (row["peak_gib"] - weights_gib) / (reference["peak_gib"] - weights_gib)
        rows.append(row)
    if rounds:
        interleave(calls, rows, device, rounds)
    for row in rows:
        if "result" not in row:  # an out-of-memory row was printed when it happened
            print(json.dumps({k: v for k, v in row.items() if k not in ("chunking", "peak_report")}), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="llama2-7b", choices=sorted(SHAPES))
    parser.add_argument("--tokens", type=int, nargs="+", default=None, help="lengths (default 32768 100000; --tiny 1024 4096)")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer shape with LLaMA's vocabulary, on CPU")
    parser.add_argument("--repeat", type=int, default=1, help="timed calls per path and length, after one untimed")
    parser.add_argument("--budget-gib", type=float, default=None, help="evaluation.memory_budget_gib")
    parser.add_argument("--variants", nargs="*", default=[], type=parse_variant, metavar="CHUNK:GROUPS[:SLICES]",
                        help="more paths: a fixed chunk (a number, whole, auto) and head groups (a number, auto); "
                             "plain: plain again (plain2, the A/A control)")
    parser.add_argument("--no-plain", action="store_true", help="skip plain transformers (where it cannot fit)")
    parser.add_argument("--cap-gib", type=float, default=None, help="cap this process's GPU memory (an A100-80GB: 80)")
    parser.add_argument("--run-layers", type=int, default=None, metavar="N",
                        help="run only the first N layers, all layers' weights resident (peak memory, not time)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="time the first call (for rows so long that a second call costs too much)")
    parser.add_argument("--peak-report", action="store_true",
                        help="record the allocator's trace (GPU) and keep the 25 largest blocks alive at its peak")
    parser.add_argument("--profile", action="store_true",
                        help="one more call per path under torch.profiler: its seconds by kernel class")
    parser.add_argument("--layer-progress", action="store_true",
                        help="a line after each decoder layer (seconds, peak so far), kept in the row: long runs")
    parser.add_argument("--interleave", type=int, default=0, metavar="R",
                        help="R more rounds timing every path once each, the first path rotating: order effects")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "flash4"],
                        help="the attention function of every path but plain (flash4: ropelaw.flash4)")
    args = parser.parse_args()
    attn = attention_function(args.attn)

    model, device = random_llama(args.shape, TINY if args.tiny else None, args.cap_gib)
    lengths = args.tokens or ([1024, 4096] if args.tiny else [32768, 100000])
    weights_gib = gib(sum(p.numel() * p.element_size() for p in model.parameters()))
    all_layers = model.model.layers  # referenced until the end: every layer's weights stay resident
    if args.run_layers:
        if not 1 <= args.run_layers <= len(all_layers):
            parser.error(f"--run-layers {args.run_layers}: the model has {len(all_layers)} layers")
        model.model.layers = torch.nn.ModuleList(list(all_layers)[:args.run_layers])
    progress = LayerProgress(device) if args.layer_progress else None
    ids_bl = torch.randint(0, model.config.vocab_size, (1, max(lengths)), generator=torch.Generator().manual_seed(1))
    hooks = (layer_progress(model, on_forward=progress.forward, on_layer=progress.layer) if progress
             else contextlib.nullcontext())
    with hooks:
        for length in lengths:
            for row in compare(model, ids_bl, length, device, args.repeat, args.budget_gib, args.variants,
                               plain=not args.no_plain, warmup=not args.no_warmup, weights_gib=weights_gib,
                               peak_report=args.peak_report and device == "cuda", profile=args.profile,
                               rounds=args.interleave, progress=progress, attn=attn):
                write_record(out_path("eval_vs_plain.jsonl"), {
                    "bench": "eval_vs_plain", **environment(), "shape": "tiny" if args.tiny else args.shape,
                    "weights": "random", "cap_gib": args.cap_gib, "run_layers": args.run_layers,
                    "layers": len(all_layers), "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), **row})


if __name__ == "__main__":
    main()
