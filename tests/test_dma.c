/* SPDX-License-Identifier: MIT */
/*
 * The driver kit's IOMMU model and range-based DMA mapping
 * (hmm/hmm_driver.h), and the sim device's use of them: its engines reach
 * system memory only through IOVAs, and hmm_sim_dma_read/write are raw DMA
 * by IOVA.
 *
 *  - iommu:   allocation, link, unlink, translation, every error, a random
 *             sequence checked against a model, readers during updates;
 *  - dma_map: maps of a range: entries, callbacks, the sequence protocol,
 *             migration, errors;
 *  - sim_dma: the sim device's IOVAs through mprotect, munmap, mmap over,
 *             mremap, madvise, migration; no access through a stale link.
 */
#include <pthread.h>
#include <stdatomic.h>

#include <hmm/hmm_driver.h>

#include "common.h"

#define IOVA_TOP (1ULL << HMM_IOVA_BITS)
#define MB2 ((size_t)2 << 20)

static struct hmm_iommu *new_iommu(void)
{
	struct hmm_iommu *mmu = NULL;

	cr_assert_eq(hmm_iommu_create(&mmu), 0);
	cr_assert_not_null(mmu);
	return mmu;
}

/* ---- iommu ---------------------------------------------------------------- */

Test(iommu, bad_arguments, .timeout = T_SHORT)
{
	struct hmm_iommu *mmu;
	uint64_t iova = 0;
	void *host;
	char *buf = map_anon(4 * PG);

	cr_assert_eq(hmm_iommu_create(NULL), -EINVAL);
	cr_assert_eq(hmm_iommu_destroy(NULL), -EINVAL);
	mmu = new_iommu();
	cr_assert_eq(hmm_iova_alloc(NULL, PG, &iova), -EINVAL);
	cr_assert_eq(hmm_iova_alloc(mmu, PG, NULL), -EINVAL);
	cr_assert_eq(hmm_iova_alloc(mmu, 0, &iova), -EINVAL);
	cr_assert_eq(hmm_iova_alloc(mmu, PG + 1, &iova), -EINVAL);
	cr_assert_eq(hmm_iova_alloc(mmu, (size_t)IOVA_TOP, &iova), -EINVAL);
	cr_assert_eq(iova, 0, "a failed alloc wrote its result");

	cr_assert_eq(hmm_iova_alloc(mmu, 4 * PG, &iova), 0);
	/* link: unaligned IOVA or host, bad prot, outside, wrapping */
	cr_assert_eq(hmm_iova_link(mmu, iova + 1, buf, PG, HMM_DMA_READ),
		     -EINVAL);
	cr_assert_eq(hmm_iova_link(mmu, iova, buf + 1, PG, HMM_DMA_READ),
		     -EINVAL);
	cr_assert_eq(hmm_iova_link(mmu, iova, NULL, PG, HMM_DMA_READ),
		     -EINVAL);
	cr_assert_eq(hmm_iova_link(mmu, iova, buf, PG, 0), -EINVAL);
	cr_assert_eq(hmm_iova_link(mmu, iova, buf, PG, HMM_DMA_WRITE),
		     -EINVAL, "write without read");
	cr_assert_eq(hmm_iova_link(mmu, iova, buf, PG, 8), -EINVAL);
	cr_assert_eq(hmm_iova_link(mmu, iova, buf, 0, HMM_DMA_READ), -EINVAL);
	cr_assert_eq(hmm_iova_link(mmu, iova, buf, 5 * PG, HMM_DMA_READ),
		     -EINVAL, "past the allocation");
	cr_assert_eq(hmm_iova_link(mmu, iova - PG, buf, 2 * PG, HMM_DMA_READ),
		     -EINVAL, "before the allocation");
	cr_assert_eq(hmm_iova_link(mmu, 0, buf, PG, HMM_DMA_READ), -EINVAL,
		     "not allocated");
	cr_assert_eq(hmm_iova_link(mmu, UINT64_MAX & ~(uint64_t)(PG - 1), buf,
				   2 * PG, HMM_DMA_READ),
		     -EINVAL, "wrapping");
	cr_assert_eq(hmm_iova_link(NULL, iova, buf, PG, HMM_DMA_READ),
		     -EINVAL);
	/* nothing was linked by any of them */
	cr_assert_eq(hmm_iommu_translate(mmu, iova, HMM_DMA_READ, &host),
		     -EFAULT);
	cr_assert_eq(hmm_iova_unlink(mmu, iova, 4 * PG), 0);
	cr_assert_eq(hmm_iova_unlink(mmu, iova, 5 * PG), -EINVAL);
	cr_assert_eq(hmm_iova_unlink(mmu, iova + 1, PG), -EINVAL);
	cr_assert_eq(hmm_iova_unlink(NULL, iova, PG), -EINVAL);
	cr_assert_eq(hmm_iommu_translate(NULL, iova, 0, &host), -EINVAL);
	cr_assert_eq(hmm_iommu_translate(mmu, iova, 0, NULL), -EINVAL);
	cr_assert_eq(hmm_iommu_translate(mmu, UINT64_MAX, 0, &host), -EFAULT);
	/* free: exactly as allocated */
	cr_assert_eq(hmm_iova_free(mmu, iova, 2 * PG), -EINVAL);
	cr_assert_eq(hmm_iova_free(mmu, iova + PG, 3 * PG), -EINVAL);
	cr_assert_eq(hmm_iova_free(mmu, iova, 0), -EINVAL);
	cr_assert_eq(hmm_iova_free(NULL, iova, 4 * PG), -EINVAL);
	cr_assert_eq(hmm_iova_free(mmu, iova, 4 * PG), 0);
	cr_assert_eq(hmm_iova_free(mmu, iova, 4 * PG), -EINVAL, "twice");
	cr_assert_eq(hmm_iommu_destroy(mmu), 0);
}

