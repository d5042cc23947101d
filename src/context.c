/* SPDX-License-Identifier: MIT */
/*
 * Process-wide state: created on first use (or by hmm_init), torn down by
 * hmm_fini or at exit.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

struct hmm_context hmm__ctx = {
	.init_lock = PTHREAD_MUTEX_INITIALIZER,
	.uffd = -1,
	.stop_fd = -1,
	.sync_fd = -1,
	.ranges_lock = PTHREAD_RWLOCK_INITIALIZER,
	.fork_lock = PTHREAD_RWLOCK_INITIALIZER,
	.pause_lock = PTHREAD_MUTEX_INITIALIZER,
	.vma_lock = PTHREAD_RWLOCK_INITIALIZER,
	.zap_lock = PTHREAD_MUTEX_INITIALIZER,
	.notifier_lock = PTHREAD_MUTEX_INITIALIZER,
	.notifier_cond = PTHREAD_COND_INITIALIZER,
	.dev_lock = PTHREAD_MUTEX_INITIALIZER,
	.hold_lock = PTHREAD_MUTEX_INITIALIZER,
	.holds_lock = PTHREAD_MUTEX_INITIALIZER,
	.sigbus_fd = -1,
	.sync_lock = PTHREAD_MUTEX_INITIALIZER,
	.sync_cond = PTHREAD_COND_INITIALIZER,
};

static int init_err;	/* sticky error of the first failed init */

__thread bool hmm__own_thread;

/* Thread ids of libhmm's threads alive now (0: free slot), for the
 * service thread to tell their faults from the application's.  A thread
 * takes a slot in hmm__block_signals and gives it back as it exits. */
#define OWN_TIDS 256
static _Atomic pid_t own_tids[OWN_TIDS];
static pthread_key_t own_key;
static pthread_once_t own_once = PTHREAD_ONCE_INIT;

static void own_tid_exit(void *slot)
{
	atomic_store((_Atomic pid_t *)slot, 0);
}

static void own_key_init(void)
{
	pthread_key_create(&own_key, own_tid_exit);
}

bool hmm__tid_is_own(pid_t tid)
{
	for (size_t i = 0; tid && i < OWN_TIDS; i++)
		if (atomic_load_explicit(&own_tids[i], memory_order_relaxed) ==
		    tid)
			return true;
	return false;
}

static void own_tid_add(void)
{
	pid_t tid = (pid_t)syscall(SYS_gettid);

	pthread_once(&own_once, own_key_init);
	for (size_t i = 0; i < OWN_TIDS; i++) {
		pid_t free_slot = 0;
		if (atomic_compare_exchange_strong(&own_tids[i], &free_slot,
						   tid)) {
			pthread_setspecific(own_key, &own_tids[i]);
			return;
		}
	}
	/* More than OWN_TIDS threads: this one's device writes wait for
	 * holds like the CPU's (with their timeout). */
}

void hmm__block_signals(void)
{
	sigset_t all;

	hmm__own_thread = true;
	own_tid_add();
	sigfillset(&all);
	/* Synchronous faults cannot be blocked usefully: the kernel would
	 * kill the process instead of running the guard handler. */
	sigdelset(&all, SIGSEGV);
	sigdelset(&all, SIGBUS);
	sigdelset(&all, SIGFPE);
	sigdelset(&all, SIGILL);
	pthread_sigmask(SIG_SETMASK, &all, NULL);
}

/*
 * Exit (or dlclose of libhmm): teardown, with device calls in flight waited
 * for only briefly (hmm__exiting): a device kernel that runs for minutes
 * must not hold the process's exit.  Registered with __cxa_atexit and this
 * library's handle, so that dlclose runs it too even where atexit itself
 * is intercepted (ThreadSanitizer's is not tied to the caller's library).
 */
extern void *__dso_handle;
int __cxa_atexit(void (*fn)(void *), void *arg, void *dso);
bool hmm__exiting;

static void at_exit(void *unused)
{
	(void)unused;
	__atomic_store_n(&hmm__exiting, true, __ATOMIC_RELEASE);
	if (hmm__option(HMM_OPT_STATS))
		hmm_stats_print(stderr);
	hmm_fini();
}

