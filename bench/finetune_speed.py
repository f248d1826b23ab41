"""Small-model fine-tuning with each loss of `finetune.fused_loss`, side by side in one process.

    python bench/finetune_speed.py                                 # SmolLM2-135M shape, random weights, 8K, GPU
    python bench/finetune_speed.py --model-dir results/smollm2/hf  # a GGUF-converted SmolLM2: its config and weights
    python bench/finetune_speed.py --micro-batch 4 8 16 --global-batch 16 --compile   # a sweep, one process
    python bench/finetune_speed.py --tiny                          # a tiny shape on the CPU, to check the script
    python bench/finetune_speed.py --steps 50 --tokens results/smollm2/data/train_len8192 \
        --variants plain:4 grad_in_forward:8:compiled               # today's path vs a new one, side by side

Every run calls `ropelaw.finetune.train`, the function behind `ropelaw finetune`, from the same
starting weights, on the same packed random rows, with the same seed, once per loss path (`--paths`,
in this order by default): `grad_in_forward` (`fused_loss: true`: chunked lm_head + cross-entropy,
both gradients computed in the forward), `checkpointed` (chunked, the lm_head recomputed in the
backward) and `plain` (`fused_loss: false`: transformers' loss over fp32 logits of the whole
vocabulary; last, since it is the one that runs out of memory first), for each `--micro-batch`; all
with torch's fused AdamW, the Trainer's default (the manifest's `optimizer`). A path that runs out
of GPU memory is recorded as such and the next one runs. Each run prints and appends to
$OUT/finetune_speed.jsonl (default bench/results/) its steps/s and tokens/s (median step after
`--skip` steps), peak GPU memory (reset before each run) and per-step losses; then, per
micro-batch, a summary line with each path's speed-up over plain and over checkpointed, the
largest relative difference of its per-step losses from plain's, and a table row for BENCHMARKS.md.

`--variants PATH:MICRO_BATCH[:compiled|:autotune][:cudnn|:flash|:efficient][:synced]` runs exactly those configurations instead
(same global batch, same rows, same seed), and the first one is the reference: each later one is reported as its
speed-up over it and its largest relative per-step loss difference from it. `--tokens DIR` trains
on the rows of a packed dataset (`tokens.bin` + `manifest.json`, e.g. a study's
`data/train_len8192`, cycled as needed) instead of uniform random tokens, so that the loss falls
and the loss comparison means something. `:cudnn`, `:flash` or `:efficient` lets SDPA use only that
attention kernel (the default lets torch choose: cuDNN's on an H200 with torch 2.11, as train7's profile
showed), to see whether the attention kernel is what keeps a step from going faster. `:autotune` compiles the
layers as `finetune.compile: max-autotune-no-cudagraphs` does, `:compiled` as `finetune.compile: true`. `:synced`
trains as before train14 (blocking batch copies, transformers' attention-mask creation: a host-GPU sync each), the
reference for the path that replaced it.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from transformers import TrainerCallback

import benchlib
from benchlib import environment, gib, out_path, write_record
from ropelaw.specs import LOSS_PATHS

FUSED_LOSS = {**{path: path for path in LOSS_PATHS}, "plain": False}  # a path's name: its finetune.fused_loss


class StepTimer(TrainerCallback):
    """The time at the end of every optimizer step. On a GPU: a CUDA event recorded on the stream at each step's
    end, read after the run, so the timer adds no synchronisation of its own (until train9 it synchronised every
    step, and each step then began with the GPU idle while the host launched its first kernels); the gaps
    between events still include any idle time the training loop itself causes. On the CPU: the wall clock."""

    def __init__(self):
        self.marks: list = []

    def _mark(self) -> None:
        if torch.cuda.is_available():
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def on_train_begin(self, args, state, control, **kwargs):
        self._mark()

    def on_step_end(self, args, state, control, **kwargs):
        self._mark()

    @property
    def ends(self) -> list[float]:
        """Seconds from the start of training to each step's end."""
        if self.marks and not isinstance(self.marks[0], float):
            torch.cuda.synchronize()
            return [self.marks[0].elapsed_time(event) / 1000 for event in self.marks]
        return [t - self.marks[0] for t in self.marks]


