#!/usr/bin/env bash
# Headless Chromium for the browser test of `nlhf report`
# (packages/nlhf-core/tests/test_report_chromium.py): Debian's `chromium` package, installed
# with apt-get when it is missing and this runs as root (CI does); otherwise it says how.
# Never fails the install: the test itself fails under CI=true when Chromium is missing.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium: installing Debian's chromium (apt-get, non-interactive)" >&2
  export DEBIAN_FRONTEND=noninteractive
  if apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
    exit 0
  fi
  echo "install-chromium: apt-get install chromium failed; the browser test of nlhf report" \
    "cannot run until it is installed" >&2
else
  echo "install-chromium: chromium is not installed and this is not root with apt-get;" \
    "install it (Debian/Ubuntu: sudo apt-get install chromium) to run the browser test" \
    "of nlhf report (test_report_chromium.py, slow)" >&2
fi
exit 0
