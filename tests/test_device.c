/* SPDX-License-Identifier: MIT */
/* Devices: open, memory accounting, close. */
#include "common.h"

Test(device, open_default_attributes, .timeout = T_SHORT)
{
	hmm_device_t *dev = NULL;
	size_t used = 99, total = 0;

	need_hmm();
	cr_assert_eq(hmm_device_open("sim", NULL, &dev), 0);
	cr_assert_not_null(dev);
	cr_assert_eq(hmm_device_mem_usage(dev, &used, &total), 0);
	cr_assert_eq(used, 0);
	cr_assert_gt(total, 0);
	cr_assert_eq(hmm_device_close(dev), 0);

	struct hmm_device_attr zero = { 0 };
	dev = NULL;
	cr_assert_eq(hmm_device_open("sim", &zero, &dev), 0);
	cr_assert_not_null(dev);
	cr_assert_eq(hmm_device_close(dev), 0);
}

Test(device, open_with_size_and_engines, .timeout = T_SHORT)
{
	struct hmm_device_attr attr = { .mem_size = 48 * PG, .engines = 3 };
	hmm_device_t *dev = NULL;
	size_t used = 99, total = 0;

	need_hmm();
	cr_assert_eq(hmm_device_open("sim", &attr, &dev), 0);
	cr_assert_eq(hmm_device_mem_usage(dev, &used, &total), 0);
	cr_assert_eq(used, 0);
	cr_assert_eq(total, 48);
	cr_assert_eq(hmm_device_close(dev), 0);
}

Test(device, usage_follows_migrations, .timeout = T_SHORT)
{
	const size_t len = 40 * PG;
	hmm_device_t *dev;
	size_t used = 0, total = 0;
	char *p;

	need_hmm();
	dev = open_sim(64 * PG);
	p = map_adopt(len);
	fill_pattern(p, len, 0xd1);
	assert_migrate(p, 10 * PG, dev, 10);
	cr_assert_eq(hmm_device_mem_usage(dev, &used, &total), 0);
	cr_assert_eq(used, 10);
	cr_assert_eq(total, 64);
	cr_assert_eq(stat_of("device_bytes_in_use"), 10 * PG);
	assert_migrate(p, len, dev, 30);
	cr_assert_eq(dev_used(dev), 40);
	cr_assert_eq(stat_of("device_bytes_in_use"), 40 * PG);
	assert_migrate(p, 20 * PG, NULL, 20);
	cr_assert_eq(dev_used(dev), 20);
	cr_assert_eq(stat_of("device_bytes_in_use"), 20 * PG);
	/* A CPU fault gives the device page back too. */
	cr_assert_eq(pattern_mismatch(p + 30 * PG, PG, 0xd1,
				      30 * WORDS_PER_PAGE), -1);
	settle(p, len);
	size_t on_dev = count_loc(p, len, HMM_LOC_DEVICE);
	cr_assert_lt(on_dev, 20);
	cr_assert_eq(wait_dev_used(dev, on_dev), on_dev);
	cr_assert_eq(wait_stat_eq("device_bytes_in_use", on_dev * PG, 1000),
		     on_dev * PG);
	assert_migrate(p, len, NULL, on_dev);
	cr_assert_eq(dev_used(dev), 0);
	cr_assert_eq(stat_of("device_bytes_in_use"), 0);
	assert_pattern(p, len, 0xd1);
}

static void close_scenario(bool use_alloc)
{
	const size_t len = 64 * PG;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = use_alloc ? alloc_managed(len) : map_adopt(len);
	fill_pattern(p, len, 0xc105e);
	assert_migrate(p, len, dev, len / PG);
	cr_assert_eq(stat_of("device_bytes_in_use"), len);
	cr_assert_eq(hmm_device_close(dev), 0);
	/* Look before touching: the pages are back already. */
	assert_all_loc(p, len, HMM_LOC_SYSTEM, NULL);
	cr_assert_eq(stat_of("device_bytes_in_use"), 0);
	assert_pattern(p, len, 0xc105e);
	/* Still managed: another device can take it. */
	dev = open_sim(len);
	assert_migrate(p, len, dev, len / PG);
	assert_pattern(p, len, 0xc105e);
}

