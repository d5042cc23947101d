/* SPDX-License-Identifier: MIT */
/*
 * Exclusive access for device atomics (hmm_exclusive_begin/end), in its
 * two modes: read-only CPU (reads go on and see current data, writes wait
 * for the end of the hold or its timeout) and revoke (any CPU access ends
 * the hold).  No CPU write and no device atomic is ever lost: many rounds
 * of CPU writers and device atomics on two devices end with exact totals.
 */
#include <pthread.h>
#include <stdatomic.h>

#include <hmm/hmm_driver.h>

#include "common.h"

#define NPAGES 8
#define NWORDS (NPAGES * WORDS_PER_PAGE)

static uint64_t stat(const char *name)
{
	uint64_t v = 0;

	cr_assert_eq(hmm_stat_get(name, &v), 0, "hmm_stat_get(%s)", name);
	return v;
}

static void need_wp(void)
{
	need_hmm();
	if (!(hmm_caps() & HMM_CAP_WP))
		cr_skip_test("no userfaultfd write-protection here");
}

/* A fresh sim device (*dev) and NPAGES adopted pages it holds in @mode. */
static uint64_t *held_range(hmm_device_t **dev, int mode, long timeout_ms)
{
	uint64_t *p;

	*dev = open_sim(0);
	p = map_adopt(NPAGES * PG);
	cr_assert_eq(hmm_exclusive_begin(p, NPAGES * PG, *dev, mode,
					 timeout_ms), 0);
	return p;
}

/* ---- read-only CPU ---------------------------------------------------------- */

Test(exclusive, readonly_reads_see_the_device_atomics, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	uint64_t *p, old;

	need_wp();
	p = held_range(&dev, HMM_EXCL_READONLY, 0);
	assert_all_loc(p, NPAGES * PG, HMM_LOC_DEVICE, dev);
	for (uint64_t k = 1; k <= 50; k++) {
		cr_assert_eq(hmm_sim_atomic_add(dev, &p[3], 2, &old), 0);
		cr_assert_eq(old, 2 * (k - 1));
		/* The CPU reads the current value (the page comes home,
		 * write-protected; the next atomic takes it back). */
		cr_assert_eq(((volatile uint64_t *)p)[3], 2 * k, "round %lu",
			     (unsigned long)k);
	}
	cr_assert_eq(hmm_exclusive_end(p, NPAGES * PG, dev), 0,
		     "the hold was never revoked");
	p[3] += 1; /* writes work again */
	cr_assert_eq(p[3], 101);
}

struct writer {
	uint64_t *word;
	atomic_bool done;
	uint64_t took_ms;
};

static void *writer_main(void *arg);

/* A thread that adds 1000 to @word with a CPU atomic. */
static void start_writer(struct writer *w, uint64_t *word, pthread_t *t)
{
	w->word = word;
	cr_assert_eq(pthread_create(t, NULL, writer_main, w), 0);
}

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	uint64_t t0 = now_ms();

	__atomic_fetch_add(w->word, 1000, __ATOMIC_SEQ_CST);
	w->took_ms = now_ms() - t0;
	atomic_store(&w->done, true);
	return NULL;
}

Test(exclusive, readonly_cpu_write_waits_for_the_end, .timeout = T_SHORT)
{
	struct writer w = { 0 };
	hmm_device_t *dev;
	uint64_t *p, old;
	pthread_t t;

	need_wp();
	dev = open_sim(0);
	p = map_adopt(NPAGES * PG);
	p[5] = 7;
	cr_assert_eq(hmm_exclusive_begin(p, NPAGES * PG, dev,
					 HMM_EXCL_READONLY, 0), 0);
	cr_assert_eq(p[5], 7, "reads go on");
	start_writer(&w, &p[5], &t);
	for (int i = 0; i < 20; i++) {
		cr_assert_eq(hmm_sim_atomic_add(dev, &p[5], 1, &old), 0);
		usleep(10000);
	}
	cr_assert(!atomic_load(&w.done), "a CPU write went through the hold");
	cr_assert_eq(((volatile uint64_t *)p)[5], 27, "reads see the atomics");
	cr_assert_eq(hmm_exclusive_end(p, NPAGES * PG, dev), 0);
	pthread_join(t, NULL);
	cr_assert_geq(w.took_ms, 150, "the write waited %lu ms",
		      (unsigned long)w.took_ms);
	cr_assert_eq(p[5], 1027);
	cr_assert_geq(stat("cpu_writes_held"), 1);
}

