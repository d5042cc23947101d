/* SPDX-License-Identifier: MIT */
/*
 * hmm_range_fault: the CPU side of a range as a device should see it.
 *
 * Faulting in is done the way a CPU would do it: the calling thread touches
 * each requested page through the user's address (a read, and for write
 * requests an atomic add of zero, which breaks copy-on-write without
 * changing data) under a guard.  A page that lives on another device is
 * brought back by the ordinary CPU fault path; an unmapped or PROT_NONE page
 * trips the guard (-EFAULT), a read-only one the write touch (-EPERM).
 * Pages that live in dev_private_owner's memory are reported, not touched.
 * Snapshots (no request) read /proc/self/maps and pagemap, and ask
 * PAGEMAP_SCAN for the zero page and huge mappings.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "compat.h"
#include "internal.h"

#define PM_PRESENT (1ULL << 63)
#define PM_FILE (1ULL << 61)	/* file page or shared anonymous */
#define PM_EXCLUSIVE (1ULL << 56)

/* Wait (bounded) until @va is no longer in flight. */
static int wait_settled(uintptr_t va)
{
	struct hmm_block *b = hmm__block_lookup(va);
	struct timespec ts;
	long ms = hmm__option(HMM_OPT_MIGRATE_TIMEOUT_MS);
	int ret = 0;

	if (!b)
		return 0;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000 + 1;
	pthread_mutex_lock(&b->lock);
	while (PS_KIND(b->state[hmm__block_index(va)]) == PS_MIGRATING && !ret)
		if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT)
			ret = -EBUSY;
	pthread_mutex_unlock(&b->lock);
	return ret;
}

struct snap {
	struct hmm_vma *vmas;
	long nvmas;
	uint64_t *pm;		/* pagemap entries for the range */
	unsigned char *mc;	/* mincore for the range */
	uint8_t *kind;		/* SNAP_* per page, from PAGEMAP_SCAN */
};

/* What PAGEMAP_SCAN (Linux 6.7) says of a present page, beyond pagemap:
 * the shared zero page (unprivileged pagemap shows no frame numbers to
 * compare with), and mappings by a huge page (THP or hugetlb). */
#define SNAP_ZERO 1
#define SNAP_HUGE 2

/* Fill sn->kind; on kernels without PAGEMAP_SCAN leave it NULL (no zero
 * page or mapping size is reported then). */
static void snap_scan(struct snap *sn, int fd, uintptr_t s, uintptr_t e)
{
	struct page_region vec[64];
	struct pm_scan_arg a = {
		.size = sizeof(a),
		.start = s,
		.end = e,
		.vec = (uintptr_t)vec,
		.vec_len = 64,
		.category_anyof_mask = PAGE_IS_PFNZERO | PAGE_IS_HUGE,
		.return_mask = PAGE_IS_PFNZERO | PAGE_IS_HUGE,
	};

	sn->kind = calloc((e - s) >> HMM_PAGE_SHIFT, 1);
	if (!sn->kind)
		return;
	while (a.start < e) {
		long n = ioctl(fd, PAGEMAP_SCAN, &a);
		if (n < 0) {
			free(sn->kind);
			sn->kind = NULL;
			return;
		}
		for (long i = 0; i < n; i++) {
			uint8_t k = (uint8_t)(
				((vec[i].categories & PAGE_IS_PFNZERO) ?
					 SNAP_ZERO : 0) |
				((vec[i].categories & PAGE_IS_HUGE) ? SNAP_HUGE
								    : 0));
			memset(sn->kind + ((vec[i].start - s) >> HMM_PAGE_SHIFT),
			       k, (vec[i].end - vec[i].start) >> HMM_PAGE_SHIFT);
		}
		if (a.walk_end <= a.start)
			break;
		a.start = a.walk_end;
	}
}

static int snap_load(struct snap *sn, uintptr_t s, uintptr_t e)
{
	size_t n = (e - s) >> HMM_PAGE_SHIFT;
	int fd;

	sn->nvmas = hmm__vma_snapshot(s, e, &sn->vmas);
	if (sn->nvmas < 0)
		return (int)sn->nvmas;
	hmm__file_fix_prot(&sn->vmas, &sn->nvmas);
	sn->pm = calloc(n, sizeof(uint64_t));
	if (!sn->pm)
		return -ENOMEM;
	fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t r = pread(fd, sn->pm, n * sizeof(uint64_t),
				  (off_t)((s >> HMM_PAGE_SHIFT) * 8));
		(void)r; /* short reads leave zeros: "not present" */
		snap_scan(sn, fd, s, e);
		close(fd);
	}
	return 0;
}

