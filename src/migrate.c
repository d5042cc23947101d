/* SPDX-License-Identifier: MIT */
/*
 * The migration engine.  Each 2 MiB block moves in three phases, like the
 * kernel's migrate_vma_*:
 *
 *  1. collect: under the block lock, pages that will move become MIGRATING;
 *     a CPU fault on one of them now parks until phase 3.
 *  2. isolate + copy, without the block lock: device translations are
 *     invalidated, the source is write-protected (to device) so that a CPU
 *     write waits instead of being lost, and the data is copied.
 *  3. commit: the source is dropped (to device: MADV_DONTNEED or a hole
 *     punched in the memfd; to system: UFFDIO_COPY installs the page), the
 *     states are set, and parked faults are woken.
 *
 * A failure in phase 2 rolls every page of the block back to where it was,
 * with its data; nothing is freed before the commit.
 */
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "compat.h"
#include "internal.h"

/* A bounce buffer of HMM_BLOCK_SIZE per thread that needs one, unmapped
 * when the thread exits. */
static pthread_key_t bounce_key;
static pthread_once_t bounce_once = PTHREAD_ONCE_INIT;

static void bounce_free(void *p)
{
	hmm__sys_munmap(p, HMM_BLOCK_SIZE);
}

static void bounce_key_init(void)
{
	pthread_key_create(&bounce_key, bounce_free);
}

static void *bounce_get(void)
{
	void *p;

	pthread_once(&bounce_once, bounce_key_init);
	p = pthread_getspecific(bounce_key);
	if (!p) {
		p = mmap(NULL, HMM_BLOCK_SIZE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return NULL;
		pthread_setspecific(bounce_key, p);
	}
	return p;
}

/* Wait for a migration in @b to end.  Called and returns with b->lock held.
 * Returns 0, or -ETIMEDOUT. */
static int wait_block(struct hmm_block *b, const struct timespec *deadline)
{
	int r = pthread_cond_timedwait(&b->cond, &b->lock, deadline);
	return r == ETIMEDOUT ? -ETIMEDOUT : 0;
}

static void deadline_in(struct timespec *ts, long ms)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

static bool past(const struct timespec *deadline)
{
	struct timespec now;

	clock_gettime(CLOCK_REALTIME, &now);
	return now.tv_sec > deadline->tv_sec ||
	       (now.tv_sec == deadline->tv_sec &&
		now.tv_nsec >= deadline->tv_nsec);
}

static int guarded_copy(hmm_device_t *dev, enum hmm_copy_dir dir,
			const struct hmm_copy_desc *d, size_t n)
{
	struct hmm_guard g;
	int ret;

	if (!n)
		return 0;
	if (hmm__guard_begin(&g))
		return -EFAULT; /* the source went away under us */
	ret = dev->ops->copy(dev, dir, d, n);
	hmm__guard_end(&g);
	return ret;
}

/* ---- to device --------------------------------------------------------- */

struct sel {
	unsigned idx[HMM_BLOCK_PAGES];
	uint32_t dpfn[HMM_BLOCK_PAGES];
	size_t n;
};

/* Undo phase 1 (and the allocation) for the pages of @s. */
static void rollback_to_system(struct hmm_block *b, struct sel *s,
			       hmm_device_t *dev, bool have_dpfns,
			       uintptr_t span_s, uintptr_t span_e)
{
	bool waiters = false;

	pthread_mutex_lock(&b->lock);
	for (size_t k = 0; k < s->n; k++) {
		uint8_t st = b->state[s->idx[k]];
		waiters |= st & PSF_WAITERS;
		b->state[s->idx[k]] = (st & PSF_UNMAPPED) ? PS_NONE : PS_SYSTEM;
	}
	b->ndev -= (uint16_t)s->n;
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->lock);
	if (have_dpfns)
		hmm__devmem_free(dev, s->dpfn, s->n);
	if (waiters)
		hmm__uffd_wake(hmm__ctx.uffd, span_s, span_e - span_s);
	hmm__stat_add(HMM_STAT_migration_failures, 1);
}

