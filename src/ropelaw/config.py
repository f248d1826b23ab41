"""The workflow config: validation, defaults, and the grid of cells.

`resolve(raw)` checks a config against `schemas/config.schema.yaml` (unknown
keys rejected, defaults filled), then checks what a schema cannot (models named
by the grid exist, bases > 1, lengths consistent, files present) and expands
the grid into `Cell`s. Every problem is a `UserError` of one line naming the
key and the fix, raised at DAG-build time before any heavy work. A cell is
evaluated at `eval_lengths(cfg, cell)`: its grid blocks' `eval_lengths`, or
`evaluation.lengths` for a block without them.

Snakemake imports this module on every run, so it imports no torch.

    ropelaw check-config --configfile config/config.yaml   # print the resolved config
"""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ropelaw import UserError, methods, sources, theory

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"
EMBEDDED_DIR = "resources/embedded"  # shards below it are built by the workflow (rule fetch_embedded)
UNTUNED = "untuned"


@dataclass(frozen=True)
class Geometry:
    """What the theory needs to know of a model."""

    head_dim: int
    train_len: int
    orig_base: float


@dataclass(frozen=True)
class Cell:
    """One (model, method, base, tuning length) cell of the grid; method 'untuned' is the model as is.

    Training-free methods (linear, ntk, dynamic_ntk, yarn, logn) evaluate the untuned
    model, so their cell is at the original base and T_train, like the untuned cell.
    """

    model: str
    method: str
    base: int
    tune_len: int

    @property
    def path(self) -> str:
        return f"results/{self.model}/{self.method}/base{self.base}_len{self.tune_len}"


@cache
def load_schema(path: str = str(SCHEMA_PATH)) -> dict:
    with open(path) as fh:  # libyaml's loader when there is one: every Snakemake start reads this
        return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    with open(path) as fh:
        return yaml.safe_load(fh) or {}


def _key(path) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in path]
    return "".join(parts).lstrip(".") or "(top level)"


def _schema_error(err: jsonschema.ValidationError) -> UserError:
    key = _key(err.absolute_path)
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        unknown = sorted(set(err.instance) - set(allowed))
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, allowed, n=1)
            hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        where = "" if key == "(top level)" else f" under '{key}'"
        return UserError(
            f"unknown config key {', '.join(hints)}{where}; allowed keys: {', '.join(allowed)}"
        )
    if err.validator == "required":
        return UserError(f"config key '{key}' is missing a required entry: {err.message}")
    return UserError(f"config key '{key}': {err.message}")


def _resolve_ref(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        target = schema
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _fill_defaults(schema: dict, node: dict, value: Any) -> Any:
    node = _resolve_ref(schema, node)
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [_fill_defaults(schema, node["items"], item) for item in value]
    if not isinstance(value, dict):
        return value
    for name, sub in node.get("properties", {}).items():
        sub_resolved = _resolve_ref(schema, sub)
        if name not in value:
            if "default" in sub_resolved:
                value[name] = copy.deepcopy(sub_resolved["default"])
            elif sub_resolved.get("type") == "object" and name not in node.get("required", []):
                value[name] = {}
            else:
                continue
        value[name] = _fill_defaults(schema, sub_resolved, value[name])
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for name in value:
            if name not in node.get("properties", {}):
                value[name] = _fill_defaults(schema, extra, value[name])
    return value


def validate(raw: dict, schema: dict | None = None) -> dict:
    """Schema-check `raw` and return a copy with every default filled in."""
    schema = schema or load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(raw), key=lambda e: (len(e.absolute_path), str(e.path)))
    if errors:
        raise _schema_error(errors[0])
    cfg = copy.deepcopy(raw)
    # Override blocks keep only what the user set: defaults come from the global block.
    overrides = {
        "models": {m: copy.deepcopy(spec.get("finetune", {})) for m, spec in raw["models"].items()},
        "grid": [copy.deepcopy(block.get("finetune", {})) for block in raw["grid"]],
    }
    cfg = _fill_defaults(schema, schema, cfg)
    for name, spec in cfg["models"].items():
        spec["finetune"] = overrides["models"][name]
    for block, override in zip(cfg["grid"], overrides["grid"]):
        block["finetune"] = override
    return cfg


