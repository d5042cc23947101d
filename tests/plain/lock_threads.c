/* SPDX-License-Identifier: MIT */
/*
 * Locking to a device with threads everywhere (also run under
 * ThreadSanitizer): CPU threads read a range while it is locked and
 * unlocked over and over and the device rewrites it while it is locked.
 * Every read gets SIGBUS (with the address read, in the reading thread) or
 * a value the device or the CPU wrote; nothing crashes, nothing is lost.
 */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#include "plain.h"

#define NPAGES 32
#define NWORDS (NPAGES * HMM_PAGE_SIZE / 8)
#define NREADERS 2

static uint64_t *buf;
static atomic_ulong version;	/* the latest version written */
static atomic_bool stop;
static atomic_ulong n_ok, n_bus, n_bad;

static __thread sigjmp_buf *volatile jb;
static __thread volatile uintptr_t bus_addr;
static __thread volatile pid_t bus_tid;

static void on_bus(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (!jb || sig != SIGBUS)
		_exit(3);
	bus_addr = (uintptr_t)si->si_addr;
	bus_tid = (pid_t)syscall(SYS_gettid);
	siglongjmp(*jb, 1);
}

static void *reader(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;
	pid_t me = (pid_t)syscall(SYS_gettid);

	while (!atomic_load(&stop)) {
		size_t w = (size_t)rand_r(&seed) % NWORDS;
		uint64_t *p = &buf[w];
		sigjmp_buf here;
		uint64_t v;

		if (sigsetjmp(here, 1)) {
			jb = NULL;
			if (bus_addr != (uintptr_t)p || bus_tid != me)
				atomic_fetch_add(&n_bad, 1);
			else
				atomic_fetch_add(&n_bus, 1);
			continue;
		}
		jb = &here;
		v = __atomic_load_n(p, __ATOMIC_RELAXED);
		jb = NULL;
		/* Word w of version k holds w ^ (k << 40). */
		if (((v ^ w) & ((1ULL << 40) - 1)) ||
		    (v ^ w) >> 40 > atomic_load(&version))
			atomic_fetch_add(&n_bad, 1);
		else
			atomic_fetch_add(&n_ok, 1);
	}
	return NULL;
}

/* (Atomic stores: the readers read these words meanwhile.) */
static void fill(uint64_t *dst, uint64_t k)
{
	for (size_t w = 0; w < NWORDS; w++)
		__atomic_store_n(&dst[w], w ^ (k << 40), __ATOMIC_RELAXED);
}

int main(void)
{
	struct sigaction sa = { 0 };
	hmm_device_t *dev;
	pthread_t t[NREADERS];
	uint64_t *img = malloc(NPAGES * HMM_PAGE_SIZE);
	int r, locked = 0;

	PLAIN_NEED_HMM();
	sa.sa_sigaction = on_bus;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	CHECK(sigaction(SIGBUS, &sa, NULL) == 0, "sigaction");
	CHECK(hmm_device_open("sim", NULL, &dev) == 0, "device");
	buf = mmap(NULL, NPAGES * HMM_PAGE_SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(buf != MAP_FAILED, "mmap");
	CHECK(hmm_range_adopt(buf, NPAGES * HMM_PAGE_SIZE, 0) == 0, "adopt");
	fill(buf, 0);
	r = hmm_range_lock(buf, NPAGES * HMM_PAGE_SIZE, dev);
	if (r == -EOPNOTSUPP)
		SKIP("no userfaultfd SIGBUS mode here");
	CHECK(r == 0, "first lock: %d", r);
	CHECK(hmm_range_unlock(buf, NPAGES * HMM_PAGE_SIZE, dev) == NPAGES,
	      "first unlock");

	for (int i = 0; i < NREADERS; i++)
		CHECK(pthread_create(&t[i], NULL, reader,
				     (void *)(uintptr_t)(i + 1)) == 0,
		      "thread");
	for (uint64_t k = 1; k <= 150; k++) {
		r = hmm_range_lock(buf, NPAGES * HMM_PAGE_SIZE, dev);
		CHECK(r == 0 || r == -EBUSY, "round %lu: lock = %d",
		      (unsigned long)k, r);
		if (r == 0) {
			locked++;
			/* The device writes version k while it is locked. */
			fill(img, k);
			atomic_store(&version, k);
			CHECK(hmm_sim_write(dev, buf, img,
					    NPAGES * HMM_PAGE_SIZE, NULL) == 0,
			      "device write");
			CHECK(hmm_range_unlock(buf, NPAGES * HMM_PAGE_SIZE,
					       dev) == NPAGES,
			      "unlock");
			/* Every word of the device's version is here. */
			for (size_t w = 0; w < NWORDS; w++)
				CHECK(__atomic_load_n(&buf[w], __ATOMIC_RELAXED) ==
					      (w ^ (k << 40)),
				      "round %lu: word %zu after unlock",
				      (unsigned long)k, w);
		} else {
			/* Not locked: the CPU writes version k. */
			atomic_store(&version, k);
			fill(buf, k);
		}
	}
	atomic_store(&stop, true);
	for (int i = 0; i < NREADERS; i++)
		pthread_join(t[i], NULL);
	CHECK(atomic_load(&n_bad) == 0, "%lu bad reads (%lu good, %lu SIGBUS)",
	      atomic_load(&n_bad), atomic_load(&n_ok), atomic_load(&n_bus));
	CHECK(locked > 0, "never locked");
	CHECK(atomic_load(&n_bus) > 0, "no read ever met the lock");
	for (size_t w = 0; w < NWORDS; w++)
		CHECK(buf[w] == (w ^ (150ULL << 40)), "word %zu", w);
	printf("%d of 150 rounds locked; reads: %lu good, %lu SIGBUS\n", locked,
	       atomic_load(&n_ok), atomic_load(&n_bus));
	CHECK(hmm_device_close(dev) == 0, "close");
	free(img);
	return 0;
}
