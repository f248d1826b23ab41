#!/usr/bin/env bash
# Every GPU benchmark of BENCHMARKS.md, in three parts that each fit a 10-minute slot:
#
#   bash bench/run_all.sh eval      # 1 GPU: ceilings, SDPA kernels, 7B at 100K/256K, SmolLM2 at 1M
#   bash bench/run_all.sh train     # 1 GPU: 7B forward+backward at 4K/16K; ropelaw.finetune.train, plain and ZeRO-3
#   bash bench/run_all.sh scaling   # ropelaw.finetune.train + ZeRO-3 under torchrun, 1 GPU then all visible
#   bash bench/run_all.sh eval2     # 1 GPU: 7B at 100K eager vs evaluation.compile, profiled; 13B at 100K/256K
#   bash bench/run_all.sh train2    # 1 GPU: 13B forward+backward at 4K/16K; ropelaw.finetune.train with finetune.compile
#   bash bench/run_all.sh eval3     # 1 GPU: default evaluation path (auto chunk) vs plain model(ids, labels=ids), 7B and 13B at 32K/100K
#   bash bench/run_all.sh train3    # 1 GPU: SmolLM2-135M at 8K, plain vs finetune.fused_loss (SMOLLM2_DIR: a converted model)
#   bash bench/run_all.sh train4    # 1 GPU: SmolLM2-135M at 8K, the three losses (grad_in_forward, checkpointed, plain)
#   bash bench/run_all.sh eval4     # 1 GPU: 13B at 1M under an A100-80GB's cap (head groups); ~18 min: bench/background.sh
#   bash bench/run_all.sh eval5     # 1 GPU: 13B at 1M under the cap, 2 of 40 layers run (all resident): the peak memory in 3 minutes
#   bash bench/run_all.sh eval9     # 1 GPU: 7B at 32K/100K, the default path beside chunks of 16K, 32K and the whole row, vs plain
#   bash bench/run_all.sh eval10    # 1 GPU: eval9's plain, default and whole row at 32K/100K, each profiled by kernel class
#   bash bench/run_all.sh train5    # 1 GPU: SmolLM2-135M at 8K, today's path vs the fast ones side by side, 50 steps (TOKENS_DIR: real rows)
#   bash bench/run_all.sh train6    # 1 GPU: train5's reference and best path, each also with cuDNN's attention kernel only
#   bash bench/run_all.sh train7    # 1 GPU: train6's reference and fast path, 5 steps of each profiled by kernel class
#   bash bench/run_all.sh train8    # 1 GPU: the fast path beside its compiled loss chunk and flash's and efficient's attention
#   bash bench/run_all.sh train9    # 1 GPU: plain, the fast path and its compiled loss chunk side by side (goal 3)
#   bash bench/run_all.sh train10   # 1 GPU: train8's flash and efficient rows again, dynamo reset before each
#   bash bench/run_all.sh train11   # 1 GPU: train9's paths as the studies train (50 steps, logging every 10)
#   bash bench/run_all.sh eval11    # 1 GPU: eval10's paths at 32K/100K, then interleaved rounds (order effects)
#   bash bench/run_all.sh train12   # 1 GPU: SmolLM2 at 16K, plain (micro-batch 2) vs the fast path (4), side by side
#   bash bench/run_all.sh train13   # 1 GPU: train11's plain and compiled-loss paths, then the latter with max-autotune
#   bash bench/run_all.sh train14   # 1 GPU: the compiled-loss path's 3 profiled steps as a trace: where the GPU waits
#   bash bench/run_all.sh train15   # 1 GPU: train14's two host syncs removed, side by side with the path before (goal 3)
#   bash bench/run_all.sh eval12    # 1 GPU: ropelaw's own LLaMA MLP over whole rows in intermediate slices vs plain (goal 1)
#   bash bench/run_all.sh eval13    # 1 GPU: the default vs plain at 32K, 8 interleaved rounds and a profile (goal 1's last 0.3%)
#   bash bench/run_all.sh eval4check  # 1 GPU: eval4's 131K check alone (head groups 8 and 4 vs the default, uncapped)
#   bash bench/run_all.sh eval14      # 1 GPU: plain, the default, plain again at 32K, 16 interleaved rounds (A/A control)
#   bash bench/run_all.sh flash4      # 1 GPU: FlashAttention-4's kernels (flash-attn-4; bench/flash4_site.sh) against SDPA's
#   bash bench/run_all.sh passkeyrec  # 1 GPU: passkey without a KV cache (chunked forward x 8), 7B at 131K and 262K (~8 min)
#   bash bench/run_all.sh passkeymem  # 1 GPU: passkey's peak memory by length, 7B and 13B under an 80 GiB cap (~3 min)
#
# Run from the repository root with torch, transformers, accelerate and deepspeed importable, and
# zstandard (ropelaw.data imports it; the device machine lacks it: carry its cp312 wheel).
# Results: JSON lines per benchmark and log.txt in $OUT (default bench/results/<part>-<time>/).
# Each step has its own time limit; a failed step is logged and the next one runs.
set -uo pipefail
part=${1:?usage: bash bench/run_all.sh eval|train|scaling|eval2|train2|eval3|train3|train4|eval4|eval5|eval9|eval10|eval11|train5|train6|train7|train8|train9|train10|train11|train12|train13|train14|train15|eval4check|eval12|eval13|eval14|flash4|flash4b|flash4d|flash4m|passkeymem|passkeyrec}
OUT=${OUT:-bench/results/$part-$(date -u +%Y%m%dT%H%M%SZ)}
export OUT PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# NVLink multicast (NVLS) off, as the shared machines these numbers come from require.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$OUT"
log=$OUT/log.txt
work=${BENCH_WORK:-/tmp/ropelaw-bench}

