/* SPDX-License-Identifier: MIT */
/*
 * libhmm internals, grouped by the file that defines each function.
 * Names: hmm__* cross-file internal, static otherwise.
 *
 * Lock order (outer first): ctx.init_lock -> ctx.hold_lock ->
 * file_io_lock (file.c) -> ctx.fork_lock -> ctx.vma_lock -> ctx.pause_lock -> ctx.ranges_lock ->
 * a driver's mirror lock -> block.lock -> ctx.zap_lock -> devmem.lock;
 * ctx.holds_lock is a leaf (nothing is taken under it).  block.lock guards state changes only: it
 * is never held across a copy, a notifier callback, a memory access that
 * can fault, or an ioctl that can wait for a thread (the one exception,
 * UFFDIO_COPY of a zero page in service.c, cannot wait for anything).
 */
#ifndef HMM_INTERNAL_H
#define HMM_INTERNAL_H

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <linux/userfaultfd.h>

#include "hmm/hmm.h"
#include "hmm/hmm_driver.h"

struct hmm_zap;
struct hmm_dupset;

#define HMM_PAGE_SHIFT 12
#define HMM_PAGE_MASK (HMM_PAGE_SIZE - 1)
#define HMM_BLOCK_SHIFT 21
#define HMM_BLOCK_SIZE (1UL << HMM_BLOCK_SHIFT)
#define HMM_BLOCK_PAGES (HMM_BLOCK_SIZE >> HMM_PAGE_SHIFT)
#define HMM_MAX_DEVICES 64

/* A thread of libhmm, on a stack of its own mapping (ownmap.c). */
struct hmm_thread {
	pthread_t th;
	void *stack;
};

#define HMM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define HMM_MAX(a, b) ((a) > (b) ? (a) : (b))

static inline bool hmm__aligned(uintptr_t v)
{
	return (v & HMM_PAGE_MASK) == 0;
}

/* A range [addr, addr + len) is acceptable to the API. */
static inline int hmm__check_range(const void *addr, size_t len)
{
	uintptr_t a = (uintptr_t)addr;

	if (!len || !hmm__aligned(a) || !hmm__aligned(len))
		return -EINVAL;
	if (a + len < a)
		return -EINVAL;
	return 0;
}

