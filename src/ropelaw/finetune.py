"""Train one cell: a causal LM with a new rotary base, at the cell's tuning length.

    ropelaw finetune --model DIR --data DIR --base 500000 --spec '{...}' \
        --checkpoints DIR --out DIR            # add torchrun/deepspeed for several GPUs

The same command pretrains a scratch model (its original base, at T_train).
transformers' Trainer does the work (AdamW, schedule, clipping, bf16,
gradient accumulation, DeepSpeed ZeRO when `deepspeed` names a config);
this module only sets the base, checks the `inv_freq` in effect before and
after training, keeps the global batch exactly as configured, resumes from
the newest checkpoint, and writes the model atomically with its manifest.

SIGUSR1 (SLURM's warning before the time limit, `--signal=USR1@600` in the
profile, or `scancel --signal=USR1 JOB`) makes every rank save a checkpoint at
the end of the same step and exit with status 75; re-running the command (the
profile's `retries`) resumes from that checkpoint, with the data order, RNG and
optimizer state the Trainer restores, so the run ends as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from transformers import TrainerCallback

from ropelaw import UserError, methods, provenance, rope

SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}
STOPPED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped on request with a checkpoint saved; run again to resume


@dataclass
class TrainSpec:
    """Resolved hyper-parameters of one training run (see schemas/config.schema.yaml)."""

    steps: int
    global_batch_size: int
    micro_batch_size: int
    lr: float
    lr_schedule: str
    warmup_steps: int
    weight_decay: float
    max_grad_norm: float
    adam_beta1: float
    adam_beta2: float
    adam_epsilon: float
    seed: int
    precision: str
    gradient_checkpointing: bool
    attn_implementation: str
    deepspeed: str | None
    checkpoint_every: int
    length_multiple: int
    logging_steps: int
    compile: bool

    @classmethod
    def from_json(cls, text: str) -> "TrainSpec":
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        unknown, missing = set(data) - names, names - set(data)
        if unknown or missing:
            raise UserError(f"--spec: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        return cls(**data)

    def accumulation(self, world_size: int) -> int:
        """Gradient-accumulation steps that make the configured global batch exactly."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise UserError(
                f"finetune.global_batch_size = {self.global_batch_size} is not a multiple of "
                f"micro_batch_size x world size = {self.micro_batch_size} x {world_size}; "
                "change micro_batch_size or the number of GPUs"
            )
        return self.global_batch_size // per_step


class _LastStep(TrainerCallback):
    """At the last step: log its loss (the manifest's final_loss), and skip the Trainer's
    extra end-of-training checkpoint (optimizer state included) unless the step is due one:
    the finished model is saved by `train` anyway."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True
            control.should_save = state.global_step % args.save_steps == 0
        return control


class StopOnSignal(TrainerCallback):
    """On SIGUSR1: save a checkpoint at the end of the current step and stop (all ranks, same step)."""

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None
        signal.signal(signal.SIGUSR1, self._request)

    def _request(self, signum, frame) -> None:
        self.requested = True

    def on_step_end(self, args, state, control, **kwargs):
        if _on_any_rank(self.requested, args.device) and state.global_step < state.max_steps:
            self.stopped_at = state.global_step
            control.should_log = True  # the loss since the last log goes into the checkpoint
            control.should_save = True
            control.should_training_stop = True
        return control


def _on_any_rank(flag: bool, device) -> bool:
    """True on every rank if `flag` is true on one: ranks hear a signal at different steps."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    flag_t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(flag_t, op=dist.ReduceOp.MAX)
    return bool(flag_t.item())


def _claim_checkpoints(ckpt_dir: Path, identity: dict, main: bool) -> None:
    """Resume only from checkpoints of this very run: same base, spec, world size, model and data."""
    marker = ckpt_dir / "ropelaw_run.json"
    if not main:
        return
    ours = json.loads(marker.read_text()) == identity if marker.is_file() else not any(ckpt_dir.glob("checkpoint-*"))
    if not ours:
        print(f"{ckpt_dir} holds checkpoints of another run ({marker.name} differs): starting afresh", flush=True)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    provenance.write_json(marker, identity)


def newest_checkpoint(directory: Path) -> Path | None:
    """The Trainer checkpoint with the highest step in `directory`, if any is complete."""
    found = []
    for path in directory.glob("checkpoint-*"):
        step = path.name.split("-")[-1]
        if step.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(step), path))
    return max(found)[1] if found else None


