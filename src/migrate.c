/* SPDX-License-Identifier: MIT */
/*
 * The migration engine, towards a device.  Each 2 MiB block moves in three
 * phases, like the kernel's migrate_vma_*:
 *
 *  1. collect: under the block lock, the SYSTEM pages that will move become
 *     MIGRATING; a CPU fault on one of them now parks until phase 3.
 *  2. isolate + copy, without the block lock: device translations are
 *     invalidated, the pages are write-protected (so that a CPU write waits
 *     instead of being lost) and copied.
 *  3. commit: the system copies are dropped (MADV_DONTNEED, or a hole
 *     punched in the memfd), the states set, parked faults woken.
 *
 * Every step touches only the pages this migration collected, in runs of
 * consecutive pages: a page in between belongs to someone else.  A failure
 * before the drop rolls every page back to where it was, with its data;
 * nothing is freed before the commit.
 */
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "compat.h"
#include "migrate.h"

int hmm__guarded_copy(hmm_device_t *dev, enum hmm_copy_dir dir,
		      const struct hmm_copy_desc *d, size_t n)
{
	struct hmm_guard g;
	int ret;

	if (!n)
		return 0;
	if (hmm__guard_begin(&g)) {
		hmm__dma_end();
		return -EFAULT; /* the source went away under us */
	}
	/* The user's page is read as by DMA: what orders the read with the
	 * CPU's writes is its write-protection (see hmm__dma_begin). */
	hmm__dma_begin();
	ret = dev->ops->copy(dev, dir, d, n);
	hmm__dma_end();
	hmm__guard_end(&g);
	return ret;
}

/* ---- libhmm's own zaps ------------------------------------------------- */

void hmm__rec_push(struct hmm_zap **list, struct hmm_zap *z)
{
	memset(z->claimed, 0, sizeof(z->claimed));
	pthread_mutex_lock(&hmm__ctx.zap_lock);
	z->next = *list;
	*list = z;
	pthread_mutex_unlock(&hmm__ctx.zap_lock);
}

void hmm__rec_pop(struct hmm_zap **list, struct hmm_zap *z)
{
	pthread_mutex_lock(&hmm__ctx.zap_lock);
	for (struct hmm_zap **pp = list; *pp; pp = &(*pp)->next)
		if (*pp == z) {
			*pp = z->next;
			break;
		}
	pthread_mutex_unlock(&hmm__ctx.zap_lock);
}

bool hmm__rec_covers(struct hmm_zap *const *list, uintptr_t s, uintptr_t e)
{
	bool in = false;

	pthread_mutex_lock(&hmm__ctx.zap_lock);
	for (struct hmm_zap *z = *list; z && !in; z = z->next)
		in = z->start <= s && e <= z->end;
	pthread_mutex_unlock(&hmm__ctx.zap_lock);
	return in;
}

/* The zap with page @p not yet claimed, if any (zap_lock held). */
static struct hmm_zap *zap_unclaimed(uintptr_t p, unsigned *bit)
{
	for (struct hmm_zap *z = hmm__ctx.zaps; z; z = z->next) {
		if (p < z->start || p >= z->end)
			continue;
		*bit = (unsigned)((p - z->start) >> HMM_PAGE_SHIFT);
		if (!(z->claimed[*bit / 64] & (1ULL << (*bit % 64))))
			return z;
	}
	return NULL;
}

/*
 * One MADV_DONTNEED sends one REMOVE per VMA it crosses, each clipped to
 * that VMA, and VMAs may split or merge before an event is read.  So each
 * page of a recorded zap is claimed by the first event that covers it,
 * however the events were cut.  An application's raw drop (interposed ones
 * settle their pages themselves) of pages inside a zap in flight meets
 * them claimed, or claims them first and leaves the zap's own event to
 * stand for it: either way those pages, and only those, are taken for
 * dropped by the application, which they were.
 *
 * One thing breaks this: a VMA that splits while the kernel waits for the
 * event to be read makes the kernel send the pages after the split again,
 * and they are then taken for the application's drop.  The interposed
 * mprotect, munmap, mremap, mlock, munlock and VMA-changing madvise calls
 * wait for libhmm's drops to be handled (ctx.vma_lock), so only raw system
 * calls that split VMAs of managed memory can cause it (see the README).
 */
uintptr_t hmm__zap_claim_run(uintptr_t s, uintptr_t e, bool *ours)
{
	uintptr_t p = s;
	unsigned bit;

	pthread_mutex_lock(&hmm__ctx.zap_lock);
	*ours = zap_unclaimed(s, &bit) != NULL;
	if (!hmm__ctx.zaps)
		p = e; /* the usual case: no zap in flight at all */
	for (struct hmm_zap *z; p < e; p += HMM_PAGE_SIZE) {
		z = zap_unclaimed(p, &bit);
		if ((z != NULL) != *ours)
			break;
		if (z)
			z->claimed[bit / 64] |= 1ULL << (bit % 64);
	}
	pthread_mutex_unlock(&hmm__ctx.zap_lock);
	return p;
}

/* Where libhmm reads the system copy of @va without faulting into a
 * userfaultfd: the alias for shared memory, the user's address (present,
 * write-protected, read under a guard) for anonymous memory. */
static void *source_ptr(const struct hmm_mrange *r, uintptr_t va)
{
	if (r->kind == HMM_MK_SHMEM)
		return (char *)r->alloc->alias + r->off + (va - r->start);
	return (void *)va;
}

void *hmm__file_alias_ptr(const struct hmm_mrange *r, uintptr_t va)
{
	if (!r->alloc || !r->alloc->alias)
		return NULL;
	return (char *)r->alloc->alias + (r->off - r->alloc->alias_off) +
	       (va - r->start);
}

static int zap_one(const struct hmm_mrange *r, uintptr_t s, uintptr_t e)
{
	int inj = hmm__inject(HMM_INJ_ZAP);

	if (inj)
		return inj;
	if (r->kind == HMM_MK_FPROT)
		/* The page stays (in the page cache, or private); the
		 * application's access to it faults into libhmm (file.c). */
		return hmm__sys_mprotect((void *)s, e - s, PROT_NONE) ? -errno
								      : 0;
	if (r->kind == HMM_MK_SHMEM && r->alloc->memfd < 0) {
		/* Adopted shared anonymous memory: punch the hole through
		 * the alias (no userfaultfd event there). */
		char *a = (char *)r->alloc->alias + r->off + (s - r->start);
		return hmm__sys_madvise(a, e - s, MADV_REMOVE) ? -errno : 0;
	}
	if (r->kind == HMM_MK_SHMEM) {
		off_t off = (off_t)(r->off + (s - r->start));
		if (fallocate(r->alloc->memfd,
			      FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off,
			      (off_t)(e - s)))
			return -errno;
		return 0;
	}
	/* MADV_DONTNEED_LOCKED drops mlocked pages too (the kernel's own
	 * migration to device memory takes them as well); kernels before
	 * 5.18 refuse it with EINVAL, and locked memory then stays home. */
	static atomic_bool no_locked;
	if (!atomic_load_explicit(&no_locked, memory_order_relaxed)) {
		if (!hmm__sys_madvise((void *)s, e - s, MADV_DONTNEED_LOCKED))
			return 0;
		if (errno != EINVAL)
			return -errno;
		atomic_store(&no_locked, true);
	}
	return hmm__sys_madvise((void *)s, e - s, MADV_DONTNEED) ? -errno : 0;
}

