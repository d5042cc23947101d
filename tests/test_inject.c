/* SPDX-License-Identifier: MIT */
/*
 * Fault injection (hmm_inject_fault): every step that can fail leaves data
 * where it was and reports the failure, or, where nobody waits for an
 * answer (a CPU fault), is retried until it succeeds.
 */
#include <hmm/hmm_driver.h>

#include "common.h"

#define N 32
#define LEN (N * PG)

static uint64_t injected(void)
{
	uint64_t v = 0;

	cr_assert_eq(hmm_stat_get("faults_injected", &v), 0);
	return v;
}

static void arm(const char *point, int err, unsigned long skip,
		unsigned long times)
{
	cr_assert_eq(hmm_inject_fault(point, err, skip, times), 0,
		     "hmm_inject_fault(%s)", point);
}

/* Managed memory holding a pattern, on @dev if not NULL. */
static char *setup(hmm_device_t *dev, uint64_t seed)
{
	char *p = map_adopt(LEN);

	fill_pattern(p, LEN, seed);
	if (dev)
		assert_migrate(p, LEN, dev, N);
	return p;
}

Test(inject, bad_arguments, .timeout = T_SHORT)
{
	cr_assert_eq(hmm_inject_fault("no_such_point", 0, 0, 1), -ENOENT);
	cr_assert_eq(hmm_inject_fault(NULL, 0, 0, 1), -EINVAL);
	cr_assert_eq(hmm_inject_fault("zap", -1, 0, 1), -EINVAL);
	cr_assert_eq(hmm_inject_fault("zap", 0, 0, 0), 0); /* disarm */
}

/* Device memory cannot be had: -ENOMEM, nothing moves. */
Test(inject, devmem_alloc, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(LEN);
	p = setup(NULL, 1);
	arm("devmem_alloc", 0, 0, 1000);
	cr_assert_eq(hmm_migrate(p, LEN, dev, 0), -ENOMEM);
	assert_all_loc(p, LEN, HMM_LOC_SYSTEM, NULL);
	arm("devmem_alloc", 0, 0, 0);
	cr_assert_gt(injected(), 0);
	assert_pattern(p, LEN, 1);
	assert_migrate(p, LEN, dev, N);
	assert_pattern(p, LEN, 1);
}

/* The copy into device memory fails: -EIO, nothing moves, no device
 * memory stays taken. */
Test(inject, copy_to_device, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	size_t used = 1;
	char *p;

	need_hmm();
	dev = open_sim(LEN);
	p = setup(NULL, 2);
	arm("copy_to_device", 0, 0, 1);
	cr_assert_eq(hmm_migrate(p, LEN, dev, 0), -EIO);
	assert_all_loc(p, LEN, HMM_LOC_SYSTEM, NULL);
	cr_assert_eq(hmm_device_mem_usage(dev, &used, NULL), 0);
	cr_assert_eq(used, 0);
	assert_pattern(p, LEN, 2);
	assert_migrate(p, LEN, dev, N);
}

/* The copy back fails in hmm_migrate: -EIO, the pages stay on the
 * device with their data. */
Test(inject, copy_to_system_migrate, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(LEN);
	p = setup(dev, 3);
	arm("copy_to_system", 0, 0, 1);
	cr_assert_eq(hmm_migrate(p, LEN, NULL, 0), -EIO);
	cr_assert_eq(count_loc(p, LEN, HMM_LOC_DEVICE), N);
	assert_pattern(p, LEN, 3); /* CPU faults bring them back */
}

/* The copy back fails under a CPU fault: nobody to tell, so libhmm
 * retries, and the access completes with the right data. */
Test(inject, copy_to_system_cpu_fault, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(LEN);
	p = setup(dev, 4);
	arm("copy_to_system", 0, 0, 3);
	assert_pattern(p, LEN, 4);
	cr_assert_eq(injected(), 3);
}

/* UFFDIO_COPY failing, with each error the kernel can give, while CPU
 * faults bring pages back and while hmm_migrate does. */
