/* SPDX-License-Identifier: MIT */
/*
 * Asynchronous prefetch: hmm_prefetch_start, hmm_prefetch_wait,
 * hmm_prefetch_release.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>

#include "common.h"

#define BIG (64UL << 20)

static hmm_prefetch_t *start(void *p, size_t len, hmm_device_t *dev)
{
	hmm_prefetch_t *pf = NULL;
	int r = hmm_prefetch_start(p, len, dev, 0, &pf);

	cr_assert_eq(r, 0, "hmm_prefetch_start(%p, %zu) = %d", p, len, r);
	cr_assert_not_null(pf);
	return pf;
}

Test(prefetch, to_device_and_back, .timeout = T_SHORT)
{
	const size_t len = 4 << 20;
	hmm_device_t *dev;
	hmm_prefetch_t *pf;
	char *p;

	need_hmm();
	dev = open_sim(0);
	p = map_adopt(len);
	fill_pattern(p, len, 31);
	pf = start(p, len, dev);
	cr_assert_eq(hmm_prefetch_wait(pf, -1), (long)(len / PG));
	cr_assert_eq(hmm_prefetch_wait(pf, 0), (long)(len / PG),
		     "a complete handle answers again");
	cr_assert_eq(hmm_prefetch_release(pf), (long)(len / PG));
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);

	pf = start(p, len, NULL);
	cr_assert_eq(hmm_prefetch_release(pf), (long)(len / PG));
	assert_all_loc(p, len, HMM_LOC_SYSTEM, NULL);
	assert_pattern(p, len, 31);
}

/* Data in place: complete before the call returns, no thread involved. */
Test(prefetch, in_place_costs_one_look, .timeout = T_SHORT)
{
	const size_t len = 4 << 20;
	hmm_device_t *dev;
	hmm_prefetch_t *pf;
	uint64_t n0;
	char *p;

	need_hmm();
	dev = open_sim(0);
	p = map_adopt(len);
	fill_pattern(p, len, 5);
	n0 = stat_of("prefetches_in_place");
	pf = start(p, len, NULL); /* never moved: in system memory */
	cr_assert_eq(hmm_prefetch_wait(pf, 0), 0);
	cr_assert_eq(hmm_prefetch_release(pf), 0);
	cr_assert_eq(hmm_migrate(p, len, dev, 0), (long)(len / PG));
	pf = start(p, len, dev);
	cr_assert_eq(hmm_prefetch_wait(pf, 0), 0, "already on the device");
	cr_assert_eq(hmm_prefetch_release(pf), 0);
	cr_assert_eq(stat_of("prefetches_in_place") - n0, 2);
	/* One page elsewhere: not in place, it moves. */
	cr_assert_eq(*(volatile uint64_t *)p, 0 ^ 5ULL);
	pf = start(p, len, dev);
	cr_assert_gt(hmm_prefetch_release(pf), 0);
	cr_assert_eq(stat_of("prefetches_in_place") - n0, 2);
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);
	assert_pattern(p, len, 5);
}

Test(prefetch, bad_input_changes_nothing, .timeout = T_SHORT)
{
	hmm_prefetch_t *pf = (hmm_prefetch_t *)0x1;
	hmm_device_t *dev;
	char *p, *u;

	need_hmm();
	dev = open_sim(0);
	p = map_adopt(16 * PG);
	u = map_anon(16 * PG);
	cr_assert_eq(hmm_prefetch_start(p + 1, PG, dev, 0, &pf), -EINVAL);
	cr_assert_eq(hmm_prefetch_start(p, 0, dev, 0, &pf), -EINVAL);
	cr_assert_eq(hmm_prefetch_start(p, PG + 1, dev, 0, &pf), -EINVAL);
	cr_assert_eq(hmm_prefetch_start(p, PG, dev, 1, &pf), -EINVAL);
	cr_assert_eq(hmm_prefetch_start(p, PG, dev, 0, NULL), -EINVAL);
	cr_assert_eq(hmm_prefetch_start((void *)(UINTPTR_MAX & ~(PG - 1)),
					2 * PG, dev, 0, &pf),
		     -EINVAL);
	cr_assert_eq(hmm_prefetch_start(u, 16 * PG, dev, 0, &pf), -ENOENT);
	cr_assert_eq(hmm_prefetch_start(p, 32 * PG, dev, 0, &pf), -ENOENT,
		     "half managed");
	cr_assert_eq(pf, (hmm_prefetch_t *)0x1, "a failed start wrote *out");
	cr_assert_eq(hmm_prefetch_wait(NULL, 0), -EINVAL);
	cr_assert_eq(hmm_prefetch_release(NULL), -EINVAL);
	cr_assert_eq(hmm_device_close(dev), 0);
	cr_assert_eq(hmm_prefetch_start(p, PG, dev, 0, &pf), -ENODEV);
	assert_all_loc(p, 16 * PG, HMM_LOC_SYSTEM, NULL);
}

/* Prefetches run in order; a wait with a time limit returns -ETIMEDOUT
 * while the migration runs. */
