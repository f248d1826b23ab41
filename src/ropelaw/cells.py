"""The cell: one (model, method, base, tuning length, seed) point of a study, and everything it owns.

A `Cell` is built from the config by `ropelaw.grid` and is the only producer of a
cell's JSON (`to_json`, read back by `from_json` in `ropelaw evaluate`/`passkey`)
and of its paths: the result folder `results/{model}/{method}/base{β}_len{T}[_seed{s}]`,
the model it evaluates, its evaluation rows, its outputs and its figure names.
`rules/common.smk` looks cells up by their wildcards; `ropelaw cell` prints the
cell behind any output path:

    ropelaw cell --configfile config/config.yaml results/tiny/base/base10_len64/eval.csv
    ropelaw cell --configfile config/config.yaml results/tiny/base/base10_len64 --get model_dir

Imports no torch (Snakemake imports it while it builds the DAG).
"""

from __future__ import annotations

import json
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import PurePosixPath

from ropelaw import UserError, json_object, methods
from ropelaw.paths import CELL_DIR, EVAL_ROWS, LEAF_PATTERN, TRAIN_ROWS, cell_file

UNTUNED = "untuned"
NAME_MAX = 255  # bytes in one file or folder name (ext4, XFS, Lustre, GPFS)
# The identity and geometry columns that lead every row of a cell's result tables.
TABLE_COLUMNS = ("model", "method", "base", "tune_len", "head_dim", "train_len", "orig_base", "eval_set")


def leaf(base: int, tune_len: int, seed: int | None = None) -> str:
    """The last level of a cell's result path: `base{β}_len{T}`, with `_seed{s}` for an explicit seed."""
    return f"base{base}_len{tune_len}" + ("" if seed is None else f"_seed{seed}")


def heatmap_figure(model: str, method: str, base: int, tune_len: int, seed: int | None = None) -> str:
    """The file stem of a cell's passkey heatmap (the workflow's outputs and figures.figure_names share it)."""
    return f"passkey_heatmap_{model}_{method}_{leaf(base, tune_len, seed)}"


def longest_name(model: str, method: str, base: int, tune_len: int, seed: int | None = None) -> str:
    """The longest file name a cell gives: its passkey heatmap's log (the figure's .png/.pdf/.svg are as long)."""
    return heatmap_figure(model, method, base, tune_len, seed) + ".log"


def length_figure(prefix: str, model: str, tune_len: int) -> str:
    """The file stem of a per-(model, T_tune) figure, e.g. `ppl_vs_length_tiny_len64`."""
    return f"{prefix}_{model}_len{tune_len}"


@dataclass(frozen=True)
class Cell:
    """One cell, resolved from the config; equal (and hashed) by its identity alone."""

    model: str
    """Slug of `models` (the first level of the result path)."""
    method: str
    """Built-in method or a variant name of `methods:` (the `{method}` level of the path)."""
    base: int
    """Rotary base β of the path (`base{β}`): the original base for training-free methods."""
    tune_len: int
    """Tuning length T_tune (`len{T}`): T_train for training-free methods."""
    seed: int | None
    """Seed of a `grid[].seeds` list (`_seed{s}` in the path), or None: `finetune.seed`, no suffix."""
    kind: str = field(compare=False)
    """The built-in method the cell resolves as (its own name, or a variant's `kind`)."""
    head_dim: int = field(compare=False)
    """Head dimension d of the model."""
    train_len: int = field(compare=False)
    """Pre-training length T_train."""
    orig_base: float = field(compare=False)
    """The model's original rotary base β₀."""
    eval_set: str = field(compare=False)
    """`data.eval.name`, printed on figures."""
    method_options: dict = field(compare=False)
    """The method's options (`methods.<name>` without `kind`), defaults filled (split's by `methods.resolve`)."""
    eval_lengths: tuple[int, ...] = field(compare=False)
    """Context lengths it is evaluated at (sorted; the longest picks its evaluation rows)."""
    untuned_dir: str = field(compare=False)
    """The model's untuned directory (what training starts from and training-free cells evaluate)."""
    training: dict | None = field(compare=False)
    """Resolved fine-tuning hyper-parameters (`ropelaw finetune --spec`) of a trained cell, else None."""

    def __post_init__(self) -> None:
        if self.kind not in methods.KINDS:
            raise UserError(f"cell {self.path}: kind {self.kind!r} is not a method; choose one of {', '.join(methods.KINDS)}")
        if not self.eval_lengths or list(self.eval_lengths) != sorted(set(self.eval_lengths)):
            raise UserError(f"cell {self.path}: eval_lengths {list(self.eval_lengths)} must be strictly increasing")

    # --- what the cell is -------------------------------------------------------------------
    @property
    def trains(self) -> bool:
        """Fine-tuned by its own `finetune` job (base, and variants of a trained kind)."""
        return self.kind in methods.TRAINED

    @property
    def leaf(self) -> str:
        return leaf(self.base, self.tune_len, self.seed)

    def method_spec(self) -> methods.MethodSpec:
        """What the cell's method does to its model (resolved through its kind)."""
        options = self.method_options if self.method == self.kind else {"kind": self.kind, **self.method_options}
        return methods.resolve(
            self.method, self.base, head_dim=self.head_dim, train_len=self.train_len,
            tune_len=self.tune_len, orig_base=self.orig_base, options=options,
        )

    def columns(self) -> dict:
        """The identity columns of its result tables (`seed` only where the path has one)."""
        row = {key: getattr(self, key) for key in TABLE_COLUMNS}
        return row if self.seed is None else {**row, "seed": self.seed}

    # --- paths --------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        """Its result folder."""
        return CELL_DIR.format(model=self.model, method=self.method, leaf=self.leaf)

    @property
    def tuned_method(self) -> str | None:
        """The method whose fine-tuned model a base_logn cell evaluates at its base, length and seed: `base`, or
        a variant's `tuned` option (a variant of kind base); None for cells of other kinds."""
        if self.kind not in methods.ON_TUNED or self.trains:
            return None
        return str(self.method_options.get("tuned", "base"))

    @property
    def model_dir(self) -> str:
        """The model it evaluates: its own fine-tuned model, its tuned method's, or the untuned model."""
        if self.trains:
            return self.output("model")
        if self.tuned_method:
            return cell_file("model").format(model=self.model, method=self.tuned_method, leaf=self.leaf)
        return self.untuned_dir

    @property
    def checkpoints_dir(self) -> str:
        """Resumable checkpoints of its fine-tune, outside the rule's outputs."""
        return self.output("checkpoints")

    @property
    def eval_rows_dir(self) -> str:
        """Rows of its longest evaluation length: cells with the same longest length share them."""
        return EVAL_ROWS.format(model=self.model, length=self.eval_lengths[-1])

    @property
    def train_rows_dir(self) -> str:
        """Packed training sequences of its tuning length."""
        return TRAIN_ROWS.format(model=self.model, length=self.tune_len)

    def output(self, name: str) -> str:
        """One of its result files: eval.csv, eval.json, passkey.csv, passkey.json."""
        return cell_file(name).format(model=self.model, method=self.method, leaf=self.leaf)

    @property
    def heatmap_figure(self) -> str:
        return heatmap_figure(self.model, self.method, self.base, self.tune_len, self.seed)

    # --- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = asdict(self)
        data["eval_lengths"] = list(self.eval_lengths)
        return data

    def to_json(self) -> str:
        """The cell as one line of JSON (`--cell-json`; what `ropelaw cell` prints)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "--cell-json") -> "Cell":
        """A cell from `to_json`'s text; bad JSON or a missing or mistyped field is one `UserError`."""
        data = json_object(text, source, "pass the text `ropelaw cell --configfile ... PATH` prints")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in fields(cls)]
        missing, unknown = [n for n in names if n not in data], sorted(set(data) - set(names))
        if missing or unknown:
            raise UserError(f"{source}: missing fields {missing}, unknown fields {unknown}; "
                            "pass the text `ropelaw cell --configfile ... PATH` prints")
        for name in names:
            if not _fits(data[name], hints[name]):
                raise UserError(f"{source}: field {name!r} is {data[name]!r}, expected {_type_name(hints[name])}")
        data["eval_lengths"] = tuple(data["eval_lengths"])
        return cls(**data)