/*
 * fork.
 *
 * The child gets a copy of everything: the page states, the device
 * structures and device memory (a driver with fork_child keeps it in
 * private memory, which fork copies on write), the notifiers.  What it
 * lacks is the userfaultfd registration (fork does not carry it over
 * without UFFD_FEATURE_EVENT_FORK, which would hand the child's faults to
 * the parent) and libhmm's threads.  So the child opens a userfaultfd of
 * its own, registers every managed range again and starts its service
 * thread before fork() returns there; a page that was on a device at the
 * fork is a hole in the child, and its first access copies it from the
 * child's copy of the device memory.  Interval notifiers are not copied
 * (the kernel's are not either): a driver's fork_child inserts its own
 * again if its device is to mirror the child.  The parent changes nothing: its
 * device-resident pages stay where they are, and later writes on either
 * side stay on that side.
 *
 * Two things cannot be copied that way and come home before the fork:
 *  - pages of shared memory (hmm_mem_alloc, adopted MAP_SHARED memory):
 *    parent and child would each think they own the one shmem page.  Such
 *    memory is marked "forked" and does not go to a device again while
 *    another process maps it (see migrate.c);
 *  - pages of devices whose driver has no fork_child.
 *
 * The copy must be consistent: prepare takes fork_lock for writing (no
 * migration by an application thread in flight) and pause_lock (the
 * service thread between two rounds of messages).
 */
static bool shared_pages_home(bool evict)
{
	struct hmm_mrange *copy;
	bool home = true;
	size_t n;

	copy = hmm__ranges_copy(&n);
	if (!copy)
		return false;
	for (size_t i = 0; i < n; i++) {
		/* Files too: parent and child share the page cache, and
		 * each would write back its own device copy. */
		if (copy[i].kind == HMM_MK_ANON)
			continue;
		if (evict)
			hmm__migrate_to_system(copy[i].start, copy[i].end, NULL,
					       0);
		/* Read-only copies of shared memory: the child writes its
		 * pages without a write-protect fault of ours. */
		if (evict)
			hmm__dups_collapse(copy[i].start, copy[i].end, NULL,
					   HMM_NOTIFY_FORK, true);
		if (home && (hmm__range_busy(copy[i].start, copy[i].end) ||
			     hmm__dups_in(copy[i].start, copy[i].end)))
			home = false;
	}
	free(copy);
	return home;
}

static void mark_shared_forked(void)
{
	pthread_rwlock_wrlock(&hmm__ctx.ranges_lock);
	for (size_t i = 0; i < hmm__ctx.nranges; i++)
		if (hmm__ctx.ranges[i].alloc)
			hmm__ctx.ranges[i].alloc->forked = true;
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
}

static void atfork_prepare(void)
{
	struct hmm_context *c = &hmm__ctx;

	if (atomic_load(&c->state) != HMM_CTX_UP)
		return;
	/* No lock or unlock half-way (its range PROT_NONE) in the copy. */
	pthread_mutex_lock(&c->hold_lock);
	hmm__holds_fork_prepare();
	for (int round = 0;; round++) {
		bool evicted = shared_pages_home(true);
		evicted &= hmm__devices_fork_ready(true);
		pthread_rwlock_wrlock(&c->fork_lock);
		/* Another thread may have moved some again meanwhile. */
		if ((evicted && shared_pages_home(false) &&
		     hmm__devices_fork_ready(false)) || round == 100) {
			if (round == 100)
				hmm__warn("fork: shared pages keep moving to "
					  "devices; the child may miss some");
			break;
		}
		pthread_rwlock_unlock(&c->fork_lock);
	}
	mark_shared_forked();
	pthread_mutex_lock(&c->pause_lock);
}

static void atfork_parent(void)
{
	if (atomic_load(&hmm__ctx.state) != HMM_CTX_UP)
		return;
	pthread_mutex_unlock(&hmm__ctx.pause_lock);
	pthread_rwlock_unlock(&hmm__ctx.fork_lock);
	pthread_mutex_unlock(&hmm__ctx.hold_lock);
}

/* The child's libhmm could not be set up: give every device-resident page
 * its data in place (the ranges are not registered here, so the stores
 * just allocate), and start from a clean slate. */
static void child_give_up(int err)
{
	struct hmm_context *c = &hmm__ctx;

	hmm__warn("fork: the child's libhmm cannot start (%s); its data is "
		  "copied back now", strerror(-err));
	for (size_t i = 0; i < c->nranges; i++) {
		for (uintptr_t p = c->ranges[i].start; p < c->ranges[i].end;
		     p += HMM_PAGE_SIZE) {
			struct hmm_block *b = hmm__block_lookup(p);
			unsigned idx = hmm__block_index(p);
			hmm_device_t *d;
			if (!b || PS_KIND(b->state[idx]) != PS_DEVICE)
				continue;
			d = hmm__ctx.devices[PDEV_ID(b->dev[idx])];
			if (d && d->ops->host_ptr) {
				memcpy((void *)p,
				       d->ops->host_ptr(d, b->dpfn[idx]),
				       HMM_PAGE_SIZE);
			} else if (d) {
				struct hmm_copy_desc desc = { b->dpfn[idx],
							      (void *)p };
				d->ops->copy(d, HMM_COPY_TO_SYSTEM, &desc, 1);
			}
		}
	}
	close(c->uffd);
	c->uffd = c->stop_fd = c->sync_fd = -1;
	c->ranges = NULL;
	c->nranges = c->ranges_cap = 0;
	c->notifiers = NULL;
	memset(c->devices, 0, sizeof(c->devices));
	atomic_store(&c->state, HMM_CTX_NONE);
	atomic_store(&hmm__stats[HMM_STAT_device_bytes_in_use], 0);
}

