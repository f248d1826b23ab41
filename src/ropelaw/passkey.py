"""Passkey retrieval of one cell: can the model fetch a number hidden deep in its context?

    ropelaw passkey --model DIR --cell-json '{...}' --eval-data DIR --tokenizer DIR \
        --spec '{"lengths": [...], "depths": [...], "trials": 2, ...}' --out results/.../passkey.csv

Low perplexity at a long context does not show that a model uses that context (Men et al.
2024: small bases keep perplexity low while retrieval fails), so every cell also answers
prompts of exactly L tokens:

    [prefix] filler[:p] needle filler[p:] question      needle = "... pass key is 48213 ..."

The filler is real evaluation text: a window of one row of `ropelaw prepare-eval`'s docs.bin,
the documents perplexity is measured on. The needle goes after a fraction `depth` of the
filler (0 = first, 1 = just before the question). For each (length, trial) one generator
seeded with (seed, length, trial) draws a key per depth and then the window, so prompts depend
only on the tokenizer, the rows and the spec: every cell of a model answers the same prompts
(`prompts_sha256` in the sidecar), and adding a length changes no other length's prompts.
A prompt begins with the BOS token when `evaluation.bos` says so (auto: when the tokenizer adds
one to a text), as evaluation rows do; passkey.json records the policy and the token.

Each batch of prompts runs one forward with the KV cache on and logits for the last position
only (`logits_to_keep=1`), then greedily decodes len(" " + key) + 2 tokens from the cache, so
the [B, L, V] logits never exist. A length-dependent method (dynamic NTK) sees each prompt at
exactly L in that forward, as perplexity does; the decoded tokens follow transformers' cache
update. Where a length's KV cache would not fit the free memory (`choose_decoding`), its prompts are answered
without one (`greedy_answer_recomputed`: perplexity's chunked forward, the key's tokens as a draft checked in
one forward); passkey.json's `decoding` says which, per length.
An answer is correct when its first run of digits is the key.
Output: one row per (length, depth, trial), with the key's token span in the prompt. Until passkey.csv is
written, each answered batch waits in passkey_partial/ beside it, so a job stopped by its time limit resumes
when re-submitted (`ropelaw.evaljournal`).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ropelaw import UserError, evaljournal, json_object, provenance, rope
from ropelaw.evaljournal import Journal, journal_dir

KEY = "{key}"
EXTRA_TOKENS = 2  # decoded beyond the key's own tokens, so a longer number is caught as wrong
ACTIVATION_BYTES = 10.0  # per position per unit of the MLP's intermediate size in bf16, measured 9.0-9.3 (cached_peak_bytes)


@dataclass(frozen=True)
class PasskeySpec:
    """The `passkey` config block, with `lengths` resolved (see schemas/config.schema.yaml)."""

    lengths: tuple[int, ...]
    """Prompt lengths in tokens, each at most the length of the evaluation rows."""
    depths: tuple[float, ...]
    """Where the needle goes, as a fraction of the filler before it (0 = first, 1 = last)."""
    trials: int
    """Prompts per (length, depth): each trial has its own filler window, shared by its depths, and a key per depth."""
    seed: int
    """Seed of the keys and filler windows."""
    key_digits: int
    """Digits of every key (no leading zero)."""
    prefix: str
    """Text before the filler."""
    needle: str
    """Text hiding the key; every {key} in it becomes the key."""
    question: str
    """Text after the filler; the model's continuation is its answer."""

    def __post_init__(self):
        lengths, depths = list(self.lengths), list(self.depths)
        if not lengths or lengths != sorted(set(lengths)) or lengths[0] < 2:
            raise UserError(f"passkey.lengths must be increasing lengths >= 2 without repeats, got {lengths}")
        if not depths or not all(0.0 <= d <= 1.0 for d in depths) or len(set(depths)) != len(depths):
            raise UserError(f"passkey.depths must be distinct fractions in [0, 1], got {depths}")
        if self.trials < 1 or self.seed < 0 or not 1 <= self.key_digits <= 18:
            raise UserError("passkey: trials >= 1, seed >= 0 and 1 <= key_digits <= 18 are required")
        if KEY not in self.needle:
            raise UserError(f"passkey.needle must contain {KEY} (got {self.needle!r})")
        if KEY in self.prefix + self.question:
            raise UserError(f"passkey.prefix and passkey.question must not contain {KEY}: the key is hidden in the needle only")

    @classmethod
    def from_json(cls, text: str) -> PasskeySpec:
        raw = json_object(text, "--spec", "pass the passkey config block as JSON")
        fields = set(cls.__dataclass_fields__)
        if set(raw) != fields:
            raise UserError(f"--spec needs exactly the keys {sorted(fields)}, got {sorted(raw)}")
        return cls(**{**raw, "lengths": tuple(raw["lengths"]), "depths": tuple(raw["depths"])})


