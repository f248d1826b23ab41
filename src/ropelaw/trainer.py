"""Building the transformers Trainer of one run from its spec and plan, and the callbacks it runs with.

transformers' Trainer does the work (AdamW, schedule, clipping, bf16, gradient accumulation,
DeepSpeed ZeRO when `deepspeed` names a config). `build_trainer` sets it up exactly as the plan
says; `StopOnSignal` makes every rank save and stop at the same step on SIGUSR1; `RecordCheckpoints`
adds each checkpoint to the run's attempts (`ropelaw.checkpoints`); `LastStep`
logs the last step and keeps the Trainer from checkpointing it (the finished model is saved
instead, and a checkpoint at the last step is one a re-run must never resume). Every checkpoint
step is also a logging step, so the per-step losses the log covers survive a resume and
`train_loss` (their mean over all steps) is the same whether or not the run was interrupted.
`FiniteLoss` ends the run with one line at the first log whose loss is not finite.
"""

from __future__ import annotations

import math
import signal
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ropelaw import UserError, checkpoints
from ropelaw.specs import compile_mode, loss_path, zero_stage
from ropelaw.train_plan import SCHEDULES, Plan, TrainSpec


class LastStep(TrainerCallback):
    """Log at every checkpoint and at the last step; never checkpoint the last step."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True
            control.should_save = False
        elif control.should_save:
            control.should_log = True
        return control


class Diverged(UserError):
    """A logged training loss that is not finite: the run's attempts record it, and a retry of the same run
    (the same seed, spec and data would diverge again) is refused before the model loads."""

    FIX = "lower finetune.lr (or finetune.max_grad_norm) and train the cell again"

    def __init__(self, loss: float, step: int):
        self.loss, self.step = loss, step
        super().__init__(f"the training loss is {loss} in the log of step {step}; the weights are no longer finite, "
                         f"so no model is written: {self.FIX}")


class FiniteLoss(TrainerCallback):
    """Stop the run at the first logged loss that is not finite. transformers' `logging_nan_inf_filter` would log
    the mean of earlier losses instead, and train on from weights the non-finite step has already spoiled (it
    also syncs the GPU every micro-batch to look); it is off, so a log's mean carries the non-finite loss here."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        try:
            loss = float((logs or {})["loss"])  # a float in transformers 5.x; a formatted string would do too
        except (KeyError, TypeError, ValueError):
            return control
        if not math.isfinite(loss):
            raise Diverged(loss, state.global_step)
        return control


class RecordCheckpoints(TrainerCallback):
    """Add each checkpoint saved to the run's attempts (`checkpoints.record`, in the Trainer's output_dir)."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoints.record(Path(args.output_dir), "checkpoint", step=state.global_step)
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
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    flag_t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(flag_t, op=dist.ReduceOp.MAX)
    return bool(flag_t.item())


def training_arguments(spec: TrainSpec, plan: Plan, output_dir: str, bf16: bool,
                       host_syncs: bool = False) -> TrainingArguments:
    """The Trainer's arguments. Under ZeRO-3, creating them before the model makes from_pretrained load
    each rank's shard only (deepspeed.zero.Init), instead of the whole fp32 model on every rank.
    The optimizer is transformers' default, torch's fused AdamW (one kernel for every parameter,
    on CPU and GPU, with torch >= 2.8); the model manifest records it.

    Each batch is copied to the GPU from pinned memory without blocking (accelerate's `non_blocking`): a
    blocking copy made the host wait at every step's start for the GPU to finish the step before, and
    the GPU then waited while the host launched the next step (BENCHMARKS.md, train14). `host_syncs`
    keeps the blocking copy, for benchmarks of the path this replaced."""
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=spec.steps,
        per_device_train_batch_size=spec.micro_batch_size,
        gradient_accumulation_steps=plan.accumulation,
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
        bf16=bf16,
        gradient_checkpointing=spec.gradient_checkpointing,
        deepspeed=spec.deepspeed,
        save_strategy="steps",
        save_steps=spec.checkpoint_every,
        save_total_limit=2,
        logging_steps=spec.logging_steps,
        logging_nan_inf_filter=False,  # FiniteLoss stops the run instead
        report_to=[],
        dataloader_drop_last=True,
        dataloader_pin_memory=True,
        accelerator_config={"non_blocking": not host_syncs},
        disable_tqdm=False,
    )


CAUSAL_SDPA = "ropelaw_causal_sdpa"


def skip_mask_creation(model) -> bool:
    """Train an SDPA model with no attention mask built, the same kernel called with `is_causal`.

    Before every forward, transformers' mask creation tests the position ids for packed sequences, a
    reduction whose result the host reads (a host-GPU sync each micro-batch, BENCHMARKS.md train14).
    A training row here is one unpadded sequence (`PackedDataset` gives no attention_mask and the model
    numbers the positions 0..T-1), so the mask it builds is always none at all. SDPA registered under
    another name with no mask function (transformers' AttentionInterface) skips the creation: the same
    attention function, the same numbers, no sync. Other kernels are left as they are; the saved
    config does not record the name. Returns whether it switched."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if model.config._attn_implementation != "sdpa":
        return False
    if CAUSAL_SDPA not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(CAUSAL_SDPA, ALL_ATTENTION_FUNCTIONS["sdpa"])
    model.set_attn_implementation(CAUSAL_SDPA)
    return True


def build_trainer(model, spec: TrainSpec, args: TrainingArguments, dataset, callbacks=(),
                  host_syncs: bool = False) -> Trainer:
    """The Trainer of a loaded fp32 model (bf16 autocast through the Trainer, or DeepSpeed's bf16 engine).
    SDPA trains without transformers' mask creation (`skip_mask_creation`) unless `host_syncs`."""
    from ropelaw.fastloss import install_chunked_loss
    from ropelaw.models import compile_layers

    model.config.use_cache = False
    if not host_syncs:
        skip_mask_creation(model)
    if spec.compile:
        compile_layers(model, "finetune.compile", compile_mode(spec.compile))
        if spec.deepspeed:
            print("warning: finetune.compile with DeepSpeed: ZeRO-3's parameter hooks split the compiled layers; "
                  "on one H200 it was slower than ZeRO-3 alone (BENCHMARKS.md)", flush=True)
    path = loss_path_of(spec)
    if path != "plain":
        install_chunked_loss(model, path)
    return Trainer(model=model, args=args, train_dataset=dataset, callbacks=[LastStep(), FiniteLoss(), *callbacks])


def loss_path_of(spec: TrainSpec) -> str:
    """The loss `finetune.fused_loss` runs (`ropelaw.specs.loss_path`: plain, grad_in_forward, or
    checkpointed, what true means under the ZeRO-3 of `finetune.deepspeed`); the model manifest's `loss_path`."""
    return loss_path(spec.fused_loss, zero3=zero_stage(spec.deepspeed) == 3)


def mean_step_loss(log_history: list[dict], steps: int) -> float | None:
    """The mean training loss over steps 1..`steps`: each logged loss is the mean over the steps since
    the previous log, so it counts for that many steps. None if the log does not cover every step."""
    total, last = 0.0, 0
    for row in log_history:
        if "loss" in row:
            total += row["loss"] * (row["step"] - last)
            last = row["step"]
    return total / steps if last == steps else None
