/* SPDX-License-Identifier: MIT */
/*
 * pthread_cancel of a thread that is faulting on device-resident memory.
 *
 * A reader thread reads device-resident pages over and over while a
 * migrator thread keeps sending them back to the device, so the reader
 * spends much of its time inside CPU faults that libhmm serves.  The main
 * thread cancels the reader at a random moment, with the asynchronous
 * cancel type (the cancel signal may land while the reader waits in the
 * kernel for its fault) and with the deferred type (pthread_testcancel
 * between pages), in turn.  Every join must succeed within a bound, the
 * reader must never see a wrong word, and the data must be intact at the
 * end, read by the CPU and by the device.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#include "plain.h"

#define PG HMM_PAGE_SIZE
#define NPAGES 128
#define LEN (NPAGES * PG)
#define ROUNDS 40
#define SEED 0x3c3c

/*
 * Under ThreadSanitizer every load of the reader calls into TSan's
 * runtime, and an asynchronous cancel that lands there leaves TSan's
 * internal locks held (the main thread then hangs in TSan): only the
 * deferred type is tried there.
 */
#ifdef __SANITIZE_THREAD__
#define ASYNC_OK 0
#else
#define ASYNC_OK 1
#endif

static hmm_device_t *dev;
static uint64_t *buf;
static atomic_int stop_migrator;
static atomic_long bad_word = -1;	/* first wrong word a reader saw */
static atomic_long pages_read;

/*
 * The reader.  With the asynchronous type only plain loads and atomics run
 * between setcanceltype and the end: nothing that is not
 * async-cancel-safe.
 */
static void *reader(void *arg)
{
	int async = (int)(intptr_t)arg;
	const volatile uint64_t *w = buf;

	pthread_setcanceltype(async ? PTHREAD_CANCEL_ASYNCHRONOUS :
				      PTHREAD_CANCEL_DEFERRED, NULL);
	for (;;) {
		for (size_t pg = 0; pg < NPAGES; pg++) {
			size_t base = pg * (PG / 8);

			for (size_t i = base; i < base + PG / 8; i += 64)
				if (w[i] != (i ^ SEED))
					atomic_store(&bad_word, (long)i);
			atomic_fetch_add(&pages_read, 1);
			if (!async)
				pthread_testcancel();
		}
	}
	return NULL;
}

static void *migrator(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop_migrator))
		hmm_migrate(buf, LEN, dev, 0);
	return NULL;
}

static long mismatch(const uint64_t *p, size_t len)
{
	for (size_t i = 0; i < len / 8; i++)
		if (p[i] != (i ^ SEED))
			return (long)i;
	return -1;
}

int main(void)
{
	struct hmm_device_attr attr = { .mem_size = 4 * LEN };
	uint64_t *copy;
	pthread_t tm;
	void *m;
	long i;
	int r;

	PLAIN_NEED_HMM();
	r = hmm_device_open("sim", &attr, &dev);
	CHECK(r == 0, "hmm_device_open(sim) = %d", r);
	r = hmm_mem_alloc(LEN, 0, &m);
	CHECK(r == 0, "hmm_mem_alloc = %d", r);
	buf = m;
	for (size_t k = 0; k < LEN / 8; k++)
		buf[k] = k ^ SEED;
	CHECK(hmm_migrate(buf, LEN, dev, 0) == NPAGES, "hmm_migrate");

	r = pthread_create(&tm, NULL, migrator, NULL);
	CHECK(r == 0, "pthread_create: %s", strerror(r));
	srand(1234);
	for (int round = 0; round < ROUNDS; round++) {
		int async = ASYNC_OK && (round & 1);
		struct timespec deadline;
		long before = atomic_load(&pages_read);
		pthread_t tr;
		void *ret;

		r = pthread_create(&tr, NULL, reader, (void *)(intptr_t)async);
		CHECK(r == 0, "pthread_create: %s", strerror(r));
		/* Let it get going, then cancel at a random moment. */
		for (int k = 0; k < 1000 && atomic_load(&pages_read) < before + 8;
		     k++)
			usleep(1000);
		usleep((useconds_t)(rand() % 5000));
		r = pthread_cancel(tr);
		CHECK(r == 0, "pthread_cancel: %s", strerror(r));
		clock_gettime(CLOCK_REALTIME, &deadline);
		deadline.tv_sec += 10;
		r = pthread_timedjoin_np(tr, &ret, &deadline);
		CHECK(r == 0, "round %d (%s cancel): the cancelled reader did "
			      "not finish in 10 s: %s", round,
		      async ? "asynchronous" : "deferred", strerror(r));
		CHECK(ret == PTHREAD_CANCELED,
		      "round %d: the reader was not cancelled (%p)", round, ret);
		CHECK(atomic_load(&bad_word) == -1,
		      "round %d: the reader saw word %ld wrong", round,
		      atomic_load(&bad_word));
	}
	atomic_store(&stop_migrator, 1);
	pthread_join(tm, NULL);
	fprintf(stderr, "%d cancels (%s), %ld pages read by the readers\n",
		ROUNDS, ASYNC_OK ? "asynchronous and deferred" :
				   "deferred only, under TSan",
		atomic_load(&pages_read));

	/* Intact: once through the device, once through the CPU. */
	CHECK(hmm_migrate(buf, LEN, dev, 0) >= 0, "hmm_migrate");
	copy = malloc(LEN);
	CHECK(copy, "malloc");
	r = hmm_sim_read(dev, buf, copy, LEN, NULL);
	CHECK(r == 0, "hmm_sim_read = %d", r);
	i = mismatch(copy, LEN);
	CHECK(i == -1, "device read: word %ld is %#lx, want %#lx", i,
	      (unsigned long)copy[i], (unsigned long)(i ^ SEED));
	i = mismatch(buf, LEN);
	CHECK(i == -1, "CPU read: word %ld is %#lx, want %#lx", i,
	      (unsigned long)buf[i], (unsigned long)(i ^ SEED));
	free(copy);
	printf("cancel_during_fault: ok\n");
	return 0;
}