Test(iommu, allocations_top_down_aligned_and_bounded, .timeout = T_SHORT)
{
	struct hmm_iommu *mmu = new_iommu();
	const uint64_t half = IOVA_TOP / 2;
	uint64_t a, b, c, big, big2;

	cr_assert_eq(hmm_iova_alloc(mmu, PG, &a), 0);
	cr_assert_geq(a, half, "top down: %#llx", (unsigned long long)a);
	cr_assert_lt(a + PG, IOVA_TOP + 1);
	cr_assert_eq(hmm_iova_alloc(mmu, MB2, &b), 0);
	cr_assert_eq(b % MB2, 0, "2 MiB ranges are 2 MiB aligned");
	cr_assert(b + MB2 <= a || a + PG <= b, "overlap");
	cr_assert_eq(hmm_iova_alloc(mmu, 3 * PG, &c), 0);
	cr_assert(c + 3 * PG <= a || a + PG <= c);
	cr_assert(c + 3 * PG <= b || b + MB2 <= c);

	/* With more than half the space taken, half does not fit. */
	cr_assert_eq(hmm_iova_alloc(mmu, (size_t)(half + 64 * MB2), &big), 0);
	cr_assert_eq(hmm_iova_alloc(mmu, (size_t)half, &big2), -ENOSPC);
	cr_assert_eq(hmm_iova_free(mmu, big, (size_t)(half + 64 * MB2)), 0);
	cr_assert_eq(hmm_iova_alloc(mmu, (size_t)half, &big2), 0,
		     "freed space is found again");
	cr_assert_eq(hmm_iova_free(mmu, big2, (size_t)half), 0);

	cr_assert_eq(hmm_iova_free(mmu, a, PG), 0);
	cr_assert_eq(hmm_iova_free(mmu, b, MB2), 0);
	cr_assert_eq(hmm_iova_free(mmu, c, 3 * PG), 0);
	cr_assert_eq(hmm_iommu_destroy(mmu), 0);
}

Test(iommu, link_translate_unlink, .timeout = T_SHORT)
{
	struct hmm_iommu *mmu = new_iommu();
	char *buf = map_anon(8 * PG);
	uint64_t iova, f0, f1;
	void *host;

	cr_assert_eq(hmm_iova_alloc(mmu, 8 * PG, &iova), 0);
	cr_assert_eq(hmm_iova_link(mmu, iova, buf, 4 * PG, HMM_DMA_READ), 0);
	cr_assert_eq(hmm_iova_link(mmu, iova + 4 * PG, buf + 4 * PG, 2 * PG,
				   HMM_DMA_READ | HMM_DMA_WRITE),
		     0);
	for (size_t i = 0; i < 6; i++) {
		host = NULL;
		cr_assert_eq(hmm_iommu_translate(mmu, iova + i * PG + 40,
						 HMM_DMA_READ, &host),
			     0, "page %zu", i);
		cr_assert_eq(host, buf + i * PG + 40, "page %zu", i);
	}
	f0 = stat_of("iommu_faults");
	cr_assert_eq(hmm_iommu_translate(mmu, iova, HMM_DMA_WRITE, &host),
		     -EPERM, "write through a read-only link");
	cr_assert_eq(hmm_iommu_translate(mmu, iova + 4 * PG, HMM_DMA_WRITE,
					 &host),
		     0);
	cr_assert_eq(hmm_iommu_translate(mmu, iova + 6 * PG, HMM_DMA_READ,
					 &host),
		     -EFAULT, "never linked");
	f1 = stat_of("iommu_faults");
	cr_assert_eq(f1 - f0, 2, "iommu_faults counted %llu",
		     (unsigned long long)(f1 - f0));

	/* Over a linked page: refused, nothing changed. */
	cr_assert_eq(hmm_iova_link(mmu, iova + 5 * PG, buf, 2 * PG,
				   HMM_DMA_READ),
		     -EEXIST);
	cr_assert_eq(hmm_iommu_translate(mmu, iova + 6 * PG, HMM_DMA_READ,
					 &host),
		     -EFAULT);
	cr_assert_eq(hmm_iommu_translate(mmu, iova + 5 * PG, HMM_DMA_WRITE,
					 &host),
		     0);
	cr_assert_eq(host, buf + 5 * PG);

	cr_assert_eq(hmm_iova_unlink(mmu, iova + 2 * PG, 4 * PG), 4);
	cr_assert_eq(hmm_iova_unlink(mmu, iova + 2 * PG, 4 * PG), 0);
	cr_assert_eq(hmm_iommu_translate(mmu, iova + 2 * PG, HMM_DMA_READ,
					 &host),
		     -EFAULT);
	cr_assert_eq(hmm_iommu_translate(mmu, iova + PG, HMM_DMA_READ, &host),
		     0);
	/* free unlinks what is left; a new allocation starts unlinked */
	cr_assert_eq(hmm_iova_free(mmu, iova, 8 * PG), 0);
	cr_assert_eq(hmm_iommu_translate(mmu, iova + PG, HMM_DMA_READ, &host),
		     -EFAULT);
	cr_assert_eq(hmm_iommu_destroy(mmu), 0);
}

/* Random allocations, frees, links and unlinks against a model. */
#define RM_SLOTS 16
#define RM_PAGES 64

