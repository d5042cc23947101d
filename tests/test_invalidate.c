/* SPDX-License-Identifier: MIT */
/*
 * Invalidation: the CPU side changes (munmap, madvise, mremap, mprotect)
 * and neither the device nor the CPU may see stale data afterwards.
 * Events are handled asynchronously, so gauges are polled for up to 1 s.
 */
#include "common.h"

#define POLL_MS 1000

/* Poll until the page holding @addr reports @want, up to 1 s. */
static int wait_loc(const void *addr, int want)
{
	uint64_t end = now_ms() + POLL_MS;
	int l;

	while ((l = loc_of(addr, NULL)) != want && now_ms() < end)
		usleep(1000);
	return l;
}

static void munmap_then_fault(bool managed)
{
	const size_t len = 8 * PG;
	hmm_device_t *dev;
	char *p, *buf;

	need_hmm();
	dev = open_sim(len);
	p = managed ? map_adopt(len) : map_anon(len);
	buf = map_anon(len);
	fill_pattern(p, len, 0x1d);
	cr_assert_eq(hmm_sim_read(dev, p, buf, len, NULL), 0);
	assert_pattern(buf, len, 0x1d);
	cr_assert_eq(munmap(p, len), 0);
	cr_assert_eq(hmm_sim_read(dev, p, buf, len, NULL), -EFAULT);
	cr_assert_eq(hmm_sim_read(dev, p + 3 * PG, buf, 8, NULL), -EFAULT);
	cr_assert_eq(hmm_sim_write(dev, p, buf, 8, NULL), -EFAULT);
}

Test(invalidate, munmap_of_mirrored_plain_memory, .timeout = T_SHORT)
{
	munmap_then_fault(false);
}

Test(invalidate, munmap_of_mirrored_managed_memory, .timeout = T_SHORT)
{
	munmap_then_fault(true);
}

Test(invalidate, new_mapping_at_mirrored_address, .timeout = T_SHORT)
{
	const size_t len = 8 * PG;
	hmm_device_t *dev;
	char *p, *q, *buf;

	need_hmm();
	dev = open_sim(len);
	p = map_anon(len);
	buf = map_anon(len);
	fill_pattern(p, len, 0xaaa);
	cr_assert_eq(hmm_sim_read(dev, p, buf, len, NULL), 0);
	cr_assert_eq(munmap(p, len), 0);
	q = mmap(p, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	cr_assert_eq(q, p, "mmap at %p: %s", (void *)p, strerror(errno));
	cr_assert_eq(hmm_sim_read(dev, p, buf, len, NULL), 0);
	assert_zero(buf, len);
	fill_pattern(p, len, 0xbbb);
	cr_assert_eq(hmm_sim_read(dev, p, buf, len, NULL), 0);
	assert_pattern(buf, len, 0xbbb);
}

Test(invalidate, dontneed_device_resident_reads_zero, .timeout = T_SHORT)
{
	const size_t len = 32 * PG;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0xd0);
	assert_migrate(p, len, dev, 32);
	cr_assert_eq(stat_of("device_bytes_in_use"), len);
	cr_assert_eq(madvise(p, len, MADV_DONTNEED), 0);
	assert_zero(p, len);
	cr_assert_eq(wait_stat_eq("device_bytes_in_use", 0, POLL_MS), 0);
	cr_assert_eq(dev_used(dev), 0);
	/* Still managed, and usable. */
	fill_pattern(p, len, 0xd1);
	assert_migrate(p, len, dev, 32);
	assert_pattern(p, len, 0xd1);
}

Test(invalidate, dontneed_part_of_device_resident_range, .timeout = T_SHORT)
{
	const size_t len = 16 * PG;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0xd2);
	assert_migrate(p, len, dev, 16);
	cr_assert_eq(madvise(p + 4 * PG, 4 * PG, MADV_DONTNEED), 0);
	cr_assert_eq(wait_stat_eq("device_bytes_in_use", 12 * PG, POLL_MS),
		     12 * PG);
	assert_zero(p + 4 * PG, 4 * PG);
	cr_assert_eq(pattern_mismatch(p, 4 * PG, 0xd2, 0), -1);
	cr_assert_eq(pattern_mismatch(p + 8 * PG, 8 * PG, 0xd2,
				      8 * WORDS_PER_PAGE), -1);
}