source "$(dirname "$0")/step.sh"  # step SECONDS CMD...

eval4_check() {  # the same perplexity with the capped run's head groups (8, and 4) as the default's, uncapped, at 131,072
    step 240 python3 bench/eval_vs_plain.py --shape llama2-13b --tokens 131072 --no-plain --no-warmup --variants auto:8 auto:4
}

best_backend() {  # the fastest SDPA backend for a shape in attention.jsonl, else 'default'
    python3 - "$OUT/attention.jsonl" "$1" <<'EOF'
import json, os, sys
rows = [json.loads(line) for line in open(sys.argv[1])] if os.path.exists(sys.argv[1]) else []
rows = [r for r in rows if r["shape"] == sys.argv[2] and r["pass"] == "fwd" and "tflops" in r]
print(max(rows, key=lambda r: (r["length"], r["tflops"]))["backend"] if rows else "default")
EOF
}

# Every part imports these (ropelaw.data imports zstandard, which the device machine lacks): one line if not.
missing=$(python3 -c '
import importlib
missing = []
for name in ("torch", "transformers", "accelerate", "zstandard"):
    try:
        importlib.import_module(name)
    except Exception:
        missing.append(name)
print(" ".join(missing))')
if [ -n "$missing" ]; then
    echo "bench/run_all.sh: $(command -v python3) cannot import: $missing; install them for that python3 (on the device machine, carry the wheels: python3 -m pip install --no-index --no-deps .wheels/zstandard-*.whl)" | tee -a "$log" >&2
    exit 2
fi
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name(), torch.cuda.device_count())' | tee -a "$log"

# The SmolLM2 fine-tuning parts read a converted model (SMOLLM2_DIR) or packed rows (TOKENS_DIR) where set.
model=${SMOLLM2_DIR:+--model-dir $SMOLLM2_DIR}
tokens=${TOKENS_DIR:+--tokens $TOKENS_DIR}

case $part in
eval)
    step 60 python3 bench/ceilings.py
    gemm=$(python3 -c "import json; print(json.loads(open('$OUT/ceilings.jsonl').readline())['gemm_bf16_tflops'])" 2>/dev/null || echo "")
    step 150 python3 bench/attention.py
    floor=${gemm:+--gemm-tflops $gemm}
    step 120 python3 bench/eval_long.py --shape llama2-7b --tokens 100000 --repeat 2 $floor
    step 90 python3 bench/eval_long.py --shape llama2-7b --tokens 100000 --plain-mlp $floor
    step 90 python3 bench/eval_long.py --shape llama2-7b --tokens 100000 --sdpa cudnn $floor
    step 300 python3 bench/eval_long.py --shape smollm2-135m --tokens 1048576 --sdpa "$(best_backend smollm2)" $floor
    step 120 python3 bench/eval_long.py --shape llama2-7b --tokens 262144 --sdpa "$(best_backend 7b)" $floor
    ;;