/* ---- log.c ---------------------------------------------------------- */
void hmm__log(int level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
#define hmm__warn(...) hmm__log(1, __VA_ARGS__)
#define hmm__info(...) hmm__log(2, __VA_ARGS__)
#define hmm__debug(...) hmm__log(3, __VA_ARGS__)

/* ---- options.c ------------------------------------------------------ */
enum hmm_option {
	HMM_OPT_LOG_LEVEL,
	HMM_OPT_STATS,
	HMM_OPT_SIM_MEM_SIZE,
	HMM_OPT_SIM_ENGINES,
	HMM_OPT_FAULT_AROUND,
	HMM_OPT_MIGRATE_TIMEOUT_MS,
	HMM_OPT_FORCE_USER_MODE,
	HMM_OPT_USE_MOVE,
	HMM_OPT_THP_MOVE,
	HMM_OPT_EVICT,
	HMM_OPT_FILE_SYNC_EACH,
	HMM_OPT_THRASH_COUNT,
	HMM_OPT_THRASH_PIN_MS,
	HMM_OPT_PEER_MIGRATE,
	HMM_OPT_THRASH_THROTTLE_MS,
	HMM_OPT_SIM_LINK_GBPS,
	HMM_OPT_FAULT_WORKERS,
	HMM_OPT__COUNT
};
long hmm__option(enum hmm_option opt);

/* ---- stats.c -------------------------------------------------------- */
/* Every counter, once.  X(name, is_gauge, description) */
#define HMM_STATS_LIST(X)                                                   \
	X(cpu_faults, 0, "CPU faults served (userfaultfd)")               \
	X(cpu_faults_parked, 0, "CPU faults that waited for a migration")  \
	X(faultback_streams, 0, "CPU faults that continued a sequential stream") \
	X(faultbacks_offloaded, 0, "fault-backs handed to a fault worker thread") \
	X(cpu_zero_fills, 0, "untouched pages filled with zeros")          \
	X(device_faults, 0, "device fault rounds")                         \
	X(range_faults, 0, "hmm_range_fault calls")                        \
	X(pages_to_device, 0, "pages migrated to a device")                \
	X(pages_to_system, 0, "pages migrated to system memory")           \
	X(bytes_to_device, 0, "bytes migrated to a device")                \
	X(bytes_to_system, 0, "bytes migrated to system memory")           \
	X(migration_failures, 0, "migrations rolled back")                 \
	X(pages_evicted, 0, "device pages evicted to make room")          \
	X(pages_peer, 0, "pages migrated from one device to another directly") \
	X(thp_moves_to_device, 0, "2 MiB huge pages moved whole to a device (no copy)") \
	X(thp_moves_to_system, 0, "2 MiB huge pages moved whole back (no copy)") \
	X(thp_moves_failed, 0, "whole huge-page moves that fell back to copying") \
	X(thp_fills, 0, "first writes that got a whole huge page") \
	X(invalidations, 0, "notifier invalidations delivered")            \
	X(prefetches, 0, "hmm_prefetch_start calls that started")         \
	X(advice_migrations, 0, "pages moved to their preferred device on its faults") \
	X(thrash_pins, 0, "2 MiB blocks pinned to system memory for ping-ponging") \
	X(thrash_remote_faults, 0, "device faults that mapped a pinned block remotely") \
	X(thrash_throttled, 0, "advice moves held back by the thrashing throttle") \
	X(pages_discarded, 0, "pages dropped by HMM_ADVISE_DISCARD")      \
	X(dup_pages_created, 0, "read-only duplicates made (HMM_ADVISE_READ_MOSTLY)") \
	X(dup_pages_collapsed, 0, "read-only duplicates freed by a write or a change") \
	X(prefetches_in_place, 0, "prefetches done at once: pages in place") \
	X(dma_pages_linked, 0, "pages linked in an IOMMU (DMA mapping)")    \
	X(dma_pages_unlinked, 0, "DMA-mapped pages unlinked by invalidations") \
	X(iommu_faults, 0, "device accesses an IOMMU refused")            \
	X(events_remove, 0, "userfaultfd REMOVE events")                   \
	X(events_unmap, 0, "userfaultfd UNMAP events")                     \
	X(events_remap, 0, "userfaultfd REMAP events")                     \
	X(uffd_eagain, 0, "userfaultfd ioctls retried on EAGAIN")          \
	X(faults_injected, 0, "failures injected (hmm_inject_fault)")      \
	X(cpu_writes_held, 0, "CPU writes that waited for a device hold")  \
	X(holds_revoked, 0, "pages whose exclusive hold was revoked")      \
	X(holds_timed_out, 0, "exclusive holds revoked by their timeout")  \
	X(device_bytes_in_use, 1, "device memory in use, bytes")         \
	X(metadata_bytes, 1, "bookkeeping: page states, device page tables")

enum hmm_stat {
#define HMM_STAT_ENUM(n, g, d) HMM_STAT_##n,
	HMM_STATS_LIST(HMM_STAT_ENUM)
#undef HMM_STAT_ENUM
	HMM_STAT__COUNT
};
extern _Atomic uint64_t hmm__stats[HMM_STAT__COUNT];
static inline void hmm__stat_add(enum hmm_stat s, uint64_t v)
{
	atomic_fetch_add_explicit(&hmm__stats[s], v, memory_order_relaxed);
}
static inline void hmm__stat_sub(enum hmm_stat s, uint64_t v)
{
	atomic_fetch_sub_explicit(&hmm__stats[s], v, memory_order_relaxed);
}

/* ---- inject.c ------------------------------------------------------- */
enum hmm_inject_point {
	HMM_INJ_DEVMEM_ALLOC,
	HMM_INJ_COPY_TO_DEVICE,
	HMM_INJ_COPY_TO_SYSTEM,
	HMM_INJ_UFFD_COPY,
	HMM_INJ_UFFD_ZEROPAGE,
	HMM_INJ_UFFD_WRITEPROTECT,
	HMM_INJ_UFFD_REGISTER,
	HMM_INJ_ZAP,
	HMM_INJ_THREAD_CREATE,
	HMM_INJ_UFFD_MOVE,
	HMM_INJ_UFFD_WAKE,
	HMM_INJ_UFFD_UNREGISTER,
	HMM_INJ_UFFD_API,
	HMM_INJ__COUNT
};
/* 0, or the -errno to fail this call of step @p with. */
int hmm__inject(enum hmm_inject_point p);
void hmm__inject_from_env(void);

/* ---- uffd.c --------------------------------------------------------- */
int hmm__uffd_open(int *fd, uint64_t *features, unsigned int *caps);
int hmm__uffd_register(int fd, uintptr_t start, size_t len, bool wp);
/* A second descriptor, opened the way the first was, in SIGBUS mode with
 * the events: for ranges locked to a device. */
int hmm__uffd_open_sigbus(int *fd);
int hmm__uffd_unregister(int fd, uintptr_t start, size_t len);
/* Register for write-protect faults only: missing pages are the
 * kernel's to fill (a movable device's memory, a destination of
 * UFFDIO_MOVE that nobody must wait for). */
int hmm__uffd_register_wp(int fd, uintptr_t start, size_t len);
/* Register for MINOR faults (shmem files whose page cache stays). */
int hmm__uffd_register_minor(int fd, uintptr_t start, size_t len);
/* UFFDIO_CONTINUE: pages mapped (>= 0) or -errno. */
long hmm__uffd_continue(int fd, uintptr_t start, size_t len, bool dontwake);
/* These return pages resolved (>= 0) or -errno (-EAGAIN, -EEXIST, ...). */
long hmm__uffd_copy(int fd, uintptr_t dst, const void *src, size_t len,
		    bool wp, bool dontwake);
long hmm__uffd_zeropage(int fd, uintptr_t dst, size_t len);
int hmm__uffd_wake(int fd, uintptr_t start, size_t len);
/* UFFDIO_MOVE (never waking): bytes moved (>= 0, maybe short) or -errno. */
long hmm__uffd_move(int fd, uintptr_t dst, uintptr_t src, size_t len,
		    bool holes);
int hmm__uffd_writeprotect(int fd, uintptr_t start, size_t len, bool wp);

/* ---- thp.c ---------------------------------------------------------- */
/* Whether [@va, @va + 2 MiB) (aligned) is mapped by one huge page that
 * is not the huge zero page (PAGEMAP_SCAN; false where it is missing). */
bool hmm__thp_mapped(uintptr_t va);
/* A private anonymous range was adopted: mark its untouched blocks for a
 * huge page on first write where the kernel would give one. */
void hmm__thp_adopted(uintptr_t s, uintptr_t e);
void hmm__thp_fork_child(void);
/* The first write into a block marked thp_fill (b->lock held): one whole
 * zeroed huge page.  1 done (the thread woken), 0 fill the usual way,
 * -EAGAIN an event first. */
struct hmm_block;
int hmm__thp_fill_locked(struct hmm_block *b, uintptr_t page);

/* ---- vma.c ---------------------------------------------------------- */
struct hmm_vma {
	uintptr_t start, end;
	int prot;		/* PROT_* */
	bool shared;
	bool anon;		/* no file, or [heap]/[stack] */
	bool shmem_anon;	/* MAP_SHARED|MAP_ANONYMOUS */
	unsigned long dev_major, dev_minor, ino; /* the file mapped, if any */
	uint64_t off;		/* file offset of start */
	bool special;		/* [vvar], [vdso], [vsyscall] */
};
/* VMAs overlapping [start, end), sorted; *out is malloc'd.  Returns count
 * or -errno. */
long hmm__vma_snapshot(uintptr_t start, uintptr_t end, struct hmm_vma **out);
/* 0 if [start, end) is covered without holes by @v; else -EFAULT. */
int hmm__vma_covered(const struct hmm_vma *v, long n, uintptr_t start,
		     uintptr_t end);
const struct hmm_vma *hmm__vma_find(const struct hmm_vma *v, long n,
				    uintptr_t addr);
/* Whether another process maps the file (or shmem object) @v maps: a scan
 * of /proc/PID/maps, for shared memory only. */
bool hmm__mapped_elsewhere(const struct hmm_vma *v);

/* ---- guard.c -------------------------------------------------------- */
/*
 * Guarded accesses: a thread of libhmm (device engine, migration copy) that
 * reads or writes user memory through the user's address arms a guard; a
 * SIGSEGV or SIGBUS raised while it is armed jumps back to the arming point
 * instead of killing the process (a racing munmap, a PROT_NONE page).
 * Faults outside a guard go to the application's own handler, or get the
 * default action, exactly as without libhmm.
 */
struct hmm_guard {
	sigjmp_buf jb;
	volatile int armed;
	volatile int signo, code;
	volatile uintptr_t addr;
	struct hmm_guard *prev;
};
int hmm__guard_install(void);
void hmm__guard_uninstall(void);	/* the application's handlers back */
/* Use as: if (hmm__guard_begin(&g)) { tripped } else { access;
 * hmm__guard_end(&g); } -- the tripped branch runs with the guard
 * already ended. */
#define hmm__guard_begin(g)                                                 \
	(hmm__guard_arm(g), sigsetjmp((g)->jb, 0) ? (hmm__guard_end(g), 1) : 0)
void hmm__guard_arm(struct hmm_guard *g);
void hmm__guard_end(struct hmm_guard *g);

/*
 * A device's own accesses to the application's memory (the sim engine's
 * reads and writes of system pages, range_fault's touches) are DMA: what
 * orders them with the CPU's accesses and libhmm's page copies is
 * userfaultfd write-protection, unmapping and the device page table, none
 * of which ThreadSanitizer sees, and a race it would report there is the
 * application's (two devices on the same words), not libhmm's.  Under
 * TSan these bracket such accesses so that they are not tracked;
 * synchronisation still is.  Nothing otherwise.
 */
#if defined(__SANITIZE_THREAD__)
#define HMM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define HMM_TSAN 1
#endif
#endif
#ifdef HMM_TSAN
void AnnotateIgnoreReadsBegin(const char *file, int line);
void AnnotateIgnoreReadsEnd(const char *file, int line);
void AnnotateIgnoreWritesBegin(const char *file, int line);
void AnnotateIgnoreWritesEnd(const char *file, int line);
#define hmm__dma_begin()                                                    \
	(AnnotateIgnoreReadsBegin(__FILE__, __LINE__),                      \
	 AnnotateIgnoreWritesBegin(__FILE__, __LINE__))
#define hmm__dma_end()                                                      \
	(AnnotateIgnoreWritesEnd(__FILE__, __LINE__),                       \
	 AnnotateIgnoreReadsEnd(__FILE__, __LINE__))
#else
#define hmm__dma_begin() ((void)0)
#define hmm__dma_end() ((void)0)
#endif

/* ---- registry.c ----------------------------------------------------- */
/* Page state: low two bits are the kind, the rest flags. */
enum {
	PS_NONE = 0,	  /* not managed */
	PS_SYSTEM = 1,	  /* system memory (present or not yet populated) */
	PS_DEVICE = 2,	  /* in device dev[i]'s page dpfn[i] */
	PS_MIGRATING = 3, /* in flight; see PSF_TO_DEVICE */
};
#define PS_KIND(s) ((s) & 3)
#define PSF_WAITERS 0x04     /* a CPU fault waits: wake when it ends */
#define PSF_CLEARED 0x08     /* dropped (MADV_DONTNEED) while in flight */
#define PSF_UNMAPPED 0x10    /* unmapped or moved (mremap) while in flight */
#define PSF_TO_DEVICE 0x20   /* MIGRATING towards a device */
#define PSF_SRC_PRESENT 0x40 /* MIGRATING to device: source was present */
#define PSF_DROPPING 0x20    /* SYSTEM: the application's drop (a REMOVE
			      * event) is under way: the kernel sends the
			      * event before it zaps, so whatever data a
			      * migration finds there is about to go */