int hmm__zap_runs(const struct hmm_mrange *r, struct hmm_block *b,
		  const struct sel *s, struct hmm_zap *zaps, size_t *nzaps)
{
	/* Drops through the application's mapping, whose REMOVE events come
	 * back to libhmm: anonymous memory, and files (MADV_DONTNEED unmaps
	 * their pages, the page cache keeps them). */
	bool anon = r->kind == HMM_MK_ANON || r->kind == HMM_MK_FILE;
	int ret = 0;

	/* No VMA may split through an interposed call between the drop and
	 * the handling of its REMOVE events (see hmm__zap_claim_run). */
	if (anon)
		pthread_rwlock_rdlock(&hmm__ctx.vma_lock);
	*nzaps = 0;
	for (size_t k = 0; k < s->n;) {
		size_t n = sel_run(s, k), m = 0;
		/* Within the run, the sub-runs whose flag is set. */
		while (m < n) {
			size_t a = m;
			while (a < n && !s->flag[k + a])
				a++;
			size_t z = a;
			while (z < n && s->flag[k + z])
				z++;
			if (a < z) {
				struct hmm_zap *zp = &zaps[(*nzaps)++];
				zp->start = sel_va(b, s->idx[k + a]);
				zp->end = sel_va(b, s->idx[k + z - 1]) +
					  HMM_PAGE_SIZE;
				hmm__rec_push(&hmm__ctx.zaps, zp);
				int e = zap_one(r, zp->start, zp->end);
				if (e && !ret)
					ret = e;
			}
			m = z;
		}
		k += n;
	}
	/* madvise returns once its REMOVE events are read, not handled: wait
	 * until they are, so that they meet their records. */
	if (anon && *nzaps)
		hmm__service_sync();
	if (anon)
		pthread_rwlock_unlock(&hmm__ctx.vma_lock);
	return ret;
}

/* ---- mremap while in flight ------------------------------------------- */

void hmm__forward_add(uintptr_t from, uintptr_t to)
{
	struct hmm_forward *f = malloc(sizeof(*f));

	if (!f) {
		hmm__warn("out of memory recording an mremap in flight");
		return;
	}
	f->from = from;
	f->to = to;
	pthread_mutex_lock(&hmm__ctx.zap_lock);
	f->next = hmm__ctx.forwards;
	hmm__ctx.forwards = f;
	pthread_mutex_unlock(&hmm__ctx.zap_lock);
}

uintptr_t hmm__forward_take(uintptr_t from)
{
	uintptr_t to = 0;

	pthread_mutex_lock(&hmm__ctx.zap_lock);
	for (struct hmm_forward **pp = &hmm__ctx.forwards; *pp;
	     pp = &(*pp)->next) {
		if ((*pp)->from == from) {
			struct hmm_forward *f = *pp;
			to = f->to;
			*pp = f->next;
			free(f);
			break;
		}
	}
	pthread_mutex_unlock(&hmm__ctx.zap_lock);
	return to;
}

bool hmm__forward_commit(uintptr_t to, hmm_device_t *dev, uint8_t devbits,
			 uint32_t dpfn, uint8_t st)
{
	struct hmm_block *nb = hmm__block_get(to);
	unsigned i = hmm__block_index(to);
	unsigned char vec = 0;
	bool waiters, on_dev;

	/* Present at the new address: the data moved with the page tables
	 * (the device copy, if any, is stale or equal).  Absent: only the
	 * device copy holds it. */
	if (mincore((void *)to, HMM_PAGE_SIZE, &vec))
		vec = 0;
	on_dev = dev && !(vec & 1);
	if (!nb)
		return false;
	pthread_mutex_lock(&nb->lock);
	/* service.c left a MIGRATING placeholder there. */
	waiters = nb->state[i] & PSF_WAITERS;
	if (on_dev) {
		nb->state[i] = PS_DEVICE | (st & PSF_DEV_WRITE);
		nb->dev[i] = devbits;
		nb->dpfn[i] = dpfn;
		hmm__devmem_set_owner(dev, dpfn, to);
	} else {
		nb->state[i] = PS_SYSTEM;
		nb->dev[i] = 0;
		nb->ndev--;
	}
	pthread_cond_broadcast(&nb->cond);
	pthread_mutex_unlock(&nb->lock);
	if (waiters)
		hmm__uffd_wake(hmm__ctx.uffd, to, HMM_PAGE_SIZE);
	return on_dev;
}

/* ---- the stash: where anonymous pages wait while they are copied ------- */

/*
 * UFFDIO_MOVE takes the present pages of a run out of the application's
 * mapping atomically, with whatever the CPU last wrote: a CPU access after
 * it faults (and parks), a drop before it left a hole (zeros).  So no
 * write-protection is needed, and no MADV_DONTNEED of the application's
 * range, whose REMOVE event could be mistaken for the application's own.
 * The pages land in a per-thread stash (2 MiB, registered with the same
 * userfaultfd, as UFFDIO_MOVE requires), are copied to the device from
 * there, and the stash is emptied.  Index i of a block sits at stash + i
 * pages.
 */
static pthread_key_t stash_key;
static pthread_once_t stash_once = PTHREAD_ONCE_INIT;

static void stash_free(void *p)
{
	if (hmm__ctx.uffd >= 0)
		hmm__uffd_unregister(hmm__ctx.uffd, (uintptr_t)p, HMM_BLOCK_SIZE);
	hmm__munmap_own(p, HMM_BLOCK_SIZE);
}

static void stash_key_init(void)
{
	pthread_key_create(&stash_key, stash_free);
}

__attribute__((destructor)) static void stash_key_fini(void)
{
	pthread_once(&stash_once, stash_key_init);
	pthread_key_delete(stash_key);
}

static char *stash_get(void)
{
	char *p;

	pthread_once(&stash_once, stash_key_init);
	p = pthread_getspecific(stash_key);
	if (p)
		return p;
	p = hmm__mmap_own_aligned(HMM_BLOCK_SIZE);
	if (p == MAP_FAILED)
		return NULL;
	/* 2 MiB aligned, so that a whole huge page can move as one. */
	if (hmm__uffd_register(hmm__ctx.uffd, (uintptr_t)p, HMM_BLOCK_SIZE,
			       false)) {
		hmm__munmap_own(p, HMM_BLOCK_SIZE);
		return NULL;
	}
	pthread_setspecific(stash_key, p);
	return p;
}

/* Empty the stash slots of the runs of @sel. */
static void stash_clear(char *stash, const struct sel *sel)
{
	size_t first = sel->idx[0], last = sel->idx[sel->n - 1];

	/* The stash is libhmm's alone: one madvise over the whole span.  Its
	 * REMOVE event concerns no managed page. */
	hmm__sys_madvise(stash + (first << HMM_PAGE_SHIFT),
			 (last - first + 1) << HMM_PAGE_SHIFT, MADV_DONTNEED);
}

/* Move each run of @sel from the user's mapping into the stash; then
 * sel->flag[k] tells whether page k had data.  Returns 0, or -errno with
 * whatever moved still in the stash (see stash_return). */
static int stash_take(struct hmm_block *b, struct sel *sel, char *stash,
		      const struct timespec *deadline)
{
	unsigned char vec[HMM_BLOCK_PAGES];
	size_t first = sel->idx[0], last = sel->idx[sel->n - 1];

	for (size_t k = 0; k < sel->n; k += sel_run(sel, k)) {
		uintptr_t va = sel_va(b, sel->idx[k]);
		uintptr_t dst = (uintptr_t)stash +
				((uintptr_t)sel->idx[k] << HMM_PAGE_SHIFT);
		size_t len = sel_run(sel, k) << HMM_PAGE_SHIFT, done = 0;
		while (done < len) {
			long m = hmm__uffd_move(hmm__ctx.uffd, dst + done,
						va + done, len - done, true);
			if (m > 0) {
				done += (size_t)m;
			} else if (m == -EAGAIN) {
				/* The address space is changing: let the
				 * service thread read the event first. */
				if (past(deadline))
					return -ETIMEDOUT;
				hmm__service_sync();
			} else {
				return m ? (int)m : -EIO;
			}
		}
	}
	if (mincore(stash + (first << HMM_PAGE_SHIFT),
		    (last - first + 1) << HMM_PAGE_SHIFT, vec))
		return -errno;
	for (size_t k = 0; k < sel->n; k++)
		sel->flag[k] = vec[sel->idx[k] - first] & 1;
	return 0;
}

