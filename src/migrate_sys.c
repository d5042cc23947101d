/* SPDX-License-Identifier: MIT */
/*
 * The migration engine, towards system memory, and dropping pages.
 *
 * Collect (DEVICE -> MIGRATING under the block lock), invalidate the device
 * translations, install each run of pages with UFFDIO_COPY without waking,
 * commit the states, then wake: a thread that faulted resumes with the page
 * SYSTEM and its device page free.  An install that meets EAGAIN (an event
 * is queued: the address space is changing) puts its pages back on the
 * device and starts over once the event has been handled, so that an
 * mremap or munmap in between finds them where they are.
 */
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "compat.h"
#include "migrate.h"

/* A bounce buffer of HMM_BLOCK_SIZE per thread that needs one, unmapped
 * when the thread exits. */
static pthread_key_t bounce_key;
static pthread_once_t bounce_once = PTHREAD_ONCE_INIT;

static void bounce_free(void *p)
{
	hmm__munmap_own(p, HMM_BLOCK_SIZE);
}

static void bounce_key_init(void)
{
	pthread_key_create(&bounce_key, bounce_free);
}

/* dlclose: no thread may run bounce_free once the library is gone (the
 * buffers of threads still alive are left mapped). */
__attribute__((destructor)) static void bounce_key_fini(void)
{
	pthread_once(&bounce_once, bounce_key_init);
	pthread_key_delete(bounce_key);
}

