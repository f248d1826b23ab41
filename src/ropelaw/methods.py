"""Ways of extending RoPE: one place that says what each method does to a model.

A method name (the `{method}` level of result paths) plus its options from the
config's `methods:` block resolve to a `MethodSpec`:

| method        | model it evaluates          | rotary embedding (transformers `rope_parameters`)         | attention |
|---------------|-----------------------------|-----------------------------------------------------------|-----------|
| `base`        | fine-tuned with base beta   | default, rope_theta = beta (the paper)                    | plain     |
| `base_logn`   | the `base` cell's model     | default, rope_theta = beta                                | log-scaled|
| `untuned`     | untuned                     | default, rope_theta = b0                                  | plain     |
| `linear`      | untuned                     | `linear`: inv_freq / s (position interpolation)           | plain     |
| `ntk`         | untuned                     | default, rope_theta = b0 * s^(d/(d-2)) (static NTK-aware) | plain     |
| `dynamic_ntk` | untuned                     | `dynamic`: theta = b0 * (s*L/T - (s-1))^(d/(d-2)) for L>T | plain     |
| `yarn`        | untuned                     | `yarn`: per-dimension ramp, cos/sin times 0.1 ln s + 1    | plain     |
| `logn`        | untuned                     | default, rope_theta = b0                                  | log-scaled|

T is the model's pre-training length T_train, L the length of the current
sequence, s a method's `factor`. Log-scaled attention multiplies the query at
0-based position p by max(1, ln(p+1) / ln(T_ref)), T_ref being the cell's
tuning length (`t_ref: tune_len`, the default), T_train, or a number; it is an
`AttentionInterface` function wrapping the configured kernel (sdpa or
flash_attention_2), so no model code is patched. Training-free methods'
cells are `results/{model}/{method}/base{b0}_len{T_train}/`.

`expected_inv_freq` recomputes each method's inv_freq in float64 from its
formula, so a model is refused unless the frequencies in effect are the ones
the method asks for. Imports no torch at module level (Snakemake imports
`ropelaw.config`, which imports this module, while it builds the DAG).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ropelaw import UserError

TRAINED = ("base",)
ON_TUNED = ("base", "base_logn")  # evaluate the fine-tuned model of the `base` cell
TRAINING_FREE = ("untuned", "linear", "ntk", "dynamic_ntk", "yarn", "logn")
NAMES = ON_TUNED + TRAINING_FREE
GRID_METHODS = tuple(name for name in NAMES if name != "untuned")  # untuned cells come from evaluation.include_untuned
LOGN = ("logn", "base_logn")
LOGN_KERNELS = ("sdpa", "flash_attention_2")

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
    """The cell's rotary base (the path's `base{...}`): beta for base/base_logn, b0 otherwise."""
    rope_parameters: dict = field(default_factory=dict)
    """transformers v5 `rope_parameters`, set on the config before the model is built."""
    max_position_embeddings: int | None = None
    """Set on the config when the rope type reads it as T_train (dynamic NTK); None leaves it."""
    logn_t_ref: int | None = None
    """T_ref of log-scaled attention, or None for plain attention."""

    @property
    def trains(self) -> bool:
        return self.name in TRAINED

    @property
    def uses_tuned_model(self) -> bool:
        return self.name in ON_TUNED

    @property
    def length_dependent(self) -> bool:
        """The rotation depends on the total length: one forward per evaluated length."""
        return self.rope_parameters["rope_type"] == "dynamic"

    def to_json(self) -> dict:
        return {
            "name": self.name, "base": self.base, "rope_parameters": self.rope_parameters,
            "max_position_embeddings": self.max_position_embeddings, "logn_t_ref": self.logn_t_ref,
        }


def options_key(method: str) -> str | None:
    """The `methods:` config block a method reads (base_logn shares logn's), or None."""
    if method == "base_logn":
        return "logn"
    return method if method in DEFAULT_OPTIONS else None


def _factor(method: str, options: dict) -> float:
    factor = float(options["factor"])
    if not factor >= 1:
        raise UserError(f"config key 'methods.{method}.factor' must be >= 1 (got {factor:g})")
    return factor


def _t_ref(options: dict, train_len: int, tune_len: int) -> int:
    t_ref = options["t_ref"]
    value = {"tune_len": tune_len, "train_len": train_len}.get(t_ref, t_ref)
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise UserError(
            f"config key 'methods.logn.t_ref' must be tune_len, train_len or an integer >= 2 (got {t_ref!r})"
        )
    return value


def resolve(method: str, base: float, *, head_dim: int | None = None, train_len: int | None = None,
            tune_len: int | None = None, options: dict | None = None) -> MethodSpec:
    """The `MethodSpec` of `method` at rotary base `base` (b0 for training-free methods).

    `options` is the method's block of the config (defaults filled in when None);
    `head_dim`, `train_len` and `tune_len` are needed by the methods that use them.
    """
    if method not in NAMES:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(NAMES)}")
    key = options_key(method)
    options = dict(DEFAULT_OPTIONS[key], **(options or {})) if key else {}
    base = float(base)
    default = {"rope_type": "default", "rope_theta": base}
    if method in ("base", "untuned"):
        return MethodSpec(method, base, default)
    if method in LOGN:
        return MethodSpec(method, base, default, logn_t_ref=_t_ref(options, train_len, tune_len or train_len))
    factor = _factor(method, options)
    if method == "linear":
        return MethodSpec(method, base, {"rope_type": "linear", "rope_theta": base, "factor": factor})
    if method == "ntk":
        theta = base * factor ** (head_dim / (head_dim - 2))
        return MethodSpec(method, base, {"rope_type": "default", "rope_theta": theta})
    if method == "dynamic_ntk":
        return MethodSpec(method, base, {"rope_type": "dynamic", "rope_theta": base, "factor": factor},
                          max_position_embeddings=train_len)
    beta_fast, beta_slow = float(options["beta_fast"]), float(options["beta_slow"])
    if not beta_fast > beta_slow > 0:
        raise UserError(f"config keys 'methods.yarn.beta_fast' > 'beta_slow' > 0 (got {beta_fast:g}, {beta_slow:g})")
    return MethodSpec(method, base, {
        "rope_type": "yarn", "rope_theta": base, "factor": factor, "beta_fast": beta_fast,
        "beta_slow": beta_slow, "original_max_position_embeddings": train_len,
    })


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
            f"log-scaled attention (method {spec.name}) wraps {' or '.join(LOGN_KERNELS)}, not {kernel}; "
            "set evaluation.attn_implementation to one of them"
        )
    register_logn_attention()
    return f"logn_{kernel}"


