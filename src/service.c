/* SPDX-License-Identifier: MIT */
/*
 * The fault-service thread: reads the userfaultfd and serves CPU faults and
 * events.
 *
 * Rules it lives by (see DESIGN.md, "known traps"):
 *  - it never touches managed memory through the user's mapping, never calls
 *    munmap/madvise on managed ranges (those wait for it to read an event);
 *  - it never waits for a migration: a fault on a page in flight is parked
 *    (PSF_WAITERS) and the migrating thread wakes it when it commits;
 *  - an ioctl that fails with EAGAIN (an event is queued) is retried after
 *    the queued messages have been read.
 *
 * Fault workers (HMM_FAULT_WORKERS): when a round of messages holds more
 * than one fault, a fault on a device page may be handed to a worker
 * thread, which brings the page's window home as an application thread's
 * hmm_migrate would (it may wait: the service thread goes on reading), then
 * wakes the faulting thread.  Copies of several faulting threads thus run
 * in parallel.  Everything else (events, first touches, parking) stays
 * with the service thread, in the order the kernel sent it.  A fault is
 * handed over only to a worker that is free, so the service thread never
 * waits for one; workers start on first need.
 */
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "compat.h"
#include "internal.h"

/* Zeros to copy from: a fault-around window's worth (HMM_FAULT_AROUND is
 * at most 2 MiB). */
static _Alignas(4096) const char zero_block[HMM_BLOCK_SIZE];
#define zero_page zero_block

struct retry_list {
	struct uffd_msg *msgs;
	size_t n, cap;
};

/* ---- fault workers -------------------------------------------------- */

#define FB_MAX 8

struct fb_job {
	struct hmm_block *b;	/* the block of page */
	uintptr_t page, s, e;	/* the fault, and the window to bring home */
	int from;		/* the device it was on (tracing) */
};

/* fb_lock protects everything below but fb_threads[i] once started. */
static pthread_mutex_t fb_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fb_cond = PTHREAD_COND_INITIALIZER;
static struct fb_job fb_jobs[FB_MAX];
static int fb_n;		/* jobs queued */
static int fb_idle;		/* workers waiting for a job */
static int fb_nthreads;		/* workers started */
static int fb_starting;		/* started, not yet waiting or working */
static bool fb_stop;
static struct hmm_thread fb_threads[FB_MAX];
/* Service thread only: the message being handled has more faults after
 * it in its round, so a free worker may take it. */
static bool fb_more;

/* A CPU fault's fault-back: the window [s, e) around a page of block @b
 * comes home from device @from (traced; counted for thrashing control). */
static long fault_back(struct hmm_block *b, uintptr_t s, uintptr_t e,
		       int from, int flags)
{
	uint64_t t = hmm__tracing() ? hmm__now_ns() : 0;
	long r = hmm__migrate_to_system(s, e, NULL, flags);

	if (t)
		hmm__trace_span("migrate_to_system", "migrate", t, s,
				(e - s) >> HMM_PAGE_SHIFT,
				r > 0 ? (uint64_t)r : 0, from);
	if (r > 0)
		atomic_fetch_add_explicit(&b->cpu_backs, 1,
					  memory_order_relaxed);
	return r;
}

static void fb_run(const struct fb_job *j)
{
	long r = fault_back(j->b, j->s, j->e, j->from, 0);

	if (r < 0 && r != -ETIMEDOUT && r != -EBUSY && r != -EAGAIN)
		hmm__debug("offloaded fault-back at %#lx: %s",
			   (unsigned long)j->page, strerror((int)-r));
	/* Whatever happened, the faulting thread runs again: its page is
	 * home (an install that did not wake it), or it faults again and
	 * the service thread looks afresh. */
	hmm__uffd_wake(hmm__ctx.uffd, j->page, HMM_PAGE_SIZE);
}

static void *fb_main(void *arg)
{
	(void)arg;
	hmm__block_signals();
	pthread_mutex_lock(&fb_lock);
	fb_starting--;
	for (;;) {
		while (!fb_n && !fb_stop) {
			fb_idle++;
			pthread_cond_wait(&fb_cond, &fb_lock);
			fb_idle--;
		}
		if (!fb_n)
			break; /* stopping, nothing left */
		struct fb_job j = fb_jobs[--fb_n];
		pthread_mutex_unlock(&fb_lock);
		fb_run(&j);
		pthread_mutex_lock(&fb_lock);
	}
	pthread_mutex_unlock(&fb_lock);
	return NULL;
}

/* Service thread: hand the fault-back of [s, e) for @page (in @b) to a worker
 * that is free (starting one if allowed).  False: serve it here. */
static bool fb_offload(struct hmm_block *b, uintptr_t page, uintptr_t s,
		       uintptr_t e, int from)
{
	long max = hmm__option(HMM_OPT_FAULT_WORKERS);
	bool ok = false;

	if (!fb_more || !max)
		return false;
	pthread_mutex_lock(&fb_lock);
	if (!fb_stop && fb_n < FB_MAX) {
		if (fb_idle + fb_starting > fb_n) {
			ok = true;
		} else if (fb_nthreads < max && fb_nthreads < FB_MAX &&
			   !hmm__thread_create(&fb_threads[fb_nthreads],
					       fb_main, NULL, "hmm-fault")) {
			fb_nthreads++;
			fb_starting++;
			ok = true;
		}
	}
	if (ok) {
		fb_jobs[fb_n++] = (struct fb_job){ b, page, s, e, from };
		pthread_cond_signal(&fb_cond);
		hmm__stat_add(HMM_STAT_faultbacks_offloaded, 1);
	}
	pthread_mutex_unlock(&fb_lock);
	return ok;
}