/* Retry an ioctl-backed step while an event is queued (EAGAIN). */
static int wp_retry(uintptr_t s, size_t len, bool wp,
		    const struct timespec *deadline)
{
	int r;

	while ((r = hmm__uffd_writeprotect(hmm__ctx.uffd, s, len, wp)) ==
	       -EAGAIN) {
		if (past(deadline))
			return -ETIMEDOUT;
		sched_yield();
	}
	return r;
}

static void zap_push(struct hmm_zap *z)
{
	pthread_mutex_lock(&hmm__ctx.zap_lock);
	z->next = hmm__ctx.zaps;
	hmm__ctx.zaps = z;
	pthread_mutex_unlock(&hmm__ctx.zap_lock);
}

bool hmm__own_zap(uintptr_t s, uintptr_t e)
{
	bool own = false;

	pthread_mutex_lock(&hmm__ctx.zap_lock);
	for (struct hmm_zap *z = hmm__ctx.zaps; z; z = z->next)
		if (z->start <= s && e <= z->end) {
			own = true;
			break;
		}
	pthread_mutex_unlock(&hmm__ctx.zap_lock);
	return own;
}

static void zap_pop(struct hmm_zap *z)
{
	pthread_mutex_lock(&hmm__ctx.zap_lock);
	for (struct hmm_zap **pp = &hmm__ctx.zaps; *pp; pp = &(*pp)->next)
		if (*pp == z) {
			*pp = z->next;
			break;
		}
	pthread_mutex_unlock(&hmm__ctx.zap_lock);
}

/*
 * Drop the system copy of [s, e): MADV_DONTNEED for anonymous memory, a
 * hole punched in the memfd for shared memory.  @z records the zap from
 * before the call until the caller has committed (zap_pop): a fault that
 * finds the page gone meanwhile parks instead of being taken for the
 * application's own drop, and the REMOVE event MADV_DONTNEED sends is
 * recognised as ours.
 */
static int zap_source(const struct hmm_mrange *r, uintptr_t s, uintptr_t e,
		      struct hmm_zap *z)
{
	int ret = 0;

	z->start = s;
	z->end = e;
	zap_push(z);
	if (r->kind == HMM_MK_SHMEM) {
		off_t off = (off_t)(r->off + (s - r->start));
		if (fallocate(r->alloc->memfd,
			      FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off,
			      (off_t)(e - s)))
			ret = -errno;
		return ret;
	}
	if (hmm__sys_madvise((void *)s, e - s, MADV_DONTNEED))
		ret = -errno;
	/* madvise returns once the REMOVE event is read, not handled. */
	hmm__service_sync();
	return ret;
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

/* Phase 1 for one block: returns 0, or -EAGAIN to start over (the caller
 * waited or moved pages from another device), or -errno. */
static int collect_to_device(struct hmm_block *b, uintptr_t s, uintptr_t e,
			     hmm_device_t *dev, const struct hmm_vma *vmas,
			     long nvmas, struct sel *sel,
			     const struct timespec *deadline)
{
	uintptr_t other_s = 0, other_e = 0;

	pthread_mutex_lock(&b->lock);
	for (uintptr_t p = s; p < e; p += HMM_PAGE_SIZE) {
		uint8_t st = b->state[hmm__block_index(p)];
		switch (PS_KIND(st)) {
		case PS_NONE:
			pthread_mutex_unlock(&b->lock);
			return -ENOENT;
		case PS_MIGRATING: {
			int r = wait_block(b, deadline);
			pthread_mutex_unlock(&b->lock);
			return r ? r : -EAGAIN;
		}
		case PS_DEVICE:
			if (b->dev[hmm__block_index(p)] != dev->id) {
				if (!other_s)
					other_s = p;
				other_e = p + HMM_PAGE_SIZE;
			}
			break;
		default:
			break;
		}
	}
	if (other_s) {
		/* Pages on another device come through system memory. */
		pthread_mutex_unlock(&b->lock);
		long r = hmm__migrate_to_system(other_s, other_e, NULL, 0);
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
			      (v && (v->prot & PROT_WRITE) ? PSF_DEV_WRITE : 0);
		b->dev[i] = (uint8_t)dev->id;
		sel->idx[sel->n++] = i;
	}
	b->ndev += (uint16_t)sel->n;
	pthread_mutex_unlock(&b->lock);
	return 0;
}

static long block_to_device(const struct hmm_mrange *r, uintptr_t s,
			    uintptr_t e, hmm_device_t *dev,
			    const struct hmm_vma *vmas, long nvmas,
			    struct sel *sel)
{
	struct hmm_block *b = hmm__block_lookup(s);
	struct hmm_copy_desc *descs;
	unsigned char vec[HMM_BLOCK_PAGES];
	uint32_t zero[HMM_BLOCK_PAGES];
	size_t nd = 0, nz = 0;
	struct timespec deadline;
	uintptr_t span_s, span_e;
	bool waiters = false, wp = hmm__ctx.caps & HMM_CAP_WP;
	int ret;

