/* SPDX-License-Identifier: MIT */
/*
 * The driver kit's device page table (include/hmm/hmm_pt.h): four levels
 * of 512 slots (9 bits each), the last holding the entries.  Slots are
 * 64-bit atomics (a directory's address, or an entry); writers hold
 * pt->lock, readers are userspace-RCU read sections (liburcu, bulletproof
 * flavour), and unlinked directories wait in pt->garbage until a grace
 * period has passed (hmm_pt_reclaim).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include <urcu/urcu-bp.h>

#include "hmm/hmm_pt.h"
#include "internal.h"

#define LVL_BITS 9
#define LVL_SIZE (1u << LVL_BITS)
#define LEVELS 4
#define GARBAGE_MAX 64	/* set reclaims once this many wait */

struct pt_dir {
	_Atomic uint64_t slot[LVL_SIZE]; /* child address, or entry (last) */
	unsigned used;			 /* non-empty slots (pt->lock) */
	struct pt_dir *next;		 /* in pt->garbage */
};

struct hmm_pt {
	pthread_mutex_t lock;		/* writers; protects the fields below */
	_Atomic uint64_t root;		/* struct pt_dir *, or 0 */
	_Atomic uint64_t entries;	/* read without the lock by count() */
	_Atomic uint64_t dirs;
	struct pt_dir *garbage;		/* unlinked, not yet freed */
	size_t ngarbage;
};

/* ThreadSanitizer does not see liburcu's grace periods: say that every
 * read section ends before the frees that follow synchronize_rcu. */
#ifdef HMM_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
static char rcu_token;
#define RCU_READ_END() __tsan_release(&rcu_token)
#define RCU_GRACE_DONE() __tsan_acquire(&rcu_token)
#else
#define RCU_READ_END() ((void)0)
#define RCU_GRACE_DONE() ((void)0)
#endif

static unsigned slot_of(uint64_t vpn, int level)
{
	return (unsigned)(vpn >> ((LEVELS - 1 - level) * LVL_BITS)) &
	       (LVL_SIZE - 1);
}

static struct pt_dir *child(const struct pt_dir *d, unsigned i)
{
	return (struct pt_dir *)(uintptr_t)atomic_load_explicit(
		&((struct pt_dir *)d)->slot[i], memory_order_acquire);
}

void hmm_pt_read_lock(void)
{
	urcu_bp_read_lock();
}

void hmm_pt_read_unlock(void)
{
	RCU_READ_END();
	urcu_bp_read_unlock();
}

int hmm_pt_create(struct hmm_pt **out)
{
	struct hmm_pt *pt;

	if (!out)
		return -EINVAL;
	pt = calloc(1, sizeof(*pt));
	if (!pt)
		return -ENOMEM;
	pthread_mutex_init(&pt->lock, NULL);
	*out = pt;
	return 0;
}

static struct pt_dir *dir_new(struct hmm_pt *pt)
{
	struct pt_dir *d = calloc(1, sizeof(*d));

	if (d) {
		atomic_fetch_add(&pt->dirs, 1);
		hmm__stat_add(HMM_STAT_metadata_bytes, sizeof(*d));
	}
	return d;
}

static void dir_free(struct hmm_pt *pt, struct pt_dir *d)
{
	atomic_fetch_sub(&pt->dirs, 1);
	hmm__stat_sub(HMM_STAT_metadata_bytes, sizeof(*d));
	free(d);
}

/* The leaf directory of @vpn, created as needed (pt->lock held). */
static struct pt_dir *leaf_get(struct hmm_pt *pt, uint64_t vpn)
{
	_Atomic uint64_t *slot = &pt->root;
	struct pt_dir *parent = NULL, *d = NULL;

	for (int l = 0; l < LEVELS; l++) {
		d = (struct pt_dir *)(uintptr_t)atomic_load_explicit(
			slot, memory_order_relaxed);
		if (!d) {
			d = dir_new(pt);
			if (!d)
				return NULL;
			/* Published complete (zeroed) to readers. */
			atomic_store_explicit(slot, (uint64_t)(uintptr_t)d,
					      memory_order_release);
			if (parent)
				parent->used++;
		}
		if (l == LEVELS - 1)
			break;
		parent = d;
		slot = &d->slot[slot_of(vpn, l)];
	}
	return d;
}

