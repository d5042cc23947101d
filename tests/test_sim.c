/* SPDX-License-Identifier: MIT */
/* The sim device's commands, on system memory and on device memory. */
#include <inttypes.h>
#include <pthread.h>

#include "common.h"

Test(sim, read_plain_memory_any_alignment, .timeout = T_SHORT)
{
	const size_t len = 8 * PG;
	struct hmm_sim_result res;
	hmm_device_t *dev;
	char *p, *buf;

	need_hmm();
	dev = open_sim(16 * PG);
	p = map_anon(len);	/* not managed: the mirror reaches it anyway */
	buf = map_anon(len);
	fill_pattern(p, len, 0x4ead);
	cr_assert_eq(hmm_sim_read(dev, p + 13, buf, 3 * PG + 5, &res), 0);
	cr_assert_eq(memcmp(buf, p + 13, 3 * PG + 5), 0);
	cr_assert_eq(res.pages, 4);
	assert_zero(buf + 3 * PG + 8, len - 3 * PG - 8);

	char small[3] = { 0 };
	cr_assert_eq(hmm_sim_read(dev, p + PG - 1, small, 2, NULL), 0);
	cr_assert_eq(memcmp(small, p + PG - 1, 2), 0);
}

Test(sim, write_plain_and_managed_memory, .timeout = T_SHORT)
{
	const size_t len = 8 * PG;
	hmm_device_t *dev;
	char *p, *m, *buf;

	need_hmm();
	dev = open_sim(16 * PG);
	p = map_anon(len);
	m = map_adopt(len);
	buf = map_anon(len);
	fill_pattern(p, len, 1);
	fill_pattern(m, len, 1);
	memset(buf, 0xa5, len);
	cr_assert_eq(hmm_sim_write(dev, p + 100, buf, 2 * PG, NULL), 0);
	cr_assert_eq(hmm_sim_write(dev, m + 100, buf, 2 * PG, NULL), 0);
	for (int k = 0; k < 2; k++) {
		char *x = k ? m : p;

		cr_assert_eq(memcmp(x + 100, buf, 2 * PG), 0);
		/* Bytes around the write are untouched. */
		cr_assert_eq(pattern_mismatch(x, 96, 1, 0), -1);
		cr_assert_eq(((uint64_t *)x)[12] & 0xffffffffu, (12 ^ 1) & 0xffffffffu);
		cr_assert_eq(pattern_mismatch(x + 2 * PG + 104, len - 2 * PG - 104,
					      1, (2 * PG + 104) / 8), -1);
	}
}

Test(sim, memcpy_and_fill64, .timeout = T_SHORT)
{
	const size_t len = 16 * PG;
	hmm_device_t *dev;
	char *src, *dst;
	uint64_t *w;

	need_hmm();
	dev = open_sim(64 * PG);
	src = map_adopt(len);
	dst = map_anon(len);
	fill_pattern(src, len, 0x3c);
	cr_assert_eq(hmm_sim_memcpy(dev, dst, src, len, NULL), 0);
	assert_pattern(dst, len, 0x3c);

	w = (uint64_t *)dst;
	cr_assert_eq(hmm_sim_fill64(dev, dst + 8, 0x0123456789abcdefULL,
				    3 * PG, NULL), 0);
	cr_assert_eq(w[0], 0 ^ 0x3c);
	for (size_t i = 1; i <= 3 * WORDS_PER_PAGE; i++)
		cr_assert_eq(w[i], 0x0123456789abcdefULL, "word %zu", i);
	cr_assert_eq(pattern_mismatch(w + 3 * WORDS_PER_PAGE + 1,
				      len - 3 * PG - 8, 0x3c,
				      3 * WORDS_PER_PAGE + 1), -1);

	cr_assert_eq(hmm_sim_fill64(dev, dst + 4, 1, 64, NULL), -EINVAL);
	cr_assert_eq(hmm_sim_fill64(dev, dst, 1, 60, NULL), -EINVAL);
	cr_assert_eq(w[0], 0 ^ 0x3c);
	cr_assert_eq(w[WORDS_PER_PAGE * 4], (WORDS_PER_PAGE * 4) ^ 0x3c);
}

