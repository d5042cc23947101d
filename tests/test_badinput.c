/* SPDX-License-Identifier: MIT */
/*
 * Bad input: every call returns its documented -errno and changes nothing.
 * Each test checks the data and the page locations after the failure, and
 * that a valid call right after it still works.
 */
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>

#include "common.h"

/* 4 patterned pages, not managed. */
static char *region(uint64_t seed)
{
	char *p = map_anon(4 * PG);

	fill_pattern(p, 4 * PG, seed);
	return p;
}

/* After a refused adoption: still unmanaged, data intact, adoptable. */
static void check_untouched_then_adopt(char *p, uint64_t seed)
{
	assert_all_loc(p, 4 * PG, HMM_LOC_UNMANAGED, NULL);
	assert_pattern(p, 4 * PG, seed);
	cr_assert_eq(hmm_range_adopt(p, 4 * PG, 0), 0);
	assert_all_loc(p, 4 * PG, HMM_LOC_SYSTEM, NULL);
	assert_pattern(p, 4 * PG, seed);
}

Test(badinput, adopt_unaligned_addr, .timeout = T_SHORT)
{
	char *p;

	need_hmm();
	p = region(11);
	cr_assert_eq(hmm_range_adopt(p + 1, 2 * PG, 0), -EINVAL);
	cr_assert_eq(hmm_range_adopt(p + PG / 2, PG, 0), -EINVAL);
	check_untouched_then_adopt(p, 11);
}

Test(badinput, adopt_unaligned_len, .timeout = T_SHORT)
{
	char *p;

	need_hmm();
	p = region(12);
	cr_assert_eq(hmm_range_adopt(p, PG + 1, 0), -EINVAL);
	cr_assert_eq(hmm_range_adopt(p, 100, 0), -EINVAL);
	check_untouched_then_adopt(p, 12);
}

Test(badinput, adopt_zero_len, .timeout = T_SHORT)
{
	char *p;

	need_hmm();
	p = region(13);
	cr_assert_eq(hmm_range_adopt(p, 0, 0), -EINVAL);
	check_untouched_then_adopt(p, 13);
}

Test(badinput, adopt_overflowing_range, .timeout = T_SHORT)
{
	char *p;

	need_hmm();
	p = region(14);
	cr_assert_eq(hmm_range_adopt((void *)(UINTPTR_MAX & ~(PG - 1)), 2 * PG,
				     0), -EINVAL);
	cr_assert_eq(hmm_range_adopt(p, SIZE_MAX & ~(PG - 1), 0), -EINVAL);
	check_untouched_then_adopt(p, 14);
}

Test(badinput, adopt_bad_flags, .timeout = T_SHORT)
{
	char *p;

	need_hmm();
	p = region(15);
	cr_assert_eq(hmm_range_adopt(p, 4 * PG, 1), -EINVAL);
	cr_assert_eq(hmm_range_adopt(p, 4 * PG, 0x80000000u), -EINVAL);
	check_untouched_then_adopt(p, 15);
}

Test(badinput, adopt_unmapped, .timeout = T_SHORT)
{
	char *p;

	need_hmm();
	/* A hole in the middle.  Any mmap of the process (the sanitizer's
	 * allocator, say) may land in a one-page hole before the adopt
	 * looks: then try again elsewhere. */
	for (int tries = 0;; tries++) {
		unsigned char vec;
		int ret;

		p = region(16);
		cr_assert_eq(munmap(p + PG, PG), 0);
		ret = hmm_range_adopt(p, 4 * PG, 0);
		if (ret == -EFAULT)
			break;
		cr_assert(tries < 5 && mincore(p + PG, PG, &vec) == 0,
			  "adopt over a hole gave %d", ret);
		if (ret == 0)
			cr_assert_eq(hmm_range_release(p, 4 * PG), 0);
	}
	cr_assert_eq(loc_of(p, NULL), HMM_LOC_UNMANAGED);
	cr_assert_eq(loc_of(p + 2 * PG, NULL), HMM_LOC_UNMANAGED);
	cr_assert_eq(hmm_range_adopt(p + PG, PG, 0), -EFAULT);
	cr_assert_eq(pattern_mismatch(p, PG, 16, 0), -1);
	cr_assert_eq(pattern_mismatch(p + 2 * PG, 2 * PG, 16,
				      2 * WORDS_PER_PAGE), -1);
	cr_assert_eq(hmm_range_adopt(p, PG, 0), 0);
	cr_assert_eq(hmm_range_adopt(p + 2 * PG, 2 * PG, 0), 0);
	cr_assert_eq(pattern_mismatch(p + 2 * PG, 2 * PG, 16,
				      2 * WORDS_PER_PAGE), -1);
}

