#!/usr/bin/env bash
# Measures every figure in docs/results.md and rewrites that file.
#
#   launch/results.sh [--quick] [default] [ptq] [efqat] [zeroshot] [arch]
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
# zeroshot Zero-shot quantization (no labels after the FP32 model) at W4A4
#          and W3A3 on three image sets of ZS_IMAGES (1024) images: Genie-D
#          images synthesised from the FP32 model (ZS_ITERATIONS, 100, per
#          batch), Gaussian noise and real training images. Each: PTQ
#          min-max and EfQAT p = 0.1 by distillation (ZS_QAT_EPOCHS, 12, on
#          2 ranks), and PTQ with reconstruction; then the synthesis time
#          per image of 128 images on 1, 2 and 4 ranks (ZS_TIME_ITERATIONS,
#          100, per batch of 32). ZS_IMAGES must be a multiple of 64 (the
#          synthesis batch); ZS_RECONSTRUCTION_ITERATIONS (400) per block.
# arch     The other architectures (ARCHS: resnet18 resnet50 mobilenet_v2) on
#          the same data: each one's FP32 model by the default recipe on
#          $ranks ranks, then W4A4 PTQ (min-max, L_p, reconstruction,
#          MixQuant + reconstruction), EfQAT p = 0.1 and full QAT (2 ranks).
# --quick runs a 2-rank default job with fewer FP32 epochs (for trying the
# script out; its figures are not the documented ones), and a zeroshot
# section with 128 images, 10 synthesis iterations, 2 QAT epochs and 20
# reconstruction iterations.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