static void *bounce_get(void)
{
	void *p;

	pthread_once(&bounce_once, bounce_key_init);
	p = pthread_getspecific(bounce_key);
	if (!p) {
		p = hmm__mmap_own(HMM_BLOCK_SIZE, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return NULL;
		pthread_setspecific(bounce_key, p);
	}
	return p;
}

/* Whether @va is still mapped (mincore fails with ENOMEM if not). */
static bool mapped(uintptr_t va)
{
	unsigned char vec;

	return mincore((void *)va, HMM_PAGE_SIZE, &vec) == 0 ||
	       errno != ENOMEM;
}

/* Per page results of install_run, in sel->flag */
enum { INST_NOT_DONE = 0, INST_DONE = 1, INST_GONE = 2 };

/*
 * Install the run of @n selected pages starting at sel index @k0 with
 * UFFDIO_COPY, without waking the faulting threads.  Sets sel->flag[k] per
 * page.  Returns 0 (some pages may be INST_NOT_DONE after EAGAIN), or
 * -errno.
 */
/*
 * A whole block whose huge page moved out whole (thp_out: the
 * application's PMD is empty) and sits whole in one chunk of a movable
 * device's memory comes back with one UFFDIO_MOVE of 2 MiB (thp.c).
 * Returns the pages installed (512: the chunk is clean again; fewer: the
 * kernel split the huge page and moved 4 KiB entries, the rest is to
 * copy), 0 to copy them all, or -EAGAIN (nothing moved).
 */
static long thp_move_out(hmm_device_t *dev, struct hmm_block *b,
			 const struct sel *sel, void *src)
{
	bool ok;
	long m;

	if (!dev->mem->movable || !sel_whole_chunk(sel) ||
	    !hmm__thp_mapped((uintptr_t)src))
		return 0;
	pthread_mutex_lock(&b->lock);
	ok = b->thp_out;
	for (size_t k = 0; ok && k < sel->n; k++)
		ok = !(b->state[k] & PSF_CLEARED) &&
		     PMOD_KIND(b->mod[k]) != PMOD_EXCL_RO;
	if (!ok) {
		pthread_mutex_unlock(&b->lock);
		return 0;
	}
	/* Under the lock, as the copies below: ordered with drop marks. */
	m = hmm__uffd_move(hmm__ctx.uffd, b->base, (uintptr_t)src,
			   HMM_BLOCK_SIZE, false);
	b->thp_out = false;
	pthread_mutex_unlock(&b->lock);
	if (m == (long)HMM_BLOCK_SIZE) {
		hmm__stat_add(HMM_STAT_thp_moves_to_system, 1);
		return HMM_BLOCK_PAGES;
	}
	hmm__stat_add(HMM_STAT_thp_moves_failed, 1);
	if (m > 0)
		return m >> HMM_PAGE_SHIFT;
	hmm__debug("huge page at %#lx not moved back (%s): copying",
		   (unsigned long)b->base, strerror((int)-m));
	return m == -EAGAIN ? -EAGAIN : 0;
}

static int install_run(hmm_device_t *dev, struct hmm_block *b,
		       struct sel *sel, size_t k0, size_t n, bool *thp)
{
	uintptr_t va0 = sel_va(b, sel->idx[k0]);
	size_t done = 0, chunk = n;
	bool contiguous = dev->ops->host_ptr != NULL;
	void *src;
	int ret;

	if (hmm__devmem_fail_take(dev, HMM_FAIL_SYSMEM))
		return -ENOMEM; /* injected: nothing installed yet */
	if ((ret = hmm__inject(HMM_INJ_COPY_TO_SYSTEM)))
		return ret;
	for (size_t k = 1; contiguous && k < n; k++)
		contiguous = sel->dpfn[k0 + k] == sel->dpfn[k0] + k;
	if (contiguous) {
		long m;
		src = dev->ops->host_ptr(dev, sel->dpfn[k0]);
		m = n == HMM_BLOCK_PAGES ? thp_move_out(dev, b, sel, src) : 0;
		if (m == -EAGAIN)
			return 0; /* all stays INST_NOT_DONE */
		if (m > 0) {
			memset(sel->flag, INST_DONE, (size_t)m);
			done = (size_t)m;
			*thp = done == HMM_BLOCK_PAGES;
		}
	} else {
		struct hmm_copy_desc d[HMM_BLOCK_PAGES];
		char *bb = bounce_get();
		if (!bb)
			return -ENOMEM;
		for (size_t k = 0; k < n; k++)
			d[k] = (struct hmm_copy_desc){ sel->dpfn[k0 + k],
						       bb + k * HMM_PAGE_SIZE };
		ret = dev->ops->copy(dev, HMM_COPY_TO_SYSTEM, d, n);
		if (ret)
			return ret;
		src = bb;
	}
	/* UFFDIO_COPY fails whole with ENOENT when its range crosses the end
	 * of a VMA (two adjacent ranges), so on ENOENT try again with half
	 * the length; only a single page that fails so is really unmapped.
	 * Each copy runs under the block lock, over pages that the
	 * application has not dropped meanwhile (PSF_CLEARED: the madvise
	 * wrapper marks them before its system call), so that old data is
	 * never installed after a drop: the lock orders the two.  UFFDIO_COPY
	 * waits for no thread of libhmm. */
	while (done < n) {
		size_t len = HMM_MIN(chunk, n - done), ok = 0;
		long r;
		bool ro;
		pthread_mutex_lock(&b->lock);
		/* A page held read-only for a device's atomics comes home
		 * write-protected: CPU writes wait for the hold (hold.c). */
		ro = PMOD_KIND(b->mod[sel->idx[k0 + done]]) == PMOD_EXCL_RO;
		while (ok < len &&
		       !(b->state[sel->idx[k0 + done + ok]] & PSF_CLEARED) &&
		       (PMOD_KIND(b->mod[sel->idx[k0 + done + ok]]) ==
			PMOD_EXCL_RO) == ro)
			ok++;
		if (ok == 0) {
			/* Dropped: not installed; the commit settles it. */
			pthread_mutex_unlock(&b->lock);
			sel->flag[k0 + done++] = INST_NOT_DONE;
			continue;
		}
		len = ok;
		r = hmm__uffd_copy(hmm__ctx.uffd, va0 + done * HMM_PAGE_SIZE,
				   (char *)src + done * HMM_PAGE_SIZE,
				   len * HMM_PAGE_SIZE, ro, true);
		pthread_mutex_unlock(&b->lock);
		if (r > 0) {
			memset(sel->flag + k0 + done, INST_DONE, (size_t)r);
			done += (size_t)r;
			chunk = n;
		} else if (r == -ENOENT && len > 1) {
			chunk = len / 2;
		} else if ((r == -ENOENT || r == -EFAULT) &&
			   !mapped(va0 + done * HMM_PAGE_SIZE)) {
			/* The mapping is gone (an UNMAP event follows). */
			sel->flag[k0 + done++] = INST_GONE;
		} else if (r == -ENOENT || r == -EFAULT) {
			/* Still mapped: not the race with munmap that these
			 * mean.  Keep the page on the device for now. */
			return (int)r;
		} else if (r == -EEXIST) {
			/* A page is there already, which only a mapping
			 * libhmm does not control can do: keep it, and keep
			 * the device copy too rather than guess. */
			hmm__warn("page at %#lx present while its data is on "
				  "a device", (unsigned long)(va0 + done *
							       HMM_PAGE_SIZE));
			return -EEXIST;
		} else if (r == -EAGAIN) {
			return 0; /* the rest stays INST_NOT_DONE */
		} else {
			return (int)r;
		}
	}
	return 0;
}

/*
 * Files: the device's data goes into the page itself (through the alias
 * for a shared mapping, through /proc/self/mem for a private one; only
 * pages the device could write: the others are unchanged there), then
 * the user's mapping gets the page back: UFFDIO_CONTINUE maps the page
 * cache page (FILE), or the protection is restored (FPROT, after the
 * commit, by the caller).  Both run under the block lock, so that a drop
 * by the application (MADV_REMOVE, a truncation: marked PSF_CLEARED under
 * the lock before its system call) is ordered with the write: a cleared
 * page gets nothing.  A page the file no longer has (truncated: the write
 * faults) is gone.
 */
/*
 * The common case of install_file_run, a shared mapping: one copy of the
 * run's pages the device could write into the page cache, then one
 * UFFDIO_CONTINUE per stretch of pages not dropped meanwhile, all under
 * the block lock.  Returns true if it handled the run, false if a copy
 * faulted (a page past the end of the file: the caller goes page by page).
 */
static bool install_file_batch(const struct hmm_mrange *r, hmm_device_t *dev,
			       struct hmm_block *b, struct sel *sel, size_t k0,
			       size_t n)
{
	struct hmm_copy_desc d[HMM_BLOCK_PAGES];
	size_t nd = 0;

	pthread_mutex_lock(&b->lock);
	for (size_t k = k0; k < k0 + n; k++) {
		unsigned i = sel->idx[k];
		/* Unmapped meanwhile: the file still gets the data (the
		 * munmap's write-back skipped pages in flight). */
		if (!(b->state[i] & PSF_CLEARED) &&
		    hmm__page_owes(dev, sel->dpfn[k], b->state[i], b->dev[i]))
			d[nd++] = (struct hmm_copy_desc){
				sel->dpfn[k],
				hmm__file_alias_ptr(r, sel_va(b, i)) };
	}
	if (nd && hmm__guarded_copy(dev, HMM_COPY_TO_SYSTEM, d, nd)) {
		pthread_mutex_unlock(&b->lock);
		return false;
	}
	for (size_t k = k0; k < k0 + n;) {
		size_t m = 0;
		long c = 0;
		while (k + m < k0 + n &&
		       !(b->state[sel->idx[k + m]] &
			 (PSF_CLEARED | PSF_UNMAPPED)))
			m++;
		if (!m) {
			sel->flag[k++] = INST_NOT_DONE;
			continue;
		}
		if (r->kind == HMM_MK_FILE)
			c = hmm__uffd_continue(hmm__ctx.uffd,
					       sel_va(b, sel->idx[k]),
					       m << HMM_PAGE_SHIFT, true);
		else
			c = (long)m;
		if (c > 0) {
			memset(sel->flag + k, INST_DONE, (size_t)c);
			k += (size_t)c;
			continue;
		}
		if (c == -EAGAIN)
			break; /* the rest stays INST_NOT_DONE */
		/* EEXIST: mapped already (the data is in the page); EFAULT:
		 * no page cache page (truncated); ENOENT: mapping gone. */
		sel->flag[k++] = c == -EEXIST ? INST_DONE : INST_GONE;
	}
	pthread_mutex_unlock(&b->lock);
	return true;
}

static int install_file_run(const struct hmm_mrange *r, hmm_device_t *dev,
			    struct hmm_block *b, struct sel *sel, size_t k0,
			    size_t n)
{
	char *bb = NULL;
	int ret;

	if (hmm__devmem_fail_take(dev, HMM_FAIL_SYSMEM))
		return -ENOMEM;
	if ((ret = hmm__inject(HMM_INJ_COPY_TO_SYSTEM)))
		return ret;
	for (size_t k = k0; k < k0 + n; k++)
		sel->flag[k] = INST_NOT_DONE;
	if (!r->alloc->priv && install_file_batch(r, dev, b, sel, k0, n))
		return 0;
	if (r->alloc->priv && !(bb = bounce_get()))
		return -ENOMEM;
	for (size_t k = k0; k < k0 + n;) {
		unsigned i = sel->idx[k];
		uintptr_t va = sel_va(b, i);
		struct hmm_copy_desc d;
		long c = 1;
		pthread_mutex_lock(&b->lock);
		/* Dropped, or unmapped (then a mapping made at the same
		 * address since must not get this data, though a shared
		 * file still does): the commit settles it. */
		if ((b->state[i] & PSF_CLEARED) ||
		    ((b->state[i] & PSF_UNMAPPED) && bb)) {
			pthread_mutex_unlock(&b->lock);
			sel->flag[k++] = INST_NOT_DONE;
			continue;
		}
		if (hmm__page_owes(dev, sel->dpfn[k], b->state[i],
				   b->dev[i])) {
			d = (struct hmm_copy_desc){
				sel->dpfn[k], bb ? bb : hmm__file_alias_ptr(r, va) };
			ret = hmm__guarded_copy(dev, HMM_COPY_TO_SYSTEM, &d, 1);
			if (!ret && bb)
				ret = hmm__procmem_rw(true, bb, va, HMM_PAGE_SIZE);
			if (ret == -EFAULT || ret == -EIO) {
				/* past the end of the file now */
				pthread_mutex_unlock(&b->lock);
				sel->flag[k++] = INST_GONE;
				ret = 0;
				continue;
			}
			if (ret) {
				pthread_mutex_unlock(&b->lock);
				return ret;
			}
		}
		if (b->state[i] & PSF_UNMAPPED)
			c = -ENOENT; /* written to the file; nothing to map */
		else if (r->kind == HMM_MK_FILE)
			c = hmm__uffd_continue(hmm__ctx.uffd, va, HMM_PAGE_SIZE,
					       true);
		pthread_mutex_unlock(&b->lock);
		if (c == -EAGAIN)
			break; /* the rest stays INST_NOT_DONE */
		/* EEXIST: mapped already (the data is in the page);
		 * EFAULT: no page cache page (truncated); ENOENT: the
		 * mapping is gone. */
		sel->flag[k++] = c == 1 || c == -EEXIST ? INST_DONE : INST_GONE;
	}
	return 0;
}

/* Phase 1: select the DEVICE pages of [s, e) (of @only, if set), one
 * device per batch.  Returns 0, or 1 if it met a page in flight (which it
 * waited for, unless non-blocking), or -ETIMEDOUT. */
static int collect_to_system(struct hmm_block *b, uintptr_t s, uintptr_t e,
			     hmm_device_t *only, int flags, struct sel *sel,
			     const struct timespec *deadline)
{
	int busy = 0;

	pthread_mutex_lock(&b->lock);
	sel->n = 0;
	for (uintptr_t p = s; p < e; p += HMM_PAGE_SIZE) {
		unsigned i = hmm__block_index(p);
		uint8_t st = b->state[i];
		unsigned id = PDEV_ID(b->dev[i]);
		if (PS_KIND(st) == PS_MIGRATING && (!only || id == only->id)) {
			busy = 1;
			if ((flags & HMM_MIG_NONBLOCK) || sel->n)
				continue;
			int r = wait_block(b, deadline);
			pthread_mutex_unlock(&b->lock);
			return r ? r : 1;
		}
		if (PS_KIND(st) != PS_DEVICE || (only && id != only->id))
			continue;
		/* Locked to its device: only an unlock lets it go. */
		if (PMOD_KIND(b->mod[i]) == PMOD_LOCKED)
			continue;
		if (sel->n && id != sel->dev)
			continue;
		sel->dev = id;
		b->state[i] = PS_MIGRATING | (st & PSF_DEV_WRITE);
		sel->idx[sel->n] = i;
		sel->dpfn[sel->n] = b->dpfn[i];
		sel->flag[sel->n++] = INST_NOT_DONE;
	}
	pthread_mutex_unlock(&b->lock);
	return busy;
}

/*
 * Phase 3.  Installed pages become SYSTEM and their device pages are freed;
 * pages not installed go back to the device.  Pages that the application
 * dropped meanwhile (PSF_CLEARED) must read zeros: an installed one is
 * listed in @rezap for the caller to drop again (@can_rezap; it stays
 * MIGRATING until then), one not installed loses its device copy.  Returns
 * pages installed; *rolled counts those put back.
 */
static size_t commit_to_system(struct hmm_block *b, hmm_device_t *dev,
			       struct sel *sel, struct sel *rezap, bool can_rezap,
			       bool *waiters, size_t *rolled, bool fprot,
			       bool thp)
{
	uint32_t freed[HMM_BLOCK_PAGES];
	size_t moved = 0, nfree = 0;

	rezap->n = 0;
	*rolled = 0;
	pthread_mutex_lock(&b->lock);
	for (size_t k = 0; k < sel->n; k++) {
		unsigned i = sel->idx[k];
		uint8_t st = b->state[i], res = sel->flag[k];
		*waiters |= st & PSF_WAITERS;
		if (st & PSF_UNMAPPED) {
			/* mremap or munmap meanwhile.  Installed: the page
			 * moved with the page tables.  Not: only the device
			 * copy holds the data; follow the move. */
			uintptr_t to = hmm__forward_take(sel_va(b, i));
			uint8_t devbits = b->dev[i];
			b->state[i] = PS_NONE;
			b->dev[i] = 0;
			b->mod[i] = 0;
			b->ndev--;
			if (!to || !hmm__forward_commit(to, dev, devbits,
							sel->dpfn[k], st))
				freed[nfree++] = sel->dpfn[k];
			continue;
		}
		if (res == INST_NOT_DONE && !(st & PSF_CLEARED)) {
			b->state[i] = PS_DEVICE | (st & PSF_DEV_WRITE);
			(*rolled)++;
			continue;
		}
		freed[nfree++] = sel->dpfn[k];
		b->ndev--;
		b->dev[i] = 0;
		/* A revoke-mode hold ends when its page comes home; so does
		 * any hold on a page dropped meanwhile. */
		if (PMOD_KIND(b->mod[i]) == PMOD_EXCL_REVOKE ||
		    (st & PSF_CLEARED)) {
			if (PMOD_IS_EXCL(b->mod[i]))
				hmm__stat_add(HMM_STAT_holds_revoked, 1);
			b->mod[i] = PMOD_UNHOLD(b->mod[i]);
		}
		if (res == INST_DONE && (st & PSF_CLEARED) && can_rezap) {
			/* Installed, then dropped by the application: it
			 * stays MIGRATING until the caller has dropped it
			 * again (drop_again), so that no migration copies
			 * the old data meanwhile and no CPU access sees it. */
			rezap->idx[rezap->n++] = i;
			continue;
		}
		/* Dropped meanwhile, and installed by a thread that cannot
		 * drop it again (the service thread, which the application's
		 * madvise waits for before it ends the drop), or not
		 * installed (a file's page cache still has the old data):
		 * the kernel drops it; until then a migration must not take
		 * the old data (drop_pending looks). */
		b->state[i] = (st & PSF_CLEARED) ? PS_SYSTEM | PSF_DROPPING
						 : PS_SYSTEM;
		if (res == INST_DONE)
			moved++;
	}
	/* FPROT: pages now in system memory get the application's
	 * protection, under the lock: nobody sees them in system memory and
	 * PROT_NONE, and an mprotect of the application's (protect_piece in
	 * file.c, under the lock too) is never undone by an older one. */
	if (fprot)
		hmm__fprot_restore_locked(b, sel_va(b, sel->idx[0]),
					  sel_va(b, sel->idx[sel->n - 1]) +
						  HMM_PAGE_SIZE);
	/* Pages came home: the application's PMD is not empty any more
	 * (thp.c). */
	b->thp_out = false;
	b->thp_fill = false;
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->lock);
	/* A huge page that moved back whole leaves its chunk clean. */
	if (thp && nfree == HMM_BLOCK_PAGES)
		hmm__devmem_free_chunk(dev, sel->dpfn[0]);
	else
		hmm__devmem_free(dev, freed, nfree);
	return moved;
}

