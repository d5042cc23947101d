/* SPDX-License-Identifier: MIT */
/* Migration between system memory and devices, and CPU fault-back. */
#include <sys/uio.h>

#include <hmm/hmm_driver.h>

#include "common.h"

static const size_t sizes[] = { 1, 2, 3, 16, 511, 512, 513, 2048 + 7 };

/* Full round trip of @npages pages of fresh memory. */
static void round_trip(hmm_device_t *dev, size_t npages, bool use_alloc)
{
	const size_t len = npages * PG;
	const uint64_t seed = 0x1000 + npages;
	char *p = use_alloc ? alloc_managed(len) : map_adopt(len);

	fill_pattern(p, len, seed);
	assert_migrate(p, len, dev, npages);
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);
	cr_assert_eq(dev_used(dev), npages);
	/* Already there: nothing moves. */
	assert_migrate(p, len, dev, 0);
	assert_migrate(p, len, NULL, npages);
	assert_all_loc(p, len, HMM_LOC_SYSTEM, NULL);
	cr_assert_eq(dev_used(dev), 0);
	assert_migrate(p, len, NULL, 0);
	assert_pattern(p, len, seed);

	/* Again, and this time the CPU brings the pages back by reading. */
	assert_migrate(p, len, dev, npages);
	assert_pattern(p, len, seed);
	settle(p, len);
	assert_all_loc(p, len, HMM_LOC_SYSTEM, NULL);
	cr_assert_eq(wait_dev_used(dev, 0), 0);

	/* And by writing. */
	assert_migrate(p, len, dev, npages);
	fill_pattern(p, len, ~seed);
	settle(p, len);
	assert_all_loc(p, len, HMM_LOC_SYSTEM, NULL);
	assert_pattern(p, len, ~seed);
	if (use_alloc)
		cr_assert_eq(hmm_mem_free(p, len), 0);
	else
		cr_assert_eq(munmap(p, len), 0);
}

Test(migrate, round_trip_sizes_adopted, .timeout = T_SHORT)
{
	hmm_device_t *dev;

	need_hmm();
	dev = open_sim(4096 * PG);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		round_trip(dev, sizes[i], false);
}

Test(migrate, round_trip_sizes_allocated, .timeout = T_SHORT)
{
	hmm_device_t *dev;

	need_hmm();
	dev = open_sim(4096 * PG);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		round_trip(dev, sizes[i], true);
}

Test(migrate, location_of_unmanaged_and_system, .timeout = T_SHORT)
{
	hmm_device_t *dev, *d;
	char *p, *x;

	need_hmm();
	dev = open_sim(4 * PG);
	x = map_anon(PG);
	p = map_adopt(2 * PG);
	d = (hmm_device_t *)0x1;
	cr_assert_eq(hmm_page_location(x, &d), HMM_LOC_UNMANAGED);
	cr_assert_null(d);
	d = (hmm_device_t *)0x1;
	cr_assert_eq(hmm_page_location(p + 100, &d), HMM_LOC_SYSTEM);
	cr_assert_null(d);
	assert_migrate(p, PG, dev, 1);
	d = NULL;
	/* Any address inside the page tells the page's location. */
	cr_assert_eq(hmm_page_location(p + PG - 1, &d), HMM_LOC_DEVICE);
	cr_assert_eq(d, dev);
	cr_assert_eq(hmm_page_location(p + PG, NULL), HMM_LOC_SYSTEM);
}

Test(migrate, cpu_read_of_device_page, .timeout = T_SHORT)
{
	const size_t len = 16 * PG;
	hmm_device_t *dev;
	uint64_t *w;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0xabcd);
	assert_migrate(p, len, dev, 16);
	w = (uint64_t *)(p + 5 * PG);
	cr_assert_eq(w[17], (5 * WORDS_PER_PAGE + 17) ^ 0xabcd);
	cr_assert_eq(loc_of(p + 5 * PG, NULL), HMM_LOC_SYSTEM);
	cr_assert_eq(pattern_mismatch(w, PG, 0xabcd, 5 * WORDS_PER_PAGE), -1);
	settle(p, len);
	size_t on_dev = count_loc(p, len, HMM_LOC_DEVICE);
	cr_assert_eq(wait_dev_used(dev, on_dev), on_dev);
	assert_pattern(p, len, 0xabcd);
}

