/* SPDX-License-Identifier: MIT */
/*
 * The simulated device ("sim"): commands run by its engines.
 *
 * A sim device has its own memory (a host pool no user pointer reaches), a
 * device page table per process (its mirror) and engines: threads that run
 * commands and touch memory only through the device page table.  A miss in
 * the table is a device fault, served with hmm_range_fault; a page that
 * lives in another device's memory is brought back first.  Pages that live
 * in this device's memory are used in place, without moving.
 *
 * Every command is synchronous: it returns when the engine is done.  The
 * optional @res tells how many device fault rounds the command took and how
 * many pages it touched (the kernel test driver's "faults" and "cpages").
 *
 * Errors, for every command:
 *   -EINVAL  NULL device, zero length where it matters, misaligned atomic
 *   -EFAULT  part of the range is unmapped or PROT_NONE
 *   -EPERM   a write to read-only memory
 *   -ENODEV  the device was closed
 *   -EBUSY   the range kept changing under the device (retries exhausted)
 *   -ENOMEM  a page could not be brought back from another device
 *   -EACCES  a page is locked to another device (hmm_range_lock)
 */
#ifndef HMM_HMM_SIM_H
#define HMM_HMM_SIM_H

#include <stddef.h>
#include <stdint.h>

#include "hmm.h"

#ifdef __cplusplus
extern "C" {
#endif

struct hmm_sim_result {
	uint64_t faults;	/* device fault rounds */
	uint64_t pages;		/* pages touched */
};

/* The device copies @len bytes at @addr (any alignment) into @buf (a few
 * MiB at a time; on error @buf holds part of the data). */
int hmm_sim_read(hmm_device_t *dev, const void *addr, void *buf, size_t len,
		 struct hmm_sim_result *res);

/* The device copies @len bytes from @buf to @addr. */
int hmm_sim_write(hmm_device_t *dev, void *addr, const void *buf, size_t len,
		  struct hmm_sim_result *res);

/* The device copies @len bytes from @src to @dst (both mirrored). */
int hmm_sim_memcpy(hmm_device_t *dev, void *dst, const void *src, size_t len,
		   struct hmm_sim_result *res);

/* The device stores @value in every 64-bit word of [@addr, @addr + @len);
 * @addr and @len must be multiples of 8. */
int hmm_sim_fill64(hmm_device_t *dev, void *addr, uint64_t value, size_t len,
		   struct hmm_sim_result *res);

/* Device atomics on an 8-byte aligned word.  *@old gets the value before. */
int hmm_sim_atomic_add(hmm_device_t *dev, uint64_t *addr, uint64_t value,
		       uint64_t *old);
int hmm_sim_atomic_cas(hmm_device_t *dev, uint64_t *addr, uint64_t expected,
		       uint64_t desired, uint64_t *old);

/*
 * A device kernel: the engine calls @fn once per run of contiguous pages of
 * [@addr, @addr + @len) (page aligned), with @dptr the device's view of
 * that run (device memory, or system memory reached through the mirror) and
 * @off its offset from @addr.  With @write the pages are mapped writable.
 * @fn must only touch [dptr, dptr + n).  Runs are at most 2 MiB.
 */
typedef void (*hmm_sim_kernel_fn)(void *dptr, size_t off, size_t n, void *arg);
int hmm_sim_launch(hmm_device_t *dev, void *addr, size_t len, int write,
		   hmm_sim_kernel_fn fn, void *arg, struct hmm_sim_result *res);

/*
 * The sim device reaches system memory through its IOMMU (hmm_driver.h):
 * its page table holds the IOVAs of system pages, which its DMA map of
 * the whole address space links on device faults and unlinks on
 * invalidations.  hmm_sim_iova gives the IOVA the device uses for the
 * page at @addr (linked or not), 0 for a bad device or address.
 */
uint64_t hmm_sim_iova(hmm_device_t *dev, const void *addr);

/*
 * Raw DMA: the device copies @len bytes at IOVA @iova into @buf, or from
 * @buf to @iova, through its IOMMU alone (no page table, no device fault
 * served), as a device does with a DMA address its driver gave it.
 * Returns 0, -EINVAL (NULL device or buffer, zero length, IOVA range
 * wrapping), -ENODEV (closed), -EFAULT (an IOVA of the range is not
 * linked: never mapped, or unlinked by an invalidation), -EPERM (a write
 * through a read-only link) or -ENOMEM.  On -EFAULT/-EPERM the pages
 * before the faulting one were accessed (a write changed them; a read
 * leaves @buf unchanged).  Counter: iommu_faults.
 */
int hmm_sim_dma_read(hmm_device_t *dev, uint64_t iova, void *buf, size_t len);
int hmm_sim_dma_write(hmm_device_t *dev, uint64_t iova, const void *buf,
		      size_t len);

#ifdef __cplusplus
}
#endif
#endif /* HMM_HMM_SIM_H */