/* Stop the workers (they finish the jobs queued). */
static void fb_stop_all(void)
{
	int n;

	pthread_mutex_lock(&fb_lock);
	fb_stop = true;
	pthread_cond_broadcast(&fb_cond);
	n = fb_nthreads;
	pthread_mutex_unlock(&fb_lock);
	for (int i = 0; i < n; i++)
		hmm__thread_join(&fb_threads[i]);
	pthread_mutex_lock(&fb_lock);
	fb_nthreads = 0;
	pthread_mutex_unlock(&fb_lock);
}

/* In the child of fork: no worker exists there, and no job is the
 * child's (the faulting threads are the parent's). */
static void fb_fork_child(void)
{
	pthread_mutex_init(&fb_lock, NULL);
	pthread_cond_init(&fb_cond, NULL);
	for (int i = 0; i < fb_nthreads; i++)
		fb_threads[i].stack = NULL; /* the parent's; see respawn */
	fb_n = fb_idle = fb_nthreads = fb_starting = 0;
	fb_stop = false;
}

static void retry_push(struct retry_list *rl, const struct uffd_msg *m)
{
	if (rl->n == rl->cap) {
		size_t cap = rl->cap ? rl->cap * 2 : 64;
		struct uffd_msg *nm = realloc(rl->msgs, cap * sizeof(*nm));
		if (!nm) {
			/* Cannot remember it: wake the thread, it faults again. */
			hmm__uffd_wake(hmm__ctx.uffd,
				       m->arg.pagefault.address & ~HMM_PAGE_MASK,
				       HMM_PAGE_SIZE);
			return;
		}
		rl->msgs = nm;
		rl->cap = cap;
	}
	rl->msgs[rl->n++] = *m;
}

/* The window brought back around a CPU fault at @page. */
static void fault_window(uintptr_t page, uintptr_t *s, uintptr_t *e)
{
	uintptr_t fa = (uintptr_t)hmm__option(HMM_OPT_FAULT_AROUND);
	uintptr_t bbase = page & ~(HMM_BLOCK_SIZE - 1);

	if (fa < HMM_PAGE_SIZE) {
		*s = page;
		*e = page + HMM_PAGE_SIZE;
		return;
	}
	fa = 1UL << (63 - __builtin_clzl(fa)); /* power of two */
	*s = page & ~(fa - 1);
	*e = *s + fa;
	if (*s < bbase)
		*s = bbase;
	if (*e > bbase + HMM_BLOCK_SIZE)
		*e = bbase + HMM_BLOCK_SIZE;
}

/*
 * Adaptive fault-around, for fault-backs from device memory and for first
 * touches (zero fills).  A fault that lands where an earlier window ended
 * continues a sequential stream, and gets a window twice as large as the
 * last, up to a whole 2 MiB block (a pass over device-resident or untouched
 * memory then takes one fault per block);
 * any other fault gets the HMM_FAULT_AROUND window, aligned.  A few
 * streams are followed at once (threads each walking their own part of an
 * array); a new stream replaces the oldest.  With fault-around off
 * (HMM_FAULT_AROUND below a page), every fault brings one page.
 */
#define STREAMS 8

static struct {
	uintptr_t next;		/* the page after the last window */
	uintptr_t size;		/* the last window's size */
} streams[STREAMS];		/* streams_lock */
static unsigned streams_oldest;	/* streams_lock */
static pthread_mutex_t streams_lock = PTHREAD_MUTEX_INITIALIZER;

/*
 * Blocks whose huge pages moved out whole (thp.c) come back whole, and a
 * sequential stream over them brings several at once: a move costs about
 * what a 4 KiB copy does, the round trip of a fault far more.
 */
#define THP_AHEAD (64UL << 20)

/* The end of the run of thp_out blocks from @from (block aligned) up to
 * @e (rounded up to a block). */
static uintptr_t thp_ahead(uintptr_t from, uintptr_t e)
{
	e = (e + HMM_BLOCK_SIZE - 1) & ~(HMM_BLOCK_SIZE - 1);
	for (uintptr_t p = from; p < e; p += HMM_BLOCK_SIZE) {
		struct hmm_block *nb = hmm__block_lookup(p);
		bool out = false;
		if (nb) {
			pthread_mutex_lock(&nb->lock);
			out = nb->thp_out;
			pthread_mutex_unlock(&nb->lock);
		}
		if (!out)
			return p;
	}
	return e;
}