Test(device, close_brings_adopted_pages_back, .timeout = T_SHORT)
{
	close_scenario(false);
}

Test(device, close_brings_allocated_pages_back, .timeout = T_SHORT)
{
	close_scenario(true);
}

Test(device, close_one_of_two, .timeout = T_SHORT)
{
	const size_t len = 16 * PG;
	hmm_device_t *a, *b;
	char *p, *q;

	need_hmm();
	a = open_sim(len);
	b = open_sim(len);
	cr_assert_neq(a, b);
	p = map_adopt(len);
	q = map_adopt(len);
	fill_pattern(p, len, 0xaa);
	fill_pattern(q, len, 0xbb);
	assert_migrate(p, len, a, len / PG);
	assert_migrate(q, len, b, len / PG);
	cr_assert_eq(hmm_device_close(b), 0);
	assert_all_loc(q, len, HMM_LOC_SYSTEM, NULL);
	assert_all_loc(p, len, HMM_LOC_DEVICE, a);
	cr_assert_eq(dev_used(a), len / PG);
	assert_pattern(q, len, 0xbb);
	assert_pattern(p, len, 0xaa);
	cr_assert_eq(hmm_device_close(a), 0);
}

Test(device, many_devices, .timeout = T_SHORT)
{
	enum { N = 8 };
	hmm_device_t *d[N];
	char *p;

	need_hmm();
	p = map_adopt(N * PG);
	fill_pattern(p, N * PG, 0x8888);
	for (int i = 0; i < N; i++) {
		d[i] = open_sim(4 * PG);
		for (int j = 0; j < i; j++)
			cr_assert_neq(d[i], d[j]);
		assert_migrate(p + i * PG, PG, d[i], 1);
	}
	for (int i = 0; i < N; i++) {
		hmm_device_t *where = NULL;

		cr_assert_eq(loc_of(p + i * PG, &where), HMM_LOC_DEVICE);
		cr_assert_eq(where, d[i], "page %d", i);
	}
	for (int i = 0; i < N; i += 2)
		cr_assert_eq(hmm_device_close(d[i]), 0);
	for (int i = 0; i < N; i++)
		cr_assert_eq(loc_of(p + i * PG, NULL),
			     i % 2 ? HMM_LOC_DEVICE : HMM_LOC_SYSTEM, "page %d", i);
	assert_pattern(p, N * PG, 0x8888);
	for (int i = 1; i < N; i += 2)
		cr_assert_eq(hmm_device_close(d[i]), 0);
}

Test(device, open_close_repeatedly, .timeout = T_SHORT)
{
	char *p;

	need_hmm();
	p = map_adopt(8 * PG);
	fill_pattern(p, 8 * PG, 0x4e4e);
	for (int i = 0; i < 50; i++) {
		hmm_device_t *dev = open_sim(8 * PG);

		assert_migrate(p, 8 * PG, dev, 8);
		cr_assert_eq(hmm_device_close(dev), 0);
		assert_all_loc(p, 8 * PG, HMM_LOC_SYSTEM, NULL);
	}
	assert_pattern(p, 8 * PG, 0x4e4e);
	cr_assert_eq(stat_of("device_bytes_in_use"), 0);
}

Test(device, close_keeps_what_the_device_wrote, .timeout = T_SHORT)
{
	const size_t len = 16 * PG;
	hmm_device_t *dev;
	uint64_t *w;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0xc10);
	assert_migrate(p, len, dev, 16);
	/* The device overwrites pages 4..7 in its own memory. */
	cr_assert_eq(hmm_sim_fill64(dev, p + 4 * PG, 0x4444, 4 * PG, NULL), 0);
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);
	cr_assert_eq(hmm_device_close(dev), 0);
	assert_all_loc(p, len, HMM_LOC_SYSTEM, NULL);
	w = (uint64_t *)p;
	for (size_t i = 4 * WORDS_PER_PAGE; i < 8 * WORDS_PER_PAGE; i++)
		cr_assert_eq(w[i], 0x4444, "word %zu", i);
	cr_assert_eq(pattern_mismatch(p, 4 * PG, 0xc10, 0), -1);
	cr_assert_eq(pattern_mismatch(p + 8 * PG, 8 * PG, 0xc10,
				      8 * WORDS_PER_PAGE), -1);
}
