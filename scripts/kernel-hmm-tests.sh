#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Build the kernel's own HMM selftest (tools/testing/selftests/mm/hmm-tests.c)
# from a Linux source tree and run it under build/hmm-run, which stands in for
# the test_hmm module's /dev/hmm_dmirror0..3.
#
# usage: scripts/kernel-hmm-tests.sh [--build-only] KERNEL_TREE [OUTDIR] [-- HARNESS_ARGS...]
#        (--build-only may also come after KERNEL_TREE or OUTDIR)
#
#   KERNEL_TREE   a Linux source tree; only the files hmm-tests needs are read:
#                 the selftest and the helpers its Makefile links in,
#                 tools/testing/selftests/kselftest{,_harness}.h,
#                 lib/test_hmm_uapi.h and mm/gup_test.h
#   OUTDIR        where hmm-tests is built (default: build/kernel-selftests)
#   --build-only  build, do not run
#   HARNESS_ARGS  go to hmm-tests: -l lists the tests, -r FIXTURE.VARIANT.TEST
#                 runs one, -t TEST / -v VARIANT / -f FIXTURE select, -T / -V /
#                 -F exclude
#
# It prints the TAP output as it comes, then every test with its result and
# time, the messages of the failed ones, and "N passed, M failed, K skipped".
# It exits with hmm-tests' status.  OUTDIR/hmm-tests.log keeps the output, each
# line prefixed with the time it arrived.  Nothing of the kernel tree is copied.
set -euo pipefail

die() { echo "kernel-hmm-tests.sh: $*" >&2; exit 2; }

build_only=0
args=()
while [[ $# -gt 0 && $1 != -- ]]; do
	case $1 in
	--build-only) build_only=1 ;;
	-*) die "unknown option $1" ;;
	*) args+=("$1") ;;
	esac
	shift
