"""Score evaluation rows under a stated convention: per-document segment sums, then the table.

    scoring = Scoring.for_tokenizer("ropelaw", "auto", tokenizer)
    table, docs = evaluate_docs(model, rows_nl, [64, 128, 256], scoring=scoring,
                                text=TokenText.from_tokenizer(tokenizer, V), train_len=64)

Positions. A row is scored as the sequence s = [prefix] + row, where `prefix` is the BOS token
when the convention or `evaluation.bos` puts one first (added here, at scoring time, so one set
of prepared rows serves every policy), else s = row. Position p of s is predicted from s[0..p-1];
position 0 is never a target. A window of L tokens is s[0..L-1].

Conventions (`evaluation.convention`):
- `ropelaw`: a window of L tokens scores its L-1 predictions, positions 1..L-1; BOS per
  `evaluation.bos` (auto: as the tokenizer encodes a text).
- `yarn`: YaRN's `compute_perplexity` in truncate mode, as its `main` calls it (add_start_token
  = the tokenizer has a bos_token): every row cut to L-1 tokens, BOS prepended, the L-1 row
  tokens scored; without a bos_token, the row cut to L tokens and its L-1 predictions scored.
  ppl = exp(mean over rows of each row's mean NLL); rows have equal lengths, so that is
  exp(sum NLL / sum tokens) here. Rows are tokenized without special tokens, as YaRN does.
- `lm_eval`: lm-evaluation-harness's `loglikelihood_rolling` with max_length L on a document of
  the row's first L tokens: one window [prefix] + row[0..L-2] scoring all L row tokens, positions
  1..L of s (the last one beyond the window); prefix = BOS, or EOS when there is none.
  word_perplexity = exp(NLL / words) with words = len(re.split(r"\\s+", text)) = whitespace runs
  + 1; byte_perplexity = exp(NLL / bytes); bits_per_byte = NLL / bytes / ln 2.
For `yarn` and `lm_eval` the BOS handling is the convention's: `evaluation.bos` must stay `auto`.

Metrics per evaluated length (sums, then a division): ppl = exp(NLL / tokens), accuracy =
correct / tokens, bits_per_byte = NLL / bytes / ln 2, byte_ppl = exp(NLL / bytes), word_ppl =
exp(NLL / words). bytes: UTF-8 bytes the target tokens decode to (`ropelaw.tokentext`; special
tokens decode to none). words: whitespace-separated words the targets' text holds, the first
target starting the text (`ropelaw` and `yarn`), or lm_eval's whitespace runs + 1.

Per-document sums (eval_docs.csv): one row per (doc, pass_len, segment [start, end)) with nll,
tokens, correct, bytes, words over positions start <= p < end of that pass. Segment edges: 1,
the last target + 1 of every evaluated length (L, or L+1 under lm_eval), and round(T_train/4 *
2^(k/4)) for k = 0, 1, ... up to the longest length. A one-pass evaluation has one pass (the
longest length); a length-dependent method one pass per length. The table's row at length L is
the exact (math.fsum) sum of its pass's segments that end at or before L's last target + 1.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ropelaw import UserError
from ropelaw.perplexity import _rope_types, length_dependent_rope, token_stats
from ropelaw.tokentext import TokenText, bos_id

CONVENTIONS = ("ropelaw", "yarn", "lm_eval")
SUMS = ["nll", "tokens", "correct", "bytes", "words"]
INT_SUMS = ["tokens", "correct", "bytes", "words"]


@dataclass(frozen=True)
class Scoring:
    """How rows are scored: the convention and the token put before every row (or none)."""

    convention: str = "ropelaw"
    prefix_id: int | None = None

    def __post_init__(self):
        if self.convention not in CONVENTIONS:
            raise UserError(f"evaluation.convention: {self.convention!r} is not one of {list(CONVENTIONS)}")
        if self.convention == "lm_eval" and self.prefix_id is None:
            raise UserError("evaluation.convention: lm_eval prepends BOS (or EOS); the tokenizer has neither")

    @property
    def extra(self) -> int:
        """1 when a window of L tokens also scores the token after it (lm_eval), else 0."""
        return int(self.convention == "lm_eval")

    def last_end(self, length: int) -> int:
        """One past the last position scored by a window of `length` tokens."""
        return length + self.extra

    @classmethod
    def for_tokenizer(cls, convention: str, bos: str, tokenizer) -> Scoring:
        if convention not in CONVENTIONS:
            raise UserError(f"evaluation.convention: {convention!r} is not one of {list(CONVENTIONS)}")
        if convention == "ropelaw":
            return cls(convention, bos_id(tokenizer, bos))
        if bos != "auto":
            raise UserError(f"evaluation.bos: {bos}, but convention {convention} fixes its own BOS; set evaluation.bos: auto")
        prefix = tokenizer.bos_token_id
        if convention == "lm_eval" and prefix is None:
            prefix = tokenizer.eos_token_id
        return cls(convention, None if prefix is None else int(prefix))


def segment_edges(lengths, scoring: Scoring, train_len: int | None) -> list[int]:
    """1, every length's last target + 1, and 4 points per octave from train_len/4 to the longest length."""
    ends = {scoring.last_end(int(n)) for n in lengths}
    longest = max(int(n) for n in lengths)
    grid = set()
    if train_len:
        k = 0
        while (point := round(train_len / 4 * 2 ** (k / 4))) <= longest:
            grid.add(point)
            k += 1
    return sorted({1} | ends | {g for g in grid if g >= 1})


