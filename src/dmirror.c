/* SPDX-License-Identifier: MIT */
/*
 * The dmirror command surface (include/hmm/hmm_dmirror.h): the kernel's HMM
 * test driver, in user space, over libhmm's driver interface.
 *
 * It is built the way the kernel driver is, and is a worked example of a
 * libhmm driver mirror:
 *  - each open is a mirror: a page table (VA page -> host address of the
 *    page's data, with READ/WRITE/ATOMIC tags) under a mutex, and an
 *    interval notifier over the whole address space whose callback clears
 *    entries under that mutex;
 *  - device reads and writes copy through the page table; a missing entry
 *    is a device fault, served by hmm_range_fault with the classic
 *    read_begin / fault / lock / read_retry loop;
 *  - device memory belongs to one libhmm "sim" device per device number,
 *    shared by every open of that number (the kernel's dmirror_device),
 *    and closed, bringing its pages home, with the last mirror.
 *
 * Entries point at the user's page itself for system memory (the device
 * reaches it at the same address) and into the sim pool for device pages.
 * They are valid only under the mirror lock: every change that could take
 * a page away (munmap, mprotect, madvise, mremap, migration, fork) calls
 * the invalidate callback first, which waits for that lock.  So a copy made
 * under the lock from a valid entry never meets a missing page, and the
 * lock is only ever held over fault-free sections, which is what allows the
 * callback to take it even when it cannot block.
 *
 * Locks: dm_lock (the device table) may be held while taking a mirror's
 * lock, never the other way round.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "hmm/hmm_dmirror.h"
#include "compat.h"
#include "internal.h"
#include "../drivers/sim/sim_pt.h"

/* Page-table entry tags, in the low bits of a page-aligned host address. */
#define DPT_READ 0x1ULL
#define DPT_WRITE 0x2ULL
#define DPT_ATOMIC 0x4ULL	/* exclusive for device atomics */
#define DPT_DEVICE 0x8ULL	/* the data is in this device's memory */
#define DPT_ADDR(e) ((e) & ~(uint64_t)HMM_PAGE_MASK)

#define DM_FAULT_CHUNK 64	/* pages per hmm_range_fault call */
#define DM_FAULT_TIMEOUT_MS 1000 /* the kernel's HMM_RANGE_DEFAULT_TIMEOUT */
#define DM_MAX_ROUNDS 10000	/* fault rounds before a command gives up */
#define DM_MEM_SIZE (1UL << 30)	/* device memory per device number */
#define DM_BUF_SIZE (256UL << 10) /* bounce buffer kept by each mirror */

struct dm_mdev {
	hmm_device_t *dev;	/* dm_lock */
	unsigned int users;	/* mirrors open on it; dm_lock */
};

struct hmm_dmirror {
	unsigned int devno;
	hmm_device_t *dev;
	struct hmm_interval_notifier notifier;
	pthread_mutex_t lock;		/* protects pt and flags */
	struct sim_pt pt;
	uint64_t flags;			/* HMM_DMIRROR_FLAG_* */
	void *buf;			/* bounce buffer of DM_BUF_SIZE */
	atomic_bool buf_busy;		/* a command is using buf */
	struct hmm_dmirror *next;	/* dm_mirrors; dm_lock */
};

static pthread_mutex_t dm_lock = PTHREAD_MUTEX_INITIALIZER;
static struct dm_mdev dm_mdevs[HMM_DMIRROR_NDEVICES]; /* dm_lock */
static struct hmm_dmirror *dm_mirrors;		      /* dm_lock */
static pthread_once_t dm_once = PTHREAD_ONCE_INIT;

static bool dm_invalidate(struct hmm_interval_notifier *sub,
			  const struct hmm_notifier_range *r,
			  unsigned long cur_seq)
{
	struct hmm_dmirror *m = (struct hmm_dmirror *)((char *)sub -
		offsetof(struct hmm_dmirror, notifier));

	/* Held only over fault-free copies: fine even when not blockable. */
	pthread_mutex_lock(&m->lock);
	hmm_interval_set_seq(sub, cur_seq);
	sim_pt_clear(&m->pt, r->start >> HMM_PAGE_SHIFT,
		     r->end >> HMM_PAGE_SHIFT);
	pthread_mutex_unlock(&m->lock);
	return true;
}