/*
 * Pages of @rezap were installed, then dropped by the application (a raw
 * drop may have come after the install: the kernel then had nothing to
 * drop there yet).  Drop them again, range by range, and only then let
 * them be SYSTEM: until now they stayed MIGRATING, so that no migration
 * took the old data and CPU faults waited.
 */
static void drop_again(struct hmm_block *b, struct sel *rezap)
{
	struct sel *part = malloc(sizeof(*part));
	struct hmm_zap *zaps = malloc(HMM_BLOCK_PAGES * sizeof(*zaps));
	bool failed = !part || !zaps;

	for (size_t k = 0; part && zaps && k < rezap->n;) {
		uintptr_t va = sel_va(b, rezap->idx[k]);
		struct hmm_mrange r, *rp;
		size_t nz = 0;

		pthread_rwlock_rdlock(&hmm__ctx.ranges_lock);
		rp = hmm__range_find(va);
		if (rp)
			r = *rp;
		pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
		if (!rp) { /* unmapped meanwhile: nothing left to drop */
			k++;
			continue;
		}
		part->n = 0;
		while (k < rezap->n && sel_va(b, rezap->idx[k]) < r.end)
			part->idx[part->n++] = rezap->idx[k++];
		memset(part->flag, 1, part->n);
		if (hmm__zap_runs(&r, b, part, zaps, &nz))
			failed = true;
		for (size_t z = 0; z < nz; z++)
			hmm__rec_pop(&hmm__ctx.zaps, &zaps[z]);
	}
	free(part);
	free(zaps);
	pthread_mutex_lock(&b->lock);
	for (size_t k = 0; k < rezap->n; k++) {
		unsigned i = rezap->idx[k];
		if (b->state[i] & PSF_UNMAPPED) {
			uintptr_t to = hmm__forward_take(sel_va(b, i));
			b->state[i] = PS_NONE;
			b->mod[i] = 0;
			if (to)
				hmm__forward_commit(to, NULL, 0, 0, 0);
			continue;
		}
		/* If the drop failed, the application's may still come. */
		b->state[i] = failed ? PS_SYSTEM | PSF_DROPPING : PS_SYSTEM;
	}
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->lock);
}

