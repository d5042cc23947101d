/* SPDX-License-Identifier: MIT */
/*
 * Concurrency: CPU threads faulting, device engines and migrations at once.
 * Threads never call cr_assert; they count errors for the test to check.
 */
#include <pthread.h>

#include "common.h"

enum { T = 4 };

struct worker {
	pthread_t th;
	int id;
	char *base;
	size_t len;
	uint64_t seed;
	hmm_device_t *dev;
	pthread_barrier_t *bar;
	volatile int *stop;
	long errors, first_bad, ops;
	int first_ret;
	bool allow_enomem;	/* migrator: the device may be full */
};

static void note_bad(struct worker *w, long where, int ret)
{
	if (w->errors++ == 0) {
		w->first_bad = where;
		w->first_ret = ret;
	}
}

static void check_workers(struct worker *w, int n)
{
	for (int i = 0; i < n; i++)
		cr_assert_eq(w[i].errors, 0,
			     "thread %d: %ld errors, first at %ld (ret %d)", i,
			     w[i].errors, w[i].first_bad, w[i].first_ret);
}

static void start(struct worker *w, void *(*fn)(void *))
{
	cr_assert_eq(pthread_create(&w->th, NULL, fn, w), 0);
}

/* Every thread reads the whole range. */
static void *reader(void *arg)
{
	struct worker *w = arg;

	pthread_barrier_wait(w->bar);
	/* Start at different pages so that the threads collide. */
	size_t npages = w->len / PG;
	for (size_t k = 0; k < npages; k++) {
		size_t pg = (k + (size_t)w->id * 7) % npages;
		long bad = pattern_mismatch(w->base + pg * PG, PG, w->seed,
					    pg * WORDS_PER_PAGE);
		if (bad >= 0)
			note_bad(w, (long)pg, 0);
	}
	return NULL;
}

Test(concurrency, readers_of_the_same_device_pages, .timeout = T_SHORT)
{
	const size_t len = 256 * PG;
	struct worker w[T];
	pthread_barrier_t bar;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0xc0c0);
	pthread_barrier_init(&bar, NULL, T);
	for (int round = 0; round < 5; round++) {
		assert_migrate(p, len, dev, len / PG);
		for (int i = 0; i < T; i++) {
			w[i] = (struct worker){ .id = i, .base = p, .len = len,
						.seed = 0xc0c0, .bar = &bar };
			start(&w[i], reader);
		}
		for (int i = 0; i < T; i++)
			pthread_join(w[i].th, NULL);
		check_workers(w, T);
		settle(p, len);
		assert_all_loc(p, len, HMM_LOC_SYSTEM, NULL);
		cr_assert_eq(wait_dev_used(dev, 0), 0);
	}
	pthread_barrier_destroy(&bar);
}

/* Each thread writes then checks its own slice. */
static void *slice_writer(void *arg)
{
	struct worker *w = arg;
	char *s = w->base + (size_t)w->id * w->len;
	uint64_t *word = (uint64_t *)s;

	pthread_barrier_wait(w->bar);
	for (size_t i = 0; i < w->len / 8; i += WORDS_PER_PAGE / 2)
		word[i] = (i + (size_t)w->id * w->len / 8) ^ w->seed;
	for (size_t i = 0; i < w->len / 8; i++) {
		uint64_t want = (i + (size_t)w->id * w->len / 8) ^
				((i % (WORDS_PER_PAGE / 2)) ? 0x600d : w->seed);
		if (word[i] != want) {
			note_bad(w, (long)i, 0);
			break;
		}
	}
	return NULL;
}

/* One round of T threads writing their slices of @p (T * slice bytes),
 * all on @dev first: every page comes home, with the right data. */
static void slice_writers_round(hmm_device_t *dev, char *p, size_t slice,
				uint64_t round, pthread_barrier_t *bar)
{
	const size_t len = T * slice;
	struct worker w[T];

	fill_pattern(p, len, 0x600d);
	assert_migrate(p, len, dev, len / PG);
	for (int i = 0; i < T; i++) {
		w[i] = (struct worker){ .id = i, .base = p, .len = slice,
					.seed = round, .bar = bar };
		start(&w[i], slice_writer);
	}
	for (int i = 0; i < T; i++)
		pthread_join(w[i].th, NULL);
	check_workers(w, T);
	settle(p, len);
	cr_assert_eq(wait_dev_used(dev, 0), 0);
}

