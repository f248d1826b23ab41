# Config validation, wildcard constraints, the cells by wildcards, and the rules' input functions.
# All logic lives in src/ropelaw; every path of a cell comes from its Cell (ropelaw.cells).
import os
import sys
from operator import attrgetter

from ropelaw import UserError, grid, paths, ruleargs
from ropelaw.cells import Cell, figure_names, index, lookup
from ropelaw.config import CORPUS_DIR, EMBEDDED_DIR, resolve
from ropelaw.launch import launch_prefix
from ropelaw.lengths import passkey_args
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

CELL_BY_KEY = index(CELLS)
TRAINED = ruleargs.trained_pattern(CELLS)
FIGURE_FORMATS = CFG["figures"]["formats"]


# {model} takes the configured names only: in a figure's name `{model}_{method}`, "smollm2_base_logn" would
# otherwise also read as model smollm2_base, method logn (both method names).
wildcard_constraints:
    model=ruleargs.alternatives(sorted(CFG["models"])),
    method=ruleargs.alternatives(grid.method_names(CFG)),
    leaf=paths.LEAF_PATTERN,
    length=r"\d+",


localrules:
    fetch_embedded,
    law,


def cell_outputs():
    return [cell.output("eval.csv") for cell in CELLS]


def passkey_outputs():
    enabled = CFG["passkey"]["enabled"]
    return [cell.output("passkey.csv") for cell in CELLS] if enabled else []


def figure_outputs():
    names = figure_names(CELLS, CFG["passkey"]["enabled"])
    return [f"results/figures/{name}.{fmt}" for name in names for fmt in FIGURE_FORMATS]


def all_outputs():
    law = ["results/law/cells.csv", "results/law/fit.csv", "results/law/passkey.csv"]
    return cell_outputs() + passkey_outputs() + law + figure_outputs()


def per_model(read):
    """An input/params function: `read(CFG, model)` for the model of the wildcards."""
    return lambda wildcards: read(CFG, wildcards.model)


def per_cell(read):
    """An input/params function: `read(cell)` for the cell of the wildcards."""
    return lambda wildcards: read(
        lookup(CELL_BY_KEY, wildcards.model, wildcards.method, wildcards.leaf)
    )


def launcher(wildcards, resources):
    """The plain CLI, torchrun for several local GPUs, or srun + torchrun when the profile sets `mpi`."""
    return launch_prefix(int(resources.get("gpu", 0) or 0), resources.get("mpi"))


def legacy_eval_sets(wildcards):
    """`results/{model}/data/eval_sets.txt` where a results folder made while rule eval_sets existed (up to
    b25cd7d) has it; else nothing.

    Training used to wait for that list of evaluation sets through an ancient() input. Whenever the list
    changed (the next part of a study run in the same folder), Snakemake 9 left every job behind that
    edge out of its needrun pass (snakemake/snakemake#4166): a run did the list alone and exited 0, or
    drew figures from the last part's law tables. There is no such edge now (the config checks read the
    evaluation data before any job runs). Where the old list exists it stays among training's inputs, a
    plain file that nothing writes, so that the recorded inputs of trained cells do not change (a changed
    set of inputs would make Snakemake train them again).
    """
    path = f"results/{wildcards.model}/data/eval_sets.txt"
    return [ancient(path)] if os.path.exists(path) else []


def optional(path):
    return [path] if path else []


# Per model, then per cell.
tokenizer_dir = per_model(grid.tokenizer_dir)
untuned_model_input = per_model(grid.untuned_dir)
pretrain_data = per_model(grid.pretrain_rows_dir)
model_spec_json = per_model(ruleargs.init_spec_json)
pretrain_spec = per_model(ruleargs.pretrain_spec_json)
hub_args = per_model(ruleargs.hub_args)
vocab_size = per_model(lambda cfg, model: cfg["models"][model]["vocab_size"])
original_base = per_model(lambda cfg, model: grid.geometry(cfg, model).orig_base)
pretrain_deepspeed_config = per_model(
    lambda cfg, model: optional(cfg["models"][model]["pretrain"]["deepspeed"])
)
gguf_file = per_model(
    lambda cfg, model: str(locate_gguf(cfg["models"][model], f"models.{model}"))
)
cell_json = per_cell(Cell.to_json)
cell_base = per_cell(attrgetter("base"))
cell_model_dir = per_cell(attrgetter("model_dir"))
cell_checkpoints = per_cell(attrgetter("checkpoints_dir"))
cell_train_data = per_cell(attrgetter("train_rows_dir"))
eval_data_dir = per_cell(attrgetter("eval_rows_dir"))
cell_eval_lengths = per_cell(lambda cell: list(cell.eval_lengths))
finetune_spec = per_cell(lambda cell: ruleargs.json_of(cell.training))
trained_method = per_cell(ruleargs.method_flag)
deepspeed_config = per_cell(lambda cell: optional(cell.training["deepspeed"]))
passkey_spec = per_cell(lambda cell: ruleargs.json_of(passkey_args(CFG, cell)))
