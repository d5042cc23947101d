/* SPDX-License-Identifier: MIT */
/*
 * The cuda driver on a real GPU.  A plain test program: each case runs in
 * its own process; exit 0 when all pass, 1 when one fails, 77 (skip) when
 * this machine has no CUDA device or no userfaultfd, with the reason.
 *
 *   test_cuda [CASE...]     (all cases when none is named)
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hmm/hmm.h>
#include <hmm/hmm_cuda.h>

#include "kernels.h"

#define PG 4096UL

static int fails;

#define CHECK(cond, ...)                                                    \
	do {                                                                \
		if (!(cond)) {                                              \
			fprintf(stderr, "%s:%d: ", __func__, __LINE__);     \
			fprintf(stderr, __VA_ARGS__);                       \
			fputc('\n', stderr);                                \
			fails++;                                            \
			return;                                             \
		}                                                           \
	} while (0)

static hmm_device_t *open_gpu(size_t mem)
{
	struct hmm_device_attr attr = { .mem_size = mem };
	hmm_device_t *dev = NULL;
	int r = hmm_device_open("cuda", &attr, &dev);

	if (r) {
		fprintf(stderr, "hmm_device_open(cuda) = %d\n", r);
		exit(1);
	}
	return dev;
}

static uint64_t *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	return p;
}

static void fill(uint64_t *a, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++)
		a[i] = seed * 1000003 + i;
}

/* The index of the first word that differs from fill(seed) scaled, or n. */
static size_t check(const uint64_t *a, size_t n, uint64_t seed, uint64_t mul,
		    uint64_t add)
{
	for (size_t i = 0; i < n; i++)
		if (a[i] != (seed * 1000003 + i) * mul + add)
			return i;
	return n;
}

/* ---- cases --------------------------------------------------------------- */

static void open_close(void)
{
	hmm_device_t *dev = open_gpu(64 << 20);
	size_t used, total;

	CHECK(!hmm_device_mem_usage(dev, &used, &total), "mem_usage");
	CHECK(used == 0 && total == (64 << 20) / PG, "used %zu total %zu",
	      used, total);
	CHECK(hmm_device_close(dev) == 0, "close");
	CHECK(hmm_device_close(dev) == -ENODEV, "second close");
	CHECK(hmm_cuda_sync(dev) == -ENODEV, "sync after close");
}

/* Anonymous memory to the GPU and back by hmm_migrate, then by CPU
 * faults. */
static void migrate_anon(void)
{
	size_t len = 8 << 20, n = len / 8;
	hmm_device_t *dev = open_gpu(64 << 20), *where;
	uint64_t *a = map_anon(len);
	long r;

	fill(a, n, 1);
	CHECK(!hmm_range_adopt(a, len, 0), "adopt");
	r = hmm_migrate(a, len, dev, 0);
	CHECK(r == (long)(len / PG), "migrate to gpu = %ld", r);
	CHECK(hmm_page_location(a + n / 2, &where) == HMM_LOC_DEVICE &&
	      where == dev, "not on the gpu");
	r = hmm_migrate(a, len, NULL, 0);
	CHECK(r == (long)(len / PG), "migrate home = %ld", r);
	CHECK(check(a, n, 1, 1, 0) == n, "data after migrate home");
	/* Again, and the CPU faults the pages back one by one. */
	CHECK(hmm_migrate(a, len, dev, 0) == (long)(len / PG), "migrate 2");
	CHECK(check(a, n, 1, 1, 0) == n, "data after fault-back");
	a[7] = 77;
	CHECK(hmm_migrate(a, len, dev, 0) > 0, "migrate 3");
	CHECK(a[7] == 77, "a CPU write lost");
	CHECK(!hmm_device_close(dev), "close");
}

static void faultback_shmem_flags(unsigned int flags)
{
	size_t len = 16 << 20, n = len / 8;
	hmm_device_t *dev = open_gpu(64 << 20);
	uint64_t *a;
	int r = hmm_mem_alloc(len, flags, (void **)&a);

	CHECK(!r, "hmm_mem_alloc(%#x) = %d", flags, r);
	fill(a, n, 2);
	CHECK(hmm_migrate(a, len, dev, 0) == (long)(len / PG), "migrate");
	CHECK(hmm_page_location(a, NULL) == HMM_LOC_DEVICE, "not moved");
	CHECK(check(a, n, 2, 1, 0) == n, "fault-back data (flags %#x)",
	      flags);
	CHECK(hmm_page_location(a, NULL) == HMM_LOC_SYSTEM, "not home");
	/* Written by the CPU while on the GPU: write fault-back. */
	CHECK(hmm_migrate(a, len, dev, 0) == (long)(len / PG), "migrate 2");
	for (size_t i = 0; i < n; i += 512)
		a[i] += 5;
	for (size_t i = 0; i < n; i++)
		CHECK(a[i] == 2 * 1000003 + i + (i % 512 ? 0 : 5),
		      "a[%zu] = %llu", i, (unsigned long long)a[i]);
	CHECK(!hmm_mem_free(a, len), "free");
	CHECK(!hmm_device_close(dev), "close");
}

