/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the Criterion tests of libhmm.
 *
 * Every test runs in its own process (Criterion's default), so each one
 * starts with no libhmm state.  Data is always checked byte for byte with a
 * pattern whose 64-bit word i holds i ^ seed (i counted from the start of
 * the buffer), so that every word of every page differs from its
 * neighbours, from zero and from the same buffer written with another seed.
 *
 * cr_assert must only be called from the thread running the test: helpers
 * meant for other threads return a status instead.
 */
#ifndef HMM_TESTS_COMMON_H
#define HMM_TESTS_COMMON_H

#include <criterion/criterion.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#include "vaspace.h"

#define PG ((size_t)HMM_PAGE_SIZE)
#define WORDS_PER_PAGE (PG / sizeof(uint64_t))

/* Seconds a test may run before Criterion calls it a failure. */
#define T_SHORT 60
#define T_LONG 240

/* Create libhmm's state, or skip the test if the machine cannot. */
static inline void need_hmm(void)
{
	int r = hmm_init();

	if (r == -EPERM || r == -ENOSYS || r == -EOPNOTSUPP)
		cr_skip_test("hmm_init() = %d (%s): no usable userfaultfd", r,
			     strerror(-r));
	cr_assert_eq(r, 0, "hmm_init() = %d (%s)", r, strerror(r < 0 ? -r : r));
}

/* Private anonymous read/write memory, never touched. */
static inline void *map_anon(size_t len)
{
	void *p = test_map(len, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	cr_assert_neq(p, MAP_FAILED, "mmap(%zu): %s", len, strerror(errno));
	return p;
}

/* map_anon + hmm_range_adopt. */
static inline void *map_adopt(size_t len)
{
	void *p = map_anon(len);
	int r = hmm_range_adopt(p, len, 0);

	cr_assert_eq(r, 0, "hmm_range_adopt(%p, %zu) = %d", p, len, r);
	return p;
}

/* hmm_mem_alloc, asserting success. */
static inline void *alloc_managed(size_t len)
{
	void *p = NULL;
	int r = hmm_mem_alloc(len, 0, &p);

	cr_assert_eq(r, 0, "hmm_mem_alloc(%zu) = %d", len, r);
	cr_assert_not_null(p);
	cr_assert_eq((uintptr_t)p % PG, 0, "hmm_mem_alloc returned %p", p);
	return p;
}

/* A sim device with @mem_size bytes of memory (0: the default size). */
static inline hmm_device_t *open_sim(size_t mem_size)
{
	struct hmm_device_attr attr = { .mem_size = mem_size };
	hmm_device_t *dev = NULL;
	int r = hmm_device_open("sim", &attr, &dev);

	cr_assert_eq(r, 0, "hmm_device_open(sim, %zu) = %d", mem_size, r);
	cr_assert_not_null(dev);
	return dev;
}

static inline void fill_pattern(void *buf, size_t len, uint64_t seed)
{
	uint64_t *w = buf;

	for (size_t i = 0; i < len / sizeof(uint64_t); i++)
		w[i] = i ^ seed;
}

/*
 * Index of the first word of @buf that does not hold the pattern @seed
 * (word i of @buf is compared with (first + i) ^ seed), or -1 if all do.
 * @first lets a caller check a slice of a larger patterned buffer.
 */
static inline long pattern_mismatch(const void *buf, size_t len,
				    uint64_t seed, size_t first)
{
	const volatile uint64_t *w = buf;

	for (size_t i = 0; i < len / sizeof(uint64_t); i++)
		if (w[i] != ((first + i) ^ seed))
			return (long)i;
	return -1;
}

/* Index of the first non-zero word, or -1. */
static inline long zero_mismatch(const void *buf, size_t len)
{
	const volatile uint64_t *w = buf;

	for (size_t i = 0; i < len / sizeof(uint64_t); i++)
		if (w[i] != 0)
			return (long)i;
	return -1;
}

#define assert_pattern(buf, len, seed)                                        \
	do {                                                                  \
		long bad_ = pattern_mismatch((buf), (len), (seed), 0);        \
		cr_assert_eq(bad_, -1,                                        \
			     "word %ld of %p is %#llx, expected %#llx", bad_, \
			     (void *)(buf),                                   \
			     (unsigned long long)((const uint64_t *)(buf))    \
				     [bad_ < 0 ? 0 : bad_],                   \
			     (unsigned long long)((uint64_t)bad_ ^ (seed)));  \
	} while (0)

#define assert_zero(buf, len)                                                 \
	do {                                                                  \
		long bad_ = zero_mismatch((buf), (len));                      \
		cr_assert_eq(bad_, -1, "word %ld of %p is %#llx, expected 0", \
			     bad_, (void *)(buf),                             \
			     (unsigned long long)((const uint64_t *)(buf))    \
				     [bad_ < 0 ? 0 : bad_]);                  \
	} while (0)

/* Device @dev reads pages [first, first + n) of @p and finds @seed's
 * pattern there (as fill_pattern wrote it over the whole of @p). */
static inline void assert_dev_pattern(hmm_device_t *dev, const char *p,
				      size_t first, size_t n, uint64_t seed)
{
	char *buf = malloc(n * PG);
	int r;

	cr_assert_not_null(buf);
	r = hmm_sim_read(dev, p + first * PG, buf, n * PG, NULL);
	cr_assert_eq(r, 0, "hmm_sim_read = %d", r);
	cr_assert_eq(pattern_mismatch(buf, n * PG, seed,
				      first * WORDS_PER_PAGE),
		     -1, "device %u: pages %zu..%zu differ",
		     hmm_device_id(dev), first, first + n);
	free(buf);
}

static inline uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Location of one page, asserting the call itself succeeds. */
static inline int loc_of(const void *addr, hmm_device_t **dev)
{
	int l = hmm_page_location(addr, dev);

	cr_assert_geq(l, 0, "hmm_page_location(%p) = %d", addr, l);
	return l;
}

/* How many pages of [addr, addr + len) have location @want. */
static inline size_t count_loc(const void *addr, size_t len, int want)
{
	size_t n = 0;

	for (size_t off = 0; off < len; off += PG)
		if (loc_of((const char *)addr + off, NULL) == want)
			n++;
	return n;
}

/*
 * Wait (up to 1 s) until no page of the range is HMM_LOC_MIGRATING.  A CPU
 * access returns as soon as its page is back; libhmm may still be
 * finishing the bookkeeping of a fault-around batch, so checks of
 * locations and device usage after CPU accesses call this first.
 */
static inline void settle(const void *addr, size_t len)
{
	uint64_t end = now_ms() + 1000;

	while (count_loc(addr, len, HMM_LOC_MIGRATING) && now_ms() < end)
		usleep(1000);
	cr_assert_eq(count_loc(addr, len, HMM_LOC_MIGRATING), 0,
		     "pages of %p still MIGRATING after 1 s", addr);
}

/* Every page of the range is at @want (and on @dev, for HMM_LOC_DEVICE). */
static inline void assert_all_loc(const void *addr, size_t len, int want,
				  hmm_device_t *dev)
{
	for (size_t off = 0; off < len; off += PG) {
		hmm_device_t *d = NULL;
		int l = loc_of((const char *)addr + off, &d);

		cr_assert_eq(l, want, "page %zu of %p: location %d, expected %d",
			     off / PG, addr, l, want);
		if (want == HMM_LOC_DEVICE)
			cr_assert_eq(d, dev, "page %zu of %p on device %p, not %p",
				     off / PG, addr, (void *)d, (void *)dev);
	}
}

static inline uint64_t stat_of(const char *name)
{
	uint64_t v = 0;
	int r = hmm_stat_get(name, &v);

	cr_assert_eq(r, 0, "hmm_stat_get(%s) = %d", name, r);
	return v;
}


/*
 * Poll the counter @name until it equals @want or @ms milliseconds pass
 * (events from munmap/madvise are handled asynchronously).  Returns the
 * last value read.
 */
static inline uint64_t wait_stat_eq(const char *name, uint64_t want,
				    unsigned int ms)
{
	uint64_t end = now_ms() + ms, v;

	while ((v = stat_of(name)) != want && now_ms() < end)
		usleep(1000);
	return v;
}

/* Same, until the counter is greater than @than. */
static inline uint64_t wait_stat_gt(const char *name, uint64_t than,
				    unsigned int ms)
{
	uint64_t end = now_ms() + ms, v;

	while ((v = stat_of(name)) <= than && now_ms() < end)
		usleep(1000);
	return v;
}

/* Pages in use on @dev. */
static inline size_t dev_used(hmm_device_t *dev)
{
	size_t used = 0, total = 0;
	int r = hmm_device_mem_usage(dev, &used, &total);

	cr_assert_eq(r, 0, "hmm_device_mem_usage = %d", r);
	return used;
}

/*
 * Poll hmm_device_mem_usage until @dev uses @want pages, up to 1 s: after a
 * CPU fault the accounting may trail the page's return by a moment.
 * Returns the last value read.
 */
static inline size_t wait_dev_used(hmm_device_t *dev, size_t want)
{
	uint64_t end = now_ms() + 1000;
	size_t v;

	while ((v = dev_used(dev)) != want && now_ms() < end)
		usleep(1000);
	return v;
}

/* Migrate [addr, addr + len) to @dev (NULL: system) expecting @want moved. */
#define assert_migrate(addr, len, dev, want)                                  \
	do {                                                                  \
		long w_ = (long)(want); /* before the migration changes it */ \
		long m_ = hmm_migrate((addr), (len), (dev), 0);               \
		cr_assert_eq(m_, w_,                                          \
			     "hmm_migrate(%p, %zu, %p) = %ld, expected %ld",  \
			     (void *)(addr), (size_t)(len), (void *)(dev),    \
			     m_, w_);                                         \
	} while (0)

#endif /* HMM_TESTS_COMMON_H */
