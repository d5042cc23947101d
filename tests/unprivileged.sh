#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Run test_unpriv as an unprivileged user ("nobody").
#
# usage: unprivileged.sh TEST_UNPRIV_BINARY [LIBHMM_SHARED_LIBRARY]
#
# As root, the binary runs under setpriv (or runuser) as nobody.  If nobody
# cannot reach the binary where it was built (a build directory that is not
# world-traversable), the binary and libhmm are copied into a fresh
# world-readable temporary directory and run from there with
# LD_LIBRARY_PATH.  Not root: the binary runs as the current user.
# Exit status 77 tells meson the test was skipped.

set -u

bin=${1:?usage: unprivileged.sh TEST_UNPRIV_BINARY [LIBHMM]}
lib=${2:-}

skip() {
	echo "SKIP: $*"
	exit 77
}

[ -x "$bin" ] || { echo "FAIL: $bin is not an executable"; exit 1; }
# Absolute paths: the test runs from / (nobody may not reach the cwd).
case "$bin" in /*) ;; *) bin=$(pwd)/$bin ;; esac
case "$lib" in /* | '') ;; *) lib=$(pwd)/$lib ;; esac

if [ "$(id -u)" != 0 ]; then
	echo "not root: running $bin as $(id -un)"
	exec "$bin"
fi

id nobody >/dev/null 2>&1 || skip "no user nobody"
group=nogroup
getent group nogroup >/dev/null 2>&1 || group=nobody
getent group "$group" >/dev/null 2>&1 || skip "no group nogroup or nobody"

if command -v setpriv >/dev/null 2>&1; then
	as_nobody() {
		setpriv --reuid=nobody --regid="$group" --clear-groups \
			--inh-caps=-all "$@"
	}
elif command -v runuser >/dev/null 2>&1; then
	as_nobody() {
		runuser -u nobody -g "$group" -- "$@"
	}
else
	skip "neither setpriv nor runuser is installed"
fi

# Check that the switch itself works (it can fail in some containers).
as_nobody true >/dev/null 2>&1 || skip "cannot switch to user nobody here"

tmp=
cleanup() {
	[ -n "$tmp" ] && rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

run=$bin
if ! as_nobody test -r "$bin" -a -x "$bin" >/dev/null 2>&1 ||
   { [ -n "$lib" ] && ! as_nobody test -r "$lib" >/dev/null 2>&1; }; then
	tmp=$(mktemp -d /tmp/libhmm-unpriv.XXXXXX) || skip "mktemp failed"
	chmod 755 "$tmp"
	cp "$bin" "$tmp/" || skip "cannot copy $bin"
	run=$tmp/$(basename "$bin")
	chmod 755 "$run"
	case "$lib" in
	*.so*)
		# libhmm.so.0.1.0: also provide libhmm.so.0.1, libhmm.so.0 and
		# libhmm.so, so that the SONAME the binary needs is found.
		name=$(basename "$lib")
		cp "$lib" "$tmp/$name" || skip "cannot copy $lib"
		chmod 644 "$tmp/$name"
		alias=$name
		while :; do
			case "$alias" in
			*.so.*) alias=${alias%.*} ;;
			*) break ;;
			esac
			[ -e "$tmp/$alias" ] || ln -s "$name" "$tmp/$alias"
		done
		;;
	esac
	echo "running a copy in $tmp (nobody cannot reach $bin)"
	LD_LIBRARY_PATH=$tmp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
	export LD_LIBRARY_PATH
fi

cd / || exit 1
echo "running $run as nobody"
as_nobody "$run"
rc=$?
[ $rc = 77 ] && echo "SKIP: test_unpriv skipped itself"
exit $rc