@dataclass(frozen=True)
class Prompt:
    """One prompt of exactly `length` tokens; the key's tokens are input_ids[key_start:key_end]."""

    length: int
    depth: float
    trial: int
    key: str
    doc: int
    doc_offset: int
    key_start: int
    key_end: int
    input_ids: np.ndarray


def score(answer: str, key: str) -> bool:
    """Exact match: the first run of digits of the answer is the key, no more, no less."""
    digits = re.search(r"[0-9]+", answer)
    return digits is not None and digits.group() == key


def _ids(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)


def encode_needle(tokenizer, needle: str, key: str) -> tuple[np.ndarray, int, int]:
    """(needle token ids, first key token, one past the last) for the first {key} of `needle`."""
    text = needle.replace(KEY, key)
    first = needle.index(KEY)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    span = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if a < first + len(key) and b > first]
    return np.asarray(encoded["input_ids"], dtype=np.int64), span[0], span[-1] + 1


def build_prompts(tokenizer, docs_nl, spec: PasskeySpec, length: int, bos: int | None = None) -> list[Prompt]:
    """The trials x depths prompts of one length, ordered by trial then depth; `bos` (an id) goes first."""
    head = np.concatenate([[bos] if bos is not None else [], _ids(tokenizer, spec.prefix)]).astype(np.int64)
    tail = _ids(tokenizer, spec.question)
    n_docs, row_len = docs_nl.shape
    prompts = []
    for trial in range(spec.trials):
        rng = np.random.default_rng([spec.seed, length, trial])
        keys = [str(rng.integers(10 ** (spec.key_digits - 1), 10**spec.key_digits)) for _ in spec.depths]
        needles = [encode_needle(tokenizer, spec.needle, key) for key in keys]
        fillers = [length - len(head) - len(ids) - len(tail) for ids, _, _ in needles]
        if min(fillers) < 1:
            raise UserError(
                f"passkey.lengths: {length} tokens cannot hold the {length - min(fillers)} tokens of "
                "passkey.prefix, needle and question with any filler; drop the length or shorten the templates"
            )
        if max(fillers) > row_len:
            raise UserError(
                f"passkey.lengths: {length} needs {max(fillers)} filler tokens but the evaluation rows hold "
                f"{row_len}; keep passkey lengths <= the longest of evaluation.lengths"
            )
        doc = int(rng.integers(n_docs))
        offset = int(rng.integers(row_len - max(fillers) + 1))
        for depth, key, (needle_ids, key_first, key_last), n_filler in zip(spec.depths, keys, needles, fillers):
            filler = np.asarray(docs_nl[doc, offset : offset + n_filler], dtype=np.int64)
            cut = round(depth * n_filler)
            input_ids = np.concatenate([head, filler[:cut], needle_ids, filler[cut:], tail])
            assert len(input_ids) == length
            start = len(head) + cut
            prompts.append(Prompt(length, depth, trial, key, doc, offset, start + key_first, start + key_last, input_ids))
    return prompts