static void uffd_copy_case(int err)
{
	hmm_device_t *dev;
	char *p;
	long r;

	need_hmm();
	dev = open_sim(LEN);
	p = setup(dev, 5);
	arm("uffd_copy", err, 0, 2);
	assert_pattern(p, LEN, 5);		/* CPU faults: retried */
	assert_migrate(p, LEN, dev, N);
	arm("uffd_copy", err, 0, 1);
	r = hmm_migrate(p, LEN, NULL, 0);	/* may report it */
	cr_assert(r == N || r < 0, "hmm_migrate = %ld", r);
	arm("uffd_copy", 0, 0, 0);
	assert_pattern(p, LEN, 5);
	assert_all_loc(p, LEN, HMM_LOC_SYSTEM, NULL);
}

Test(inject, uffd_copy_enomem, .timeout = T_SHORT)
{
	uffd_copy_case(ENOMEM);
}

Test(inject, uffd_copy_eagain, .timeout = T_SHORT)
{
	uffd_copy_case(EAGAIN);
}

Test(inject, uffd_copy_eexist, .timeout = T_SHORT)
{
	uffd_copy_case(EEXIST);
}

/* ENOENT means "the mapping is gone"; a mapping that is still there is
 * not taken for gone. */
Test(inject, uffd_copy_enoent, .timeout = T_SHORT)
{
	uffd_copy_case(ENOENT);
}

/* First touches of untouched pages: UFFDIO_ZEROPAGE fails, the fault is
 * retried and reads zeros. */
Test(inject, uffd_zeropage, .timeout = T_SHORT)
{
	char *p;

	need_hmm();
	p = map_adopt(LEN);
	arm("uffd_zeropage", 0, 0, 3);
	assert_zero(p, LEN);
	arm("uffd_zeropage", 0, 0, 0);
	fill_pattern(p, LEN, 6);
	assert_pattern(p, LEN, 6);
}

/* Write-protection fails at the start of a migration: reported, nothing
 * moves, the pages stay writable. */
Test(inject, uffd_writeprotect, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p;

	need_hmm();
	if (!(hmm_caps() & HMM_CAP_WP))
		cr_skip_test("no userfaultfd write-protection here");
	dev = open_sim(LEN);
	p = setup(NULL, 7);
	arm("uffd_writeprotect", 0, 0, 1);
	cr_assert_lt(hmm_migrate(p, LEN, dev, 0), 0);
	assert_all_loc(p, LEN, HMM_LOC_SYSTEM, NULL);
	fill_pattern(p, LEN, 8); /* still writable */
	assert_pattern(p, LEN, 8);
	assert_migrate(p, LEN, dev, N);
	assert_pattern(p, LEN, 8);
}

/* Registration fails: adopt and alloc report it; nothing is managed. */
Test(inject, uffd_register, .timeout = T_SHORT)
{
	void *a = NULL;
	char *p;

	need_hmm();
	p = map_anon(LEN);
	fill_pattern(p, LEN, 9);
	arm("uffd_register", 0, 0, 2);
	cr_assert_eq(hmm_range_adopt(p, LEN, 0), -ENOMEM);
	assert_all_loc(p, LEN, HMM_LOC_UNMANAGED, NULL);
	cr_assert_eq(hmm_mem_alloc(LEN, 0, &a), -ENOMEM);
	assert_pattern(p, LEN, 9);
	cr_assert_eq(hmm_range_adopt(p, LEN, 0), 0);
	assert_pattern(p, LEN, 9);
}

/* Dropping the system copies fails after the copy: whatever was not
 * dropped stays in system memory, nothing is lost. */
Test(inject, zap, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	long r;
	char *p;

	need_hmm();
	dev = open_sim(LEN);
	p = setup(NULL, 10);
	arm("zap", 0, 0, 1);
	r = hmm_migrate(p, LEN, dev, 0);
	cr_assert(r < 0, "hmm_migrate = %ld", r);
	cr_assert_eq(count_loc(p, LEN, HMM_LOC_DEVICE) +
			     count_loc(p, LEN, HMM_LOC_SYSTEM),
		     N);
	assert_pattern(p, LEN, 10);
	assert_migrate(p, LEN, dev, N);
	assert_pattern(p, LEN, 10);
}

/* Threads cannot be created: hmm_init and hmm_device_open fail cleanly,
 * and work once threads can be created again. */
