/* SPDX-License-Identifier: MIT */
/*
 * Prefetch and advice: telling libhmm where memory will be needed.
 *
 * 1. hmm_prefetch_start moves a range to a device in the background; the
 *    program goes on, polls the handle (timeout 0), then waits for it.
 * 2. A prefetch of data already in place is complete when
 *    hmm_prefetch_start returns: asking costs one look at the pages.
 * 3. A prefetch home before a CPU pass: the pass takes no CPU fault.
 * 4. hmm_advise(HMM_ADVISE_PREFERRED_LOCATION, dev): the device's own
 *    accesses move the pages they touch to it, with no explicit move.
 * 5. hmm_advise(HMM_ADVISE_DISCARD): contents not needed any more are
 *    dropped without being copied back; the pages read as zeros.
 *
 * Exit status 0 when every check passes, 1 otherwise, 77 when this machine
 * offers no userfaultfd.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#define LEN (4UL << 20) /* 4 MiB: 1024 pages */
#define PAGES (LEN / HMM_PAGE_SIZE)
#define WORDS (LEN / sizeof(uint64_t))

static int fails;

#define CHECK(cond, ...)                                           \
	do {                                                       \
		if (!(cond)) {                                     \
			fprintf(stderr, "prefetch: " __VA_ARGS__); \
			fputc('\n', stderr);                       \
			fails++;                                   \
		}                                                  \
	} while (0)

/* How many pages of [p, p + LEN) are at @loc (HMM_LOC_DEVICE, ...). */
static size_t pages_at(const void *p, int loc)
{
	size_t n = 0;

	for (size_t off = 0; off < LEN; off += HMM_PAGE_SIZE)
		n += hmm_page_location((const char *)p + off, NULL) == loc;
	return n;
}

static uint64_t counter(const char *name)
{
	uint64_t v = 0;

	hmm_stat_get(name, &v);
	return v;
}

int main(void)
{
	hmm_device_t *dev;
	hmm_prefetch_t *pf;
	uint64_t *data, other[256], sum = 0, faults;
	char buf[64];
	long r;
	int ret = hmm_init();

	if (ret == -EPERM || ret == -ENOSYS || ret == -ENOENT ||
	    ret == -EOPNOTSUPP) {
		fprintf(stderr, "prefetch: skipped: hmm_init() = %d\n", ret);
		return 77;
	}
	if (ret || hmm_device_open("sim", NULL, &dev) ||
	    hmm_mem_alloc(LEN, 0, (void **)&data)) {
		fprintf(stderr, "prefetch: setup failed\n");
		return 1;
	}
	for (size_t i = 0; i < WORDS; i++)
		data[i] = i;

	/* 1. Start moving the data to the device, and go on meanwhile. */
	ret = hmm_prefetch_start(data, LEN, dev, 0, &pf);
	CHECK(ret == 0, "hmm_prefetch_start = %d", ret);
	if (ret)
		return 1;
	for (size_t i = 0; i < 256; i++) /* other work, not on data */
		other[i] = i * i;
	r = hmm_prefetch_wait(pf, 0); /* a poll: the result, or -ETIMEDOUT */
	printf("poll after the start: %s\n",
	       r == -ETIMEDOUT ? "still moving" : "already done");
	r = hmm_prefetch_wait(pf, -1); /* wait as long as it takes */
	CHECK(r == (long)PAGES, "the prefetch moved %ld pages", r);
	CHECK(hmm_prefetch_release(pf) == r, "release gave another result");
	CHECK(pages_at(data, HMM_LOC_DEVICE) == PAGES,
	      "not every page is on the device");

	/* 2. The same again: everything is in place already, so the
	 *    prefetch is complete before hmm_prefetch_start returns. */
	ret = hmm_prefetch_start(data, LEN, dev, 0, &pf);
	CHECK(ret == 0, "hmm_prefetch_start = %d", ret);
	if (ret)
		return 1;
	r = hmm_prefetch_wait(pf, 0);
	CHECK(r == 0, "a prefetch of data in place: %ld, not 0 at once", r);
	hmm_prefetch_release(pf);

	/* 3. Home before a CPU pass (dev NULL: system memory). */
	ret = hmm_prefetch_start(data, LEN, NULL, 0, &pf);
	CHECK(ret == 0 && hmm_prefetch_release(pf) == (long)PAGES,
	      "the prefetch home did not move every page");
	faults = counter("cpu_faults");
	for (size_t i = 0; i < WORDS; i++)
		sum += data[i];
	faults = counter("cpu_faults") - faults;
	printf("CPU pass after the prefetch home: %llu CPU faults\n",
	       (unsigned long long)faults);
	CHECK(sum == WORDS * (WORDS - 1) / 2, "wrong data after the moves");
	CHECK(faults == 0, "the CPU pass took %llu faults",
	      (unsigned long long)faults);

	/* 4. Prefer the device: its first read moves the pages it touches
	 *    there, where without advice it would read them in place. */
	ret = hmm_advise(data, LEN, HMM_ADVISE_PREFERRED_LOCATION, dev);
	CHECK(ret == 0, "hmm_advise(PREFERRED_LOCATION) = %d", ret);
	ret = hmm_sim_read(dev, data, buf, sizeof(buf), NULL);
	CHECK(ret == 0, "hmm_sim_read = %d", ret);
	printf("pages on the device after a device read of 64 bytes: %zu\n",
	       pages_at(data, HMM_LOC_DEVICE));
	CHECK(hmm_page_location(data, NULL) == HMM_LOC_DEVICE,
	      "the device read did not bring its page to the device");

	/* 5. Discard: the device's copies are dropped, not copied back, and
	 *    every page reads as zeros. */
	ret = hmm_advise(data, LEN, HMM_ADVISE_DISCARD, NULL);
	CHECK(ret == 0, "hmm_advise(DISCARD) = %d", ret);
	CHECK(data[0] == 0 && data[WORDS / 2] == 0 && data[WORDS - 1] == 0,
	      "discarded memory does not read as zeros");

	hmm_mem_free(data, LEN);
	hmm_device_close(dev);
	hmm_fini();
	CHECK(other[255] == 255 * 255, "the other work went wrong");
	printf("prefetch: %s\n", fails ? "FAILED" : "ok");
	return fails ? 1 : 0;
}
