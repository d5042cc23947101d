#!/usr/bin/env bash
# Install what libhmm needs to build and test, on Debian 12 (bookworm).
# Idempotent: installs only what is missing, and runs `apt-get update` only
# when something is. Run as root; unprivileged, it lists what to install and
# exits 1 if anything is missing.
set -euo pipefail

packages=(
	build-essential   # gcc, make, libc headers
	gcc
	meson
	ninja-build
	pkg-config
	libcriterion-dev  # the test suite
	liburcu-dev
	clang             # fuzz/ (libFuzzer)
	libclang-rt-14-dev # libFuzzer and sanitizer runtimes for clang
	util-linux        # setpriv
	groff-base        # doc/check-man.py renders the manual pages
	man-db            # ... with man --warnings too
)

missing=()
for p in "${packages[@]}"; do
	status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
	case "$status" in
	ii*) ;;
	*) missing+=("$p") ;;
	esac
done

if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "setup.sh: missing packages: ${missing[*]}" >&2
	echo "setup.sh: as root, run: apt-get update && apt-get install -y ${missing[*]}" >&2
	exit 1
fi

echo "setup.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
