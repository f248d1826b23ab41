# Config validation, wildcard constraints and path helpers. All logic lives in src/ropelaw.
import json
import os
import shlex
import sys

from ropelaw import UserError
from ropelaw.config import EMBEDDED_DIR, geometry, resolve, training_args

try:
    CFG, CELLS = resolve(config)
except UserError as err:
    sys.exit(f"ropelaw: config error: {err}")

MODELS = list(dict.fromkeys(cell.model for cell in CELLS))
FIGURE_FORMATS = CFG["figures"]["formats"]


wildcard_constraints:
    model="[A-Za-z0-9][A-Za-z0-9_.-]*",
    method="base|untuned",
    base=r"\d+",
    length=r"\d+",


localrules:
    law,
    figures,


def model_spec(model):
    return CFG["models"][model]


def is_scratch(model):
    return model_spec(model)["source"] == "scratch"


def untuned_model_dir(model):
    """The model before any base change: pretrained by us (scratch) or the user's directory."""
    return (
        f"results/{model}/pretrained"
        if is_scratch(model)
        else model_spec(model)["path"]
    )


def tokenizer_dir(wildcards):
    model = wildcards.model
    return (
        f"results/{model}/tokenizer" if is_scratch(model) else model_spec(model)["path"]
    )


def subset_args(split):
    subsets = CFG["data"][split]["subsets"]
    return (
        ""
        if subsets is None
        else "--subsets " + " ".join(shlex.quote(s) for s in subsets)
    )


def eval_length():
    return max(CFG["evaluation"]["lengths"])


def find_cell(wildcards):
    for cell in CELLS:
        if (cell.model, cell.method, str(cell.base), str(cell.tune_len)) == (
            wildcards.model,
            wildcards.method,
            wildcards.base,
            wildcards.length,
        ):
            return cell
    raise ValueError(
        f"results/{wildcards.model}/{wildcards.method}/base{wildcards.base}_len{wildcards.length} is not a cell of this config"
    )


def launcher(wildcards, resources):
    """One process per GPU through torchrun when a job has several GPUs, else the plain CLI."""
    gpus = int(resources.get("gpu", 0) or 0)
    return (
        f"torchrun --standalone --nproc-per-node {gpus} -m ropelaw.cli"
        if gpus > 1
        else "ropelaw"
    )


def cell_outputs():
    return [f"{cell.path}/eval.csv" for cell in CELLS]


def figure_outputs():
    names = ["bound_vs_base", "critical_dimension"]
    names += sorted(
        {
            f"ppl_vs_length_{c.model}_len{c.tune_len}"
            for c in CELLS
            if c.method != "untuned"
        }
    )
    return [f"results/figures/{name}.{fmt}" for name in names for fmt in FIGURE_FORMATS]


def all_outputs():
    return (
        cell_outputs()
        + ["results/law/cells.csv", "results/law/fit.csv"]
        + figure_outputs()
    )


# Input and parameter functions of the rules (named, so rules hold no logic).
def folder_of_manifest(wildcards, output):
    return os.path.dirname(output.manifest)


def vocab_size(wildcards):
    return model_spec(wildcards.model)["vocab_size"]


def model_spec_json(wildcards):
    return json.dumps(model_spec(wildcards.model), sort_keys=True)


def pretrain_data(wildcards):
    return f"results/{wildcards.model}/data/train_len{model_spec(wildcards.model)['train_len']}"


def original_base(wildcards):
    return geometry(CFG, wildcards.model).orig_base


def pretrain_spec(wildcards):
    return json.dumps(model_spec(wildcards.model)["pretrain"], sort_keys=True)


def finetune_spec(wildcards):
    return json.dumps(training_args(CFG, find_cell(wildcards)), sort_keys=True)


def deepspeed_config(wildcards):
    path = training_args(CFG, find_cell(wildcards))["deepspeed"]
    return [path] if path else []


def cell_model_dir(wildcards):
    """The model an evaluation reads: the untuned model, or the cell's fine-tuned one."""
    if wildcards.method == "untuned":
        return untuned_model_dir(wildcards.model)
    return f"results/{wildcards.model}/{wildcards.method}/base{wildcards.base}_len{wildcards.length}/model"


def cell_json(wildcards):
    cell = find_cell(wildcards)
    geo = geometry(CFG, cell.model)
    return json.dumps(
        {
            "model": cell.model,
            "method": cell.method,
            "base": cell.base,
            "tune_len": cell.tune_len,
            "head_dim": geo.head_dim,
            "train_len": geo.train_len,
            "orig_base": geo.orig_base,
            "eval_set": CFG["data"]["eval"]["name"],
        },
        sort_keys=True,
    )


def untuned_model_input(wildcards):
    return untuned_model_dir(wildcards.model)
