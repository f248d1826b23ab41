"""`ropelaw predict`: print the theory's predictions for one model geometry.

    ropelaw predict --head-dim 128 --train-len 4096 --rope-base 10000 \\
        --tune-len 16384 --base 500 1e6 beta0 --target-len 100000
    ropelaw predict --model-config path/config.json --base 500 --format json

The math lives in `ropelaw.theory`; this module only parses and prints.
"""

from __future__ import annotations

import argparse
import json

from ropelaw import UserError
from ropelaw import theory


def _number(text: str) -> int | float:
    """1e6 -> 1000000, 4096 -> 4096, 0.5 -> 0.5 (for argparse)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    return int(value) if value.is_integer() else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    geometry = parser.add_argument_group("model geometry (flags override --model-config)")
    geometry.add_argument("--model-config", metavar="PATH",
                          help="a Hugging Face config.json to read the three values below from")
    geometry.add_argument("--head-dim", type=int, help="attention head dimension d")
    geometry.add_argument("--train-len", type=_number, help="pre-training context length T_train")
    geometry.add_argument("--rope-base", type=_number, help="original (pre-training) rope base b0")
    parser.add_argument("--tune-len", type=_number, help="fine-tuning length T_tune (default: T_train)")
    parser.add_argument("--base", action="extend", nargs="+", default=[], metavar="B",
                        help="a tuned base: a number (500000, 1e6) or one of "
                             f"{', '.join(theory.SYMBOLIC_BASES)}; several after one flag, or the flag repeated")
    parser.add_argument("--target-len", action="extend", nargs="+", default=[], type=_number, metavar="L",
                        help="a wanted extrapolation bound; both minimal bases are reported: "
                             "min_base inverts T_extra exactly (ceiling in d_extra), "
                             "min_base_paper is the paper's ceiling-free formula (larger); several, or repeated")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="table (default): aligned text; json: the dict of ropelaw.theory.predict")


def _geometry(args: argparse.Namespace) -> tuple[int, int | float, int | float]:
    read = theory.model_geometry(args.model_config) if args.model_config else (None, None, None)
    values = [flag if flag is not None else got
              for flag, got in zip((args.head_dim, args.train_len, args.rope_base), read)]
    for value, flag in zip(values, ("--head-dim", "--train-len", "--rope-base")):
        if value is None:
            raise UserError(f"{flag} is required (or give --model-config path/config.json)")
    return values[0], values[1], values[2]


def _fmt(value: float | None) -> str:
    if value is None:
        return "none (smaller base)"
    return str(value) if isinstance(value, int) else f"{value:.1f}"


def _table(result: dict) -> str:
    lines = [f"{key:<10} {_fmt(result[key])}" for key in
             ("head_dim", "train_len", "orig_base", "tune_len", "d_extra", "beta0", "beta1", "beta2", "beta3")]
    if result["bases"]:
        lines += ["", f"{'base':>12}  {'regime':<8} {'T_extra':>20}  d'_extra"]
        lines += [f"{_fmt(row['base']):>12}  {row['regime']:<8} {_fmt(row['t_extra']):>20}  {row['d_extra_prime']}"
                  for row in result["bases"]]
    if result["targets"]:
        lines += ["", f"{'target_len':>12}  {'min_base':>14}  {'min_base_paper':>14}"]
        lines += [f"{_fmt(row['target_len']):>12}  {_fmt(row['min_base']):>14}  {_fmt(row['min_base_paper']):>14}"
                  for row in result["targets"]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    head_dim, train_len, orig_base = _geometry(args)
    tune_len = train_len if args.tune_len is None else args.tune_len
    bases = [theory.resolve_base(spec, head_dim, train_len, tune_len, orig_base) for spec in args.base]
    result = theory.predict(head_dim, train_len, orig_base, tune_len, bases, args.target_len)
    print(json.dumps(result, indent=2) if args.format == "json" else _table(result))