#define PSF_DEV_WRITE 0x80   /* DEVICE/MIGRATING: the device copy may be
			      * written (the CPU mapping is writable) */

/* dev[i]: the device id, and one flag */
#define PDEV_ID(d) ((d) & 0x3f)
#define PDEV_NOREAD 0x80     /* DEVICE/MIGRATING: CPU mapping is PROT_NONE */
#define PDEV_DIRTY 0x40	     /* DEVICE/MIGRATING: the device copy was
			      * writable (PSF_DEV_WRITE) before an mprotect
			      * took that away: a file's write-back still
			      * owes it (file.c) */
/* A file page's device copy may differ from the page cache. */
#define PDEV_OWES(st, d) (((st) & PSF_DEV_WRITE) || ((d) & PDEV_DIRTY))

/* 2 MiB of address space.  Blocks live until hmm_fini. */
struct hmm_block {
	uintptr_t base;
	pthread_mutex_t lock;	/* protects the fields below */
	pthread_cond_t cond;	/* broadcast when a migration here ends */
	uint16_t ndev;		/* pages DEVICE or MIGRATING here */
	uint8_t state[HMM_BLOCK_PAGES];
	uint8_t dev[HMM_BLOCK_PAGES];	 /* PDEV_*, DEVICE/MIGRATING */
	uint32_t dpfn[HMM_BLOCK_PAGES]; /* device page, DEVICE/MIGRATING */
	uint8_t mod[HMM_BLOCK_PAGES];	 /* PMOD_*: a device's hold (hold.c) */
	/* Thrashing control (advice.c).  cpu_backs counts the CPU
	 * fault-backs here (atomic, no lock); the others are advice's. */
	_Atomic uint32_t cpu_backs;
	uint32_t thrash_seen;		/* cpu_backs at the last advice move */
	uint32_t thrash_count;		/* ping-pongs in a row */
	uint64_t thrash_until_ms;	/* pinned to system memory until */
	uint64_t thrash_moved_ms;	/* the last advice move here */
	/* Read-only duplicates of this block's system pages on devices
	 * (dup.c), one set per device; and until when no new ones are made
	 * here (a write collapsed some: CLOCK_MONOTONIC ns).  Both lock. */
	struct hmm_dupset *dups;
	uint64_t dup_quiet_ns;
	/* The block's huge page moved out whole (thp.c): the application's
	 * PMD is empty since, so the huge page may move back whole.  A hint
	 * (a wrong one costs speed, not data); cleared when pages come home
	 * another way.  lock. */
	bool thp_out;
	/* Nothing was ever mapped here since it was adopted, and its
	 * mapping takes huge pages: the first write gets one (thp.c).  A
	 * hint, cleared by any fill.  lock. */
	bool thp_fill;
};

/*
 * mod[i]: which device holds the page, and how (hold.c).  LOCKED: the
 * page is DEVICE on that device and stays there; the CPU gets SIGBUS.
 * EXCL_RO: the device does atomics on it; the page is on the device or
 * in system memory write-protected (CPU writes wait).  EXCL_REVOKE: the
 * page is on the device; moving it to system memory ends the hold.
 */
#define PMOD_ID(m) ((unsigned)(m) & 0x3f)
#define PMOD_KIND(m) ((m) & 0xc0)
#define PMOD_LOCKED 0x40
#define PMOD_EXCL_RO 0x80
#define PMOD_EXCL_REVOKE 0xc0
#define PMOD_IS_EXCL(m) (((m) & 0x80) != 0)
/*
 * FPROT ranges (file.c) have no holds: there mod[i] is the protection the
 * application gave the page (PROT_* bits), which it gets back whenever it
 * is in system memory (on a device it is PROT_NONE).  Code that ends a
 * hold clears mod with PMOD_UNHOLD, which keeps a protection.
 */