	if (!b)
		return -ENOENT;
	deadline_in(&deadline, hmm__option(HMM_OPT_MIGRATE_TIMEOUT_MS));
	while ((ret = collect_to_device(b, s, e, dev, vmas, nvmas, sel,
					&deadline)) == -EAGAIN)
		;
	if (ret)
		return ret;
	if (!sel->n)
		return 0;
	span_s = b->base + ((uintptr_t)sel->idx[0] << HMM_PAGE_SHIFT);
	span_e = b->base + ((uintptr_t)sel->idx[sel->n - 1] << HMM_PAGE_SHIFT) +
		 HMM_PAGE_SIZE;

	ret = hmm__devmem_alloc(dev, sel->n, sel->dpfn);
	if (ret) {
		rollback_to_system(b, sel, dev, false, span_s, span_e);
		return ret;
	}
	pthread_mutex_lock(&b->lock);
	for (size_t k = 0; k < sel->n; k++)
		b->dpfn[sel->idx[k]] = sel->dpfn[k];
	pthread_mutex_unlock(&b->lock);

	/* Phase 2: no device may keep using the system pages, and no CPU
	 * write may land after its page was copied. */
	hmm__invalidate(span_s, span_e, HMM_NOTIFY_MIGRATE, dev, true);
	if (wp && (ret = wp_retry(span_s, span_e - span_s, true, &deadline)))
		goto fail;
	if (mincore((void *)span_s, span_e - span_s, vec)) {
		ret = errno == ENOMEM ? -EFAULT : -errno;
		goto fail_unwp;
	}
	descs = malloc(sel->n * sizeof(*descs));
	if (!descs) {
		ret = -ENOMEM;
		goto fail_unwp;
	}
	pthread_mutex_lock(&b->lock);
	for (size_t k = 0; k < sel->n; k++) {
		unsigned i = sel->idx[k];
		uintptr_t va = b->base + ((uintptr_t)i << HMM_PAGE_SHIFT);
		if (vec[(va - span_s) >> HMM_PAGE_SHIFT] & 1) {
			b->state[i] |= PSF_SRC_PRESENT;
			descs[nd++] = (struct hmm_copy_desc){
				sel->dpfn[k], source_ptr(r, va) };
		} else {
			zero[nz++] = sel->dpfn[k];
		}
	}
	pthread_mutex_unlock(&b->lock);
	ret = guarded_copy(dev, HMM_COPY_TO_DEVICE, descs, nd);
	free(descs);
	if (!ret && nz) {
		uint64_t z64[HMM_BLOCK_PAGES];
		for (size_t k = 0; k < nz; k++)
			z64[k] = zero[k];
		ret = dev->ops->zero(dev, z64, nz);
	}
	if (ret)
		goto fail_unwp;

	/* Phase 3 */
	struct hmm_zap z = { 0 };
	bool partial = false;
	ret = zap_source(r, span_s, span_e, &z);
	if (ret) {
		/*
		 * The zap failed part-way (the range changed under us): pages
		 * it dropped live only on the device now and are committed;
		 * pages still present are rolled back, their copy freed.
		 */
		partial = true;
		if (mincore((void *)span_s, span_e - span_s, vec))
			memset(vec, 0, sizeof(vec));
	}
	/* Shared memory keeps write-protect markers in the emptied entries:
	 * lift them while the pages are still ours (MIGRATING), so that no
	 * later migration's protection is lifted by mistake. */
	if (wp && (partial || r->kind == HMM_MK_SHMEM))
		wp_retry(span_s, span_e - span_s, false, &deadline);