def row_tokens_needed(length: int, scoring: Scoring) -> int:
    return length + scoring.extra - (scoring.prefix_id is not None)


def _targets(text: TokenText | None, scoring: Scoring, ids_bt: np.ndarray):
    """(bytes, words) per target, [B, T] int64; zeros when no tokenizer is known."""
    if text is None:
        return np.zeros(ids_bt.shape, np.int64), np.zeros(ids_bt.shape, np.int64)
    if scoring.convention == "lm_eval":
        words = text.whitespace_runs(ids_bt)
        words[:, 0] += 1  # re.split gives runs + 1 pieces
    else:
        words = text.word_starts(ids_bt)
    return text.bytes_of(ids_bt), words


def score_window(model, rows_bn, length: int, scoring: Scoring, text=None, *, chunk_size=4096, compiled=False,
                 head_groups=1, mlp_slices=0):
    """Per-target sums of one window of `length` tokens: dict of [B, T] arrays over positions 1..T."""
    rows_bn = torch.as_tensor(np.asarray(rows_bn), dtype=torch.long)
    if scoring.prefix_id is not None:
        rows_bn = torch.cat([torch.full((rows_bn.shape[0], 1), scoring.prefix_id), rows_bn], 1)
    end = scoring.last_end(length)
    if rows_bn.shape[1] < end:
        raise UserError(f"a window of {length} tokens needs rows of {row_tokens_needed(length, scoring)} tokens")
    targets = rows_bn[:, 1:end] if scoring.extra else None
    nll_bt, correct_bt = token_stats(model, rows_bn[:, :length], chunk_size, compiled, targets_bl=targets,
                                   head_groups=head_groups, mlp_slices=mlp_slices)
    ids_bt = rows_bn[:, 1:end].numpy()
    n_bytes, words = _targets(text, scoring, ids_bt)
    return {"nll": nll_bt.numpy(), "tokens": np.ones(ids_bt.shape, np.int64),
            "correct": correct_bt.numpy().astype(np.int64), "bytes": n_bytes, "words": words}


def doc_segments(stats: dict, edges: list[int], pass_len: int, first_doc: int) -> pd.DataFrame:
    """One row per (doc, segment) of a window's per-target arrays (column j = position j+1)."""
    n_targets = stats["nll"].shape[1]
    edges = [e for e in edges if e <= n_targets + 1]
    assert edges[-1] == n_targets + 1, "segment edges must end at the window's last target"
    starts = np.asarray(edges[:-1]) - 1
    parts = []
    for b in range(stats["nll"].shape[0]):
        frame = {k: np.add.reduceat(v[b], starts) for k, v in stats.items()}
        parts.append(pd.DataFrame({"doc": first_doc + b, "pass_len": pass_len,
                                   "start": edges[:-1], "end": edges[1:], **frame}))
    return pd.concat(parts, ignore_index=True)