Test(migrate, cpu_write_to_device_page, .timeout = T_SHORT)
{
	const size_t len = 16 * PG;
	hmm_device_t *dev;
	volatile uint64_t *w;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = alloc_managed(len);
	fill_pattern(p, len, 0x77);
	assert_migrate(p, len, dev, 16);
	w = (uint64_t *)(p + 7 * PG);
	/* A store with no load before it. */
	w[100] = 0xfeedfacecafebeefULL;
	cr_assert_eq(loc_of(p + 7 * PG, NULL), HMM_LOC_SYSTEM);
	cr_assert_eq(w[100], 0xfeedfacecafebeefULL);
	w[100] = (7 * WORDS_PER_PAGE + 100) ^ 0x77;
	assert_pattern(p, len, 0x77);
}

Test(migrate, cpu_byte_write_keeps_rest_of_page, .timeout = T_SHORT)
{
	const size_t len = 4 * PG;
	hmm_device_t *dev;
	volatile unsigned char *c;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0x3c3c);
	assert_migrate(p, len, dev, 4);
	c = (unsigned char *)p + 2 * PG + 1234;
	/* The byte the pattern put there (little endian), not read first. */
	unsigned char old =
		(unsigned char)(((2 * WORDS_PER_PAGE + 1234 / 8) ^ 0x3c3c) >>
				(8 * (1234 % 8)));
	*c = (unsigned char)~old;
	cr_assert_eq(*c, (unsigned char)~old);
	*c = old;
	assert_pattern(p, len, 0x3c3c);
}

Test(migrate, untouched_pages_migrate_as_zero, .timeout = T_SHORT)
{
	const size_t len = 64 * PG;
	hmm_device_t *dev;
	char *p, *m;
	char buf[64];

	need_hmm();
	dev = open_sim(2 * len);
	p = map_adopt(len);
	m = alloc_managed(len);
	assert_migrate(p, len, dev, 64);
	assert_migrate(m, len, dev, 64);
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);
	assert_all_loc(m, len, HMM_LOC_DEVICE, dev);
	/* The device sees zeros, in place. */
	memset(buf, 0xff, sizeof(buf));
	cr_assert_eq(hmm_sim_read(dev, p + 9 * PG + 8, buf, sizeof(buf), NULL),
		     0);
	assert_zero(buf, sizeof(buf));
	cr_assert_eq(loc_of(p + 9 * PG, NULL), HMM_LOC_DEVICE);
	assert_zero(p, len);
	assert_zero(m, len);
	fill_pattern(p, len, 5);
	fill_pattern(m, len, 6);
	assert_pattern(p, len, 5);
	assert_pattern(m, len, 6);
}

Test(migrate, half_touched_range, .timeout = T_SHORT)
{
	const size_t len = 32 * PG;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	/* Write only the even pages. */
	for (size_t i = 0; i < 32; i += 2)
		fill_pattern(p + i * PG, PG, i);
	assert_migrate(p, len, dev, 32);
	for (size_t i = 0; i < 32; i++) {
		if (i % 2)
			cr_assert_eq(zero_mismatch(p + i * PG, PG), -1, "page %zu", i);
		else
			cr_assert_eq(pattern_mismatch(p + i * PG, PG, i, 0), -1,
				     "page %zu", i);
	}
}

Test(migrate, sub_range, .timeout = T_SHORT)
{
	const size_t len = 32 * PG;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0x5b);
	assert_migrate(p + 8 * PG, 8 * PG, dev, 8);
	assert_all_loc(p, 8 * PG, HMM_LOC_SYSTEM, NULL);
	assert_all_loc(p + 8 * PG, 8 * PG, HMM_LOC_DEVICE, dev);
	assert_all_loc(p + 16 * PG, 16 * PG, HMM_LOC_SYSTEM, NULL);
	/* The whole range: only the pages not yet there move. */
	assert_migrate(p, len, dev, 24);
	assert_migrate(p + 4 * PG, 4 * PG, NULL, 4);
	assert_migrate(p, len, NULL, 28);
	assert_pattern(p, len, 0x5b);
}

