/* SPDX-License-Identifier: MIT */
/*
 * Advice per range (hmm_advise in hmm.h): a sorted array of disjoint
 * segments, each with a preferred location and an accessed-by set, split
 * where advice changes and merged again where neighbours become equal.
 * Segments with no advice are not kept.
 *
 * advice_lock protects segs, nsegs and cap; nsegs is also read without it
 * (atomically), as a hint that there is no advice at all, on the device
 * fault path and when ranges go away.  Order: ctx.ranges_lock before
 * advice_lock (hmm__range_trim forgets advice under the former).
 *
 * What advice does today: a device fault (hmm_range_fault) by the
 * preferred device of a segment, which is not also in its accessed-by set,
 * first migrates the segment's pages it touches to that device, unless
 * their 2 MiB block is pinned for thrashing (may_move); every other device
 * fault maps pages where they are.  DISCARD drops contents (see
 * hmm_advise).  READ_MOSTLY: device read faults there get read-only copies
 * in the faulting device's memory (dup.c), and the segment's pages are
 * never moved by advice.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

#define PREF_NONE 0xff		/* no preferred location */
#define PREF_SYSTEM 0xfe	/* system memory */

struct seg {
	uintptr_t start, end;
	uint8_t pref;		/* device id, PREF_NONE or PREF_SYSTEM */
	uint64_t accessed_by;	/* bit per device id */
	bool read_mostly;	/* devices read copies of their own (dup.c) */
};

static pthread_rwlock_t advice_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct seg *segs;	/* advice_lock */
static _Atomic size_t nsegs;	/* advice_lock; read unlocked as a hint */
static size_t cap;		/* advice_lock */

/* The first segment that ends after @a (nsegs if none): segments are
 * sorted and disjoint, so a binary search; lookups on the fault path cost
 * log(segments).  advice_lock held. */
