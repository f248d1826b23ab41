"""The cost of a study before anything runs: every cell's tokens, GPU-hours and wall time.

    ropelaw plan --configfile config/paper.yaml --profile profiles/slurm

Throughput is read from the table of BENCHMARKS.md whose header is
`| model | phase | gpu | seq_len | tokens_per_s_per_gpu | source |` (measured tokens per
second per GPU, phase `finetune` (forward+backward), `finetune_step` (a whole fine-tuning step,
optimizer included) or `evaluate`). A table may add a `training` column after these: the training path a
`finetune_step` row was measured on (`training_path`, e.g. `grad_in_forward+compiled, micro-batch 8`); a
cell's fine-tune takes the rows of its own path, else the rows that name none, else the slowest. GPUs per
job and time limits from the
profile's resources of rules finetune, evaluate and passkey. The assumptions that turn
one into the other are printed above the plan (ASSUMPTIONS). Data preparation, model
downloads and the CPU rules are not counted. Needs no data, model or GPU.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ropelaw import UserError
from ropelaw.config import _merge, eval_lengths, load_yaml, method_spec, parse_yaml, passkey_args, resolve, training_args
from ropelaw.specs import compile_mode, loss_path

COLUMNS = ["model", "phase", "gpu", "seq_len", "tokens_per_s_per_gpu"]
# Dense bf16 tensor-core peaks (NVIDIA datasheets, SXM parts): rows measured on one GPU serve another.
PEAK_BF16_TFLOPS = {"a100": 312.0, "h100": 989.4, "h200": 989.4}
# BENCHMARKS.md: our Trainer path with ZeRO-3 on 2 GPUs ran at 55% of the forward+backward MFU.
STEP_EFFICIENCY = 0.55
ASSUMPTIONS = [
    "time per token is linear in the sequence length between and beyond the measured lengths "
    "(dense layers constant, attention linear); one measured length = constant",
    "a GPU type without rows takes another type's rows x the ratio of dense bf16 peaks "
    f"({', '.join(f'{k} {v:g}' for k, v in PEAK_BF16_TFLOPS.items())} TFLOP/s): pessimistic for A100",
    f"a fine-tuning step runs at {STEP_EFFICIENCY:.0%} of the measured forward+backward rate (phase finetune), per "
    "GPU (the Trainer path with ZeRO-3 on 2 GPUs in BENCHMARKS.md; more nodes may do worse); a model with rows of "
    "whole steps (phase finetune_step) takes those as measured: the rows of the cell's training path (loss path, "
    "compiled or not, micro-batch), else those that name no path, else the slowest",
    "evaluation reads the rows of the cell's longest length (its eval_lengths): as many as their manifest lists "
    "where `ropelaw prepare-eval` has made them, else data.eval.max_docs (an upper bound: a text may give fewer rows "
    "of a long length); a length-dependent method (dynamic NTK) does one forward per length; passkey: one forward "
    "per prompt (where a prompt's KV cache does not fit, ropelaw passkey runs the chunked forward instead, 1 to "
    "about 8 times per prompt: not counted here)",
    "wall time = GPU-hours / GPUs of the job; queueing is not counted",
    "a job over its time limit is re-submitted (the profile's retries): a fine-tune resumes from its checkpoint; "
    "an evaluation or passkey job from the batches it finished (ropelaw.evaljournal), the one it was in lost "
    "(counted as its longest batch). 'never': one batch is longer than the limit, so no attempt can finish",
]


@dataclass(frozen=True)
class Job:
    """GPUs and time limit of one job of a rule, from the profile."""

    gpus: int
    gpu_type: str
    runtime_min: float | None


def read_throughput(path: Path) -> list[dict]:
    """Rows of every table in `path` whose header starts with COLUMNS."""
    if not path.is_file():
        raise UserError(f"--benchmarks: {path} does not exist; it holds the measured throughput (`{' | '.join(COLUMNS)}`)")
    rows, header = [], None
    for line in path.read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else None
        if cells is None:
            header = None
        elif cells[: len(COLUMNS)] == COLUMNS:
            header = cells
        elif header and not set(line.replace("|", "").strip()) <= set("-: "):
            row = dict(zip(header, cells))
            rows.append({**row, "seq_len": int(row["seq_len"]), "tokens_per_s_per_gpu": float(row["tokens_per_s_per_gpu"]),
                         "training": row.get("training", "")})
    if not rows:
        raise UserError(f"--benchmarks: {path} has no table with the header `| {' | '.join(COLUMNS)} |`")
    return rows


def seconds_per_token(rows: list[dict], model: str, phase: str, gpu: str, length: int) -> float | None:
    """Seconds per token on one GPU of type `gpu` at sequence length `length`; None if never measured."""
    mine = [r for r in rows if r["model"] == model and r["phase"] == phase]
    if not mine:
        return None
    same = [r for r in mine if r["gpu"].lower() == gpu]
    scale = 1.0
    if not same:
        other = sorted({r["gpu"].lower() for r in mine})[0]
        if gpu not in PEAK_BF16_TFLOPS or other not in PEAK_BF16_TFLOPS:
            raise UserError(f"no {phase} throughput of {model} on {gpu}, and no peak to scale {other}'s rows by")
        same, scale = [r for r in mine if r["gpu"].lower() == other], PEAK_BF16_TFLOPS[other] / PEAK_BF16_TFLOPS[gpu]
    points = sorted({r["seq_len"]: 1.0 / r["tokens_per_s_per_gpu"] for r in same}.items())
    if len(points) == 1:
        return points[0][1] * scale
    # The two measured lengths around `length` (or the two nearest at an end): a line through them.
    i = min(max(sum(x <= length for x, _ in points) - 1, 0), len(points) - 2)
    (x0, y0), (x1, y1) = points[i], points[i + 1]
    return max(y0 + (y1 - y0) * (length - x0) / (x1 - x0), min(y0, y1)) * scale


def _mapping(block, key: str, path: Path) -> dict:
    """A block of the profile's YAML that must map names to values (None: empty)."""
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise UserError(f"--profile: {path}: {key} is a {type(block).__name__}, not a mapping of names to values; "
                        "write it as `name: value` lines")
    return block


