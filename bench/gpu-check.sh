#!/usr/bin/env bash
# One-shot check of rlhf on a GPU: parity, generation and PPO benchmarks, and a short distributed
# run, with every table and log written into one folder. Meant to finish in under 8 minutes on one
# NVIDIA GPU with a prebuilt binary.
#
#   bench/gpu-check.sh [--binary PATH] [--device cuda|cuda:N|cpu] [--quick] [OUT_DIR]
#
#   --binary PATH   an rlhf built with `--features cuda` (default: build one with cargo, which takes
#                   ~25 minutes cold, so build it beforehand where you can: `cargo build --release
#                   --features cuda`, add CUDARC_CUDA_VERSION=13000 for CUDA 13 drivers, then
#                   `strip` it; the stripped binary is ~55 MB)
#   --device D      where everything runs (default cuda)
#   --quick         small sizes, for a dry run on a CPU (`--device cpu --quick`)
#   OUT_DIR         default gpu-check-out/
#
# Steps (each writes OUT_DIR/<step>.md and OUT_DIR/<step>.log; OUT_DIR/summary.md has them all):
#   env       the GPU (nvidia-smi) and the binary
#   parity    `rlhf parity`: GPT-2 logits, log-probs, greedy generation and reward scores against
#             transformers, and one PPO step against TRL 0.11.4, on the device
#   generate  `rlhf bench generate`: distilgpt2 and gpt2, batch 1/16/64, prompt 8, 32 new tokens
#   ppo       `rlhf bench ppo` at gpt2 size: batch 64, mini-batch 16, 4 epochs, 16 new tokens
#   run       `rlhf demo` at a small size: SFT, reward model, then `rlhf run` (learner, reward
#             server and 2 workers as processes on the device) for 3 PPO iterations, and eval
# A failing step is recorded and the next one still runs; the script exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

binary="${RLHF_BIN:-}"
device=cuda
quick=0
out=gpu-check-out
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        --quick) quick=1; shift ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        -*) echo "gpu-check: unknown option $1" >&2; exit 2 ;;
        *) out="$1"; shift ;;
    esac
done
mkdir -p "$out"
summary="$out/summary.md"
: > "$summary"
failed=()
started=$(date +%s)

if [ -z "$binary" ]; then
    echo "gpu-check: no --binary given; building rlhf with --features cuda (slow when cold)" >&2
    features=cuda
    [ "$device" = cpu ] && features=""
    cargo build --release --locked ${features:+--features $features} >"$out/build.log" 2>&1 \
        || { echo "gpu-check: build failed, see $out/build.log" >&2; exit 1; }
    binary="${CARGO_TARGET_DIR:-target}/release/rlhf"
fi
[ -x "$binary" ] || { echo "gpu-check: $binary is not an executable" >&2; exit 1; }

# step NAME COMMAND...: runs COMMAND with stdout to OUT/NAME.md, stderr to OUT/NAME.log.
step() {
    local name="$1"; shift
    local t0; t0=$(date +%s)
    echo "gpu-check: $name ..." >&2
    "$@" >"$out/$name.md" 2>"$out/$name.log"
    local rc=$?
    local seconds=$(( $(date +%s) - t0 ))
    {
        echo "## $name ($seconds s, exit $rc)"
        echo
        echo '```'
        echo "$*"
        echo '```'
        echo
        cat "$out/$name.md"
        echo
    } >>"$summary"
    if [ $rc -ne 0 ]; then
        failed+=("$name")
        echo "gpu-check: $name FAILED (exit $rc); last lines of $out/$name.log:" >&2
        tail -n 5 "$out/$name.log" >&2
    fi
}

environment() {
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- host: $(uname -srm), $(nproc) cores"
    echo "- binary: $binary ($("$binary" --version))"
    echo "- device: $device"
    if command -v nvidia-smi >/dev/null; then
        echo
        echo '```'
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
        echo '```'
    fi
}

if [ $quick = 1 ]; then
    gen_configs=tiny,nano; gen_batches=1,4; ppo_size=(--layers 2 --width 128 --heads 4 --batch 8 --mini-batch 4)
    ppo_iterations=1
else
    gen_configs=distilgpt2,gpt2; gen_batches=1,16,64; ppo_size=(--config gpt2 --batch 64 --mini-batch 16)
    ppo_iterations=2
fi

step env environment
step parity "$binary" parity --device "$device" --fixtures trainer/fixtures
step generate "$binary" bench generate --config "$gen_configs" --batch "$gen_batches" --prompt-len 8 --new-tokens 32 \
    --runs 2 --device "$device"
step ppo "$binary" bench ppo "${ppo_size[@]}" --epochs 4 --query-tokens 2..8 --new-tokens 16 \
    --iterations "$ppo_iterations" --device "$device"
step run "$binary" demo --out "$out/demo" --fresh --workers 2 --device "$device" \
    --set corpus.train_reviews=240 --set corpus.test_reviews=40 --set vocab_size=320 \
    --set sft.epochs=1 --set reward.epochs=1 --set ppo.iterations=3 --set ppo.batch_size=16 \
    --set ppo.ppo.mini_batch_size=8 --set runtime.lease_size=8 --set eval.n_prompts=8 --set eval.best_of=2

total=$(( $(date +%s) - started ))
echo "gpu-check: done in $total s; tables in $summary" >&2
echo "total: $total s; failed steps: ${failed[*]:-none}" >>"$summary"
[ ${#failed[@]} -eq 0 ]
