#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Run a test program as an unprivileged user ("nobody").
#
# usage: unprivileged.sh BINARY [FILE...] [-- ARG...]
#
# As root, BINARY runs under setpriv (or runuser) as nobody, with ARGs.  If
# nobody cannot reach the files where they were built (a build directory
# that is not world-traversable), BINARY and the FILEs (shared libraries,
# programs it runs) are copied into a fresh world-readable temporary
# directory and run from there with LD_LIBRARY_PATH; an ARG naming a FILE
# names its copy.  Not root: BINARY runs as the current user.
# Exit status 77 tells meson the test was skipped.

set -u

bin=${1:?usage: unprivileged.sh BINARY [FILE...] [-- ARG...]}
shift
files=
while [ $# -gt 0 ] && [ "$1" != -- ]; do
	case "$1" in /*) f=$1 ;; *) f=$(pwd)/$1 ;; esac
	files="$files $f"
	shift
done
[ $# -gt 0 ] && shift
# ARGs naming files relative to here: absolute (the test runs from /).
for a in "$@"; do
	case "$a" in /*) ;; *) [ -e "$a" ] && a=$(pwd)/$a ;; esac
	set -- "$@" "$a"
	shift
done

skip() {
	echo "SKIP: $*"
	exit 77
}

[ -x "$bin" ] || { echo "FAIL: $bin is not an executable"; exit 1; }
# Absolute paths: the test runs from / (nobody may not reach the cwd).
case "$bin" in /*) ;; *) bin=$(pwd)/$bin ;; esac

if [ "$(id -u)" != 0 ]; then
	echo "not root: running $bin as $(id -un)"
	exec "$bin" "$@"
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

reachable=yes
for f in "$bin" $files; do
	as_nobody test -r "$f" >/dev/null 2>&1 || reachable=no
done

run=$bin
if [ $reachable = no ]; then
	tmp=$(mktemp -d /tmp/libhmm-unpriv.XXXXXX) || skip "mktemp failed"
	chmod 755 "$tmp"
	for f in "$bin" $files; do
		name=$(basename "$f")
		cp "$f" "$tmp/$name" || skip "cannot copy $f"
		chmod 755 "$tmp/$name"
		# libhmm.so.0.1.0: also provide libhmm.so.0.1, libhmm.so.0
		# and libhmm.so, so that the SONAME a binary needs is found.
		alias=$name
		while :; do
			case "$alias" in
			*.so.*) alias=${alias%.*} ;;
			*) break ;;
			esac
			[ -e "$tmp/$alias" ] || ln -s "$name" "$tmp/$alias"
		done
	done
	run=$tmp/$(basename "$bin")
	# ARGs naming a FILE name its copy.
	for a in "$@"; do
		for f in $files; do
			[ "$a" = "$f" ] && a=$tmp/$(basename "$f")
		done
		set -- "$@" "$a"
		shift
	done
	echo "running a copy in $tmp (nobody cannot reach $bin)"
	LD_LIBRARY_PATH=$tmp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
	export LD_LIBRARY_PATH
fi

cd / || exit 1
echo "running $run $* as nobody"
as_nobody "$run" "$@"
rc=$?
[ $rc = 77 ] && echo "SKIP: $(basename "$run") skipped itself"
exit $rc
