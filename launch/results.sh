#!/usr/bin/env bash
# Measures every figure of one data set's results page and rewrites it.
#
#   launch/results.sh [--quick] [--dataset NAME] [default] [ptq] [efqat] [seeds] [zeroshot] [arch]
#
# --dataset  mnist5k (the default): runs in runs/results, the page
#            docs/results.md with its plots docs/efqat-accuracy.svg and
#            docs/efqat-backward.svg; efqat-train's FP32 recipe, 3 QAT epochs.
#            fashion-mnist: runs in runs/results/fashion-mnist, the page
#            docs/results-fashion-mnist.md, plots suffixed -fashion-mnist; every
#            run gets the FP32 recipe --dataset fashion-mnist --fp32-epochs 30
#            --augment-shift 2 --augment-flip, and 1 QAT epoch (efqat, seeds,
#            arch).
#
# Sections (all of them when none is named; a section's earlier runs are
# replaced, the others' kept, and the page shows every section that has
# runs):
# default  The default job, `mpirun -n 8 efqat-train` with the FP32 recipe,
#          timed from launch to exit (its FP32 model is then reused by the
#          other sections).
# ptq      PTQ without training at W8A8, W4A4, W3A3 and W2A4: min-max and
#          L_p calibration (with and without batch-norm re-estimation),
#          block reconstruction (Genie-M) with and without QDrop, and
#          MixQuant (budget rule at the same mean bits) with each.
# efqat    W4A4 and W3A3 QAT from the default PTQ init: EfQAT with each mode
#          at p = 0, 0.05, 0.1 and 0.25, and full QAT (p = 1), same epochs,
#          2 ranks each; writes the two EfQAT plots too.
# seeds    The cells that decide defaults, each with the seeds SEEDS (0 1 2),
#          all from the default job's FP32 model (--model: not retrained, so
#          a seed changes the calibration subsets, data order and QDrop masks
#          only): W2A4 reconstruction with and without QDrop, W3A3 min-max
#          with and without batch-norm re-estimation (1 process), and W4A4
#          and W3A3 EfQAT p = 0.1 in each mode (2 ranks). Runs seed<S>-<name
#          of the same run in the ptq or efqat section>.
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
#          the same data: each one's FP32 model by the FP32 recipe on
#          $ranks ranks (ResNet-50 with --zero-init-residual), then W4A4 PTQ
#          (min-max, L_p, reconstruction, MixQuant + reconstruction), EfQAT
#          p = 0.1 and full QAT (2 ranks).
# --quick runs on 2 ranks with a short FP32 recipe (mnist5k: 2 epochs;
# fashion-mnist: 1 epoch of 2000 training images) and 1 QAT epoch in the
# efqat, seeds and arch sections, for trying the script out (its figures
# are not the documented ones), and a zeroshot section with 128 images, 10
# synthesis iterations, 2 QAT epochs and 20 reconstruction iterations.
#
# The run folder's settings.json records the data set, the FP32 recipe
# (fp32_args), the QAT epochs and the ranks, for the page's prose; the page
# is made by launch/results/render.py RUNS RANKS DOCS [SUFFIX] (its
# docstring says more).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

ranks=8
quick=0
dataset=mnist5k
if [[ "${1:-}" == "--quick" ]]; then quick=1; ranks=2; shift; fi
if [[ "${1:-}" == "--dataset" ]]; then
    [[ $# -ge 2 ]] || { echo "error: --dataset needs a name (mnist5k, fashion-mnist)" >&2; exit 2; }
    dataset="$2"
    shift 2
fi
# Per data set: the runs' folder, the suffix of the page's and plots' names,
# the FP32 recipe that every run gets (a run reuses the default job's FP32
# model only when its FP32 options are the same) and the QAT epochs of the
# efqat, seeds and arch sections.
case "$dataset" in
    mnist5k)
        out="$EFQAT_ROOT/runs/results"
        suffix=""
        fp32_args=()
        qat_epochs=3
        if [[ $quick -eq 1 ]]; then fp32_args=(--fp32-epochs 2); qat_epochs=1; fi
        ;;
    fashion-mnist)
        out="$EFQAT_ROOT/runs/results/fashion-mnist"
        suffix="-fashion-mnist"
        fp32_args=(--dataset fashion-mnist --fp32-epochs 30 --augment-shift 2 --augment-flip)
        qat_epochs=1
        if [[ $quick -eq 1 ]]; then
            fp32_args=(--dataset fashion-mnist --fp32-epochs 1 --train-samples 2000 --augment-shift 2 --augment-flip)
        fi
        ;;
    *) echo "error: unknown data set '$dataset' (mnist5k, fashion-mnist)" >&2; exit 2 ;;
