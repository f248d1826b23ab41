"""What each vocabulary id decodes to: UTF-8 bytes and word boundaries, as lookup tables.

    text = TokenText.from_tokenizer(tokenizer, vocab_size)
    bytes_bt = text.bytes_of(ids_bt)                    # a gather
    words_bt = text.word_starts(ids_bt)                 # one scan per row

Bits per byte and word perplexity need, for every scored token, the bytes it decodes to and
the words it starts. Decoding every token of every row would cost a tokenizer call per token;
instead each id is decoded once into its raw bytes, and rows are scored by table lookups.

Raw bytes of an id: for byte-level BPE (GPT-2, SmolLM2, our scratch tokenizers) the token's
characters map one to one onto bytes; for SentencePiece-style tokenizers (LLaMA) `<0xNN>` is
one byte and `▁` is a space; special tokens (BOS, EOS, pad) decode to nothing (0 bytes). Any
other decoder is refused: its per-token bytes would not add up to the text.

Words: a word starts at a non-whitespace byte that begins the scored text or follows a
whitespace byte; a whitespace run starts at a whitespace byte that begins the text or follows
a non-whitespace byte. Whitespace is ASCII whitespace as Python's `str.isspace` sees it
(space, \\t, \\n, \\r, \\v, \\f, \\x1c-\\x1f); Unicode whitespace beyond ASCII (NBSP, U+2000...)
counts as a word character. Both counts add up over consecutive pieces of a row, so they can be
summed per segment. `bos_id(tokenizer, policy)` says which token, if any, begins a scored row.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from ropelaw import UserError

BOS_POLICIES = ("auto", "true", "false")
_WHITESPACE = np.array([b < 128 and chr(b).isspace() for b in range(256)])
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's map from the printable stand-in characters back to bytes."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def _decoder_kind(tokenizer) -> str:
    """byte_level where a ByteLevel decoder maps the tokens to bytes, alone or as a stage of a Sequence:
    transformers 5.17 converts SmolLM2's GGUF tokenizer with [ByteFallback, Fuse, Replace, ByteLevel], and
    its tokens are byte-level ones (`Ġthe`); else sentencepiece where `▁` or byte fallback appear."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = json.loads(backend.to_str()).get("decoder") if backend is not None else None
    text = json.dumps(decoder)
    stages = (decoder.get("decoders") or [decoder]) if decoder else []
    if any(stage.get("type") == "ByteLevel" for stage in stages):
        return "byte_level"
    if '"ByteFallback"' in text or "\\u2581" in text or "▁" in text:
        return "sentencepiece"
    raise UserError(
        f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r}: its decoder ({text[:80]}) is neither byte-level "
        "BPE nor SentencePiece, so bytes per token are not defined; use a fast tokenizer of one of those kinds"
    )


def raw_bytes(tokenizer, vocab_size: int) -> list[bytes]:
    """The bytes every id in [0, vocab_size) decodes to; special and unused ids give b""."""
    kind = _decoder_kind(tokenizer)
    special = set(tokenizer.all_special_ids)
    added = {i for i in tokenizer.added_tokens_decoder} if hasattr(tokenizer, "added_tokens_decoder") else set()
    byte_map = _byte_level_decoder() if kind == "byte_level" else {}
    tokens = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    out = []
    for i, token in enumerate(tokens):
        if token is None or i in special:
            out.append(b"")
        elif i in added:
            out.append(token.encode())
        elif kind == "byte_level":
            out.append(bytes(byte_map[c] for c in token))
        elif match := _BYTE_TOKEN.fullmatch(token):
            out.append(bytes([int(match.group(1), 16)]))
        else:
            out.append(token.replace("▁", " ").encode())
    _check_against_decode(tokenizer, out, kind)
    return out + [b""] * (vocab_size - len(out))


PROBE = "In the beginning,\n\tGod said:  café, naïve — 漢字 end.\n"