def greedy_answer(model, input_ids_bl, n_new: int):
    """[B, n_new] greedy continuation of equal-length prompts, from the KV cache, last-position logits only."""
    import torch

    from ropelaw.perplexity import reset_dynamic_rope

    device = next(model.parameters()).device
    ids_bl = torch.as_tensor(np.asarray(input_ids_bl), dtype=torch.long, device=device)
    reset_dynamic_rope(model)
    tokens = []
    with torch.inference_mode():
        out = model(input_ids=ids_bl, use_cache=True, logits_to_keep=1)
        for step in range(n_new):
            next_b = out.logits[:, -1].argmax(-1)
            tokens.append(next_b)
            if step + 1 < n_new:
                out = model(input_ids=next_b[:, None], past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)
    return torch.stack(tokens, 1).cpu()


def cached_peak_bytes(model, length: int, batch: int) -> int:
    """What `greedy_answer` needs at a prompt length: the weights, the KV cache of every layer (2 x layers x
    positions x KV heads x head_dim) and the forward's own activations, ACTIVATION_BYTES per position per unit of
    the MLP's intermediate size (measured: BENCHMARKS.md, nineteenth session, passkeymem: 9.0-9.3 bytes for a 7B
    and 13B shape in bf16, at 32K to 96K tokens)."""
    from ropelaw.chunking import model_shape

    shape, element = model_shape(model), next(model.parameters()).element_size()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    positions = length * batch
    kv = 2 * model.config.num_hidden_layers * positions * shape["kv_heads"] * shape["head_dim"] * element
    return weights + kv + int(ACTIVATION_BYTES * element / 2 * shape["inter"] * positions)


def choose_decoding(model, length: int, batch: int, budget_gib: float | None = None) -> dict:
    """How prompts of `length` tokens are answered, with the reckoning (for passkey.json): `cache` (`greedy_answer`)
    where its memory fits the budget (`ropelaw.chunking.memory_budget`: the free GPU memory, or
    evaluation.memory_budget_gib) or where the method's rotation depends on the length (dynamic NTK: recomputing
    would rotate the earlier tokens again), else `recompute` (`greedy_answer_recomputed`: the chunked forward of
    perplexity, its chunk and head groups from `ropelaw.chunking.choose_chunk`)."""
    from ropelaw.chunking import SLACK, choose_chunk, memory_budget
    from ropelaw.perplexity import length_dependent_rope

    device = next(model.parameters()).device.type
    budget, source = memory_budget(device, budget_gib)  # beyond the weights, which are loaded already
    need = cached_peak_bytes(model, length, batch)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    record = {"length": length, "cached_peak_gib": need / 2**30, "weights_gib": weights / 2**30,
              "budget_gib": budget / 2**30, "budget_source": source}
    if length_dependent_rope(model):
        return {**record, "path": "cache", "reason": "a length-dependent rotation (dynamic NTK) must be cached"}
    if need - weights <= budget * SLACK:
        return {**record, "path": "cache", "reason": "the KV cache fits"}
    # the longest forward: the prompt, the answer so far and a draft, at most a key's 18 digits and a few tokens
    chunk, chunking = choose_chunk(model, length + 32, 1, "auto", budget_gib)
    return {**record, "path": "recompute", "reason": "the KV cache does not fit: the chunked forward, once per "
            "rejected draft token", "chunk_size": chunk, "head_groups": chunking["head_groups"],
            "mlp_slices": chunking["mlp_slices"]}


