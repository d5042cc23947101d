#!/usr/bin/env bash
# Build libhmm and run its tests three times: a normal build (build/), one
# with AddressSanitizer and UndefinedBehaviorSanitizer (build-asan/), and one
# with ThreadSanitizer (build-tsan/), where only the plain test programs run
# (Criterion cannot start under TSan); then fuzzes briefly (fuzz/run.sh,
# build-fuzz/ with clang).  Exits non-zero if anything failed; the last line
# is "N passed, M failed, K skipped" summed over all of it.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

./scripts/setup.sh || exit 1

passed=0
failed=0
skipped=0

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# configure DIR [meson options...]: set DIR up unless it is configured already.
configure() {
	local dir=$1
	shift
	if [ -f "$dir/build.ninja" ]; then
		[ $# -eq 0 ] || meson configure "$dir" "$@" >"$log" 2>&1 || return 1
		return 0
	fi
	local wipe=()
	[ -d "$dir/meson-private" ] && wipe=(--wipe)
	meson setup "${wipe[@]}" "$dir" "$@" >"$log" 2>&1
}

# run_suite NAME DIR [meson test options...]: build DIR, run its tests and add
# the counts of meson test's summary to the totals.
run_suite() {
	local name=$1 dir=$2
	shift 2
	echo "== $name ($dir)"
	if ! ninja -C "$dir" >"$log" 2>&1; then
		cat "$log"
		echo "test.sh: $name: build failed"
		failed=$((failed + 1))
		return
	fi
	local rc=0
	meson test -C "$dir" --print-errorlogs "$@" 2>&1 | tee "$log" || rc=$?
	# meson test ends with a summary, one "Label: count" a line; take the
	# last value of each label (test output above it cannot shadow it).
	local counts
	counts=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | awk '
		/^Ok:/              { ok = $2 }
		/^Expected Fail:/   { xfail = $3 }
		/^Fail:/            { fail = $2 }
		/^Unexpected Pass:/ { xpass = $3 }
		/^Skipped:/         { skip = $2 }
		/^Timeout:/         { tmo = $2 }
		END { printf "%d %d %d\n", ok + xfail, fail + xpass + tmo, skip }')
	local p f s
	read -r p f s <<<"$counts"
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		echo "test.sh: $name: meson test exited with status $rc"
		f=1
	fi
	passed=$((passed + p))
	failed=$((failed + f))
	skipped=$((skipped + s))
}

# tsan_retry DIR: a test that failed on an assertion of ThreadSanitizer's
# own runtime ("ThreadSanitizer: CHECK failed", not a report about the
# program: gcc 12's runtime has one in tsan_clock.cpp that a stress run
# hit once) runs once more, and counts as passed if it passes then.  A
# race report or any other failure is never retried.
tsan_retry() {
	local dir=$1 name
	python3 - "$dir/meson-logs/testlog.json" >"$log.retry" <<'EOF' || return
import json, sys
for line in open(sys.argv[1]):
    t = json.loads(line)
    out = (t.get('stdout') or '') + (t.get('stderr') or '')
    if t.get('result') in ('FAIL', 'TIMEOUT') and \
       'ThreadSanitizer: CHECK failed' in out and \
       'WARNING: ThreadSanitizer' not in out:
        print(t['name'].split(' / ', 1)[-1])
EOF
	while IFS= read -r name; do
		echo "test.sh: $name failed on an internal check of ThreadSanitizer's runtime; once more"
		if meson test -C "$dir" --no-rebuild --print-errorlogs \
			--timeout-multiplier 3 "$name"; then
			failed=$((failed - 1))
			passed=$((passed + 1))
		fi
	done <"$log.retry"
	rm -f "$log.retry"
}

if configure build; then
	run_suite "tests" build
else
	cat "$log"
	echo "test.sh: meson setup build failed"
	failed=$((failed + 1))
fi

# Leak detection stays off for now: libhmm keeps process-lifetime state.
# Sanitized code is slower, hence the longer timeouts.
export ASAN_OPTIONS=detect_leaks=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
if configure build-asan -Db_sanitize=address,undefined -Db_lundef=false; then
	run_suite "tests under ASan+UBSan" build-asan --timeout-multiplier 3
else
	cat "$log"
	echo "test.sh: meson setup build-asan failed"
	failed=$((failed + 1))
fi

unset ASAN_OPTIONS UBSAN_OPTIONS
# halt_on_error: a data race fails the program that has it.  symbolize=0:
# TSan's symbolizer unmaps memory while it holds its report lock, and the
# munmap it calls is libhmm's wrapper, instrumented code that can hang it
# there; reports give module+offset instead (decode with addr2line -f -i
# -e build-tsan/libhmm.so.0 OFFSET).  die_after_fork=0: libhmm's forked
# children start threads.
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:die_after_fork=0:symbolize=0
if configure build-tsan -Db_sanitize=thread -Db_lundef=false; then
	run_suite "plain tests and hmm-stress under TSan" build-tsan \
		--suite plain --suite stress --timeout-multiplier 3
	tsan_retry build-tsan
else
	cat "$log"
	echo "test.sh: meson setup build-tsan failed"
	failed=$((failed + 1))
fi

# Fuzzing, briefly: the regression inputs of fuzz/regressions/ replayed,
# then each harness for 20 s (fuzz/run.sh; clang, ASan+UBSan).  One
# result per harness.
unset TSAN_OPTIONS
echo "== fuzzing (build-fuzz)"
fuzz_out=$(./fuzz/run.sh 20 2>&1)
fuzz_rc=$?
printf '%s\n' "$fuzz_out" | grep -E '^fuzz_|^    ' || printf '%s\n' "$fuzz_out" | tail -20
for h in fuzz_dmirror fuzz_api; do
	if printf '%s\n' "$fuzz_out" | grep -q "^$h: .* 0 crashes" &&
	   printf '%s\n' "$fuzz_out" | grep -q "^$h: .* 0 failed"; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
	fi
done
[ $fuzz_rc -eq 0 ] || echo "test.sh: fuzz/run.sh exited with status $fuzz_rc"

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
