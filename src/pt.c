/* SPDX-License-Identifier: MIT */
/*
 * The driver kit's device page table (include/hmm/hmm_pt.h): four levels
 * of 512 slots (9 bits each), the last holding the entries.  Slots are
 * 64-bit atomics (a directory's address, or an entry); writers hold
 * pt->lock, readers are userspace-RCU read sections (liburcu, bulletproof
 * flavour), and unlinked directories wait in pt->garbage until a grace
 * period has passed (hmm_pt_reclaim).
 *
 * Compact leaves.  Most leaves hold addresses that run on from one base:
 * an IOMMU's links of a DMA map (host page = base + offset), a device's
 * translations of system memory through its IOVA window.  Such a leaf is
 * made compact (struct pt_cleaf): the address of slot 0 once, and per
 * slot only the flag bits (2 bytes instead of 8: a quarter of the
 * memory).  Its parent slot holds its address with bit 0 set.  An entry
 * that does not fit (another address) turns it into a full leaf, under
 * pt->lock: the full copy is published in the parent and the compact one
 * waits for a grace period like any unlinked directory.  A dirty mark
 * made meanwhile on the compact leaf is not lost: the writer copies,
 * publishes the copy in cl->fwd, then looks at the compact marks again;
 * hmm_pt_mark_dirty looks at fwd after its mark (all sequentially
 * consistent): either the second look saw the mark, or the marker sees
 * fwd (and the copy through it) and marks the full leaf too.
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

/* Compact leaf: entry i = (fl[i] & CL_FLAGS) << 52 | (base + i) when
 * fl[i] has CL_PRESENT. */
#define CL_PRESENT 0x8000u
#define CL_FLAGS 0x0fffu
#define CL_SHIFT 52
#define CL_TAG 1u
struct pt_cleaf {
	uint64_t base;			 /* address of slot 0; never changes */
	_Atomic uint16_t fl[LVL_SIZE];
	unsigned used;			 /* present slots (pt->lock) */
	_Atomic(struct pt_dir *) fwd;	 /* the full leaf that replaced it */
	struct pt_cleaf *next;		 /* in pt->cgarbage */
};

struct hmm_pt {
	pthread_mutex_t lock;		/* writers; protects the fields below */
	_Atomic uint64_t root;		/* struct pt_dir *, or 0 */
	_Atomic uint64_t entries;	/* read without the lock by count() */
	_Atomic uint64_t dirs, cleaves;
	struct pt_dir *garbage;		/* unlinked, not yet freed */
	struct pt_cleaf *cgarbage;	/* the same, compact leaves */
	size_t ngarbage;
};

static bool is_compact(uint64_t slotval)
{
	return slotval & CL_TAG;
}

static struct pt_cleaf *cleaf_of(uint64_t slotval)
{
	return (struct pt_cleaf *)(uintptr_t)(slotval & ~(uint64_t)CL_TAG);
}

static uint64_t cl_entry(const struct pt_cleaf *c, unsigned i, uint16_t f)
{
	return (f & CL_PRESENT) ? ((uint64_t)(f & CL_FLAGS) << CL_SHIFT) |
					  (c->base + i)
				: 0;
}

/* Whether @e fits slot @i of a compact leaf based at @base. */
static bool cl_fits(uint64_t base, unsigned i, uint64_t e)
{
	return (e & HMM_PTE_ADDR_MASK) == base + i;
}

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

/* A directory's child above the leaves (never tagged). */
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

static struct pt_cleaf *cleaf_new(struct hmm_pt *pt, uint64_t base)
{
	struct pt_cleaf *c = calloc(1, sizeof(*c));

	if (c) {
		c->base = base;
		atomic_fetch_add(&pt->cleaves, 1);
		hmm__stat_add(HMM_STAT_metadata_bytes, sizeof(*c));
	}
	return c;
}

static void cleaf_free(struct hmm_pt *pt, struct pt_cleaf *c)
{
	atomic_fetch_sub(&pt->cleaves, 1);
	hmm__stat_sub(HMM_STAT_metadata_bytes, sizeof(*c));
	free(c);
}

/* The slot of @vpn's leaf in its parent directory, the directories
 * above created as needed; *@parent gets that directory (pt->lock
 * held).  NULL on -ENOMEM. */