Test(exclusive, readonly_timeout_revokes_the_hold, .timeout = T_SHORT)
{
	struct writer w = { 0 };
	hmm_device_t *dev;
	uint64_t *p, old;
	pthread_t t;

	need_wp();
	p = held_range(&dev, HMM_EXCL_READONLY, 100);
	cr_assert_eq(hmm_sim_atomic_add(dev, &p[9], 5, &old), 0);
	start_writer(&w, &p[9], &t);
	pthread_join(t, NULL);
	cr_assert_geq(w.took_ms, 90, "the write waited only %lu ms",
		      (unsigned long)w.took_ms);
	cr_assert_lt(w.took_ms, 5000, "the write waited %lu ms",
		     (unsigned long)w.took_ms);
	/* The device's atomics still count, and nothing was lost. */
	cr_assert_eq(hmm_sim_atomic_add(dev, &p[9], 5, &old), 0);
	cr_assert_eq(old, 1005);
	cr_assert_eq(p[9], 1010);
	cr_assert_eq(hmm_exclusive_end(p, NPAGES * PG, dev), NPAGES,
		     "a timed-out hold counts every page as revoked");
	cr_assert_geq(stat("holds_timed_out"), 1);
}

/* ---- revoke ----------------------------------------------------------------- */

Test(exclusive, revoke_any_cpu_access_ends_the_hold, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	uint64_t *p, old;
	long r;

	need_hmm();
	dev = open_sim(0);
	p = map_adopt(NPAGES * PG);
	p[0] = 11;
	cr_assert_eq(hmm_exclusive_begin(p, NPAGES * PG, dev, HMM_EXCL_REVOKE,
					 0), 0);
	assert_all_loc(p, NPAGES * PG, HMM_LOC_DEVICE, dev);
	cr_assert_eq(hmm_sim_atomic_add(dev, &p[0], 1, &old), 0);
	/* A CPU read proceeds, with the device's value. */
	cr_assert_eq(((volatile uint64_t *)p)[0], 12);
	settle(p, NPAGES * PG);
	cr_assert_eq(loc_of(p, NULL), HMM_LOC_SYSTEM);
	/* The device's next atomic still counts. */
	cr_assert_eq(hmm_sim_atomic_add(dev, &p[0], 1, &old), 0);
	cr_assert_eq(old, 12);
	r = hmm_exclusive_end(p, NPAGES * PG, dev);
	cr_assert_geq(r, 1, "revoked pages: %ld", r);
	cr_assert_leq(r, NPAGES);
	cr_assert_eq(p[0], 13);
}

Test(exclusive, another_device_ends_the_hold, .timeout = T_SHORT)
{
	hmm_device_t *dev, *dev2;
	uint64_t *p, old;

	need_wp();
	dev = open_sim(0);
	dev2 = open_sim(0);
	p = map_adopt(NPAGES * PG);
	cr_assert_eq(hmm_exclusive_begin(p, NPAGES * PG, dev,
					 HMM_EXCL_READONLY, 0), 0);
	cr_assert_eq(hmm_sim_atomic_add(dev, &p[1], 3, &old), 0);
	cr_assert_eq(hmm_sim_atomic_add(dev2, &p[1], 4, &old), 0);
	cr_assert_eq(old, 3);
	cr_assert_eq(hmm_sim_atomic_add(dev, &p[1], 5, &old), 0);
	cr_assert_eq(old, 7);
	cr_assert_geq(hmm_exclusive_end(p, NPAGES * PG, dev), 1);
	cr_assert_eq(p[1], 12);
}