Test(sim, atomics, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	uint64_t *w, old = 0;

	need_hmm();
	dev = open_sim(16 * PG);
	w = map_adopt(PG);
	w[3] = 40;
	cr_assert_eq(hmm_sim_atomic_add(dev, &w[3], 2, &old), 0);
	cr_assert_eq(old, 40);
	cr_assert_eq(w[3], 42);
	cr_assert_eq(hmm_sim_atomic_cas(dev, &w[3], 41, 7, &old), 0);
	cr_assert_eq(old, 42, "a failed CAS reports the current value");
	cr_assert_eq(w[3], 42);
	cr_assert_eq(hmm_sim_atomic_cas(dev, &w[3], 42, 7, &old), 0);
	cr_assert_eq(old, 42);
	cr_assert_eq(w[3], 7);
	cr_assert_eq(hmm_sim_atomic_add(dev, (uint64_t *)((char *)w + 4), 1,
					&old), -EINVAL);
	cr_assert_eq(w[3], 7);
	cr_assert_eq(w[0], 0);
	/* On a device-resident page: done in place. */
	assert_migrate(w, PG, dev, 1);
	cr_assert_eq(hmm_sim_atomic_add(dev, &w[5], 10, &old), 0);
	cr_assert_eq(old, 0);
	cr_assert_eq(loc_of(w, NULL), HMM_LOC_DEVICE);
	cr_assert_eq(hmm_sim_atomic_cas(dev, &w[5], 10, 11, &old), 0);
	cr_assert_eq(old, 10);
	cr_assert_eq(loc_of(w, NULL), HMM_LOC_DEVICE);
	cr_assert_eq(w[5], 11);
	cr_assert_eq(w[3], 7);
}

Test(sim, null_device, .timeout = T_SHORT)
{
	uint64_t *w, old = 5;
	char buf[16];

	need_hmm();
	w = map_anon(PG);
	cr_assert_eq(hmm_sim_read(NULL, w, buf, 8, NULL), -EINVAL);
	cr_assert_eq(hmm_sim_write(NULL, w, buf, 8, NULL), -EINVAL);
	cr_assert_eq(hmm_sim_memcpy(NULL, w, w + 8, 8, NULL), -EINVAL);
	cr_assert_eq(hmm_sim_fill64(NULL, w, 1, 8, NULL), -EINVAL);
	cr_assert_eq(hmm_sim_atomic_add(NULL, w, 1, &old), -EINVAL);
	cr_assert_eq(hmm_sim_atomic_cas(NULL, w, 0, 1, &old), -EINVAL);
	cr_assert_eq(w[0], 0);
	cr_assert_eq(old, 5);
}

/* Device and CPU see each other's writes on device-resident pages. */
Test(sim, device_memory_used_in_place, .timeout = T_SHORT)
{
	const size_t len = 8 * PG;
	struct hmm_sim_result res;
	hmm_device_t *dev;
	char *p, *buf;

	need_hmm();
	dev = open_sim(len);
	p = alloc_managed(len);
	buf = map_anon(len);
	fill_pattern(p, len, 0x1e);
	assert_migrate(p, len, dev, 8);
	cr_assert_eq(hmm_sim_read(dev, p, buf, len, &res), 0);
	assert_pattern(buf, len, 0x1e);
	cr_assert_eq(res.pages, 8);
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);
	cr_assert_eq(stat_of("pages_to_system"), 0);

	fill_pattern(buf, len, 0x2e);
	cr_assert_eq(hmm_sim_write(dev, p, buf, len, NULL), 0);
	cr_assert_eq(hmm_sim_fill64(dev, p + PG, 0, PG, NULL), 0);
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);
	cr_assert_eq(pattern_mismatch(p, PG, 0x2e, 0), -1);
	assert_zero(p + PG, PG);
	cr_assert_eq(pattern_mismatch(p + 2 * PG, len - 2 * PG, 0x2e,
				      2 * WORDS_PER_PAGE), -1);
}

