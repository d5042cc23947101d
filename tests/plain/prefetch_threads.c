/* SPDX-License-Identifier: MIT */
/*
 * Prefetches started and waited for from two threads at once, to a device
 * and back, over overlapping ranges, while a third thread writes; then
 * hmm_fini with prefetches still queued.  A plain program, so that the
 * ThreadSanitizer build runs it.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/mman.h>

#include <hmm/hmm.h>

#include "plain.h"

#define LEN (8UL << 20)

static hmm_device_t *dev;
static uint64_t *mem;
static atomic_bool stop;
static atomic_ulong last;

static void *prefetcher(void *arg)
{
	uintptr_t id = (uintptr_t)arg;

	for (int i = 0; i < 40; i++) {
		size_t off = ((size_t)(i + id) % 4) << 20;
		hmm_prefetch_t *pf;
		int r = hmm_prefetch_start((char *)mem + off, LEN / 2,
					   (i + id) & 1 ? NULL : dev, 0, &pf);
		CHECK(r == 0, "hmm_prefetch_start = %d", r);
		if (i % 3 == 0)
			CHECK(hmm_prefetch_wait(pf, 0) >= -ETIMEDOUT, "poll");
		long m = hmm_prefetch_release(pf);
		CHECK(m >= 0, "prefetch %d of thread %lu: %ld", i,
		      (unsigned long)id, m);
	}
	return NULL;
}

static void *writer(void *arg)
{
	(void)arg;
	for (uint64_t v = 1; !atomic_load(&stop); v++) {
		for (size_t i = 0; i < LEN / 8; i += 4096)
			mem[i] = v;
		atomic_store(&last, v);
	}
	return NULL;
}

int main(void)
{
	pthread_t th[3];
	hmm_prefetch_t *pf[4];

	PLAIN_NEED_HMM();
	CHECK(hmm_device_open("sim", NULL, &dev) == 0, "open");
	CHECK(hmm_mem_alloc(LEN, 0, (void **)&mem) == 0, "alloc");
	for (size_t i = 0; i < LEN / 8; i++)
		mem[i] = i;
	CHECK(pthread_create(&th[2], NULL, writer, NULL) == 0, "create");
	for (uintptr_t i = 0; i < 2; i++)
		CHECK(pthread_create(&th[i], NULL, prefetcher, (void *)i) == 0,
		      "create");
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	atomic_store(&stop, true);
	pthread_join(th[2], NULL);
	for (size_t i = 0; i < LEN / 8; i++)
		CHECK(mem[i] == (i % 4096 ? i : atomic_load(&last)),
		      "word %zu is %llu", i, (unsigned long long)mem[i]);
	/* Queued at hmm_fini: completed, or cancelled; data stays. */
	for (int i = 0; i < 4; i++)
		CHECK(hmm_prefetch_start(mem, LEN, i & 1 ? NULL : dev, 0,
					 &pf[i]) == 0,
		      "start");
	CHECK(hmm_fini() == 0, "hmm_fini");
	for (int i = 0; i < 4; i++) {
		long r = hmm_prefetch_release(pf[i]);
		CHECK(r >= 0 || r == -ECANCELED || r == -ENODEV,
		      "prefetch %d after hmm_fini: %ld", i, r);
	}
	for (size_t i = 0; i < LEN / 8; i++)
		CHECK(mem[i] == (i % 4096 ? i : atomic_load(&last)),
		      "after hmm_fini: word %zu", i);
	return 0;
}