Test(migrate, between_two_devices, .timeout = T_SHORT)
{
	const size_t len = 64 * PG;
	hmm_device_t *a, *b;
	char buf[PG];
	char *p;

	need_hmm();
	a = open_sim(len);
	b = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0xab);
	assert_migrate(p, len, a, 64);
	assert_migrate(p, len, b, 64);
	assert_all_loc(p, len, HMM_LOC_DEVICE, b);
	cr_assert_eq(dev_used(a), 0);
	cr_assert_eq(dev_used(b), 64);
	cr_assert_eq(hmm_sim_read(b, p + 10 * PG, buf, PG, NULL), 0);
	cr_assert_eq(pattern_mismatch(buf, PG, 0xab, 10 * WORDS_PER_PAGE), -1);
	/* Half back to A, then the CPU reads everything. */
	assert_migrate(p, len / 2, a, 32);
	assert_all_loc(p, len / 2, HMM_LOC_DEVICE, a);
	assert_all_loc(p + len / 2, len / 2, HMM_LOC_DEVICE, b);
	assert_pattern(p, len, 0xab);
	settle(p, len);
	size_t on_a = 0, on_b = 0;
	for (size_t off = 0; off < len; off += PG) {
		hmm_device_t *d = NULL;

		if (loc_of(p + off, &d) == HMM_LOC_DEVICE)
			*(d == a ? &on_a : &on_b) += 1;
	}
	cr_assert_eq(wait_dev_used(a, on_a), on_a);
	cr_assert_eq(wait_dev_used(b, on_b), on_b);
}

Test(migrate, many_cycles_with_new_data, .timeout = T_SHORT)
{
	const size_t len = 64 * PG;
	hmm_device_t *a, *b;
	char *p;

	need_hmm();
	a = open_sim(len);
	b = open_sim(len);
	p = map_adopt(len);
	for (uint64_t round = 0; round < 40; round++) {
		hmm_device_t *dev = round % 2 ? a : b;

		fill_pattern(p, len, round * 0x10001);
		settle(p, len);
		assert_migrate(p, len, dev, 64);
		if (round % 3 == 0)
			assert_migrate(p, len, NULL, 64);
		assert_pattern(p, len, round * 0x10001);
	}
}

/* System calls reading or writing device-resident pages. */
Test(migrate, syscalls_touch_device_pages, .timeout = T_SHORT)
{
	const size_t len = 4 * PG;
	hmm_device_t *dev;
	int fds[2];
	char *p, *src;

	need_hmm();
	if (!(hmm_caps() & HMM_CAP_KERNEL_FAULTS))
		cr_skip_test("no HMM_CAP_KERNEL_FAULTS: syscalls get EFAULT");
	dev = open_sim(len);
	p = map_adopt(len);
	src = map_anon(PG);
	fill_pattern(p, len, 0x51);
	fill_pattern(src, PG, 0x99);
	assert_migrate(p, len, dev, 4);
	cr_assert_eq(pipe(fds), 0);

	/* write() from a device-resident page. */
	cr_assert_eq(write(fds[1], p + PG, PG), (ssize_t)PG);
	cr_assert_eq(read(fds[0], src, PG), (ssize_t)PG);
	cr_assert_eq(pattern_mismatch(src, PG, 0x51, WORDS_PER_PAGE), -1);
	settle(p, len);

	/* read() into the middle of a device-resident page. */
	cr_assert_geq(hmm_migrate(p, len, dev, 0), 1);
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);
	uint64_t words[4] = { 1, 2, 3, 4 };
	cr_assert_eq(write(fds[1], words, sizeof(words)), (ssize_t)sizeof(words));
	cr_assert_eq(read(fds[0], p + 2 * PG + 64, sizeof(words)),
		     (ssize_t)sizeof(words));
	uint64_t *w = (uint64_t *)(p + 2 * PG);
	for (int i = 0; i < 4; i++) {
		cr_assert_eq(w[8 + i], (uint64_t)i + 1);
		w[8 + i] = (2 * WORDS_PER_PAGE + 8 + i) ^ 0x51;
	}
	assert_pattern(p, len, 0x51);
	settle(p, len);

	/* Gathering writes from a device-resident page. */
	cr_assert_geq(hmm_migrate(p, len, dev, 0), 1);
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);
	struct iovec iov = { .iov_base = p + 3 * PG, .iov_len = PG };
	cr_assert_eq(writev(fds[1], &iov, 1), (ssize_t)PG);
	cr_assert_eq(read(fds[0], src, PG), (ssize_t)PG);
	cr_assert_eq(pattern_mismatch(src, PG, 0x51, 3 * WORDS_PER_PAGE), -1);
	close(fds[0]);
	close(fds[1]);
}

