/* SPDX-License-Identifier: MIT */
/*
 * CPU-side changes made through libc: mprotect, pkey_mprotect, munmap,
 * mremap and madvise are defined here, so that a program linked with libhmm
 * calls these first.  Each brackets the real system call with invalidations
 * of the device mirrors, the way the kernel brackets a page-table change
 * with invalidate_range_start/end:
 *
 *  - before: blockable, so no device access to the range is in flight when
 *    the change happens (a device never reads memory being unmapped, and
 *    never writes memory losing its write permission);
 *  - after: clears whatever a device fault re-established in between.
 *
 * userfaultfd's REMOVE/UNMAP/REMAP events still arrive for managed ranges
 * and keep the page states; these wrappers are what makes the mirror exact
 * for memory that is mirrored but not managed.  libhmm's own calls use the
 * hmm__sys_* wrappers, which go straight to the kernel.
 */
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

int hmm__sys_munmap(void *addr, size_t len)
{
	return (int)syscall(SYS_munmap, addr, len);
}

int hmm__sys_madvise(void *addr, size_t len, int advice)
{
	return (int)syscall(SYS_madvise, addr, len, advice);
}

/*
 * The system call @nr (munmap, madvise, mprotect, pkey_mprotect) over
 * [addr, addr + len), minus libhmm's own mappings (ownmap.c), which an
 * application call over a hole it made may cover.  Returns like syscall().
 */
struct sysop {
	long nr, a2, a3;
};

static int sysop_piece(uintptr_t s, uintptr_t e, void *arg)
{
	const struct sysop *op = arg;

	return syscall(op->nr, s, e - s, op->a2, op->a3) ? -1 : 0;
}

static long spare_own_locked(long nr, void *addr, size_t len, long a2,
			     long a3)
{
	struct sysop op = { nr, a2, a3 };
	uintptr_t s = (uintptr_t)addr, e = s + len;

	/* Let the kernel judge bad arguments. */
	if ((s & HMM_PAGE_MASK) || !len || e < s ||
	    e > (UINTPTR_MAX & ~HMM_PAGE_MASK))
		return syscall(nr, addr, len, a2, a3);
	e = (e + HMM_PAGE_MASK) & ~HMM_PAGE_MASK;
	return hmm__outside_own(s, e, sysop_piece, &op);
}

/* Whether libhmm manages part of [s, e): then a change there sends
 * userfaultfd events, which the caller waits to see handled.  (Waiting
 * otherwise would tie every munmap to the service thread, sanitizer
 * runtimes' own calls included.) */
static bool managed(uintptr_t s, uintptr_t e)
{
	bool m;

	if (atomic_load(&hmm__ctx.state) != HMM_CTX_UP)
		return false;
	pthread_rwlock_rdlock(&hmm__ctx.ranges_lock);
	m = hmm__ranges_overlap(s, e);
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	return m;
}

/*
 * Calls that change VMAs of managed memory wait for libhmm's drops in
 * progress (ctx.vma_lock): a VMA that splits while the kernel waits for a
 * REMOVE event to be read makes it send part of the drop twice, and the
 * second would be taken for the application's (hmm__zap_claim_run).  Only
 * VMAs of managed memory matter (a registered VMA never merges with an
 * unregistered neighbour).  Returns whether it took the lock.
 */
static bool vmas_hold(const void *addr, size_t len)
{
	bool vmas = !hmm__on_service_thread() &&
		    managed((uintptr_t)addr & ~HMM_PAGE_MASK,
			    ((uintptr_t)addr + len + HMM_PAGE_MASK) &
				    ~HMM_PAGE_MASK);

	if (vmas)
		pthread_rwlock_wrlock(&hmm__ctx.vma_lock);
	return vmas;
}

static void vmas_release(bool held)
{
	if (held)
		pthread_rwlock_unlock(&hmm__ctx.vma_lock);
}

/* The system call, with the VMAs held still against libhmm's own drops
 * when it changes them: mprotect and munmap. */
static long spare_own(long nr, void *addr, size_t len, long a2, long a3)
{
	bool held = nr != SYS_madvise && vmas_hold(addr, len);
	long ret = spare_own_locked(nr, addr, len, a2, a3);

	vmas_release(held);
	return ret;
}

