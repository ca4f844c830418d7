#!/usr/bin/env bash
# Creates a set of N local "hosts" as network namespaces joined by a switch,
# for multi-host MPI runs on one machine. Needs root.
#
#   clusters/netns/up.sh N [--rate RATE] [--slots S] [--name NAME]
#
#   N            number of hosts, 1 to 8
#   --rate RATE  limit every host's link to RATE in each direction (tc htb on
#                both ends of its veth), e.g. 1gbit, 100mbit; default: no limit
#   --slots S    MPI slots per host in the hostfile (default 2)
#   --name NAME  the set's name (default efqat): hosts NAME-h0 … NAME-h<N-1>
#
# Host i is the namespace NAME-h<i> with eth0 at 10.213.0.<i+1>/24, a veth
# whose other end (p<i>) is a port of the bridge br0 in the namespace
# NAME-sw. The root namespace is not touched. The hostfile for mpirun is
# written to /run/efqat-netns/NAME/hostfile (its path is printed); mpirun
# reaches the hosts through clusters/netns/agent.sh. clusters/netns/down.sh
# removes everything; if this script fails half-way it cleans up itself.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

hosts=""
rate=""
slots=2
while (($# > 0)); do
    case "$1" in
        --rate) [[ $# -ge 2 ]] || { echo "error: --rate needs a value, e.g. 1gbit" >&2; exit 2; }; rate="$2"; shift 2 ;;
        --rate=*) rate="${1#*=}"; shift ;;
        --slots) [[ $# -ge 2 ]] || { echo "error: --slots needs a number" >&2; exit 2; }; slots="$2"; shift 2 ;;
        --slots=*) slots="${1#*=}"; shift ;;
        --name) [[ $# -ge 2 ]] || { echo "error: --name needs a value" >&2; exit 2; }; netns_set_name "$2"; shift 2 ;;
        --name=*) netns_set_name "${1#*=}"; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) [[ -z "$hosts" ]] || { echo "error: one number of hosts, got '$hosts' and '$1'" >&2; exit 2; }; hosts="$1"; shift ;;
    esac
done
[[ "$hosts" =~ ^[1-8]$ ]] || { echo "error: give the number of hosts, 1 to 8 (got '${hosts}')" >&2; exit 2; }
[[ "$slots" =~ ^[1-9][0-9]*$ ]] || { echo "error: --slots takes a positive number, got '$slots'" >&2; exit 2; }
if [[ -n "$rate" ]] && ! [[ "$rate" =~ ^[0-9]+(\.[0-9]+)?([kmgt]?(bit|bps))$ ]]; then
    echo "error: --rate takes a tc rate such as 1gbit or 100mbit, got '$rate'" >&2
    exit 2
fi
netns_require_root
if [[ -n "$rate" ]] && ! command -v tc >/dev/null 2>&1; then
    echo "error: --rate needs tc (Debian: apt-get install iproute2)" >&2
    exit 1
fi

mapfile -t existing < <(netns_existing)
if ((${#existing[@]} > 0)); then
    echo "error: the set '$NETNS_NAME' is already up (${existing[*]}); run clusters/netns/down.sh --name $NETNS_NAME first" >&2
    exit 1
fi

# From here on, a failure removes what was made.
trap 'status=$?; if ((status != 0)); then echo "up.sh failed; removing what it made" >&2; bash "$NETNS_DIR/down.sh" --name "$NETNS_NAME" >&2 || true; fi' EXIT

# limit DEVICE NAMESPACE: caps DEVICE's egress at $rate with one htb class
# (htb sizes its bursts itself and copes with the veth's large GSO packets;
# the quantum only matters between classes, and an explicit one keeps tc
# from warning that rate/r2q is large).
limit() {
    tc -n "$2" qdisc add dev "$1" root handle 1: htb default 1
    tc -n "$2" class add dev "$1" parent 1: classid 1:1 htb rate "$rate" ceil "$rate" quantum 65536
}

switch=$(netns_switch)
ip netns add "$switch"
ip -n "$switch" link set lo up
ip -n "$switch" link add br0 type bridge
ip -n "$switch" link set br0 up

state=$(netns_state_dir)
mkdir -p "$state"
hostfile="$state/hostfile"
hosts_lines="127.0.0.1 localhost"
for ((i = 0; i < hosts; i++)); do
    hosts_lines+=$'\n'"$(netns_address "$i") $(netns_host "$i")"
done

: >"$hostfile"
for ((i = 0; i < hosts; i++)); do
    host=$(netns_host "$i")
    ip netns add "$host"
    ip -n "$host" link set lo up
    ip -n "$host" link add eth0 type veth peer name "p$i" netns "$switch"
    ip -n "$host" addr add "$(netns_address "$i")/24" dev eth0
    ip -n "$host" link set eth0 up
    ip -n "$switch" link set "p$i" master br0 up
    if [[ -n "$rate" ]]; then
        limit eth0 "$host"        # what the host sends
        limit "p$i" "$switch"     # what the host receives
    fi
    # `ip netns exec` shows this file as /etc/hosts inside the host.
    mkdir -p "/etc/netns/$host"
    printf '%s\n' "$hosts_lines" >"/etc/netns/$host/hosts"
    echo "$host slots=$slots" >>"$hostfile"
done

# Both ends of every link must be up (bridge ports forward at once: no STP).
for ((i = 0; i < hosts; i++)); do
    state_of_link=$(ip -n "$(netns_host "$i")" -br link show eth0 | awk '{ print $2 }')
    [[ "$state_of_link" == UP ]] \
        || { echo "error: eth0 of $(netns_host "$i") is $state_of_link, not UP" >&2; exit 1; }
done

echo "==> $hosts host(s) up: $(netns_host 0)…$(netns_host $((hosts - 1))) on $NETNS_SUBNET${rate:+, links limited to $rate}" >&2
echo "$hostfile"
