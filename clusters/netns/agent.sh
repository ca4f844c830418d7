#!/usr/bin/env bash
# Open MPI's launch agent for the netns hosts: what ssh is between real
# machines. mpirun (and, for tree spawning, each orted) calls it as
#
#   clusters/netns/agent.sh HOST COMMAND-WORDS...
#
# to start an orted on HOST. Give it to mpirun with
#   --mca plm_rsh_agent <repo>/clusters/netns/agent.sh
# (launch/cluster.sh --launch-agent does that). HOST is a host of a set made
# by clusters/netns/up.sh (a namespace name such as efqat-h1).
#
# Like ssh, it joins the command words with spaces and lets a shell on the
# host run them: Open MPI quotes its arguments for that shell. Unlike ssh,
# the command keeps this process's environment (PATH, OMPI_* and the
# variables mpirun forwards), and the file system is the same everywhere.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if (($# < 2)); then
    echo "usage: agent.sh HOST COMMAND... (Open MPI's plm_rsh_agent)" >&2
    exit 255
fi
host="$1"
shift
# Exit status 255, like ssh, when the host does not exist.
netns_in_host "$host" || exit 255
exec "${NETNS_IN_HOST[@]}" /bin/sh -c "$*"