static _Atomic uint64_t *leaf_slot(struct hmm_pt *pt, uint64_t vpn,
				   struct pt_dir **parent)
{
	_Atomic uint64_t *slot = &pt->root;
	struct pt_dir *up = NULL, *d;

	for (int l = 0; l < LEVELS - 1; l++) {
		d = (struct pt_dir *)(uintptr_t)atomic_load_explicit(
			slot, memory_order_relaxed);
		if (!d) {
			d = dir_new(pt);
			if (!d)
				return NULL;
			/* Published complete (zeroed) to readers. */
			atomic_store_explicit(slot, (uint64_t)(uintptr_t)d,
					      memory_order_release);
			if (up)
				up->used++;
		}
		up = d;
		slot = &d->slot[slot_of(vpn, l)];
	}
	*parent = up;
	return slot;
}

/* A compact leaf replaced by a full one with the same entries (see the
 * top of the file for the dirty marks made meanwhile).  pt->lock. */
static struct pt_dir *cleaf_expand(struct hmm_pt *pt, _Atomic uint64_t *slot,
				   struct pt_cleaf *c)
{
	struct pt_dir *d = dir_new(pt);

	if (!d)
		return NULL;
	for (unsigned i = 0; i < LVL_SIZE; i++) {
		uint64_t e = cl_entry(c, i, atomic_load(&c->fl[i]));
		atomic_store_explicit(&d->slot[i], e, memory_order_relaxed);
	}
	/* Marks made after the copy: a marker that sees fwd marks the
	 * full leaf too (the copy is visible to it through fwd); one that
	 * does not made its mark before this second look, which sees it. */
	atomic_store(&c->fwd, d);
	for (unsigned i = 0; i < LVL_SIZE; i++)
		if (atomic_load(&c->fl[i]) & (HMM_PTE_DIRTY >> CL_SHIFT))
			atomic_fetch_or(&d->slot[i], HMM_PTE_DIRTY);
	d->used = c->used;
	atomic_store_explicit(slot, (uint64_t)(uintptr_t)d,
			      memory_order_release);
	c->next = pt->cgarbage;
	pt->cgarbage = c;
	pt->ngarbage++;
	return d;
}

/*
 * Make the leaf of [v, stop) (one leaf's span) ready to take
 * @entries[0 .. stop - v): created (compact if the entries' addresses run
 * on from one base), or a compact one expanded if they do not fit it.
 * The table's entries do not change.  0 or -ENOMEM.  pt->lock.
 */
static int leaf_prepare(struct hmm_pt *pt, uint64_t v, uint64_t stop,
			const uint64_t *entries)
{
	struct pt_dir *parent;
	_Atomic uint64_t *slot = leaf_slot(pt, v, &parent);
	unsigned i0 = slot_of(v, LEVELS - 1);
	uint64_t lv, base = (entries[0] & HMM_PTE_ADDR_MASK) - i0;
	bool run = (entries[0] & HMM_PTE_ADDR_MASK) >= i0 &&
		   base <= HMM_PTE_ADDR_MASK - LVL_SIZE;

	if (!slot)
		return -ENOMEM;
	lv = atomic_load_explicit(slot, memory_order_relaxed);
	if (lv && !is_compact(lv))
		return 0;
	if (lv)
		base = cleaf_of(lv)->base;
	for (uint64_t k = 0; run && k < stop - v; k++)
		run = cl_fits(base, i0 + (unsigned)k, entries[k]);
	if (lv)
		return run || cleaf_expand(pt, slot, cleaf_of(lv)) ? 0
								    : -ENOMEM;
	if (run) {
		struct pt_cleaf *c = cleaf_new(pt, base);
		if (!c)
			return -ENOMEM;
		atomic_store_explicit(slot, (uint64_t)(uintptr_t)c | CL_TAG,
				      memory_order_release);
	} else {
		struct pt_dir *d = dir_new(pt);
		if (!d)
			return -ENOMEM;
		atomic_store_explicit(slot, (uint64_t)(uintptr_t)d,
				      memory_order_release);
	}
	parent->used++;
	return 0;
}

