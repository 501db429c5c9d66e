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

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    if command -v chromedriver >/dev/null 2>&1; then
        say "found $(command -v chromedriver) (not managed by apt); nothing to do"
        exit 0
    fi
    manual "apt-get not available on this system"
fi

missing=""
for pkg in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing="$missing $pkg"
done
if [ -z "$missing" ]; then
    say "already installed ($PACKAGES)"
    exit 0
fi

if [ "$(id -u)" = "0" ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    manual "not root and no password-less sudo: cannot install$missing"
fi

export DEBIAN_FRONTEND=noninteractive
install() {
    $SUDO apt-get install -y -q --no-install-recommends $missing
}
say "installing$missing"
if ! install; then
    say "apt-get install failed; refreshing the package lists and trying again"
    if ! $SUDO apt-get update -q || ! install; then
        manual "apt-get could not install$missing (offline, or another apt is running?)"
    fi
fi
say "installed: $(command -v chromium || echo '?') and $(command -v chromedriver || echo '?')"