static void reclaim_locked(struct hmm_pt *pt)
{
	struct pt_dir *list = pt->garbage;

	if (!list)
		return;
	pt->garbage = NULL;
	pt->ngarbage = 0;
	urcu_bp_synchronize_rcu();
	RCU_GRACE_DONE();
	while (list) {
		struct pt_dir *next = list->next;
		dir_free(pt, list);
		list = next;
	}
}

int hmm_pt_set(struct hmm_pt *pt, uint64_t vpn, uint64_t n,
	       const uint64_t *entries)
{
	uint64_t end = vpn + n;

	if (!pt || (n && !entries) || end < vpn ||
	    end > (1ULL << HMM_PT_VPN_BITS))
		return -EINVAL;
	for (uint64_t k = 0; k < n; k++)
		if (!entries[k])
			return -EINVAL;
	pthread_mutex_lock(&pt->lock);
	if (pt->ngarbage >= GARBAGE_MAX)
		reclaim_locked(pt);
	/* Directories first: a failure then changes no entry. */
	for (uint64_t v = vpn; v < end; v = (v | (LVL_SIZE - 1)) + 1)
		if (!leaf_get(pt, v)) {
			pthread_mutex_unlock(&pt->lock);
			return -ENOMEM;
		}
	/* Plain loads and release stores, no locked instruction per entry:
	 * writers hold pt->lock, readers only need each entry whole, and
	 * the one lock-free writer (hmm_pt_mark_dirty) changes only entries
	 * that are not empty, so whether a slot was empty cannot change
	 * under us. */
	uint64_t added = 0;
	for (uint64_t v = vpn; v < end;) {
		struct pt_dir *leaf = leaf_get(pt, v);
		uint64_t stop = HMM_MIN(end, (v | (LVL_SIZE - 1)) + 1);
		unsigned fresh = 0;
		for (; v < stop; v++) {
			_Atomic uint64_t *e =
				&leaf->slot[slot_of(v, LEVELS - 1)];
			fresh += !atomic_load_explicit(e, memory_order_relaxed);
			atomic_store_explicit(e, entries[v - vpn],
					      memory_order_release);
		}
		leaf->used += fresh;
		added += fresh;
	}
	if (added)
		atomic_fetch_add_explicit(&pt->entries, added,
					  memory_order_relaxed);
	pthread_mutex_unlock(&pt->lock);
	return 0;
}

uint64_t hmm_pt_lookup(struct hmm_pt *pt, uint64_t vpn)
{
	const struct pt_dir *d;

	if (!pt || vpn >> HMM_PT_VPN_BITS)
		return 0;
	d = (const struct pt_dir *)(uintptr_t)atomic_load_explicit(
		&pt->root, memory_order_acquire);
	for (int l = 0; d && l < LEVELS - 1; l++)
		d = child(d, slot_of(vpn, l));
	if (!d)
		return 0;
	return atomic_load_explicit(
		&((struct pt_dir *)d)->slot[slot_of(vpn, LEVELS - 1)],
		memory_order_acquire);
}

int hmm_pt_mark_dirty(struct hmm_pt *pt, uint64_t vpn)
{
	struct pt_dir *d;
	_Atomic uint64_t *e;
	uint64_t old;

	if (!pt || vpn >> HMM_PT_VPN_BITS)
		return -EINVAL;
	d = (struct pt_dir *)(uintptr_t)atomic_load_explicit(
		&pt->root, memory_order_acquire);
	for (int l = 0; d && l < LEVELS - 1; l++)
		d = child(d, slot_of(vpn, l));
	if (!d)
		return -ENOENT;
	e = &d->slot[slot_of(vpn, LEVELS - 1)];
	old = atomic_load_explicit(e, memory_order_relaxed);
	do {
		if (!old)
			return -ENOENT; /* cleared meanwhile */
	} while (!atomic_compare_exchange_weak(e, &old, old | HMM_PTE_DIRTY));
	return 0;
}

/*
 * Visit [s, e) under @d (at @level, covering page numbers from @base).
 * @op: 0 clear (unlinking emptied directories), 1 harvest dirty bits,
 * 2 walk.  Returns true if @d became empty and was unlinked by the caller.
 */
struct visit {
	int op;
	hmm_pt_fn fn;
	void *arg;
	long count;
};