Test(exclusive, bad_requests_change_nothing, .timeout = T_SHORT)
{
	hmm_device_t *dev, *dev2, *dev3;
	uint64_t *p, *q;

	need_hmm();
	dev = open_sim(0);
	dev2 = open_sim(0);
	p = map_adopt(NPAGES * PG);
	q = map_anon(PG);
	cr_assert_eq(hmm_exclusive_begin(p, NPAGES * PG, NULL, 0, 0), -EINVAL);
	cr_assert_eq(hmm_exclusive_begin(p, NPAGES * PG, dev, 7, 0), -EINVAL);
	cr_assert_eq(hmm_exclusive_begin(p, NPAGES * PG, dev, HMM_EXCL_REVOKE,
					 -1), -EINVAL);
	cr_assert_eq(hmm_exclusive_begin((char *)p + 1, PG, dev,
					 HMM_EXCL_REVOKE, 0), -EINVAL);
	cr_assert_eq(hmm_exclusive_begin(q, PG, dev, HMM_EXCL_REVOKE, 0),
		     -ENOENT);
	cr_assert_eq(hmm_exclusive_end(p, NPAGES * PG, dev), -ENOENT,
		     "no hold yet");
	cr_assert_eq(hmm_exclusive_begin(p, NPAGES * PG, dev, HMM_EXCL_REVOKE,
					 0), 0);
	cr_assert_eq(hmm_exclusive_begin(p, PG, dev2, HMM_EXCL_REVOKE, 0),
		     -EBUSY);
	cr_assert_eq(hmm_exclusive_begin(p, PG, dev, HMM_EXCL_REVOKE, 0),
		     -EBUSY, "no nesting");
	cr_assert_eq(hmm_exclusive_end(p, PG, dev), -ENOENT, "not that range");
	cr_assert_eq(hmm_exclusive_end(p, NPAGES * PG, dev2), -ENOENT,
		     "not that device");
	dev3 = open_sim(0);
	cr_assert_eq(hmm_device_close(dev3), 0);
	cr_assert_eq(hmm_exclusive_begin(q, PG, dev3, HMM_EXCL_REVOKE, 0),
		     -ENODEV);
	assert_all_loc(p, NPAGES * PG, HMM_LOC_DEVICE, dev);
	cr_assert_eq(hmm_exclusive_end(p, NPAGES * PG, dev), 0);
	cr_assert_eq(hmm_exclusive_end(p, NPAGES * PG, dev), -ENOENT, "twice");
	cr_assert_eq(hmm_fini(), 0);
	cr_assert_eq(hmm_exclusive_begin(p, PG, dev, HMM_EXCL_REVOKE, 0),
		     -ESHUTDOWN);
	cr_assert_eq(hmm_exclusive_end(p, PG, dev), -ESHUTDOWN);
}

Test(exclusive, device_close_releases_waiting_writers, .timeout = T_SHORT)
{
	struct writer w = { 0 };
	hmm_device_t *dev;
	uint64_t *p, old;
	pthread_t t;

	need_wp();
	p = held_range(&dev, HMM_EXCL_READONLY, 0);
	cr_assert_eq(hmm_sim_atomic_add(dev, &p[2], 9, &old), 0);
	start_writer(&w, &p[2], &t);
	usleep(50000);
	cr_assert(!atomic_load(&w.done));
	cr_assert_eq(hmm_device_close(dev), 0);
	pthread_join(t, NULL);
	cr_assert_eq(p[2], 1009);
}

/* ---- exact totals under contention ------------------------------------------ */

struct totals {
	uint64_t *c;			/* the counters (managed) */
	_Atomic uint64_t *shadow;	/* expected values */
	hmm_device_t *dev[2];
	int mode;
	long timeout_ms;
	atomic_bool stop;
	atomic_int errors;
	atomic_ulong dev_adds, cpu_adds, holds;
};

struct dev_arg {
	struct totals *t;
	int k;
};

