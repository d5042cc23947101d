#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Install into a temporary directory and build a program against the
# installed libhmm the way a user outside the tree would: with pkg-config,
# against the shared library and against the static one; then run both.
# Arguments: the build directory, the source directory, the libdir, and
# the build's b_sanitize option.
set -eu
build=$1 src=$2 libdir=$3 sanitize=${4:-none}
if [ "$sanitize" != none ]; then
	echo "SKIP: a sanitized libhmm ($sanitize) links only into programs" \
		"built with the same sanitizer"
	exit 77
fi
command -v pkg-config >/dev/null || { echo "SKIP: no pkg-config"; exit 77; }
command -v cc >/dev/null || { echo "SKIP: no C compiler"; exit 77; }
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
meson install -C "$build" --destdir "$d/root" --no-rebuild --quiet \
	>"$d/install.log" 2>&1 || { cat "$d/install.log"; exit 1; }
prefix=$(sed -n 's/^prefix=//p' "$build/meson-private/libhmm.pc")
lib="$d/root$prefix/$libdir"
for f in "$lib/libhmm.so" "$lib/libhmm.a" "$lib/pkgconfig/libhmm.pc" \
	"$d/root$prefix/include/hmm/hmm.h" "$d/root$prefix/bin/hmm-run" \
	"$d/root$prefix/bin/hmm-demo" "$d/root$prefix/bin/hmm-bench"; do
	[ -e "$f" ] || { echo "not installed: $f"; exit 1; }
done
export PKG_CONFIG_PATH="$lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$d/root"
# Shared, as a user builds: cc prog.c $(pkg-config --cflags --libs libhmm)
# shellcheck disable=SC2046
cc -o "$d/prog" "$src/examples/migrate_faultback.c" \
	$(pkg-config --cflags --libs libhmm)
LD_LIBRARY_PATH="$lib" "$d/prog" || { r=$?; [ $r = 77 ] && exit 77; \
	echo "shared build failed: $r"; exit 1; }
# Static: the archive, with what pkg-config --static adds.
# shellcheck disable=SC2046
cc -o "$d/prog-static" "$src/examples/migrate_faultback.c" \
	$(pkg-config --cflags libhmm) "$lib/libhmm.a" \
	$(pkg-config --static --libs-only-l libhmm | sed 's/-lhmm//')
"$d/prog-static" || { echo "static build failed: $?"; exit 1; }
ldd "$d/prog-static" | grep -q libhmm && { echo "static build uses libhmm.so"; exit 1; }
echo "install, pkg-config, shared and static builds: ok"
