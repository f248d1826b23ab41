"""The plan of one training run, decided before anything is loaded: pure, and unit-tested on CPU.

    spec = TrainSpec.from_json(text)                      # the --spec of `ropelaw finetune`, checked
    plan = make_plan(spec, world_size, n_rows, seq_len)   # accumulation, rows per epoch, epochs

**Every optimizer step sees exactly the global batch.** The Trainer cuts each epoch into
micro-batches and runs the epoch's last optimizer step on the micro-batches that are left,
fewer than the accumulation when the rows do not divide. When a run crosses an epoch boundary
(steps x global batch > rows) and the rows are not a multiple of the global batch, the plan
trims each epoch to the first floor(rows / global batch) x global batch rows of the folder:
the Trainer reshuffles those every epoch, and the remaining rows (fewer than one global batch)
are never read. The model manifest records `rows_per_epoch` and `rows_unused`. A run that
stays within one epoch reads a random subset of all rows, as before. Fewer rows than one
global batch is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ropelaw import UserError, json_object
from ropelaw.specs import COMPILE_MODES, LOSS_PATHS, TrainingSpec

SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}
PRECISIONS = ("auto", "bf16", "fp32")
ATTENTION = ("sdpa", "flash_attention_2", "eager")
KEY = "finetune.{0} (or models.<slug>.pretrain.{0})"


@dataclass(frozen=True)
class TrainSpec(TrainingSpec):
    """`ropelaw.specs.TrainingSpec` as `ropelaw finetune --spec` reads it: the same fields (the config
    keys of `finetune`, `models.<slug>.finetune`, `grid[].finetune` or `models.<slug>.pretrain`),
    each also checked for its type and range, since the JSON may not come from the workflow."""

    def __post_init__(self, key: str) -> None:
        for name in ("steps", "global_batch_size", "micro_batch_size", "checkpoint_every", "length_multiple",
                     "logging_steps"):
            self._check(name, int, lambda v: v >= 1, "an integer >= 1")
        self._check("warmup_steps", int, lambda v: v >= 0, "an integer >= 0")
        self._check("seed", int, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)")  # numpy's seed range
        for name in ("lr", "max_grad_norm", "adam_epsilon"):
            self._check(name, float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
        self._check("weight_decay", float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
        for name in ("adam_beta1", "adam_beta2"):
            self._check(name, float, lambda v: 0 <= v < 1, "a number in [0, 1)")
        self._check("gradient_checkpointing", bool, lambda v: True, "true or false")
        self._check("compile", None, lambda v: isinstance(v, bool) or v in COMPILE_MODES,
                    f"true, false or one of {', '.join(COMPILE_MODES)}")
        self._check("fused_loss", None, lambda v: isinstance(v, bool) or v in LOSS_PATHS,
                    f"true, false or one of {', '.join(LOSS_PATHS)}")
        for name, allowed in (("lr_schedule", SCHEDULES), ("precision", PRECISIONS), ("attn_implementation", ATTENTION)):
            self._check(name, str, lambda v: v in allowed, f"one of {', '.join(allowed)}")
        if self.deepspeed is not None:
            self._check("deepspeed", str, lambda v: bool(v), "a path or null")
        super().__post_init__(key)

    def _check(self, name: str, kind: type | None, ok, what: str) -> None:
        value = getattr(self, name)
        if (kind is not None and not _is(value, kind)) or not ok(value):
            raise UserError(f"--spec: {name} = {value!r} must be {what}; fix {KEY.format(name)} in the config")

    @classmethod
    def from_json(cls, text: str) -> "TrainSpec":
        """The spec of `--spec`; bad JSON, an unknown or missing key, or a bad value is one UserError."""
        data = json_object(text, "--spec", "pass the JSON object the workflow writes (the finetune spec, "
                           "rule finetune's params.spec)")
        required = {f.name for f in fields(cls) if f.name != "fused_loss"}
        unknown, missing = set(data) - {f.name for f in fields(cls)}, required - set(data)
        if unknown or missing:
            raise UserError(f"--spec: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; "
                            "use the keys of the config's finetune block")
        return cls(**data)


def _is(value, kind: type) -> bool:
    """isinstance, where a bool is no number and an int is also a float (JSON writes 1e3 as 1000.0, 2 as 2)."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


@dataclass(frozen=True)
class Plan:
    """How the global batch is made and how the rows are read."""

    world_size: int
    accumulation: int
    """Micro-batches per rank per optimizer step."""
    rows: int
    """Rows in the packed folder."""
    rows_per_epoch: int
    """Rows the Trainer reads per epoch (the first ones of the folder)."""
    steps_per_epoch: int
    epochs: int
    """Epochs the run begins (the last possibly in part)."""

    @property
    def rows_unused(self) -> int:
        return self.rows - self.rows_per_epoch


def accumulation(spec: TrainSpec, world_size: int) -> int:
    """Gradient-accumulation steps that make the configured global batch exactly."""
    per_step = spec.micro_batch_size * world_size
    if spec.global_batch_size % per_step:
        raise UserError(
            f"finetune.global_batch_size = {spec.global_batch_size} is not a multiple of "
            f"micro_batch_size x world size = {spec.micro_batch_size} x {world_size}; "
            "change micro_batch_size or the number of GPUs"
        )
    return spec.global_batch_size // per_step


def make_plan(spec: TrainSpec, world_size: int, rows: int, seq_len: int) -> Plan:
    """The plan of a run of `spec` on `world_size` ranks over `rows` packed rows of `seq_len` tokens."""
    if seq_len % spec.length_multiple:
        raise UserError(f"tuning length {seq_len} is not a multiple of finetune.length_multiple = "
                        f"{spec.length_multiple}; change grid[].tune_lengths or the multiple")
    batch = spec.global_batch_size
    if rows < batch:
        raise UserError(f"the packed data has {rows} rows, fewer than one global batch of {batch}: raise "
                        "data.train.max_sequences (or add shards), or lower finetune.global_batch_size")
    steps_per_epoch = rows // batch
    crosses_an_epoch = spec.steps * batch > rows
    rows_per_epoch = steps_per_epoch * batch if crosses_an_epoch else rows
    return Plan(
        world_size=world_size,
        accumulation=accumulation(spec, world_size),
        rows=rows,
        rows_per_epoch=rows_per_epoch,
        steps_per_epoch=steps_per_epoch,
        epochs=math.ceil(spec.steps / steps_per_epoch),
    )
