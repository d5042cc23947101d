/* SPDX-License-Identifier: MIT */
/*
 * Interval notifiers with the kernel's sequence-number protocol.
 *
 * Every invalidation takes a fresh odd number from ctx.notifier_seq and
 * hands it to the callbacks, which store it with hmm_interval_set_seq under
 * their page-table lock.  A read section that began before it then fails
 * hmm_interval_read_retry, taken under the same lock.
 *
 * The notifier list is walked under ctx.notifier_lock, which is dropped
 * around each callback (callbacks take driver locks and may wait);
 * notifier_active counts callbacks running so that remove() can wait for
 * them before the driver frees the notifier.
 */
#include "internal.h"

int hmm_interval_notifier_insert(struct hmm_interval_notifier *sub,
				 uintptr_t start, size_t length,
				 const struct hmm_interval_notifier_ops *ops)
{
	struct hmm_context *c = &hmm__ctx;
	int ret;

	if (!sub || !ops || !ops->invalidate)
		return -EINVAL;
	if (length && start + length < start)
		return -EINVAL;
	ret = hmm__ensure();
	if (ret)
		return ret;
	sub->start = start;
	sub->end = length ? start + length : UINTPTR_MAX;
	sub->ops = ops;
	pthread_mutex_lock(&c->notifier_lock);
	atomic_store((_Atomic unsigned long *)&sub->invalidate_seq,
		     c->notifier_seq);
	sub->next = c->notifiers;
	c->notifiers = sub;
	pthread_mutex_unlock(&c->notifier_lock);
	return 0;
}

void hmm_interval_notifier_remove(struct hmm_interval_notifier *sub)
{
	struct hmm_context *c = &hmm__ctx;

	pthread_mutex_lock(&c->notifier_lock);
	for (struct hmm_interval_notifier **pp = &c->notifiers; *pp;
	     pp = &(*pp)->next) {
		if (*pp == sub) {
			*pp = sub->next;
			break;
		}
	}
	/* A callback may still be running on it. */
	while (c->notifier_active)
		pthread_cond_wait(&c->notifier_cond, &c->notifier_lock);
	pthread_mutex_unlock(&c->notifier_lock);
}

unsigned long hmm_interval_read_begin(struct hmm_interval_notifier *sub)
{
	return atomic_load_explicit((_Atomic unsigned long *)&sub->invalidate_seq,
				    memory_order_acquire);
}

bool hmm_interval_read_retry(struct hmm_interval_notifier *sub,
			     unsigned long seq)
{
	return atomic_load_explicit((_Atomic unsigned long *)&sub->invalidate_seq,
				    memory_order_relaxed) != seq;
}

bool hmm_interval_check_retry(struct hmm_interval_notifier *sub,
			      unsigned long seq)
{
	return atomic_load_explicit((_Atomic unsigned long *)&sub->invalidate_seq,
				    memory_order_acquire) != seq;
}

void hmm_interval_set_seq(struct hmm_interval_notifier *sub,
			  unsigned long cur_seq)
{
	atomic_store_explicit((_Atomic unsigned long *)&sub->invalidate_seq,
			      cur_seq, memory_order_release);
}

bool hmm__invalidate(uintptr_t start, uintptr_t end,
		     enum hmm_notifier_event event, const void *owner,
		     bool blockable)
{
	struct hmm_context *c = &hmm__ctx;
	struct hmm_notifier_range r = {
		.start = start, .end = end, .event = event, .owner = owner,
		.flags = blockable ? HMM_NOTIFIER_RANGE_BLOCKABLE : 0,
	};
	unsigned long seq;
	bool ok = true;

	if (start >= end)
		return true; /* mprotect(addr, 0, ...) and the like: nothing */
	pthread_mutex_lock(&c->notifier_lock);
	if (!c->notifiers) {
		pthread_mutex_unlock(&c->notifier_lock);
		return true;
	}
	uint64_t t = hmm__tracing() ? hmm__now_ns() : 0;
	c->notifier_seq += 2;
	c->notifier_seq |= 1;
	seq = c->notifier_seq;
	c->notifier_active++;
	for (struct hmm_interval_notifier *n = c->notifiers; n; n = n->next) {
		if (n->end <= start || n->start >= end)
			continue;
		/*
		 * Drop the list lock around the callback: it takes the
		 * driver's page-table lock and, when blockable, waits for
		 * device accesses.  The list cannot lose @n meanwhile:
		 * remove() waits for notifier_active to fall to zero.
		 */
		pthread_mutex_unlock(&c->notifier_lock);
		ok &= n->ops->invalidate(n, &r, seq);
		hmm__stat_add(HMM_STAT_invalidations, 1);
		pthread_mutex_lock(&c->notifier_lock);
	}
	if (--c->notifier_active == 0)
		pthread_cond_broadcast(&c->notifier_cond);
	pthread_mutex_unlock(&c->notifier_lock);
	if (t) {
		static const char *const names[] = {
			"invalidate_unmap", "invalidate_clear",
			"invalidate_protection", "invalidate_protection_page",
			"invalidate_migrate", "invalidate_exclusive",
			"invalidate_fork", "invalidate_release",
		};
		const hmm_device_t *od = hmm__device_of_owner(owner);
		hmm__trace_event((unsigned)event < 8 ? names[event]
						     : "invalidate",
				 "invalidate", t, start,
				 (end - start) >> HMM_PAGE_SHIFT,
				 od ? (int)od->id : -1);
	}
	return ok;
}
