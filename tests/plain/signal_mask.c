/* SPDX-License-Identifier: MIT */
/*
 * A thread that blocks every signal still has its faults on device-resident
 * memory served.  libhmm catches CPU accesses to device pages with
 * userfaultfd, which needs no signal in the faulting thread, so a thread
 * running with a full signal mask (a common pattern for worker threads)
 * must read and write managed memory like any other.
 *
 * Both kinds of managed memory are used: hmm_mem_alloc (shared memory) and
 * mmap + hmm_range_adopt (private anonymous).  Word i of a buffer holds
 * i ^ seed, checked byte for byte.
 */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#include "plain.h"

#define PG HMM_PAGE_SIZE
#define NPAGES 64
#define LEN (NPAGES * PG)

static hmm_device_t *dev;
static uint64_t *bufs[2];
static const char *const names[2] = { "hmm_mem_alloc", "adopted" };

static void fill(uint64_t *p, size_t len, uint64_t seed)
{
	for (size_t i = 0; i < len / 8; i++)
		p[i] = i ^ seed;
}

/* Index of the first word that is not i ^ seed, or -1. */
static long mismatch(const uint64_t *p, size_t len, uint64_t seed)
{
	const volatile uint64_t *w = p;

	for (size_t i = 0; i < len / 8; i++)
		if (w[i] != (i ^ seed))
			return (long)i;
	return -1;
}

static int count_on_device(const void *p, size_t len)
{
	int n = 0;

	for (size_t off = 0; off < len; off += PG)
		if (hmm_page_location((const char *)p + off, NULL) ==
		    HMM_LOC_DEVICE)
			n++;
	return n;
}

/*
 * The worker: every signal blocked, it reads what the CPU wrote (seed 0x11,
 * on the device), then what the device wrote (hmm_sim_fill64), then writes
 * a new pattern over pages that live on the device.  It reports the first
 * problem as a string rather than exiting, so the main thread prints it.
 */
static void *worker(void *arg)
{
	const volatile uint64_t *w;
	sigset_t all, cur;

	(void)arg;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, NULL);
	pthread_sigmask(SIG_SETMASK, NULL, &cur);
	if (!sigismember(&cur, SIGUSR1) || !sigismember(&cur, SIGSEGV) ||
	    !sigismember(&cur, SIGBUS))
		return "the worker could not block every signal";

	for (int b = 0; b < 2; b++)
		if (mismatch(bufs[b], LEN, 0x11) != -1)
			return "a CPU-written page read wrong from the worker";

	for (int b = 0; b < 2; b++) {
		if (hmm_migrate(bufs[b], LEN, dev, 0) < 0)
			return "hmm_migrate to the device failed in the worker";
		if (hmm_sim_fill64(dev, bufs[b], 0x5a5a0000u + b, LEN, NULL))
			return "hmm_sim_fill64 failed in the worker";
		w = bufs[b];
		for (size_t i = 0; i < LEN / 8; i++)
			if (w[i] != 0x5a5a0000u + b)
				return "a device-written word read wrong from "
				       "the worker";
	}

	/* Stores to device-resident pages (write faults). */
	for (int b = 0; b < 2; b++) {
		if (hmm_migrate(bufs[b], LEN, dev, 0) < 0)
			return "hmm_migrate to the device failed in the worker";
		fill(bufs[b], LEN, 0x22 + b);
	}
	return NULL;
}

int main(void)
{
	struct hmm_device_attr attr = { .mem_size = 4 * LEN };
	struct timespec deadline;
	pthread_t th;
	void *ret, *m;
	int r;

	PLAIN_NEED_HMM();
	r = hmm_device_open("sim", &attr, &dev);
	CHECK(r == 0, "hmm_device_open(sim) = %d", r);

	r = hmm_mem_alloc(LEN, 0, &m);
	CHECK(r == 0, "hmm_mem_alloc = %d", r);
	bufs[0] = m;
	m = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(m != MAP_FAILED, "mmap: %s", strerror(errno));
	r = hmm_range_adopt(m, LEN, 0);
	CHECK(r == 0, "hmm_range_adopt = %d", r);
	bufs[1] = m;

	for (int b = 0; b < 2; b++) {
		long n;

		fill(bufs[b], LEN, 0x11);
		n = hmm_migrate(bufs[b], LEN, dev, 0);
		CHECK(n == NPAGES, "hmm_migrate(%s) = %ld", names[b], n);
		CHECK(count_on_device(bufs[b], LEN) == NPAGES,
		      "%s: only %d of %d pages on the device", names[b],
		      count_on_device(bufs[b], LEN), NPAGES);
	}

	r = pthread_create(&th, NULL, worker, NULL);
	CHECK(r == 0, "pthread_create: %s", strerror(r));
	/* A fault that is never served would hang the worker: bound it. */
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 30;
	r = pthread_timedjoin_np(th, &ret, &deadline);
	CHECK(r == 0, "the worker with every signal blocked did not finish "
		      "in 30 s (a CPU fault on a device page not served?): %s",
	      strerror(r));
	CHECK(ret == NULL, "worker: %s", (const char *)ret);

	/* What the worker stored, read by the main thread. */
	for (int b = 0; b < 2; b++) {
		long i = mismatch(bufs[b], LEN, 0x22 + b);

		CHECK(i == -1, "%s: word %ld is %#lx, the worker stored %#lx",
		      names[b], i, (unsigned long)bufs[b][i],
		      (unsigned long)(i ^ (0x22 + b)));
	}
	printf("signal_mask: a thread blocking every signal was served\n");
	return 0;
}