/*
 * UFFDIO_MOVE could not put the stashed page @src back at @va (error
 * @err).  A hole in the stash had no data to return; a page at @va was
 * never taken; an unmapped @va has nowhere to take it.  Otherwise the data
 * goes back by copy, never dropped.
 */
static void return_page(uintptr_t va, uintptr_t src, int err)
{
	unsigned char vec = 0;

	if (mincore((void *)src, HMM_PAGE_SIZE, &vec) || !(vec & 1))
		return;
	if (err == -EEXIST || mincore((void *)va, HMM_PAGE_SIZE, &vec))
		return;
	for (int tries = 0; tries < 100; tries++) {
		long r = hmm__uffd_copy(hmm__ctx.uffd, va, (void *)src,
					HMM_PAGE_SIZE, false, true);
		if (r == 1 || r == -EEXIST || r == -ENOENT)
			return;
		if (r == -EAGAIN)
			hmm__service_sync();
		else
			usleep(1000);
	}
	hmm__warn("page at %#lx could not be put back after a failed move",
		  (unsigned long)va);
}

/* Put the stashed pages of @sel back where they came from (the pages are
 * still MIGRATING, so nothing was installed there meanwhile). */
static void stash_return(struct hmm_block *b, const struct sel *sel,
			 char *stash)
{
	for (size_t k = 0; k < sel->n; k += sel_run(sel, k)) {
		uintptr_t va = sel_va(b, sel->idx[k]);
		uintptr_t src = (uintptr_t)stash +
				((uintptr_t)sel->idx[k] << HMM_PAGE_SHIFT);
		size_t len = sel_run(sel, k) << HMM_PAGE_SHIFT, done = 0;
		for (int tries = 0; done < len && tries < 1000; tries++) {
			long m = hmm__uffd_move(hmm__ctx.uffd, va + done,
						src + done, len - done, true);
			if (m > 0) {
				done += (size_t)m;
			} else if (m == -EAGAIN) {
				hmm__service_sync();
			} else {
				return_page(va + done, src + done, (int)m);
				done += HMM_PAGE_SIZE;
			}
		}
	}
	stash_clear(stash, sel);
}

/* Phase 2 from the stash: copy the pages that had data, zero the others. */
static int copy_from_stash(struct hmm_block *b, hmm_device_t *dev,
			   const struct sel *sel, char *stash)
{
	struct hmm_copy_desc *descs = malloc(sel->n * sizeof(*descs));
	uint64_t zero[HMM_BLOCK_PAGES];
	size_t nd = 0, nz = 0;
	int ret;

	(void)b;
	if (!descs)
		return -ENOMEM;
	for (size_t k = 0; k < sel->n; k++) {
		if (sel->flag[k])
			descs[nd++] = (struct hmm_copy_desc){
				sel->dpfn[k],
				stash + ((size_t)sel->idx[k] << HMM_PAGE_SHIFT) };
		else
			zero[nz++] = sel->dpfn[k];
	}
	ret = dev->ops->copy(dev, HMM_COPY_TO_DEVICE, descs, nd);
	free(descs);
	if (!ret && nz)
		ret = dev->ops->zero(dev, zero, nz);
	return ret;
}

/* ---- whole huge pages (thp.c) ------------------------------------------ */

/* Put back the first @len bytes of a huge-page move that stopped short
 * (the huge page was split meanwhile: the kernel moved 4 KiB entries):
 * from the device's memory at @pool to the application's @va.  The
 * pages are MIGRATING: nothing was installed at @va meanwhile. */
static void thp_unmove(uintptr_t va, uintptr_t pool, size_t len)
{
	size_t done = 0;

	for (int tries = 0; done < len && tries < 1000; tries++) {
		long m = hmm__uffd_move(hmm__ctx.uffd, va + done, pool + done,
					len - done, true);
		if (m > 0) {
			done += (size_t)m;
		} else if (m == -EAGAIN) {
			hmm__service_sync();
		} else {
			return_page(va + done, pool + done, (int)m);
			done += HMM_PAGE_SIZE;
		}
	}
}

/*
 * Phase 2 of a whole block that is one huge page, into the clean chunk
 * of sel->dpfn[0]: one UFFDIO_MOVE of 2 MiB.  Atomic for the CPU: an
 * access before it moves with the page, one after it faults (MISSING)
 * and waits for the commit, as the pages are MIGRATING.  Returns 0 (the
 * data is in the device's memory, the application's PMD is empty),
 * -errno with nothing moved (the chunk is still clean), or 1: it moved
 * part and put it back (something is mapped in the chunk now).  The
 * caller copies in both cases.
 */
static int thp_move_in(struct hmm_block *b, hmm_device_t *dev,
		       const struct sel *sel, const struct timespec *deadline)
{
	uintptr_t to = (uintptr_t)dev->ops->host_ptr(dev, sel->dpfn[0]);

	for (;;) {
		long m = hmm__uffd_move(hmm__ctx.uffd, to, b->base,
					HMM_BLOCK_SIZE, false);
		if (m == (long)HMM_BLOCK_SIZE)
			return 0;
		if (m > 0) {
			thp_unmove(b->base, to, (size_t)m);
			return 1;
		}
		if (m != -EAGAIN)
			return m ? (int)m : -EIO;
		/* The address space is changing: let the service thread
		 * read the event first. */
		if (past(deadline))
			return -ETIMEDOUT;
		hmm__service_sync();
	}
}

/* ---- to device --------------------------------------------------------- */

/* Undo phase 1 (and the allocation) for the pages of @s. */
static void rollback_to_system(struct hmm_block *b, struct sel *s,
			       hmm_device_t *dev, bool have_dpfns, bool fprot)
{
	bool waiters = false;

	pthread_mutex_lock(&b->lock);
	for (size_t k = 0; k < s->n; k++) {
		uint8_t st = b->state[s->idx[k]];
		waiters |= st & PSF_WAITERS;
		b->state[s->idx[k]] = (st & PSF_UNMAPPED) ? PS_NONE
				      : (st & PSF_CLEARED)
					      ? PS_SYSTEM | PSF_DROPPING
					      : PS_SYSTEM;
		if (st & (PSF_UNMAPPED | PSF_CLEARED))
			b->mod[s->idx[k]] = PMOD_UNHOLD(b->mod[s->idx[k]]);
		if (st & PSF_UNMAPPED) {
			/* mremap moved it; the data moved with the page
			 * tables (nothing was dropped yet). */
			uintptr_t to = hmm__forward_take(sel_va(b, s->idx[k]));
			if (to)
				hmm__forward_commit(to, NULL, 0, 0, 0);
		}
	}
	b->ndev -= (uint16_t)s->n;
	/* FPROT: the application's protection back (the zap may have run),
	 * before anyone sees the pages in system memory. */
	if (fprot)
		hmm__fprot_restore_locked(b, sel_va(b, s->idx[0]),
					  sel_va(b, s->idx[s->n - 1]) +
						  HMM_PAGE_SIZE);
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->lock);
	if (have_dpfns)
		hmm__devmem_free(dev, s->dpfn, s->n);
	if (waiters)
		for (size_t k = 0; k < s->n; k += sel_run(s, k))
			hmm__uffd_wake(hmm__ctx.uffd, sel_va(b, s->idx[k]),
				       sel_run(s, k) << HMM_PAGE_SHIFT);
	hmm__stat_add(HMM_STAT_migration_failures, 1);
}

/* Write-protect (or lift it from) each run of @s, retrying while an event
 * is queued (EAGAIN). */