def profile_jobs(profile_dir: Path) -> dict[str, Job]:
    """Job shape of the GPU rules as the profile's default-resources and set-resources give it."""
    path = profile_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"--profile: {path} does not exist; point --profile at a Snakemake profile directory")
    profile = _mapping(parse_yaml(path, f"--profile: {path}"), "its top level", path)
    default = _mapping(profile.get("default-resources"), "default-resources", path)
    per_rule = _mapping(profile.get("set-resources"), "set-resources", path)
    jobs = {}
    for rule in ("finetune", "evaluate", "passkey"):
        res = {**default, **_mapping(per_rule.get(rule), f"set-resources.{rule}", path)}
        gres = re.fullmatch(r"gpu(?::([A-Za-z0-9_.]+))?:(\d+)", str(res.get("gres", "")))
        if gres:
            gpus, gpu_type = int(gres.group(2)) * int(res.get("nodes", 1)), gres.group(1) or ""
        else:
            gpus, gpu_type = int(res.get("gpu", 0) or 0), str(res.get("gpu_model", ""))
        if gpus < 1:
            raise UserError(f"--profile: {path} gives rule {rule} no GPU (set `gres` or `gpu` under set-resources)")
        jobs[rule] = Job(gpus, gpu_type.lower() or "unknown", res.get("runtime"))
    return jobs


