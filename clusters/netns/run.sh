#!/usr/bin/env bash
# Runs efqat-train across local "hosts" (network namespaces): brings a set
# of hosts up, runs launch/cluster.sh from the first host with mpirun
# reaching the others through clusters/netns/agent.sh, and takes the hosts
# down again however the run ends. Needs root and a built efqat-train.
#
#   clusters/netns/run.sh [--hosts H] [--rate RATE] [--name NAME] -n RANKS [efqat-train options...]
#
#   --hosts H     number of hosts, 1 to 8 (default 2)
#   --rate RATE   limit each host's link, e.g. 1gbit (see up.sh)
#   --name NAME   the set's name (default efqat; a set of that name must not be up)
#   -n RANKS      number of ranks, spread evenly: ceil(RANKS / H) slots per
#                 host, filled in host order (ranks 0,1 on h0, 2,3 on h1, ...)
#
# Example: 2 hosts x 2 ranks, links at 1 Gbit/s:
#   clusters/netns/run.sh --hosts 2 --rate 1gbit -n 4 --fp32-epochs 1 --qat-epochs 1 --output runs/netns
#
# MPI runs over TCP on 10.213.0.0/24 between hosts and over shared memory
# (vader) between the ranks of one host, as on real machines. Options of
# launch/cluster.sh (--network, --launch-agent, --hostfile) are set here.
# Environment: EFQAT_MPIRUN_ARGS (more mpirun options), EFQAT_TRAIN_BINARY,
# EFQAT_BUILD_DIR, EFQAT_PROGRESS, EFQAT_CACHE.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"

hosts=2
rate=""
ranks=""
args=()
while (($# > 0)); do
    case "$1" in
        --hosts) [[ $# -ge 2 ]] || { echo "error: --hosts needs a number" >&2; exit 2; }; hosts="$2"; shift 2 ;;
        --hosts=*) hosts="${1#*=}"; shift ;;
        --rate) [[ $# -ge 2 ]] || { echo "error: --rate needs a value" >&2; exit 2; }; rate="$2"; shift 2 ;;
        --rate=*) rate="${1#*=}"; shift ;;
        --name) [[ $# -ge 2 ]] || { echo "error: --name needs a value" >&2; exit 2; }; netns_set_name "$2"; shift 2 ;;
        --name=*) netns_set_name "${1#*=}"; shift ;;
        -n | --np) [[ $# -ge 2 ]] || { echo "error: -n needs a number" >&2; exit 2; }; ranks="$2"; shift 2 ;;
        -n=* | --np=*) ranks="${1#*=}"; shift ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) args+=("$1"); shift ;;
    esac
done
[[ "$hosts" =~ ^[1-8]$ ]] || { echo "error: --hosts takes 1 to 8, got '$hosts'" >&2; exit 2; }
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || { echo "error: give the number of ranks with -n" >&2; exit 2; }
netns_require_root

# Down however this ends: success, failure, Ctrl-C or a TERM from a test's timeout.
trap 'bash "$here/down.sh" --name "$NETNS_NAME" || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

up=(--name "$NETNS_NAME" --slots $(((ranks + hosts - 1) / hosts)))
if [[ -n "$rate" ]]; then up+=(--rate "$rate"); fi
hostfile=$(bash "$here/up.sh" "$hosts" "${up[@]}")

# Shared memory within a host, TCP between hosts; nothing else (no
# InfiniBand/libfabric probing on a machine that has none).
export EFQAT_MPIRUN_ARGS="--mca pml ob1 --mca btl tcp,vader,self${EFQAT_MPIRUN_ARGS:+ $EFQAT_MPIRUN_ARGS}"

# mpirun runs inside host 0, like on a cluster's first node.
netns_in_host "$(netns_host 0)"
status=0
"${NETNS_IN_HOST[@]}" bash "$here/../../launch/cluster.sh" --hostfile "$hostfile" \
    --network "$NETNS_SUBNET" --launch-agent "$here/agent.sh" -n "$ranks" -- ${args[@]+"${args[@]}"} \
    || status=$?

# What crossed the links (MPI's TCP traffic between hosts, and its wire-up).
for ((i = 0; i < hosts; i++)); do
    host=$(netns_host "$i")
    ip netns exec "$host" cat /sys/class/net/eth0/statistics/tx_bytes /sys/class/net/eth0/statistics/rx_bytes \
        | awk -v host="$host" '{ b[NR] = $1 } END { printf "==> %s link: sent %.1f MiB, received %.1f MiB\n", host, b[1] / 1048576, b[2] / 1048576 }' >&2
done
exit "$status"