def _fits(value, hint) -> bool:
    """Whether a JSON value has the type of a Cell field (an int is a float; a bool is neither)."""
    if isinstance(hint, (types.UnionType,)) or typing.get_origin(hint) is typing.Union:
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint) or hint
    if origin is tuple:
        return isinstance(value, list) and all(_fits(v, int) for v in value)
    if isinstance(value, bool):
        return origin is bool
    if origin is float:
        return isinstance(value, (int, float))
    return isinstance(value, origin)


def _type_name(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def index(cells: list[Cell]) -> dict[tuple[str, str, str], Cell]:
    """Cells by (model, method, leaf): the wildcards of a cell's result path."""
    return {(cell.model, cell.method, cell.leaf): cell for cell in cells}


def lookup(by_key: dict[tuple[str, str, str], Cell], model: str, method: str, leaf_name: str) -> Cell:
    try:
        return by_key[model, method, leaf_name]
    except KeyError:
        raise UserError(f"results/{model}/{method}/{leaf_name} is not a cell of this config; "
                        "`ropelaw check-config` lists its cells") from None


def cell_of_path(cells: list[Cell], path: str) -> Cell:
    """The cell whose result folder holds `path` (any of its outputs, its model, its folder)."""
    parts = PurePosixPath(path).parts
    if len(parts) >= 4 and parts[0] == "results" and re.fullmatch(LEAF_PATTERN, parts[3]):
        return lookup(index(cells), parts[1], parts[2], parts[3])
    raise UserError(f"{path} is not a cell's path; give one under results/MODEL/METHOD/base*_len*/")


def figure_names(cells: list[Cell], passkey: bool) -> list[str]:
    """Every figure's file stem: the law's, one per (model, T_tune) of tuned cells, a heatmap per cell."""
    groups = sorted({(c.model, c.tune_len) for c in cells if c.method != UNTUNED})
    names = ["bound_vs_base", "critical_dimension"]
    names += [length_figure("ppl_vs_length", model, tune_len) for model, tune_len in groups]
    if passkey:
        names += [length_figure("passkey_vs_length", model, tune_len) for model, tune_len in groups]
        names += [cell.heatmap_figure for cell in cells]
    return names


def add_arguments(parser) -> None:
    parser.add_argument("--configfile", required=True, action="append",
                        help="config YAML file (repeat the flag for several, later ones merged over earlier ones)")
    parser.add_argument("path", help="a result path of the cell (its folder, eval.csv, model, ...)")
    parser.add_argument("--get", choices=GETTABLE, default="json",
                        help="print one of the cell's paths instead of its JSON (e.g. model_dir: the model it evaluates)")


GETTABLE = ("json", "path", "model_dir", "eval_rows_dir", "train_rows_dir", "checkpoints_dir")


def run(args) -> None:
    from ropelaw.config import load_configs, resolve

    _, all_cells = resolve(load_configs(args.configfile))
    cell = cell_of_path(all_cells, args.path)
    print(cell.to_json() if args.get == "json" else getattr(cell, args.get))
