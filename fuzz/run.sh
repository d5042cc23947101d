#!/bin/sh
# SPDX-License-Identifier: MIT
#
# fuzz/run.sh [SECONDS]: build the libFuzzer harnesses (build-fuzz/, clang,
# ASan+UBSan) if needed, replay every reproducer of fuzz/regressions/, then
# run each harness for SECONDS (default 30) over a temporary copy of its
# in-tree corpus (the in-tree corpus is never grown).  Prints each
# harness's executions and crashes; exits non-zero on any crash.
#
# A crash found is written to build-fuzz/fuzz-artifacts/<harness>/: to keep
# it as a regression test, copy it to fuzz/regressions/<harness>/.
#
# HMM_FUZZ_KNOWN=1 lets the harnesses pass the known libhmm bugs named in
# them (their reproducers then pass too), to fuzz past them.
set -u
secs=${1:-30}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top" || exit 1

if [ ! -f build-fuzz/build.ninja ]; then
	CC=clang meson setup build-fuzz -Dfuzz=true \
		-Db_sanitize=address,undefined -Db_lundef=false || exit 1
fi
ninja -C build-fuzz fuzz/fuzz_dmirror fuzz/fuzz_api || exit 1

# libhmm keeps process-lifetime state (closed device handles): no leak
# checks, as in scripts/test.sh.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
flags="-timeout=10 -rss_limit_mb=4096 -detect_leaks=0"
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

for h in fuzz_dmirror fuzz_api; do
	bin=build-fuzz/fuzz/$h
	corpus=fuzz/corpus/${h#fuzz_}
	art=build-fuzz/fuzz-artifacts/$h
	mkdir -p "$art"

	# Regressions first, one process each, so that one failure does not
	# hide the next.
	nreg=0 nregfail=0
	for f in fuzz/regressions/$h/*; do
		[ -f "$f" ] || continue
		nreg=$((nreg + 1))
		if ! "$bin" $flags "$f" >"$tmp/reg.log" 2>&1; then
			nregfail=$((nregfail + 1))
			echo "$h: regression $f FAILS:"
			grep -m1 -E "FUZZ INVARIANT|ERROR: " "$tmp/reg.log" | sed 's/^/    /'
		fi
	done
	echo "$h: $nreg regression inputs replayed, $nregfail failed"
	[ "$nregfail" -eq 0 ] || fail=1

	mkdir -p "$tmp/$h"
	cp "$corpus"/* "$tmp/$h/" 2>/dev/null
	before=$(ls "$art" | wc -l)
	"$bin" $flags -max_total_time="$secs" -print_final_stats=1 \
		-artifact_prefix="$art/" "$tmp/$h" >"$tmp/$h.log" 2>&1
	rc=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$tmp/$h.log" | tail -n 1)
	crashes=$(( $(ls "$art" | wc -l) - before ))
	[ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ] && crashes=1
	echo "$h: ${execs:-0} executions in ${secs}s, $crashes crashes"
	if [ "$rc" -ne 0 ]; then
		fail=1
		grep -m1 -E "FUZZ INVARIANT|ERROR: " "$tmp/$h.log" | sed 's/^/    /'
		tail -n 40 "$tmp/$h.log" > "$art/last-crash.log"
		echo "    log: $art/last-crash.log, input: $(ls -t "$art" | grep -v log | head -n1)"
	fi
done
exit $fail