Test(concurrency, threads_fault_different_pages, .timeout = T_SHORT)
{
	const size_t slice = 64 * PG, len = T * slice;
	pthread_barrier_t bar;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = alloc_managed(len);
	pthread_barrier_init(&bar, NULL, T);
	for (uint64_t round = 1; round <= 5; round++)
		slice_writers_round(dev, p, slice, round, &bar);
	pthread_barrier_destroy(&bar);
}

/* A device engine reading the range over and over until told to stop. */
static void *engine_reader(void *arg)
{
	struct worker *w = arg;
	char *buf = malloc(w->len);

	if (!buf) {
		note_bad(w, -1, -ENOMEM);
		return NULL;
	}
	pthread_barrier_wait(w->bar);
	do {
		int r = hmm_sim_read(w->dev, w->base, buf, w->len, NULL);

		w->ops++;
		if (r != 0)
			note_bad(w, -1, r);
		else if (pattern_mismatch(buf, w->len, w->seed, 0) >= 0)
			note_bad(w, pattern_mismatch(buf, w->len, w->seed, 0), 0);
	} while (!*w->stop);
	free(buf);
	return NULL;
}

Test(concurrency, engine_reads_while_cpu_faults_back, .timeout = T_SHORT)
{
	const size_t len = 1024 * PG;
	struct worker e;
	pthread_barrier_t bar;
	volatile int stop = 0;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0xe1);
	pthread_barrier_init(&bar, NULL, 2);
	for (int round = 0; round < 3; round++) {
		assert_migrate(p, len, dev, len / PG);
		stop = 0;
		e = (struct worker){ .base = p, .len = len, .seed = 0xe1,
				     .dev = dev, .bar = &bar, .stop = &stop };
		start(&e, engine_reader);
		pthread_barrier_wait(&bar);
		/* The CPU pulls pages back while the engine reads them. */
		for (size_t pg = 0; pg < len / PG; pg += 3)
			cr_assert_eq(pattern_mismatch(p + pg * PG, PG, 0xe1,
						      pg * WORDS_PER_PAGE), -1,
				     "page %zu", pg);
		assert_pattern(p, len, 0xe1);
		stop = 1;
		pthread_join(e.th, NULL);
		check_workers(&e, 1);
		cr_assert_gt(e.ops, 0);
		settle(p, len);
	}
	pthread_barrier_destroy(&bar);
}

/* The engine fills even pages one by one while the CPU writes odd ones. */
static void *engine_filler(void *arg)
{
	struct worker *w = arg;

	pthread_barrier_wait(w->bar);
	for (size_t pg = 0; pg < w->len / PG; pg += 2) {
		int r = hmm_sim_fill64(w->dev, w->base + pg * PG, w->seed + pg,
				       PG, NULL);
		if (r != 0)
			note_bad(w, (long)pg, r);
	}
	return NULL;
}

Test(concurrency, engine_and_cpu_write_interleaved_pages, .timeout = T_SHORT)
{
	const size_t len = 512 * PG;
	struct worker e;
	pthread_barrier_t bar;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0x11);
	assert_migrate(p, len, dev, len / PG);
	pthread_barrier_init(&bar, NULL, 2);
	e = (struct worker){ .base = p, .len = len, .seed = 0x5000, .dev = dev,
			     .bar = &bar };
	start(&e, engine_filler);
	pthread_barrier_wait(&bar);
	for (size_t pg = 1; pg < len / PG; pg += 2)
		fill_pattern(p + pg * PG, PG, 0x7000 + pg);
	pthread_join(e.th, NULL);
	check_workers(&e, 1);
	for (size_t pg = 0; pg < len / PG; pg++) {
		const uint64_t *w = (const uint64_t *)(p + pg * PG);

		if (pg % 2 == 0) {
			for (size_t i = 0; i < WORDS_PER_PAGE; i++)
				cr_assert_eq(w[i], 0x5000 + pg, "page %zu word %zu",
					     pg, i);
		} else {
			cr_assert_eq(pattern_mismatch(w, PG, 0x7000 + pg, 0), -1,
				     "page %zu", pg);
		}
	}
	pthread_barrier_destroy(&bar);
}

/* Migrates the range back and forth until told to stop. */
static void *migrator(void *arg)
{
	struct worker *w = arg;

	pthread_barrier_wait(w->bar);
	do {
		long r = hmm_migrate(w->base, w->len, w->ops % 2 ? NULL : w->dev,
				     0);
		if (r < 0 && !(r == -ENOMEM && w->allow_enomem))
			note_bad(w, w->ops, (int)r);
		w->ops++;
	} while (!*w->stop);
	return NULL;
}