train)
    for sdpa in default cudnn; do
        step 90 python3 bench/train_step.py --seq 4096 --sdpa $sdpa
        step 120 python3 bench/train_step.py --seq 16384 --ac --sdpa $sdpa
    done
    step 90 python3 bench/train_step.py --seq 4096 --ac
    # One worker under torchrun, as the finetune rule launches a job with resources gpu=1.
    one=(python3 -m torch.distributed.run --standalone --nproc-per-node 1 bench/trainer_path.py run --dir "$work" --global-batch 8)
    step 60 python3 bench/trainer_path.py prepare --dir "$work" --layers 8 --seq 4096 16384 --rows 64
    step 120 "${one[@]}" --seq 4096 --steps 6
    step 150 "${one[@]}" --seq 4096 --steps 6 --deepspeed config/deepspeed/zero3.json
    step 150 "${one[@]}" --seq 16384 --steps 5 --ac
    step 150 python3 bench/train_step.py --seq 4096 --compile-layers
    ;;
scaling)
    gpus=$(python3 -c 'import torch; print(torch.cuda.device_count())')
    step 60 python3 bench/trainer_path.py prepare --dir "$work" --layers 8 --seq 4096 --rows 64
    # The same global batch of 8 on 1 GPU of this machine, then on all of them.
    zero3=(bench/trainer_path.py run --dir "$work" --seq 4096 --global-batch 8 --steps 6 --deepspeed config/deepspeed/zero3.json)
    CUDA_VISIBLE_DEVICES=0 step 150 python3 -m torch.distributed.run --standalone --nproc-per-node 1 "${zero3[@]}"
    # Powers of two in between (2 of 4, ...), then all of them.
    for ((n = 2; n < gpus; n *= 2)); do
        CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1))) step 200 python3 -m torch.distributed.run --standalone --nproc-per-node $n "${zero3[@]}"
    done
    step 200 python3 -m torch.distributed.run --standalone --nproc-per-node "$gpus" "${zero3[@]}"
    ;;
eval2)
    step 60 python3 bench/ceilings.py
    gemm=$(python3 -c "import json; print(json.loads(open('$OUT/ceilings.jsonl').readline())['gemm_bf16_tflops'])" 2>/dev/null || echo "")
    floor=${gemm:+--gemm-tflops $gemm}
    step 120 python3 bench/eval_long.py --shape llama2-7b --tokens 100000 --repeat 2 --profile $floor
    step 240 python3 bench/eval_long.py --shape llama2-7b --tokens 100000 --repeat 4 --profile --compile $floor
    step 300 python3 bench/eval_long.py --shape llama2-7b --tokens 524288 --repeat 1 --compile $floor
    step 120 python3 bench/eval_long.py --shape llama2-13b --tokens 100000 $floor
    step 150 python3 bench/eval_long.py --shape llama2-13b --tokens 262144 $floor
    ;;
train2)
    step 120 python3 bench/train_step.py --shape llama2-13b --seq 4096 --ac
    step 150 python3 bench/train_step.py --shape llama2-13b --seq 16384 --ac
    one=(python3 -m torch.distributed.run --standalone --nproc-per-node 1 bench/trainer_path.py run --dir "$work" --global-batch 8)
    step 60 python3 bench/trainer_path.py prepare --dir "$work" --layers 8 --seq 4096 --rows 64
    step 120 "${one[@]}" --seq 4096 --steps 6
    step 180 "${one[@]}" --seq 4096 --steps 6 --compile
    step 200 "${one[@]}" --seq 4096 --steps 6 --compile --deepspeed config/deepspeed/zero3.json
    step 150 python3 bench/trainer_path.py prepare --dir "$work" --layers 8 --seq 16384 --rows 64
    step 200 "${one[@]}" --seq 16384 --steps 5 --ac --compile
    ;;
eval3)
    step 240 python3 bench/eval_vs_plain.py --shape llama2-7b --tokens 32768 100000 --repeat 2
    step 240 python3 bench/eval_vs_plain.py --shape llama2-13b --tokens 32768 100000 --repeat 2
    ;;