def bucket_sums(stats: dict, buckets) -> list[dict]:
    """Sums over every doc of the target positions [start, end) of each bucket."""
    n_targets = stats["nll"].shape[1]
    rows = []
    for start, end in zip(buckets[:-1], buckets[1:]):
        first = max(int(start), 1)
        if not 0 <= start < end <= n_targets + 1 or first >= end:
            raise UserError(
                f"evaluation.bucket_edges: [{start}, {end}) scores no tokens or exceeds the {n_targets} "
                "positions scored; use increasing edges from 0 up to the longest length")
        rows.append(dict(scope="bucket", start=int(start), end=int(end),
                         **{k: math.fsum(v[:, first - 1:end - 1].ravel().tolist()) for k, v in stats.items()}))
    return rows


def with_metrics(table: pd.DataFrame) -> pd.DataFrame:
    """The ratio columns of summed rows; bytes/words of 0 (no tokenizer) give NaN, never inf."""
    for key in INT_SUMS:
        table[key] = table[key].astype(np.int64)
    nll, n_bytes, words = table["nll"], table["bytes"].where(table["bytes"] > 0), table["words"].where(table["words"] > 0)
    table["ppl"] = np.exp(nll / table["tokens"])
    table["accuracy"] = table["correct"] / table["tokens"]
    table["bits_per_byte"] = nll / n_bytes / math.log(2)
    table["byte_ppl"] = np.exp(nll / n_bytes)
    table["word_ppl"] = np.exp(nll / words)
    return table.rename(columns={"nll": "nll_sum"})


def prefix_rows(docs: pd.DataFrame, lengths, scoring: Scoring, one_pass: bool) -> list[dict]:
    """The table's row of every length: exact sums of the segments its window scores."""
    rows = []
    for n in lengths:
        pass_len = max(lengths) if one_pass else n
        part = docs[(docs.pass_len == pass_len) & (docs.end <= scoring.last_end(n))]
        rows.append(dict(scope="prefix", start=0, end=int(n), **{k: math.fsum(part[k].tolist()) for k in SUMS}))
    return rows


def default_bucket_edges(length: int) -> list[int]:
    """Power-of-two edges of target-position buckets: [0, 2, 4, ..., 2^k, length]."""
    return [0] + [2**k for k in range(1, (length - 1).bit_length())] + [length]


# Forwards over this many positions or more show a bar of their layers (`layer_progress`): a 13B at 1M tokens takes
# 17 minutes on an H200, about an hour on an A100, in one forward that the bar of documents would show as 0 of 1.
LAYER_PROGRESS_FROM = 131_072


