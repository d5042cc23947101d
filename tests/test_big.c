/* SPDX-License-Identifier: MIT */
/* 1 GiB migrations, verified byte for byte (slow: two tests only). */
#include "common.h"

#define GIB (1024UL * 1024 * 1024)
#define NPAGES (GIB / PG)

static void need_memory(size_t bytes)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	unsigned long kb = 0;

	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %lu kB", &kb) == 1)
			break;
	fclose(f);
	if (kb && kb * 1024 < bytes)
		cr_skip_test("needs %zu MiB of free memory, %lu MiB available",
			     bytes >> 20, kb >> 10);
}

/* The device reads 16 samples of 64 KiB in place. */
static void device_samples(hmm_device_t *dev, char *p, uint64_t seed)
{
	const size_t n = 64 * 1024;
	char *buf = map_anon(n);
	struct hmm_sim_result res;

	for (int s = 0; s < 16; s++) {
		size_t off = (size_t)s * (GIB / 16) + (size_t)s * 5 * PG;

		cr_assert_eq(hmm_sim_read(dev, p + off, buf, n, &res), 0);
		cr_assert_eq(res.pages, n / PG);
		cr_assert_eq(pattern_mismatch(buf, n, seed, off / 8), -1,
			     "sample %d at offset %zu", s, off);
		cr_assert_eq(loc_of(p + off, NULL), HMM_LOC_DEVICE);
	}
	munmap(buf, n);
}

Test(big, adopted_gib_to_device_and_cpu_fault_back, .timeout = T_LONG)
{
	hmm_device_t *dev;
	char *p;

	need_memory(3 * GIB);
	need_hmm();
	dev = open_sim(GIB + 16 * 1024 * 1024);
	p = map_anon(GIB);
	fill_pattern(p, GIB, 0xb16);
	cr_assert_eq(hmm_range_adopt(p, GIB, 0), 0);
	assert_migrate(p, GIB, dev, NPAGES);
	cr_assert_eq(dev_used(dev), NPAGES);
	cr_assert_eq(stat_of("device_bytes_in_use"), GIB);
	for (size_t off = 0; off < GIB; off += GIB / 64)
		cr_assert_eq(loc_of(p + off, NULL), HMM_LOC_DEVICE);
	device_samples(dev, p, 0xb16);
	/* Every byte, through CPU faults. */
	assert_pattern(p, GIB, 0xb16);
	settle(p, GIB);
	cr_assert_eq(wait_dev_used(dev, 0), 0);
	cr_assert_eq(wait_stat_eq("device_bytes_in_use", 0, 1000), 0);
	for (size_t off = 0; off < GIB; off += GIB / 64)
		cr_assert_eq(loc_of(p + off, NULL), HMM_LOC_SYSTEM);
}

struct sum {
	uint64_t seed;
	long bad;
	size_t bytes;
};

static void verify_kernel(void *dptr, size_t off, size_t n, void *arg)
{
	struct sum *s = arg;
	const uint64_t *w = dptr;

	for (size_t i = 0; i < n / 8; i++)
		if (w[i] != ((off / 8 + i) ^ s->seed))
			__atomic_add_fetch(&s->bad, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&s->bytes, n, __ATOMIC_RELAXED);
}

Test(big, allocated_gib_round_trip, .timeout = T_LONG)
{
	struct sum s = { .seed = 0xa11c };
	hmm_device_t *dev;
	char *p;

	need_memory(3 * GIB);
	need_hmm();
	dev = open_sim(GIB + 16 * 1024 * 1024);
	p = alloc_managed(GIB);
	fill_pattern(p, GIB, s.seed);
	assert_migrate(p, GIB, dev, NPAGES);
	cr_assert_eq(stat_of("device_bytes_in_use"), GIB);
	device_samples(dev, p, s.seed);
	/* The device checks every word, in its own memory. */
	cr_assert_eq(hmm_sim_launch(dev, p, GIB, 0, verify_kernel, &s, NULL), 0);
	cr_assert_eq(s.bytes, GIB);
	cr_assert_eq(s.bad, 0, "%ld words wrong on the device", s.bad);
	cr_assert_eq(dev_used(dev), NPAGES);
	assert_migrate(p, GIB, NULL, NPAGES);
	cr_assert_eq(stat_of("device_bytes_in_use"), 0);
	assert_pattern(p, GIB, s.seed);
	cr_assert_eq(hmm_mem_free(p, GIB), 0);
}
