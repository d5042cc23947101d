/* SPDX-License-Identifier: MIT */
/*
 * The IOMMU and the sim device's DMA map under concurrency; a plain
 * program so that ThreadSanitizer runs it too.
 *
 *  1. readers translate while a writer links and unlinks: every answer is
 *     a whole link or a fault;
 *  2. a page is replaced (munmap, mmap at the same address, new data) over
 *     and over while raw DMA reads its IOVA: a read that began after a
 *     replacement was published never returns older data;
 *  3. pages migrate to the device and fault back while raw DMA and device
 *     reads go on: data is always right.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>

#include <hmm/hmm.h>
#include <hmm/hmm_driver.h>
#include <hmm/hmm_sim.h>

#include "plain.h"

#define PG 4096UL
#define NP 64

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static uint64_t now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

static char *map_rw(size_t len)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	CHECK(p != MAP_FAILED, "mmap: %s", strerror(errno));
	return p;
}

static atomic_bool stop;
static atomic_long ok, faults, bad;

/* ---- 1 ---------------------------------------------------------------- */

static struct hmm_iommu *mmu;
static uint64_t iova1;
static char *bufa, *bufb;

static void *translator(void *arg)
{
	uint64_t s = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ULL | 1;

	while (!atomic_load(&stop)) {
		size_t p = rnd(&s) % NP;
		void *h;
		int r = hmm_iommu_translate(mmu, iova1 + p * PG + 8,
					    HMM_DMA_READ, &h);
		if (r == -EFAULT) {
			atomic_fetch_add(&faults, 1);
			continue;
		}
		if (r || (h != bufa + p * PG + 8 && h != bufb + p * PG + 8))
			atomic_fetch_add(&bad, 1);
		atomic_fetch_add(&ok, 1);
	}
	return NULL;
}

static void phase1(void)
{
	pthread_t th[2];
	uint64_t end = now_ms() + 1500;

	CHECK(hmm_iommu_create(&mmu) == 0, "hmm_iommu_create");
	bufa = map_rw(NP * PG);
	bufb = map_rw(NP * PG);
	CHECK(hmm_iova_alloc(mmu, NP * PG, &iova1) == 0, "hmm_iova_alloc");
	for (uintptr_t i = 0; i < 2; i++)
		CHECK(pthread_create(&th[i], NULL, translator, (void *)(i + 1)) ==
			      0,
		      "pthread_create");
	/* Past the 1.5 s, on until some translation met a link (a loaded
	 * machine may not run the translators while one is there), for at
	 * most 10 s more. */
	for (unsigned r = 0; now_ms() < end || (atomic_load(&ok) == 0 &&
						now_ms() < end + 10000);
	     r++) {
		char *h = r & 1 ? bufa : bufb;
		size_t p = r % (NP - 16), n = 1 + r % 16;
		CHECK(hmm_iova_link(mmu, iova1 + p * PG, h + p * PG, n * PG,
				    HMM_DMA_READ) == 0,
		      "link");
		/* Now and then the link stays a while. */
		if (r % 64 == 0)
			usleep(200);
		CHECK(hmm_iova_unlink(mmu, iova1 + p * PG, n * PG) == (long)n,
		      "unlink");
	}
	atomic_store(&stop, true);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	CHECK(atomic_load(&bad) == 0, "%ld bad translations",
	      atomic_load(&bad));
	CHECK(atomic_load(&ok) > 0, "no translation succeeded");
	CHECK(hmm_iova_free(mmu, iova1, NP * PG) == 0, "free");
	CHECK(hmm_iommu_destroy(mmu) == 0, "destroy");
	printf("1: %ld translations, %ld faults\n", atomic_load(&ok),
	       atomic_load(&faults));
}

/* ---- 2 ---------------------------------------------------------------- */

static hmm_device_t *dev;
static char *page;
static uint64_t page_iova;
static atomic_ulong gen;

static void *dma_reader(void *arg)
{
	uint64_t *buf = malloc(PG);

	(void)arg;
	CHECK(buf, "malloc");
	while (!atomic_load(&stop)) {
		unsigned long g0 = atomic_load(&gen);
		int r = hmm_sim_dma_read(dev, page_iova, buf, PG);
		if (r == -EFAULT) {
			atomic_fetch_add(&faults, 1);
			continue;
		}
		if (r) {
			atomic_fetch_add(&bad, 1);
			continue;
		}
		for (size_t i = 1; i < PG / 8; i++)
			if (buf[i] != buf[0]) {
				atomic_fetch_add(&bad, 1);
				break;
			}
		if (buf[0] < g0)
			atomic_fetch_add(&bad, 1);
		atomic_fetch_add(&ok, 1);
	}
	free(buf);
	return NULL;
}

