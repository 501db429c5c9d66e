#!/usr/bin/env bash
# Install headless Chromium and its WebDriver for the report's browser tests
# (tests/test_report_browser.py, driven by selenium; see docs/report.md).
#
#   bash scripts/install_browser.sh          # what `make browser` (and `make test`) runs
#   SKYMOSAIC_NO_BROWSER=1 make test         # skip the install (the browser tests skip)
#
# Debian packages chromium + chromium-driver (Debian 12: ~100 MB to download, ~350 MB
# installed with their libraries). Nothing is downloaded at test time: the tests drive the
# system browser with a fresh profile and no network.
#
# Never fails the build: without apt-get, root or sudo, or network, it explains what to
# do and exits 0 (the browser tests skip). A no-op when the packages are installed.
set -u

PACKAGES="${BROWSER_PACKAGES:-chromium chromium-driver}"

say() { echo "browser: $*"; }
manual() {
    say "$1"
    say "install it yourself to run the report's browser tests, e.g. on Debian/Ubuntu:"
    say "  sudo apt-get install --no-install-recommends $PACKAGES"
    say "(or point SKYMOSAIC_CHROMIUM / SKYMOSAIC_CHROMEDRIVER at a Chromium and its driver)"
    exit 0
}

if [ "${SKYMOSAIC_NO_BROWSER:-0}" = "1" ]; then
    say "skipped (SKYMOSAIC_NO_BROWSER=1)"
    exit 0
fi

TOOL=chromedriver
# shellcheck source=scripts/_apt_install.sh
. "$(dirname "$0")/_apt_install.sh"
say "installed: $(command -v chromium || echo '?') and $(command -v chromedriver || echo '?')"
