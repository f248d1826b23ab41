"""The workflow config: validation, defaults, and the grid of cells.

`resolve(raw)` checks a config against `schemas/config.schema.yaml` (unknown
keys rejected, defaults filled), then checks what a schema cannot (models named
by the grid exist, bases > 1, lengths consistent, files present) and expands
the grid into `Cell`s. Every problem is a `UserError` of one line naming the
key and the fix, raised at DAG-build time before any heavy work.

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

from ropelaw import UserError, theory

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
    """One (model, method, base, tuning length) cell of the grid; method 'untuned' is the model as is."""

    model: str
    method: str
    base: int
    tune_len: int

    @property
    def path(self) -> str:
        return f"results/{self.model}/{self.method}/base{self.base}_len{self.tune_len}"


@cache
def load_schema(path: str = str(SCHEMA_PATH)) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


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


def geometry(cfg: dict, model: str) -> Geometry:
    """head_dim, T_train and original base of a config model (config values override the model's)."""
    spec = cfg["models"][model]
    if spec["source"] == "scratch":
        for key in ("train_len", "rope_base"):
            if spec[key] is None:
                raise UserError(f"config key 'models.{model}.{key}' is required for a scratch model")
        return Geometry(spec["architecture"]["head_dim"], spec["train_len"], float(spec["rope_base"]))
    head_dim, train_len, orig_base = theory.model_geometry(Path(spec["path"]) / "config.json")
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
        if block["model"] == cell.model and block["method"] == cell.method and cell.tune_len in block["tune_lengths"]:
            args.update(block["finetune"])
    return args


def cells(cfg: dict) -> list[Cell]:
    """Every cell of the grid, untuned cells first, without duplicates, in config order."""
    out: list[Cell] = []
    if cfg["evaluation"]["include_untuned"]:
        for model in dict.fromkeys(block["model"] for block in cfg["grid"]):
            geo = geometry(cfg, model)
            out.append(Cell(model, UNTUNED, round(geo.orig_base), geo.train_len))
    for i, block in enumerate(cfg["grid"]):
        geo = geometry(cfg, block["model"])
        for tune_len in block["tune_lengths"]:
            for j, spec in enumerate(block["bases"]):
                try:
                    base = theory.resolve_base(spec, geo.head_dim, geo.train_len, tune_len, geo.orig_base)
                except UserError as err:
                    raise UserError(f"config key 'grid[{i}].bases[{j}]': {err}") from None
                out.append(Cell(block["model"], block["method"], base, tune_len))
    return list(dict.fromkeys(out))


def _check_files(cfg: dict) -> None:
    for split in ("train", "eval"):
        for k, shard in enumerate(cfg["data"][split]["shards"]):
            if not shard.startswith(EMBEDDED_DIR + "/") and not Path(shard).is_file():
                raise UserError(
                    f"config key 'data.{split}.shards[{k}]': file {shard} does not exist; "
                    "fix the path (Pile-format .jsonl or .jsonl.zst)"
                )
    for name, spec in cfg["models"].items():
        if spec["source"] == "hf_dir":
            if not spec["path"]:
                raise UserError(f"config key 'models.{name}.path' is required for source hf_dir")
            if not (Path(spec["path"]) / "config.json").is_file():
                raise UserError(
                    f"config key 'models.{name}.path': {spec['path']} has no config.json; "
                    "point it at a Hugging Face model directory"
                )
        elif spec["architecture"]["hidden_size"] % spec["architecture"]["num_heads"]:
            raise UserError(f"config key 'models.{name}.architecture.hidden_size' must be divisible by num_heads")


def _check_grid(cfg: dict, all_cells: list[Cell]) -> None:
    lengths = cfg["evaluation"]["lengths"]
    if lengths != sorted(set(lengths)):
        raise UserError("config key 'evaluation.lengths' must be strictly increasing, without repeats")
    for cell in all_cells:
        args = training_args(cfg, cell)
        multiple = args["length_multiple"]
        if cell.method != UNTUNED and cell.tune_len % multiple:
            raise UserError(
                f"tuning length {cell.tune_len} of model '{cell.model}' is not a multiple of "
                f"finetune.length_multiple = {multiple}; change 'grid[].tune_lengths' or the multiple"
            )
        if args["global_batch_size"] % args["micro_batch_size"]:
            raise UserError(
                f"finetune.global_batch_size = {args['global_batch_size']} is not a multiple of "
                f"finetune.micro_batch_size = {args['micro_batch_size']} (cell {cell.path})"
            )
        if not any(length <= cell.tune_len for length in lengths):
            raise UserError(
                f"config key 'evaluation.lengths' needs a length <= {cell.tune_len} (the tuning "
                f"length of {cell.path}): the law compares perplexity with its value there"
            )
        if args["deepspeed"] and not Path(args["deepspeed"]).is_file():
            raise UserError(f"finetune.deepspeed: file {args['deepspeed']} does not exist")


def resolve(raw: dict) -> tuple[dict, list[Cell]]:
    """Validate a raw config; return it with defaults filled, and its cells."""
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
    _check_files(cfg)
    all_cells = cells(cfg)
    _check_grid(cfg, all_cells)
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