static bool visit(struct hmm_pt *pt, struct pt_dir *d, int level,
		  uint64_t base, uint64_t s, uint64_t e, struct visit *v)
{
	uint64_t span = 1ULL << ((LEVELS - 1 - level) * LVL_BITS);
	unsigned first = s > base ? (unsigned)((s - base) / span) : 0;
	uint64_t last = (e - base + span - 1) / span;

	if (last > LVL_SIZE)
		last = LVL_SIZE;
	for (unsigned i = first; i < last; i++) {
		uint64_t lo = base + i * span;
		if (level == LEVELS - 1) {
			_Atomic uint64_t *ent = &d->slot[i];
			uint64_t old;
			if (v->op == 0) {
				old = atomic_exchange(ent, 0);
				if (!old)
					continue;
				d->used--;
				atomic_fetch_sub_explicit(&pt->entries, 1,
							  memory_order_relaxed);
				v->count++;
				if ((old & HMM_PTE_DIRTY) && v->fn)
					v->fn(lo, old, v->arg);
			} else if (v->op == 1) {
				old = atomic_fetch_and(ent, ~HMM_PTE_DIRTY);
				if (old & HMM_PTE_DIRTY) {
					v->count++;
					if (v->fn)
						v->fn(lo, old & ~HMM_PTE_DIRTY,
						      v->arg);
				}
			} else {
				old = atomic_load_explicit(
					ent, memory_order_acquire);
				if (old) {
					v->count++;
					v->fn(lo, old, v->arg);
				}
			}
			continue;
		}
		struct pt_dir *c = child(d, i);
		if (c && visit(pt, c, level + 1, lo, s, e, v)) {
			atomic_store_explicit(&d->slot[i], 0,
					      memory_order_release);
			d->used--;
			c->next = pt->garbage;
			pt->garbage = c;
			pt->ngarbage++;
		}
	}
	return v->op == 0 && d->used == 0;
}

static long visit_range(struct hmm_pt *pt, uint64_t start, uint64_t end,
			struct visit *v)
{
	struct pt_dir *root;

	if (!pt || start > end || end > (1ULL << HMM_PT_VPN_BITS))
		return -EINVAL;
	if (v->op == 2) {
		hmm_pt_read_lock();
	} else {
		pthread_mutex_lock(&pt->lock);
	}
	root = (struct pt_dir *)(uintptr_t)atomic_load_explicit(
		&pt->root, memory_order_acquire);
	if (root && start < end && visit(pt, root, 0, 0, start, end, v)) {
		atomic_store_explicit(&pt->root, 0, memory_order_release);
		root->next = pt->garbage;
		pt->garbage = root;
		pt->ngarbage++;
	}
	if (v->op == 2)
		hmm_pt_read_unlock();
	else
		pthread_mutex_unlock(&pt->lock);
	return v->count;
}

long hmm_pt_clear(struct hmm_pt *pt, uint64_t start, uint64_t end,
		  hmm_pt_fn dirty, void *arg)
{
	struct visit v = { .op = 0, .fn = dirty, .arg = arg };

	return visit_range(pt, start, end, &v);
}

long hmm_pt_harvest_dirty(struct hmm_pt *pt, uint64_t start, uint64_t end,
			  hmm_pt_fn fn, void *arg)
{
	struct visit v = { .op = 1, .fn = fn, .arg = arg };

	return visit_range(pt, start, end, &v);
}

long hmm_pt_walk(struct hmm_pt *pt, uint64_t start, uint64_t end,
		 hmm_pt_fn fn, void *arg)
{
	struct visit v = { .op = 2, .fn = fn, .arg = arg };

	if (!fn)
		return -EINVAL;
	return visit_range(pt, start, end, &v);
}

void hmm_pt_reclaim(struct hmm_pt *pt)
{
	if (!pt)
		return;
	pthread_mutex_lock(&pt->lock);
	reclaim_locked(pt);
	pthread_mutex_unlock(&pt->lock);
}

uint64_t hmm_pt_count(struct hmm_pt *pt)
{
	return pt ? atomic_load_explicit(&pt->entries, memory_order_relaxed)
		  : 0;
}

size_t hmm_pt_bytes(struct hmm_pt *pt)
{
	return pt ? (size_t)atomic_load_explicit(&pt->dirs,
						 memory_order_relaxed) *
			    sizeof(struct pt_dir)
		  : 0;
}

void hmm_pt_destroy(struct hmm_pt *pt)
{
	struct visit v = { .op = 0 };

	if (!pt)
		return;
	visit_range(pt, 0, 1ULL << HMM_PT_VPN_BITS, &v);
	/* No reader is left (the caller's promise): free at once. */
	while (pt->garbage) {
		struct pt_dir *next = pt->garbage->next;
		dir_free(pt, pt->garbage);
		pt->garbage = next;
	}
	pthread_mutex_destroy(&pt->lock);
	free(pt);
}
