/* SPDX-License-Identifier: MIT */
/*
 * The IOMMU model and range-based DMA mapping (include/hmm/hmm_driver.h).
 *
 * An IOMMU is an hmm_pt keyed by IOVA page whose entries hold the host
 * page (its virtual page number) with HMM_PTE_VALID and, for writable
 * links, HMM_PTE_WRITE; and a sorted array of the IOVA allocations.
 * Translation is a read section of the table; link, unlink and the
 * allocations are serialised by the IOMMU's mutex (the table has its own
 * for its writers).
 *
 * A DMA map is an interval notifier over its range plus one allocation.
 * Its lock orders links against invalidations: an invalidation sets the
 * map's sequence and unlinks under the lock; hmm_dma_map_range links only
 * after hmm_dma_map_retry said, under the lock, that no invalidation came
 * since the caller's hmm_dma_map_begin.  So no link made from a stale
 * hmm_range_fault survives, and the driver's own check under its lock
 * (after the invalidation has set the sequence, before or after it called
 * the driver back) keeps the driver's table right in the same way.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "hmm/hmm_pt.h"
#include "internal.h"

#define IOVA_PAGES (1ULL << (HMM_IOVA_BITS - HMM_PAGE_SHIFT))
#define IOVA_FIRST 16ULL		/* page 0..15 never allocated */
#define IOVA_ALIGN_PAGES HMM_BLOCK_PAGES /* 2 MiB */
#define AS_PAGES (1ULL << (47 - HMM_PAGE_SHIFT)) /* a whole address space */
#define MAP_CHUNK 512			/* pages per hmm_range_fault */

struct iova_alloc {
	uint64_t start, n;		/* in pages */
	bool map;			/* a DMA map's: not the caller's to
					 * link, unlink or free */
};

struct hmm_iommu {
	pthread_mutex_t lock;		/* protects allocs, nallocs, cap, maps */
	struct hmm_pt *pt;		/* IOVA page -> host page | flags */
	struct iova_alloc *allocs;	/* sorted by start, disjoint */
	size_t nallocs, cap;
	unsigned maps;			/* DMA maps using it */
};

struct hmm_dma_map {
	struct hmm_interval_notifier notifier;
	struct hmm_iommu *mmu;
	hmm_device_t *dev;
	uintptr_t start, end;		/* the range mapped */
	uint64_t iova;			/* IOVA of start */
	const struct hmm_dma_map_ops *ops;
	void *priv;
	/* Serialises links with invalidations (see the top of the file). */
	pthread_mutex_t lock;
};

static bool bad_len(size_t len)
{
	return !len || (len & HMM_PAGE_MASK);
}

/* ---- IOMMU ---------------------------------------------------------------- */

int hmm_iommu_create(struct hmm_iommu **out)
{
	struct hmm_iommu *mmu;

	if (!out)
		return -EINVAL;
	mmu = calloc(1, sizeof(*mmu));
	if (!mmu)
		return -ENOMEM;
	if (hmm_pt_create(&mmu->pt)) {
		free(mmu);
		return -ENOMEM;
	}
	pthread_mutex_init(&mmu->lock, NULL);
	*out = mmu;
	return 0;
}

int hmm_iommu_destroy(struct hmm_iommu *mmu)
{
	if (!mmu)
		return -EINVAL;
	pthread_mutex_lock(&mmu->lock);
	if (mmu->maps) {
		pthread_mutex_unlock(&mmu->lock);
		return -EBUSY;
	}
	pthread_mutex_unlock(&mmu->lock);
	hmm_pt_destroy(mmu->pt);
	pthread_mutex_destroy(&mmu->lock);
	free(mmu->allocs);
	free(mmu);
	return 0;
}

/* The allocation holding pages [s, s + n), or NULL.  mmu->lock held. */
static struct iova_alloc *find_alloc(struct hmm_iommu *mmu, uint64_t s,
				     uint64_t n)
{
	size_t lo = 0, hi = mmu->nallocs;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		struct iova_alloc *a = &mmu->allocs[mid];

		if (s < a->start)
			hi = mid;
		else if (s >= a->start + a->n)
			lo = mid + 1;
		else
			return s + n <= a->start + a->n ? a : NULL;
	}
	return NULL;
}

/* Highest @align-aligned start of @n pages inside [lo, hi), or 0. */
static uint64_t fit_top(uint64_t lo, uint64_t hi, uint64_t n, uint64_t align)
{
	uint64_t s;

	if (hi < lo || hi - lo < n)
		return 0;
	s = (hi - n) & ~(align - 1);
	return s >= lo ? s : 0;
}