Test(sim, device_reads_page_of_another_device, .timeout = T_SHORT)
{
	const size_t len = 8 * PG;
	hmm_device_t *a, *b;
	char *p, *buf;

	need_hmm();
	a = open_sim(len);
	b = open_sim(len);
	p = map_adopt(len);
	buf = map_anon(len);
	fill_pattern(p, len, 0xb0b);
	assert_migrate(p, len, b, 8);
	cr_assert_eq(hmm_sim_read(a, p + 2 * PG, buf, 2 * PG, NULL), 0);
	cr_assert_eq(pattern_mismatch(buf, 2 * PG, 0xb0b, 2 * WORDS_PER_PAGE),
		     -1);
	assert_all_loc(p + 2 * PG, 2 * PG, HMM_LOC_SYSTEM, NULL);
	cr_assert_eq(dev_used(a), 0);
	cr_assert_eq(dev_used(b), count_loc(p, len, HMM_LOC_DEVICE));

	/* A write by A to B's pages. */
	fill_pattern(buf, PG, 0xa0a);
	cr_assert_eq(hmm_sim_write(a, p + 6 * PG, buf, PG, NULL), 0);
	cr_assert_eq(loc_of(p + 6 * PG, NULL), HMM_LOC_SYSTEM);
	cr_assert_eq(pattern_mismatch(p + 6 * PG, PG, 0xa0a, 0), -1);
	cr_assert_eq(pattern_mismatch(p + 7 * PG, PG, 0xb0b, 7 * WORDS_PER_PAGE),
		     -1);
	/* B still reads the new data. */
	cr_assert_eq(hmm_sim_read(b, p + 6 * PG, buf + PG, PG, NULL), 0);
	cr_assert_eq(pattern_mismatch(buf + PG, PG, 0xa0a, 0), -1);
}

Test(sim, device_sees_cpu_writes_after_mirroring, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	uint64_t *p, v = 0;

	need_hmm();
	dev = open_sim(16 * PG);
	p = map_anon(4 * PG);
	fill_pattern(p, 4 * PG, 9);
	cr_assert_eq(hmm_sim_read(dev, p, &v, 8, NULL), 0);
	cr_assert_eq(v, 9);
	/* The mirror maps the same memory: later CPU writes show. */
	for (int i = 0; i < 10; i++) {
		p[1] = 1000 + (uint64_t)i;
		cr_assert_eq(hmm_sim_read(dev, &p[1], &v, 8, NULL), 0);
		cr_assert_eq(v, 1000 + (uint64_t)i);
		cr_assert_eq(hmm_sim_atomic_add(dev, &p[1], 1, NULL), 0);
		cr_assert_eq(p[1], 1001 + (uint64_t)i);
	}
}

Test(sim, write_to_read_only_memory, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p, *buf;
	uint64_t old = 0;

	need_hmm();
	dev = open_sim(16 * PG);
	p = map_anon(4 * PG);
	buf = map_anon(4 * PG);
	fill_pattern(p, 4 * PG, 0x40);
	cr_assert_eq(mprotect(p, 4 * PG, PROT_READ), 0);
	cr_assert_eq(hmm_sim_write(dev, p + PG, buf, PG, NULL), -EPERM);
	cr_assert_eq(hmm_sim_fill64(dev, p, 0, 4 * PG, NULL), -EPERM);
	cr_assert_eq(hmm_sim_atomic_add(dev, (uint64_t *)p, 1, &old), -EPERM);
	cr_assert_eq(hmm_sim_atomic_cas(dev, (uint64_t *)p, 0x40, 1, &old),
		     -EPERM);
	cr_assert_eq(hmm_sim_memcpy(dev, p, buf, PG, NULL), -EPERM);
	assert_pattern(p, 4 * PG, 0x40);
	/* Reading is allowed. */
	cr_assert_eq(hmm_sim_read(dev, p, buf, 4 * PG, NULL), 0);
	assert_pattern(buf, 4 * PG, 0x40);
	/* Write allowed again once the CPU mapping allows it. */
	cr_assert_eq(mprotect(p, 4 * PG, PROT_READ | PROT_WRITE), 0);
	cr_assert_eq(hmm_sim_fill64(dev, p, 0, PG, NULL), 0);
	assert_zero(p, PG);
}

/* Nothing is mapped at @addr (msync fails with ENOMEM there). */
static bool still_unmapped(void *addr)
{
	return msync(addr, PG, MS_ASYNC) == -1 && errno == ENOMEM;
}