/* Whether anybody mirrors anything: the wrappers cost one load otherwise. */
static bool mirrored(void)
{
	return atomic_load_explicit(&hmm__ctx.state, memory_order_acquire) ==
		       HMM_CTX_UP &&
	       __atomic_load_n(&hmm__ctx.notifiers, __ATOMIC_ACQUIRE) != NULL;
}

static void range_of(void *addr, size_t len, uintptr_t *s, uintptr_t *e)
{
	*s = (uintptr_t)addr & ~HMM_PAGE_MASK;
	*e = ((uintptr_t)addr + len + HMM_PAGE_MASK) & ~HMM_PAGE_MASK;
	if (*e < *s)
		*e = UINTPTR_MAX & ~HMM_PAGE_MASK;
}

static void before(uintptr_t s, uintptr_t e, enum hmm_notifier_event ev)
{
	/* The service thread must never wait for device accesses. */
	hmm__invalidate(s, e, ev, NULL, !hmm__on_service_thread());
}

static void after(uintptr_t s, uintptr_t e, enum hmm_notifier_event ev)
{
	hmm__invalidate(s, e, ev, NULL, false);
}

/* After an mprotect: pages living on a device, or moving, take the new
 * protection. */
static void protect_block(struct hmm_block *b, uintptr_t s, uintptr_t e,
			  void *arg)
{
	int prot = *(const int *)arg;

	pthread_mutex_lock(&b->lock);
	for (uintptr_t p = s; p < e; p += HMM_PAGE_SIZE) {
		unsigned i = hmm__block_index(p);
		uint8_t *st = &b->state[i];
		if (PS_KIND(*st) != PS_DEVICE && PS_KIND(*st) != PS_MIGRATING)
			continue;
		/* What a device could write before stays owed to a file. */
		if (*st & PSF_DEV_WRITE)
			b->dev[i] |= PDEV_DIRTY;
		*st = (uint8_t)((*st & ~PSF_DEV_WRITE) |
				((prot & PROT_WRITE) ? PSF_DEV_WRITE : 0));
		b->dev[i] = (uint8_t)((b->dev[i] & ~PDEV_NOREAD) |
				      ((prot & PROT_READ) ? 0 : PDEV_NOREAD));
	}
	pthread_mutex_unlock(&b->lock);
}

void hmm__protect_range(uintptr_t s, uintptr_t e, int prot)
{
	hmm__blocks_for_each(s, e, protect_block, &prot);
}

static int protect(void *addr, size_t len, int prot, long ret)
{
	uintptr_t s, e;

	if (ret)
		return (int)ret;
	range_of(addr, len, &s, &e);
	/* Bumped before the pages take the new protection: a migration
	 * that read the VMAs before this looks again (hmm_migrate). */
	atomic_fetch_add(&hmm__ctx.prot_gen, 1);
	if (atomic_load(&hmm__ctx.state) == HMM_CTX_UP)
		hmm__protect_range(s, e, prot);
	if (mirrored())
		after(s, e, HMM_NOTIFY_PROTECTION_VMA);
	return 0;
}

int mprotect(void *addr, size_t len, int prot)
{
	uintptr_t s, e;
	long ret;

	range_of(addr, len, &s, &e);
	if (mirrored())
		before(s, e, HMM_NOTIFY_PROTECTION_VMA);
	/* File mappings whose pages live on devices: libhmm keeps those
	 * PROT_NONE, and does the call itself there. */
	if (((uintptr_t)addr & HMM_PAGE_MASK) ||
	    !hmm__file_protect(s, e, prot, -1, &ret))
		ret = spare_own(SYS_mprotect, addr, len, prot, 0);
	return protect(addr, len, prot, ret);
}

int pkey_mprotect(void *addr, size_t len, int prot, int pkey)
{
	uintptr_t s, e;
	long ret;

	range_of(addr, len, &s, &e);
	if (mirrored())
		before(s, e, HMM_NOTIFY_PROTECTION_VMA);
	if (((uintptr_t)addr & HMM_PAGE_MASK) ||
	    !hmm__file_protect(s, e, prot, pkey, &ret))
		ret = spare_own(SYS_pkey_mprotect, addr, len, prot, pkey);
	return protect(addr, len, prot, ret);
}

/* A system call that may split VMAs, with them held still (vmas_hold). */
static long vmas_still(long nr, const void *addr, size_t len, long a2)
{
	bool held = vmas_hold(addr, len);
	long ret = syscall(nr, addr, len, a2);

	vmas_release(held);
	return ret;
}

