#!/usr/bin/env bash
# Install astrometry.net's solve-field and the Tycho-2 index files skymosaic needs to
# plate-solve frames that have no WCS (ZWO Seestar S50 subs, ...). See docs/astrometry.md.
#
#   bash scripts/install_solver.sh            # what `make solver` runs
#   SOLVER_PACKAGES="astrometry.net astrometry-data-tycho2-07-littleendian" bash scripts/install_solver.sh
#   SKYMOSAIC_NO_SOLVER=1 make test           # skip the install
#
# Default packages (Debian 12 sizes: download / installed):
#   astrometry.net                              1.1 MB / 7.9 MB  (+ ~19 MB of Debian deps:
#                                               python3-numpy, python3-astropy, libs)
#   astrometry-data-tycho2-08-littleendian     51   MB / 77  MB  quads 30'-42'
#   astrometry-data-tycho2-10-19-littleendian  22   MB / 37  MB  quads 60'-2000'
# In all ~92 MB to download, ~213 MB installed (45 packages on a Debian 12 image with python3).
#
# Why these: the Seestar S50 field is 43' x 76'. Index 08 (quads 30'-42', the densest
# that fits well) solves all 8 test frames in ~0.5 s each, even blind, and its solutions
# agree with the reference sidecars to 0.01-0.14 px over the whole frame. 10-19 adds wider
# fields (Seestar S30, Dwarf, camera lenses) for 22 MB and never wins over 08 on S50 frames.
# 09 (42'-60') is left out on purpose: when installed it solves the M94 frames first, with
# only 8-12 Tycho-2 stars in the field, and its SIP fit is off by 1.1-1.3 px at the
# corners. 07 (22'-30', 88 MB) is as accurate as 08 here; only fields narrower than
# ~0.5 deg need it (SOLVER_PACKAGES=... to add it).
#
# Never fails the build: without apt-get, root or sudo, or network, it explains what to
# do and exits 0 (the tests that need a solver skip). It is a no-op (well under a second)
# when the packages are already installed.
set -u

DEFAULT_PACKAGES="astrometry.net astrometry-data-tycho2-08-littleendian astrometry-data-tycho2-10-19-littleendian"
PACKAGES="${SOLVER_PACKAGES:-$DEFAULT_PACKAGES}"

say() { echo "solver: $*"; }
manual() {
    say "$1"
    say "install it yourself to plate-solve frames without WCS, e.g. on Debian/Ubuntu:"
    say "  sudo apt-get install --no-install-recommends $PACKAGES"
    say "or ASTAP with a star database (https://www.hnsky.org/astap.htm); see docs/astrometry.md"
    exit 0
}

if [ "${SKYMOSAIC_NO_SOLVER:-0}" = "1" ]; then
    say "skipped (SKYMOSAIC_NO_SOLVER=1)"
    exit 0
fi

TOOL=solve-field
# shellcheck source=scripts/_apt_install.sh
. "$(dirname "$0")/_apt_install.sh"
say "installed: $(command -v solve-field) with $(ls /usr/share/astrometry/index-*.fits 2>/dev/null | wc -l) index file(s)"