class StepProfiler(TrainerCallback):
    """torch.profiler over optimizer steps skip+1 .. skip+n: GPU kernels (CPU operators without a GPU); with
    `trace`, the profile is also written there as a Chrome trace (gzip), for bench/trace_gaps.py."""

    def __init__(self, skip: int, n: int, trace: Path | None = None):
        self.skip, self.n, self.trace = skip, n, trace
        self.prof = None
        self.started = self.wall = None
        self.result: dict = {}

    def on_step_end(self, args, state, control, **kwargs):
        from torch.profiler import ProfilerActivity, profile

        if state.global_step == self.skip:
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.synchronize()
            self.prof = profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU])
            self.prof.start()
            self.started = time.perf_counter()
        elif self.prof is not None and state.global_step == self.skip + self.n:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.wall = time.perf_counter() - self.started
            self.prof.stop()
            if self.trace is not None:
                self.trace.parent.mkdir(parents=True, exist_ok=True)
                self.prof.export_chrome_trace(str(self.trace))
            breakdown = benchlib.kernel_breakdown(self.prof, per=self.n)
            by_class = breakdown.get("gpu_seconds_by_class") or breakdown["cpu_seconds_by_class"]
            busy = sum(by_class.values())
            self.result = {"profiled_steps": self.n, "profiled_step_s": self.wall / self.n,
                           **({"trace": self.trace.name} if self.trace is not None else {}),
                           "busy_fraction": busy / (self.wall / self.n), **breakdown}
            self.prof = None


def prepare(root: Path, args) -> tuple[Path, int]:
    """A model folder (the given one, or random weights of the shape) and packed random rows."""
    from tokenizers import Tokenizer, models
    from transformers import AutoConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from ropelaw.manifests import PackManifest

    if args.model_dir:
        model_dir = Path(args.model_dir)
        vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    else:
        config = benchlib.llama_config("smollm2-135m")
        if args.tiny:
            config.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=16, vocab_size=1024))
        torch.manual_seed(0)
        model_dir, vocab = root / "model", config.vocab_size
        LlamaForCausalLM(config).save_pretrained(model_dir)
        PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>")),
            eos_token="</s>", unk_token="<unk>").save_pretrained(model_dir)
    data = root / "data"
    data.mkdir()
    rows = args.steps * args.global_batch
    if args.tokens:
        tokens_rl = packed_rows(Path(args.tokens), args.seq, vocab)
        tokens_rl = tokens_rl[np.arange(rows) % len(tokens_rl)]  # cycled, as more epochs would
    else:
        tokens_rl = np.random.default_rng(0).integers(0, vocab, size=(rows, args.seq))
    tokens_rl.astype("<u4").tofile(data / "tokens.bin")
    PackManifest(n_sequences=rows, seq_len=args.seq, dtype="<u4").write(data)
    return model_dir, vocab


def packed_rows(folder: Path, seq: int, vocab: int) -> np.ndarray:
    """The [rows, seq] tokens of a packed dataset folder, checked against `--seq` and the vocabulary."""
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest["seq_len"] != seq:
        raise SystemExit(f"--tokens {folder}: rows of {manifest['seq_len']} tokens, not --seq {seq}")
    tokens_rl = np.fromfile(folder / "tokens.bin", dtype=manifest["dtype"]).reshape(-1, seq)
    if tokens_rl.max() >= vocab:
        raise SystemExit(f"--tokens {folder}: token id {tokens_rl.max()} is outside the model's vocabulary {vocab}")
    return tokens_rl.astype(np.int64)


SDPA_BACKENDS = ("cudnn", "flash", "efficient")  # a variant's `:BACKEND`: SDPA may use that kernel only


# a variant's compile flag -> `finetune.compile`: ":compiled" is torch.compile's default mode, ":autotune" its
# max-autotune-no-cudagraphs (Inductor times candidate kernels for each matrix product on this GPU)
COMPILE_FLAGS = {"compiled": True, "autotune": "max-autotune-no-cudagraphs"}


def _flag(compiled: bool | str) -> str | None:
    return next((flag for flag, value in COMPILE_FLAGS.items() if value == compiled and compiled), None)


class Variant(NamedTuple):
    """One configuration of `--variants`: loss path, micro-batch, `finetune.compile`, the one SDPA kernel allowed
    (None: torch's choice), and `synced`: trained as before train14 (`ropelaw.finetune.train`'s `host_syncs`:
    blocking batch copies and transformers' mask creation, each a host-GPU sync every step)."""

    path: str
    micro_batch: int
    compiled: bool | str = False
    sdpa: str | None = None
    synced: bool = False


def label(path: str, micro_batch: int, compiled: bool | str, sdpa: str | None = None, synced: bool = False) -> str:
    flag = _flag(compiled)
    return (f"{path}_mb{micro_batch}" + (f"_{flag}" if flag else "") + (f"_{sdpa}" if sdpa else "")
            + ("_synced" if synced else ""))


