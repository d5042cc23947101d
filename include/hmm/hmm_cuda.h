/* SPDX-License-Identifier: MIT */
/*
 * libhmm's cuda driver: device memory is GPU memory, copies run on CUDA
 * streams, GPU kernels reach mirrored memory.  It lives in its own
 * library, libhmm-cuda (pkg-config libhmm-cuda), built where CUDA is
 * found; libhmm itself never needs CUDA.  Loading libhmm-cuda registers
 * the driver "cuda" (so does hmm_cuda_register), and then
 *
 *	hmm_device_t *gpu;
 *	float *x;
 *
 *	hmm_device_open("cuda", NULL, &gpu);          // GPU 0, or $HMM_CUDA_DEVICE
 *	hmm_mem_alloc(n * 4, HMM_MEM_ZERO_COPY, (void **)&x);
 *	... CPU writes x ...
 *	hmm_migrate(x, n * 4, gpu, 0);                // prefetch: DMA at link speed
 *	struct hmm_cuda_range r = { x, n * 4, HMM_CUDA_RW };
 *	void *args[] = { &x, &n };
 *	hmm_cuda_launch(gpu, fn, &dims, args, 2, &r, 1);  // fn: a CUfunction
 *	... CPU reads x: each fault has the GPU write the page in place ...
 *
 * GPU kernels and mirrored memory.  A kernel launched with
 * hmm_cuda_launch declares the ranges it uses; libhmm makes each page of
 * them reachable for the launch: a page in system memory at the address
 * the CPU uses (registered, mapped host memory: zero copy over the link;
 * on GPUs that reach pageable memory, cudaDevAttrPageableMemoryAccess,
 * without registering), a page in this GPU's memory where it lies in the
 * device's pool.  CUDA cannot map GPU memory at an address the process
 * already uses for the same page, so device-resident pages have another
 * address: the kernel translates each address it dereferences with
 * hmm_cuda_ptr() (below), a table lookup per 4 KiB page (one load from an
 * array of 8 bytes per page, cached), which returns the CPU's own address
 * for system-resident pages.  The kernel's first parameter is the
 * translation table, `const struct hmm_cuda_view *`, which libhmm passes;
 * @args are the parameters after it.
 *
 * While a kernel runs, the pages of its ranges stay where they are: a CPU
 * access or a migration that would move one waits for the kernel to end
 * (the driver's invalidation callback waits for launches that use the
 * range).  A kernel must not wait for the CPU to touch its memory.
 *
 * Copies: to the GPU they are queued on the device's copy stream and
 * complete in order (hmm_cuda_sync waits for them; later copies, zeroes,
 * copies back and launches come after them); back to system memory they
 * complete before the copy returns.  Host pages in libhmm's pinned
 * aliases (HMM_MEM_ZERO_COPY memory, hmm_file_adopt of memfd or tmpfs
 * files) are copied directly; others through pinned staging buffers.
 *
 * Not supported: fork (the device's pages come home first and the child
 * has no cuda device), more than one GPU per process at a time (several
 * devices on one GPU are fine).
 */
#ifndef HMM_HMM_CUDA_H
#define HMM_HMM_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "hmm.h"

