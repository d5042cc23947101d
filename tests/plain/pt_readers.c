/* SPDX-License-Identifier: MIT */
/*
 * The driver kit's page table with readers (RCU read sections) running
 * while a writer sets, clears and frees directories: also run under
 * ThreadSanitizer and AddressSanitizer, which catch a directory freed
 * under a reader.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <hmm/hmm_pt.h>

#include "plain.h"

#define SPAN 20000		/* pages, across several directories */

static struct hmm_pt *pt;
static atomic_bool stop;
static atomic_ulong reads, bad;

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void *reader(void *arg)
{
	uint64_t s = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ULL | 1;

	while (!atomic_load(&stop)) {
		uint64_t vpn = (1ULL << 27) - SPAN / 2 + rnd(&s) % SPAN;
		hmm_pt_read_lock();
		uint64_t e = hmm_pt_lookup(pt, vpn);
		int d = e ? hmm_pt_mark_dirty(pt, vpn) : 0;
		hmm_pt_read_unlock();
		if ((e && (e & HMM_PTE_ADDR_MASK) != vpn) || (d && d != -ENOENT))
			atomic_fetch_add(&bad, 1);
		atomic_fetch_add(&reads, 1);
	}
	return NULL;
}

int main(void)
{
	uint64_t *buf = malloc(SPAN * sizeof(*buf)), s = 7;
	pthread_t t[2];

	CHECK(hmm_pt_create(&pt) == 0, "create");
	for (int i = 0; i < 2; i++)
		CHECK(pthread_create(&t[i], NULL, reader,
				     (void *)(uintptr_t)(i + 1)) == 0,
		      "thread");
	for (int step = 0; step < 3000; step++) {
		uint64_t a = rnd(&s) % SPAN, len = 1 + rnd(&s) % 2000;
		uint64_t v0 = (1ULL << 27) - SPAN / 2 + a;
		if (a + len > SPAN)
			len = SPAN - a;
		if (rnd(&s) % 2) {
			for (uint64_t i = 0; i < len; i++)
				buf[i] = HMM_PTE_VALID | (v0 + i);
			CHECK(hmm_pt_set(pt, v0, len, buf) == 0, "set");
		} else if (rnd(&s) % 2) {
			hmm_pt_clear(pt, v0, v0 + len, NULL, NULL);
		} else {
			hmm_pt_harvest_dirty(pt, v0, v0 + len, NULL, NULL);
		}
		if (step % 50 == 0)
			hmm_pt_reclaim(pt);
	}
	atomic_store(&stop, true);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	CHECK(atomic_load(&bad) == 0, "%lu bad reads", atomic_load(&bad));
	printf("%lu reads during 3000 updates\n", atomic_load(&reads));
	hmm_pt_destroy(pt);
	free(buf);
	return 0;
}
