/* SPDX-License-Identifier: MIT */
/* Counters: what each operation adds, and the device-memory gauge. */
#include "common.h"

struct snap {
	uint64_t cpu_faults, device_faults, pto_dev, pto_sys, bto_dev, bto_sys;
};

static struct snap take(void)
{
	struct snap s = {
		.cpu_faults = stat_of("cpu_faults"),
		.device_faults = stat_of("device_faults"),
		.pto_dev = stat_of("pages_to_device"),
		.pto_sys = stat_of("pages_to_system"),
		.bto_dev = stat_of("bytes_to_device"),
		.bto_sys = stat_of("bytes_to_system"),
	};
	return s;
}

Test(stats, migration_counts_pages_and_bytes, .timeout = T_SHORT)
{
	const size_t n = 24, len = n * PG;
	hmm_device_t *dev;
	struct snap a, b;
	char *p;

	need_hmm();
	dev = open_sim(64 * PG);
	p = map_adopt(len);
	fill_pattern(p, len, 0x57a7);
	cr_assert_eq(stat_of("device_bytes_in_use"), 0);
	a = take();
	assert_migrate(p, len, dev, n);
	b = take();
	cr_assert_eq(b.pto_dev - a.pto_dev, n);
	cr_assert_eq(b.bto_dev - a.bto_dev, n * PG);
	cr_assert_eq(b.pto_sys, a.pto_sys);
	cr_assert_eq(b.cpu_faults, a.cpu_faults);
	cr_assert_eq(stat_of("device_bytes_in_use"), len);

	a = b;
	assert_migrate(p, len, NULL, n);
	b = take();
	cr_assert_eq(b.pto_sys - a.pto_sys, n);
	cr_assert_eq(b.bto_sys - a.bto_sys, n * PG);
	cr_assert_eq(b.pto_dev, a.pto_dev);
	cr_assert_eq(b.cpu_faults, a.cpu_faults,
		     "an explicit migration is not a CPU fault");
	cr_assert_eq(stat_of("device_bytes_in_use"), 0);
	assert_pattern(p, len, 0x57a7);
}

Test(stats, reset_then_count, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(64 * PG);
	p = map_adopt(8 * PG);
	fill_pattern(p, 8 * PG, 1);
	assert_migrate(p, 8 * PG, dev, 8);
	hmm_stats_reset();
	assert_migrate(p, 8 * PG, NULL, 8);
	assert_migrate(p, 4 * PG, dev, 4);
	cr_assert_eq(stat_of("pages_to_system"), 8);
	cr_assert_eq(stat_of("pages_to_device"), 4);
	cr_assert_eq(stat_of("bytes_to_device"), 4 * PG);
	cr_assert_eq(stat_of("device_bytes_in_use"), 4 * PG);
}

Test(stats, cpu_fault_counts, .timeout = T_SHORT)
{
	const size_t len = 32 * PG;
	hmm_device_t *dev;
	struct snap a, b;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = alloc_managed(len);
	fill_pattern(p, len, 0xcf);
	assert_migrate(p, len, dev, 32);
	a = take();
	cr_assert_eq(((volatile uint64_t *)(p + 20 * PG))[3],
		     (20 * WORDS_PER_PAGE + 3) ^ 0xcf);
	settle(p, len);
	/* The counters may trail the pages by a moment: poll them. */
	size_t on_dev = count_loc(p, len, HMM_LOC_DEVICE);
	uint64_t back = wait_stat_eq("pages_to_system", a.pto_sys + 32 - on_dev,
				     1000) - a.pto_sys;
	cr_assert_eq(back, 32 - on_dev,
		     "%zu pages left the device, pages_to_system grew by %llu",
		     32 - on_dev, (unsigned long long)back);
	cr_assert_geq(back, 1);
	b = take();
	cr_assert_geq(b.cpu_faults - a.cpu_faults, 1);
	cr_assert_eq(wait_stat_eq("bytes_to_system", a.bto_sys + back * PG, 1000)
		     - a.bto_sys, back * PG);
	cr_assert_eq(wait_stat_eq("device_bytes_in_use", on_dev * PG, 1000),
		     on_dev * PG);

	/* Touching all of it brings every page back, each counted once. */
	assert_pattern(p, len, 0xcf);
	settle(p, len);
	back = wait_stat_eq("pages_to_system", a.pto_sys + 32, 1000) - a.pto_sys;
	cr_assert_eq(back, 32, "pages_to_system grew by %llu",
		     (unsigned long long)back);
	b = take();
	cr_assert_geq(b.cpu_faults - a.cpu_faults, 1);
	cr_assert_leq(b.cpu_faults - a.cpu_faults, 32);
	cr_assert_eq(wait_stat_eq("device_bytes_in_use", 0, 1000), 0);
}