	size_t moved = 0, drop = 0;
	uint32_t dropped[HMM_BLOCK_PAGES];
	pthread_mutex_lock(&b->lock);
	for (size_t k = 0; k < sel->n; k++) {
		unsigned i = sel->idx[k];
		uint8_t st = b->state[i];
		uintptr_t va = b->base + ((uintptr_t)i << HMM_PAGE_SHIFT);
		waiters |= st & PSF_WAITERS;
		if (partial && (vec[(va - span_s) >> HMM_PAGE_SHIFT] & 1) &&
		    !(st & PSF_UNMAPPED)) {
			dropped[drop++] = sel->dpfn[k];
			b->state[i] = PS_SYSTEM;
			b->ndev--;
		} else if (st & (PSF_CLEARED | PSF_UNMAPPED)) {
			/* Dropped or unmapped by the application meanwhile:
			 * its contents are gone, so is the copy. */
			dropped[drop++] = sel->dpfn[k];
			b->state[i] = (st & PSF_UNMAPPED) ? PS_NONE : PS_SYSTEM;
			b->ndev--;
		} else {
			b->state[i] = PS_DEVICE | (st & PSF_DEV_WRITE);
			moved++;
		}
	}
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->lock);
	zap_pop(&z);
	if (drop)
		hmm__devmem_free(dev, dropped, drop);
	if (waiters)
		hmm__uffd_wake(hmm__ctx.uffd, span_s, span_e - span_s);
	hmm__stat_add(HMM_STAT_pages_to_device, moved);
	hmm__stat_add(HMM_STAT_bytes_to_device, moved * HMM_PAGE_SIZE);
	return partial ? ret : (long)moved;

fail_unwp:
	if (wp)
		wp_retry(span_s, span_e - span_s, false, &deadline);
fail:
	rollback_to_system(b, sel, dev, true, span_s, span_e);
	return ret;
}

long hmm__migrate_to_device(uintptr_t start, uintptr_t end,
			    hmm_device_t *dev, const struct hmm_vma *vmas,
			    long nvmas)
{
	struct sel *sel = malloc(sizeof(*sel));
	long total = 0;

	if (!sel)
		return -ENOMEM;
	for (uintptr_t pos = start; pos < end;) {
		uintptr_t bend = (pos & ~(HMM_BLOCK_SIZE - 1)) + HMM_BLOCK_SIZE;
		struct hmm_mrange r;
		long ret;

		if (bend > end)
			bend = end;
		/* Copy the range entry: the registry may change meanwhile. */
		pthread_rwlock_rdlock(&hmm__ctx.ranges_lock);
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
			free(sel);
			return -ENOENT;
		}
		ret = block_to_device(&r, pos, bend, dev, vmas, nvmas, sel);
		if (r.alloc) {
			pthread_rwlock_wrlock(&hmm__ctx.ranges_lock);
			r.alloc->refs--;
			pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
		}
		if (ret < 0) {
			free(sel);
			return ret;
		}
		total += ret;
		pos = bend;
	}
	free(sel);
	return total;
}

/* ---- to system --------------------------------------------------------- */

/*
 * Install @n selected pages starting at sel index @k0 (consecutive
 * addresses) with UFFDIO_COPY, without waking the faulting threads.  Per page, res[k] is set to 1 (installed),
 * 2 (dropped: EEXIST or the mapping is gone), or left 0 (not done: EAGAIN
 * in non-blocking mode).  Returns 0 or -errno.
 */