/* Transparent huge pages: whole, and split by partial migrations. */
Test(migrate, transparent_huge_pages, .timeout = T_SHORT)
{
	const size_t huge = 2UL << 20, len = 2 * huge;
	hmm_device_t *dev;
	char *raw, *p;

	need_hmm();
	dev = open_sim(len);
	/* A 2 MiB aligned range inside a larger mapping. */
	raw = map_anon(len + huge);
	p = (char *)(((uintptr_t)raw + huge - 1) & ~(huge - 1));
	if (madvise(p, len, MADV_HUGEPAGE) != 0)
		cr_skip_test("MADV_HUGEPAGE: %s", strerror(errno));
	fill_pattern(p, len, 0x7a9);
	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	assert_pattern(p, len, 0x7a9);
	/* Part of the first huge page, then everything. */
	assert_migrate(p + 5 * PG, 3 * PG, dev, 3);
	cr_assert_eq(loc_of(p + 4 * PG, NULL), HMM_LOC_SYSTEM);
	cr_assert_eq(pattern_mismatch(p + 6 * PG, PG, 0x7a9,
				      6 * WORDS_PER_PAGE), -1);
	settle(p, len);
	size_t before = count_loc(p, len, HMM_LOC_DEVICE);
	cr_assert_leq(before, 2, "a CPU read of page 6 left %zu on the device",
		      before);
	assert_migrate(p, len, dev, len / PG - before);
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);
	assert_pattern(p, len, 0x7a9);
	settle(p, len);
	/* The second huge page back as a whole, explicitly. */
	assert_migrate(p, len, dev, len / PG);
	assert_migrate(p + huge, huge, NULL, huge / PG);
	fill_pattern(p, len, 0x7aa);
	assert_pattern(p, len, 0x7aa);
}

/*
 * Adaptive fault-around: a sequential CPU pass over device-resident data
 * grows its fault-back window from HMM_FAULT_AROUND up to a whole 2 MiB
 * block, so 8 MiB come home in a handful of faults; faults that do not
 * follow each other keep the plain window; with fault-around off every
 * fault brings one page.
 */
static uint64_t pass_faults(char *p, size_t len, hmm_device_t *dev,
			    const size_t *order, size_t norder)
{
	uint64_t f0;

	long m = hmm_migrate(p, len, dev, 0);

	cr_assert_geq(m, 0, "hmm_migrate = %ld", m);
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);
	f0 = stat_of("cpu_faults");
	for (size_t k = 0; k < norder; k++) {
		size_t i = order[k];
		cr_assert_eq(((volatile uint64_t *)p)[i * WORDS_PER_PAGE],
			     (uint64_t)(i * WORDS_PER_PAGE) ^ 77,
			     "page %zu", i);
	}
	return stat_of("cpu_faults") - f0;
}

Test(migrate, fault_around_grows_on_sequential_passes, .timeout = T_SHORT)
{
	const size_t len = 8 << 20, np = len / PG;
	size_t *seq = malloc(np * sizeof(*seq)), *strided;
	hmm_device_t *dev;
	uint64_t faults, s0;
	char *p;

	need_hmm();
	cr_assert_not_null(seq);
	for (size_t i = 0; i < np; i++)
		seq[i] = i;
	dev = open_sim(32 << 20);
	p = map_adopt(len); /* 2 MiB aligned: windows fall on 64 KiB */
	cr_assert_eq((uintptr_t)p % (2 << 20), 0);
	fill_pattern(p, len, 77);

	cr_assert_eq(hmm_option_set("FAULT_AROUND", 64 << 10), 0);
	s0 = stat_of("faultback_streams");
	faults = pass_faults(p, len, dev, seq, np);
	cr_log_info("sequential pass: %llu faults for %zu pages",
		    (unsigned long long)faults, np);
	cr_assert_leq(faults, 16, "%llu faults: the window did not grow",
		      (unsigned long long)faults);
	cr_assert_gt(stat_of("faultback_streams"), s0);
	assert_pattern(p, len, 77);

	/* Every 64th page, backwards: no fault continues another, each
	 * brings its 64 KiB window. */
	strided = malloc(np / 64 * sizeof(*strided));
	cr_assert_not_null(strided);
	for (size_t k = 0; k < np / 64; k++)
		strided[k] = np - 64 * (k + 1);
	s0 = stat_of("faultback_streams");
	faults = pass_faults(p, len, dev, strided, np / 64);
	cr_assert_eq(faults, np / 64);
	cr_assert_eq(stat_of("faultback_streams"), s0);
	size_t home = count_loc(p, len, HMM_LOC_SYSTEM);
	cr_assert_eq(home, np / 64 * 16,
		     "%zu pages home: each fault should bring its 16-page "
		     "window, no more", home);

	/* Fault-around off: one page a fault, even in order. */
	cr_assert_eq(hmm_option_set("FAULT_AROUND", 0), 0);
	faults = pass_faults(p, 64 * PG, dev, seq, 64);
	cr_assert_eq(faults, 64);
	free(strided);
	free(seq);
}