@contextlib.contextmanager
def layer_progress(model, enabled: bool = True, on_forward=None, on_layer=None) -> Iterator[None]:
    """Progress of the decoder's layers in every forward of `model` within the block: `on_forward()` as a forward
    begins, `on_layer(done, total)` after each layer, the device synchronised first (layers finished, not layers
    queued: the host runs ahead of the GPU); by default a bar of layers. Meant for long forwards only
    (`LAYER_PROGRESS_FROM`): at 128K positions a layer takes tenths of a second and a synchronisation tens of
    microseconds. The hooks run outside compiled layers' graphs and are removed on exit; the numbers are those of
    the same forward without them."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not enabled or not layers:
        yield
        return
    bar = None
    if on_forward is None and on_layer is None:
        bar = tqdm(total=len(layers), desc="layers", unit="layer", leave=False, mininterval=0)  # each layer drawn
        on_forward, on_layer = bar.reset, lambda done, total: bar.update()
    done = 0

    def begin(module, args):
        nonlocal done
        done = 0
        if on_forward:
            on_forward()

    @torch.compiler.disable
    def after(module, args, output):
        nonlocal done
        device = output[0].device if isinstance(output, tuple) else output.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        done += 1
        if on_layer:
            on_layer(done, len(layers))

    handles = [decoder.register_forward_pre_hook(begin)] + [layer.register_forward_hook(after) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        if bar is not None:
            bar.close()


def evaluate_docs(model, docs_nl, lengths, *, scoring: Scoring = Scoring(), text: TokenText | None = None,
                  train_len: int | None = None, one_pass=True, chunk_size=4096, buckets=None, batch_size=1,
                  progress=True, compiled=False, head_groups=1, mlp_slices=0,
                  layer_progress_from: int = LAYER_PROGRESS_FROM, journal=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, per-document segments) of `docs_nl` ([n_docs, >= longest] ids) at each of `lengths`.

    one_pass=True: one forward per batch at the longest length, shorter lengths read from its
    segments (position-only RoPE; a length-dependent RoPE raises). one_pass=False: one forward per
    length; bucket rows come from the longest pass. Table columns: scope ('prefix' per length,
    'bucket' per position bucket), start, end, nll_sum, the int sums, the metrics, n_docs.
    journal (`ropelaw.evaljournal.Journal`): batches an earlier attempt finished are read from it, and
    each batch run here is saved to it.
    """
    docs_nl = torch.from_numpy(np.asarray(docs_nl).astype(np.int64))  # a copy: eval rows are read-only memmaps
    lengths = sorted(int(n) for n in lengths)
    longest = lengths[-1]
    need = row_tokens_needed(longest, scoring)
    if docs_nl.ndim != 2 or docs_nl.shape[1] < need:
        raise UserError(f"docs must be [n_docs, >= {need}] token ids, got {tuple(docs_nl.shape)}")
    if one_pass and length_dependent_rope(model):
        raise UserError(f"RoPE type {_rope_types(model.config)} depends on the total length, so "
                        "prefixes of one pass are wrong; pass one_pass=False")
    edges = segment_edges(lengths, scoring, train_len)
    buckets = default_bucket_edges(scoring.last_end(longest)) if buckets is None else buckets
    segments, bucket_parts = [], []
    with layer_progress(model, progress and longest >= layer_progress_from):
        for first in tqdm(range(0, docs_nl.shape[0], batch_size), desc="docs", disable=not progress):
            if journal is not None and (done := journal.load(f"batch-{first}")) is not None:
                segments.append(pd.DataFrame(done["segments"]))
                bucket_parts.extend(done["buckets"])
                continue
            started, batch_segments, batch_buckets = time.perf_counter(), [], []
            batch_nl = docs_nl[first : first + batch_size]
            for n in [longest] if one_pass else lengths:
                stats = score_window(model, batch_nl, n, scoring, text, chunk_size=chunk_size, compiled=compiled,
                                     head_groups=head_groups, mlp_slices=mlp_slices)
                batch_segments.append(doc_segments(stats, edges, n, first))
                if n == longest:
                    batch_buckets.extend(bucket_sums(stats, buckets))
            segments.extend(batch_segments)
            bucket_parts.extend(batch_buckets)
            if journal is not None:
                frame = pd.concat(batch_segments, ignore_index=True)
                journal.save(f"batch-{first}", {"segments": {k: v.tolist() for k, v in frame.items()},
                                                "buckets": batch_buckets}, time.perf_counter() - started)
    docs = pd.concat(segments, ignore_index=True).sort_values(["pass_len", "doc", "start"], ignore_index=True)
    buckets_frame = pd.DataFrame(bucket_parts).groupby(["scope", "start", "end"], sort=False)[SUMS]
    buckets_frame = buckets_frame.agg(lambda v: math.fsum(v.tolist())).reset_index()
    table = pd.concat([pd.DataFrame(prefix_rows(docs, lengths, scoring, one_pass)), buckets_frame], ignore_index=True)
    table = with_metrics(table)
    table["n_docs"] = docs_nl.shape[0]
    return table, docs
