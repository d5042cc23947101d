/* SPDX-License-Identifier: MIT */
/*
 * The driver kit's device page table (hmm/hmm_pt.h) against a reference
 * model: random sequences of set, clear, lookup, walk, dirty marks and
 * harvests over page numbers spread across the whole 36-bit space; readers
 * running during updates; every error.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include <hmm/hmm_pt.h>

#include "common.h"

#define CLUSTERS 4
#define CLUSTER_PAGES 3000	/* crosses leaf and directory boundaries */

static const uint64_t cluster_base[CLUSTERS] = {
	0, (1ULL << 18) - 700, (1ULL << 27) + 5, (1ULL << 36) - CLUSTER_PAGES,
};

static uint64_t vpn_of(size_t i)
{
	return cluster_base[i / CLUSTER_PAGES] + i % CLUSTER_PAGES;
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

struct walk_check {
	const uint64_t *model;
	size_t next;		/* model index expected next */
	size_t base;		/* cluster's first model index */
	uint64_t visited;
	bool bad;
};

static void walk_fn(uint64_t vpn, uint64_t entry, void *arg)
{
	struct walk_check *w = arg;

	while (w->next < w->base + CLUSTER_PAGES && !w->model[w->next])
		w->next++;
	if (w->next >= w->base + CLUSTER_PAGES || vpn_of(w->next) != vpn ||
	    w->model[w->next] != entry)
		w->bad = true;
	w->next++;
	w->visited++;
}

static void count_fn(uint64_t vpn, uint64_t entry, void *arg)
{
	(void)vpn;
	(void)entry;
	(*(uint64_t *)arg)++;
}

Test(pt, random_operations_match_a_model, .timeout = T_LONG)
{
	const size_t n = CLUSTERS * CLUSTER_PAGES;
	uint64_t *model = calloc(n, sizeof(*model));
	uint64_t *buf = malloc(CLUSTER_PAGES * sizeof(*buf));
	uint64_t s = 0x9e3779b97f4a7c15ULL;
	struct hmm_pt *pt;

	cr_assert_eq(hmm_pt_create(&pt), 0);
	for (int step = 0; step < 20000; step++) {
		int c = (int)(rnd(&s) % CLUSTERS);
		size_t a = rnd(&s) % CLUSTER_PAGES;
		size_t len = 1 + rnd(&s) % (step % 7 ? 40 : 1500);
		size_t base = (size_t)c * CLUSTER_PAGES, i;
		if (a + len > CLUSTER_PAGES)
			len = CLUSTER_PAGES - a;
		switch (rnd(&s) % 6) {
		case 0:
		case 1: /* set */
			for (i = 0; i < len; i++)
				buf[i] = HMM_PTE_VALID |
					 ((rnd(&s) & 1) ? HMM_PTE_WRITE : 0) |
					 (rnd(&s) & HMM_PTE_ADDR_MASK);
			cr_assert_eq(hmm_pt_set(pt, vpn_of(base + a), len, buf),
				     0);
			memcpy(&model[base + a], buf, len * sizeof(*buf));
			break;
		case 2: { /* clear: dirty entries reported */
			uint64_t dirty = 0, want = 0, cleared = 0;
			for (i = a; i < a + len; i++) {
				cleared += model[base + i] != 0;
				want += (model[base + i] & HMM_PTE_DIRTY) != 0;
				model[base + i] = 0;
			}
			cr_assert_eq(hmm_pt_clear(pt, vpn_of(base + a),
						  vpn_of(base + a) + len,
						  count_fn, &dirty),
				     (long)cleared);
			cr_assert_eq(dirty, want);
			break;
		}
		case 3: /* mark dirty */
			for (i = a; i < a + len && i < a + 20; i++) {
				int r = hmm_pt_mark_dirty(pt, vpn_of(base + i));
				cr_assert_eq(r, model[base + i] ? 0 : -ENOENT);
				if (model[base + i])
					model[base + i] |= HMM_PTE_DIRTY;
			}
			break;
		case 4: { /* harvest */
			uint64_t got = 0, want = 0;
			for (i = a; i < a + len; i++)
				if (model[base + i] & HMM_PTE_DIRTY) {
					want++;
					model[base + i] &= ~HMM_PTE_DIRTY;
				}
			cr_assert_eq(hmm_pt_harvest_dirty(pt, vpn_of(base + a),
							  vpn_of(base + a) + len,
							  count_fn, &got),
				     (long)want);
			cr_assert_eq(got, want);
			break;
		}
		default: /* lookups */
			for (i = a; i < a + len; i++)
				cr_assert_eq(hmm_pt_lookup(pt, vpn_of(base + i)),
					     model[base + i],
					     "step %d, vpn %#lx", step,
					     (unsigned long)vpn_of(base + i));
			break;
		}
		if (step % 1000 == 999) {
			/* Whole-table checks: count, walks in order. */
			uint64_t total = 0;
			for (i = 0; i < n; i++)
				total += model[i] != 0;
			cr_assert_eq(hmm_pt_count(pt), total);
			for (int k = 0; k < CLUSTERS; k++) {
				struct walk_check w = {
					.model = model,
					.next = (size_t)k * CLUSTER_PAGES,
					.base = (size_t)k * CLUSTER_PAGES,
				};
				hmm_pt_walk(pt, cluster_base[k],
					    cluster_base[k] + CLUSTER_PAGES,
					    walk_fn, &w);
				cr_assert(!w.bad, "walk of cluster %d", k);
			}
			hmm_pt_reclaim(pt);
		}
	}
	/* Empty again: every directory goes. */
	hmm_pt_clear(pt, 0, 1ULL << HMM_PT_VPN_BITS, NULL, NULL);
	hmm_pt_reclaim(pt);
	cr_assert_eq(hmm_pt_count(pt), 0);
	cr_assert_eq(hmm_pt_bytes(pt), 0, "%zu bytes left", hmm_pt_bytes(pt));
	hmm_pt_destroy(pt);
	free(model);
	free(buf);
}

Test(pt, bad_arguments, .timeout = T_SHORT)
{
	struct hmm_pt *pt;
	uint64_t e = HMM_PTE_VALID | 5, zero = 0;

	cr_assert_eq(hmm_pt_create(NULL), -EINVAL);
	cr_assert_eq(hmm_pt_create(&pt), 0);
	cr_assert_eq(hmm_pt_set(NULL, 0, 1, &e), -EINVAL);
	cr_assert_eq(hmm_pt_set(pt, 1ULL << 36, 1, &e), -EINVAL);
	cr_assert_eq(hmm_pt_set(pt, (1ULL << 36) - 1, 2, &e), -EINVAL);
	cr_assert_eq(hmm_pt_set(pt, 7, 1, &zero), -EINVAL);
	cr_assert_eq(hmm_pt_set(pt, 7, 1, NULL), -EINVAL);
	cr_assert_eq(hmm_pt_count(pt), 0, "a failed set changed something");
	cr_assert_eq(hmm_pt_clear(pt, 9, 3, NULL, NULL), -EINVAL);
	cr_assert_eq(hmm_pt_clear(pt, 0, (1ULL << 36) + 1, NULL, NULL), -EINVAL);
	cr_assert_eq(hmm_pt_walk(pt, 0, 10, NULL, NULL), -EINVAL);
	cr_assert_eq(hmm_pt_mark_dirty(pt, 7), -ENOENT);
	cr_assert_eq(hmm_pt_mark_dirty(pt, 1ULL << 36), -EINVAL);
	cr_assert_eq(hmm_pt_lookup(pt, 1ULL << 36), 0);
	cr_assert_eq(hmm_pt_set(pt, (1ULL << 36) - 1, 1, &e), 0);
	cr_assert_eq(hmm_pt_lookup(pt, (1ULL << 36) - 1), e);
	hmm_pt_destroy(pt);
	hmm_pt_destroy(NULL);
}

/* Readers look entries up while a writer sets, clears and reclaims: an
 * entry read is always a value some set wrote for that page, or 0. */
struct race {
	struct hmm_pt *pt;
	atomic_bool stop;
	atomic_ulong reads, bad;
};

static void *reader_main(void *arg)
{
	struct race *r = arg;
	uint64_t s = (uint64_t)(uintptr_t)&s | 1;

	while (!atomic_load(&r->stop)) {
		uint64_t vpn = vpn_of(rnd(&s) % (CLUSTERS * CLUSTER_PAGES));
		hmm_pt_read_lock();
		uint64_t e = hmm_pt_lookup(r->pt, vpn);
		hmm_pt_read_unlock();
		if (e && (!(e & HMM_PTE_VALID) ||
			  (e & HMM_PTE_ADDR_MASK & 0xffffffffffULL) !=
				  (vpn & 0xffffffffffULL)))
			atomic_fetch_add(&r->bad, 1);
		atomic_fetch_add(&r->reads, 1);
	}
	return NULL;
}

Test(pt, readers_during_updates, .timeout = T_LONG)
{
	struct race r = { 0 };
	uint64_t *buf = malloc(CLUSTER_PAGES * sizeof(*buf));
	uint64_t s = 12345;
	pthread_t t[2];

	cr_assert_eq(hmm_pt_create(&r.pt), 0);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, reader_main, &r), 0);
	for (int step = 0; step < 4000; step++) {
		int c = (int)(rnd(&s) % CLUSTERS);
		size_t a = rnd(&s) % CLUSTER_PAGES, len = 1 + rnd(&s) % 600;
		if (a + len > CLUSTER_PAGES)
			len = CLUSTER_PAGES - a;
		uint64_t v0 = cluster_base[c] + a;
		if (rnd(&s) % 2) {
			for (size_t i = 0; i < len; i++)
				buf[i] = HMM_PTE_VALID | (v0 + i) |
					 ((uint64_t)(step & 15) << 40);
			cr_assert_eq(hmm_pt_set(r.pt, v0, len, buf), 0);
		} else {
			hmm_pt_clear(r.pt, v0, v0 + len, NULL, NULL);
		}
		if (step % 100 == 0)
			hmm_pt_reclaim(r.pt);
		/* On a loaded machine the readers may not have run yet: the
		 * updates wait for them (the last steps then race reads). */
		while (step == 3000 && atomic_load(&r.reads) < 1000)
			sched_yield();
	}
	atomic_store(&r.stop, true);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	cr_assert_eq(atomic_load(&r.bad), 0, "%lu bad reads of %lu",
		     atomic_load(&r.bad), atomic_load(&r.reads));
	cr_assert_gt(atomic_load(&r.reads), 0);
	hmm_pt_destroy(r.pt);
	free(buf);
}

