"""RoPE frequencies: what a method implies, what a model holds, and the one check between them.

`expected_inv_freq(spec, head_dim)` is a method's inv_freq computed here in
float64 from its formula (the paper's theta_n = beta^(-2n/d) for the `base`
method), independently of transformers. `verify_inv_freq(model, spec, head_dim)`
is the only check that a model runs with the frequencies its method asks for;
every load (`models.load_causal_lm`), the scratch init and the end of a
fine-tune call it, and it refuses to go on otherwise.

It tells base b from b+1 (tested for b up to 1e7 and head dims 16 to 128): transformers
computes inv_freq in float32, so the buffers must equal, bit for bit, our recomputation
of its float32 arithmetic (`float32_inv_freq`; for split, the float64 formula rounded
once) as the CPU or the GPU computes it (their pow differs in the last bit, and a module
built under DeepSpeed's zero.Init computes on the GPU); they must agree with the float64
formula to float32 precision (RTOL); and, where float32 rounding is too small to blur
it, they must be nearer (in log) to the float64 frequencies of rope_theta than to those
of rope_theta +- 1 (`_nearer_than_neighbours`). Above 2^24 float32 holds no b+1 apart
from b, so no check on float32 buffers can tell them apart.
An rtol of 1e-5 (the former check) cannot tell 1e6 from 1e6 + 1.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ropelaw.methods import MethodSpec

RTOL = 2e-6  # float32 pow of a float32-rounded exponent: measured <= 4.5e-7 for head dims 16..128, bases <= 1e7
FLOAT32_STEP = 2.0**-23  # one float32 ulp, relative: the scale of transformers' rounding per pair
BUFFERS = ("inv_freq", "original_inv_freq")


def expected_inv_freq(spec: MethodSpec, head_dim: int, seq_len: int | None = None, *,
                      float32_exponents: bool = False) -> torch.Tensor:
    """The method's inv_freq (float64), computed here from its formula, not by transformers.

    `seq_len` matters only for dynamic NTK: the frequencies after a forward of that length.
    YaRN follows its reference implementation: the ramp runs over the dimension index
    between the correction dims of beta_fast and beta_slow rotations, rounded outward.
    `float32_exponents`: use the exponents 2n/d as transformers holds them (float32, not
    exact when d is not a power of two), so that only its pow rounding differs.
    """
    if spec.inv_freq is not None:
        return torch.tensor(spec.inv_freq, dtype=torch.float64)
    params = spec.rope_parameters
    theta = params["rope_theta"]
    n = torch.arange(head_dim // 2, dtype=torch.float64)
    exponent = (2 * n.float() / head_dim).double() if float32_exponents else 2 * n / head_dim
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


def float32_inv_freq(spec: MethodSpec, head_dim: int, device: str | torch.device = "cpu") -> torch.Tensor | None:
    """The float32 buffer (on the CPU) a freshly loaded model must hold bit for bit, computed on
    `device`; None for YaRN (no exact form here).

    default, dynamic (before any long forward) and linear repeat transformers' float32
    arithmetic, `1 / (theta ** (arange(0, d, 2).float() / d))` (then `/ factor`); split is
    the float64 formula rounded to float32, which is what `apply_inv_freq` writes.
    """
    if spec.inv_freq is not None:
        return torch.tensor(spec.inv_freq, dtype=torch.float64).float()
    params = spec.rope_parameters
    if params["rope_type"] not in ("default", "dynamic", "linear"):
        return None
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (params["rope_theta"] ** exponent)
    if params["rope_type"] == "linear":
        inv_freq /= params["factor"]
    return inv_freq.cpu()


def _float32_candidates(model: torch.nn.Module, spec: MethodSpec, head_dim: int) -> list[torch.Tensor]:
    """`float32_inv_freq` as the CPU and as each GPU the model is on (or could have been built on) computes it."""
    devices = {torch.device("cpu")} | {m.inv_freq.device for m in rotary_modules(model)}
    if torch.cuda.is_available():
        devices.add(torch.device("cuda", torch.cuda.current_device()))
    candidates = [float32_inv_freq(spec, head_dim, device) for device in sorted(devices, key=str)]
    return [c for c in candidates if c is not None]


def expected_attention_scaling(spec: MethodSpec) -> float:
    """The factor transformers applies to cos and sin: 0.1 ln s + 1 for YaRN, 1 otherwise."""
    if spec.rope_parameters["rope_type"] == "yarn":
        return 0.1 * math.log(spec.rope_parameters["factor"]) + 1.0
    return 1.0


def rotary_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every rotary-embedding module of a model (those holding an `inv_freq` buffer)."""
    return [m for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)]


def apply_inv_freq(model: torch.nn.Module, spec: MethodSpec) -> None:
    """Write the spec's explicit inv_freq (split) into every rotary module's `inv_freq` and
    `original_inv_freq`, as float32 rounded once from float64, on the buffers' devices."""
    values = torch.tensor(spec.inv_freq, dtype=torch.float64).float()
    modules = rotary_modules(model)
    if not modules:
        raise RuntimeError(f"{type(model).__name__} has no rotary embedding with an inv_freq buffer")
    with torch.no_grad():
        for module in modules:
            for name in BUFFERS:
                buffer = getattr(module, name, None)
                if buffer is not None:
                    if buffer.shape != values.shape:
                        raise RuntimeError(
                            f"{name} has shape {tuple(buffer.shape)}, the method gives {tuple(values.shape)}"
                        )
                    buffer.copy_(values.to(dtype=buffer.dtype, device=buffer.device))


