/* SPDX-License-Identifier: MIT */
/*
 * Read duplication (HMM_ADVISE_READ_MOSTLY): read-only copies of system
 * pages in the memory of the devices that read them.
 *
 * The system page stays the one true copy: its state stays PS_SYSTEM and
 * the CPU reads it where it is.  A device that faults on it for reading
 * gets a copy in its own memory, mapped read-only (HMM_PFN_DEVICE without
 * HMM_PFN_WRITE).  What keeps every copy equal to the system page:
 *
 *  - While a page has copies, its system page is write-protected
 *    (userfaultfd WP).  Every write faults first, a device's included
 *    (hmm_range_fault writes through the CPU), and the fault removes the
 *    copies: every device's translation of the page is invalidated and the
 *    copies freed before the write goes on (hmm__dups_cpu_fault).
 *  - Whatever changes the page behind the CPU's page tables, or takes it
 *    out of PS_SYSTEM, removes its copies first: a migration to a device
 *    (collect_to_device), a drop or an unmap (drop_block), a MISSING fault
 *    (the page went away without an event, MADV_FREE), a range released.
 *
 * Per block, one struct hmm_dupset per device with copies there (b->dups,
 * under b->lock).  An entry is pending while its copy is being made, and
 * ready afterwards.  Invariant, under b->lock: a page with an entry is
 * PS_SYSTEM, holds nothing, and is write-protected (the maker protects it
 * in the critical section that adds the entry; only a section that leaves
 * the page with no entry lifts the protection).
 *
 * Ownership of device pages: a pending entry's page belongs to its maker,
 * who copies into it without the lock.  Whoever removes a pending entry
 * leaves the page alone; the maker finds its entry gone (no entry, or
 * another page) and frees it.  A ready entry's page belongs to the block:
 * whoever removes it frees it after invalidating the page, so that no
 * device translation outlives it.
 *
 * A write that collapsed copies keeps new ones out of its block for
 * DUP_QUIET_NS, so that a writer is not starved by readers that would copy
 * the page again between the collapse and the write.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define DUP_NONE UINT32_MAX
#define DUP_QUIET_NS 1000000ULL

struct hmm_dupset {
	struct hmm_dupset *next;
	unsigned int dev;
	unsigned int n;				/* entries */
	uint64_t ready[HMM_BLOCK_PAGES / 64];
	uint32_t dpfn[HMM_BLOCK_PAGES];		/* DUP_NONE: no entry */
};

_Atomic long hmm__dup_blocks;

/* The blocks that have sets, for the walks over all of them (device
 * close, eviction, fork).  list_lock is a leaf, taken under b->lock. */
static pthread_mutex_t list_lock = PTHREAD_MUTEX_INITIALIZER;
static struct hmm_block **list;		/* list_lock */
static size_t nlist, list_cap;		/* list_lock */

static bool is_ready(const struct hmm_dupset *d, unsigned i)
{
	return (d->ready[i / 64] >> (i % 64)) & 1;
}

static void set_ready(struct hmm_dupset *d, unsigned i, bool on)
{
	if (on)
		d->ready[i / 64] |= 1ULL << (i % 64);
	else
		d->ready[i / 64] &= ~(1ULL << (i % 64));
}

static struct hmm_dupset *set_of(const struct hmm_block *b, unsigned dev)
{
	for (struct hmm_dupset *d = b->dups; d; d = d->next)
		if (d->dev == dev)
			return d;
	return NULL;
}

/* b->lock held.  NULL: out of memory. */
static struct hmm_dupset *set_get(struct hmm_block *b, unsigned dev)
{
	struct hmm_dupset *d = set_of(b, dev);