static void faultback_shmem(void)
{
	faultback_shmem_flags(0);
}

static void faultback_zero_copy(void)
{
	faultback_shmem_flags(HMM_MEM_ZERO_COPY);
}

static int launch_scale(hmm_device_t *dev, uint64_t *a, size_t n,
			uint64_t mul, uint64_t add, unsigned int flags)
{
	struct hmm_cuda_dims dims = { { 64, 1, 1 }, { 256, 1, 1 }, 0 };
	struct hmm_cuda_range r = { a, n * 8, flags };
	void *args[] = { &a, &n, &mul, &add };
	void *f = test_kernel_scale();

	if (!f)
		return -ENOSYS;
	return hmm_cuda_launch(dev, f, &dims, args, 4, &r, 1);
}

/* A kernel reads and writes mirrored memory: half of it on the GPU, half
 * in system memory (anonymous), and hmm_mem_alloc memory. */
static void kernel_rw(void)
{
	size_t len = 4 << 20, n = len / 8;
	hmm_device_t *dev = open_gpu(64 << 20);
	uint64_t *a = map_anon(len), *b;
	unsigned long long *sum;
	int r;

	fill(a, n, 3);
	CHECK(!hmm_range_adopt(a, len, 0), "adopt");
	CHECK(hmm_migrate(a, len / 2, dev, 0) == (long)(len / 2 / PG),
	      "migrate half");
	r = launch_scale(dev, a, n, 3, 1, HMM_CUDA_RW);
	CHECK(r == 0, "launch = %d", r);
	CHECK(hmm_page_location(a, NULL) == HMM_LOC_DEVICE,
	      "device pages moved");
	CHECK(hmm_page_location(a + n - 1, NULL) == HMM_LOC_SYSTEM,
	      "system pages moved");
	CHECK(check(a, n, 3, 3, 1) == n, "scaled data, first bad word %zu",
	      check(a, n, 3, 3, 1));

	/* A sum of zero-copy memory on the GPU into a counter in
	 * hmm_mem_alloc memory. */
	CHECK(!hmm_mem_alloc(len, HMM_MEM_ZERO_COPY, (void **)&b), "alloc");
	fill(b, n, 4);
	CHECK(!hmm_mem_alloc(PG, 0, (void **)&sum), "alloc sum");
	*sum = 0;
	/* The counter lives in GPU memory: the atomics stay on the GPU. */
	CHECK(hmm_migrate(sum, PG, dev, 0) == 1, "migrate sum");
	CHECK(hmm_migrate(b, len, dev, 0) > 0, "migrate b");
	struct hmm_cuda_dims dims = { { 32, 1, 1 }, { 256, 1, 1 }, 0 };
	struct hmm_cuda_range rr[2] = { { b, len, HMM_CUDA_READ },
					{ sum, 8, HMM_CUDA_RW } };
	void *args[] = { &b, &n, &sum };
	void *f = test_kernel_sum();
	CHECK(f, "no sum kernel");
	r = hmm_cuda_launch(dev, f, &dims, args, 3, rr, 2);
	CHECK(r == 0, "sum launch = %d", r);
	unsigned long long want = 0;
	for (size_t i = 0; i < n; i++)
		want += 4 * 1000003 + i;
	CHECK(*sum == want, "sum %llu, expected %llu", *sum, want);
	CHECK(!hmm_device_close(dev), "close");
}

/* The device page table follows munmap and mprotect. */
static void invalidate(void)
{
	size_t len = 2 << 20, n = len / 8;
	hmm_device_t *dev = open_gpu(64 << 20);
	uint64_t *a = map_anon(len);
	long c;
	int r;

	fill(a, n, 5);
	CHECK(!hmm_range_adopt(a, len, 0), "adopt");
	CHECK(hmm_migrate(a, len / 4, dev, 0) > 0, "migrate a quarter");
	r = launch_scale(dev, a, n, 1, 0, HMM_CUDA_RW);
	CHECK(r == 0, "launch = %d", r);
	c = hmm_cuda_mirror_count(dev, a, len, HMM_CUDA_WRITE);
	CHECK(c == (long)(len / PG), "mirrored writable %ld", c);
	CHECK(!mprotect(a, len / 2, PROT_READ), "mprotect");
	c = hmm_cuda_mirror_count(dev, a, len, HMM_CUDA_WRITE);
	CHECK(c <= (long)(len / 2 / PG), "writable after mprotect %ld", c);
	r = launch_scale(dev, a, n, 1, 0, HMM_CUDA_RW);
	CHECK(r == -EPERM, "write launch on read-only memory = %d", r);
	r = launch_scale(dev, a, n, 1, 0, HMM_CUDA_READ);
	CHECK(r == 0, "read launch = %d", r);
	CHECK(!munmap(a + n / 2, len / 2), "munmap");
	c = hmm_cuda_mirror_count(dev, a + n / 2, len / 2, 0);
	CHECK(c == 0, "mirrored after munmap %ld", c);
	r = launch_scale(dev, a, n, 1, 0, HMM_CUDA_READ);
	CHECK(r == -EFAULT, "launch on unmapped memory = %d", r);
	CHECK(check(a, n / 2, 5, 1, 0) == n / 2, "data");
	CHECK(!hmm_device_close(dev), "close");
}

