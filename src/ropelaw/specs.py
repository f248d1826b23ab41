"""Typed config blocks: training hyper-parameters, the methods' options and the data blocks.

Each is a frozen dataclass with a docstring per field and the schema's default;
`__post_init__` refuses what the schema cannot (NaN, cross-field rules) with one
line naming the config key and the fix. `tests/test_config.py` checks that each
has exactly its schema block's keys and defaults. `ropelaw.config.resolve` builds
them for every block of a config, so a bad value fails at DAG-build time.
(The passkey block's typed form is `ropelaw.passkey.PasskeySpec`.)
"""

from __future__ import annotations

import json
import math
from dataclasses import InitVar, dataclass, fields
from pathlib import Path

from ropelaw import UserError


def _positive(key: str, value: float, *, strict: bool = True) -> None:
    ok = math.isfinite(value) and (value > 0 if strict else value >= 0)
    if not ok:
        raise UserError(f"config key '{key}' must be a finite number {'>' if strict else '>='} 0 (got {value})")


# finetune.fused_loss besides true/false (ropelaw.fastloss)
LOSS_PATHS = ("grad_in_forward", "checkpointed", "grad_in_forward_compiled")
# the paths that read the lm_head weight outside its module (LinearCrossEntropy): refused under ZeRO-3
GRAD_IN_FORWARD = ("grad_in_forward", "grad_in_forward_compiled")
# finetune.compile besides true/false: a torch.compile mode (Inductor autotunes its matrix products and
# kernels; the CUDA-graph modes are not offered: the Trainer's steps are not graph-safe as written)
COMPILE_MODES = ("max-autotune-no-cudagraphs",)


def compile_mode(compile: bool | str) -> str | None:
    """The torch.compile mode of `finetune.compile` (None: torch's default, or no compile at all)."""
    return compile if isinstance(compile, str) else None


def zero_stage(deepspeed: str | None, key: str = "finetune") -> int | None:
    """The ZeRO stage that the DeepSpeed JSON config `<key>.deepspeed` sets (None: no config, or no stage)."""
    if not deepspeed:
        return None
    try:
        return json.loads(Path(deepspeed).read_text()).get("zero_optimization", {}).get("stage")
    except (OSError, ValueError, AttributeError) as err:
        raise UserError(f"config key '{key}.deepspeed': {deepspeed} is not a readable DeepSpeed JSON object "
                        f"({err}); fix the file or the path") from None


def loss_path(fused_loss: bool | str, zero3: bool, key: str = "finetune") -> str:
    """The loss a run computes for `<key>.fused_loss`: one of LOSS_PATHS, or plain (the model's own loss).
    grad_in_forward reads the lm_head weight outside its module, where DeepSpeed ZeRO-3 does not promise it
    gathered: under ZeRO-3, true means checkpointed and grad_in_forward is refused."""
    if fused_loss is False:
        return "plain"
    if fused_loss is True:
        return "checkpointed" if zero3 else "grad_in_forward"
    if fused_loss in GRAD_IN_FORWARD and zero3:
        raise UserError(f"config key '{key}.fused_loss' is {fused_loss}, which is not supported under DeepSpeed "
                        "ZeRO-3 (it reads the lm_head weight outside its module); set it to true or checkpointed")
    return fused_loss


