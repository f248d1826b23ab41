"""A part of a GPU study, shrunk to run through the same workflow on this machine's CPU first.

    python scripts/rehearse_part.py config/smollm2_small.yaml config/smollm2_small/part_d.yaml --out /tmp/reh_d.yaml
    snakemake --cores 2 --configfile config/smollm2_small.yaml config/smollm2_small/part_d.yaml /tmp/reh_d.yaml

Device time is the scarcest thing a study has (a part takes most of one session's), so a part should
not meet a broken rule, a bad key or a crashing figure there. The override this writes keeps the
part's cells (models, methods, bases, the grid's blocks and their keys) and every rule they run
(GGUF conversion, packing the tuning corpus, fine-tuning, evaluation, passkey, law, figures),
and shrinks only the sizes: tuning lengths and the models' training lengths divided by `--shrink`
(named bases such as beta3 or beta0 follow the shorter lengths; beta0 depends on them through
log(T / 2 pi), so it moves: 304,201 at 8K/16K, 613,178 at 512/1K), 2 optimizer steps of 2 rows, evaluation from a quarter to 4 x the longest of those lengths (the law
needs lengths beyond each cell's own), passkey at two lengths, one evaluation window. Its numbers mean nothing; that it runs to
the end, and `verdicts.py` reads its tables, is the check.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import yaml

STEPS = {"steps": 2, "global_batch_size": 2, "micro_batch_size": 1, "checkpoint_every": 1000}


def rehearsal(study: dict, part: dict, shrink: int) -> dict:
    """The override for one part: its grid with smaller lengths and sizes, and the study's sizes cut."""
    grid = copy.deepcopy(part.get("grid") or study["grid"])
    models = {block["model"]: study["models"][block["model"]] for block in grid}
    trained = {name: {"train_len": spec["train_len"] // shrink} for name, spec in models.items() if spec.get("train_len")}
    top = max([t // shrink for block in grid for t in block["tune_lengths"]]
              + [m["train_len"] for m in trained.values()])
    lengths = [top // 4, top // 2, top, 2 * top, 4 * top]
    for block in grid:
        block["tune_lengths"] = [t // shrink for t in block["tune_lengths"]]
        if "eval_lengths" in block:
            block["eval_lengths"] = list(lengths)
        if "finetune" in block:  # a block without one trains with the top-level finetune (or trains nothing)
            block["finetune"] = {**block["finetune"], **STEPS}
    name = part.get("study") or study["study"]
    return {
        "study": f"{name} (CPU rehearsal: sizes cut, numbers meaningless)",
        "grid": grid,
        "models": trained,
        "finetune": dict(STEPS),
        "data": {"train": {"max_sequences": 8}, "eval": {"windows_per_doc": 1, "max_docs": 1}},
        "evaluation": {"lengths": list(lengths), "chunk_size": top},
        "passkey": {"lengths": [top // 2, top], "depths": [0.5], "trials": 1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", help="the study's config (e.g. config/smollm2_small.yaml)")
    parser.add_argument("part", help="the part's config, merged after it")
    parser.add_argument("--out", required=True, help="where to write the override (a third --configfile)")
    parser.add_argument("--shrink", type=int, default=16, help="tuning lengths are divided by this (default 16)")
    args = parser.parse_args()
    study, part = (yaml.safe_load(Path(p).read_text()) for p in (args.study, args.part))
    Path(args.out).write_text(yaml.safe_dump(rehearsal(study, part, args.shrink), sort_keys=False))
    print(f"snakemake --cores 2 --configfile {args.study} {args.part} {args.out}")


if __name__ == "__main__":
    main()