	if (d)
		return d;
	d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	if (!b->dups) {
		pthread_mutex_lock(&list_lock);
		if (nlist == list_cap) {
			size_t cap = list_cap ? 2 * list_cap : 16;
			struct hmm_block **n = realloc(list, cap * sizeof(*n));
			if (!n) {
				pthread_mutex_unlock(&list_lock);
				free(d);
				return NULL;
			}
			list = n;
			list_cap = cap;
		}
		list[nlist++] = b;
		pthread_mutex_unlock(&list_lock);
		atomic_fetch_add(&hmm__dup_blocks, 1);
	}
	d->dev = dev;
	memset(d->dpfn, 0xff, sizeof(d->dpfn));
	d->next = b->dups;
	b->dups = d;
	hmm__stat_add(HMM_STAT_metadata_bytes, sizeof(*d));
	return d;
}

/* Free the sets of @b left with no entry.  b->lock held. */
static void sets_tidy(struct hmm_block *b)
{
	struct hmm_dupset **pp = &b->dups;

	while (*pp) {
		struct hmm_dupset *d = *pp;
		if (d->n) {
			pp = &d->next;
			continue;
		}
		*pp = d->next;
		free(d);
		hmm__stat_sub(HMM_STAT_metadata_bytes, sizeof(*d));
	}
	if (b->dups)
		return;
	pthread_mutex_lock(&list_lock);
	for (size_t k = 0; k < nlist; k++) {
		if (list[k] == b) {
			list[k] = list[--nlist];
			atomic_fetch_sub(&hmm__dup_blocks, 1);
			break;
		}
	}
	pthread_mutex_unlock(&list_lock);
}

bool hmm__dups_any_locked(const struct hmm_block *b, unsigned i0,
			  unsigned i1)
{
	for (const struct hmm_dupset *d = b->dups; d; d = d->next)
		for (unsigned i = i0; i < i1; i++)
			if (d->dpfn[i] != DUP_NONE)
				return true;
	return false;
}

/* Remove the entries of @only (all devices if < 0) in [i0, i1). */
static bool detach(struct hmm_block *b, unsigned i0, unsigned i1, int only,
		   struct hmm_devpages *bag)
{
	bool ok = true;

	for (struct hmm_dupset *d = b->dups; d; d = d->next) {
		if (only >= 0 && d->dev != (unsigned)only)
			continue;
		for (unsigned i = i0; i < i1 && d->n; i++) {
			if (d->dpfn[i] == DUP_NONE)
				continue;
			/* A pending page is its maker's to free. */
			if (is_ready(d, i) && !hmm__devpages_add(bag, d->dev, d->dpfn[i])) {
				ok = false; /* it stays, consistent */
				continue;
			}
			d->dpfn[i] = DUP_NONE;
			set_ready(d, i, false);
			d->n--;
		}
	}
	sets_tidy(b);
	return ok;
}

bool hmm__dups_detach_locked(struct hmm_block *b, unsigned i0, unsigned i1,
			     struct hmm_devpages *bag)
{
	if (!b->dups)
		return true;
	return detach(b, i0, i1, -1, bag);
}

void hmm__dupbag_release(struct hmm_devpages *bag)
{
	hmm__stat_add(HMM_STAT_dup_pages_collapsed, bag->n);
	hmm__devpages_free(bag);
}

/*
 * Lift the write protection of the pages of [i0, i1) that have no entry
 * left and no hold (a read-only hold keeps its own), run by run.  b->lock
 * held, so that no maker protects a page in between and is undone.
 * UFFDIO_WRITEPROTECT waits for no thread of libhmm.  A protection left
 * behind (the ioctl failed) only costs a fault, which lifts it.
 */
static int unprotect_locked(struct hmm_block *b, unsigned i0, unsigned i1)
{
	int ret = 0;

	for (unsigned i = i0; i < i1;) {
		unsigned j = i;
		while (j < i1 && !hmm__dups_any_locked(b, j, j + 1) &&
		       !PMOD_KIND(b->mod[j]) &&
		       PS_KIND(b->state[j]) == PS_SYSTEM)
			j++;
		if (j > i) {
			int r = hmm__uffd_writeprotect(
				hmm__ctx.uffd, b->base + ((uintptr_t)i << HMM_PAGE_SHIFT),
				(size_t)(j - i) << HMM_PAGE_SHIFT, false);
			if (r && !ret)
				ret = r;
		}
		i = j + 1;
	}
	return ret;
}

