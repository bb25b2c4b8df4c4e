#!/usr/bin/env bash
# rlhf next to its peers on the same machine, in one run: each table row of rlhf is followed by
# the peer's row for the same shapes (TRL 0.11.4's PPOTrainer, transformers 4.46.3's generate).
#
#   bench/compare.sh [ppo|generate|all]
#
# Needs a release build of rlhf (RLHF_BIN, default: cargo's target dir) and a Python with
# torch==2.5.1 transformers==4.46.3 trl==0.11.4 (PYTHON, default: python3). Run by hand, never
# by CI; absolute numbers on shared machines drift from day to day, the ratios much less.
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-all}"
RLHF_BIN="${RLHF_BIN:-${CARGO_TARGET_DIR:-target}/release/rlhf}"
PYTHON="${PYTHON:-python3}"
[ -x "$RLHF_BIN" ] || { echo "compare: no rlhf binary at $RLHF_BIN (build with cargo build --release, or set RLHF_BIN)" >&2; exit 1; }
"$PYTHON" -c 'import trl, transformers, torch' 2>/dev/null || { echo "compare: $PYTHON lacks torch/transformers/trl (see bench/peers.py)" >&2; exit 1; }

echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%Y-%m-%d)"
echo "# rlhf: $("$RLHF_BIN" --version)"

if [ "$what" = ppo ] || [ "$what" = all ]; then
    # The issue's two PPO shapes: 2 layers x 128 wide x 4 heads (batch 64, mini-batch 16) and
    # distilgpt2 (batch 32, mini-batch 8); 4 epochs, 2..8-token queries, 16 new tokens.
    for shape in "--layers 2 --width 128 --heads 4 --batch 64 --mini-batch 16" \
                 "--config distilgpt2 --batch 32 --mini-batch 8"; do
        echo
        # shellcheck disable=SC2086
        "$RLHF_BIN" bench ppo $shape --epochs 4 --query-tokens 2..8 --new-tokens 16 --iterations 2 2>/dev/null
        # shellcheck disable=SC2086
        "$PYTHON" bench/peers.py ppo $shape --epochs 4 --query-tokens 2..8 --new-tokens 16 --iterations 2 2>/dev/null | tail -1
    done
fi

if [ "$what" = generate ] || [ "$what" = all ]; then
    for config in tiny distilgpt2; do
        echo
        "$RLHF_BIN" bench generate --config "$config" --batch 1,16,64 --prompt-len 8 --new-tokens 32 --runs 3 2>/dev/null
        "$PYTHON" bench/peers.py generate --config "$config" --batch 1,16,64 --prompt-len 8 --new-tokens 32 --runs 3 2>/dev/null | tail -3
    done
fi