/* Free the unlinked directories and compact leaves of @list and @clist. */
static void garbage_free(struct hmm_pt *pt, struct pt_dir *list,
			 struct pt_cleaf *clist)
{
	while (list) {
		struct pt_dir *next = list->next;
		dir_free(pt, list);
		list = next;
	}
	while (clist) {
		struct pt_cleaf *next = clist->next;
		cleaf_free(pt, clist);
		clist = next;
	}
}

static void reclaim_locked(struct hmm_pt *pt)
{
	struct pt_dir *list = pt->garbage;
	struct pt_cleaf *clist = pt->cgarbage;

	if (!list && !clist)
		return;
	pt->garbage = NULL;
	pt->cgarbage = NULL;
	pt->ngarbage = 0;
	urcu_bp_synchronize_rcu();
	RCU_GRACE_DONE();
	garbage_free(pt, list, clist);
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
	for (uint64_t v = vpn; v < end; v = (v | (LVL_SIZE - 1)) + 1) {
		uint64_t stop = HMM_MIN(end, (v | (LVL_SIZE - 1)) + 1);
		if (leaf_prepare(pt, v, stop, entries + (v - vpn))) {
			pthread_mutex_unlock(&pt->lock);
			return -ENOMEM;
		}
	}
	/* Plain loads and release stores, no locked instruction per entry:
	 * writers hold pt->lock, readers only need each entry whole, and
	 * the one lock-free writer (hmm_pt_mark_dirty) changes only entries
	 * that are not empty, so whether a slot was empty cannot change
	 * under us. */
	uint64_t added = 0;
	for (uint64_t v = vpn; v < end;) {
		struct pt_dir *parent;
		uint64_t lv = atomic_load_explicit(leaf_slot(pt, v, &parent),
						   memory_order_relaxed);
		struct pt_dir *leaf = (struct pt_dir *)(uintptr_t)lv;
		uint64_t stop = HMM_MIN(end, (v | (LVL_SIZE - 1)) + 1);
		unsigned fresh = 0;
		if (is_compact(lv)) {
			struct pt_cleaf *c = cleaf_of(lv);
			for (; v < stop; v++) {
				_Atomic uint16_t *f =
					&c->fl[slot_of(v, LEVELS - 1)];
				fresh += !(atomic_load_explicit(
						   f, memory_order_relaxed) &
					   CL_PRESENT);
				atomic_store_explicit(
					f,
					(uint16_t)(CL_PRESENT |
						   (entries[v - vpn] >>
						    CL_SHIFT)),
					memory_order_release);
			}
			c->used += fresh;
			added += fresh;
			continue;
		}
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

/* The slot value of @vpn's leaf in its parent (tagged if compact), or 0;
 * in a read section. */
static uint64_t leaf_of(struct hmm_pt *pt, uint64_t vpn)
{
	const struct pt_dir *d = (const struct pt_dir *)(uintptr_t)
		atomic_load_explicit(&pt->root, memory_order_acquire);

	for (int l = 0; d && l < LEVELS - 2; l++)
		d = child(d, slot_of(vpn, l));
	if (!d)
		return 0;
	return atomic_load_explicit(
		&((struct pt_dir *)d)->slot[slot_of(vpn, LEVELS - 2)],
		memory_order_acquire);
}

uint64_t hmm_pt_lookup(struct hmm_pt *pt, uint64_t vpn)
{
	unsigned i = slot_of(vpn, LEVELS - 1);
	uint64_t lv;

	if (!pt || vpn >> HMM_PT_VPN_BITS)
		return 0;
	lv = leaf_of(pt, vpn);
	if (!lv)
		return 0;
	if (is_compact(lv)) {
		const struct pt_cleaf *c = cleaf_of(lv);
		return cl_entry(c, i,
				atomic_load_explicit(
					&((struct pt_cleaf *)c)->fl[i],
					memory_order_acquire));
	}
	return atomic_load_explicit(&((struct pt_dir *)(uintptr_t)lv)->slot[i],
				    memory_order_acquire);
}

/* Mark entry @i of full leaf @d dirty if it is not empty. */
static int dir_mark_dirty(struct pt_dir *d, unsigned i)
{
	_Atomic uint64_t *e = &d->slot[i];
	uint64_t old = atomic_load_explicit(e, memory_order_relaxed);

	do {
		if (!old)
			return -ENOENT; /* cleared meanwhile */
	} while (!atomic_compare_exchange_weak(e, &old, old | HMM_PTE_DIRTY));
	return 0;
}

int hmm_pt_mark_dirty(struct hmm_pt *pt, uint64_t vpn)
{
	unsigned i = slot_of(vpn, LEVELS - 1);
	struct pt_cleaf *c;
	struct pt_dir *full;
	uint64_t lv;
	uint16_t f;

	if (!pt || vpn >> HMM_PT_VPN_BITS)
		return -EINVAL;
	lv = leaf_of(pt, vpn);
	if (!lv)
		return -ENOENT;
	if (!is_compact(lv))
		return dir_mark_dirty((struct pt_dir *)(uintptr_t)lv, i);
	c = cleaf_of(lv);
	f = atomic_load(&c->fl[i]);
	do {
		if (!(f & CL_PRESENT))
			return -ENOENT;
	} while (!atomic_compare_exchange_weak(
		&c->fl[i], &f,
		(uint16_t)(f | (HMM_PTE_DIRTY >> CL_SHIFT))));
	/* Expanded meanwhile: the copy may have missed the mark. */
	full = atomic_load(&c->fwd);
	if (full)
		dir_mark_dirty(full, i);
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

/* visit() of a compact leaf covering page numbers from @base. */
static bool visit_compact(struct hmm_pt *pt, struct pt_cleaf *c,
			  uint64_t base, uint64_t s, uint64_t e,
			  struct visit *v)
{
	const uint16_t dirty = (uint16_t)(HMM_PTE_DIRTY >> CL_SHIFT);
	unsigned first = s > base ? (unsigned)(s - base) : 0;
	uint64_t last = HMM_MIN(e - base, (uint64_t)LVL_SIZE);

	for (unsigned i = first; i < last; i++) {
		_Atomic uint16_t *f = &c->fl[i];
		uint16_t old;
		if (v->op == 0) {
			old = atomic_exchange(f, 0);
			if (!(old & CL_PRESENT))
				continue;
			c->used--;
			atomic_fetch_sub_explicit(&pt->entries, 1,
						  memory_order_relaxed);
			v->count++;
			if ((old & dirty) && v->fn)
				v->fn(base + i, cl_entry(c, i, old), v->arg);
		} else if (v->op == 1) {
			old = atomic_fetch_and(f, (uint16_t)~dirty);
			if ((old & CL_PRESENT) && (old & dirty)) {
				v->count++;
				if (v->fn)
					v->fn(base + i,
					      cl_entry(c, i,
						       (uint16_t)(old & ~dirty)),
					      v->arg);
			}
		} else {
			old = atomic_load_explicit(f, memory_order_acquire);
			if (old & CL_PRESENT) {
				v->count++;
				v->fn(base + i, cl_entry(c, i, old), v->arg);
			}
		}
	}
	return v->op == 0 && c->used == 0;
}

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
		uint64_t cv = atomic_load_explicit(&d->slot[i],
						   memory_order_acquire);
		if (cv && is_compact(cv)) {
			struct pt_cleaf *cl = cleaf_of(cv);
			if (visit_compact(pt, cl, lo, s, e, v)) {
				atomic_store_explicit(&d->slot[i], 0,
						      memory_order_release);
				d->used--;
				cl->next = pt->cgarbage;
				pt->cgarbage = cl;
				pt->ngarbage++;
			}
			continue;
		}
		struct pt_dir *c = (struct pt_dir *)(uintptr_t)cv;
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
				    sizeof(struct pt_dir) +
			    (size_t)atomic_load_explicit(&pt->cleaves,
						 memory_order_relaxed) *
				    sizeof(struct pt_cleaf)
		  : 0;
}

void hmm_pt_destroy(struct hmm_pt *pt)
{
	struct visit v = { .op = 0 };

	if (!pt)
		return;
	visit_range(pt, 0, 1ULL << HMM_PT_VPN_BITS, &v);
	/* No reader is left (the caller's promise): free at once. */
	garbage_free(pt, pt->garbage, pt->cgarbage);
	pthread_mutex_destroy(&pt->lock);
	free(pt);
}
