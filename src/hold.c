/* SPDX-License-Identifier: MIT */
/*
 * A device's holds on pages: ranges locked to a device, and exclusive
 * access for device atomics.  Each page's hold is its mod byte (PMOD_*,
 * under block.lock); exclusive holds also have a record (ctx.holds) for
 * their timeout and their end.
 *
 * Locked: the pages live on the device, and the range is registered with
 * a second userfaultfd in SIGBUS mode instead of libhmm's own, so a CPU
 * access gets the kernel's own SIGBUS (BUS_ADRERR, si_addr exact, in the
 * accessing thread) and a system call gets EFAULT.  A range cannot belong
 * to two userfaultfds, so switching it from one to the other has a moment
 * when it belongs to none, when an access would map a zero page over data
 * that lives on the device.  The range is PROT_NONE for that moment; a
 * thread that touches it meanwhile gets SIGSEGV, which libhmm's handler
 * recognises (hmm__lock_transition_wait): it waits for the switch to end
 * and lets the access run again, which then faults the ordinary way.
 *
 * Exclusive, read-only CPU: the device does its atomics in its own memory.
 * A CPU read of a held page brings it home write-protected (the device's
 * translations are invalidated by the move), so the CPU sees current data
 * and any CPU write waits (its fault is not resolved) until the hold ends
 * or times out; the device's next write brings the page back to its
 * memory (hmm__hold_pull).  Exclusive, revoke: the pages live on the
 * device; moving one home for any reason ends the hold on it.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#include "internal.h"
#include "migrate.h"

struct hmm_hold {
	uintptr_t start, end;
	hmm_device_t *dev;
	int mode;		  /* HMM_EXCL_READONLY or HMM_EXCL_REVOKE */
	long timeout_ms;	  /* 0: CPU writes wait for ever */
	struct timespec deadline; /* tv_sec 0: no CPU write is waiting */
	bool timed_out;
	struct hmm_hold *next;
};

/* ---- the PROT_NONE moment of a switch ------------------------------------ */

/*
 * tr_seq is odd while a switch is under way, over [tr_s, tr_e).  Written
 * under ctx.hold_lock; read by the signal handler.
 */
static _Atomic unsigned long tr_seq;
static _Atomic uintptr_t tr_s, tr_e;

bool hmm__lock_transition_wait(uintptr_t addr)
{
	/* The last (address, sequence) this thread was let through for: a
	 * second fault there with no switch since is not libhmm's. */
	static __thread __attribute__((tls_model("initial-exec")))
	uintptr_t last_addr;
	static __thread __attribute__((tls_model("initial-exec")))
	unsigned long last_seq;
	unsigned long seq = atomic_load(&tr_seq);
	uintptr_t page = addr & ~HMM_PAGE_MASK;

	if (!seq || !hmm__block_lookup(page))
		return false;
	if (seq & 1) {
		uintptr_t s = atomic_load(&tr_s), e = atomic_load(&tr_e);
		if (atomic_load(&tr_seq) == seq && (page < s || page >= e) &&
		    last_addr == page && last_seq == seq)
			return false;
		while (atomic_load(&tr_seq) == seq) {
			struct timespec ts = { 0, 20000 };
			nanosleep(&ts, NULL);
		}
		seq = atomic_load(&tr_seq);
	} else if (last_addr == page && last_seq == seq) {
		return false;
	}
	last_addr = page;
	last_seq = seq;
	return true;
}

static void transition_begin(uintptr_t s, uintptr_t e)
{
	atomic_store(&tr_s, s);
	atomic_store(&tr_e, e);
	atomic_fetch_add(&tr_seq, 1);
}

static void transition_end(void)
{
	atomic_fetch_add(&tr_seq, 1);
}

/* ---- helpers ------------------------------------------------------------- */

typedef bool (*page_fn)(struct hmm_block *b, unsigned i, void *arg);

/* Call @fn on every page of [s, e) that has a block, under its lock;
 * stops early (returning false) when @fn does. */
static bool pages_each(uintptr_t s, uintptr_t e, page_fn fn, void *arg)
{
	for (uintptr_t p = s; p < e;) {
		uintptr_t bend = HMM_MIN((p & ~(HMM_BLOCK_SIZE - 1)) +
						 HMM_BLOCK_SIZE, e);
		struct hmm_block *b = hmm__block_lookup(p);
		bool go = true;
		if (b) {
			pthread_mutex_lock(&b->lock);
			for (uintptr_t q = p; q < bend && go; q += HMM_PAGE_SIZE)
				go = fn(b, hmm__block_index(q), arg);
			pthread_mutex_unlock(&b->lock);
		}
		if (!go)
			return false;
		p = bend;
	}
	return true;
}

