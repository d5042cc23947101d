/* SPDX-License-Identifier: MIT */
/* Process-wide state: hmm_init, hmm_caps, hmm_fini, stats and options. */
#include <sys/utsname.h>

#include "common.h"

static int kernel_at_least(int major, int minor)
{
	struct utsname u;
	int ma = 0, mi = 0;

	if (uname(&u) != 0 || sscanf(u.release, "%d.%d", &ma, &mi) != 2)
		return 0;
	return ma > major || (ma == major && mi >= minor);
}

Test(init, init_twice_is_harmless, .timeout = T_SHORT)
{
	need_hmm();
	cr_assert_eq(hmm_init(), 0);
	cr_assert_eq(hmm_init(), 0);
}

Test(init, lazy_init_on_first_use, .timeout = T_SHORT)
{
	/* No hmm_init: the first call creates the state. */
	void *p = NULL;
	int r = hmm_mem_alloc(4 * PG, 0, &p);

	if (r == -EPERM)
		cr_skip_test("no userfaultfd for this process");
	cr_assert_eq(r, 0, "hmm_mem_alloc = %d", r);
	assert_zero(p, 4 * PG);
	fill_pattern(p, 4 * PG, 0x1234);
	assert_pattern(p, 4 * PG, 0x1234);
	cr_assert_eq(hmm_mem_free(p, 4 * PG), 0);
}

Test(init, caps_match_privileges_and_kernel, .timeout = T_SHORT)
{
	int caps;

	need_hmm();
	caps = hmm_caps();
	cr_assert_geq(caps, 0, "hmm_caps() = %d", caps);
	cr_assert_eq(caps & ~0x7f, 0, "unknown cap bits in %#x", caps);
	if (geteuid() == 0)
		cr_assert(caps & HMM_CAP_KERNEL_FAULTS,
			  "root but no HMM_CAP_KERNEL_FAULTS (caps %#x)", caps);
	/* Userfaultfd events exist since 4.11 and shmem minor faults since
	 * 5.13; libhmm needs both on the kernels it supports. */
	if (kernel_at_least(5, 13)) {
		cr_assert(caps & HMM_CAP_EVENTS, "caps %#x lack EVENTS", caps);
		cr_assert(caps & HMM_CAP_MINOR_SHMEM,
			  "caps %#x lack MINOR_SHMEM", caps);
	}
	if (kernel_at_least(6, 8))
		cr_assert(caps & HMM_CAP_MOVE, "kernel >= 6.8, caps %#x lack MOVE",
			  caps);
}

Test(init, stat_names, .timeout = T_SHORT)
{
	static const char *const names[] = {
		"cpu_faults",	   "device_faults",   "pages_to_device",
		"pages_to_system", "bytes_to_device", "bytes_to_system",
		"invalidations",   "device_bytes_in_use",
	};
	uint64_t v = 12345;

	need_hmm();
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		cr_assert_eq(hmm_stat_get(names[i], &v), 0, "stat %s", names[i]);
	cr_assert_eq(hmm_stat_get("no_such_counter", &v), -ENOENT);
}

Test(init, stats_print_lists_counters, .timeout = T_SHORT)
{
	char *buf = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&buf, &size);

	need_hmm();
	cr_assert_not_null(f);
	hmm_stats_print(f);
	fclose(f);
	cr_assert_not_null(strstr(buf, "cpu_faults"), "output: %s", buf);
	cr_assert_not_null(strstr(buf, "pages_to_device"), "output: %s", buf);
	cr_assert_not_null(strstr(buf, "device_bytes_in_use"), "output: %s",
			   buf);
	free(buf);

	buf = NULL;
	f = open_memstream(&buf, &size);
	cr_assert_not_null(f);
	hmm_options_print(f);
	fclose(f);
	cr_assert_gt(size, 0, "hmm_options_print printed nothing");
	free(buf);
}

Test(init, stats_reset_zeroes_counters_not_gauges, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(64 * PG);
	p = map_adopt(8 * PG);
	fill_pattern(p, 8 * PG, 7);
	assert_migrate(p, 8 * PG, dev, 8);
	cr_assert_geq(stat_of("pages_to_device"), 8);
	hmm_stats_reset();
	cr_assert_eq(stat_of("pages_to_device"), 0);
	cr_assert_eq(stat_of("bytes_to_device"), 0);
	/* A gauge tells the present, a reset does not change it. */
	cr_assert_eq(stat_of("device_bytes_in_use"), 8 * PG);
	assert_pattern(p, 8 * PG, 7);
}

static void fini_scenario(bool use_alloc)
{
	const size_t len = 32 * PG;
	hmm_device_t *dev;
	void *p, *q = NULL;
	need_hmm();
	dev = open_sim(64 * PG);
	p = use_alloc ? alloc_managed(len) : map_adopt(len);
	fill_pattern(p, len, 0xf1f1);
	assert_migrate(p, len, dev, len / PG);
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);

	cr_assert_eq(hmm_fini(), 0);

	/* The data came back and the memory is plain memory now. */
	assert_pattern(p, len, 0xf1f1);
	fill_pattern(p, len, 0xabc);
	assert_pattern(p, len, 0xabc);

	cr_assert_eq(hmm_init(), -ESHUTDOWN);
	cr_assert_eq(hmm_caps(), -ESHUTDOWN);
	cr_assert_eq(hmm_range_adopt(map_anon(PG), PG, 0), -ESHUTDOWN);
	cr_assert_eq(hmm_range_release(p, len), -ESHUTDOWN);
	cr_assert_eq(hmm_mem_alloc(PG, 0, &q), -ESHUTDOWN);
	cr_assert_null(q);
	cr_assert_eq(hmm_migrate(p, len, NULL, 0), -ESHUTDOWN);
	cr_assert_eq(hmm_page_location(p, NULL), -ESHUTDOWN);
	dev = NULL;
	cr_assert_eq(hmm_device_open("sim", NULL, &dev), -ESHUTDOWN);
	cr_assert_null(dev);
	if (use_alloc)
		cr_assert_eq(hmm_mem_free(p, len), -ESHUTDOWN);
	assert_pattern(p, len, 0xabc);
}

Test(init, fini_brings_adopted_data_back, .timeout = T_SHORT)
{
	fini_scenario(false);
}

Test(init, fini_brings_allocated_data_back, .timeout = T_SHORT)
{
	fini_scenario(true);
}

Test(init, fini_twice, .timeout = T_SHORT)
{
	need_hmm();
	cr_assert_eq(hmm_fini(), 0);
	/* A second teardown must not crash; it may say it is shut down. */
	int r = hmm_fini();
	cr_assert(r == 0 || r == -ESHUTDOWN, "second hmm_fini() = %d", r);
}
