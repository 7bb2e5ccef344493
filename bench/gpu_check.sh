#!/usr/bin/env bash
# The GPU check in one call, under 8 minutes on one CUDA device, from the repository root:
#
#     bash bench/gpu_check.sh            # bench/results/gpu/: gpu_summary.md, each step's log and JSON
#     OUT=/some/dir bash bench/gpu_check.sh   # also copies gpu_summary.md, gpu_logs.txt (every log) and
#                                             # gpu_results.json (every JSON) into $OUT: three files
#
# 1. the CUDA tests: pytest -k cuda (the tests that skip without CUDA, and the CUDA paths of the others)
# 2. ranking on the GPU keeps the same filters as on the CPU (bench/gpu_check.py ranking)
# 3. a short AMP + channels_last fine-tune of ResNet-56 on digits, images/s against a bare loop
#    (bench/gpu_check.py finetune)
# 4. bench/throughput.py --devices cuda --amp --mode fold (BN folded, channels_last; no tracing under autocast):
#    ResNet-50 classification, then Faster R-CNN detection
#
# Each step has its own time limit; a failed or timed-out step is recorded and the next one runs. The exit status
# is 0 when every step passed, 1 otherwise, 2 when there is no CUDA device (then nothing runs).
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
DEST=bench/results/gpu
STEPS="$DEST/gpu_steps.tsv"

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)" 2>/dev/null; then
    echo "error: bench/gpu_check.sh needs a CUDA device, and torch.cuda.is_available() is False here" \
         "(python: $PY); nothing was run" >&2
    exit 2
fi

rm -rf "$DEST" && mkdir -p "$DEST"  # no results of an earlier run mixed in
: > "$STEPS"
step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log its output, record status and duration
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" > "$DEST/$name.log" 2>&1
    local rc=$?
    echo -e "$name\t$rc\t$((SECONDS - start))\t$*" >> "$STEPS"
    tail -n 3 "$DEST/$name.log"
    echo "== $name: exit $rc after $((SECONDS - start)) s"
}

step cuda_tests 120 "$PY" -m pytest -q -rs -k cuda -p no:cacheprovider
step ranking 90 "$PY" bench/gpu_check.py ranking --device cuda --json "$DEST/ranking.json"
step finetune 90 "$PY" bench/gpu_check.py finetune --device cuda --epochs 3 --batch_size 128 \
    --json "$DEST/finetune.json"
step throughput_classification 60 "$PY" bench/throughput.py --devices cuda --amp --mode fold --tasks classification \
    --batch-size 64 --repeats 30 --json "$DEST/throughput_classification.json"
step throughput_detection 90 "$PY" bench/throughput.py --devices cuda --amp --mode fold --tasks detection --no-flops \
    --det-batch-size 4 --det-repeats 10 --json "$DEST/throughput_detection.json"

"$PY" bench/gpu_check.py summary --results "$DEST"
cat "$DEST/gpu_summary.md"
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp "$DEST/gpu_summary.md" "$OUT/gpu_summary.md"
    for log in "$DEST"/*.log; do echo "===== $log"; cat "$log"; done > "$OUT/gpu_logs.txt"
    "$PY" -c 'import json, pathlib, sys; d = pathlib.Path(sys.argv[1]); json.dump({p.stem: json.loads(p.read_text()) for p in sorted(d.glob("*.json"))}, open(sys.argv[2], "w"), indent=1)' "$DEST" "$OUT/gpu_results.json"
fi
! cut -f2 "$STEPS" | grep -qv '^0$'
