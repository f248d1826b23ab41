"""Where the GPU waits in a profiled stretch: the gaps between its kernels in a Chrome trace, and what the host
was doing in each.

    python bench/finetune_speed.py --variants grad_in_forward_compiled:8:compiled --steps 12 --profile 3 --trace
    python bench/trace_gaps.py $OUT/trace_grad_in_forward_compiled_mb8_compiled.json.gz --steps 3

The trace is torch.profiler's (`export_chrome_trace`, gzip or not). The device's busy time is the union of its
kernels, copies and memsets on every stream; a gap is a stretch between two busy spans. For the gaps of at least
`--min-us`, it reports their sum per profiled step, the largest ones with the kernel before and after and the host
operators and CUDA runtime calls that overlap each, and the host's synchronising calls (the ones that make the
host wait for the device, after which the device waits for the host's next launches). `--lane cpu_op` reads the
host's operators as the lane instead (a CPU-only trace has no kernels: the CPU tests use it).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import defaultdict
from pathlib import Path

DEVICE = ("kernel", "gpu_memcpy", "gpu_memset")
HOST = ("cpu_op", "cuda_runtime", "cuda_driver")


def fail(message: str) -> None:
    """One line on stderr, exit status 2 (as argparse's errors)."""
    print(f"trace_gaps.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def load(path: Path) -> list[dict]:
    """The complete ("X") events of a Chrome trace file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            data = json.load(f)
    except (OSError, ValueError, EOFError) as err:
        fail(f"{path} is not a readable Chrome trace ({err}); pass the file finetune_speed.py --trace wrote")
    events = data.get("traceEvents", data) if isinstance(data, dict) else data
    return [e for e in events if isinstance(e, dict) and e.get("ph") == "X" and "dur" in e and "ts" in e]


def spans(events: list[dict]) -> list[tuple[float, float, dict, dict]]:
    """The union of the events' intervals: (start, end, first event, last event) per busy span, in time order."""
    out: list[list] = []
    for e in sorted(events, key=lambda e: e["ts"]):
        start, end = float(e["ts"]), float(e["ts"]) + float(e["dur"])
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1][1], out[-1][3] = end, e
        else:
            out.append([start, end, e, e])
    return [tuple(s) for s in out]


def is_sync(name: str) -> bool:
    """A CUDA runtime call after which the host has waited for the device (cudaMemcpy without Async too)."""
    return "Synchronize" in name or name == "cudaMemcpy"


def overlapping(host: list[dict], start: float, end: float, n: int) -> list[str]:
    """The names of the host events overlapping [start, end], the longest overlap first, at most n."""
    by_name: dict[str, float] = defaultdict(float)
    for e in host:
        a, b = float(e["ts"]), float(e["ts"]) + float(e["dur"])
        if a < end and b > start:
            by_name[e["name"]] += min(b, end) - max(a, start)
    return [name for name, _ in sorted(by_name.items(), key=lambda kv: -kv[1])[:n]]


def analyse(events: list[dict], lane: tuple[str, ...], min_us: float, top: int, steps: int) -> dict:
    busy_events = [e for e in events if e.get("cat") in lane]
    if not busy_events:
        present = sorted({str(e.get("cat")) for e in events})
        fail(f"no events of {', '.join(lane)} in the trace (it has: {', '.join(present)}); a CPU-only trace has no "
             "kernels: read its host operators with --lane cpu_op")
    host = [e for e in events if e.get("cat") in HOST and e.get("cat") not in lane]
    merged = spans(busy_events)
    window = merged[-1][1] - merged[0][0]
    busy = sum(end - start for start, end, _, _ in merged)
    gaps = [(merged[i + 1][0] - merged[i][1], merged[i][1], merged[i + 1][0], merged[i][3], merged[i + 1][2])
            for i in range(len(merged) - 1)]
    large = sorted((g for g in gaps if g[0] >= min_us), key=lambda g: -g[0])
    syncs: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "cuda_runtime" and is_sync(e["name"]):
            syncs[e["name"]].append(float(e["dur"]))
    origin = merged[0][0]
    return {
        "lane": list(lane), "events": len(busy_events), "steps": steps,
        "window_ms": window / 1e3, "busy_ms": busy / 1e3, "idle_ms": (window - busy) / 1e3,
        "idle_ms_per_step": (window - busy) / 1e3 / steps,
        "gaps": len(gaps), "gaps_at_least_min": len(large), "min_us": min_us,
        "idle_in_gaps_at_least_min_ms_per_step": sum(g[0] for g in large) / 1e3 / steps,
        "largest": [{"at_ms": (start - origin) / 1e3, "us": round(dur, 1), "before": before["name"][:90],
                     "after": after["name"][:90], "host": overlapping(host, start, end, 4)}
                    for dur, start, end, before, after in large[:top]],
        "host_syncs": {name: {"calls": len(d), "ms": sum(d) / 1e3} for name, d in sorted(syncs.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trace", type=Path, help="a Chrome trace (finetune_speed.py --trace)")
    parser.add_argument("--lane", default=",".join(DEVICE),
                        help=f"the event categories that count as busy, comma-separated (default {','.join(DEVICE)})")
    parser.add_argument("--min-us", type=float, default=20.0, help="the shortest gap listed (microseconds)")
    parser.add_argument("--top", type=int, default=15, help="how many of the largest gaps to list")
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps the trace covers (for per-step sums)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    result = analyse(load(args.trace), tuple(args.lane.split(",")), args.min_us, args.top, args.steps)
    print(json.dumps({"bench": "trace_gaps", "trace": args.trace.name, **result}))
    print(f"{args.trace.name}: busy {result['busy_ms']:.1f} of {result['window_ms']:.1f} ms; idle "
          f"{result['idle_ms_per_step']:.2f} ms a step, {result['idle_in_gaps_at_least_min_ms_per_step']:.2f} of it in "
          f"{result['gaps_at_least_min']} gaps of >= {args.min_us:g} us", file=sys.stderr)
    for g in result["largest"]:
        print(f"  {g['us']:>9.1f} us at {g['at_ms']:9.2f} ms  after {g['before'][:50]!r} before {g['after'][:50]!r}  "
              f"host: {', '.join(g['host'])}", file=sys.stderr)
    for name, s in result["host_syncs"].items():
        print(f"  sync {name}: {s['calls']} calls, {s['ms']:.2f} ms", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