esac
sections=("$@")
[[ ${#sections[@]} -gt 0 ]] || sections=(default ptq efqat seeds zeroshot arch)
for section in "${sections[@]}"; do
    case "$section" in default|ptq|efqat|seeds|zeroshot|arch) ;; *) echo "error: unknown section '$section' (default, ptq, efqat, seeds, zeroshot, arch)" >&2; exit 2 ;; esac
done
wants() { [[ " ${sections[*]} " == *" $1 "* ]]; }

ensure_dependencies
bash "$EFQAT_ROOT/launch/setup-data.sh" "$dataset" >&2
efqat_build "$EFQAT_ROOT/.build/launch-build.log" -c release --product efqat-train
mkdir -p "$out"
python3 -c 'import json, sys; print(json.dumps({"dataset": sys.argv[1], "fp32_args": sys.argv[4:],
                                                "qat_epochs": int(sys.argv[2]), "ranks": int(sys.argv[3])}))' \
    "$dataset" "$qat_epochs" "$ranks" ${fp32_args[@]+"${fp32_args[@]}"} > "$out/settings.json"
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

# launch NAME RANKS LOGGED options...: runs efqat-train into $out/NAME (on
# RANKS ranks; 1: one process without mpirun), writes NAME.seconds when it
# ends, and checks that its log says LOGGED, which tells where its FP32 model
# came from: a run that trained its own would measure something else.
launch() {
    local name="$1" n="$2" logged="$3"
    shift 3
    efqat_say "$name"
    local started=$SECONDS
    if [[ "$n" -eq 1 ]]; then
        "$binary" --output "$out/$name" ${fp32_args[@]+"${fp32_args[@]}"} --log-every 0 "$@" > "$out/$name.log"
    else
        efqat_mpirun "$n" "$binary" --output "$out/$name" ${fp32_args[@]+"${fp32_args[@]}"} --log-every 0 "$@" > "$out/$name.log"
    fi
    echo "$((SECONDS - started))" > "$out/$name.seconds"
    grep -q "$logged" "$out/$name.log" || { echo "error: $name did not log '$logged'" >&2; exit 1; }
}
# Runs reuse the FP32 model of the default job (same seed and FP32 recipe),
# or of the run folder named by $fp32_from, copied into their own folder.
fp32_from=default
run() {  # name, ranks, then efqat-train options
    local name="$1" n="$2"
    shift 2
    rm -rf "$out/$name" "$out/$name".*
    mkdir -p "$out/$name"
    cp "$out/$fp32_from/fp32.safetensors" "$out/$name/"
    launch "$name" "$n" "reusing the FP32 model" "$@"
}
# A run with another seed would train a new FP32 model, so it gets the default
# job's by --model instead.
seeded() {  # seed, name, ranks, then efqat-train options
    local seed="$1" name="$2" n="$3"
    shift 3
    rm -rf "$out/$name" "$out/$name".*
    launch "$name" "$n" "starting from the FP32 model in" --model "$out/default/fp32.safetensors" --seed "$seed" "$@"
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
    ptq "W${w}A${a}-reconstruction-no-qdrop" --weight-bits "$w" --activation-bits "$a" --reconstruct --no-qdrop
    ptq "W${w}A${a}-mixquant-reconstruction" --weight-bits "$w" --activation-bits "$a" --mixquant "budget:$w" --reconstruct
done; fi

if wants efqat; then
    for bits in 4:4 3:3; do
        w=${bits%:*} a=${bits#*:}
        qat=(--qat-epochs "$qat_epochs" --weight-bits "$w" --activation-bits "$a")
        run "efqat-W${w}A${a}-p0" 2 "${qat[@]}" --efqat-fraction 0
        run "efqat-W${w}A${a}-full" 2 "${qat[@]}" --efqat-fraction 1
        for mode in cwpn cwpl lwpn; do
            for p in 0.05 0.1 0.25; do
                run "efqat-W${w}A${a}-$mode-p$p" 2 "${qat[@]}" --efqat-mode "$mode" --efqat-fraction "$p"
            done
        done
    done
fi

# Each run named seed<S>-<its name in the ptq or efqat section>.
if wants seeds; then
    for seed in ${SEEDS:-0 1 2}; do
        w2a4=(--qat-epochs 0 --weight-bits 2 --activation-bits 4 --reconstruct)
        seeded "$seed" "seed$seed-ptq-W2A4-reconstruction" 1 "${w2a4[@]}"
        seeded "$seed" "seed$seed-ptq-W2A4-reconstruction-no-qdrop" 1 "${w2a4[@]}" --no-qdrop
        w3a3=(--qat-epochs 0 --weight-bits 3 --activation-bits 3)
        seeded "$seed" "seed$seed-ptq-W3A3-minmax" 1 "${w3a3[@]}"
        seeded "$seed" "seed$seed-ptq-W3A3-minmax-stale-bn" 1 "${w3a3[@]}" --no-bn-reestimate
        for bits in 4:4 3:3; do
            w=${bits%:*} a=${bits#*:}
            for mode in cwpn cwpl lwpn; do
                seeded "$seed" "seed$seed-efqat-W${w}A${a}-$mode-p0.1" 2 --qat-epochs "$qat_epochs" \
                    --weight-bits "$w" --activation-bits "$a" --efqat-mode "$mode" --efqat-fraction 0.1
            done
        done
    done
fi

if wants zeroshot; then
    images=${ZS_IMAGES:-$([[ $quick -eq 1 ]] && echo 128 || echo 1024)}
    iterations=${ZS_ITERATIONS:-$([[ $quick -eq 1 ]] && echo 10 || echo 100)}
    zs_qat_epochs=${ZS_QAT_EPOCHS:-$([[ $quick -eq 1 ]] && echo 2 || echo 12)}
    time_iterations=${ZS_TIME_ITERATIONS:-$([[ $quick -eq 1 ]] && echo 5 || echo 100)}
    reconstruction_iterations=${ZS_RECONSTRUCTION_ITERATIONS:-$([[ $quick -eq 1 ]] && echo 20 || echo 400)}
    rm -rf "$out"/zs-* "$out/zs.json"
    echo "{\"images\": $images, \"iterations\": $iterations, \"qat_epochs\": $zs_qat_epochs, \"time_iterations\": $time_iterations, \"reconstruction_iterations\": $reconstruction_iterations}" \
        > "$out/zs.json"
    # One Genie data set for every genie run, synthesised on 2 ranks.
    efqat_say "zs-genie: $images Genie-D images, $iterations iterations per batch"
    efqat_mpirun 2 "$binary" synthesize --model "$out/default/fp32.safetensors" --output "$out/zs-genie" \
        --zero-shot-images "$images" --synthesis-iterations "$iterations" --log-every 1000 > "$out/zs-genie.log"
    for bits in 4:4 3:3; do
        w=${bits%:*} a=${bits#*:}
        for data in genie noise real; do
            source_args=(--zero-shot-data "$data" --zero-shot-images "$images")
            [[ "$data" == genie ]] && source_args=(--synthetic-data "$out/zs-genie/genie.safetensors")
            common=(--weight-bits "$w" --activation-bits "$a" --zero-shot "${source_args[@]}"
                    --calibration-samples "$images" --reconstruction-samples "$images")
            run "zs-W${w}A${a}-$data-efqat" 2 "${common[@]}" --qat-epochs "$zs_qat_epochs"
            run "zs-W${w}A${a}-$data-reconstruction" 1 "${common[@]}" --qat-epochs 0 --reconstruct \
                --reconstruction-iterations "$reconstruction_iterations"
        done
    done
    # Synthesis time per image: 4 batches of 32, so 4 ranks have one each.
    for n in 1 2 4; do
        efqat_say "zs-time-$n: synthesis of 128 images on $n rank(s)"
        efqat_mpirun "$n" "$binary" synthesize --model "$out/default/fp32.safetensors" --output "$out/zs-time-$n" \
            --zero-shot-images 128 --synthesis-batch-size 32 --synthesis-iterations "$time_iterations" --log-every 1000 > "$out/zs-time-$n.log"
    done
fi

if wants arch; then
    for arch in ${ARCHS:-resnet18 resnet50 mobilenet_v2}; do
        rm -rf "$out/arch-$arch"-* "$out/arch-$arch".*
        efqat_say "arch-$arch-fp32: FP32 model on $ranks ranks"
        started=$SECONDS
        # ResNet-50's 16 bottlenecks diverge in the first steps from torchvision's
        # default initialisation (40% FP32 on MNIST 5k); each block starting as
        # the identity trains them.
        network=(--arch "$arch")
        [[ "$arch" == resnet50 ]] && network+=(--zero-init-residual)
        efqat_mpirun "$ranks" "$binary" "${network[@]}" --output "$out/arch-$arch-fp32" --qat-epochs 0 \
            ${fp32_args[@]+"${fp32_args[@]}"} --log-every 50 > "$out/arch-$arch-fp32.log"
        echo "$((SECONDS - started))" > "$out/arch-$arch-fp32.seconds"
        fp32_from="arch-$arch-fp32"
        w4a4=("${network[@]}" --weight-bits 4 --activation-bits 4)
        run "arch-$arch-ptq-minmax" 1 "${w4a4[@]}" --qat-epochs 0
        run "arch-$arch-ptq-lp" 1 "${w4a4[@]}" --qat-epochs 0 --weight-calibration lp --activation-calibration lp
        run "arch-$arch-ptq-reconstruction" 1 "${w4a4[@]}" --qat-epochs 0 --reconstruct
        run "arch-$arch-ptq-mixquant-reconstruction" 1 "${w4a4[@]}" --qat-epochs 0 --mixquant budget:4 --reconstruct
        run "arch-$arch-efqat-p0.1" 2 "${w4a4[@]}" --qat-epochs "$qat_epochs" --efqat-fraction 0.1
        run "arch-$arch-efqat-full" 2 "${w4a4[@]}" --qat-epochs "$qat_epochs" --efqat-fraction 1
        fp32_from=default
    done
fi

python3 "$EFQAT_ROOT/launch/results/render.py" "$out" "$ranks" "$EFQAT_ROOT/docs" "$suffix" \
    > "$EFQAT_ROOT/docs/results$suffix.md"
efqat_say "wrote docs/results$suffix.md"