Test(sim, prot_none_and_unmapped_fault, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p, *buf;

	need_hmm();
	dev = open_sim(16 * PG);
	p = map_anon(4 * PG);
	buf = map_anon(4 * PG);
	fill_pattern(p, 4 * PG, 0x41);
	cr_assert_eq(mprotect(p + PG, PG, PROT_NONE), 0);
	cr_assert_eq(munmap(p + 3 * PG, PG), 0);
	cr_assert_eq(hmm_sim_read(dev, p + PG, buf, 8, NULL), -EFAULT);
	cr_assert_eq(hmm_sim_write(dev, p + PG, buf, 8, NULL), -EFAULT);
	/*
	 * The hole at p + 3 pages may be taken by a mapping someone else
	 * makes meanwhile (ASan's allocator does, in the bounce buffer's
	 * malloc): the device then rightly reads it.  Check the hole is
	 * still one, after each call, to tell that apart from a bug.
	 */
	int r = hmm_sim_read(dev, p + 3 * PG, buf, 8, NULL);
	if (still_unmapped(p + 3 * PG))
		cr_assert_eq(r, -EFAULT);
	r = hmm_sim_write(dev, p + 3 * PG, buf, 8, NULL);
	if (still_unmapped(p + 3 * PG))
		cr_assert_eq(r, -EFAULT);
	/* Straddling: a good page then a bad one. */
	cr_assert_eq(hmm_sim_read(dev, p, buf, 2 * PG, NULL), -EFAULT);
	r = hmm_sim_read(dev, p + 2 * PG, buf, 2 * PG, NULL);
	if (still_unmapped(p + 3 * PG))
		cr_assert_eq(r, -EFAULT);
	/* The good pages still work. */
	cr_assert_eq(hmm_sim_read(dev, p, buf, PG, NULL), 0);
	cr_assert_eq(pattern_mismatch(buf, PG, 0x41, 0), -1);
	cr_assert_eq(hmm_sim_read(dev, p + 2 * PG, buf, PG, NULL), 0);
	cr_assert_eq(pattern_mismatch(buf, PG, 0x41, 2 * WORDS_PER_PAGE), -1);
	/* Last, since it writes page 2 if the hole was reused. */
	r = hmm_sim_fill64(dev, p + 2 * PG, 0, 2 * PG, NULL);
	if (still_unmapped(p + 3 * PG))
		cr_assert_eq(r, -EFAULT);
}

/* A kernel recording what it saw: runs on an engine thread, no asserts. */
struct kern {
	uint64_t seed;
	size_t len;
	unsigned char *seen;	/* one byte per page */
	long calls, bad_run, bad_data;
};

static void read_kernel(void *dptr, size_t off, size_t n, void *arg)
{
	struct kern *k = arg;
	const uint64_t *w = dptr;

	__atomic_add_fetch(&k->calls, 1, __ATOMIC_RELAXED);
	if (off % PG || n % PG || n == 0 || n > (2u << 20) || off + n > k->len) {
		__atomic_add_fetch(&k->bad_run, 1, __ATOMIC_RELAXED);
		return;
	}
	for (size_t i = 0; i < n / 8; i++)
		if (w[i] != ((off / 8 + i) ^ k->seed))
			__atomic_add_fetch(&k->bad_data, 1, __ATOMIC_RELAXED);
	for (size_t pg = off / PG; pg < (off + n) / PG; pg++)
		__atomic_add_fetch(&k->seen[pg], 1, __ATOMIC_RELAXED);
}

static void write_kernel(void *dptr, size_t off, size_t n, void *arg)
{
	struct kern *k = arg;
	uint64_t *w = dptr;

	__atomic_add_fetch(&k->calls, 1, __ATOMIC_RELAXED);
	if (off % PG || n % PG || n == 0 || n > (2u << 20) || off + n > k->len) {
		__atomic_add_fetch(&k->bad_run, 1, __ATOMIC_RELAXED);
		return;
	}
	for (size_t i = 0; i < n / 8; i++)
		w[i] = (off / 8 + i) ^ k->seed;
	for (size_t pg = off / PG; pg < (off + n) / PG; pg++)
		__atomic_add_fetch(&k->seen[pg], 1, __ATOMIC_RELAXED);
}

