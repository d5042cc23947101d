/* SPDX-License-Identifier: MIT */
/*
 * Process-wide state: created on first use (or by hmm_init), torn down by
 * hmm_fini or at exit.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "internal.h"

struct hmm_context hmm__ctx = {
	.init_lock = PTHREAD_MUTEX_INITIALIZER,
	.uffd = -1,
	.stop_fd = -1,
	.sync_fd = -1,
	.ranges_lock = PTHREAD_RWLOCK_INITIALIZER,
	.fork_lock = PTHREAD_RWLOCK_INITIALIZER,
	.zap_lock = PTHREAD_MUTEX_INITIALIZER,
	.notifier_lock = PTHREAD_MUTEX_INITIALIZER,
	.notifier_cond = PTHREAD_COND_INITIALIZER,
	.dev_lock = PTHREAD_MUTEX_INITIALIZER,
	.sync_lock = PTHREAD_MUTEX_INITIALIZER,
	.sync_cond = PTHREAD_COND_INITIALIZER,
};

static int init_err;	/* sticky error of the first failed init */

void hmm__block_signals(void)
{
	sigset_t all;

	sigfillset(&all);
	/* Synchronous faults cannot be blocked usefully: the kernel would
	 * kill the process instead of running the guard handler. */
	sigdelset(&all, SIGSEGV);
	sigdelset(&all, SIGBUS);
	sigdelset(&all, SIGFPE);
	sigdelset(&all, SIGILL);
	pthread_sigmask(SIG_SETMASK, &all, NULL);
}

static void at_exit(void)
{
	if (hmm__option(HMM_OPT_STATS))
		hmm_stats_print(stderr);
	hmm_fini();
}

/*
 * fork: a child keeps no userfaultfd registration, so pages that live on a
 * device would read as zeros there.  Bring everything back before the fork,
 * and give the child a clean slate (it starts its own libhmm on first use).
 */
static void atfork_prepare(void)
{
	if (atomic_load(&hmm__ctx.state) != HMM_CTX_UP)
		return;
	pthread_rwlock_wrlock(&hmm__ctx.fork_lock);
	hmm__migrate_all_to_system(NULL);
}

static void atfork_parent(void)
{
	if (atomic_load(&hmm__ctx.state) != HMM_CTX_UP)
		return;
	pthread_rwlock_unlock(&hmm__ctx.fork_lock);
}

static void atfork_child(void)
{
	struct hmm_context *c = &hmm__ctx;

	if (atomic_load(&c->state) != HMM_CTX_UP)
		return;
	/* The parent's threads do not exist here; its memory is a copy.
	 * Leak the copies of the parent's structures rather than touch locks
	 * another thread may have held at fork time. */
	close(c->uffd);
	close(c->stop_fd);
	c->uffd = c->stop_fd = -1;
	pthread_mutex_init(&c->init_lock, NULL);
	pthread_rwlock_init(&c->ranges_lock, NULL);
	pthread_rwlock_init(&c->fork_lock, NULL);
	c->forwards = NULL;
	pthread_mutex_init(&c->zap_lock, NULL);
	pthread_mutex_init(&c->notifier_lock, NULL);
	pthread_cond_init(&c->notifier_cond, NULL);
	pthread_mutex_init(&c->dev_lock, NULL);
	pthread_mutex_init(&c->sync_lock, NULL);
	pthread_cond_init(&c->sync_cond, NULL);
	close(c->sync_fd);
	c->sync_fd = -1;
	c->ranges = NULL;
	c->nranges = c->ranges_cap = 0;
	c->zaps = NULL;
	c->notifiers = NULL;
	c->notifier_active = 0;
	memset(c->devices, 0, sizeof(c->devices));
	atomic_store(&c->state, HMM_CTX_NONE);
	atomic_store(&hmm__stats[HMM_STAT_device_bytes_in_use], 0);
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
	atexit(at_exit);
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static int init_locked(void)
{
	struct hmm_context *c = &hmm__ctx;
	int ret;

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
	ret = hmm__service_start();
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
		else if ((ret = init_locked()))
			init_err = ret;
		else
			atomic_store_explicit(&hmm__ctx.state, HMM_CTX_UP,
					      memory_order_release);
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

int hmm_fini(void)
{
	struct hmm_context *c = &hmm__ctx;

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
	close(c->uffd);
	close(c->stop_fd);
	close(c->sync_fd);
	c->uffd = c->stop_fd = c->sync_fd = -1;
	pthread_mutex_unlock(&c->init_lock);
	return 0;
}