/*
 * Device to device: anonymous and shared pages go straight from one
 * device's memory to the other's (pages_peer), never through system
 * memory (pages_to_system unchanged, no CPU fault), with their data; the
 * CPU then brings them home from the second device.
 */
static void peer_case(bool use_alloc)
{
	const size_t n = 96, len = n * PG;
	hmm_device_t *a, *b;
	char buf[PG];
	char *p;

	need_hmm();
	a = open_sim(len);
	b = open_sim(2 * len);
	p = use_alloc ? alloc_managed(len) : map_adopt(len);
	fill_pattern(p, len, 0x5eed);
	assert_migrate(p, len, a, n);
	uint64_t peer0 = stat_of("pages_peer"), home0 = stat_of("pages_to_system");
	uint64_t faults0 = stat_of("cpu_faults");
	assert_migrate(p, len, b, n);
	cr_assert_eq(stat_of("pages_peer") - peer0, n);
	cr_assert_eq(stat_of("pages_to_system"), home0,
		     "pages went through system memory");
	cr_assert_eq(stat_of("cpu_faults"), faults0);
	assert_all_loc(p, len, HMM_LOC_DEVICE, b);
	cr_assert_eq(dev_used(a), 0);
	cr_assert_eq(dev_used(b), n);
	for (size_t i = 0; i < n; i += 7) {
		cr_assert_eq(hmm_sim_read(b, p + i * PG, buf, PG, NULL), 0);
		cr_assert_eq(pattern_mismatch(buf, PG, 0x5eed,
					      i * WORDS_PER_PAGE), -1,
			     "page %zu on the second device", i);
	}
	/* The device writes there, moves half back to the first device,
	 * and the CPU sees everything. */
	memset(buf, 0x77, PG);
	cr_assert_eq(hmm_sim_write(b, p + 3 * PG, buf, PG, NULL), 0);
	assert_migrate(p, len / 2, a, n / 2);
	cr_assert_eq(stat_of("pages_peer") - peer0, n + n / 2);
	cr_assert_eq(stat_of("pages_to_system"), home0);
	assert_all_loc(p, len / 2, HMM_LOC_DEVICE, a);
	cr_assert_eq(dev_used(a), n / 2);
	cr_assert_eq(dev_used(b), n / 2);
	for (size_t i = 0; i < n; i++) {
		if (i == 3) {
			cr_assert_eq(memcmp(p + i * PG, buf, PG), 0);
			continue;
		}
		cr_assert_eq(pattern_mismatch(p + i * PG, PG, 0x5eed,
					      i * WORDS_PER_PAGE), -1,
			     "page %zu", i);
	}
}

Test(migrate, peer_anonymous, .timeout = T_SHORT)
{
	peer_case(false);
}

Test(migrate, peer_shared, .timeout = T_SHORT)
{
	peer_case(true);
}

