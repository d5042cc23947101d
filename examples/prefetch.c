/* SPDX-License-Identifier: MIT */
/*
 * Prefetch and advice: telling libhmm where memory will be needed.
 *
 * 1. hmm_prefetch_start moves a range in the background; the program goes
 *    on and waits for the handle when it needs the data (or polls it).
 * 2. A prefetch of data already in place completes before the call
 *    returns: asking costs almost nothing.
 * 3. hmm_advise(HMM_ADVISE_PREFERRED_LOCATION, dev): the device's own
 *    faults move pages to it, with no explicit migration.
 * 4. A CPU pass after a prefetch home takes no CPU fault at all.
 * 5. hmm_advise(HMM_ADVISE_DISCARD): contents not needed any more are
 *    dropped without being copied back; the pages read as zeros.
 *
 * Exit status 0 when every check passes, 1 otherwise, 77 when this machine
 * offers no userfaultfd.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#define LEN (4UL << 20)		/* 1024 pages */
#define WORDS (LEN / sizeof(uint64_t))

static int fails;

#define CHECK(cond, ...)                                                    \
	do {                                                                \
		if (!(cond)) {                                              \
			fprintf(stderr, "prefetch: " __VA_ARGS__);          \
			fputc('\n', stderr);                                \
			fails++;                                            \
		}                                                           \
	} while (0)

/* How many pages of [p, p + LEN) are at @loc. */
static size_t count_at(const char *p, int loc)
{
	size_t n = 0;

	for (size_t off = 0; off < LEN; off += HMM_PAGE_SIZE)
		n += hmm_page_location(p + off, NULL) == loc;
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
	uint64_t *data, f0, sum = 0;
	char buf[64];
	long r;
	int ret = hmm_init();

	if (ret == -EPERM || ret == -ENOSYS || ret == -EOPNOTSUPP) {
		fprintf(stderr, "SKIP: hmm_init() = %d\n", ret);
		return 77;
	}
	if (ret || hmm_device_open("sim", NULL, &dev) ||
	    hmm_mem_alloc(LEN, 0, (void **)&data)) {
		fprintf(stderr, "prefetch: setup failed\n");
		return 1;
	}
	for (size_t i = 0; i < WORDS; i++)
		data[i] = i;

	/* 1. Start moving the data to the device, do other work, wait. */
	ret = hmm_prefetch_start(data, LEN, dev, 0, &pf);
	CHECK(ret == 0, "hmm_prefetch_start = %d", ret);
	r = hmm_prefetch_wait(pf, 0); /* a poll: done, or -ETIMEDOUT */
	printf("poll right after the start: %s\n",
	       r == -ETIMEDOUT ? "still moving" : "already done");
	r = hmm_prefetch_release(pf); /* waits, then frees the handle */
	CHECK(r == (long)(LEN / HMM_PAGE_SIZE), "prefetch moved %ld pages", r);
	CHECK(count_at((char *)data, HMM_LOC_DEVICE) == LEN / HMM_PAGE_SIZE,
	      "not every page is on the device");

	/* 2. Again: the data is in place, so the prefetch is complete when
	 * hmm_prefetch_start returns. */
	ret = hmm_prefetch_start(data, LEN, dev, 0, &pf);
	CHECK(ret == 0 && hmm_prefetch_wait(pf, 0) == 0,
	      "a prefetch of data in place was not complete at once");
	hmm_prefetch_release(pf);

	/* 4. Home before a CPU pass: the pass takes no CPU fault. */
	ret = hmm_prefetch_start(data, LEN, NULL, 0, &pf);
	CHECK(ret == 0 && hmm_prefetch_release(pf) > 0, "prefetch home");
	f0 = counter("cpu_faults");
	for (size_t i = 0; i < WORDS; i++)
		sum += data[i];
	CHECK(sum == WORDS * (WORDS - 1) / 2, "wrong data after prefetches");
	printf("CPU pass after a prefetch home: %llu CPU faults\n",
	       (unsigned long long)(counter("cpu_faults") - f0));
	CHECK(counter("cpu_faults") == f0, "the pass faulted");

	/* 3. Preferred location: the device's faults bring pages to it. */
	ret = hmm_advise(data, LEN, HMM_ADVISE_PREFERRED_LOCATION, dev);
	CHECK(ret == 0, "hmm_advise(PREFERRED_LOCATION) = %d", ret);
	ret = hmm_sim_read(dev, data, buf, sizeof(buf), NULL);
	CHECK(ret == 0, "hmm_sim_read = %d", ret);
	printf("after a device read of 64 bytes: %zu pages on the device\n",
	       count_at((char *)data, HMM_LOC_DEVICE));
	CHECK(hmm_page_location(data, NULL) == HMM_LOC_DEVICE,
	      "the device read did not bring its page to the device");

	/* 5. Discard: the device copies go, the pages read as zeros. */
	ret = hmm_advise(data, LEN, HMM_ADVISE_DISCARD, NULL);
	CHECK(ret == 0, "hmm_advise(DISCARD) = %d", ret);
	CHECK(data[0] == 0 && data[WORDS - 1] == 0,
	      "discarded memory is not zero");

	hmm_mem_free(data, LEN);
	hmm_device_close(dev);
	hmm_fini();
	if (!fails)
		printf("prefetch: ok\n");
	return fails ? 1 : 0;
}
