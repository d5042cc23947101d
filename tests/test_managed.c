/* SPDX-License-Identifier: MIT */
/* Managed memory: adoption, allocation, release. */
#include <sys/wait.h>

#include "common.h"

Test(managed, adopt_mmap_keeps_contents, .timeout = T_SHORT)
{
	const size_t len = 64 * PG;
	char *p;

	need_hmm();
	p = map_anon(len);
	fill_pattern(p, len, 0x5eed);
	cr_assert_eq(loc_of(p, NULL), HMM_LOC_UNMANAGED);
	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	assert_all_loc(p, len, HMM_LOC_SYSTEM, NULL);
	assert_pattern(p, len, 0x5eed);
	/* Still writable as plain memory. */
	fill_pattern(p, len, 0x77);
	assert_pattern(p, len, 0x77);
	cr_assert_eq(hmm_range_release(p, len), 0);
	assert_all_loc(p, len, HMM_LOC_UNMANAGED, NULL);
	assert_pattern(p, len, 0x77);
}

Test(managed, adopt_untouched_reads_zero, .timeout = T_SHORT)
{
	const size_t len = 16 * PG;
	char *p;

	need_hmm();
	p = map_adopt(len);
	assert_zero(p, len);
	fill_pattern(p, len, 3);
	assert_pattern(p, len, 3);
}

/* Adopt heap memory, move it to a device and back, release it, free it. */
static void heap_scenario(void *p, size_t len)
{
	hmm_device_t *dev = open_sim(len + 16 * PG);

	fill_pattern(p, len, 0xbeef);
	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	assert_pattern(p, len, 0xbeef);
	assert_migrate(p, len, dev, len / PG);
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);
	assert_pattern(p, len, 0xbeef);
	settle(p, len);
	assert_migrate(p, len, dev, len / PG);
	cr_assert_eq(hmm_range_release(p, len), 0);
	cr_assert_eq(dev_used(dev), 0);
	assert_all_loc(p, len, HMM_LOC_UNMANAGED, NULL);
	assert_pattern(p, len, 0xbeef);
	free(p);
	cr_assert_eq(hmm_device_close(dev), 0);
}

Test(managed, adopt_aligned_alloc_small, .timeout = T_SHORT)
{
	/* 64 KiB: below the mmap threshold, so from the brk heap. */
	void *p;

	need_hmm();
	p = aligned_alloc(PG, 16 * PG);
	cr_assert_not_null(p);
	heap_scenario(p, 16 * PG);
}

Test(managed, adopt_posix_memalign_large, .timeout = T_SHORT)
{
	/* 4 MiB: malloc serves it with its own mmap. */
	void *p = NULL;

	need_hmm();
	cr_assert_eq(posix_memalign(&p, PG, 1024 * PG), 0);
	heap_scenario(p, 1024 * PG);
}

Test(managed, mem_alloc_zero_filled_and_usable, .timeout = T_SHORT)
{
	const size_t len = 256 * PG;
	char *p;

	need_hmm();
	p = alloc_managed(len);
	assert_all_loc(p, len, HMM_LOC_SYSTEM, NULL);
	assert_zero(p, len);
	fill_pattern(p, len, 0xa110c);
	assert_pattern(p, len, 0xa110c);
	cr_assert_eq(hmm_mem_free(p, len), 0);
	cr_assert_eq(loc_of(p, NULL), HMM_LOC_UNMANAGED);
}

Test(managed, mem_alloc_rounds_up, .timeout = T_SHORT)
{
	char *p;

	need_hmm();
	p = alloc_managed(PG + 1);
	/* The whole second page belongs to the allocation. */
	assert_zero(p, 2 * PG);
	fill_pattern(p, 2 * PG, 9);
	assert_pattern(p, 2 * PG, 9);
	cr_assert_eq(loc_of(p + PG, NULL), HMM_LOC_SYSTEM);
	cr_assert_eq(hmm_mem_free(p, 2 * PG), 0);
}

Test(managed, mem_alloc_independent_allocations, .timeout = T_SHORT)
{
	enum { N = 8 };
	char *p[N];
	hmm_device_t *dev;

	need_hmm();
	dev = open_sim(N * 8 * PG);
	for (int i = 0; i < N; i++) {
		p[i] = alloc_managed(8 * PG);
		fill_pattern(p[i], 8 * PG, 100 + (uint64_t)i);
	}
	for (int i = 0; i < N; i += 2)
		assert_migrate(p[i], 8 * PG, dev, 8);
	for (int i = 0; i < N; i++) {
		assert_pattern(p[i], 8 * PG, 100 + (uint64_t)i);
		if (i % 2)
			cr_assert_eq(hmm_mem_free(p[i], 8 * PG), 0);
	}
	for (int i = 0; i < N; i += 2) {
		assert_migrate(p[i], 8 * PG, dev, 8);
		cr_assert_eq(hmm_mem_free(p[i], 8 * PG), 0);
	}
	cr_assert_eq(dev_used(dev), 0, "freeing must drop device copies");
}

