"""Passkey's memory by length: what `passkey.lengths` an 80 GB GPU allows.

    python bench/passkey_memory.py --shape llama2-7b --tokens 32768 65536 98304 --cap-gib 80   # one GPU
    python bench/passkey_memory.py --shape llama2-7b --tokens 131072 262144 --cap-gib 80 --recompute
    python bench/passkey_memory.py --tiny --tokens 256 512                                      # CPU, a small shape

`ropelaw passkey` answers a prompt with `ropelaw.passkey.greedy_answer`: transformers' own forward over the
whole prompt with the KV cache on (every layer's keys and values kept whole), then greedy tokens from that
cache; its chunking is not `ropelaw evaluate`'s. Here one prompt of random token ids per length, on a model of
the given shape with random weights (bf16 on a GPU, fp32 on CPU), is answered with 8 new tokens, as a 5-digit
key needs (len(" " + key) + 2). One row per length: seconds, peak allocated memory (GPU), the weights, the KV
cache's own size (2 x layers x tokens x KV heads x head_dim x bytes), or out of memory (recorded, and the longer
lengths are not tried). `--cap-gib 80` caps the process like an A100-80GB. The allocator's setting in effect
(`PYTORCH_CUDA_ALLOC_CONF`, e.g. `expandable_segments:True`, as rules/passkey.smk sets it) is in every row.
`--recompute`: the answer without a cache instead (`greedy_answer_recomputed`, with the chunk and head groups
`ropelaw.chunking.choose_chunk` picks under the cap, as `choose_decoding` does), with no draft: its worst case,
one chunked forward per new token.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from benchlib import environment, gib, out_path, random_llama, write_record

from ropelaw.chunking import choose_chunk
from ropelaw.passkey import greedy_answer, greedy_answer_recomputed

TINY = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, rope_theta=10000.0, max_position_embeddings=4096)
NEW_TOKENS = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="llama2-7b", help="benchlib.SHAPES")
    parser.add_argument("--tiny", action="store_true", help="a small shape on the CPU (the CPU suite's check)")
    parser.add_argument("--tokens", type=int, nargs="+", required=True, help="prompt lengths, increasing")
    parser.add_argument("--cap-gib", type=float, default=None, help="cap the process's GPU memory (GiB)")
    parser.add_argument("--recompute", action="store_true", help="answer without a KV cache (the chunked forward)")
    args = parser.parse_args()

    model, device = random_llama(args.shape, TINY if args.tiny else None, args.cap_gib, use_cache=True)
    config = model.config
    element = next(model.parameters()).element_size()
    weights_gib = gib(sum(p.numel() * p.element_size() for p in model.parameters()))
    kv_heads = config.num_key_value_heads
    for length in sorted(args.tokens):
        ids_bl = torch.randint(0, config.vocab_size, (1, length), generator=torch.Generator().manual_seed(1))
        record = {"bench": "passkey_memory", **environment(), "shape": "tiny" if args.tiny else args.shape,
                  "cap_gib": args.cap_gib, "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), "tokens": length,
                  "new_tokens": NEW_TOKENS, "weights_gib": weights_gib, "path": "cache",
                  "kv_cache_gib": gib(2 * config.num_hidden_layers * length * kv_heads * config.head_dim * element)}
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        try:
            if args.recompute:  # as choose_decoding sets it up where the cache does not fit
                chunk, how = choose_chunk(model, length + 32, 1, "auto", None)
                answer, forwards = greedy_answer_recomputed(model, ids_bl, NEW_TOKENS, [[]], chunk_size=chunk,
                                                            head_groups=how["head_groups"], mlp_slices=how["mlp_slices"])
                record.update(path="recompute", forwards=forwards, chunk_size=chunk, head_groups=how["head_groups"],
                              mlp_slices=how["mlp_slices"])
            else:
                answer = greedy_answer(model, ids_bl, NEW_TOKENS)
        except torch.OutOfMemoryError as err:
            write_record(out_path("passkey_memory.jsonl"), {**record, "out_of_memory": str(err).split("\n")[0][:300]})
            break
        if device == "cuda":
            torch.cuda.synchronize()
        record.update(seconds=time.perf_counter() - started, answer_tokens=list(answer.shape),
                      peak_gib=gib(torch.cuda.max_memory_allocated()) if device == "cuda" else None)
        write_record(out_path("passkey_memory.jsonl"), record)


if __name__ == "__main__":
    main()