eval9)
    # Issue 14 goal 1: is the default path's last 1% behind plain (eval3, eighth session) the 8,192-position chunk?
    # The default (auto: 8192, 1 group) beside larger fixed chunks and the whole row, against plain, in one process.
    step 300 python3 bench/eval_vs_plain.py --shape llama2-7b --tokens 32768 100000 --repeat 3 \
        --variants 16384:1 32768:1 whole:1
    ;;
train3)
    # Plain vs the checkpointed chunked loss (then fused_loss: true) in one process each
    # (bench/finetune_speed.py): steps/s, tokens/s, peak memory, per-step losses.
    model="${SMOLLM2_DIR:+--model-dir $SMOLLM2_DIR} --paths plain checkpointed"
    step 240 python3 bench/finetune_speed.py $model --steps 30
    step 360 python3 bench/finetune_speed.py $model --steps 30 --compile
    step 360 python3 bench/finetune_speed.py $model --steps 30 --compile --micro-batch 8
    ;;
train4)
    # The three losses of finetune.fused_loss side by side, per micro-batch, in one process each
    # (bench/finetune_speed.py; plain last: at micro-batch 16 it may run out of memory, recorded as such).
    step 220 python3 bench/finetune_speed.py $model --steps 20 --micro-batch 4 8
    step 170 python3 bench/finetune_speed.py $model --steps 20 --micro-batch 8 --compile
    step 170 python3 bench/finetune_speed.py $model --steps 20 --micro-batch 16 --global-batch 16 --compile
    ;;
eval4)
    # Issue 14 goal 2: a 13B at 1,048,576 tokens in 80 GiB (set_per_process_memory_fraction), the head
    # groups chosen by evaluation.chunk_size: auto (8 groups in eval8's two-layer run, 73.54 GiB); about 18
    # minutes, timed once, no warm-up call: longer than one device call, so run it with bench/background.sh.
    # Predictions: bench/results/2026-12-03-session16/PREDICTIONS.md ("eval4").
    # The perplexity half (8 and 4 groups against the default at 131,072, uncapped) is its own part, eval4check,
    # measured in the seventeenth session; this part is the 1M run alone (1,034 s of its step in the eighteenth).
    # --layer-progress logs each layer's end and the peak so far: every poll's tail shows them.
    step 1500 python3 bench/eval_vs_plain.py --shape llama2-13b --tokens 1048576 --no-plain --no-warmup --cap-gib 80 \
        --layer-progress
    ;;
eval12)
    # Issue 14 goal 1 after eval9-eval11: the default's 1% behind plain at 100K is its MLP over 8,192-row chunks
    # (+51 ms of GEMMs in a smaller tile, +21 ms elementwise). The default now runs ropelaw's own LLaMA MLP over whole
    # rows where that raises no peak (one slice of the intermediate dimension at these lengths); against the MLP
    # over 8,192-row chunks as before (8192:1:0) and whole rows in 2 and 4 slices; interleaved.
    # Predictions: bench/results/2026-12-03-session17/PREDICTIONS.md.
    step 540 python3 bench/eval_vs_plain.py --shape llama2-7b --tokens 32768 100000 --repeat 1 \
        --variants 8192:1:0 8192:1:2 8192:1:4 --interleave 4
    ;;
eval13)
    # Issue 14 goal 1's last 0.3% at 32K (eval12: the default 1.0032x plain interleaved): plain and the default,
    # eight interleaved rounds and one profiled call each (seconds by kernel class).
    # Predictions: bench/results/2026-12-03-session18/PREDICTIONS.md.
    step 400 python3 bench/eval_vs_plain.py --shape llama2-7b --tokens 32768 --repeat 2 --interleave 8 --profile
    ;;
eval14)
    # Issue 14 goal 1 at 32K: the default 0.27-0.45% behind plain in four runs of eval13. The A/A control: plain
    # timed twice (plain, plain2) with the default between them, 16 interleaved rounds: what the timing resolves.
    # Predictions: bench/results/2026-12-03-session19/PREDICTIONS.md ("eval14").
    step 500 python3 bench/eval_vs_plain.py --shape llama2-7b --tokens 32768 --repeat 2 --interleave 16 --variants plain
    ;;
