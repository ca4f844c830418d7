# Shared settings of launch/run.sh, launch/test.sh and launch/cluster.sh.
# Source it from bash:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
#
# It defines:
#   EFQAT_ROOT            the repository root
#   efqat_say TEXT        a progress line ("==> TEXT") on stderr
#   EFQAT_CACHE           the data cache (exported): $EFQAT_CACHE if set, else
#                         efqat_default_cache
#   efqat_default_cache   prints the per-user cache folder,
#                         ${XDG_CACHE_HOME:-$HOME/.cache}/efqat-train, the rule
#                         efqat-train applies too (Sources/Data/DataCache.swift)
#   ensure_dependencies   installs what is missing (apt: Open MPI, OpenBLAS,
#                         zlib, pkg-config, as root iproute2; pip: safetensors,
#                         numpy), and nothing when everything is present
#   EFQAT_BUILD_DIR       SwiftPM's build folder (default <repo>/.build)
#   efqat_build LOG ARGS  `swift build ARGS` in the repository, quiet unless it fails
#   efqat_mpirun N CMD... runs CMD on N ranks with the flags this machine needs
#                         (mpirun options may come first in CMD)
#   efqat_srun N CMD...   the same with srun, inside a Slurm allocation
#   efqat_train_binary    sets EFQAT_TRAIN_BINARY to the built efqat-train,
#                         or fails with how to build it
#   efqat_progress_default  EFQAT_PROGRESS=bar on a terminal, else lines,
#                         unless it is set already
#
# Environment it reads: EFQAT_MPIRUN_ARGS (extra mpirun options, split on
# spaces), EFQAT_CACHE (data cache, default efqat_default_cache), EFQAT_BUILD_DIR,
# EFQAT_TRAIN_BINARY (an efqat-train to run instead of the built one),
# EFQAT_SRUN_MPI and EFQAT_SRUN_ARGS (see efqat_srun).

