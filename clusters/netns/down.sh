#!/usr/bin/env bash
# Removes a set of hosts made by clusters/netns/up.sh: ends the processes
# still running inside its namespaces, deletes the namespaces (which takes
# their veths, the bridge and the tc limits with them), their
# /etc/netns/<host> folders and /run/efqat-netns/NAME. Needs root.
#
#   clusters/netns/down.sh [--name NAME]     (default name: efqat)
#
# Safe to run at any time: after a clean run, after a crash that left part
# of a set behind, or when nothing is up (it then does nothing).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

while (($# > 0)); do
    case "$1" in
        --name) [[ $# -ge 2 ]] || { echo "error: --name needs a value" >&2; exit 2; }; netns_set_name "$2"; shift 2 ;;
        --name=*) netns_set_name "${1#*=}"; shift ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
netns_require_root

mapfile -t namespaces < <(netns_existing)

# Processes left inside the hosts (orted, ranks of a job that was killed):
# TERM, then KILL what is still there after a few seconds. A namespace with
# live processes would outlive `ip netns del`, invisible but holding its links.
pids_inside() {
    local ns
    for ns in ${namespaces[@]+"${namespaces[@]}"}; do ip netns pids "$ns" 2>/dev/null || true; done
}
mapfile -t pids < <(pids_inside)
if ((${#pids[@]} > 0)); then
    echo "==> ending ${#pids[@]} process(es) left in the set '$NETNS_NAME'" >&2
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        mapfile -t pids < <(pids_inside)
        ((${#pids[@]} == 0)) && break
        sleep 0.5
    done
    if ((${#pids[@]} > 0)); then kill -KILL "${pids[@]}" 2>/dev/null || true; fi
fi

for ns in ${namespaces[@]+"${namespaces[@]}"}; do
    ip netns del "$ns"
done

# The hosts' /etc/netns folders, also of hosts whose namespace is already gone.
for folder in /etc/netns/"$NETNS_NAME"-h*; do
    if [[ -d "$folder" && "$(basename "$folder")" =~ ^${NETNS_NAME}-h[0-9]+$ ]]; then rm -rf -- "$folder"; fi
done
rmdir /etc/netns 2>/dev/null || true
rm -rf -- "$(netns_state_dir)"
rmdir /run/efqat-netns 2>/dev/null || true

if ((${#namespaces[@]} > 0)); then
    echo "==> set '$NETNS_NAME' removed (${namespaces[*]})" >&2
fi
