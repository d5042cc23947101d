/* SPDX-License-Identifier: MIT */
/*
 * libhmm: heterogeneous memory management in user space.
 *
 * This is the header for applications.  Drivers include hmm_driver.h; the
 * commands of the built-in simulated device are in hmm_sim.h.
 *
 * A short tour (error handling shortened; examples/ has complete
 * programs, and every function has a manual page):
 *
 *	#include <hmm/hmm.h>
 *	#include <hmm/hmm_sim.h>
 *
 *	hmm_device_t *dev;
 *	uint64_t *data, *heap;
 *
 *	// Optional (else done on first use); -EPERM: no userfaultfd here.
 *	if (hmm_init())
 *		return 1;
 *	hmm_device_open("sim", NULL, &dev);        // the simulated device
 *
 *	// Managed memory: allocated by libhmm, or memory the program has.
 *	hmm_mem_alloc(1 << 20, 0, (void **)&data);
 *	heap = aligned_alloc(4096, 1 << 20);
 *	hmm_range_adopt(heap, 1 << 20, 0);
 *
 *	for (int i = 0; i < 131072; i++)
 *		data[i] = i;                       // plain CPU stores
 *	hmm_migrate(data, 1 << 20, dev, 0);        // the pages move to the device
 *	// The device stores 7 in every word, in its memory, same pointer.
 *	hmm_sim_fill64(dev, data, 7, 1 << 20, NULL);
 *	printf("%lu\n", data[42]);                 // a CPU fault brings the
 *	                                           // page back: prints 7
 *
 *	hmm_range_release(heap, 1 << 20);          // unmanaged, data kept
 *	free(heap);
 *	hmm_mem_free(data, 1 << 20);
 *	hmm_device_close(dev);                     // its pages come home first
 *	hmm_fini();                                // optional: exit does it
 *
 * Memory libhmm manages is either adopted (hmm_range_adopt: private
 * anonymous memory the application already has, from malloc or mmap) or
 * allocated by libhmm (hmm_mem_alloc: shared-memory backed).  Each 4 KiB
 * page of managed memory lives in one place at a time: system memory, or
 * the memory of one device.  A CPU load or store to a page that lives on a
 * device brings it back before the access completes; the pointer never
 * changes.
 *
 * Conventions: every function returns 0 (or a count) on success and a
 * negative errno on failure; a failed call changes nothing.  Addresses and
 * lengths must be multiples of the page size (4 KiB) unless said otherwise.
 * The process-wide state is created on first use and torn down at exit or
 * by hmm_fini().  All functions are thread-safe.
 *
 * Error codes used throughout (each function lists the ones it returns):
 *   -EINVAL     unaligned or zero length, overflowing range, bad flags
 *   -EFAULT     the range is not entirely mapped, or part of it is PROT_NONE
 *   -ENOENT     the range is not (entirely) managed by libhmm
 *   -EEXIST     the range overlaps memory libhmm already manages
 *   -EOPNOTSUPP memory of a kind this call cannot manage (file mappings
 *               go through hmm_file_adopt)
 *   -EBUSY      another userfaultfd already owns the range
 *   -ENOMEM     out of system memory, or out of device memory for a migration
 *   -EPERM      userfaultfd is not available to this process (see hmm_init)
 *   -ENODEV     unknown driver name, or the device was closed
 *   -ESHUTDOWN  called after hmm_fini()
 */
#ifndef HMM_HMM_H
#define HMM_HMM_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HMM_PAGE_SIZE 4096UL

typedef struct hmm_device hmm_device_t;

/* ------------------------------------------------------------------ */
/* Process-wide state                                                  */
/* ------------------------------------------------------------------ */

/*
 * hmm_init - create the process-wide state now rather than on first use.
 *
 * Opens a userfaultfd (the syscall, falling back to UFFD_USER_MODE_ONLY and
 * then /dev/userfaultfd when the process is unprivileged), checks the kernel
 * features libhmm needs and starts the fault-service thread.  Calling it again
 * is harmless.
 *
 * Returns 0, or:
 *   -EPERM      no way to get a userfaultfd (vm.unprivileged_userfaultfd=0,
 *               no CAP_SYS_PTRACE, /dev/userfaultfd unreadable); hmm_strerror
 *               style detail is printed once to stderr at log level >= 1.
 *   -ENOSYS     the kernel has no userfaultfd.
 *   -EOPNOTSUPP the kernel lacks a feature libhmm cannot work without.
 *   -ESHUTDOWN  hmm_fini() was already called in this process.
 */
