/* SPDX-License-Identifier: MIT */
/*
 * Whole huge pages moved instead of copied (thp.c): an application block
 * that is one 2 MiB huge page goes to a sim device, and back, with one
 * UFFDIO_MOVE, and its data is the same as if it had been copied.  Every
 * case where a move cannot be made must copy, and lose nothing.
 */
#include <sys/wait.h>

#include "common.h"

#define BLK ((size_t)2 << 20)

static size_t anon_huge_bytes(void)
{
	FILE *f = fopen("/proc/self/smaps_rollup", "r");
	char line[256];
	size_t kb = 0;

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "AnonHugePages: %zu kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb << 10;
}

/* @len bytes (whole blocks) of private anonymous memory, 2 MiB aligned,
 * backed by huge pages and filled with @seed's pattern; skips the test
 * where the machine gives no huge pages. */
static char *map_thp(size_t len, uint64_t seed)
{
	char *raw = map_anon(len + BLK);
	char *p = (char *)(((uintptr_t)raw + BLK - 1) & ~(uintptr_t)(BLK - 1));
	size_t before = anon_huge_bytes();

	if (madvise(p, len, MADV_HUGEPAGE))
		cr_skip_test("madvise(MADV_HUGEPAGE): %s", strerror(errno));
	fill_pattern(p, len, seed);
	if (anon_huge_bytes() - before < len)
		cr_skip_test("no transparent huge pages here (THP off, or "
			     "none free): %zu of %zu bytes huge",
			     anon_huge_bytes() - before, len);
	return p;
}

static void thp_init(void)
{
	need_hmm();
}

TestSuite(thp, .init = thp_init, .timeout = T_SHORT);

/* To the device and back by hmm_migrate, then by CPU faults: moves both
 * ways, the device sees the data and its writes come back, the memory
 * is still huge pages afterwards, and device memory is all free. */
Test(thp, round_trip_moves_whole_blocks)
{
	const size_t len = 4 * BLK, n = len / PG;
	hmm_device_t *dev = open_sim(len);
	char *p = map_thp(len, 0x71);
	uint64_t in0, out0, fail0;

	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	in0 = stat_of("thp_moves_to_device");
	out0 = stat_of("thp_moves_to_system");
	fail0 = stat_of("thp_moves_failed");
	assert_migrate(p, len, dev, n);
	cr_assert_eq(stat_of("thp_moves_to_device") - in0, 4);
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);
	assert_dev_pattern(dev, p, 0, n, 0x71);
	assert_migrate(p, len, NULL, n);
	cr_assert_eq(stat_of("thp_moves_to_system") - out0, 4);
	assert_pattern(p, len, 0x71);
	cr_assert_eq(dev_used(dev), 0);

	/* The device writes, the CPU reads: fault-backs move blocks whole
	 * and bring the device's data. */
	assert_migrate(p, len, dev, n);
	cr_assert_eq(hmm_sim_fill64(dev, p + BLK + 3 * PG, 0xabcdefULL, PG,
				    NULL), 0);
	for (size_t off = 0; off < len; off += PG) {
		const uint64_t *w = (const uint64_t *)(p + off);
		if (off == BLK + 3 * PG)
			cr_assert_eq(w[0], 0xabcdefULL);
		else
			cr_assert_eq(w[0], (off / 8) ^ 0x71, "page %zu",
				     off / PG);
	}
	settle(p, len);
	cr_assert_eq(stat_of("thp_moves_to_system") - out0, 8);
	cr_assert_eq(stat_of("thp_moves_failed"), fail0);
	cr_assert_eq(wait_dev_used(dev, 0), 0);
	cr_assert_geq(anon_huge_bytes(), len, "huge pages lost");
	cr_assert_eq(hmm_device_close(dev), 0);
}

/* A block that is only partly selected, or not a huge page, is copied;
 * with HMM_THP_MOVE off everything is. */