static void stream_window(uintptr_t page, uintptr_t *s, uintptr_t *e,
			  uintptr_t max)
{
	uintptr_t bend = (page & ~(HMM_BLOCK_SIZE - 1)) + HMM_BLOCK_SIZE;
	unsigned slot = STREAMS;

	if (max > HMM_BLOCK_SIZE)
		bend = UINTPTR_MAX; /* whole huge pages: the caller aligns */

	fault_window(page, s, e);
	if (*e - *s <= HMM_PAGE_SIZE &&
	    hmm__option(HMM_OPT_FAULT_AROUND) < (long)HMM_PAGE_SIZE)
		return;
	pthread_mutex_lock(&streams_lock);
	for (unsigned i = 0; i < STREAMS; i++) {
		if (streams[i].next == page) {
			slot = i;
			break;
		}
	}
	if (slot < STREAMS) {
		uintptr_t size = HMM_MIN(2 * streams[slot].size, max);
		*s = page;
		*e = HMM_MIN(page + size, bend);
		streams[slot].size = size;
		hmm__stat_add(HMM_STAT_faultback_streams, 1);
	} else {
		slot = streams_oldest++ % STREAMS;
		streams[slot].size = *e - *s;
	}
	streams[slot].next = *e;
	pthread_mutex_unlock(&streams_lock);
	if (max > HMM_BLOCK_SIZE) {
		/* Whole blocks, as many as the stream asks for that are
		 * whole huge pages out (block locks: not under
		 * streams_lock, which fill_begin takes under one). */
		uintptr_t old = *e;
		*s = page & ~(HMM_BLOCK_SIZE - 1);
		*e = thp_ahead(*s + HMM_BLOCK_SIZE,
			       HMM_MAX(*e, *s + HMM_BLOCK_SIZE));
		pthread_mutex_lock(&streams_lock);
		if (streams[slot].next == old) {
			streams[slot].next = *e;
			streams[slot].size =
				HMM_MAX(streams[slot].size, *e - *s);
		}
		pthread_mutex_unlock(&streams_lock);
	}
}

/* Fill untouched pages [page, end) with zeros, @page first.  Returns the
 * pages filled (0 if @page was there already), or -EAGAIN. */
static int resolve_zero(uintptr_t page, uintptr_t end, bool write)
{
	int fd = hmm__ctx.uffd;
	long r;

again:
	if (write)
		r = hmm__uffd_copy(fd, page, zero_block, end - page, false,
				   false);
	else
		r = hmm__uffd_zeropage(fd, page, end - page);
	if (r == -ENOENT && end - page > HMM_PAGE_SIZE) {
		/* The window crosses the end of the VMA: just the page. */
		end = page + HMM_PAGE_SIZE;
		goto again;
	}
	if (r == -EAGAIN)
		return -EAGAIN;
	if (r >= 1) {
		hmm__stat_add(HMM_STAT_cpu_zero_fills, (uint64_t)r);
		return (int)r;
	}
	/* EEXIST: another fault resolved it; ENOENT: the range went away.
	 * Either way the thread must retry its access. */
	hmm__uffd_wake(fd, page, HMM_PAGE_SIZE);
	return 0;
}

/*
 * Fault-around for first touches: [page, end) over pages that are SYSTEM
 * and idle, never over a page whose data lives elsewhere.  Called with
 * b->lock held, which stays held until the fill is done (handle_fault), so
 * that no migration collects a page meanwhile (it would see it absent,
 * give the device zeros, and then drop the page the CPU is about to
 * write), and so that the zeros are ordered with drop marks.
 */
static uintptr_t fill_begin(struct hmm_block *b, uintptr_t page)
{
	uintptr_t s, e, end = page;

	/* Pages appear in the application's PMD (thp.c). */
	b->thp_out = false;
	b->thp_fill = false;
	stream_window(page, &s, &e, HMM_BLOCK_SIZE);
	/* A page with read-only copies on devices is not filled behind
	 * them: its own fault removes them first (dup.c). */
	while (end < e &&
	       (b->state[hmm__block_index(end)] & ~PSF_DROPPING) == PS_SYSTEM &&
	       !(b->dups && hmm__dups_any_locked(b, hmm__block_index(end),
						 hmm__block_index(end) + 1)))
		end += HMM_PAGE_SIZE;
	return end;
}

/*
 * The fill of [page, end) is over; the first @filled pages got zeros.
 * Called with b->lock held since before the zeros went in (handle_fault):
 * a drop marked on those pages (PSF_DROPPING) was marked before the
 * zeros, so it is complete (the pages were absent, and zeros are what it
 * leaves).  A drop marked after the zeros is still to come: the
 * application may have written the pages since, and the mark must stay
 * until its system call has run, or a migration would take their data
 * to a device and the drop would miss it (race_migrate_drop_shared saw
 * the old data come back when the fill ran unlocked).
 */
static void fill_end_locked(struct hmm_block *b, uintptr_t page,
			    size_t filled)
{
	uintptr_t done = page + (filled << HMM_PAGE_SHIFT);

	for (uintptr_t p = page; p < done; p += HMM_PAGE_SIZE)
		b->state[hmm__block_index(p)] &= (uint8_t)~PSF_DROPPING;
}

/*
 * Install a page of zeros at @page (write-protected if @wp), called with
 * b->lock held, which orders it with the page's state; returns with it
 * released.  UFFDIO_COPY waits for no thread of libhmm, so holding the
 * lock across it is safe.  A page already there (EEXIST) only needs its
 * waiters woken.  Returns 0, or -EAGAIN (an event must be read first).
 */