@dataclass(frozen=True)
class TrainingSpec:
    """One training run: `finetune`, `models.<m>.pretrain`, merged with its override blocks."""

    steps: int = 1000
    """Optimizer steps."""
    global_batch_size: int = 128
    """Sequences per optimizer step, whatever the GPU count."""
    micro_batch_size: int = 1
    """Sequences per GPU per forward."""
    lr: float = 2.0e-5
    """Peak learning rate."""
    lr_schedule: str = "constant"
    """constant, cosine or linear, after warmup."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_epsilon: float = 1.0e-8
    """AdamW epsilon."""
    seed: int = 1234
    """Seed of initialisation, data order and dropout (a grid block's `seeds` set it per cell)."""
    precision: str = "auto"
    """auto, bf16 or fp32."""
    gradient_checkpointing: bool = False
    """Activation checkpointing."""
    attn_implementation: str = "sdpa"
    """sdpa, flash_attention_2 or eager."""
    deepspeed: str | None = None
    """Path of a DeepSpeed JSON config, or None."""
    checkpoint_every: int = 250
    """A resumable checkpoint every N steps."""
    length_multiple: int = 64
    """Tuning lengths must be a multiple of this."""
    logging_steps: int = 10
    """Log loss and learning rate every N steps."""
    compile: bool | str = False
    """torch.compile each decoder layer: true, false, or max-autotune-no-cudagraphs (`COMPILE_MODES`)."""
    fused_loss: bool | str = True
    """The loss from the last hidden states in chunks, never the whole fp32 logits: true, false,
    grad_in_forward or checkpointed (`loss_path`)."""
    key: InitVar[str] = "finetune"
    """The config block it comes from, for error messages."""

    def __post_init__(self, key: str) -> None:
        _positive(f"{key}.lr", self.lr)
        _positive(f"{key}.max_grad_norm", self.max_grad_norm)
        _positive(f"{key}.adam_epsilon", self.adam_epsilon)
        _positive(f"{key}.weight_decay", self.weight_decay, strict=False)
        if not isinstance(self.compile, bool) and self.compile not in COMPILE_MODES:
            raise UserError(f"config key '{key}.compile' is {self.compile!r}; set it to true, false or one of "
                            f"{', '.join(COMPILE_MODES)}")
        if self.global_batch_size % self.micro_batch_size:
            raise UserError(f"config key '{key}.global_batch_size' ({self.global_batch_size}) must be a multiple of "
                            f"micro_batch_size ({self.micro_batch_size}); change one of them")
        if self.warmup_steps > self.steps:
            raise UserError(f"config key '{key}.warmup_steps' ({self.warmup_steps}) exceeds steps ({self.steps}); lower it")


@dataclass(frozen=True)
class FactorOptions:
    """Options of linear and ntk (and of their variants)."""

    factor: float = 4.0
    """Scale s >= 1."""
    key: InitVar[str] = "methods"

    def __post_init__(self, key: str) -> None:
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise UserError(f"config key '{key}.factor' must be a finite number >= 1 (got {self.factor})")


@dataclass(frozen=True)
class DynamicNtkOptions(FactorOptions):
    """Options of dynamic_ntk."""

    factor: float = 1.0
    """Scale s >= 1 of theta = b0 x (s x L/T_train - (s - 1))^(d/(d-2)) at length L > T_train."""


@dataclass(frozen=True)
class YarnOptions(FactorOptions):
    """Options of yarn."""

    beta_fast: float = 32.0
    """Dims that rotate more than beta_fast times within T_train keep their frequency."""
    beta_slow: float = 1.0
    """Dims that rotate fewer than beta_slow times within T_train are fully interpolated."""

    def __post_init__(self, key: str) -> None:
        super().__post_init__(key)
        if not (math.isfinite(self.beta_fast) and self.beta_fast > self.beta_slow > 0):
            raise UserError(f"config keys '{key}.beta_fast' > '{key}.beta_slow' > 0 are required "
                            f"(got {self.beta_fast}, {self.beta_slow})")


@dataclass(frozen=True)
class LognOptions:
    """Options of logn and base_logn."""

    t_ref: str | int = "tune_len"
    """T_ref of log-scaled attention: tune_len, train_len, or a number of tokens >= 2."""
    key: InitVar[str] = "methods.logn"

    def __post_init__(self, key: str) -> None:
        if self.t_ref not in ("tune_len", "train_len") and (isinstance(self.t_ref, (bool, str)) or self.t_ref < 2):
            raise UserError(f"config key '{key}.t_ref' must be tune_len, train_len or an integer >= 2 (got {self.t_ref!r})")


@dataclass(frozen=True)
class TrainData:
    """`data.train`: the shards fine-tuning (and a scratch model's pretraining) reads."""

    shards: tuple[str, ...]
    """Pile-format shards (.jsonl or .jsonl.zst)."""
    subsets: tuple[str, ...] | None = None
    """pile_set_name values to keep (None = all)."""
    max_sequences: int | None = None
    """Stop packing after this many sequences per tuning length (None = all)."""


@dataclass(frozen=True)
class EvalData:
    """`data.eval`: the long documents every cell is evaluated on."""

    shards: tuple[str, ...]
    """Pile-format shards holding the long evaluation documents."""
    name: str = "Books3 (Pile validation)"
    """Name of the evaluation set, printed on every figure."""
    subsets: tuple[str, ...] | None = None
    """pile_set_name values to keep."""
    short_docs: str = "skip"
    """skip documents shorter than the longest evaluation length, or concatenate them."""
    max_docs: int | None = 8
    """Evaluate at most this many rows."""
    windows_per_doc: int = 1
    """Consecutive non-overlapping windows cut from each document."""
    skip_tokens: int = 0
    """Tokens dropped at the start of every document."""

    def __post_init__(self) -> None:
        if self.short_docs not in ("skip", "concatenate"):
            raise UserError(f"config key 'data.eval.short_docs' is {self.short_docs!r}; choose skip or concatenate")


METHOD_OPTIONS = {"linear": FactorOptions, "ntk": FactorOptions, "dynamic_ntk": DynamicNtkOptions,
                  "yarn": YarnOptions, "logn": LognOptions}


def build(cls, values: dict, key: str):
    """A typed block from a config mapping (lists become tuples); `key` names it in errors."""
    names = {f.name for f in fields(cls)}
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
    return cls(**data, key=key) if "key" in cls.__dataclass_fields__ else cls(**data)