Test(thp, partial_blocks_and_option_off_copy)
{
	const size_t len = 2 * BLK;
	hmm_device_t *dev = open_sim(len);
	char *p = map_thp(len, 0x72);
	uint64_t in0;

	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	in0 = stat_of("thp_moves_to_device");
	assert_migrate(p, BLK / 2, dev, BLK / 2 / PG);
	assert_migrate(p + BLK, BLK, dev, BLK / PG);
	cr_assert_eq(stat_of("thp_moves_to_device") - in0, 1);
	assert_migrate(p, len, dev, BLK / 2 / PG); /* the rest of block 0 */
	cr_assert_eq(stat_of("thp_moves_to_device") - in0, 1);
	assert_dev_pattern(dev, p, 0, len / PG, 0x72);
	assert_migrate(p, len, NULL, len / PG);
	assert_pattern(p, len, 0x72);

	cr_assert_eq(hmm_option_set("THP_MOVE", 0), 0);
	hmm_device_t *dev2 = open_sim(len);
	char *q = map_thp(len, 0x73);
	cr_assert_eq(hmm_range_adopt(q, len, 0), 0);
	in0 = stat_of("thp_moves_to_device");
	assert_migrate(q, len, dev2, len / PG);
	cr_assert_eq(stat_of("thp_moves_to_device"), in0);
	assert_pattern(q, len, 0x73);
	cr_assert_eq(dev_used(dev), 0);
}

/* With fault-around off a CPU fault brings one page (copied out of the
 * device's huge page); the others stay, and come back right later. */
Test(thp, fault_around_off_brings_one_page)
{
	const size_t len = BLK;
	hmm_device_t *dev;
	char *p;

	cr_assert_eq(hmm_option_set("FAULT_AROUND", 0), 0);
	dev = open_sim(len);
	p = map_thp(len, 0x74);
	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	assert_migrate(p, len, dev, len / PG);
	cr_assert_eq(((volatile uint64_t *)(p + 7 * PG))[0],
		     (7 * PG / 8) ^ 0x74);
	settle(p, len);
	cr_assert_eq(count_loc(p, len, HMM_LOC_DEVICE), len / PG - 1);
	assert_migrate(p, len, NULL, len / PG - 1);
	assert_pattern(p, len, 0x74);
}

/* Pages the application drops while on the device read zeros after;
 * the others keep their data, whichever way they come back. */
Test(thp, drop_while_on_device)
{
	const size_t len = 2 * BLK;
	hmm_device_t *dev = open_sim(len);
	char *p = map_thp(len, 0x75);

	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	assert_migrate(p, len, dev, len / PG);
	cr_assert_eq(madvise(p + 16 * PG, 8 * PG, MADV_DONTNEED), 0);
	assert_zero(p + 16 * PG, 8 * PG);
	assert_pattern(p, 16 * PG, 0x75);
	for (size_t off = 24 * PG; off < len; off += PG)
		cr_assert_eq(((uint64_t *)(p + off))[0], (off / 8) ^ 0x75);
	settle(p, len);
	assert_migrate(p, len, NULL, 0);
	cr_assert_eq(wait_dev_used(dev, 0), 0);
}

/* Huge pages shared with a child since fork cannot move (the kernel
 * refuses): they are copied, and parent and child each keep their data. */
Test(thp, shared_after_fork_copies)
{
	const size_t len = 2 * BLK;
	hmm_device_t *dev = open_sim(len);
	char *p = map_thp(len, 0x76);
	int sync[2], st;
	pid_t pid;
	char c;

	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	cr_assert_eq(pipe(sync), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		/* Holds the pages shared until the parent is done. */
		if (read(sync[0], &c, 1) != 1)
			_exit(3);
		_exit(pattern_mismatch(p, len, 0x76, 0) == -1 ? 0 : 4);
	}
	uint64_t fail0 = stat_of("thp_moves_failed");
	assert_migrate(p, len, dev, len / PG);
	cr_assert_geq(stat_of("thp_moves_failed") - fail0, 1);
	assert_dev_pattern(dev, p, 0, len / PG, 0x76);
	fill_pattern(p, len, 0x77); /* back by CPU writes */
	cr_assert_eq(write(sync[1], "x", 1), 1);
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		  "child saw other data (status %#x)", st);
	assert_pattern(p, len, 0x77);
}

/* Read-only memory (the kernel moves only between writable mappings)
 * is copied; the device still reads it. */
Test(thp, read_only_copies)
{
	const size_t len = BLK;
	hmm_device_t *dev = open_sim(len);
	char *p = map_thp(len, 0x78);
	uint64_t in0;

	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	cr_assert_eq(mprotect(p, len, PROT_READ), 0);
	in0 = stat_of("thp_moves_to_device");
	assert_migrate(p, len, dev, len / PG);
	cr_assert_eq(stat_of("thp_moves_to_device"), in0);
	assert_dev_pattern(dev, p, 0, len / PG, 0x78);
	assert_pattern(p, len, 0x78);
}

/* A sequential CPU pass over device-resident huge pages takes fewer
 * faults than blocks: a stream brings several whole blocks at once. */
