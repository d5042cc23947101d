/* SPDX-License-Identifier: MIT */
/*
 * Compact leaves of the driver kit's page table (src/pt.c) turn into full
 * ones when an entry does not fit them, while devices mark entries dirty
 * without the table's lock.  No mark may be lost: every mark that
 * returned 0 is reported by the clear that follows.  Rounds of: a
 * compact leaf set, markers running, one entry that does not fit set
 * (the expansion races the marks), markers stopped, everything cleared
 * and the reports compared with the marks.  Also run under
 * ThreadSanitizer and AddressSanitizer.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <hmm/hmm_pt.h>

#include "plain.h"

#define ROUNDS 20000
#define SLOTS 512
#define MARKERS 2
#define V0 ((1ULL << 27) + 3 * SLOTS)	/* one leaf: [V0, V0 + 512) */

static struct hmm_pt *pt;
static atomic_bool stop;
static atomic_int round_no, acked;
/* Slots a marker marked (0 returned) this round. */
static _Atomic uint8_t marked[SLOTS];

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void *marker(void *arg)
{
	uint64_t s = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ULL | 1;
	int seen = 0;

	while (!atomic_load(&stop)) {
		int r = atomic_load(&round_no);
		if (r < 0) { /* paused: say so once per round */
			if (seen != -r) {
				seen = -r;
				atomic_fetch_add(&acked, 1);
			}
			sched_yield();
			continue;
		}
		/* Slot 511 is the one that does not fit: never marked. */
		unsigned i = (unsigned)(rnd(&s) % (SLOTS - 1));
		hmm_pt_read_lock();
		int d = hmm_pt_mark_dirty(pt, V0 + i);
		hmm_pt_read_unlock();
		if (d == 0)
			atomic_store(&marked[i], 1);
	}
	return NULL;
}

static void count_dirty(uint64_t vpn, uint64_t entry, void *arg)
{
	uint8_t *rep = arg;

	(void)entry;
	rep[vpn - V0] = 1;
}

int main(void)
{
	uint64_t buf[SLOTS], s = 11, lost = 0, reported = 0;
	uint8_t rep[SLOTS];
	pthread_t t[MARKERS];

	CHECK(hmm_pt_create(&pt) == 0, "create");
	atomic_store(&round_no, -(ROUNDS + 1)); /* paused, not a round */
	for (int i = 0; i < MARKERS; i++)
		CHECK(pthread_create(&t[i], NULL, marker,
				     (void *)(uintptr_t)(i + 1)) == 0,
		      "thread");
	for (int r = 1; r <= ROUNDS; r++) {
		/* Compact: addresses run on from one base. */
		for (unsigned i = 0; i < SLOTS; i++)
			buf[i] = HMM_PTE_VALID | (0x1000 + i);
		CHECK(hmm_pt_set(pt, V0, SLOTS, buf) == 0, "set");
		memset((void *)marked, 0, sizeof(marked));
		atomic_store(&round_no, r);
		for (volatile unsigned k = rnd(&s) % 2000; k; k--)
			;
		/* Does not fit: the leaf expands under the marks. */
		buf[0] = HMM_PTE_VALID | HMM_PTE_DEVICE | 0x77777;
		CHECK(hmm_pt_set(pt, V0 + SLOTS - 1, 1, buf) == 0, "set 511");
		for (volatile unsigned k = rnd(&s) % 500; k; k--)
			;
		/* Markers stop: wait until each has seen the pause. */
		atomic_store(&acked, 0);
		atomic_store(&round_no, -r);
		while (atomic_load(&acked) < MARKERS)
			sched_yield();
		memset(rep, 0, sizeof(rep));
		CHECK(hmm_pt_clear(pt, V0, V0 + SLOTS, count_dirty, rep) ==
			      SLOTS,
		      "clear");
		for (unsigned i = 0; i < SLOTS; i++) {
			lost += atomic_load(&marked[i]) && !rep[i];
			reported += rep[i];
		}
		if (r % 64 == 0)
			hmm_pt_reclaim(pt);
	}
	atomic_store(&stop, true);
	for (int i = 0; i < MARKERS; i++)
		pthread_join(t[i], NULL);
	CHECK(lost == 0, "%lu dirty marks lost", (unsigned long)lost);
	CHECK(reported > 0, "no mark was made");
	printf("%lu marks reported over %d expansions, none lost\n",
	       (unsigned long)reported, ROUNDS);
	hmm_pt_destroy(pt);
	return 0;
}
