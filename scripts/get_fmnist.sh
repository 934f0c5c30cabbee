#!/usr/bin/env bash
# Make Fashion-MNIST available offline: Debian's dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist).
# Skips when the files are there or $DIFFDISTILL_DATA holds them; without root/sudo it says what to run instead.
set -uo pipefail
dir=/usr/share/datasets/fashion-mnist
[ -f "$dir/t10k-images-idx3-ubyte.gz" ] && exit 0
[ -n "${DIFFDISTILL_DATA:-}" ] && [ -f "$DIFFDISTILL_DATA/fashion-mnist/t10k-images-idx3-ubyte.gz" ] && exit 0
if [ "$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else
    echo "note: Fashion-MNIST is not installed; run 'sudo apt-get install dataset-fashion-mnist' or put the files in" \
         "\$DIFFDISTILL_DATA/fashion-mnist (tests that need it are skipped)" >&2
    exit 0
fi
if command -v apt-get >/dev/null; then
    echo "installing the Debian package dataset-fashion-mnist (Fashion-MNIST, about 30 MB) with apt-get" >&2
    log=$(mktemp)
    # apt's progress and debconf's notes go to a log, shown only when the install fails
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq >"$log" 2>&1 \
        && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >>"$log" 2>&1 \
        || { cat "$log" >&2; echo "note: apt-get install dataset-fashion-mnist failed; tests that need it are skipped" >&2; }
    rm -f "$log"
else
    echo "note: no apt-get here; put the Fashion-MNIST .gz files in \$DIFFDISTILL_DATA/fashion-mnist" >&2
fi
exit 0