int hmm_init(void);

/*
 * hmm_fini - tear the process-wide state down.
 *
 * Every device-resident page is first brought back to system memory, every
 * device is closed and every range unregistered; managed memory stays
 * mapped and usable as plain memory.  Also runs at exit.  Calls made after it
 * return -ESHUTDOWN.
 */
int hmm_fini(void);

/* Flags telling what this process's userfaultfd can do (hmm_caps()). */
enum hmm_cap {
	HMM_CAP_KERNEL_FAULTS = 1u << 0, /* kernel-mode accesses are served */
	HMM_CAP_WP = 1u << 1,		 /* write-protect faults */
	HMM_CAP_MOVE = 1u << 2,		 /* UFFDIO_MOVE */
	HMM_CAP_MINOR_SHMEM = 1u << 3,	 /* minor faults on shmem */
	HMM_CAP_EVENTS = 1u << 4,	 /* REMOVE/UNMAP/REMAP events */
	HMM_CAP_FORK = 1u << 5,		 /* the FORK event */
	HMM_CAP_PAGEMAP_SCAN = 1u << 6,	 /* the PAGEMAP_SCAN ioctl */
};

/*
 * hmm_caps - what the kernel and this process's privileges allow.
 *
 * Returns a mask of enum hmm_cap (>= 0) once the state exists, or a negative
 * errno from hmm_init().  Without HMM_CAP_KERNEL_FAULTS (unprivileged,
 * UFFD_USER_MODE_ONLY), a system call such as read() or write() that touches
 * a device-resident page fails with EFAULT instead of waiting for it: touch
 * the buffer from user space first, or migrate it back with hmm_migrate().
 */
int hmm_caps(void);

/* ------------------------------------------------------------------ */
/* Managed memory                                                      */
/* ------------------------------------------------------------------ */

/*
 * hmm_range_adopt - manage an existing anonymous range.
 *
 * @addr, @len: page aligned; the range may come from malloc (if aligned),
 * mmap(MAP_PRIVATE|MAP_ANONYMOUS) or the heap, or lie within one
 * mmap(MAP_SHARED|MAP_ANONYMOUS) mapping (which the kernel's HMM cannot
 * migrate; libhmm can).  Its contents are kept.  @flags: must be 0.
 *
 * Returns 0, or -EINVAL, -EFAULT (not entirely mapped, or PROT_NONE),
 * -EEXIST (overlaps managed memory), -EOPNOTSUPP (a file mapping: see
 * hmm_file_adopt; or a range over more than one shared anonymous
 * mapping), -EBUSY (another
 * userfaultfd owns it, shared memory another process maps, or pages of an
 * earlier mapping at the same address still in flight after
 * HMM_MIGRATE_TIMEOUT_MS), -ENOMEM, -EPERM, -ESHUTDOWN.
 */
int hmm_range_adopt(void *addr, size_t len, unsigned int flags);

/*
 * hmm_range_release - stop managing a range.
 *
 * Device-resident pages come back to system memory first; the memory stays
 * mapped with its contents.  @addr/@len may cover part of a managed range.
 * On any error the range stays managed, its data where it was.
 *
 * Returns 0, or -EINVAL, -ENOENT (part of it is not managed), -ENOMEM (also
 * when the kernel could not unregister it), -EBUSY (pages still moving
 * after HMM_MIGRATE_TIMEOUT_MS, or part of it locked to a device), -EIO (a device could not copy its pages
 * back), -ESHUTDOWN.
 */
int hmm_range_release(void *addr, size_t len);