static int zero_locked(struct hmm_block *b, uintptr_t page, bool wp)
{
	long r = hmm__uffd_copy(hmm__ctx.uffd, page, zero_page, HMM_PAGE_SIZE,
				wp, false);

	pthread_mutex_unlock(&b->lock);
	if (r == -EAGAIN)
		return -EAGAIN;
	if (r != 1)
		hmm__uffd_wake(hmm__ctx.uffd, page, HMM_PAGE_SIZE);
	return 0;
}

/*
 * A MISSING fault on a page migrating to a device whose source was present
 * when the migration began.
 *  - libhmm's own drop is under way: park, the commit is near.
 *  - Shared memory: libhmm reads the source through its alias, never
 *    through the user's mapping, so nothing of libhmm's waits on this
 *    fault; park (an application drop marks the page cleared and the
 *    commit settles it).
 *  - Anonymous memory: the application dropped the page (MADV_DONTNEED),
 *    and the fault may be the migrating thread's own copy: install zeros
 *    write-protected, so that the copy completes and a write still waits
 *    for the migration.  A stale message finds the page there (EEXIST):
 *    just wake.
 * Called with b->lock held; returns with it released.
 */
static int fault_in_flight(struct hmm_block *b, unsigned idx, uintptr_t page,
			   uint8_t st)
{
	bool shm;

	/* The range's kind, without b->lock (the registry lock comes first
	 * in the lock order). */
	pthread_mutex_unlock(&b->lock);
	shm = hmm__range_is_shmem(page);
	pthread_mutex_lock(&b->lock);
	if (b->state[idx] != st && b->state[idx] != (st | PSF_WAITERS)) {
		pthread_mutex_unlock(&b->lock);
		return -EAGAIN; /* it changed meanwhile: look again */
	}
	if (shm || hmm__rec_covers(&hmm__ctx.zaps, page,
					    page + HMM_PAGE_SIZE)) {
		b->state[idx] |= PSF_WAITERS;
		pthread_mutex_unlock(&b->lock);
		return 0;
	}
	/*
	 * Install the zeros with b->lock held, so that the migration cannot
	 * commit (and its zap record vanish) between the check above and the
	 * install: a zero page must never sit over data that the commit is
	 * about to declare device-resident.
	 */
	return zero_locked(b, page, hmm__ctx.caps & HMM_CAP_WP);
}

/*
 * A MINOR fault on a file page (FILE ranges): the page cache has the page,
 * the user's mapping does not.  A page in system memory is mapped as it is
 * (UFFDIO_CONTINUE), with the pages after it that are in system memory
 * too, up to the fault-around window.  Under b->lock, so that a migration
 * cannot take a page between the check and the mapping (it would find the
 * mapping back after its zap).  UFFDIO_CONTINUE waits for no thread of
 * libhmm.  Returns 0 (done, or the page is not SYSTEM: look again), or
 * -EAGAIN.
 */
static int resolve_continue(struct hmm_block *b, uintptr_t page)
{
	uintptr_t s, e, end = page;
	long r;

	fault_window(page, &s, &e);
	pthread_mutex_lock(&b->lock);
	while (end < e && PS_KIND(b->state[hmm__block_index(end)]) == PS_SYSTEM)
		end += HMM_PAGE_SIZE;
	if (end == page &&
	    PS_KIND(b->state[hmm__block_index(page)]) != PS_NONE) {
		pthread_mutex_unlock(&b->lock);
		return 1;
	}
	if (end == page)
		end = page + HMM_PAGE_SIZE; /* a range libhmm forgot */
	r = hmm__uffd_continue(hmm__ctx.uffd, page, end - page, false);
	if (r != (long)((end - page) >> HMM_PAGE_SHIFT) && r != -EAGAIN &&
	    end - page > HMM_PAGE_SIZE)
		/* A page of the window is mapped already, or has no page
		 * cache page: just this one. */
		r = hmm__uffd_continue(hmm__ctx.uffd, page, HMM_PAGE_SIZE,
				       false);
	pthread_mutex_unlock(&b->lock);
	if (r == -EAGAIN)
		return -EAGAIN;
	if (r < 1)
		/* Mapped already, or truncated away: the access retries
		 * (and gets SIGBUS past the end of the file). */
		hmm__uffd_wake(hmm__ctx.uffd, page, HMM_PAGE_SIZE);
	return 0;
}

/* Whether a thread of libhmm's (a device engine) made the fault. */
static bool own_fault(const struct uffd_msg *m)
{
	return (hmm__ctx.features & UFFD_FEATURE_THREAD_ID) &&
	       hmm__tid_is_own((pid_t)m->arg.pagefault.feat.ptid);
}

