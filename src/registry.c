/* SPDX-License-Identifier: MIT */
/*
 * The address-space registry: managed ranges (a sorted array under
 * ctx.ranges_lock) and 2 MiB blocks of per-page state (a two-level radix
 * table indexed by address, read without locks).
 *
 * Blocks are created on demand and never freed before hmm_fini, so a
 * pointer from hmm__block_lookup stays valid; this keeps the fault path
 * free of any global lock and independent of how many ranges exist.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#define VA_BITS 47
#define LEAF_BITS 13
#define TOP_BITS (VA_BITS - HMM_BLOCK_SHIFT - LEAF_BITS)
#define LEAF_SIZE (1UL << LEAF_BITS)

typedef _Atomic(struct hmm_block *) block_slot;
static _Atomic(block_slot *) top[1UL << TOP_BITS];

static bool split_index(uintptr_t addr, size_t *t, size_t *l)
{
	uintptr_t b = addr >> HMM_BLOCK_SHIFT;

	if (addr >> VA_BITS)
		return false;
	*t = b >> LEAF_BITS;
	*l = b & (LEAF_SIZE - 1);
	return true;
}

struct hmm_block *hmm__block_lookup(uintptr_t addr)
{
	size_t t, l;
	block_slot *leaf;

	if (!split_index(addr, &t, &l))
		return NULL;
	leaf = atomic_load_explicit(&top[t], memory_order_acquire);
	if (!leaf)
		return NULL;
	return atomic_load_explicit(&leaf[l], memory_order_acquire);
}

struct hmm_block *hmm__block_get(uintptr_t addr)
{
	size_t t, l;
	block_slot *leaf, *expect_leaf = NULL;
	struct hmm_block *b, *expect = NULL;

	if (!split_index(addr, &t, &l))
		return NULL;
	leaf = atomic_load_explicit(&top[t], memory_order_acquire);
	if (!leaf) {
		leaf = calloc(LEAF_SIZE, sizeof(*leaf));
		if (!leaf)
			return NULL;
		if (!atomic_compare_exchange_strong(&top[t], &expect_leaf,
						    leaf)) {
			free(leaf);
			leaf = expect_leaf;
		} else {
			hmm__stat_add(HMM_STAT_metadata_bytes,
				      LEAF_SIZE * sizeof(*leaf));
		}
	}
	b = atomic_load_explicit(&leaf[l], memory_order_acquire);
	if (b)
		return b;
	b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	b->base = addr & ~(HMM_BLOCK_SIZE - 1);
	pthread_mutex_init(&b->lock, NULL);
	pthread_cond_init(&b->cond, NULL);
	if (!atomic_compare_exchange_strong(&leaf[l], &expect, b)) {
		pthread_mutex_destroy(&b->lock);
		pthread_cond_destroy(&b->cond);
		free(b);
		b = expect;
	} else {
		hmm__stat_add(HMM_STAT_metadata_bytes, sizeof(*b));
	}
	return b;
}

void hmm__blocks_fork_child(void)
{
	for (size_t t = 0; t < (1UL << TOP_BITS); t++) {
		block_slot *leaf = atomic_load(&top[t]);
		for (size_t l = 0; leaf && l < LEAF_SIZE; l++) {
			struct hmm_block *b = atomic_load(&leaf[l]);
			if (!b)
				continue;
			pthread_mutex_init(&b->lock, NULL);
			pthread_cond_init(&b->cond, NULL);
			for (size_t i = 0; i < HMM_BLOCK_PAGES; i++) {
				b->state[i] &= (uint8_t)~PSF_WAITERS;
				/* holds are the parent's (a file page's
				 * protection stays) */
				b->mod[i] = PMOD_UNHOLD(b->mod[i]);
			}
		}
	}
}

void hmm__blocks_for_each(uintptr_t start, uintptr_t end,
			  void (*fn)(struct hmm_block *, uintptr_t, uintptr_t,
				     void *),
			  void *arg)
{
	uintptr_t pos = start;

	while (pos < end) {
		uintptr_t bend = (pos & ~(HMM_BLOCK_SIZE - 1)) + HMM_BLOCK_SIZE;
		struct hmm_block *b = hmm__block_lookup(pos);
		if (bend > end || bend < pos)
			bend = end;
		if (b)
			fn(b, pos, bend, arg);
		pos = bend;
	}
}