static int wp_runs(struct hmm_block *b, const struct sel *s, bool wp,
		   const struct timespec *deadline)
{
	bool held[HMM_BLOCK_PAGES];
	int ret = 0;

	/* Lifting: pages held read-only for a device's atomics keep their
	 * protection (CPU writes wait for the hold, hold.c). */
	pthread_mutex_lock(&b->lock);
	for (size_t k = 0; k < s->n; k++)
		held[k] = !wp && PMOD_KIND(b->mod[s->idx[k]]) == PMOD_EXCL_RO;
	pthread_mutex_unlock(&b->lock);
	for (size_t k = 0; k < s->n;) {
		size_t n = 1;
		int r;
		if (held[k]) {
			k++;
			continue;
		}
		while (k + n < s->n && s->idx[k + n] == s->idx[k] + n &&
		       !held[k + n])
			n++;
		while ((r = hmm__uffd_writeprotect(hmm__ctx.uffd,
						   sel_va(b, s->idx[k]),
						   n << HMM_PAGE_SHIFT, wp)) ==
		       -EAGAIN) {
			if (past(deadline)) {
				r = -ETIMEDOUT;
				break;
			}
			sched_yield();
		}
		if (r && !ret)
			ret = r;
		k += n;
	}
	return ret;
}

/*
 * Whether the application's drop of page @i (@va) is still to happen: its
 * REMOVE event came (PSF_DROPPING) and the page is still there, so the
 * kernel has not zapped it yet and whatever data a migration finds there is
 * about to go.  An absent page means the drop is done: forget the mark.
 * Called with b->lock held (mincore waits for nothing of libhmm's).
 */
static bool drop_pending(struct hmm_block *b, unsigned i, uintptr_t va)
{
	unsigned char vec = 0;

	if (!(b->state[i] & PSF_DROPPING))
		return false;
	if (!mincore((void *)va, HMM_PAGE_SIZE, &vec) && (vec & 1))
		return true;
	b->state[i] &= (uint8_t)~PSF_DROPPING;
	return false;
}

/* ---- device to device ---------------------------------------------- */

/*
 * Settle the pages of @sel, MIGRATING from @src since peer_move collected
 * them: one unmapped meanwhile follows an mremap with its source copy (as
 * on a move home that did not install); one dropped meanwhile loses its
 * copies and reads zeros (the system side has no page: it was on a
 * device); any other goes to its page @to[k] in @dev, or back to its
 * source page when @to is NULL (an undo).  Frees the device pages no page
 * keeps, wakes the CPU faults that parked meanwhile (a page on @dev now
 * comes home from there) and returns the pages moved to @dev.
 */
static size_t peer_settle(struct hmm_block *b, const struct sel *sel,
			  hmm_device_t *src, hmm_device_t *dev,
			  const uint32_t *to, bool src_clean)
{
	uint32_t freed[HMM_BLOCK_PAGES], gone[HMM_BLOCK_PAGES];
	size_t nfree = 0, ngone = 0, moved = 0;
	bool waiters = false;

	pthread_mutex_lock(&b->lock);
	for (size_t k = 0; k < sel->n; k++) {
		unsigned i = sel->idx[k];
		uint8_t st = b->state[i], devbits = b->dev[i];
		uintptr_t va = sel_va(b, i);
		waiters |= st & PSF_WAITERS;
		if (st & PSF_UNMAPPED) {
			uintptr_t fwd = hmm__forward_take(va);
			b->state[i] = PS_NONE;
			b->dev[i] = 0;
			b->mod[i] = 0;
			b->ndev--;
			if (to)
				freed[nfree++] = to[k];
			if (!fwd || !hmm__forward_commit(fwd, src, devbits,
							 sel->dpfn[k], st))
				gone[ngone++] = sel->dpfn[k];
		} else if (st & PSF_CLEARED) {
			b->state[i] = PS_SYSTEM;
			b->dev[i] = 0;
			b->mod[i] = PMOD_UNHOLD(b->mod[i]);
			b->ndev--;
			if (to)
				freed[nfree++] = to[k];
			gone[ngone++] = sel->dpfn[k];
		} else if (to) {
			b->state[i] = PS_DEVICE | (st & PSF_DEV_WRITE);
			b->dev[i] = (uint8_t)((devbits & ~0x3fu) | dev->id);
			b->dpfn[i] = to[k];
			hmm__devmem_set_owner(dev, to[k], va);
			gone[ngone++] = sel->dpfn[k];
			moved++;
		} else {
			b->state[i] = PS_DEVICE | (st & PSF_DEV_WRITE);
		}
	}
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->lock);
	if (nfree)
		hmm__devmem_free(dev, freed, nfree);
	/* A huge page that moved whole leaves its source chunk clean. */
	if (src && src_clean && ngone == HMM_BLOCK_PAGES)
		hmm__devmem_free_chunk(src, sel->dpfn[0]);
	else if (src)
		hmm__devmem_free(src, gone, ngone);
	if (waiters)
		for (size_t k = 0; k < sel->n; k += sel_run(sel, k))
			hmm__uffd_wake(hmm__ctx.uffd, sel_va(b, sel->idx[k]),
				       sel_run(sel, k) << HMM_PAGE_SHIFT);
	return moved;
}

/* Copy the source pages of @sel to @to in @dst: memcpy between the two
 * pools when both drivers expose them, the drivers' copies through a
 * bounce buffer otherwise.  Returns 0 or -EIO/-ENOMEM. */
