#!/usr/bin/env bash
# Run on the build machine (it reaches Debian's registry), before a GPU
# session: downloads the Debian packages that libhmm builds with and that
# the lent GPU machines' image lacks (liburcu-bp, and pkg-config to find
# it) into .gpu-deps/, which git ignores.  Name .gpu-deps in the device
# tool's carry; scripts/gpu-check.sh unpacks them there (never into /).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu-deps
cd .gpu-deps
apt-get download liburcu-dev liburcu8 pkgconf pkgconf-bin libpkgconf3
ls -l