struct rm_alloc {
	uint64_t iova;
	size_t n;		/* pages; 0: slot free */
	uint64_t host[RM_PAGES]; /* host page address | 1 (w) | 2 (r), or 0 */
};

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void rm_check(struct hmm_iommu *mmu, const struct rm_alloc *m)
{
	for (int i = 0; i < RM_SLOTS; i++) {
		if (!m[i].n)
			continue;
		for (size_t p = 0; p < m[i].n; p++) {
			uint64_t want = m[i].host[p];
			void *h = NULL;
			int r = hmm_iommu_translate(mmu, m[i].iova + p * PG + 8,
						    HMM_DMA_READ, &h);
			int w = hmm_iommu_translate(mmu, m[i].iova + p * PG,
						    HMM_DMA_WRITE, &h);

			if (!want) {
				cr_assert_eq(r, -EFAULT, "slot %d page %zu", i,
					     p);
				cr_assert_eq(w, -EFAULT);
				continue;
			}
			cr_assert_eq(r, 0, "slot %d page %zu: %d", i, p, r);
			cr_assert_eq(w, (want & 1) ? 0 : -EPERM);
			if (!w)
				cr_assert_eq((uint64_t)(uintptr_t)h,
					     want & ~(uint64_t)3);
		}
		for (int j = 0; j < RM_SLOTS; j++)
			if (j != i && m[j].n)
				cr_assert(m[i].iova + m[i].n * PG <= m[j].iova ||
						  m[j].iova + m[j].n * PG <=
							  m[i].iova,
					  "slots %d and %d overlap", i, j);
		cr_assert_lt(m[i].iova + m[i].n * PG, IOVA_TOP + 1);
		cr_assert_geq(m[i].iova, 16 * PG);
	}
}

Test(iommu, random_operations_match_a_model, .timeout = T_LONG)
{
	struct hmm_iommu *mmu = new_iommu();
	struct rm_alloc *m = calloc(RM_SLOTS, sizeof(*m));
	char *buf = map_anon(RM_PAGES * PG);
	uint64_t seed = 0x9e3779b97f4a7c15ULL;

	cr_assert_not_null(m);
	for (int op = 0; op < 4000; op++) {
		int i = (int)(rnd(&seed) % RM_SLOTS);
		struct rm_alloc *a = &m[i];
		unsigned kind = (unsigned)(rnd(&seed) % 8);

		if (!a->n) {
			size_t n = 1 + rnd(&seed) % RM_PAGES;
			cr_assert_eq(hmm_iova_alloc(mmu, n * PG, &a->iova), 0);
			a->n = n;
			memset(a->host, 0, sizeof(a->host));
		} else if (kind == 0) {
			cr_assert_eq(hmm_iova_free(mmu, a->iova, a->n * PG), 0);
			a->n = 0;
		} else {
			size_t p = rnd(&seed) % a->n;
			size_t n = 1 + rnd(&seed) % (a->n - p);
			size_t h = rnd(&seed) % (RM_PAGES - n + 1);
			bool any = false;

			for (size_t k = p; k < p + n; k++)
				any |= a->host[k] != 0;
			if (kind < 5) {
				unsigned prot = kind & 1 ? HMM_DMA_READ
							 : HMM_DMA_READ |
								   HMM_DMA_WRITE;
				int r = hmm_iova_link(mmu, a->iova + p * PG,
						      buf + h * PG, n * PG,
						      prot);
				cr_assert_eq(r, any ? -EEXIST : 0, "op %d", op);
				for (size_t k = 0; !any && k < n; k++)
					a->host[p + k] =
						(uint64_t)(uintptr_t)(buf +
								      (h + k) *
									      PG) |
						(prot & HMM_DMA_WRITE ? 1 : 0) |
						2;
			} else {
				long want = 0;
				for (size_t k = p; k < p + n; k++) {
					want += a->host[k] != 0;
					a->host[k] = 0;
				}
				cr_assert_eq(hmm_iova_unlink(mmu,
							     a->iova + p * PG,
							     n * PG),
					     want, "op %d", op);
			}
		}
		if (op % 50 == 0)
			rm_check(mmu, m);
	}
	rm_check(mmu, m);
	for (int i = 0; i < RM_SLOTS; i++)
		if (m[i].n)
			cr_assert_eq(hmm_iova_free(mmu, m[i].iova,
						   m[i].n * PG),
				     0);
	cr_assert_eq(hmm_iommu_destroy(mmu), 0);
	free(m);
}

/* Readers translate while a writer links a range to buffer A or B in
 * turn: each answer is whole (A's or B's page at the right offset) or a
 * fault, never anything else. */
struct rd {
	struct hmm_iommu *mmu;
	uint64_t iova;
	char *a, *b;
	atomic_bool stop;
	atomic_long seen, bad;
};

static void *reader(void *arg)
{
	struct rd *r = arg;
	uint64_t s = (uint64_t)(uintptr_t)&s | 1;

	while (!atomic_load(&r->stop)) {
		size_t p = rnd(&s) % 64;
		void *h;
		int ret = hmm_iommu_translate(r->mmu, r->iova + p * PG + 16,
					      HMM_DMA_READ, &h);
		if (ret == -EFAULT)
			continue;
		if (ret || (h != r->a + p * PG + 16 && h != r->b + p * PG + 16))
			atomic_fetch_add(&r->bad, 1);
		atomic_fetch_add(&r->seen, 1);
	}
	return NULL;
}

Test(iommu, readers_during_updates, .timeout = T_LONG)
{
	struct rd r = { .mmu = new_iommu() };
	pthread_t th[2];

	r.a = map_anon(64 * PG);
	r.b = map_anon(64 * PG);
	cr_assert_eq(hmm_iova_alloc(r.mmu, 64 * PG, &r.iova), 0);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, reader, &r), 0);
	for (int round = 0; round < 20000; round++) {
		char *h = round & 1 ? r.a : r.b;
		size_t p = (size_t)round % 48, n = 1 + (size_t)round % 16;
		cr_assert_eq(hmm_iova_link(r.mmu, r.iova + p * PG, h + p * PG,
					   n * PG, HMM_DMA_READ),
			     0);
		cr_assert_eq(hmm_iova_unlink(r.mmu, r.iova + p * PG, n * PG),
			     (long)n);
	}
	atomic_store(&r.stop, true);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	cr_assert_eq(atomic_load(&r.bad), 0, "%ld bad translations",
		     atomic_load(&r.bad));
	cr_log_info("%ld translations seen", atomic_load(&r.seen));
	cr_assert_eq(hmm_iova_free(r.mmu, r.iova, 64 * PG), 0);
	cr_assert_eq(hmm_iommu_destroy(r.mmu), 0);
}