static int child_restart(void)
{
	struct hmm_context *c = &hmm__ctx;
	bool wp;
	int ret;

	close(c->uffd);
	close(c->stop_fd);
	close(c->sync_fd);
	c->uffd = c->stop_fd = c->sync_fd = -1;
	ret = hmm__uffd_open(&c->uffd, &c->features, &c->caps);
	if (ret)
		return ret;
	c->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	c->sync_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (c->stop_fd < 0 || c->sync_fd < 0)
		return -errno;
	wp = c->caps & HMM_CAP_WP;
	for (size_t i = 0; i < c->nranges; i++) {
		const struct hmm_mrange *r = &c->ranges[i];
		if (r->kind == HMM_MK_FPROT)
			continue; /* never registered */
		ret = r->kind == HMM_MK_FILE
			      ? hmm__uffd_register_minor(c->uffd, r->start,
							 r->end - r->start)
			      : hmm__uffd_register(c->uffd, r->start,
						   r->end - r->start, wp);
		if (ret)
			return ret;
	}
	return hmm__service_start(true);
}

static void atfork_child(void)
{
	struct hmm_context *c = &hmm__ctx;
	int ret;

	if (atomic_load(&c->state) != HMM_CTX_UP)
		return;
	/* Only this thread exists here.  Every lock anew: a thread of the
	 * parent may have held any of them; their records of work in
	 * progress (zaps, forwards, lazy frees) were the parent's. */
	pthread_mutex_init(&c->init_lock, NULL);
	pthread_rwlock_init(&c->ranges_lock, NULL);
	pthread_rwlock_init(&c->fork_lock, NULL);
	pthread_mutex_init(&c->pause_lock, NULL);
	pthread_rwlock_init(&c->vma_lock, NULL);
	pthread_mutex_init(&c->zap_lock, NULL);
	pthread_mutex_init(&c->notifier_lock, NULL);
	pthread_cond_init(&c->notifier_cond, NULL);
	pthread_mutex_init(&c->dev_lock, NULL);
	pthread_mutex_init(&c->sync_lock, NULL);
	pthread_cond_init(&c->sync_cond, NULL);
	c->zaps = c->lazy = c->drops = NULL;
	c->forwards = NULL;
	/* Notifiers do not follow a fork, as in the kernel; drivers insert
	 * theirs again from fork_child. */
	c->notifiers = NULL;
	c->notifier_active = 0;
	atomic_store(&c->sync_req, 0);
	atomic_store(&c->sync_done, 0);
	atomic_store(&c->service_tid_valid, 0);
	/* The parent's threads are not here (the forking thread, if it was
	 * libhmm's, takes its slot again below if it calls in). */
	for (size_t i = 0; i < OWN_TIDS; i++)
		atomic_store(&own_tids[i], 0);
	if (hmm__own_thread)
		own_tid_add();
	hmm__blocks_fork_child();
	hmm__holds_fork_child();
	hmm__devices_fork_child();
	hmm__dups_fork_child();
	hmm__thp_fork_child();
	hmm__prefetch_fork_child();
	hmm__advice_fork_child();
	hmm__trace_fork_child();
	ret = child_restart();
	if (ret)
		child_give_up(ret);
}

/*
 * Process exit or dlclose of libhmm: at_exit (an atexit handler of this
 * library, so run by dlclose too) has torn libhmm down; give the
 * application its signal handlers back, so that no signal lands in code
 * that is about to be unmapped.
 */
__attribute__((destructor)) static void unload(void)
{
	hmm__guard_uninstall();
}