Test(managed, mem_alloc_migrates_and_faults_back, .timeout = T_SHORT)
{
	const size_t len = 128 * PG;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = alloc_managed(len);
	fill_pattern(p, len, 0x5a5a);
	assert_migrate(p, len, dev, len / PG);
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);
	assert_pattern(p, len, 0x5a5a);
	settle(p, len);
	assert_all_loc(p, len, HMM_LOC_SYSTEM, NULL);
	cr_assert_eq(hmm_mem_free(p, len), 0);
}

Test(managed, release_brings_device_data_back, .timeout = T_SHORT)
{
	const size_t len = 32 * PG;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0xdada);
	assert_migrate(p, len, dev, len / PG);
	cr_assert_eq(dev_used(dev), len / PG);
	cr_assert_eq(hmm_range_release(p, len), 0);
	cr_assert_eq(dev_used(dev), 0);
	assert_all_loc(p, len, HMM_LOC_UNMANAGED, NULL);
	assert_pattern(p, len, 0xdada);
}

Test(managed, release_part_of_a_range, .timeout = T_SHORT)
{
	const size_t len = 16 * PG;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0x9a97);
	assert_migrate(p, len, dev, len / PG);

	/* Release pages 4..7: they come back, the others stay on the device. */
	cr_assert_eq(hmm_range_release(p + 4 * PG, 4 * PG), 0);
	assert_all_loc(p + 4 * PG, 4 * PG, HMM_LOC_UNMANAGED, NULL);
	assert_all_loc(p, 4 * PG, HMM_LOC_DEVICE, dev);
	assert_all_loc(p + 8 * PG, 8 * PG, HMM_LOC_DEVICE, dev);
	cr_assert_eq(dev_used(dev), 12);
	cr_assert_eq(pattern_mismatch(p + 4 * PG, 4 * PG, 0x9a97,
				      4 * WORDS_PER_PAGE), -1);

	/* The whole range is no longer entirely managed: nothing changes. */
	cr_assert_eq(hmm_range_release(p, len), -ENOENT);
	assert_all_loc(p, 4 * PG, HMM_LOC_DEVICE, dev);
	cr_assert_eq(dev_used(dev), 12);

	/* Migrating a range with a hole in it is refused too. */
	cr_assert_eq(hmm_migrate(p, len, NULL, 0), -ENOENT);

	/* The pieces are still managed and usable. */
	assert_migrate(p + 8 * PG, 8 * PG, NULL, 8);
	cr_assert_eq(hmm_range_release(p, 4 * PG), 0);
	cr_assert_eq(hmm_range_release(p + 8 * PG, 8 * PG), 0);
	cr_assert_eq(dev_used(dev), 0);
	assert_all_loc(p, len, HMM_LOC_UNMANAGED, NULL);
	assert_pattern(p, len, 0x9a97);
}

Test(managed, release_then_adopt_again, .timeout = T_SHORT)
{
	const size_t len = 8 * PG;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 1);
	cr_assert_eq(hmm_range_release(p, len), 0);
	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	assert_migrate(p, len, dev, len / PG);
	assert_pattern(p, len, 1);
}

Test(managed, many_small_ranges, .timeout = T_SHORT)
{
	enum { N = 200 };
	const size_t len = N * 2 * PG;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_anon(len);
	fill_pattern(p, len, 0x3333);
	/* Adopt every other page as its own range. */
	for (int i = 0; i < N; i++)
		cr_assert_eq(hmm_range_adopt(p + 2 * i * PG, PG, 0), 0, "i=%d", i);
	for (int i = 0; i < N; i++) {
		assert_migrate(p + 2 * i * PG, PG, dev, 1);
		cr_assert_eq(loc_of(p + (2 * i + 1) * PG, NULL),
			     HMM_LOC_UNMANAGED);
	}
	cr_assert_eq(dev_used(dev), N);
	assert_pattern(p, len, 0x3333);
}

/*
 * A child forked while pages live on the device must see the data (never
 * zeros), and neither side's later writes may show in the other.
 */