static const struct hmm_interval_notifier_ops dm_notifier_ops = {
	.invalidate = dm_invalidate,
};

/*
 * fork: the child's libhmm goes on with copies of the devices (and of
 * their memory), so the mirrors a child inherits through its descriptors
 * go on too, mirroring the child's address space: locks anew, page
 * tables empty, notifiers inserted again (notifiers do not follow a
 * fork).  The kernel driver would go on mirroring the parent's address
 * space there, which a process cannot do for another.  This runs after
 * libhmm's own child handler (registered first).
 */
static void dm_atfork_child(void)
{
	pthread_mutex_init(&dm_lock, NULL);
	for (struct hmm_dmirror *m = dm_mirrors; m; m = m->next) {
		pthread_mutex_init(&m->lock, NULL);
		sim_pt_forget(&m->pt);
		atomic_store(&m->buf_busy, false);
		if (hmm_interval_notifier_insert(&m->notifier, 0, 0,
						 &dm_notifier_ops))
			hmm__warn("dmirror: a mirror cannot follow the fork");
	}
}

static void dm_once_init(void)
{
	pthread_atfork(NULL, NULL, dm_atfork_child);
}

/* Take a reference on device @devno, opening it on first use. */
static int dm_mdev_get(unsigned int devno, hmm_device_t **out)
{
	struct dm_mdev *md = &dm_mdevs[devno];
	int ret = 0;

	if (!md->dev) {
		struct hmm_device_attr attr = { .mem_size = DM_MEM_SIZE };
		ret = hmm_device_open("sim", &attr, &md->dev);
	}
	if (!ret) {
		md->users++;
		*out = md->dev;
	}
	return ret;
}

/* Drop it; returns the device to close if that was the last mirror. */
static hmm_device_t *dm_mdev_put(unsigned int devno)
{
	struct dm_mdev *md = &dm_mdevs[devno];
	hmm_device_t *close_dev = NULL;

	if (md->users && --md->users == 0) {
		close_dev = md->dev;
		md->dev = NULL;
	}
	return close_dev;
}

int hmm_dmirror_open(unsigned int devno, hmm_dmirror_t **out)
{
	struct hmm_dmirror *m;
	int ret;

	if (!out || devno >= HMM_DMIRROR_NDEVICES)
		return -EINVAL;
	if (devno >= 2)
		return -ENODEV; /* device-coherent memory: not offered */
	ret = hmm__ensure();
	if (ret)
		return ret;
	pthread_once(&dm_once, dm_once_init);
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->devno = devno;
	pthread_mutex_init(&m->lock, NULL);
	m->buf = hmm__mmap_own(DM_BUF_SIZE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m->buf == MAP_FAILED)
		m->buf = NULL;
	pthread_mutex_lock(&dm_lock);
	ret = dm_mdev_get(devno, &m->dev);
	if (!ret) {
		ret = hmm_interval_notifier_insert(&m->notifier, 0, 0,
						   &dm_notifier_ops);
		if (ret)
			dm_mdev_put(devno); /* the device stays open */
	}
	if (!ret) {
		m->next = dm_mirrors;
		dm_mirrors = m;
	}
	pthread_mutex_unlock(&dm_lock);
	if (ret) {
		if (m->buf)
			hmm__munmap_own(m->buf, DM_BUF_SIZE);
		free(m);
		return ret;
	}
	*out = m;
	return 0;
}