/* madvise advice that changes VMA flags (and so may split a VMA). */
static bool vma_advice(int advice)
{
	switch (advice) {
	case MADV_NORMAL: case MADV_RANDOM: case MADV_SEQUENTIAL:
	case MADV_DONTFORK: case MADV_DOFORK: case MADV_MERGEABLE:
	case MADV_UNMERGEABLE: case MADV_HUGEPAGE: case MADV_NOHUGEPAGE:
	case MADV_DONTDUMP: case MADV_DODUMP: case MADV_WIPEONFORK:
	case MADV_KEEPONFORK:
		return true;
	default:
		return false;
	}
}

/*
 * mlock populates the pages it locks, and a fault there may wait for a
 * migration that waits for ctx.vma_lock: split with MLOCK_ONFAULT, which
 * faults nothing, under the lock, then lock for real after it (a flag
 * change over whole VMAs, which splits none).
 */
static int lock_range(const void *addr, size_t len, unsigned int flags)
{
	uintptr_t s, e;
	long ret;

	/* File pages on a device are PROT_NONE, which mlock cannot
	 * populate: home first (anonymous ones come home by the faults of
	 * the population itself). */
	range_of((void *)addr, len, &s, &e);
	hmm__file_home(s, e);
	ret = vmas_still(SYS_mlock2, addr, len, MLOCK_ONFAULT);

	if (ret || (flags & MLOCK_ONFAULT))
		return (int)ret;
	return (int)syscall(SYS_mlock2, addr, len, flags);
}

int mlock(const void *addr, size_t len)
{
	return lock_range(addr, len, 0);
}

int mlock2(const void *addr, size_t len, unsigned int flags)
{
	if (flags & ~MLOCK_ONFAULT) /* the kernel's answer, unchanged */
		return (int)syscall(SYS_mlock2, addr, len, flags);
	return lock_range(addr, len, flags);
}

int munlock(const void *addr, size_t len)
{
	return (int)vmas_still(SYS_munlock, addr, len, 0);
}

int munmap(void *addr, size_t len)
{
	bool m = mirrored(), mg;
	uintptr_t s, e;
	int ret;

	range_of(addr, len, &s, &e);
	mg = managed(s, e);
	/* Arguments the kernel will refuse change nothing (the file part
	 * forgets ranges before the system call). */
	if (mg && !((uintptr_t)addr & HMM_PAGE_MASK) && len)
		hmm__file_before_unmap(s, e);
	if (m)
		before(s, e, HMM_NOTIFY_UNMAP);
	ret = (int)spare_own(SYS_munmap, addr, len, 0, 0);
	if (m)
		after(s, e, HMM_NOTIFY_UNMAP);
	/* The UNMAP event of a managed range was read before munmap returned;
	 * wait for it to be handled, so that the address can be reused at
	 * once without its old state getting in the way. */
	if (mg)
		hmm__service_sync();
	return ret;
}

/*
 * A drop the application asked for (MADV_DONTNEED and friends), settled
 * here in the calling thread rather than left to the REMOVE events, which
 * arrive after the kernel has dropped and cannot be told apart from
 * libhmm's own.  On shared memory only MADV_REMOVE drops data
 * (MADV_DONTNEED unmaps).
 *
 * Everything is done before the system call: device copies go, pages
 * moving home are marked cleared (their install is skipped, or the kernel
 * drops what was installed), pages a migration may take are marked
 * dropping (it sends zeros if the kernel got there first, and discards its
 * copy otherwise).  Whatever happens to the pages after the system call
 * starts from their new contents, so nothing is marked afterwards: a mark
 * on a page installed after the drop would have its migration drop it
 * again once this call had returned, over what the application wrote
 * since.  The REMOVE events of the call are ignored (ctx.drops).
 */
