// SPDX-License-Identifier: MIT
// hmm-bench's GPU scenarios: libhmm's cuda driver and, in the same run on
// the same GPU, CUDA's own answer (managed memory, pinned cudaMemcpy).
// See gpu_bench.h and the GPU rows of DESIGN.md's targets.
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <cuda_runtime.h>

#include <hmm/hmm.h>
#include <hmm/hmm_cuda.h>

#include "bench_time.h"
#include "gpu_bench.h"

#define PG 4096UL

#define FAIL(...)                                                           \
	do {                                                                \
		snprintf(why, whylen, __VA_ARGS__);                         \
		ret = 1;                                                    \
		goto out;                                                   \
	} while (0)

#define CU(call)                                                            \
	do {                                                                \
		cudaError_t e_ = (call);                                    \
		if (e_ != cudaSuccess)                                      \
			FAIL("%s: %s", #call, cudaGetErrorString(e_));      \
	} while (0)

// The cuda device, with room for @size bytes, or 77/1 and the reason.
static int gpu_open(size_t size, hmm_device_t **dev, char *why, size_t whylen)
{
	struct hmm_device_attr attr = {};
	char msg[200];
	int r = hmm_cuda_device_count(msg, sizeof(msg));

	if (r < 0) {
		snprintf(why, whylen, "no CUDA device: %s", msg);
		return 77;
	}
	attr.mem_size = size + (64UL << 20);
	r = hmm_device_open("cuda", &attr, dev);
	if (r) {
		snprintf(why, whylen, "hmm_device_open(cuda) = %d", r);
		return 1;
	}
	return 0;
}

// Zero-copy managed memory of libhmm, filled by the CPU.
static uint64_t *zc_alloc(size_t size)
{
	uint64_t *p;

	if (hmm_mem_alloc(size, HMM_MEM_ZERO_COPY, (void **)&p))
		return NULL;
	for (size_t i = 0; i < size / 8; i++)
		p[i] = i;
	return p;
}

static __global__ void k_write(uint64_t *a, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		a[i] = i;
}

// The same reading kernel for libhmm (through its translation) and for
// managed memory (a view with no range: pointers go through unchanged).
static __global__ void k_read(const struct hmm_cuda_view *v,
			      const uint64_t *a, size_t n,
			      unsigned long long *sum)
{
	unsigned long long s = 0;

	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		s += *(const uint64_t *)hmm_cuda_ptr(v, a + i);
	if (s == 42) // keeps the loads; never true for our data
		atomicAdd(sum, s);
}

// ---- gpu_cpu_faultback --------------------------------------------------

extern "C" int gpu_cpu_faultback(size_t size, int repeat,
				 struct gpu_figure *out, char *why,
				 size_t whylen)
{
	hmm_device_t *dev = NULL;
	uint64_t *a = NULL, *m = NULL;
	char *dst = NULL;
	double v[16], b[16];
	long fa = 0;
	int ret = gpu_open(size, &dev, why, whylen);

	if (ret)
		return ret;
	hmm_option_get("FAULT_AROUND", &fa);
	hmm_option_set("FAULT_AROUND", 2L << 20); // fault-around in 2 MiB
	dst = (char *)malloc(size);
	if (!dst || !(a = zc_alloc(size)))
		FAIL("out of memory");
	memset(dst, 1, size);
	for (int k = 0; k < repeat; k++) {
		long r = hmm_migrate(a, size, dev, 0);
		if (r != (long)(size / PG))
			FAIL("hmm_migrate = %ld", r);
		if ((r = hmm_cuda_sync(dev)))
			FAIL("hmm_cuda_sync = %ld", r);
		double t = now_s();
		memcpy(dst, a, size); // the sequential CPU pass
		v[k] = size / (now_s() - t) / 1e9;
	}
	CU(cudaMallocManaged((void **)&m, size, cudaMemAttachGlobal));
	memset(m, 1, size);
	for (int k = 0; k < repeat; k++) {
		k_write<<<1024, 256>>>(m, size / 8); // the data is on the GPU
		CU(cudaDeviceSynchronize());
		double t = now_s();
		memcpy(dst, m, size);
		b[k] = size / (now_s() - t) / 1e9;
	}
	out->value = median(v, repeat);
	out->baseline = median(b, repeat);
out:
	hmm_option_set("FAULT_AROUND", fa);
	if (m)
		cudaFree(m);
	if (a)
		hmm_mem_free(a, size);
	free(dst);
	hmm_device_close(dev);
	return ret;
}

// ---- gpu_prefetch_to_device ----------------------------------------------

extern "C" int gpu_prefetch_to_device(size_t size, int repeat,
				      struct gpu_figure *out, char *why,
				      size_t whylen)
{
	hmm_device_t *dev = NULL;
	uint64_t *a = NULL;
	char *src = NULL, *dst = NULL;
	double v[16], b[16];
	int ret = gpu_open(size, &dev, why, whylen);

	if (ret)
		return ret;
	if (!(a = zc_alloc(size)))
		FAIL("out of memory");
	for (int k = 0; k < repeat; k++) {
		long r = hmm_migrate(a, size, NULL, 0); // home, not timed
		if (r < 0)
			FAIL("hmm_migrate home = %ld", r);
		double t = now_s();
		r = hmm_migrate(a, size, dev, 0);
		if (r != (long)(size / PG))
			FAIL("hmm_migrate = %ld", r);
		if ((r = hmm_cuda_sync(dev)))
			FAIL("hmm_cuda_sync = %ld", r);
		v[k] = size / (now_s() - t) / 1e9;
	}
	CU(cudaHostAlloc((void **)&src, size, cudaHostAllocDefault));
	CU(cudaMalloc((void **)&dst, size));
	memset(src, 1, size);
	for (int k = 0; k < repeat; k++) {
		double t = now_s();
		CU(cudaMemcpy(dst, src, size, cudaMemcpyHostToDevice));
		b[k] = size / (now_s() - t) / 1e9;
	}
	out->value = median(v, repeat);
	out->baseline = median(b, repeat);
out:
	if (src)
		cudaFreeHost(src);
	if (dst)
		cudaFree(dst);
	if (a)
		hmm_mem_free(a, size);
	hmm_device_close(dev);
	return ret;
}

// ---- gpu_kernel_read_mirrored ------------------------------------------

extern "C" int gpu_kernel_read_mirrored(size_t size, int repeat,
					struct gpu_figure *out, char *why,
					size_t whylen)
{
	struct hmm_cuda_dims dims = { { 1024, 1, 1 }, { 256, 1, 1 }, 0 };
	hmm_device_t *dev = NULL;
	uint64_t *a = NULL, *m = NULL;
	struct hmm_cuda_view *empty = NULL;
	unsigned long long *sum = NULL;
	double v[16], b[16];
	size_t n = size / 8;
	cudaFunction_t f = NULL;
	int ret = gpu_open(size, &dev, why, whylen);

	if (ret)
		return ret;
	CU(cudaGetFuncBySymbol(&f, (const void *)k_read));
	CU(cudaMalloc((void **)&sum, sizeof(*sum)));
	if (!(a = zc_alloc(size)))
		FAIL("out of memory");
	{
		long r = hmm_migrate(a, size, dev, 0); // prefetched
		if (r != (long)(size / PG))
			FAIL("hmm_migrate = %ld", r);
		struct hmm_cuda_range rg = { a, size, HMM_CUDA_READ };
		void *args[] = { &a, &n, &sum };
		// The first launch fills the device page table.
		for (int k = -1; k < repeat; k++) {
			double t = now_s();
			r = hmm_cuda_launch(dev, (void *)f, &dims, args, 3, &rg,
					    1);
			if (r)
				FAIL("hmm_cuda_launch = %ld", r);
			if (k >= 0)
				v[k] = size / (now_s() - t) / 1e9;
		}
	}
	CU(cudaMalloc((void **)&empty, sizeof(*empty)));
	CU(cudaMemset(empty, 0, sizeof(*empty)));
	CU(cudaMallocManaged((void **)&m, size, cudaMemAttachGlobal));
	memset(m, 1, size);
	k_write<<<1024, 256>>>(m, n); // on the GPU now: prefetched
	CU(cudaDeviceSynchronize());
	for (int k = -1; k < repeat; k++) {
		double t = now_s();
		k_read<<<1024, 256>>>(empty, m, n, sum);
		CU(cudaDeviceSynchronize());
		if (k >= 0)
			b[k] = size / (now_s() - t) / 1e9;
	}
	out->value = median(v, repeat);
	out->baseline = median(b, repeat);
out:
	if (m)
		cudaFree(m);
	if (empty)
		cudaFree(empty);
	if (sum)
		cudaFree(sum);
	if (a)
		hmm_mem_free(a, size);
	hmm_device_close(dev);
	return ret;
}