/* ---- dma_map -------------------------------------------------------------- */

#define NP 32

struct calls {
	pthread_mutex_t lock;
	int n;
	uintptr_t start, end;	/* last range */
	enum hmm_notifier_event event;
};

static bool count_invalidate(struct hmm_dma_map *map,
			     const struct hmm_notifier_range *r, void *priv)
{
	struct calls *c = priv;

	(void)map;
	pthread_mutex_lock(&c->lock);
	c->n++;
	c->start = r->start;
	c->end = r->end;
	c->event = r->event;
	pthread_mutex_unlock(&c->lock);
	return true;
}

static const struct hmm_dma_map_ops count_ops = {
	.invalidate = count_invalidate,
};

struct mapped {
	struct hmm_iommu *mmu;
	struct hmm_dma_map *map;
	struct calls calls;
	char *p;
};

static void new_map(struct mapped *m, hmm_device_t *dev, char *p, size_t len)
{
	memset(m, 0, sizeof(*m));
	pthread_mutex_init(&m->calls.lock, NULL);
	m->mmu = new_iommu();
	m->p = p;
	cr_assert_eq(hmm_dma_map_create(dev, m->mmu, p, len, &count_ops,
					&m->calls, &m->map),
		     0);
}

/* hmm_dma_map_range, retried while the range keeps changing. */
static int map_range(struct hmm_dma_map *map, void *addr, size_t len,
		     unsigned flags, uint64_t *ents)
{
	int r;

	for (int i = 0; i < 100; i++) {
		unsigned long seq = hmm_dma_map_begin(map);
		r = hmm_dma_map_range(map, seq, addr, len, flags, ents);
		if (r != -EBUSY)
			break;
	}
	return r;
}

static void assert_linked(struct hmm_iommu *mmu, uint64_t iova, void *want,
			  bool write)
{
	void *h = NULL;
	int r = hmm_iommu_translate(mmu, iova, HMM_DMA_READ, &h);

	cr_assert_eq(r, 0, "iova %#llx not linked (%d)",
		     (unsigned long long)iova, r);
	cr_assert_eq(h, want);
	r = hmm_iommu_translate(mmu, iova, HMM_DMA_WRITE, &h);
	cr_assert_eq(r, write ? 0 : -EPERM);
}

static void assert_unlinked(struct hmm_iommu *mmu, uint64_t iova)
{
	void *h;

	cr_assert_eq(hmm_iommu_translate(mmu, iova, HMM_DMA_READ, &h), -EFAULT,
		     "iova %#llx still linked", (unsigned long long)iova);
}

Test(dma_map, entries_and_links, .timeout = T_SHORT)
{
	struct mapped m;
	uint64_t ents[NP];
	char *p;

	need_hmm();
	p = map_anon(NP * PG);
	fill_pattern(p, NP * PG, 7);
	new_map(&m, NULL, p, NP * PG);
	cr_assert_eq(hmm_dma_map_iova(m.map, p - 1), 0);
	cr_assert_eq(hmm_dma_map_iova(m.map, p + NP * PG), 0);
	cr_assert_eq(hmm_dma_map_iova(m.map, p + 5) + PG,
		     hmm_dma_map_iova(m.map, p + PG + 5));
	cr_assert_eq(map_range(m.map, p, 8 * PG, 0, ents), 0);
	for (size_t i = 0; i < 8; i++) {
		uint64_t iova = hmm_dma_map_iova(m.map, p + i * PG);
		cr_assert(ents[i] & HMM_PFN_VALID);
		cr_assert_not(ents[i] & HMM_PFN_DEVICE);
		cr_assert_eq(hmm_pfn_to_frame(ents[i]), iova >> 12,
			     "entry %zu holds its IOVA page", i);
		assert_linked(m.mmu, iova, p + i * PG,
			      ents[i] & HMM_PFN_WRITE);
	}
	cr_assert_eq(map_range(m.map, p, 8 * PG, HMM_DMA_WRITE, ents), 0);
	for (size_t i = 0; i < 8; i++) {
		cr_assert(ents[i] & HMM_PFN_WRITE);
		assert_linked(m.mmu, hmm_dma_map_iova(m.map, p + i * PG),
			      p + i * PG, true);
	}
	assert_unlinked(m.mmu, hmm_dma_map_iova(m.map, p + 8 * PG));
	cr_assert_eq(hmm_dma_unmap_range(m.map, p, 4 * PG), 4);
	cr_assert_eq(hmm_dma_unmap_range(m.map, p, 4 * PG), 0);
	assert_unlinked(m.mmu, hmm_dma_map_iova(m.map, p));
	assert_linked(m.mmu, hmm_dma_map_iova(m.map, p + 4 * PG), p + 4 * PG,
		      true);
	assert_pattern(p, NP * PG, 7);
	cr_assert_eq(m.calls.n, 0, "no invalidation happened");
	cr_assert_eq(hmm_iommu_destroy(m.mmu), -EBUSY);
	cr_assert_eq(hmm_dma_map_destroy(m.map), 0);
	cr_assert_eq(hmm_iommu_destroy(m.mmu), 0);
}