VARIANT_FORM = f"PATH:MICRO_BATCH[:{'|:'.join(COMPILE_FLAGS)}][:{'|:'.join(SDPA_BACKENDS)}][:synced]"


def parse_variant(text: str) -> Variant:
    """VARIANT_FORM -> a Variant; the optional flags in that order, each at most once."""
    parts = text.split(":")
    flags = parts[2:]
    compiled = COMPILE_FLAGS.get(flags[0], False) if flags else False
    flags = flags[1:] if compiled else flags
    backend = flags[0] if flags and flags[0] in SDPA_BACKENDS else None
    flags = flags[1:] if backend else flags
    synced = flags == ["synced"]
    if len(parts) < 2 or parts[0] not in FUSED_LOSS or not parts[1].isdigit() or (flags and not synced):
        raise argparse.ArgumentTypeError(f"'{text}': expected {VARIANT_FORM}, PATH one of {', '.join(FUSED_LOSS)}")
    return Variant(parts[0], int(parts[1]), compiled, backend, synced)


def variant_text(path: str, micro_batch: int, compiled: bool | str, sdpa: str | None, synced: bool = False) -> str:
    flag = _flag(compiled)
    return (f"{path}:{micro_batch}" + (f":{flag}" if flag else "") + (f":{sdpa}" if sdpa else "")
            + (":synced" if synced else ""))


