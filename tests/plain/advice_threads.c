/* SPDX-License-Identifier: MIT */
/*
 * Preferred-location advice under concurrency: device reads (whose faults
 * move pages to the preferred device, from a device engine thread) race
 * CPU readers and writers pulling them back, with thrashing control
 * pinning and releasing blocks, and advice changing under them.  A plain
 * program, so that the ThreadSanitizer build runs it.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#include "plain.h"

#define LEN (4UL << 20)
#define WORDS (LEN / 8)

static hmm_device_t *dev;
static uint64_t *mem;
static atomic_bool stop;
static atomic_long bad;

static uint64_t now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

/* Words of even pages never change; odd pages belong to the writer. */
static bool fixed(size_t i)
{
	return !((i / 512) & 1);
}

static void *device_reader(void *arg)
{
	uint64_t buf[512];
	size_t pg = (size_t)(uintptr_t)arg;

	while (!atomic_load(&stop)) {
		pg = (pg * 7 + 3) % (WORDS / 512);
		if (hmm_sim_read(dev, &mem[pg * 512], buf, sizeof(buf), NULL))
			atomic_fetch_add(&bad, 1);
		else if (fixed(pg * 512))
			for (size_t j = 0; j < 512; j++)
				if (buf[j] != pg * 512 + j)
					atomic_fetch_add(&bad, 1);
	}
	return NULL;
}

static void *cpu_user(void *arg)
{
	(void)arg;
	for (uint64_t v = 1; !atomic_load(&stop); v++)
		for (size_t i = 0; i < WORDS; i += 512) {
			if (fixed(i)) {
				if (__atomic_load_n(&mem[i], __ATOMIC_RELAXED) != i)
					atomic_fetch_add(&bad, 1);
			} else {
				__atomic_store_n(&mem[i], v, __ATOMIC_RELAXED);
			}
		}
	return NULL;
}

int main(void)
{
	pthread_t th[4];
	uint64_t end;

	PLAIN_NEED_HMM();
	CHECK(hmm_device_open("sim", NULL, &dev) == 0, "open");
	CHECK(hmm_mem_alloc(LEN, 0, (void **)&mem) == 0, "alloc");
	for (size_t i = 0; i < WORDS; i++)
		mem[i] = i;
	CHECK(hmm_option_set("THRASH_PIN_MS", 20) == 0, "option");
	CHECK(hmm_advise(mem, LEN, HMM_ADVISE_PREFERRED_LOCATION, dev) == 0,
	      "advise");
	for (uintptr_t i = 0; i < 2; i++)
		CHECK(pthread_create(&th[i], NULL, device_reader,
				     (void *)(i + 1)) == 0,
		      "create");
	for (int i = 2; i < 4; i++)
		CHECK(pthread_create(&th[i], NULL, cpu_user, NULL) == 0,
		      "create");
	end = now_ms() + 3000;
	for (int round = 0; now_ms() < end; round++) {
		/* Advice changing under the faults. */
		int a = round % 3 == 0 ? HMM_ADVISE_ACCESSED_BY
			: round % 3 == 1 ? HMM_ADVISE_UNSET_ACCESSED_BY
					 : HMM_ADVISE_PREFERRED_LOCATION;
		CHECK(hmm_advise(mem, LEN / 2, a, dev) == 0, "advise %d", a);
		struct timespec ts = { 0, 20 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	atomic_store(&stop, true);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	CHECK(atomic_load(&bad) == 0, "%ld bad reads", atomic_load(&bad));
	for (size_t i = 0; i < WORDS; i++)
		CHECK(!fixed(i) || mem[i] == i, "word %zu is %llu", i,
		      (unsigned long long)mem[i]);
	uint64_t moved = 0, pins = 0;
	hmm_stat_get("advice_migrations", &moved);
	hmm_stat_get("thrash_pins", &pins);
	printf("advice moved %llu pages, %llu thrash pins\n",
	       (unsigned long long)moved, (unsigned long long)pins);
	CHECK(moved > 0, "advice never moved a page");
	CHECK(hmm_fini() == 0, "hmm_fini");
	return 0;
}
