"""N-gram overlap between the tuning corpus and the evaluation text: filter and check.

Used by `ropelaw.corpus`; there is no command of its own.

Text is compared as words: lower-cased runs of letters a-z (so punctuation, case,
digits and line breaks do not hide a copy). `EvalGrams` holds every word 13-gram
of the evaluation documents (GPT-3's decontamination unit) per subset. The corpus
build drops every paragraph (text between blank lines) of a corpus document that
holds one of them (`EvalGrams.clean`), and then measures, on what it keeps, the
fraction of each evaluation subset's distinct 13-grams that still occur in the
corpus (`EvalGrams.hits` + `overlap_fractions`); more than `MAX_OVERLAP` fails the
build. Grams are hashed deterministically (word ids from the sorted evaluation
vocabulary, a polynomial hash mod 2^64), so a resumed build agrees with a fresh one.
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np

from ropelaw import UserError

N = 13
MAX_OVERLAP = 0.001
"""At most this fraction of an evaluation subset's distinct 13-grams may occur in the corpus."""
_WORD = re.compile(r"[a-z]+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")
_MULT = np.uint64(0x9E3779B97F4A7C15)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class EvalGrams:
    """The word 13-grams of the evaluation documents, per evaluation subset."""

    def __init__(self, documents: Iterable[tuple[str, str]]):
        """`documents`: (subset, text) pairs of the evaluation set."""
        texts: dict[str, list[list[str]]] = {}
        for subset, text in documents:
            texts.setdefault(subset, []).append(words(text))
        vocab = sorted({w for docs in texts.values() for doc in docs for w in doc})
        self.ids = {w: i + 1 for i, w in enumerate(vocab)}  # 0: a word not in the evaluation text
        self.by_subset = {
            subset: np.unique(np.concatenate([self._hashes(doc) for doc in docs]))
            for subset, docs in sorted(texts.items())
        }
        self.all = np.unique(np.concatenate(list(self.by_subset.values()))) if texts else np.zeros(0, np.uint64)

    def _hashes(self, doc_words: list[str]) -> np.ndarray:
        """Hashes of the grams of `doc_words` made only of evaluation words (others cannot match)."""
        return self._gram_hashes(self._ids(doc_words))[1]

    @staticmethod
    def _gram_hashes(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start positions, hashes) of the N-grams of `ids` that hold no unknown word (id 0)."""
        count = len(ids) - N + 1
        if count <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.uint64)
        unknown = np.concatenate([[0], np.cumsum(ids == 0)])
        starts = np.flatnonzero(unknown[N:] - unknown[:count] == 0)
        hashes = np.zeros(len(starts), np.uint64)
        with np.errstate(over="ignore"):
            for offset in range(N):
                hashes = hashes * _MULT + ids[starts + offset]
        return starts, hashes

    def _ids(self, doc_words: list[str]) -> np.ndarray:
        get = self.ids.get
        return np.array([get(w, 0) for w in doc_words], dtype=np.uint64)

    def _known(self, hashes: np.ndarray) -> np.ndarray:
        """Mask of the `hashes` that are evaluation grams (a binary search in the sorted `all`)."""
        if len(self.all) == 0:
            return np.zeros(len(hashes), bool)
        index = np.minimum(np.searchsorted(self.all, hashes), len(self.all) - 1)
        return self.all[index] == hashes

    def clean(self, text: str) -> tuple[str, int, set[int]]:
        """Drop the paragraphs of `text` that hold an evaluation gram.

        Returns (the text kept, the number of paragraphs dropped, the evaluation gram hashes
        still in the kept text: those that span paragraphs, which a paragraph alone does not hold).
        """
        paragraphs = _PARAGRAPH_BREAK.split(text)
        para_ids = [self._ids(words(p)) for p in paragraphs]
        starts, hashes = self._gram_hashes(np.concatenate(para_ids))
        starts = starts[self._known(hashes)]
        if len(starts) == 0:
            return text, 0, set()
        # word position -> paragraph; a gram taints every paragraph it touches
        ends = np.cumsum([len(ids) for ids in para_ids])
        first = np.searchsorted(ends, starts, side="right")
        last = np.searchsorted(ends, starts + N - 1, side="right")
        tainted = {int(i) for a, b in zip(first, last) for i in range(a, b + 1)}
        kept = [i for i in range(len(paragraphs)) if i not in tainted]
        hashes = self._gram_hashes(np.concatenate([para_ids[i] for i in kept] or [np.zeros(0, np.uint64)]))[1]
        left = {int(h) for h in np.unique(hashes[self._known(hashes)])}
        return "\n\n".join(paragraphs[i] for i in kept), len(tainted), left

    def hits(self, text: str) -> set[int]:
        """The evaluation gram hashes that occur in `text`."""
        hashes = self._gram_hashes(self._ids(words(text)))[1]
        return {int(h) for h in np.unique(hashes[self._known(hashes)])}

    def overlap_fractions(self, found: Iterable[int]) -> dict[str, dict]:
        """Per evaluation subset: its distinct grams, how many occur in the corpus, and the fraction."""
        found_arr = np.array(sorted(found), dtype=np.uint64)
        report = {}
        for subset, grams in self.by_subset.items():
            hit = int(np.isin(grams, found_arr).sum())
            report[subset] = {"grams": int(len(grams)), "found": hit,
                              "fraction": hit / len(grams) if len(grams) else 0.0}
        return report


def check_overlap(grams: EvalGrams, found: Iterable[int]) -> dict[str, dict]:
    """`overlap_fractions(found)`, or a UserError naming the first evaluation subset above `MAX_OVERLAP`."""
    report = grams.overlap_fractions(found)
    for subset, stats in report.items():
        if stats["fraction"] > MAX_OVERLAP:
            raise UserError(f"build-corpus: {stats['fraction']:.3%} of the {N}-grams of evaluation subset {subset} "
                            f"occur in the corpus (at most {MAX_OVERLAP:.1%}); remove the input that holds its text")
    return report