/* HMM_PEER_MIGRATE=0: the old way, through system memory, same data. */
Test(migrate, peer_off_goes_through_system, .timeout = T_SHORT)
{
	const size_t n = 32, len = n * PG;
	hmm_device_t *a, *b;
	char *p;

	need_hmm();
	cr_assert_eq(hmm_option_set("PEER_MIGRATE", 0), 0);
	a = open_sim(len);
	b = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0xfeed);
	assert_migrate(p, len, a, n);
	uint64_t peer0 = stat_of("pages_peer"), home0 = stat_of("pages_to_system");
	assert_migrate(p, len, b, n);
	cr_assert_eq(stat_of("pages_peer"), peer0);
	cr_assert_eq(stat_of("pages_to_system") - home0, n);
	assert_all_loc(p, len, HMM_LOC_DEVICE, b);
	assert_pattern(p, len, 0xfeed);
}

/*
 * The second device is too small: the pages that fit move straight, the
 * rest stay on the first device or come home, and no page loses its data.
 */
Test(migrate, peer_target_full, .timeout = T_SHORT)
{
	const size_t n = 64, len = n * PG;
	hmm_device_t *a, *b;
	char *p;

	need_hmm();
	cr_assert_eq(hmm_option_set("EVICT", 0), 0);
	a = open_sim(len);
	b = open_sim(len / 4);
	p = map_adopt(len);
	fill_pattern(p, len, 0xf011);
	assert_migrate(p, len, a, n);
	long r = hmm_migrate(p, len, b, 0);
	cr_assert_eq(r, -ENOMEM, "hmm_migrate = %ld", r);
	/* What fit moved; the rest stayed where it was. */
	cr_assert_eq(dev_used(b), n / 4);
	cr_assert_eq(dev_used(a), n - n / 4);
	assert_all_loc(p, len / 4, HMM_LOC_DEVICE, b);
	assert_all_loc(p + len / 4, len - len / 4, HMM_LOC_DEVICE, a);
	assert_pattern(p, len, 0xf011);
}

/* A page locked to the first device stays there; a page held for its
 * atomics loses the hold (hmm_migrate ends it) and moves straight, as do
 * the others. */
Test(migrate, peer_locked_and_held_pages, .timeout = T_SHORT)
{
	const size_t n = 16, len = n * PG;
	hmm_device_t *a, *b;
	char *p;

	need_hmm();
	a = open_sim(len);
	b = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0x10c);
	assert_migrate(p, len, a, n);
	cr_assert_eq(hmm_range_lock(p, PG, a), 0);
	cr_assert_eq(hmm_exclusive_begin(p + PG, PG, a, HMM_EXCL_REVOKE, 0), 0);
	cr_assert_eq(hmm_migrate(p, len, b, 0), -EBUSY);
	assert_all_loc(p, PG, HMM_LOC_DEVICE, a);
	uint64_t peer0 = stat_of("pages_peer");
	uint64_t revoked0 = stat_of("holds_revoked");
	long r = hmm_migrate(p + PG, len - PG, b, 0);
	cr_assert_eq(r, (long)n - 1, "hmm_migrate = %ld", r);
	cr_assert_eq(stat_of("pages_peer") - peer0, n - 1);
	cr_assert_eq(stat_of("holds_revoked") - revoked0, 1);
	assert_all_loc(p, PG, HMM_LOC_DEVICE, a);
	assert_all_loc(p + PG, len - PG, HMM_LOC_DEVICE, b);
	cr_assert_eq(hmm_range_unlock(p, PG, a), 1);
	assert_pattern(p, len, 0x10c);
}

/* A peer copy that fails leaves every page on the first device with its
 * data; the next try moves them. */
Test(migrate, peer_copy_failure_keeps_data, .timeout = T_SHORT)
{
	const size_t n = 32, len = n * PG;
	hmm_device_t *a, *b;
	char *p;

	need_hmm();
	a = open_sim(len);
	b = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0xe10);
	assert_migrate(p, len, a, n);
	uint64_t fails0 = stat_of("migration_failures");
	cr_assert_eq(hmm_inject_fault("copy_to_device", 0, 0, 1), 0);
	long r = hmm_migrate(p, len, b, 0);
	cr_assert_eq(r, -EIO, "hmm_migrate = %ld", r);
	cr_assert_eq(stat_of("migration_failures") - fails0, 1);
	assert_all_loc(p, len, HMM_LOC_DEVICE, a);
	cr_assert_eq(dev_used(a), n);
	cr_assert_eq(dev_used(b), 0);
	assert_migrate(p, len, b, n);
	assert_all_loc(p, len, HMM_LOC_DEVICE, b);
	assert_pattern(p, len, 0xe10);
}
