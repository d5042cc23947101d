#!/usr/bin/env bash
# gpu-check.sh: everything libhmm's cuda driver needs a GPU for, in one run,
# for a lent GPU machine (H100/H200, no network: nothing is installed).
#
#   OUT=/some/dir ./scripts/gpu-check.sh      (OUT defaults to ./gpu-out)
#
# Configures a fresh build with -Dcuda=enabled (build-gpu/), builds the GPU
# test and hmm-bench, and
# runs: nvidia-smi -L; the GPU tests (meson suite "cuda": tests/cuda/
# test_cuda); hmm-bench --json with the GPU scenarios and with the CPU
# ones.  Every step has a timeout and writes its log under $OUT; the whole
# stays under 8 minutes.  Exit status: 0 when every step passed, else the
# number of steps that failed.  $OUT/summary.txt has one line a step.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

OUT=${OUT:-./gpu-out}
mkdir -p "$OUT" || exit 1
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
BUILD=build-gpu
JOBS=$(nproc 2>/dev/null || echo 4)
failed=0
: >"$OUT/summary.txt"

# step NAME SECONDS COMMAND...: run it with a timeout, log to $OUT/NAME.log
# Steps never run past DEADLINE seconds from the start (8 minutes, less
# a margin): a step gets what is left if that is less than its own limit.
DEADLINE=460
step() {
	local name=$1 secs=$2
	shift 2
	local t0=$SECONDS rc=0 left=$((DEADLINE - SECONDS))
	if [ "$left" -lt 5 ]; then
		printf '%-16s %-22s\n' "$name" "SKIPPED (out of time)" |
			tee -a "$OUT/summary.txt"
		failed=$((failed + 1))
		return 1
	fi
	[ "$secs" -gt "$left" ] && secs=$left
	timeout --kill-after=5 "$secs" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
	local what=ok
	if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
		what="TIMEOUT after ${secs}s"
	elif [ $rc -ne 0 ]; then
		what="FAILED (exit $rc)"
	fi
	[ "$what" = ok ] || failed=$((failed + 1))
	printf '%-16s %-22s %4ds\n' "$name" "$what" $((SECONDS - t0)) |
		tee -a "$OUT/summary.txt"
	return $rc
}

# The GPU image has nvcc, meson and ninja but not Debian's liburcu-bp nor
# Criterion: packages fetched by scripts/gpu-deps.sh on the build machine
# and carried in .gpu-deps/ are unpacked there (not into /), and found
# through their own pkg-config.
if ! pkg-config --exists liburcu-bp 2>/dev/null &&
	ls .gpu-deps/*.deb >/dev/null 2>&1; then
	root=$PWD/.gpu-deps/root
	ml=usr/lib/x86_64-linux-gnu
	for f in .gpu-deps/*.deb; do dpkg -x "$f" "$root" || exit 1; done
	export PATH="$root/usr/bin:$PATH"
	export LD_LIBRARY_PATH="$root/$ml${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
	export PKG_CONFIG_LIBDIR="$root/$ml/pkgconfig:$root/usr/share/pkgconfig"
	export PKG_CONFIG_SYSROOT_DIR="$root"
fi
# Without Criterion only the plain and cuda tests are built (all that
# this script runs).
criterion=enabled
pkg-config --exists criterion 2>/dev/null || criterion=disabled

missing=()
for p in meson ninja nvcc pkg-config; do
	command -v "$p" >/dev/null || missing+=("$p")
done
pkg-config --exists liburcu-bp 2>/dev/null || missing+=(liburcu-bp)
if [ ${#missing[@]} -ne 0 ]; then
	echo "gpu-check: missing here: ${missing[*]} (no network: run" \
	     "scripts/gpu-deps.sh on the build machine and carry .gpu-deps)" |
		tee "$OUT/summary.txt"
	exit 1
fi

{
	date -u
	uname -a
	nvcc --version | tail -2
	git log --oneline -1 2>/dev/null
} >"$OUT/env.txt" 2>&1

step nvidia-smi 15 nvidia-smi -L
step nvidia-smi-q 15 nvidia-smi -q -d MEMORY,CLOCK,PCIE
rm -rf "$BUILD"
step setup 45 meson setup "$BUILD" -Dcuda=enabled -Dtests=true \
	-Dcriterion=$criterion || {
	echo "gpu-check: meson setup failed; see $OUT/setup.log"; exit 1; }
# Only what the steps below run: the GPU tests and hmm-bench.
step build 150 ninja -C "$BUILD" -j "$JOBS" tests/test_cuda bench/hmm-bench || {
	echo "gpu-check: build failed; see $OUT/build.log"; exit 1; }
# The GPU tests, each case in its own process, verbose.
step test-cuda 90 meson test -C "$BUILD" --suite cuda --print-errorlogs \
	--no-rebuild -v
cp "$BUILD/meson-logs/testlog.txt" "$OUT/testlog-cuda.txt" 2>/dev/null
# The GPU scenarios (1 GiB, 3 repeats), then the CPU ones that compare
# with them (smaller, to stay in time).
step bench-gpu 100 "$BUILD/bench/hmm-bench" --json --size 1024 --repeat 3 \
	gpu_cpu_faultback gpu_prefetch_to_device gpu_kernel_read_mirrored
step bench-cpu 50 "$BUILD/bench/hmm-bench" --json --size 256 --repeat 3 \
	migrate cpu_faultback_4k cpu_faultback_bulk device_stream_read \
	range_fault_1g
cp "$OUT/bench-gpu.log" "$OUT/bench-gpu.json" 2>/dev/null
cp "$OUT/bench-cpu.log" "$OUT/bench-cpu.json" 2>/dev/null
echo "gpu-check: $failed step(s) failed; logs in $OUT" |
	tee -a "$OUT/summary.txt"
exit "$failed"
