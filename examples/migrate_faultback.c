/* SPDX-License-Identifier: MIT */
/*
 * Migration: pages move to a device's memory, the device works on them
 * there, and a plain CPU access brings each page back, with the same
 * pointer and the device's data.
 *
 *   1. adopt an anonymous buffer (hmm_range_adopt) and fill it on the CPU;
 *   2. hmm_migrate it to a sim device: the pages now live in device memory
 *      (hmm_page_location, hmm_device_mem_usage say so);
 *   3. a device kernel adds 1 to every word, in device memory;
 *   4. the CPU reads the words: each first access to a page is a CPU fault
 *      that migrates the page home before the load completes (counter
 *      cpu_faults);
 *   5. what is left on the device is brought home explicitly with
 *      hmm_migrate(addr, len, NULL, 0), and the range is released.
 *
 * Exit status 0 when every check passes, 1 otherwise, 77 when this machine
 * offers no userfaultfd.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#define PAGES 256
#define LEN (PAGES * HMM_PAGE_SIZE)
#define WORDS (LEN / sizeof(uint64_t))

static int failures;

#define CHECK(cond, ...)                                              \
	do {                                                          \
		if (!(cond)) {                                        \
			fprintf(stderr, "migrate_faultback: FAIL: " __VA_ARGS__); \
			fputc('\n', stderr);                          \
			failures++;                                   \
		}                                                     \
	} while (0)

/* Device kernel: x = x + 1 on every word of the run it is given. */
static void inc_kernel(void *dptr, size_t off, size_t n, void *arg)
{
	uint64_t *w = dptr;

	(void)off;
	(void)arg;
	for (size_t i = 0; i < n / sizeof(*w); i++)
		w[i] += 1;
}

static uint64_t counter(const char *name)
{
	uint64_t v = 0;

	hmm_stat_get(name, &v);
	return v;
}

int main(void)
{
	hmm_device_t *dev, *where;
	size_t used, total;
	uint64_t *buf, faults0;
	long moved;
	int ret;

	ret = hmm_init();
	if (ret == -EPERM || ret == -ENOSYS || ret == -ENOENT ||
	    ret == -EOPNOTSUPP) {
		fprintf(stderr, "migrate_faultback: skipped: hmm_init: %s\n",
			strerror(-ret));
		return 77;
	}
	if (ret) {
		fprintf(stderr, "migrate_faultback: hmm_init: %s\n", strerror(-ret));
		return 1;
	}
	if (!(hmm_caps() & HMM_CAP_WP)) {
		/* Migrating anonymous memory write-protects it while copying. */
		fprintf(stderr, "migrate_faultback: skipped: no userfaultfd "
				"write-protection\n");
		return 77;
	}
	/* Fault-around would bring 16 pages home per fault: ask for single
	 * pages, so that the counts below are exact. */
	hmm_option_set("FAULT_AROUND", 0);

	/* 1. Ordinary anonymous memory, given to libhmm. */
	buf = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		perror("migrate_faultback: mmap");
		return 1;
	}
	ret = hmm_range_adopt(buf, LEN, 0);
	if (ret) {
		fprintf(stderr, "migrate_faultback: hmm_range_adopt: %s\n",
			strerror(-ret));
		return 1;
	}
	for (size_t i = 0; i < WORDS; i++)
		buf[i] = i;

	ret = hmm_device_open("sim", NULL, &dev);
	if (ret) {
		fprintf(stderr, "migrate_faultback: hmm_device_open: %s\n",
			strerror(-ret));
		return 1;
	}

	/* 2. To the device: every page moves (the return value counts
	 *    them). */
	moved = hmm_migrate(buf, LEN, dev, 0);
	CHECK(moved == PAGES, "hmm_migrate moved %ld pages, not %d", moved,
	      PAGES);
	CHECK(hmm_page_location(buf, &where) == HMM_LOC_DEVICE && where == dev,
	      "page 0 is not on the device");
	ret = hmm_device_mem_usage(dev, &used, &total);
	CHECK(ret == 0 && used == PAGES, "device memory in use: %zu pages",
	      used);
	printf("migrated %ld pages; device memory %zu/%zu pages used\n", moved,
	       used, total);

	/* 3. The device computes on its own memory: no page moves. */
	ret = hmm_sim_launch(dev, buf, LEN, 1, inc_kernel, NULL, NULL);
	CHECK(ret == 0, "hmm_sim_launch: %s", strerror(-ret));
	CHECK(hmm_page_location(buf, NULL) == HMM_LOC_DEVICE,
	      "the device kernel moved page 0");

	/* 4. CPU loads on the first half: each page comes home on its first
	 *    access, with the device's data. */
	faults0 = counter("cpu_faults");
	for (size_t i = 0; i < WORDS / 2; i++)
		if (buf[i] != i + 1) {
			CHECK(0, "word %zu: %lu, expected %zu", i,
			      (unsigned long)buf[i], i + 1);
			break;
		}
	printf("CPU read half the buffer: %lu CPU faults\n",
	       (unsigned long)(counter("cpu_faults") - faults0));
	CHECK(counter("cpu_faults") - faults0 == PAGES / 2,
	      "%lu CPU faults for %d pages",
	      (unsigned long)(counter("cpu_faults") - faults0), PAGES / 2);
	CHECK(hmm_page_location(buf, NULL) == HMM_LOC_SYSTEM,
	      "page 0 did not come home");
	CHECK(hmm_page_location((char *)buf + LEN - HMM_PAGE_SIZE, NULL) ==
		      HMM_LOC_DEVICE,
	      "the last page left the device untouched");

	/* 5. The rest comes home in one call (no CPU faults), then libhmm
	 *    lets go of the range: it stays mapped, with its data. */
	moved = hmm_migrate(buf, LEN, NULL, 0);
	CHECK(moved == PAGES / 2, "hmm_migrate home moved %ld pages", moved);
	ret = hmm_range_release(buf, LEN);
	CHECK(ret == 0, "hmm_range_release: %s", strerror(-ret));
	for (size_t i = 0; i < WORDS; i++)
		if (buf[i] != i + 1) {
			CHECK(0, "after release, word %zu: %lu", i,
			      (unsigned long)buf[i]);
			break;
		}
	ret = hmm_device_mem_usage(dev, &used, NULL);
	CHECK(ret == 0 && used == 0, "device memory still used: %zu", used);

	ret = hmm_device_close(dev);
	CHECK(ret == 0, "hmm_device_close: %s", strerror(-ret));
	munmap(buf, LEN);
	printf("migrate_faultback: %s\n", failures ? "FAILED" : "ok");
	return failures ? 1 : 0;
}