/*
 * hmm_mem_alloc - allocate managed memory.
 *
 * The memory is backed by a memfd (shared memory), mapped read/write at an
 * address chosen by libhmm, zero filled, and managed from the start.
 * @len is rounded up to the page size.  @flags: 0 or HMM_MEM_ZERO_COPY.
 *
 * With 0, a page that moves to a device frees its system memory, and a
 * CPU access copies the device's data into a new page (UFFDIO_COPY).
 *
 * With HMM_MEM_ZERO_COPY, the memory is managed as a shmem file mapping
 * (see hmm_file_adopt): a page on a device keeps its system page, and a
 * CPU access has the device write its data straight into that page,
 * which is then mapped as it is (userfaultfd MINOR fault,
 * UFFDIO_CONTINUE).  Drivers that pin host memory (cuda) reach that page
 * by DMA, at link speed in both directions.  Device-resident pages free
 * no system memory; hmm_range_lock and hmm_exclusive_begin are not
 * available (as for files); hmm_mem_free brings the device's data home
 * before it unmaps.
 *
 * Returns 0 and stores the address in *@out, or -EINVAL, -ENOMEM, -EMFILE
 * (no file descriptor left for the memfd), -EPERM, -ESHUTDOWN.
 */
#define HMM_MEM_ZERO_COPY 1u
int hmm_mem_alloc(size_t len, unsigned int flags, void **out);

/*
 * hmm_mem_free - free memory from hmm_mem_alloc.  Device copies are dropped
 * (HMM_MEM_ZERO_COPY memory: brought home first, then unmapped).
 *
 * Returns 0, or -EINVAL (not an allocation of libhmm, or a different
 * length), -ESHUTDOWN.
 */
int hmm_mem_free(void *addr, size_t len);

/* ------------------------------------------------------------------ */
/* File-backed memory                                                  */
/* ------------------------------------------------------------------ */

