"""Bound estimators: where a cell's perplexity first exceeds `factor` x its in-distribution perplexity.

Both read the per-document dense sums of `eval_docs.csv` (written by `ropelaw evaluate`:
one row per document and segment [start, end) of target positions, from a forward pass of
`pass_len` tokens) and turn them into a `Curve`: per-document NLL and token sums at the
points the rule scans, and at its reference. `crossing` then finds the bound on perplexities
computed from any weighting of the documents (all ones for the point estimate, bootstrap
counts for the replicates), vectorized over replicates.

- `segment` (the default): each dense segment is a window of positions; its perplexity is
  placed at the window's geometric midpoint sqrt(start * end). The reference is the octave
  of positions [T_ref/2, T_ref) with T_ref the largest segment edge <= min(T_tune, T_train):
  positions every cell saw in training, the same for every T_tune >= T_train. Scanned:
  every segment starting at or after T_ref.
- `prefix` (the rule before segments): the prefix perplexity at every segment edge L (all
  targets 1..L-1), reference the prefix at the largest edge <= T_tune; scanned: every edge
  after it.

A segment or prefix comes from the shortest forward pass that holds it, so length-dependent
methods (dynamic NTK, one pass per evaluated length) are read at the rotation of the next
evaluated length; one-pass methods have one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ropelaw import UserError

ESTIMATORS = ("segment", "prefix")
DOC_COLUMNS = ["doc", "pass_len", "start", "end", "nll", "tokens", "correct", "bytes"]
NO, RIGHT, LEFT = 0, 1, -1  # censoring codes of `crossing`
CENSORED = {NO: "no", RIGHT: "right", LEFT: "left"}


@dataclass(frozen=True)
class Curve:
    """Per-document sums at the points an estimator scans (x increasing) and at its reference window."""

    x: np.ndarray  # [n] length coordinate of each point, tokens
    nll: np.ndarray  # [docs, n] summed NLL in nats
    tokens: np.ndarray  # [docs, n] target tokens
    ref_nll: np.ndarray  # [docs]
    ref_tokens: np.ndarray  # [docs]
    ref_window: tuple[int, int]  # reference positions [start, end)

    def ppl(self, doc_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ppl [R, n], reference ppl [R]) for document weights [R, docs]."""
        ppl = np.exp((doc_weights @ self.nll) / (doc_weights @ self.tokens))
        return ppl, np.exp((doc_weights @ self.ref_nll) / (doc_weights @ self.ref_tokens))


