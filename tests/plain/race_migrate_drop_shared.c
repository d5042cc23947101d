/* SPDX-License-Identifier: MIT */
/*
 * Migrations racing with MADV_REMOVE on libhmm's shared memory
 * (hmm_mem_alloc), found by hmm-stress:
 *  - a page installed by a move home just before the application's drop
 *    was dropped again by that move after madvise had returned, over what
 *    the application had written since: whole pages read zeros;
 *  - such a page became SYSTEM before the kernel dropped it, and a move to
 *    a device copied its old data there, which the drop then missed: the
 *    old data came back.
 * Two threads migrate random spans to two devices and home without pause
 * while the main thread drops a few pages, checks every word and writes
 * everything again.
 */
#include <sys/mman.h>

#include "race.h"

#define ROUNDS 4000

int main(void)
{
	unsigned seed = 1;

	PLAIN_NEED_HMM();
	race_open_devices();
	CHECK(hmm_mem_alloc(LEN, 0, (void **)&p) == 0, "hmm_mem_alloc");
	fill(0);
	whole_spans = true;
	race_start();
	for (uint64_t gen = 0; gen < ROUNDS; gen++) {
		size_t a = rand_r(&seed) % NP, n = 1 + rand_r(&seed) % 16;
		if (a + n > NP)
			n = NP - a;
		CHECK(madvise(p + a * 512, n * 4096, MADV_REMOVE) == 0,
		      "madvise");
		for (size_t i = 0; i < LEN / 8; i++) {
			bool dropped = i >= a * 512 && i < (a + n) * 512;
			uint64_t want = dropped ? 0 : i * 1000 + gen;
			CHECK(word(i) == want,
			      "round %lu (dropped %zu+%zu): word %zu (page %zu) "
			      "is %lu, not %lu",
			      (unsigned long)gen, a, n, i, i / 512,
			      (unsigned long)word(i), (unsigned long)want);
		}
		fill(gen + 1);
	}
	race_stop();
	return 0;
}