/*
 * hmm_file_adopt - manage part of a file mapping, so that its pages can
 * move to devices.
 *
 * @addr, @len: page aligned, within one mapping of the file that @fd is
 * open on, made with mmap(MAP_SHARED) or mmap(MAP_PRIVATE) (mprotect may
 * have cut it into several protections).  @fd is
 * only used during the call (libhmm maps the file itself; the descriptor
 * may be closed afterwards); for a writable shared mapping it must be open
 * O_RDWR.  @flags: 0 or HMM_FILE_SYNC_EACH.
 *
 * How pages come back to the CPU, per kind of mapping:
 *  - shmem-backed files (memfd_create, tmpfs, /dev/shm) mapped MAP_SHARED
 *    from a descriptor open for writing: userfaultfd MINOR faults.  The page-cache page stays while a device
 *    holds the data; a CPU access gets the device's data written into it
 *    and mapped (UFFDIO_CONTINUE), with no further copy, and a page the
 *    device could not write (read-only mapping) comes back without a copy.
 *  - every other file mapping (ext4, xfs, ... ; any MAP_PRIVATE mapping;
 *    a shmem file mapped from a read-only descriptor):
 *    the page is PROT_NONE in this mapping while a device holds it, and
 *    libhmm's SIGSEGV handler brings it back in the faulting thread.
 *    Faults that are not libhmm's go to the application's own SIGSEGV
 *    handler, or kill, exactly as without libhmm.  A system call given a
 *    buffer in such a page fails with EFAULT (the kernel raises no signal
 *    for it): touch it first, or bring the range home with hmm_migrate.
 *
 * Consistency contract:
 *  - Accesses through a managed mapping, by the CPU or a device, always
 *    see the latest data, wherever it lives.
 *  - Every other view of the file -- read()/pread() by another process,
 *    other mappings (in this process or another), the page cache, the
 *    disk -- sees data a device wrote once it has been written back.
 *    Write-back points: hmm_file_sync(); msync() of the range; munmap();
 *    hmm_range_release(); hmm_device_close(); hmm_fini() and normal exit
 *    (exit() or return from main, from any thread); execve() and the
 *    rest of the exec family; fork() (pages of file mappings come home
 *    first); and, for ranges adopted with
 *    HMM_FILE_SYNC_EACH (or while the option HMM_FILE_SYNC_EACH is 1),
 *    the end of every device command (hmm_device_command_done).  Pages
 *    stay on their device after a write-back, except at munmap, release,
 *    close, fini and fork.  A write-back copies the pages the device wrote
 *    since it last copied them (drivers that track device writes, such
 *    as sim), or every page the device could write (other drivers).
 *  - In this process, read(), pread(), readv(), preadv(), preadv2() on the
 *    file write back the pages they cover first, so they never return
 *    stale data; write(), pwrite() and the vector forms bring the pages
 *    they cover home first, so that the written data is what every view
 *    sees afterwards.  (libc's buffered stdio calls read and write inside
 *    libc and are not seen: call hmm_file_sync() before fread() on such a
 *    file.)  sendfile, splice and copy_file_range are not seen either.
 *  - A page written both by a device and, meanwhile, through another view
 *    (another process's write(), say) ends with the device's data at the
 *    next write-back: the unit is the page.  Pages a device did not write
 *    (could not, with drivers that do not track writes) are never written
 *    back, so other views' writes to them stay.
 *  - Truncation and holes (ftruncate(), truncate(), fallocate() with
 *    PUNCH_HOLE or ZERO_RANGE in this process; madvise(MADV_REMOVE)):
 *    device copies of the pages lost are dropped, pages only partly lost
 *    come home first; an access past the end of the file raises SIGBUS as
 *    usual.  In a MAP_PRIVATE mapping a page the device wrote is the
 *    process's own copy, as a page it wrote is: a hole leaves it alone (a
 *    truncation drops it); a page the device only read follows the file.
 *    (With a driver that does not track device writes, every page the
 *    device could write counts as written.)  A truncation by another process is seen when
 *    the page is next accessed or written back (past the end: SIGBUS,
 *    nothing written).
 *  - What a SIGKILL (or any death without exit handlers) loses: device
 *    data not yet written back.  Without HMM_FILE_SYNC_EACH, everything a
 *    device wrote since the last write-back point; with it, nothing a
 *    completed device command wrote (the page cache has it, and the
 *    kernel writes it to disk as for any dirty page).
 *
 * Mapping changes: munmap(), and mmap(MAP_FIXED) over the range, write
 * back first; mprotect() applies at once to pages in system memory and to
 * pages on a device when they come back (they stay PROT_NONE meanwhile);
 * mlock() brings device pages home first; mremap() of a memfd/tmpfs range
 * moves it, still managed; of any other file mapping it brings it home
 * and leaves it unmanaged at its new address.  Calls made with syscall()
 * directly are not seen.
 *
 * Not available for file mappings: hmm_range_lock and hmm_exclusive_begin
 * (-EOPNOTSUPP).  A file offset can be managed through one mapping at a
 * time in a process.  While a device holds a page, its page-cache copy
 * stays (migrating file pages frees no system memory), stale until written
 * back.  libhmm's calls are not async-signal-safe, nor are read(),
 * write() and the other wrapped calls on a managed file: a signal handler
 * that makes one, or touches a device-resident page of a disk-file
 * mapping, while its thread is inside libhmm can deadlock.
 *
 * Returns 0, or -EINVAL (bad range or flags, or not a file mapping: see
 * hmm_range_adopt), -EBADF (@fd is not open, or is not the file mapped at
 * @addr), -EACCES (the mapping is writable and shared, @fd is not open for
 * writing), -EFAULT (not entirely mapped, or part of it PROT_NONE),
 * -EOPNOTSUPP (the range spans more than one mapping), -EEXIST (already
 * managed, or these
 * file offsets are managed through another mapping), -EBUSY, -ENOMEM,
 * -EPERM, -ESHUTDOWN.
 */
#define HMM_FILE_SYNC_EACH 1u /* write back after every device command */
int hmm_file_adopt(void *addr, size_t len, int fd, unsigned int flags);

/*
 * hmm_file_sync - write back what devices wrote in the file-backed pages
 * of [addr, addr + len) to the file (its page cache); the pages stay on
 * their devices.  Parts of the range that are anonymous memory are
 * skipped.
 *
 * Returns the number of pages written (>= 0), or -EINVAL, -ENOENT (part
 * of the range is not managed), -EIO (a device could not copy),
 * -ESHUTDOWN.
 */
int hmm_file_sync(void *addr, size_t len);

/* ------------------------------------------------------------------ */
/* Devices                                                             */
/* ------------------------------------------------------------------ */

/* Attributes for hmm_device_open; a zeroed struct means "defaults". */
struct hmm_device_attr {
	size_t mem_size;	/* device memory in bytes (0: HMM_SIM_MEM_SIZE) */
	unsigned int engines;	/* device engines (0: HMM_SIM_ENGINES) */
	unsigned int flags;	/* must be 0 */
};

/*
 * hmm_device_open - create a device of the driver named @driver.
 *
 * @driver: "sim" (always present).  @attr may be NULL.
 *
 * Returns 0 and the device in *@out, or -EINVAL (bad attributes, size not a
 * page multiple), -ENODEV (no such driver), -ENOMEM, and the errors of
 * hmm_init().
 */
