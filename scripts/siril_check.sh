#!/usr/bin/env bash
# Open a skymosaic linear export in Siril (siril-cli) and print its statistics.
#
#   scripts/siril_check.sh OUT_DIR [NAME]
#
# OUT_DIR holds NAME_linear.fits (written with `skymosaic run ... --export siril`; NAME is
# output.name, default "mosaic"). Siril `load`s it and prints `stat` per layer (mean, median,
# sigma in 16-bit units; Siril skips the 0 = no-data pixels). Exit 2 without siril-cli
# (Debian: apt-get install siril), 1 when Siril fails or reports non-finite statistics.
set -euo pipefail
out=${1:?usage: $0 OUT_DIR [NAME]}
name=${2:-mosaic}
command -v siril-cli >/dev/null || { echo "siril-cli is not installed (apt-get install siril)" >&2; exit 2; }
[ -f "$out/${name}_linear.fits" ] || { echo "$out/${name}_linear.fits does not exist (run with --export siril)" >&2; exit 1; }
script=$(mktemp --suffix=.ssf)
trap 'rm -f "$script"' EXIT
printf 'requires 1.0.0\nload %s_linear.fits\nstat\n' "$name" > "$script"
log=$(siril-cli -d "$out" -s "$script" 2>&1)
echo "$log" | grep -E "Reading FITS|layer:|rror" || true
if ! echo "$log" | grep -q "layer: Mean"; then echo "Siril printed no statistics" >&2; exit 1; fi
if echo "$log" | grep -E "layer:" | grep -qi "nan"; then echo "non-finite statistics" >&2; exit 1; fi