static pthread_once_t once_handlers = PTHREAD_ONCE_INIT;
static void install_handlers(void)
{
	__cxa_atexit(at_exit, NULL, &__dso_handle);
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static int init_locked(void)
{
	struct hmm_context *c = &hmm__ctx;
	int ret;

	hmm__inject_from_env();
	ret = hmm__guard_install();
	if (ret)
		return ret;
	ret = hmm__uffd_open(&c->uffd, &c->features, &c->caps);
	if (ret)
		return ret;
	c->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	c->sync_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (c->stop_fd < 0 || c->sync_fd < 0) {
		ret = -errno;
		goto fail;
	}
	ret = hmm__sim_register();
	if (ret && ret != -EEXIST)
		goto fail;
	ret = hmm__service_start(false);
	if (ret)
		goto fail;
	return 0;
fail:
	close(c->uffd);
	if (c->stop_fd >= 0)
		close(c->stop_fd);
	if (c->sync_fd >= 0)
		close(c->sync_fd);
	c->uffd = c->stop_fd = c->sync_fd = -1;
	return ret;
}

int hmm_init(void)
{
	int ret = 0;

	switch (atomic_load_explicit(&hmm__ctx.state, memory_order_acquire)) {
	case HMM_CTX_UP:
		return 0;
	case HMM_CTX_DOWN:
		return -ESHUTDOWN;
	}
	pthread_once(&once_handlers, install_handlers);
	pthread_mutex_lock(&hmm__ctx.init_lock);
	if (atomic_load(&hmm__ctx.state) == HMM_CTX_NONE) {
		if (init_err)
			ret = init_err;
		else if (!(ret = init_locked())) {
			atomic_store_explicit(&hmm__ctx.state, HMM_CTX_UP,
					      memory_order_release);
			hmm__trace_init();
		}
		else if (ret != -EAGAIN && ret != -ENOMEM && ret != -EMFILE &&
			 ret != -ENFILE)
			init_err = ret; /* what the machine lacks stays lacking */
	} else if (atomic_load(&hmm__ctx.state) == HMM_CTX_DOWN) {
		ret = -ESHUTDOWN;
	}
	pthread_mutex_unlock(&hmm__ctx.init_lock);
	return ret;
}

int hmm__ensure(void)
{
	if (atomic_load_explicit(&hmm__ctx.state, memory_order_acquire) ==
	    HMM_CTX_UP)
		return 0;
	return hmm_init();
}

int hmm_caps(void)
{
	int ret = hmm__ensure();

	return ret ? ret : (int)hmm__ctx.caps;
}

bool hmm__on_service_thread(void)
{
	return atomic_load(&hmm__ctx.service_tid_valid) &&
	       pthread_equal(pthread_self(), hmm__ctx.service.th);
}

/* Unregister every range after bringing its pages back. */
static void release_all_ranges(void)
{
	struct hmm_context *c = &hmm__ctx;

	pthread_rwlock_wrlock(&c->ranges_lock);
	for (size_t i = 0; i < c->nranges; i++) {
		struct hmm_mrange *r = &c->ranges[i];
		hmm__uffd_unregister(c->uffd, r->start, r->end - r->start);
	}
	hmm__ranges_free_all();
	pthread_rwlock_unlock(&c->ranges_lock);
}

/*
 * hmm_fini runs while other application threads may still be inside
 * libhmm (exit() from one thread while another migrates: the atexit
 * handler calls hmm_fini).  Those threads read c->uffd without a lock, so
 * the field must not change, and the number must not be reused by a file
 * the application opens next, which their ioctls would then reach.  The
 * userfaultfd is therefore replaced under the same number by /dev/null:
 * the kernel drops the userfaultfd (pages still registered are unaffected,
 * every range was unregistered above), late ioctls fail with ENOTTY, and
 * the number stays taken (one descriptor on /dev/null, close-on-exec, for
 * the rest of the process).  Without /dev/null the descriptor is closed
 * and the field is left alone: a late ioctl then fails with EBADF, or
 * reaches whatever reuses the number, which is no worse than before.
 */
static void retire_uffd(struct hmm_context *c)
{
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);

	if (null >= 0 && dup3(null, c->uffd, O_CLOEXEC) == c->uffd) {
		close(null);
		return;
	}
	if (null >= 0)
		close(null);
	close(c->uffd);
}

int hmm_fini(void)
{
	struct hmm_context *c = &hmm__ctx;

	/* Before init_lock: a prefetch being run may need hmm__ensure. */
	hmm__prefetch_stop();
	pthread_mutex_lock(&c->init_lock);
	if (atomic_load(&c->state) != HMM_CTX_UP) {
		atomic_store(&c->state, HMM_CTX_DOWN);
		pthread_mutex_unlock(&c->init_lock);
		return 0;
	}
	/* Devices first: closing one brings its pages back, with the
	 * service thread still serving faults. */
	hmm__devices_close_all();
	atomic_store(&c->state, HMM_CTX_DOWN);
	release_all_ranges();
	hmm__service_stop();
	hmm__holds_fini();
	retire_uffd(c);
	close(c->stop_fd);
	close(c->sync_fd);
	c->stop_fd = c->sync_fd = -1;
	hmm__trace_close();
	pthread_mutex_unlock(&c->init_lock);
	return 0;
}