/* Serve one fault.  Returns 0 when done (or parked), -EAGAIN to retry. */
static int handle_fault(const struct uffd_msg *m, bool first)
{
	uintptr_t addr = m->arg.pagefault.address;
	uintptr_t page = addr & ~HMM_PAGE_MASK;
	bool write = m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE;
	bool wp = m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP;
	bool minor = m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR;
	struct hmm_block *b = hmm__block_lookup(page);
	unsigned idx = hmm__block_index(page);
	uint8_t st;

	if (first)
		hmm__stat_add(HMM_STAT_cpu_faults, 1);
	if (!b && minor) {
		long r = hmm__uffd_continue(hmm__ctx.uffd, page, HMM_PAGE_SIZE,
					    false);
		if (r == -EAGAIN)
			return -EAGAIN;
		if (r < 1)
			hmm__uffd_wake(hmm__ctx.uffd, page, HMM_PAGE_SIZE);
		return 0;
	}
	if (!b)
		return wp ? hmm__uffd_writeprotect(hmm__ctx.uffd, page,
						   HMM_PAGE_SIZE, false)
			  : HMM_MIN(resolve_zero(page, page + HMM_PAGE_SIZE,
						 write), 0);
	/* A few rounds: a fault-back may find the page changed under it. */
	for (int round = 0; round < 4; round++) {
		pthread_mutex_lock(&b->lock);
		st = b->state[idx];
		switch (PS_KIND(st)) {
		case PS_MIGRATING:
			if (!wp && (st & PSF_TO_DEVICE) &&
			    (st & PSF_SRC_PRESENT))
				return fault_in_flight(b, idx, page, st);
			b->state[idx] = st | PSF_WAITERS;
			pthread_mutex_unlock(&b->lock);
			if (first && !round)
				hmm__stat_add(HMM_STAT_cpu_faults_parked, 1);
			return 0;
		case PS_DEVICE: {
			uintptr_t s, e;
			long r;
			uint8_t mod = b->mod[idx];
			int from = (int)PDEV_ID(b->dev[idx]);
			bool whole = b->thp_out;
			pthread_mutex_unlock(&b->lock);
			/* Locked: a fault that came before the range was
			 * switched to the SIGBUS descriptor; the switch wakes
			 * the thread, whose access then gets SIGBUS. */
			if (PMOD_KIND(mod) == PMOD_LOCKED)
				return 0;
			/* A write waits for the device's read-only hold:
			 * parked until the hold ends (which wakes it).  A
			 * thread of libhmm (a device engine) never waits for
			 * a hold: its write ends the hold on the page, as
			 * another device's would. */
			if (PMOD_KIND(mod) == PMOD_EXCL_RO && write) {
				if (own_fault(m))
					return hmm__hold_revoke_page(page);
				hmm__hold_write_parked(page);
				return 0;
			}
			/* A huge page that moved out whole comes back whole:
			 * one UFFDIO_MOVE, as cheap as a 4 KiB copy (thp.c);
			 * a sequential stream over such blocks takes the next
			 * ones too, up to THP_AHEAD.  Not with fault-around
			 * off. */
			whole &= hmm__option(HMM_OPT_FAULT_AROUND) >=
				 (long)HMM_PAGE_SIZE;
			stream_window(page, &s, &e,
				      whole ? THP_AHEAD : HMM_BLOCK_SIZE);
			/* Other faults wait behind this one: a worker may
			 * copy while this thread serves them.  Not a device
			 * engine's fault: the worker's migration waits for
			 * device accesses in flight (a little), and the
			 * engine's may be one. */
			if (first && !own_fault(m) &&
			    fb_offload(b, page, s, e, from))
				return 0;
			r = fault_back(b, s, e, from, HMM_MIG_NONBLOCK);
			if (r == -EAGAIN)
				return -EAGAIN;
			if (r < 0 && r != -EINPROGRESS) {
				hmm__warn("fault-back at %#lx failed: %s",
					  (unsigned long)page,
					  strerror((int)-r));
				return -EAGAIN;
			}
			/* The page is back: whoever installed it woke the
			 * thread (every install does), so there is nothing
			 * left to do.  Looking at the page again would cost
			 * a UFFDIO_ZEROPAGE that fails and a wake. */
			unsigned char vec = 0;
			if (r > 0 && !mincore((void *)page, HMM_PAGE_SIZE, &vec) &&
			    (vec & 1))
				return 0;
			continue; /* look at the page again */
		}
		default:
			if (minor) {
				pthread_mutex_unlock(&b->lock);
				int r = resolve_continue(b, page);
				if (r <= 0)
					return r;
				continue; /* it changed: look again */
			}
			if (PMOD_KIND(b->mod[idx]) == PMOD_EXCL_RO &&
			    PS_KIND(st) == PS_SYSTEM) {
				/* Held read-only for a device: a read of a
				 * page not present gets zeros, write-
				 * protected; writes wait (a thread of
				 * libhmm's ends the hold instead). */
				if (!wp && !write)
					return zero_locked(b, page, true);
				pthread_mutex_unlock(&b->lock);
				if (own_fault(m))
					return hmm__hold_revoke_page(page);
				hmm__hold_write_parked(page);
				return 0;
			}
			if (b->dups && hmm__dups_any_locked(b, idx, idx + 1)) {
				/* Read-only copies on devices: they go before
				 * the write (a write-protect fault), or before
				 * the page is filled again (it went away
				 * without an event: MADV_FREE). */
				pthread_mutex_unlock(&b->lock);
				int r = hmm__dups_cpu_fault(b, page, wp);
				if (r <= 0)
					return r;
				continue; /* look again (and fill) */
			}
			if (wp) {
				/* A write-protection left from a migration
				 * that has ended, or from copies removed
				 * since: lift it (this wakes).  Under b->lock:
				 * a copy made in between protects the page
				 * again under it, and must stay protected
				 * (dup.c).  The ioctl waits for no thread of
				 * libhmm. */
				int r = hmm__uffd_writeprotect(
					hmm__ctx.uffd, page, HMM_PAGE_SIZE,
					false);
				pthread_mutex_unlock(&b->lock);
				if (r == -EAGAIN)
					return -EAGAIN;
				if (r)
					hmm__uffd_wake(hmm__ctx.uffd, page,
						       HMM_PAGE_SIZE);
				return 0;
			}
			pthread_mutex_unlock(&b->lock);
			/* SYSTEM: absent (untouched or dropped), or just
			 * brought back (then EEXIST makes this a wake).
			 * NONE: a registered range libhmm forgot. */
			if (PS_KIND(st) != PS_SYSTEM)
				return HMM_MIN(resolve_zero(page,
							    page + HMM_PAGE_SIZE,
							    write), 0);
			/* The zeros go in under b->lock, which orders them
			 * with the application's drop marks (fill_end_locked)
			 * and with migrations.  UFFDIO_COPY and ZEROPAGE wait
			 * for no thread of libhmm. */
			pthread_mutex_lock(&b->lock);
			if (b->thp_fill && write &&
			    hmm__option(HMM_OPT_FAULT_AROUND) >=
				    (long)HMM_PAGE_SIZE) {
				/* A whole huge page, zeroed (thp.c). */
				int r = hmm__thp_fill_locked(b, page);
				pthread_mutex_unlock(&b->lock);
				if (r)
					return HMM_MIN(r, 0);
				pthread_mutex_lock(&b->lock);
			}
			uintptr_t end = fill_begin(b, page);
			if (end == page) {
				pthread_mutex_unlock(&b->lock);
				continue; /* it changed: look again */
			}
			int r = resolve_zero(page, end, write);
			fill_end_locked(b, page, r > 0 ? (size_t)r : 0);
			pthread_mutex_unlock(&b->lock);
			return HMM_MIN(r, 0);
		}
	}
	return -EAGAIN;
}