flash4)
    # Issue 14 goal 1's floors: FlashAttention-4's CuTe kernels (package flash-attn-4, `ropelaw.flash4`) against
    # SDPA (cuDNN's kernel on this H200), side by side: the kernels alone, then the compiled 7B at 100K each way,
    # against the GEMM rate measured first. Needs flash-attn-4 importable (bench/flash4_site.sh unpack).
    # Predictions: bench/results/2026-12-03-session20/PREDICTIONS.md.
    step 60 python3 bench/ceilings.py
    gemm=$(python3 -c "import json; print(json.loads(open('$OUT/ceilings.jsonl').readline())['gemm_bf16_tflops'])" 2>/dev/null || echo "")
    floor=${gemm:+--gemm-tflops $gemm}
    step 240 python3 bench/attention.py --backends cudnn fa4
    step 150 python3 bench/eval_long.py --shape llama2-7b --tokens 100000 --repeat 3 --compile $floor
    step 200 python3 bench/eval_long.py --shape llama2-7b --tokens 100000 --repeat 3 --compile --attn flash4 $floor
    ;;
flash4b)
    # The default evaluation path with FlashAttention-4's kernels against plain transformers (SDPA), 32K and 100K,
    # six interleaved rounds (plain with SDPA, the default with flash4). Predictions as flash4.
    step 300 python3 bench/eval_vs_plain.py --shape llama2-7b --tokens 32768 100000 --repeat 1 --interleave 6 --attn flash4
    ;;
flash4d)
    # Goal 1's first clause at the longest length where plain fits an H200 (262,144 tokens: plain 92.7 GiB):
    # plain (SDPA) against the default with flash4, interleaved. Not yet run: predictions in
    # bench/results/2026-12-03-session20/PREDICTIONS.md ("For the next session").
    step 560 python3 bench/eval_vs_plain.py --shape llama2-7b --tokens 262144 --repeat 1 --interleave 3 --attn flash4
    ;;
flash4m)
    # Goal 1's last clause: the compiled 7B at 1,048,576 tokens with FlashAttention-4's kernels against its floor
    # (session 2: 607.5 s with cuDNN's, 1.58x). Longer than one device call: bench/background.sh start flash4m.
    step 60 python3 bench/ceilings.py
    gemm=$(python3 -c "import json; print(json.loads(open('$OUT/ceilings.jsonl').readline())['gemm_bf16_tflops'])" 2>/dev/null || echo "")
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True step 1100 python3 bench/eval_long.py --shape llama2-7b \
        --tokens 1048576 --repeat 1 --compile --attn flash4 ${gemm:+--gemm-tflops $gemm}
    ;;
passkeymem)
    # What passkey.lengths an 80 GB GPU allows (README, "Retrieval beside perplexity"): transformers' forward with
    # the whole KV cache, then 8 greedy tokens, under an A100-80GB's cap. Predictions:
    # bench/results/2026-12-03-session19/PREDICTIONS.md.
    # Then the same with expandable segments, as rules/passkey.smk runs it (the nineteenth session ran the first
    # two steps as part passkeymem, the last two by hand as passkeymem3).
    step 300 python3 bench/passkey_memory.py --shape llama2-7b --tokens 32768 65536 98304 131072 --cap-gib 80
    step 300 python3 bench/passkey_memory.py --shape llama2-13b --tokens 32768 49152 65536 --cap-gib 80
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True step 300 python3 bench/passkey_memory.py --shape llama2-7b \
        --tokens 98304 131072 --cap-gib 80
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True step 300 python3 bench/passkey_memory.py --shape llama2-13b \
        --tokens 49152 65536 --cap-gib 80
    ;;
passkeyrec)
    # Passkey beyond the KV cache: the answer by the chunked forward, no draft (8 forwards, the worst case), 7B at
    # 131K and 262K under the 80 GiB cap. Predictions: bench/results/2026-12-03-session19/PREDICTIONS.md.
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True step 560 python3 bench/passkey_memory.py --shape llama2-7b \
        --tokens 131072 262144 --cap-gib 80 --recompute
    ;;
eval4check)
    # eval4's second half alone (about 3 minutes): the perplexity half of goal 2.
    eval4_check
    ;;
eval5)
    # Issue 14 goal 2's memory in 3 minutes: the 13B at 1,048,576 tokens under an 80 GiB cap with every layer's
    # weights resident but only the first 2 of 40 run (--run-layers; same-shape layers repeat the same peak).
    # The auto choice of head groups, then 8 groups; no warm-up call. (eval4 is the whole 40-layer run.)
    step 280 python3 bench/eval_vs_plain.py --shape llama2-13b --tokens 1048576 --no-plain --no-warmup --cap-gib 80 \
        --run-layers 2 --variants auto:8
    ;;