/* 0 if [s, e) is managed memory that can be held; -ENOENT, or
 * -EOPNOTSUPP for file mappings (no SIGBUS registration, no write-protect
 * faults for them). */
static int managed(uintptr_t s, uintptr_t e)
{
	int r;

	pthread_rwlock_rdlock(&hmm__ctx.ranges_lock);
	r = hmm__ranges_cover(s, e);
	for (uintptr_t p = s; !r && p < e;) {
		struct hmm_mrange *m = hmm__range_find(p);
		if (HMM_MK_IS_FILE(m->kind))
			r = -EOPNOTSUPP;
		p = m->end;
	}
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	return r;
}

/* Bring [s, e) into @dev's memory. */
static int migrate_in(uintptr_t s, uintptr_t e, hmm_device_t *dev)
{
	unsigned long gen = atomic_load(&hmm__ctx.prot_gen);
	struct hmm_vma *vmas;
	long nvmas, r;

	r = hmm__check_vmas(s, e, &vmas, &nvmas);
	if (r)
		return (int)r;
	r = hmm__migrate_to_device(s, e, dev, vmas, nvmas, gen);
	free(vmas);
	return r < 0 ? (int)r : 0;
}

/* A hold that [s, e) overlaps, with ctx.holds_lock held. */
static struct hmm_hold *hold_overlapping(uintptr_t s, uintptr_t e)
{
	for (struct hmm_hold *h = hmm__ctx.holds; h; h = h->next)
		if (h->start < e && s < h->end)
			return h;
	return NULL;
}

struct scan {
	unsigned id;
	size_t mine, other, pages;
};

static bool scan_page(struct hmm_block *b, unsigned i, void *arg)
{
	struct scan *sc = arg;
	uint8_t m = b->mod[i];

	sc->pages++;
	if (PMOD_KIND(m) == PMOD_LOCKED && PMOD_ID(m) == sc->id)
		sc->mine++;
	else if (PMOD_KIND(m))
		sc->other++;
	return true;
}

static bool find_locked(struct hmm_block *b, unsigned i, void *arg)
{
	*(bool *)arg = PMOD_KIND(b->mod[i]) == PMOD_LOCKED;
	return !*(bool *)arg;
}

bool hmm__range_locked(uintptr_t s, uintptr_t e)
{
	bool found = false;

	pages_each(s, e, find_locked, &found);
	return found;
}

/* The arguments every call of the API takes, and libhmm up. */
static int hold_args(void *addr, size_t len, hmm_device_t *dev)
{
	int ret = hmm__check_range(addr, len);

	if (ret)
		return ret;
	if (!dev)
		return -EINVAL;
	return hmm__ensure();
}

/*
 * What lock, unlock and begin check first.  On 0 the device is entered
 * and ctx.hold_lock is held: hold_leave() undoes both.
 */
static int hold_enter(void *addr, size_t len, hmm_device_t *dev)
{
	uintptr_t s = (uintptr_t)addr;
	int ret = hold_args(addr, len, dev);

	if (ret)
		return ret;
	if (hmm_device_enter(dev))
		return -ENODEV;
	pthread_mutex_lock(&hmm__ctx.hold_lock);
	ret = managed(s, s + len);
	if (ret) {
		pthread_mutex_unlock(&hmm__ctx.hold_lock);
		hmm_device_leave(dev);
		return ret;
	}
	return 0;
}

static void hold_leave(hmm_device_t *dev)
{
	pthread_mutex_unlock(&hmm__ctx.hold_lock);
	hmm_device_leave(dev);
}

/* Pages of [s, e) locked to @dev (*mine), and whether any other hold or
 * lock (of any device, or an exclusive record) covers part of it. */
static bool held_elsewhere(uintptr_t s, uintptr_t e, const hmm_device_t *dev,
			   size_t *mine)
{
	struct scan sc = { .id = dev->id };
	struct hmm_hold *h;

	pages_each(s, e, scan_page, &sc);
	pthread_mutex_lock(&hmm__ctx.holds_lock);
	h = hold_overlapping(s, e);
	pthread_mutex_unlock(&hmm__ctx.holds_lock);
	*mine = sc.mine;
	return sc.other || h;
}

/* ---- the second userfaultfd ---------------------------------------------- */

static int sigbus_ready(void)
{
	int fd, ret;

	if (atomic_load(&hmm__ctx.sigbus_fd) >= 0)
		return 0;
	ret = hmm__uffd_open_sigbus(&fd);
	if (ret)
		return ret;
	atomic_store(&hmm__ctx.sigbus_fd, fd);
	/* The service thread polls it from its next round on. */
	hmm__service_sync();
	return 0;
}

