"""The rules' command-line arguments built from the config (what is not a cell's: see `ropelaw.cells`).

Every string here that reaches a `shell:` line is quoted with `shlex.quote` (flags
with a variable number of values), or passed whole to a `{params.x:q}`: nothing a
config holds is ever executed. Imports no torch.
"""

from __future__ import annotations

import json
import os
import re
import shlex


def flag(name: str, values) -> str:
    """`--name v1 v2 ...`, each value quoted, or '' for None, False or an empty list."""
    if values is None or values is False or values == []:
        return ""
    if values is True:
        return name
    values = values if isinstance(values, list) else [values]
    return " ".join([name, *(shlex.quote(str(v)) for v in values)])


def subset_args(cfg: dict, split: str) -> str:
    return flag("--subsets", cfg["data"][split]["subsets"])


def init_spec_json(cfg: dict, model: str) -> str:
    """What a scratch model's initialisation depends on (not its training blocks)."""
    spec = cfg["models"][model]
    init = {key: spec[key] for key in ("source", "architecture", "train_len", "rope_base", "vocab_size")}
    init["pretrain"] = {"seed": spec["pretrain"]["seed"]}
    return json.dumps(init, sort_keys=True)


def pretrain_spec_json(cfg: dict, model: str) -> str:
    return json.dumps(cfg["models"][model]["pretrain"], sort_keys=True)


def hub_args(cfg: dict, model: str) -> str:
    spec = cfg["models"][model]
    return f"{flag('--id', spec['id'])} {flag('--revision', spec['revision'])}".strip()


def json_of(spec: dict) -> str:
    """A spec as the one-line JSON a `--spec` takes (sorted keys: the same config, the same text)."""
    return json.dumps(spec, sort_keys=True)


def folder_of_input_manifest(wildcards, input) -> str:
    """The folder of a rule's input named `manifest`."""
    return os.path.dirname(input.manifest)


def folder_of_manifest(wildcards, output) -> str:
    """A params function: the folder of the rule's `manifest` output."""
    return os.path.dirname(output.manifest)


def alternatives(names) -> str:
    """A wildcard constraint matching exactly these names (variant names may hold '.')."""
    return "|".join(re.escape(name) for name in names)


def trained_pattern(cells) -> str:
    """The `finetune` rule's {method} constraint: the methods of cells that train (base when none does)."""
    return alternatives(sorted({cell.method for cell in cells if cell.trains}) or ["base"])


def method_flag(cell) -> str:
    """`--method SPEC` for a trained cell whose rotation transformers cannot express (split); '' for base."""
    spec = cell.method_spec()
    return "" if spec.inv_freq is None else flag("--method", json.dumps(spec.to_json(), sort_keys=True))