ranks=8
fp32_args=()
quick=0
if [[ "${1:-}" == "--quick" ]]; then quick=1; ranks=2; fp32_args=(--fp32-epochs 2 --qat-epochs 1); shift; fi
sections=("$@")
[[ ${#sections[@]} -gt 0 ]] || sections=(default ptq efqat zeroshot arch)
for section in "${sections[@]}"; do
    case "$section" in default|ptq|efqat|zeroshot|arch) ;; *) echo "error: unknown section '$section' (default, ptq, efqat, zeroshot, arch)" >&2; exit 2 ;; esac
done
wants() { [[ " ${sections[*]} " == *" $1 "* ]]; }

ensure_dependencies
bash "$EFQAT_ROOT/launch/setup-data.sh" >&2
efqat_build "$EFQAT_ROOT/.build/launch-build.log" -c release --product efqat-train
out="$EFQAT_ROOT/runs/results"
mkdir -p "$out"
# The runs use a copy of the binary, so a rebuild while they go changes none of them.
commit=$(git -C "$EFQAT_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
binary="$out/efqat-train.$commit"
cp "$EFQAT_BUILD_DIR/release/efqat-train" "$binary"
export EFQAT_PROGRESS=lines

if wants default; then
    rm -rf "$out/default" "$out"/default.*
    efqat_say "default job on $ranks ranks"
    started=$(date +%s.%N)
    efqat_mpirun "$ranks" "$binary" --output "$out/default" ${fp32_args[@]+"${fp32_args[@]}"} --log-every 50 | tee "$out/default.log"
    finished=$(date +%s.%N)
    python3 -c "print(f'{$finished - $started:.1f}')" > "$out/default.seconds"
fi
if [[ ! -f "$out/default/fp32.safetensors" ]] && ! [[ ${#sections[@]} -eq 1 && "${sections[0]}" == arch ]]; then
    echo "error: $out/default/fp32.safetensors is missing: run the default section first" >&2
    exit 1
fi

# Runs reuse the FP32 model of the default job (same seed and epochs), or
# of the run folder named by $fp32_from.
fp32_from=default
run() {  # name, ranks, then efqat-train options
    local name="$1" n="$2"
    shift 2
    efqat_say "$name"
    rm -rf "$out/$name" "$out/$name".*
    mkdir -p "$out/$name"
    cp "$out/$fp32_from/fp32.safetensors" "$out/$name/"
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
if wants ptq; then for bits in 4:4 3:3 2:4 8:8; do
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

if wants zeroshot; then
    images=${ZS_IMAGES:-$([[ $quick -eq 1 ]] && echo 128 || echo 1024)}
    iterations=${ZS_ITERATIONS:-$([[ $quick -eq 1 ]] && echo 10 || echo 100)}
    qat_epochs=${ZS_QAT_EPOCHS:-$([[ $quick -eq 1 ]] && echo 2 || echo 12)}
    time_iterations=${ZS_TIME_ITERATIONS:-$([[ $quick -eq 1 ]] && echo 5 || echo 100)}
    reconstruction_iterations=${ZS_RECONSTRUCTION_ITERATIONS:-$([[ $quick -eq 1 ]] && echo 20 || echo 400)}
    rm -rf "$out"/zs-* "$out/zs.json"
    echo "{\"images\": $images, \"iterations\": $iterations, \"qat_epochs\": $qat_epochs, \"time_iterations\": $time_iterations, \"reconstruction_iterations\": $reconstruction_iterations}" \
        > "$out/zs.json"
    # One Genie data set for every genie run, synthesised on 2 ranks.
    efqat_say "zs-genie: $images Genie-D images, $iterations iterations per batch"
    efqat_mpirun 2 "$binary" synthesize --model "$out/default/fp32.safetensors" --output "$out/zs-genie" \
        --images "$images" --iterations "$iterations" --log-every 1000 > "$out/zs-genie.log"
    for bits in 4:4 3:3; do
        w=${bits%:*} a=${bits#*:}
        for data in genie noise real; do
            source_args=(--zero-shot-data "$data" --zero-shot-images "$images")
            [[ "$data" == genie ]] && source_args=(--synthetic-data "$out/zs-genie/genie.safetensors")
            common=(--weight-bits "$w" --activation-bits "$a" --zero-shot "${source_args[@]}"
                    --calibration-samples "$images" --reconstruction-samples "$images")
            run "zs-W${w}A${a}-$data-efqat" 2 "${common[@]}" --qat-epochs "$qat_epochs"
            run "zs-W${w}A${a}-$data-reconstruction" 1 "${common[@]}" --qat-epochs 0 --reconstruct \
                --reconstruction-iterations "$reconstruction_iterations"
        done
    done
    # Synthesis time per image: 4 batches of 32, so 4 ranks have one each.
    for n in 1 2 4; do
        efqat_say "zs-time-$n: synthesis of 128 images on $n rank(s)"
        efqat_mpirun "$n" "$binary" synthesize --model "$out/default/fp32.safetensors" --output "$out/zs-time-$n" \
            --images 128 --batch-size 32 --iterations "$time_iterations" --log-every 1000 > "$out/zs-time-$n.log"
    done
fi

if wants arch; then
    for arch in ${ARCHS:-resnet18 resnet50 mobilenet_v2}; do
        rm -rf "$out/arch-$arch"-* "$out/arch-$arch".*
        efqat_say "arch-$arch-fp32: FP32 model on $ranks ranks"
        started=$SECONDS
        efqat_mpirun "$ranks" "$binary" --arch "$arch" --output "$out/arch-$arch-fp32" --qat-epochs 0 \
            ${fp32_args[@]+"${fp32_args[@]}"} --log-every 50 > "$out/arch-$arch-fp32.log"
        echo "$((SECONDS - started))" > "$out/arch-$arch-fp32.seconds"
        fp32_from="arch-$arch-fp32"
        w4a4=(--arch "$arch" --weight-bits 4 --activation-bits 4)
        run "arch-$arch-ptq-minmax" 1 "${w4a4[@]}" --qat-epochs 0
        run "arch-$arch-ptq-lp" 1 "${w4a4[@]}" --qat-epochs 0 --weight-calibration lp --activation-calibration lp
        run "arch-$arch-ptq-reconstruction" 1 "${w4a4[@]}" --qat-epochs 0 --reconstruct
        run "arch-$arch-ptq-mixquant-reconstruction" 1 "${w4a4[@]}" --qat-epochs 0 --mixquant budget:4 --reconstruct
        run "arch-$arch-efqat-p0.1" 2 "${w4a4[@]}" --efqat-fraction 0.1
        run "arch-$arch-efqat-full" 2 "${w4a4[@]}" --efqat-fraction 1
        fp32_from=default
    done
fi

python3 "$EFQAT_ROOT/launch/results/render.py" "$out" "$ranks" "$EFQAT_ROOT/docs/efqat-accuracy.svg" \
    > "$EFQAT_ROOT/docs/results.md"
efqat_say "wrote docs/results.md"