Test(invalidate, device_read_after_dontneed, .timeout = T_SHORT)
{
	const size_t len = 8 * PG;
	hmm_device_t *dev;
	char *plain, *managed, *resident, *buf;

	need_hmm();
	dev = open_sim(len);
	plain = map_anon(len);
	managed = map_adopt(len);
	resident = map_adopt(len);
	buf = map_anon(len);
	fill_pattern(plain, len, 1);
	fill_pattern(managed, len, 2);
	fill_pattern(resident, len, 3);
	/* Mirror the first two, move the third to the device. */
	cr_assert_eq(hmm_sim_read(dev, plain, buf, len, NULL), 0);
	cr_assert_eq(hmm_sim_read(dev, managed, buf, len, NULL), 0);
	assert_pattern(buf, len, 2);
	assert_migrate(resident, len, dev, 8);
	cr_assert_eq(madvise(plain, len, MADV_DONTNEED), 0);
	cr_assert_eq(madvise(managed, len, MADV_DONTNEED), 0);
	cr_assert_eq(madvise(resident, len, MADV_DONTNEED), 0);
	memset(buf, 0xee, len);
	cr_assert_eq(hmm_sim_read(dev, plain, buf, len, NULL), 0);
	assert_zero(buf, len);
	memset(buf, 0xee, len);
	cr_assert_eq(hmm_sim_read(dev, managed, buf, len, NULL), 0);
	assert_zero(buf, len);
	memset(buf, 0xee, len);
	cr_assert_eq(hmm_sim_read(dev, resident, buf, len, NULL), 0);
	assert_zero(buf, len);
	assert_zero(plain, len);
	assert_zero(managed, len);
	assert_zero(resident, len);
}

/* Shared memory keeps its data through MADV_DONTNEED: it must not be lost
 * because the page lived on a device at the time. */
Test(invalidate, dontneed_keeps_allocated_data, .timeout = T_SHORT)
{
	const size_t len = 8 * PG;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = alloc_managed(len);
	fill_pattern(p, len, 0x5a);
	assert_migrate(p, len / 2, dev, 4);
	cr_assert_eq(madvise(p, len, MADV_DONTNEED), 0);
	assert_pattern(p, len, 0x5a);
}