Test(thp, sequential_pass_takes_blocks_ahead)
{
	const size_t len = 16 * BLK;
	hmm_device_t *dev = open_sim(len);
	char *p = map_thp(len, 0x79);
	uint64_t f0, out0;

	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	assert_migrate(p, len, dev, len / PG);
	f0 = stat_of("cpu_faults");
	out0 = stat_of("thp_moves_to_system");
	assert_pattern(p, len, 0x79);
	settle(p, len);
	cr_assert_eq(stat_of("thp_moves_to_system") - out0, 16);
	cr_assert_lt(stat_of("cpu_faults") - f0, 16,
		     "%llu faults for 16 blocks",
		     (unsigned long long)(stat_of("cpu_faults") - f0));
	cr_assert_eq(wait_dev_used(dev, 0), 0);
}

/* Device memory too small for a clean chunk after 4 KiB use: huge pages
 * are copied into pages, nothing fails. */
Test(thp, no_clean_chunk_copies)
{
	const size_t len = BLK;
	hmm_device_t *dev = open_sim(2 * BLK);
	char *small = map_adopt(BLK + PG);
	char *p;

	fill_pattern(small, BLK + PG, 0x7a);
	/* 513 pages: both chunks leave the clean stack for pages. */
	assert_migrate(small, BLK + PG, dev, BLK / PG + 1);
	assert_migrate(small, BLK + PG, NULL, BLK / PG + 1);
	p = map_thp(len, 0x7b);
	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	uint64_t in0 = stat_of("thp_moves_to_device");
	assert_migrate(p, len, dev, len / PG);
	cr_assert_eq(stat_of("thp_moves_to_device"), in0);
	assert_dev_pattern(dev, p, 0, len / PG, 0x7b);
	assert_migrate(p, len, NULL, len / PG);
	assert_pattern(p, len, 0x7b);
	assert_pattern(small, BLK + PG, 0x7a);
}

/* Blocks on the device when the range is unmapped, moved by mremap, or
 * released, and when the device closes: nothing is lost, nothing leaks. */
Test(thp, unmap_remap_release_close)
{
	const size_t len = 4 * BLK;
	hmm_device_t *dev = open_sim(len);
	char *p = map_thp(len, 0x7c), *q;

	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	assert_migrate(p, len, dev, len / PG);
	/* Unmap one block: its device memory is freed. */
	cr_assert_eq(munmap(p + 3 * BLK, BLK), 0);
	cr_assert_eq(wait_dev_used(dev, 3 * BLK / PG), 3 * BLK / PG);
	/* Move one block elsewhere (2 MiB aligned): its data follows. */
	q = mmap(NULL, 2 * BLK, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(q, MAP_FAILED);
	q = (char *)(((uintptr_t)q + BLK - 1) & ~(uintptr_t)(BLK - 1));
	cr_assert_eq(mremap(p + 2 * BLK, BLK, BLK, MREMAP_MAYMOVE | MREMAP_FIXED,
			    q), q);
	for (size_t off = 0; off < BLK; off += PG)
		cr_assert_eq(((uint64_t *)(q + off))[0],
			     ((2 * BLK + off) / 8) ^ 0x7c, "moved page %zu",
			     off / PG);
	/* Release one block: it comes home first. */
	cr_assert_eq(hmm_range_release(p + BLK, BLK), 0);
	cr_assert_eq(count_loc(p + BLK, BLK, HMM_LOC_DEVICE), 0);
	for (size_t off = BLK; off < 2 * BLK; off += PG)
		cr_assert_eq(((uint64_t *)(p + off))[0], (off / 8) ^ 0x7c);
	/* Close with block 0 on the device: it comes home. */
	cr_assert_eq(hmm_device_close(dev), 0);
	assert_pattern(p, BLK, 0x7c);
}

/* Oversubscription: huge pages evicted to make room come home whole or
 * copied, with their data. */
Test(thp, eviction_keeps_data)
{
	const size_t len = 8 * BLK;
	hmm_device_t *dev = open_sim(4 * BLK);
	char *p = map_thp(len, 0x7d);

	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	for (int round = 0; round < 3; round++)
		for (size_t b = 0; b < 8; b += 2)
			assert_migrate(p + b * BLK, 2 * BLK, dev, 2 * BLK / PG);
	assert_migrate(p, len, NULL, 4 * BLK / PG);
	assert_pattern(p, len, 0x7d);
	cr_assert_eq(dev_used(dev), 0);
}

/* fork with huge pages on the device: the child reads them from its copy
 * of the device memory, the parent still moves them back whole. */
Test(thp, fork_with_blocks_on_device)
{
	const size_t len = 2 * BLK;
	hmm_device_t *dev = open_sim(len);
	char *p = map_thp(len, 0x7e);
	uint64_t out0;
	int st;
	pid_t pid;

	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	assert_migrate(p, len, dev, len / PG);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0)
		_exit(pattern_mismatch(p, len, 0x7e, 0) == -1 ? 0 : 4);
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		  "child saw other data (status %#x)", st);
	out0 = stat_of("thp_moves_to_system") + stat_of("thp_moves_failed");
	assert_migrate(p, len, NULL, len / PG);
	assert_pattern(p, len, 0x7e);
	/* The fork made the pool's huge pages shared; the kernel moves them
	 * again only once a write made them the parent's alone: until then
	 * each is tried, refused and copied. */
	cr_assert_eq(stat_of("thp_moves_to_system") +
			     stat_of("thp_moves_failed") - out0, 2);
	cr_assert_eq(wait_dev_used(dev, 0), 0);
}