int hmm__pages_set_state(uintptr_t start, uintptr_t end, uint8_t state)
{
	int ret = 0;

	for (uintptr_t pos = start; pos < end;) {
		struct hmm_block *b = hmm__block_get(pos);
		uintptr_t bend = b ? b->base + HMM_BLOCK_SIZE : 0;
		if (!b)
			return -ENOMEM;
		if (bend > end)
			bend = end;
		pthread_mutex_lock(&b->lock);
		for (uintptr_t p = pos; p < bend; p += HMM_PAGE_SIZE) {
			uint8_t *st = &b->state[hmm__block_index(p)];
			/* A page on a device or in flight is not ours to
			 * overwrite: its owner settles it. */
			if (PS_KIND(*st) == PS_DEVICE ||
			    PS_KIND(*st) == PS_MIGRATING)
				ret = -EAGAIN;
			else {
				*st = state;
				b->mod[hmm__block_index(p)] = 0;
			}
		}
		pthread_mutex_unlock(&b->lock);
		pos = bend;
	}
	return ret;
}

/* ---- ranges: sorted, disjoint, under hmm__ctx.ranges_lock ------------ */

struct hmm_mrange *hmm__ranges_copy(size_t *n)
{
	struct hmm_mrange *copy;

	pthread_rwlock_rdlock(&hmm__ctx.ranges_lock);
	*n = hmm__ctx.nranges;
	copy = malloc(*n * sizeof(*copy) + 1);
	if (copy && *n)
		memcpy(copy, hmm__ctx.ranges, *n * sizeof(*copy));
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	if (!copy)
		*n = 0;
	return copy;
}

