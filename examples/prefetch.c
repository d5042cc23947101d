/* SPDX-License-Identifier: MIT */
/*
 * Prefetching, and the one placement hint libhmm has.
 *
 * libhmm has no separate prefetch or advice call: hmm_migrate is the
 * prefetch.  Moving a range to where it is about to be used, before it is
 * used, replaces many demand faults by one bulk migration:
 *  - to system memory before a CPU pass over device-resident data: the
 *    pass then takes no CPU fault at all;
 *  - to a device before its kernels run: they then work in device memory.
 * The hint is the option HMM_FAULT_AROUND (environment, or hmm_option_set
 * from the program): how many bytes a CPU fault brings home around the
 * page it needs.  0 means one page per fault; the default 64 KiB means 16
 * pages per fault for a sequential pass.
 *
 * The program runs a CPU pass over device-resident data three ways and
 * counts CPU faults (counter cpu_faults) each time: on demand with
 * fault-around off, on demand with 64 KiB of fault-around, and after
 * prefetching with hmm_migrate(..., NULL, 0).
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

#define PAGES 512
#define LEN (PAGES * HMM_PAGE_SIZE)
#define WORDS (LEN / sizeof(uint64_t))

static int failures;

#define CHECK(cond, ...)                                              \
	do {                                                          \
		if (!(cond)) {                                        \
			fprintf(stderr, "prefetch: FAIL: " __VA_ARGS__); \
			fputc('\n', stderr);                          \
			failures++;                                   \
		}                                                     \
	} while (0)

static uint64_t counter(const char *name)
{
	uint64_t v = 0;

	hmm_stat_get(name, &v);
	return v;
}

/* Device kernel: x = 2x + 1 on every word of its run. */
static void step_kernel(void *dptr, size_t off, size_t n, void *arg)
{
	uint64_t *w = dptr;

	(void)off;
	(void)arg;
	for (size_t i = 0; i < n / sizeof(*w); i++)
		w[i] = 2 * w[i] + 1;
}

/* Put the data on @dev (a prefetch to the device) and have the device
 * compute one step on it, in its own memory. */
static void to_device(uint64_t *buf, hmm_device_t *dev)
{
	struct hmm_sim_result res;
	long moved = hmm_migrate(buf, LEN, dev, 0); /* prefetch to the device */
	int ret;

	CHECK(moved == PAGES, "hmm_migrate to the device: %ld", moved);
	ret = hmm_sim_launch(dev, buf, LEN, 1, step_kernel, NULL, &res);
	CHECK(ret == 0, "hmm_sim_launch: %s", strerror(-ret));
	CHECK(hmm_page_location(buf, NULL) == HMM_LOC_DEVICE,
	      "the kernel did not run in device memory");
}

/* A sequential CPU pass checking every word; returns the CPU faults it
 * took. */
static uint64_t cpu_pass(const uint64_t *buf, uint64_t round)
{
	uint64_t f0 = counter("cpu_faults");

	for (size_t i = 0; i < WORDS; i++) {
		uint64_t want = i;
		for (uint64_t r = 0; r < round; r++)
			want = 2 * want + 1;
		if (buf[i] != want) {
			CHECK(0, "round %lu, word %zu: %lu, expected %lu",
			      (unsigned long)round, i, (unsigned long)buf[i],
			      (unsigned long)want);
			break;
		}
	}
	return counter("cpu_faults") - f0;
}

int main(void)
{
	hmm_device_t *dev;
	uint64_t *buf, faults;
	long moved;
	int ret;

	ret = hmm_init();
	if (ret == -EPERM || ret == -ENOSYS || ret == -ENOENT ||
	    ret == -EOPNOTSUPP) {
		fprintf(stderr, "prefetch: skipped: hmm_init: %s\n",
			strerror(-ret));
		return 77;
	}
	if (ret) {
		fprintf(stderr, "prefetch: hmm_init: %s\n", strerror(-ret));
		return 1;
	}
	if (!(hmm_caps() & HMM_CAP_WP)) {
		fprintf(stderr, "prefetch: skipped: no userfaultfd "
				"write-protection\n");
		return 77;
	}
	if ((ret = hmm_mem_alloc(LEN, 0, (void **)&buf)) ||
	    (ret = hmm_device_open("sim", NULL, &dev))) {
		fprintf(stderr, "prefetch: setup: %s\n", strerror(-ret));
		return 1;
	}
	for (size_t i = 0; i < WORDS; i++)
		buf[i] = i;

	/* 1. On demand, one page per fault. */
	hmm_option_set("HMM_FAULT_AROUND", 0);
	to_device(buf, dev);
	faults = cpu_pass(buf, 1);
	printf("on demand, HMM_FAULT_AROUND=0:     %4lu CPU faults for %d "
	       "pages\n", (unsigned long)faults, PAGES);
	CHECK(faults == PAGES, "%lu faults, not one per page",
	      (unsigned long)faults);

	/* 2. On demand, 64 KiB brought home per fault. */
	hmm_option_set("HMM_FAULT_AROUND", 64 * 1024);
	to_device(buf, dev);
	faults = cpu_pass(buf, 2);
	printf("on demand, HMM_FAULT_AROUND=64K:   %4lu CPU faults\n",
	       (unsigned long)faults);
	CHECK(faults > 0 && faults <= PAGES / 8,
	      "%lu faults with 16 pages per fault", (unsigned long)faults);

	/* 3. Prefetched: one bulk migration home, then no fault at all.
	 *    (It may move fewer than PAGES pages: a CPU fault of the pass
	 *    before can bring its last pages home late, after to_device.) */
	to_device(buf, dev);
	moved = hmm_migrate(buf, LEN, NULL, 0);
	CHECK(moved > 0 && moved <= PAGES, "prefetch home moved %ld pages",
	      moved);
	for (size_t p = 0; p < PAGES; p++)
		if (hmm_page_location((char *)buf + p * HMM_PAGE_SIZE, NULL) !=
		    HMM_LOC_SYSTEM) {
			CHECK(0, "page %zu is not home after the prefetch", p);
			break;
		}
	faults = cpu_pass(buf, 3);
	printf("prefetched with hmm_migrate(NULL): %4lu CPU faults\n",
	       (unsigned long)faults);
	CHECK(faults == 0, "%lu CPU faults after a prefetch",
	      (unsigned long)faults);

	hmm_mem_free(buf, LEN);
	ret = hmm_device_close(dev);
	CHECK(ret == 0, "hmm_device_close: %s", strerror(-ret));
	printf("prefetch: %s\n", failures ? "FAILED" : "ok");
	return failures ? 1 : 0;
}