Test(stats, cpu_access_to_system_page_is_no_fault, .timeout = T_SHORT)
{
	const size_t len = 16 * PG;
	struct snap a, b;
	char *p;

	need_hmm();
	p = map_adopt(len);
	fill_pattern(p, len, 2);
	a = take();
	assert_pattern(p, len, 2);
	fill_pattern(p, len, 3);
	b = take();
	cr_assert_eq(b.cpu_faults, a.cpu_faults);
	cr_assert_eq(b.pto_sys, a.pto_sys);
}

/* The kernel test driver's convention: a cold read is one fault round. */
static void cold_read(bool touched)
{
	const size_t n = 8, len = n * PG;
	struct hmm_sim_result res = { 99, 99 };
	hmm_device_t *dev;
	char *p, *buf;
	uint64_t f0, f1;

	need_hmm();
	dev = open_sim(64 * PG);
	p = map_anon(len);
	buf = map_anon(len);
	if (touched)
		fill_pattern(p, len, 0xc01d);
	f0 = stat_of("device_faults");
	cr_assert_eq(hmm_sim_read(dev, p, buf, len, &res), 0);
	f1 = stat_of("device_faults");
	cr_assert_eq(res.faults, 1);
	cr_assert_eq(res.pages, n);
	cr_assert_eq(f1 - f0, 1);
	if (touched)
		assert_pattern(buf, len, 0xc01d);
	else
		assert_zero(buf, len);

	/* Warm: the mirror has it, no fault. */
	memset(&res, 0xff, sizeof(res));
	cr_assert_eq(hmm_sim_read(dev, p, buf, len, &res), 0);
	cr_assert_eq(res.faults, 0);
	cr_assert_eq(res.pages, n);
	cr_assert_eq(stat_of("device_faults"), f1);
}

Test(stats, cold_device_read_is_one_fault, .timeout = T_SHORT)
{
	cold_read(true);
}

Test(stats, cold_device_read_of_untouched_memory, .timeout = T_SHORT)
{
	cold_read(false);
}

Test(stats, cold_device_write_is_one_fault, .timeout = T_SHORT)
{
	const size_t n = 16, len = n * PG;
	struct hmm_sim_result res = { 99, 99 };
	hmm_device_t *dev;
	char *p, *buf;
	uint64_t f0;

	need_hmm();
	dev = open_sim(64 * PG);
	p = map_adopt(len);
	buf = map_anon(len);
	fill_pattern(buf, len, 0x3e);
	f0 = stat_of("device_faults");
	cr_assert_eq(hmm_sim_write(dev, p, buf, len, &res), 0);
	cr_assert_eq(res.faults, 1);
	cr_assert_eq(res.pages, n);
	cr_assert_eq(stat_of("device_faults") - f0, 1);
	assert_pattern(p, len, 0x3e);
}