/* Reserve @n pages, top down.  mmu->lock held.  0, -ENOSPC or -ENOMEM. */
static int iova_reserve(struct hmm_iommu *mmu, uint64_t n, bool map,
			uint64_t *start)
{
	uint64_t align = n >= IOVA_ALIGN_PAGES ? IOVA_ALIGN_PAGES : 1;
	uint64_t hi = IOVA_PAGES, s = 0;
	size_t i = mmu->nallocs;

	/* Gaps from the top: above allocs[i - 1], below the previous. */
	for (;; i--) {
		uint64_t lo = i ? mmu->allocs[i - 1].start + mmu->allocs[i - 1].n
				: IOVA_FIRST;
		s = fit_top(lo, hi, n, align);
		if (s || !i)
			break;
		hi = mmu->allocs[i - 1].start;
	}
	if (!s)
		return -ENOSPC;
	if (mmu->nallocs == mmu->cap) {
		size_t cap = mmu->cap ? 2 * mmu->cap : 8;
		struct iova_alloc *a = realloc(mmu->allocs, cap * sizeof(*a));
		if (!a)
			return -ENOMEM;
		mmu->allocs = a;
		mmu->cap = cap;
	}
	memmove(&mmu->allocs[i + 1], &mmu->allocs[i],
		(mmu->nallocs - i) * sizeof(*mmu->allocs));
	mmu->allocs[i] = (struct iova_alloc){ .start = s, .n = n, .map = map };
	mmu->nallocs++;
	*start = s;
	return 0;
}

int hmm_iova_alloc(struct hmm_iommu *mmu, size_t len, uint64_t *iova)
{
	uint64_t s;
	int ret;

	if (!mmu || !iova || bad_len(len) ||
	    (uint64_t)len / HMM_PAGE_SIZE >= IOVA_PAGES)
		return -EINVAL;
	pthread_mutex_lock(&mmu->lock);
	ret = iova_reserve(mmu, len >> HMM_PAGE_SHIFT, false, &s);
	pthread_mutex_unlock(&mmu->lock);
	if (!ret)
		*iova = s << HMM_PAGE_SHIFT;
	return ret;
}

/* Free the allocation of exactly [iova, iova + len), a map's if @map. */
static int iova_free(struct hmm_iommu *mmu, uint64_t iova, size_t len,
		     bool map)
{
	uint64_t s = iova >> HMM_PAGE_SHIFT, n = len >> HMM_PAGE_SHIFT;
	struct iova_alloc *a;

	if (!mmu || bad_len(len) || (iova & HMM_PAGE_MASK))
		return -EINVAL;
	pthread_mutex_lock(&mmu->lock);
	a = find_alloc(mmu, s, n);
	if (!a || a->start != s || a->n != n || a->map != map) {
		pthread_mutex_unlock(&mmu->lock);
		return -EINVAL;
	}
	hmm_pt_clear(mmu->pt, s, s + n, NULL, NULL);
	size_t i = (size_t)(a - mmu->allocs);
	memmove(a, a + 1, (mmu->nallocs - i - 1) * sizeof(*a));
	mmu->nallocs--;
	if (map)
		mmu->maps--;
	pthread_mutex_unlock(&mmu->lock);
	return 0;
}

int hmm_iova_free(struct hmm_iommu *mmu, uint64_t iova, size_t len)
{
	return iova_free(mmu, iova, len, false);
}

/* Check that [iova, iova + len) lies in one allocation; its pages. */
static int iova_range(struct hmm_iommu *mmu, uint64_t iova, size_t len,
		      uint64_t *s, uint64_t *n)
{
	if (!mmu || bad_len(len) || (iova & HMM_PAGE_MASK) ||
	    iova + len < iova)
		return -EINVAL;
	*s = iova >> HMM_PAGE_SHIFT;
	*n = len >> HMM_PAGE_SHIFT;
	struct iova_alloc *a = find_alloc(mmu, *s, *n);
	return a && !a->map ? 0 : -EINVAL;
}

struct any_arg {
	bool found;
};

static void note_any(uint64_t vpn, uint64_t ent, void *arg)
{
	(void)vpn;
	(void)ent;
	((struct any_arg *)arg)->found = true;
}

/* Link @n pages at IOVA page @s to host page @hvpn on; entries built in
 * chunks.  The caller holds what excludes other links of these pages. */