#define PMOD_PROT(m) ((int)((m) & 7))
#define PMOD_UNHOLD(m) ((uint8_t)(PMOD_KIND(m) ? 0 : (m)))
struct hmm_block *hmm__block_lookup(uintptr_t addr);
struct hmm_block *hmm__block_get(uintptr_t addr); /* creates; NULL: ENOMEM */
static inline unsigned hmm__block_index(uintptr_t addr)
{
	return (unsigned)((addr >> HMM_PAGE_SHIFT) & (HMM_BLOCK_PAGES - 1));
}
/* In the child of fork: every block's lock and condition anew (a thread
 * of the parent may have held one), and no waiters. */
void hmm__blocks_fork_child(void);
/* Call fn on each existing block overlapping [start, end). */
void hmm__blocks_for_each(uintptr_t start, uintptr_t end,
			  void (*fn)(struct hmm_block *, uintptr_t, uintptr_t,
				     void *),
			  void *arg);

/*
 * What backs a managed range, and so how its pages leave and come back:
 *  ANON   private anonymous: MISSING faults; pages move (UFFDIO_MOVE/COPY).
 *  SHMEM  libhmm's memfd or adopted MAP_SHARED|MAP_ANONYMOUS: MISSING
 *         faults; a page on a device is a hole in the shmem object.
 *  FILE   an application's shmem-backed file (memfd, tmpfs) mapped
 *         MAP_SHARED (hmm_file_adopt): MINOR faults; the page-cache page
 *         stays (other views read it), the user's page-table entries go.
 *  FPROT  any other file mapping (disk filesystems, MAP_PRIVATE):
 *         not registered; a page on a device is PROT_NONE in the user's
 *         mapping and comes back through libhmm's SIGSEGV handler (file.c).
 */
enum hmm_mkind {
	HMM_MK_ANON = 0,
	HMM_MK_SHMEM = 1,
	HMM_MK_FILE = 2,
	HMM_MK_FPROT = 3,
};
#define HMM_MK_IS_FILE(k) ((k) >= HMM_MK_FILE)

/* A managed range (registry entry). */
struct hmm_mrange {
	uintptr_t start, end;
	enum hmm_mkind kind;
	struct hmm_alloc *alloc; /* SHMEM, FILE, FPROT: what it belongs to */
	uint64_t off;		 /* SHMEM, FILE, FPROT: file offset of start */
};

/* An allocation of hmm_mem_alloc: a memfd, mapped at the user's address
 * and at an alias no application pointer reaches.  Adopted shared
 * anonymous memory has the same shape without the memfd (-1): its alias
 * is a second mapping of the same shmem pages. */
struct hmm_alloc {
	uintptr_t start;	/* user address of file offset 0 */
	size_t len;
	int memfd;		/* -1: adopted MAP_SHARED|MAP_ANONYMOUS */
	void *alias;
	/* The shmem object (as /proc/PID/maps names it), and whether a fork
	 * may have shared it with another process: then nothing of it moves
	 * to a device while another process maps it (it would read holes). */
	struct hmm_vma obj;	/* dev_major, dev_minor, ino */
	bool forked;		/* ctx.ranges_lock */
	/* Ranges pointing here, and hmm__range_get's copies: changed under
	 * ctx.ranges_lock (read is enough to take a reference, write to
	 * drop the last one). */
	_Atomic int refs;
	/* Files (hmm_file_adopt): the alias maps file offsets [alias_off,
	 * alias_off + len) (NULL for private mappings, which have no file
	 * data to write); memfd is libhmm's duplicate of the application's
	 * descriptor. */
	uint64_t alias_off;
	bool priv;		/* MAP_PRIVATE */
	bool sync_each;		/* HMM_FILE_SYNC_EACH */
	bool file;		/* from hmm_file_adopt (counted in
				 * hmm__file_ranges) */
	/* The alias was announced to drivers (hostreg.c): announce its
	 * removal before unmapping it. */
	bool host_reg;
	/* Made by hmm_mem_alloc(HMM_MEM_ZERO_COPY): hmm_mem_free takes it. */
	bool mem_alloc;
};

/* Whether @addr is in shared memory whose data a MADV_DONTNEED keeps
 * (SHMEM or FILE; takes the lock). */
bool hmm__range_is_shmem(uintptr_t addr);
/* The kind of the range at @addr, or -1 (takes the lock). */
int hmm__range_kind(uintptr_t addr);
/* A snapshot of the managed ranges (malloc'd; NULL and *n = 0 if out of
 * memory), for work that must not hold ctx.ranges_lock. */
struct hmm_mrange *hmm__ranges_copy(size_t *n);
/* Under ctx.ranges_lock (read or write). */
struct hmm_mrange *hmm__range_find(uintptr_t addr);
/* 0 if [start, end) is covered by managed ranges, else -ENOENT. */
int hmm__ranges_cover(uintptr_t start, uintptr_t end);
bool hmm__ranges_overlap(uintptr_t start, uintptr_t end);
/* Under the write lock. */
int hmm__range_insert(uintptr_t start, uintptr_t end, enum hmm_mkind kind,
		      struct hmm_alloc *alloc, uint64_t off);
/* Remove [start, end) from the registry, splitting ranges as needed. */
int hmm__range_trim(uintptr_t start, uintptr_t end);
void hmm__ranges_free_all(void);
/* Drop a reference to an allocation (ctx.ranges_lock for writing). */
void hmm__alloc_put(struct hmm_alloc *a);
/* A copy of the range entry at @addr, with a reference on its allocation
 * (give it back with hmm__range_put), from the registry or, for a range
 * being released or unmapped, from the retired list.  Returns false if
 * none (*out then describes [addr, the next range) as ANON). */
bool hmm__range_get(uintptr_t addr, struct hmm_mrange *out);
void hmm__range_put(struct hmm_mrange *r);
/* A range leaving the registry whose pages are still to come home:
 * hmm__range_get finds it meanwhile (ctx.ranges_lock for writing). */
int hmm__retired_push(const struct hmm_mrange *r); /* 0 or -ENOMEM */
void hmm__retired_pop(uintptr_t start);

/* Set every page in [start, end) to @state (block created as needed),
 * except pages on a device or in flight.  Returns 0, -EAGAIN if such a
 * page was skipped, or -ENOMEM. */
int hmm__pages_set_state(uintptr_t start, uintptr_t end, uint8_t state);
/* Whether any page of [start, end) is on a device or in flight. */
bool hmm__range_busy(uintptr_t start, uintptr_t end);

