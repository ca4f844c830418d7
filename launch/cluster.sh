#!/usr/bin/env bash
# Runs efqat-train across several machines: with mpirun and a hostfile, or
# with srun inside a Slurm allocation (SLURM_JOB_ID set).
#
#   launch/cluster.sh --hostfile FILE -n RANKS [options] [efqat-train options...]
#   launch/cluster.sh [-n RANKS] [efqat-train options...]        (in a Slurm job)
#
#   --hostfile FILE     the machines and their slots (clusters/hostfile.example);
#                       without it mpirun uses the resource manager's
#                       allocation, or this machine
#   -n RANKS            number of ranks (under Slurm: default all the job's tasks)
#   --network NET       the network MPI uses, as a subnet (10.1.0.0/16) or an
#                       interface name (eth1): sets btl_tcp_if_include and
#                       oob_tcp_if_include; default: Open MPI chooses
#   --launch-agent CMD  what mpirun starts remote daemons with instead of ssh
#                       (plm_rsh_agent), e.g. clusters/netns/agent.sh
#   --launcher mpirun|srun  overrides the choice (srun when SLURM_JOB_ID is set)
#   --                  ends these options; the rest goes to efqat-train
#
# It runs the efqat-train that is already built ($EFQAT_BUILD_DIR/release, or
# EFQAT_TRAIN_BINARY); build it first (launch/run.sh or swift build -c
# release). Every machine must see the binary, the Swift runtime
# (/opt/swift) and the data at the same paths; --output should be on a file
# system every rank can read (see docs/distributed.md). Nothing is installed
# or built here: on a cluster that is the login node's business.
#
# Ranks run one OpenBLAS thread each and yield their core while waiting.
# mpirun prints the job map (which ranks run where) before the job starts.
#
# Environment: EFQAT_MPIRUN_ARGS (extra mpirun options), EFQAT_SRUN_MPI
# (pmix, pmi2, ...: srun's --mpi; default: pmix if available, else pmi2),
# EFQAT_SRUN_ARGS (extra srun options), EFQAT_PROGRESS, EFQAT_CACHE,
# EFQAT_BUILD_DIR, EFQAT_TRAIN_BINARY.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

needs_value() {
    [[ $2 -ge 2 ]] || { echo "error: $1 needs a value (see launch/cluster.sh --help)" >&2; exit 2; }
}

hostfile=""
ranks=""
network=""
agent=""
launcher=""
args=()
while (($# > 0)); do
    case "$1" in
        --hostfile) needs_value "$1" $#; hostfile="$2"; shift 2 ;;
        --hostfile=*) hostfile="${1#*=}"; shift ;;
        -n | --np) needs_value "$1" $#; ranks="$2"; shift 2 ;;
        -n=* | --np=*) ranks="${1#*=}"; shift ;;
        --network) needs_value "$1" $#; network="$2"; shift 2 ;;
        --network=*) network="${1#*=}"; shift ;;
        --launch-agent) needs_value "$1" $#; agent="$2"; shift 2 ;;
        --launch-agent=*) agent="${1#*=}"; shift ;;
        --launcher) needs_value "$1" $#; launcher="$2"; shift 2 ;;
        --launcher=*) launcher="${1#*=}"; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; args+=("$@"); break ;;
        *) args+=("$1"); shift ;;
    esac
done

if [[ -z "$launcher" ]]; then
    if [[ -n "${SLURM_JOB_ID:-}" ]]; then launcher=srun; else launcher=mpirun; fi
fi
if [[ -n "$ranks" ]] && ! [[ "$ranks" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: -n takes a positive number of ranks, got '$ranks'" >&2
    exit 2
fi
efqat_train_binary
efqat_progress_default

case "$launcher" in
    mpirun)
        [[ -n "$ranks" ]] || ranks="${SLURM_NTASKS:-}"
        [[ -n "$ranks" ]] || { echo "error: give the number of ranks with -n" >&2; exit 2; }
        flags=(--display-map)
        if [[ -n "$hostfile" ]]; then
            [[ -r "$hostfile" ]] || { echo "error: cannot read the hostfile $hostfile" >&2; exit 2; }
            flags+=(--hostfile "$hostfile")
        fi
        if [[ -n "$network" ]]; then
            flags+=(--mca btl_tcp_if_include "$network" --mca oob_tcp_if_include "$network")
        fi
        if [[ -n "$agent" ]]; then
            flags+=(--mca plm_rsh_agent "$agent")
        fi
        efqat_say "mpirun -n $ranks${hostfile:+ --hostfile $hostfile} efqat-train ${args[*]:-}"
        efqat_mpirun "$ranks" "${flags[@]}" "$EFQAT_TRAIN_BINARY" ${args[@]+"${args[@]}"}
        ;;
    srun)
        [[ -n "${SLURM_JOB_ID:-}" ]] || { echo "error: --launcher srun needs a Slurm allocation (salloc or sbatch)" >&2; exit 2; }
        [[ -z "$hostfile" ]] || { echo "error: under srun Slurm places the ranks: drop --hostfile (or use --launcher mpirun)" >&2; exit 2; }
        [[ -z "$agent" ]] || { echo "error: --launch-agent is an mpirun option" >&2; exit 2; }
        if [[ -n "$network" ]]; then
            # srun starts the ranks directly: MCA parameters travel as variables.
            export OMPI_MCA_btl_tcp_if_include="$network" OMPI_MCA_oob_tcp_if_include="$network"
        fi
        efqat_say "srun${ranks:+ -n $ranks} efqat-train ${args[*]:-} (job $SLURM_JOB_ID)"
        efqat_srun "$ranks" "$EFQAT_TRAIN_BINARY" ${args[@]+"${args[@]}"}
        ;;
    *)
        echo "error: --launcher is mpirun or srun, got '$launcher'" >&2
        exit 2
        ;;
esac