eval10)
    # Issue 14 goal 1: eval9 found the default path's 1% behind plain is not its chunk size, and at 32K even the
    # whole row is 0.8-1.0% behind. Plain, the default and the whole row at 32K and 100K, each profiled once more
    # (seconds by kernel class); predictions in bench/results/2026-12-02-session9/PREDICTIONS.md.
    step 300 python3 bench/eval_vs_plain.py --shape llama2-7b --tokens 32768 100000 --repeat 2 --variants whole:1 \
        --profile
    ;;
train5)
    # Issue 14 goal 3, side by side in one process: today's path (plain loss, micro-batch 4, eager: session 3's
    # default, first, the reference) vs the fused loss, compiled and larger micro-batches, at the studies' global
    # batch of 8 over 50 steps (the loss check), then at a global batch of 16. TOKENS_DIR: a packed dataset
    # (e.g. results/smollm2/data/train_len8192), so that the loss falls; random weights of SmolLM2's shape.
    step 360 python3 bench/finetune_speed.py $model $tokens --steps 50 \
        --variants plain:4 grad_in_forward:8:compiled grad_in_forward:4:compiled grad_in_forward:8
    step 200 python3 bench/finetune_speed.py $model $tokens --steps 20 --global-batch 16 \
        --variants plain:4 grad_in_forward:16:compiled
    ;;
train6)
    # Issue 14 goal 3: is the attention kernel what holds the step? train5's reference and best path, each
    # again with SDPA restricted to cuDNN's attention (flash is torch's choice on an H200). TOKENS_DIR as train5.
    step 400 python3 bench/finetune_speed.py $model $tokens --steps 50 \
        --variants plain:4 plain:4:cudnn grad_in_forward:8:compiled grad_in_forward:8:compiled:cudnn
    ;;
train7)
    # Issue 14 goal 3: where a step's GPU time goes. The reference and the fast path of train6, 30 steps each,
    # steps 4-8 profiled (GPU seconds per step by kernel class, busy fraction); predictions before the run in
    # bench/results/2026-12-02-session9/PREDICTIONS.md. TOKENS_DIR as train5.
    step 400 python3 bench/finetune_speed.py $model $tokens --steps 30 --profile 5 \
        --variants plain:4 grad_in_forward:8:compiled
    ;;
train8)
    # Issue 14 goal 3: train7 found torch's choice of attention on the H200 is cuDNN's kernel (so train6's
    # "cuDNN only" ran the same kernel), 43% of the fast step. Beside the fast path: the same with its loss
    # chunk fused by torch.compile (fused_loss: grad_in_forward_compiled), and with flash's and efficient's
    # attention; profiled as train7; predictions before the run in bench/results/2026-12-02-session9/PREDICTIONS.md.
    step 400 python3 bench/finetune_speed.py $model $tokens --steps 30 --profile 5 \
        --variants grad_in_forward:8:compiled grad_in_forward_compiled:8:compiled grad_in_forward:8:compiled:flash \
        grad_in_forward:8:compiled:efficient
    ;;
train9)
    # Issue 14 goal 3, as the goal is measured: the reference (plain, micro-batch 4), the fast path and the fast
    # path with its loss chunk compiled (train8: 1.10x the fast path), side by side in one process, no profiler.
    step 300 python3 bench/finetune_speed.py $model $tokens --steps 30 \
        --variants plain:4 grad_in_forward:8:compiled grad_in_forward_compiled:8:compiled
    ;;
train10)
    # train8's flash and efficient rows again: there, dynamo reran the first variant's compiled graphs (cuDNN's
    # kernel) under their names. finetune_speed.py now resets dynamo before each compiled run and records the
    # graphs each compiled. Profiled as train7; predictions in bench/results/2026-12-02-session9/PREDICTIONS.md.
    step 400 python3 bench/finetune_speed.py $model $tokens --steps 30 --profile 5 \
        --variants grad_in_forward:8:compiled grad_in_forward:8:compiled:flash grad_in_forward:8:compiled:efficient
    ;;
