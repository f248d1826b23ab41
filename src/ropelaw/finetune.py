"""Train one cell: a causal LM with a new rotary base, at the cell's tuning length.

    ropelaw finetune --model DIR --data DIR --base 500000 --spec '{...}' \
        --checkpoints DIR --out DIR            # add torchrun/deepspeed for several GPUs

The same command pretrains a scratch model (its original base, at T_train).
The run is in pieces: `train_plan` (the spec, checked, and the pure plan: accumulation, rows per
epoch so that every step sees the whole global batch), `checkpoints` (whose checkpoints, where to
resume, removal once finished), `trainer` (the transformers Trainer and its callbacks),
`fastloss` (the loss without the whole vocabulary's logits) and this module, which loads the
model with its base, runs them in order, checks the `inv_freq` in effect before and after
training, and writes the model atomically with its manifest. A finished run leaves no
checkpoints behind, so running the command again (a forced re-run) trains from the start.

SIGUSR1 (SLURM's warning before the time limit, `--signal=USR1@600` in the
profile, or `scancel --signal=USR1 JOB`) makes every rank save a checkpoint at
the end of the same step and exit with status 75; re-running the command (the
profile's `retries`) resumes from that checkpoint, with the data order, RNG and
optimizer state the Trainer restores, so the run ends as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from ropelaw import UserError, checkpoints, methods, provenance, rope
from ropelaw.checkpoints import claim as _claim_checkpoints, newest_checkpoint  # noqa: F401 (the tests import them here)
from ropelaw.manifests import PackManifest
from ropelaw.train_plan import SCHEDULES, Plan, TrainSpec, make_plan  # noqa: F401
from ropelaw.trainer import RecordCheckpoints, StopOnSignal, loss_path_of, mean_step_loss

STOPPED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped on request with a checkpoint saved; run again to resume


def run_identity(method_spec: methods.MethodSpec, spec: TrainSpec, world_size: int, model_dir: str,
                 data_dir: str) -> dict:
    """What a checkpoint must share with this run to be resumed: method and base, spec, world size, model, data."""
    return {
        "base": method_spec.base,
        "method": method_spec.to_json(),
        "spec": asdict(spec),
        "world_size": world_size,
        "source_model": str(model_dir),
        "source_manifest_sha256": provenance.sha256_if_exists(Path(model_dir) / "ropelaw_manifest.json"),
        "data_manifest_sha256": provenance.sha256_file(Path(data_dir) / "manifest.json"),
    }


def _resume_point(args, ckpt_dir: Path, identity: dict, steps: int) -> Path | None:
    """Claim the checkpoint folder and pick the checkpoint to resume from (the main rank first)."""
    with args.main_process_first(local=False, desc="checkpoints of this run"):
        if args.process_index == 0:
            checkpoints.claim(ckpt_dir, identity, main=True)
            checkpoints.resume_point(ckpt_dir, steps)
    resume = newest_checkpoint(ckpt_dir)
    if resume:
        print(f"resuming from {resume}", flush=True)
    if args.process_index == 0:
        if earlier := checkpoints.attempts(ckpt_dir):
            print(f"attempt {len(earlier) + 1} of this run; the earlier ones (their logs are gone: Snakemake "
                  f"deletes a rule's log before a retry):\n{checkpoints.history(earlier)}", flush=True)
        checkpoints.begin_attempt(ckpt_dir, resume)
    return resume


def train(
    model_dir: str, data_dir: str, method: float | methods.MethodSpec, spec: TrainSpec, checkpoints_dir: str,
    out: str, callbacks=(), host_syncs: bool = False,
) -> dict:
    """Train one cell with `method` (a rotary base, or a resolved method that trains); `callbacks` are
    extra TrainerCallbacks (bench/ times steps with them); `host_syncs` trains as before train14's fixes
    (blocking batch copies, transformers' mask creation), for bench/finetune_speed.py's reference.
    Returns the manifest written beside the model."""
    import torch
    from transformers import AutoTokenizer

    from ropelaw.data import PackedDataset
    from ropelaw.models import head_dim_of, load_causal_lm, resolve_dtype
    from ropelaw.trainer import Diverged, build_trainer, training_arguments

    stopper = StopOnSignal()  # first: a signal during the (long) model load is kept, not fatal
    loss_path_of(spec)  # fused_loss: grad_in_forward under ZeRO-3 is refused here, before anything loads
    method_spec = method if isinstance(method, methods.MethodSpec) else methods.resolve("base", float(method))
    data = PackManifest.read(data_dir)
    plan = make_plan(spec, int(os.environ.get("WORLD_SIZE", "1")), data.n_sequences, data.seq_len)
    ckpt_dir = Path(checkpoints_dir)
    identity = run_identity(method_spec, spec, plan.world_size, model_dir, data_dir)
    if earlier := checkpoints.diverged(ckpt_dir, identity):  # before the model loads: a retry would diverge again
        raise UserError(f"attempt {earlier['attempt']} of this run diverged (training loss {earlier['loss']} at step "
                        f"{earlier['step']}) and the same seed, spec and data would again: {Diverged.FIX}")
    args = training_arguments(spec, plan, str(ckpt_dir), bf16=resolve_dtype(spec.precision) == torch.bfloat16,
                              host_syncs=host_syncs)
    model, inv_freq = load_causal_lm(model_dir, method_spec, precision="fp32", attn_implementation=spec.attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = PackedDataset(data_dir, plan.rows_per_epoch)
    trainer = build_trainer(model, spec, args, dataset, [stopper, RecordCheckpoints(), *callbacks],
                            host_syncs=host_syncs)
    resume = _resume_point(args, ckpt_dir, identity, spec.steps)
    main = args.process_index == 0
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except BaseException as err:
        if main:
            if isinstance(err, Diverged):
                checkpoints.record(ckpt_dir, "end", outcome=checkpoints.DIVERGED, step=err.step, loss=str(err.loss))
            else:
                checkpoints.record(ckpt_dir, "end", outcome="failed", step=trainer.state.global_step, error=_one_line(err))
        raise
    if stopper.stopped_at is not None:
        if main:
            checkpoints.record(ckpt_dir, "end", outcome="stopped by SIGUSR1", step=stopper.stopped_at)
        print(
            f"stopped by SIGUSR1 after step {stopper.stopped_at} of {spec.steps}: checkpoint saved in "
            f"{ckpt_dir}; run the same command again to resume (exit status {STOPPED_EXIT_CODE})",
            flush=True,
        )
        raise SystemExit(STOPPED_EXIT_CODE)

    inv_freq_after = rope.verify_inv_freq(trainer.model, method_spec, head_dim_of(trainer.model.config))
    record = model_manifest(trainer, spec, plan, data, method_spec, identity, resume, inv_freq, inv_freq_after)
    # Under ZeRO-3 every rank holds a shard: gathering the weights is collective, so all ranks call it.
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if trainer.is_world_process_zero():
        with provenance.atomic_path(out) as tmp:
            trainer.model.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            provenance.write_json(Path(tmp) / "ropelaw_manifest.json", record)
        checkpoints.finish(ckpt_dir)  # after the model: a crash in between leaves a resumable, unfinished state
    return record


def model_manifest(trainer, spec: TrainSpec, plan: Plan, data: PackManifest, method_spec, identity: dict,
                   resume: Path | None, inv_freq, inv_freq_after) -> dict:
    """The fine-tuned model's ropelaw_manifest.json: what identifies the run, what it ran with, its losses."""
    import torch

    log = trainer.state.log_history
    losses = [row["loss"] for row in log if "loss" in row]
    return provenance.manifest(
        kind="finetune",
        base=method_spec.base,
        method=method_spec.to_json(),
        tune_len=data.seq_len,
        spec=asdict(spec),
        world_size=plan.world_size,
        gradient_accumulation_steps=plan.accumulation,
        rows_per_epoch=plan.rows_per_epoch,
        rows_unused=plan.rows_unused,
        epochs=plan.epochs,
        source_model=identity["source_model"],
        source_manifest_sha256=identity["source_manifest_sha256"],
        data_manifest_sha256=identity["data_manifest_sha256"],
        data_tokens_sha256=data.tokens_bin_sha256,
        resumed_from=str(resume) if resume else None,
        attempts=checkpoints.completed(Path(trainer.args.output_dir), spec.steps),
        optimizer=str(getattr(trainer.args.optim, "value", trainer.args.optim)),
        loss_path=loss_path_of(spec),
        # the attention function the steps ran: `sdpa` trains as ropelaw_causal_sdpa, the same kernel with no
        # mask built (ropelaw.trainer.skip_mask_creation)
        attention_trained=trainer.model.config._attn_implementation,
        inv_freq=inv_freq_after.tolist(),
        inv_freq_sha256=rope.inv_freq_digest(inv_freq_after),
        inv_freq_before_training_sha256=rope.inv_freq_digest(inv_freq),
        final_loss=losses[-1] if losses else None,
        train_loss=mean_step_loss(log, spec.steps),  # over all steps, resumed or not
        # This rank's peak over the run (GiB; null on CPU): what a GPU of this job must hold.
        peak_gpu_allocated_gib=torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        log_history=log,
    )


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model directory to start from")
    parser.add_argument("--data", required=True, help="packed training data directory (ropelaw pack)")
    parser.add_argument("--base", required=True, type=float, help="rotary base to train with")
    parser.add_argument("--spec", required=True, help="resolved training hyper-parameters, as JSON")
    parser.add_argument("--method", help="the trained method's MethodSpec JSON (split); default: base at --base")
    parser.add_argument("--checkpoints", required=True, help="directory for resumable checkpoints")
    parser.add_argument("--out", required=True, help="output model directory (written atomically)")


def run(args) -> None:
    if not args.base > 1:  # also NaN
        raise UserError(f"--base must be a number > 1 (got {args.base:g}); fix the cell's base")
    spec = TrainSpec.from_json(args.spec)
    method = methods.MethodSpec.from_json(args.method) if args.method else methods.resolve("base", args.base)
    if method.base != args.base or not method.trains:
        raise UserError(
            f"--method: {method.name} at base {method.base:g} is not a trained method at --base {args.base:g}"
        )
    record = train(args.model, args.data, method, spec, args.checkpoints, args.out)
    print(json.dumps({"final_loss": record["final_loss"], "inv_freq_sha256": record["inv_freq_sha256"]}))
    _leave_process_group()


def _leave_process_group() -> None:
    """Under torchrun: wait for every rank, leave the process group, then end the process at once.

    Left to the interpreter's teardown, a rank of a ZeRO-3 run on gloo sometimes died there after its
    work was written ("terminate called without an active exception", SIGABRT: destructors run at exit
    met a C++ thread still joinable), and the launcher failed the job: in tests/test_deepspeed.py, and
    in the SLURM two-node test, where Snakemake's retry then trained the cell again. Leaving the group
    first did not prevent it. The outputs are complete and in place when this runs (`train` writes them
    atomically), so the rank flushes its streams and exits 0 without that teardown (`os._exit`)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
