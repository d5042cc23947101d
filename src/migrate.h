/* SPDX-License-Identifier: MIT */
/* Shared by the two halves of the migration engine (migrate.c: towards a
 * device; migrate_sys.c: towards system memory, and dropping). */
#ifndef HMM_MIGRATE_H
#define HMM_MIGRATE_H

#include <time.h>

#include "internal.h"

/* The pages of one block a migration works on. */
struct sel {
	unsigned idx[HMM_BLOCK_PAGES];	/* page indices, ascending */
	uint32_t dpfn[HMM_BLOCK_PAGES];
	unsigned char flag[HMM_BLOCK_PAGES]; /* per page, caller's use */
	size_t n;
	unsigned dev;	/* to system: the device all n pages are on (read
			 * with them under block.lock: b->dev's NOREAD bit
			 * changes under it meanwhile) */
};

/* Whether @sel is a whole block whose page k is device page dpfn[0] + k,
 * dpfn[0] starting a 2 MiB chunk: one huge page's worth (thp.c). */
static inline bool sel_whole_chunk(const struct sel *sel)
{
	if (sel->n != HMM_BLOCK_PAGES ||
	    (sel->dpfn[0] & (HMM_BLOCK_PAGES - 1)))
		return false;
	for (size_t k = 1; k < sel->n; k++)
		if (sel->dpfn[k] != sel->dpfn[0] + k)
			return false;
	return true;
}

static inline uintptr_t sel_va(const struct hmm_block *b, unsigned idx)
{
	return b->base + ((uintptr_t)idx << HMM_PAGE_SHIFT);
}

/* The length of the run of consecutive pages starting at sel index k. */
static inline size_t sel_run(const struct sel *s, size_t k)
{
	size_t n = 1;

	while (k + n < s->n && s->idx[k + n] == s->idx[k] + n)
		n++;
	return n;
}

static inline void deadline_in(struct timespec *ts, long ms)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

static inline bool past(const struct timespec *deadline)
{
	struct timespec now;

	clock_gettime(CLOCK_REALTIME, &now);
	return now.tv_sec > deadline->tv_sec ||
	       (now.tv_sec == deadline->tv_sec &&
		now.tv_nsec >= deadline->tv_nsec);
}

/* Wait for a migration or fill in @b to end.  Called and returns with
 * b->lock held.  Returns 0, or -ETIMEDOUT. */
static inline int wait_block(struct hmm_block *b,
			     const struct timespec *deadline)
{
	int r = pthread_cond_timedwait(&b->cond, &b->lock, deadline);
	return r == ETIMEDOUT ? -ETIMEDOUT : 0;
}

/* migrate.c */
/* If @from was forwarded by mremap, remove the record and return the new
 * address; else 0. */
uintptr_t hmm__forward_take(uintptr_t from);
/* Settle a page that mremap moved while in flight, at its new address: in
 * system memory if it is present there (the data moved with the page
 * tables) or @dev is NULL, else on the device (@dpfn of @dev).  Returns
 * true if @dpfn is now used there. */
bool hmm__forward_commit(uintptr_t to, hmm_device_t *dev, uint8_t devbits,
			 uint32_t dpfn, uint8_t st);
/* Drop the system copies of the runs of @s that have flag[k] set, as
 * libhmm's own zap; @zaps gets one record per run (popped by the caller
 * after its commit).  Returns 0 or -errno (some runs may be dropped). */
int hmm__zap_runs(const struct hmm_mrange *r, struct hmm_block *b,
		  const struct sel *s, struct hmm_zap *zaps, size_t *nzaps);

#endif