def greedy_answer_recomputed(model, input_ids_bl, n_new: int, drafts: list[list[int]], *, chunk_size: int,
                             head_groups: int = 1, mlp_slices: int = 0) -> tuple[object, int]:
    """([B, n_new] greedy continuation, full forwards run) without a KV cache: the chunked forward of perplexity
    (`ropelaw.perplexity.last_hidden_states`, the memory of perplexity's), once per rejected draft token, as
    speculative decoding verifies a draft. Each row's draft (the key's tokens) is appended to the prompt and the
    tokens generated so far; one forward gives the greedy token at every draft position: the draft is kept up to
    its first disagreement, and the greedy token there (or after the whole draft) is added. A model that
    retrieves its key answers in one or two forwards, one that does not in up to n_new. The tokens are
    `greedy_answer`'s (the same greedy rule on the same logits, up to rounding near ties)."""
    import torch

    from ropelaw.perplexity import last_hidden_states

    device = next(model.parameters()).device
    lm_head = model.get_output_embeddings()
    rows, forwards = [], 0
    for prompt, draft in zip(np.asarray(input_ids_bl), drafts, strict=True):
        answer: list[int] = []
        while len(answer) < n_new:
            guess = list(draft[len(answer):]) if answer == list(draft[:len(answer)]) else []
            guess = guess[: n_new - len(answer) - 1]
            ids = torch.as_tensor(np.concatenate([prompt, answer + guess]).astype(np.int64), device=device)[None]
            hidden = last_hidden_states(model, ids, chunk_size, head_groups=head_groups, mlp_slices=mlp_slices)
            with torch.inference_mode():
                greedy = lm_head(hidden[0, -1 - len(guess):]).argmax(-1).tolist()
            forwards += 1
            kept = next((i for i, (g, d) in enumerate(zip(greedy, guess)) if g != d), len(guess))
            answer += guess[:kept] + [greedy[kept]]
        rows.append(answer[:n_new])
    return torch.as_tensor(rows, dtype=torch.long), forwards


def all_prompts(tokenizer, docs_nl, spec: PasskeySpec, bos: int | None = None) -> dict[int, list[Prompt]]:
    """The prompts of every length of `spec`: a length the templates do not fit, or one the rows cannot fill, is
    a `UserError` here, before a model is loaded."""
    return {length: build_prompts(tokenizer, docs_nl, spec, length, bos) for length in spec.lengths}


def evaluate_passkey(model, tokenizer, docs_nl, spec: PasskeySpec, *, batch_size: int = 1, progress: bool = True,
                     bos: int | None = None, prompts_by_length: dict[int, list[Prompt]] | None = None, journal=None,
                     decoding=None):
    """(one row per prompt, sha256 of every prompt's tokens in order, one record per length of how its prompts
    were answered); `bos` as in `build_prompts`; `prompts_by_length` as `all_prompts` gives them (made here if
    not given). journal (`ropelaw.evaljournal.Journal`): batches an earlier attempt answered are read from it,
    each batch answered here is saved to it. decoding(length, batch) -> a `choose_decoding` record; None: every
    length from the KV cache (`greedy_answer`)."""
    from tqdm.auto import tqdm

    prompts_by_length = prompts_by_length or all_prompts(tokenizer, docs_nl, spec, bos)
    digest = hashlib.sha256()
    rows, decodings = [], []
    for length in spec.lengths:
        prompts = prompts_by_length[length]
        n_new = max(len(_ids(tokenizer, " " + p.key)) for p in prompts) + EXTRA_TOKENS
        how = decoding(length, min(batch_size, len(prompts))) if decoding else {"length": length, "path": "cache"}
        decodings.append({**how, "forwards": 0})
        for first in tqdm(range(0, len(prompts), batch_size), desc=f"passkey L={length}", disable=not progress):
            batch = prompts[first : first + batch_size]
            ids_bl = np.stack([p.input_ids for p in batch])
            digest.update(ids_bl.astype("<i8").tobytes())
            name = f"L{length}-batch-{first}"
            if journal is not None and (done := journal.load(name)) is not None:
                rows.extend(done["rows"])
                continue
            started, answered = time.perf_counter(), []
            if how["path"] == "cache":
                answers, forwards = greedy_answer(model, ids_bl, n_new), 1
            else:
                answers, forwards = greedy_answer_recomputed(
                    model, ids_bl, n_new, [_ids(tokenizer, " " + p.key).tolist() for p in batch],
                    chunk_size=how["chunk_size"], head_groups=how["head_groups"], mlp_slices=how["mlp_slices"])
            decodings[-1]["forwards"] += forwards
            for prompt, answer_ids in zip(batch, answers.tolist()):
                answer = tokenizer.decode(answer_ids, skip_special_tokens=True)
                fields = {k: v for k, v in asdict(prompt).items() if k != "input_ids"}
                answered.append({**fields, "answer": answer, "correct": score(answer, prompt.key)})
            rows.extend(answered)
            if journal is not None:
                journal.save(name, {"rows": answered}, time.perf_counter() - started)
    return pd.DataFrame(rows), digest.hexdigest(), decodings