Test(inject, thread_create, .timeout = T_SHORT)
{
	hmm_device_t *dev = NULL;
	int r;

	arm("thread_create", 0, 0, 1);
	r = hmm_init();
	if (r == -EPERM || r == -ENOSYS || r == -EOPNOTSUPP)
		cr_skip_test("no usable userfaultfd");
	cr_assert_eq(r, -EAGAIN, "hmm_init() = %d", r);
	need_hmm(); /* transient: a second call succeeds */
	arm("thread_create", 0, 0, 1);
	cr_assert_eq(hmm_device_open("sim", NULL, &dev), -EAGAIN);
	cr_assert_null(dev);
	dev = open_sim(LEN);
	char *p = setup(dev, 11);
	assert_pattern(p, LEN, 11);
}

/*
 * UFFDIO_MOVE (which takes anonymous pages out of the application's
 * mapping while they are copied) fails: on the first run, on a later run
 * after an earlier one moved, and on the way back too.  The migration
 * takes the other way (write-protect, copy, drop) and nothing is lost.
 * Two runs: the middle page is on the device already.
 */
static void uffd_move_case(unsigned long skip, unsigned long times)
{
	hmm_device_t *dev;
	uint64_t before;
	char *p;

	setenv("HMM_USE_MOVE", "1", 1); /* off by default */
	need_hmm();
	dev = open_sim(LEN);
	p = setup(NULL, 13);
	assert_migrate(p + (N / 2) * PG, PG, dev, 1);
	before = injected();
	arm("uffd_move", 0, skip, times);
	cr_assert_eq(hmm_migrate(p, LEN, dev, 0), N - 1);
	arm("uffd_move", 0, 0, 0);
	if (injected() == before)
		cr_skip_test("UFFDIO_MOVE is not in use here");
	assert_all_loc(p, LEN, HMM_LOC_DEVICE, dev);
	assert_pattern(p, LEN, 13);
}

Test(inject, uffd_move_first, .timeout = T_SHORT) { uffd_move_case(0, 1); }
Test(inject, uffd_move_second, .timeout = T_SHORT) { uffd_move_case(1, 1); }
Test(inject, uffd_move_and_return, .timeout = T_SHORT)
{
	uffd_move_case(1, 2);
}

/* Waking the threads parked on pages brought home fails once: it is
 * tried again, and every access completes. */
Test(inject, uffd_wake, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(LEN);
	p = setup(dev, 14);
	arm("uffd_wake", 0, 0, 1);
	assert_pattern(p, LEN, 14);
	arm("uffd_wake", 0, 0, 0);
	cr_assert_eq(injected(), 1);
	assert_all_loc(p, LEN, HMM_LOC_SYSTEM, NULL);
}

/* The range cannot be unregistered: hmm_range_release reports it, the
 * range stays managed with its data, and a second release works. */
Test(inject, uffd_unregister, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p;

	need_hmm();
	dev = open_sim(LEN);
	p = setup(dev, 15);
	arm("uffd_unregister", 0, 0, 1);
	cr_assert_eq(hmm_range_release(p, LEN), -ENOMEM);
	assert_all_loc(p, LEN, HMM_LOC_SYSTEM, NULL);
	assert_pattern(p, LEN, 15);
	assert_migrate(p, LEN, dev, N);
	cr_assert_eq(hmm_range_release(p, LEN), 0);
	assert_all_loc(p, LEN, HMM_LOC_UNMANAGED, NULL);
	assert_pattern(p, LEN, 15);
}

/* The UFFDIO_API handshake fails: hmm_init reports it, and works once it
 * can be made. */
Test(inject, uffd_api, .timeout = T_SHORT)
{
	int r;

	arm("uffd_api", 0, 0, 1);
	r = hmm_init();
	if (r == -EPERM || r == -ENOSYS || r == -EOPNOTSUPP)
		cr_skip_test("no usable userfaultfd");
	cr_assert_eq(r, -ENOMEM, "hmm_init() = %d", r);
	need_hmm();
	hmm_device_t *dev = open_sim(LEN);
	char *p = setup(dev, 16);
	assert_pattern(p, LEN, 16);
}

/* HMM_INJECT in the environment arms points before libhmm starts. */
Test(inject, environment, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p;

	setenv("HMM_INJECT", "copy_to_device:5:0:1", 1);
	need_hmm();
	dev = open_sim(LEN);
	p = setup(NULL, 12);
	cr_assert_eq(hmm_migrate(p, LEN, dev, 0), -EIO); /* errno 5 */
	assert_pattern(p, LEN, 12);
}