def crossing(x: np.ndarray, ppl: np.ndarray, ref_ppl: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """(bound [...], censoring code [...]) of perplexity curves ppl [..., n] at lengths x [n].

    The bound is the first crossing of factor * ref_ppl, linear in (log length, log ppl)
    between the last point at or below the threshold and the first above it. Never crossed:
    right-censored at x[-1]; already above at x[0]: left-censored at x[0]. NaN counts as above.
    """
    threshold = factor * np.asarray(ref_ppl, dtype=float)[..., None]
    above = ~(ppl <= threshold)
    crossed = above.any(-1)
    first = above.argmax(-1)
    prev = np.maximum(first - 1, 0)
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        lo = np.log(np.take_along_axis(ppl, prev[..., None], -1))[..., 0]
        hi = np.log(np.take_along_axis(ppl, first[..., None], -1))[..., 0]
        t = (np.log(threshold[..., 0]) - lo) / (hi - lo)
    t = np.where(np.isfinite(t), np.clip(t, 0.0, 1.0), 0.0)  # inf/NaN above: the bound is the last good point
    bound = x[prev] * (x[first] / x[prev]) ** t
    left = crossed & (first == 0)
    bound = np.where(~crossed, x[-1], np.where(left, x[0], bound))
    censor = np.where(~crossed, RIGHT, np.where(left, LEFT, NO))
    return bound, censor


def _matrix(rows: pd.DataFrame, docs: np.ndarray, column: str, source: str) -> np.ndarray:
    """[docs, segments] of `column`, segments in order of `end`; every document must have every segment."""
    table = rows.pivot_table(index="doc", columns="end", values=column, aggfunc="sum")
    if table.shape[0] != len(docs) or table.isna().any().any():
        raise UserError(f"{source}: some documents lack some segments; re-run the cell's evaluate rule")
    return table.reindex(docs).to_numpy(dtype=float)


def segments(docs: pd.DataFrame, source: str) -> pd.DataFrame:
    """Every segment once, from the shortest pass that holds it, checked to tile [1, longest length)."""
    missing = sorted(set(DOC_COLUMNS) - set(docs.columns))
    if missing:
        raise UserError(f"{source}: columns {missing} missing; re-run the cell's evaluate rule")
    shortest = docs.groupby(["start", "end"]).pass_len.transform("min")
    chosen = docs[docs.pass_len == shortest]
    edges = chosen[["start", "end"]].drop_duplicates().sort_values("end")
    if edges.start.iloc[0] != 1 or (edges.start.to_numpy()[1:] != edges.end.to_numpy()[:-1]).any():
        raise UserError(f"{source}: its segments do not tile the positions 1 .. {edges.end.max()}; re-run evaluate")
    return chosen


def segment_curve(docs: pd.DataFrame, tune_len: int, train_len: int, source: str) -> Curve:
    """The `segment` estimator's points: every segment after the reference octave."""
    rows = segments(docs, source)
    doc_ids = np.sort(rows.doc.unique())
    nll, tokens = (_matrix(rows, doc_ids, c, source) for c in ("nll", "tokens"))
    bounds = rows[["start", "end"]].drop_duplicates().sort_values("end")
    start, end = bounds.start.to_numpy(), bounds.end.to_numpy()
    below = end[end <= min(tune_len, train_len)]
    if not len(below):
        raise UserError(f"{source}: no segment ends at or below min(T_tune, T_train) = {min(tune_len, train_len)}")
    t_ref = int(below[-1])
    in_ref = (end <= t_ref) & (start >= t_ref // 2)
    if not in_ref.any():
        in_ref = end == t_ref
    scanned = start >= t_ref
    if not scanned.any():
        raise UserError(f"{source}: no segment after the reference length {t_ref}; evaluate longer lengths")
    return Curve(
        x=np.sqrt(start[scanned] * end[scanned].astype(float)), nll=nll[:, scanned], tokens=tokens[:, scanned],
        ref_nll=nll[:, in_ref].sum(1), ref_tokens=tokens[:, in_ref].sum(1),
        ref_window=(int(start[in_ref].min()), t_ref),
    )


def prefix_curve(docs: pd.DataFrame, tune_len: int, source: str) -> Curve:
    """The `prefix` estimator's points: the prefix at every segment edge after the one <= T_tune."""
    segments(docs, source)  # the checks only: prefixes take every segment of their own pass
    doc_ids = np.sort(docs.doc.unique())
    passes = np.sort(docs.pass_len.unique())
    edges = np.sort(docs.end.unique())
    nll, tokens = np.empty((len(doc_ids), len(edges))), np.empty((len(doc_ids), len(edges)))
    for pass_len in passes:
        rows = docs[docs.pass_len == pass_len]
        pass_edges = np.sort(rows.end.unique())
        wanted = (edges <= pass_len) & (edges > np.max(passes[passes < pass_len], initial=0))
        cum_nll = np.cumsum(_matrix(rows, doc_ids, "nll", source), axis=1)
        cum_tokens = np.cumsum(_matrix(rows, doc_ids, "tokens", source), axis=1)
        if not np.isin(edges[wanted], pass_edges).all():
            raise UserError(f"{source}: the pass of {pass_len} tokens lacks segment edges; re-run evaluate")
        columns = np.searchsorted(pass_edges, edges[wanted])
        nll[:, wanted], tokens[:, wanted] = cum_nll[:, columns], cum_tokens[:, columns]
    below = np.flatnonzero(edges <= tune_len)
    if not len(below) or below[-1] == len(edges) - 1:
        raise UserError(f"{source}: the prefix rule needs evaluated lengths on both sides of T_tune = {tune_len}")
    ref = below[-1]
    return Curve(
        x=edges[ref + 1:].astype(float), nll=nll[:, ref + 1:], tokens=tokens[:, ref + 1:],
        ref_nll=nll[:, ref], ref_tokens=tokens[:, ref], ref_window=(0, int(edges[ref])),
    )


def curve(estimator: str, docs: pd.DataFrame, tune_len: int, train_len: int, source: str) -> Curve:
    if estimator == "segment":
        return segment_curve(docs, tune_len, train_len, source)
    if estimator == "prefix":
        return prefix_curve(docs, tune_len, source)
    raise UserError(f"law.estimator must be one of {', '.join(ESTIMATORS)} (got {estimator!r})")