Test(managed, fork_child_sees_device_data, .timeout = T_SHORT)
{
	const size_t len = 16 * PG;
	hmm_device_t *dev;
	int status = -1;
	pid_t pid;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = map_adopt(len);
	fill_pattern(p, len, 0xf0f0);
	assert_migrate(p, len, dev, len / PG);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		alarm(20);
		if (pattern_mismatch(p, len, 0xf0f0, 0) != -1)
			_exit(2);
		fill_pattern(p, len, 0xc1d);
		_exit(pattern_mismatch(p, len, 0xc1d, 0) != -1 ? 3 : 0);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status), "child died: status %#x", status);
	cr_assert_eq(WEXITSTATUS(status), 0,
		     "child: 2 = wrong data after fork, 3 = write failed");
	assert_pattern(p, len, 0xf0f0);
}

/* MAP_SHARED|MAP_ANONYMOUS memory can be adopted (the kernel cannot move
 * shared anonymous pages to device-private memory; libhmm can): it keeps
 * its contents, migrates, faults back, and stays shared with a child. */
Test(managed, adopt_shared_anonymous, .timeout = T_SHORT)
{
	const size_t len = 16 * PG;
	hmm_device_t *dev;
	int status = -1;
	pid_t pid;
	char *p;

	need_hmm();
	dev = open_sim(len);
	p = test_map(len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
		     -1, 0);
	cr_assert_neq(p, MAP_FAILED);
	fill_pattern(p, len, 0x5a5a);
	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	assert_all_loc(p, len, HMM_LOC_SYSTEM, NULL);
	assert_migrate(p, len, dev, len / PG);
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);
	assert_pattern(p, len, 0x5a5a);		/* faults back */
	assert_migrate(p, len, dev, len / PG);
	pid = fork();	/* brings the pages home first */
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		alarm(20);
		if (pattern_mismatch(p, len, 0x5a5a, 0) != -1)
			_exit(2);
		fill_pattern(p, len, 0x77);
		_exit(0);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "child: status %#x (2 = wrong data)", status);
	assert_pattern(p, len, 0x77);		/* the child's writes */
	assert_migrate(p, len, dev, len / PG);
	cr_assert_eq(hmm_range_release(p, len), 0);
	assert_all_loc(p, len, HMM_LOC_UNMANAGED, NULL);
	assert_pattern(p, len, 0x77);
	cr_assert_eq(munmap(p, len), 0);
}

/* hmm_mem_free is for hmm_mem_alloc memory only. */
Test(managed, mem_free_refuses_adopted_shared, .timeout = T_SHORT)
{
	const size_t len = 4 * PG;
	char *p;

	need_hmm();
	p = test_map(len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
		     -1, 0);
	cr_assert_neq(p, MAP_FAILED);
	fill_pattern(p, len, 3);
	cr_assert_eq(hmm_range_adopt(p, len, 0), 0);
	cr_assert_eq(hmm_mem_free(p, len), -EINVAL);
	assert_all_loc(p, len, HMM_LOC_SYSTEM, NULL);
	assert_pattern(p, len, 3);
}

/*
 * mlocked memory migrates like any other (as the kernel's migration to
 * device memory does), and the application's drops of it, which the
 * kernel refuses on locked memory, change nothing: neither the device
 * copies nor the data.
 */
/* VmLck of this process, KiB. */
static long locked_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kib = 0;

	cr_assert_not_null(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmLck: %ld", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

static void mlocked_case(char *p, size_t len, int advice)
{
	hmm_device_t *dev;

	dev = open_sim(len);
	fill_pattern(p, len, 21);
	if (mlock(p, len))
		cr_skip_test("mlock: %s", strerror(errno));
	if (!locked_kib())
		cr_skip_test("mlock locks nothing here (a sanitizer's)");
	assert_migrate(p, len, dev, len / PG);
	cr_assert_eq(madvise(p, len, advice), -1);
	cr_assert_eq(errno, EINVAL);
	assert_all_loc(p, len, HMM_LOC_DEVICE, dev);
	assert_pattern(p, len, 21);
	cr_assert_eq(munlock(p, len), 0);
	assert_migrate(p, len, dev, len / PG);
	cr_assert_eq(madvise(p, len, advice), 0);
	cr_assert_eq(count_loc(p, len, HMM_LOC_DEVICE), 0);
}

Test(managed, mlocked_private, .timeout = T_SHORT)
{
	need_hmm();
	mlocked_case(map_adopt(16 * PG), 16 * PG, MADV_DONTNEED);
}

Test(managed, mlocked_shared, .timeout = T_SHORT)
{
	need_hmm();
	mlocked_case(alloc_managed(16 * PG), 16 * PG, MADV_REMOVE);
}