static long block_to_system(const struct hmm_mrange *r, uintptr_t s,
			    uintptr_t e, hmm_device_t *only, int flags,
			    struct sel *sel, struct sel *rezap)
{
	bool file = HMM_MK_IS_FILE(r->kind) && r->alloc;
	struct hmm_block *b = hmm__block_lookup(s);
	struct timespec deadline;
	long total = 0;

	if (!b)
		return 0;
	deadline_in(&deadline, hmm__option(HMM_OPT_MIGRATE_TIMEOUT_MS));
	for (;;) {
		bool waiters = false, thp = false;
		size_t moved, rolled;
		hmm_device_t *dev;
		int busy, ret = 0;

		busy = collect_to_system(b, s, e, only, flags, sel, &deadline);
		if (busy < 0)
			return busy;
		if (!sel->n) {
			if (!busy)
				return total;
			if (flags & HMM_MIG_NONBLOCK)
				return total ? total : -EINPROGRESS;
			continue; /* waited for a page in flight */
		}
		dev = hmm__device_get(sel->dev);
		if (!dev)
			return -ENODEV; /* cannot happen: close evicts first */
		hmm__invalidate(sel_va(b, sel->idx[0]),
				sel_va(b, sel->idx[sel->n - 1]) + HMM_PAGE_SIZE,
				HMM_NOTIFY_MIGRATE, NULL,
				!(flags & HMM_MIG_NONBLOCK));
		for (size_t k0 = 0; k0 < sel->n && !ret; k0 += sel_run(sel, k0))
			ret = file ? install_file_run(r, dev, b, sel, k0,
						      sel_run(sel, k0))
				   : install_run(dev, b, sel, k0,
						 sel_run(sel, k0), &thp);

		/* FPROT pages need no second drop: a hole is the file's. */
		moved = commit_to_system(b, dev, sel, rezap,
					 !(flags & HMM_MIG_NONBLOCK) &&
						 r->kind != HMM_MK_FPROT,
					 &waiters, &rolled,
					 r->kind == HMM_MK_FPROT, thp);
		if (rezap->n)
			drop_again(b, rezap);
		/* Pages were installed without waking (DONTWAKE): a thread
		 * that faulted on one resumes only now, with the state SYSTEM,
		 * the device page free and the counters up to date. */
		hmm__stat_add(HMM_STAT_pages_to_system, moved);
		hmm__stat_add(HMM_STAT_bytes_to_system, moved * HMM_PAGE_SIZE);
		for (size_t k = 0; r->kind != HMM_MK_FPROT && k < sel->n;
		     k += sel_run(sel, k))
			hmm__uffd_wake(hmm__ctx.uffd, sel_va(b, sel->idx[k]),
				       sel_run(sel, k) << HMM_PAGE_SHIFT);
		total += (long)moved;
		if (ret)
			return ret;
		if (rolled) {
			/* EAGAIN: an event is queued.  The service thread
			 * must read it; it cannot, if it is us. */
			if (flags & HMM_MIG_NONBLOCK)
				return -EAGAIN;
			if (past(&deadline))
				return -ETIMEDOUT;
			hmm__service_sync();
		}
		/* Again: other devices' pages, pages that were in flight,
		 * pages rolled back. */
	}
}

