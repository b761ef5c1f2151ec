#!/usr/bin/env bash
# Installs everything gridwatch needs on a fresh Debian machine (idempotent).
#   scripts/install.sh          base: serving + detector, no torch
#   scripts/install.sh test     + training extra (torch, ultralytics), cluster extra (Ray), test tools,
#                               PostgreSQL, GStreamer RTSP,
#                               Debian's chromium for the review page's browser tests,
#                               openssl for the evidence bundle and local time-stamping authority tests
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-base}

debs=(ffmpeg fonts-noto-cjk libjemalloc2)  # jemalloc: gridwatch serve's allocator (a flat footprint over months)
if [ "$mode" = test ]; then
  debs+=(chromium openssl postgresql gstreamer1.0-tools gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi
         gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
         gstreamer1.0-plugins-ugly gstreamer1.0-libav)
fi
missing=()
for d in "${debs[@]}"; do dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
# Playwright drives Debian's chromium (launched with executable_path=/usr/bin/chromium):
# it must never fetch a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
# Everything comes from the lock file (exact versions, hashes, no resolution at install time;
# torch's pinned build is found where pip is configured to look): a fresh machine gets what
# the tests last passed with. `python scripts/lock.py write` refreshes it.
lock=requirements/test.lock.txt
[ "$mode" = test ] || lock=requirements/base.lock.txt
python3 scripts/lock.py check
python -m pip install -q --no-deps --require-hashes -r "$lock"
# The project itself, built with the locked setuptools rather than a freshly fetched one.
PYTHONWARNINGS=ignore pip install -q --no-deps --no-build-isolation -e .
