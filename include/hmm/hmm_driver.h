/* SPDX-License-Identifier: MIT */
/*
 * libhmm driver interface: what a device driver (the built-in "sim", or one
 * written by a user) implements and what it may call.
 *
 * The mirror protocol is the kernel's (include/linux/mmu_notifier.h,
 * include/linux/hmm.h), in user space:
 *
 *	struct my_mirror {
 *		struct hmm_interval_notifier notifier;
 *		pthread_mutex_t lock;        // protects the device page table
 *		...
 *	};
 *
 *	// invalidate callback: runs when the CPU side changes
 *	static bool my_invalidate(struct hmm_interval_notifier *n,
 *				  const struct hmm_notifier_range *r,
 *				  unsigned long cur_seq)
 *	{
 *		struct my_mirror *m = container_of(n, ...);
 *		pthread_mutex_lock(&m->lock);
 *		hmm_interval_set_seq(n, cur_seq);
 *		clear_device_ptes(m, r->start, r->end);
 *		pthread_mutex_unlock(&m->lock);
 *		return true;
 *	}
 *
 *	// device fault: fill translations for [start, end)
 *	again:
 *		range.notifier_seq = hmm_interval_read_begin(&m->notifier);
 *		ret = hmm_range_fault(&range);
 *		if (ret == -EBUSY)
 *			goto again;              (bounded by the caller)
 *		if (ret)
 *			return ret;
 *		pthread_mutex_lock(&m->lock);
 *		if (hmm_interval_read_retry(&m->notifier, range.notifier_seq)) {
 *			pthread_mutex_unlock(&m->lock);
 *			goto again;
 *		}
 *		install_device_ptes(m, range.hmm_pfns);
 *		pthread_mutex_unlock(&m->lock);
 *
 * A translation returned by hmm_range_fault may be used only under the lock
 * that the invalidate callback takes, and only after read_retry said the
 * section is still valid.
 */
#ifndef HMM_HMM_DRIVER_H
#define HMM_HMM_DRIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hmm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ */
/* Interval notifiers                                                  */
/* ------------------------------------------------------------------ */

/* Why a range is being invalidated (the kernel's enum mmu_notifier_event). */
enum hmm_notifier_event {
	HMM_NOTIFY_UNMAP = 0,	   /* munmap, or mremap moving the range */
	HMM_NOTIFY_CLEAR,	   /* madvise(DONTNEED/REMOVE) dropped pages */
	HMM_NOTIFY_PROTECTION_VMA, /* mprotect of the whole range */
	HMM_NOTIFY_PROTECTION_PAGE,/* per-page protection change */
	HMM_NOTIFY_MIGRATE,	   /* libhmm migrates the pages; see owner */
	HMM_NOTIFY_EXCLUSIVE,	   /* exclusive access granted; see owner */
	HMM_NOTIFY_FORK,	   /* fork made the pages copy-on-write */
	HMM_NOTIFY_RELEASE,	   /* teardown: the whole space goes away */
};

/* range->flags */
#define HMM_NOTIFIER_RANGE_BLOCKABLE (1u << 0)

struct hmm_notifier_range {
	uintptr_t start, end;		/* page aligned, end exclusive */
	enum hmm_notifier_event event;
	unsigned int flags;		/* HMM_NOTIFIER_RANGE_* */
	const void *owner;		/* MIGRATE/EXCLUSIVE: who asked */
};

struct hmm_interval_notifier;

struct hmm_interval_notifier_ops {
	/*
	 * Called when [range->start, range->end) changes on the CPU side.
	 * Must call hmm_interval_set_seq(@sub, @cur_seq) under the driver's
	 * page-table lock and stop using translations in the range before it
	 * returns.  If HMM_NOTIFIER_RANGE_BLOCKABLE is clear, the callback
	 * runs on libhmm's fault-service thread and must not wait for
	 * anything that could itself wait for a CPU fault (in-flight device
	 * accesses to system memory, for example); it may still take a lock
	 * that is only held for short, fault-free sections.  Return false
	 * only if it needed to sleep and could not (non-blockable).
	 */
	bool (*invalidate)(struct hmm_interval_notifier *sub,
			   const struct hmm_notifier_range *range,
			   unsigned long cur_seq);
};