/* Index of the first range whose end is above @addr. */
static size_t range_lower(uintptr_t addr)
{
	size_t lo = 0, hi = hmm__ctx.nranges;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (hmm__ctx.ranges[mid].end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

struct hmm_mrange *hmm__range_find(uintptr_t addr)
{
	size_t i = range_lower(addr);

	if (i < hmm__ctx.nranges && hmm__ctx.ranges[i].start <= addr)
		return &hmm__ctx.ranges[i];
	return NULL;
}

bool hmm__range_is_shmem(uintptr_t addr)
{
	struct hmm_mrange *r;
	bool shm;

	pthread_rwlock_rdlock(&hmm__ctx.ranges_lock);
	r = hmm__range_find(addr);
	shm = r && (r->kind == HMM_MK_SHMEM || r->kind == HMM_MK_FILE ||
		    (r->kind == HMM_MK_FPROT && !r->alloc->priv));
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	return shm;
}

int hmm__range_kind(uintptr_t addr)
{
	struct hmm_mrange *r;
	int kind;

	pthread_rwlock_rdlock(&hmm__ctx.ranges_lock);
	r = hmm__range_find(addr);
	kind = r ? (int)r->kind : -1;
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	return kind;
}

bool hmm__ranges_overlap(uintptr_t start, uintptr_t end)
{
	size_t i = range_lower(start);

	return i < hmm__ctx.nranges && hmm__ctx.ranges[i].start < end;
}

int hmm__ranges_cover(uintptr_t start, uintptr_t end)
{
	size_t i = range_lower(start);
	uintptr_t pos = start;

	for (; i < hmm__ctx.nranges && pos < end; i++) {
		if (hmm__ctx.ranges[i].start > pos)
			return -ENOENT;
		pos = hmm__ctx.ranges[i].end;
	}
	return pos >= end ? 0 : -ENOENT;
}

static int ranges_reserve(size_t more)
{
	struct hmm_context *c = &hmm__ctx;
	size_t need = c->nranges + more, cap;
	struct hmm_mrange *nr;

	if (need <= c->ranges_cap)
		return 0;
	cap = c->ranges_cap ? c->ranges_cap * 2 : 64;
	while (cap < need)
		cap *= 2;
	nr = realloc(c->ranges, cap * sizeof(*nr));
	if (!nr)
		return -ENOMEM;
	c->ranges = nr;
	c->ranges_cap = cap;
	return 0;
}

int hmm__range_insert(uintptr_t start, uintptr_t end, enum hmm_mkind kind,
		      struct hmm_alloc *alloc, uint64_t off)
{
	struct hmm_context *c = &hmm__ctx;
	size_t i = range_lower(start);

	if (ranges_reserve(1))
		return -ENOMEM;
	memmove(&c->ranges[i + 1], &c->ranges[i],
		(c->nranges - i) * sizeof(c->ranges[0]));
	c->ranges[i] = (struct hmm_mrange){ start, end, kind, alloc, off };
	c->nranges++;
	if (alloc)
		alloc->refs++;
	return 0;
}

bool hmm__range_get(uintptr_t addr, struct hmm_mrange *out)
{
	struct hmm_context *c = &hmm__ctx;
	struct hmm_mrange *r;
	bool found = false;

	/* The read lock: a reference is taken atomically, and the last one
	 * is dropped under the write lock (hmm__range_put). */
	pthread_rwlock_rdlock(&c->ranges_lock);
	r = hmm__range_find(addr);
	for (size_t i = 0; !r && i < c->nretired; i++)
		if (c->retired[i].start <= addr && addr < c->retired[i].end)
			r = &c->retired[i];
	if (r) {
		*out = *r;
		if (out->alloc)
			out->alloc->refs++;
		found = true;
	} else {
		size_t i = range_lower(addr);
		*out = (struct hmm_mrange){ .start = addr, .kind = HMM_MK_ANON,
					    .end = i < c->nranges
							   ? c->ranges[i].start
							   : UINTPTR_MAX };
		for (size_t k = 0; k < c->nretired; k++)
			if (c->retired[k].start > addr &&
			    c->retired[k].start < out->end)
				out->end = c->retired[k].start;
	}
	pthread_rwlock_unlock(&c->ranges_lock);
	return found;
}

void hmm__range_put(struct hmm_mrange *r)
{
	if (!r->alloc)
		return;
	/* Not the last reference: no lock. */
	int v = atomic_load(&r->alloc->refs);
	while (v > 1)
		if (atomic_compare_exchange_weak(&r->alloc->refs, &v, v - 1)) {
			r->alloc = NULL;
			return;
		}
	pthread_rwlock_wrlock(&hmm__ctx.ranges_lock);
	hmm__alloc_put(r->alloc);
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	r->alloc = NULL;
}

int hmm__retired_push(const struct hmm_mrange *r)
{
	struct hmm_context *c = &hmm__ctx;

	if (c->nretired == c->retired_cap) {
		size_t cap = c->retired_cap ? 2 * c->retired_cap : 8;
		struct hmm_mrange *n = realloc(c->retired, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		c->retired = n;
		c->retired_cap = cap;
	}
	c->retired[c->nretired] = *r;
	if (r->alloc)
		r->alloc->refs++;
	c->nretired++;
	return 0;
}

void hmm__retired_pop(uintptr_t start)
{
	struct hmm_context *c = &hmm__ctx;

	for (size_t i = 0; i < c->nretired; i++)
		if (c->retired[i].start == start) {
			hmm__alloc_put(c->retired[i].alloc);
			c->retired[i] = c->retired[--c->nretired];
			return;
		}
}

void hmm__alloc_put(struct hmm_alloc *a)
{
	if (!a || --a->refs > 0)
		return;
	if (a->file) {
		hmm__file_slot_put(&a->obj);
		atomic_fetch_sub(&hmm__file_ranges, 1);
		if (a->sync_each)
			atomic_fetch_sub(&hmm__file_sync_each, 1);
	}
	if (a->host_reg) /* drivers unpin it first (hostreg.c) */
		hmm__host_region_remove(a->alias, a->len);
	if (a->alias)
		hmm__munmap_own(a->alias, a->len);
	if (a->memfd >= 0)
		close(a->memfd);
	free(a);
}

int hmm__range_trim(uintptr_t start, uintptr_t end)
{
	struct hmm_context *c = &hmm__ctx;
	size_t i = range_lower(start);

	hmm__advice_forget(start, end);

	while (i < c->nranges && c->ranges[i].start < end) {
		struct hmm_mrange *r = &c->ranges[i];
		if (r->start < start && r->end > end) {
			/* Split in two: keep [r->start, start), add [end, r->end). */
			struct hmm_mrange tail = *r;
			if (ranges_reserve(1))
				return -ENOMEM;
			r = &c->ranges[i];
			tail.start = end;
			tail.off += end - r->start;
			r->end = start;
			memmove(&c->ranges[i + 2], &c->ranges[i + 1],
				(c->nranges - i - 1) * sizeof(c->ranges[0]));
			c->ranges[i + 1] = tail;
			c->nranges++;
			if (tail.alloc)
				tail.alloc->refs++;
			return 0;
		}
		if (r->start < start) {
			r->end = start;
			i++;
		} else if (r->end > end) {
			r->off += end - r->start;
			r->start = end;
			i++;
		} else {
			struct hmm_alloc *a = r->alloc;
			memmove(r, r + 1,
				(c->nranges - i - 1) * sizeof(c->ranges[0]));
			c->nranges--;
			hmm__alloc_put(a);
		}
	}
	return 0;
}

void hmm__ranges_free_all(void)
{
	struct hmm_context *c = &hmm__ctx;

	hmm__advice_forget(0, UINTPTR_MAX);
	for (size_t i = 0; i < c->nranges; i++)
		hmm__alloc_put(c->ranges[i].alloc);
	free(c->ranges);
	c->ranges = NULL;
	c->nranges = c->ranges_cap = 0;
}