/* A REMOVE event's run of pages that is not libhmm's own drop. */
static void remove_foreign(uintptr_t s, uintptr_t e)
{
	/* The madvise wrapper settled this drop itself. */
	if (hmm__rec_covers(&hmm__ctx.drops, s, e)) {
		hmm__stat_add(HMM_STAT_events_remove, 1);
		return;
	}
	/* Not managed (libhmm's stash, say): nothing libhmm keeps there.
	 * Mirrors of unmanaged memory learn of drops through the madvise
	 * wrapper; no event reaches libhmm for them anyway. */
	pthread_rwlock_rdlock(&hmm__ctx.ranges_lock);
	bool managed = hmm__ranges_overlap(s, e);
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	if (!managed)
		return;
	hmm__stat_add(HMM_STAT_events_remove, 1);
	/*
	 * A drop that did not come through libc's madvise (glibc's own
	 * malloc trimming, a raw system call).  On shared memory it is taken
	 * for MADV_DONTNEED, which only unmaps: the data stays in the file,
	 * so pages on a device keep theirs.  (A raw MADV_REMOVE is not told
	 * apart: see the README's limits.)
	 */
	hmm__pages_drop(s, e, false,
			hmm__range_is_shmem(s) ||
				hmm__rec_covers(&hmm__ctx.lazy, s, e),
			true, HMM_NOTIFY_CLEAR, false);
}

static void handle_remove(uintptr_t s, uintptr_t e)
{
	while (s < e) {
		bool ours;
		uintptr_t run = hmm__zap_claim_run(s, e, &ours);
		if (!ours)
			remove_foreign(s, run);
		s = run;
	}
}

static void handle_unmap(uintptr_t s, uintptr_t e)
{
	hmm__stat_add(HMM_STAT_events_unmap, 1);
	/* A file's pages that a device wrote reach the file first (through
	 * the alias, still mapped); the munmap wrapper did it already unless
	 * the system call was raw. */
	if (atomic_load_explicit(&hmm__file_ranges, memory_order_relaxed))
		hmm__file_writeback(s, e, NULL);
	hmm__pages_drop(s, e, true, false, false, HMM_NOTIFY_UNMAP, false);
	pthread_rwlock_wrlock(&hmm__ctx.ranges_lock);
	hmm__range_trim(s, e);
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
}

/*
 * Move one page's state from @from to @to (mremap moved the page tables).
 * A page in flight is left to its migration: the old address is marked
 * unmapped, a forward is recorded, and the new address holds a MIGRATING
 * placeholder (faults there park) until the migration's commit settles it
 * (hmm__forward_commit).
 */