/*
 * Last resort, when a range could be registered with neither descriptor:
 * write its device-resident data into place through /proc/self/mem (which
 * reaches PROT_NONE private pages) and let it be system memory.
 */
static void materialize(uintptr_t s, uintptr_t e)
{
	int fd = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
	char *buf = malloc(HMM_PAGE_SIZE);

	hmm__warn("[%#lx, %#lx) is registered with no userfaultfd: its data "
		  "is written in place", (unsigned long)s, (unsigned long)e);
	for (uintptr_t p = s; fd >= 0 && buf && p < e; p += HMM_PAGE_SIZE) {
		struct hmm_block *b = hmm__block_lookup(p);
		unsigned i = hmm__block_index(p);
		hmm_device_t *d;
		uint32_t dpfn;
		unsigned id;
		if (!b)
			continue;
		pthread_mutex_lock(&b->lock);
		id = PDEV_ID(b->dev[i]);
		if (PS_KIND(b->state[i]) != PS_DEVICE) {
			pthread_mutex_unlock(&b->lock);
			continue;
		}
		pthread_mutex_unlock(&b->lock);
		d = hmm__device_get(id); /* not under a block lock */
		pthread_mutex_lock(&b->lock);
		if (PS_KIND(b->state[i]) != PS_DEVICE ||
		    PDEV_ID(b->dev[i]) != id) {
			pthread_mutex_unlock(&b->lock);
			continue;
		}
		dpfn = b->dpfn[i];
		struct hmm_copy_desc desc = { dpfn, buf };
		if (!d || d->ops->copy(d, HMM_COPY_TO_SYSTEM, &desc, 1) ||
		    pwrite(fd, buf, HMM_PAGE_SIZE, (off_t)p) != HMM_PAGE_SIZE) {
			pthread_mutex_unlock(&b->lock);
			continue;
		}
		b->state[i] = PS_SYSTEM;
		b->dev[i] = 0;
		b->mod[i] = 0;
		b->ndev--;
		pthread_mutex_unlock(&b->lock);
		hmm__invalidate(p, p + HMM_PAGE_SIZE, HMM_NOTIFY_MIGRATE, NULL,
				true);
		hmm__devmem_free(d, &dpfn, 1);
	}
	free(buf);
	if (fd >= 0)
		close(fd);
}

/*
 * Move the registration of [s, e) from libhmm's userfaultfd to the SIGBUS
 * one (@lock) or back, with the range PROT_NONE meanwhile.  @set runs
 * once the range is PROT_NONE: it sets the pages' holds, or returns
 * -EAGAIN (nothing changed) if they are not ready.  Under ctx.hold_lock.
 */
static int switch_fd(uintptr_t s, uintptr_t e, bool lock,
		     int (*set)(uintptr_t s, uintptr_t e, void *arg), void *arg)
{
	struct hmm_context *c = &hmm__ctx;
	int from = lock ? c->uffd : atomic_load(&c->sigbus_fd);
	int to = lock ? atomic_load(&c->sigbus_fd) : c->uffd;
	bool wp = c->caps & HMM_CAP_WP;
	struct hmm_vma *v = NULL;
	long n;
	int ret;

	pthread_rwlock_wrlock(&c->vma_lock);
	n = hmm__vma_snapshot(s, e, &v);
	ret = n < 0 ? (int)n : hmm__vma_covered(v, n, s, e);
	if (ret)
		goto out;
	transition_begin(s, e);
	if (syscall(SYS_mprotect, s, e - s, PROT_NONE)) {
		ret = -errno;
		transition_end();
		goto out;
	}
	ret = set(s, e, arg);
	if (!ret) {
		ret = hmm__uffd_unregister(from, s, e - s);
		if (!ret) {
			ret = hmm__uffd_register(to, s, e - s, !lock && wp);
			if (ret && hmm__uffd_register(from, s, e - s,
						      lock && wp))
				materialize(s, e);
		}
		/* On failure the caller puts the holds back as they were. */
	}
	for (long i = 0; i < n; i++) {
		uintptr_t vs = HMM_MAX(s, v[i].start), ve = HMM_MIN(e, v[i].end);
		if (vs < ve)
			syscall(SYS_mprotect, vs, ve - vs, v[i].prot);
	}
	transition_end();
out:
	pthread_rwlock_unlock(&c->vma_lock);
	free(v);
	return ret;
}

/* ---- locking ------------------------------------------------------------- */

struct lock_arg {
	unsigned id;
	bool undo;
	size_t missing;
};