Test(stats, gauge_matches_pages_on_devices, .timeout = T_SHORT)
{
	const size_t len = 64 * PG;
	hmm_device_t *a, *b;
	char *p;

	need_hmm();
	a = open_sim(len);
	b = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 4);
	assert_migrate(p, 20 * PG, a, 20);
	assert_migrate(p + 20 * PG, 30 * PG, b, 30);
	cr_assert_eq(stat_of("device_bytes_in_use"), 50 * PG);
	cr_assert_eq(dev_used(a), 20);
	cr_assert_eq(dev_used(b), 30);
	cr_assert_eq(hmm_device_close(a), 0);
	cr_assert_eq(stat_of("device_bytes_in_use"), 30 * PG);
	assert_migrate(p, len, NULL, 30);
	cr_assert_eq(stat_of("device_bytes_in_use"), 0);
	assert_pattern(p, len, 4);
}

/* Every counter as one JSON object; snprintf-like sizes and truncation. */
Test(stats, json_has_every_counter, .timeout = T_SHORT)
{
	char small[16], *buf, key[64];
	long need, n;
	uint64_t v;

	need_hmm();
	need = hmm_stats_json(NULL, 0);
	cr_assert_gt(need, 100);
	buf = malloc((size_t)need + 1);
	cr_assert_not_null(buf);
	n = hmm_stats_json(buf, (size_t)need + 1);
	cr_assert_eq(n, need);
	cr_assert_eq(strlen(buf), (size_t)need);
	cr_assert_eq(buf[0], '{');
	cr_assert_eq(buf[need - 1], '}');
	/* Each counter hmm_stat_get knows is there, with a value (the
	 * gauges may move between the two calls; counters here do not). */
	const char *names[] = { "cpu_faults", "pages_to_device", "iommu_faults",
				"prefetches", "metadata_bytes" };
	for (size_t i = 0; i < sizeof(names) / sizeof(*names); i++) {
		snprintf(key, sizeof(key), "\"%s\": ", names[i]);
		cr_assert_not_null(strstr(buf, key), "%s missing", names[i]);
		cr_assert_eq(hmm_stat_get(names[i], &v), 0);
	}
	snprintf(key, sizeof(key), "\"cpu_faults\": %llu",
		 (unsigned long long)(hmm_stat_get("cpu_faults", &v), v));
	cr_assert_not_null(strstr(buf, key));
	/* One "name": value pair per counter, separated by ", ". */
	size_t colons = 0;
	for (char *p = buf; *p; p++)
		colons += *p == ':';
	size_t lines = 0;
	FILE *f = tmpfile();
	cr_assert_not_null(f);
	hmm_stats_print(f);
	rewind(f);
	for (int c; (c = fgetc(f)) != EOF;)
		lines += c == '\n';
	fclose(f);
	cr_assert_eq(colons, lines, "%zu pairs, %zu counters", colons, lines);
	/* Too short: truncated, NUL-terminated, same size returned. */
	cr_assert_eq(hmm_stats_json(small, sizeof(small)), need);
	cr_assert_eq(strlen(small), sizeof(small) - 1);
	cr_assert_eq(strncmp(small, buf, sizeof(small) - 1), 0);
	cr_assert_eq(hmm_stats_json(NULL, 8), -EINVAL);
	free(buf);
}

/* Options: bad names and NULL pointers get errors and change nothing. */
Test(stats, option_bad_input, .timeout = T_SHORT)
{
	long v = 0;

	cr_assert_eq(hmm_option_set(NULL, 1), -EINVAL);
	cr_assert_eq(hmm_option_get(NULL, &v), -EINVAL);
	cr_assert_eq(hmm_option_get("FAULT_AROUND", NULL), -EINVAL);
	cr_assert_eq(hmm_option_set("NO_SUCH_OPTION", 1), -ENOENT);
	cr_assert_eq(hmm_option_get("NO_SUCH_OPTION", &v), -ENOENT);
	cr_assert_eq(hmm_option_set("FAULT_AROUND", -1), -ERANGE);
	cr_assert_eq(hmm_option_get("FAULT_AROUND", &v), 0);
	cr_assert_eq(v, 64 << 10, "a refused set changed the option");
}
