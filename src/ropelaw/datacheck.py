"""What `ropelaw check-config` checks in the evaluation shards, where they already exist.

The rules make the same checks when they build the evaluation rows (`ropelaw
prepare-eval`, before any training): an evaluation subset that keeps no document
(`pile.iter_documents`, the reader the rules use), and a longest evaluation length
that no document can fill. Here no tokenizer may exist yet, so a document's length
is bounded by its UTF-8 bytes (a byte-level or byte-fallback tokenizer never makes
more tokens than bytes): a length refused here is refused by the rules too.
Shards that the workflow builds itself (`resources/embedded/`) are checked by the
rules alone. Reading stops at the first document long enough.
"""

from __future__ import annotations

from pathlib import Path

from ropelaw import UserError, pile
from ropelaw.grid import EMBEDDED_DIR


def check_eval_data(cfg: dict, cells: list) -> None:
    data = cfg["data"]["eval"]
    shards = data["shards"]
    if not cells or any(s.startswith(EMBEDDED_DIR + "/") or not Path(s).is_file() for s in shards):
        return
    longest = max(cell.eval_lengths[-1] for cell in cells)
    needed = longest + data["skip_tokens"]
    seen = total = 0
    for doc in pile.iter_documents(shards, data["subsets"], key="data.eval"):
        size = len(doc.text.encode("utf-8"))
        seen, total = max(seen, size), total + max(0, size - data["skip_tokens"])
        if size >= needed or (data["short_docs"] == "concatenate" and total >= longest):
            return
    if data["short_docs"] == "skip":
        raise UserError(
            f"evaluation lengths: the longest, {longest} tokens (+ data.eval.skip_tokens = {data['skip_tokens']}), "
            f"exceeds every document of data.eval.shards (the longest has {seen} bytes, so fewer tokens); "
            "lower the lengths, add longer documents, or set data.eval.short_docs: concatenate"
        )
    raise UserError(
        f"evaluation lengths: the longest, {longest} tokens, exceeds all documents of data.eval.shards together "
        f"({total} bytes after data.eval.skip_tokens, so fewer tokens); lower the lengths or add documents"
    )
