"""Train one cell: a causal LM with a new rotary base, at the cell's tuning length.

    ropelaw finetune --model DIR --data DIR --base 500000 --spec '{...}' \
        --checkpoints DIR --out DIR            # add torchrun/deepspeed for several GPUs

The same command pretrains a scratch model (its original base, at T_train).
transformers' Trainer does the work (AdamW, schedule, clipping, bf16,
gradient accumulation, DeepSpeed ZeRO when `deepspeed` names a config);
this module only sets the base, checks the `inv_freq` in effect before and
after training, keeps the global batch exactly as configured, resumes from
the newest checkpoint, and writes the model atomically with its manifest.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ropelaw import UserError, provenance, rope

SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}


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


def newest_checkpoint(directory: Path) -> Path | None:
    """The Trainer checkpoint with the highest step in `directory`, if any is complete."""
    found = []
    for path in directory.glob("checkpoint-*"):
        step = path.name.split("-")[-1]
        if step.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(step), path))
    return max(found)[1] if found else None


def train(model_dir: str, data_dir: str, base: float, spec: TrainSpec, checkpoints: str, out: str) -> dict:
    import torch
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    from ropelaw.data import PackedDataset
    from ropelaw.models import head_dim_of, load_causal_lm, resolve_dtype

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = spec.accumulation(world_size)
    dataset = PackedDataset(data_dir)
    data_manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    seq_len = data_manifest["seq_len"]
    if seq_len % spec.length_multiple:
        raise UserError(f"tuning length {seq_len} is not a multiple of finetune.length_multiple = {spec.length_multiple}")

    dtype = resolve_dtype(spec.precision)
    # Weights stay fp32 (master copy); bf16 autocast through the Trainer when dtype is bf16.
    model, inv_freq = load_causal_lm(model_dir, base, precision="fp32", attn_implementation=spec.attn_implementation)
    head_dim = head_dim_of(model.config)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model.config.use_cache = False

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
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    resume = newest_checkpoint(ckpt_dir)
    if resume:
        print(f"resuming from {resume}", flush=True)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    model = trainer.model
    inv_freq_after = rope.check_inv_freq(model, head_dim, base)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    record = provenance.manifest(
        kind="finetune",
        base=base,
        tune_len=seq_len,
        spec=asdict(spec),
        world_size=world_size,
        gradient_accumulation_steps=accumulation,
        source_model=str(model_dir),
        source_manifest_sha256=_sha_if_exists(Path(model_dir) / "ropelaw_manifest.json"),
        data_manifest_sha256=provenance.sha256_file(Path(data_dir) / "manifest.json"),
        data_tokens_sha256=data_manifest.get("tokens_sha256"),
        resumed_from=str(resume) if resume else None,
        inv_freq=inv_freq_after.tolist(),
        inv_freq_sha256=rope.inv_freq_digest(inv_freq_after),
        inv_freq_before_training_sha256=rope.inv_freq_digest(inv_freq),
        final_loss=losses[-1] if losses else None,
        train_loss=result.training_loss,
        log_history=trainer.state.log_history,
    )
    if trainer.is_world_process_zero():
        with provenance.atomic_path(out) as tmp:
            trainer.save_model(str(tmp))
            tokenizer.save_pretrained(tmp)
            provenance.write_json(Path(tmp) / "ropelaw_manifest.json", record)
    return record


def _sha_if_exists(path: Path) -> str | None:
    return provenance.sha256_file(path) if path.is_file() else None


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model directory to start from")
    parser.add_argument("--data", required=True, help="packed training data directory (ropelaw pack)")
    parser.add_argument("--base", required=True, type=float, help="rotary base to train with")
    parser.add_argument("--spec", required=True, help="resolved training hyper-parameters, as JSON")
    parser.add_argument("--checkpoints", required=True, help="directory for resumable checkpoints")
    parser.add_argument("--out", required=True, help="output model directory (written atomically)")


def run(args) -> None:
    if args.base <= 1:
        raise UserError(f"--base must be > 1 (got {args.base:g})")
    spec = TrainSpec.from_json(args.spec)
    record = train(args.model, args.data, args.base, spec, args.checkpoints, args.out)
    print(json.dumps({"final_loss": record["final_loss"], "inv_freq_sha256": record["inv_freq_sha256"]}))