int hmm_device_open(const char *driver, const struct hmm_device_attr *attr,
		    hmm_device_t **out);

/*
 * hmm_device_close - bring every page living on @dev back to system memory,
 * drop @dev's mirror and free its resources.  Calls in flight on @dev are
 * waited for; later calls fail with -ENODEV (the handle stays valid for
 * that, a few dozen bytes).  Returns 0, or -EINVAL for NULL, -ENODEV if
 * already closed, -EBUSY if pages could not be brought back (the device
 * then keeps its memory, and accepts no more calls).
 */
int hmm_device_close(hmm_device_t *dev);

/* The small number (0 to 63) that names @dev among the open devices (a
 * closed device's may be reused), or -EINVAL for NULL. */
int hmm_device_id(const hmm_device_t *dev);

/* Device-memory usage: pages in use and in total. */
int hmm_device_mem_usage(hmm_device_t *dev, size_t *used_pages,
			 size_t *total_pages);

/* ------------------------------------------------------------------ */
/* Migration                                                           */
/* ------------------------------------------------------------------ */

/*
 * hmm_migrate - move the pages of a managed range to @dev, or to system
 * memory when @dev is NULL.
 *
 * Pages already there stay; pages never touched move as zero pages without
 * using system memory.  Anonymous and shared (hmm_mem_alloc) pages on
 * another device move straight from its memory to @dev's, with no CPU
 * page-table change (counter pages_peer; HMM_PEER_MIGRATE=0 turns that
 * off); file pages, pages another device holds for atomics, and pages
 * that find @dev's memory full come through system memory.  A failure (device memory full, a copy error) leaves every page that was
 * not yet moved where it was, with its data, and the call returns the error;
 * pages moved before the failure stay moved.  @flags must be 0.
 *
 * Returns the number of pages moved (>= 0), or -EINVAL, -EFAULT (part of
 * the range is unmapped or PROT_NONE), -ENOENT (not managed), -ENOMEM
 * (device memory exhausted), -ENODEV (closed device), -EIO (copy failed),
 * -EBUSY (shared memory that another process maps since a fork: it stays
 * in system memory while that lasts; or part of the range is locked to a
 * device), -ESHUTDOWN.  Moving pages to a device ends other devices'
 * holds for atomics on them.
 */
long hmm_migrate(void *addr, size_t len, hmm_device_t *dev,
		 unsigned int flags);

/*
 * Asynchronous prefetch: hmm_migrate in the background.
 *
 * hmm_prefetch_start checks its arguments as hmm_migrate does and returns
 * at once with a handle in *@out.  If every page is already where it is
 * asked to go (on @dev, or in system memory for NULL), the prefetch is
 * complete when the call returns, at the cost of one look at the pages'
 * states; otherwise libhmm's prefetch thread moves the pages, prefetches
 * in the order they were started.  The pages stay usable meanwhile: a CPU
 * access to a page in flight waits for it, as with hmm_migrate.  Parts of
 * the range under HMM_ADVISE_READ_MOSTLY get read-only copies on @dev
 * instead of moving (they stay in system memory; a page with @dev's copy
 * counts as in place, and as moved in the result).  A pending prefetch
 * keeps @dev open: hmm_device_close waits for it.
 * hmm_fini (and exit) completes the prefetches not yet started with
 * -ECANCELED; in the child of fork, the parent's pending prefetches are
 * complete with -ECANCELED.
 *
 * hmm_prefetch_start returns 0, or -EINVAL (bad range, flags not 0, NULL
 * @out), -ENOENT (not managed), -ENODEV (closed device), -ENOMEM,
 * -ESHUTDOWN (hmm_fini is running), -EAGAIN (the thread could not start),
 * or the errors of hmm_init().  Counters: prefetches, prefetches_in_place.
 *
 * hmm_prefetch_wait waits up to @timeout_ms milliseconds (0: do not wait,
 * negative: no limit) and returns the result of the migration (the pages
 * moved, or one of hmm_migrate's errors, or -ECANCELED), or -ETIMEDOUT if
 * it is not complete yet, or -EINVAL for NULL.  It may be called any number
 * of times, from any thread, until the handle is released.
 *
 * hmm_prefetch_release waits for completion, frees the handle and returns
 * the result as hmm_prefetch_wait does.
 */
