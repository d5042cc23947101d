#!/bin/sh
# SPDX-License-Identifier: MIT
#
# hmm-run --options: every option with its value and source; a bad value
# is reported once and ignored.  Argument: hmm-run.
set -eu
run=$1
out=$(HMM_FAULT_AROUND=bogus HMM_SIM_ENGINES=4 HMM_TRACE=/tmp/t.json \
	"$run" --options 2>&1)
echo "$out"
n=$(echo "$out" | grep -c "ignoring HMM_FAULT_AROUND=bogus" || true)
[ "$n" = 1 ] || { echo "bad value reported $n times"; exit 1; }
echo "$out" | grep -Eq '^HMM_FAULT_AROUND +65536 +default' ||
	{ echo "bad value not ignored"; exit 1; }
echo "$out" | grep -Eq '^HMM_SIM_ENGINES +4 +environment' ||
	{ echo "environment value not shown"; exit 1; }
echo "$out" | grep -Eq '^HMM_TRACE +/tmp/t.json +environment' ||
	{ echo "HMM_TRACE not shown"; exit 1; }
for o in HMM_LOG_LEVEL HMM_STATS HMM_SIM_MEM_SIZE HMM_MIGRATE_TIMEOUT_MS \
	HMM_EVICT HMM_THRASH_COUNT HMM_THRASH_PIN_MS HMM_THRASH_THROTTLE_MS; do
	echo "$out" | grep -q "^$o " || { echo "$o missing"; exit 1; }
done
echo "options: ok"