static uint64_t snapshot_page(struct snap *sn, uintptr_t s, uintptr_t va)
{
	const struct hmm_vma *v = hmm__vma_find(sn->vmas, sn->nvmas, va);
	uint64_t pm = sn->pm[(va - s) >> HMM_PAGE_SHIFT];
	uint64_t out;

	if (!v || !(v->prot & PROT_READ) || v->special)
		return HMM_PFN_ERROR;
	if (!(pm & PM_PRESENT))
		return 0;
	out = HMM_PFN_VALID | (va >> HMM_PAGE_SHIFT);
	if (sn->kind) {
		uint8_t k = sn->kind[(va - s) >> HMM_PAGE_SHIFT];
		if (k & SNAP_ZERO)
			return out | HMM_PFN_ZERO; /* never writable */
		if (k & SNAP_HUGE)
			out |= (uint64_t)(HMM_BLOCK_SHIFT - HMM_PAGE_SHIFT)
			       << HMM_PFN_ORDER_SHIFT;
	}
	/* A private page is writable once it is an anonymous page that is
	 * exclusively ours (a file page is copied on the first write);
	 * shared mappings write through. */
	if ((v->prot & PROT_WRITE) &&
	    (v->shared || ((pm & PM_EXCLUSIVE) && !(pm & PM_FILE))))
		out |= HMM_PFN_WRITE;
	return out;
}

static void snap_free(struct snap *sn)
{
	free(sn->vmas);
	free(sn->pm);
	free(sn->kind);
}

/* The managed state of pages, read a block at a time. */
struct pstate {
	uint8_t st, dev, mod;
	uint32_t dpfn;
};

/* States of the pages [va, va + n) (n within one block). */
static void load_states(uintptr_t va, size_t n, struct pstate *out)
{
	struct hmm_block *b = hmm__block_lookup(va);
	unsigned i0 = hmm__block_index(va);

	if (!b) {
		memset(out, 0, n * sizeof(*out));
		return;
	}
	pthread_mutex_lock(&b->lock);
	for (size_t k = 0; k < n; k++) {
		out[k].st = b->state[i0 + k];
		out[k].dev = b->dev[i0 + k];
		out[k].mod = b->mod[i0 + k];
		out[k].dpfn = b->dpfn[i0 + k];
	}
	pthread_mutex_unlock(&b->lock);
}

/* Touch the pages [va, va + n * page), for writing if @write, under one
 * guard.  Returns 0, or -EFAULT / -EPERM with *bad the page that failed. */
static int touch_run(uintptr_t va, size_t n, bool write, size_t *bad)
{
	struct hmm_guard g;
	volatile size_t k = 0;
	volatile int stage = 0;

	if (hmm__guard_begin(&g)) {
		*bad = k;
		return stage == 0 ? -EFAULT : -EPERM;
	}
	for (; k < n; k++) {
		char *p = (char *)(va + (k << HMM_PAGE_SHIFT));
		stage = 0;
		(void)*(volatile const char *)p;
		stage = 1;
		/* A locked add of zero: a write access that changes nothing,
		 * which no compiler may turn into a load. */
		if (write)
			__asm__ volatile("lock addb $0, %0" : "+m"(*p)::"memory");
	}
	hmm__guard_end(&g);
	return 0;
}

/* Pages to touch, in runs of the same kind, flushed before anything else
 * is decided about a page after them. */
struct touches {
	size_t first, n;	/* page indices of the run */
	bool write;
};

static int flush_touches(struct hmm_range *range, struct touches *t)
{
	size_t bad = 0;
	int ret;

	if (!t->n)
		return 0;
	hmm__dma_begin();
	ret = touch_run(range->start + (t->first << HMM_PAGE_SHIFT), t->n,
			t->write, &bad);
	hmm__dma_end();
	if (ret) {
		t->n = 0;
		return ret;
	}
	for (size_t k = t->first; k < t->first + t->n; k++)
		range->hmm_pfns[k] = HMM_PFN_VALID |
				     (t->write ? HMM_PFN_WRITE : 0) |
				     ((range->start >> HMM_PAGE_SHIFT) + k);
	t->n = 0;
	return 0;
}