static void check_runs(const struct kern *k)
{
	cr_assert_gt(k->calls, 0);
	cr_assert_eq(k->bad_run, 0, "runs outside the range or over 2 MiB");
	cr_assert_eq(k->bad_data, 0, "%ld words wrong", k->bad_data);
	for (size_t pg = 0; pg < k->len / PG; pg++)
		cr_assert_eq(k->seen[pg], 1, "page %zu seen %d times", pg,
			     k->seen[pg]);
}

Test(sim, launch_read_and_write, .timeout = T_SHORT)
{
	const size_t len = 1536 * PG;	/* 6 MiB: several runs */
	struct kern k = { .seed = 0x1a, .len = len };
	struct hmm_sim_result res;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	k.seen = calloc(len / PG, 1);
	fill_pattern(p, len, k.seed);
	/* Half of it on the device, half in system memory. */
	assert_migrate(p + len / 2, len / 2, dev, len / 2 / PG);
	cr_assert_eq(hmm_sim_launch(dev, p, len, 0, read_kernel, &k, &res), 0);
	check_runs(&k);
	cr_assert_eq(res.pages, len / PG);
	cr_assert_geq(k.calls, 3);
	assert_all_loc(p + len / 2, len / 2, HMM_LOC_DEVICE, dev);

	memset(k.seen, 0, len / PG);
	k.calls = 0;
	k.seed = 0x2b;
	cr_assert_eq(hmm_sim_launch(dev, p, len, 1, write_kernel, &k, NULL), 0);
	check_runs(&k);
	assert_all_loc(p + len / 2, len / 2, HMM_LOC_DEVICE, dev);
	assert_pattern(p, len, 0x2b);
	free(k.seen);
}

Test(sim, launch_write_on_read_only, .timeout = T_SHORT)
{
	struct kern k = { .seed = 0x3b, .len = 4 * PG };
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(16 * PG);
	p = map_anon(4 * PG);
	k.seen = calloc(4, 1);
	fill_pattern(p, 4 * PG, 0x4b);
	cr_assert_eq(mprotect(p, 4 * PG, PROT_READ), 0);
	cr_assert_eq(hmm_sim_launch(dev, p, 4 * PG, 1, write_kernel, &k, NULL),
		     -EPERM);
	assert_pattern(p, 4 * PG, 0x4b);
	k.seed = 0x4b;
	cr_assert_eq(hmm_sim_launch(dev, p, 4 * PG, 0, read_kernel, &k, NULL), 0);
	check_runs(&k);
	free(k.seen);
}

struct adder {
	hmm_device_t *dev;
	uint64_t *word;
	int iters, errors;
};

static void *adder_thread(void *arg)
{
	struct adder *a = arg;

	for (int i = 0; i < a->iters; i++)
		if (hmm_sim_atomic_add(a->dev, a->word, 3, NULL) != 0)
			a->errors++;
	return NULL;
}

static void atomic_threads(bool on_device)
{
	enum { T = 4, ITERS = 2000 };
	struct adder a[T];
	pthread_t th[T];
	hmm_device_t *dev;
	uint64_t *w;

	need_hmm();
	dev = open_sim(16 * PG);
	w = map_adopt(PG);
	w[7] = 1000;
	if (on_device)
		assert_migrate(w, PG, dev, 1);
	for (int i = 0; i < T; i++) {
		a[i] = (struct adder){ .dev = dev, .word = &w[7], .iters = ITERS };
		cr_assert_eq(pthread_create(&th[i], NULL, adder_thread, &a[i]), 0);
	}
	for (int i = 0; i < T; i++) {
		pthread_join(th[i], NULL);
		cr_assert_eq(a[i].errors, 0, "thread %d: %d failed adds", i,
			     a[i].errors);
	}
	if (on_device)
		cr_assert_eq(loc_of(w, NULL), HMM_LOC_DEVICE);
	cr_assert_eq(w[7], 1000 + 3ULL * T * ITERS);
	cr_assert_eq(w[6], 0);
	cr_assert_eq(w[8], 0);
}

Test(sim, atomic_add_threads_system_memory, .timeout = T_SHORT)
{
	atomic_threads(false);
}

Test(sim, atomic_add_threads_device_memory, .timeout = T_SHORT)
{
	atomic_threads(true);
}

