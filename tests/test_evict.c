/* SPDX-License-Identifier: MIT */
/*
 * Device-memory oversubscription: a working set larger than the device's
 * memory keeps working.  A migration that finds device memory full moves
 * the least recently used device pages home first; nothing is lost.
 */
#include "common.h"

#define DEV_PAGES 256

static uint64_t stat(const char *name)
{
	uint64_t v = 0;

	cr_assert_eq(hmm_stat_get(name, &v), 0, "hmm_stat_get(%s)", name);
	return v;
}

/* 4x the device's memory, migrated chunk by chunk, round and round. */
Test(evict, working_set_four_times_device_memory, .timeout = T_LONG)
{
	const size_t dev_len = DEV_PAGES * PG, len = 4 * dev_len;
	const size_t chunk = dev_len / 4;
	hmm_device_t *dev = NULL;
	char *buf = malloc(chunk);
	size_t used, total;
	char *p;

	need_hmm();
	dev = open_sim(dev_len);
	p = map_adopt(len);
	fill_pattern(p, len, 0xe1);
	for (int round = 0; round < 3; round++) {
		for (size_t off = 0; off < len; off += chunk) {
			long r = hmm_migrate(p + off, chunk, dev, 0);
			cr_assert_eq(r, (long)(chunk / PG),
				     "round %d, offset %zu: hmm_migrate = %ld",
				     round, off, r);
			/* The device reads what it holds. */
			cr_assert_eq(hmm_sim_read(dev, p + off, buf, chunk,
						  NULL), 0);
			cr_assert_eq(pattern_mismatch(buf, chunk, 0xe1,
						      off / 8), -1,
				     "device copy at %zu", off);
		}
	}
	cr_assert_eq(hmm_device_mem_usage(dev, &used, &total), 0);
	cr_assert_leq(used, total);
	cr_assert_gt(stat("pages_evicted"), 0, "nothing was evicted");
	assert_pattern(p, len, 0xe1);
	free(buf);
}

/* The clock keeps what the device keeps using: a hot chunk read by the
 * device between migrations of cold ones stays on the device. */
Test(evict, recently_used_pages_stay, .timeout = T_LONG)
{
	const size_t dev_len = DEV_PAGES * PG, chunk = dev_len / 4;
	hmm_device_t *dev = open_sim(dev_len), *d;
	char *hot, *cold, *buf = malloc(chunk);
	size_t n_hot_home = 0;

	need_hmm();
	hot = map_adopt(chunk);
	cold = map_adopt(8 * chunk);
	fill_pattern(hot, chunk, 1);
	fill_pattern(cold, 8 * chunk, 2);
	cr_assert_eq(hmm_migrate(hot, chunk, dev, 0), (long)(chunk / PG));
	for (int k = 0; k < 8; k++) {
		cr_assert_eq(hmm_sim_read(dev, hot, buf, chunk, NULL), 0);
		cr_assert_eq(hmm_migrate(cold + k * chunk, chunk, dev, 0),
			     (long)(chunk / PG));
	}
	for (size_t off = 0; off < chunk; off += PG)
		if (hmm_page_location(hot + off, &d) != HMM_LOC_DEVICE)
			n_hot_home++;
	cr_assert_lt(n_hot_home, chunk / PG / 2,
		     "%zu of %zu hot pages were evicted", n_hot_home,
		     chunk / PG);
	assert_pattern(hot, chunk, 1);
	assert_pattern(cold, 8 * chunk, 2);
	free(buf);
}

/* With eviction off, a full device refuses with -ENOMEM and nothing
 * moves or changes. */
Test(evict, disabled_gives_enomem, .timeout = T_SHORT)
{
	const size_t dev_len = 64 * PG;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	cr_assert_eq(hmm_option_set("HMM_EVICT", 0), 0);
	dev = open_sim(dev_len);
	p = map_adopt(2 * dev_len);
	fill_pattern(p, 2 * dev_len, 3);
	cr_assert_eq(hmm_migrate(p, dev_len, dev, 0), (long)(dev_len / PG));
	cr_assert_eq(hmm_migrate(p + dev_len, dev_len, dev, 0), -ENOMEM);
	assert_all_loc(p + dev_len, dev_len, HMM_LOC_SYSTEM, NULL);
	assert_pattern(p, 2 * dev_len, 3);
}