Test(prefetch, order_poll_and_timeout, .timeout = T_LONG)
{
	hmm_device_t *dev;
	hmm_prefetch_t *a, *b;
	char *p;
	long r;

	need_hmm();
	dev = open_sim(2 * BIG);
	p = map_adopt(2 * BIG);
	fill_pattern(p, 2 * BIG, 9);
	a = start(p, BIG, dev);
	b = start(p + BIG, BIG, dev);
	r = hmm_prefetch_wait(b, 0);
	if (r == -ETIMEDOUT)
		r = hmm_prefetch_wait(b, 1);
	cr_log_info("poll right after the start: %ld", r);
	cr_assert(r == -ETIMEDOUT || r == (long)(BIG / PG), "%ld", r);
	cr_assert_eq(hmm_prefetch_wait(b, -1), (long)(BIG / PG));
	cr_assert_eq(hmm_prefetch_wait(a, 0), (long)(BIG / PG),
		     "the first prefetch completes before the second");
	cr_assert_eq(hmm_prefetch_release(a), (long)(BIG / PG));
	cr_assert_eq(hmm_prefetch_release(b), (long)(BIG / PG));
	assert_all_loc(p, 2 * BIG, HMM_LOC_DEVICE, dev);
	assert_pattern(p, 2 * BIG, 9);
}

/* The CPU keeps using the pages while they move. */
struct writer {
	uint64_t *w;
	size_t n;
	atomic_bool stop;
	uint64_t last;
};

static void *cpu_writer(void *arg)
{
	struct writer *wr = arg;

	for (uint64_t v = 1; !atomic_load(&wr->stop); v++) {
		for (size_t i = 0; i < wr->n; i += 512)
			wr->w[i] = v;
		wr->last = v;
	}
	return NULL;
}

Test(prefetch, cpu_access_meanwhile, .timeout = T_LONG)
{
	struct writer wr = { 0 };
	hmm_device_t *dev;
	pthread_t th;
	char *p;

	need_hmm();
	dev = open_sim(2 * BIG);
	p = map_adopt(BIG);
	fill_pattern(p, BIG, 3);
	wr.w = (uint64_t *)p;
	wr.n = 256 * WORDS_PER_PAGE; /* the first 1 MiB */
	cr_assert_eq(pthread_create(&th, NULL, cpu_writer, &wr), 0);
	for (int i = 0; i < 4; i++) {
		hmm_prefetch_t *pf = start(p, BIG, i & 1 ? NULL : dev);
		cr_assert_geq(hmm_prefetch_release(pf), 0);
	}
	atomic_store(&wr.stop, true);
	pthread_join(th, NULL);
	for (size_t i = 0; i < wr.n; i += 512)
		cr_assert_eq(wr.w[i], wr.last, "word %zu", i);
	/* the rest of the data, untouched by the writer */
	for (size_t i = 0; i < BIG / 8; i++)
		if (i >= wr.n || i % 512)
			cr_assert_eq(((uint64_t *)p)[i], i ^ 3ULL, "word %zu",
				     i);
}

/* hmm_device_close waits for a pending prefetch; hmm_fini cancels the
 * ones not started.  Nothing is lost either way. */
Test(prefetch, close_and_fini, .timeout = T_LONG)
{
	hmm_device_t *dev;
	hmm_prefetch_t *pf[3];
	char *p;
	long r;

	need_hmm();
	dev = open_sim(4 * BIG);
	p = map_adopt(3 * BIG);
	fill_pattern(p, 3 * BIG, 17);
	pf[0] = start(p, BIG, dev);
	cr_assert_eq(hmm_device_close(dev), 0);
	r = hmm_prefetch_release(pf[0]);
	cr_assert(r == (long)(BIG / PG) || r == -ENODEV, "%ld", r);
	assert_all_loc(p, 3 * BIG, HMM_LOC_SYSTEM, NULL);
	assert_pattern(p, 3 * BIG, 17);

	dev = open_sim(4 * BIG);
	for (int i = 0; i < 3; i++)
		pf[i] = start(p + i * BIG, BIG, dev);
	cr_assert_eq(hmm_fini(), 0);
	for (int i = 0; i < 3; i++) {
		r = hmm_prefetch_release(pf[i]);
		cr_log_info("prefetch %d: %ld", i, r);
		cr_assert(r == (long)(BIG / PG) || r == -ECANCELED ||
				  r == -ENODEV,
			  "prefetch %d: %ld", i, r);
	}
	assert_pattern(p, 3 * BIG, 17);
}

/* In the child of fork, the parent's pending prefetches complete with
 * -ECANCELED (or their result, if done before the fork). */
Test(prefetch, fork_child, .timeout = T_LONG)
{
	hmm_device_t *dev;
	hmm_prefetch_t *pf;
	char *p;
	pid_t pid;
	int status;

	need_hmm();
	dev = open_sim(2 * BIG);
	p = map_adopt(BIG);
	fill_pattern(p, BIG, 23);
	pf = start(p, BIG, dev);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		long r = hmm_prefetch_release(pf);
		if (r != -ECANCELED && r != (long)(BIG / PG))
			_exit(2);
		_exit(pattern_mismatch(p, BIG, 23, 0) < 0 ? 0 : 3);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "child status %#x", status);
	cr_assert_eq(hmm_prefetch_release(pf), (long)(BIG / PG));
	assert_pattern(p, BIG, 23);
}