Test(sim, memcpy_between_device_resident_ranges, .timeout = T_SHORT)
{
	const size_t len = 8 * PG;
	hmm_device_t *a, *b;
	char *src, *dst, *other;

	need_hmm();
	a = open_sim(4 * len);
	b = open_sim(4 * len);
	src = map_adopt(len);
	dst = alloc_managed(len);
	other = map_adopt(len);
	fill_pattern(src, len, 0x5c);
	fill_pattern(other, len, 0x6c);
	assert_migrate(src, len, a, 8);
	assert_migrate(dst, len, a, 8);
	/* Both in A's memory: copied in place. */
	cr_assert_eq(hmm_sim_memcpy(a, dst, src, len, NULL), 0);
	assert_all_loc(src, len, HMM_LOC_DEVICE, a);
	assert_all_loc(dst, len, HMM_LOC_DEVICE, a);
	assert_pattern(dst, len, 0x5c);
	/* Source in B's memory: it comes through system memory. */
	assert_migrate(other, len, b, 8);
	cr_assert_eq(hmm_sim_memcpy(a, dst, other, len, NULL), 0);
	assert_all_loc(other, len, HMM_LOC_SYSTEM, NULL);
	assert_pattern(dst, len, 0x6c);
	assert_pattern(other, len, 0x6c);
	assert_pattern(src, len, 0x5c);
}

/* A device write that fails part-way (a read-only page in the middle) has
 * written nothing, even over pages the device could already write. */
Test(sim, failed_write_changes_nothing, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p, *src;

	need_hmm();
	dev = open_sim(16 * PG);
	p = map_adopt(3 * PG);
	src = map_anon(3 * PG);
	fill_pattern(p, 3 * PG, 0xa1);
	fill_pattern(src, 3 * PG, 0xa2);
	/* Make page 0 writable in the device's page table first. */
	cr_assert_eq(hmm_sim_write(dev, p, p, PG, NULL), 0);
	cr_assert_eq(mprotect(p + PG, PG, PROT_READ), 0);
	cr_assert_eq(hmm_sim_write(dev, p, src, 3 * PG, NULL), -EPERM);
	cr_assert_eq(hmm_sim_fill64(dev, p, 0, 3 * PG, NULL), -EPERM);
	assert_pattern(p, 3 * PG, 0xa1);
	/* And on a device-resident page before the read-only one. */
	cr_assert_eq(mprotect(p + PG, PG, PROT_READ | PROT_WRITE), 0);
	cr_assert_eq(hmm_migrate(p, PG, dev, 0), 1);
	cr_assert_eq(mprotect(p + PG, PG, PROT_READ), 0);
	cr_assert_eq(hmm_sim_fill64(dev, p, 0, 2 * PG, NULL), -EPERM);
	cr_assert_eq(loc_of(p, NULL), HMM_LOC_DEVICE);
	assert_pattern(p, 3 * PG, 0xa1);
}

/*
 * HMM_SIM_LINK_GBPS: a device opened with a modelled link takes the
 * link's time to reach system memory (16 MiB at 1 GB/s: at least 16 ms),
 * and its memory is not host-addressable, so migrations go through its
 * copies and still keep the data.
 */
Test(sim, link_model_takes_time_and_keeps_data, .timeout = T_SHORT)
{
	const size_t len = 16 << 20;
	hmm_device_t *slow;
	char *p, *buf = malloc(len);
	uint64_t t0;

	need_hmm();
	cr_assert_not_null(buf);
	cr_assert_eq(hmm_option_set("SIM_LINK_GBPS", 1), 0);
	slow = open_sim(2 * len);
	cr_assert_eq(hmm_option_set("SIM_LINK_GBPS", 0), 0);
	p = map_adopt(len);
	fill_pattern(p, len, 40);
	t0 = now_ms();
	cr_assert_eq(hmm_sim_read(slow, p, buf, len, NULL), 0);
	cr_assert_geq(now_ms() - t0, 16, "16 MiB crossed a 1 GB/s link in "
					 "%" PRIu64 " ms", now_ms() - t0);
	assert_pattern(buf, len, 40);
	/* Through its copies both ways, and between devices. */
	hmm_device_t *fast = open_sim(2 * len);
	assert_migrate(p, len, slow, len / PG);
	assert_migrate(p, len, fast, len / PG);
	assert_migrate(p, len, slow, len / PG);
	assert_pattern(p, len, 40);
	free(buf);
}
