/* SPDX-License-Identifier: MIT */
/*
 * Many device engines reaching system memory for the first time: each
 * engine thread's first translation registers it with liburcu-bp, which
 * grows its reader registry with an in-place mremap, under the sim's
 * page-table lock.  libhmm's mremap used to invalidate mirrors there, and
 * the sim's invalidation took that lock again: the engine hung (hmm-stress
 * with three devices, in a fork child whose engines all start anew).
 * Also: an in-place growth of unmanaged memory invalidates no mirror.
 */
#include <sys/mman.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#include "plain.h"

#define DEVICES 12
#define ENGINES 8

int main(void)
{
	hmm_device_t *dev[DEVICES];
	uint64_t buf[512];
	char *p;

	PLAIN_NEED_HMM();
	p = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED, "mmap");
	memset(p, 0x5a, 4096);
	for (int d = 0; d < DEVICES; d++) {
		struct hmm_device_attr attr = { .mem_size = 1 << 20,
						.engines = ENGINES };
		CHECK(hmm_device_open("sim", &attr, &dev[d]) == 0, "open %d", d);
	}
	/* Every engine of every device reads system memory at least once
	 * (commands go to engines in turn). */
	for (int round = 0; round < 4 * ENGINES; round++)
		for (int d = 0; d < DEVICES; d++) {
			CHECK(hmm_sim_read(dev[d], p, buf, sizeof(buf), NULL) == 0,
			      "hmm_sim_read");
			CHECK(buf[7] == 0x5a5a5a5a5a5a5a5aULL, "data");
		}

	/* In-place growth of memory no device uses: no invalidation. */
	char *q = mmap(NULL, 8192, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(q != MAP_FAILED, "mmap");
	CHECK(munmap(q + 4096, 4096) == 0, "munmap");
	uint64_t inv0 = 0, inv1 = 0;
	CHECK(hmm_stat_get("invalidations", &inv0) == 0, "stat");
	CHECK(mremap(q, 4096, 8192, 0) == q, "mremap in place");
	CHECK(hmm_stat_get("invalidations", &inv1) == 0, "stat");
	CHECK(inv1 == inv0, "in-place growth invalidated %lu times",
	      (unsigned long)(inv1 - inv0));
	for (int d = 0; d < DEVICES; d++)
		CHECK(hmm_device_close(dev[d]) == 0, "close");
	printf("many_engines: ok\n");
	return 0;
}
