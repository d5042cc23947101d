// SPDX-License-Identifier: MIT
// GPU kernels of the cuda tests (and of the example in hmm_cuda.h): they
// reach mirrored memory through hmm_cuda_ptr().
#include <cuda_runtime.h>
#include <stdint.h>

#include <hmm/hmm_cuda.h>

#include "kernels.h"

// a[i] = a[i] * mul + add, for i < n
static __global__ void k_scale(const struct hmm_cuda_view *v, uint64_t *a,
			       size_t n, uint64_t mul, uint64_t add)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		uint64_t *p = (uint64_t *)hmm_cuda_ptr(v, a + i);
		*p = *p * mul + add;
	}
}

// *sum += a[0] + ... + a[n - 1]
static __global__ void k_sum(const struct hmm_cuda_view *v, const uint64_t *a,
			     size_t n, unsigned long long *sum)
{
	unsigned long long s = 0;

	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		s += *(const uint64_t *)hmm_cuda_ptr(v, a + i);
	atomicAdd((unsigned long long *)hmm_cuda_ptr(v, sum), s);
}

static void *func_of(const void *sym)
{
	cudaFunction_t f = NULL;

	if (cudaGetFuncBySymbol(&f, sym) != cudaSuccess)
		return NULL;
	return (void *)f;
}

extern "C" void *test_kernel_scale(void)
{
	return func_of((const void *)k_scale);
}

extern "C" void *test_kernel_sum(void)
{
	return func_of((const void *)k_sum);
}