static int install_run(hmm_device_t *dev, struct hmm_block *b,
		       const struct sel *sel, size_t k0, size_t n,
		       unsigned char *res, int flags,
		       const struct timespec *deadline)
{
	uintptr_t va0 = b->base + ((uintptr_t)sel->idx[k0] << HMM_PAGE_SHIFT);
	size_t done = 0;
	void *src = NULL;
	bool contiguous = dev->ops->host_ptr != NULL;
	int ret;

	for (size_t k = 1; contiguous && k < n; k++)
		contiguous = sel->dpfn[k0 + k] == sel->dpfn[k0] + k;
	if (contiguous) {
		src = dev->ops->host_ptr(dev, sel->dpfn[k0]);
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
	 * the length; only a single page that fails so is really unmapped. */
	size_t chunk = n;
	while (done < n) {
		size_t len = HMM_MIN(chunk, n - done);
		long r = hmm__uffd_copy(hmm__ctx.uffd,
					va0 + done * HMM_PAGE_SIZE,
					(char *)src + done * HMM_PAGE_SIZE,
					len * HMM_PAGE_SIZE, false, true);
		if (r > 0) {
			memset(res + k0 + done, 1, (size_t)r);
			done += (size_t)r;
			chunk = n;
		} else if (r == -ENOENT && len > 1) {
			chunk = len / 2;
		} else if (r == -EEXIST || r == -ENOENT || r == -EFAULT) {
			/* EEXIST: something is mapped there already;
			 * ENOENT/EFAULT: the mapping is gone. */
			res[k0 + done] = 2;
			done++;
		} else if (r == -EAGAIN) {
			if ((flags & HMM_MIG_NONBLOCK) || past(deadline))
				return (flags & HMM_MIG_NONBLOCK) ? 0
								  : -ETIMEDOUT;
			sched_yield();
		} else {
			return (int)r;
		}
	}
	return 0;
}

static long block_to_system(uintptr_t s, uintptr_t e, hmm_device_t *only,
			    int flags, struct sel *sel)
{
	struct hmm_block *b = hmm__block_lookup(s);
	unsigned char res[HMM_BLOCK_PAGES];
	struct timespec deadline;
	hmm_device_t *dev = NULL;
	bool waiters = false, parked = false;
	uintptr_t span_s, span_e;
	int ret = 0;

	if (!b)
		return 0;
	deadline_in(&deadline, hmm__option(HMM_OPT_MIGRATE_TIMEOUT_MS));
again:
	pthread_mutex_lock(&b->lock);
	sel->n = 0;
	for (uintptr_t p = s; p < e; p += HMM_PAGE_SIZE) {
		unsigned i = hmm__block_index(p);
		uint8_t st = b->state[i];
		if (PS_KIND(st) == PS_MIGRATING && !(flags & HMM_MIG_NONBLOCK) &&
		    (!only || b->dev[i] == only->id)) {
			if (sel->n)
				break; /* move what we have first */
			if (wait_block(b, &deadline)) {
				pthread_mutex_unlock(&b->lock);
				return -ETIMEDOUT;
			}
			pthread_mutex_unlock(&b->lock);
			goto again;
		}
		if (PS_KIND(st) == PS_MIGRATING)
			parked = true;
		if (PS_KIND(st) != PS_DEVICE ||
		    (only && b->dev[i] != only->id))
			continue;
		/* One device per batch: others wait for the next round. */
		if (sel->n && b->dev[i] != b->dev[sel->idx[0]])
			continue;
		b->state[i] = PS_MIGRATING | (st & PSF_DEV_WRITE);
		sel->idx[sel->n] = i;
		sel->dpfn[sel->n++] = b->dpfn[i];
	}
	if (sel->n)
		dev = hmm__device_get(b->dev[sel->idx[0]]);
	pthread_mutex_unlock(&b->lock);
	if (!sel->n)
		return parked && (flags & HMM_MIG_NONBLOCK) ? -EINPROGRESS : 0;

	span_s = b->base + ((uintptr_t)sel->idx[0] << HMM_PAGE_SHIFT);
	span_e = b->base + ((uintptr_t)sel->idx[sel->n - 1] << HMM_PAGE_SHIFT) +
		 HMM_PAGE_SIZE;
	hmm__invalidate(span_s, span_e, HMM_NOTIFY_MIGRATE, NULL,
			!(flags & HMM_MIG_NONBLOCK));
	memset(res, 0, sel->n);
	for (size_t k0 = 0; k0 < sel->n && !ret;) {
		size_t n = 1;
		while (k0 + n < sel->n && sel->idx[k0 + n] == sel->idx[k0] + n)
			n++;
		ret = install_run(dev, b, sel, k0, n, res, flags, &deadline);
		k0 += n;
	}

	/* Commit what was installed; put the rest back on the device. */
	size_t moved = 0, nfree = 0, rolled = 0;
	uint32_t freed[HMM_BLOCK_PAGES];
	pthread_mutex_lock(&b->lock);
	for (size_t k = 0; k < sel->n; k++) {
		unsigned i = sel->idx[k];
		uint8_t st = b->state[i];
		waiters |= st & PSF_WAITERS;
		if (res[k] == 0 && !(st & PSF_UNMAPPED)) {
			b->state[i] = PS_DEVICE | (st & PSF_DEV_WRITE);
			rolled++;
			continue;
		}
		freed[nfree++] = sel->dpfn[k];
		b->ndev--;
		b->state[i] = (st & PSF_UNMAPPED) ? PS_NONE : PS_SYSTEM;
		if (res[k] == 1)
			moved++;
	}
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->lock);
	hmm__devmem_free(dev, freed, nfree);
	/* Pages were installed without waking (DONTWAKE): a thread that
	 * faulted on one resumes only now, with the state already SYSTEM
	 * and the device page free. */
	if (waiters || moved)
		hmm__uffd_wake(hmm__ctx.uffd, span_s, span_e - span_s);
	hmm__stat_add(HMM_STAT_pages_to_system, moved);
	hmm__stat_add(HMM_STAT_bytes_to_system, moved * HMM_PAGE_SIZE);
	if (ret)
		return ret;
	if (rolled)
		return -EAGAIN; /* non-blocking: an event must be read first */
	if (!(flags & HMM_MIG_NONBLOCK)) {
		/* Other devices' pages, or pages that were in flight. */
		long more = block_to_system(s, e, only, flags, sel);
		return more < 0 ? more : (long)moved + more;
	}
	return (long)moved;
}