/* Collapse the entries of @only (< 0: all) in [s, e) of block @b. */
static long collapse_block(struct hmm_block *b, uintptr_t s, uintptr_t e,
			   int only, enum hmm_notifier_event event,
			   bool blockable, bool quiet)
{
	struct hmm_devpages bag = { 0 };
	unsigned i0 = hmm__block_index(s);
	unsigned i1 = i0 + (unsigned)((e - s) >> HMM_PAGE_SHIFT);
	long n;

	pthread_mutex_lock(&b->lock);
	if (!b->dups) {
		pthread_mutex_unlock(&b->lock);
		return 0;
	}
	/* A migration that collapses copies before it collects the pages
	 * must find none the next time it looks. */
	if (quiet)
		b->dup_quiet_ns = hmm__now_ns() + DUP_QUIET_NS;
	detach(b, i0, i1, only, &bag);
	pthread_mutex_unlock(&b->lock);
	if (bag.n)
		hmm__invalidate(s, e, event, NULL, blockable);
	n = (long)bag.n;
	hmm__dupbag_release(&bag);
	pthread_mutex_lock(&b->lock);
	unprotect_locked(b, i0, i1);
	pthread_mutex_unlock(&b->lock);
	return n;
}

/* A copy of the list of blocks with sets.  NULL if none (or no memory). */
static struct hmm_block **list_copy(size_t *n)
{
	struct hmm_block **out = NULL;

	*n = 0;
	pthread_mutex_lock(&list_lock);
	if (nlist && (out = malloc(nlist * sizeof(*out)))) {
		memcpy(out, list, nlist * sizeof(*out));
		*n = nlist;
	}
	pthread_mutex_unlock(&list_lock);
	return out;
}

/*
 * @fn on each block with sets, over its part of [s, e) (without the
 * registry's radix walk: the list is short).  Returns the sum of the
 * results, stopping at the first nonzero one if @first.
 */
static long each_block(uintptr_t s, uintptr_t e, bool first,
		       long (*fn)(struct hmm_block *, uintptr_t, uintptr_t,
				  void *),
		       void *arg)
{
	struct hmm_block **bl;
	size_t n;
	long total = 0;

	if (!atomic_load_explicit(&hmm__dup_blocks, memory_order_acquire))
		return 0;
	bl = list_copy(&n);
	for (size_t k = 0; k < n && !(first && total); k++) {
		uintptr_t bs = HMM_MAX(s, bl[k]->base);
		uintptr_t be = HMM_MIN(e, bl[k]->base + HMM_BLOCK_SIZE);
		if (bs < be)
			total += fn(bl[k], bs, be, arg);
	}
	free(bl);
	return total;
}

struct collapse_arg {
	int only;
	enum hmm_notifier_event event;
	bool blockable, quiet;
};

static long collapse_one(struct hmm_block *b, uintptr_t s, uintptr_t e,
			 void *arg)
{
	const struct collapse_arg *ca = arg;

	return collapse_block(b, s, e, ca->only, ca->event, ca->blockable,
			      ca->quiet);
}

static long collapse(uintptr_t s, uintptr_t e, int only,
		     enum hmm_notifier_event event, bool blockable, bool quiet)
{
	struct collapse_arg ca = { only, event, blockable, quiet };

	return each_block(s, e, false, collapse_one, &ca);
}

static long any_in(struct hmm_block *b, uintptr_t s, uintptr_t e, void *arg)
{
	bool any;

	(void)arg;
	pthread_mutex_lock(&b->lock);
	any = hmm__dups_any_locked(b, hmm__block_index(s),
				   hmm__block_index(e - 1) + 1);
	pthread_mutex_unlock(&b->lock);
	return any;
}

bool hmm__dups_in(uintptr_t s, uintptr_t e)
{
	return each_block(s, e, true, any_in, NULL) != 0;
}