Test(dma_map, bad_input_changes_nothing, .timeout = T_SHORT)
{
	struct mapped m;
	struct hmm_dma_map *x = NULL;
	uint64_t ents[NP] = { 0 };
	char *p, *ro, *none;

	need_hmm();
	p = map_anon(NP * PG);
	new_map(&m, NULL, p, NP * PG);
	cr_assert_eq(hmm_dma_map_create(NULL, NULL, p, PG, NULL, NULL, &x),
		     -EINVAL);
	cr_assert_eq(hmm_dma_map_create(NULL, m.mmu, p, PG, NULL, NULL, NULL),
		     -EINVAL);
	cr_assert_eq(hmm_dma_map_create(NULL, m.mmu, p + 1, PG, NULL, NULL,
					&x),
		     -EINVAL);
	cr_assert_eq(hmm_dma_map_create(NULL, m.mmu, p, PG + 1, NULL, NULL,
					&x),
		     -EINVAL);
	cr_assert_eq(hmm_dma_map_create(NULL, m.mmu, p, 0, NULL, NULL, &x),
		     -EINVAL);
	cr_assert_eq(hmm_dma_map_create(NULL, m.mmu, (void *)(1ULL << 47), PG,
					NULL, NULL, &x),
		     -EINVAL, "beyond the address space");
	cr_assert_eq(hmm_dma_map_create(NULL, m.mmu,
					(void *)(UINTPTR_MAX & ~(PG - 1)),
					2 * PG, NULL, NULL, &x),
		     -EINVAL, "wrapping");
	/* A whole-space map fits in the IOVA space once, not twice. */
	cr_assert_eq(hmm_dma_map_create(NULL, m.mmu, NULL, 0, NULL, NULL, &x),
		     0);
	struct hmm_dma_map *y = NULL;
	cr_assert_eq(hmm_dma_map_create(NULL, m.mmu, NULL, 0, NULL, NULL, &y),
		     -ENOSPC);
	cr_assert_null(y);
	cr_assert_eq(hmm_dma_map_destroy(x), 0);
	cr_assert_eq(hmm_dma_map_destroy(NULL), -EINVAL);

	unsigned long seq = hmm_dma_map_begin(m.map);
	cr_assert_eq(hmm_dma_map_range(NULL, seq, p, PG, 0, ents), -EINVAL);
	cr_assert_eq(hmm_dma_map_range(m.map, seq, p, PG, 0, NULL), -EINVAL);
	cr_assert_eq(hmm_dma_map_range(m.map, seq, p + 1, PG, 0, ents),
		     -EINVAL);
	cr_assert_eq(hmm_dma_map_range(m.map, seq, p, 0, 0, ents), -EINVAL);
	cr_assert_eq(hmm_dma_map_range(m.map, seq, p - PG, 2 * PG, 0, ents),
		     -EINVAL, "starts before the map");
	cr_assert_eq(hmm_dma_map_range(m.map, seq, p, (NP + 1) * PG, 0, ents),
		     -EINVAL, "ends after the map");
	cr_assert_eq(hmm_dma_map_range(m.map, seq, p, PG, 4, ents), -EINVAL);
	cr_assert_eq(hmm_dma_map_range(m.map, seq, p, PG, HMM_DMA_READ, ents),
		     0, "HMM_DMA_READ is a read mapping");
	cr_assert_eq(hmm_dma_unmap_range(m.map, p + 1, PG), -EINVAL);
	cr_assert_eq(hmm_dma_unmap_range(m.map, p, (NP + 1) * PG), -EINVAL);
	cr_assert_eq(hmm_dma_unmap_range(NULL, p, PG), -EINVAL);

	/* read-only, PROT_NONE, unmapped */
	ro = p + 8 * PG;
	none = p + 16 * PG;
	cr_assert_eq(mprotect(ro, 4 * PG, PROT_READ), 0);
	cr_assert_eq(mprotect(none, 4 * PG, PROT_NONE), 0);
	cr_assert_eq(munmap(p + 24 * PG, 4 * PG), 0);
	cr_assert_eq(map_range(m.map, ro, 4 * PG, HMM_DMA_WRITE, ents), -EPERM);
	cr_assert_eq(map_range(m.map, ro, 4 * PG, 0, ents), 0,
		     "reading is allowed");
	for (size_t i = 0; i < 4; i++)
		assert_linked(m.mmu, hmm_dma_map_iova(m.map, ro + i * PG),
			      ro + i * PG, false);
	cr_assert_eq(map_range(m.map, none, 4 * PG, 0, ents), -EFAULT);
	cr_assert_eq(map_range(m.map, p + 24 * PG, 4 * PG, 0, ents), -EFAULT);
	for (size_t i = 0; i < 4; i++) {
		assert_unlinked(m.mmu, hmm_dma_map_iova(m.map, none + i * PG));
		assert_unlinked(m.mmu,
				hmm_dma_map_iova(m.map, p + (24 + i) * PG));
	}
	cr_assert_eq(hmm_dma_map_destroy(m.map), 0);
	cr_assert_eq(hmm_iommu_destroy(m.mmu), 0);
}

/* A stale section links nothing; CPU-side changes unlink and call back
 * with the range clipped to the map. */
