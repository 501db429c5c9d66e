#!/usr/bin/env bash
# Install the peer tools the benchmarks compare skymosaic with: SWarp and Montage
# (benchmarks/bench_seams.py, bench_end_to_end.py; BENCHMARKS.md).
#
#   bash scripts/install_peers.sh           # what `make peers` (and `make bench`) runs
#   SKYMOSAIC_NO_PEERS=1 make bench         # skip the install (those rows are skipped)
#
# Debian packages swarp (SWarp 2.41) and montage (mProjExec, mBgModel, mAdd ...).
#
# Never fails the build: without apt-get, root or sudo, or network, it explains what to
# do and exits 0 (the benchmarks print "skipped" for the missing tools). A no-op when the
# packages are installed.
set -u

PACKAGES="${PEER_PACKAGES:-swarp montage}"

say() { echo "peers: $*"; }
manual() {
    say "$1"
    say "install them yourself to compare with SWarp and Montage, e.g. on Debian/Ubuntu:"
    say "  sudo apt-get install --no-install-recommends $PACKAGES"
    exit 0
}

if [ "${SKYMOSAIC_NO_PEERS:-0}" = "1" ]; then
    say "skipped (SKYMOSAIC_NO_PEERS=1)"
    exit 0
fi

TOOL=SWarp
# shellcheck source=scripts/_apt_install.sh
. "$(dirname "$0")/_apt_install.sh"
say "installed: $(command -v SWarp || echo '?') and $(command -v mBgModel || echo '?')"