static bool lock_page(struct hmm_block *b, unsigned i, void *arg)
{
	struct lock_arg *la = arg;
	uint8_t st = b->state[i];

	if (la->undo) {
		if (b->mod[i] == (PMOD_LOCKED | la->id))
			b->mod[i] = 0;
		return true;
	}
	if (PS_KIND(st) != PS_DEVICE || PDEV_ID(b->dev[i]) != la->id ||
	    b->mod[i]) {
		la->missing++;
		return true;
	}
	b->mod[i] = (uint8_t)(PMOD_LOCKED | la->id);
	return true;
}

/* switch_fd's @set for a lock: every page must be on the device. */
static int lock_set(uintptr_t s, uintptr_t e, void *arg)
{
	struct lock_arg *la = arg, undo;

	la->missing = 0;
	la->undo = false;
	pages_each(s, e, lock_page, la);
	if (!la->missing)
		return 0;
	undo = *la;
	undo.undo = true;
	pages_each(s, e, lock_page, &undo);
	return -EAGAIN;
}

int hmm_range_lock(void *addr, size_t len, hmm_device_t *dev)
{
	uintptr_t s = (uintptr_t)addr, e = s + len;
	size_t mine;
	bool other;
	int ret = hold_enter(addr, len, dev);

	if (ret)
		return ret;
	ret = sigbus_ready();
	if (ret)
		goto out;
	other = held_elsewhere(s, e, dev, &mine);
	if (!other && mine == (e - s) >> HMM_PAGE_SHIFT)
		goto out; /* already locked to @dev */
	if (other || mine) {
		ret = -EBUSY;
		goto out;
	}
	/* Pages the CPU touches between the move and the switch come home
	 * again: a few rounds, then give up. */
	ret = -EBUSY;
	for (int round = 0; round < 8 && ret == -EBUSY; round++) {
		struct lock_arg la = { .id = dev->id };
		ret = migrate_in(s, e, dev);
		if (ret)
			break;
		ret = switch_fd(s, e, true, lock_set, &la);
		if (ret && ret != -EAGAIN) {
			la.undo = true;
			pages_each(s, e, lock_page, &la);
		}
		/* A CPU fault the service thread left waiting because the
		 * pages looked locked goes on now (the switch, had it
		 * happened, would have woken it). */
		if (ret)
			hmm__uffd_wake(hmm__ctx.uffd, s, e - s);
		if (ret == -EAGAIN)
			ret = -EBUSY;
	}
out:
	hold_leave(dev);
	return ret;
}

struct unlock_arg {
	unsigned id;
	size_t n;
};

static bool unlock_page(struct hmm_block *b, unsigned i, void *arg)
{
	struct unlock_arg *ua = arg;

	if (b->mod[i] == (PMOD_LOCKED | ua->id)) {
		b->mod[i] = 0;
		ua->n++;
	}
	return true;
}

struct relock_arg {
	unsigned id;
};

static bool relock_page(struct hmm_block *b, unsigned i, void *arg)
{
	struct relock_arg *ra = arg;

	if (PS_KIND(b->state[i]) == PS_DEVICE &&
	    PDEV_ID(b->dev[i]) == ra->id && !b->mod[i])
		b->mod[i] = (uint8_t)(PMOD_LOCKED | ra->id);
	return true;
}

static int unlock_set(uintptr_t s, uintptr_t e, void *arg)
{
	pages_each(s, e, unlock_page, arg);
	return 0;
}

struct run_arg {
	unsigned id;
	uintptr_t base;		/* of the block being scanned */
	uintptr_t *runs;	/* pairs */
	size_t n, cap;
};

static bool run_page(struct hmm_block *b, unsigned i, void *arg)
{
	struct run_arg *ra = arg;
	uintptr_t va = b->base + ((uintptr_t)i << HMM_PAGE_SHIFT);

	if (b->mod[i] != (PMOD_LOCKED | ra->id))
		return true;
	if (ra->n && ra->runs[2 * ra->n - 1] == va) {
		ra->runs[2 * ra->n - 1] = va + HMM_PAGE_SIZE;
		return true;
	}
	if (ra->n == ra->cap) {
		size_t cap = ra->cap ? 2 * ra->cap : 16;
		uintptr_t *r = realloc(ra->runs, cap * 2 * sizeof(*r));
		if (!r)
			return false;
		ra->runs = r;
		ra->cap = cap;
	}
	ra->runs[2 * ra->n] = va;
	ra->runs[2 * ra->n + 1] = va + HMM_PAGE_SIZE;
	ra->n++;
	return true;
}

