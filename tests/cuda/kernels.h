/* SPDX-License-Identifier: MIT */
/* The kernels of kernels.cu, as CUfunctions for hmm_cuda_launch (NULL if
 * CUDA cannot give them).
 *   scale(view, uint64_t *a, size_t n, uint64_t mul, uint64_t add):
 *         a[i] = a[i] * mul + add
 *   sum(view, const uint64_t *a, size_t n, unsigned long long *sum):
 *         *sum += a[0] + ... + a[n - 1]
 */
#ifndef HMM_TEST_CUDA_KERNELS_H
#define HMM_TEST_CUDA_KERNELS_H
#ifdef __cplusplus
extern "C" {
#endif
void *test_kernel_scale(void);
void *test_kernel_sum(void);
#ifdef __cplusplus
}
#endif
#endif
