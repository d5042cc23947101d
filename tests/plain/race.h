/* SPDX-License-Identifier: MIT */
/*
 * Shared by the race_migrate_* programs: two threads migrate random spans
 * of an NP-page buffer to two sim devices and home without pause, while
 * the program's main thread changes the buffer under them and checks
 * every word.
 */
#ifndef HMM_TESTS_PLAIN_RACE_H
#define HMM_TESTS_PLAIN_RACE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include <hmm/hmm.h>

#include "plain.h"

#define NP 256
#define LEN (NP * 4096UL)

static hmm_device_t *dev[2];
static uint64_t *p;		/* the buffer, set before race_start */
static bool whole_spans;	/* migrate all of it, one time in 8, too */
static atomic_bool stop;
static pthread_t migrators[2];

static void *migrator(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;

	while (!atomic_load(&stop)) {
		size_t pg = rand_r(&seed) % NP, n = 1 + rand_r(&seed) % 32;
		int d = rand_r(&seed) % 3;
		if (whole_spans && rand_r(&seed) % 8 == 0) {
			pg = 0;
			n = NP;
		}
		if (pg + n > NP)
			n = NP - pg;
		hmm_migrate(p + pg * 512, n * 4096, d < 2 ? dev[d] : NULL, 0);
	}
	return NULL;
}

/* The two devices; call first. */
static void race_open_devices(void)
{
	CHECK(hmm_device_open("sim", NULL, &dev[0]) == 0, "device 0");
	CHECK(hmm_device_open("sim", NULL, &dev[1]) == 0, "device 1");
}

static void race_start(void)
{
	for (int i = 0; i < 2; i++)
		CHECK(pthread_create(&migrators[i], NULL, migrator,
				     (void *)(uintptr_t)(i + 7)) == 0, "thread");
}

static void race_stop(void)
{
	atomic_store(&stop, true);
	for (int i = 0; i < 2; i++)
		pthread_join(migrators[i], NULL);
}

/*
 * The CPU's accesses to managed memory are out of ThreadSanitizer's
 * sight: what orders them with libhmm's copies of the same pages is
 * userfaultfd write-protection, which TSan cannot see.
 */
#define NO_TSAN __attribute__((no_sanitize("thread")))

NO_TSAN static inline void fill(uint64_t gen)
{
	for (size_t i = 0; i < LEN / 8; i++)
		p[i] = i * 1000 + gen;
}

NO_TSAN static inline uint64_t word(size_t i)
{
	return p[i];
}

#endif