int hmm_range_fault(struct hmm_range *range)
{
	const hmm_device_t *owner;
	struct snap sn = { 0 };
	struct touches tq = { 0 };
	struct pstate ps[HMM_BLOCK_PAGES];
	size_t npages, ps_first = 0, ps_n = 0;
	int ret = 0, pulls = 0;

	if (!range || !range->hmm_pfns || range->start >= range->end ||
	    !hmm__aligned(range->start) || !hmm__aligned(range->end))
		return -EINVAL;
	if ((range->default_flags & HMM_PFN_REQ_WRITE) &&
	    !(range->default_flags & HMM_PFN_REQ_FAULT))
		return -EINVAL;
	ret = hmm__ensure();
	if (ret)
		return ret;
	hmm__stat_add(HMM_STAT_range_faults, 1);
	owner = range->dev_private_owner;
	/* Pages whose preferred location is the faulting device go there
	 * first (hmm_advise). */
	if (range->default_flags & HMM_PFN_REQ_FAULT)
		hmm__advice_fault(owner, range->start, range->end);
	npages = (range->end - range->start) >> HMM_PAGE_SHIFT;

	for (size_t i = 0; i < npages && !ret; i++) {
		uintptr_t va = range->start + (i << HMM_PAGE_SHIFT);
		uint64_t req = (range->hmm_pfns[i] & range->pfn_flags_mask) |
			       range->default_flags;
		bool fault = req & HMM_PFN_REQ_FAULT;
		bool write = req & HMM_PFN_REQ_WRITE;
		unsigned dev;
		uint32_t dpfn;
		uint8_t st, mod;

		if (write && !fault) {
			ret = -EINVAL;
			break;
		}
		if (range->notifier && (i & 63) == 0 &&
		    hmm_interval_check_retry(range->notifier,
					     range->notifier_seq)) {
			ret = -EBUSY;
			break;
		}
		/* The states of this page's block from here on, once. */
		if (i < ps_first || i >= ps_first + ps_n) {
			ps_first = i;
			ps_n = HMM_MIN(npages - i,
				       HMM_BLOCK_PAGES - hmm__block_index(va));
			load_states(va, ps_n, ps);
		}
		st = ps[i - ps_first].st;
		dev = ps[i - ps_first].dev;
		mod = ps[i - ps_first].mod;
		dpfn = ps[i - ps_first].dpfn;
		if (PMOD_KIND(mod) || PS_KIND(st) == PS_MIGRATING) {
			/* Something may wait or move pages: touches first,
			 * and look again afterwards. */
			ret = flush_touches(range, &tq);
			if (ret)
				break;
			ps_n = 0;
		}
		if (PMOD_KIND(mod)) {
			/* A device's hold (hold.c). */
			hmm_device_t *holder = hmm__device_get(PMOD_ID(mod));
			bool mine = owner && holder == owner;
			if (PMOD_KIND(mod) == PMOD_LOCKED && !mine) {
				if (fault) {
					ret = -EACCES;
					break;
				}
				range->hmm_pfns[i] = HMM_PFN_ERROR;
				continue;
			}
			if (PMOD_IS_EXCL(mod) && fault && !mine) {
				/* Another device needs it: the hold ends. */
				hmm__holds_revoke(va, va + HMM_PAGE_SIZE, owner);
				i--;
				continue;
			}
			if (PMOD_KIND(mod) == PMOD_EXCL_RO && mine && write &&
			    PS_KIND(st) == PS_SYSTEM) {
				/* The holder writes: its atomics run in its
				 * own memory, where the page goes now (the
				 * CPU read it meanwhile). */
				if (++pulls > 64) {
					ret = -EBUSY;
					break;
				}
				ret = hmm__hold_pull(va, range->end, holder);
				if (ret)
					break;
				i--;
				continue;
			}
		}
		if (PS_KIND(st) == PS_MIGRATING) {
			if (!fault) {
				range->hmm_pfns[i] = 0;
				continue;
			}
			ret = wait_settled(va);
			if (!ret)
				i--; /* look again */
			continue;
		}
		if (PS_KIND(st) == PS_DEVICE && owner &&
		    hmm__device_get(PDEV_ID(dev)) == owner) {
			if (dev & PDEV_NOREAD) {
				if (fault) {
					ret = -EFAULT;
					break;
				}
				range->hmm_pfns[i] = HMM_PFN_ERROR;
				continue;
			}
			if (write && !(st & PSF_DEV_WRITE)) {
				ret = -EPERM;
				break;
			}
			range->hmm_pfns[i] = HMM_PFN_VALID | HMM_PFN_DEVICE |
					     ((st & PSF_DEV_WRITE) ? HMM_PFN_WRITE
								   : 0) |
					     dpfn;
			continue;
		}
		if (fault) {
			/* Touched later, with its neighbours, under one
			 * guard; the state read above may be stale by then,
			 * which the touch settles (a CPU access). */
			if (tq.n && (tq.write != write || tq.first + tq.n != i)) {
				ret = flush_touches(range, &tq);
				if (ret)
					break;
			}
			if (!tq.n) {
				tq.first = i;
				tq.write = write;
			}
			tq.n++;
			continue;
		}
		if (PS_KIND(st) == PS_DEVICE) {
			range->hmm_pfns[i] = 0; /* another device's: faultable */
			continue;
		}
		if (!sn.pm && (ret = snap_load(&sn, range->start, range->end)))
			break;
		range->hmm_pfns[i] = snapshot_page(&sn, range->start, va);
	}
	/* The pages waiting to be touched come before any page that failed:
	 * a failure among them is the one to report. */
	{
		int r = flush_touches(range, &tq);
		if (r)
			ret = r;
	}
	snap_free(&sn);
	/* Read-mostly pages: copies in the faulting device's memory, and
	 * no write access where copies exist (dup.c). */
	if (!ret)
		hmm__dups_range_fault(range);
	if (!ret && range->notifier &&
	    hmm_interval_check_retry(range->notifier, range->notifier_seq))
		ret = -EBUSY;
	return ret;
}
