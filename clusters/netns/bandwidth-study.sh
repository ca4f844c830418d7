#!/usr/bin/env bash
# The bandwidth study of docs/benchmarks.md (issue #5): full QAT against
# EfQAT on two local hosts whose link is limited, one rank per host, so
# every step's all-reduce crosses the link. Needs root, a built efqat-train
# and runs/teacher/fp32.safetensors (the default job's FP32 model).
#
#   clusters/netns/bandwidth-study.sh [--output DIR] [--links "1gbit unlimited"]
#                                     [--widths "1 4"] [--samples N] [--reps N]
#                                     [--overlap "off on"] [--repeats N]
#
#   --output DIR   where the runs, the logs and table.md go (default runs/bandwidth)
#   --links LIST   the link limits to run on, as tc rates, "unlimited" for no
#                  limit (default "1gbit")
#   --widths LIST  ResNet-20 width multipliers (default "1 4")
#   --samples N    training samples of the width > 1 runs (default 1024; width 1
#                  trains on all, to reuse the default job's FP32 model)
#   --reps N       timed all-reduces per size in the pure all-reduce measurement
#                  (default 20)
#   --overlap LIST the --overlap-reduce modes to run every job with (default
#                  "off": one blocking all-reduce per step)
#   --repeats N    run every job N times (default 1), to see the spread of a
#                  shared machine
#
# For every link and width it runs `efqat-train` at W4A4 with one QAT epoch,
# --threads 1, twice: --efqat-fraction 1 (full QAT) and 0.1 (EfQAT, CWPN).
# The FP32 model is never trained in a measured run: width 1 copies
# runs/teacher/fp32.safetensors in, a wider model is trained once
# (--fp32-epochs 1 on --samples samples, in DIR/fp32-w<width>) and copied in;
# every run must log "reusing the FP32 model". Then a small MPI program
# (compiled with mpicc) times MPI_Allreduce of exactly each run's bytes per
# step across the same links (and an unlimited one, the first time), each
# after a barrier, so without the other rank's compute imbalance
# (DIR/allreduce.txt). The table (DIR/table.md) takes rank 0's step times
# from the metrics.jsonl summary record of every run in DIR, also of
# earlier invocations; `uptime` is logged before every job (DIR/load.txt,
# and the run's own uptime.txt). With several --overlap modes or --repeats,
# DIR/overlap.md also lists every run: step, backward and communication
# time per step, overlap on or off, and the load average before it.
# Run folders are DIR/w<width>-<link>-p<p>-o<mode>-r<repeat>; the first
# table takes overlap off, repeat 1 (or the folders of earlier versions,
# named without -o and -r).
# Jobs run one after another on 2 ranks; the hosts (set efqat-bw-<pid>)
# are taken down however the script ends.
#
# Environment: EFQAT_TRAIN_BINARY, EFQAT_BUILD_DIR (see launch/env.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"
source "$here/../../launch/env.sh"