/* ---- hold.c --------------------------------------------------------- */
/* A SIGSEGV at @addr: if a lock or unlock is switching the page's
 * userfaultfd right now (it is PROT_NONE meanwhile), wait for the switch
 * to end and return true (the access is retried); else false.
 * Async-signal-safe. */
bool hmm__lock_transition_wait(uintptr_t addr);
/* Every page of @dev unlocked, and every exclusive hold of it ended
 * (device close). */
void hmm__holds_drop_device(hmm_device_t *dev);
/* End the exclusive holds on pages of [s, e) of every device but @keep
 * (NULL: all): another device or a drop needs them. */
void hmm__holds_revoke(uintptr_t s, uintptr_t e, const hmm_device_t *keep);
/* Service thread: a CPU write to @page waits for a read-only exclusive
 * hold; start its release timeout. */
void hmm__hold_write_parked(uintptr_t page);
/* [s, e) is unmapped: exclusive holds inside it are gone with it
 * (hmm_exclusive_end answers -ENOENT for them). */
void hmm__holds_forget(uintptr_t s, uintptr_t e);
/* Service thread: a thread of libhmm writes to @page, which a device
 * holds read-only: the hold on it ends (never waits).  0, or -EAGAIN (an
 * event must be read first). */
int hmm__hold_revoke_page(uintptr_t page);
/* Service thread: milliseconds until the next hold times out (-1: none),
 * and revoking those that have. */
int hmm__holds_poll_timeout(void);
void hmm__holds_expire(void);
/* Whether a page of [s, e) is locked to a device. */
bool hmm__range_locked(uintptr_t s, uintptr_t e);
/* fork, under ctx.hold_lock: locks that cannot stay across it end (shared
 * memory, which comes home before a fork; devices without fork_child). */
void hmm__holds_fork_prepare(void);
/* fork: the child holds nothing (locks, like mlock's, are not inherited). */
void hmm__holds_fork_child(void);
void hmm__holds_fini(void);
/* hmm_range_fault for @owner: pages of [s, e) it holds read-only in
 * system memory that it wants to write come to its memory first. */
int hmm__hold_pull(uintptr_t s, uintptr_t e, hmm_device_t *owner);

/* ---- managed.c ------------------------------------------------------ */
/* An earlier mapping at [s, e) may still have pages in flight: wait for
 * them (HMM_MIGRATE_TIMEOUT_MS at most). */
void hmm__wait_idle(uintptr_t s, uintptr_t e);
/* [s, e) mapped and accessible (not PROT_NONE); *vmas (malloc'd) gets
 * its VMAs.  Returns 0 or -errno. */
int hmm__check_vmas(uintptr_t s, uintptr_t e, struct hmm_vma **vmas,
		    long *nvmas);

/* ---- file.c --------------------------------------------------------- */
/* The SIGSEGV handler, for a fault at @addr: a page of a FPROT range that
 * libhmm made PROT_NONE is brought back (true: retry the access).  Runs
 * in the faulting thread. */
bool hmm__file_prot_fault(uintptr_t addr, bool write);
/* VMAs of FPROT ranges that are PROT_NONE because their pages are on a
 * device take the protection the application gave them, page by page
 * (the array, malloc'd, may be replaced by a longer one). */
void hmm__file_fix_prot(struct hmm_vma **v, long *n);
/* Pointer to the page-cache copy of @va through the alias, or NULL (private
 * mapping).  @r is a copy of the range entry. */
void *hmm__file_alias_ptr(const struct hmm_mrange *r, uintptr_t va);
/* Write back the device-written pages of file-backed ranges in [s, e) (of
 * @only, if set); pages stay on their device.  Returns pages written or
 * -errno. */
long hmm__file_writeback(uintptr_t s, uintptr_t e, hmm_device_t *only);
/* The mapping wrappers (interpose.c): munmap writes back first, and
 * forgets FPROT ranges (they send no UNMAP event); mremap releases FPROT
 * ranges first.  mprotect over FPROT ranges: hmm__file_protect
 * does the whole call (false: none there, the caller does it), so that
 * pages on a device stay PROT_NONE; *ret gets the system call's result. */
void hmm__file_before_unmap(uintptr_t s, uintptr_t e);
void hmm__file_before_remap(uintptr_t s, uintptr_t e);
/* mmap, as libhmm's wrapper does it (a MAP_FIXED over managed file
 * ranges writes back first); the dmirror preload's mmap calls it. */
void *hmm__mmap(void *addr, size_t len, int prot, int flags, int fd,
		off_t off);
/* FPROT pages of [s, e) on devices come home (mlock). */
void hmm__file_home(uintptr_t s, uintptr_t e);
bool hmm__file_protect(uintptr_t s, uintptr_t e, int prot, int pkey,
		       long *ret);
/* Under b->lock: the pages of [s, e) in @b that are in system memory get
 * the protection in their mod[] (FPROT), run by run.  (mprotect waits for
 * no thread of libhmm: a fault in a userfaultfd range lets the mmap lock
 * go before it waits.) */
void hmm__fprot_restore_locked(struct hmm_block *b, uintptr_t s, uintptr_t e);
/* A drop (hmm__pages_drop) took pages of [s, e) home: FPROT pages there
 * get their protection back. */
void hmm__file_after_drop(uintptr_t s, uintptr_t e);
/* An allocation of a file goes (ctx.ranges_lock for writing). */
void hmm__file_slot_put(const struct hmm_vma *obj);
/* Migrations to a device: file_io_lock for reading while file ranges
 * exist (file.c: a write to a managed file and its preparation are one
 * step for them).  Taken before ctx.fork_lock. */
bool hmm__file_mig_begin(void);
void hmm__file_mig_end(bool held);
/* Managed file ranges exist (a cheap test for the I/O wrappers). */
extern atomic_int hmm__file_ranges;
/* Ranges in safe mode exist. */
extern atomic_int hmm__file_sync_each;
/* Read (@write false) or write @len bytes at @va of this process through
 * /proc/self/mem, which reaches PROT_NONE pages.  0 or -errno. */
int hmm__procmem_rw(bool write, void *buf, uintptr_t va, size_t len);
/* raw mprotect (no interposition, no prot_gen bump) */
int hmm__sys_mprotect(void *addr, size_t len, int prot);

/* ---- hostreg.c ------------------------------------------------------ */
/* libhmm's own host mappings that drivers may register for DMA (the
 * driver ops host_register and host_unregister).  add after mapping,
 * remove before unmapping; attach once a device is open, detach before
 * its fini.  The driver hooks run under hostreg.c's lock, which may be
 * taken under ctx.ranges_lock. */
void hmm__host_region_add(void *addr, size_t len);
void hmm__host_region_remove(void *addr, size_t len);
void hmm__host_regions_attach(hmm_device_t *dev);
void hmm__host_regions_detach(hmm_device_t *dev);