def run_path(root: Path, model_dir: Path, path: str, micro_batch: int, compiled: bool | str, args,
             sdpa: str | None = None, synced: bool = False) -> dict:
    """One training run with loss `path`; its record (`oom: true` if it ran out of GPU memory). `synced`: as
    `Variant.synced`.

    `sdpa` ('cudnn', 'flash' or 'efficient'): SDPA may use only that attention kernel
    (`torch.nn.attention.sdpa_kernel`), where None lets torch pick (cuDNN's on an H200 with torch 2.11: the
    profile of train7); a run that kernel cannot serve is recorded with its error."""
    from ropelaw.finetune import TrainSpec, train

    spec = TrainSpec(
        steps=args.steps, global_batch_size=args.global_batch, micro_batch_size=micro_batch, lr=1e-4,
        lr_schedule="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, seed=1234, precision="fp32" if args.tiny else "auto",
        gradient_checkpointing=args.ac, attn_implementation="sdpa", deepspeed=None, checkpoint_every=10**6,
        length_multiple=64, logging_steps=args.logging_steps, compile=compiled, fused_loss=FUSED_LOSS[path],
    )
    base = {
        "bench": "finetune_speed", **environment(), "path": path, "fused_loss": FUSED_LOSS[path],
        "model": str(args.model_dir or ("tiny" if args.tiny else "smollm2-135m random")), "seq": args.seq,
        "global_batch": args.global_batch, "micro_batch": micro_batch, "steps": args.steps,
        "logging_steps": args.logging_steps, "ac": args.ac,
        "compile": compiled, "sdpa": f"{sdpa} only" if sdpa else "torch's choice", "host_syncs": synced,
        "tokens": args.tokens_sha256 or "uniform random",
    }
    tag = label(path, micro_batch, compiled, sdpa, synced)
    timer = StepTimer()
    callbacks = [timer]
    if args.profile:
        trace = out_path(f"trace_{tag}.json.gz") if args.trace else None
        profiler = StepProfiler(args.skip, args.profile, trace)
        callbacks.append(profiler)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if compiled and not args.keep_compiled:
        # Dynamo keeps the graphs a run compiled, keyed by code object, and its guards do not cover the SDPA
        # backend: without a reset, a later variant of this process reruns the first one's graphs, whatever
        # kernel it names (train8 timed cuDNN's kernel under ":flash" and ":efficient" that way).
        torch._dynamo.reset()
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    autotuned_before = torch._dynamo.utils.counters["inductor"]["select_algorithm_autotune"]
    try:
        with benchlib.sdpa_context(sdpa or "default"):
            record = train(str(model_dir), str(root / "data"), args.base, spec, str(root / f"ckpt_{tag}"),
                           str(root / f"out_{tag}"), callbacks=callbacks, host_syncs=synced)
    except torch.OutOfMemoryError as err:
        message = str(err).splitlines()[0]
        record = None
    except RuntimeError as err:  # no kernel of that backend for this shape or device
        if not sdpa:
            raise
        return {**base, "oom": False, "error": str(err).splitlines()[0]}
    if record is None:  # outside the except block, so the failed run's tensors can be freed
        gc.collect()
        torch.cuda.empty_cache()
        return {**base, "oom": True, "error": message, "peak_allocated_gib": gib(torch.cuda.max_memory_allocated())
                if torch.cuda.is_available() else None}
    assert record["loss_path"] == path, record["loss_path"]
    step_s = float(np.median(np.diff(timer.ends)[args.skip + args.profile:]))  # profiled steps left out
    return {
        **base, "oom": False, "optimizer": record["optimizer"], "steps_per_s": 1 / step_s,
        "tokens_per_s": args.global_batch * args.seq / step_s, "step_s_all": np.diff(timer.ends).tolist(),
        "peak_allocated_gib": gib(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None,
        "losses": [row["loss"] for row in record["log_history"] if "loss" in row],
        "graphs_compiled": torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before,
        # choices Inductor timed on the GPU (max-autotune's matrix products); 0 for the default mode
        "inductor_autotuned": torch._dynamo.utils.counters["inductor"]["select_algorithm_autotune"] - autotuned_before,
        **(profiler.result if args.profile else {}),
    }


def summary(runs: dict[str, dict], micro_batch: int, args) -> dict:
    """Speed-ups over plain and over checkpointed, loss differences from plain, and a BENCHMARKS.md row."""
    ok = {path: r for path, r in runs.items() if not r["oom"]}
    out = {"bench": "finetune_speed", "micro_batch": micro_batch, "compile": args.compile, "paths": list(runs)}
    cells = []
    for path, run in runs.items():
        if run["oom"]:
            cells.append(f"{path}: out of memory")
            continue
        memory = "" if run["peak_allocated_gib"] is None else f", {run['peak_allocated_gib']:.1f} GiB"
        cell = f"{path} {run['tokens_per_s']:,.0f} tokens/s{memory}"
        for ref in ("plain", "checkpointed"):
            if ref in ok and ref != path:
                ratio = run["tokens_per_s"] / ok[ref]["tokens_per_s"]
                out[f"{path}_over_{ref}"] = ratio
                cell += f", {ratio:.2f}× {ref}"
        if "plain" in ok and path != "plain":
            diff = max(abs(a - b) / abs(b) for a, b in zip(run["losses"], ok["plain"]["losses"]))
            out[f"{path}_max_rel_loss_diff"] = diff
            cell += f", loss diff {diff:.1e}"
        cells.append(cell)
    flags = f" --seq {args.seq} --micro-batch {micro_batch} --global-batch {args.global_batch}" + (
        " --compile" if args.compile else "")
    device = next((r.get("device") for r in runs.values() if r.get("device")), "CPU")
    out["table_row"] = (f"| `python bench/finetune_speed.py{' --tiny' if args.tiny else ''}{flags}` | {device} | "
                        f"{args.seq} tokens × {args.global_batch} | " + " | ".join(cells) + " |")
    return out


def variant_summary(runs: dict[str, dict], args) -> dict:
    """Each variant's speed-up over the first and its largest relative loss difference from it."""
    ref_label, ref = next(iter(runs.items()))
    out = {"bench": "finetune_speed", "reference": ref_label, "variants": list(runs),
           "global_batch": args.global_batch, "steps": args.steps, "logging_steps": args.logging_steps,
           "tokens": args.tokens_sha256 or "uniform random"}
    cells = []
    for name, run in runs.items():
        if run["oom"] or "error" in run:
            cells.append(f"{name}: " + ("out of memory" if run["oom"] else run["error"]))
            continue
        cell = f"{name} {run['tokens_per_s']:,.0f} tokens/s"
        if run["peak_allocated_gib"] is not None:
            cell += f", {run['peak_allocated_gib']:.1f} GiB"
        if name != ref_label and not ref["oom"] and "error" not in ref:
            ratio = run["tokens_per_s"] / ref["tokens_per_s"]
            diff = max(abs(a - b) / abs(b) for a, b in zip(run["losses"], ref["losses"]))
            out[f"{name}_speedup"], out[f"{name}_max_rel_loss_diff"] = ratio, diff
            logs = min(len(run["losses"]), len(ref["losses"]))
            over = f"{logs} steps" if args.logging_steps == 1 else f"{logs} logs of {args.logging_steps} steps"
            cell += f", {ratio:.2f}× the first, loss diff {diff:.1e} over {over}"
        cells.append(cell)
    device = next((r.get("device") for r in runs.values() if r.get("device")), "CPU")
    command = " ".join(variant_text(*v) for v in args.variants)
    data = f" --tokens {args.tokens}" if args.tokens else ""
    data += f" --logging-steps {args.logging_steps}" if args.logging_steps != 1 else ""
    out["table_row"] = (f"| `python bench/finetune_speed.py{' --tiny' if args.tiny else ''} --seq {args.seq} --steps "
                        f"{args.steps} --global-batch {args.global_batch}{data} --variants {command}` | {device} | "
                        f"{args.seq} tokens × {args.global_batch} | " + " | ".join(cells) + " |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", default=None, help="a model folder (e.g. a GGUF-converted SmolLM2)")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape, fp32, on the CPU")
    parser.add_argument("--seq", type=int, default=None, help="tokens per row (default 8192; --tiny: 128)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 20; --tiny: 4)")
    parser.add_argument("--global-batch", type=int, default=8, help="rows per optimizer step")
    parser.add_argument("--micro-batch", type=int, nargs="+", default=[4], help="rows per forward; several: a sweep")
    parser.add_argument("--paths", nargs="+", choices=list(FUSED_LOSS), default=["grad_in_forward", "checkpointed", "plain"],
                        help="loss paths, run in this order (default: all three, plain last)")
    parser.add_argument("--skip", type=int, default=None, help="steps left out of the median (default 3; --tiny: 1)")
    parser.add_argument("--base", type=float, default=1e6, help="the rotary base the cell tunes with")
    parser.add_argument("--ac", action="store_true", help="finetune.gradient_checkpointing")
    parser.add_argument("--compile", action="store_true", help="finetune.compile (every run)")
    parser.add_argument("--variants", nargs="+", type=parse_variant, default=None, metavar="PATH:MB[:compiled|:autotune][:BACKEND][:synced]",
                        help="run these instead of --paths x --micro-batch; the first is the reference")
    parser.add_argument("--tokens", default=None, metavar="DIR",
                        help="train on a packed dataset's rows (tokens.bin + manifest.json) instead of random ones")
    parser.add_argument("--logging-steps", type=int, default=1, metavar="N",
                        help="finetune.logging_steps (default 1: a loss per step to compare; the studies log every 10, "
                             "and each log synchronises the GPU)")
    parser.add_argument("--keep-compiled", action="store_true",
                        help="no dynamo reset before a compiled run: it may rerun an earlier variant's graphs")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile N optimizer steps of every run after --skip: seconds per step by kernel class")
    parser.add_argument("--trace", action="store_true",
                        help="with --profile: write each run's profile as $OUT/trace_<variant>.json.gz (a Chrome trace; "
                             "bench/trace_gaps.py reads where the GPU waits)")
    args = parser.parse_args()
    if args.trace and not args.profile:
        parser.error("--trace writes the profiled steps: give --profile N too")
    if args.variants and len({label(*v) for v in args.variants}) < len(args.variants):
        parser.error("--variants: each configuration once")
    args.tokens_sha256 = None
    if args.tokens:
        from ropelaw.provenance import sha256_file
        args.tokens_sha256 = sha256_file(Path(args.tokens) / "tokens.bin")
    args.seq = args.seq or (128 if args.tiny else 8192)
    args.steps = args.steps or (4 if args.tiny else 20)
    args.skip = args.skip if args.skip is not None else (1 if args.tiny else 3)
    if args.profile and args.skip + args.profile >= args.steps:
        parser.error(f"--profile {args.profile}: --skip {args.skip} + {args.profile} profiled steps leave none of "
                     f"--steps {args.steps} to time; raise --steps")
    bad = [mb for mb in ([v[1] for v in args.variants] if args.variants else args.micro_batch) if args.global_batch % mb]
    if bad:
        parser.error(f"--global-batch {args.global_batch} is not a multiple of --micro-batch {bad}")
    with tempfile.TemporaryDirectory(prefix="finetune_speed_") as tmp:
        root = Path(tmp)
        model_dir, _ = prepare(root, args)
        if args.variants:
            runs = {}
            for variant in args.variants:
                name = label(*variant)
                runs[name] = run_path(root, model_dir, *variant[:3], args, *variant[3:])
                write_record(out_path("finetune_speed.jsonl"), runs[name])
            line = variant_summary(runs, args)
            write_record(out_path("finetune_speed.jsonl"), line)
            print(line["table_row"])
            return
        for micro_batch in args.micro_batch:
            runs = {}
            for path in args.paths:
                runs[path] = run_path(root, model_dir, path, micro_batch, args.compile, args)
                write_record(out_path("finetune_speed.jsonl"), runs[path])
            line = summary(runs, micro_batch, args)
            write_record(out_path("finetune_speed.jsonl"), line)
            print(line["table_row"])
            print(json.dumps({f"{path}_losses": run.get("losses") for path, run in runs.items()}))


if __name__ == "__main__":
    main()