output="runs/bandwidth"
links_list="1gbit"
widths="1 4"
samples=1024
reps=20
overlap_modes="off"
repeats=1
while (($# > 0)); do
    case "$1" in
        --output) [[ $# -ge 2 ]] || { echo "error: --output needs a folder" >&2; exit 2; }; output="$2"; shift 2 ;;
        --links) [[ $# -ge 2 ]] || { echo "error: --links needs a list" >&2; exit 2; }; links_list="$2"; shift 2 ;;
        --widths) [[ $# -ge 2 ]] || { echo "error: --widths needs a list" >&2; exit 2; }; widths="$2"; shift 2 ;;
        --samples) [[ $# -ge 2 ]] || { echo "error: --samples needs a number" >&2; exit 2; }; samples="$2"; shift 2 ;;
        --reps) [[ $# -ge 2 ]] || { echo "error: --reps needs a number" >&2; exit 2; }; reps="$2"; shift 2 ;;
        --overlap) [[ $# -ge 2 ]] || { echo "error: --overlap needs a list" >&2; exit 2; }; overlap_modes="$2"; shift 2 ;;
        --repeats) [[ $# -ge 2 ]] || { echo "error: --repeats needs a number" >&2; exit 2; }; repeats="$2"; shift 2 ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
read -r -a links <<<"$links_list"
((${#links[@]} > 0)) || { echo "error: --links is empty" >&2; exit 2; }
for link in "${links[@]}"; do
    [[ "$link" == unlimited || "$link" =~ ^[0-9]+(\.[0-9]+)?([kmgt]?(bit|bps))$ ]] \
        || { echo "error: --links takes tc rates such as 1gbit, or unlimited; got '$link'" >&2; exit 2; }
done
for w in $widths; do
    [[ "$w" =~ ^[1-9][0-9]*$ ]] || { echo "error: --widths takes positive numbers, got '$w'" >&2; exit 2; }
done
for o in $overlap_modes; do
    [[ "$o" == auto || "$o" == on || "$o" == off ]] || { echo "error: --overlap takes auto, on and off, got '$o'" >&2; exit 2; }
done
[[ -n "${overlap_modes// /}" ]] || { echo "error: --overlap is empty" >&2; exit 2; }
[[ "$samples" =~ ^[1-9][0-9]*$ && "$reps" =~ ^[1-9][0-9]*$ && "$repeats" =~ ^[1-9][0-9]*$ ]] \
    || { echo "error: --samples, --reps and --repeats take positive numbers" >&2; exit 2; }
netns_require_root
efqat_train_binary
EFQAT_TRAIN_BINARY="$(realpath "$EFQAT_TRAIN_BINARY")"
export EFQAT_TRAIN_BINARY
command -v mpicc >/dev/null 2>&1 || { echo "error: mpicc is missing (Debian: apt-get install libopenmpi-dev)" >&2; exit 1; }
[[ "$output" == /* ]] || output="$EFQAT_ROOT/$output"
teacher="$EFQAT_ROOT/runs/teacher/fp32.safetensors"
name="efqat-bw-$$"
export EFQAT_PROGRESS=lines

# The FP32 recipe a safetensors file was trained with (its metadata).
fp32_recipe() {
    python3 - "$1" <<'EOF'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
m = header.get("__metadata__", {})
print(m.get("efqat.model", "?"), m.get("efqat.fp32_recipe", "?"))
EOF
}
if [[ " $widths " == *" 1 "* ]]; then
    [[ -r "$teacher" ]] || { echo "error: $teacher is missing (the default job's FP32 model)" >&2; exit 1; }
    # A run that did not match would train 12 FP32 epochs first: refuse instead.
    [[ "$(fp32_recipe "$teacher")" == *'"widths":[16,32,64]'*"epochs=12 batch=128"*"samples=all" ]] \
        || { echo "error: $teacher is not the default job's FP32 model: $(fp32_recipe "$teacher")" >&2; exit 1; }
fi

work=$(mktemp -d)
child=""
cleanup() {
    if [[ -n "$child" ]]; then kill -TERM "$child" 2>/dev/null || true; fi
    bash "$here/down.sh" --name "$name" || true
    if [[ -n "$child" ]]; then wait "$child" 2>/dev/null || true; fi
    rm -rf -- "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs clusters/netns/run.sh in the background and waits, so that a TERM
# reaches the trap at once rather than after the job.
netns_run() {
    local log="$1"
    shift
    bash "$here/run.sh" --name "$name" --hosts 2 -n 2 "$@" >"$log" 2>&1 &
    child=$!
    local status=0
    wait "$child" || status=$?
    child=""
    return "$status"
}

mkdir -p "$output"
record_load() {
    echo "$(date -u +%FT%TZ) before $1: $(uptime)" | tee -a "$output/load.txt" >&2
}

job_options() {   # width, QAT epochs
    local options=(--weight-bits 4 --activation-bits 4 --qat-epochs "$2" --threads 1)
    if (($1 > 1)); then options+=(--width "$1" --fp32-epochs 1 --train-samples "$samples"); fi
    echo "${options[*]}"
}

# 1. FP32 models of the wider networks, once (unlimited link: not measured).
for w in $widths; do
    ((w > 1)) || continue
    folder="$output/fp32-w$w"
    if [[ -r "$folder/fp32.safetensors" ]]; then
        efqat_say "width $w: FP32 model in ${folder#"$EFQAT_ROOT"/} is there"
        continue
    fi
    record_load "FP32 width $w"
    efqat_say "width $w: training the FP32 model (log: ${folder#"$EFQAT_ROOT"/}/run.log)"
    mkdir -p "$folder"
    # shellcheck disable=SC2046  # job_options is a word list
    netns_run "$folder/run.log" $(job_options "$w" 0) --output "$folder" \
        || { tail -20 "$folder/run.log" >&2; echo "error: the FP32 run of width $w failed" >&2; exit 1; }
done

# 2. The measured runs, one after another (repeats outermost, so that a
# change of the machine's load spreads over all settings).
for ((r = 1; r <= repeats; r++)); do
for link in "${links[@]}"; do
    for w in $widths; do
        for p in 1 0.1; do
          for o in $overlap_modes; do
            folder="$output/w$w-$link-p$p-o$o-r$r"
            rm -rf -- "$folder"
            mkdir -p "$folder"
            if ((w == 1)); then cp "$teacher" "$folder/"; else cp "$output/fp32-w$w/fp32.safetensors" "$folder/"; fi
            rate_option=()
            if [[ "$link" != unlimited ]]; then rate_option=(--rate "$link"); fi
            record_load "width $w, $link, p=$p, overlap $o, repeat $r"
            uptime >"$folder/uptime.txt"
            efqat_say "width $w, link $link, --efqat-fraction $p, --overlap-reduce $o, repeat $r (log: ${folder#"$EFQAT_ROOT"/}/run.log)"
            # shellcheck disable=SC2046
            netns_run "$folder/run.log" ${rate_option[@]+"${rate_option[@]}"} \
                $(job_options "$w" 1) --efqat-fraction "$p" --overlap-reduce "$o" --output "$folder" \
                || { tail -20 "$folder/run.log" >&2; echo "error: the run in $folder failed" >&2; exit 1; }
            grep -q "reusing the FP32 model" "$folder/run.log" \
                || { echo "error: $folder/run.log does not say 'reusing the FP32 model'" >&2; exit 1; }
            grep -h "link: sent" "$folder/run.log" >&2 || true
          done
        done
    done
done
done

# 3. Pure all-reduce time of each run's bytes per step, on the same links.
cat >"$work/allreduce.c" <<'EOF'
/* allreduce REPS BYTES...: rank 0 prints "allreduce BYTES REPS MEDIAN_MS MIN_MS"
   for in-place float sums of BYTES, each timed after a barrier (slowest rank). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    int reps = atoi(argv[1]);
    double *times = malloc(sizeof(double) * reps);
    for (int a = 2; a < argc; a++) {
        long bytes = atol(argv[a]);
        int count = (int)(bytes / 4);
        float *buffer = calloc(count, sizeof(float));
        for (int i = 0; i < 2; i++) MPI_Allreduce(MPI_IN_PLACE, buffer, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        for (int r = 0; r < reps; r++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            MPI_Allreduce(MPI_IN_PLACE, buffer, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            double dt = MPI_Wtime() - t0;
            MPI_Allreduce(&dt, &times[r], 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        }
        qsort(times, reps, sizeof(double), compare);
        if (rank == 0) printf("allreduce %ld %d %.3f %.3f\n", bytes, reps, times[reps / 2] * 1e3, times[0] * 1e3);
        free(buffer);
    }
    free(times);
    MPI_Finalize();
    return 0;
}
EOF
mpicc -O2 -o "$work/allreduce" "$work/allreduce.c"
mapfile -t sizes < <(python3 - "$output" <<'EOF'
import glob, json, sys
sizes = set()
for path in glob.glob(sys.argv[1] + "/w*-p*/metrics.jsonl"):
    for line in open(path):
        record = json.loads(line)
        if record.get("event") == "summary":
            for stage in record["stages"]:
                if "bytes_per_step" in stage:
                    sizes.add(stage["bytes_per_step"])
print("\n".join(str(s) for s in sorted(sizes)))
EOF
)
((${#sizes[@]} > 0)) || { echo "error: no bytes_per_step in the runs' metrics.jsonl" >&2; exit 1; }
touch "$output/allreduce.txt"
timed=("${links[@]}")
if [[ " ${links[*]} " != *" unlimited "* ]] && ! grep -q '^unlimited ' "$output/allreduce.txt"; then timed+=(unlimited); fi
for link in "${timed[@]}"; do
    rate_option=()
    if [[ "$link" != unlimited ]]; then rate_option=(--rate "$link"); fi
    record_load "all-reduce timing, $link"
    EFQAT_TRAIN_BINARY="$work/allreduce" netns_run "$work/allreduce.log" ${rate_option[@]+"${rate_option[@]}"} \
        "$reps" "${sizes[@]}" || { cat "$work/allreduce.log" >&2; echo "error: the all-reduce timing failed" >&2; exit 1; }
    # This link's lines replace those of an earlier invocation.
    { grep -v "^$link " "$output/allreduce.txt" || true; grep '^allreduce ' "$work/allreduce.log" | sed "s/^/$link /"; } \
        >"$work/allreduce.txt"
    mv "$work/allreduce.txt" "$output/allreduce.txt"
done

# 4. The table.
python3 - "$output" <<'EOF' | tee "$output/table.md"
import glob, json, os, re, sys
out = sys.argv[1]
pure = {}
for line in open(out + "/allreduce.txt"):
    link, _, size, reps, median, low = line.split()
    pure[(link, int(size))] = (float(median), float(low))
runs, every = {}, []
for path in glob.glob(out + "/w*-p*/metrics.jsonl"):
    folder = os.path.dirname(path)
    width, link, p, overlap, repeat = re.match(r"w(\d+)-(.+?)-p([0-9.]+)(?:-o(\w+)-r(\d+))?$",
                                               os.path.basename(folder)).groups()
    summary = [r for r in map(json.loads, open(path)) if r.get("event") == "summary"][-1]
    s = [st for st in summary["stages"] if "communication_s" in st][-1]
    steps = s["bytes_reduced"] // s["bytes_per_step"]
    ms = lambda v: 1000 * v / steps
    run = dict(
        step=ms(s["forward_s"] + s["backward_s"] + s["communication_s"] + s["update_s"]),
        comm=ms(s["communication_s"]), bytes=s["bytes_per_step"], steps=steps, backward=ms(s["backward_s"]),
        compute=ms(s["forward_s"] + s["backward_s"] + s["update_s"]), early=s.get("buckets_started_early", 0))
    if overlap in (None, "off") and repeat in (None, "1"):
        runs[(int(width), link, p)] = run
    if overlap:
        load = open(folder + "/uptime.txt").read().split("load average:")[-1].strip() \
            if os.path.exists(folder + "/uptime.txt") else "?"
        every.append((int(width), link != "unlimited", link, -float(p), overlap, int(repeat), run, load))
print("| model | link | steps | full-QAT step ms | EfQAT step ms | full comm ms/step | EfQAT comm ms/step "
      "| comm ratio | bytes/step full → EfQAT | bytes ratio | pure all-reduce ms, median (min), full → EfQAT | pure ratio |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for (width, link) in sorted({(w, l) for (w, l, _) in runs}, key=lambda k: (k[0], k[1] == "unlimited", k[1])):
    full, ef = runs.get((width, link, "1")), runs.get((width, link, "0.1"))
    if not full or not ef:
        continue
    pf, pe = pure.get((link, full["bytes"])), pure.get((link, ef["bytes"]))
    pure_cells = (f"{pf[0]:.1f} ({pf[1]:.1f}) → {pe[0]:.1f} ({pe[1]:.1f}) | {pe[0] / pf[0]:.2f}" if pf and pe else "– | –")
    model = "ResNet-20" if width == 1 else f"ResNet-20 ×{width}"
    print(f"| {model} | {link} | {full['steps']} | {full['step']:.0f} | {ef['step']:.0f} | {full['comm']:.1f} | "
          f"{ef['comm']:.1f} | {ef['comm'] / full['comm']:.2f} | {full['bytes'] / 2**20:.2f} → {ef['bytes'] / 2**20:.2f} MiB | "
          f"{ef['bytes'] / full['bytes']:.3f} | {pure_cells} |")
if len({(e[4], e[5]) for e in every}) > 1:
    with open(out + "/overlap.md", "w") as table:
        print("| model | link | p | overlap | repeat | steps | step ms | backward ms/step | comm ms/step "
              "| buckets started early/step | load before (1, 5, 15 min) |", file=table)
        print("|---|---|---|---|---|---|---|---|---|---|---|", file=table)
        for width, _, link, p, overlap, repeat, r, load in sorted(every, key=lambda e: e[:6]):
            model = "ResNet-20" if width == 1 else f"ResNet-20 ×{width}"
            print(f"| {model} | {link} | {-p:g} | {overlap} | {repeat} | {r['steps']} | {r['step']:.0f} | "
                  f"{r['backward']:.0f} | {r['comm']:.1f} | {r['early'] / r['steps']:.1f} | {load} |", file=table)
    print(open(out + "/overlap.md").read())
EOF
efqat_say "table: ${output#"$EFQAT_ROOT"/}/table.md; load: ${output#"$EFQAT_ROOT"/}/load.txt"
