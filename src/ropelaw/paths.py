"""Path patterns of the workflow's results: the one spelling of each, for the rules and the package.

The rules use them as output patterns (`{model}`, `{method}`, `{leaf}`, `{length}` are
Snakemake wildcards); the package formats them (`ropelaw.cells.Cell`, `ropelaw.grid`).
A cell's folder is `CELL_DIR`, its leaf `base{β}_len{T}[_seed{s}]` (`LEAF_PATTERN`).
"""

from __future__ import annotations

LEAF_PATTERN = r"base\d+_len\d+(?:_seed\d+)?"
CELL_DIR = "results/{model}/{method}/{leaf}"
TRAIN_ROWS = "results/{model}/data/train_len{length}"
EVAL_ROWS = "results/{model}/data/eval_len{length}"
TOKENIZER = "results/{model}/tokenizer"
# The untuned model of each source that the workflow writes (an hf_dir model is the user's folder).
UNTUNED = {"scratch": "results/{model}/pretrained", "gguf": "results/{model}/hf", "hub": "results/{model}/hub"}


def cell_file(name: str) -> str:
    """The pattern of a file in a cell's folder (a rule's `output:`), e.g. cell_file("eval.csv")."""
    return f"{CELL_DIR}/{name}"
