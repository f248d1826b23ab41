"""Evaluation tables whose answer is known: eval.csv and eval_docs.csv (contract 3) from a given curve.

`eval_tables(log_ppl, ...)` gives every document's segment [start, end) the log-perplexity
log_ppl(sqrt(start * end), pass_len) (+ per-document noise when `noise` > 0), or, with
`prefix=True`, makes the prefix log-perplexity at every edge L exactly log_ppl(L, pass_len).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd


def dense_edges(train_len: int, lengths: list[int]) -> list[int]:
    """1, every evaluated length, and round(T_train/4 * 2^(k/4)) up to the longest length."""
    grid, k = set(), 0
    while (edge := round(train_len / 4 * 2 ** (k / 4))) <= max(lengths):
        grid.add(edge)
        k += 1
    return sorted({1, *lengths, *grid})


def _pass_rows(log_ppl, edges, pass_len, n_docs, prefix, noise, rng):
    edges = np.array([e for e in edges if e <= pass_len])
    start, end = edges[:-1], edges[1:]
    tokens = (end - start).astype(float)
    if prefix:
        cum = (end - 1) * np.array([log_ppl(e, pass_len) for e in end])
        mean = np.diff(np.concatenate([[0.0], cum])) / tokens
    else:
        mean = np.array([log_ppl(math.sqrt(s * e), pass_len) for s, e in zip(start, end)])
    rows = []
    for doc in range(n_docs):
        shift = noise * (rng.normal() + rng.normal() * np.log(end / end[0]) + rng.normal(size=len(end)))
        nll = tokens * (mean + shift)
        rows.append(pd.DataFrame({"doc": doc, "pass_len": pass_len, "start": start, "end": end, "nll": nll,
                                  "tokens": tokens.astype(int), "correct": (tokens // 3).astype(int),
                                  "bytes": (tokens * 4).astype(int)}))
    return rows


def eval_tables(log_ppl, *, model="m", method="base", base=1000000, tune_len=64, head_dim=32, train_len=64,
                orig_base=10000.0, lengths=(32, 64, 128, 256, 512, 1024), n_docs=4, prefix=False,
                one_pass=True, noise=0.0, rng=None, seed=None):
    """(eval.csv frame, eval_docs.csv frame) of one cell."""
    rng = rng or np.random.default_rng(0)
    lengths = list(lengths)
    edges = dense_edges(train_len, lengths)
    passes = [max(lengths)] if one_pass else lengths
    docs = pd.concat([r for p in passes for r in _pass_rows(log_ppl, edges, p, n_docs, prefix, noise, rng)],
                     ignore_index=True)
    identity = dict(model=model, method=method, base=base, tune_len=tune_len, head_dim=head_dim,
                    train_len=train_len, orig_base=orig_base, eval_set="synthetic")
    if seed is not None:
        identity["seed"] = seed
    rows = []
    for length in lengths:
        part = docs[(docs.pass_len == min(p for p in passes if p >= length)) & (docs.end <= length)]
        nll, tokens, correct = part.nll.sum(), part.tokens.sum(), part.correct.sum()
        rows.append(identity | dict(scope="prefix", start=0, end=length, tokens=tokens, nll_sum=nll,
                                    correct=correct, ppl=math.exp(nll / tokens), accuracy=correct / tokens,
                                    n_docs=n_docs))
    return pd.DataFrame(rows), docs


def write_cell(root: Path, evals: pd.DataFrame, docs: pd.DataFrame) -> str:
    """Write the tables where the workflow would; return the eval.csv path."""
    first = evals.iloc[0]
    name = f"base{first.base}_len{first.tune_len}" + (f"_seed{first.seed}" if "seed" in evals else "")
    folder = Path(root) / "results" / first.model / first.method / name
    folder.mkdir(parents=True, exist_ok=True)
    evals.to_csv(folder / "eval.csv", index=False)
    docs.to_csv(folder / "eval_docs.csv", index=False)
    return str(folder / "eval.csv")


def study(root: Path, tune_lens=(64,)) -> tuple[list[str], pd.DataFrame]:
    """A small study of model 'tiny' (d = 32, T_train = 64, base 10000): the untuned cell, two smaller bases,
    three larger ones crossing at 1.4 x T_extra (base 1.5e6 with three seeds), a training-free method;
    returns (eval.csv paths, passkey rows)."""
    from ropelaw import theory

    rng = np.random.default_rng(0)
    paths, passkey = [], []
    cells = [("untuned", 10000, 64), ("yarn", 10000, 64)]
    cells += [("base", b, t) for t in tune_lens for b in (10, 10000, 150000, 1500000, 100000000)]
    for method, base, tune_len in cells:
        bound = 1.4 * theory.t_extra(base, 32, 64, 10000.0) if base > 10000 else (300 if method == "base" else 700)
        for seed in ([0, 1, 2] if base == 1500000 else [None]):
            knee = bound / 1.5 * (1 + 0.1 * (seed or 0))
            curve = lambda x, p, k=knee: math.log(90) + 0.8 * max(0.0, math.log(x / k))  # noqa: E731
            tables = eval_tables(curve, model="tiny", method=method, base=base, tune_len=tune_len,
                                 lengths=[32, 64, 128, 256, 512, 1024, 2048], n_docs=8, noise=0.05, rng=rng, seed=seed)
            paths.append(write_cell(root, *tables))
            passkey += [dict(model="tiny", method=method, base=base, tune_len=tune_len, seed=seed, length=length,
                             depth=depth, trial=0, correct=length < bound * (1 + (seed or 0)))
                        for length in (128, 256, 1024) for depth in (0.0, 1.0)]
    return paths, pd.DataFrame(passkey)