long hmm__migrate_to_system(uintptr_t start, uintptr_t end,
			    hmm_device_t *only, int flags)
{
	struct sel *sel = malloc(2 * sizeof(*sel));
	bool app = !(flags & HMM_MIG_NONBLOCK);
	long total = 0;

	if (!sel)
		return -ENOMEM;
	/* No fork while pages are in flight (context.c); the service
	 * thread is paused for fork instead. */
	if (app)
		pthread_rwlock_rdlock(&hmm__ctx.fork_lock);
	for (uintptr_t pos = start; pos < end;) {
		uintptr_t bend = (pos & ~(HMM_BLOCK_SIZE - 1)) + HMM_BLOCK_SIZE;
		struct hmm_mrange rg;
		long r;
		if (bend > end)
			bend = end;
		/* Each piece within one range: files come home their way. */
		hmm__range_get(pos, &rg);
		if (bend > rg.end)
			bend = rg.end;
		r = block_to_system(&rg, pos, bend, only, flags, &sel[0],
				    &sel[1]);
		hmm__range_put(&rg);
		if (r < 0) {
			total = r;
			break;
		}
		total += r;
		pos = bend;
	}
	if (app)
		pthread_rwlock_unlock(&hmm__ctx.fork_lock);
	free(sel);
	return total;
}