long hmm__migrate_to_system(uintptr_t start, uintptr_t end,
			    hmm_device_t *only, int flags)
{
	struct sel *sel = malloc(sizeof(*sel));
	long total = 0;

	if (!sel)
		return -ENOMEM;
	for (uintptr_t pos = start; pos < end;) {
		uintptr_t bend = (pos & ~(HMM_BLOCK_SIZE - 1)) + HMM_BLOCK_SIZE;
		long r;
		if (bend > end)
			bend = end;
		r = block_to_system(pos, bend, only, flags, sel);
		if (r < 0) {
			free(sel);
			return r;
		}
		total += r;
		pos = bend;
	}
	free(sel);
	return total;
}

/* ---- dropping ---------------------------------------------------------- */

struct drop_arg {
	bool unmap;	/* pages become unmanaged */
	bool keep_data;	/* shared memory after MADV_DONTNEED: data stays */
};

static void drop_block(struct hmm_block *b, uintptr_t s, uintptr_t e,
		       void *arg)
{
	const struct drop_arg *da = arg;

	pthread_mutex_lock(&b->lock);
	for (uintptr_t p = s; p < e; p += HMM_PAGE_SIZE) {
		unsigned i = hmm__block_index(p);
		uint8_t st = b->state[i];
		switch (PS_KIND(st)) {
		case PS_DEVICE:
			if (da->keep_data && !da->unmap)
				break;
			hmm__devmem_free(hmm__device_get(b->dev[i]),
					 &b->dpfn[i], 1);
			b->ndev--;
			b->state[i] = da->unmap ? PS_NONE : PS_SYSTEM;
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
			if (da->unmap)
				b->state[i] = PS_NONE;
			break;
		default:
			break;
		}
	}
	pthread_mutex_unlock(&b->lock);
}

void hmm__pages_drop(uintptr_t start, uintptr_t end, bool unmap,
		     bool keep_data)
{
	struct drop_arg da = { .unmap = unmap, .keep_data = keep_data };

	hmm__blocks_for_each(start, end, drop_block, &da);
}