long hmm__dups_collapse(uintptr_t s, uintptr_t e, hmm_device_t *dev,
			enum hmm_notifier_event event, bool blockable)
{
	return collapse(s, e, dev ? (int)dev->id : -1, event, blockable,
			event == HMM_NOTIFY_MIGRATE);
}

long hmm__dups_reclaim(hmm_device_t *dev)
{
	return collapse(0, UINTPTR_MAX & ~HMM_PAGE_MASK, (int)dev->id,
			HMM_NOTIFY_MIGRATE, true, false);
}

int hmm__dups_cpu_fault(struct hmm_block *b, uintptr_t page, bool wp)
{
	unsigned i = hmm__block_index(page);

	for (int round = 0; round < 4; round++) {
		struct hmm_devpages bag = { 0 };
		int r = 0;

		pthread_mutex_lock(&b->lock);
		/* No new copies here for a while: the write goes first. */
		b->dup_quiet_ns = hmm__now_ns() + DUP_QUIET_NS;
		detach(b, i, i + 1, -1, &bag);
		pthread_mutex_unlock(&b->lock);
		/* The service thread never waits for device accesses; a
		 * device reaches its copies under its mirror lock, which the
		 * invalidation takes, so none reads a copy after this. */
		if (bag.n)
			hmm__invalidate(page, page + HMM_PAGE_SIZE,
					HMM_NOTIFY_PROTECTION_PAGE, NULL, false);
		hmm__dupbag_release(&bag);
		pthread_mutex_lock(&b->lock);
		if (hmm__dups_any_locked(b, i, i + 1)) {
			/* Out of memory for the bag, or a copy begun before
			 * the quiet time was set: once more. */
			pthread_mutex_unlock(&b->lock);
			continue;
		}
		if (PS_KIND(b->state[i]) != PS_SYSTEM || PMOD_KIND(b->mod[i])) {
			/* A migration took the page meanwhile (and protects
			 * it for its copy), or a hold: the fault path looks
			 * again, and parks the write there.  Lifting the
			 * protection now would let the write land in a page
			 * the migration is about to drop. */
			pthread_mutex_unlock(&b->lock);
			return 1;
		}
		if (wp)
			/* Lifting the protection wakes the writer. */
			r = hmm__uffd_writeprotect(hmm__ctx.uffd, page,
						   HMM_PAGE_SIZE, false);
		pthread_mutex_unlock(&b->lock);
		if (r == -EAGAIN)
			return -EAGAIN;
		if (r && wp)
			hmm__uffd_wake(hmm__ctx.uffd, page, HMM_PAGE_SIZE);
		return wp ? 0 : 1;
	}
	return -EAGAIN;
}

/* ---- making copies ------------------------------------------------------ */

/* Whether pages of the range at @va may have copies, and the end of that
 * range.  Anonymous memory and libhmm's shared memory (not while another
 * process may map it): the write protection covers every writer there.
 * Files are not duplicated. */
static bool dup_kind(uintptr_t va, uintptr_t *end)
{
	struct hmm_mrange *r;
	bool ok = false;

	pthread_rwlock_rdlock(&hmm__ctx.ranges_lock);
	r = hmm__range_find(va);
	if (r) {
		*end = r->end;
		ok = r->kind == HMM_MK_ANON ||
		     (r->kind == HMM_MK_SHMEM && r->alloc && !r->alloc->forked);
	}
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	return ok;
}

/* Whether page @i, answered @f by hmm_range_fault, may get a copy on the
 * device of set @d (may be NULL): a readable, not writable system page,
 * in system memory, held by no device, without a copy there yet.
 * b->lock held. */
static bool candidate(const struct hmm_block *b, const struct hmm_dupset *d,
		      unsigned i, uint64_t f)
{
	return (f & (HMM_PFN_VALID | HMM_PFN_WRITE | HMM_PFN_ERROR |
		     HMM_PFN_DEVICE | HMM_PFN_ZERO)) == HMM_PFN_VALID &&
	       b->state[i] == PS_SYSTEM && !b->mod[i] &&
	       !(d && d->dpfn[i] != DUP_NONE);
}

