/* SPDX-License-Identifier: MIT */
/*
 * Exclusive access for device atomics: hmm_exclusive_begin gives a device
 * a range for its atomics, hmm_exclusive_end gives it back.
 *
 * Read-only mode (HMM_EXCL_READONLY): while the device holds the range,
 * CPU reads go on and see current data, and a CPU write waits until the
 * hold ends.  The program shows it: a CPU thread stores to a held page,
 * the main thread sees (counter cpu_writes_held) that the store is
 * waiting, checks that it has not happened, ends the hold, and the store
 * completes.  No device atomic and no CPU store is lost.
 *
 * Revoke mode (HMM_EXCL_REVOKE, the kernel's make_device_exclusive): any
 * CPU access ends the device's hold on the page it touches;
 * hmm_exclusive_end then reports how many pages were taken back.
 *
 * Exit status 0 when every check passes, 1 otherwise, 77 when this machine
 * offers no userfaultfd or no write-protection.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#define LEN HMM_PAGE_SIZE
#define ADDS 1000

static int failures;

#define CHECK(cond, ...)                                              \
	do {                                                          \
		if (!(cond)) {                                        \
			fprintf(stderr, "atomics_exclusive: FAIL: " __VA_ARGS__); \
			fputc('\n', stderr);                          \
			failures++;                                   \
		}                                                     \
	} while (0)

static uint64_t *counters;	/* one managed page of counters */
static atomic_int stored;	/* the CPU thread's store is done */

static uint64_t counter(const char *name)
{
	uint64_t v = 0;

	hmm_stat_get(name, &v);
	return v;
}

static void *cpu_writer(void *arg)
{
	(void)arg;
	counters[1] = 7;		/* waits while the device holds the page */
	atomic_store(&stored, 1);
	return NULL;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

int main(void)
{
	hmm_device_t *dev;
	pthread_t th;
	uint64_t old, held0;
	long revoked;
	int ret;

	ret = hmm_init();
	if (ret == -EPERM || ret == -ENOSYS || ret == -ENOENT ||
	    ret == -EOPNOTSUPP) {
		fprintf(stderr, "atomics_exclusive: skipped: hmm_init: %s\n",
			strerror(-ret));
		return 77;
	}
	if (ret) {
		fprintf(stderr, "atomics_exclusive: hmm_init: %s\n",
			strerror(-ret));
		return 1;
	}
	if (!(hmm_caps() & HMM_CAP_WP)) {
		fprintf(stderr, "atomics_exclusive: skipped: no userfaultfd "
				"write-protection\n");
		return 77;
	}
	if ((ret = hmm_mem_alloc(LEN, 0, (void **)&counters)) ||
	    (ret = hmm_device_open("sim", NULL, &dev))) {
		fprintf(stderr, "atomics_exclusive: setup: %s\n",
			strerror(-ret));
		return 1;
	}

	/* ---- read-only mode ---- */
	ret = hmm_exclusive_begin(counters, LEN, dev, HMM_EXCL_READONLY, 0);
	CHECK(ret == 0, "hmm_exclusive_begin(READONLY): %s", strerror(-ret));
	if (ret)
		return 1;

	/* The device adds ADDS times, and swaps a value in word 2. */
	for (int i = 0; i < ADDS; i++) {
		ret = hmm_sim_atomic_add(dev, &counters[0], 1, NULL);
		if (ret) {
			CHECK(0, "hmm_sim_atomic_add: %s", strerror(-ret));
			break;
		}
	}
	ret = hmm_sim_atomic_cas(dev, &counters[2], 0, 99, &old);
	CHECK(ret == 0 && old == 0, "hmm_sim_atomic_cas: %s, old %lu",
	      strerror(-ret), (unsigned long)old);

	/* A CPU read goes on during the hold and sees the device's sums. */
	CHECK(counters[0] == ADDS, "CPU read %lu during the hold",
	      (unsigned long)counters[0]);

	/* A CPU write waits: start one, wait until libhmm reports it held
	 * (at most 10 s), and check it has not landed. */
	held0 = counter("cpu_writes_held");
	if (pthread_create(&th, NULL, cpu_writer, NULL)) {
		perror("atomics_exclusive: pthread_create");
		return 1;
	}
	for (int ms = 0; ms < 10000 && counter("cpu_writes_held") == held0;
	     ms += 10)
		sleep_ms(10);
	CHECK(counter("cpu_writes_held") > held0, "the CPU write never waited");
	sleep_ms(50);
	CHECK(!atomic_load(&stored), "a CPU write landed during the hold");
	printf("readonly: device added %d, CPU read %lu; CPU store %s\n",
	       ADDS, (unsigned long)counters[0],
	       atomic_load(&stored) ? "landed (wrong)" : "waiting");

	/* End the hold: the waiting store completes. */
	revoked = hmm_exclusive_end(counters, LEN, dev);
	CHECK(revoked == 0, "hmm_exclusive_end(READONLY): %ld", revoked);
	pthread_join(th, NULL);
	CHECK(counters[1] == 7 && counters[0] == ADDS && counters[2] == 99,
	      "after the hold: %lu %lu %lu", (unsigned long)counters[0],
	      (unsigned long)counters[1], (unsigned long)counters[2]);
	printf("readonly: hold ended, the CPU store landed: %lu\n",
	       (unsigned long)counters[1]);

	/* ---- revoke mode ---- */
	ret = hmm_exclusive_begin(counters, LEN, dev, HMM_EXCL_REVOKE, 0);
	CHECK(ret == 0, "hmm_exclusive_begin(REVOKE): %s", strerror(-ret));
	ret = hmm_sim_atomic_add(dev, &counters[0], 5, &old);
	CHECK(ret == 0 && old == ADDS, "atomic add under REVOKE: %s, old %lu",
	      strerror(-ret), (unsigned long)old);
	/* Any CPU access -- a read here -- ends the hold on the page. */
	CHECK(counters[0] == ADDS + 5, "CPU read %lu",
	      (unsigned long)counters[0]);
	revoked = hmm_exclusive_end(counters, LEN, dev);
	CHECK(revoked == 1, "hmm_exclusive_end(REVOKE) reported %ld pages "
	      "revoked, not 1", revoked);
	printf("revoke: a CPU read ended the hold (%ld page revoked)\n",
	       revoked);

	hmm_mem_free(counters, LEN);
	ret = hmm_device_close(dev);
	CHECK(ret == 0, "hmm_device_close: %s", strerror(-ret));
	printf("atomics_exclusive: %s\n", failures ? "FAILED" : "ok");
	return failures ? 1 : 0;
}