static size_t first_after(uintptr_t a)
{
	size_t lo = 0, hi = nsegs;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (segs[mid].end <= a)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static bool seg_empty(const struct seg *s)
{
	return s->pref == PREF_NONE && !s->accessed_by && !s->read_mostly;
}

/* Split the segment that crosses @a, if any.  advice_lock held (writing),
 * one free slot reserved. */
static void split_at(uintptr_t a)
{
	for (size_t i = 0; i < nsegs; i++) {
		if (segs[i].start < a && a < segs[i].end) {
			memmove(&segs[i + 1], &segs[i],
				(nsegs - i) * sizeof(*segs));
			segs[i].end = a;
			segs[i + 1].start = a;
			nsegs++;
			return;
		}
	}
}

/* Drop empty segments and merge equal neighbours.  advice_lock held. */
static void tidy(void)
{
	size_t o = 0;

	for (size_t i = 0; i < nsegs; i++) {
		if (seg_empty(&segs[i]))
			continue;
		if (o && segs[o - 1].end == segs[i].start &&
		    segs[o - 1].pref == segs[i].pref &&
		    segs[o - 1].accessed_by == segs[i].accessed_by &&
		    segs[o - 1].read_mostly == segs[i].read_mostly) {
			segs[o - 1].end = segs[i].end;
			continue;
		}
		segs[o++] = segs[i];
	}
	nsegs = o;
}

typedef void (*seg_fn)(struct seg *s, uintptr_t arg);

/*
 * Apply @fn to [start, end): segments are split at its edges and its holes
 * become segments with no advice, then @fn changes each segment inside,
 * then equal neighbours merge.  advice_lock held for writing.  0, or
 * -ENOMEM with the advice unchanged.
 */
static int apply(uintptr_t start, uintptr_t end, seg_fn fn, uintptr_t arg)
{
	struct seg *out;
	uintptr_t pos = start;
	size_t o = 0;

	if (nsegs + 2 > cap) {
		size_t nc = HMM_MAX(2 * cap, nsegs + 8);
		struct seg *n = realloc(segs, nc * sizeof(*n));
		if (!n)
			return -ENOMEM;
		segs = n;
		cap = nc;
	}
	out = malloc((2 * nsegs + 5) * sizeof(*out));
	if (!out)
		return -ENOMEM;
	split_at(start);
	split_at(end);
	for (size_t i = 0; i < nsegs; i++) {
		const struct seg *g = &segs[i];
		if (g->end <= start) {
			out[o++] = *g;
			continue;
		}
		if (g->start >= end) {
			if (pos < end)
				out[o++] = (struct seg){ pos, end, PREF_NONE, 0, false };
			pos = end;
			out[o++] = *g;
			continue;
		}
		if (g->start > pos)
			out[o++] = (struct seg){ pos, g->start, PREF_NONE, 0, false };
		out[o++] = *g;
		pos = g->end;
	}
	if (pos < end)
		out[o++] = (struct seg){ pos, end, PREF_NONE, 0, false };
	for (size_t i = 0; i < o; i++)
		if (out[i].start >= start && out[i].end <= end)
			fn(&out[i], arg);
	free(segs);
	segs = out;
	nsegs = o;
	cap = o; /* out has room for at least o */
	tidy();
	return 0;
}

static void set_pref(struct seg *s, uintptr_t v) { s->pref = (uint8_t)v; }
static void add_acc(struct seg *s, uintptr_t v) { s->accessed_by |= 1ULL << v; }
static void del_acc(struct seg *s, uintptr_t v) { s->accessed_by &= ~(1ULL << v); }
static void set_rm(struct seg *s, uintptr_t v) { s->read_mostly = v != 0; }
static void clear_all(struct seg *s, uintptr_t v)
{
	(void)v;
	s->pref = PREF_NONE;
	s->accessed_by = 0;
	s->read_mostly = false;
}

int hmm_advise(void *addr, size_t len, int advice, hmm_device_t *dev)
{
	uintptr_t s = (uintptr_t)addr, e = s + len;
	seg_fn fn;
	uintptr_t arg = 0;
	int ret = hmm__check_range(addr, len);

	if (ret)
		return ret;
	switch (advice) {
	case HMM_ADVISE_PREFERRED_LOCATION:
		fn = set_pref;
		break;
	case HMM_ADVISE_UNSET_PREFERRED_LOCATION:
		fn = set_pref;
		arg = PREF_NONE;
		if (dev)
			return -EINVAL;
		break;
	case HMM_ADVISE_ACCESSED_BY:
		fn = add_acc;
		break;
	case HMM_ADVISE_UNSET_ACCESSED_BY:
		fn = del_acc;
		break;
	case HMM_ADVISE_DISCARD:
		fn = NULL;
		if (dev)
			return -EINVAL;
		break;
	case HMM_ADVISE_READ_MOSTLY:
	case HMM_ADVISE_UNSET_READ_MOSTLY:
		fn = set_rm;
		if (dev)
			return -EINVAL;
		break;
	default:
		return -EINVAL;
	}
	if ((advice == HMM_ADVISE_ACCESSED_BY ||
	     advice == HMM_ADVISE_UNSET_ACCESSED_BY) && !dev)
		return -EINVAL;
	ret = hmm__ensure();
	if (ret)
		return ret;
	if (dev && hmm_device_enter(dev))
		return -ENODEV;
	if (dev && advice != HMM_ADVISE_UNSET_PREFERRED_LOCATION)
		arg = dev->id;
	else if (advice == HMM_ADVISE_PREFERRED_LOCATION)
		arg = PREF_SYSTEM;
	else if (advice == HMM_ADVISE_READ_MOSTLY)
		arg = 1;
	pthread_rwlock_rdlock(&hmm__ctx.ranges_lock);
	ret = hmm__ranges_cover(s, e);
	if (!ret && fn) {
		pthread_rwlock_wrlock(&advice_lock);
		ret = apply(s, e, fn, arg);
		pthread_rwlock_unlock(&advice_lock);
	}
	/* Devices drop their translations of the range, so that their next
	 * access faults and follows the new advice. */
	if (!ret && fn)
		hmm__invalidate(s, e, HMM_NOTIFY_MIGRATE,
				advice == HMM_ADVISE_PREFERRED_LOCATION ? dev
									: NULL,
				!hmm__on_service_thread());
	/* Read-mostly no more: the copies go (after the advice changed, so
	 * that no new one is made after this). */
	if (!ret && advice == HMM_ADVISE_UNSET_READ_MOSTLY)
		hmm__dups_collapse(s, e, NULL, HMM_NOTIFY_PROTECTION_PAGE,
				   !hmm__on_service_thread());
	/* DISCARD: anonymous memory, private or shared; a file's data is
	 * the file's to keep.  The pieces and their kinds, then the calls
	 * without the lock (the madvise wrapper takes it). */
	struct { uintptr_t s, e; bool shared; } *pc = NULL;
	size_t npc = 0;
	for (uintptr_t p = s; !ret && !fn && p < e;) {
		struct hmm_mrange *r = hmm__range_find(p);
		void *n = realloc(pc, (npc + 1) * sizeof(*pc));
		if (!r || HMM_MK_IS_FILE(r->kind)) {
			ret = -EOPNOTSUPP;
		} else if (!n) {
			ret = -ENOMEM;
		} else {
			pc = n;
			pc[npc].s = p;
			pc[npc].e = HMM_MIN(r->end, e);
			pc[npc++].shared = r->kind == HMM_MK_SHMEM;
			p = r->end;
		}
	}
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	/* libhmm's madvise wrapper drops the device copies without copying
	 * them back; the pages read as zeros afterwards (MADV_REMOVE
	 * punches shared memory's pages out). */
	for (size_t k = 0; !ret && k < npc; k++) {
		if (madvise((void *)pc[k].s, pc[k].e - pc[k].s,
			    pc[k].shared ? MADV_REMOVE : MADV_DONTNEED))
			ret = -errno;
		else
			hmm__stat_add(HMM_STAT_pages_discarded,
				      (pc[k].e - pc[k].s) >> HMM_PAGE_SHIFT);
	}
	free(pc);
	if (dev)
		hmm_device_leave(dev);
	return ret;
}

int hmm_advice_get(const void *addr, struct hmm_advice_info *out)
{
	uintptr_t a = (uintptr_t)addr;

	if (!out)
		return -EINVAL;
	*out = (struct hmm_advice_info){ .preferred = HMM_LOC_UNMANAGED };
	pthread_rwlock_rdlock(&advice_lock);
	for (size_t i = first_after(a); i < nsegs && segs[i].start <= a; i++) {
		if (a < segs[i].end) {
			if (segs[i].pref == PREF_SYSTEM) {
				out->preferred = HMM_LOC_SYSTEM;
			} else if (segs[i].pref != PREF_NONE) {
				out->preferred = HMM_LOC_DEVICE;
				out->preferred_dev =
					hmm__device_get(segs[i].pref);
			}
			out->accessed_by = segs[i].accessed_by;
			out->read_mostly = segs[i].read_mostly;
			break;
		}
	}
	pthread_rwlock_unlock(&advice_lock);
	return 0;
}

/*
 * Thrashing control for the block of @p, before advice moves its pages to
 * their preferred device: whether they may move.  A ping-pong is a move
 * here followed by a CPU fault-back in the block before the next move
 * (another device's read comes back through the CPU too, so ping-pongs
 * between devices count).  First the throttle: while a run of ping-pongs
 * lasts, a move waits HMM_THRASH_THROTTLE_MS after the previous one, the
 * device mapping the block where it is meanwhile.  Then the pin:
 * HMM_THRASH_COUNT of them in a row pin the block to system memory for
 * HMM_THRASH_PIN_MS, during which devices map it where it is.  A device
 * fault that finds no fault-back since the last move ends the run.
 */
static bool may_move(uintptr_t p)
{
	long limit = hmm__option(HMM_OPT_THRASH_COUNT);
	struct hmm_block *b = hmm__block_lookup(p);
	uint64_t now;
	bool ok = true;

	if (!b || !limit)
		return true;
	now = hmm__now_ns() / 1000000;
	pthread_mutex_lock(&b->lock);
	uint32_t backs = atomic_load_explicit(&b->cpu_backs,
					      memory_order_relaxed);
	if (b->thrash_until_ms > now) {
		ok = false;
	} else {
		if (b->thrash_until_ms) {
			/* The pin ran out: start counting afresh. */
			b->thrash_until_ms = 0;
			b->thrash_count = 0;
		} else if (backs != b->thrash_seen) {
			b->thrash_count++;
		} else {
			b->thrash_count = 0;
		}
		if (b->thrash_count >= (uint32_t)limit) {
			b->thrash_until_ms =
				now + (uint64_t)hmm__option(HMM_OPT_THRASH_PIN_MS);
			hmm__stat_add(HMM_STAT_thrash_pins, 1);
			ok = false;
		} else if (b->thrash_count &&
			   now < b->thrash_moved_ms +
					 (uint64_t)hmm__option(
						 HMM_OPT_THRASH_THROTTLE_MS)) {
			/* Throttled: this fault maps the block where it
			 * is.  The ping-pong is counted when the move
			 * happens, so the fault-backs stay unseen. */
			b->thrash_count--;
			pthread_mutex_unlock(&b->lock);
			hmm__stat_add(HMM_STAT_thrash_throttled, 1);
			return false;
		}
	}
	b->thrash_seen = backs;
	if (ok)
		b->thrash_moved_ms = now;
	pthread_mutex_unlock(&b->lock);
	if (!ok)
		hmm__stat_add(HMM_STAT_thrash_remote_faults, 1);
	return ok;
}

/*
 * Before a device fault of @owner over [start, end): migrate to @owner the
 * parts whose preferred location it is (and which it does not merely
 * access), 2 MiB block by block, except blocks pinned for thrashing.  Best
 * effort: pages that cannot move (device memory full, a lock) stay where
 * they are and are mapped there.
 */
void hmm__advice_fault(const void *owner, uintptr_t start, uintptr_t end)
{
	struct { uintptr_t s, e; } todo[8];
	hmm_device_t *dev = NULL;
	size_t n = 0;

	if (!owner || !atomic_load_explicit(&nsegs, memory_order_relaxed))
		return;
	dev = hmm__device_of_owner(owner);
	if (!dev)
		return;
	pthread_rwlock_rdlock(&advice_lock);
	for (size_t i = first_after(start); i < nsegs && n < 8; i++) {
		const struct seg *sg = &segs[i];
		if (sg->start >= end)
			break;
		/* Read-mostly pages stay where they are and are copied:
		 * moving them would make the other readers fault. */
		if (sg->pref != dev->id || (sg->accessed_by >> dev->id) & 1 ||
		    sg->read_mostly)
			continue;
		todo[n].s = HMM_MAX(sg->start, start);
		todo[n].e = HMM_MIN(sg->end, end);
		n++;
	}
	pthread_rwlock_unlock(&advice_lock);
	for (size_t k = 0; k < n; k++) {
		for (uintptr_t p = todo[k].s, be; p < todo[k].e; p = be) {
			be = HMM_MIN((p | (HMM_BLOCK_SIZE - 1)) + 1, todo[k].e);
			if (hmm__pages_in_place(p, be, dev) || !may_move(p))
				continue;
			long r = hmm_migrate((void *)p, be - p, dev, 0);
			if (r > 0)
				hmm__stat_add(HMM_STAT_advice_migrations,
					      (uint64_t)r);
		}
	}
}

size_t hmm__advice_read_mostly(uintptr_t s, uintptr_t e, struct hmm_span *out,
			       size_t max)
{
	size_t n = 0;

	if (!atomic_load_explicit(&nsegs, memory_order_relaxed))
		return 0;
	pthread_rwlock_rdlock(&advice_lock);
	for (size_t i = first_after(s); i < nsegs && n < max; i++) {
		if (segs[i].start >= e)
			break;
		if (!segs[i].read_mostly)
			continue;
		out[n].s = HMM_MAX(segs[i].start, s);
		out[n++].e = HMM_MIN(segs[i].end, e);
	}
	pthread_rwlock_unlock(&advice_lock);
	return n;
}

void hmm__advice_forget(uintptr_t start, uintptr_t end)
{
	if (!atomic_load_explicit(&nsegs, memory_order_relaxed))
		return;
	pthread_rwlock_wrlock(&advice_lock);
	if (apply(start, end, clear_all, 0))
		/* No memory to split: drop every segment that meets the
		 * range whole rather than keep stale advice. */
		for (size_t i = 0; i < nsegs; i++)
			if (segs[i].start < end && segs[i].end > start)
				clear_all(&segs[i], 0);
	tidy();
	pthread_rwlock_unlock(&advice_lock);
}

void hmm__advice_forget_device(unsigned int id)
{
	pthread_rwlock_wrlock(&advice_lock);
	for (size_t i = 0; i < nsegs; i++) {
		if (segs[i].pref == id)
			segs[i].pref = PREF_NONE;
		segs[i].accessed_by &= ~(1ULL << id);
	}
	tidy();
	pthread_rwlock_unlock(&advice_lock);
}

void hmm__advice_fork_child(void)
{
	pthread_rwlock_init(&advice_lock, NULL);
}