/*
 * Copies on @dev of the pages of [s, e) (one block) that range->hmm_pfns
 * reports as readable system pages: reserve (pending entries, and the
 * write protection, under b->lock), invalidate every device's translation
 * (a writable one would bypass the protection), copy, then mark ready the
 * entries still there.  The pages made ready are reported as @dev's.
 */
static void make_block(struct hmm_range *range, hmm_device_t *dev,
		       struct hmm_block *b, uintptr_t s, uintptr_t e)
{
	uint64_t *pfns = range->hmm_pfns + ((s - range->start) >> HMM_PAGE_SHIFT);
	unsigned i0 = hmm__block_index(s);
	size_t n = (e - s) >> HMM_PAGE_SHIFT, want = 0, used = 0, made = 0;
	uint32_t dpfn[HMM_BLOCK_PAGES];
	uint16_t idx[HMM_BLOCK_PAGES];
	bool fresh[HMM_BLOCK_PAGES];
	struct hmm_copy_desc *descs;
	struct hmm_dupset *d;
	int ret;

	/* Candidates: read-only answers of system pages without a copy. */
	pthread_mutex_lock(&b->lock);
	if (b->dup_quiet_ns > hmm__now_ns()) {
		pthread_mutex_unlock(&b->lock);
		return;
	}
	d = set_of(b, dev->id);
	for (size_t k = 0; k < n; k++)
		want += candidate(b, d, i0 + (unsigned)k, pfns[k]);
	pthread_mutex_unlock(&b->lock);
	/* What fits: copies never make room for themselves (the device
	 * reads the system pages the others). */
	while (want && hmm__devmem_alloc(dev, want, dpfn))
		want /= 2;
	if (!want)
		return;

	/* Reserve, and write-protect, in one critical section. */
	pthread_mutex_lock(&b->lock);
	d = b->dup_quiet_ns > hmm__now_ns() ? NULL : set_get(b, dev->id);
	for (size_t k = 0; d && k < n && used < want; k++) {
		unsigned i = i0 + (unsigned)k;
		if (!candidate(b, d, i, pfns[k]))
			continue;
		/* Fresh: no copy is ready, so a device may still have a
		 * writable translation (see below). */
		fresh[used] = true;
		for (struct hmm_dupset *o = b->dups; o; o = o->next)
			if (o->dpfn[i] != DUP_NONE && is_ready(o, i))
				fresh[used] = false;
		d->dpfn[i] = dpfn[used];
		d->n++;
		idx[used++] = (uint16_t)i;
	}
	for (size_t k = 0; k < used;) {
		size_t j = k + 1;
		while (j < used && idx[j] == idx[j - 1] + 1)
			j++;
		ret = hmm__uffd_writeprotect(
			hmm__ctx.uffd, b->base + ((uintptr_t)idx[k] << HMM_PAGE_SHIFT),
			(j - k) << HMM_PAGE_SHIFT, true);
		if (ret) {
			/* Not protected: no copy there. */
			for (size_t m = k; m < j; m++) {
				d->dpfn[idx[m]] = DUP_NONE;
				d->n--;
				idx[m] = UINT16_MAX;
			}
		}
		k = j;
	}
	if (d)
		sets_tidy(b);
	pthread_mutex_unlock(&b->lock);