/* ---- device.c ------------------------------------------------------- */
struct hmm_devmem {
	pthread_mutex_t lock;	/* protects free/nfree/clean/nclean/fail/hand */
	uint32_t *free;		/* stack of free device page numbers */
	size_t nfree, npages;
	/*
	 * Movable devices (host_movable, thp.c): free 2 MiB chunks of device
	 * memory with nothing mapped in them (the pool's PMD is empty: never
	 * touched, or its huge page moved out whole), kept apart from the
	 * page stack so that whole huge pages can move in.  A chunk leaves
	 * this stack whole: for a huge page moving in, or (pages short) onto
	 * the page stack, for good.  NULL on other devices.
	 */
	uint32_t *clean;	/* stack of chunk numbers */
	size_t nclean;
	bool movable;		/* set at open; the pool is registered */
	unsigned int fail;	/* HMM_FAIL_* armed: each fails once */
	/*
	 * Eviction (oversubscription): for each device page, the user
	 * address whose data it holds (0 when free; set at commit, a hint
	 * that eviction checks against the page state before use), and a
	 * referenced bit set when the device uses the page and cleared by
	 * the clock hand, which evicts pages found unreferenced.
	 * Both are read and written without the lock, atomically.
	 */
	_Atomic uintptr_t *owner;
	_Atomic uint8_t *ref;
	size_t hand;
	/* Per device page: the device wrote it since it arrived or was last
	 * written back (hmm_device_mark_dirty; drivers with tracks_dirty). */
	_Atomic uint8_t *dirty;
};
/* Whether the device copy of a file page may differ from the page cache:
 * written since (drivers that track it), or writable (the others, and
 * PDEV_DIRTY for what an mprotect took away). */
bool hmm__page_owes(hmm_device_t *dev, uint32_t dpfn, uint8_t st,
		    uint8_t devbits);
/* A write-back takes @dpfn's dirty mark (true if the page is owed). */
bool hmm__page_owes_take(hmm_device_t *dev, uint32_t dpfn, uint8_t st,
			 uint8_t devbits);
/* The page @dpfn of @dev now holds the data of @va (0: freed). */
void hmm__devmem_set_owner(hmm_device_t *dev, uint32_t dpfn, uintptr_t va);
/* Move up to @want least recently used pages of @dev to system memory.
 * Returns the pages moved (0 if none could be), or -errno. */
long hmm__devmem_evict(hmm_device_t *dev, size_t want);
/* Allocation-failure injection (the dmirror FLAGS command): the next
 * device-page allocation, or the next system-page install of a move back
 * from this device, fails with -ENOMEM once. */
#define HMM_FAIL_DEVMEM (1u << 0)
#define HMM_FAIL_SYSMEM (1u << 1)
void hmm__devmem_fail_arm(hmm_device_t *dev, unsigned int what);
bool hmm__devmem_fail_take(hmm_device_t *dev, unsigned int what);
hmm_device_t *hmm__device_get(unsigned int id);	/* NULL if none */
/* The open device that @owner (a dev_private_owner or notifier owner)
 * names, or NULL: hmm_device_owner() of a device is the device. */
hmm_device_t *hmm__device_of_owner(const void *owner);
int hmm__devmem_alloc(hmm_device_t *dev, size_t n, uint32_t *out);
void hmm__devmem_free(hmm_device_t *dev, const uint32_t *dpfns, size_t n);
/* Device pages in use (a snapshot: taken under the allocator's lock). */
size_t hmm__devmem_used(hmm_device_t *dev);
/* A clean 2 MiB chunk of a movable device: its 512 page numbers, in
 * order, in @out.  0, or -ENOSPC if none. */
int hmm__devmem_alloc_chunk(hmm_device_t *dev, uint32_t *out);
/* Free the 512 pages of the chunk at @base, which is clean again: its
 * huge page moved out whole. */
void hmm__devmem_free_chunk(hmm_device_t *dev, uint32_t base);
/* Device pages of any devices, gathered under block locks to be freed
 * once their translations are invalidated (a drop, copies removed). */
struct hmm_devpages {
	uint32_t *dpfn;
	uint8_t *dev;
	size_t n, cap;
};
/* false: out of memory, nothing added. */
bool hmm__devpages_add(struct hmm_devpages *dp, unsigned dev, uint32_t dpfn);
/* Free the pages (to their devices) and the arrays. */
void hmm__devpages_free(struct hmm_devpages *dp);
void hmm__devices_close_all(void);
/* fork: whether no page lives on a device that cannot follow a fork (one
 * without fork_child), bringing such pages home first if @evict; and, in
 * the child, every device made usable again (or closed). */
bool hmm__devices_fork_ready(bool evict);
void hmm__devices_fork_child(void);
int hmm__sim_register(void); /* drivers/sim/sim.c */

/* ---- notifier.c ----------------------------------------------------- */
/* Tell every notifier overlapping [start, end).  Returns false if a
 * callback could not finish (see hmm_interval_notifier_ops). */
bool hmm__invalidate(uintptr_t start, uintptr_t end,
		     enum hmm_notifier_event event, const void *owner,
		     bool blockable);

/* ---- migrate.c ------------------------------------------------------ */
/* Flags for the block movers */
#define HMM_MIG_NONBLOCK 1 /* caller is the service thread: never wait */

/*
 * Move the DEVICE pages of [start, end) (of @only, or of any device if
 * NULL) to system memory.  Returns pages moved, or -EAGAIN (service thread:
 * an event must be read first, nothing changed for the pages not moved),
 * -EINPROGRESS (service thread: a page is mid-migration; the fault was
 * parked), -ENOMEM, -EIO, -ETIMEDOUT.
 */
long hmm__migrate_to_system(uintptr_t start, uintptr_t end,
			    hmm_device_t *only, int flags);
/* Records of ranges (libhmm's own zaps in ctx.zaps, MADV_FREE calls in
 * progress in ctx.lazy, interposed drops in ctx.drops), under
 * ctx.zap_lock: add, remove, and whether one covers [s, e). */
void hmm__rec_push(struct hmm_zap **list, struct hmm_zap *z);
void hmm__rec_pop(struct hmm_zap **list, struct hmm_zap *z);
bool hmm__rec_covers(struct hmm_zap *const *list, uintptr_t s, uintptr_t e);
/* REMOVE [s, e): the end of the run of pages from @s that are all
 * libhmm's own (*ours; each now claimed by its zap) or all not. */