static void move_page_state(uintptr_t from, uintptr_t to)
{
	struct hmm_block *ob = hmm__block_lookup(from), *nb;
	unsigned oi = hmm__block_index(from), ni = hmm__block_index(to);
	hmm_device_t *owner;
	uint8_t st, dev = 0, mod;
	uint32_t dpfn = 0;

	if (!ob)
		return;
	nb = hmm__block_get(to);
	pthread_mutex_lock(&ob->lock);
	st = ob->state[oi];
	dev = ob->dev[oi];
	dpfn = ob->dpfn[oi];
	/* A lock moves with its page (the SIGBUS registration moved with
	 * the mapping); a hold for atomics ends, and a CPU write waiting
	 * for it goes on. */
	mod = PMOD_KIND(ob->mod[oi]) == PMOD_LOCKED ? ob->mod[oi] : 0;
	if (PMOD_IS_EXCL(ob->mod[oi]))
		hmm__uffd_wake(hmm__ctx.uffd, from, HMM_PAGE_SIZE);
	ob->mod[oi] = 0;
	if (PS_KIND(st) == PS_MIGRATING && nb) {
		ob->state[oi] = st | PSF_UNMAPPED;
		hmm__forward_add(from, to);
	} else {
		if (PS_KIND(st) == PS_DEVICE)
			ob->ndev--;
		ob->state[oi] = PS_NONE;
		ob->dev[oi] = 0;
	}
	pthread_mutex_unlock(&ob->lock);
	if (PS_KIND(st) == PS_NONE)
		return;
	if (!nb) {
		/* Out of memory for the new block: the page is lost to
		 * libhmm's view; at least free its device copy. */
		if (PS_KIND(st) == PS_DEVICE)
			hmm__devmem_free(hmm__device_get(PDEV_ID(dev)), &dpfn,
					 1);
		return;
	}
	/* The device, for its eviction hint (before nb->lock: dev_lock is
	 * not taken under a block lock). */
	owner = PS_KIND(st) == PS_DEVICE ? hmm__device_get(PDEV_ID(dev)) : NULL;
	pthread_mutex_lock(&nb->lock);
	switch (PS_KIND(st)) {
	case PS_DEVICE:
		nb->state[ni] = PS_DEVICE | (st & PSF_DEV_WRITE);
		nb->dev[ni] = dev;
		nb->dpfn[ni] = dpfn;
		nb->mod[ni] = mod;
		nb->ndev++;
		if (owner)
			hmm__devmem_set_owner(owner, dpfn, to);
		break;
	case PS_MIGRATING:
		nb->state[ni] = PS_MIGRATING | (st & (PSF_TO_DEVICE |
						      PSF_DEV_WRITE));
		nb->dev[ni] = dev;
		nb->ndev++;
		break;
	default:
		nb->state[ni] = PS_SYSTEM;
		break;
	}
	pthread_mutex_unlock(&nb->lock);
}

static void handle_remap(uintptr_t from, uintptr_t to, size_t len)
{
	struct hmm_mrange *r;
	struct hmm_mrange copy = { 0 };
	bool managed = false;
	unsigned char vec;

	hmm__stat_add(HMM_STAT_events_remap, 1);
	for (size_t off = 0; off < len; off += HMM_PAGE_SIZE)
		move_page_state(from + off, to + off);
	hmm__invalidate(from, from + len, HMM_NOTIFY_UNMAP, NULL, false);

	pthread_rwlock_wrlock(&hmm__ctx.ranges_lock);
	r = hmm__range_find(from);
	if (r) {
		copy = *r;
		managed = true;
	}
	if (managed) {
		struct hmm_alloc *a = copy.alloc;
		uint64_t off = copy.off + (from - copy.start);
		if (a)
			a->refs++; /* keep it alive across the trim */
		hmm__range_trim(from, from + len);
		if (!hmm__ranges_overlap(to, to + len))
			hmm__range_insert(to, to + len, copy.kind, a, off);
		if (a)
			a->refs--;
	}
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);

	/* MREMAP_DONTUNMAP leaves the old range mapped, empty; let it be
	 * plain memory again. */
	if (managed && mincore((void *)from, HMM_PAGE_SIZE, &vec) == 0)
		hmm__uffd_unregister(hmm__ctx.uffd, from, len);
}

static void handle_msg(const struct uffd_msg *m, struct retry_list *rl)
{
	switch (m->event) {
	case UFFD_EVENT_PAGEFAULT: {
		uint64_t t = hmm__tracing() ? hmm__now_ns() : 0;
		if (handle_fault(m, true) == -EAGAIN)
			retry_push(rl, m);
		if (t)
			hmm__trace_event("cpu_fault", "cpu", t,
					 m->arg.pagefault.address, 1, -1);
		break;
	}
	case UFFD_EVENT_REMOVE:
		handle_remove(m->arg.remove.start, m->arg.remove.end);
		break;
	case UFFD_EVENT_UNMAP:
		handle_unmap(m->arg.remove.start, m->arg.remove.end);
		break;
	case UFFD_EVENT_REMAP:
		handle_remap(m->arg.remap.from, m->arg.remap.to,
			     m->arg.remap.len);
		break;
	default:
		break;
	}
}

static void run_retries(struct retry_list *rl)
{
	size_t keep = 0;

	for (size_t i = 0; i < rl->n; i++)
		if (handle_fault(&rl->msgs[i], false) == -EAGAIN)
			rl->msgs[keep++] = rl->msgs[i];
	rl->n = keep;
}

