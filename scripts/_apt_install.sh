# Shared by scripts/install_*.sh (sourced, not run): install the Debian packages $PACKAGES
# with apt-get unless they are installed, never failing the build.
#
# The caller defines: PACKAGES, say MESSAGE, manual REASON (explains and exits 0), and
# TOOL, a command that, when found outside apt, means there is nothing to do. On return
# the packages are installed (the caller prints what it got); every other outcome exits 0.

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    if command -v "$TOOL" >/dev/null 2>&1; then
        say "found $(command -v "$TOOL") (not managed by apt); nothing to do"
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
_apt_get_install() {
    $SUDO apt-get install -y -q --no-install-recommends $missing
}
say "installing$missing"
if ! _apt_get_install; then
    say "apt-get install failed; refreshing the package lists and trying again"
    if ! $SUDO apt-get update -q || ! _apt_get_install; then
        manual "apt-get could not install$missing (offline, or another apt is running?)"
    fi
fi