typedef struct hmm_prefetch hmm_prefetch_t;

int hmm_prefetch_start(void *addr, size_t len, hmm_device_t *dev,
		       unsigned int flags, hmm_prefetch_t **out);
long hmm_prefetch_wait(hmm_prefetch_t *pf, int timeout_ms);
long hmm_prefetch_release(hmm_prefetch_t *pf);

/*
 * Advice per range, kept by address for managed memory and split or merged
 * as it changes.  @advice is one of:
 *
 *   HMM_ADVISE_PREFERRED_LOCATION    @dev (NULL: system memory) is where
 *        the pages should live: a device fault by @dev moves the pages it
 *        touches to @dev first (best effort: pages that cannot move, device
 *        memory being full say, are used where they are).  CPU accesses
 *        still bring pages home.  With system memory preferred, or none,
 *        device faults map pages where they are.  Thrashing control: a
 *        2 MiB block whose pages went to the preferred device and came
 *        back on CPU faults HMM_THRASH_COUNT times in a row (option,
 *        default 3; 0 turns the control off) stays in system memory for
 *        HMM_THRASH_PIN_MS (default 1000), the device mapping it there;
 *        its next device fault after that moves it again.  Before that,
 *        with HMM_THRASH_THROTTLE_MS > 0 (default 0), a block that has
 *        ping-ponged moves at most once per that many milliseconds,
 *        devices mapping it where it is in between.  Another device's
 *        reads bring pages home through the CPU, so ping-pongs between
 *        two devices count too.  Counters: thrash_pins,
 *        thrash_remote_faults, thrash_throttled.
 *   HMM_ADVISE_UNSET_PREFERRED_LOCATION  (@dev must be NULL)
 *   HMM_ADVISE_ACCESSED_BY           @dev reaches the pages where they
 *        are: its faults never move them, even where it is the preferred
 *        location.
 *   HMM_ADVISE_UNSET_ACCESSED_BY     (@dev required)
 *   HMM_ADVISE_DISCARD               the contents are not needed any more:
 *        pages on devices are dropped without being copied back and every
 *        page reads as zeros afterwards (anonymous memory, private or
 *        shared; @dev must be NULL).  Counter: pages_discarded.
 *   HMM_ADVISE_READ_MOSTLY           the pages are read far more than
 *        written (@dev must be NULL): a device that faults on one for
 *        reading gets a read-only copy in its own memory, while the page
 *        stays in system memory, where the CPU reads it as before; several
 *        devices may hold copies at once.  Any write, by the CPU or by a
 *        device (through hmm_range_fault), first removes every copy of
 *        the page: devices' translations are invalidated and the copies
 *        freed before the write happens, so every later read sees it.
 *        Migrating the page, dropping it, unmapping it, releasing the
 *        range or closing a device removes copies too, and copies are the
 *        first thing given up when a device's memory runs out.  Anonymous
 *        memory and hmm_mem_alloc memory (not shared with a child after
 *        fork); file-backed pages and pages held by a device are mapped
 *        where they are.  Advice never migrates read-mostly pages, even
 *        to a preferred device.  Needs write-protect faults (HMM_CAP_WP;
 *        without them the advice is kept but makes no copies).
 *        Counters: dup_pages_created, dup_pages_collapsed.
 *   HMM_ADVISE_UNSET_READ_MOSTLY     (@dev must be NULL) the copies in the
 *        range are removed.
 *
 * Advice ends with the range (release, munmap) and, for a device, when the
 * device closes.  Returns 0, or -EINVAL (bad range, unknown advice, @dev
 * where none is taken or missing where one is needed), -ENOENT (not
 * managed), -ENODEV (closed device), -EOPNOTSUPP (DISCARD of file-backed
 * memory), -ENOMEM, or hmm_init()'s errors; on error no advice changed.
 * Counter: advice_migrations (pages moved by PREFERRED_LOCATION).
 */