static void *device_main(void *arg)
{
	struct dev_arg *da = arg;
	struct totals *t = da->t;
	hmm_device_t *dev = t->dev[da->k];
	unsigned seed = 1234u + (unsigned)da->k;

	for (int round = 0; round < 60; round++) {
		int r = hmm_exclusive_begin(t->c, NPAGES * PG, dev, t->mode,
					    t->timeout_ms);
		if (r && r != -EBUSY)
			atomic_fetch_add(&t->errors, 1);
		for (int i = 0; i < 40; i++) {
			size_t w = (size_t)rand_r(&seed) % NWORDS;
			uint64_t old, v = 1 + (uint64_t)(rand_r(&seed) % 3);
			int a;
			if (rand_r(&seed) % 4) {
				a = hmm_sim_atomic_add(dev, &t->c[w], v, &old);
			} else {
				/* CAS loop: add v with compare-and-swap. */
				uint64_t cur = 0, seen;
				do {
					a = hmm_sim_atomic_cas(dev, &t->c[w],
							       cur, cur + v,
							       &seen);
					if (a || seen == cur)
						break;
					cur = seen;
				} while (1);
			}
			if (a) {
				atomic_fetch_add(&t->errors, 1);
				continue;
			}
			atomic_fetch_add(&t->shadow[w], v);
			atomic_fetch_add(&t->dev_adds, 1);
		}
		if (!r) {
			atomic_fetch_add(&t->holds, 1);
			if (hmm_exclusive_end(t->c, NPAGES * PG, dev) < 0)
				atomic_fetch_add(&t->errors, 1);
		}
	}
	return NULL;
}

static void *cpu_main(void *arg)
{
	struct totals *t = arg;
	unsigned seed = (unsigned)(uintptr_t)&seed;

	while (!atomic_load(&t->stop)) {
		size_t w = (size_t)rand_r(&seed) % NWORDS;
		/* Reads go on (in read-only mode too), and a counter never
		 * goes down. */
		uint64_t a = __atomic_load_n(&t->c[w], __ATOMIC_SEQ_CST);
		uint64_t b = __atomic_load_n(&t->c[w], __ATOMIC_SEQ_CST);
		if (b < a)
			atomic_fetch_add(&t->errors, 1);
		if (rand_r(&seed) % 8 == 0) {
			__atomic_fetch_add(&t->c[w], 1, __ATOMIC_SEQ_CST);
			atomic_fetch_add(&t->shadow[w], 1);
			atomic_fetch_add(&t->cpu_adds, 1);
		}
	}
	return NULL;
}

static void run_totals(int mode, long timeout_ms)
{
	struct totals t = { .mode = mode, .timeout_ms = timeout_ms };
	struct dev_arg da[2];
	pthread_t dt[2], ct[2];

	t.c = map_adopt(NPAGES * PG);
	t.shadow = calloc(NWORDS, sizeof(*t.shadow));
	t.dev[0] = open_sim(0);
	t.dev[1] = open_sim(0);
	for (int i = 0; i < 2; i++) {
		da[i] = (struct dev_arg){ &t, i };
		cr_assert_eq(pthread_create(&dt[i], NULL, device_main, &da[i]),
			     0);
		cr_assert_eq(pthread_create(&ct[i], NULL, cpu_main, &t), 0);
	}
	for (int i = 0; i < 2; i++)
		pthread_join(dt[i], NULL);
	atomic_store(&t.stop, true);
	for (int i = 0; i < 2; i++)
		pthread_join(ct[i], NULL);
	cr_assert_eq(atomic_load(&t.errors), 0, "%d calls failed",
		     atomic_load(&t.errors));
	for (size_t w = 0; w < NWORDS; w++)
		cr_assert_eq(t.c[w], atomic_load(&t.shadow[w]),
			     "word %zu: %lu, expected %lu", w,
			     (unsigned long)t.c[w],
			     (unsigned long)atomic_load(&t.shadow[w]));
	cr_assert_gt(atomic_load(&t.holds), 0);
	/* The holds did something: in read-only mode CPU writes met them,
	 * in revoke mode CPU accesses ended them. */
	cr_assert_gt(stat(mode == HMM_EXCL_READONLY ? "cpu_writes_held"
						    : "holds_revoked"),
		     0);
	cr_log_info("mode %d: %lu device atomics, %lu CPU adds, %lu holds",
		    mode, atomic_load(&t.dev_adds), atomic_load(&t.cpu_adds),
		    atomic_load(&t.holds));
	free(t.shadow);
}