uintptr_t hmm__zap_claim_run(uintptr_t s, uintptr_t e, bool *ours);
/* mremap moved @from (in flight) to @to. */
void hmm__forward_add(uintptr_t from, uintptr_t to);
/* Forget the contents of [start, end): device copies are freed (unless
 * @keep_data and not @unmap); with @unmap the pages become unmanaged.
 * @pending: the kernel zaps the system pages after this (a REMOVE event):
 * mark them PSF_DROPPING; otherwise the zap is done: clear the mark. */
void hmm__pages_drop(uintptr_t start, uintptr_t end, bool unmap,
		     bool keep_data, bool pending,
		     enum hmm_notifier_event event, bool blockable);
/* The drop that hmm__pages_drop(..., pending) announced is done: clear the
 * PSF_DROPPING marks left, and end the invalidation.  Nothing else: every
 * page that could hold the old data was settled before the system call. */
void hmm__pages_drop_done(uintptr_t start, uintptr_t end,
			  enum hmm_notifier_event event, bool blockable);
/* Every managed range, to system memory (pages of @only, or of any device
 * if NULL). */
void hmm__migrate_all_to_system(hmm_device_t *only);
/* @vmas were read when ctx.prot_gen was @prot_gen. */
long hmm__migrate_to_device(uintptr_t start, uintptr_t end,
			    hmm_device_t *dev, const struct hmm_vma *vmas,
			    long nvmas, unsigned long prot_gen);

/* The device's copy of @n pages, as DMA, under a guard: a page that
 * faults (unmapped, past the end of a file) makes it -EFAULT. */
int hmm__guarded_copy(hmm_device_t *dev, enum hmm_copy_dir dir,
		      const struct hmm_copy_desc *d, size_t n);

/* ---- context.c ------------------------------------------------------ */
struct hmm_zap {		/* a zap libhmm does itself (migrate.c) */
	uintptr_t start, end;	/* within one block */
	/* Pages whose REMOVE event was matched to it (ctx.zaps only). */
	uint64_t claimed[HMM_BLOCK_PAGES / 64];
	struct hmm_zap *next;
};

/* A page that mremap moved while it was in flight (service.c records,
 * migrate.c resolves at commit). */
struct hmm_forward {
	uintptr_t from, to;
	struct hmm_forward *next;
};

struct hmm_context {
	pthread_mutex_t init_lock; /* serialises init and fini */
	_Atomic int state;	   /* HMM_CTX_* */
	int uffd;		/* set by init and in a forked child (one
				 * thread); never changed by fini
				 * (retire_uffd in context.c) */
	uint64_t features;	/* userfaultfd features granted */
	unsigned int caps;	/* enum hmm_cap */
	int stop_fd;		/* eventfd: tells the service thread to stop */
	struct hmm_thread service;
	_Atomic(pthread_t) service_tid_valid;

	pthread_rwlock_t ranges_lock; /* protects ranges, nranges */
	struct hmm_mrange *ranges;    /* sorted by start, disjoint */
	size_t nranges, ranges_cap;
	/* Ranges out of the registry whose file pages are still coming home
	 * (hmm__retired_push); also ranges_lock. */
	struct hmm_mrange *retired;
	size_t nretired, retired_cap;

	/* Held for reading by migrations started by application threads,
	 * for writing across fork (atfork), so that no page is in flight
	 * when the child gets its copy of the state. */
	pthread_rwlock_t fork_lock;
	/* Held by the service thread while it handles a round of messages,
	 * and across fork: the state is not half-way through a fault. */
	pthread_mutex_t pause_lock;
	/* Bumped by every mprotect through libc (interpose.c). */
	atomic_ulong prot_gen;
	/* Held for reading by libhmm's own drops of anonymous pages until
	 * their REMOVE events are handled, for writing by the mprotect,
	 * munmap and mremap wrappers around their system call: the VMAs the
	 * events are matched against stay as they were. */
	pthread_rwlock_t vma_lock;

	pthread_mutex_t zap_lock; /* protects zaps, forwards, lazy */
	struct hmm_zap *zaps;
	struct hmm_forward *forwards;
	struct hmm_zap *lazy;	/* MADV_FREE calls in progress (interpose.c) */
	struct hmm_zap *drops;	/* interposed drops in progress (interpose.c):
				 * their REMOVE events are the wrapper's */

	pthread_mutex_t notifier_lock; /* protects notifiers, the seq */
	pthread_cond_t notifier_cond;  /* callbacks finished */
	struct hmm_interval_notifier *notifiers;
	unsigned long notifier_seq;    /* last odd sequence handed out */
	int notifier_active;	       /* callbacks running */

	/* hmm__service_sync(): a thread bumps sync_req and pokes sync_fd;
	 * the service thread, once it has handled every message it read
	 * before, publishes the value it saw in sync_done. */
	int sync_fd;			/* eventfd */
	_Atomic uint64_t sync_req, sync_done;
	pthread_mutex_t sync_lock;	/* with sync_cond */
	pthread_cond_t sync_cond;

	/* Serialises hmm_range_lock/unlock and hmm_exclusive_begin/end
	 * (application threads only; never taken by the service thread). */
	pthread_mutex_t hold_lock;
	/* Protects holds (short sections; the service thread takes it). */
	pthread_mutex_t holds_lock;
	struct hmm_hold *holds;
	/* userfaultfd in SIGBUS mode for locked ranges, -1 until the first
	 * lock; written under hold_lock, read by the service thread. */
	_Atomic int sigbus_fd;

	pthread_mutex_t dev_lock; /* protects devices[] slots */
	hmm_device_t *devices[HMM_MAX_DEVICES];
};
enum { HMM_CTX_NONE = 0, HMM_CTX_UP = 1, HMM_CTX_DOWN = 2 };
extern struct hmm_context hmm__ctx;
/* Make sure the state exists: 0, or the error of hmm_init(). */
int hmm__ensure(void);
void hmm__prefetch_stop(void);

/* ---- trace.c: HMM_TRACE (Chrome trace events) --------------------------- */
extern _Atomic bool hmm__trace_on;
/* Whether trace points should record: one relaxed load. */
static inline bool hmm__tracing(void)
{
	return atomic_load_explicit(&hmm__trace_on, memory_order_relaxed);
}
/* CLOCK_MONOTONIC in nanoseconds (trace.c; the trace's clock too). */
uint64_t hmm__now_ns(void);
/* A complete event from @start (hmm__now_ns) to now. */
void hmm__trace_event(const char *name, const char *cat, uint64_t start,
		      uintptr_t addr, uint64_t pages, int dev);
/* The same, for work over @span pages of which @pages were moved. */
void hmm__trace_span(const char *name, const char *cat, uint64_t start,
		     uintptr_t addr, uint64_t span, uint64_t pages, int dev);