enum hmm_advice {
	HMM_ADVISE_PREFERRED_LOCATION = 1,
	HMM_ADVISE_UNSET_PREFERRED_LOCATION = 2,
	HMM_ADVISE_ACCESSED_BY = 3,
	HMM_ADVISE_UNSET_ACCESSED_BY = 4,
	HMM_ADVISE_DISCARD = 5,
	HMM_ADVISE_READ_MOSTLY = 6,
	HMM_ADVISE_UNSET_READ_MOSTLY = 7,
};
int hmm_advise(void *addr, size_t len, int advice, hmm_device_t *dev);

/* The advice in force at @addr: preferred is HMM_LOC_UNMANAGED (none),
 * HMM_LOC_SYSTEM or HMM_LOC_DEVICE (with preferred_dev); accessed_by has
 * bit N set for the open device whose hmm_device_id() is N; read_mostly
 * is HMM_ADVISE_READ_MOSTLY's.  0 or -EINVAL. */
struct hmm_advice_info {
	int preferred;
	hmm_device_t *preferred_dev;
	uint64_t accessed_by;
	int read_mostly;
};
int hmm_advice_get(const void *addr, struct hmm_advice_info *out);

/* ------------------------------------------------------------------ */
/* Holds: locking to a device, exclusive access for device atomics     */
/* ------------------------------------------------------------------ */

/*
 * hmm_range_lock - move a managed range into @dev's memory and keep it
 * there: until it is unlocked, any CPU load or store in the range raises
 * SIGBUS in the accessing thread (si_code BUS_ADRERR, si_addr the address
 * touched: the kernel's own signal, from a userfaultfd in SIGBUS mode), and
 * a system call that reads or writes the range fails with EFAULT.  The
 * device keeps using the pages normally; eviction never takes them;
 * hmm_migrate and other devices' accesses are refused.
 *
 * While the lock switches the range over (and while an unlock switches it
 * back) the range is PROT_NONE for a moment; a thread that touches it then
 * waits inside libhmm's SIGSEGV handler and goes on once the switch is
 * done.  Locking a range already locked whole to @dev does nothing.
 *
 * Semantics beyond the call:
 *  - munmap of a locked range frees its device memory; madvise(DONTNEED)
 *    zeroes the device's copy and the range stays locked; mremap moves the
 *    lock with the range.
 *  - fork: locks are not inherited (as mlock(2)'s are not).  In the child
 *    the range is ordinary managed memory whose pages live on the child's
 *    copy of the device; a CPU access there brings them home with the data
 *    they had at the fork.  The parent's range stays locked, except shared
 *    memory (hmm_mem_alloc, adopted MAP_SHARED), which a fork unlocks and
 *    brings home because parent and child share its pages, and ranges
 *    locked to a device whose driver cannot follow a fork.
 *  - hmm_device_close unlocks the device's ranges, then brings their pages
 *    home; hmm_fini and process exit do the same.
 *
 * Returns 0, or -EINVAL (bad range, NULL @dev), -ENOENT (not all managed),
 * -EFAULT (part unmapped or PROT_NONE), -EBUSY (part of the range is
 * locked or held for atomics, by any device, or the CPU kept bringing its
 * pages home), -ENOMEM (device memory full of locked pages, or out of
 * memory), -EIO, -ENODEV (closed device), -EOPNOTSUPP (the kernel's
 * userfaultfd has no SIGBUS mode), -ESHUTDOWN.  On error nothing is locked
 * (pages may have moved to the device).
 */
int hmm_range_lock(void *addr, size_t len, hmm_device_t *dev);

/*
 * hmm_range_unlock - end the locks of @dev on [addr, addr + len): the pages
 * stay on the device, and CPU accesses bring them home (with the device's
 * latest data) as for any device-resident page.  Returns the number of
 * pages unlocked (0 if none was locked to @dev), or -EINVAL, -ENOENT,
 * -ENODEV, -ENOMEM, -ESHUTDOWN; pages not unlocked stay locked.
 */
long hmm_range_unlock(void *addr, size_t len, hmm_device_t *dev);

/* Modes of hmm_exclusive_begin */
#define HMM_EXCL_READONLY 0 /* CPU reads go on, CPU writes wait */
#define HMM_EXCL_REVOKE 1   /* any CPU access ends the device's hold */

