#!/usr/bin/env bash
# A headless browser for the demo's screenshot test (tests/test_demo.py, slow tier) and demos/screenshot.py:
# Debian's chromium package. Skips when one is found; never fails (without it that one test is skipped and says why).
set -uo pipefail
for name in chromium chromium-browser google-chrome; do command -v "$name" >/dev/null && exit 0; done
if [ "$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else
    echo "note: no Chromium; run 'sudo apt-get install chromium' for the demo screenshot test (skipped meanwhile)" >&2
    exit 0
fi
if command -v apt-get >/dev/null; then
    echo "installing the Debian package chromium (headless browser for the demo screenshot test) with apt-get" >&2
    log=$(mktemp)
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq >"$log" 2>&1 \
        && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >>"$log" 2>&1 \
        || { tail -20 "$log" >&2; echo "note: apt-get install chromium failed; the screenshot test is skipped" >&2; }
    rm -f "$log"
else
    echo "note: no apt-get here; install Chromium by hand for the demo screenshot test" >&2
fi
exit 0