static int peer_copy(hmm_device_t *src, hmm_device_t *dst,
		     const struct sel *sel, const uint32_t *to)
{
	struct hmm_copy_desc d[HMM_BLOCK_PAGES];
	char *bb;
	int ret;

	if ((ret = hmm__inject(HMM_INJ_COPY_TO_DEVICE)))
		return ret;
	if (src->ops->host_ptr && dst->ops->host_ptr) {
		for (size_t k = 0; k < sel->n; k++)
			memcpy(dst->ops->host_ptr(dst, to[k]),
			       src->ops->host_ptr(src, sel->dpfn[k]),
			       HMM_PAGE_SIZE);
		return 0;
	}
	bb = hmm__mmap_own(sel->n << HMM_PAGE_SHIFT, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (bb == MAP_FAILED)
		return -ENOMEM;
	for (size_t k = 0; k < sel->n; k++)
		d[k] = (struct hmm_copy_desc){ sel->dpfn[k],
					       bb + (k << HMM_PAGE_SHIFT) };
	ret = src->ops->copy(src, HMM_COPY_TO_SYSTEM, d, sel->n);
	for (size_t k = 0; !ret && k < sel->n; k++)
		d[k].dpfn = to[k];
	if (!ret)
		ret = dst->ops->copy(dst, HMM_COPY_TO_DEVICE, d, sel->n);
	hmm__munmap_own(bb, sel->n << HMM_PAGE_SHIFT);
	return ret;
}

/*
 * Peer migration: pages of [s, e) that are on one other device (the first
 * such page's) go straight to @dev, without a stop in system memory: no
 * CPU page-table change, no userfaultfd call, one copy between the two
 * device memories (memcpy between the drivers' host pointers when both
 * have them, through a bounce buffer otherwise).
 *
 * The pages are MIGRATING meanwhile with b->dev still naming the source,
 * as on a move home: a CPU fault parks, a device fault waits, a drop marks
 * them cleared, an unmap marks them unmapped, and the commit settles each
 * case under the lock.  Pages held for a device's atomics, or locked,
 * are left where they are (the caller takes them through system memory,
 * which ends a hold, or leaves them).
 *
 * Anonymous and shared memory only: file pages carry write-back debts
 * (PDEV_OWES, a driver's dirty marks) that belong to their device page;
 * they go through system memory, which pays the debt.
 *
 * When @dev's memory cannot take them all (after an eviction, with
 * HMM_EVICT), the pages that fit move and the next call returns -ENOMEM:
 * the others stay on their device, with their data.
 *
 * Returns pages moved, 0 if none could go this way (the caller then uses
 * system memory), or -errno (-ENOMEM, or a copy failed: the pages stay on
 * their device).
 */
/* Whether @sel is a whole block in one chunk of @src, mapped there by a
 * huge page, that may move whole to @dev. */
static bool peer_thp_ok(hmm_device_t *src, hmm_device_t *dev,
			const struct sel *sel)
{
	if (!src->mem->movable || !dev->mem->movable || !sel_whole_chunk(sel))
		return false;
	return hmm__thp_mapped((uintptr_t)src->ops->host_ptr(src,
							      sel->dpfn[0]));
}

/*
 * Move the huge page of @sel from @src's memory into @dev's clean chunk
 * @to: one UFFDIO_MOVE between the two pools.  True if it moved whole.
 * Otherwise nothing has moved (a part that did is put back, by a move or
 * a copy, into the source pages, which are still @sel's), and the caller
 * copies.
 */
static bool peer_thp_move(hmm_device_t *src, hmm_device_t *dev,
			  const struct sel *sel, const uint32_t *to)
{
	uintptr_t from = (uintptr_t)src->ops->host_ptr(src, sel->dpfn[0]);
	uintptr_t dst = (uintptr_t)dev->ops->host_ptr(dev, to[0]);
	long m = -EAGAIN;

	for (int tries = 0; m == -EAGAIN && tries < 100; tries++) {
		m = hmm__uffd_move(hmm__ctx.uffd, dst, from, HMM_BLOCK_SIZE,
				   false);
		if (m == -EAGAIN)
			hmm__service_sync();
	}
	if (m == (long)HMM_BLOCK_SIZE) {
		hmm__stat_add(HMM_STAT_thp_moves_to_device, 1);
		return true;
	}
	for (size_t done = 0, tries = 0; m > 0 && done < (size_t)m;) {
		/* Split meanwhile: put the moved part back (by a copy once
		 * moves keep failing: both sides are libhmm's pools). */
		long r = tries++ < 100 ? hmm__uffd_move(hmm__ctx.uffd,
							from + done, dst + done,
							(size_t)m - done, true)
				       : -EIO;
		if (r > 0) {
			done += (size_t)r;
		} else if (r == -EAGAIN) {
			hmm__service_sync();
		} else {
			memcpy((void *)(from + done), (void *)(dst + done),
			       HMM_PAGE_SIZE);
			done += HMM_PAGE_SIZE;
		}
	}
	return false;
}

static size_t free_pages(hmm_device_t *dev)
{
	size_t used = 0, total = 0;

	if (hmm_device_mem_usage(dev, &used, &total))
		return 0;
	return total - used;
}

static long peer_move(struct hmm_block *b, uintptr_t s, uintptr_t e,
		      hmm_device_t *dev, struct sel *sel)
{
	uint32_t to[HMM_BLOCK_PAGES];
	hmm_device_t *src;
	bool thp = false;
	size_t moved;
	int ret;

	size_t room = free_pages(dev), want = (e - s) >> HMM_PAGE_SHIFT;

	if (room < want && hmm__devmem_evict(dev, want - room) > 0)
		room = free_pages(dev);
	pthread_mutex_lock(&b->lock);
	sel->n = 0;
	for (uintptr_t p = s; p < e && sel->n < room; p += HMM_PAGE_SIZE) {
		unsigned i = hmm__block_index(p);
		uint8_t st = b->state[i];
		unsigned id = PDEV_ID(b->dev[i]);
		if (PS_KIND(st) != PS_DEVICE || id == dev->id ||
		    PMOD_KIND(b->mod[i]) == PMOD_LOCKED ||
		    PMOD_IS_EXCL(b->mod[i]) || (sel->n && id != sel->dev))
			continue;
		sel->dev = id;
		b->state[i] = PS_MIGRATING | (st & PSF_DEV_WRITE);
		sel->idx[sel->n] = i;
		sel->dpfn[sel->n++] = b->dpfn[i];
	}
	pthread_mutex_unlock(&b->lock);
	if (!sel->n)
		return room ? 0 : -ENOMEM;
	src = hmm__device_get(sel->dev);
	/* A whole huge page in a chunk of a movable device moves whole into
	 * a clean chunk of another (thp.c). */
	thp = src && peer_thp_ok(src, dev, sel) &&
	      hmm__devmem_alloc_chunk(dev, to) == 0;
	ret = thp ? 0 : src ? hmm__devmem_alloc(dev, sel->n, to) : -ENODEV;
	if (ret) {
		/* Taken meanwhile by another migration: the pages stay;
		 * no source cannot happen (close brings its pages home
		 * first). */
		peer_settle(b, sel, src, dev, NULL, false);
		return ret == -ENODEV ? 0 : ret;
	}
	uintptr_t span_s = sel_va(b, sel->idx[0]);
	uintptr_t span_e = sel_va(b, sel->idx[sel->n - 1]) + HMM_PAGE_SIZE;
	/* The source's translations go, and so would any of @dev's (the
	 * owner tells drivers that @dev asked). */
	if (!hmm__invalidate(span_s, span_e, HMM_NOTIFY_MIGRATE, dev, true)) {
		peer_settle(b, sel, src, dev, NULL, false);
		if (thp)
			hmm__devmem_free_chunk(dev, to[0]);
		else
			hmm__devmem_free(dev, to, sel->n);
		return 0;
	}
	if (thp && !(thp = peer_thp_move(src, dev, sel, to)))
		hmm__stat_add(HMM_STAT_thp_moves_failed, 1);
	ret = thp ? 0 : peer_copy(src, dev, sel, to);
	if (ret) {
		peer_settle(b, sel, src, dev, NULL, false);
		hmm__devmem_free(dev, to, sel->n);
		hmm__stat_add(HMM_STAT_migration_failures, 1);
		return ret;
	}
	moved = peer_settle(b, sel, src, dev, to, thp);
	hmm__stat_add(HMM_STAT_pages_peer, moved);
	return (long)moved;
}

/* Phase 1 for one block: returns 0, or -EAGAIN to start over (the caller
 * waited or moved pages from another device), or -errno. */
static int collect_to_device(struct hmm_block *b, uintptr_t s, uintptr_t e,
			     hmm_device_t *dev, const struct hmm_vma *vmas,
			     long nvmas, struct sel *sel, bool peer,
			     size_t *peered, const struct timespec *deadline)
{
	uintptr_t other_s = 0, other_e = 0;

	pthread_mutex_lock(&b->lock);
	if (b->dups && hmm__dups_any_locked(b, hmm__block_index(s),
					    hmm__block_index(e - 1) + 1)) {
		/* Read-only copies on devices (dup.c) go first: the page
		 * moves, one copy of it. */
		pthread_mutex_unlock(&b->lock);
		hmm__dups_collapse(s, e, NULL, HMM_NOTIFY_MIGRATE, true);
		return -EAGAIN;
	}
	for (uintptr_t p = s; p < e; p += HMM_PAGE_SIZE) {
		unsigned i = hmm__block_index(p);
		uint8_t st = b->state[i];
		switch (PS_KIND(st)) {
		case PS_NONE:
			pthread_mutex_unlock(&b->lock);
			return -ENOENT;
		case PS_SYSTEM:
			break;
		case PS_MIGRATING: {
			int r = wait_block(b, deadline);
			pthread_mutex_unlock(&b->lock);
			return r ? r : -EAGAIN;
		}
		case PS_DEVICE:
			/* Locked to another device: it stays there. */
			if (PDEV_ID(b->dev[i]) != dev->id &&
			    PMOD_KIND(b->mod[i]) != PMOD_LOCKED) {
				if (!other_s)
					other_s = p;
				other_e = p + HMM_PAGE_SIZE;
			}
			break;
		}
	}
	if (other_s) {
		/* Pages on another device come straight from it where they
		 * can (peer_move), through system memory otherwise. */
		pthread_mutex_unlock(&b->lock);
		long r = peer ? peer_move(b, other_s, other_e, dev, sel) : 0;
		if (r > 0)
			*peered += (size_t)r;
		if (r == 0)
			r = hmm__migrate_to_system(other_s, other_e, NULL, 0);
		return r < 0 ? (int)r : -EAGAIN;
	}
	sel->n = 0;
	for (uintptr_t p = s; p < e; p += HMM_PAGE_SIZE) {
		unsigned i = hmm__block_index(p);
		const struct hmm_vma *v;
		if (PS_KIND(b->state[i]) != PS_SYSTEM)
			continue;
		v = hmm__vma_find(vmas, nvmas, p);
		b->state[i] = PS_MIGRATING | PSF_TO_DEVICE |
			      (drop_pending(b, i, p) ? PSF_CLEARED : 0) |
			      (v && (v->prot & PROT_WRITE) ? PSF_DEV_WRITE : 0);
		b->dev[i] = (uint8_t)dev->id;
		sel->flag[sel->n] = 0;
		sel->idx[sel->n++] = i;
	}
	b->ndev += (uint16_t)sel->n;
	pthread_mutex_unlock(&b->lock);
	return 0;
}

/* Phase 2: copy the present pages of @sel, zero the others. */
static int copy_to_device(const struct hmm_mrange *r, struct hmm_block *b,
			  hmm_device_t *dev, struct sel *sel)
{
	uintptr_t span_s = sel_va(b, sel->idx[0]);
	uintptr_t span_e = sel_va(b, sel->idx[sel->n - 1]) + HMM_PAGE_SIZE;
	unsigned char vec[HMM_BLOCK_PAGES];
	struct hmm_copy_desc *descs;
	uint64_t zero[HMM_BLOCK_PAGES];
	size_t nd = 0, nz = 0;
	int ret;

	if (mincore((void *)span_s, span_e - span_s, vec))
		return errno == ENOMEM ? -EFAULT : -errno;
	descs = malloc(sel->n * sizeof(*descs));
	if (!descs)
		return -ENOMEM;
	pthread_mutex_lock(&b->lock);
	for (size_t k = 0; k < sel->n; k++) {
		unsigned i = sel->idx[k];
		uintptr_t va = sel_va(b, i);
		if (vec[(va - span_s) >> HMM_PAGE_SHIFT] & 1) {
			b->state[i] |= PSF_SRC_PRESENT;
			descs[nd++] = (struct hmm_copy_desc){
				sel->dpfn[k], source_ptr(r, va) };
		} else {
			zero[nz++] = sel->dpfn[k];
		}
	}
	pthread_mutex_unlock(&b->lock);
	ret = hmm__inject(HMM_INJ_COPY_TO_DEVICE);
	if (!ret)
		ret = hmm__guarded_copy(dev, HMM_COPY_TO_DEVICE, descs, nd);
	free(descs);
	if (!ret && nz)
		ret = dev->ops->zero(dev, zero, nz);
	return ret;
}

/* Phase 3, after the drop: set the states.  @zapped tells, per page, that
 * its system copy is gone (so its data lives only in the device copy).
 * Returns pages now on the device. */
static size_t commit_to_device(struct hmm_block *b, hmm_device_t *dev,
			       struct sel *sel, bool *waiters, bool fprot,
			       bool shmem)
{
	uint32_t dropped[HMM_BLOCK_PAGES];
	size_t moved = 0, drop = 0;

	pthread_mutex_lock(&b->lock);
	for (size_t k = 0; k < sel->n; k++) {
		unsigned i = sel->idx[k];
		uint8_t st = b->state[i];
		uint8_t devbits = b->dev[i];
		*waiters |= st & PSF_WAITERS;
		if (st & PSF_UNMAPPED) {
			/* Unmapped, or moved by mremap, meanwhile: follow a
			 * move; the device copy stays only if it holds the
			 * data (the page is absent at the new address). */
			uintptr_t to = hmm__forward_take(sel_va(b, i));
			b->state[i] = PS_NONE;
			b->mod[i] = 0;
			b->ndev--;
			if (!to || !hmm__forward_commit(to, dev, devbits,
							sel->dpfn[k], st))
				dropped[drop++] = sel->dpfn[k];
		} else if (!sel->flag[k] || (st & PSF_CLEARED)) {
			/* Not dropped (the drop failed there, or the
			 * application dropped the page meanwhile): the system
			 * copy stays, the device copy goes.  Dropped by the
			 * application: while its madvise is under way (its
			 * record in ctx.drops), the kernel may not have
			 * dropped yet (a file's page cache keeps the old data
			 * until the hole is punched) and the next migration
			 * looks (drop_pending); once it has returned, a mark
			 * would outlive it and make a later migration drop
			 * what the application wrote since.  (Files keep the
			 * mark: their drops, truncations included, are not
			 * all recorded there, and the mark is checked against
			 * the page cache.) */
			dropped[drop++] = sel->dpfn[k];
			b->state[i] = PS_SYSTEM;
			if ((st & PSF_CLEARED) &&
			    (!shmem ||
			     hmm__rec_covers(&hmm__ctx.drops, sel_va(b, i),
					     sel_va(b, i) + HMM_PAGE_SIZE)))
				b->state[i] |= PSF_DROPPING;
			b->ndev--;
		} else {
			b->state[i] = PS_DEVICE | (st & PSF_DEV_WRITE);
			hmm__devmem_set_owner(dev, sel->dpfn[k], sel_va(b, i));
			moved++;
		}
	}
	/* FPROT pages that stay in system memory (dropped meanwhile) get
	 * the application's protection back before anyone sees them. */
	for (size_t k = 0; fprot && k < sel->n; k++)
		if (PS_KIND(b->state[sel->idx[k]]) == PS_SYSTEM)
			hmm__sys_mprotect((void *)sel_va(b, sel->idx[k]),
					  HMM_PAGE_SIZE,
					  PMOD_PROT(b->mod[sel->idx[k]]));
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->lock);
	if (drop)
		hmm__devmem_free(dev, dropped, drop);
	return moved;
}