int hmm_dmirror_close(hmm_dmirror_t *m)
{
	hmm_device_t *close_dev;

	if (!m)
		return -EINVAL;
	hmm_interval_notifier_remove(&m->notifier);
	pthread_mutex_lock(&dm_lock);
	for (struct hmm_dmirror **pp = &dm_mirrors; *pp; pp = &(*pp)->next) {
		if (*pp == m) {
			*pp = m->next;
			break;
		}
	}
	close_dev = dm_mdev_put(m->devno);
	pthread_mutex_unlock(&dm_lock);
	if (close_dev)
		hmm_device_close(close_dev); /* brings its pages home */
	pthread_mutex_destroy(&m->lock);
	sim_pt_destroy(&m->pt);
	if (m->buf)
		hmm__munmap_own(m->buf, DM_BUF_SIZE);
	free(m);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Copies                                                              */
/* ------------------------------------------------------------------ */

/* memcpy that reports a fault (a bad user buffer) instead of dying. */
/*
 * memcpy that reports a fault (a bad user buffer) instead of dying.  Done
 * by hand, out of the sanitizers' sight: the guard is the check here
 * (memcpy from NULL is undefined, and ASan would stop a copy to a wild
 * address before the guard could answer -EFAULT).
 */
__attribute__((no_sanitize("address", "undefined", "thread")))
static void copy_bytes(void *dst, const void *src, size_t len)
{
	volatile char *d = dst;
	const volatile char *s = src;

	if (!(((uintptr_t)d | (uintptr_t)s | len) & 7)) {
		volatile uint64_t *d8 = (volatile uint64_t *)dst;
		const volatile uint64_t *s8 = (const volatile uint64_t *)src;
		for (size_t i = 0; i < len / 8; i++)
			d8[i] = s8[i];
		return;
	}
	for (size_t i = 0; i < len; i++)
		d[i] = s[i];
}

static int copy_guarded(void *dst, const void *src, size_t len)
{
	struct hmm_guard g;

	if (hmm__guard_begin(&g))
		return -EFAULT;
	copy_bytes(dst, src, len);
	hmm__guard_end(&g);
	return 0;
}

/*
 * Copy pages [start, end) between the device (through the page table) and
 * @buf (a bounce buffer of the command, indexed from @base).  Stops at the
 * first page without a suitable entry: -ENOENT, with *@done counting the
 * pages copied before it.  Called with the mirror lock held.
 */
static int dm_copy(struct hmm_dmirror *m, uintptr_t base, uintptr_t start,
		   uintptr_t end, char *buf, bool write, uint64_t *done)
{
	for (uintptr_t va = start; va < end; va += HMM_PAGE_SIZE) {
		uint64_t e = sim_pt_lookup(&m->pt, va >> HMM_PAGE_SHIFT);
		char *b = buf + (va - base);
		int ret;

		if (!e || (write && !(e & DPT_WRITE)))
			return -ENOENT;
		if (write)
			ret = copy_guarded((void *)DPT_ADDR(e), b,
					   HMM_PAGE_SIZE);
		else
			ret = copy_guarded(b, (void *)DPT_ADDR(e),
					   HMM_PAGE_SIZE);
		if (ret)
			return ret; /* cannot happen for a valid entry */
		(*done)++;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Device faults                                                       */
/* ------------------------------------------------------------------ */

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The page-table entry for hmm_range_fault's @pfn, or 0. */
static uint64_t dm_entry(struct hmm_dmirror *m, uint64_t pfn, uint64_t tags)
{
	uint64_t frame = hmm_pfn_to_frame(pfn);
	uint64_t addr;

	if (!(pfn & HMM_PFN_VALID) || (pfn & HMM_PFN_ERROR))
		return 0;
	if (pfn & HMM_PFN_DEVICE) {
		/* A driver whose memory libhmm cannot address: the frame. */
		addr = m->dev->ops->host_ptr
			       ? (uintptr_t)m->dev->ops->host_ptr(m->dev, frame)
			       : frame << HMM_PAGE_SHIFT;
		tags |= DPT_DEVICE;
	} else {
		addr = frame << HMM_PAGE_SHIFT;
	}
	tags |= DPT_READ;
	if (pfn & HMM_PFN_WRITE)
		tags |= DPT_WRITE;
	return addr | tags;
}

/*
 * Run hmm_range_fault over [start, end) with @flags and install what it
 * returns, chunk by chunk, with the retry protocol of hmm_driver.h.  With
 * @only_device, only this device's pages are installed (after a migration)
 * and they get @tags.  Returns 0, -EBUSY after DM_FAULT_TIMEOUT_MS of
 * invalidations, or hmm_range_fault's error.
 */
static int dm_fault(struct hmm_dmirror *m, uintptr_t start, uintptr_t end,
		    uint64_t flags, bool only_device, uint64_t tags)
{
	uint64_t pfns[DM_FAULT_CHUNK];

	for (uintptr_t s = start; s < end;) {
		uintptr_t e = s + HMM_MIN(end - s, DM_FAULT_CHUNK * HMM_PAGE_SIZE);
		struct hmm_range range = {
			.notifier = &m->notifier,
			.start = s,
			.end = e,
			.hmm_pfns = pfns,
			.default_flags = flags,
			.dev_private_owner = m->dev,
		};
		uint64_t deadline = now_ms() + DM_FAULT_TIMEOUT_MS;

		for (;;) {
			int ret;
			if (now_ms() > deadline)
				return -EBUSY;
			range.notifier_seq =
				hmm_interval_read_begin(&m->notifier);
			ret = hmm_range_fault(&range);
			if (ret == -EBUSY)
				continue;
			if (ret)
				return ret;
			pthread_mutex_lock(&m->lock);
			if (!hmm_interval_read_retry(&m->notifier,
						     range.notifier_seq))
				break; /* with the lock held */
			pthread_mutex_unlock(&m->lock);
		}
		for (size_t i = 0; i < (e - s) >> HMM_PAGE_SHIFT; i++) {
			uint64_t ent;
			if (only_device && !(pfns[i] & HMM_PFN_DEVICE))
				continue;
			ent = dm_entry(m, pfns[i], tags);
			if (ent && sim_pt_set(&m->pt, (s >> HMM_PAGE_SHIFT) + i,
					      ent)) {
				pthread_mutex_unlock(&m->lock);
				return -ENOMEM;
			}
		}
		pthread_mutex_unlock(&m->lock);
		s = e;
	}
	return 0;
}

/*
 * Device reads or writes [addr, end) from or to @buf: copy what the page
 * table has, fault in the rest, again, counting fault rounds as the kernel
 * driver does.
 */
static int dm_access(struct hmm_dmirror *m, struct hmm_dmirror_cmd *cmd,
		     uintptr_t addr, uintptr_t end, char *buf, bool write)
{
	uintptr_t start = addr;

	for (unsigned int round = 0;; round++) {
		int ret;

		pthread_mutex_lock(&m->lock);
		ret = dm_copy(m, addr, start, end, buf, write, &cmd->cpages);
		pthread_mutex_unlock(&m->lock);
		if (ret != -ENOENT)
			return ret;
		if (round == DM_MAX_ROUNDS)
			return -EBUSY; /* invalidated faster than we fault */
		start = addr + (cmd->cpages << HMM_PAGE_SHIFT);
		ret = dm_fault(m, start, end,
			       HMM_PFN_REQ_FAULT |
				       (write ? HMM_PFN_REQ_WRITE : 0),
			       false, 0);
		if (ret)
			return ret;
		cmd->faults++;
	}
}

/* ------------------------------------------------------------------ */
/* Migration                                                           */
/* ------------------------------------------------------------------ */

/* Where the page at @va is: 0 unmanaged, 1 system, 2 this device, 3 another
 * device (or moving). */
static int dm_where(struct hmm_dmirror *m, uintptr_t va)
{
	hmm_device_t *d = NULL;
	int loc = hmm_page_location((const void *)va, &d);

	if (loc == HMM_LOC_UNMANAGED || loc < 0)
		return 0;
	if (loc == HMM_LOC_SYSTEM)
		return 1;
	if (loc == HMM_LOC_DEVICE && d == m->dev)
		return 2;
	return 3;
}

/*
 * Check that [s, e) is mapped, readable (and writable if @need_write), and
 * give libhmm the anonymous memory it does not manage yet.  Memory it
 * cannot manage (file-backed) is left alone unless @strict.
 */
static int dm_prepare(struct hmm_dmirror *m, uintptr_t s, uintptr_t e,
		      bool need_write, bool strict)
{
	struct hmm_vma *v;
	long n = hmm__vma_snapshot(s, e, &v);
	int ret = 0;

	if (n < 0)
		return (int)n;
	if (hmm__vma_covered(v, n, s, e))
		ret = need_write ? -EFAULT : -EINVAL;
	for (long i = 0; i < n && !ret; i++) {
		if (!(v[i].prot & PROT_READ) ||
		    (need_write && !(v[i].prot & PROT_WRITE)))
			ret = need_write ? -EFAULT : -EINVAL;
		else if (strict && !v[i].anon && !v[i].shmem_anon)
			ret = -EOPNOTSUPP;
	}
	for (long i = 0; i < n && !ret; i++) {
		uintptr_t vs = HMM_MAX(s, v[i].start), ve = HMM_MIN(e, v[i].end);
		if (!v[i].anon && !v[i].shmem_anon)
			continue; /* file-backed: libhmm cannot move it yet */
		for (uintptr_t p = vs; p < ve && !ret;) {
			uintptr_t q = p;
			while (q < ve && dm_where(m, q) == 0)
				q += HMM_PAGE_SIZE;
			if (q > p) {
				ret = hmm_range_adopt((void *)p, q - p, 0);
				if (ret == -EBUSY && !strict)
					ret = 0; /* another userfaultfd's */
			}
			p = q + HMM_PAGE_SIZE;
		}
	}
	free(v);
	return ret;
}

/* Take the one-shot FAIL_ALLOC flag. */
static bool dm_take_fail(struct hmm_dmirror *m)
{
	bool fail;

	pthread_mutex_lock(&m->lock);
	fail = m->flags & HMM_DMIRROR_FLAG_FAIL_ALLOC;
	m->flags &= ~HMM_DMIRROR_FLAG_FAIL_ALLOC;
	pthread_mutex_unlock(&m->lock);
	return fail;
}

/*
 * Move the pages of [s, e) that are in system memory (or on another device,
 * if @steal) to this device.  With @fail, the first device allocation
 * fails (injected) and the run falls back to page by page, as the kernel
 * falls back from huge pages.  Returns 0 or hmm_migrate's error.
 */
static int dm_move_in(struct hmm_dmirror *m, uintptr_t s, uintptr_t e,
		      bool steal, bool fail)
{
	if (fail)
		hmm__devmem_fail_arm(m->dev, HMM_FAIL_DEVMEM);
	for (uintptr_t p = s; p < e;) {
		uintptr_t q = p;
		long r;
		int w;
		while (q < e && ((w = dm_where(m, q)) == 1 || (steal && w == 3)))
			q += HMM_PAGE_SIZE;
		if (q == p) {
			p += HMM_PAGE_SIZE;
			continue;
		}
		r = hmm_migrate((void *)p, q - p, m->dev, 0);
		if (r == -ENOMEM && fail) {
			fail = false;
			r = 0;
			for (uintptr_t x = p; x < q && r >= 0;
			     x += HMM_PAGE_SIZE)
				r = hmm_migrate((void *)x, HMM_PAGE_SIZE,
						m->dev, 0);
		}
		if (r < 0) {
			hmm__devmem_fail_take(m->dev, HMM_FAIL_DEVMEM);
			return (int)r;
		}
		p = q;
	}
	/* Nothing was allocated: do not leave the failure armed. */
	hmm__devmem_fail_take(m->dev, HMM_FAIL_DEVMEM);
	return 0;
}

static int dm_migrate_to_dev(struct hmm_dmirror *m,
			     struct hmm_dmirror_cmd *cmd, uintptr_t s,
			     uintptr_t e, char *buf)
{
	int ret = dm_prepare(m, s, e, false, false);

	if (ret)
		return ret;
	ret = dm_move_in(m, s, e, false, dm_take_fail(m));
	if (ret)
		return ret;
	/* Map what is now ours (the kernel's finalize step), then read it
	 * back; a page that did not move (file-backed, on the other device,
	 * or taken back by the CPU meanwhile) is missing: -ENOENT. */
	ret = dm_fault(m, s, e, 0, true, 0);
	if (ret)
		return ret;
	pthread_mutex_lock(&m->lock);
	ret = dm_copy(m, s, s, e, buf, false, &cmd->cpages);
	pthread_mutex_unlock(&m->lock);
	return ret;
}

static int dm_migrate_to_sys(struct hmm_dmirror *m,
			     struct hmm_dmirror_cmd *cmd, uintptr_t s,
			     uintptr_t e)
{
	struct hmm_vma *v;
	long n = hmm__vma_snapshot(s, e, &v), r;
	bool fail;

	if (n < 0)
		return (int)n;
	r = hmm__vma_covered(v, n, s, e) ? -EINVAL : 0;
	free(v);
	if (r)
		return (int)r;
	fail = dm_take_fail(m);
	if (fail)
		hmm__devmem_fail_arm(m->dev, HMM_FAIL_SYSMEM);
	r = hmm__migrate_to_system(s, e, m->dev, 0);
	if (r == -ENOMEM && fail) {
		/* Injected; the pages stayed on the device.  Again, page by
		 * page. */
		long total = 0;
		r = 0;
		for (uintptr_t x = s; x < e && r >= 0; x += HMM_PAGE_SIZE) {
			r = hmm__migrate_to_system(x, x + HMM_PAGE_SIZE,
						   m->dev, 0);
			total += r > 0 ? r : 0;
		}
		if (r >= 0)
			r = total;
	}
	hmm__devmem_fail_take(m->dev, HMM_FAIL_SYSMEM);
	if (r < 0)
		return (int)r;
	cmd->cpages = (uint64_t)r;
	return 0;
}

/*
 * Exclusive access for device atomics: the pages move into this device's
 * memory and are mapped with the ATOMIC tag.  Any CPU access faults them
 * back, and the invalidation that goes with it clears the tag: that is the
 * kernel's make_device_exclusive semantics ("any CPU access revokes").
 */
static int dm_exclusive(struct hmm_dmirror *m, struct hmm_dmirror_cmd *cmd,
			uintptr_t s, uintptr_t e, char *buf)
{
	int ret = dm_prepare(m, s, e, true, true);

	for (int tries = 0; !ret; tries++) {
		ret = dm_move_in(m, s, e, true, false);
		if (!ret)
			ret = dm_fault(m, s, e, 0, true, DPT_ATOMIC);
		if (ret)
			break;
		pthread_mutex_lock(&m->lock);
		cmd->cpages = 0;
		ret = dm_copy(m, s, s, e, buf, false, &cmd->cpages);
		pthread_mutex_unlock(&m->lock);
		if (ret != -ENOENT)
			break;
		/* The CPU took a page back before it was mapped: again. */
		ret = tries < 100 ? 0 : -EBUSY;
	}
	return ret;
}

static int dm_check_exclusive(struct hmm_dmirror *m, uintptr_t s,
			      uintptr_t e)
{
	int ret = 0;

	pthread_mutex_lock(&m->lock);
	for (uintptr_t va = s; va < e && !ret; va += HMM_PAGE_SIZE)
		if (sim_pt_lookup(&m->pt, va >> HMM_PAGE_SHIFT) & DPT_ATOMIC)
			ret = -EPERM;
	pthread_mutex_unlock(&m->lock);
	return ret;
}

/* ------------------------------------------------------------------ */
/* Snapshot                                                            */
/* ------------------------------------------------------------------ */

static uint8_t dm_mkentry(uint64_t pfn)
{
	uint8_t perm;
	unsigned order;

	if (pfn & HMM_PFN_ERROR)
		return HMM_DMIRROR_PROT_ERROR;
	if (!(pfn & HMM_PFN_VALID))
		return HMM_DMIRROR_PROT_NONE;
	if (pfn & HMM_PFN_DEVICE)
		perm = HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL;
	else if (pfn & HMM_PFN_ZERO)
		perm = HMM_DMIRROR_PROT_ZERO;
	else
		perm = HMM_DMIRROR_PROT_NONE;
	perm |= (pfn & HMM_PFN_WRITE) ? HMM_DMIRROR_PROT_WRITE
				      : HMM_DMIRROR_PROT_READ;
	order = (unsigned)((pfn >> HMM_PFN_ORDER_SHIFT) & 0x1f);
	if (order == 9)
		perm |= HMM_DMIRROR_PROT_PMD;
	else if (order == 18)
		perm |= HMM_DMIRROR_PROT_PUD;
	return perm;
}

static int dm_snapshot(struct hmm_dmirror *m, struct hmm_dmirror_cmd *cmd,
		       uintptr_t s, uintptr_t e, uint8_t *out)
{
	uint64_t pfns[DM_FAULT_CHUNK];

	for (uintptr_t p = s; p < e;) {
		uintptr_t q = p + HMM_MIN(e - p, DM_FAULT_CHUNK * HMM_PAGE_SIZE);
		size_t n = (q - p) >> HMM_PAGE_SHIFT;
		struct hmm_range range = {
			.start = p,
			.end = q,
			.hmm_pfns = pfns,
			.dev_private_owner = m->dev,
		};
		int ret;

		memset(pfns, 0, sizeof(pfns));
		ret = hmm_range_fault(&range);
		if (ret)
			return ret;
		for (size_t i = 0; i < n; i++)
			out[((p - s) >> HMM_PAGE_SHIFT) + i] =
				dm_mkentry(pfns[i]);
		cmd->cpages += n;
		p = q;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Commands                                                            */
/* ------------------------------------------------------------------ */

static int dm_command(struct hmm_dmirror *m, unsigned long request,
		      struct hmm_dmirror_cmd *cmd)
{
	uintptr_t s = cmd->addr, e;
	size_t len;
	char *buf = NULL;
	int ret;

	/* Every command, FLAGS and RELEASE included, as the kernel does. */
	if ((s & HMM_PAGE_MASK) || !cmd->npages ||
	    cmd->npages > (UINTPTR_MAX >> HMM_PAGE_SHIFT))
		return -EINVAL;
	len = cmd->npages << HMM_PAGE_SHIFT;
	e = s + len;
	if (e <= s)
		return -EINVAL;
	if (request == HMM_DMIRROR_FLAGS) {
		pthread_mutex_lock(&m->lock);
		m->flags = cmd->npages;
		pthread_mutex_unlock(&m->lock);
		return 0;
	}
	if (request == HMM_DMIRROR_RELEASE) {
		hmm__migrate_all_to_system(m->dev);
		return 0;
	}

	/*
	 * The bounce buffer: the mirror's own, made when it was opened, if
	 * it is big enough and free; else from the heap.  Keeping it out of
	 * the heap helps programs that hand a buffer shorter than the pages
	 * they ask for (the kernel driver copies whole pages): they overrun
	 * their own heap, not a chunk libhmm is about to free.
	 */
	switch (request) {
	case HMM_DMIRROR_READ:
	case HMM_DMIRROR_READ_UNLOCKED:
	case HMM_DMIRROR_WRITE:
	case HMM_DMIRROR_MIGRATE_TO_DEV:
	case HMM_DMIRROR_EXCLUSIVE:
		break;
	case HMM_DMIRROR_SNAPSHOT:
		len = cmd->npages;
		break;
	default:
		len = 0;
	}
	if (len && len <= DM_BUF_SIZE && m->buf &&
	    !atomic_exchange(&m->buf_busy, true)) {
		buf = m->buf;
	} else if (len) {
		buf = malloc(len);
		if (!buf)
			return -ENOMEM;
	}
	switch (request) {
	case HMM_DMIRROR_READ:
	case HMM_DMIRROR_READ_UNLOCKED:
		ret = dm_access(m, cmd, s, e, buf, false);
		if (!ret)
			ret = copy_guarded((void *)cmd->ptr, buf, len);
		break;
	case HMM_DMIRROR_WRITE:
		ret = copy_guarded(buf, (const void *)cmd->ptr, len);
		if (!ret)
			ret = dm_access(m, cmd, s, e, buf, true);
		break;
	case HMM_DMIRROR_MIGRATE_TO_DEV:
		ret = dm_migrate_to_dev(m, cmd, s, e, buf);
		if (!ret)
			ret = copy_guarded((void *)cmd->ptr, buf, len);
		break;
	case HMM_DMIRROR_MIGRATE_TO_SYS:
		ret = dm_migrate_to_sys(m, cmd, s, e);
		break;
	case HMM_DMIRROR_SNAPSHOT:
		ret = dm_snapshot(m, cmd, s, e, (uint8_t *)buf);
		if (!ret)
			ret = copy_guarded((void *)cmd->ptr, buf, cmd->npages);
		break;
	case HMM_DMIRROR_EXCLUSIVE:
		ret = dm_exclusive(m, cmd, s, e, buf);
		if (!ret)
			ret = copy_guarded((void *)cmd->ptr, buf, len);
		break;
	case HMM_DMIRROR_CHECK_EXCLUSIVE:
		ret = dm_check_exclusive(m, s, e);
		break;
	default:
		ret = -ENOTTY;
	}
	if (buf == m->buf)
		atomic_store(&m->buf_busy, false);
	else
		free(buf);
	return ret;
}

int hmm_dmirror_ioctl(hmm_dmirror_t *m, unsigned long request,
		      struct hmm_dmirror_cmd *ucmd)
{
	struct hmm_dmirror_cmd cmd;
	int ret;

	if (!m)
		return -EINVAL;
	switch (request) {
	case HMM_DMIRROR_READ:
	case HMM_DMIRROR_WRITE:
	case HMM_DMIRROR_MIGRATE_TO_DEV:
	case HMM_DMIRROR_MIGRATE_TO_SYS:
	case HMM_DMIRROR_SNAPSHOT:
	case HMM_DMIRROR_EXCLUSIVE:
	case HMM_DMIRROR_CHECK_EXCLUSIVE:
	case HMM_DMIRROR_RELEASE:
	case HMM_DMIRROR_FLAGS:
	case HMM_DMIRROR_READ_UNLOCKED:
		break;
	default:
		return -ENOTTY;
	}
	if (copy_guarded(&cmd, ucmd, sizeof(cmd)))
		return -EFAULT;
	ret = hmm__ensure();
	if (ret)
		return ret;
	cmd.cpages = 0;
	cmd.faults = 0;
	ret = dm_command(m, request, &cmd);
	/* As the kernel: a failed command reports nothing back. */
	if (!ret && copy_guarded(ucmd, &cmd, sizeof(cmd)))
		ret = -EFAULT;
	return ret;
}

void *hmm_dmirror_mmap(hmm_dmirror_t *m, void *addr, size_t len, int prot,
		       int flags)
{
	int share = flags & (MAP_SHARED | MAP_PRIVATE);
	int fd, err;
	char *p;

	if (!m || !len || !share || (flags & MAP_ANONYMOUS)) {
		errno = EINVAL;
		return MAP_FAILED;
	}
	len = (len + HMM_PAGE_MASK) & ~(size_t)HMM_PAGE_MASK;
	/*
	 * The kernel driver inserts freshly allocated zeroed pages of its
	 * own: present, not the zero page, and in a private mapping copied
	 * on the first write.  A memfd's pages, populated by a read, are
	 * all that.
	 */
	fd = memfd_create("hmm_dmirror_mmap", MFD_CLOEXEC);
	if (fd < 0)
		return MAP_FAILED;
	if (ftruncate(fd, (off_t)len)) {
		err = errno;
		close(fd);
		errno = err;
		return MAP_FAILED;
	}
	p = mmap(addr, len, prot, share | (flags & MAP_FIXED), fd, 0);
	err = errno;
	close(fd);
	if (p == MAP_FAILED) {
		errno = err;
		return MAP_FAILED;
	}
	if (prot & PROT_READ)
		madvise(p, len, MADV_POPULATE_READ);
	return p;
}
