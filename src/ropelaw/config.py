"""The workflow config: loading, schema validation with defaults, and the checks a schema cannot make.

`resolve(raw)` checks a config against `schemas/config.schema.yaml` (unknown keys
rejected, defaults filled, NaN and infinities refused), then checks what a schema
cannot (models named by the grid exist, files present, lengths consistent) and
expands the grid into `Cell`s (`ropelaw.grid`; evaluation lengths by
`ropelaw.lengths`). Every problem is a `UserError` of one line naming the key and
the fix, raised at DAG-build time before any heavy work. `ropelaw check-config`
also reads the evaluation shards where they exist (`ropelaw.datacheck`).

Snakemake imports this module on every run, so it imports no torch.

    ropelaw check-config --configfile config/config.yaml   # print the resolved config and its cells
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ropelaw import UserError, grid, lengths, methods, sources, specs
from ropelaw.cells import Cell
from ropelaw.grid import BUILT_DIRS, CORPUS_DIR, EMBEDDED_DIR, geometry  # noqa: F401  (re-exported for the rules and plan)

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


@cache
def load_schema(path: str = str(SCHEMA_PATH)) -> dict:
    with open(path) as fh:  # libyaml's loader when there is one: every Snakemake start reads this
        return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def parse_yaml(path: Path, label: str) -> Any:
    """The YAML of an existing file; bad YAML (or bytes that are not UTF-8) is one `UserError` opening with `label`."""
    try:
        with open(path, "rb") as fh:  # bytes: PyYAML decodes them, and a decoding error is a YAMLError
            return yaml.safe_load(fh)
    except yaml.reader.ReaderError as err:
        raise UserError(f"{label}: not YAML text ({str(err).splitlines()[0]}, at position {err.position}); "
                        "save it as UTF-8 text") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{label}: YAML syntax error{where} ({problem}); fix the YAML") from None


def load_yaml(path: str | Path) -> dict:
    """A config file as a mapping; a missing file, bad YAML or a non-mapping is one `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    data = parse_yaml(path, f"config file {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} holds a {type(data).__name__}, not a mapping of keys; "
                        "start it with keys such as data:, models:, grid:")
    return data


def load_configs(paths: list[str]) -> dict:
    """Several --configfile merged as Snakemake merges them."""
    raw: dict = {}
    for path in paths:
        _merge(raw, load_yaml(path))
    return raw


def _merge(base: dict, update: dict) -> dict:
    """Snakemake's merge of several --configfile: nested dicts merged, everything else replaced."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _key(path) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in path]
    return "".join(parts).lstrip(".") or "(top level)"


def _check_finite(value: Any, path: tuple = ()) -> None:
    """NaN and infinities are numbers to JSON Schema: refuse them by key."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config key '{_key(path)}' is {value}; give a finite number")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for name, sub in items:
        _check_finite(sub, (*path, name))


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
        return UserError(f"unknown config key {', '.join(hints)}{where}; allowed keys: {', '.join(allowed)}")
    if err.validator == "required":
        return UserError(f"config key '{key}' is missing a required entry: {err.message}")
    return UserError(f"config key '{key}': {err.message}{_yaml_number_hint(err)}")


def _yaml_number_hint(err: jsonschema.ValidationError) -> str:
    """A number that YAML 1.1 (PyYAML, as Snakemake reads configs) took for text: `1e-4` and `1.0e4` are strings
    there, a float needs a decimal point and a signed exponent (`1.0e-4`, `1.0e+4`). The spelling that reads as
    intended, or nothing when the value is not such a number or the key does not take one."""
    expected = err.validator_value if err.validator == "type" else None
    expected = {expected} if isinstance(expected, str) else set(expected or ())
    found = re.fullmatch(r"([-+]?)(\d+)(?:\.(\d*))?[eE]([-+]?)(\d+)", err.instance) \
        if isinstance(err.instance, str) else None
    if not found or not expected & {"number", "integer"}:
        return ""
    sign, whole, fraction, exp_sign, exponent = found.groups()
    value = float(err.instance)
    if "number" not in expected and not value.is_integer():
        return ""
    fix = (str(int(value)) if "number" not in expected else
           f"{sign}{whole}.{fraction or '0'}e{exp_sign or '+'}{exponent}")
    return f" (YAML reads {err.instance} as text: write {fix})"


def resolve_ref(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        target = schema
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _fill_defaults(schema: dict, node: dict, value: Any) -> Any:
    node = resolve_ref(schema, node)
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [_fill_defaults(schema, node["items"], item) for item in value]
    if not isinstance(value, dict):
        return value
    for name, sub in node.get("properties", {}).items():
        sub_resolved = resolve_ref(schema, sub)
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


def _integers(schema: dict, node: dict, value: Any) -> Any:
    """`value` with every whole float where the schema wants an integer (YAML's 64.0) made an int, as bases
    are: 64.0 would otherwise reach result paths (len64.0) and training loops as a float."""
    node = resolve_ref(schema, node)
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else types
    if isinstance(value, float) and "integer" in types and "number" not in types:
        return int(value)  # the schema has checked that it is whole
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [_integers(schema, node["items"], item) for item in value]
    if isinstance(value, dict):
        extra = node.get("additionalProperties")
        subs = {name: node.get("properties", {}).get(name, extra) for name in value}
        return {name: _integers(schema, sub, item) if isinstance(sub, dict) else item
                for (name, item), sub in zip(value.items(), subs.values())}
    return value


def validate(raw: dict, schema: dict | None = None) -> dict:
    """Schema-check `raw` and return a copy with every default filled in."""
    schema = schema or load_schema()
    if not isinstance(raw, dict):
        raise UserError(f"the config is a {type(raw).__name__}, not a mapping of keys; start it with data:, models:, grid:")
    _check_finite(raw)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(raw), key=lambda e: (len(e.absolute_path), str(e.path)))
    if errors:
        raise _schema_error(errors[0])
    raw = _integers(schema, schema, raw)
    overrides = {
        "models": {m: copy.deepcopy(spec.get("finetune", {})) for m, spec in raw["models"].items()},
        "grid": [copy.deepcopy(block.get("finetune", {})) for block in raw["grid"]],
    }
    cfg = _fill_defaults(schema, schema, copy.deepcopy(raw))
    for name, spec in cfg["models"].items():
        spec["finetune"] = overrides["models"][name]
    for block, override in zip(cfg["grid"], overrides["grid"]):
        block["finetune"] = override
    return cfg


def _check_shards(cfg: dict) -> None:
    for split in ("train", "eval"):
        for k, shard in enumerate(cfg["data"][split]["shards"]):
            if not shard.startswith(tuple(d + "/" for d in BUILT_DIRS)) and not Path(shard).is_file():
                raise UserError(
                    f"config key 'data.{split}.shards[{k}]': file {shard} does not exist; "
                    "fix the path (Pile-format .jsonl or .jsonl.zst)"
                )


def _check_models(cfg: dict) -> None:
    allowed = {"scratch": set(), "hf_dir": {"path", "head_dim"}, "hub": {"id", "revision", "head_dim"},
               "gguf": {"path", "package", "head_dim"}}
    for name, spec in cfg["models"].items():
        stray = sorted(k for k in ("path", "package", "id", "revision", "head_dim")
                       if spec[k] and k not in allowed[spec["source"]])
        if stray:
            raise UserError(f"config key 'models.{name}.{stray[0]}' means nothing for source {spec['source']}; remove it")
        if spec["source"] == "gguf":
            sources.locate_gguf(spec, f"models.{name}")
        elif spec["source"] == "hub" and not spec["id"]:
            raise UserError(f"config key 'models.{name}.id' is required for source hub (e.g. HuggingFaceTB/SmolLM2-135M)")
        elif spec["source"] == "hf_dir":
            if not spec["path"]:
                raise UserError(f"config key 'models.{name}.path' is required for source hf_dir")
            if not (Path(spec["path"]) / "config.json").is_file():
                raise UserError(f"config key 'models.{name}.path': {spec['path']} has no config.json; "
                                "point it at a Hugging Face model directory")
        elif spec["source"] == "scratch":
            if spec["architecture"]["hidden_size"] % spec["architecture"]["num_heads"]:
                raise UserError(f"config key 'models.{name}.architecture.hidden_size' must be divisible by num_heads")
            multiple = spec["pretrain"]["length_multiple"]
            if spec["train_len"] and spec["train_len"] % multiple:
                raise UserError(f"config key 'models.{name}.train_len' ({spec['train_len']}) is not a multiple of "
                                f"models.{name}.pretrain.length_multiple = {multiple}, the length it is pretrained "
                                "at; change one of them")
            specs.build(specs.TrainingSpec, spec["pretrain"], f"models.{name}.pretrain")
            _check_deepspeed(f"models.{name}.pretrain", spec["pretrain"])


def _check_deepspeed(block: str, args: dict) -> None:
    """The DeepSpeed JSON of training block `block` exists, and its ZeRO stage allows `fused_loss`."""
    path, key = args["deepspeed"], f"{block}.deepspeed"
    if not path:
        return
    if Path(path).is_dir():
        raise UserError(f"config key '{key}': {path} is a directory; point it at a DeepSpeed JSON file in it")
    if not Path(path).is_file():
        raise UserError(f"config key '{key}': file {path} does not exist; fix the path (e.g. config/deepspeed/zero3.json)")
    specs.loss_path(args["fused_loss"], zero3=specs.zero_stage(path, block) == 3, key=block)


def _check_grid_models(cfg: dict) -> None:
    for i, block in enumerate(cfg["grid"]):
        if block["model"] not in cfg["models"]:
            close = difflib.get_close_matches(block["model"], list(cfg["models"]), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"config key 'grid[{i}].model': '{block['model']}' is not a key of 'models'{hint}")


def _check_figure_names(cfg: dict) -> None:
    """Every `{model}_{method}` in a figure's file name reads one way: model names such as 'mini' and
    'mini_base' with methods 'base_logn' and 'logn' would both give 'mini_base_logn'."""
    seen: dict[str, tuple[str, str]] = {}
    for model in cfg["models"]:
        for method in grid.method_names(cfg):
            other = seen.setdefault(f"{model}_{method}", (model, method))
            if other != (model, method):
                raise UserError(f"model names '{other[0]}' and '{model}' make figure names that read two ways "
                                f"('{other[0]}_{other[1]}' = '{model}_{method}'); rename one of the models")


def _check_trained(cell: Cell) -> None:
    args = cell.training
    if cell.tune_len % args["length_multiple"]:
        raise UserError(
            f"tuning length {cell.tune_len} of model '{cell.model}' is not a multiple of "
            f"finetune.length_multiple = {args['length_multiple']}; change 'grid[].tune_lengths' or the multiple"
        )
    specs.build(specs.TrainingSpec, args, "finetune")
    _check_deepspeed("finetune", args)


def _check_typed_blocks(cfg: dict) -> None:
    """Build the typed form of the data and method blocks: their `__post_init__` checks run here."""
    specs.build(specs.TrainData, cfg["data"]["train"], "data.train")
    specs.build(specs.EvalData, cfg["data"]["eval"], "data.eval")
    for name, options in cfg["methods"].items():
        key = methods.options_key(options.get("kind", name))
        if key in specs.METHOD_OPTIONS:
            specs.build(specs.METHOD_OPTIONS[key], options, f"methods.{name}")


def resolve(raw: dict, check_data: bool = True) -> tuple[dict, list[Cell]]:
    """Validate a raw config; return it with defaults filled, and its cells.

    `check_data=False` skips the data shards' existence (`ropelaw plan` runs before the data is there).
    """
    cfg = validate(raw)
    _check_grid_models(cfg)
    _check_figure_names(cfg)
    if check_data:
        _check_shards(cfg)
    _check_models(cfg)
    lengths.check_lists(cfg)
    _check_typed_blocks(cfg)
    all_cells = grid.build(cfg)
    for cell in all_cells:
        cell.method_spec()  # bad method options fail here, at DAG-build time
        if cell.trains:
            _check_trained(cell)
    return cfg, all_cells


# Thin accessors kept for the callers that take (cfg, cell): the cell holds the answer.
def training_args(cfg: dict, cell: Cell) -> dict:
    return dict(cell.training)


def eval_lengths(cfg: dict, cell: Cell) -> list[int]:
    return list(cell.eval_lengths)


def passkey_args(cfg: dict, cell: Cell) -> dict:
    return lengths.passkey_args(cfg, cell)


def method_spec(cfg: dict, cell: Cell):
    return cell.method_spec()


def add_arguments(parser) -> None:
    parser.add_argument("--configfile", required=True, nargs="+", help="config YAML file(s), later ones merged over earlier ones")


def run(args) -> None:
    from ropelaw.datacheck import check_eval_data

    cfg, all_cells = resolve(load_configs(args.configfile))
    check_eval_data(cfg, all_cells)
    print(json.dumps({"config": cfg, "cells": [c.path for c in all_cells]}, indent=2))
