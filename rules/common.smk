# Config validation, wildcard constraints and path helpers. All logic lives in src/ropelaw.
import json
import os
import shlex
import sys

from ropelaw import UserError
from ropelaw.config import (
    EMBEDDED_DIR,
    eval_lengths,
    geometry,
    method_options,
    passkey_args,
    resolve,
    training_args,
)
from ropelaw.launch import launch_prefix
from ropelaw.methods import NAMES as METHODS, ON_TUNED
from ropelaw.sources import locate_gguf


# The rules call the `ropelaw` installed beside the Python that runs Snakemake
# (so `.venv/bin/snakemake` works without activating the environment).
envvars:
    "PATH",


os.environ["PATH"] = (
    os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
)

try:
    CFG, CELLS = resolve(config)
except UserError as err:
    sys.exit(f"ropelaw: config error: {err}")

MODELS = list(dict.fromkeys(cell.model for cell in CELLS))
FIGURE_FORMATS = CFG["figures"]["formats"]


wildcard_constraints:
    model="[A-Za-z0-9][A-Za-z0-9_.-]*",
    method="|".join(METHODS),
    base=r"\d+",
    length=r"\d+",


localrules:
    fetch_embedded,
    eval_sets,
    law,


def model_spec(model):
    return CFG["models"][model]


def is_scratch(model):
    return model_spec(model)["source"] == "scratch"


def untuned_model_dir(model):
    """The model before any base change: pretrained by us, the user's directory, or a hub/GGUF import."""
    source = model_spec(model)["source"]
    if source == "hf_dir":
        return model_spec(model)["path"]
    folder = {"scratch": "pretrained", "gguf": "hf", "hub": "hub"}[source]
    return f"results/{model}/{folder}"


def tokenizer_dir(wildcards):
    model = wildcards.model
    return (
        f"results/{model}/tokenizer" if is_scratch(model) else untuned_model_dir(model)
    )


def subset_args(split):
    subsets = CFG["data"][split]["subsets"]
    return (
        ""
        if subsets is None
        else "--subsets " + " ".join(shlex.quote(s) for s in subsets)
    )


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
    """The plain CLI, torchrun for several local GPUs, or srun + torchrun when the profile sets `mpi`."""
    return launch_prefix(int(resources.get("gpu", 0) or 0), resources.get("mpi"))


def cell_outputs():
    return [f"{cell.path}/eval.csv" for cell in CELLS]


def passkey_outputs():
    if not CFG["passkey"]["enabled"]:
        return []
    return [f"{cell.path}/passkey.csv" for cell in CELLS]


def figure_outputs():
    per_tune_len = sorted(
        {f"{c.model}_len{c.tune_len}" for c in CELLS if c.method != "untuned"}
    )
    names = ["bound_vs_base", "critical_dimension"]
    names += [f"ppl_vs_length_{group}" for group in per_tune_len]
    if CFG["passkey"]["enabled"]:
        names += [f"passkey_vs_length_{group}" for group in per_tune_len]
        names += [
            f"passkey_heatmap_{c.model}_{c.method}_base{c.base}_len{c.tune_len}"
            for c in CELLS
        ]
    return [f"results/figures/{name}.{fmt}" for name in names for fmt in FIGURE_FORMATS]


def all_outputs():
    return (
        cell_outputs()
        + passkey_outputs()
        + ["results/law/cells.csv", "results/law/fit.csv", "results/law/passkey.csv"]
        + figure_outputs()
    )


# Input and parameter functions of the rules (named, so rules hold no logic).
def folder_of_manifest(wildcards, output):
    return os.path.dirname(output.manifest)


def vocab_size(wildcards):
    return model_spec(wildcards.model)["vocab_size"]


def model_spec_json(wildcards):
    """What a scratch model's initialisation depends on (not its training blocks)."""
    spec = model_spec(wildcards.model)
    keys = ("source", "architecture", "train_len", "rope_base", "vocab_size")
    init = {key: spec[key] for key in keys}
    init["pretrain"] = {"seed": spec["pretrain"]["seed"]}
    return json.dumps(init, sort_keys=True)


def pretrain_data(wildcards):
    return f"results/{wildcards.model}/data/train_len{model_spec(wildcards.model)['train_len']}"


def original_base(wildcards):
    return geometry(CFG, wildcards.model).orig_base


def pretrain_spec(wildcards):
    return json.dumps(model_spec(wildcards.model)["pretrain"], sort_keys=True)


def finetune_spec(wildcards):
    return json.dumps(training_args(CFG, find_cell(wildcards)), sort_keys=True)


def passkey_spec(wildcards):
    return json.dumps(passkey_args(CFG, find_cell(wildcards)), sort_keys=True)


def eval_dataset(cell):
    """Rows of the cell's longest evaluation length: cells with the same longest length share them."""
    return f"results/{cell.model}/data/eval_len{max(eval_lengths(CFG, cell))}"


def eval_data_dir(wildcards):
    return eval_dataset(find_cell(wildcards))


def model_eval_data(wildcards):
    """Every evaluation set of a model (rule eval_sets)."""
    return sorted(
        {eval_dataset(cell) for cell in CELLS if cell.model == wildcards.model}
    )


def cell_eval_lengths(wildcards):
    return " ".join(map(str, eval_lengths(CFG, find_cell(wildcards))))


def deepspeed_config(wildcards):
    path = training_args(CFG, find_cell(wildcards))["deepspeed"]
    return [path] if path else []


def pretrain_deepspeed_config(wildcards):
    path = model_spec(wildcards.model)["pretrain"]["deepspeed"]
    return [path] if path else []


def cell_model_dir(wildcards):
    """The model an evaluation reads: the fine-tuned one of the base cell, or the untuned model."""
    if wildcards.method in ON_TUNED:
        return f"results/{wildcards.model}/base/base{wildcards.base}_len{wildcards.length}/model"
    return untuned_model_dir(wildcards.model)


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
            "method_options": method_options(CFG, cell.method),
        },
        sort_keys=True,
    )


def untuned_model_input(wildcards):
    return untuned_model_dir(wildcards.model)


def gguf_file(wildcards):
    return str(locate_gguf(model_spec(wildcards.model), f"models.{wildcards.model}"))


def hub_args(wildcards):
    spec = model_spec(wildcards.model)
    revision = (
        f" --revision {shlex.quote(spec['revision'])}" if spec["revision"] else ""
    )
    return f"--id {shlex.quote(spec['id'])}{revision}"