def _check_against_decode(tokenizer, pieces: list[bytes], kind: str) -> None:
    """The per-id bytes of a probe text's ids must join into what the tokenizer decodes them to (a leading
    space a SentencePiece decoder strips aside): else bits per byte and words would count other text."""
    ids = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    joined = b"".join(pieces[i] if i < len(pieces) else b"" for i in ids)
    decoded = tokenizer.decode(ids, clean_up_tokenization_spaces=False).encode()
    if joined not in (decoded, b" " + decoded):
        raise UserError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r}: read as {kind} tokens, the ids of a probe text "
            f"give {joined[:40]!r}... but decode to {decoded[:40]!r}...; bytes per token are not defined for its "
            "decoder; use a fast tokenizer with a byte-level or SentencePiece decoder"
        )


@dataclass(frozen=True)
class TokenText:
    """Per-id tables: byte count, first/last byte whitespace, empty, and starts inside the token."""

    n_bytes: np.ndarray
    first_ws: np.ndarray
    last_ws: np.ndarray
    empty: np.ndarray
    inner_words: np.ndarray
    inner_runs: np.ndarray

    @classmethod
    def from_bytes(cls, pieces: list[bytes]) -> TokenText:
        cols = {k: np.zeros(len(pieces), dtype=np.int64) for k in ("n_bytes", "inner_words", "inner_runs")}
        flags = {k: np.zeros(len(pieces), dtype=bool) for k in ("first_ws", "last_ws", "empty")}
        for i, piece in enumerate(pieces):
            ws = _WHITESPACE[np.frombuffer(piece, dtype=np.uint8)]
            cols["n_bytes"][i] = len(piece)
            flags["empty"][i] = len(piece) == 0
            if len(piece):
                flags["first_ws"][i], flags["last_ws"][i] = ws[0], ws[-1]
                cols["inner_words"][i] = int((~ws[1:] & ws[:-1]).sum())
                cols["inner_runs"][i] = int((ws[1:] & ~ws[:-1]).sum())
        return cls(**cols, **flags)

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab_size: int) -> TokenText:
        return cls.from_bytes(raw_bytes(tokenizer, vocab_size))

    def bytes_of(self, ids_bt) -> np.ndarray:
        return self.n_bytes[np.asarray(ids_bt)]

    def _before_ws(self, ids_bt) -> np.ndarray:
        """[B, T] int: -1 at the text start, else 1/0 for whether the text before token t ends in whitespace."""
        ids_bt = np.asarray(ids_bt)
        nonempty = ~self.empty[ids_bt]
        cols = np.arange(ids_bt.shape[1])
        last = np.maximum.accumulate(np.where(nonempty, cols, -1), axis=1)  # last non-empty token at or before t
        prev = np.concatenate([np.full((ids_bt.shape[0], 1), -1), last[:, :-1]], axis=1)
        ends_ws = self.last_ws[np.take_along_axis(ids_bt, np.maximum(prev, 0), axis=1)].astype(np.int64)
        return np.where(prev < 0, -1, ends_ws)

    def word_starts(self, ids_bt) -> np.ndarray:
        """[B, T] words begun by each token, the row's first token beginning the text."""
        ids_bt = np.asarray(ids_bt)
        before = self._before_ws(ids_bt)
        starts_word = ~self.empty[ids_bt] & ~self.first_ws[ids_bt] & (before != 0)
        return self.inner_words[ids_bt] + starts_word

    def whitespace_runs(self, ids_bt) -> np.ndarray:
        """[B, T] whitespace runs begun by each token (lm-evaluation-harness counts runs + 1 words)."""
        ids_bt = np.asarray(ids_bt)
        before = self._before_ws(ids_bt)
        starts_run = ~self.empty[ids_bt] & self.first_ws[ids_bt] & (before != 1)
        return self.inner_runs[ids_bt] + starts_run


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS token first when it encodes a text (its own convention)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return len(ids) > len(plain) and ids[0] == tokenizer.bos_token_id


def bos_id(tokenizer, policy: str, key: str = "evaluation.bos") -> int | None:
    """The token that begins every scored row and passkey prompt under `policy`, or None."""
    if policy not in BOS_POLICIES:
        raise UserError(f"{key}: {policy!r} is not one of {list(BOS_POLICIES)}")
    if policy == "false" or (policy == "auto" and not adds_bos(tokenizer)):
        return None
    if tokenizer.bos_token_id is None:
        raise UserError(f"{key}: true, but the tokenizer has no bos_token; set {key}: auto or false")
    return int(tokenizer.bos_token_id)