static int link_pages(struct hmm_pt *pt, uint64_t s, uint64_t hvpn,
		      uint64_t n, uint64_t flags)
{
	uint64_t ents[MAP_CHUNK];

	for (uint64_t k = 0; k < n;) {
		uint64_t m = HMM_MIN(n - k, (uint64_t)MAP_CHUNK);
		int ret;

		for (uint64_t j = 0; j < m; j++)
			ents[j] = (hvpn + k + j) | flags;
		ret = hmm_pt_set(pt, s + k, m, ents);
		if (ret)
			return ret;
		k += m;
	}
	return 0;
}

static uint64_t prot_flags(unsigned int prot)
{
	return HMM_PTE_VALID | (prot & HMM_DMA_WRITE ? HMM_PTE_WRITE : 0);
}

int hmm_iova_link(struct hmm_iommu *mmu, uint64_t iova, const void *host,
		  size_t len, unsigned int prot)
{
	uintptr_t h = (uintptr_t)host;
	struct any_arg any = { false };
	uint64_t s, n;
	int ret;

	if (!host || (h & HMM_PAGE_MASK) || h + len < h ||
	    (prot != HMM_DMA_READ && prot != (HMM_DMA_READ | HMM_DMA_WRITE)))
		return -EINVAL;
	if (!mmu)
		return -EINVAL;
	pthread_mutex_lock(&mmu->lock);
	ret = iova_range(mmu, iova, len, &s, &n);
	if (!ret) {
		hmm_pt_walk(mmu->pt, s, s + n, note_any, &any);
		if (any.found)
			ret = -EEXIST;
	}
	if (!ret) {
		ret = link_pages(mmu->pt, s, h >> HMM_PAGE_SHIFT, n,
				 prot_flags(prot));
		if (ret) /* all or nothing */
			hmm_pt_clear(mmu->pt, s, s + n, NULL, NULL);
	}
	pthread_mutex_unlock(&mmu->lock);
	if (!ret)
		hmm__stat_add(HMM_STAT_dma_pages_linked, n);
	return ret;
}

long hmm_iova_unlink(struct hmm_iommu *mmu, uint64_t iova, size_t len)
{
	uint64_t s, n;
	long ret;

	if (!mmu)
		return -EINVAL;
	pthread_mutex_lock(&mmu->lock);
	ret = iova_range(mmu, iova, len, &s, &n);
	if (!ret)
		ret = hmm_pt_clear(mmu->pt, s, s + n, NULL, NULL);
	pthread_mutex_unlock(&mmu->lock);
	return ret;
}

/* The link of the page of @iova (0: none), in a read section of its own. */
static uint64_t link_of(struct hmm_iommu *mmu, uint64_t iova)
{
	uint64_t ent;

	if (iova >> HMM_IOVA_BITS)
		return 0;
	hmm_pt_read_lock();
	ent = hmm_pt_lookup(mmu->pt, iova >> HMM_PAGE_SHIFT);
	hmm_pt_read_unlock();
	return ent;
}

int hmm_iommu_translate(struct hmm_iommu *mmu, uint64_t iova,
			unsigned int access, void **host)
{
	uint64_t ent;

	if (!mmu || !host)
		return -EINVAL;
	ent = link_of(mmu, iova);
	if (!(ent & HMM_PTE_VALID)) {
		hmm__stat_add(HMM_STAT_iommu_faults, 1);
		return -EFAULT;
	}
	if ((access & HMM_DMA_WRITE) && !(ent & HMM_PTE_WRITE)) {
		hmm__stat_add(HMM_STAT_iommu_faults, 1);
		return -EPERM;
	}
	*host = (void *)(((ent & HMM_PTE_ADDR_MASK) << HMM_PAGE_SHIFT) |
			 (uintptr_t)(iova & HMM_PAGE_MASK));
	return 0;
}

/*
 * Translate the run of @n pages at @iova (page aligned) in one read
 * section: returns how many leading pages are linked for @access to host
 * pages contiguous with the first one's, whose address *@host gets.  0
 * counts as an IOMMU fault.
 */
size_t hmm__iommu_translate_run(struct hmm_iommu *mmu, uint64_t iova,
				size_t n, unsigned int access, char **host)
{
	uint64_t need = HMM_PTE_VALID |
			(access & HMM_DMA_WRITE ? HMM_PTE_WRITE : 0);
	uint64_t first = 0;
	size_t k;

	if ((iova >> HMM_IOVA_BITS) || n > IOVA_PAGES)
		n = 0;
	hmm_pt_read_lock();
	for (k = 0; k < n; k++) {
		uint64_t ent = hmm_pt_lookup(mmu->pt,
					     (iova >> HMM_PAGE_SHIFT) + k);
		if ((ent & need) != need)
			break;
		if (!k)
			first = ent & HMM_PTE_ADDR_MASK;
		else if ((ent & HMM_PTE_ADDR_MASK) != first + k)
			break;
	}
	hmm_pt_read_unlock();
	if (!k)
		hmm__stat_add(HMM_STAT_iommu_faults, 1);
	else
		*host = (char *)(uintptr_t)(first << HMM_PAGE_SHIFT);
	return k;
}