def accuracy_by_length(table: pd.DataFrame) -> pd.DataFrame:
    return table.groupby("length").correct.agg(prompts="size", correct="sum", accuracy="mean").reset_index()


def _device_name(model) -> str:
    import torch

    device = next(model.parameters()).device
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def add_arguments(parser) -> None:
    from ropelaw.evaluate import add_cell_arguments

    add_cell_arguments(parser)
    parser.add_argument("--eval-data", required=True, help="evaluation directory (ropelaw prepare-eval): the filler")
    parser.add_argument("--tokenizer", required=True, help="the tokenizer the evaluation rows were made with")
    parser.add_argument("--spec", required=True, help="the passkey config block as JSON, lengths resolved")
    parser.add_argument("--bos", default="auto", choices=["auto", "true", "false"], help="evaluation.bos")
    parser.add_argument("--memory-budget-gib", type=float, default=None,
                        help="memory the answers may plan for (default: the free GPU memory; 8 GiB on CPU): prompts "
                             "whose KV cache does not fit are answered by the chunked forward (passkey.json: decoding)")


def run(args) -> None:
    from ropelaw.data import load_tokenizer
    from ropelaw.evaldata import load_eval_docs
    from ropelaw.evaluate import cell_method, check_arguments, load_cell_model, parse_cell
    from ropelaw.tokentext import bos_id

    check_arguments(args)
    cell = parse_cell(args.cell_json)
    spec = PasskeySpec.from_json(args.spec)
    docs = load_eval_docs(args.eval_data)
    tokenizer, tokenizer_identity = load_tokenizer(args.tokenizer)
    bos = bos_id(tokenizer, args.bos)
    prompts_by_length = all_prompts(tokenizer, docs, spec, bos)  # a length that cannot be built fails before the model loads
    model, inv_freq = load_cell_model(args.model, cell, precision=args.precision, attn_implementation=args.attn_implementation,
                                      decoding=True)
    # Everything that decides the answers: what a resumed attempt must share with the one it resumes.
    identity = dict(
        kind="passkey",
        cell=cell.to_dict(),
        spec=asdict(spec),
        method=cell_method(cell).to_json(),
        model_dir=str(args.model),
        model_manifest_sha256=provenance.sha256_if_exists(Path(args.model) / "ropelaw_manifest.json"),
        eval_manifest_sha256=provenance.sha256_file(Path(args.eval_data) / "manifest.json"),
        tokenizer=tokenizer_identity,
        bos=args.bos,
        bos_token_id=bos,
        batch_size=args.batch_size,
        dtype=str(next(model.parameters()).dtype),
        attn_implementation=args.attn_implementation,
        attention=model.config._attn_implementation,
        inv_freq_sha256=rope.inv_freq_digest(inv_freq),
    )
    out = Path(args.out)
    journal = Journal(journal_dir(out), identity)
    journal.claim(f"{args.batch_size} prompt(s)")
    started = time.perf_counter()
    table, prompts_sha256, decodings = evaluate_passkey(
        model, tokenizer, docs, spec, batch_size=args.batch_size, bos=bos, prompts_by_length=prompts_by_length,
        journal=journal, decoding=lambda length, batch: choose_decoding(model, length, batch, args.memory_budget_gib))
    seconds = time.perf_counter() - started
    for key, value in reversed(cell.columns().items()):
        table.insert(0, key, value)
    summary = accuracy_by_length(table)
    sidecar = provenance.manifest(
        **identity,
        prompts_sha256=prompts_sha256,
        device=_device_name(model),
        alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        seconds=seconds,
        resumed_batches_seconds=journal.resumed_seconds,
        decoding=decodings,
        accuracy_by_length=summary.to_dict(orient="records"),
        inv_freq=inv_freq.tolist(),
    )
    with provenance.atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    provenance.write_json(out.with_suffix(".json"), sidecar)
    evaljournal.remove(journal.folder)
    print(summary.to_string(index=False))
