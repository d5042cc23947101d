/* SPDX-License-Identifier: MIT */
/*
 * Read duplication under races (HMM_ADVISE_READ_MOSTLY): the main thread
 * writes every word of a buffer round after round; two reader threads read
 * random spans through two sim devices (which copy the pages into their
 * memory); two threads migrate random spans to the devices and home; one
 * turns the advice on and off.  A device read must never see a round older
 * than the last one finished before it began, nor a word that is not the
 * buffer's (a freed copy's).  Anonymous memory first, then hmm_mem_alloc
 * memory.
 */
#include <inttypes.h>
#include <sys/mman.h>
#include <time.h>

#include <hmm/hmm_sim.h>

#include "race.h"

static _Atomic uint64_t done;	/* last round written completely */
static atomic_bool readers_stop;
static _Atomic uint64_t reads, dups0;

static uint64_t ms_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

NO_TSAN static void write_round(uint64_t gen)
{
	for (size_t i = 0; i < LEN / 8; i++)
		p[i] = (gen << 32) | i;
}

static void *reader(void *arg)
{
	int d = (int)(uintptr_t)arg;
	unsigned seed = 11 + (unsigned)d;
	uint64_t *buf = malloc(LEN);

	CHECK(buf, "malloc");
	while (!atomic_load(&readers_stop)) {
		size_t pg = rand_r(&seed) % NP, n = 1 + rand_r(&seed) % 64;
		if (pg + n > NP)
			n = NP - pg;
		uint64_t before = atomic_load(&done);
		int r = hmm_sim_read(dev[d], p + pg * 512, buf, n * 4096, NULL);
		CHECK(r == 0, "hmm_sim_read = %d", r);
		for (size_t k = 0; k < n * 512; k++) {
			size_t i = pg * 512 + k;
			uint64_t w = buf[k];
			CHECK((w & 0xffffffffu) == i,
			      "device %d: word %zu is %#" PRIx64
			      ", not this buffer's", d, i, w);
			CHECK((w >> 32) >= before,
			      "device %d: word %zu (page %zu) from round %" PRIu64
			      ", but round %" PRIu64 " was finished before the "
			      "read", d, i, i / 512, w >> 32, before);
		}
		atomic_fetch_add(&reads, 1);
	}
	free(buf);
	return NULL;
}

static void *adviser(void *arg)
{
	unsigned seed = 5;

	(void)arg;
	while (!atomic_load(&readers_stop)) {
		size_t pg = rand_r(&seed) % NP, n = 1 + rand_r(&seed) % 128;
		if (pg + n > NP)
			n = NP - pg;
		int a = rand_r(&seed) % 4 ? HMM_ADVISE_READ_MOSTLY
					  : HMM_ADVISE_UNSET_READ_MOSTLY;
		CHECK(hmm_advise(p + pg * 512, n * 4096, a, NULL) == 0,
		      "hmm_advise");
		usleep(2000);
	}
	return NULL;
}

static void run(const char *what, unsigned ms)
{
	pthread_t rd[2], adv;
	uint64_t gen = 1, end;

	atomic_store(&done, 0);
	atomic_store(&readers_stop, false);
	atomic_store(&stop, false);
	write_round(0);
	CHECK(hmm_advise(p, LEN, HMM_ADVISE_READ_MOSTLY, NULL) == 0,
	      "hmm_advise");
	for (int d = 0; d < 2; d++)
		CHECK(pthread_create(&rd[d], NULL, reader,
				     (void *)(uintptr_t)d) == 0, "thread");
	CHECK(pthread_create(&adv, NULL, adviser, NULL) == 0, "thread");
	race_start();
	end = ms_now() + ms;
	while (ms_now() < end) {
		write_round(gen);
		atomic_store(&done, gen);
		gen++;
		usleep(500);
	}
	race_stop();
	atomic_store(&readers_stop, true);
	for (int d = 0; d < 2; d++)
		pthread_join(rd[d], NULL);
	pthread_join(adv, NULL);
	uint64_t made = 0;
	hmm_stat_get("dup_pages_created", &made);
	printf("%s: %" PRIu64 " rounds, %" PRIu64 " device reads, %" PRIu64
	       " copies made\n", what, gen, atomic_load(&reads),
	       made - atomic_load(&dups0));
	CHECK(made > atomic_load(&dups0), "%s: no copy was made", what);
	atomic_store(&dups0, made);
}

int main(void)
{
	PLAIN_NEED_HMM();
	if (!(hmm_caps() & HMM_CAP_WP))
		SKIP("no userfaultfd write-protect faults here");
	race_open_devices();
	p = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED, "mmap");
	CHECK(hmm_range_adopt(p, LEN, 0) == 0, "hmm_range_adopt");
	run("anonymous", 2500);
	CHECK(munmap(p, LEN) == 0, "munmap");
	CHECK(hmm_mem_alloc(LEN, 0, (void **)&p) == 0, "hmm_mem_alloc");
	run("hmm_mem_alloc", 2500);
	CHECK(hmm_mem_free(p, LEN) == 0, "hmm_mem_free");
	return 0;
}