Test(dma_map, invalidations_unlink_and_call_back, .timeout = T_SHORT)
{
	struct mapped m;
	uint64_t ents[NP];
	unsigned long seq;
	char *p;

	need_hmm();
	p = map_anon((NP + 8) * PG);
	fill_pattern(p, (NP + 8) * PG, 3);
	/* the map covers pages 4 .. 4 + NP of the buffer */
	new_map(&m, NULL, p + 4 * PG, NP * PG);
	char *q = p + 4 * PG;

	seq = hmm_dma_map_begin(m.map);
	cr_assert_eq(mprotect(q, PG, PROT_READ), 0);
	cr_assert_eq(hmm_dma_map_range(m.map, seq, q + PG, 2 * PG, 0, ents),
		     -EBUSY, "the section began before the mprotect");
	assert_unlinked(m.mmu, hmm_dma_map_iova(m.map, q + PG));
	cr_assert_geq(m.calls.n, 1); /* before and after the call */
	cr_assert_eq(m.calls.event, HMM_NOTIFY_PROTECTION_VMA);
	cr_assert_eq(m.calls.start, (uintptr_t)q);
	cr_assert_eq(m.calls.end, (uintptr_t)q + PG);
	cr_assert_eq(hmm_dma_map_retry(m.map, seq), true);

	cr_assert_eq(map_range(m.map, q, NP * PG, 0, ents), 0);
	/* A change over the whole buffer reaches the map clipped. */
	int before = m.calls.n;
	cr_assert_eq(madvise(p, (NP + 8) * PG, MADV_DONTNEED), 0);
	cr_assert_gt(m.calls.n, before);
	cr_assert_eq(m.calls.event, HMM_NOTIFY_CLEAR);
	cr_assert_eq(m.calls.start, (uintptr_t)q);
	cr_assert_eq(m.calls.end, (uintptr_t)q + NP * PG);
	for (size_t i = 0; i < NP; i++)
		assert_unlinked(m.mmu, hmm_dma_map_iova(m.map, q + i * PG));

	/* A change outside the map calls nothing. */
	before = m.calls.n;
	cr_assert_eq(mprotect(p, PG, PROT_READ), 0);
	cr_assert_eq(m.calls.n, before);

	cr_assert_eq(map_range(m.map, q, NP * PG, HMM_DMA_WRITE, ents), -EPERM,
		     "page 0 of the map is read-only");
	cr_assert_eq(map_range(m.map, q + PG, (NP - 1) * PG, HMM_DMA_WRITE,
			       ents),
		     0);
	cr_assert_eq(munmap(q + 2 * PG, 2 * PG), 0);
	cr_assert_eq(m.calls.event, HMM_NOTIFY_UNMAP);
	cr_assert_eq(m.calls.start, (uintptr_t)q + 2 * PG);
	cr_assert_eq(m.calls.end, (uintptr_t)q + 4 * PG);
	assert_unlinked(m.mmu, hmm_dma_map_iova(m.map, q + 2 * PG));
	assert_unlinked(m.mmu, hmm_dma_map_iova(m.map, q + 3 * PG));
	assert_linked(m.mmu, hmm_dma_map_iova(m.map, q + PG), q + PG, true);
	assert_linked(m.mmu, hmm_dma_map_iova(m.map, q + 4 * PG), q + 4 * PG,
		      true);
	cr_assert_eq(hmm_dma_map_destroy(m.map), 0);
	/* destroyed: no more callbacks */
	before = m.calls.n;
	cr_assert_eq(mprotect(q + 8 * PG, PG, PROT_READ), 0);
	cr_assert_eq(m.calls.n, before);
	cr_assert_eq(hmm_iommu_destroy(m.mmu), 0);
}

/* Pages that migrate to the map's device lose their links and come back
 * as device entries; back home, they link again at the same IOVAs. */
Test(dma_map, migration_keeps_addresses_current, .timeout = T_SHORT)
{
	struct mapped m;
	uint64_t ents[NP];
	hmm_device_t *dev, *other;
	char *p;

	need_hmm();
	dev = open_sim(0);
	other = open_sim(0);
	p = map_adopt(NP * PG);
	fill_pattern(p, NP * PG, 11);
	new_map(&m, dev, p, NP * PG);
	cr_assert_eq(map_range(m.map, p, NP * PG, HMM_DMA_WRITE, ents), 0);
	cr_assert_eq(hmm_migrate(p, 8 * PG, dev, 0), 8);
	cr_assert_geq(m.calls.n, 1);
	cr_assert_eq(m.calls.event, HMM_NOTIFY_MIGRATE);
	for (size_t i = 0; i < 8; i++)
		assert_unlinked(m.mmu, hmm_dma_map_iova(m.map, p + i * PG));
	assert_linked(m.mmu, hmm_dma_map_iova(m.map, p + 8 * PG), p + 8 * PG,
		      true);
	cr_assert_eq(map_range(m.map, p, NP * PG, 0, ents), 0);
	for (size_t i = 0; i < NP; i++) {
		bool on_dev = i < 8;
		cr_assert_eq(!!(ents[i] & HMM_PFN_DEVICE), on_dev, "page %zu",
			     i);
		if (on_dev)
			assert_unlinked(m.mmu,
					hmm_dma_map_iova(m.map, p + i * PG));
	}
	/* Pages on another device come home to be linked. */
	cr_assert_eq(hmm_migrate(p + 16 * PG, 4 * PG, other, 0), 4);
	cr_assert_eq(map_range(m.map, p + 16 * PG, 4 * PG, 0, ents), 0);
	for (size_t i = 0; i < 4; i++) {
		cr_assert_not(ents[i] & HMM_PFN_DEVICE);
		assert_linked(m.mmu, hmm_dma_map_iova(m.map, p + (16 + i) * PG),
			      p + (16 + i) * PG, ents[i] & HMM_PFN_WRITE);
	}
	/* CPU access brings the first 8 home; they link where they were. */
	assert_pattern(p, NP * PG, 11);
	cr_assert_eq(map_range(m.map, p, 8 * PG, 0, ents), 0);
	for (size_t i = 0; i < 8; i++) {
		cr_assert_not(ents[i] & HMM_PFN_DEVICE);
		cr_assert_eq(hmm_pfn_to_frame(ents[i]),
			     hmm_dma_map_iova(m.map, p + i * PG) >> 12);
	}
	cr_assert_eq(hmm_dma_map_destroy(m.map), 0);
	cr_assert_eq(hmm_iommu_destroy(m.mmu), 0);
	/* A closed device's map: -ENODEV. */
	new_map(&m, other, p, NP * PG);
	cr_assert_eq(hmm_device_close(other), 0);
	cr_assert_eq(map_range(m.map, p, PG, 0, ents), -ENODEV);
	cr_assert_eq(hmm_dma_map_destroy(m.map), 0);
	cr_assert_eq(hmm_iommu_destroy(m.mmu), 0);
}

/* ---- sim_dma -------------------------------------------------------------- */

static void dma_read_ok(hmm_device_t *dev, uint64_t iova, void *buf,
			size_t len)
{
	int r = hmm_sim_dma_read(dev, iova, buf, len);

	cr_assert_eq(r, 0, "hmm_sim_dma_read(%#llx, %zu) = %d",
		     (unsigned long long)iova, len, r);
}