/* Unlock the pages of [s, e) locked to device @id.  Under hold_lock.
 * Returns pages unlocked or -errno (those not unlocked stay locked). */
static long unlock_locked(uintptr_t s, uintptr_t e, unsigned id)
{
	struct run_arg ra = { .id = id };
	long total = 0;
	int ret = 0;

	if (!pages_each(s, e, run_page, &ra)) {
		free(ra.runs);
		return -ENOMEM;
	}
	for (size_t k = 0; k < ra.n && !ret; k++) {
		struct unlock_arg ua = { .id = id };
		uintptr_t rs = ra.runs[2 * k], re = ra.runs[2 * k + 1];
		ret = switch_fd(rs, re, false, unlock_set, &ua);
		if (ret) {
			struct relock_arg rl = { id };
			pages_each(rs, re, relock_page, &rl);
		} else {
			total += (long)ua.n;
		}
	}
	free(ra.runs);
	return ret ? ret : total;
}

long hmm_range_unlock(void *addr, size_t len, hmm_device_t *dev)
{
	uintptr_t s = (uintptr_t)addr;
	long ret = hold_enter(addr, len, dev);

	if (ret)
		return ret;
	ret = unlock_locked(s, s + len, dev->id);
	hold_leave(dev);
	return ret;
}

/* ---- exclusive access ---------------------------------------------------- */

struct excl_arg {
	unsigned id;
	uint8_t kind;
	struct timespec deadline;
	size_t marked;
};

/*
 * Hold every page of [s, e) for @ea->id: pages on the device, and in
 * read-only mode also pages the CPU brought home meanwhile.  Pages in
 * flight are waited for.
 */
static bool excl_page(struct hmm_block *b, unsigned i, void *arg)
{
	struct excl_arg *ea = arg;

	while (PS_KIND(b->state[i]) == PS_MIGRATING)
		if (wait_block(b, &ea->deadline))
			return true; /* not held: as if revoked at once */
	switch (PS_KIND(b->state[i])) {
	case PS_DEVICE:
		if (PDEV_ID(b->dev[i]) != ea->id)
			return true;
		break;
	case PS_SYSTEM:
		if (ea->kind != PMOD_EXCL_RO)
			return true;
		break;
	default:
		return true;
	}
	b->mod[i] = (uint8_t)(ea->kind | ea->id);
	ea->marked++;
	return true;
}

/*
 * Then, once no device holds a translation of them any more, the held
 * pages in system memory are write-protected (under the block lock, so
 * that no migration's own protection is undone by mistake).  In that
 * order: a device engine that wrote through a translation taken before
 * would meet the protection and wait for the hold like a CPU write, and
 * the invalidation would wait for that engine.  A page whose hold ended
 * meanwhile (another device took it) is left alone; one that cannot be
 * protected now is not held.
 */
static bool excl_protect(struct hmm_block *b, unsigned i, void *arg)
{
	struct excl_arg *ea = arg;
	uintptr_t va = b->base + ((uintptr_t)i << HMM_PAGE_SHIFT);

	if (b->mod[i] != (PMOD_EXCL_RO | ea->id) ||
	    PS_KIND(b->state[i]) != PS_SYSTEM)
		return true;
	if (hmm__uffd_writeprotect(hmm__ctx.uffd, va, HMM_PAGE_SIZE, true)) {
		/* Not held after all: a write that parked on the page since
		 * excl_page marked it must go on. */
		b->mod[i] = 0;
		hmm__uffd_wake(hmm__ctx.uffd, va, HMM_PAGE_SIZE);
	}
	return true;
}

struct release_arg {
	int id;			/* -1: every device but keep */
	int keep;		/* -1: none */
	size_t held;		/* pages whose hold ended here */
	bool again;		/* a write-protection could not be lifted yet */
	bool force;		/* end the hold even then (the fault path lifts
				 * a protection left over) */
};

static bool release_page(struct hmm_block *b, unsigned i, void *arg)
{
	struct release_arg *ra = arg;
	uint8_t m = b->mod[i];
	uintptr_t va = b->base + ((uintptr_t)i << HMM_PAGE_SHIFT);

	if (!PMOD_IS_EXCL(m) || (ra->id >= 0 && PMOD_ID(m) != (unsigned)ra->id) ||
	    (ra->keep >= 0 && PMOD_ID(m) == (unsigned)ra->keep))
		return true;
	/* In system memory, a read-only hold write-protected the page;
	 * lift that (it wakes the writers waiting there) under the lock,
	 * before a migration can protect it for its own reasons. */
	if (PMOD_KIND(m) == PMOD_EXCL_RO &&
	    PS_KIND(b->state[i]) == PS_SYSTEM &&
	    /* Read-only copies on devices (dup.c) keep the protection:
	     * the next write removes them first. */
	    !(b->dups && hmm__dups_any_locked(b, i, i + 1)) &&
	    hmm__uffd_writeprotect(hmm__ctx.uffd, va, HMM_PAGE_SIZE, false) ==
		    -EAGAIN && !ra->force) {
		/* An event must be read first.  (Any other failure: the page
		 * is gone or never was protected; the hold ends anyway, and a
		 * protection left over is lifted by the fault path.) */
		ra->again = true;
		return true;
	}
	b->mod[i] = 0;
	ra->held++;
	return true;
}

