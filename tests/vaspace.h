/* SPDX-License-Identifier: MIT */
/*
 * Where the tests put their buffers.
 *
 * Many tests punch holes (munmap, mremap away) and then check that the
 * device sees them as holes.  mmap(NULL, ...) searches for a gap from the
 * top of the mapping area down, so any mapping made meanwhile by another
 * part of the process (a sanitizer's bookkeeping, a new thread's stack,
 * libhmm's own buffers) can land in such a hole, and the test then sees
 * memory where it made a hole.
 *
 * test_map() places buffers instead in a region far below the mapping area
 * (48 TiB, which AddressSanitizer leaves to the application), one after
 * another with a guard gap, never reusing an address.  A gap search from
 * the top finds the huge free space under the libraries first, so nothing
 * else lands there.  Where the region is refused (ThreadSanitizer keeps it
 * for its metadata, old kernels ignore MAP_FIXED_NOREPLACE), the mapping
 * falls back to mmap(NULL, ...).
 */
#ifndef HMM_TESTS_VASPACE_H
#define HMM_TESTS_VASPACE_H

#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define TEST_MAP_BASE ((uintptr_t)0x300000000000ULL)
#define TEST_MAP_END ((uintptr_t)0x380000000000ULL)
#define TEST_MAP_ALIGN ((uintptr_t)2 << 20)

/*
 * mmap(NULL, @len, @prot, @flags, @fd, @off) in the tests' own region; the
 * same result and errno as mmap.  Not thread-safe: call it from the test's
 * thread.
 */
static inline void *test_map(size_t len, int prot, int flags, int fd,
			     off_t off)
{
	static uintptr_t next = TEST_MAP_BASE;
	void *p;

	if (!(flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) && len &&
	    next + len < TEST_MAP_END) {
		p = mmap((void *)next, len, prot, flags | MAP_FIXED_NOREPLACE,
			 fd, off);
		if (p == (void *)next) {
			/* 2 MiB aligned with at least 2 MiB between buffers,
			 * so that neighbours never merge or share a huge
			 * page. */
			next = (next + len + 2 * TEST_MAP_ALIGN - 1) &
			       ~(TEST_MAP_ALIGN - 1);
			return p;
		}
		if (p != MAP_FAILED)
			munmap(p, len);
	}
	return mmap(NULL, len, prot, flags, fd, off);
}

#endif