/* Fields are private to libhmm; embed the struct in the driver's mirror. */
struct hmm_interval_notifier {
	uintptr_t start, end;	/* interval watched (end exclusive) */
	const struct hmm_interval_notifier_ops *ops;
	unsigned long invalidate_seq; /* atomic; odd values set by set_seq */
	struct hmm_interval_notifier *next; /* list of the registry */
};

/*
 * hmm_interval_notifier_insert - watch [start, start + length).  length 0
 * with start 0 means the whole address space.  Returns 0, -EINVAL, or the
 * errors of hmm_init().
 */
int hmm_interval_notifier_insert(struct hmm_interval_notifier *sub,
				 uintptr_t start, size_t length,
				 const struct hmm_interval_notifier_ops *ops);

/* Stop watching; waits for callbacks in progress on @sub to return. */
void hmm_interval_notifier_remove(struct hmm_interval_notifier *sub);

/* Begin a read section: returns the sequence number to give to retry. */
unsigned long hmm_interval_read_begin(struct hmm_interval_notifier *sub);

/* True if an invalidation happened since read_begin returned @seq.  Call it
 * under the same lock the invalidate callback takes around set_seq. */
bool hmm_interval_read_retry(struct hmm_interval_notifier *sub,
			     unsigned long seq);

/* Lock-free hint of read_retry, for loops. */
bool hmm_interval_check_retry(struct hmm_interval_notifier *sub,
			      unsigned long seq);

/* For invalidate callbacks only. */
void hmm_interval_set_seq(struct hmm_interval_notifier *sub,
			  unsigned long cur_seq);

/* ------------------------------------------------------------------ */
/* hmm_range_fault                                                     */
/* ------------------------------------------------------------------ */

/*
 * Entries of hmm_range.hmm_pfns.  Output: the low 52 bits hold a frame:
 * for a system page, the virtual page number itself (devices reach system
 * memory at the same address the CPU uses); for a page in the memory of
 * the device whose owner is dev_private_owner (HMM_PFN_DEVICE), that
 * device's page frame number.  Output 0 means "faultable, not valid now".
 */
#define HMM_PFN_VALID	(1ULL << 63) /* readable */
#define HMM_PFN_WRITE	(1ULL << 62) /* writable */
#define HMM_PFN_ERROR	(1ULL << 61) /* unmapped, PROT_NONE, not reachable */
#define HMM_PFN_DEVICE	(1ULL << 60) /* in dev_private_owner's memory */
#define HMM_PFN_ZERO	(1ULL << 59) /* the shared zero page (read-only) */
#define HMM_PFN_ORDER_SHIFT 53	     /* 5 bits: log2 of the mapping size */
#define HMM_PFN_FLAGS	(~0ULL << HMM_PFN_ORDER_SHIFT)
/* Input, per entry or in default_flags */
#define HMM_PFN_REQ_FAULT HMM_PFN_VALID /* make it valid (readable) */
#define HMM_PFN_REQ_WRITE HMM_PFN_WRITE /* make it writable; needs REQ_FAULT */

static inline uint64_t hmm_pfn_to_frame(uint64_t pfn)
{
	return pfn & ((1ULL << 52) - 1);
}

struct hmm_range {
	struct hmm_interval_notifier *notifier;
	unsigned long notifier_seq;	/* from hmm_interval_read_begin */
	uintptr_t start, end;		/* page aligned, end exclusive */
	uint64_t *hmm_pfns;		/* one entry per page, in and out */
	uint64_t default_flags;		/* REQ flags applied to every page */
	uint64_t pfn_flags_mask;	/* which per-entry input bits count */
	const void *dev_private_owner;	/* owner of device pages reported as
					 * HMM_PFN_DEVICE instead of faulted */
};

