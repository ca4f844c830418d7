#!/usr/bin/env bash
# Measures every figure in docs/results.md and rewrites that file.
#
#   launch/results.sh [--quick]
#
# 1. The default job, `mpirun -n 8 efqat-train`, timed from launch to exit
#    (its FP32 model is then reused by the PTQ runs).
# 2. PTQ without training at W8A8, W4A4, W3A3 and W2A4: min-max and L_p
#    calibration (with and without batch-norm re-estimation), block
#    reconstruction (Genie-M), and MixQuant (budget rule at the same mean
#    bits) with each.
# --quick runs a 2-rank default job with fewer FP32 epochs (for trying the
# script out; its figures are not the documented ones).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

ranks=8
fp32_args=()
if [[ "${1:-}" == "--quick" ]]; then ranks=2; fp32_args=(--fp32-epochs 2 --qat-epochs 1); fi

ensure_dependencies
bash "$EFQAT_ROOT/launch/setup-data.sh" >&2
efqat_build "$EFQAT_ROOT/.build/launch-build.log" -c release --product efqat-train
binary="$EFQAT_ROOT/.build/release/efqat-train"
out="$EFQAT_ROOT/runs/results"
rm -rf "$out"
mkdir -p "$out"
export EFQAT_PROGRESS=lines

efqat_say "default job on $ranks ranks"
started=$(date +%s.%N)
efqat_mpirun "$ranks" "$binary" --output "$out/default" ${fp32_args[@]+"${fp32_args[@]}"} --log-every 50 | tee "$out/default.log"
finished=$(date +%s.%N)
python3 -c "print(f'{$finished - $started:.1f}')" > "$out/default.seconds"

# PTQ runs reuse the FP32 model of the default job (same seed and epochs).
ptq() {  # name, then efqat-train options
    local name="$1"
    shift
    efqat_say "PTQ $name"
    mkdir -p "$out/ptq-$name"
    cp "$out/default/fp32.safetensors" "$out/ptq-$name/"
    local started=$SECONDS
    "$binary" --output "$out/ptq-$name" --qat-epochs 0 ${fp32_args[@]+"${fp32_args[@]}"} --log-every 0 "$@" > "$out/ptq-$name.log"
    echo "$((SECONDS - started))" > "$out/ptq-$name.seconds"
}
for bits in 8:8 4:4 3:3 2:4; do
    w=${bits%:*} a=${bits#*:}
    ptq "W${w}A${a}-minmax-stale-bn" --weight-bits "$w" --activation-bits "$a" --no-bn-reestimate
    ptq "W${w}A${a}-minmax" --weight-bits "$w" --activation-bits "$a"
    ptq "W${w}A${a}-lp" --weight-bits "$w" --activation-bits "$a" --weight-calibration lp --activation-calibration lp
    ptq "W${w}A${a}-mixquant-minmax" --weight-bits "$w" --activation-bits "$a" --mixquant "budget:$w"
    ptq "W${w}A${a}-mixquant-lp" --weight-bits "$w" --activation-bits "$a" --mixquant "budget:$w" \
        --weight-calibration lp --activation-calibration lp
    ptq "W${w}A${a}-reconstruction" --weight-bits "$w" --activation-bits "$a" --reconstruct
    ptq "W${w}A${a}-mixquant-reconstruction" --weight-bits "$w" --activation-bits "$a" --mixquant "budget:$w" --reconstruct
done

python3 "$EFQAT_ROOT/launch/results/render.py" "$out" "$ranks" > "$EFQAT_ROOT/docs/results.md"
efqat_say "wrote docs/results.md"