def train(
    model_dir: str, data_dir: str, base: float | methods.MethodSpec, spec: TrainSpec, checkpoints: str, out: str,
    callbacks=(),
) -> dict:
    """Train one cell; `callbacks` are extra TrainerCallbacks (bench/ times steps with one).

    `base` is a rotary base (the paper's method) or a trained method's `MethodSpec` (split).
    """
    method = base if isinstance(base, methods.MethodSpec) else methods.resolve("base", base)
    base = method.base
    import torch
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    from ropelaw.data import PackedDataset
    from ropelaw.models import compile_layers, head_dim_of, load_causal_lm, resolve_dtype

    stopper = StopOnSignal()  # first: a signal during the (long) model load is kept, not fatal
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = spec.accumulation(world_size)
    dataset = PackedDataset(data_dir)
    data_manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    seq_len = data_manifest["seq_len"]
    if seq_len % spec.length_multiple:
        raise UserError(f"tuning length {seq_len} is not a multiple of finetune.length_multiple = {spec.length_multiple}")

    dtype = resolve_dtype(spec.precision)
    ckpt_dir = Path(checkpoints)
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        max_steps=spec.steps,
        per_device_train_batch_size=spec.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=spec.lr,
        lr_scheduler_type=SCHEDULES[spec.lr_schedule],
        warmup_steps=spec.warmup_steps,
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,
        adam_beta1=spec.adam_beta1,
        adam_beta2=spec.adam_beta2,
        adam_epsilon=spec.adam_epsilon,
        seed=spec.seed,
        data_seed=spec.seed,
        bf16=dtype == torch.bfloat16,
        gradient_checkpointing=spec.gradient_checkpointing,
        deepspeed=spec.deepspeed,
        save_strategy="steps",
        save_steps=spec.checkpoint_every,
        save_total_limit=2,
        logging_steps=spec.logging_steps,
        report_to=[],
        dataloader_drop_last=True,
        disable_tqdm=False,
    )
    # After TrainingArguments: under ZeRO-3 they make from_pretrained load each rank's shard only
    # (deepspeed.zero.Init), instead of the whole fp32 model on every rank.
    # Weights stay fp32 (master copy); bf16 autocast through the Trainer, or DeepSpeed's bf16 engine.
    model, inv_freq = load_causal_lm(model_dir, method, precision="fp32", attn_implementation=spec.attn_implementation)
    head_dim = head_dim_of(model.config)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model.config.use_cache = False
    if spec.compile:
        compile_layers(model, "finetune.compile")
        if spec.deepspeed:
            print("warning: finetune.compile with DeepSpeed: ZeRO-3's parameter hooks split the compiled layers; "
                  "on one H200 it was slower than ZeRO-3 alone (BENCHMARKS.md)", flush=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[_LastStep(), stopper, *callbacks])
    identity = {
        "base": base,
        "spec": asdict(spec),
        "world_size": world_size,
        "source_model": str(model_dir),
        "source_manifest_sha256": provenance.sha256_if_exists(Path(model_dir) / "ropelaw_manifest.json"),
        "data_manifest_sha256": provenance.sha256_file(Path(data_dir) / "manifest.json"),
    }
    with args.main_process_first(local=False, desc="checkpoints of this run"):
        _claim_checkpoints(ckpt_dir, identity, main=args.process_index == 0)
    resume = newest_checkpoint(ckpt_dir)
    if resume:
        print(f"resuming from {resume}", flush=True)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if stopper.stopped_at is not None:
        print(
            f"stopped by SIGUSR1 after step {stopper.stopped_at} of {spec.steps}: checkpoint saved in "
            f"{ckpt_dir}; run the same command again to resume (exit status {STOPPED_EXIT_CODE})",
            flush=True,
        )
        raise SystemExit(STOPPED_EXIT_CODE)

    model = trainer.model
    inv_freq_after = rope.verify_inv_freq(model, method, head_dim)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    record = provenance.manifest(
        kind="finetune",
        base=base,
        method=method.to_json(),
        tune_len=seq_len,
        spec=asdict(spec),
        world_size=world_size,
        gradient_accumulation_steps=accumulation,
        source_model=str(model_dir),
        source_manifest_sha256=provenance.sha256_if_exists(Path(model_dir) / "ropelaw_manifest.json"),
        data_manifest_sha256=provenance.sha256_file(Path(data_dir) / "manifest.json"),
        data_tokens_sha256=data_manifest.get("tokens_sha256"),
        resumed_from=str(resume) if resume else None,
        inv_freq=inv_freq_after.tolist(),
        inv_freq_sha256=rope.inv_freq_digest(inv_freq_after),
        inv_freq_before_training_sha256=rope.inv_freq_digest(inv_freq),
        final_loss=losses[-1] if losses else None,
        train_loss=result.training_loss,
        # This rank's peak over the run (GiB; null on CPU): what a GPU of this job must hold.
        peak_gpu_allocated_gib=torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        log_history=trainer.state.log_history,
    )
    # Under ZeRO-3 every rank holds a shard: gathering the weights is collective, so all ranks call it.
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if trainer.is_world_process_zero():
        with provenance.atomic_path(out) as tmp:
            trainer.model.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            provenance.write_json(Path(tmp) / "ropelaw_manifest.json", record)
    return record



def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model directory to start from")
    parser.add_argument("--data", required=True, help="packed training data directory (ropelaw pack)")
    parser.add_argument("--base", required=True, type=float, help="rotary base to train with")
    parser.add_argument("--spec", required=True, help="resolved training hyper-parameters, as JSON")
    parser.add_argument("--method", help="the trained method's MethodSpec JSON (split); default: base at --base")
    parser.add_argument("--checkpoints", required=True, help="directory for resumable checkpoints")
    parser.add_argument("--out", required=True, help="output model directory (written atomically)")


def run(args) -> None:
    if args.base <= 1:
        raise UserError(f"--base must be > 1 (got {args.base:g})")
    spec = TrainSpec.from_json(args.spec)
    method = methods.MethodSpec.from_json(args.method) if args.method else methods.resolve("base", args.base)
    if method.base != args.base or not method.trains:
        raise UserError(
            f"--method: {method.name} at base {method.base:g} is not a trained method at --base {args.base:g}"
        )
    record = train(args.model, args.data, method, spec, args.checkpoints, args.out)
    print(json.dumps({"final_loss": record["final_loss"], "inv_freq_sha256": record["inv_freq_sha256"]}))