/*
 * hmm_range_fault - snapshot, and on request fault in, the CPU side of a
 * range for a device.
 *
 * Per page, request = (hmm_pfns[i] & pfn_flags_mask) | default_flags.  A
 * page with REQ_FAULT is made present (a page living on another device is
 * brought back to system memory first); with REQ_WRITE also writable
 * (copy-on-write broken).  Pages living in the memory of
 * dev_private_owner are reported as HMM_PFN_DEVICE and not moved.
 * Works on any mapped memory, managed or not.  A page another device
 * holds for atomics (hmm_exclusive_begin) is taken from it: that hold
 * ends.  A page that dev_private_owner holds read-only and that it asks to
 * write comes to its memory first.
 *
 * Returns 0, or:
 *   -EINVAL  unaligned or empty range, NULL pfns, REQ_WRITE without REQ_FAULT
 *   -EFAULT  a page with REQ_FAULT is unmapped, PROT_NONE or unreachable
 *   -EPERM   a page with REQ_WRITE is mapped read-only
 *   -EACCES  a page with REQ_FAULT is locked to another device
 *            (hmm_range_lock); a snapshot reports it HMM_PFN_ERROR
 *   -EBUSY   the range was invalidated (notifier_seq is stale) or a
 *            migration did not finish in time; begin again
 *   -ENOMEM  a page could not be brought back to system memory
 *   -ESHUTDOWN after hmm_fini()
 */
int hmm_range_fault(struct hmm_range *range);

/* ------------------------------------------------------------------ */
/* IOMMU and range-based DMA mapping                                   */
/* ------------------------------------------------------------------ */

/*
 * A device reaches system memory through DMA addresses (IOVAs) that an
 * IOMMU translates to host pages, with permissions, as real devices do.
 * libhmm's IOMMU is a model of one for user space: a table from IOVA
 * pages (48-bit IOVAs) to host pages (the process's virtual addresses),
 * each linked readable or readable and writable.  A device that
 * translates an IOVA that is not linked, or writes through a read-only
 * link, gets an error back (a device fault), never a host crash.
 *
 * It is used in two steps, like the kernel's newest DMA API
 * (dma_iova_try_alloc, dma_iova_link):
 *
 *   hmm_iova_alloc     reserve a contiguous IOVA range once;
 *   hmm_iova_link      link host pages at IOVAs inside it, and
 *   hmm_iova_unlink    unlink them, as often as needed;
 *   hmm_iova_free      give the range back (unlinking what is left).
 *
 * Translation (hmm_iommu_translate) is lock-free (a read section of the
 * table, hmm/hmm_pt.h) and may run concurrently with link and unlink; a
 * translation that raced an unlink gets the old or the new state.  An
 * IOMMU is not copied by fork: a driver's fork_child creates a new one.
 *
 * Errors: -EINVAL (NULL pointers, lengths that are 0 or not whole pages,
 * IOVAs not page aligned, ranges outside one allocation, a bad @prot),
 * -ENOMEM, -ENOSPC (no free IOVA range that large), -EEXIST (link over a
 * linked page), -EBUSY (destroy while DMA maps use the IOMMU), -EFAULT
 * and -EPERM (translate: see there).
 */
#define HMM_IOVA_BITS 48
#define HMM_DMA_READ	(1u << 0) /* link prot; a read-only link */
#define HMM_DMA_WRITE	(1u << 1) /* link prot: writable (with READ) */

struct hmm_iommu;

/* A new IOMMU with the whole IOVA space free.  0, -EINVAL or -ENOMEM. */
int hmm_iommu_create(struct hmm_iommu **out);

/* Free it with its allocations and links.  0, -EINVAL (NULL), or -EBUSY
 * if a DMA map (below) still uses it (nothing is freed then). */
int hmm_iommu_destroy(struct hmm_iommu *mmu);

