"""Ways of extending RoPE: one place that says what each method does to a model.

A method name (the `{method}` level of result paths) plus its options from the
config's `methods:` block resolve to a `MethodSpec`:

| method        | model it evaluates          | rotary embedding (transformers `rope_parameters`)         | attention |
|---------------|-----------------------------|-----------------------------------------------------------|-----------|
| `base`        | fine-tuned with base beta   | default, rope_theta = beta (the paper)                    | plain     |
| `base_logn`   | the `base` cell's model (1) | default, rope_theta = beta                                | log-scaled|
| `untuned`     | untuned                     | default, rope_theta = b0                                  | plain     |
| `linear`      | untuned                     | `linear`: inv_freq / s (position interpolation)           | plain     |
| `ntk`         | untuned                     | default, rope_theta = b0 * s^(d/(d-2)) (static NTK-aware) | plain     |
| `dynamic_ntk` | untuned                     | `dynamic`: theta = b0 * (s*L/T - (s-1))^(d/(d-2)) for L>T | plain     |
| `yarn`        | untuned                     | `yarn`: per-dimension ramp, cos/sin times 0.1 ln s + 1    | plain     |
| `logn`        | untuned                     | default, rope_theta = b0                                  | log-scaled|
| kind `split`  | fine-tuned with its rotation| explicit inv_freq: n < k at low_base, n >= k at beta      | plain     |

(1) A variant of kind base_logn may name a variant of kind base in its `tuned` option (`steps600_logn:
{kind: base_logn, tuned: steps600}`): its cells evaluate that method's model at the same base, length and seed.

T is the model's pre-training length T_train, L the length of the current
sequence, s a method's `factor`. Log-scaled attention multiplies the query at
0-based position p by max(1, ln(p+1) / ln(T_ref)), T_ref being the cell's
tuning length (`t_ref: tune_len`, the default), T_train, or a number; it is an
`AttentionInterface` function wrapping the configured kernel (sdpa,
flash_attention_2 or flash4), so no model code is patched. Training-free methods'
cells are `results/{model}/{method}/base{b0}_len{T_train}/`.

A `methods:` entry whose name is not a built-in method is a variant: its `kind`
is a built-in method or `split`, and its name is the `{method}` of its paths
(`resolve(name, ..., options={"kind": ..., ...})`). `split` (options `k`,
`low_base`, `high`) is trained like `base`: pair n < k rotates with
low_base^(-2n/d) (`orig`: b0), pair n >= k with beta^(-2n/d), beta the cell's
base, or not at all (`high: frozen`, inv_freq 0). transformers' config cannot
say this, so the spec carries the vector (`MethodSpec.inv_freq`) and the loader
writes it into the rotary buffers at every load (`rope.apply_inv_freq`).

`ropelaw.rope.expected_inv_freq` recomputes each method's inv_freq in float64
from its formula and `rope.verify_inv_freq` refuses a model whose frequencies
are not the ones the method asks for. Imports no torch at module level
(Snakemake imports `ropelaw.config`, which imports this module, while it builds the DAG).
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field

from ropelaw import UserError

TRAINED = ("base", "split")  # kinds that fine-tune their own model
ON_TUNED = ("base", "base_logn")  # evaluate a fine-tuned model (base_logn: the `base` cell's, or its `tuned` method's)
TRAINING_FREE = ("untuned", "linear", "ntk", "dynamic_ntk", "yarn", "logn")
NAMES = ON_TUNED + TRAINING_FREE
GRID_METHODS = tuple(name for name in NAMES if name != "untuned")  # untuned cells come from evaluation.include_untuned
LOGN = ("logn", "base_logn")
LOGN_KERNELS = ("sdpa", "flash_attention_2", "ropelaw_fa4")  # the last: ropelaw.flash4.NAME
KINDS = NAMES + ("split",)  # what a `methods:` variant's `kind` may be
SPLIT_OPTIONS = {"k": None, "low_base": "orig", "high": "rotate"}  # k has no default
SPLIT_HIGH = ("rotate", "frozen")

DEFAULT_OPTIONS = {
    "linear": {"factor": 4.0},
    "ntk": {"factor": 4.0},
    "dynamic_ntk": {"factor": 1.0},
    "yarn": {"factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0},
    "logn": {"t_ref": "tune_len"},
}


@dataclass(frozen=True)
class MethodSpec:
    """A method resolved for one cell: what to set on the model config, and how to attend."""

    name: str
    base: float
    """The cell's rotary base (the path's `base{...}`): beta for base/base_logn/split, b0 otherwise."""
    rope_parameters: dict = field(default_factory=dict)
    """transformers v5 `rope_parameters`, set on the config before the model is built."""
    max_position_embeddings: int | None = None
    """Set on the config when the rope type reads it as T_train (dynamic NTK); None leaves it."""
    logn_t_ref: int | None = None
    """T_ref of log-scaled attention, or None for plain attention."""
    kind: str = ""
    """The built-in method or `split` this is (the name itself for a built-in method)."""
    inv_freq: tuple[float, ...] | None = None
    """Explicit float64 inv_freq written into the rotary buffers at load (split), or None."""

    def __post_init__(self):
        if not self.kind:
            object.__setattr__(self, "kind", self.name)

    @property
    def trains(self) -> bool:
        return trains(self.kind)

    @property
    def uses_tuned_model(self) -> bool:
        return self.kind in ON_TUNED

    @property
    def length_dependent(self) -> bool:
        """The rotation depends on the total length: one forward per evaluated length."""
        return self.rope_parameters["rope_type"] == "dynamic"

    def to_json(self) -> dict:
        return {
            "name": self.name, "kind": self.kind, "base": self.base, "rope_parameters": self.rope_parameters,
            "max_position_embeddings": self.max_position_embeddings, "logn_t_ref": self.logn_t_ref,
            "inv_freq": None if self.inv_freq is None else list(self.inv_freq),
        }

    @classmethod
    def from_json(cls, text: str, where: str = "--method") -> "MethodSpec":
        """Read `to_json()` back (as a JSON string); anything else is a one-line `UserError`."""
        try:
            data = json.loads(text)
            spec = cls(
                name=data["name"], kind=data["kind"], base=float(data["base"]),
                rope_parameters=dict(data["rope_parameters"]),
                max_position_embeddings=data["max_position_embeddings"], logn_t_ref=data["logn_t_ref"],
                inv_freq=None if data["inv_freq"] is None else tuple(float(f) for f in data["inv_freq"]),
            )
        except (ValueError, TypeError, KeyError) as err:
            raise UserError(
                f"{where}: not a method spec ({type(err).__name__}: {err}); pass MethodSpec.to_json()"
            ) from None
        if spec.kind not in KINDS:
            raise UserError(f"{where}: unknown method kind {spec.kind!r}; choose one of {', '.join(KINDS)}")
        return spec


def trains(kind: str) -> bool:
    """Whether cells of this kind fine-tune their own model (base, split)."""
    return kind in TRAINED


def options_key(method: str) -> str | None:
    """The `methods:` config block a method reads (base_logn shares logn's), or None."""
    if method == "base_logn":
        return "logn"
    return method if method in DEFAULT_OPTIONS else None


def _factor(key: str, options: dict) -> float:
    factor = float(options["factor"])
    if not factor >= 1:
        raise UserError(f"config key 'methods.{key}.factor' must be >= 1 (got {factor:g})")
    return factor


def _t_ref(key: str, options: dict, train_len: int, tune_len: int) -> int:
    t_ref = options["t_ref"]
    value = {"tune_len": tune_len, "train_len": train_len}.get(t_ref, t_ref)
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise UserError(
            f"config key 'methods.{key}.t_ref' must be tune_len, train_len or an integer >= 2 (got {t_ref!r})"
        )
    return value


def split_inv_freq(head_dim: int, k: int, low_base: float, high_base: float | None) -> tuple[float, ...]:
    """Pairs n < k: low_base^(-2n/d); pairs n >= k: high_base^(-2n/d), or 0 (no rotation) when None."""
    return tuple(
        low_base ** (-2 * n / head_dim) if n < k else 0.0 if high_base is None else high_base ** (-2 * n / head_dim)
        for n in range(head_dim // 2)
    )


def _split(name: str, base: float, options: dict, head_dim: int | None, orig_base: float | None) -> MethodSpec:
    """The split kind: check its options (errors name `methods.<name>.<option>`), compute its inv_freq."""
    unknown = sorted(set(options) - set(SPLIT_OPTIONS) - {"kind"})
    if unknown:
        raise UserError(f"config key 'methods.{name}.{unknown[0]}' is not an option of kind split; "
                        f"use {', '.join(SPLIT_OPTIONS)}")
    if head_dim is None or orig_base is None:
        raise ValueError("resolving a split method needs head_dim and orig_base")
    k, low_base, high = options["k"], options["low_base"], options["high"]
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k < head_dim // 2:
        raise UserError(f"config key 'methods.{name}.k' must be a rotary pair index, an integer with "
                        f"1 <= k < head_dim/2 = {head_dim // 2} (got {k!r})")
    if low_base == "orig":
        low_base = orig_base
    elif isinstance(low_base, str):  # YAML reads 1e5 (no dot) as a string, as bases may be written
        try:
            low_base = float(low_base)
        except ValueError:
            pass
    if isinstance(low_base, bool) or not isinstance(low_base, numbers.Real) or not 1 < low_base < math.inf:
        raise UserError(f"config key 'methods.{name}.low_base' must be a number > 1 or 'orig' "
                        f"(the model's original base) (got {low_base!r})")
    if high not in SPLIT_HIGH:
        raise UserError(f"config key 'methods.{name}.high' must be rotate or frozen (got {high!r})")
    inv_freq = split_inv_freq(head_dim, int(k), float(low_base), base if high == "rotate" else None)
    return MethodSpec(name, base, {"rope_type": "default", "rope_theta": base}, kind="split", inv_freq=inv_freq)


def _kind_and_options(method: str, options: dict | None) -> tuple[str, dict]:
    """(kind, options with defaults filled in) of a built-in method, a kind, or a `methods:` variant."""
    options = dict(options or {})
    given = options.pop("kind", None)
    if method in NAMES and given not in (None, method):
        raise UserError(f"config key 'methods.{method}.kind': {method} is a built-in method; "
                        "give the variant another name")
    kind = method if method in KINDS and given is None else given
    if kind is None:
        raise UserError(f"unknown method {method!r}: a `methods:` entry that is not one of {', '.join(NAMES)} "
                        f"needs 'kind' (one of {', '.join(KINDS)})")
    if kind not in KINDS:
        raise UserError(f"config key 'methods.{method}.kind' must be one of {', '.join(KINDS)} (got {kind!r})")
    if kind == "split":
        return kind, dict(SPLIT_OPTIONS, **options)
    key = options_key(kind)
    return kind, dict(DEFAULT_OPTIONS[key], **options) if key else options


def resolve(method: str, base: float, *, head_dim: int | None = None, train_len: int | None = None,
            tune_len: int | None = None, orig_base: float | None = None, options: dict | None = None,
            name: str | None = None) -> MethodSpec:
    """The `MethodSpec` of `method` at rotary base `base` (b0 for training-free methods).

    `method` is a built-in method, a kind (`split`), or the name of a `methods:` variant
    whose `options` hold its `kind`. `options` is the method's block of the config
    (defaults filled in); `head_dim`, `train_len`, `tune_len` and `orig_base` (b0) are
    needed by the methods that use them (split: head_dim and orig_base). `name`: the
    variant's name when `method` is its kind (errors name `methods.<name>.<option>`, and
    it is the spec's name); `resolve("split", ..., name="crit")` equals
    `resolve("crit", ..., options={"kind": "split", ...})`.
    """
    if name is not None and name != method:
        method, options = name, {**(options or {}), "kind": method}
    kind, options = _kind_and_options(method, options)
    key = method if method not in NAMES else options_key(kind)  # the config block named in errors
    base = float(base)
    default = {"rope_type": "default", "rope_theta": base}
    if kind == "split":
        return _split(method, base, options, head_dim, orig_base)
    if kind in ("base", "untuned"):
        return MethodSpec(method, base, default, kind=kind)
    if kind in LOGN:
        t_ref = _t_ref(key, options, train_len, tune_len or train_len)
        return MethodSpec(method, base, default, logn_t_ref=t_ref, kind=kind)
    factor = _factor(key, options)
    if kind == "linear":
        return MethodSpec(method, base, {"rope_type": "linear", "rope_theta": base, "factor": factor}, kind=kind)
    if kind == "ntk":
        theta = base * factor ** (head_dim / (head_dim - 2))
        return MethodSpec(method, base, {"rope_type": "default", "rope_theta": theta}, kind=kind)
    if kind == "dynamic_ntk":
        return MethodSpec(method, base, {"rope_type": "dynamic", "rope_theta": base, "factor": factor},
                          max_position_embeddings=train_len, kind=kind)
    beta_fast, beta_slow = float(options["beta_fast"]), float(options["beta_slow"])
    if not beta_fast > beta_slow > 0:
        raise UserError(f"config keys 'methods.{key}.beta_fast' > 'beta_slow' > 0 (got {beta_fast:g}, {beta_slow:g})")
    return MethodSpec(method, base, {
        "rope_type": "yarn", "rope_theta": base, "factor": factor, "beta_fast": beta_fast,
        "beta_slow": beta_slow, "original_max_position_embeddings": train_len,
    }, kind=kind)


def apply_to_config(spec: MethodSpec, config) -> None:
    """Set the method's rotary parameters (and T_train, T_ref where used) on a transformers config."""
    config.rope_parameters = dict(spec.rope_parameters)
    if spec.max_position_embeddings is not None:
        config.max_position_embeddings = spec.max_position_embeddings
    if spec.logn_t_ref is not None:
        config.logn_t_ref = spec.logn_t_ref  # read by the log-scaled attention function


def attention_implementation(spec: MethodSpec, kernel: str) -> str:
    """The `attn_implementation` to load with: the kernel, or its log-scaled wrapper."""
    if spec.logn_t_ref is None:
        return kernel
    if kernel not in LOGN_KERNELS:
        raise UserError(
            f"log-scaled attention (method {spec.name}) wraps sdpa, flash4 or flash_attention_2, not {kernel}; "
            "set evaluation.attn_implementation to one of them (or auto)"
        )
    register_logn_attention()
    return f"logn_{kernel}"


def logn_scale(position_ids, t_ref: int):
    """max(1, ln(p+1) / ln(T_ref)) for 0-based positions p, as float32."""
    import torch

    return torch.clamp(torch.log1p(position_ids.float()) / math.log(t_ref), min=1.0)


def register_logn_attention() -> None:
    """Register `logn_<kernel>` with transformers for each kernel of LOGN_KERNELS registered there (idempotent;
    `ropelaw_fa4` once `ropelaw.flash4.register` has run), with the kernel's mask function where it has one."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    for kernel in LOGN_KERNELS:
        name = f"logn_{kernel}"
        if name in ALL_ATTENTION_FUNCTIONS or kernel not in ALL_ATTENTION_FUNCTIONS:
            continue
        AttentionInterface.register(name, _logn_wrapper(ALL_ATTENTION_FUNCTIONS[kernel]))
        if kernel in ALL_MASK_ATTENTION_FUNCTIONS:
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[kernel])


def _logn_wrapper(kernel):
    def logn_attention(module, query, key, value, attention_mask, **kwargs):
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            raise RuntimeError("log-scaled attention needs position_ids from the decoder layer")
        scale_b1l1 = logn_scale(position_ids, module.config.logn_t_ref)[:, None, :, None]
        return kernel(module, query * scale_b1l1.to(query.dtype), key, value, attention_mask, **kwargs)

    return logn_attention
