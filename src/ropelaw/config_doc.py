"""config/README.md, generated from schemas/config.schema.yaml so the two never disagree.

    ropelaw config-doc > config/README.md      # tests/test_config.py checks it is current
"""

from __future__ import annotations

import json

from ropelaw.config import load_schema, resolve_ref

HEADER = """# Configuration keys

Generated from `schemas/config.schema.yaml` by `ropelaw config-doc > config/README.md`;
do not edit by hand. A config holds experiment facts only: threads, partitions, GPU counts
and accounts belong to the Snakemake profile (`profiles/`). Unknown keys are errors.
Override blocks (`models.<slug>.finetune`, `grid[].finetune`) take any key of `finetune`
and change only what they name.

Shipped configs: `config.yaml` (the embedded default, CPU, minutes), and one YAML per study.
Several `--configfile`s are merged by Snakemake: nested mappings key by key, lists replaced.

A study run in parts: `smollm2_small.yaml` (issue 15: small bases, the critical base at 16K and
the 1M recipe, tuned on the tuning corpus of `rules/corpus.smk`; predictions and sizing in
`docs/results/smollm2_small/PLAN.md`) is the whole study; each file of `smollm2_small/`
(`part_a`, `part_b1`, `part_b2`, `part_c`, `part_d`, about 20 minutes of one H200 each) replaces its
`grid` with one part's cells, so a part has its own law tables and figures. Give both files, the
study first: `snakemake -n --cores 1 --configfile config/smollm2_small.yaml config/smollm2_small/part_a.yaml`
(without `-n` it runs; `scripts/gpu_study.sh` runs a part on the GPU machine, after
`scripts/rehearse_part.py` has run it shrunk on the CPU: PLAN.md section 7). The corpus needs
no network once built: `resources/corpus/` (`ropelaw build-corpus`: 13-23 minutes on a 2-core machine).

| key | type | default | meaning |
|---|---|---|---|
"""


def _type(node: dict) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{json.dumps(v) if isinstance(v, bool) else v}`" for v in node["enum"])
    kind = node.get("type", "object" if "properties" in node else "")
    return " or ".join(kind) if isinstance(kind, list) else str(kind)


def _rows(schema: dict, node: dict, prefix: str) -> list[str]:
    node = resolve_ref(schema, node)
    rows = []
    for name, raw in node.get("properties", {}).items():
        sub = resolve_ref(schema, raw)
        key = f"{prefix}{name}"
        is_training = raw.get("$ref") == "#/$defs/training"
        default = f"`{json.dumps(sub['default'])}`" if "default" in sub else ("required" if name in node.get("required", []) else "")
        description = " ".join(sub.get("description", "").split()).replace("|", "\\|")
        rows.append(f"| `{key}` | {_type(sub)} | {default} | {description} |")
        if is_training and key != "finetune":
            rows[-1] = rows[-1][:-2] + " Takes the keys of `finetune`. |"
        elif "properties" in sub:
            rows += _rows(schema, sub, key + ".")
        extra = sub.get("additionalProperties")
        if isinstance(extra, dict):
            rows += _rows(schema, extra, key + ".<name>.")
        items = sub.get("items")
        if isinstance(items, dict) and "properties" in resolve_ref(schema, items):
            rows += _rows(schema, items, key + "[].")
    return rows


def render() -> str:
    schema = load_schema()
    return HEADER + "\n".join(_rows(schema, schema, "")) + "\n"


def add_arguments(parser) -> None:
    pass


def run(args) -> None:
    print(render(), end="")