/* Whether the page of @iova is linked, for reading at least; counts no
 * fault. */
bool hmm__iommu_readable(struct hmm_iommu *mmu, uint64_t iova)
{
	return link_of(mmu, iova) & HMM_PTE_VALID;
}

/* ---- DMA maps ------------------------------------------------------------- */

static struct hmm_dma_map *map_of(struct hmm_interval_notifier *n)
{
	return (struct hmm_dma_map *)((char *)n -
				      offsetof(struct hmm_dma_map, notifier));
}

/* Unlink the IOVAs of [s, e) (inside the map).  map->lock held. */
static long map_unlink(struct hmm_dma_map *m, uintptr_t s, uintptr_t e)
{
	uint64_t is = (m->iova >> HMM_PAGE_SHIFT) +
		      ((s - m->start) >> HMM_PAGE_SHIFT);
	long n;

	/* The allocation is the map's for its life: no IOMMU lock is
	 * needed to know it, and the table serialises its writers. */
	n = hmm_pt_clear(m->mmu->pt, is, is + ((e - s) >> HMM_PAGE_SHIFT), NULL,
			 NULL);
	if (n > 0)
		hmm__stat_add(HMM_STAT_dma_pages_unlinked, (uint64_t)n);
	return n;
}

static bool map_invalidate(struct hmm_interval_notifier *sub,
			   const struct hmm_notifier_range *r,
			   unsigned long cur_seq)
{
	struct hmm_dma_map *m = map_of(sub);
	struct hmm_notifier_range clip = *r;

	clip.start = HMM_MAX(r->start & ~HMM_PAGE_MASK, m->start);
	clip.end = r->end >= m->end ? m->end
				     : (r->end + HMM_PAGE_MASK) & ~HMM_PAGE_MASK;
	/* Short and fault-free: fine for a non-blockable caller too. */
	pthread_mutex_lock(&m->lock);
	hmm_interval_set_seq(sub, cur_seq);
	if (clip.start < clip.end)
		map_unlink(m, clip.start, clip.end);
	pthread_mutex_unlock(&m->lock);
	if (clip.start >= clip.end || !m->ops || !m->ops->invalidate)
		return true;
	return m->ops->invalidate(m, &clip, m->priv);
}

static const struct hmm_interval_notifier_ops map_notifier_ops = {
	.invalidate = map_invalidate,
};

int hmm_dma_map_create(hmm_device_t *dev, struct hmm_iommu *mmu, void *addr,
		       size_t len, const struct hmm_dma_map_ops *ops,
		       void *priv, struct hmm_dma_map **out)
{
	uintptr_t s = (uintptr_t)addr;
	struct hmm_dma_map *m;
	uint64_t is;
	int ret;

	if (!mmu || !out)
		return -EINVAL;
	if (!s && !len)
		len = AS_PAGES << HMM_PAGE_SHIFT;
	if (bad_len(len) || (s & HMM_PAGE_MASK) || s + len < s ||
	    s + len > (AS_PAGES << HMM_PAGE_SHIFT))
		return -EINVAL;
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->mmu = mmu;
	m->dev = dev;
	m->start = s;
	m->end = s + len;
	m->ops = ops;
	m->priv = priv;
	pthread_mutex_init(&m->lock, NULL);
	pthread_mutex_lock(&mmu->lock);
	ret = iova_reserve(mmu, len >> HMM_PAGE_SHIFT, true, &is);
	if (!ret)
		mmu->maps++;
	pthread_mutex_unlock(&mmu->lock);
	if (ret) {
		pthread_mutex_destroy(&m->lock);
		free(m);
		return ret;
	}
	m->iova = is << HMM_PAGE_SHIFT;
	ret = hmm_interval_notifier_insert(&m->notifier, s, len,
					   &map_notifier_ops);
	if (ret) {
		iova_free(mmu, m->iova, len, true);
		pthread_mutex_destroy(&m->lock);
		free(m);
		return ret;
	}
	*out = m;
	return 0;
}

