"""One input of the tuning corpus as a resumable part: shards written one by one.

Used by `ropelaw.corpus`; there is no command of its own.

A part's folder holds `state.json` (its fingerprint: the input, its pins, the tokenizer,
the evaluation shards, the shard size and the code budget), shards `00000.jsonl.zst`,
`00001.jsonl.zst`, ..., each followed by its sidecar `00000.json` (how many source
documents it consumed, documents, tokens, characters, UTF-8 bytes, paragraphs and
documents dropped for overlap, the evaluation 13-grams still present), and, once the
input is exhausted or its budget spent, `done.json`. A shard without a sidecar was
interrupted and is written again; a folder whose fingerprint differs is rebuilt.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

from ropelaw.corpus_overlap import EvalGrams
from ropelaw.corpus_sources import MIN_CHARS, Input
from ropelaw.pile import write_shard
from ropelaw.provenance import sha256_file, write_json

_COUNTS = ("documents", "tokens", "characters", "utf8_bytes", "dropped_paragraphs", "dropped_documents")


class Part:
    """The shards of one input, under `folder`."""

    def __init__(self, inp: Input, path: Path, folder: Path, fingerprint: dict[str, Any]):
        self.inp, self.path, self.folder = inp, path, folder
        self.fingerprint = {**fingerprint, "input": asdict(inp)}

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder / name).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def sidecars(self) -> list[dict[str, Any]]:
        """The sidecars of the finished shards, in order (the first gap ends the list)."""
        found = []
        while (sidecar := self._read(f"{len(found):05d}.json")) is not None:
            found.append(sidecar)
        return found

    def shards(self) -> list[Path]:
        return [self.folder / f"{i:05d}.jsonl.zst" for i in range(len(self.sidecars()))]

    def totals(self) -> dict[str, Any]:
        done = self._read("done.json")
        assert done is not None, f"{self.folder}: totals of an unfinished part"
        return done

    def hits(self) -> set[int]:
        return {h for sidecar in self.sidecars() for h in sidecar["hits"]}

    def record(self) -> dict[str, Any]:
        """The part's entry in the corpus manifest."""
        inp, totals = self.inp, self.totals()
        return {"name": inp.name, "subset": inp.subset, "kind": inp.kind, "package": inp.package,
                "version": inp.version, "sha256": inp.sha256, "file": self.path.name,
                "file_sha256": sha256_file(self.path), **{k: totals[k] for k in _COUNTS},
                "shards": totals["shards"], "budget": totals["budget"], "capped": totals["capped"]}

    def _prepare(self) -> list[dict[str, Any]]:
        """Clear a stale or broken state; return the finished shards' sidecars."""
        if self._read("state.json") != self.fingerprint:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(self.folder / "state.json", self.fingerprint)
        sidecars = self.sidecars()
        keep = {"state.json"} | {f"{i:05d}{s}" for i in range(len(sidecars)) for s in (".json", ".jsonl.zst")}
        for path in self.folder.iterdir():
            if path.name not in keep:  # an interrupted shard, its temporary files, an old done.json
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        return sidecars

    def build(self, docs: Callable[[], Iterator[tuple[str, str]]], grams: EvalGrams,
              count: Callable[[list[str]], list[int]], budget: int | None) -> int:
        """Write the part's remaining shards and `done.json`; return how many shards were already there."""
        done = self._read("done.json")
        if done is not None and self._read("state.json") == self.fingerprint:
            return done["shards"]
        sidecars = self._prepare()
        resumed = len(sidecars)
        consumed = sidecars[-1]["source_docs"] if sidecars else 0
        tokens = sum(s["tokens"] for s in sidecars)
        tail = dict.fromkeys(_COUNTS, 0)
        capped = budget is not None and tokens >= budget
        buffer: list[dict[str, Any]] = []
        hits: set[int] = set()
        seen = consumed
        for index, (title, text) in enumerate(docs() if not capped else ()):
            if index < consumed:
                continue
            seen = index + 1
            kept, dropped, left = grams.clean(text)
            tail["dropped_paragraphs"] += dropped
            if len(kept.strip()) < MIN_CHARS:
                tail["dropped_documents"] += 1
                continue
            if budget is not None:
                tokens += count([kept])[0]
                if tokens > budget:  # the document that would pass the budget is left out
                    capped = True
                    break
            buffer.append({"text": kept, "meta": {"pile_set_name": self.inp.subset, "title": title,
                                                  "source": self.inp.name}})
            hits |= left
            tail["characters"] += len(kept)
            if tail["characters"] >= self.fingerprint["shard_chars"]:
                sidecars.append(self._flush(len(sidecars), buffer, tail, seen, hits, count))
                buffer, tail, hits = [], dict.fromkeys(_COUNTS, 0), set()
        if buffer:
            sidecars.append(self._flush(len(sidecars), buffer, tail, seen, hits, count))
            tail = dict.fromkeys(_COUNTS, 0)
        totals = {k: sum(s[k] for s in sidecars) + tail[k] for k in _COUNTS}
        write_json(self.folder / "done.json", {**totals, "shards": len(sidecars), "budget": budget,
                                               "capped": capped})
        return resumed

    def _flush(self, index: int, records: list[dict[str, Any]], tail: dict[str, int],
               source_docs: int, hits: set[int], count: Callable[[list[str]], list[int]]) -> dict:
        """Write shard `index` and then its sidecar; return the sidecar."""
        texts = [r["text"] for r in records]
        shard = self.folder / f"{index:05d}.jsonl.zst"
        write_shard(shard, records)
        sidecar = {**tail, "documents": len(records), "tokens": sum(count(texts)),
                   "utf8_bytes": sum(len(t.encode("utf-8")) for t in texts),
                   "source_docs": source_docs, "hits": sorted(hits), "sha256": sha256_file(shard)}
        write_json(self.folder / f"{index:05d}.json", sidecar)
        return sidecar