/*
 * hmm_iova_alloc - reserve @len bytes (whole pages) of IOVA space, all
 * unlinked; *@iova gets its start.  Ranges of 2 MiB and more are 2 MiB
 * aligned.  Ranges are taken from the top of the space down, so IOVAs
 * never look like the small addresses of a process.  0, -EINVAL, -ENOSPC
 * or -ENOMEM.
 */
int hmm_iova_alloc(struct hmm_iommu *mmu, size_t len, uint64_t *iova);

/* Give back the allocation that starts at @iova and is @len long (exactly
 * as allocated), unlinking its pages.  0 or -EINVAL. */
int hmm_iova_free(struct hmm_iommu *mmu, uint64_t iova, size_t len);

/*
 * hmm_iova_link - link the @len bytes of host pages at @host to the IOVAs
 * at @iova, with @prot HMM_DMA_READ or HMM_DMA_READ | HMM_DMA_WRITE.  The
 * range must lie inside one allocation and be wholly unlinked.  All or
 * nothing.  0, -EINVAL, -EEXIST or -ENOMEM.
 */
int hmm_iova_link(struct hmm_iommu *mmu, uint64_t iova, const void *host,
		  size_t len, unsigned int prot);

/* Unlink the pages of [@iova, @iova + @len), which must lie inside one
 * allocation.  Returns the pages that were linked, or -EINVAL. */
long hmm_iova_unlink(struct hmm_iommu *mmu, uint64_t iova, size_t len);

/*
 * hmm_iommu_translate - a device access to the page of @iova, for
 * reading, or writing if @access has HMM_DMA_WRITE: *@host gets the host
 * address of the byte at @iova.  Returns 0, -EFAULT (the page is not
 * linked) or -EPERM (a write through a read-only link); both count as an
 * IOMMU fault (counter iommu_faults).  -EINVAL for NULL pointers.
 */
int hmm_iommu_translate(struct hmm_iommu *mmu, uint64_t iova,
			unsigned int access, void **host);

/*
 * Range-based DMA mapping (the kernel's hmm_dma_map_* on top of the IOVA
 * API).  A DMA map covers one virtual address range of the process and
 * reserves IOVA space for all of it at creation: the page at address a
 * always has IOVA hmm_dma_map_iova(map, a).  hmm_dma_map_range faults
 * pages in (hmm_range_fault) and links them; libhmm keeps the links
 * current: when the CPU side of the range changes (munmap, mremap,
 * mprotect, madvise, fork) or its pages migrate, it unlinks the IOVAs of
 * the pages concerned (so that a device access through them faults) and
 * calls the map's invalidate callback, so that the driver drops its own
 * translations.  A driver's device fault:
 *
 *	again:
 *		seq = hmm_dma_map_begin(map);
 *		ret = hmm_dma_map_range(map, seq, addr, len, flags, entries);
 *		if (ret == -EBUSY)
 *			goto again;             (bounded by the driver)
 *		if (ret)
 *			return ret;
 *		lock(driver page table);
 *		if (hmm_dma_map_retry(map, seq)) {
 *			unlock; goto again;
 *		}
 *		install(entries);
 *		unlock;
 *
 * and its invalidate callback takes the same lock to clear its entries.
 * Entries are hmm_range_fault's with the frame of a system page replaced
 * by its IOVA page (iova >> 12): HMM_PFN_VALID, HMM_PFN_WRITE (linked
 * writable), HMM_PFN_ZERO as there; a page in the memory of the map's
 * device is HMM_PFN_DEVICE with the device's page frame, as there, and
 * has no link.  The bits are those of hmm/hmm_pt.h, so a driver may store
 * entries in an hmm_pt as they come.
 */
struct hmm_dma_map;

struct hmm_dma_map_ops {
	/*
	 * [range->start, range->end) of the map (clipped to it) changed: its
	 * IOVAs are already unlinked.  The driver drops its translations of
	 * the range under its page-table lock.  The rules of
	 * hmm_interval_notifier_ops.invalidate apply (a non-blockable call
	 * must not wait for device accesses; return false only when it had
	 * to wait and could not).  May be NULL.
	 */
	bool (*invalidate)(struct hmm_dma_map *map,
			   const struct hmm_notifier_range *range, void *priv);
};

