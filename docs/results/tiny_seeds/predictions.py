"""The predictions of README.md, checked on the published law tables of the five-seed run.

    .venv/bin/python docs/results/tiny_seeds/predictions.py [LAW_DIR]

LAW_DIR holds the run's cells.csv and seeds.csv (default: law/ beside this script, as published).
Each prediction prints its rule, the numbers it reads and "hit" or "missed". Written while the run
went, after the predictions were committed (912b4d6) and before its tables were read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

SMALL = 3  # beta3, beta2, beta1: the three smallest bases of the grid


def main(law: Path) -> int:
    seeds, cells = pd.read_csv(law / "seeds.csv"), pd.read_csv(law / "cells.csv")
    cells = cells[cells.method == "base"].sort_values("base")
    seeds = seeds[seeds.method == "base"]
    small = list(cells.base[:SMALL])
    larger = cells[~cells.base.isin(small) & (cells.censored == "no")]
    verdict = lambda ok: "hit" if ok else "missed"  # noqa: E731

    p1 = seeds[seeds.length <= 64]
    print(f"P1 in distribution (L <= 64, spread <= 2%): max {p1.spread.max():.4f} "
          f"(base {p1.loc[p1.spread.idxmax(), 'base']}, L {p1.loc[p1.spread.idxmax(), 'length']}): "
          f"{verdict(p1.spread.max() <= 0.02)}")

    below = seeds[seeds.base.isin(larger.base) & (seeds.length <= seeds.measured_bound)]
    print(f"P2 up to the bound (every L <= bound of {len(larger)} bases with a bound, spread <= 3%): "
          f"max {below.spread.max():.4f}: {verdict(below.spread.max() <= 0.03)}")

    far, ok = 0, 0
    for base, rows in seeds[seeds.base.isin(larger.base)].groupby("base"):
        longest = rows.loc[rows.length.idxmax()]
        if longest.length_over_bound < 4:
            continue
        inside = rows[rows.length <= rows.measured_bound].spread.max()
        far += 1
        ok += longest.spread > 2 * inside
        print(f"   base {base}: at {longest.length} ({longest.length_over_bound:.1f} x bound) spread "
              f"{longest.spread:.4f} vs {inside:.4f} up to the bound ({longest.spread / inside:.1f} x)")
    print(f"P3 past the bound (spread at 2,048 > 2 x the largest up to the bound, in >= 3 of 4 bases with 2,048 >= "
          f"4 x bound): {ok} of {far}: {verdict(far > 0 and ok >= 0.75 * far)}")

    p4 = seeds[seeds.base.isin(small)]
    print(f"P4 small bases {small} (spread <= 3% at every length): max {p4.spread.max():.4f}: "
          f"{verdict(p4.spread.max() <= 0.03)}")

    past = seeds[seeds.base.isin(larger.base) & (seeds.length > seeds.measured_bound)]
    rho = past.spread.rank().corr(past.length_over_bound.rank())
    print(f"P5 order (Spearman of spread and length / bound past the bound, {len(past)} rows, > 0.5): "
          f"{rho:.3f}: {verdict(rho > 0.5)}")

    ratio = larger.seed_bound_max / larger.seed_bound_min
    print(f"law: per-seed bounds within 1.19x (each larger base): max {ratio.max():.3f} "
          f"(base {larger.loc[ratio.idxmax(), 'base']}): {verdict(ratio.max() <= 2 ** 0.25)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "law"))
