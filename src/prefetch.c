/* SPDX-License-Identifier: MIT */
/*
 * Asynchronous prefetch (hmm_prefetch_start/wait/release in hmm.h).
 *
 * A prefetch whose pages are all in place already completes in the
 * caller, after one look at their states (a byte per page, under each
 * block's lock): no thread, no queue.  The others go to one prefetch
 * thread, started on first use, which runs them in order with
 * hmm_migrate; the caller waits on the handle, or polls it.  Read-mostly
 * parts (HMM_ADVISE_READ_MOSTLY) prefetched to a device get copies there
 * instead, and count as in place once the device has them.
 *
 * pf_lock protects the queue, the thread's existence, and every handle's
 * done and result fields (one lock and one condition for all: prefetches
 * are few and long).  A queued prefetch holds its device (hmm_device_enter)
 * until it completes, so hmm_device_close waits for it.  hmm_fini stops the
 * thread first: the prefetch it is running completes, the queued ones
 * complete with -ECANCELED.  In the child of fork, handles the parent had
 * not seen complete are completed with -ECANCELED there (the parent's
 * thread does not exist in the child).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "internal.h"

struct hmm_prefetch {
	void *addr;
	size_t len;
	hmm_device_t *dev;
	long result;			/* pf_lock */
	bool done;			/* pf_lock */
	struct hmm_prefetch *next;	/* queue, pf_lock */
};

static pthread_mutex_t pf_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pf_cond = PTHREAD_COND_INITIALIZER; /* work or done */
static struct hmm_prefetch *pf_head, *pf_tail;	/* pf_lock */
static struct hmm_prefetch *pf_running;		/* pf_lock */
static bool pf_started, pf_stop;		/* pf_lock */
static struct hmm_thread pf_thread;

/* Whether every page of [s, e) is where a prefetch to @dev would put it. */
bool hmm__pages_in_place(uintptr_t s, uintptr_t e, hmm_device_t *dev)
{
	for (uintptr_t p = s; p < e;) {
		uintptr_t be = HMM_MIN((p | (HMM_BLOCK_SIZE - 1)) + 1, e);
		struct hmm_block *b = hmm__block_lookup(p);
		bool ok = true;

		if (!b) {
			/* No page here ever moved: all in system memory. */
			if (dev)
				return false;
			p = be;
			continue;
		}
		pthread_mutex_lock(&b->lock);
		for (uintptr_t q = p; q < be && ok; q += HMM_PAGE_SIZE) {
			unsigned i = hmm__block_index(q);
			uint8_t k = PS_KIND(b->state[i]);
			ok = dev ? (k == PS_DEVICE &&
				    PDEV_ID(b->dev[i]) == dev->id) ||
					   (k == PS_SYSTEM && b->dups &&
					    hmm__dup_ready_locked(b, i, dev->id))
				 : k == PS_SYSTEM;
		}
		pthread_mutex_unlock(&b->lock);
		if (!ok)
			return false;
		p = be;
	}
	return true;
}

/*
 * One prefetch: hmm_migrate, except that read-mostly parts prefetched to a
 * device get copies there (dup.c) and stay in system memory, as a device
 * read would leave them.  Returns the pages moved or copied, or the first
 * error.
 */
static long prefetch_one(struct hmm_prefetch *pf)
{
	uintptr_t s = (uintptr_t)pf->addr, e = s + pf->len;
	struct hmm_span rm[16];
	long total = 0;

	for (uintptr_t p = s; p < e;) {
		size_t n = pf->dev ? hmm__advice_read_mostly(p, e, rm, 16) : 0;
		uintptr_t ms = n ? rm[0].s : e, me = n ? rm[0].e : e;
		long r = ms > p ? hmm_migrate((void *)p, ms - p, pf->dev, 0) : 0;
		if (r < 0)
			return r;
		total += r;
		r = me > ms ? hmm__dups_prefetch(pf->dev, ms, me) : 0;
		if (r < 0)
			return r;
		total += r;
		p = me;
	}
	return total;
}

/* pf_lock held. */
static void complete(struct hmm_prefetch *pf, long result)
{
	pf->result = result;
	pf->done = true;
	if (pf->dev)
		hmm_device_leave(pf->dev);
	pthread_cond_broadcast(&pf_cond);
}

static void *prefetch_main(void *arg)
{
	(void)arg;
	hmm__block_signals();
	pthread_mutex_lock(&pf_lock);
	for (;;) {
		struct hmm_prefetch *pf;

		while (!pf_head && !pf_stop)
			pthread_cond_wait(&pf_cond, &pf_lock);
		if (pf_stop)
			break;
		pf = pf_head;
		pf_head = pf->next;
		if (!pf_head)
			pf_tail = NULL;
		pf_running = pf;
		/* The migration waits for faults and devices: not under the
		 * queue's lock. */
		pthread_mutex_unlock(&pf_lock);
		long r = prefetch_one(pf);
		pthread_mutex_lock(&pf_lock);
		pf_running = NULL;
		complete(pf, r);
	}
	pthread_mutex_unlock(&pf_lock);
	return NULL;
}