/*
 * hmm_dma_map_create - a DMA map of [@addr, @addr + @len) (page aligned;
 * @addr 0 and @len 0: the whole address space, 2^47 bytes) whose links
 * live in @mmu, for device @dev (pages in @dev's memory are reported, not
 * moved; NULL: every page is brought to system memory).  @ops may be NULL
 * (no callback); @priv goes to the callback.  Returns 0, -EINVAL, -ENOSPC
 * (not enough free IOVA space in @mmu), -ENOMEM, or hmm_init()'s errors.
 */
int hmm_dma_map_create(hmm_device_t *dev, struct hmm_iommu *mmu, void *addr,
		       size_t len, const struct hmm_dma_map_ops *ops,
		       void *priv, struct hmm_dma_map **out);

/* Unlink everything, give the IOVA range back and free the map; waits for
 * its callbacks in progress.  0 or -EINVAL (NULL). */
int hmm_dma_map_destroy(struct hmm_dma_map *map);

/* The IOVA of the byte at @addr, linked or not; 0 if @addr is outside the
 * map. */
uint64_t hmm_dma_map_iova(const struct hmm_dma_map *map, const void *addr);

/* Begin a fault section; the value goes to hmm_dma_map_range and
 * hmm_dma_map_retry. */
unsigned long hmm_dma_map_begin(struct hmm_dma_map *map);

/* True if the map's range was invalidated since @seq was taken: the
 * entries of that section are stale.  Call it under the lock the
 * invalidate callback takes. */
bool hmm_dma_map_retry(struct hmm_dma_map *map, unsigned long seq);

/*
 * hmm_dma_map_range - fault in the pages of [@addr, @addr + @len) (inside
 * the map, page aligned), readable (@flags 0 or HMM_DMA_READ), or writable
 * with HMM_DMA_WRITE in @flags, link them and store one entry per page in @entries (see
 * above).  Pages linked before stay linked (a write upgrades a read-only
 * link).  Returns 0, -EINVAL (bad range, flags or NULL), -EBUSY (@seq is
 * stale: begin again), -ENOMEM, -ENODEV (the map's device was closed), or
 * the errors of hmm_range_fault (-EFAULT, -EPERM, -EACCES, -ESHUTDOWN);
 * on error no entry is valid (pages linked stay linked, which is harmless:
 * they are the pages mapped now).  Counter: dma_pages_linked.
 */
int hmm_dma_map_range(struct hmm_dma_map *map, unsigned long seq, void *addr,
		      size_t len, unsigned int flags, uint64_t *entries);

/* Unlink the pages of [@addr, @addr + @len) (inside the map, page
 * aligned), as a driver does when it is done with them.  Returns the
 * pages that were linked, or -EINVAL. */
long hmm_dma_unmap_range(struct hmm_dma_map *map, void *addr, size_t len);

/* ------------------------------------------------------------------ */
/* Drivers                                                             */
/* ------------------------------------------------------------------ */

enum hmm_copy_dir {
	HMM_COPY_TO_DEVICE = 0,	/* host page -> device page */
	HMM_COPY_TO_SYSTEM = 1,	/* device page -> host page */
};

/* One page to copy.  @host is a page-aligned address libhmm can read or
 * write without faulting (a bounce buffer, or the user's page when it is
 * known to be present). */
struct hmm_copy_desc {
	uint64_t dpfn;		/* device page frame number */
	void *host;
};