/* From one sim device to another, a huge page moves whole between their
 * memories; the data follows, and both devices' memory is free after. */
Test(thp, peer_move_between_devices)
{
	const size_t len = 2 * BLK;
	hmm_device_t *a = open_sim(len), *b = open_sim(len);
	char *p = map_thp(len, 0x7f);
	uint64_t in0;

	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	assert_migrate(p, len, a, len / PG);
	in0 = stat_of("thp_moves_to_device");
	assert_migrate(p, len, b, len / PG);
	cr_assert_eq(stat_of("thp_moves_to_device") - in0, 2);
	assert_all_loc(p, len, HMM_LOC_DEVICE, b);
	cr_assert_eq(dev_used(a), 0);
	assert_dev_pattern(b, p, 0, len / PG, 0x7f);
	/* And back to the first, then home: the chunks were left clean. */
	assert_migrate(p, len, a, len / PG);
	cr_assert_eq(stat_of("thp_moves_to_device") - in0, 4);
	assert_pattern(p, len, 0x7f);
	cr_assert_eq(wait_dev_used(a, 0), 0);
	cr_assert_eq(dev_used(b), 0);
}

/* Memory managed before it is touched, with MADV_HUGEPAGE: the first
 * write into each block gets a whole zeroed huge page (as the kernel
 * would give), which then moves whole.  Reads first get the zero page;
 * MADV_NOHUGEPAGE gets 4 KiB pages. */
Test(thp, first_write_gets_a_huge_page)
{
	const size_t len = 4 * BLK;
	hmm_device_t *dev = open_sim(len);
	char *raw = map_anon(len + BLK);
	char *p = (char *)(((uintptr_t)raw + BLK - 1) & ~(uintptr_t)(BLK - 1));
	uint64_t f0, in0;
	size_t huge0;

	cr_assert_eq(madvise(p, len, MADV_HUGEPAGE), 0);
	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	f0 = stat_of("thp_fills");
	huge0 = anon_huge_bytes();
	/* Block 3 is read first: the zero page, then 4 KiB pages. */
	cr_assert_eq(((volatile uint64_t *)(p + 3 * BLK))[5], 0);
	fill_pattern(p, len, 0x81);
	if (stat_of("thp_fills") == f0)
		cr_skip_test("no huge page for the first writes (THP off, "
			     "or none free)");
	cr_assert_eq(stat_of("thp_fills") - f0, 3);
	cr_assert_geq(anon_huge_bytes() - huge0, 3 * BLK);
	in0 = stat_of("thp_moves_to_device");
	assert_migrate(p, len, dev, len / PG);
	cr_assert_eq(stat_of("thp_moves_to_device") - in0, 3);
	assert_dev_pattern(dev, p, 0, len / PG, 0x81);
	assert_pattern(p, len, 0x81);

	/* Not for mappings that say no. */
	char *raw2 = map_anon(2 * BLK + BLK);
	char *q = (char *)(((uintptr_t)raw2 + BLK - 1) & ~(uintptr_t)(BLK - 1));
	cr_assert_eq(madvise(q, 2 * BLK, MADV_NOHUGEPAGE), 0);
	cr_assert_eq(hmm_range_adopt(q, 2 * BLK, 0), 0);
	f0 = stat_of("thp_fills");
	fill_pattern(q, 2 * BLK, 0x82);
	cr_assert_eq(stat_of("thp_fills"), f0);
	assert_pattern(q, 2 * BLK, 0x82);
}