	/*
	 * Devices lose their translations of the fresh pages, writable ones
	 * especially: their writes would not fault.  A page with a ready
	 * copy needs none: its maker did this, and every translation made
	 * since is read-only (report(); an answer from before the maker's
	 * reservation fails its notifier check).  Then copy what the CPU
	 * sees now.
	 */
	descs = used ? malloc(used * sizeof(*descs)) : NULL;
	size_t nd = 0;
	uintptr_t inv_s = UINTPTR_MAX, inv_e = 0;
	for (size_t k = 0; descs && k < used; k++) {
		if (idx[k] == UINT16_MAX)
			continue;
		uintptr_t va = b->base + ((uintptr_t)idx[k] << HMM_PAGE_SHIFT);
		descs[nd++] = (struct hmm_copy_desc){ dpfn[k], (void *)va };
		if (fresh[k]) {
			inv_s = HMM_MIN(inv_s, va);
			inv_e = HMM_MAX(inv_e, va + HMM_PAGE_SIZE);
		}
	}
	ret = -ENOMEM;
	if (nd) {
		if (inv_s < inv_e)
			hmm__invalidate(inv_s, inv_e,
					HMM_NOTIFY_PROTECTION_PAGE, NULL, true);
		ret = hmm__guarded_copy(dev, HMM_COPY_TO_DEVICE, descs, nd);
	}
	free(descs);

	/* Entries still ours become ready; the pages of the others, and the
	 * unused ones, are freed. */
	uint32_t unused[HMM_BLOCK_PAGES];
	size_t nu = 0;
	pthread_mutex_lock(&b->lock);
	d = set_of(b, dev->id);
	for (size_t k = 0; k < used; k++) {
		unsigned i = idx[k];
		if (i != UINT16_MAX && d && d->dpfn[i] == dpfn[k] && !ret &&
		    b->state[i] == PS_SYSTEM && !b->mod[i]) {
			set_ready(d, i, true);
			pfns[i - i0] = HMM_PFN_VALID | HMM_PFN_DEVICE | dpfn[k];
			made++;
			continue;
		}
		if (i != UINT16_MAX && d && d->dpfn[i] == dpfn[k]) {
			d->dpfn[i] = DUP_NONE;
			d->n--;
		}
		unused[nu++] = dpfn[k];
	}
	if (d)
		sets_tidy(b);
	/* Pages left without a copy lose the protection again (one still
	 * copied by another device keeps it: unprotect_locked looks). */
	for (size_t k = 0; nu && k < used; k++)
		if (idx[k] != UINT16_MAX && !(pfns[idx[k] - i0] & HMM_PFN_DEVICE))
			unprotect_locked(b, idx[k], idx[k] + 1u);
	pthread_mutex_unlock(&b->lock);
	for (size_t k = used; k < want; k++)
		unused[nu++] = dpfn[k];
	if (nu)
		hmm__devmem_free(dev, unused, nu);
	hmm__stat_add(HMM_STAT_dup_pages_created, made);
}

/* Report the copies that exist: @owner's own as its device pages, and the
 * others' pages as read-only (their system page is write-protected; a
 * write must fault through the CPU). */
static void report(struct hmm_range *range, hmm_device_t *owner)
{
	size_t npages = (range->end - range->start) >> HMM_PAGE_SHIFT;

	for (size_t k = 0; k < npages;) {
		uintptr_t va = range->start + (k << HMM_PAGE_SHIFT);
		struct hmm_block *b = hmm__block_lookup(va);
		unsigned i0 = hmm__block_index(va);
		size_t n = HMM_MIN(npages - k, HMM_BLOCK_PAGES - i0);

		if (b) {
			pthread_mutex_lock(&b->lock);
			struct hmm_dupset *mine =
				owner ? set_of(b, owner->id) : NULL;
			for (size_t m = 0; b->dups && m < n; m++) {
				uint64_t *f = &range->hmm_pfns[k + m];
				unsigned i = i0 + (unsigned)m;
				if (!(*f & HMM_PFN_VALID) || (*f & HMM_PFN_DEVICE))
					continue;
				if (mine && mine->dpfn[i] != DUP_NONE &&
				    is_ready(mine, i))
					*f = HMM_PFN_VALID | HMM_PFN_DEVICE |
					     mine->dpfn[i];
				else if (hmm__dups_any_locked(b, i, i + 1))
					*f &= ~HMM_PFN_WRITE;
			}
			pthread_mutex_unlock(&b->lock);
		}
		k += n;
	}
}