/*
 * The table a driver fills in.  Rules:
 *  - init runs once from hmm_device_open, before the device is visible; it
 *    sets dev->mem_pages and may set dev->priv.
 *  - copy and zero may run from any thread, the fault-service thread
 *    included, concurrently for different pages; they must not touch user
 *    memory other than the @host pointers given, and must not wait for
 *    CPU faults.  They return 0 or -EIO.
 *  - fini runs once from hmm_device_close, after every page was brought
 *    back and the device's notifiers are gone.
 *  - host_ptr, if not NULL, returns a host address of a device page that
 *    libhmm may copy from directly (the sim pool); otherwise copies go
 *    through bounce buffers.
 *  - fork_child, if not NULL, runs in the child of fork() (one thread,
 *    before fork returns there) for each open device: the child's copy of
 *    the device's memory is the parent's at the moment of the fork (the
 *    driver must keep it in private memory, copied on write by fork), and
 *    the hook makes the device usable in the child: locks anew, threads
 *    started again, work queued by the parent's threads dropped.  It
 *    returns 0 or -errno.  Devices without it have their pages brought
 *    home before the fork, and are closed in the child.
 */
struct hmm_driver_ops {
	const char *name;
	int (*init)(hmm_device_t *dev, const struct hmm_device_attr *attr);
	void (*fini)(hmm_device_t *dev);
	int (*copy)(hmm_device_t *dev, enum hmm_copy_dir dir,
		    const struct hmm_copy_desc *descs, size_t n);
	int (*zero)(hmm_device_t *dev, const uint64_t *dpfns, size_t n);
	void *(*host_ptr)(hmm_device_t *dev, uint64_t dpfn);
	int (*fork_child)(hmm_device_t *dev);
	/* The driver calls hmm_device_mark_dirty after every write of the
	 * device to its memory: write-back of file pages then copies only
	 * the pages written.  Otherwise every page the device could write
	 * (its CPU mapping was writable) counts as written. */
	bool tracks_dirty;
	/*
	 * host_register, if not NULL, is told of each host mapping of
	 * libhmm's own that it gives as @host to copy and whose pages stay
	 * put for the mapping's life: the aliases of shmem file ranges
	 * (hmm_file_adopt of a memfd or tmpfs file, hmm_mem_alloc with
	 * HMM_MEM_ZERO_COPY), whose page-cache pages libhmm never frees
	 * while a device holds their data.  A driver whose DMA is faster
	 * from memory it registered (pinned) registers the mapping here
	 * and then copies straight into and out of those pages; the cuda
	 * driver does.  host_unregister comes before the mapping goes away.
	 * Both are called for each mapping that exists when the device opens
	 * and for each made or removed while it is open, from any thread,
	 * serialised by a lock of libhmm's that may be taken under its
	 * range lock: they must not call into libhmm nor touch managed
	 * memory.  host_register returns 0 or -errno; an error only means
	 * that copies to and from that mapping go the ordinary way.  (Added
	 * in 0.2: drivers built against 0.1 must be rebuilt.)
	 */
	int (*host_register)(hmm_device_t *dev, void *addr, size_t len);
	void (*host_unregister)(hmm_device_t *dev, void *addr, size_t len);
	/*
	 * host_movable: the device's memory is ordinary private anonymous
	 * memory of this process, host_ptr(0) to host_ptr(mem_pages - 1)
	 * in one mapping (2 MiB aligned, so that whole huge pages fit), and
	 * libhmm may move pages into and out of it instead of copying them
	 * (UFFDIO_MOVE: page tables change, data does not move).  libhmm
	 * registers the mapping with its userfaultfd (write-protect mode
	 * only: missing pages stay the kernel's to fill) after init and
	 * unregisters it before fini.  A device page that libhmm freed may
	 * read as zeros afterwards (its page moved out); the driver must
	 * not madvise, mprotect, mlock or remap that mapping while the
	 * device is open.  libhmm moves a 2 MiB block only when the
	 * application's block is one huge page (THP) and a whole 2 MiB
	 * chunk of device memory is free with nothing mapped in it; every
	 * other case copies.  (Added in 0.2: drivers built against 0.1 must
	 * be rebuilt.)
	 */
	bool host_movable;
};

