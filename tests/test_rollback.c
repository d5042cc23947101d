/* SPDX-License-Identifier: MIT */
/*
 * Failures in the middle of a migration leave every page where it was, with
 * its data.  A test driver ("flaky") registered through hmm_driver.h fails
 * its copies on command; the sim device provides the races.
 */
#include <pthread.h>
#include <stdatomic.h>

#include <hmm/hmm_driver.h>

#include "common.h"

/* ---- the flaky driver: host memory, copies that fail on request ------ */

static char *flaky_pool;
static size_t flaky_pages;
static _Atomic long copy_budget = -1; /* pages that may still be copied;
				       * -1: no limit */
static _Atomic long zero_budget = -1;

static int flaky_init(hmm_device_t *dev, const struct hmm_device_attr *attr)
{
	flaky_pages = attr && attr->mem_size ? attr->mem_size / PG : 256;
	flaky_pool = calloc(flaky_pages, PG);
	if (!flaky_pool)
		return -ENOMEM;
	dev->priv = flaky_pool;
	dev->mem_pages = flaky_pages;
	return 0;
}

static void flaky_fini(hmm_device_t *dev)
{
	free(dev->priv);
	dev->priv = NULL;
}

static bool spend(_Atomic long *budget, size_t n)
{
	long b = atomic_load(budget);

	if (b < 0)
		return true;
	if ((size_t)b < n)
		return false;
	atomic_fetch_sub(budget, (long)n);
	return true;
}

static int flaky_copy(hmm_device_t *dev, enum hmm_copy_dir dir,
		      const struct hmm_copy_desc *d, size_t n)
{
	(void)dev;
	if (!spend(&copy_budget, n))
		return -EIO;
	for (size_t i = 0; i < n; i++) {
		char *dp = flaky_pool + d[i].dpfn * PG;
		if (dir == HMM_COPY_TO_DEVICE)
			memcpy(dp, d[i].host, PG);
		else
			memcpy(d[i].host, dp, PG);
	}
	return 0;
}

static int flaky_zero(hmm_device_t *dev, const uint64_t *dpfns, size_t n)
{
	(void)dev;
	if (!spend(&zero_budget, n))
		return -EIO;
	for (size_t i = 0; i < n; i++)
		memset(flaky_pool + dpfns[i] * PG, 0, PG);
	return 0;
}

static const struct hmm_driver_ops flaky_ops = {
	.name = "flaky",
	.init = flaky_init,
	.fini = flaky_fini,
	.copy = flaky_copy,
	.zero = flaky_zero,
	/* no host_ptr: copies back go through libhmm's bounce buffer */
};

static hmm_device_t *open_flaky(size_t pages)
{
	struct hmm_device_attr attr = { .mem_size = pages * PG };
	hmm_device_t *dev = NULL;

	cr_assert_eq(hmm_driver_register(&flaky_ops), 0);
	cr_assert_eq(hmm_driver_register(&flaky_ops), -EEXIST);
	cr_assert_eq(hmm_device_open("flaky", &attr, &dev), 0);
	return dev;
}

static size_t used(hmm_device_t *dev)
{
	size_t u = 0;

	cr_assert_eq(hmm_device_mem_usage(dev, &u, NULL), 0);
	return u;
}

Test(rollback, copy_error_to_device_changes_nothing, .timeout = T_SHORT)
{
	const size_t n = 64, len = n * PG;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_flaky(256);
	p = map_adopt(len);
	fill_pattern(p, len, 0x51);
	atomic_store(&copy_budget, 0);
	cr_assert_eq(hmm_migrate(p, len, dev, 0), -EIO);
	cr_assert_eq(used(dev), 0, "device pages leaked by a failed migration");
	assert_all_loc(p, len, HMM_LOC_SYSTEM, NULL);
	assert_pattern(p, len, 0x51);
	/* Pages are writable again (the write protection was lifted). */
	fill_pattern(p, len, 0x52);
	assert_pattern(p, len, 0x52);
	uint64_t fails = 0;
	cr_assert_eq(hmm_stat_get("migration_failures", &fails), 0);
	cr_assert_geq(fails, 1);
	/* And a later migration works. */
	atomic_store(&copy_budget, -1);
	cr_assert_eq(hmm_migrate(p, len, dev, 0), (long)n);
	assert_pattern(p, len, 0x52);
}

