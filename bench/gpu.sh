#!/usr/bin/env bash
# One prepared check for a lent GPU (H100/H200 class): under 8 minutes, installs nothing.
#
# Runs, in order, each under its own time limit, and writes ONE markdown file to paste into
# bench/RESULTS.md (at ${OUT:-bench/out}/gpu-results.md):
#   1. the tests that need CUDA (pytest -m cuda; skipped where there is none);
#   2. bench/scale.py at --sizes (default 135m,1.5b,8b) in bf16 on --device (default cuda);
#   3. bench/live_loop.py on the same device, on the 135M-sized model scale.py built (no TRL).
#
# The GPU machine has torch, transformers, peft, accelerate and typer but not the default
# model (nor gguf, datasets, trl, textual): the tokenizer travels with the tree. Prepare it
# once where the default model is installed:
#     bash bench/gpu.sh --prepare          # writes bench/out/tokenizer (git-ignored)
# then, on the GPU machine, carrying bench/out/tokenizer:
#     bash bench/gpu.sh
# On a CPU, to know it runs before a GPU is lent:
#     bash bench/gpu.sh --device cpu --sizes tiny
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
SIZES=135m,1.5b,8b
DTYPE=
TOKENIZER=bench/out/tokenizer
PREPARE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --sizes) SIZES=$2; shift 2 ;;
        --dtype) DTYPE=$2; shift 2 ;;
        --tokenizer) TOKENIZER=$2; shift 2 ;;
        --prepare) PREPARE=1; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see bash bench/gpu.sh --help)" >&2; exit 2 ;;
    esac
done

[ -n "$DTYPE" ] || { [ "$DEVICE" = cuda ] && DTYPE=bfloat16 || DTYPE=auto; }
PY=${PYTHON:-$(command -v python3 || command -v python)}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
if ! "$PY" -c "import torch, transformers, peft, accelerate" 2>/dev/null; then
    echo "error: $PY lacks torch, transformers, peft or accelerate: set PYTHON=/path/to/python" >&2
    exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# The default model's tokenizer, with a config.json so that --model/--tokenizer take the folder.
SAVE_TOKENIZER="import sys; from transformers import AutoConfig; from engine.models import load_tokenizer
load_tokenizer(None).save_pretrained(sys.argv[1]); AutoConfig.for_model('llama').save_pretrained(sys.argv[1])"
if [ "$PREPARE" = 1 ]; then
    "$PY" -c "$SAVE_TOKENIZER" "$TOKENIZER" && echo "tokenizer saved to $TOKENIZER: carry it to the GPU machine"
    exit $?
fi

if [ ! -f "$TOKENIZER/tokenizer_config.json" ]; then  # here the default model's own will do
    TOKENIZER=$(mktemp -d)/tokenizer
    if ! "$PY" -c "$SAVE_TOKENIZER" "$TOKENIZER" 2>/dev/null; then
        echo "error: no tokenizer: run 'bash bench/gpu.sh --prepare' where the default model is installed and carry bench/out/tokenizer" >&2
        exit 2
    fi
fi
export TUI_ALIGN_TEST_TOKENIZER="$TOKENIZER"

RESULTS_DIR=${OUT:-bench/out}
mkdir -p "$RESULTS_DIR"
RESULTS="$RESULTS_DIR/gpu-results.md"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
failed=0

{
    echo "## bench/gpu.sh, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Command: \`bash bench/gpu.sh --device $DEVICE --sizes $SIZES --dtype $DTYPE\`"
    echo
    echo '```'
    if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi
    "$PY" -c "import os, platform, torch, transformers, peft; print(f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; cuda available: {torch.cuda.is_available()}')"
    echo '```'
    echo
} > "$RESULTS"

section() {  # section TITLE SECONDS COMMAND...: run it under a time limit, its output into the results
    local title=$1 limit=$2
    shift 2
    echo "== $title" >&2
    local started=$SECONDS
    timeout "$limit" "$@" > "$WORK/out.txt" 2>&1
    local rc=$?
    cat "$WORK/out.txt" >&2
    {
        echo "### $title ($((SECONDS - started)) s, exit $rc)"
        echo
        echo '```'
        grep -v -e 'Writing model shards' -e 'Loading weights' "$WORK/out.txt" | tail -n 60
        echo '```'
        echo
    } >> "$RESULTS"
    [ $rc -eq 0 ] || failed=1
}

section "tests that need CUDA" 90 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py -rs
section "bench/scale.py" 300 "$PY" bench/scale.py --sizes "$SIZES" --device "$DEVICE" --dtype "$DTYPE" --tokenizer "$TOKENIZER" \
    --repeats 3 --tokens 64 --keep "$WORK/models" --plot "$RESULTS_DIR/scale.png" --json "$RESULTS_DIR/scale.json"
SMALLEST=$(echo "$SIZES" | cut -d, -f1)
section "bench/live_loop.py (the $SMALLEST-sized random model)" 75 "$PY" bench/live_loop.py --model "$WORK/models/$SMALLEST" \
    --device "$DEVICE" --dtype "$DTYPE" --starts 1 --repeats 3 --trl-runs 0

echo "results: $RESULTS" >&2
[ $failed -eq 0 ] && echo "bench/gpu.sh: all passed" >&2 || echo "bench/gpu.sh: something failed (see $RESULTS)" >&2
exit $failed