Test(sim_dma, engines_use_iovas, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p, *buf = malloc(NP * PG);
	uint64_t iova, f0;

	need_hmm();
	dev = open_sim(0);
	p = map_anon(NP * PG);
	fill_pattern(p, NP * PG, 21);
	iova = hmm_sim_iova(dev, p);
	cr_assert_neq(iova, 0);
	cr_assert_neq(iova, (uint64_t)(uintptr_t)p,
		      "IOVAs are not the CPU's addresses");
	cr_assert_eq(hmm_sim_iova(dev, p + 3 * PG + 5), iova + 3 * PG + 5);
	cr_assert_eq(hmm_sim_iova(NULL, p), 0);

	/* Nothing is linked before the device touched the range. */
	f0 = stat_of("iommu_faults");
	cr_assert_eq(hmm_sim_dma_read(dev, iova, buf, PG), -EFAULT);
	cr_assert_eq(stat_of("iommu_faults") - f0, 1, "one fault, counted once");
	/* A CPU address given as a DMA address faults too. */
	cr_assert_eq(hmm_sim_dma_read(dev, (uint64_t)(uintptr_t)p, buf, PG),
		     -EFAULT);

	cr_assert_eq(hmm_sim_read(dev, p, buf, NP * PG, NULL), 0);
	assert_pattern(buf, NP * PG, 21);
	memset(buf, 0, NP * PG);
	dma_read_ok(dev, iova, buf, NP * PG);
	assert_pattern(buf, NP * PG, 21);
	/* Unaligned raw DMA spanning pages. */
	dma_read_ok(dev, iova + PG - 8, buf, 16);
	cr_assert_eq(memcmp(buf, p + PG - 8, 16), 0);
	/* The pages were mapped for reading: a raw write is refused. */
	uint64_t v = 42;
	cr_assert_eq(hmm_sim_dma_write(dev, iova, &v, 8), -EPERM);
	cr_assert_eq(*(uint64_t *)p, 0 ^ 21ULL, "the refused write wrote");
	/* After a device write, they are linked writable. */
	cr_assert_eq(hmm_sim_write(dev, p, &v, 8, NULL), 0);
	cr_assert_eq(hmm_sim_dma_write(dev, iova + 8, &v, 8), 0);
	cr_assert_eq(((uint64_t *)p)[1], 42);
	cr_assert_eq(((uint64_t *)p)[0], 42);

	/* bad input */
	cr_assert_eq(hmm_sim_dma_read(NULL, iova, buf, 8), -EINVAL);
	cr_assert_eq(hmm_sim_dma_read(dev, iova, NULL, 8), -EINVAL);
	cr_assert_eq(hmm_sim_dma_read(dev, iova, buf, 0), -EINVAL);
	cr_assert_eq(hmm_sim_dma_write(dev, iova, NULL, 8), -EINVAL);
	cr_assert_eq(hmm_sim_dma_read(dev, UINT64_MAX - 4, buf, 8), -EINVAL,
		     "wrapping");
	cr_assert_eq(hmm_device_close(dev), 0);
	cr_assert_eq(hmm_sim_dma_read(dev, iova, buf, 8), -ENODEV);
	free(buf);
}

/* The device's IOVAs follow every CPU-side change: no raw DMA succeeds
 * through a link made before the change. */
