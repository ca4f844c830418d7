#!/usr/bin/env bash
# Runs the default job: installs what is missing, fetches the data set
# (MNIST 5k, or Fashion-MNIST with --dataset fashion-mnist) into the data
# cache, builds efqat-train in release mode and runs it under mpirun.
#
#   launch/run.sh [-n RANKS] [efqat-train options...]
#
# -n RANKS (default 8) is the number of MPI ranks; every other argument goes
# to efqat-train (see `.build/release/efqat-train --help`). Relative paths in
# those options are relative to the current directory, and so is the
# default output folder runs/default.
#
# Environment: EFQAT_PROGRESS=bar|lines (default: a bar on a terminal),
# EFQAT_MPIRUN_ARGS (extra mpirun options, e.g. "-q" for fewer Open MPI
# banners), EFQAT_CACHE (data cache, default ${XDG_CACHE_HOME:-~/.cache}/efqat-train),
# EFQAT_BUILD_DIR (build folder).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

usage() {
    # The comment block at the top of this file.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

ranks=8
args=()
while (($# > 0)); do
    case "$1" in
        -n | --ranks | --np)
            [[ $# -ge 2 ]] || { echo "error: $1 needs a number of ranks" >&2; exit 2; }
            ranks="$2"
            shift 2
            ;;
        -n=* | --ranks=* | --np=*)
            ranks="${1#*=}"
            shift
            ;;
        -h | --help | help)
            usage
            binary="$EFQAT_BUILD_DIR/release/efqat-train"
            if [[ -x "$binary" ]]; then
                echo
                "$binary" --help
            else
                echo
                echo "efqat-train's own options: build it (swift build -c release), then run $binary --help"
            fi
            exit 0
            ;;
        *)
            args+=("$1")
            shift
            ;;
    esac
done
if ! [[ "$ranks" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: -n takes a positive number of ranks, got '$ranks'" >&2
    exit 2
fi

ensure_dependencies
# MNIST 5k as always, and Fashion-MNIST when the job reads it from the cache.
datasets=(mnist5k)
dataset=mnist5k
data_dir_given=0
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --dataset) dataset="${args[i + 1]:-}" ;;
        --dataset=*) dataset="${args[i]#*=}" ;;
        --data-dir | --data-dir=*) data_dir_given=1 ;;
    esac
done
if [[ "$dataset" == fashion-mnist && "$data_dir_given" -eq 0 ]]; then datasets+=(fashion-mnist); fi
bash "$EFQAT_ROOT/launch/setup-data.sh" "${datasets[@]}" >&2

efqat_say "building efqat-train (release)"
efqat_build "$EFQAT_BUILD_DIR/launch-build.log" -c release --product efqat-train
binary="$EFQAT_BUILD_DIR/release/efqat-train"

efqat_progress_default

efqat_say "mpirun -n $ranks efqat-train ${args[*]:-}"
efqat_mpirun "$ranks" "$binary" ${args[@]+"${args[@]}"}
