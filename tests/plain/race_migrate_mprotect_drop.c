/* SPDX-License-Identifier: MIT */
/*
 * Migrations racing with mprotect, MADV_DONTNEED and mlock (private
 * anonymous memory), found by hmm-stress:
 *  - mprotect split and merged VMAs between libhmm's own drop of copied
 *    pages and the handling of its REMOVE events, which were then taken
 *    for the application's drop: whole pages read zeros;
 *  - a fault-back in flight installed old data after the application
 *    dropped the page;
 *  - mlock split a VMA while the kernel waited for the REMOVE event of
 *    libhmm's own drop to be read, and the kernel sent the rest again,
 *    which was taken for the application's drop: whole pages read zeros.
 * Two threads migrate random spans to two devices and home without pause
 * while the main thread protects, drops or locks, rewrites and checks
 * every word.
 */
#include <sys/mman.h>

#include "race.h"

#define ROUNDS 1500

int main(void)
{
	unsigned seed = 1;

	PLAIN_NEED_HMM();
	race_open_devices();
	p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		 -1, 0);
	CHECK(p != MAP_FAILED, "mmap");
	CHECK(hmm_range_adopt(p, LEN, 0) == 0, "adopt");
	fill(0);
	race_start();
	for (uint64_t gen = 0; gen < ROUNDS; gen++) {
		size_t a = rand_r(&seed) % NP, n = 1 + rand_r(&seed) % 16;
		bool drop = gen % 3 == 1, lock = gen % 3 == 2;
		if (a + n > NP)
			n = NP - a;
		if (drop) {
			CHECK(madvise(p + a * 512, n * 4096, MADV_DONTNEED) == 0,
			      "madvise");
		} else if (lock) {
			if (mlock(p + a * 512, n * 4096) == 0)
				CHECK(munlock(p + a * 512, n * 4096) == 0,
				      "munlock");
		} else {
			CHECK(mprotect(p + a * 512, n * 4096, PROT_READ) == 0,
			      "mprotect");
			for (size_t i = a * 512; i < (a + n) * 512; i++)
				CHECK(word(i) == i * 1000 + gen,
				      "round %lu, read-only: word %zu is %lu",
				      (unsigned long)gen, i,
				      (unsigned long)word(i));
			CHECK(mprotect(p + a * 512, n * 4096,
				       PROT_READ | PROT_WRITE) == 0,
			      "mprotect");
		}
		for (size_t i = 0; i < LEN / 8; i++) {
			bool dropped = drop && i >= a * 512 &&
				       i < (a + n) * 512;
			uint64_t want = dropped ? 0 : i * 1000 + gen;
			CHECK(word(i) == want,
			      "round %lu (%s %zu+%zu): word %zu (page %zu) is "
			      "%lu, not %lu",
			      (unsigned long)gen,
			      drop ? "dropped" : lock ? "locked" : "protected",
			      a, n, i, i / 512, (unsigned long)word(i),
			      (unsigned long)want);
		}
		fill(gen + 1);
	}
	race_stop();
	return 0;
}