@cache
def _read_geometry(model: str, source: str, path: str | None, package: str | None,
                   hub_id: str | None, revision: str | None) -> tuple[int, int, float]:
    """(head_dim, T_train, b0) as the model's own files give them (cached: GGUF and hub reads)."""
    spec, key = {"path": path, "package": package, "id": hub_id, "revision": revision}, f"models.{model}"
    if source == "gguf":
        return sources.gguf_geometry(sources.locate_gguf(spec, key))
    if source == "hub":
        return theory.model_geometry(sources.hub_config(spec, key))
    return theory.model_geometry(Path(path) / "config.json")


def geometry(cfg: dict, model: str) -> Geometry:
    """head_dim, T_train and original base of a config model (config values override the model's)."""
    spec = cfg["models"][model]
    if spec["source"] == "scratch":
        for key in ("train_len", "rope_base"):
            if spec[key] is None:
                raise UserError(f"config key 'models.{model}.{key}' is required for a scratch model")
        return Geometry(spec["architecture"]["head_dim"], spec["train_len"], float(spec["rope_base"]))
    if all(spec[key] is not None for key in ("head_dim", "train_len", "rope_base")):
        return Geometry(spec["head_dim"], spec["train_len"], float(spec["rope_base"]))
    head_dim, train_len, orig_base = _read_geometry(
        model, spec["source"], spec["path"], spec["package"], spec["id"], spec["revision"]
    )
    return Geometry(
        head_dim,
        spec["train_len"] or train_len,
        float(spec["rope_base"] or orig_base),
    )


def training_args(cfg: dict, cell: Cell) -> dict:
    """Resolved fine-tuning hyper-parameters of a cell: global, then model, then grid block."""
    args = dict(cfg["finetune"])
    args.update(cfg["models"][cell.model]["finetune"])
    for block in cfg["grid"]:
        if _block_has(cfg, block, cell):
            args.update(block["finetune"])
    return args


def _block_has(cfg: dict, block: dict, cell: Cell) -> bool:
    """Whether a grid block produces `cell` (two blocks may share a model and a tuning length)."""
    if (block["model"], block["method"]) != (cell.model, cell.method):
        return False
    if cell.method in methods.TRAINING_FREE:
        return True  # a training-free block has one cell: the untuned model's geometry
    if cell.tune_len not in block.get("tune_lengths", []):
        return False
    geo = geometry(cfg, cell.model)
    return any(
        theory.resolve_base(spec, geo.head_dim, geo.train_len, cell.tune_len, geo.orig_base) == cell.base
        for spec in block.get("bases", [])
    )


def _eval_length_sources(cfg: dict, cell: Cell) -> dict[str, list[int]]:
    """The config keys that give a cell its evaluation lengths, with their lists.

    Every grid block that produces the cell contributes its `eval_lengths`, or
    `evaluation.lengths` when it has none; the untuned cell (no block) takes `evaluation.lengths`.
    """
    sources = {}
    if cell.method != UNTUNED:
        for i, block in enumerate(cfg["grid"]):
            if _block_has(cfg, block, cell):
                if "eval_lengths" in block:
                    sources[f"grid[{i}].eval_lengths"] = block["eval_lengths"]
                else:
                    sources["evaluation.lengths"] = cfg["evaluation"]["lengths"]
    return sources or {"evaluation.lengths": cfg["evaluation"]["lengths"]}


def eval_lengths(cfg: dict, cell: Cell) -> list[int]:
    """The context lengths a cell is evaluated at: the sorted union over the blocks that produce it."""
    return sorted(set().union(*_eval_length_sources(cfg, cell).values()))


def passkey_args(cfg: dict, cell: Cell) -> dict:
    """A cell's passkey block as `ropelaw passkey --spec` takes it: lengths resolved, `enabled` left out.

    `passkey.lengths: null` means the cell's own evaluation lengths (`eval_lengths`).
    """
    args = {key: value for key, value in cfg["passkey"].items() if key != "enabled"}
    if args["lengths"] is None:
        args["lengths"] = eval_lengths(cfg, cell)
    return args


def method_options(cfg: dict, method: str) -> dict:
    """The `methods:` block a method reads ({} for base and untuned)."""
    key = methods.options_key(method)
    return dict(cfg["methods"][key]) if key else {}


def method_spec(cfg: dict, cell: Cell) -> methods.MethodSpec:
    """What a cell's method does to its model (see ropelaw.methods)."""
    geo = geometry(cfg, cell.model)
    return methods.resolve(
        cell.method, cell.base, head_dim=geo.head_dim, train_len=geo.train_len,
        tune_len=cell.tune_len, options=method_options(cfg, cell.method),
    )