def plan(cfg: dict, cells: list, jobs: dict[str, Job], rows: list[dict]) -> list[dict]:
    """One line per job that uses GPUs: fine-tuning of a trained cell, evaluation of every cell."""
    lines = []
    max_docs = cfg["data"]["eval"]["max_docs"]
    if max_docs is None:
        raise UserError("config key 'data.eval.max_docs' is null: the plan needs the number of evaluation rows")
    passkey = cfg["passkey"]
    for cell in cells:
        spec = method_spec(cfg, cell)
        lengths = eval_lengths(cfg, cell)
        if cell.trains:
            args = training_args(cfg, cell)
            tokens = args["steps"] * args["global_batch_size"] * cell.tune_len
            job = jobs["finetune"]
            lines.append(_line(cell, "finetune", tokens, _step_seconds(rows, cell, job, tokens, training_path(args)),
                               job))
        rows_read = _prepared_rows(cell) or max_docs
        forwards = [(L, rows_read) for L in lengths] if spec.length_dependent else [(max(lengths), rows_read)]
        batch = cfg["evaluation"]["batch_size"]
        _add_eval(lines, cell, "evaluate", forwards, jobs["evaluate"], rows, batch, together=spec.length_dependent)
        if passkey["enabled"]:
            prompts = len(passkey["depths"]) * passkey["trials"]
            forwards = [(L, prompts) for L in passkey_args(cfg, cell)["lengths"]]
            _add_eval(lines, cell, "passkey", forwards, jobs["passkey"], rows, batch)
    return lines