/*
 * The pages collected in [s, e) took the protection of VMAs read before an
 * mprotect that has run since (ctx.prot_gen moved): give the device and
 * moving pages there the protection of the VMAs as they are now, again
 * until no mprotect interleaves.  (An mprotect after this updates moving
 * pages itself, interpose.c.)
 */
static void reprotect(uintptr_t s, uintptr_t e)
{
	for (int round = 0; round < 10; round++) {
		unsigned long g = atomic_load(&hmm__ctx.prot_gen);
		struct hmm_vma *v;
		long n = hmm__vma_snapshot(s, e, &v);
		if (n < 0)
			return;
		hmm__file_fix_prot(&v, &n);
		for (long i = 0; i < n; i++)
			hmm__protect_range(HMM_MAX(s, v[i].start),
					   HMM_MIN(e, v[i].end), v[i].prot);
		free(v);
		if (atomic_load(&hmm__ctx.prot_gen) == g)
			return;
	}
}

/* Files, phase 2: copy every page (a file page not in memory has data
 * all the same: reading it brings it in).  Shared mappings are read
 * through the alias; private ones, whose pages may differ from the file's,
 * through /proc/self/mem, which reads the PROT_NONE pages as they are.  A
 * page past the end of the file faults (SIGBUS): -EFAULT. */
static int file_copy_to_device(const struct hmm_mrange *r, struct hmm_block *b,
			       hmm_device_t *dev, const struct sel *sel)
{
	struct hmm_copy_desc *descs = malloc(sel->n * sizeof(*descs));
	char *buf = NULL;
	int ret = hmm__inject(HMM_INJ_COPY_TO_DEVICE);

	if (!descs)
		return -ENOMEM;
	if (!ret && r->alloc->priv) {
		buf = malloc(sel->n << HMM_PAGE_SHIFT);
		if (!buf)
			ret = -ENOMEM;
		for (size_t k = 0; !ret && k < sel->n; k += sel_run(sel, k)) {
			size_t len = sel_run(sel, k) << HMM_PAGE_SHIFT;
			ret = hmm__procmem_rw(false, buf + (k << HMM_PAGE_SHIFT),
					      sel_va(b, sel->idx[k]), len);
		}
	}
	for (size_t k = 0; !ret && k < sel->n; k++)
		descs[k] = (struct hmm_copy_desc){
			sel->dpfn[k],
			buf ? buf + (k << HMM_PAGE_SHIFT)
			    : hmm__file_alias_ptr(r, sel_va(b, sel->idx[k])) };
	if (!ret)
		ret = hmm__guarded_copy(dev, HMM_COPY_TO_DEVICE, descs, sel->n);
	free(descs);
	free(buf);
	return ret;
}

