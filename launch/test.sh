#!/usr/bin/env bash
# Runs every test: installs what is missing, fetches MNIST and Fashion-MNIST
# into the data cache, builds all products in release mode, then
# `swift test -c release`.
#
#   launch/test.sh [swift test options...]     e.g. --filter DistributedTests
#
# The DistributedTests start real mpirun jobs of the built efqat-train.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

started=$SECONDS
ensure_dependencies
# The data tests read the real files, and fail if they are missing.
bash "$EFQAT_ROOT/launch/setup-data.sh" mnist5k fashion-mnist >&2

efqat_say "building all products (release)"
efqat_build "$EFQAT_BUILD_DIR/launch-build.log" -c release

# The tests' own mpirun jobs set their flags; these keep any other MPI or
# BLAS use in the test process polite on a small machine.
export OMPI_MCA_mpi_yield_when_idle=1
export EFQAT_PROGRESS="${EFQAT_PROGRESS:-lines}"

# swift test compiles the modules again, with -enable-testing.
efqat_say "swift test -c release $*"
cd "$EFQAT_ROOT"
# The tests are XCTest cases; --disable-swift-testing skips the empty
# Swift Testing run, whose "0 tests" line would otherwise close the output.
log="$EFQAT_BUILD_DIR/launch-test.log"
status=0
swift test -c release --scratch-path "$EFQAT_BUILD_DIR" --disable-swift-testing "$@" 2>&1 | tee "$log" \
    || status=$?
efqat_say "launch/test.sh finished in $((SECONDS - started)) s (exit status $status)"
# One closing line with the totals of the whole XCTest run.
totals=$(grep -E "^[[:space:]]*Executed [0-9]+ tests?, with [0-9]+ failures?" "$log" | tail -n 1 || true)
if [[ -n "$totals" ]]; then
    executed=$(sed -E 's/.*Executed ([0-9]+) tests?.*/\1/' <<<"$totals")
    failed=$(sed -E 's/.*with ([0-9]+) failures?.*/\1/' <<<"$totals")
    echo "tests: $((executed - failed)) passed, $failed failed"
fi
exit "$status"