/*
 * Every message read before this point has been handled: publish the
 * latest request seen.  A request made after the load is answered on the
 * next round (its eventfd write wakes poll again).
 */
static void answer_sync(struct hmm_context *c)
{
	uint64_t v;

	if (read(c->sync_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		return;
	v = atomic_load(&c->sync_req);
	pthread_mutex_lock(&c->sync_lock);
	atomic_store(&c->sync_done, v);
	pthread_cond_broadcast(&c->sync_cond);
	pthread_mutex_unlock(&c->sync_lock);
}

static void *service_main(void *arg)
{
	struct hmm_context *c = &hmm__ctx;
	struct pollfd pfd[4] = { { .fd = c->uffd, .events = POLLIN },
				 { .fd = c->stop_fd, .events = POLLIN },
				 { .fd = c->sync_fd, .events = POLLIN },
				 { .fd = -1, .events = POLLIN } };
	struct retry_list rl = { 0 };
	struct uffd_msg msgs[64];

	(void)arg;
	hmm__block_signals();
	for (;;) {
		/* Sleep until something happens; with faults waiting for an
		 * event to drain, look again after a millisecond; a hold's
		 * timeout wakes it too.  The SIGBUS descriptor (locked
		 * ranges) appears with the first lock, which syncs with this
		 * loop afterwards. */
		int tmo = hmm__holds_poll_timeout();
		if (rl.n && (tmo < 0 || tmo > 1))
			tmo = 1;
		pfd[3].fd = atomic_load(&c->sigbus_fd);
		int r = poll(pfd, 4, tmo);
		if (r < 0 && errno != EINTR)
			break;
		if (pfd[1].revents & POLLIN)
			break;
		/* fork holds this while it copies libhmm's state. */
		pthread_mutex_lock(&c->pause_lock);
		for (int f = 0; f < 4; f += 3) {
			int fd = f ? pfd[3].fd : c->uffd;
			for (; fd >= 0;) {
				ssize_t n = read(fd, msgs, sizeof(msgs));
				size_t cnt = n > 0 ? (size_t)n / sizeof(msgs[0])
						   : 0;
				if (!cnt)
					break;
				size_t faults = 0;
				for (size_t i = 0; i < cnt; i++)
					faults += msgs[i].event ==
						  UFFD_EVENT_PAGEFAULT;
				for (size_t i = 0; i < cnt; i++) {
					/* Faults after this one in the round. */
					faults -= msgs[i].event ==
						  UFFD_EVENT_PAGEFAULT;
					fb_more = faults > 0;
					handle_msg(&msgs[i], &rl);
				}
				fb_more = false;
			}
		}
		hmm__holds_expire();
		if (pfd[2].revents & POLLIN)
			answer_sync(c);
		if (rl.n)
			run_retries(&rl);
		pthread_mutex_unlock(&c->pause_lock);
	}
	free(rl.msgs);
	return NULL;
}

void hmm__service_sync(void)
{
	struct hmm_context *c = &hmm__ctx;
	uint64_t gen, one = 1;
	struct timespec ts;

	if (hmm__on_service_thread() || !atomic_load(&c->service_tid_valid))
		return;
	gen = atomic_fetch_add(&c->sync_req, 1) + 1;
	if (write(c->sync_fd, &one, sizeof(one)) != sizeof(one))
		return;
	/* No deadline: libhmm's own drops rely on this answer, and the
	 * service thread never waits on a thread that waits here. */
	pthread_mutex_lock(&c->sync_lock);
	for (int waited = 0; atomic_load(&c->sync_done) < gen &&
			     atomic_load(&c->service_tid_valid);) {
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 5;
		if (pthread_cond_timedwait(&c->sync_cond, &c->sync_lock, &ts) ==
			    ETIMEDOUT &&
		    !waited++)
			hmm__warn("the fault-service thread has not answered "
				  "for 5 s; still waiting");
	}
	pthread_mutex_unlock(&c->sync_lock);
}

int hmm__service_start(bool after_fork)
{
	if (after_fork) {
		fb_fork_child();
	} else {
		pthread_mutex_lock(&fb_lock);
		fb_stop = false; /* hmm_init after hmm_fini */
		pthread_mutex_unlock(&fb_lock);
	}
	int ret = after_fork ? hmm__thread_respawn(&hmm__ctx.service,
						   service_main, NULL,
						   "hmm-service")
			     : hmm__thread_create(&hmm__ctx.service,
						  service_main, NULL,
						  "hmm-service");

	if (!ret)
		atomic_store(&hmm__ctx.service_tid_valid, 1);
	return ret;
}

void hmm__service_stop(void)
{
	uint64_t one = 1;

	if (!atomic_load(&hmm__ctx.service_tid_valid))
		return;
	/* Workers first: their migrations may need the service thread. */
	fb_stop_all();
	if (write(hmm__ctx.stop_fd, &one, sizeof(one)) != sizeof(one))
		hmm__warn("cannot stop the service thread: %s",
			  strerror(errno));
	hmm__thread_join(&hmm__ctx.service);
	atomic_store(&hmm__ctx.service_tid_valid, 0);
}