static void sum_fn(uint64_t vpn, uint64_t entry, void *arg)
{
	(void)vpn;
	*(uint64_t *)arg += entry & HMM_PTE_ADDR_MASK;
}

/* Entries whose addresses run on (an IOMMU's links, a device's window)
 * are kept compact (a quarter of the memory); one that does not fit
 * turns its leaf into a full one and changes nothing else; dirty marks,
 * harvests, walks and clears see the same entries either way. */
Test(pt, compact_leaves_behave_as_full_ones)
{
	const uint64_t v0 = (1ULL << 20) + 100, n = 3 * 512;
	uint64_t *buf = malloc(n * sizeof(*buf)), sum = 0, want = 0, dirty = 0;
	struct hmm_pt *pt;
	size_t compact_bytes;

	cr_assert_eq(hmm_pt_create(&pt), 0);
	for (uint64_t i = 0; i < n; i++) {
		buf[i] = HMM_PTE_VALID | ((i & 1) ? HMM_PTE_WRITE : 0) |
			 (0x40000 + i);
		want += 0x40000 + i;
	}
	cr_assert_eq(hmm_pt_set(pt, v0, n, buf), 0);
	compact_bytes = hmm_pt_bytes(pt);
	for (uint64_t i = 0; i < n; i++)
		cr_assert_eq(hmm_pt_lookup(pt, v0 + i), buf[i], "page %lu",
			     (unsigned long)i);
	cr_assert_eq(hmm_pt_walk(pt, v0, v0 + n, sum_fn, &sum), (long)n);
	cr_assert_eq(sum, want);
	hmm_pt_read_lock();
	cr_assert_eq(hmm_pt_mark_dirty(pt, v0 + 7), 0);
	cr_assert_eq(hmm_pt_mark_dirty(pt, v0 + 600), 0);
	hmm_pt_read_unlock();
	cr_assert_eq(hmm_pt_lookup(pt, v0 + 7), buf[7] | HMM_PTE_DIRTY);
	cr_assert_eq(hmm_pt_harvest_dirty(pt, v0, v0 + n, count_fn, &dirty), 2);
	cr_assert_eq(dirty, 2);
	cr_assert_eq(hmm_pt_lookup(pt, v0 + 7), buf[7]);

	/* A device page in the middle of the second leaf: that leaf goes
	 * full, nothing else changes. */
	hmm_pt_read_lock();
	cr_assert_eq(hmm_pt_mark_dirty(pt, v0 + 601), 0);
	hmm_pt_read_unlock();
	uint64_t devpage = HMM_PTE_VALID | HMM_PTE_DEVICE | 0x99;
	cr_assert_eq(hmm_pt_set(pt, v0 + 700, 1, &devpage), 0);
	/* A full leaf is 4 KiB, a compact one about 1 KiB. */
	cr_assert_gt(hmm_pt_bytes(pt), compact_bytes + 4096 / 2, "%zu -> %zu",
		     compact_bytes, hmm_pt_bytes(pt));
	for (uint64_t i = 0; i < n; i++) {
		uint64_t e = hmm_pt_lookup(pt, v0 + i);
		if (i == 700)
			cr_assert_eq(e, devpage);
		else if (i == 601)
			cr_assert_eq(e, buf[i] | HMM_PTE_DIRTY);
		else
			cr_assert_eq(e, buf[i], "page %lu",
				     (unsigned long)i);
	}
	dirty = 0;
	cr_assert_eq(hmm_pt_clear(pt, v0, v0 + n, count_fn, &dirty), (long)n);
	cr_assert_eq(dirty, 1);
	cr_assert_eq(hmm_pt_count(pt), 0);
	hmm_pt_reclaim(pt);
	hmm_pt_destroy(pt);
	free(buf);
}
