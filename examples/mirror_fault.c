/* SPDX-License-Identifier: MIT */
/*
 * Mirroring: a device works on ordinary process memory through its mirror
 * of the address space, with no migration at all.
 *
 * A sim device has a device page table (its mirror of the process).  The
 * first time one of its commands touches a page the table has no entry
 * for, the device faults: the driver asks libhmm for the CPU's translation
 * (hmm_range_fault) and fills its table, and the command goes on.  The
 * pages stay in system memory; CPU and device share them.  When the CPU
 * side changes (here madvise(MADV_DONTNEED)), libhmm invalidates the
 * mirror, and the device's next access faults again and sees the change.
 *
 * The memory here is never given to libhmm (no hmm_range_adopt): mirroring
 * works on any mapped memory.  Exit status 0 when every check passes, 1
 * otherwise, 77 when this machine offers no userfaultfd.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#define LEN (64 * HMM_PAGE_SIZE)
#define WORDS (LEN / sizeof(uint64_t))

static int failures;

#define CHECK(cond, ...)                                              \
	do {                                                          \
		if (!(cond)) {                                        \
			fprintf(stderr, "mirror_fault: FAIL: " __VA_ARGS__); \
			fputc('\n', stderr);                          \
			failures++;                                   \
		}                                                     \
	} while (0)

/* A device kernel: sums the 64-bit words of one run of pages.  @dptr is
 * the device's view of the run (here system memory reached through the
 * mirror); it must touch nothing else. */
static void sum_kernel(void *dptr, size_t off, size_t n, void *arg)
{
	const uint64_t *w = dptr;
	uint64_t *sum = arg;

	(void)off;
	for (size_t i = 0; i < n / sizeof(*w); i++)
		*sum += w[i];
}

int main(void)
{
	struct hmm_sim_result res;
	hmm_device_t *dev;
	uint64_t *buf, *copy, sum = 0, expect = 0;
	int ret;

	ret = hmm_init();
	if (ret == -EPERM || ret == -ENOSYS || ret == -ENOENT ||
	    ret == -EOPNOTSUPP) {
		fprintf(stderr, "mirror_fault: skipped: hmm_init: %s\n",
			strerror(-ret));
		return 77;
	}
	if (ret) {
		fprintf(stderr, "mirror_fault: hmm_init: %s\n", strerror(-ret));
		return 1;
	}
	ret = hmm_device_open("sim", NULL, &dev);
	if (ret) {
		fprintf(stderr, "mirror_fault: hmm_device_open: %s\n",
			strerror(-ret));
		return 1;
	}

	/* Plain anonymous memory, filled by the CPU. */
	buf = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	copy = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED || copy == MAP_FAILED) {
		perror("mirror_fault: mmap");
		return 1;
	}
	for (size_t i = 0; i < WORDS; i++) {
		buf[i] = i * 3 + 1;
		expect += buf[i];
	}

	/* 1. The device reads the buffer: its table is empty, so it faults
	 *    (one round for the whole cold range) and then copies. */
	ret = hmm_sim_read(dev, buf, copy, LEN, &res);
	CHECK(ret == 0, "hmm_sim_read: %s", strerror(-ret));
	CHECK(memcmp(buf, copy, LEN) == 0, "the device read other data");
	CHECK(res.faults >= 1, "a cold read took %lu device faults",
	      (unsigned long)res.faults);
	printf("cold device read:  %lu fault round(s), %lu pages\n",
	       (unsigned long)res.faults, (unsigned long)res.pages);

	/* 2. A device kernel over the same pages: the mirror is filled now,
	 *    no fault.  The pages never left system memory. */
	ret = hmm_sim_launch(dev, buf, LEN, 0, sum_kernel, &sum, &res);
	CHECK(ret == 0, "hmm_sim_launch: %s", strerror(-ret));
	CHECK(sum == expect, "device sum %lu, CPU sum %lu",
	      (unsigned long)sum, (unsigned long)expect);
	CHECK(res.faults == 0, "a warm kernel took %lu device faults",
	      (unsigned long)res.faults);
	CHECK(hmm_page_location(buf, NULL) == HMM_LOC_UNMANAGED,
	      "mirroring made the memory managed");
	printf("warm device kernel: %lu fault round(s), sum %lu\n",
	       (unsigned long)res.faults, (unsigned long)sum);

	/* 3. The device writes; the CPU sees it at once (same pages). */
	ret = hmm_sim_fill64(dev, buf, 0xabcdULL, HMM_PAGE_SIZE, &res);
	CHECK(ret == 0, "hmm_sim_fill64: %s", strerror(-ret));
	for (size_t i = 0; i < HMM_PAGE_SIZE / sizeof(uint64_t); i++)
		CHECK(buf[i] == 0xabcdULL, "word %zu: %#lx after a device "
		      "write", i, (unsigned long)buf[i]);

	/* 4. The CPU side changes: the pages are dropped (they read as
	 *    zeros now).  libhmm invalidates the device's translations
	 *    before madvise returns, so the device faults again and sees
	 *    zeros, never the old pages. */
	if (madvise(buf, LEN, MADV_DONTNEED)) {
		perror("mirror_fault: madvise");
		return 1;
	}
	ret = hmm_sim_read(dev, buf, copy, LEN, &res);
	CHECK(ret == 0, "hmm_sim_read: %s", strerror(-ret));
	CHECK(res.faults >= 1, "no device fault after the CPU dropped the "
	      "pages");
	for (size_t i = 0; i < WORDS; i++)
		if (copy[i] != 0) {
			CHECK(0, "word %zu: the device saw %#lx, not zero", i,
			      (unsigned long)copy[i]);
			break;
		}
	printf("after MADV_DONTNEED: %lu fault round(s), device reads zeros\n",
	       (unsigned long)res.faults);

	munmap(buf, LEN);
	munmap(copy, LEN);
	ret = hmm_device_close(dev);
	CHECK(ret == 0, "hmm_device_close: %s", strerror(-ret));
	printf("mirror_fault: %s\n", failures ? "FAILED" : "ok");
	return failures ? 1 : 0;
}
