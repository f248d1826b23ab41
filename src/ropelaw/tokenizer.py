"""Train a byte-level BPE tokenizer on Pile shards (for models trained from scratch).

    ropelaw train-tokenizer --shards resources/embedded/train/00.jsonl.zst \
        --subsets Shakespeare-Modern Shakespeare-Folio --vocab-size 4096 --out DIR

DIR is a Hugging Face tokenizer folder (`AutoTokenizer.from_pretrained(DIR)`
loads it) whose only special token is `<|endoftext|>`, the EOS and BOS token;
byte-level BPE needs no unknown token. `DIR/ropelaw_tokenizer.json` records
the inputs' checksums. Training is deterministic: same shards, same files.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from ropelaw import UserError
from ropelaw.pile import check_shards, iter_documents
from ropelaw.provenance import atomic_path, manifest, sha256_file, write_json

EOS = "<|endoftext|>"
MANIFEST = "ropelaw_tokenizer.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", nargs="+", required=True, help="Pile-format shards (.jsonl, .jsonl.zst)")
    parser.add_argument("--subsets", nargs="+", default=None, help="pile_set_name values to keep (default: all)")
    parser.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, <|endoftext|> included")
    parser.add_argument("--out", type=Path, required=True, help="output tokenizer folder")


def run(args: argparse.Namespace) -> None:
    train_tokenizer(args.shards, args.vocab_size, args.out, args.subsets)


def check_trained(path: str | Path) -> None:
    """Refuse a tokenizer folder of ours that was trained on no documents (an older version wrote them)."""
    import json

    record = Path(path) / MANIFEST
    if record.is_file() and not sum(json.loads(record.read_text()).get("documents", {}).values()):
        raise UserError(f"{path}: this tokenizer was trained on no documents; delete it and re-run "
                        "`ropelaw train-tokenizer` on shards that hold text (data.train)")


def train_tokenizer(
    shards: list[str | Path],
    vocab_size: int,
    out: str | Path,
    subsets: list[str] | None = None,
    key: str = "data.train",
) -> dict:
    """Train on the documents of `shards` (those in `subsets`); write the folder `out`; return its manifest."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257:
        raise UserError(f"vocab_size: {vocab_size} is below 257 (256 bytes + {EOS}); raise it")
    paths = check_shards(shards, key)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    counts: Counter = Counter()
    n_chars = 0

    def texts():
        nonlocal n_chars
        for doc in tqdm(iter_documents(paths, subsets, key=key), desc="tokenizer corpus", unit="doc"):
            counts[doc.subset] += 1
            n_chars += len(doc.text.strip())
            yield doc.text

    bpe.train_from_iterator(texts(), trainer=trainer)
    if n_chars == 0:
        raise UserError(f"{key}.shards: {[str(p) for p in paths]} hold {sum(counts.values())} documents"
                        f"{f' of subsets {subsets}' if subsets else ''} and no text to train a tokenizer on; "
                        f"add shards or fix {key}.subsets")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS)
    out = Path(out)
    with atomic_path(out) as tmp:
        tokenizer.save_pretrained(tmp)
        info = manifest(
            shards={str(p): sha256_file(p) for p in paths},
            subsets=subsets,
            documents=dict(counts),
            vocab_size_requested=vocab_size,
            vocab_size=len(tokenizer),
            eos_token=EOS,
            eos_token_id=tokenizer.eos_token_id,
            tokenizer_json_sha256=sha256_file(tmp / "tokenizer.json"),
        )
        write_json(tmp / MANIFEST, info)
    return info
