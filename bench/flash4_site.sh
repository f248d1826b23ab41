# FlashAttention-4 (PyPI flash-attn-4: CuTe-DSL kernels, pure Python plus NVIDIA's CuTe-DSL wheels) for a GPU
# machine without network, in pieces small enough to carry (the device tool takes 64 MiB a call, the repo included).
#
#   bash bench/flash4_site.sh pack .fa4          # here: download, unpack every wheel into one folder, xz it, split it
#   source bench/flash4_site.sh unpack DIR...    # there: join DIR/part* (in name order), check, untar, set PYTHONPATH
#
# The wheels are unpacked rather than installed (an install would need them whole on the far side, 92 MB for the
# CuTe-DSL libraries alone); the folder's .pth (nvidia-cutlass-dsl puts its `cutlass` package on sys.path by one) is
# not read from PYTHONPATH, so unpack adds that folder itself. The pins: what ran in BENCHMARKS.md ("Twentieth
# session"). cu13 libraries: the H200 machines run CUDA 13 (torch 2.11+cu130); a CUDA 12 driver wants libs-cu12.
set -uo pipefail
FLASH4_WHEELS="flash-attn-4==4.0.0b40 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1
nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi==0.1.15.post2
quack-kernels==0.6.5 torch-c-dlpack-ext==0.1.5"
FLASH4_SITE=${FLASH4_SITE:-/tmp/flash4-site}

flash4_pack() {
    local out=${1:?usage: bash bench/flash4_site.sh pack OUT_DIR}
    local work
    work=$(mktemp -d)
    # shellcheck disable=SC2086  # one word per pin
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$work/wheels" $FLASH4_WHEELS || return 1
    mkdir -p "$work/site" "$out"
    for wheel in "$work"/wheels/*.whl; do
        python3 -m zipfile -e "$wheel" "$work/site" || return 1
    done
    tar cf - -C "$work/site" . | xz -9 -T0 >"$work/site.tar.xz" || return 1
    (cd "$work" && sha256sum site.tar.xz >"$out/site.sha256")
    split -b 23M -d "$work/site.tar.xz" "$out/part"
    rm -rf "$work"
    ls -l "$out"
}

flash4_unpack() {  # sourced: exports PYTHONPATH
    local joined=/tmp/flash4-site.tar.xz sums
    # shellcheck disable=SC2046  # the parts, in the order of their names, wherever each lies
    cat $(for dir in "$@"; do ls "$dir"/part*; done | awk -F/ '{print $NF "\t" $0}' | sort | cut -f2) >"$joined" || return 1
    sums=$(for dir in "$@"; do cat "$dir"/site.sha256 2>/dev/null; done | head -1)
    if [ -n "$sums" ] && [ "$(sha256sum <"$joined" | cut -d' ' -f1)" != "${sums%% *}" ]; then
        echo "flash4_site.sh: the joined parts do not match site.sha256: a part is missing or truncated" >&2
        return 1
    fi
    mkdir -p "$FLASH4_SITE" && tar xJf "$joined" -C "$FLASH4_SITE" || return 1
    export PYTHONPATH=$FLASH4_SITE:$FLASH4_SITE/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}
    python3 -c 'import flash_attn.cute, importlib.metadata as m; print("flash-attn-4", m.version("flash-attn-4"), "nvidia-cutlass-dsl", m.version("nvidia-cutlass-dsl"))'
}

case ${1:-} in
pack) flash4_pack "${@:2}" ;;
unpack) flash4_unpack "${@:2}" ;;
*) echo "usage: bash bench/flash4_site.sh pack OUT_DIR | source bench/flash4_site.sh unpack DIR..." >&2 ;;
esac
