/* SPDX-License-Identifier: MIT */
/*
 * hmm-bench's GPU scenarios (gpu_bench.cu, built with the cuda driver).
 * Each measures libhmm on the cuda device and its baseline, CUDA managed
 * memory or pinned cudaMemcpy, in the same run on the same GPU.  Returns
 * 0 with the figures, 77 with the reason in @why when there is no CUDA
 * device, or another value with what failed in @why.
 */
#ifndef HMM_BENCH_GPU_BENCH_H
#define HMM_BENCH_GPU_BENCH_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct gpu_figure {
	double value;		/* GB/s, libhmm */
	double baseline;	/* GB/s, the baseline */
};

typedef int (*gpu_scenario_fn)(size_t size, int repeat,
			       struct gpu_figure *out, char *why,
			       size_t whylen);

int gpu_cpu_faultback(size_t size, int repeat, struct gpu_figure *out,
		      char *why, size_t whylen);
int gpu_prefetch_to_device(size_t size, int repeat, struct gpu_figure *out,
			   char *why, size_t whylen);
int gpu_kernel_read_mirrored(size_t size, int repeat, struct gpu_figure *out,
			     char *why, size_t whylen);

#ifdef __cplusplus
}
#endif
#endif