/*
 * FILE: every page of @sel gets a page-cache page before the zap.  A CPU
 * access to a hole is served by the kernel without a MINOR fault (there
 * is no page to be minor about): after the zap it would map a fresh page
 * behind libhmm's back while the data lives on the device.  With the page
 * there, any access after the zap is a MINOR fault, which waits for this
 * migration.  (Accesses before the zap land in the page cache, which is
 * copied after it.)  Pages past the end of the file fail: -EFAULT.
 */
static int file_populate(const struct hmm_mrange *r, struct hmm_block *b,
			 const struct sel *sel)
{
	if (r->kind != HMM_MK_FILE)
		return 0;
	for (size_t k = 0; k < sel->n; k += sel_run(sel, k))
		if (hmm__sys_madvise(hmm__file_alias_ptr(r, sel_va(b, sel->idx[k])),
				     sel_run(sel, k) << HMM_PAGE_SHIFT,
				     MADV_POPULATE_READ))
			return errno == EINVAL ? 0 /* kernel < 5.14 */
					       : -EFAULT;
	return 0;
}

/*
 * FPROT, phase 2: the pages become PROT_NONE, run by run, under the block
 * lock, skipping pages unmapped meanwhile: the munmap wrapper marks them
 * (PSF_UNMAPPED, under the lock) before its system call, so an mprotect
 * here never reaches a mapping made at the same address since.
 */
static int fprot_zap(struct hmm_block *b, const struct sel *sel)
{
	int ret = hmm__inject(HMM_INJ_ZAP);

	if (ret)
		return ret;
	pthread_mutex_lock(&b->lock);
	for (size_t k = 0; k < sel->n && !ret;) {
		size_t m = 0;
		while (k + m < sel->n &&
		       sel->idx[k + m] == sel->idx[k] + m &&
		       !(b->state[sel->idx[k + m]] & PSF_UNMAPPED))
			m++;
		if (!m) {
			k++;
			continue;
		}
		if (hmm__sys_mprotect((void *)sel_va(b, sel->idx[k]),
				      m << HMM_PAGE_SHIFT, PROT_NONE))
			ret = -errno;
		k += m;
	}
	pthread_mutex_unlock(&b->lock);
	return ret;
}

static long block_to_device(const struct hmm_mrange *r, uintptr_t s,
			    uintptr_t e, hmm_device_t *dev,
			    const struct hmm_vma *vmas, long nvmas,
			    unsigned long prot_gen, struct sel *sel,
			    struct hmm_zap *zaps)
{
	struct hmm_block *b = hmm__block_lookup(s);
	bool waiters = false, wp = hmm__ctx.caps & HMM_CAP_WP;
	bool fprot = r->kind == HMM_MK_FPROT;
	bool peer = (r->kind == HMM_MK_ANON || r->kind == HMM_MK_SHMEM) &&
		    hmm__option(HMM_OPT_PEER_MIGRATE);
	struct timespec deadline;
	size_t nzaps = 0, moved, peered = 0;
	int evictions = 0;
	bool thp = false;
	char *stash;
	int ret;

	if (!b)
		return -ENOENT;
	deadline_in(&deadline, hmm__option(HMM_OPT_MIGRATE_TIMEOUT_MS));
again:
	while ((ret = collect_to_device(b, s, e, dev, vmas, nvmas, sel,
					peer, &peered, &deadline)) == -EAGAIN)
		;
	if (ret)
		return ret;
	if (!sel->n)
		return (long)peered;
	if (atomic_load(&hmm__ctx.prot_gen) != prot_gen)
		reprotect(s, e);
	/* A whole block mapped by one huge page moves whole to a movable
	 * device that has a clean chunk for it (thp.c). */
	thp = r->kind == HMM_MK_ANON && sel->n == HMM_BLOCK_PAGES &&
	      dev->mem->movable && hmm__thp_mapped(b->base) &&
	      hmm__devmem_alloc_chunk(dev, sel->dpfn) == 0;
	ret = thp ? 0 : hmm__devmem_alloc(dev, sel->n, sel->dpfn);
	if (ret == -ENOMEM && evictions < 8) {
		/* Device memory is full: make room (least recently used
		 * pages go home), then collect again. */
		long r;
		rollback_to_system(b, sel, dev, false, fprot);
		r = hmm__devmem_evict(dev, sel->n);
		if (r > 0) {
			evictions++;
			goto again;
		}
		return -ENOMEM;
	}
	if (ret) {
		rollback_to_system(b, sel, dev, false, fprot);
		return ret;
	}
	pthread_mutex_lock(&b->lock);
	for (size_t k = 0; k < sel->n; k++)
		b->dpfn[sel->idx[k]] = sel->dpfn[k];
	pthread_mutex_unlock(&b->lock);

	/* Phase 2: no device may keep using the system pages, and no CPU
	 * write may land after its page was copied. */
	if (!hmm__invalidate(sel_va(b, sel->idx[0]),
			     sel_va(b, sel->idx[sel->n - 1]) + HMM_PAGE_SIZE,
			     HMM_NOTIFY_MIGRATE, dev, true)) {
		/* A device access could not finish (it may be waiting for
		 * one of these pages): back off, which wakes it, and retry.
		 * A chunk for a huge page is still clean. */
		rollback_to_system(b, sel, dev, !thp, fprot);
		if (thp)
			hmm__devmem_free_chunk(dev, sel->dpfn[0]);
		if (past(&deadline))
			return -EBUSY;
		usleep(1000);
		goto again;
	}
	if (HMM_MK_IS_FILE(r->kind)) {
		/* Files: the user's mapping lets go first (its page-table
		 * entries zapped, or PROT_NONE), so that a CPU access now
		 * waits for this migration; the page cache (or the private
		 * page) keeps the data, which is copied from there. */
		memset(sel->flag, 1, sel->n);
		ret = file_populate(r, b, sel);
		if (!ret)
			ret = r->kind == HMM_MK_FPROT
				      ? fprot_zap(b, sel)
				      : hmm__zap_runs(r, b, sel, zaps, &nzaps);
		if (!ret)
			ret = file_copy_to_device(r, b, dev, sel);
		if (ret) {
			for (size_t z = 0; z < nzaps; z++)
				hmm__rec_pop(&hmm__ctx.zaps, &zaps[z]);
			rollback_to_system(b, sel, dev, true, fprot);
			return ret;
		}
		goto commit;
	}
	if (thp) {
		ret = thp_move_in(b, dev, sel, &deadline);
		if (!ret) {
			memset(sel->flag, 1, sel->n);
			goto commit;
		}
		/* Shared with a child since fork, mlocked, read-only, split
		 * meanwhile: copy it, into the same chunk. */
		hmm__stat_add(HMM_STAT_thp_moves_failed, 1);
		hmm__debug("huge page at %#lx not moved (%s): copying",
			   (unsigned long)b->base,
			   ret > 0 ? "split" : strerror(-ret));
		thp = false;
		if (ret < 0 && ret != -ETIMEDOUT) {
			/* Nothing moved: keep the chunk clean for another
			 * huge page, and copy into other pages if there are
			 * (into the chunk otherwise). */
			uint32_t pages[HMM_BLOCK_PAGES], base = sel->dpfn[0];
			if (!hmm__devmem_alloc(dev, sel->n, pages)) {
				memcpy(sel->dpfn, pages, sizeof(pages));
				pthread_mutex_lock(&b->lock);
				for (size_t k = 0; k < sel->n; k++)
					b->dpfn[sel->idx[k]] = sel->dpfn[k];
				pthread_mutex_unlock(&b->lock);
				hmm__devmem_free_chunk(dev, base);
			}
		}
		if (ret == -ETIMEDOUT) {
			/* Nothing moved: the chunk is still clean. */
			rollback_to_system(b, sel, dev, false, fprot);
			hmm__devmem_free_chunk(dev, sel->dpfn[0]);
			return ret;
		}
	}
	if (r->kind == HMM_MK_ANON && (hmm__ctx.caps & HMM_CAP_MOVE) &&
	    hmm__option(HMM_OPT_USE_MOVE) && (stash = stash_get())) {
		ret = stash_take(b, sel, stash, &deadline);
		if (!ret) {
			ret = copy_from_stash(b, dev, sel, stash);
			if (ret) {
				stash_return(b, sel, stash);
				rollback_to_system(b, sel, dev, true, fprot);
				return ret;
			}
			stash_clear(stash, sel);
			/* Every source is gone now: its data, if it had any,
			 * is the device copy's. */
			memset(sel->flag, 1, sel->n);
			goto commit;
		}
		/* A page could not move (shared with a child since fork,
		 * KSM, pinned): put back what moved, take the other way. */
		stash_return(b, sel, stash);
		hmm__debug("UFFDIO_MOVE failed (%s): write-protect and drop",
			   strerror(-ret));
	}
	if (wp && (ret = wp_runs(b, sel, true, &deadline)))
		goto fail_unwp;
	ret = copy_to_device(r, b, dev, sel);
	if (ret)
		goto fail_unwp;

