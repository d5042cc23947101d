/* SPDX-License-Identifier: MIT */
/*
 * The dmirror command surface: the interface of the kernel's HMM test
 * driver (/dev/hmm_dmirror0..3), served in user space by libhmm.
 *
 * The binary layout and command numbers are the kernel's, so a program
 * written for the kernel driver runs unchanged under the preload library
 * (build/libhmm-dmirror.so, or the launcher build/hmm-run), which answers
 * open("/dev/hmm_dmirrorN"), ioctl, mmap and close on such descriptors.
 * Programs may also call hmm_dmirror_open / hmm_dmirror_ioctl /
 * hmm_dmirror_close directly.
 *
 * Every command takes a struct hmm_dmirror_cmd.  Common rules:
 *  - addr must be page aligned, npages > 0 and addr + npages pages must not
 *    wrap: otherwise -EINVAL;
 *  - cpages and faults are zeroed on entry and copied back only when the
 *    command succeeds: a failed command reports nothing;
 *  - the return value is 0 or -errno (through ioctl(): -1 and errno).
 *
 * Commands (ptr is a buffer of the caller, npages pages long, except for
 * SNAPSHOT, where it is one byte per page):
 *  READ            the device reads [addr, +npages) into ptr, faulting the
 *                  pages in as needed; cpages = pages read, faults = fault
 *                  rounds (a cold range reads in one round).  -EFAULT if a
 *                  page is unmapped or PROT_NONE.
 *  WRITE           the device writes ptr into [addr, ...).  -EPERM if a
 *                  page is mapped read-only, -EFAULT as for READ.
 *  MIGRATE_TO_DEV  move the pages to this device's memory, then read them
 *                  back into ptr.  -EINVAL if part of the range is not
 *                  mapped or not readable; -ENOENT if a page could not be
 *                  moved (file-backed memory, a page on another device).
 *                  Anonymous memory the program never gave to libhmm is
 *                  adopted on the way.  Unlike the kernel driver, shared
 *                  anonymous memory moves too.
 *  MIGRATE_TO_SYS  bring this device's pages of the range back to system
 *                  memory; cpages = pages moved.
 *  SNAPSHOT        one HMM_DMIRROR_PROT_* byte per page into ptr, without
 *                  faulting anything; cpages = npages.
 *  EXCLUSIVE       give the device exclusive access for atomics: any later
 *                  CPU access revokes it and proceeds; then read the pages
 *                  into ptr.  -EFAULT for memory not mapped writable,
 *                  -EOPNOTSUPP for memory libhmm cannot manage.
 *  CHECK_EXCLUSIVE -EPERM while the device still holds a page of the range
 *                  exclusively, else 0.
 *  RELEASE         evict everything this device holds back to system
 *                  memory (the kernel's "remove the device memory").
 *  FLAGS           set the mirror's flags to npages (HMM_DMIRROR_FLAG_*).
 *  READ_UNLOCKED   READ (libhmm's device faults never hold an mmap lock).
 *
 * Devices 0 and 1 are device-private: the CPU reaches their memory only by
 * migrating pages back.  Devices 2 and 3 (device-coherent in the kernel)
 * are not offered: opening them fails with ENODEV.
 */
#ifndef HMM_HMM_DMIRROR_H
#define HMM_HMM_DMIRROR_H

#include <stdint.h>
#include <sys/ioctl.h>

#ifdef __cplusplus
extern "C" {
#endif

struct hmm_dmirror_cmd {
	uint64_t addr;		/* first byte of the range (page aligned) */
	uint64_t ptr;		/* caller's buffer */
	uint64_t npages;	/* pages in the range */
	uint64_t cpages;	/* out: pages processed */
	uint64_t faults;	/* out: device fault rounds */
};

#define HMM_DMIRROR_READ	    _IOWR('H', 0x00, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_WRITE	    _IOWR('H', 0x01, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_MIGRATE_TO_DEV  _IOWR('H', 0x02, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_MIGRATE_TO_SYS  _IOWR('H', 0x03, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_SNAPSHOT	    _IOWR('H', 0x04, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_EXCLUSIVE	    _IOWR('H', 0x05, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_CHECK_EXCLUSIVE _IOWR('H', 0x06, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_RELEASE	    _IOWR('H', 0x07, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_FLAGS	    _IOWR('H', 0x08, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_READ_UNLOCKED   _IOWR('H', 0x09, struct hmm_dmirror_cmd)

/* FLAGS: the next device-page allocation of a migration to the device, or
 * the next system-page allocation of a migration back, fails once; the
 * command then falls back to moving page by page and still succeeds. */
#define HMM_DMIRROR_FLAG_FAIL_ALLOC (1ULL << 0)

/* SNAPSHOT bytes */
#define HMM_DMIRROR_PROT_ERROR		    0xFF /* unmapped or PROT_NONE */
#define HMM_DMIRROR_PROT_NONE		    0x00 /* not present */
#define HMM_DMIRROR_PROT_READ		    0x01
#define HMM_DMIRROR_PROT_WRITE		    0x02
#define HMM_DMIRROR_PROT_PMD		    0x04 /* mapped by a 2 MiB page */
#define HMM_DMIRROR_PROT_PUD		    0x08 /* mapped by a 1 GiB page */
#define HMM_DMIRROR_PROT_ZERO		    0x10 /* the shared zero page */
#define HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL  0x20 /* on this device */
#define HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE 0x30 /* on another device */
#define HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL 0x40
#define HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE 0x50

#define HMM_DMIRROR_NDEVICES 4

/* Path prefix the preload library answers: "/dev/hmm_dmirror" + digit. */
#define HMM_DMIRROR_PATH "/dev/hmm_dmirror"

typedef struct hmm_dmirror hmm_dmirror_t;

/*
 * hmm_dmirror_open - open mirror number @devno (0..3) of the calling
 * process's address space.  Returns 0 and the mirror in *@out, or -EINVAL
 * (bad arguments), -ENODEV (devices 2 and 3), -ENOMEM, and the errors of
 * hmm_init() and hmm_device_open().
 */
int hmm_dmirror_open(unsigned int devno, hmm_dmirror_t **out);

/* hmm_dmirror_ioctl - run one command (see above).  Returns 0 or -errno;
 * -ENOTTY for an unknown request, -EFAULT if @cmd is not readable. */
int hmm_dmirror_ioctl(hmm_dmirror_t *m, unsigned long request,
		      struct hmm_dmirror_cmd *cmd);

/*
 * hmm_dmirror_mmap - what mmap() of a dmirror descriptor does: @len bytes
 * (rounded up to pages) of zeroed memory the device provided, mapped with
 * @prot and @flags' MAP_SHARED/MAP_PRIVATE/MAP_FIXED at @addr (a hint
 * unless MAP_FIXED).  Returns the address, or MAP_FAILED with errno set.
 */
void *hmm_dmirror_mmap(hmm_dmirror_t *m, void *addr, size_t len, int prot,
		       int flags);

/* hmm_dmirror_close - stop mirroring and free @m.  Pages the device still
 * holds stay there until the last mirror of that device is closed. */
int hmm_dmirror_close(hmm_dmirror_t *m);

#ifdef __cplusplus
}
#endif

#endif