static void *loop_reader(void *arg)
{
	struct worker *w = arg;

	pthread_barrier_wait(w->bar);
	do {
		long bad = pattern_mismatch(w->base, w->len, w->seed, 0);

		if (bad >= 0)
			note_bad(w, bad, 0);
		w->ops++;
	} while (!*w->stop);
	return NULL;
}

Test(concurrency, migrations_race_cpu_readers, .timeout = T_SHORT)
{
	const size_t len = 128 * PG;
	struct worker m, r[2];
	pthread_barrier_t bar;
	volatile int stop = 0;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	/* Twice the range: device pages still on their way back must not
	 * make the next migration fail with ENOMEM. */
	dev = open_sim(2 * len);
	p = map_adopt(len);
	fill_pattern(p, len, 0x3ace);
	pthread_barrier_init(&bar, NULL, 4);
	m = (struct worker){ .base = p, .len = len, .dev = dev, .bar = &bar,
			     .stop = &stop };
	start(&m, migrator);
	for (int i = 0; i < 2; i++) {
		r[i] = (struct worker){ .id = i, .base = p, .len = len,
					.seed = 0x3ace, .bar = &bar,
					.stop = &stop };
		start(&r[i], loop_reader);
	}
	pthread_barrier_wait(&bar);
	usleep(1500 * 1000);
	stop = 1;
	pthread_join(m.th, NULL);
	for (int i = 0; i < 2; i++)
		pthread_join(r[i].th, NULL);
	check_workers(&m, 1);
	check_workers(r, 2);
	cr_assert_gt(m.ops, 1);
	settle(p, len);
	size_t on_dev = count_loc(p, len, HMM_LOC_DEVICE);
	assert_migrate(p, len, NULL, on_dev);
	cr_assert_eq(dev_used(dev), 0);
	assert_pattern(p, len, 0x3ace);
	pthread_barrier_destroy(&bar);
}

/* Each thread rewrites its own page with new values and checks them. */
static void *page_writer(void *arg)
{
	struct worker *w = arg;
	uint64_t *word = (uint64_t *)(w->base + (size_t)w->id * PG);

	pthread_barrier_wait(w->bar);
	for (uint64_t v = 1; !*w->stop; v++) {
		for (size_t i = 0; i < WORDS_PER_PAGE; i += 64)
			word[i] = v + i;
		for (size_t i = 0; i < WORDS_PER_PAGE; i += 64)
			if (word[i] != v + i)
				note_bad(w, (long)v, 0);
		w->ops++;
	}
	return NULL;
}

/*
 * @tight: the device holds exactly the range, so migrations may fail with
 * ENOMEM while pages are on their way back; no write may be lost either way.
 */
static void writers_scenario(bool use_alloc, bool tight)
{
	const size_t len = 2 * PG;
	struct worker m, wr[2];
	pthread_barrier_t bar;
	volatile int stop = 0;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(tight ? len : 4 * len);
	p = use_alloc ? alloc_managed(len) : map_adopt(len);
	pthread_barrier_init(&bar, NULL, 4);
	m = (struct worker){ .base = p, .len = len, .dev = dev, .bar = &bar,
			     .stop = &stop, .allow_enomem = tight };
	start(&m, migrator);
	for (int i = 0; i < 2; i++) {
		wr[i] = (struct worker){ .id = i, .base = p, .bar = &bar,
					 .stop = &stop };
		start(&wr[i], page_writer);
	}
	pthread_barrier_wait(&bar);
	usleep(1500 * 1000);
	stop = 1;
	pthread_join(m.th, NULL);
	for (int i = 0; i < 2; i++)
		pthread_join(wr[i].th, NULL);
	check_workers(&m, 1);
	check_workers(wr, 2);
	for (int i = 0; i < 2; i++) {
		uint64_t *word = (uint64_t *)(p + i * PG);
		uint64_t v = (uint64_t)wr[i].ops;

		cr_assert_gt(v, 0);
		for (size_t k = 0; k < WORDS_PER_PAGE; k += 64)
			cr_assert_eq(word[k], v + k, "page %d word %zu", i, k);
	}
}

Test(concurrency, migrations_race_cpu_writers_allocated, .timeout = T_SHORT)
{
	writers_scenario(true, false);
}

Test(concurrency, migrations_race_cpu_writers_adopted, .timeout = T_SHORT)
{
	writers_scenario(false, false);
}

Test(concurrency, migrations_race_cpu_writers_device_full, .timeout = T_SHORT)
{
	writers_scenario(true, true);
}