done
[[ ${1:-} == -- ]] && shift
[[ ${#args[@]} == 1 || ${#args[@]} == 2 ]] ||
	die "usage: $0 [--build-only] KERNEL_TREE [OUTDIR] [-- HARNESS_ARGS...]"
tree=$(cd "${args[0]}" && pwd) || die "no such directory: ${args[0]}"
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${args[1]:-$repo/build/kernel-selftests}
mkdir -p "$out/include"
out=$(cd "$out" && pwd)

# The selftests moved from selftests/vm to selftests/mm in Linux 6.3.
ksft=$tree/tools/testing/selftests
sel=$ksft/mm
[[ -f $sel/hmm-tests.c || ! -f $ksft/vm/hmm-tests.c ]] || sel=$ksft/vm
for f in "$sel/hmm-tests.c" "$ksft/kselftest_harness.h" "$ksft/kselftest.h" \
	 "$tree/lib/test_hmm_uapi.h" "$tree/mm/gup_test.h"; do
	[[ -f $f ]] || die "$tree is missing ${f#"$tree"/}"
done

# The helpers the Makefile links into every mm selftest
# ("$(TEST_GEN_FILES): vm_util.c hugepage_settings.c" in current trees).
helpers=()
if [[ -f $sel/Makefile ]]; then
	# shellcheck disable=SC2016 # a literal $(...)
	read -ra helpers < <(sed -n 's/^\$(TEST_GEN_FILES):[[:space:]]*//p' "$sel/Makefile") || true
else
	for f in vm_util.c hugepage_settings.c; do
		[[ -f $sel/$f ]] && helpers+=("$f")
	done
fi

# What the uapi headers of older kernels (Debian 12: 6.1) lack.  Only
# vm_util.c refers to these; hmm-tests never calls them.  A tree with
# "make headers" done (usr/include) or newer system headers make it a no-op.
cat >"$out/include/compat.h" <<'EOF'
/* Written by libhmm's scripts/kernel-hmm-tests.sh. */
#include <linux/types.h>
#include <linux/ioctl.h>
#include <linux/fs.h>

#ifndef PAGEMAP_SCAN /* Linux 6.7 */
struct page_region { __u64 start, end, categories; };
struct pm_scan_arg {
	__u64 size, flags, start, end, walk_end, vec, vec_len, max_pages;
	__u64 category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define PAGE_IS_WPALLOWED	(1 << 0)
#define PAGE_IS_WRITTEN		(1 << 1)
#define PAGE_IS_FILE		(1 << 2)
#define PAGE_IS_PRESENT		(1 << 3)
#define PAGE_IS_SWAPPED		(1 << 4)
#define PAGE_IS_PFNZERO		(1 << 5)
#define PAGE_IS_HUGE		(1 << 6)
#define PAGE_IS_SOFT_DIRTY	(1 << 7)
#define PAGEMAP_SCAN		_IOWR('f', 16, struct pm_scan_arg)
#endif

#ifndef PROCMAP_QUERY /* Linux 6.11 */
struct procmap_query {
	__u64 size, query_flags, query_addr, vma_start, vma_end, vma_flags;
	__u64 vma_page_size, vma_offset, inode;
	__u32 dev_major, dev_minor, vma_name_size, build_id_size;
	__u64 vma_name_addr, build_id_addr;
};
#define PROCMAP_QUERY		_IOWR('f', 17, struct procmap_query)
#endif
EOF
# Older trees include the output of check_config.sh; empty means "no
# optional library found".
: >"$out/include/local_config.h"

# The flags of the mm Makefile and lib.mk (KHDR_INCLUDES, TOOLS_INCLUDES).
cflags=(-Wall -O2 -Wunreachable-code -U_FORTIFY_SOURCE -D_GNU_SOURCE
	-I "$tree" -I "$ksft" -I "$out/include" -include "$out/include/compat.h")
for d in "$tree/usr/include" "$tree/tools/include/uapi"; do
	[[ -d $d ]] && cflags+=(-isystem "$d")
done
srcs=("$sel/hmm-tests.c")
for f in "${helpers[@]}"; do srcs+=("$sel/$f"); done

echo "== building $out/hmm-tests from ${sel#"$tree"/}/{hmm-tests.c${helpers[*]:+ ${helpers[*]}}}"
"${CC:-gcc}" "${cflags[@]}" "${srcs[@]}" -lrt -lpthread -lm -o "$out/hmm-tests"
[[ $build_only == 1 ]] && exit 0

hmm_run=$repo/build/hmm-run
[[ -x $hmm_run ]] || die "$hmm_run not found: build libhmm first (meson compile -C build)"

echo "== build/hmm-run $out/hmm-tests $*"
log=$out/hmm-tests.log
: >"$log"
rc=0
"$hmm_run" "$out/hmm-tests" "$@" 2>&1 |
	while IFS= read -r line; do
		printf '%s\n' "$line"
		printf '%s %s\n' "$EPOCHREALTIME" "$line" >>"$log"
	done || rc=$?

# Per test: result, seconds from its "RUN" line to its TAP line, and for a
# failure what it printed in between (assertions, timeouts, aborts).
echo "== summary (log: $log)"
awk '
	{ t = $1; sub(/^[^ ]+ /, "") }
	/^#  RUN / { name = $3; start = t; msgs = ""; next }
	/^# +(OK|FAIL) / { next }
	!/^(not )?ok [0-9]+ / && name != "" { msgs = msgs "\n        " $0; next }
	/^(not )?ok [0-9]+ / {
		res = /^not ok/ ? "FAIL" : / # SKIP/ ? "SKIP" : "PASS"
		n[res]++
		printf "%-4s %7.2fs  %s\n", res, t - start, name
		if (res == "FAIL" && msgs != "") print substr(msgs, 2)
		name = ""
	}
	END { printf "%d passed, %d failed, %d skipped\n", n["PASS"], n["FAIL"], n["SKIP"] }
' "$log"
exit "$rc"
