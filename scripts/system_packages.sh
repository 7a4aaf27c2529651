#!/usr/bin/env bash
# The Debian packages the tests need beside Python: Chromium and its driver (the web app's browser
# tests, driven by Playwright; no browser is downloaded), npm (fetches axe-core once for the
# accessibility checks) and poppler-utils (pdftotext/pdftoppm read the evidence PDF).
# Installs what is missing (as root, or with sudo); says what to install when it cannot.
set -euo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v npm >/dev/null || missing+=(npm)
command -v pdftotext >/dev/null || missing+=(poppler-utils)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
  echo "the tests need these Debian packages: ${missing[*]} (apt-get install them as root)" >&2
  exit 1
fi
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${missing[@]}"
