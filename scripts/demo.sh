#!/usr/bin/env bash
# The main job: install what is missing, build libhmm, run hmm-demo with the
# counters printed at exit.  Run from anywhere; extra arguments go to hmm-demo
# (for example: ./scripts/demo.sh --size 64).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

log=$(mktemp)
trap 'rm -f "$log"' EXIT

if [ ! -f build/build.ninja ]; then
	wipe=()
	[ -d build/meson-private ] && wipe=(--wipe)
	if ! meson setup "${wipe[@]}" build >"$log" 2>&1; then
		cat "$log" >&2
		echo "demo.sh: meson setup failed" >&2
		exit 1
	fi
fi
if ! ninja -C build >"$log" 2>&1; then
	cat "$log" >&2
	echo "demo.sh: build failed" >&2
	exit 1
fi

HMM_STATS=1 exec ./build/tools/hmm-demo "$@"