/* Several threads migrate their own ranges to one device at once. */
static void *own_migrator(void *arg)
{
	struct worker *w = arg;
	char *s = w->base + (size_t)w->id * w->len;

	pthread_barrier_wait(w->bar);
	for (int k = 0; k < 20; k++) {
		long r = hmm_migrate(s, w->len, k % 2 ? NULL : w->dev, 0);

		if (r != (long)(w->len / PG))
			note_bad(w, k, (int)r);
	}
	return NULL;
}

Test(concurrency, parallel_migrations_of_different_ranges, .timeout = T_SHORT)
{
	const size_t slice = 32 * PG, len = T * slice;
	struct worker w[T];
	pthread_barrier_t bar;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0x9a);
	pthread_barrier_init(&bar, NULL, T);
	for (int i = 0; i < T; i++) {
		w[i] = (struct worker){ .id = i, .base = p, .len = slice,
					.dev = dev, .bar = &bar };
		start(&w[i], own_migrator);
	}
	for (int i = 0; i < T; i++)
		pthread_join(w[i].th, NULL);
	check_workers(w, T);
	cr_assert_eq(dev_used(dev), 0);
	cr_assert_eq(stat_of("device_bytes_in_use"), 0);
	assert_pattern(p, len, 0x9a);
}

/* Threads allocating, migrating, checking and freeing at once. */
static void *alloc_cycler(void *arg)
{
	struct worker *w = arg;

	pthread_barrier_wait(w->bar);
	for (int k = 0; k < 30; k++) {
		size_t len = (size_t)(1 + (w->id + k) % 8) * PG;
		uint64_t seed = ((uint64_t)w->id << 32) | (uint64_t)k;
		void *p = NULL;
		int r = hmm_mem_alloc(len, 0, &p);

		if (r != 0) {
			note_bad(w, k, r);
			continue;
		}
		if (zero_mismatch(p, len) != -1)
			note_bad(w, k, 1);
		fill_pattern(p, len, seed);
		long m = hmm_migrate(p, len, w->dev, 0);
		if (m != (long)(len / PG))
			note_bad(w, k, (int)m);
		if (pattern_mismatch(p, len, seed, 0) != -1)
			note_bad(w, k, 2);
		r = hmm_mem_free(p, len);
		if (r != 0)
			note_bad(w, k, r);
	}
	return NULL;
}

Test(concurrency, parallel_alloc_migrate_free, .timeout = T_SHORT)
{
	struct worker w[T];
	pthread_barrier_t bar;
	hmm_device_t *dev;

	need_hmm();
	dev = open_sim(T * 16 * PG);
	pthread_barrier_init(&bar, NULL, T);
	for (int i = 0; i < T; i++) {
		w[i] = (struct worker){ .id = i, .dev = dev, .bar = &bar };
		start(&w[i], alloc_cycler);
	}
	for (int i = 0; i < T; i++)
		pthread_join(w[i].th, NULL);
	check_workers(w, T);
	cr_assert_eq(wait_dev_used(dev, 0), 0);
	pthread_barrier_destroy(&bar);
}

/*
 * Fault workers: single-page faults (no fault-around) of four threads at
 * once are handed to workers when several wait together; the data stays
 * right, and with HMM_FAULT_WORKERS=0 nothing is handed over.
 */
static void single_page_faults(long workers)
{
	const size_t slice = 256 * PG, len = T * slice;
	pthread_barrier_t bar;
	hmm_device_t *dev;
	uint64_t off0;
	char *p;

	need_hmm();
	cr_assert_eq(hmm_option_set("FAULT_AROUND", 0), 0);
	cr_assert_eq(hmm_option_set("FAULT_WORKERS", workers), 0);
	dev = open_sim(len);
	p = alloc_managed(len);
	pthread_barrier_init(&bar, NULL, T);
	off0 = stat_of("faultbacks_offloaded");
	for (uint64_t round = 1; round <= 40; round++) {
		slice_writers_round(dev, p, slice, round, &bar);
		if (workers && round >= 5 &&
		    stat_of("faultbacks_offloaded") > off0)
			break;
	}
	pthread_barrier_destroy(&bar);
	if (workers)
		cr_assert_gt(stat_of("faultbacks_offloaded"), off0,
			     "no fault-back was handed to a worker in 40 "
			     "rounds of four threads faulting");
	else
		cr_assert_eq(stat_of("faultbacks_offloaded"), off0);
}

Test(concurrency, fault_workers_share_fault_backs, .timeout = T_LONG)
{
	single_page_faults(2);
}

Test(concurrency, fault_workers_off, .timeout = T_LONG)
{
	single_page_faults(0);
}