void hmm__migrate_all_to_system(hmm_device_t *only)
{
	struct hmm_mrange *copy;
	size_t n;

	/* A copy of the ranges: migrating must not hold the registry lock
	 * (a fault it causes may need it). */
	copy = hmm__ranges_copy(&n);
	for (size_t i = 0; copy && i < n; i++)
		hmm__migrate_to_system(copy[i].start, copy[i].end, only, 0);
	free(copy);
}

/* ---- dropping ---------------------------------------------------------- */

struct drop_arg {
	bool unmap;	/* pages become unmanaged */
	bool keep_data;	/* shared memory after MADV_DONTNEED: data stays */
	bool pending;	/* the kernel has not zapped yet (REMOVE event) */
	struct hmm_devpages freed; /* device pages to free once invalidated */
	bool zero;		/* a page locked to its device: zeroed there */
	bool wake;		/* a hold ended: CPU writes may be waiting */
	struct hmm_devpages dups; /* read-only copies, freed once invalidated */
};

static void drop_block(struct hmm_block *b, uintptr_t s, uintptr_t e,
		       void *arg)
{
	struct drop_arg *da = arg;

	pthread_mutex_lock(&b->lock);
	/* Read-only copies on devices go with the data they copied (shared
	 * memory's MADV_DONTNEED keeps the data, and them).  In the same
	 * critical section as the marks below: a copy made after it finds
	 * the pages marked, or their zeros. */
	if (b->dups && !(da->keep_data && !da->unmap))
		hmm__dups_detach_locked(b, hmm__block_index(s),
					hmm__block_index(e - 1) + 1, &da->dups);
	for (uintptr_t p = s; p < e; p += HMM_PAGE_SIZE) {
		unsigned i = hmm__block_index(p);
		uint8_t st = b->state[i];
		bool locked = PMOD_KIND(b->mod[i]) == PMOD_LOCKED;
		/* A drop ends a hold for atomics (the data it was for is
		 * gone); a lock ends only with the mapping. */
		if (PMOD_IS_EXCL(b->mod[i])) {
			b->mod[i] = 0;
			da->wake = true;
			hmm__stat_add(HMM_STAT_holds_revoked, 1);
		}
		switch (PS_KIND(st)) {
		case PS_DEVICE:
			if (da->keep_data && !da->unmap)
				break;
			if (locked && !da->unmap) {
				da->zero = true;
				break;
			}
			b->mod[i] = PMOD_UNHOLD(b->mod[i]);
			if (!hmm__devpages_add(&da->freed, PDEV_ID(b->dev[i]),
					       b->dpfn[i]))
				break; /* keep it: a leak, not a loss */
			b->ndev--;
			/* A file's page cache still has the old data until
			 * the kernel drops it: a migration meanwhile must not
			 * take it (drop_pending looks). */
			b->state[i] = da->unmap ? PS_NONE
				      : da->pending ? PS_SYSTEM | PSF_DROPPING
						    : PS_SYSTEM;
			b->dev[i] = 0;
			break;
		case PS_MIGRATING:
			/* The migrating thread discards its copy at commit
			 * and wakes the threads parked here. */
			if (da->keep_data && !da->unmap)
				break;
			b->state[i] = st | (da->unmap ? PSF_UNMAPPED
						      : PSF_CLEARED);
			break;
		case PS_SYSTEM:
			/* A fill of zeros by the service thread runs under
			 * b->lock (handle_fault): one before this mark left
			 * the page present, maybe written since, and the mark
			 * stays until the kernel's drop; one after it clears
			 * the mark (zeros are what the drop leaves). */
			if (da->unmap) {
				b->state[i] = PS_NONE;
				b->mod[i] = 0;
			}
			else if (da->pending && !da->keep_data)
				b->state[i] = st | PSF_DROPPING;
			else if (!da->pending)
				b->state[i] = st & (uint8_t)~PSF_DROPPING;
			break;
		default:
			break;
		}
	}
	pthread_mutex_unlock(&b->lock);
}