int madvise(void *addr, size_t len, int advice)
{
	bool drops = advice == MADV_DONTNEED || advice == MADV_REMOVE ||
		     advice == MADV_FREE || advice == MADV_DONTNEED_LOCKED;
	bool m = drops && mirrored(), up;
	uintptr_t s, e;
	int ret;

	if (!drops)
		return vma_advice(advice)
			       ? (int)vmas_still(SYS_madvise, addr, len, advice)
			       : hmm__sys_madvise(addr, len, advice);
	range_of(addr, len, &s, &e);
	up = managed(s, e); /* only managed memory has page states */
	bool shm = up && hmm__range_is_shmem(s);
	bool pre = up && advice != MADV_FREE &&
		   (advice == MADV_REMOVE ? shm : !shm);
	/* Settling first is right only if the call will drop.  On mlocked
	 * memory MADV_DONTNEED and MADV_REMOVE fail with EINVAL, and so does
	 * MADV_COLD, which changes no data: ask it first. */
	if (pre && advice != MADV_DONTNEED_LOCKED &&
	    hmm__sys_madvise(addr, len, MADV_COLD) && errno == EINVAL)
		pre = false;
	/* MADV_FREE keeps a page's data if it is written again before the
	 * kernel frees it: tell the REMOVE handler not to take the event for
	 * a drop.  A drop settled here: tell it to leave the event alone. */
	struct hmm_zap rec = { .start = s, .end = e };
	if (up && advice == MADV_FREE)
		hmm__rec_push(&hmm__ctx.lazy, &rec);
	else if (pre)
		hmm__rec_push(&hmm__ctx.drops, &rec);
	if (m)
		before(s, e, HMM_NOTIFY_CLEAR);
	if (pre)
		hmm__pages_drop(s, e, false, false, true, HMM_NOTIFY_CLEAR,
				!hmm__on_service_thread());
	ret = (int)spare_own(SYS_madvise, addr, len, advice, 0);
	/* Wait for the REMOVE events of this call to be handled while the
	 * records that explain them are still there. */
	if (up)
		hmm__service_sync();
	if (up && advice == MADV_FREE)
		hmm__rec_pop(&hmm__ctx.lazy, &rec);
	else if (pre)
		hmm__rec_pop(&hmm__ctx.drops, &rec);
	if (pre)
		hmm__pages_drop_done(s, e, HMM_NOTIFY_CLEAR,
				     !hmm__on_service_thread());
	else if (m)
		after(s, e, HMM_NOTIFY_CLEAR);
	return ret;
}

void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
	void *new_addr = NULL, *ret;
	uintptr_t s, e, ns = 0, ne = 0;
	bool m = mirrored();

	if (flags & (MREMAP_FIXED | MREMAP_DONTUNMAP)) {
		va_list ap;
		va_start(ap, flags);
		new_addr = va_arg(ap, void *);
		va_end(ap);
	}
	/*
	 * Growing in place (no MREMAP_MAYMOVE): no page moves or goes, and
	 * what is added was unmapped, so no mirror has anything to drop and
	 * no userfaultfd event comes.  Straight through, without taking any
	 * lock or waiting for the service thread: liburcu-bp grows its
	 * reader registry this way inside the first hmm_pt_read_lock of a
	 * thread, which a driver may take under its own page-table lock
	 * (the sim's engines do), and an invalidation here would take that
	 * lock again.
	 */
	if (flags == 0 && new_len >= old_len)
		return (void *)syscall(SYS_mremap, old, old_len, new_len, 0);
	range_of(old, HMM_MAX(old_len, new_len), &s, &e);
	if (new_addr)
		range_of(new_addr, new_len, &ns, &ne);
	hmm__file_before_remap(s, e);
	if (ns)
		hmm__file_before_remap(ns, ne);
	if (m) {
		before(s, e, HMM_NOTIFY_UNMAP);
		if (ns)
			before(ns, ne, HMM_NOTIFY_UNMAP);
	}
	/* syscall() returns -1 with errno set on failure: MAP_FAILED.  The
	 * VMAs are held still against libhmm's drops (see spare_own). */
	bool up = !hmm__on_service_thread() &&
		  (managed(s, e) || (ns && managed(ns, ne)));
	if (up)
		pthread_rwlock_wrlock(&hmm__ctx.vma_lock);
	ret = (void *)syscall(SYS_mremap, old, old_len, new_len, flags,
			      new_addr);
	if (up)
		pthread_rwlock_unlock(&hmm__ctx.vma_lock);
	if (m) {
		after(s, e, HMM_NOTIFY_UNMAP);
		if (ns)
			after(ns, ne, HMM_NOTIFY_UNMAP);
	}
	if (atomic_load(&hmm__ctx.state) == HMM_CTX_UP)
		hmm__service_sync();
	return ret;
}