int hmm_dma_map_destroy(struct hmm_dma_map *m)
{
	struct hmm_iommu *mmu;

	if (!m)
		return -EINVAL;
	mmu = m->mmu;
	hmm_interval_notifier_remove(&m->notifier);
	/* Frees the allocation and unlinks what is left in it. */
	iova_free(mmu, m->iova, m->end - m->start, true);
	pthread_mutex_destroy(&m->lock);
	free(m);
	return 0;
}

uint64_t hmm_dma_map_iova(const struct hmm_dma_map *m, const void *addr)
{
	uintptr_t a = (uintptr_t)addr;

	if (!m || a < m->start || a >= m->end)
		return 0;
	return m->iova + (a - m->start);
}

unsigned long hmm_dma_map_begin(struct hmm_dma_map *m)
{
	return hmm_interval_read_begin(&m->notifier);
}

bool hmm_dma_map_retry(struct hmm_dma_map *m, unsigned long seq)
{
	return hmm_interval_read_retry(&m->notifier, seq);
}

/* Link the system pages of one hmm_range_fault answer and turn their
 * entries into IOVA entries.  map->lock held. */
static int link_answer(struct hmm_dma_map *m, uintptr_t s, uint64_t *ents,
		       size_t n)
{
	uint64_t base = (m->iova >> HMM_PAGE_SHIFT) +
			((s - m->start) >> HMM_PAGE_SHIFT);
	uint64_t linked = 0;

	for (size_t i = 0; i < n;) {
		uint64_t e = ents[i], f = e & (HMM_PFN_WRITE | HMM_PFN_VALID);
		size_t j = i + 1;

		if (!(e & HMM_PFN_VALID) || (e & HMM_PFN_DEVICE)) {
			i++;
			continue;
		}
		/* A run of system pages contiguous in the address space
		 * (they are: the frame of a system page is its own page
		 * number) with the same permission. */
		while (j < n && (ents[j] & HMM_PFN_VALID) &&
		       !(ents[j] & HMM_PFN_DEVICE) &&
		       (ents[j] & (HMM_PFN_WRITE | HMM_PFN_VALID)) == f)
			j++;
		int ret = link_pages(m->mmu->pt, base + i,
				     hmm_pfn_to_frame(e), j - i,
				     HMM_PTE_VALID |
					     (f & HMM_PFN_WRITE ? HMM_PTE_WRITE
								: 0));
		if (ret)
			return ret;
		for (size_t k = i; k < j; k++)
			ents[k] = (ents[k] & HMM_PFN_FLAGS) | (base + k);
		linked += j - i;
		i = j;
	}
	hmm__stat_add(HMM_STAT_dma_pages_linked, linked);
	return 0;
}

int hmm_dma_map_range(struct hmm_dma_map *m, unsigned long seq, void *addr,
		      size_t len, unsigned int flags, uint64_t *entries)
{
	uintptr_t s = (uintptr_t)addr;
	int ret;

	if (!m || !entries || bad_len(len) || (s & HMM_PAGE_MASK) ||
	    s < m->start || s + len < s || s + len > m->end ||
	    (flags & ~(HMM_DMA_READ | HMM_DMA_WRITE)))
		return -EINVAL;
	if (m->dev && atomic_load((_Atomic int *)&m->dev->closed))
		return -ENODEV;
	struct hmm_range r = {
		.notifier = &m->notifier,
		.notifier_seq = seq,
		.start = s,
		.end = s + len,
		.hmm_pfns = entries,
		.default_flags = HMM_PFN_REQ_FAULT |
				 (flags & HMM_DMA_WRITE ? HMM_PFN_REQ_WRITE : 0),
		.dev_private_owner = m->dev ? hmm_device_owner(m->dev) : NULL,
	};
	ret = hmm_range_fault(&r);
	if (ret)
		return ret;
	pthread_mutex_lock(&m->lock);
	if (hmm_interval_read_retry(&m->notifier, seq))
		ret = -EBUSY;
	else
		ret = link_answer(m, s, entries, len >> HMM_PAGE_SHIFT);
	pthread_mutex_unlock(&m->lock);
	return ret;
}

long hmm_dma_unmap_range(struct hmm_dma_map *m, void *addr, size_t len)
{
	uintptr_t s = (uintptr_t)addr;
	long n;

	if (!m || bad_len(len) || (s & HMM_PAGE_MASK) || s < m->start ||
	    s + len < s || s + len > m->end)
		return -EINVAL;
	pthread_mutex_lock(&m->lock);
	n = map_unlink(m, s, s + len);
	pthread_mutex_unlock(&m->lock);
	return n;
}