def _prepared_rows(cell) -> int | None:
    """The number of evaluation rows of the cell's longest length, if `ropelaw prepare-eval` has made them here."""
    manifest = Path(cell.eval_rows_dir) / "manifest.json"
    try:
        return int(json.loads(manifest.read_text())["n_docs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def training_path(args: dict) -> str:
    """The training path of a cell's fine-tune as the `training` column names it: loss path, compiled or not,
    micro-batch ('plain, micro-batch 4', 'grad_in_forward+compiled, micro-batch 8'; a compile mode is named:
    '+compiled max-autotune-no-cudagraphs'); DeepSpeed's is its own."""
    loss = loss_path(args["fused_loss"], zero3=False)  # a DeepSpeed run is told apart by its suffix
    mode = compile_mode(args["compile"])
    compiled = f"+compiled {mode}" if mode else "+compiled" if args["compile"] else ""
    text = f"{loss}{compiled}, micro-batch {args['micro_batch_size']}"
    return text + (", deepspeed" if args.get("deepspeed") else "")


def _step_seconds(rows: list[dict], cell, job: Job, tokens: int, path: str = "") -> float | None:
    """GPU-seconds of `tokens` of fine-tuning: at a measured whole-step rate if the model has one (the rows of
    training path `path`, else those that name no path, else the slowest path's), else at the forward+backward
    rate over STEP_EFFICIENCY; None if neither was measured."""
    steps = [r for r in rows if r["model"] == cell.model and r["phase"] == "finetune_step"]
    mine = [r for r in steps if r["training"] == path] or [r for r in steps if not r["training"]]
    if mine:
        return tokens * seconds_per_token(mine, cell.model, "finetune_step", job.gpu_type, cell.tune_len)
    if steps:
        return tokens * max(seconds_per_token([r for r in steps if r["training"] == other], cell.model,
                                              "finetune_step", job.gpu_type, cell.tune_len)
                            for other in {r["training"] for r in steps})
    rate = seconds_per_token(rows, cell.model, "finetune", job.gpu_type, cell.tune_len)
    return None if rate is None else tokens * rate / STEP_EFFICIENCY


def _add_eval(lines, cell, step, forwards, job: Job, rows, batch: int, together: bool = False) -> None:
    """One job of forwards [(length, rows)] in batches of `batch` rows; `together`: a batch runs every length
    (dynamic NTK's one forward per length), else a batch is one length's."""
    tokens = sum(L * n for L, n in forwards)
    rates = [(L, n, seconds_per_token(rows, cell.model, "evaluate", job.gpu_type, L)) for L, n in forwards]
    if any(r is None for _, _, r in rates):
        lines.append(_line(cell, step, tokens, None, job))
        return
    per_batch = [L * min(batch, n) * r for L, n, r in rates]
    lines.append(_line(cell, step, tokens, sum(L * n * r for L, n, r in rates), job,
                       batch_seconds=sum(per_batch) if together else max(per_batch)))


def _line(cell, step: str, tokens: int, gpu_seconds: float | None, job: Job, batch_seconds: float | None = None) -> dict:
    line = {"cell": cell.path.removeprefix("results/"), "model": cell.model, "step": step, "tokens": tokens,
            "gpus": job.gpus, "gpu_hours": None, "wall_hours": None, "resubmits": None}
    if gpu_seconds is not None:
        wall_h = gpu_seconds / 3600 / job.gpus
        limit_h = job.runtime_min / 60 if job.runtime_min else None
        batch_h = None if batch_seconds is None else batch_seconds / 3600 / job.gpus
        line.update(gpu_hours=gpu_seconds / 3600, wall_hours=wall_h, resubmits=_resubmits(wall_h, limit_h, batch_h))
    return line


def _resubmits(wall_h: float, limit_h: float | None, batch_h: float | None) -> int | str:
    """Re-submissions a job needs to finish under its time limit. batch_h None: it resumes where it stopped
    (a fine-tune's checkpoint); else it keeps the batches it finished and loses the one it was in (evaluation
    and passkey; batch_h: its longest batch, so an upper bound where batches differ). 'never': one batch is
    longer than the limit."""
    if not limit_h or wall_h <= limit_h:
        return 0
    if batch_h is None:
        return math.ceil(wall_h / limit_h) - 1
    per_attempt_h = math.floor(limit_h / batch_h) * batch_h  # the work an attempt surely keeps
    return "never" if per_attempt_h == 0 else math.ceil(wall_h / per_attempt_h - 1e-9) - 1


def render(lines: list[dict], jobs: dict[str, Job], benchmarks: Path, profile: Path) -> str:
    out = [f"Cost plan: throughput from {benchmarks}, jobs from {profile}/config.yaml"]
    for rule, job in jobs.items():
        limit = f", time limit {job.runtime_min / 60:g} h" if job.runtime_min else ""
        out.append(f"  {rule}: {job.gpus} x {job.gpu_type}{limit}")
    out.append("Assumptions:")
    out += [f"  - {a}" for a in ASSUMPTIONS]
    out.append("")
    out.append(f"{'cell':<44} {'step':<9} {'tokens':>15} {'GPUs':>5} {'GPU-h':>9} {'wall h':>8} {'resubmits':>9}")
    for ln in lines:
        cost = (f"{ln['gpu_hours']:>9,.1f} {ln['wall_hours']:>8,.2f} {ln['resubmits']:>9}"
                if ln["gpu_hours"] is not None else f"{'not measured':>28}")
        out.append(f"{ln['cell']:<44} {ln['step']:<9} {ln['tokens']:>15,} {ln['gpus']:>5} {cost}")
    out.append("")
    for step in ("finetune", "evaluate", "passkey", None):
        mine = [ln for ln in lines if step in (None, ln["step"])]
        costed = [ln for ln in mine if ln["gpu_hours"] is not None]
        if mine:
            out.append(
                f"{'total ' + (step or ''):<17} {len(mine):>4} jobs {sum(ln['tokens'] for ln in mine):>17,} tokens "
                f"{sum(ln['gpu_hours'] for ln in costed):>10,.1f} GPU-h {sum(ln['wall_hours'] for ln in costed):>9,.1f} h "
                "one job at a time" + (f" ({len(mine) - len(costed)} jobs not measured)" if len(costed) < len(mine) else "")
            )
    missing = sorted({(ln["model"], ln["step"]) for ln in lines if ln["gpu_hours"] is None})
    if missing:
        out.append("Not measured (no rows in the benchmarks table, so left out of the GPU-hours): "
                   + ", ".join(f"{model} {step}" for model, step in missing))
    return "\n".join(out)


def add_arguments(parser) -> None:
    parser.add_argument("--configfile", required=True, nargs="+", help="config YAML file(s), later ones merged over earlier ones")
    parser.add_argument("--profile", default="profiles/slurm", help="Snakemake profile directory (its config.yaml gives GPUs and time limits)")
    parser.add_argument("--benchmarks", default="BENCHMARKS.md", help="markdown file with the measured-throughput table")


def run(args) -> None:
    raw: dict = {}
    for path in args.configfile:
        _merge(raw, load_yaml(path))
    cfg, cells = resolve(raw, check_data=False)
    jobs = profile_jobs(Path(args.profile))
    rows = read_throughput(Path(args.benchmarks))
    print(render(plan(cfg, cells, jobs, rows), jobs, Path(args.benchmarks), Path(args.profile)))