/* End holds on [s, e) (see struct release_arg), and wake the CPU writes
 * that waited for them.  Returns pages released; *again if some could not
 * be yet (UFFDIO_WRITEPROTECT said EAGAIN: an event must be read first),
 * unless @force: then they end all the same. */
static size_t release_range(uintptr_t s, uintptr_t e, int id, int keep,
			    bool force, bool *again)
{
	struct release_arg ra = { .id = id, .keep = keep, .force = force };

	pages_each(s, e, release_page, &ra);
	/* Writes that faulted on pages that are not present wait too (and
	 * a hold that a drop or a move ended may have left some). */
	hmm__uffd_wake(hmm__ctx.uffd, s, e - s);
	*again = ra.again;
	return ra.held;
}

/* From an application thread: until every page is released. */
static size_t release_all(uintptr_t s, uintptr_t e, int id, int keep)
{
	size_t total = 0;
	bool again = true;

	for (int round = 0; again && round < 1000; round++) {
		if (round)
			hmm__service_sync();
		total += release_range(s, e, id, keep, false, &again);
	}
	/*
	 * Still EAGAIN: an event's sender has not run since its event was
	 * read (a loaded machine).  The hold ends all the same, leaving the
	 * protection to the fault path, which lifts it when a write finds
	 * it; a hold left in place would park the writers waiting for it
	 * for ever (hmm-stress hung so once).
	 */
	if (again) {
		hmm__debug("[%#lx, %#lx): holds ended, write protection left "
			   "to the fault path", (unsigned long)s,
			   (unsigned long)e);
		total += release_range(s, e, id, keep, true, &again);
	}
	return total;
}

int hmm_exclusive_begin(void *addr, size_t len, hmm_device_t *dev, int mode,
			long timeout_ms)
{
	uintptr_t s = (uintptr_t)addr, e = s + len;
	struct excl_arg ea;
	struct hmm_hold *h;
	size_t mine;
	int ret;

	if ((mode != HMM_EXCL_READONLY && mode != HMM_EXCL_REVOKE) ||
	    timeout_ms < 0)
		return -EINVAL;
	ret = hold_enter(addr, len, dev);
	if (ret)
		return ret;
	if (mode == HMM_EXCL_READONLY && !(hmm__ctx.caps & HMM_CAP_WP)) {
		ret = -EOPNOTSUPP;
		goto out;
	}
	if (held_elsewhere(s, e, dev, &mine) || mine) {
		ret = -EBUSY;
		goto out;
	}
	h = calloc(1, sizeof(*h));
	if (!h) {
		ret = -ENOMEM;
		goto out;
	}
	ret = migrate_in(s, e, dev);
	if (ret) {
		free(h);
		goto out;
	}
	*h = (struct hmm_hold){ .start = s, .end = e, .dev = dev,
				.mode = mode, .timeout_ms = timeout_ms };
	ea = (struct excl_arg){ .id = dev->id,
				.kind = mode == HMM_EXCL_READONLY
						? PMOD_EXCL_RO
						: PMOD_EXCL_REVOKE };
	deadline_in(&ea.deadline, hmm__option(HMM_OPT_MIGRATE_TIMEOUT_MS));
	pthread_mutex_lock(&hmm__ctx.holds_lock);
	h->next = hmm__ctx.holds;
	hmm__ctx.holds = h;
	pthread_mutex_unlock(&hmm__ctx.holds_lock);
	pages_each(s, e, excl_page, &ea);
	/* Devices' translations of these pages go: the holder's next write
	 * brings a page into its memory, another device's ends the hold on
	 * it (hmm_range_fault). */
	hmm__invalidate(s, e, HMM_NOTIFY_EXCLUSIVE, dev, true);
	if (ea.kind == PMOD_EXCL_RO)
		pages_each(s, e, excl_protect, &ea);
out:
	hold_leave(dev);
	return ret;
}