/* Errors: as sim gives them. */
static void errors(void)
{
	struct hmm_device_attr huge = { .mem_size = 1UL << 50 };
	struct hmm_device_attr odd = { .mem_size = 12345 };
	hmm_device_t *gpu, *sim, *d;
	size_t len = 64 * PG;
	uint64_t *a = map_anon(len), *b = map_anon(len);
	long rg, rs;
	int r;

	r = hmm_device_open("cuda", &huge, &d);
	CHECK(r == -ENOMEM, "open with 1 PiB = %d", r);
	r = hmm_device_open("cuda", &odd, &d);
	CHECK(r == -EINVAL, "open with an odd size = %d", r);
	struct hmm_device_attr small = { .mem_size = 16 * PG };
	CHECK(!hmm_device_open("cuda", &small, &gpu), "open gpu");
	CHECK(!hmm_device_open("sim", &small, &sim), "open sim");
	fill(a, len / 8, 6);
	fill(b, len / 8, 6);
	CHECK(!hmm_range_adopt(a, len, 0) && !hmm_range_adopt(b, len, 0),
	      "adopt");
	rg = hmm_migrate(a, len, gpu, 0);
	rs = hmm_migrate(b, len, sim, 0);
	CHECK(rg == rs, "migrating past device memory: cuda %ld, sim %ld",
	      rg, rs);
	CHECK(check(a, len / 8, 6, 1, 0) == len / 8, "data after overflow");
	r = launch_scale(sim, a, len / 8, 1, 0, HMM_CUDA_RW);
	CHECK(r == -ENODEV, "launch on sim = %d", r);
	struct hmm_cuda_dims dims = { { 1, 1, 1 }, { 1, 1, 1 }, 0 };
	struct hmm_cuda_range bad = { a, 0, HMM_CUDA_READ };
	r = hmm_cuda_launch(gpu, test_kernel_scale(), &dims, NULL, 0, &bad, 1);
	CHECK(r == -EINVAL, "empty range = %d", r);
	r = hmm_cuda_launch(gpu, NULL, &dims, NULL, 0, NULL, 0);
	CHECK(r == -EINVAL, "NULL function = %d", r);
	CHECK(hmm_cuda_mirror_count(gpu, a, 0, 0) == -EINVAL, "count len 0");
	CHECK(!hmm_device_close(gpu) && !hmm_device_close(sim), "close");
}

/* ---- runner -------------------------------------------------------------- */

static const struct {
	const char *name;
	void (*fn)(void);
} cases[] = {
	{ "open_close", open_close },
	{ "migrate_anon", migrate_anon },
	{ "faultback_shmem", faultback_shmem },
	{ "faultback_zero_copy", faultback_zero_copy },
	{ "kernel_rw", kernel_rw },
	{ "invalidate", invalidate },
	{ "errors", errors },
};

/* Whether this machine can run the cases: CUDA is started in a child,
 * because a process that started CUDA cannot use it in its fork children.
 * Returns 0, or 77 with the reason printed. */
static int probe(void)
{
	int fd[2], st = 0;
	char why[256] = "";

	if (pipe(fd))
		return 1;
	pid_t pid = fork();
	if (pid == 0) {
		char msg[256];
		int r = hmm_cuda_device_count(msg, sizeof(msg));
		if (r < 0) {
			dprintf(fd[1], "no CUDA device: %s", msg);
			_exit(77);
		}
		r = hmm_init();
		if (r == -EPERM || r == -ENOSYS || r == -EOPNOTSUPP) {
			dprintf(fd[1], "hmm_init() = %d", r);
			_exit(77);
		}
		_exit(r ? 1 : 0);
	}
	close(fd[1]);
	ssize_t k = read(fd[0], why, sizeof(why) - 1);
	why[k > 0 ? k : 0] = 0;
	close(fd[0]);
	waitpid(pid, &st, 0);
	if (!WIFEXITED(st))
		return 1;
	if (WEXITSTATUS(st) == 77)
		printf("SKIP: %s\n", why);
	return WEXITSTATUS(st);
}

int main(int argc, char **argv)
{
	int r = probe(), failed = 0;

	if (r)
		return r;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		bool run = argc < 2;
		for (int a = 1; a < argc; a++)
			run |= !strcmp(argv[a], cases[i].name);
		if (!run)
			continue;
		fflush(NULL);
		pid_t pid = fork();
		if (pid == 0) {
			cases[i].fn();
			hmm_fini();
			_exit(fails ? 1 : 0);
		}
		int st = 0;
		waitpid(pid, &st, 0);
		bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
		printf("%s %s\n", ok ? "PASS" : "FAIL", cases[i].name);
		failed += !ok;
	}
	printf("%d failed\n", failed);
	return failed ? 1 : 0;
}