def inv_freq_in_effect(model: torch.nn.Module) -> torch.Tensor:
    """The `inv_freq` the model's attention actually uses (float64, CPU)."""
    modules = rotary_modules(model)
    if not modules:
        raise RuntimeError(f"{type(model).__name__} has no rotary embedding with an inv_freq buffer")
    first = modules[0].inv_freq.detach().double().cpu()
    for other in modules[1:]:
        if not torch.equal(other.inv_freq.detach().double().cpu(), first):
            raise RuntimeError("the model's rotary modules disagree on inv_freq")
    return first


def _buffers_agree(model: torch.nn.Module) -> torch.Tensor:
    """inv_freq in effect, after checking that every module's `original_inv_freq` equals it."""
    actual = inv_freq_in_effect(model)
    for module in rotary_modules(model):
        original = getattr(module, "original_inv_freq", None)
        if original is not None and not torch.equal(original.detach().double().cpu(), actual):
            raise RuntimeError("a rotary module's original_inv_freq differs from its inv_freq; refusing to go on")
    return actual


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest |actual/expected - 1|; where expected is 0 (a frozen pair) actual must be 0 too."""
    zero = expected == 0
    if bool((actual[zero] != 0).any()):
        return math.inf
    return (actual[~zero] / expected[~zero] - 1).abs().max().item() if bool((~zero).any()) else 0.0


def _nearer_than_neighbours(actual: torch.Tensor, spec: MethodSpec, head_dim: int) -> bool:
    """Whether actual is nearer to the float64 frequencies of rope_theta than to rope_theta +- 1.

    Distances are in log frequency, pair by pair in units of the float32 rounding that
    transformers' arithmetic may leave there: 4 steps for pow and the reciprocal (CUDA's
    powf is within 4), plus ln(theta) times the exponent's own rounding where 2n/d is not
    exact in float32 (CPU and GPU round that division differently). Decided only where
    theta and theta +- 1 lie more than 8 such units apart (theta up to about 1.2e6 at
    d = 128, 4e5 at d = 16); above, the bit-exact comparison alone tells them apart.
    True where undecidable.
    """
    theta = spec.rope_parameters["rope_theta"]
    x = 2 * torch.arange(head_dim // 2, dtype=torch.float64) / head_dim
    inexact = ((2 * torch.arange(head_dim // 2).float() / head_dim).double() != x).double()
    unit = FLOAT32_STEP * (4 + inexact * x * math.log(theta))

    def log_freq(value: float) -> torch.Tensor:
        other = replace(spec, rope_parameters=dict(spec.rope_parameters, rope_theta=value))
        return expected_inv_freq(other, head_dim, float32_exponents=True).log()

    own, lower, upper = log_freq(theta), log_freq(theta - 1), log_freq(theta + 1)
    if min(((own - lower) / unit).norm(), ((own - upper) / unit).norm()).item() <= 8:
        return True
    distance = [((actual.log() - ref) / unit).square().sum().item() for ref in (own, lower, upper)]
    return distance[0] < min(distance[1:])


def verify_inv_freq(model: torch.nn.Module, spec: MethodSpec, head_dim: int) -> torch.Tensor:
    """Raise unless the model's rotary embedding is the method's; return the inv_freq in effect (float64).

    Checks every rotary module (inv_freq and original_inv_freq), the attention scaling
    of cos/sin and the log-scaled attention T_ref (see the module docstring for the frequencies).
    """
    actual = _buffers_agree(model)
    what = f"method {spec.name} at base {spec.base:g} ({spec.rope_parameters}, head_dim {head_dim})"
    expected = expected_inv_freq(spec, head_dim)
    if actual.shape != expected.shape:
        raise RuntimeError(f"inv_freq in effect has {actual.numel()} pairs, {what} has {expected.numel()}")
    worst = _relative_error(actual, expected)
    if not worst <= RTOL:
        raise RuntimeError(
            f"inv_freq in effect does not match {what}: max relative error {worst:.3g}; refusing to go on"
        )
    exact = _float32_candidates(model, spec, head_dim)
    if exact and not any(torch.equal(actual.float(), candidate) for candidate in exact):
        raise RuntimeError(f"inv_freq in effect is not bit-identical to the float32 frequencies of {what}; "
                           "refusing to go on")
    theta = spec.rope_parameters["rope_theta"]
    if spec.inv_freq is None and not _nearer_than_neighbours(actual, spec, head_dim):
        raise RuntimeError(
            f"inv_freq in effect is nearer to rope_theta {theta:g} +- 1 than to {what}; refusing to go on"
        )
    scaling = {float(m.attention_scaling) for m in rotary_modules(model)}
    if not all(math.isclose(s, expected_attention_scaling(spec), rel_tol=1e-6) for s in scaling):
        raise RuntimeError(f"rotary attention scaling {scaling} is not the one of method {spec.name}")
    if getattr(model.config, "logn_t_ref", None) != spec.logn_t_ref:
        raise RuntimeError(f"log-scaled attention T_ref is {model.config.logn_t_ref}, expected {spec.logn_t_ref}")
    return actual


def inv_freq_digest(inv_freq: torch.Tensor) -> str:
    """sha256 of the float32 bytes of inv_freq: a short fingerprint for manifests."""
    return hashlib.sha256(inv_freq.to(torch.float32).contiguous().numpy().tobytes()).hexdigest()


def rope_parameters(base: float, rope_type: str = "default", **extra) -> dict:
    """A transformers v5 `rope_parameters` dict."""
    return {"rope_type": rope_type, "rope_theta": float(base), **extra}