Test(rollback, zero_error_to_device_changes_nothing, .timeout = T_SHORT)
{
	const size_t len = 64 * PG, written = 4 * PG;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_flaky(256);
	p = map_adopt(len);
	/* Only the first pages are written; the second half stays untouched
	 * (beyond any fault-around window), so it migrates as zero pages. */
	fill_pattern(p, written, 0x61);
	atomic_store(&zero_budget, 0);
	cr_assert_eq(hmm_migrate(p, len, dev, 0), -EIO);
	cr_assert_eq(used(dev), 0);
	assert_all_loc(p, len, HMM_LOC_SYSTEM, NULL);
	assert_pattern(p, written, 0x61);
	assert_zero(p + written, len - written);
}

/* A failure in the second block: the first stays moved, the second stays
 * in system memory, nothing is lost either way. */
Test(rollback, failure_in_a_later_block, .timeout = T_SHORT)
{
	const size_t len = 2 * (2 << 20);
	hmm_device_t *dev;
	char *raw, *p;

	need_hmm();
	dev = open_flaky(1024);
	/* 2 MiB aligned, so that the range is exactly two blocks. */
	raw = map_anon(len + (2 << 20));
	p = (char *)(((uintptr_t)raw + (2 << 20) - 1) & ~(uintptr_t)((2 << 20) - 1));
	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	fill_pattern(p, len, 0x71);
	atomic_store(&copy_budget, 512);
	cr_assert_eq(hmm_migrate(p, len, dev, 0), -EIO);
	assert_all_loc(p, len / 2, HMM_LOC_DEVICE, dev);
	assert_all_loc(p + len / 2, len / 2, HMM_LOC_SYSTEM, NULL);
	cr_assert_eq(used(dev), 512);
	atomic_store(&copy_budget, -1);
	assert_pattern(p, len, 0x71);
}

/* Copying back fails: the pages stay on the device, with their data, and
 * come back once the device works again. */
Test(rollback, copy_error_to_system_keeps_device_data, .timeout = T_SHORT)
{
	const size_t n = 32, len = n * PG;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_flaky(256);
	p = map_adopt(len);
	fill_pattern(p, len, 0x81);
	cr_assert_eq(hmm_migrate(p, len, dev, 0), (long)n);
	atomic_store(&copy_budget, 0);
	cr_assert_lt(hmm_migrate(p, len, NULL, 0), 0);
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);
	cr_assert_eq(used(dev), n);
	atomic_store(&copy_budget, -1);
	cr_assert_eq(hmm_migrate(p, len, NULL, 0), (long)n);
	assert_pattern(p, len, 0x81);
	cr_assert_eq(used(dev), 0);
}

/* ---- races with the application dropping pages ----------------------- */

struct dropper {
	char *p;
	size_t len;
	volatile int stop;
	long rounds;
};

static void *drop_loop(void *arg)
{
	struct dropper *d = arg;

	while (!d->stop) {
		madvise(d->p, d->len, MADV_DONTNEED);
		d->rounds++;
		usleep(50);
	}
	return NULL;
}

/*
 * MADV_DONTNEED racing migrations both ways: every page reads either its
 * pattern word or zero (never garbage, never another page's data), no
 * device page leaks, nothing hangs.
 */
Test(rollback, dontneed_races_migrations, .timeout = T_SHORT)
{
	const size_t n = 64, len = n * PG;
	struct dropper d = { 0 };
	hmm_device_t *dev;
	pthread_t th;
	char *p;

	need_hmm();
	dev = open_sim(4 * len);
	p = map_adopt(len);
	d.p = p;
	d.len = len;
	cr_assert_eq(pthread_create(&th, NULL, drop_loop, &d), 0);
	for (int round = 0; round < 300; round++) {
		fill_pattern(p, len, 0x91);
		long r = hmm_migrate(p, len, round % 2 ? NULL : dev, 0);
		cr_assert_geq(r, 0, "round %d: hmm_migrate = %ld", round, r);
		const uint64_t *w = (const uint64_t *)p;
		for (size_t i = 0; i < len / 8; i++)
			cr_assert(w[i] == 0 || w[i] == (i ^ 0x91),
				  "round %d word %zu = %#lx", round, i,
				  (unsigned long)w[i]);
	}
	d.stop = 1;
	pthread_join(th, NULL);
	cr_assert_gt(d.rounds, 0);
	hmm_migrate(p, len, NULL, 0);
	cr_assert_eq(used(dev), 0, "device pages leaked");
}
