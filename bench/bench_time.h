/* SPDX-License-Identifier: MIT */
/*
 * hmm-bench's clock and median, shared by hmm-bench.c and the GPU
 * scenarios (gpu_bench.cu, C++ under nvcc).
 */
#ifndef HMM_BENCH_BENCH_TIME_H
#define HMM_BENCH_BENCH_TIME_H

#include <stdlib.h>
#include <time.h>

static inline double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Median of @n values (sorts them). */
static inline double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

#endif