/* Dropped pages of a locked range read zeros on the device, where they
 * stay. */
static void zero_locked(struct hmm_block *b, uintptr_t s, uintptr_t e,
			void *arg)
{
	(void)arg;
	for (uintptr_t p = s; p < e; p += HMM_PAGE_SIZE) {
		unsigned i = hmm__block_index(p);
		hmm_device_t *d;
		uint64_t dpfn = 0;
		int id = -1, r = 0;
		pthread_mutex_lock(&b->lock);
		if (PS_KIND(b->state[i]) == PS_DEVICE &&
		    PMOD_KIND(b->mod[i]) == PMOD_LOCKED)
			id = (int)PDEV_ID(b->dev[i]);
		pthread_mutex_unlock(&b->lock);
		/* dev_lock is not taken under a block lock: look the device
		 * up first, then zero under the lock, so that the device page
		 * cannot be freed and reused meanwhile (a driver's zero waits
		 * for nothing). */
		d = id >= 0 ? hmm__device_get((unsigned)id) : NULL;
		if (!d)
			continue;
		pthread_mutex_lock(&b->lock);
		if (PS_KIND(b->state[i]) == PS_DEVICE &&
		    PMOD_KIND(b->mod[i]) == PMOD_LOCKED &&
		    PDEV_ID(b->dev[i]) == (unsigned)id) {
			dpfn = b->dpfn[i];
			r = d->ops->zero(d, &dpfn, 1);
		}
		pthread_mutex_unlock(&b->lock);
		if (r)
			hmm__warn("could not zero a dropped locked page");
	}
}