def cells(cfg: dict) -> list[Cell]:
    """Every cell of the grid, untuned cells first, without duplicates, in config order."""
    out: list[Cell] = []
    if cfg["evaluation"]["include_untuned"]:
        for model in dict.fromkeys(block["model"] for block in cfg["grid"]):
            geo = geometry(cfg, model)
            out.append(Cell(model, UNTUNED, round(geo.orig_base), geo.train_len))
    for i, block in enumerate(cfg["grid"]):
        geo = geometry(cfg, block["model"])
        method = block["method"]
        given = [k for k in ("tune_lengths", "bases") if block.get(k)] + (["finetune"] if block["finetune"] else [])
        if method in methods.TRAINING_FREE:
            if given:
                raise UserError(
                    f"config key 'grid[{i}]': method {method} is training-free (it evaluates the untuned "
                    f"model at base{round(geo.orig_base)}_len{geo.train_len}); remove {', '.join(given)}"
                )
            out.append(Cell(block["model"], method, round(geo.orig_base), geo.train_len))
            continue
        for key in ("tune_lengths", "bases"):
            if not block.get(key):
                raise UserError(f"config key 'grid[{i}].{key}' is required for method {method}")
        if method == "base_logn" and block["finetune"]:
            raise UserError(
                f"config key 'grid[{i}].finetune': method base_logn trains nothing (it evaluates the "
                "`base` cell's model with log-scaled attention); put the overrides on the base block"
            )
        for tune_len in block["tune_lengths"]:
            for j, spec in enumerate(block["bases"]):
                try:
                    base = theory.resolve_base(spec, geo.head_dim, geo.train_len, tune_len, geo.orig_base)
                except UserError as err:
                    raise UserError(f"config key 'grid[{i}].bases[{j}]': {err}") from None
                out.append(Cell(block["model"], method, base, tune_len))
    out = list(dict.fromkeys(out))
    for cell in out:
        if cell.method == "base_logn" and Cell(cell.model, "base", cell.base, cell.tune_len) not in out:
            raise UserError(
                f"cell {cell.path} evaluates the fine-tuned model of results/{cell.model}/base/"
                f"base{cell.base}_len{cell.tune_len}; add base {cell.base} at tune length "
                f"{cell.tune_len} to a `method: base` block of 'grid'"
            )
    return out


def _check_files(cfg: dict, data: bool = True) -> None:
    for split in ("train", "eval") if data else ():
        for k, shard in enumerate(cfg["data"][split]["shards"]):
            if not shard.startswith(EMBEDDED_DIR + "/") and not Path(shard).is_file():
                raise UserError(
                    f"config key 'data.{split}.shards[{k}]': file {shard} does not exist; "
                    "fix the path (Pile-format .jsonl or .jsonl.zst)"
                )
    for name, spec in cfg["models"].items():
        allowed = {"scratch": set(), "hf_dir": {"path", "head_dim"}, "hub": {"id", "revision", "head_dim"},
                   "gguf": {"path", "package", "head_dim"}}
        stray = sorted(
            k for k in ("path", "package", "id", "revision", "head_dim") if spec[k] and k not in allowed[spec["source"]]
        )
        if stray:
            raise UserError(
                f"config key 'models.{name}.{stray[0]}' means nothing for source {spec['source']}; remove it"
            )
        if spec["source"] == "gguf":
            sources.locate_gguf(spec, f"models.{name}")
        elif spec["source"] == "hub" and not spec["id"]:
            raise UserError(f"config key 'models.{name}.id' is required for source hub (e.g. HuggingFaceTB/SmolLM2-135M)")
        elif spec["source"] == "hf_dir":
            if not spec["path"]:
                raise UserError(f"config key 'models.{name}.path' is required for source hf_dir")
            if not (Path(spec["path"]) / "config.json").is_file():
                raise UserError(
                    f"config key 'models.{name}.path': {spec['path']} has no config.json; "
                    "point it at a Hugging Face model directory"
                )
        elif spec["source"] == "scratch" and spec["architecture"]["hidden_size"] % spec["architecture"]["num_heads"]:
            raise UserError(f"config key 'models.{name}.architecture.hidden_size' must be divisible by num_heads")


def _require_increasing(key: str, lengths: list[int]) -> None:
    if lengths != sorted(set(lengths)):
        raise UserError(
            f"config key '{key}' must be strictly increasing, without repeats (got {lengths}); sort it and drop the repeats"
        )


