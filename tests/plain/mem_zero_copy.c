/* SPDX-License-Identifier: MIT */
/*
 * hmm_mem_alloc(HMM_MEM_ZERO_COPY) on the sim device: the memory is a
 * shmem file range (MINOR faults where the kernel has them), its pages go
 * to the device and come back by CPU faults, by hmm_migrate and through
 * a device write, every word checked; hmm_mem_free takes it (and only
 * it, at its exact address and length), and a host-register hook of a
 * driver sees the alias come and go.
 */
#include <stdint.h>
#include <sys/mman.h>

#include <hmm/hmm.h>
#include <hmm/hmm_driver.h>
#include <hmm/hmm_sim.h>

#include "plain.h"

#define PG HMM_PAGE_SIZE
#define LEN (4UL << 20)
#define N (LEN / 8)

/* A driver that only watches host_register/host_unregister. */
static long registered; /* bytes */
static char sim_mem[PG];

static int w_init(hmm_device_t *dev, const struct hmm_device_attr *attr)
{
	(void)attr;
	dev->mem_pages = 1;
	dev->priv = sim_mem;
	return 0;
}

static int w_copy(hmm_device_t *dev, enum hmm_copy_dir dir,
		  const struct hmm_copy_desc *d, size_t n)
{
	(void)dev, (void)dir, (void)d, (void)n;
	return -EIO;
}

static int w_zero(hmm_device_t *dev, const uint64_t *dpfns, size_t n)
{
	(void)dev, (void)dpfns, (void)n;
	return -EIO;
}

static int w_reg(hmm_device_t *dev, void *addr, size_t len)
{
	(void)dev, (void)addr;
	__atomic_add_fetch(&registered, (long)len, __ATOMIC_SEQ_CST);
	return 0;
}

static void w_unreg(hmm_device_t *dev, void *addr, size_t len)
{
	(void)dev, (void)addr;
	__atomic_sub_fetch(&registered, (long)len, __ATOMIC_SEQ_CST);
}

static const struct hmm_driver_ops watch_ops = {
	.name = "watch",
	.init = w_init,
	.copy = w_copy,
	.zero = w_zero,
	.host_register = w_reg,
	.host_unregister = w_unreg,
};

int main(void)
{
	hmm_device_t *sim, *watch;
	uint64_t *a, *b;
	long r;

	r = hmm_init();
	if (r == -EPERM || r == -ENOSYS || r == -EOPNOTSUPP)
		SKIP("hmm_init() = %ld", r);
	CHECK(!hmm_driver_register(&watch_ops), "register");
	CHECK(!hmm_device_open("sim", NULL, &sim), "open sim");
	CHECK(!hmm_device_open("watch", NULL, &watch), "open watch");
	CHECK(hmm_mem_alloc(LEN, 2, (void **)&a) == -EINVAL, "bad flag");

	CHECK(!hmm_mem_alloc(LEN, HMM_MEM_ZERO_COPY, (void **)&a), "alloc");
	bool minor = hmm_caps() & HMM_CAP_MINOR_SHMEM;
	CHECK(!minor || registered == (long)LEN,
	      "alias not announced: %ld bytes", registered);
	for (size_t i = 0; i < N; i++)
		CHECK(a[i] == 0, "not zero filled at %zu", i);
	for (size_t i = 0; i < N; i++)
		a[i] = i * 7 + 1;
	/* CPU faults bring the pages back. */
	r = hmm_migrate(a, LEN, sim, 0);
	CHECK(r == (long)(LEN / PG), "migrate = %ld", r);
	CHECK(hmm_page_location(a, NULL) == HMM_LOC_DEVICE, "not moved");
	for (size_t i = 0; i < N; i++)
		CHECK(a[i] == i * 7 + 1, "a[%zu] = %llu", i,
		      (unsigned long long)a[i]);
	/* The device writes, the CPU reads what it wrote. */
	CHECK(hmm_migrate(a, LEN, sim, 0) > 0, "migrate 2");
	CHECK(!hmm_sim_fill64(sim, a, 42, LEN / 2, NULL), "fill");
	for (size_t i = 0; i < N; i++)
		CHECK(a[i] == (i < N / 2 ? 42 : i * 7 + 1), "a[%zu] = %llu",
		      i, (unsigned long long)a[i]);
	/* hmm_migrate home, and a CPU write while on the device. */
	CHECK(hmm_migrate(a, LEN, sim, 0) > 0, "migrate 3");
	a[5] = 5;
	CHECK(hmm_migrate(a, LEN, NULL, 0) >= 0, "migrate home");
	CHECK(a[5] == 5 && a[N - 1] == (N - 1) * 7 + 1, "data home");

	/* hmm_mem_free: not a part, not someone else's file range. */
	CHECK(hmm_mem_free(a, LEN / 2) == -EINVAL, "free of a part");
	CHECK(!hmm_mem_alloc(LEN, 0, (void **)&b), "alloc 2");
	CHECK(hmm_migrate(a, LEN, sim, 0) > 0, "migrate 4");
	CHECK(!hmm_mem_free(a, LEN), "free");
	CHECK(registered == 0, "alias still registered: %ld", registered);
	CHECK(hmm_page_location(a, NULL) == HMM_LOC_UNMANAGED, "managed");
	CHECK(!hmm_mem_free(b, LEN), "free 2");
	CHECK(!hmm_device_close(watch), "close watch");
	CHECK(!hmm_device_close(sim), "close sim");
	printf("mem_zero_copy: ok (%s)\n",
	       minor ? "minor faults" : "protection faults");
	return 0;
}