void hmm__trace_init(void);
void hmm__trace_close(void);
void hmm__trace_fork_child(void);
bool hmm__pages_in_place(uintptr_t s, uintptr_t e, hmm_device_t *dev);
void hmm__advice_fault(const void *owner, uintptr_t start, uintptr_t end);
void hmm__advice_forget(uintptr_t start, uintptr_t end);
void hmm__advice_forget_device(unsigned int id);
void hmm__advice_fork_child(void);
void hmm__prefetch_fork_child(void);
struct hmm_iommu;
size_t hmm__iommu_translate_run(struct hmm_iommu *mmu, uint64_t iova,
				size_t n, unsigned int access, char **host);
bool hmm__iommu_readable(struct hmm_iommu *mmu, uint64_t iova);
bool hmm__on_service_thread(void);
/* Block every signal but the synchronous fault ones. */
/* Set by the exit handler: waits for device calls in flight are bounded. */
extern bool hmm__exiting;
/* Called first by every thread of libhmm: blocks signals, and marks the
 * thread as libhmm's (hmm__own_thread, and its id for hmm__tid_is_own
 * until it exits). */
void hmm__block_signals(void);
bool hmm__tid_is_own(pid_t tid);
extern __thread bool hmm__own_thread;

/* ---- dup.c ---------------------------------------------------------- */
/*
 * Read duplication (HMM_ADVISE_READ_MOSTLY).  A page with duplicates is
 * PS_SYSTEM, holds nothing, and is write-protected; its duplicates are
 * read-only copies in devices' memory.  Anything that would change the
 * system page or take it out of PS_SYSTEM removes them first.
 */
/* Blocks with duplicates exist (a hint for the fast paths). */
extern _Atomic long hmm__dup_blocks;
/* Under b->lock: whether a page of [i0, i1) has a duplicate (ready or
 * being made). */
bool hmm__dups_any_locked(const struct hmm_block *b, unsigned i0,
			  unsigned i1);
/* Under b->lock: remove the duplicates of pages [i0, i1); the ready ones
 * go into @bag (false: out of memory, some stayed). */
bool hmm__dups_detach_locked(struct hmm_block *b, unsigned i0, unsigned i1,
			     struct hmm_devpages *bag);
/* After the invalidation of their pages: free the device pages (and
 * count them as collapsed). */
void hmm__dupbag_release(struct hmm_devpages *bag);
/* Remove the duplicates in [s, e) (of device @dev, or all if NULL):
 * detached, invalidated (@event), freed, and the system pages left with
 * none lose their write protection.  Returns pages freed. */
long hmm__dups_collapse(uintptr_t s, uintptr_t e, hmm_device_t *dev,
			enum hmm_notifier_event event, bool blockable);
/* Service thread: a CPU fault (@wp: a write-protect fault) on @page,
 * which has duplicates: they go, and with @wp the write goes on.  0 (the
 * fault is resolved), 1 (look at the page again: it is not in system
 * memory any more, or it is absent and needs filling), or -EAGAIN (try
 * again later). */
int hmm__dups_cpu_fault(struct hmm_block *b, uintptr_t page, bool wp);
/* hmm_range_fault's last step, for the device that is the range's
 * dev_private_owner (if any): read faults in read-mostly ranges get
 * duplicates in its memory; pages with duplicates are reported as its
 * copy, or without write access.  Costs two atomic loads when there is
 * no read-mostly advice and no copy. */
void hmm__dups_range_fault(struct hmm_range *range);
/* Under b->lock: page @i has a ready copy on device @dev. */
bool hmm__dup_ready_locked(const struct hmm_block *b, unsigned i,
			   unsigned dev);
/* A prefetch of read-mostly [s, e) to @dev: copies there instead of a
 * move.  Pages on @dev afterwards (copies or its own), or -errno. */
long hmm__dups_prefetch(hmm_device_t *dev, uintptr_t s, uintptr_t e);
/* Whether a page of [s, e) has a copy (ready or being made). */
bool hmm__dups_in(uintptr_t s, uintptr_t e);
/* Free every duplicate on @dev (eviction, close).  Pages freed. */
long hmm__dups_reclaim(hmm_device_t *dev);
/* In the child of fork: no duplicates (the write protection did not
 * follow); their device pages are freed. */
void hmm__dups_fork_child(void);
/* Read-mostly runs of [s, e) (advice.c): up to @max into @out, sorted;
 * returns the count. */
struct hmm_span {
	uintptr_t s, e;
};
size_t hmm__advice_read_mostly(uintptr_t s, uintptr_t e, struct hmm_span *out,
			       size_t max);

/* ---- interpose.c ---------------------------------------------------- */
/* libhmm's own unmaps and madvises: straight to the kernel. */
int hmm__sys_munmap(void *addr, size_t len);
/* Device-resident and moving pages of [s, e) take protection @prot. */
void hmm__protect_range(uintptr_t s, uintptr_t e, int prot);

/* ---- ownmap.c ------------------------------------------------------- */
/* libhmm's own mappings, which the munmap/madvise/mprotect wrappers spare
 * when an application call covers them. */
void *hmm__mmap_own(size_t len, int prot, int flags, int fd, off_t off);
/* @len bytes of private anonymous read/write memory of libhmm's, 2 MiB
 * aligned (whole huge pages fit), reserved only as used; MAP_FAILED if
 * none.  hmm__munmap_own frees it. */
void *hmm__mmap_own_aligned(size_t len);
void hmm__own_add(void *p, size_t len);	/* a mapping made otherwise */
void hmm__munmap_own(void *p, size_t len);
/* Call @fn on each piece of [s, e) outside libhmm's mappings; returns the
 * first error. */
int hmm__outside_own(uintptr_t s, uintptr_t e,
		     int (*fn)(uintptr_t s, uintptr_t e, void *arg), void *arg);
/* Named @name (15 characters at most, "hmm-" first by convention). */
int hmm__thread_create(struct hmm_thread *t, void *(*fn)(void *), void *arg,
		       const char *name);
void hmm__thread_join(struct hmm_thread *t);
/* In the child of fork, where @t does not exist: start it again, and free
 * the stack the parent's thread had. */
int hmm__thread_respawn(struct hmm_thread *t, void *(*fn)(void *), void *arg,
			const char *name);
int hmm__sys_madvise(void *addr, size_t len, int advice);

/* ---- service.c ------------------------------------------------------ */
/* @after_fork: in the child, where the parent's service thread is gone. */
int hmm__service_start(bool after_fork);
/* Wait until the service thread has handled every message it has read. */
void hmm__service_sync(void);
void hmm__service_stop(void);

#endif /* HMM_INTERNAL_H */