EFQAT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The per-user data cache, so that efqat-train finds its data from any
# folder. An empty variable counts as unset, and without HOME the account's
# home folder (from the password database) stands in, as in efqat-train.
efqat_default_cache() {
    local home="${HOME:-}"
    if [[ -z "$home" ]]; then
        home="$(getent passwd "$(id -u)" 2>/dev/null | cut -d: -f6 || true)"
    fi
    echo "${XDG_CACHE_HOME:-$home/.cache}/efqat-train"
}
EFQAT_CACHE="${EFQAT_CACHE:-$(efqat_default_cache)}"
# Absolute, so that every rank and script reads the same folder.
[[ "$EFQAT_CACHE" == /* ]] || EFQAT_CACHE="$PWD/$EFQAT_CACHE"
export EFQAT_CACHE
EFQAT_BUILD_DIR="${EFQAT_BUILD_DIR:-$EFQAT_ROOT/.build}"
[[ "$EFQAT_BUILD_DIR" == /* ]] || EFQAT_BUILD_DIR="$EFQAT_ROOT/$EFQAT_BUILD_DIR"

# The Swift toolchain of this image lives in /opt/swift.
if ! command -v swift >/dev/null 2>&1 && [[ -x /opt/swift/usr/bin/swift ]]; then
    export PATH="/opt/swift/usr/bin:$PATH"
fi

efqat_say() {
    echo "==> $*" >&2
}

# Runs "$@" as root: directly when we are root, else through sudo (which
# must not need a password: these scripts run unattended).
_efqat_as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        echo "error: '$*' needs root; run as root or install sudo" >&2
        return 1
    fi
}

_efqat_apt_updated=0
_efqat_apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [[ "$_efqat_apt_updated" -eq 0 ]]; then
        efqat_say "apt-get update"
        _efqat_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >/dev/null \
            || { echo "error: apt-get update failed" >&2; return 1; }
        _efqat_apt_updated=1
    fi
    efqat_say "apt-get install $*"
    _efqat_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" </dev/null >/dev/null \
        || { echo "error: apt-get install $* failed" >&2; return 1; }
}

ensure_dependencies() {
    if command -v dpkg >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
        local wanted=(libopenmpi-dev openmpi-bin libopenblas-dev zlib1g-dev pkg-config)
        if ! command -v python3 >/dev/null 2>&1; then wanted+=(python3); fi
        # ip and tc for the multi-host harness (clusters/netns), which only
        # root can use.
        if [[ "$(id -u)" -eq 0 ]]; then wanted+=(iproute2); fi
        local missing=() package
        for package in "${wanted[@]}"; do
            dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
        done
        if ((${#missing[@]} > 0)); then
            _efqat_apt_install "${missing[@]}" || return 1
        fi
        if ! python3 -m pip --version >/dev/null 2>&1; then
            _efqat_apt_install python3-pip || return 1
        fi
    else
        # Not Debian/Ubuntu: say what is missing instead of guessing a package manager.
        local tool
        for tool in mpirun pkg-config python3; do
            command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is missing; install Open MPI, OpenBLAS, zlib, pkg-config and python3" >&2; return 1; }
        done
        pkg-config --exists ompi openblas zlib 2>/dev/null \
            || { echo "error: pkg-config finds no ompi/openblas/zlib; install the Open MPI, OpenBLAS and zlib development packages" >&2; return 1; }
    fi
    if ! python3 -c 'import safetensors, numpy' >/dev/null 2>&1; then
        efqat_say "pip install safetensors numpy"
        # A distribution's own python3 refuses plain pip installs (PEP 668).
        python3 -m pip install -q safetensors numpy </dev/null \
            || python3 -m pip install -q --break-system-packages safetensors numpy </dev/null \
            || { echo "error: could not install Python's safetensors and numpy" >&2; return 1; }
    fi
    command -v swift >/dev/null 2>&1 \
        || { echo "error: swift is not on PATH (nor in /opt/swift/usr/bin); install Swift 6" >&2; return 1; }
}

# efqat_build LOG swift-build-arguments...: builds, writing the compiler's
# output to LOG; prints it only when the build fails.
efqat_build() {
    local log="$1"
    shift
    mkdir -p "$(dirname "$log")"
    local started=$SECONDS
    if (cd "$EFQAT_ROOT" && swift build --scratch-path "$EFQAT_BUILD_DIR" "$@") >"$log" 2>&1; then
        efqat_say "built in $((SECONDS - started)) s (log: ${log#"$EFQAT_ROOT"/})"
    else
        cat "$log" >&2
        echo "error: swift build $* failed (log: $log)" >&2
        return 1
    fi
}

# What every rank's environment must hold: one OpenBLAS thread, and ranks
# that yield their core while they wait in a collective.
EFQAT_RANK_ENV=(OPENBLAS_NUM_THREADS=1 OMPI_MCA_mpi_yield_when_idle=1)

# The mpirun flags for this kind of machine: as root Open MPI wants
# --allow-run-as-root; more ranks than cores need --oversubscribe; with
# several ranks per core, binding hurts, waiting ranks must yield their core
# and each rank runs one OpenBLAS thread.
efqat_mpirun_flags() {
    EFQAT_MPIRUN_FLAGS=(--oversubscribe --bind-to none)
    if [[ "$(id -u)" -eq 0 ]]; then EFQAT_MPIRUN_FLAGS+=(--allow-run-as-root); fi
    local variable
    for variable in "${EFQAT_RANK_ENV[@]}"; do EFQAT_MPIRUN_FLAGS+=(-x "$variable"); done
    EFQAT_MPIRUN_FLAGS+=(-x EFQAT_CACHE)
    if [[ -n "${EFQAT_PROGRESS:-}" ]]; then EFQAT_MPIRUN_FLAGS+=(-x EFQAT_PROGRESS); fi
    if [[ -n "${EFQAT_MPIRUN_ARGS:-}" ]]; then
        local extra
        read -r -a extra <<<"$EFQAT_MPIRUN_ARGS"
        EFQAT_MPIRUN_FLAGS+=("${extra[@]}")
    fi
}

# efqat_mpirun N command [arguments...]
efqat_mpirun() {
    local ranks="$1"
    shift
    efqat_mpirun_flags
    env "${EFQAT_RANK_ENV[@]}" mpirun -n "$ranks" "${EFQAT_MPIRUN_FLAGS[@]}" "$@"
}

# efqat_srun N command [arguments...]: the same inside a Slurm allocation,
# with srun starting the ranks (N empty: as many as the allocation has
# tasks). srun hands each rank the environment, so the ranks' variables are
# simply exported. The PMI plug-in that wires up Open MPI is
# EFQAT_SRUN_MPI if set, else pmix if this Slurm has it, else pmi2, else
# Slurm's default (MpiDefault). EFQAT_SRUN_ARGS adds srun options.
efqat_srun() {
    local ranks="$1"
    shift
    local mpi="${EFQAT_SRUN_MPI:-}"
    if [[ -z "$mpi" ]]; then
        local plugins
        plugins=$(srun --mpi=list 2>&1 || true)
        if grep -qw pmix <<<"$plugins"; then
            mpi=pmix
        elif grep -qw pmi2 <<<"$plugins"; then
            mpi=pmi2
        fi
    fi
    # A rank that fails ends the whole step, as MPI_Abort does under mpirun.
    local flags=(--kill-on-bad-exit=1)
    if [[ -n "$mpi" ]]; then flags+=("--mpi=$mpi"); fi
    if [[ -n "$ranks" ]]; then flags+=("--ntasks=$ranks"); fi
    if [[ -n "${EFQAT_SRUN_ARGS:-}" ]]; then
        local extra
        read -r -a extra <<<"$EFQAT_SRUN_ARGS"
        flags+=("${extra[@]}")
    fi
    env "${EFQAT_RANK_ENV[@]}" srun "${flags[@]}" "$@"
}

# Sets EFQAT_TRAIN_BINARY (if unset) to the release build's efqat-train and
# checks that it exists.
efqat_train_binary() {
    EFQAT_TRAIN_BINARY="${EFQAT_TRAIN_BINARY:-$EFQAT_BUILD_DIR/release/efqat-train}"
    if [[ ! -x "$EFQAT_TRAIN_BINARY" ]]; then
        echo "error: $EFQAT_TRAIN_BINARY is not built; run launch/run.sh once, or" \
            "swift build -c release --product efqat-train in $EFQAT_ROOT" >&2
        return 1
    fi
}

# Under mpirun every rank's stdout is a pseudo-terminal, so the trainer
# cannot tell by itself whether a person is watching: decide here.
efqat_progress_default() {
    if [[ -z "${EFQAT_PROGRESS:-}" ]]; then
        if [[ -t 1 ]]; then export EFQAT_PROGRESS=bar; else export EFQAT_PROGRESS=lines; fi
    fi
}
