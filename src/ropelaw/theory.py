"""The periodicity theory of Liu et al. (ICLR 2024), for any original rope base.

Pure math on (head dim d, pre-training length T, tuning length T', original
base b0); the paper's formulas are the special case b0 = 10000
(see shared/paper/NOTES.md §2.2-2.6). Imports no numpy or torch, because
Snakemake imports this module while it builds the DAG (`resolve_base`).
From the shell: `ropelaw predict --help` (src/ropelaw/theory_cli.py).

T' < T is allowed although Theorem 3 assumes T' >= T; it gives beta0 < b0.

The regime of a base is decided against the exact (unrounded) beta0: beta > beta0
is the larger-base law (Eq. 16b), beta <= beta0 the smaller-base one (Eq. 16c), so a
cell exactly at beta0 belongs to 16c (T_extra = T' there, where the two laws meet).
Result paths hold integer bases: `beta0` in a config resolves to floor(beta0), the
largest integer base not above beta0, so a `beta0` cell is always on the 16c side
(SmolLM2 at T' = 16K: beta0 = 304,201.7, path base304201 "smaller"; a configured
304202 is "larger"). beta1..beta3 and `original` round to the nearest integer.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

from ropelaw import UserError

SYMBOLIC_BASES = ("beta0", "beta1", "beta2", "beta3", "original")


def _check(head_dim: int, train_len: float, orig_base: float) -> None:
    _check_head_dim(head_dim)
    _check_len("train_len", train_len)
    _check_base("orig_base", orig_base)


def _check_head_dim(head_dim: int) -> None:
    if isinstance(head_dim, bool) or not isinstance(head_dim, numbers.Integral) or head_dim <= 0 or head_dim % 2:
        raise UserError(f"head_dim must be a positive even integer: got {head_dim!r}")


def _check_len(name: str, length: float) -> None:
    if not (length > 2 * math.pi and math.isfinite(length)):
        raise UserError(f"{name} must be a finite length > 2*pi (a few tokens at least): got {length}")


def _check_base(name: str, base: float) -> None:
    if not (base > 1 and math.isfinite(base)):
        raise UserError(f"{name} must be > 1: got {base}")


def _even_ceil(head_dim: int, log_value: float) -> int:
    """2*ceil((d/2)*log_value), clipped to [0, d]."""
    return min(head_dim, max(0, 2 * math.ceil(head_dim / 2 * log_value)))


def critical_dim(head_dim: int, train_len: float, orig_base: float) -> int:
    """d_extra = 2*ceil((d/2)*log_b0(T/2pi)): dims whose period fits in T (Eq. 13)."""
    _check(head_dim, train_len, orig_base)
    return _even_ceil(head_dim, math.log(train_len / (2 * math.pi)) / math.log(orig_base))


def critical_base(train_len: float, tune_len: float, orig_base: float) -> float:
    """beta0 = b0^{log_{T/2pi}(T'/2pi)} (Eq. 16a); equals b0 when T' = T."""
    _check_len("train_len", train_len)
    _check_len("tune_len", tune_len)
    _check_base("orig_base", orig_base)
    exponent = math.log(tune_len / (2 * math.pi)) / math.log(train_len / (2 * math.pi))
    return orig_base**exponent


def thresholds(tune_len: float) -> tuple[float, float, float]:
    """(beta1, beta2, beta3) = (2T'/pi, T'/pi, T'/2pi) of the smaller-base law (Eq. 16d)."""
    _check_len("tune_len", tune_len)
    return 2 * tune_len / math.pi, tune_len / math.pi, tune_len / (2 * math.pi)


def t_extra(base: float, head_dim: int, train_len: float, orig_base: float) -> float:
    """T_extra = 2pi*beta^{d_extra/d}: the bound of the larger-base law (Eq. 16b)."""
    _check_base("base", base)
    return 2 * math.pi * base ** (critical_dim(head_dim, train_len, orig_base) / head_dim)


def critical_dim_prime(base: float, head_dim: int, tune_len: float) -> int:
    """d'_extra = 2*ceil((d/2)*log_beta(T'/2pi)): the critical dim for beta <= beta0 (Eq. 16c)."""
    _check_head_dim(head_dim)
    _check_len("tune_len", tune_len)
    _check_base("base", base)
    return _even_ceil(head_dim, math.log(tune_len / (2 * math.pi)) / math.log(base))


def min_base_for_length(target_len: float, head_dim: int, train_len: float, orig_base: float) -> float:
    """Smallest beta with t_extra(beta) >= target_len: (target/2pi)^{d/d_extra}.

    The exact inverse of `t_extra` (ceiling included). It is smaller than the
    paper's form (`min_base_for_length_paper`), because the ceiling in d_extra
    makes the forward formula optimistic: 92/128 = 0.71875 vs 0.70354 for LLaMA2.
    """
    _check_len("target_len", target_len)
    d_extra = critical_dim(head_dim, train_len, orig_base)
    try:
        return (target_len / (2 * math.pi)) ** (head_dim / d_extra)
    except OverflowError:
        raise UserError(f"target_len {target_len:g} needs a base beyond the largest float; give a shorter length") from None


def min_base_for_length_paper(target_len: float, train_len: float, orig_base: float) -> float:
    """The paper's ceiling-free inverse b0^{log_{T/2pi}(target/2pi)}: 1e5 -> 9.4e5 for LLaMA2."""
    return critical_base(train_len, target_len, orig_base)


def periods(head_dim: int, base: float) -> list[float]:
    """T_n = 2pi*beta^{2n/d} for the rotation pairs n = 0 .. d/2-1."""
    _check_base("base", base)
    _check_head_dim(head_dim)
    return [2 * math.pi * base ** (2 * n / head_dim) for n in range(head_dim // 2)]


def regime(base: float, train_len: float, tune_len: float, orig_base: float) -> str:
    """"larger" (bound T_extra) if beta > beta0, else "smaller" (bound >= T').

    beta0 is the exact float, never rounded: beta = beta0 is "smaller" (Eq. 16c).
    """
    _check_base("base", base)
    return "larger" if base > critical_base(train_len, tune_len, orig_base) else "smaller"


def resolve_base(spec: float | str, head_dim: int, train_len: float, tune_len: float, orig_base: float) -> int:
    """A config base (a number, or beta0..beta3/original) as the integer used in result paths.

    `beta0` gives floor(beta0), so its cell sits at or just below the exact beta0 and
    `regime` puts it in the smaller-base law (16c); the others round to nearest.
    """
    if isinstance(spec, str) and spec not in SYMBOLIC_BASES:
        try:
            spec = float(spec)
        except ValueError:
            raise UserError(
                f"unknown base {spec!r}: give a number > 1 or one of {', '.join(SYMBOLIC_BASES)}"
            ) from None
    if spec == "original":
        value = orig_base
    elif spec == "beta0":
        value = math.floor(critical_base(train_len, tune_len, orig_base))
    elif isinstance(spec, str):
        value = thresholds(tune_len)[int(spec[-1]) - 1]
    elif isinstance(spec, bool) or not isinstance(spec, (int, float)):
        raise UserError(f"base must be a number or one of {', '.join(SYMBOLIC_BASES)}: got {spec!r}")
    else:
        value = spec
    _check_base("base", value)
    if not isinstance(spec, str) and value != round(value):
        raise UserError(f"base {spec!r} is not a whole number; bases are integers (it would train and be named as "
                        f"base{round(value)}): give {round(value)}")
    if round(value) < 2:
        raise UserError(f"base {spec!r} rounds to {round(value)}; bases are integers, give one >= 2")
    return round(value)


def predict(
    head_dim: int,
    train_len: int,
    orig_base: float,
    tune_len: int | None = None,
    bases: tuple[float, ...] | list[float] = (),
    target_lens: tuple[float, ...] | list[float] = (),
) -> dict:
    """Every prediction of the theory as a JSON-able dict (see `ropelaw predict`).

    Per base, "d_extra_prime" is the critical dimension in effect: d'_extra
    when beta <= beta0, d_extra when beta > beta0 (then "t_extra" is the bound).
    """
    tune_len = train_len if tune_len is None else tune_len
    d_extra = critical_dim(head_dim, train_len, orig_base)
    beta1, beta2, beta3 = thresholds(tune_len)
    rows = []
    for base in bases:
        larger = regime(base, train_len, tune_len, orig_base) == "larger"
        rows.append({
            "base": base,
            "t_extra": t_extra(base, head_dim, train_len, orig_base) if larger else None,
            "d_extra_prime": d_extra if larger else critical_dim_prime(base, head_dim, tune_len),
            "regime": "larger" if larger else "smaller",
        })
    targets = [
        {
            "target_len": target,
            "min_base": min_base_for_length(target, head_dim, train_len, orig_base),
            "min_base_paper": min_base_for_length_paper(target, train_len, orig_base),
        }
        for target in target_lens
    ]
    return {
        "head_dim": head_dim, "train_len": train_len, "orig_base": orig_base, "tune_len": tune_len,
        "d_extra": d_extra, "beta0": critical_base(train_len, tune_len, orig_base),
        "beta1": beta1, "beta2": beta2, "beta3": beta3, "bases": rows, "targets": targets,
    }


def model_geometry(config_path: str | Path, fix: str = "give the value on the command line") -> tuple[int, int, float]:
    """(head_dim, train_len, orig_base) from a Hugging Face config.json; `fix` ends a refusal (after "fix the file or")."""
    path = Path(config_path)
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read model config {path}: {err}") from None

    if not isinstance(config, dict):
        raise UserError(f"{path} holds a JSON {type(config).__name__}, not a model config object; "
                        "point at the model's config.json")

    def need(key: str, where: dict = config, shown: str = "", whole: bool = False):
        value = where.get(key) if isinstance(where, dict) else None
        if value is None:
            raise UserError(f"{path}: missing key {shown or repr(key)}; {fix}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise UserError(f"{path}: {shown or repr(key)} is {value!r}, not a positive number; fix the file or {fix}")
        if whole and value != int(value):
            raise UserError(f"{path}: {shown or repr(key)} is {value!r}, not a whole number; fix the file or {fix}")
        return value

    if config.get("head_dim"):
        head_dim = need("head_dim", whole=True)
    else:
        head_dim = need("hidden_size", whole=True) // need("num_attention_heads", whole=True)
    if config.get("rope_theta") is not None:
        orig_base = need("rope_theta")
    else:  # transformers v5 nests the base in rope_parameters
        orig_base = need("rope_theta", config.get("rope_parameters") or {}, "'rope_theta' (or 'rope_parameters.rope_theta')")
    return int(head_dim), int(need("max_position_embeddings", whole=True)), float(orig_base)