/*
 * States first, then the invalidation, then the device pages are freed: a
 * device fault in between sees the new state, and a translation taken
 * before it is cleared before its page can be reused.
 */
void hmm__pages_drop(uintptr_t start, uintptr_t end, bool unmap,
		     bool keep_data, bool pending,
		     enum hmm_notifier_event event, bool blockable)
{
	struct drop_arg da = { .unmap = unmap, .keep_data = keep_data,
			       .pending = pending };

	hmm__blocks_for_each(start, end, drop_block, &da);
	if (unmap)
		hmm__holds_forget(start, end);
	else if (atomic_load_explicit(&hmm__file_ranges, memory_order_relaxed))
		hmm__file_after_drop(start, end);
	hmm__invalidate(start, end, event, NULL, blockable);
	if (da.zero)
		hmm__blocks_for_each(start, end, zero_locked, NULL);
	if (da.wake)
		hmm__uffd_wake(hmm__ctx.uffd, start, end - start);
	hmm__devpages_free(&da.freed);
	hmm__dupbag_release(&da.dups);
}

static void drop_done_block(struct hmm_block *b, uintptr_t s, uintptr_t e,
			    void *arg)
{
	(void)arg;
	pthread_mutex_lock(&b->lock);
	for (uintptr_t p = s; p < e; p += HMM_PAGE_SIZE) {
		uint8_t *st = &b->state[hmm__block_index(p)];
		if (PS_KIND(*st) == PS_SYSTEM)
			*st &= (uint8_t)~PSF_DROPPING;
	}
	pthread_mutex_unlock(&b->lock);
}

void hmm__pages_drop_done(uintptr_t start, uintptr_t end,
			  enum hmm_notifier_event event, bool blockable)
{
	hmm__blocks_for_each(start, end, drop_done_block, NULL);
	hmm__invalidate(start, end, event, NULL, blockable);
}