void hmm__dups_range_fault(struct hmm_range *range)
{
	struct hmm_span runs[16];
	hmm_device_t *owner;
	size_t nr = 0;
	bool any = atomic_load_explicit(&hmm__dup_blocks,
					memory_order_acquire);

	if (range->dev_private_owner &&
	    (range->default_flags & HMM_PFN_REQ_FAULT) &&
	    (hmm__ctx.caps & HMM_CAP_WP))
		nr = hmm__advice_read_mostly(range->start, range->end, runs, 16);
	/* Nothing read-mostly here and no copy anywhere (most faults): not
	 * even the owner's device is looked up. */
	if (!nr && !any)
		return;
	owner = hmm__device_of_owner(range->dev_private_owner);
	if (nr && owner) {
		/* Not across a fork: the child would get entries for pages
		 * the write protection does not follow to. */
		pthread_rwlock_rdlock(&hmm__ctx.fork_lock);
		for (size_t k = 0; k < nr; k++) {
			for (uintptr_t p = runs[k].s; p < runs[k].e;) {
				uintptr_t rend = 0, be;
				bool ok = dup_kind(p, &rend);
				be = HMM_MIN((p | (HMM_BLOCK_SIZE - 1)) + 1,
					     runs[k].e);
				if (rend)
					be = HMM_MIN(be, rend);
				struct hmm_block *b =
					ok ? hmm__block_lookup(p) : NULL;
				if (b)
					make_block(range, owner, b, p, be);
				p = be;
			}
		}
		pthread_rwlock_unlock(&hmm__ctx.fork_lock);
	}
	if (any || atomic_load_explicit(&hmm__dup_blocks,
					memory_order_acquire))
		report(range, owner);
}

bool hmm__dup_ready_locked(const struct hmm_block *b, unsigned i,
			   unsigned dev)
{
	const struct hmm_dupset *d = set_of(b, dev);

	return d && d->dpfn[i] != DUP_NONE && is_ready(d, i);
}

long hmm__dups_prefetch(hmm_device_t *dev, uintptr_t s, uintptr_t e)
{
	uint64_t *pfns = malloc(HMM_BLOCK_PAGES * sizeof(*pfns));
	long done = 0;

	if (!pfns)
		return -ENOMEM;
	for (uintptr_t p = s; p < e;) {
		uintptr_t ce = HMM_MIN((p | (HMM_BLOCK_SIZE - 1)) + 1, e);
		struct hmm_range r = {
			.start = p, .end = ce, .hmm_pfns = pfns,
			.default_flags = HMM_PFN_REQ_FAULT,
			.dev_private_owner = hmm_device_owner(dev),
		};
		int ret = hmm_range_fault(&r);
		if (ret == -EBUSY)
			continue; /* changed under the fault: again */
		if (ret) {
			free(pfns);
			return done ? done : ret;
		}
		for (size_t k = 0; k < (ce - p) >> HMM_PAGE_SHIFT; k++)
			if (pfns[k] & HMM_PFN_DEVICE)
				done++;
		p = ce;
	}
	free(pfns);
	return done;
}

void hmm__dups_fork_child(void)
{
	struct hmm_block **bl;
	size_t n;

	if (!atomic_load(&hmm__dup_blocks))
		return;
	bl = list_copy(&n);
	for (size_t k = 0; k < n; k++) {
		struct hmm_dupset *d = bl[k]->dups;
		bl[k]->dups = NULL;
		while (d) {
			struct hmm_dupset *next = d->next;
			hmm_device_t *dev = hmm__device_get(d->dev);
			for (unsigned i = 0; dev && i < HMM_BLOCK_PAGES; i++)
				if (d->dpfn[i] != DUP_NONE)
					hmm__devmem_free(dev, &d->dpfn[i], 1);
			free(d);
			hmm__stat_sub(HMM_STAT_metadata_bytes, sizeof(*d));
			d = next;
		}
	}
	free(bl);
	pthread_mutex_init(&list_lock, NULL);
	nlist = 0;
	atomic_store(&hmm__dup_blocks, 0);
}