Test(sim_dma, iovas_through_cpu_changes, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p, *q, *buf = malloc(NP * PG);
	uint64_t iova, qiova;
	uint64_t v = 7;

	need_hmm();
	dev = open_sim(0);
	p = map_anon(NP * PG);
	fill_pattern(p, NP * PG, 1);
	iova = hmm_sim_iova(dev, p);
	cr_assert_eq(hmm_sim_write(dev, p, p, 8, NULL), 0); /* writable link */
	cr_assert_eq(hmm_sim_read(dev, p, buf, NP * PG, NULL), 0);
	dma_read_ok(dev, iova, buf, NP * PG);

	/* A CPU write is seen through the same link (same page). */
	((uint64_t *)p)[3] = 0xabc;
	dma_read_ok(dev, iova + 24, buf, 8);
	cr_assert_eq(*(uint64_t *)buf, 0xabc);

	/* mprotect read-only: unlinked; a device read links it read-only. */
	cr_assert_eq(mprotect(p, 4 * PG, PROT_READ), 0);
	cr_assert_eq(hmm_sim_dma_read(dev, iova, buf, 8), -EFAULT);
	cr_assert_eq(hmm_sim_dma_write(dev, iova, &v, 8), -EFAULT);
	cr_assert_eq(hmm_sim_read(dev, p, buf, 4 * PG, NULL), 0);
	dma_read_ok(dev, iova, buf, 8);
	cr_assert_eq(hmm_sim_dma_write(dev, iova, &v, 8), -EPERM);
	cr_assert_eq(hmm_sim_write(dev, p, &v, 8, NULL), -EPERM);
	cr_assert_eq(mprotect(p, 4 * PG, PROT_READ | PROT_WRITE), 0);

	/* MADV_DONTNEED: unlinked; the device then reads zeros. */
	cr_assert_eq(madvise(p + 4 * PG, 4 * PG, MADV_DONTNEED), 0);
	cr_assert_eq(hmm_sim_dma_read(dev, iova + 4 * PG, buf, 8), -EFAULT);
	cr_assert_eq(hmm_sim_read(dev, p + 4 * PG, buf, 4 * PG, NULL), 0);
	assert_zero(buf, 4 * PG);
	dma_read_ok(dev, iova + 4 * PG, buf, 4 * PG);
	assert_zero(buf, 4 * PG);

	/* munmap, then new memory at the same address: the old link is
	 * gone; the new memory is reached only after a device fault. */
	cr_assert_eq(munmap(p + 8 * PG, 4 * PG), 0);
	cr_assert_eq(hmm_sim_dma_read(dev, iova + 8 * PG, buf, 8), -EFAULT);
	q = mmap(p + 8 * PG, 4 * PG, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	cr_assert_eq(q, p + 8 * PG);
	fill_pattern(q, 4 * PG, 99);
	cr_assert_eq(hmm_sim_dma_read(dev, iova + 8 * PG, buf, 8), -EFAULT,
		     "new memory reached through the old link");
	cr_assert_eq(hmm_sim_read(dev, q, buf, 4 * PG, NULL), 0);
	assert_pattern(buf, 4 * PG, 99);
	dma_read_ok(dev, iova + 8 * PG, buf, 4 * PG);
	assert_pattern(buf, 4 * PG, 99);

	/* mremap: the old IOVAs fault, the new address has its own. */
	q = mmap(NULL, 4 * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(q, MAP_FAILED);
	cr_assert_eq(mremap(p + 12 * PG, 4 * PG, 4 * PG,
			    MREMAP_MAYMOVE | MREMAP_FIXED, q),
		     q);
	cr_assert_eq(hmm_sim_dma_read(dev, iova + 12 * PG, buf, 8), -EFAULT);
	qiova = hmm_sim_iova(dev, q);
	cr_assert_eq(hmm_sim_dma_read(dev, qiova, buf, 8), -EFAULT);
	cr_assert_eq(hmm_sim_read(dev, q, buf, 4 * PG, NULL), 0);
	dma_read_ok(dev, qiova, buf, 4 * PG);
	cr_assert_eq(memcmp(buf, q, 4 * PG), 0);
	free(buf);
}

Test(sim_dma, migration_unlinks, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p, *buf = malloc(NP * PG);
	uint64_t iova;

	need_hmm();
	dev = open_sim(0);
	p = map_adopt(NP * PG);
	fill_pattern(p, NP * PG, 5);
	iova = hmm_sim_iova(dev, p);
	cr_assert_eq(hmm_sim_read(dev, p, buf, NP * PG, NULL), 0);
	dma_read_ok(dev, iova, buf, NP * PG);
	cr_assert_eq(hmm_migrate(p, NP * PG, dev, 0), NP);
	/* The pages are in device memory: no system page behind the
	 * IOVAs any more. */
	cr_assert_eq(hmm_sim_dma_read(dev, iova, buf, 8), -EFAULT);
	cr_assert_eq(hmm_sim_read(dev, p, buf, NP * PG, NULL), 0);
	assert_pattern(buf, NP * PG, 5);
	cr_assert_eq(hmm_sim_dma_read(dev, iova, buf, 8), -EFAULT,
		     "device pages are not DMA mapped");
	/* Home again (CPU access), and linked at the same IOVAs after the
	 * next device fault. */
	assert_pattern(p, NP * PG, 5);
	cr_assert_eq(hmm_sim_read(dev, p, buf, NP * PG, NULL), 0);
	cr_assert_eq(hmm_sim_iova(dev, p), iova);
	memset(buf, 0, NP * PG);
	dma_read_ok(dev, iova, buf, NP * PG);
	assert_pattern(buf, NP * PG, 5);
	free(buf);
}

/*
 * A thread replaces a page (munmap + mmap at the same address, new data)
 * and links it again with a device read; another does raw DMA reads of
 * its IOVA.  A read that began after a replacement was published must
 * never return an older generation, and no read returns a mix.
 */
struct swap {
	hmm_device_t *dev;
	char *p;
	uint64_t iova;
	atomic_ulong gen;
	atomic_bool stop;
	atomic_long ok, faults, bad;
};

static void *dma_reader(void *arg)
{
	struct swap *s = arg;
	uint64_t buf[PG / 8];

	while (!atomic_load(&s->stop)) {
		unsigned long g0 = atomic_load(&s->gen);
		int r = hmm_sim_dma_read(s->dev, s->iova, buf, PG);
		if (r == -EFAULT) {
			atomic_fetch_add(&s->faults, 1);
			continue;
		}
		if (r) {
			atomic_fetch_add(&s->bad, 1);
			continue;
		}
		for (size_t i = 1; i < PG / 8; i++)
			if (buf[i] != buf[0])
				atomic_fetch_add(&s->bad, 1);
		if (buf[0] < g0)
			atomic_fetch_add(&s->bad, 1);
		atomic_fetch_add(&s->ok, 1);
	}
	return NULL;
}

Test(sim_dma, no_access_through_a_stale_link, .timeout = T_LONG)
{
	struct swap s = { 0 };
	pthread_t th;
	char tmp[64];
	uint64_t t_end;

	need_hmm();
	s.dev = open_sim(0);
	s.p = map_anon(PG);
	s.iova = hmm_sim_iova(s.dev, s.p);
	for (size_t i = 0; i < PG / 8; i++)
		((uint64_t *)s.p)[i] = 0;
	cr_assert_eq(hmm_sim_read(s.dev, s.p, tmp, sizeof(tmp), NULL), 0);
	cr_assert_eq(pthread_create(&th, NULL, dma_reader, &s), 0);
	t_end = now_ms() + 3000;
	for (unsigned long g = 1; now_ms() < t_end; g++) {
		cr_assert_eq(munmap(s.p, PG), 0);
		char *q = mmap(s.p, PG, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		cr_assert_eq(q, s.p);
		for (size_t i = 0; i < PG / 8; i++)
			((uint64_t *)q)[i] = g;
		atomic_store(&s.gen, g);
		cr_assert_eq(hmm_sim_read(s.dev, q, tmp, sizeof(tmp), NULL), 0);
	}
	atomic_store(&s.stop, true);
	pthread_join(th, NULL);
	cr_log_info("%ld reads, %ld faults", atomic_load(&s.ok),
		    atomic_load(&s.faults));
	cr_assert_eq(atomic_load(&s.bad), 0, "%ld stale or torn reads",
		     atomic_load(&s.bad));
	cr_assert_gt(atomic_load(&s.ok), 0, "no read got through");
}