int hmm_prefetch_start(void *addr, size_t len, hmm_device_t *dev,
		       unsigned int flags, hmm_prefetch_t **out)
{
	uintptr_t s = (uintptr_t)addr, e = s + len;
	struct hmm_prefetch *pf;
	int ret;

	ret = hmm__check_range(addr, len);
	if (ret || flags || !out)
		return ret ? ret : -EINVAL;
	ret = hmm__ensure();
	if (ret)
		return ret;
	pthread_rwlock_rdlock(&hmm__ctx.ranges_lock);
	ret = hmm__ranges_cover(s, e);
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	if (ret)
		return ret;
	pf = calloc(1, sizeof(*pf));
	if (!pf)
		return -ENOMEM;
	*pf = (struct hmm_prefetch){ .addr = addr, .len = len, .dev = dev };
	if (dev && hmm_device_enter(dev)) {
		free(pf);
		return -ENODEV;
	}
	hmm__stat_add(HMM_STAT_prefetches, 1);
	if (hmm__pages_in_place(s, e, dev)) {
		hmm__stat_add(HMM_STAT_prefetches_in_place, 1);
		pthread_mutex_lock(&pf_lock);
		complete(pf, 0);
		pthread_mutex_unlock(&pf_lock);
		*out = pf;
		return 0;
	}
	pthread_mutex_lock(&pf_lock);
	if (pf_stop) {
		ret = -ESHUTDOWN;
	} else if (!pf_started) {
		ret = hmm__thread_create(&pf_thread, prefetch_main, NULL,
					 "hmm-prefetch");
		pf_started = ret == 0;
	}
	if (ret) {
		pthread_mutex_unlock(&pf_lock);
		if (dev)
			hmm_device_leave(dev);
		free(pf);
		return ret;
	}
	if (pf_tail)
		pf_tail->next = pf;
	else
		pf_head = pf;
	pf_tail = pf;
	pthread_cond_broadcast(&pf_cond);
	pthread_mutex_unlock(&pf_lock);
	*out = pf;
	return 0;
}

long hmm_prefetch_wait(hmm_prefetch_t *pf, int timeout_ms)
{
	struct timespec until;
	long ret = 0;

	if (!pf)
		return -EINVAL;
	if (timeout_ms > 0) {
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += timeout_ms / 1000;
		until.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
	}
	pthread_mutex_lock(&pf_lock);
	while (!pf->done && !ret) {
		if (timeout_ms == 0)
			ret = -ETIMEDOUT;
		else if (timeout_ms < 0)
			pthread_cond_wait(&pf_cond, &pf_lock);
		else if (pthread_cond_timedwait(&pf_cond, &pf_lock, &until) ==
			 ETIMEDOUT)
			ret = pf->done ? 0 : -ETIMEDOUT;
	}
	if (pf->done)
		ret = pf->result;
	pthread_mutex_unlock(&pf_lock);
	return ret;
}

long hmm_prefetch_release(hmm_prefetch_t *pf)
{
	long r;

	if (!pf)
		return -EINVAL;
	r = hmm_prefetch_wait(pf, -1);
	free(pf);
	return r;
}

void hmm__prefetch_stop(void)
{
	bool started;

	pthread_mutex_lock(&pf_lock);
	pf_stop = true;
	started = pf_started;
	while (pf_head) {
		struct hmm_prefetch *pf = pf_head;
		pf_head = pf->next;
		complete(pf, -ECANCELED);
	}
	pf_tail = NULL;
	pthread_cond_broadcast(&pf_cond);
	pthread_mutex_unlock(&pf_lock);
	if (started)
		hmm__thread_join(&pf_thread);
	pthread_mutex_lock(&pf_lock);
	pf_started = false;
	pf_stop = false; /* hmm_init may start libhmm again */
	pthread_mutex_unlock(&pf_lock);
}

void hmm__prefetch_fork_child(void)
{
	pthread_mutex_init(&pf_lock, NULL);
	pthread_cond_init(&pf_cond, NULL);
	/* The parent's thread is not here: what it ran or had queued will
	 * not run in the child. */
	if (pf_running) {
		pf_running->result = -ECANCELED;
		pf_running->done = true;
		pf_running = NULL;
	}
	for (struct hmm_prefetch *pf = pf_head; pf; pf = pf->next) {
		pf->result = -ECANCELED;
		pf->done = true;
	}
	pf_head = pf_tail = NULL;
	pf_started = false;
	pf_stop = false;
}