def _check_grid(cfg: dict, all_cells: list[Cell]) -> None:
    _require_increasing("evaluation.lengths", cfg["evaluation"]["lengths"])
    for i, block in enumerate(cfg["grid"]):
        if "eval_lengths" in block:
            _require_increasing(f"grid[{i}].eval_lengths", block["eval_lengths"])
    for cell in all_cells:
        method_spec(cfg, cell)  # bad method options fail here, at DAG-build time
        args = training_args(cfg, cell)
        multiple = args["length_multiple"]
        if cell.method in methods.TRAINED and cell.tune_len % multiple:
            raise UserError(
                f"tuning length {cell.tune_len} of model '{cell.model}' is not a multiple of "
                f"finetune.length_multiple = {multiple}; change 'grid[].tune_lengths' or the multiple"
            )
        if args["global_batch_size"] % args["micro_batch_size"]:
            raise UserError(
                f"finetune.global_batch_size = {args['global_batch_size']} is not a multiple of "
                f"finetune.micro_batch_size = {args['micro_batch_size']} (cell {cell.path})"
            )
        cell_lengths = eval_lengths(cfg, cell)
        if not any(length <= cell.tune_len for length in cell_lengths):
            keys = list(_eval_length_sources(cfg, cell))
            raise UserError(
                f"config key{'s' * (len(keys) > 1)} {' and '.join(repr(k) for k in keys)}: {cell.path} is evaluated "
                f"at {cell_lengths}, without a length <= {cell.tune_len} (its tuning length); add one: "
                "the law compares perplexity with its value there"
            )
        if args["deepspeed"] and not Path(args["deepspeed"]).is_file():
            raise UserError(f"finetune.deepspeed: file {args['deepspeed']} does not exist")


def _check_passkey(cfg: dict, all_cells: list[Cell]) -> None:
    lengths = cfg["passkey"]["lengths"]
    if lengths is not None:
        _require_increasing("passkey.lengths", lengths)
        for cell in all_cells:  # every cell's filler comes from its own evaluation rows
            longest = max(eval_lengths(cfg, cell))
            if lengths[-1] > longest:
                keys = " and ".join(_eval_length_sources(cfg, cell))
                raise UserError(
                    f"config key 'passkey.lengths': {lengths[-1]} exceeds the longest of {keys} ({longest}), "
                    f"the length of the evaluation rows of {cell.path} that the filler comes from; "
                    "lower it, or leave passkey.lengths null (every cell's own evaluation lengths)"
                )
    if len(set(cfg["passkey"]["depths"])) != len(cfg["passkey"]["depths"]):
        raise UserError("config key 'passkey.depths' has repeats; list each depth once")


def resolve(raw: dict, check_data: bool = True) -> tuple[dict, list[Cell]]:
    """Validate a raw config; return it with defaults filled, and its cells.

    `check_data=False` skips the data shards' existence (`ropelaw plan` runs before the data is there).
    """
    cfg = validate(raw)
    for name, spec in cfg["models"].items():
        if spec["source"] == "scratch":
            training = spec["pretrain"]
            if training["global_batch_size"] % training["micro_batch_size"]:
                raise UserError(f"config key 'models.{name}.pretrain.global_batch_size' must be a multiple of micro_batch_size")
    for i, block in enumerate(cfg["grid"]):
        if block["model"] not in cfg["models"]:
            close = difflib.get_close_matches(block["model"], list(cfg["models"]), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(
                f"config key 'grid[{i}].model': '{block['model']}' is not a key of 'models'{hint}"
            )
    _check_files(cfg, data=check_data)
    all_cells = cells(cfg)
    _check_grid(cfg, all_cells)
    if cfg["passkey"]["enabled"]:
        _check_passkey(cfg, all_cells)
    return cfg, all_cells


def add_arguments(parser) -> None:
    parser.add_argument("--configfile", required=True, nargs="+", help="config YAML file(s), later ones merged over earlier ones")


def _merge(base: dict, update: dict) -> dict:
    """Snakemake's merge of several --configfile: nested dicts merged, everything else replaced."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def run(args) -> None:
    raw: dict = {}
    for path in args.configfile:
        _merge(raw, load_yaml(path))
    cfg, all_cells = resolve(raw)
    print(json.dumps({"config": cfg, "cells": [c.path for c in all_cells]}, indent=2))