	/* Phase 3.  Shared memory: a page the application dropped meanwhile
	 * (PSF_CLEARED) is not dropped again.  Its drop took the old data;
	 * what is there now came after it: the application may have read the
	 * hole back through a page that the copy's read of the alias put in
	 * the page cache (no userfaultfd fault then) and written it, and a
	 * second drop would lose that (race_migrate_drop_shared caught it).
	 * A mark set after this look is for a drop still under way, whose
	 * data may go. */
	memset(sel->flag, 1, sel->n);
	if (r->kind == HMM_MK_SHMEM) {
		pthread_mutex_lock(&b->lock);
		for (size_t k = 0; k < sel->n; k++)
			if (b->state[sel->idx[k]] & PSF_CLEARED)
				sel->flag[k] = 0;
		pthread_mutex_unlock(&b->lock);
	}
	ret = hmm__zap_runs(r, b, sel, zaps, &nzaps);
	if (ret) {
		/* The drop failed part-way (the range changed under us):
		 * pages it dropped live only on the device now and are
		 * committed; pages still present are rolled back. */
		unsigned char vec[HMM_BLOCK_PAGES];
		uintptr_t span_s = sel_va(b, sel->idx[0]);
		if (mincore((void *)span_s,
			    sel_va(b, sel->idx[sel->n - 1]) + HMM_PAGE_SIZE -
				    span_s, vec))
			memset(vec, 0, sizeof(vec));
		for (size_t k = 0; k < sel->n; k++)
			sel->flag[k] = !(vec[sel->idx[k] - sel->idx[0]] & 1);
	}
	/* Shared memory keeps write-protect markers in the emptied entries,
	 * and a failed drop leaves protected pages: lift them while the
	 * pages are still ours (MIGRATING), run by run. */
	if (wp && (ret || r->kind == HMM_MK_SHMEM))
		wp_runs(b, sel, false, &deadline);
commit:
	moved = commit_to_device(b, dev, sel, &waiters,
				 r->kind == HMM_MK_FPROT,
				 r->kind == HMM_MK_SHMEM);
	if (thp) {
		/* The application's PMD is empty: the huge page can come
		 * back whole (migrate_sys.c). */
		pthread_mutex_lock(&b->lock);
		b->thp_out = true;
		pthread_mutex_unlock(&b->lock);
		hmm__stat_add(HMM_STAT_thp_moves_to_device, 1);
	}
	for (size_t z = 0; z < nzaps; z++)
		hmm__rec_pop(&hmm__ctx.zaps, &zaps[z]);
	if (waiters)
		for (size_t k = 0; k < sel->n; k += sel_run(sel, k))
			hmm__uffd_wake(hmm__ctx.uffd, sel_va(b, sel->idx[k]),
				       sel_run(sel, k) << HMM_PAGE_SHIFT);
	hmm__stat_add(HMM_STAT_pages_to_device, moved);
	hmm__stat_add(HMM_STAT_bytes_to_device, moved * HMM_PAGE_SIZE);
	return ret ? ret : (long)(moved + peered);

fail_unwp:
	if (wp)
		wp_runs(b, sel, false, &deadline);
	rollback_to_system(b, sel, dev, true, fprot);
	return ret;
}

/*
 * Shared memory that a fork shared with another process must stay in
 * system memory while that process maps it: it would find holes where
 * pages went to the device.  Once nobody else maps it, it may move again.
 */
static bool shared_here_only(struct hmm_alloc *a)
{
	bool forked;

	pthread_rwlock_rdlock(&hmm__ctx.ranges_lock);
	forked = a->forked;
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	if (!forked)
		return true;
	if (hmm__mapped_elsewhere(&a->obj))
		return false;
	pthread_rwlock_wrlock(&hmm__ctx.ranges_lock);
	a->forked = false;
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	return true;
}

long hmm__migrate_to_device(uintptr_t start, uintptr_t end,
			    hmm_device_t *dev, const struct hmm_vma *vmas,
			    long nvmas, unsigned long prot_gen)
{
	struct sel *sel = malloc(sizeof(*sel));
	struct hmm_zap *zaps = malloc(HMM_BLOCK_PAGES * sizeof(*zaps));
	long total = 0, ret = 0;

	if (!sel || !zaps) {
		free(sel);
		free(zaps);
		return -ENOMEM;
	}
	/*
	 * Without write-protection nothing would stop a CPU write between
	 * the copy and the drop, and it would be lost: refuse.
	 */
	if (!(hmm__ctx.caps & HMM_CAP_WP))
		ret = -EOPNOTSUPP;
	/* No write to a managed file half-way (file.c), no fork while pages
	 * are in flight (context.c). */
	bool file_held = hmm__file_mig_begin();
	pthread_rwlock_rdlock(&hmm__ctx.fork_lock);
	for (uintptr_t pos = start; pos < end && !ret;) {
		uintptr_t bend = (pos & ~(HMM_BLOCK_SIZE - 1)) + HMM_BLOCK_SIZE;
		struct hmm_mrange r;

		if (bend > end)
			bend = end;
		/* Copy the range entry: the registry may change meanwhile;
		 * the reference keeps a memfd allocation alive. */
		pthread_rwlock_wrlock(&hmm__ctx.ranges_lock);
		struct hmm_mrange *rp = hmm__range_find(pos);
		if (rp) {
			r = *rp;
			if (r.alloc)
				r.alloc->refs++;
			if (bend > r.end)
				bend = r.end;
		}
		pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
		if (!rp) {
			ret = -ENOENT;
			break;
		}
		if (r.kind == HMM_MK_SHMEM && !shared_here_only(r.alloc))
			ret = -EBUSY;
		else
			ret = block_to_device(&r, pos, bend, dev, vmas, nvmas,
					      prot_gen, sel, zaps);
		if (r.alloc) {
			pthread_rwlock_wrlock(&hmm__ctx.ranges_lock);
			hmm__alloc_put(r.alloc);
			pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
		}
		if (ret >= 0) {
			total += ret;
			ret = 0;
		}
		pos = bend;
	}
	pthread_rwlock_unlock(&hmm__ctx.fork_lock);
	hmm__file_mig_end(file_held);
	free(sel);
	free(zaps);
	return ret ? ret : total;
}