static void phase2(void)
{
	pthread_t th;
	char tmp[64];
	uint64_t end = now_ms() + 2000;

	atomic_store(&stop, false);
	atomic_store(&ok, 0);
	atomic_store(&faults, 0);
	page = map_rw(PG);
	memset(page, 0, PG);
	page_iova = hmm_sim_iova(dev, page);
	CHECK(page_iova, "hmm_sim_iova");
	CHECK(hmm_sim_read(dev, page, tmp, sizeof(tmp), NULL) == 0, "read");
	CHECK(pthread_create(&th, NULL, dma_reader, NULL) == 0, "create");
	for (unsigned long g = 1; now_ms() < end; g++) {
		CHECK(munmap(page, PG) == 0, "munmap");
		char *q = mmap(page, PG, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		CHECK(q == page, "mmap: %s", strerror(errno));
		for (size_t i = 0; i < PG / 8; i++)
			((uint64_t *)q)[i] = g;
		atomic_store(&gen, g);
		CHECK(hmm_sim_read(dev, q, tmp, sizeof(tmp), NULL) == 0,
		      "device read");
	}
	atomic_store(&stop, true);
	pthread_join(th, NULL);
	CHECK(atomic_load(&bad) == 0, "%ld stale or torn DMA reads",
	      atomic_load(&bad));
	printf("2: %ld reads, %ld faults\n", atomic_load(&ok),
	       atomic_load(&faults));
}

/* ---- 3 ---------------------------------------------------------------- */

static char *buf3;
static uint64_t iova3;

static long pattern_bad(const uint64_t *w, size_t first_word, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (w[i] != ((first_word + i) ^ 0x5a5a))
			return (long)i;
	return -1;
}

static void *dma_checker(void *arg)
{
	uint64_t s = (uint64_t)(uintptr_t)arg | 1;
	uint64_t *b = malloc(PG);

	CHECK(b, "malloc");
	while (!atomic_load(&stop)) {
		size_t p = rnd(&s) % NP;
		int r = hmm_sim_dma_read(dev, iova3 + p * PG, b, PG);
		if (r == -EFAULT) {
			atomic_fetch_add(&faults, 1);
		} else if (r || pattern_bad(b, p * PG / 8, PG / 8) >= 0) {
			atomic_fetch_add(&bad, 1);
		} else {
			atomic_fetch_add(&ok, 1);
		}
		/* a device read links pages again (or reads them on the
		 * device) */
		r = hmm_sim_read(dev, buf3 + p * PG, b, PG, NULL);
		if (r || pattern_bad(b, p * PG / 8, PG / 8) >= 0)
			atomic_fetch_add(&bad, 1);
	}
	free(b);
	return NULL;
}

static void phase3(void)
{
	pthread_t th[2];
	uint64_t end = now_ms() + 2500, s = 77;
	int r;

	atomic_store(&stop, false);
	atomic_store(&ok, 0);
	atomic_store(&faults, 0);
	r = hmm_mem_alloc(NP * PG, 0, (void **)&buf3);
	CHECK(r == 0, "hmm_mem_alloc = %d", r);
	for (size_t i = 0; i < NP * PG / 8; i++)
		((uint64_t *)buf3)[i] = i ^ 0x5a5a;
	iova3 = hmm_sim_iova(dev, buf3);
	for (uintptr_t i = 0; i < 2; i++)
		CHECK(pthread_create(&th[i], NULL, dma_checker,
				     (void *)(i + 5)) == 0,
		      "create");
	while (now_ms() < end) {
		size_t p = rnd(&s) % NP, n = 1 + rnd(&s) % (NP - p);
		long m = hmm_migrate(buf3 + p * PG, n * PG, dev, 0);
		CHECK(m >= 0, "hmm_migrate = %ld", m);
		/* CPU reads bring some pages back */
		p = rnd(&s) % NP;
		CHECK(pattern_bad((uint64_t *)(buf3 + p * PG), p * PG / 8,
				  PG / 8) < 0,
		      "CPU read of page %zu", p);
	}
	atomic_store(&stop, true);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	CHECK(atomic_load(&bad) == 0, "%ld bad reads", atomic_load(&bad));
	CHECK(pattern_bad((uint64_t *)buf3, 0, NP * PG / 8) < 0, "final data");
	printf("3: %ld raw DMA reads, %ld faults\n", atomic_load(&ok),
	       atomic_load(&faults));
}

int main(void)
{
	PLAIN_NEED_HMM();
	phase1();
	CHECK(hmm_device_open("sim", NULL, &dev) == 0, "hmm_device_open");
	phase2();
	phase3();
	CHECK(hmm_device_close(dev) == 0, "close");
	CHECK(hmm_fini() == 0, "hmm_fini");
	return 0;
}
