/* SPDX-License-Identifier: MIT */
/*
 * Races found in review, each a regression test: a migration must touch
 * only the pages it collected; a first-touch fill must not race a
 * migration into a lost write; an application's MADV_DONTNEED must not be
 * taken for libhmm's own drop; a failed madvise must not lose device data.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>

#include "common.h"

/* ---- a migration's span ----------------------------------------------- */

struct span_ctx {
	uint64_t *buf;
	size_t npages;
	atomic_int go, stop;
	atomic_long bad;
};

static uint64_t span_val(size_t page)
{
	return page * 1000 + 7;
}

/* Fault the odd pages back, one by one, whenever told to. */
static void *odd_toucher(void *arg)
{
	struct span_ctx *c = arg;

	while (!atomic_load(&c->stop)) {
		if (!atomic_load(&c->go)) {
			sched_yield();
			continue;
		}
		for (size_t i = 1; i < c->npages; i += 2)
			if (c->buf[i * WORDS_PER_PAGE] != span_val(i))
				atomic_fetch_add(&c->bad, 1);
		atomic_store(&c->go, 0);
	}
	return NULL;
}

/*
 * Even pages in system memory, odd pages on the device; a migration of the
 * whole range races CPU reads of the odd pages.  The migration must not
 * drop or protect the odd pages, which it did not collect.
 */
Test(races, migration_touches_only_its_pages, .timeout = T_LONG)
{
	struct span_ctx c = { .npages = 512 };
	const size_t len = c.npages * PG;
	hmm_device_t *dev;
	pthread_t th;

	need_hmm();
	cr_assert_eq(hmm_option_set("FAULT_AROUND", 0), 0);
	dev = open_sim(len);
	c.buf = map_adopt(len);
	for (size_t i = 0; i < c.npages; i++)
		for (size_t w = 0; w < WORDS_PER_PAGE; w++)
			c.buf[i * WORDS_PER_PAGE + w] = span_val(i);
	cr_assert_eq(pthread_create(&th, NULL, odd_toucher, &c), 0);
	for (int it = 0; it < 60; it++) {
		cr_assert_eq(hmm_migrate(c.buf, len, dev, 0) >= 0, 1);
		for (size_t i = 0; i < c.npages; i += 2)
			(void)*(volatile uint64_t *)&c.buf[i * WORDS_PER_PAGE];
		atomic_store(&c.go, 1);
		cr_assert_geq(hmm_migrate(c.buf, len, dev, 0), 0);
		while (atomic_load(&c.go))
			sched_yield();
		cr_assert_geq(hmm_migrate(c.buf, len, NULL, 0), 0);
		for (size_t i = 0; i < c.npages; i++)
			cr_assert_eq(c.buf[i * WORDS_PER_PAGE], span_val(i),
				     "iteration %d: page %zu lost", it, i);
	}
	atomic_store(&c.stop, 1);
	pthread_join(th, NULL);
	cr_assert_eq(atomic_load(&c.bad), 0, "the toucher read bad data");
}

/* ---- first touches and drops racing migrations ------------------------ */

struct mig_ctx {
	void *buf;
	size_t len;
	hmm_device_t *dev;
	atomic_int stop;
};

static void *migrate_loop(void *arg)
{
	struct mig_ctx *m = arg;

	while (!atomic_load(&m->stop))
		hmm_migrate(m->buf, m->len, m->dev, 0);
	return NULL;
}

/*
 * The CPU drops a page with a raw MADV_DONTNEED (no interposition), reads
 * it (zeros), writes it and reads the write back, while another thread
 * migrates the whole range to the device over and over.  No write may be
 * lost, no drop ignored, no stale data seen.
 */
static void drop_write_race(size_t npages, long fault_around, long iters)
{
	struct mig_ctx m = { .len = npages * PG };
	pthread_t th;
	uint64_t *w;

	need_hmm();
	cr_assert_eq(hmm_option_set("FAULT_AROUND", fault_around), 0);
	m.dev = open_sim(m.len);
	m.buf = map_adopt(m.len);
	w = m.buf;
	cr_assert_eq(pthread_create(&th, NULL, migrate_loop, &m), 0);
	for (long it = 1; it <= iters; it++) {
		size_t pg = (size_t)it % npages;
		volatile uint64_t *p = &w[pg * WORDS_PER_PAGE];
		if (it > (long)npages)
			cr_assert_eq(p[0], (uint64_t)(it - (long)npages),
				     "iteration %ld: page %zu lost its write",
				     it, pg);
		cr_assert_eq(syscall(SYS_madvise, (void *)p, PG, MADV_DONTNEED),
			     0);
		cr_assert_eq(p[1], 0, "iteration %ld: stale data after a "
				      "drop", it);
		p[0] = (uint64_t)it;
		p[1] = (uint64_t)it;
		usleep(20);
		cr_assert_eq(p[0], (uint64_t)it, "iteration %ld: write lost", it);
	}
	atomic_store(&m.stop, 1);
	pthread_join(th, NULL);
}

Test(races, raw_dontneed_and_writes_vs_migrations_1_page, .timeout = T_LONG)
{
	drop_write_race(1, 0, 20000);
}

Test(races, raw_dontneed_and_writes_vs_migrations_8_pages, .timeout = T_LONG)
{
	drop_write_race(8, 0, 20000);
}

Test(races, raw_dontneed_and_writes_vs_migrations_fault_around,
     .timeout = T_LONG)
{
	drop_write_race(8, 64 << 10, 20000);
}

/* ---- madvise that fails ------------------------------------------------ */

/* MADV_REMOVE is refused on private anonymous memory: nothing may be
 * dropped, device copies included. */
Test(races, failed_madvise_keeps_device_data, .timeout = T_SHORT)
{
	const size_t len = 16 * PG;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0xfee1);
	assert_migrate(p, len, dev, 16);
	cr_assert_eq(madvise(p, len, MADV_REMOVE), -1);
	cr_assert_eq(errno, EINVAL);
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);
	assert_pattern(p, len, 0xfee1);
}

/* An interposed MADV_DONTNEED on device-resident pages drops them at once:
 * the device memory is free and the device reads zeros, when madvise
 * returns (no waiting for an event). */
Test(races, interposed_dontneed_is_synchronous, .timeout = T_SHORT)
{
	const size_t len = 16 * PG;
	hmm_device_t *dev;
	char *p, buf[PG];
	size_t used = 1;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0x1234);
	assert_migrate(p, len, dev, 16);
	cr_assert_eq(madvise(p, len, MADV_DONTNEED), 0);
	cr_assert_eq(hmm_device_mem_usage(dev, &used, NULL), 0);
	cr_assert_eq(used, 0);
	assert_all_loc(p, len, HMM_LOC_SYSTEM, NULL);
	memset(buf, 0xee, sizeof(buf));
	cr_assert_eq(hmm_sim_read(dev, p + 3 * PG, buf, PG, NULL), 0);
	assert_zero(buf, PG);
	assert_zero(p, len);
}
