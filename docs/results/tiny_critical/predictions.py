"""The predictions of README.md (R1-R4), checked on the published law tables of the run.

    .venv/bin/python docs/results/tiny_critical/predictions.py [LAW_DIR]

LAW_DIR holds the run's cells.csv and seeds.csv (default: law/ beside this script, as published). Written
while the run went, after the predictions were committed (ca16c52) and before its tables were read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

T_TUNE, ORIGINAL, BETA0 = 256, 10000, 2449777


def main(law: Path) -> int:
    cells = pd.read_csv(law / "cells.csv")
    cells = cells[(cells.method == "base") & (cells.tune_len == T_TUNE)].set_index("base")
    seeds = pd.read_csv(law / "seeds.csv")
    seeds = seeds[(seeds.method == "base") & (seeds.tune_len == T_TUNE)]
    verdict = lambda ok: "hit" if ok else "missed"  # noqa: E731
    bound = cells.measured_bound
    show = lambda bases: ", ".join(f"{b:g}: {bound[b]:.0f}{'' if cells.censored[b] == 'no' else ' (' + cells.censored[b] + ')'}"  # noqa: E731
                                   for b in bases)

    small = [b for b in bound.index if b <= BETA0]
    inside = bound[small]
    r1 = bool(((inside >= T_TUNE) & (inside <= 4 * T_TUNE)).all() and inside.max() <= 2 * inside.min())
    print(f"R1 bases <= beta0 in [256, 1024] and within 2x ({show(small)}; max/min {inside.max() / inside.min():.2f}): "
          f"{verdict(r1)}")
    print(f"R2a 1e7 above every base <= beta0 (1e7: {bound[1e7]:.0f}; largest <= beta0: {inside.max():.0f}): "
          f"{verdict(bound[1e7] > inside.max())}")
    print(f"R2b 1e8 above 1e7 ({bound[1e8]:.0f} vs {bound[1e7]:.0f}): {verdict(bound[1e8] > bound[1e7])}")

    at = seeds[seeds.length == 2 * T_TUNE].set_index("base")
    worse = [b for b in small if b != ORIGINAL and at.ppl_geomean[b] > 1.10 * at.ppl_geomean[ORIGINAL]
             and at.ppl_min[b] > at.ppl_max[ORIGINAL]]
    falls = at.ppl_geomean[BETA0] > at.ppl_geomean[1e7] > at.ppl_geomean[1e8]
    print("R3 ppl at 512 (seeds' geometric mean [lowest, highest]): "
          + "; ".join(f"{b:g} {at.ppl_geomean[b]:.2f} [{at.ppl_min[b]:.2f}, {at.ppl_max[b]:.2f}]" for b in at.index))
    print(f"   worse than the original by > 10% and beyond the seeds: {[f'{b:g}' for b in worse] or 'none'}; "
          f"falls from beta0 to 1e7 to 1e8: {falls}: {verdict(bool(worse) and falls)}")

    r4 = seeds[seeds.length <= T_TUNE]
    print(f"R4 seeds within 4% at L <= 256: max spread {r4.spread.max():.4f} (base {r4.loc[r4.spread.idxmax(), 'base']:g}, "
          f"L {r4.loc[r4.spread.idxmax(), 'length']}): {verdict(r4.spread.max() <= 0.04)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "law"))