/* The device as drivers see it.  Fields marked (core) are libhmm's. */
struct hmm_device {
	const struct hmm_driver_ops *ops;
	void *priv;			/* driver's */
	size_t mem_pages;		/* set by init */
	unsigned int id;		/* (core) small index, unique while open */
	struct hmm_devmem *mem;		/* (core) page allocator */
	int closed;			/* (core) atomic: set by close */
	int users;			/* (core) atomic: calls in flight */
};

/*
 * A driver's entry points bracket their work with these, so that
 * hmm_device_close waits for calls in flight and later calls fail with
 * -ENODEV.  (A closed device's struct stays allocated for that reason.)
 */
int hmm_device_enter(hmm_device_t *dev);
void hmm_device_leave(hmm_device_t *dev);

/*
 * A driver calls this when a command that may have written device memory
 * has completed.  File-backed ranges adopted with HMM_FILE_SYNC_EACH get
 * the device's pages written back to the file now (hmm_file_adopt); with
 * none, it costs one load.
 */
void hmm_device_command_done(hmm_device_t *dev);

/*
 * Tell libhmm that the device wrote its page @dpfn, after the write (for
 * drivers with .tracks_dirty).  A write-back that ran between the write
 * and the mark writes the page at the next one.
 */
void hmm_device_mark_dirty(hmm_device_t *dev, uint64_t dpfn);

/*
 * Tell libhmm that the device used its page @dpfn (a device access through
 * a translation it holds).  libhmm evicts the least recently used device
 * pages when a migration finds device memory full; a driver that never
 * calls this gets eviction in roughly the order pages arrived.
 */
void hmm_device_mark_used(hmm_device_t *dev, uint64_t dpfn);

/*
 * hmm_inject_fault - fault injection, for tests of libhmm and of drivers:
 * the step @point fails @times times (0 disarms it) with -@err (0: the
 * step's usual error), after letting @skip calls pass.  Points:
 *   devmem_alloc       device-page allocation (ENOMEM)
 *   copy_to_device     the driver's copy into device memory (EIO)
 *   copy_to_system     the driver's copy back (EIO)
 *   uffd_copy          UFFDIO_COPY (ENOMEM; EAGAIN, EEXIST, ENOENT are
 *                      the kernel's races)
 *   uffd_zeropage      UFFDIO_ZEROPAGE (ENOMEM)
 *   uffd_writeprotect  UFFDIO_WRITEPROTECT (ENOMEM)
 *   uffd_register      UFFDIO_REGISTER (ENOMEM)
 *   uffd_unregister    UFFDIO_UNREGISTER (ENOMEM)
 *   uffd_move          UFFDIO_MOVE, with HMM_USE_MOVE=1 (EBUSY)
 *   uffd_wake          UFFDIO_WAKE (ENOMEM; retried)
 *   uffd_api           the UFFDIO_API handshake in hmm_init (ENOMEM)
 *   zap                dropping pages after a copy (ENOMEM)
 *   thread_create      starting a thread of libhmm or of sim (EAGAIN)
 * Every injected failure leaves data where it was: the call that met it
 * returns an error, or (CPU faults, which have no caller) libhmm retries.
 * The environment can arm points before libhmm starts:
 * HMM_INJECT="point[:errno[:skip[:times]]],..." (times defaults to 1).
 * Returns 0, -ENOENT (unknown point) or -EINVAL.  Counter:
 * faults_injected.
 */
int hmm_inject_fault(const char *point, int err, unsigned long skip,
		     unsigned long times);

/* Register a driver so hmm_device_open can find it by name.  Returns 0,
 * -EINVAL, -EEXIST (name taken) or -ENOMEM. */
int hmm_driver_register(const struct hmm_driver_ops *ops);

/* The owner token of @dev for dev_private_owner and notifier owners. */
static inline const void *hmm_device_owner(const hmm_device_t *dev)
{
	return dev;
}

#ifdef __cplusplus
}
#endif
#endif /* HMM_HMM_DRIVER_H */
