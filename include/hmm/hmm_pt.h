/* SPDX-License-Identifier: MIT */
/*
 * The driver kit's device page table: a multi-level table keyed by virtual
 * page number (36 bits: 48-bit addresses, 4 KiB pages) whose entries are
 * 64-bit values: a device address or frame in the low 52 bits and flags
 * above (HMM_PTE_*, which match hmm_range_fault's HMM_PFN_* bits, so a
 * driver may store hmm_pfns as they come).  An entry of 0 is empty.
 *
 * Locking:
 *  - Writers (set, clear, harvest, reclaim) are serialised by the table's
 *    own mutex; they may run concurrently with readers.
 *  - Readers (lookup, mark_dirty, walk) run inside hmm_pt_read_lock() /
 *    hmm_pt_read_unlock() (userspace RCU, liburcu's "bulletproof" flavour:
 *    any thread, no registration), or while holding a lock of the
 *    driver's that excludes every writer of the table.  A read section
 *    must not block on a writer of the same table.  An entry read is one
 *    atomic 64-bit load: it is the old or the new value, never a mix.
 *  - Directories that a clear empties are unlinked at once and freed by
 *    hmm_pt_reclaim(), which waits for the read sections in progress; set
 *    calls it by itself when many are pending, so clear never waits and
 *    may be called where waiting is not allowed (a non-blockable
 *    invalidation).
 *
 * Memory: 4 KiB per 512 entries; about 1 KiB where the 512 entries'
 * addresses run on from one base (an IOMMU's links of a DMA map, a
 * device's translations through an IOVA window), which the table keeps
 * compact until an entry that does not fit arrives.
 *
 * Dirty tracking: a device that writes through an entry calls
 * hmm_pt_mark_dirty (an atomic OR of HMM_PTE_DIRTY); hmm_pt_harvest_dirty
 * and hmm_pt_clear report dirty entries and clear the bit atomically, so
 * no mark is lost between a write and a harvest.
 *
 * Errors: -EINVAL (page number beyond 36 bits, start > end, an empty
 * entry given to set, NULL table), -ENOMEM, -ENOENT (mark_dirty of an
 * empty entry).
 */
#ifndef HMM_HMM_PT_H
#define HMM_HMM_PT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HMM_PTE_VALID	(1ULL << 63) /* = HMM_PFN_VALID */
#define HMM_PTE_WRITE	(1ULL << 62) /* = HMM_PFN_WRITE */
#define HMM_PTE_DEVICE	(1ULL << 60) /* = HMM_PFN_DEVICE: device-resident */
#define HMM_PTE_DIRTY	(1ULL << 58) /* written since the last harvest */
#define HMM_PTE_ATOMIC	(1ULL << 52) /* exclusive for device atomics */
#define HMM_PTE_ADDR_MASK ((1ULL << 52) - 1)
#define HMM_PT_VPN_BITS 36

struct hmm_pt;

/* A table, empty.  0 or -ENOMEM. */
int hmm_pt_create(struct hmm_pt **out);
/* Free the table; no reader or writer may use it any more. */
void hmm_pt_destroy(struct hmm_pt *pt);

void hmm_pt_read_lock(void);
void hmm_pt_read_unlock(void);

/* The entry of page @vpn, or 0. */
uint64_t hmm_pt_lookup(struct hmm_pt *pt, uint64_t vpn);

/* Entries of pages [@vpn, @vpn + @n) from @entries (none may be 0).  All
 * or nothing: on -ENOMEM no entry changed.  Returns 0 or -errno. */
int hmm_pt_set(struct hmm_pt *pt, uint64_t vpn, uint64_t n,
	       const uint64_t *entries);

typedef void (*hmm_pt_fn)(uint64_t vpn, uint64_t entry, void *arg);

/* Empty pages [@start, @end); @dirty (if not NULL) is called for each
 * entry that was dirty, with its last value.  Returns the entries
 * cleared, or -EINVAL. */
long hmm_pt_clear(struct hmm_pt *pt, uint64_t start, uint64_t end,
		  hmm_pt_fn dirty, void *arg);

/* @fn on every entry of [@start, @end), in order, inside one read section
 * (so @fn must not wait for a writer of @pt).  Returns the entries
 * visited. */
long hmm_pt_walk(struct hmm_pt *pt, uint64_t start, uint64_t end,
		 hmm_pt_fn fn, void *arg);

/* Clear HMM_PTE_DIRTY in [@start, @end), calling @fn for each entry that
 * had it.  Returns the number of dirty entries. */
long hmm_pt_harvest_dirty(struct hmm_pt *pt, uint64_t start, uint64_t end,
			  hmm_pt_fn fn, void *arg);

/* A device wrote through the entry of @vpn: 0, or -ENOENT if it is empty
 * (the write raced an invalidation: the driver refaults). */
int hmm_pt_mark_dirty(struct hmm_pt *pt, uint64_t vpn);

/* Free the directories that clears emptied, once no read section that
 * could still see them is running. */
void hmm_pt_reclaim(struct hmm_pt *pt);

/* Entries held, and bytes of memory the table uses (directories). */
uint64_t hmm_pt_count(struct hmm_pt *pt);
size_t hmm_pt_bytes(struct hmm_pt *pt);

#ifdef __cplusplus
}
#endif
#endif /* HMM_HMM_PT_H */