#ifdef __cplusplus
extern "C" {
#endif

#define HMM_CUDA_MAX_RANGES 8

/* hmm_cuda_range.flags */
#define HMM_CUDA_READ 1u
#define HMM_CUDA_WRITE 2u
#define HMM_CUDA_RW (HMM_CUDA_READ | HMM_CUDA_WRITE)

/* A range of the process's memory that a kernel uses.  @addr and @len
 * need not be page aligned (the pages they touch count). */
struct hmm_cuda_range {
	const void *addr;
	size_t len;
	unsigned int flags; /* HMM_CUDA_READ, HMM_CUDA_WRITE or both */
};

/* Launch geometry, as for cudaLaunchKernel. */
struct hmm_cuda_dims {
	unsigned int grid[3];
	unsigned int block[3];
	unsigned int shared_mem;
};

/*
 * The translation table a kernel gets as its first parameter (in GPU
 * memory, read only).  For range i, pages[i][k] is the GPU address of the
 * k-th page of [start[i], end[i]).
 */
struct hmm_cuda_view {
	unsigned int nranges;
	uint64_t start[HMM_CUDA_MAX_RANGES]; /* page aligned */
	uint64_t end[HMM_CUDA_MAX_RANGES];
	const uint64_t *pages[HMM_CUDA_MAX_RANGES];
};

/*
 * hmm_cuda_register - register the driver "cuda" with libhmm (loading
 * libhmm-cuda does it already; this is for programs linked with
 * --as-needed).  Returns 0 (also when already registered), or the errors
 * of hmm_driver_register: -ENOMEM (no driver slot left).
 */
int hmm_cuda_register(void);

/*
 * hmm_cuda_device_count - the number of CUDA devices (> 0), or -ENODEV
 * with the reason in @why (@len bytes, NUL-terminated; may be NULL):
 * "cudaGetDeviceCount: no CUDA-capable device is detected", say.
 * Tests skip on -ENODEV.
 */
int hmm_cuda_device_count(char *why, size_t len);

/*
 * hmm_cuda_launch - run the kernel @func on the GPU of @dev, over the
 * ranges of mirrored memory it declares, and wait for it to end.
 *
 * @func is a CUfunction (the runtime's cudaFunction_t): from
 * cudaGetFuncBySymbol(&f, kernel) in the caller's CUDA runtime, or
 * cuModuleGetFunction.  Its first parameter is
 * `const struct hmm_cuda_view *`, which libhmm supplies; @args holds
 * pointers to the @nargs parameters after it, as for cudaLaunchKernel.
 * Each of the @nranges ranges (at most HMM_CUDA_MAX_RANGES) is faulted in
 * for the device as hmm_range_fault does (pages on other devices come
 * home; pages on @dev stay), writable where HMM_CUDA_WRITE is given, and
 * is reachable through hmm_cuda_ptr() while the kernel runs.
 *
 * Returns 0, or:
 *   -EINVAL  NULL @dev, @func or @dims, nargs > 0 with NULL @args, more
 *            than HMM_CUDA_MAX_RANGES ranges, an empty range or one
 *            without flags
 *   -ENODEV  @dev is not a cuda device, or was closed
 *   -EFAULT  part of a range is unmapped or PROT_NONE
 *   -EPERM   a range with HMM_CUDA_WRITE is mapped read-only
 *   -EACCES  part of a range is locked to another device
 *   -EBUSY   the ranges kept changing under the launch
 *   -ENOMEM  out of host or GPU memory for the translation table
 *   -EIO     CUDA refused the launch or the kernel failed
 */
int hmm_cuda_launch(hmm_device_t *dev, void *func,
		    const struct hmm_cuda_dims *dims, void **args,
		    unsigned int nargs, const struct hmm_cuda_range *ranges,
		    unsigned int nranges);

/*
 * hmm_cuda_sync - wait until every copy queued for @dev has completed.
 * Returns 0, -EINVAL (NULL), -ENODEV (not a cuda device, or closed) or
 * -EIO (a copy failed).
 */
int hmm_cuda_sync(hmm_device_t *dev);

/*
 * hmm_cuda_mirror_count - how many pages of [@addr, @addr + @len) have a
 * translation in @dev's device page table now (those with
 * HMM_CUDA_WRITE in @flags: writable ones only).  For tests: munmap,
 * mprotect and migrations clear them.  Returns the count, or -EINVAL,
 * -ENODEV (not a cuda device, or closed).
 */
long hmm_cuda_mirror_count(hmm_device_t *dev, const void *addr, size_t len,
			   unsigned int flags);

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
/*
 * hmm_cuda_ptr - in a kernel launched by hmm_cuda_launch: the address at
 * which the GPU reaches the byte the CPU has at @p.  Pointers outside
 * every declared range come back unchanged.
 */
static __device__ __forceinline__ void *
hmm_cuda_ptr(const struct hmm_cuda_view *v, const void *p)
{
	uint64_t a = (uint64_t)(uintptr_t)p;

	for (unsigned int i = 0; i < v->nranges; i++)
		if (a - v->start[i] < v->end[i] - v->start[i])
			return (void *)(uintptr_t)(v->pages[i][(a - v->start[i]) >> 12] +
						   (a & 4095));
	return (void *)p;
}
#endif

#endif /* HMM_HMM_CUDA_H */