eval11)
    # Issue 14 goal 1: eval10 left the 32K gap of the whole row to plain (the same kernels, each ~1.3% slower)
    # untold from an order effect (plain always timed first). The same paths, then 6 interleaved rounds (the first
    # path rotating). Predictions in bench/results/2026-12-02-session9/PREDICTIONS.md.
    step 420 python3 bench/eval_vs_plain.py --shape llama2-7b --tokens 32768 100000 --repeat 2 --variants whole:1 \
        --interleave 6
    ;;
train11)
    # Issue 14 goal 3 as the studies train: train9's three paths, 50 steps, logging every 10 steps (the studies'
    # setting), with the per-micro-batch sync of transformers' logging_nan_inf_filter gone (ropelaw.trainer's
    # FiniteLoss) and the step timer on CUDA events (no sync of its own). Predictions in
    # bench/results/2026-12-02-session9/PREDICTIONS.md.
    step 400 python3 bench/finetune_speed.py $model $tokens --steps 50 --logging-steps 10 \
        --variants plain:4 grad_in_forward:8:compiled grad_in_forward_compiled:8:compiled
    ;;
train12)
    # Fine-tuning at 16K, not yet measured on a GPU (part c trains the plain path at micro-batch 2, part d2 the fast
    # path at micro-batch 4; PLAN.md prices both from the 8K rate x 8K/16K FLOP ratio): the two paths side by side,
    # global batch 4 x 16K (the parts' 65,536 tokens a step), 30 steps, logging every 10. Predictions in
    # bench/results/2026-12-02-session11/PREDICTIONS.md.
    step 400 python3 bench/finetune_speed.py $model --seq 16384 --global-batch 4 --steps 30 --logging-steps 10 \
        --variants plain:2 grad_in_forward:4:compiled
    ;;
train13)
    # Issue 14 goal 3, the lever not yet tried: the compiled loss chunk's path (train11: 1.75x plain) with its layers
    # compiled in torch.compile's max-autotune-no-cudagraphs mode (`finetune.compile: max-autotune-no-cudagraphs`:
    # Inductor times candidate kernels for each matrix product on this GPU), beside plain and the default mode, in
    # one process, as train11 ran them. Predictions in bench/results/2026-12-03-session16/PREDICTIONS.md.
    step 540 python3 bench/finetune_speed.py $model $tokens --steps 50 --logging-steps 10 \
        --variants plain:4 grad_in_forward_compiled:8:compiled grad_in_forward_compiled:8:autotune
    ;;
train14)
    # Issue 14 goal 3: train8's profile left 12 ms a step of the compiled path with no kernel running (idle); 1.8x
    # needs about 4 ms. Three steps of that path (after 4, logging every 10 as the studies) as a Chrome trace, and
    # bench/trace_gaps.py's reading of it: the gaps, what the host ran in each, its synchronising calls.
    # Predictions in bench/results/2026-12-03-session16/PREDICTIONS.md.
    step 300 python3 bench/finetune_speed.py $model --steps 12 --skip 4 --profile 3 --trace --logging-steps 10 \
        --variants grad_in_forward_compiled:8:compiled
    step 120 bash -c 'python3 bench/trace_gaps.py "$OUT"/trace_grad_in_forward_compiled_mb8_compiled.json.gz \
        --steps 3 --top 25 >>"$OUT/trace_gaps.jsonl"'
    ;;
train15)
    # Issue 14 goal 3 after train14: each step's two host-GPU syncs (the blocking batch copy, transformers' mask
    # creation) removed. Plain and the compiled-loss path as they were (":synced", as the issue measured them), then
    # the compiled-loss path as it trains now, one process, 30 steps. Predictions in
    # bench/results/2026-12-03-session16/PREDICTIONS.md.
    step 400 python3 bench/finetune_speed.py $model $tokens --steps 30 --logging-steps 10 \
        --variants plain:4:synced grad_in_forward_compiled:8:compiled:synced grad_in_forward_compiled:8:compiled
    ;;
*)
    echo "unknown part '$part': eval, train, scaling, eval2, train2, eval3, train3, train4, eval4, eval5, eval9, eval10, eval11, train5, train6, train7, train8, train9, train10, train11, train12, train13, train14, train15, eval4check, eval12, eval13, eval14, flash4, flash4b, flash4d, flash4m, passkeymem or passkeyrec" >&2
    exit 2
    ;;
esac
echo "== done in ${SECONDS}s" | tee -a "$log"
