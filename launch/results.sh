#!/usr/bin/env bash
# Measures every figure in docs/results.md and rewrites that file.
#
#   launch/results.sh [--quick] [default] [ptq] [efqat]
#
# Sections (all of them when none is named; a section's earlier runs are
# replaced, the others' kept, and docs/results.md shows every section that
# has runs):
# default  The default job, `mpirun -n 8 efqat-train`, timed from launch to
#          exit (its FP32 model is then reused by the other sections).
# ptq      PTQ without training at W8A8, W4A4, W3A3 and W2A4: min-max and
#          L_p calibration (with and without batch-norm re-estimation),
#          block reconstruction (Genie-M), and MixQuant (budget rule at the
#          same mean bits) with each.
# efqat    W4A4 and W3A3 QAT from the default PTQ init: EfQAT with each mode
#          at p = 0, 0.05, 0.1 and 0.25, and full QAT (p = 1), same epochs,
#          2 ranks each; writes docs/efqat-accuracy.svg too.
# --quick runs a 2-rank default job with fewer FP32 epochs (for trying the
# script out; its figures are not the documented ones).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

ranks=8
fp32_args=()
if [[ "${1:-}" == "--quick" ]]; then ranks=2; fp32_args=(--fp32-epochs 2 --qat-epochs 1); shift; fi
sections=("$@")
[[ ${#sections[@]} -gt 0 ]] || sections=(default ptq efqat)
for section in "${sections[@]}"; do
    case "$section" in default|ptq|efqat) ;; *) echo "error: unknown section '$section' (default, ptq, efqat)" >&2; exit 2 ;; esac
done
wants() { [[ " ${sections[*]} " == *" $1 "* ]]; }

ensure_dependencies
bash "$EFQAT_ROOT/launch/setup-data.sh" >&2
efqat_build "$EFQAT_ROOT/.build/launch-build.log" -c release --product efqat-train
binary="$EFQAT_ROOT/.build/release/efqat-train"
out="$EFQAT_ROOT/runs/results"
mkdir -p "$out"
export EFQAT_PROGRESS=lines

if wants default; then
    rm -rf "$out/default" "$out"/default.*
    efqat_say "default job on $ranks ranks"
    started=$(date +%s.%N)
    efqat_mpirun "$ranks" "$binary" --output "$out/default" ${fp32_args[@]+"${fp32_args[@]}"} --log-every 50 | tee "$out/default.log"
    finished=$(date +%s.%N)
    python3 -c "print(f'{$finished - $started:.1f}')" > "$out/default.seconds"
fi
if [[ ! -f "$out/default/fp32.safetensors" ]]; then
    echo "error: $out/default/fp32.safetensors is missing: run the default section first" >&2
    exit 1
fi

# Runs reuse the FP32 model of the default job (same seed and epochs).
run() {  # name, ranks, then efqat-train options
    local name="$1" n="$2"
    shift 2
    efqat_say "$name"
    rm -rf "$out/$name" "$out/$name".*
    mkdir -p "$out/$name"
    cp "$out/default/fp32.safetensors" "$out/$name/"
    local started=$SECONDS
    if [[ "$n" -eq 1 ]]; then
        "$binary" --output "$out/$name" ${fp32_args[@]+"${fp32_args[@]}"} --log-every 0 "$@" > "$out/$name.log"
    else
        efqat_mpirun "$n" "$binary" --output "$out/$name" ${fp32_args[@]+"${fp32_args[@]}"} --log-every 0 "$@" > "$out/$name.log"
    fi
    echo "$((SECONDS - started))" > "$out/$name.seconds"
    grep -q "reusing the FP32 model" "$out/$name.log" || { echo "error: $name did not reuse the FP32 model" >&2; exit 1; }
}
ptq() {  # name, then efqat-train options
    local name="$1"
    shift
    run "ptq-$name" 1 --qat-epochs 0 "$@"
}
if wants ptq; then for bits in 8:8 4:4 3:3 2:4; do
    w=${bits%:*} a=${bits#*:}
    ptq "W${w}A${a}-minmax-stale-bn" --weight-bits "$w" --activation-bits "$a" --no-bn-reestimate
    ptq "W${w}A${a}-minmax" --weight-bits "$w" --activation-bits "$a"
    ptq "W${w}A${a}-lp" --weight-bits "$w" --activation-bits "$a" --weight-calibration lp --activation-calibration lp
    ptq "W${w}A${a}-mixquant-minmax" --weight-bits "$w" --activation-bits "$a" --mixquant "budget:$w"
    ptq "W${w}A${a}-mixquant-lp" --weight-bits "$w" --activation-bits "$a" --mixquant "budget:$w" \
        --weight-calibration lp --activation-calibration lp
    ptq "W${w}A${a}-reconstruction" --weight-bits "$w" --activation-bits "$a" --reconstruct
    ptq "W${w}A${a}-mixquant-reconstruction" --weight-bits "$w" --activation-bits "$a" --mixquant "budget:$w" --reconstruct
done; fi

if wants efqat; then
    for bits in 4:4 3:3; do
        w=${bits%:*} a=${bits#*:}
        run "efqat-W${w}A${a}-p0" 2 --weight-bits "$w" --activation-bits "$a" --efqat-fraction 0
        run "efqat-W${w}A${a}-full" 2 --weight-bits "$w" --activation-bits "$a" --efqat-fraction 1
        for mode in cwpn cwpl lwpn; do
            for p in 0.05 0.1 0.25; do
                run "efqat-W${w}A${a}-$mode-p$p" 2 --weight-bits "$w" --activation-bits "$a" \
                    --efqat-mode "$mode" --efqat-fraction "$p"
            done
        done
    done
fi

python3 "$EFQAT_ROOT/launch/results/render.py" "$out" "$ranks" "$EFQAT_ROOT/docs/efqat-accuracy.svg" \
    > "$EFQAT_ROOT/docs/results.md"
efqat_say "wrote docs/results.md"
