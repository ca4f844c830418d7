# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this
# Shared settings of the network-namespace harness (up.sh, down.sh,
# agent.sh, run.sh). Source it from bash:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
#
# A "set" of hosts called NAME (default: efqat) is:
#   NAME-h0 … NAME-h<N-1>  one network namespace per host, with loopback and
#                          eth0 at 10.213.0.<i+1>/24; the namespace's name is
#                          also the host's name (in hostfiles, in its hostname
#                          and in /etc/netns/<host>/hosts, which `ip netns
#                          exec` shows as /etc/hosts inside every host);
#   NAME-sw                a namespace that holds the switch: a bridge br0
#                          with one veth port p<i> per host.
# Nothing is added to the root namespace, so the addresses cannot clash with
# the machine's own networks, and two sets (of different names) can be up at
# once. State (the hostfile) lives in /run/efqat-netns/NAME.
#
# It defines:
#   NETNS_DIR                this folder
#   NETNS_SUBNET             10.213.0.0/24, for btl/oob_tcp_if_include
#   netns_set_name NAME      checks NAME and sets NETNS_NAME
#   netns_host I             the name of host I (NAME-hI)
#   netns_switch             the switch namespace's name (NAME-sw)
#   netns_address I          host I's address (10.213.0.<I+1>)
#   netns_state_dir          /run/efqat-netns/NAME
#   netns_existing           the namespaces of the set that exist, one a line
#   netns_require_root       fails unless root, with ip, unshare and hostname
#   netns_in_host HOST       sets NETNS_IN_HOST to the command prefix that runs
#                            a command inside HOST (its network namespace and a
#                            UTS namespace whose hostname is HOST):
#                              netns_in_host efqat-h0 && "${NETNS_IN_HOST[@]}" hostname

NETNS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# ip and tc live in /usr/sbin, which a non-login shell's PATH may lack.
PATH="$PATH:/usr/sbin:/sbin"
NETNS_SUBNET="10.213.0.0/24"
NETNS_NAME="efqat"

netns_set_name() {
    if ! [[ "$1" =~ ^[a-z][a-z0-9-]{0,40}$ ]]; then
        echo "error: a set name is lower-case letters, digits and '-' (starting with a letter), got '$1'" >&2
        return 2
    fi
    NETNS_NAME="$1"
}

netns_host() { echo "$NETNS_NAME-h$1"; }
netns_switch() { echo "$NETNS_NAME-sw"; }
netns_address() { echo "10.213.0.$(($1 + 1))"; }
netns_state_dir() { echo "/run/efqat-netns/$NETNS_NAME"; }

netns_existing() {
    # `ip netns list` prints "name" or "name (id: N)".
    ip netns list 2>/dev/null | awk '{ print $1 }' \
        | grep -E "^${NETNS_NAME}-(h[0-9]+|sw)\$" || true
}

netns_require_root() {
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "error: the netns harness creates network namespaces and needs root" >&2
        return 1
    fi
    local tool
    for tool in ip unshare hostname; do
        command -v "$tool" >/dev/null 2>&1 \
            || { echo "error: $tool is missing (Debian: apt-get install iproute2 util-linux hostname)" >&2; return 1; }
    done
}

netns_in_host() {
    local host="$1"
    if [[ ! -e "/run/netns/$host" ]]; then
        echo "error: there is no host (network namespace) '$host'; is the harness up? (clusters/netns/up.sh)" >&2
        return 255
    fi
    # ip netns exec switches the network namespace (and shows
    # /etc/netns/HOST/hosts as /etc/hosts); unshare --uts gives the command a
    # hostname of its own, so that Open MPI's per-host files (session
    # folders, shared-memory segments, both named after the hostname) do not
    # collide between hosts that share one file system.
    # shellcheck disable=SC2016  # $0 and $@ are the inner shell's
    NETNS_IN_HOST=(ip netns exec "$host" unshare --uts -- /bin/sh -c 'hostname "$0" && exec "$@"' "$host")
}