static struct hmm_hold *hold_take(uintptr_t s, uintptr_t e,
				  hmm_device_t *dev)
{
	struct hmm_hold **pp, *h = NULL;

	pthread_mutex_lock(&hmm__ctx.holds_lock);
	for (pp = &hmm__ctx.holds; *pp; pp = &(*pp)->next)
		if ((*pp)->start == s && (*pp)->end == e &&
		    (!dev || (*pp)->dev == dev)) {
			h = *pp;
			*pp = h->next;
			break;
		}
	pthread_mutex_unlock(&hmm__ctx.holds_lock);
	return h;
}

long hmm_exclusive_end(void *addr, size_t len, hmm_device_t *dev)
{
	uintptr_t s = (uintptr_t)addr, e = s + len;
	struct hmm_hold *h;
	long ret = hold_args(addr, len, dev), held;

	/* (A closed device's holds are gone already: no device_enter.) */
	if (ret)
		return ret;
	pthread_mutex_lock(&hmm__ctx.hold_lock);
	h = hold_take(s, e, dev);
	if (!h) {
		pthread_mutex_unlock(&hmm__ctx.hold_lock);
		return -ENOENT;
	}
	held = (long)release_all(s, e, (int)dev->id, -1);
	pthread_mutex_unlock(&hmm__ctx.hold_lock);
	ret = (long)((e - s) >> HMM_PAGE_SHIFT) - held;
	free(h);
	return ret < 0 ? 0 : ret;
}

/* ---- for the rest of libhmm ---------------------------------------------- */

void hmm__holds_revoke(uintptr_t s, uintptr_t e, const hmm_device_t *keep)
{
	size_t r = release_all(s, e, -1, keep ? (int)keep->id : -1);

	hmm__stat_add(HMM_STAT_holds_revoked, r);
}

void hmm__holds_forget(uintptr_t s, uintptr_t e)
{
	pthread_mutex_lock(&hmm__ctx.holds_lock);
	for (struct hmm_hold **pp = &hmm__ctx.holds; *pp;) {
		struct hmm_hold *h = *pp;
		if (h->start >= s && h->end <= e) {
			*pp = h->next;
			free(h);
		} else {
			pp = &h->next;
		}
	}
	pthread_mutex_unlock(&hmm__ctx.holds_lock);
}

int hmm__hold_revoke_page(uintptr_t page)
{
	bool again;
	size_t r = release_range(page, page + HMM_PAGE_SIZE, -1, -1, false,
				 &again);

	hmm__stat_add(HMM_STAT_holds_revoked, r);
	return again ? -EAGAIN : 0;
}

void hmm__hold_write_parked(uintptr_t page)
{
	struct hmm_hold *h;

	hmm__stat_add(HMM_STAT_cpu_writes_held, 1);
	pthread_mutex_lock(&hmm__ctx.holds_lock);
	h = hold_overlapping(page, page + HMM_PAGE_SIZE);
	if (h && h->timeout_ms && !h->deadline.tv_sec && !h->timed_out)
		deadline_in(&h->deadline, h->timeout_ms);
	pthread_mutex_unlock(&hmm__ctx.holds_lock);
}

int hmm__holds_poll_timeout(void)
{
	struct timespec now;
	long best = -1;

	clock_gettime(CLOCK_REALTIME, &now);
	pthread_mutex_lock(&hmm__ctx.holds_lock);
	for (struct hmm_hold *h = hmm__ctx.holds; h; h = h->next) {
		long ms;
		if (!h->deadline.tv_sec)
			continue;
		ms = (h->deadline.tv_sec - now.tv_sec) * 1000 +
		     (h->deadline.tv_nsec - now.tv_nsec) / 1000000 + 1;
		if (ms < 0)
			ms = 0;
		if (best < 0 || ms < best)
			best = ms;
	}
	pthread_mutex_unlock(&hmm__ctx.holds_lock);
	return best > 1000 ? 1000 : (int)best;
}

void hmm__holds_expire(void)
{
	struct { uintptr_t s, e; unsigned id; } due[16];
	size_t n = 0;

	pthread_mutex_lock(&hmm__ctx.holds_lock);
	for (struct hmm_hold *h = hmm__ctx.holds; h && n < 16; h = h->next) {
		if (!h->deadline.tv_sec || !past(&h->deadline))
			continue;
		h->deadline.tv_sec = 0;
		h->timed_out = true;
		due[n].s = h->start;
		due[n].e = h->end;
		due[n++].id = h->dev->id;
	}
	pthread_mutex_unlock(&hmm__ctx.holds_lock);
	for (size_t k = 0; k < n; k++) {
		/* The service thread: never waits.  Pages it could not
		 * release yet are tried again in a millisecond. */
		bool again;
		size_t r = release_range(due[k].s, due[k].e, (int)due[k].id,
					 -1, false, &again);
		hmm__stat_add(HMM_STAT_holds_timed_out, 1);
		hmm__stat_add(HMM_STAT_holds_revoked, r);
		if (again) {
			struct hmm_hold *h;
			pthread_mutex_lock(&hmm__ctx.holds_lock);
			h = hold_overlapping(due[k].s, due[k].e);
			if (h)
				deadline_in(&h->deadline, 1);
			pthread_mutex_unlock(&hmm__ctx.holds_lock);
		}
	}
}