def logn_scale(position_ids, t_ref: int):
    """max(1, ln(p+1) / ln(T_ref)) for 0-based positions p, as float32."""
    import torch

    return torch.clamp(torch.log1p(position_ids.float()) / math.log(t_ref), min=1.0)


def register_logn_attention() -> None:
    """Register `logn_sdpa` and `logn_flash_attention_2` with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    for kernel in LOGN_KERNELS:
        name = f"logn_{kernel}"
        if name in ALL_ATTENTION_FUNCTIONS:
            continue
        AttentionInterface.register(name, _logn_wrapper(ALL_ATTENTION_FUNCTIONS[kernel]))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[kernel])


def _logn_wrapper(kernel):
    def logn_attention(module, query, key, value, attention_mask, **kwargs):
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            raise RuntimeError("log-scaled attention needs position_ids from the decoder layer")
        scale_b1l1 = logn_scale(position_ids, module.config.logn_t_ref)[:, None, :, None]
        return kernel(module, query * scale_b1l1.to(query.dtype), key, value, attention_mask, **kwargs)

    return logn_attention


def expected_inv_freq(spec: MethodSpec, head_dim: int, seq_len: int | None = None):
    """The method's inv_freq (float64), computed here from its formula, not by transformers.

    `seq_len` matters only for dynamic NTK: the frequencies after a forward of that length.
    YaRN follows its reference implementation: the ramp runs over the dimension index
    between the correction dims of beta_fast and beta_slow rotations, rounded outward.
    """
    import torch

    params = spec.rope_parameters
    theta = params["rope_theta"]
    n = torch.arange(head_dim // 2, dtype=torch.float64)
    exponent = 2 * n / head_dim
    if params["rope_type"] == "default":
        return theta ** (-exponent)
    if params["rope_type"] == "linear":
        return theta ** (-exponent) / params["factor"]
    if params["rope_type"] == "dynamic":
        train_len, factor = spec.max_position_embeddings, params["factor"]
        if seq_len is not None and seq_len > train_len:
            theta = theta * (factor * seq_len / train_len - (factor - 1)) ** (head_dim / (head_dim - 2))
        return theta ** (-exponent)
    if params["rope_type"] == "yarn":
        factor, train_len = params["factor"], params["original_max_position_embeddings"]

        def correction_dim(rotations: float) -> float:
            return head_dim * math.log(train_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        low = max(math.floor(correction_dim(params["beta_fast"])), 0)
        high = min(math.ceil(correction_dim(params["beta_slow"])), head_dim - 1)
        if low == high:
            high += 0.001
        ramp = ((n - low) / (high - low)).clamp(0, 1)  # 0: keep the frequency, 1: interpolate it
        return theta ** (-exponent) * (1 - ramp) + theta ** (-exponent) / factor * ramp
    raise ValueError(f"no formula for rope_type {params['rope_type']!r}")


def expected_attention_scaling(spec: MethodSpec) -> float:
    """The factor transformers applies to cos and sin: 0.1 ln s + 1 for YaRN, 1 otherwise."""
    if spec.rope_parameters["rope_type"] == "yarn":
        return 0.1 * math.log(spec.rope_parameters["factor"]) + 1.0
    return 1.0


def check_model(model, spec: MethodSpec, head_dim: int, rtol: float = 1e-5):
    """Raise unless the model's rotary embedding is the method's; return the inv_freq in effect."""
    import torch

    from ropelaw import rope

    actual = rope.inv_freq_in_effect(model)
    expected = expected_inv_freq(spec, head_dim)
    if actual.shape != expected.shape or not torch.allclose(actual, expected, rtol=rtol, atol=0.0):
        raise RuntimeError(
            f"inv_freq in effect does not match method {spec.name} at base {spec.base:g} "
            f"({spec.rope_parameters}); refusing to go on"
        )
    scaling = {float(m.attention_scaling) for m in rope.rotary_modules(model)}
    if not all(math.isclose(s, expected_attention_scaling(spec), rel_tol=1e-6) for s in scaling):
        raise RuntimeError(f"rotary attention scaling {scaling} is not the one of method {spec.name}")
    if getattr(model.config, "logn_t_ref", None) != spec.logn_t_ref:
        raise RuntimeError(f"log-scaled attention T_ref is {model.config.logn_t_ref}, expected {spec.logn_t_ref}")
    return actual