Test(exclusive, exact_totals_readonly, .timeout = T_LONG)
{
	need_wp();
	run_totals(HMM_EXCL_READONLY, 0);
}

Test(exclusive, exact_totals_readonly_with_timeout, .timeout = T_LONG)
{
	need_wp();
	run_totals(HMM_EXCL_READONLY, 2);
}

Test(exclusive, exact_totals_revoke, .timeout = T_LONG)
{
	need_hmm();
	run_totals(HMM_EXCL_REVOKE, 0);
}

/* Memory of hmm_mem_alloc (shared memory), in both modes. */
Test(exclusive, shared_memory, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	uint64_t *p, old;

	need_wp();
	dev = open_sim(0);
	p = alloc_managed(NPAGES * PG);
	for (int mode = 0; mode < 2; mode++) {
		struct writer w = { 0 };
		pthread_t t;
		uint64_t base = p[4];
		cr_assert_eq(hmm_exclusive_begin(p, NPAGES * PG, dev, mode, 0),
			     0);
		cr_assert_eq(hmm_sim_atomic_add(dev, &p[4], 3, &old), 0);
		cr_assert_eq(old, base);
		cr_assert_eq(((volatile uint64_t *)p)[4], base + 3);
		w.word = &p[4];
		cr_assert_eq(pthread_create(&t, NULL, writer_main, &w), 0);
		if (mode == HMM_EXCL_READONLY) {
			usleep(50000);
			cr_assert(!atomic_load(&w.done), "write went through");
		}
		long r = hmm_exclusive_end(p, NPAGES * PG, dev);
		cr_assert_geq(r, mode == HMM_EXCL_REVOKE ? 1 : 0,
			      "mode %d: %ld pages revoked", mode, r);
		pthread_join(t, NULL);
		cr_assert_eq(p[4], base + 1003);
	}
	cr_assert_eq(hmm_mem_free(p, NPAGES * PG), 0);
}

/* A holder whose pull into its memory fails (copy error) leaves the page
 * write-protected: CPU writes still wait for the hold. */
Test(exclusive, failed_pull_keeps_the_hold, .timeout = T_SHORT)
{
	struct writer w = { 0 };
	hmm_device_t *dev;
	uint64_t *p, old;
	pthread_t t;
	int r;

	need_wp();
	p = held_range(&dev, HMM_EXCL_READONLY, 0);
	cr_assert_eq(((volatile uint64_t *)p)[6], 0); /* home, protected */
	cr_assert_eq(hmm_inject_fault("copy_to_device", 0, 0, 1000), 0);
	r = hmm_sim_atomic_add(dev, &p[6], 1, &old);
	cr_assert_neq(r, 0, "the pull should have failed");
	cr_assert_eq(hmm_inject_fault("copy_to_device", 0, 0, 0), 0);
	start_writer(&w, &p[6], &t);
	usleep(50000);
	cr_assert(!atomic_load(&w.done), "a CPU write went through the hold");
	cr_assert_geq(hmm_exclusive_end(p, NPAGES * PG, dev), 0);
	pthread_join(t, NULL);
	cr_assert_eq(p[6], 1000);
}

/* munmap ends a hold with its mapping; the address can be held afresh. */
Test(exclusive, munmap_ends_the_hold, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	uint64_t *p, *q;

	need_hmm();
	dev = open_sim(0);
	p = map_adopt(NPAGES * PG);
	cr_assert_eq(hmm_exclusive_begin(p, NPAGES * PG, dev, HMM_EXCL_REVOKE,
					 0), 0);
	cr_assert_eq(munmap(p, NPAGES * PG), 0);
	cr_assert_eq(hmm_exclusive_end(p, NPAGES * PG, dev), -ENOENT);
	q = mmap(p, NPAGES * PG, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (q != p)
		cr_skip_test("another mapping took the address");
	cr_assert_eq(hmm_range_adopt(q, NPAGES * PG, 0), 0);
	cr_assert_eq(hmm_exclusive_begin(q, NPAGES * PG, dev, HMM_EXCL_REVOKE,
					 0), 0);
	cr_assert_eq(hmm_exclusive_end(q, NPAGES * PG, dev), 0);
}