Test(invalidate, munmap_frees_device_memory, .timeout = T_SHORT)
{
	const size_t len = 64 * PG;
	hmm_device_t *dev;
	char *p, *q, *buf;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	buf = map_anon(len);
	fill_pattern(p, len, 0xfee);
	assert_migrate(p, len, dev, 64);
	cr_assert_eq(munmap(p, len), 0);
	cr_assert_eq(wait_stat_eq("device_bytes_in_use", 0, POLL_MS), 0);
	cr_assert_eq(dev_used(dev), 0);
	cr_assert_eq(wait_loc(p, HMM_LOC_UNMANAGED), HMM_LOC_UNMANAGED);
	cr_assert_eq(hmm_sim_read(dev, p, buf, PG, NULL), -EFAULT);

	/* A new mapping there shows zeros, never the old data. */
	q = mmap(p, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	cr_assert_eq(q, p, "mmap at %p: %s", (void *)p, strerror(errno));
	cr_assert_eq(hmm_sim_read(dev, q, buf, len, NULL), 0);
	assert_zero(buf, len);
	assert_zero(q, len);
	/* And it can be adopted afresh. */
	cr_assert_eq(hmm_range_adopt(q, len, 0), 0);
	fill_pattern(q, len, 0xfef);
	assert_migrate(q, len, dev, 64);
	assert_pattern(q, len, 0xfef);
}

Test(invalidate, munmap_part_of_device_resident_range, .timeout = T_SHORT)
{
	const size_t len = 16 * PG;
	hmm_device_t *dev;
	char *p, *buf;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	buf = map_anon(PG);
	fill_pattern(p, len, 0x9e);
	assert_migrate(p, len, dev, 16);
	cr_assert_eq(munmap(p + 4 * PG, 4 * PG), 0);
	cr_assert_eq(wait_stat_eq("device_bytes_in_use", 12 * PG, POLL_MS),
		     12 * PG);
	cr_assert_eq(hmm_sim_read(dev, p + 5 * PG, buf, PG, NULL), -EFAULT);
	cr_assert_eq(hmm_sim_read(dev, p + 9 * PG, buf, PG, NULL), 0);
	cr_assert_eq(pattern_mismatch(buf, PG, 0x9e, 9 * WORDS_PER_PAGE), -1);
	cr_assert_eq(pattern_mismatch(p, 4 * PG, 0x9e, 0), -1);
	cr_assert_eq(pattern_mismatch(p + 8 * PG, 8 * PG, 0x9e,
				      8 * WORDS_PER_PAGE), -1);
}

/* mremap of device-resident memory; @device_first: the device looks first. */
static void mremap_scenario(bool device_first)
{
	const size_t len = 16 * PG;
	hmm_device_t *dev;
	char *p, *target, *q, *buf;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	buf = map_anon(len);
	fill_pattern(p, len, 0x4e3a);
	assert_migrate(p, len, dev, 16);
	target = test_map(len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(target, MAP_FAILED);
	q = mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, target);
	cr_assert_eq(q, target, "mremap: %s", strerror(errno));
	if (device_first) {
		cr_assert_eq(hmm_sim_read(dev, q, buf, len, NULL), 0);
		assert_pattern(buf, len, 0x4e3a);
		assert_pattern(q, len, 0x4e3a);
	} else {
		assert_pattern(q, len, 0x4e3a);
		cr_assert_eq(hmm_sim_read(dev, q, buf, len, NULL), 0);
		assert_pattern(buf, len, 0x4e3a);
	}
	/* The old address is gone for the device too. */
	cr_assert_eq(hmm_sim_read(dev, p, buf, PG, NULL), -EFAULT);
	cr_assert_eq(wait_loc(p, HMM_LOC_UNMANAGED), HMM_LOC_UNMANAGED);
	/* Writes at the new address stick. */
	fill_pattern(q, len, 0x4e3b);
	assert_pattern(q, len, 0x4e3b);
}

Test(invalidate, mremap_device_resident_cpu_reads_first, .timeout = T_SHORT)
{
	mremap_scenario(false);
}

Test(invalidate, mremap_device_resident_device_reads_first, .timeout = T_SHORT)
{
	mremap_scenario(true);
}

Test(invalidate, invalidations_counter, .timeout = T_SHORT)
{
	const size_t len = 8 * PG;
	hmm_device_t *dev;
	char *p, *buf;
	uint64_t inv;

	need_hmm();
	dev = open_sim(len);
	p = map_anon(len);
	buf = map_anon(len);
	fill_pattern(p, len, 7);
	cr_assert_eq(hmm_sim_read(dev, p, buf, len, NULL), 0);
	inv = stat_of("invalidations");
	cr_assert_eq(madvise(p, len, MADV_DONTNEED), 0);
	cr_assert_gt(wait_stat_gt("invalidations", inv, POLL_MS), inv,
		     "madvise of a mirrored range was not counted");

	fill_pattern(p, len, 8);
	cr_assert_eq(hmm_sim_read(dev, p, buf, len, NULL), 0);
	assert_pattern(buf, len, 8);
	inv = stat_of("invalidations");
	cr_assert_eq(munmap(p, len), 0);
	cr_assert_gt(wait_stat_gt("invalidations", inv, POLL_MS), inv,
		     "munmap of a mirrored range was not counted");
}

Test(invalidate, mprotect_limits_the_device, .timeout = T_SHORT)
{
	const size_t len = 4 * PG;
	hmm_device_t *dev;
	char *p, *buf;

	need_hmm();
	dev = open_sim(len);
	p = map_anon(len);
	buf = map_anon(len);
	fill_pattern(p, len, 0x60);
	fill_pattern(buf, len, 0x61);
	/* A device write fills the mirror with writable translations. */
	cr_assert_eq(hmm_sim_write(dev, p, buf, len, NULL), 0);
	cr_assert_eq(mprotect(p, len, PROT_READ), 0);
	cr_assert_eq(hmm_sim_fill64(dev, p, 0, len, NULL), -EPERM);
	assert_pattern(p, len, 0x61);
	cr_assert_eq(hmm_sim_read(dev, p, buf, len, NULL), 0);
	assert_pattern(buf, len, 0x61);
	cr_assert_eq(mprotect(p, len, PROT_NONE), 0);
	cr_assert_eq(hmm_sim_read(dev, p, buf, len, NULL), -EFAULT);
	cr_assert_eq(mprotect(p, len, PROT_READ | PROT_WRITE), 0);
	cr_assert_eq(hmm_sim_fill64(dev, p, 0, len, NULL), 0);
	assert_zero(p, len);
}

Test(invalidate, mprotect_read_only_device_resident, .timeout = T_SHORT)
{
	const size_t len = 4 * PG;
	hmm_device_t *dev;
	uint64_t v = 0;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0x62);
	assert_migrate(p, len, dev, 4);
	cr_assert_eq(mprotect(p, len, PROT_READ), 0);
	cr_assert_eq(hmm_sim_fill64(dev, p, 0, len, NULL), -EPERM);
	cr_assert_eq(mprotect(p, len, PROT_NONE), 0);
	cr_assert_eq(hmm_sim_read(dev, p, &v, 8, NULL), -EFAULT);
	cr_assert_eq(mprotect(p, len, PROT_READ), 0);
	cr_assert_eq(hmm_sim_read(dev, p + PG, &v, 8, NULL), 0);
	cr_assert_eq(v, WORDS_PER_PAGE ^ 0x62);
	assert_pattern(p, len, 0x62);
	cr_assert_eq(mprotect(p, len, PROT_READ | PROT_WRITE), 0);
	fill_pattern(p, len, 0x63);
	assert_pattern(p, len, 0x63);
}
