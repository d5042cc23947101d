/* SPDX-License-Identifier: MIT */
/*
 * Fault injection: make the next calls of one of libhmm's fallible steps
 * fail, to check that every failure leaves data where it was and is
 * reported (hmm_driver.h: hmm_inject_fault; or HMM_INJECT in the
 * environment, read when libhmm starts).
 *
 * A point fails @times calls after letting @skip pass.  The counters are
 * atomics, decremented by whichever thread gets there: with several
 * threads, which call fails is up to timing, how many is not.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static const struct {
	const char *name;
	int err;		/* default error */
} points[HMM_INJ__COUNT] = {
	[HMM_INJ_DEVMEM_ALLOC] = { "devmem_alloc", ENOMEM },
	[HMM_INJ_COPY_TO_DEVICE] = { "copy_to_device", EIO },
	[HMM_INJ_COPY_TO_SYSTEM] = { "copy_to_system", EIO },
	[HMM_INJ_UFFD_COPY] = { "uffd_copy", ENOMEM },
	[HMM_INJ_UFFD_ZEROPAGE] = { "uffd_zeropage", ENOMEM },
	[HMM_INJ_UFFD_WRITEPROTECT] = { "uffd_writeprotect", ENOMEM },
	[HMM_INJ_UFFD_REGISTER] = { "uffd_register", ENOMEM },
	[HMM_INJ_ZAP] = { "zap", ENOMEM },
	[HMM_INJ_THREAD_CREATE] = { "thread_create", EAGAIN },
	[HMM_INJ_UFFD_MOVE] = { "uffd_move", EBUSY },
	[HMM_INJ_UFFD_WAKE] = { "uffd_wake", ENOMEM },
	[HMM_INJ_UFFD_UNREGISTER] = { "uffd_unregister", ENOMEM },
	[HMM_INJ_UFFD_API] = { "uffd_api", ENOMEM },
};

static struct {
	_Atomic int err;
	_Atomic long skip, times;
} armed[HMM_INJ__COUNT];
static atomic_int narmed; /* points with times > 0, for the fast path */

int hmm__inject(enum hmm_inject_point p)
{
	long left;

	if (!atomic_load_explicit(&narmed, memory_order_relaxed))
		return 0;
	if (atomic_load(&armed[p].times) <= 0)
		return 0;
	if (atomic_fetch_sub(&armed[p].skip, 1) > 0)
		return 0;
	left = atomic_fetch_sub(&armed[p].times, 1);
	if (left <= 0)
		return 0;
	if (left == 1)
		atomic_fetch_sub(&narmed, 1);
	hmm__stat_add(HMM_STAT_faults_injected, 1);
	hmm__debug("injected %s failure: %s", points[p].name,
		   strerror(atomic_load(&armed[p].err)));
	return -atomic_load(&armed[p].err);
}

int hmm_inject_fault(const char *point, int err, unsigned long skip,
		     unsigned long times)
{
	if (!point || err < 0 || err > 4095 || skip > LONG_MAX ||
	    times > LONG_MAX)
		return -EINVAL;
	for (int p = 0; p < HMM_INJ__COUNT; p++) {
		long was;
		if (strcmp(point, points[p].name))
			continue;
		atomic_store(&armed[p].err, err ? err : points[p].err);
		atomic_store(&armed[p].skip, (long)skip);
		was = atomic_exchange(&armed[p].times, (long)times);
		if (was <= 0 && times)
			atomic_fetch_add(&narmed, 1);
		else if (was > 0 && !times)
			atomic_fetch_sub(&narmed, 1);
		return 0;
	}
	return -ENOENT;
}

void hmm__inject_from_env(void)
{
	const char *env = getenv("HMM_INJECT");
	char *copy, *item, *save = NULL;

	if (!env || !*env || !(copy = strdup(env)))
		return;
	/* point[:errno[:skip[:times]]], comma separated */
	for (item = strtok_r(copy, ",", &save); item;
	     item = strtok_r(NULL, ",", &save)) {
		char *f[4] = { item, NULL, NULL, NULL };
		for (int i = 1; i < 4; i++) {
			f[i] = f[i - 1] ? strchr(f[i - 1], ':') : NULL;
			if (f[i])
				*f[i]++ = '\0';
		}
		if (hmm_inject_fault(f[0], f[1] ? atoi(f[1]) : 0,
				     f[2] ? strtoul(f[2], NULL, 0) : 0,
				     f[3] ? strtoul(f[3], NULL, 0) : 1))
			hmm__warn("HMM_INJECT: unknown point \"%s\"", f[0]);
	}
	free(copy);
}