/*
 * hmm_exclusive_begin - @dev takes [addr, addr + len) for device atomics.
 * The pages move into its memory, where its atomics (hmm_sim_atomic_add,
 * hmm_sim_atomic_cas) run.
 *
 * HMM_EXCL_READONLY (the original HMM design): CPU reads go on and see
 * current data (a page the CPU reads comes home write-protected, and the
 * device's next write takes it back); a CPU write waits until the hold
 * ends, then completes.  With @timeout_ms > 0, a CPU write that has waited
 * that long revokes the whole hold instead (counter holds_timed_out).
 *
 * HMM_EXCL_REVOKE (the kernel's make_device_exclusive): any CPU access to
 * a page ends the device's hold on it and proceeds (the page comes home).
 *
 * In both modes another device's access to a page, a drop (madvise,
 * munmap), an mremap or an hmm_migrate to another device ends the hold on
 * it; so does a write by a thread of libhmm's (a device engine) that
 * reaches the page in system memory, which never waits for a hold.  No CPU
 * write and no device atomic is lost: a hold only decides where a page
 * lives and when CPU writes run.  Holds are not inherited by a fork child.
 *
 * Returns 0, or -EINVAL (bad range or mode, NULL @dev, @timeout_ms < 0),
 * -ENOENT (not all managed), -EFAULT, -EBUSY (part of the range is held or
 * locked), -ENOMEM, -EIO, -ENODEV, -EOPNOTSUPP (READONLY without
 * userfaultfd write-protection), -ESHUTDOWN.  On error nothing is held.
 */
int hmm_exclusive_begin(void *addr, size_t len, hmm_device_t *dev, int mode,
			long timeout_ms);

/*
 * hmm_exclusive_end - end the hold that hmm_exclusive_begin took on exactly
 * [addr, addr + len) for @dev; CPU writes that waited complete now.
 * Returns the number of pages whose hold had already ended before this
 * call (revoked: 0 means the device held every page throughout; a timed
 * out hold counts every page), or -EINVAL, -ENOENT (no such hold, or its
 * whole range was unmapped, which ended it), -ESHUTDOWN.
 */
long hmm_exclusive_end(void *addr, size_t len, hmm_device_t *dev);

/* Where one page lives now. */
enum hmm_location {
	HMM_LOC_UNMANAGED = 0,	/* libhmm does not manage it */
	HMM_LOC_SYSTEM = 1,	/* system memory (or not yet populated) */
	HMM_LOC_DEVICE = 2,	/* a device's memory */
	HMM_LOC_MIGRATING = 3,	/* being moved right now */
};

/*
 * hmm_page_location - where the page holding @addr lives.  If it is on a
 * device and @dev is not NULL, *@dev is set to that device (else NULL).
 * Returns an enum hmm_location (>= 0) or -ESHUTDOWN.
 */
int hmm_page_location(const void *addr, hmm_device_t **dev);

/* ------------------------------------------------------------------ */
/* Statistics                                                          */
/* ------------------------------------------------------------------ */

/*
 * hmm_stat_get - the current value of the counter named @name (see
 * hmm_stats_print for the list).  Returns 0 and the value in *@value, or
 * -ENOENT for an unknown name.
 */
int hmm_stat_get(const char *name, uint64_t *value);

/* hmm_stats_print - print every counter, one "name value" pair a line. */
void hmm_stats_print(FILE *out);

/*
 * hmm_stats_json - every counter as one JSON object, {"name": value, ...},
 * written to @buf (NUL-terminated, truncated to @len - 1 bytes).  Returns
 * the length of the whole object (without the NUL), as snprintf does: a
 * result >= @len means the buffer was too short.  -EINVAL if @buf is NULL
 * with @len not 0 (NULL and 0 ask for the size).
 */
long hmm_stats_json(char *buf, size_t len);

/* hmm_stats_reset - set every counter except gauges to zero. */
void hmm_stats_reset(void);

/* hmm_options_print - print every option with its value and source. */
void hmm_options_print(FILE *out);

/*
 * hmm_option_set / hmm_option_get - an option by name, with or without its
 * HMM_ prefix ("FAULT_AROUND" or "HMM_FAULT_AROUND").  A value set here
 * overrides the environment from then on.  Returns 0, -ENOENT for an
 * unknown name, -EINVAL for a NULL name or value pointer, or (set) -ERANGE
 * for a value out of the option's range.
 */
int hmm_option_set(const char *name, long value);
int hmm_option_get(const char *name, long *value);

#ifdef __cplusplus
}
#endif
#endif /* HMM_HMM_H */