struct pull_arg {
	unsigned id;
	uintptr_t base, s, e;	/* first run found */
};

static bool pull_page(struct hmm_block *b, unsigned i, void *arg)
{
	struct pull_arg *pa = arg;
	uintptr_t va = b->base + ((uintptr_t)i << HMM_PAGE_SHIFT);

	if (b->mod[i] != (PMOD_EXCL_RO | pa->id) ||
	    PS_KIND(b->state[i]) != PS_SYSTEM)
		return !pa->s; /* a run ends at the first page not in it */
	if (!pa->s)
		pa->s = va;
	pa->e = va + HMM_PAGE_SIZE;
	return true;
}

int hmm__hold_pull(uintptr_t s, uintptr_t e, hmm_device_t *owner)
{
	for (uintptr_t pos = s; pos < e;) {
		struct pull_arg pa = { .id = owner->id };
		int r;
		pages_each(pos, e, pull_page, &pa);
		if (!pa.s)
			return 0;
		r = migrate_in(pa.s, pa.e, owner);
		if (r)
			return r;
		pos = pa.e;
	}
	return 0;
}

void hmm__holds_drop_device(hmm_device_t *dev)
{
	struct hmm_mrange *copy;
	struct hmm_hold *h;
	size_t n;

	if (atomic_load(&hmm__ctx.state) != HMM_CTX_UP)
		return;
	pthread_mutex_lock(&hmm__ctx.hold_lock);
	/* Exclusive holds end. */
	for (;;) {
		pthread_mutex_lock(&hmm__ctx.holds_lock);
		for (h = hmm__ctx.holds; h && h->dev != dev;)
			h = h->next;
		pthread_mutex_unlock(&hmm__ctx.holds_lock);
		if (!h)
			break;
		h = hold_take(h->start, h->end, h->dev);
		if (!h)
			break;
		release_all(h->start, h->end, (int)h->dev->id, -1);
		free(h);
	}
	/* Locked pages are unlocked: they stay on the device, from where
	 * the close brings them home. */
	if (atomic_load(&hmm__ctx.sigbus_fd) >= 0) {
		copy = hmm__ranges_copy(&n);
		for (size_t i = 0; copy && i < n; i++)
			unlock_locked(copy[i].start, copy[i].end, dev->id);
		free(copy);
	}
	pthread_mutex_unlock(&hmm__ctx.hold_lock);
}

void hmm__holds_fork_prepare(void)
{
	struct hmm_mrange *copy;
	size_t n;

	if (atomic_load(&hmm__ctx.sigbus_fd) < 0)
		return;
	copy = hmm__ranges_copy(&n);
	for (unsigned id = 0; copy && id < HMM_MAX_DEVICES; id++) {
		hmm_device_t *d = hmm__device_get(id);
		if (!d)
			continue;
		for (size_t i = 0; i < n; i++)
			if (copy[i].kind == HMM_MK_SHMEM || !d->ops->fork_child)
				unlock_locked(copy[i].start, copy[i].end, id);
	}
	free(copy);
}

void hmm__holds_fork_child(void)
{
	int fd = atomic_load(&hmm__ctx.sigbus_fd);

	/* The child's ranges lost their registration with this descriptor
	 * (no fork event): they are registered with the child's own
	 * userfaultfd like every other range. */
	if (fd >= 0)
		close(fd);
	atomic_store(&hmm__ctx.sigbus_fd, -1);
	pthread_mutex_init(&hmm__ctx.hold_lock, NULL);
	pthread_mutex_init(&hmm__ctx.holds_lock, NULL);
	hmm__ctx.holds = NULL; /* the parent's records; not freed here */
	atomic_store(&tr_seq, 0);
}

void hmm__holds_fini(void)
{
	int fd = atomic_exchange(&hmm__ctx.sigbus_fd, -1);

	if (fd >= 0)
		close(fd);
	while (hmm__ctx.holds) {
		struct hmm_hold *h = hmm__ctx.holds;
		hmm__ctx.holds = h->next;
		free(h);
	}
}