Test(badinput, adopt_prot_none, .timeout = T_SHORT)
{
	char *p, *q;

	need_hmm();
	q = test_map(4 * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(q, MAP_FAILED);
	cr_assert_eq(hmm_range_adopt(q, 4 * PG, 0), -EFAULT);
	cr_assert_eq(loc_of(q, NULL), HMM_LOC_UNMANAGED);

	p = region(17);
	cr_assert_eq(mprotect(p + 3 * PG, PG, PROT_NONE), 0);
	cr_assert_eq(hmm_range_adopt(p, 4 * PG, 0), -EFAULT);
	cr_assert_eq(loc_of(p, NULL), HMM_LOC_UNMANAGED);
	cr_assert_eq(mprotect(p + 3 * PG, PG, PROT_READ | PROT_WRITE), 0);
	check_untouched_then_adopt(p, 17);
}

Test(badinput, adopt_overlapping, .timeout = T_SHORT)
{
	char *p = NULL;
	void *a = NULL;

	need_hmm();
	p = map_anon(8 * PG);
	fill_pattern(p, 8 * PG, 18);
	cr_assert_eq(hmm_range_adopt(p, 4 * PG, 0), 0);
	cr_assert_eq(hmm_range_adopt(p, 4 * PG, 0), -EEXIST);
	cr_assert_eq(hmm_range_adopt(p + 2 * PG, 4 * PG, 0), -EEXIST);
	cr_assert_eq(hmm_range_adopt(p + PG, PG, 0), -EEXIST);
	/* The part beyond the managed range was not adopted by the failure. */
	assert_all_loc(p + 4 * PG, 4 * PG, HMM_LOC_UNMANAGED, NULL);
	assert_pattern(p, 8 * PG, 18);
	/* Adjacent is fine. */
	cr_assert_eq(hmm_range_adopt(p + 4 * PG, 4 * PG, 0), 0);
	assert_all_loc(p, 8 * PG, HMM_LOC_SYSTEM, NULL);

	/* Memory from hmm_mem_alloc is managed already (and shared memory,
	 * which adoption does not take either: both codes are documented). */
	cr_assert_eq(hmm_mem_alloc(2 * PG, 0, &a), 0);
	int r = hmm_range_adopt(a, 2 * PG, 0);
	cr_assert(r == -EEXIST || r == -EOPNOTSUPP,
		  "adopting hmm_mem_alloc memory = %d", r);
	assert_all_loc(a, 2 * PG, HMM_LOC_SYSTEM, NULL);
	cr_assert_eq(hmm_mem_free(a, 2 * PG), 0);
}

/* Adopting @p (4 pages, patterned with @seed) fails with EOPNOTSUPP. */
static void check_unsupported(char *p, uint64_t seed)
{
	cr_assert_eq(hmm_range_adopt(p, 4 * PG, 0), -EOPNOTSUPP);
	cr_assert_eq(hmm_range_adopt(p, PG, 0), -EOPNOTSUPP);
	assert_all_loc(p, 4 * PG, HMM_LOC_UNMANAGED, NULL);
	assert_pattern(p, 4 * PG, seed);
	fill_pattern(p, 4 * PG, seed + 1);
	assert_pattern(p, 4 * PG, seed + 1);
}

static int tmp_file(void)
{
	char name[] = "/tmp/libhmm-test-XXXXXX";
	int fd = mkstemp(name);

	cr_assert_geq(fd, 0, "mkstemp: %s", strerror(errno));
	unlink(name);
	cr_assert_eq(ftruncate(fd, 4 * PG), 0);
	return fd;
}

Test(badinput, adopt_shared_file_mapping, .timeout = T_SHORT)
{
	int fd;
	char *p;

	need_hmm();
	fd = tmp_file();
	p = test_map(4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	cr_assert_neq(p, MAP_FAILED);
	fill_pattern(p, 4 * PG, 19);
	check_unsupported(p, 19);
	/* The file itself still holds what the mapping wrote. */
	uint64_t w = 0;
	cr_assert_eq(pread(fd, &w, 8, 8 * 10), 8);
	cr_assert_eq(w, 10 ^ 20);
	close(fd);
	/* A valid adoption still works. */
	check_untouched_then_adopt(region(190), 190);
}

Test(badinput, adopt_private_file_mapping, .timeout = T_SHORT)
{
	int fd;
	char *p;

	need_hmm();
	fd = tmp_file();
	p = test_map(4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	cr_assert_neq(p, MAP_FAILED);
	fill_pattern(p, 4 * PG, 21);
	check_unsupported(p, 21);
	close(fd);
	check_untouched_then_adopt(region(210), 210);
}

/* Shared anonymous memory is adopted one mapping at a time: a range over
 * two of them is refused, and nothing changes. */
Test(badinput, adopt_two_shared_anonymous_mappings, .timeout = T_SHORT)
{
	char *p, *q;

	need_hmm();
	p = test_map(4 * PG, PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(p, MAP_FAILED);
	q = mmap(p + 2 * PG, 2 * PG, PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	cr_assert_eq(q, p + 2 * PG);
	fill_pattern(p, 4 * PG, 22);
	cr_assert_eq(hmm_range_adopt(p, 4 * PG, 0), -EOPNOTSUPP);
	cr_assert_eq(hmm_range_adopt(p + PG, 2 * PG, 0), -EOPNOTSUPP);
	assert_all_loc(p, 4 * PG, HMM_LOC_UNMANAGED, NULL);
	assert_pattern(p, 4 * PG, 22);
	check_untouched_then_adopt(region(220), 220);
}

Test(badinput, adopt_shared_memfd, .timeout = T_SHORT)
{
	int fd;
	char *p;

	need_hmm();
	fd = memfd_create("libhmm-test", MFD_CLOEXEC);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, 4 * PG), 0);
	p = test_map(4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	cr_assert_neq(p, MAP_FAILED);
	fill_pattern(p, 4 * PG, 23);
	check_unsupported(p, 23);
	close(fd);
}

Test(badinput, adopt_range_of_another_userfaultfd, .timeout = T_SHORT)
{
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg;
	int ufd;
	char *p;

	need_hmm();
	ufd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (ufd < 0)
		cr_skip_test("userfaultfd: %s", strerror(errno));
	cr_assert_eq(ioctl(ufd, UFFDIO_API, &api), 0);
	p = region(24);
	reg.range.start = (uintptr_t)p;
	reg.range.len = 4 * PG;
	reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	cr_assert_eq(ioctl(ufd, UFFDIO_REGISTER, &reg), 0, "%s",
		     strerror(errno));
	cr_assert_eq(hmm_range_adopt(p, 4 * PG, 0), -EBUSY);
	assert_all_loc(p, 4 * PG, HMM_LOC_UNMANAGED, NULL);
	assert_pattern(p, 4 * PG, 24);
	cr_assert_eq(ioctl(ufd, UFFDIO_UNREGISTER, &reg.range), 0);
	close(ufd);
	check_untouched_then_adopt(p, 24);
}

Test(badinput, mem_alloc_bad_args, .timeout = T_SHORT)
{
	void *p = (void *)0x1;

	need_hmm();
	cr_assert_eq(hmm_mem_alloc(PG, 2, &p), -EINVAL); /* 1 is HMM_MEM_ZERO_COPY */
	cr_assert_eq(p, (void *)0x1, "a failed call changed *out");
	cr_assert_eq(hmm_mem_alloc(0, 0, &p), -EINVAL);
	cr_assert_eq(p, (void *)0x1, "a failed call changed *out");
	p = alloc_managed(PG);
	assert_zero(p, PG);
	cr_assert_eq(hmm_mem_free(p, PG), 0);
}

Test(badinput, mem_free_not_an_allocation, .timeout = T_SHORT)
{
	char *m, *a, *x;

	need_hmm();
	m = alloc_managed(4 * PG);
	fill_pattern(m, 4 * PG, 25);
	a = map_adopt(4 * PG);
	x = region(26);
	cr_assert_eq(hmm_mem_free(x, 4 * PG), -EINVAL);	/* plain memory */
	cr_assert_eq(hmm_mem_free(a, 4 * PG), -EINVAL);	/* adopted */
	cr_assert_eq(hmm_mem_free(m + PG, 3 * PG), -EINVAL); /* inside */
	cr_assert_eq(hmm_mem_free(m, 2 * PG), -EINVAL);	/* wrong length */
	cr_assert_eq(hmm_mem_free(m, 8 * PG), -EINVAL);	/* wrong length */
	assert_pattern(x, 4 * PG, 26);
	cr_assert_eq(loc_of(a, NULL), HMM_LOC_SYSTEM);
	assert_all_loc(m, 4 * PG, HMM_LOC_SYSTEM, NULL);
	assert_pattern(m, 4 * PG, 25);
	cr_assert_eq(hmm_mem_free(m, 4 * PG), 0);
	cr_assert_eq(hmm_mem_free(m, 4 * PG), -EINVAL); /* double free */
}

Test(badinput, release_bad_args, .timeout = T_SHORT)
{
	char *p, *x;

	need_hmm();
	p = map_adopt(4 * PG);
	fill_pattern(p, 4 * PG, 27);
	x = region(28);
	cr_assert_eq(hmm_range_release(x, 4 * PG), -ENOENT);
	cr_assert_eq(hmm_range_release(p + 1, PG), -EINVAL);
	cr_assert_eq(hmm_range_release(p, PG + 1), -EINVAL);
	cr_assert_eq(hmm_range_release(p, 0), -EINVAL);
	/* Partly managed. */
	cr_assert_eq(hmm_range_release(p + 2 * PG, 4 * PG), -ENOENT);
	assert_all_loc(p, 4 * PG, HMM_LOC_SYSTEM, NULL);
	assert_pattern(p, 4 * PG, 27);
	assert_pattern(x, 4 * PG, 28);
	cr_assert_eq(hmm_range_release(p, 4 * PG), 0);
	cr_assert_eq(hmm_range_release(p, 4 * PG), -ENOENT);
}

Test(badinput, migrate_bad_args, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p, *x;

	need_hmm();
	dev = open_sim(16 * PG);
	p = map_adopt(4 * PG);
	fill_pattern(p, 4 * PG, 29);
	x = region(30);
	cr_assert_eq(hmm_migrate(x, 4 * PG, dev, 0), -ENOENT);
	cr_assert_eq(hmm_migrate(x, 4 * PG, NULL, 0), -ENOENT);
	cr_assert_eq(hmm_migrate(p + 1, PG, dev, 0), -EINVAL);
	cr_assert_eq(hmm_migrate(p, PG + 8, dev, 0), -EINVAL);
	cr_assert_eq(hmm_migrate(p, 0, dev, 0), -EINVAL);
	cr_assert_eq(hmm_migrate(p, 4 * PG, dev, 1), -EINVAL);
	/* Partly managed: the managed part must not move either. */
	cr_assert_eq(hmm_migrate(p + 2 * PG, 4 * PG, dev, 0), -ENOENT);
	assert_all_loc(p, 4 * PG, HMM_LOC_SYSTEM, NULL);
	cr_assert_eq(dev_used(dev), 0);
	assert_pattern(p, 4 * PG, 29);
	assert_pattern(x, 4 * PG, 30);
	assert_migrate(p, 4 * PG, dev, 4);
	assert_pattern(p, 4 * PG, 29);
}

Test(badinput, migrate_more_than_device_memory, .timeout = T_SHORT)
{
	const size_t len = 32 * PG;
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(16 * PG);
	p = map_adopt(len);
	fill_pattern(p, len, 31);
	cr_assert_eq(hmm_migrate(p, len, dev, 0), -ENOMEM);
	assert_all_loc(p, len, HMM_LOC_SYSTEM, NULL);
	cr_assert_eq(dev_used(dev), 0);
	assert_pattern(p, len, 31);
	/* What fits still moves. */
	assert_migrate(p, 16 * PG, dev, 16);
	assert_all_loc(p, 16 * PG, HMM_LOC_DEVICE, dev);
	/* The device is full now: one more page moves in by evicting the
	 * least recently used one (test_evict.c covers HMM_EVICT=0, where
	 * it does not fit). */
	assert_migrate(p + 16 * PG, PG, dev, 1);
	cr_assert_eq(loc_of(p + 16 * PG, NULL), HMM_LOC_DEVICE);
	cr_assert_eq(count_loc(p, 16 * PG, HMM_LOC_DEVICE), 15);
	assert_pattern(p, len, 31);
}

Test(badinput, device_open_bad_args, .timeout = T_SHORT)
{
	struct hmm_device_attr attr = { .mem_size = 16 * PG };
	hmm_device_t *dev = NULL;

	need_hmm();
	cr_assert_eq(hmm_device_open("nope", &attr, &dev), -ENODEV);
	cr_assert_null(dev);
	cr_assert_eq(hmm_device_open("nope", NULL, &dev), -ENODEV);
	attr.mem_size = 16 * PG + 1;
	cr_assert_eq(hmm_device_open("sim", &attr, &dev), -EINVAL);
	cr_assert_null(dev);
	attr.mem_size = 16 * PG;
	attr.flags = 1;
	cr_assert_eq(hmm_device_open("sim", &attr, &dev), -EINVAL);
	cr_assert_null(dev);
	cr_assert_eq(hmm_device_close(NULL), -EINVAL);
	attr.flags = 0;
	cr_assert_eq(hmm_device_open("sim", &attr, &dev), 0);
	cr_assert_not_null(dev);
	cr_assert_eq(hmm_device_close(dev), 0);
}

Test(badinput, migrate_prot_none_part, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(16 * PG);
	p = map_adopt(4 * PG);
	fill_pattern(p, 4 * PG, 32);
	cr_assert_eq(mprotect(p + 2 * PG, PG, PROT_NONE), 0);
	cr_assert_eq(hmm_migrate(p, 4 * PG, dev, 0), -EFAULT);
	cr_assert_eq(dev_used(dev), 0);
	cr_assert_eq(loc_of(p, NULL), HMM_LOC_SYSTEM);
	cr_assert_eq(loc_of(p + 3 * PG, NULL), HMM_LOC_SYSTEM);
	cr_assert_eq(mprotect(p + 2 * PG, PG, PROT_READ | PROT_WRITE), 0);
	assert_pattern(p, 4 * PG, 32);
	assert_migrate(p, 4 * PG, dev, 4);
	assert_pattern(p, 4 * PG, 32);
}
