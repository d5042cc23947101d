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
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#include <hmm/hmm.h>

#include "plain.h"

#define NP 256
#define LEN (NP * 4096UL)
#define ROUNDS 4000
#define NMIG 2

static hmm_device_t *dev[2];
static uint64_t *p;
static atomic_bool stop;

static void *migrator(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;

	while (!atomic_load(&stop)) {
		size_t pg = rand_r(&seed) % NP, n = 1 + rand_r(&seed) % 32;
		int d = rand_r(&seed) % 3;
		if (rand_r(&seed) % 8 == 0) {
			pg = 0;
			n = NP;
		}
		if (pg + n > NP)
			n = NP - pg;
		hmm_migrate(p + pg * 512, n * 4096, d < 2 ? dev[d] : NULL, 0);
	}
	return NULL;
}

/* Out of ThreadSanitizer's sight, as in race_migrate_mprotect_drop.c. */
#define NO_TSAN __attribute__((no_sanitize("thread")))

NO_TSAN static void fill(uint64_t gen)
{
	for (size_t i = 0; i < LEN / 8; i++)
		p[i] = i * 1000 + gen;
}

NO_TSAN static uint64_t word(size_t i)
{
	return p[i];
}

int main(void)
{
	unsigned seed = 1;
	pthread_t th[NMIG];

	PLAIN_NEED_HMM();
	CHECK(hmm_device_open("sim", NULL, &dev[0]) == 0, "device 0");
	CHECK(hmm_device_open("sim", NULL, &dev[1]) == 0, "device 1");
	CHECK(hmm_mem_alloc(LEN, 0, (void **)&p) == 0, "hmm_mem_alloc");
	fill(0);
	for (int i = 0; i < NMIG; i++)
		CHECK(pthread_create(&th[i], NULL, migrator,
				     (void *)(uintptr_t)(i + 7)) == 0, "thread");
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
	atomic_store(&stop, true);
	for (int i = 0; i < NMIG; i++)
		pthread_join(th[i], NULL);
	return 0;
}
