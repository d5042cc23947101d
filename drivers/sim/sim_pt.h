/* SPDX-License-Identifier: MIT */
/*
 * The sim device's page table, and the dmirror mirrors': the driver kit's
 * table (hmm/hmm_pt.h) holding hmm_range_fault entries as they come.
 * Users keep every access under their mirror lock, which excludes the
 * writers: no read sections are needed.
 */
#ifndef HMM_SIM_PT_H
#define HMM_SIM_PT_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#include "hmm/hmm_pt.h"

struct sim_pt {
	struct hmm_pt *t;	/* created with the first entry */
};

static inline uint64_t sim_pt_lookup(const struct sim_pt *pt, uint64_t vpn)
{
	return pt->t ? hmm_pt_lookup(pt->t, vpn) : 0;
}

/* Entries of [vpn, vpn + n); a 0 empties its page. */
static inline int sim_pt_set_many(struct sim_pt *pt, uint64_t vpn, size_t n,
				  const uint64_t *entries)
{
	if (!pt->t && hmm_pt_create(&pt->t))
		return -ENOMEM;
	for (size_t k = 0; k < n;) {
		size_t j = k;
		int ret = 0;
		if (!entries[k]) {
			while (j < n && !entries[j])
				j++;
			hmm_pt_clear(pt->t, vpn + k, vpn + j, NULL, NULL);
		} else {
			while (j < n && entries[j])
				j++;
			ret = hmm_pt_set(pt->t, vpn + k, j - k, entries + k);
		}
		if (ret)
			return ret;
		k = j;
	}
	return 0;
}

static inline int sim_pt_set(struct sim_pt *pt, uint64_t vpn, uint64_t entry)
{
	return sim_pt_set_many(pt, vpn, 1, &entry);
}

static inline void sim_pt_clear(struct sim_pt *pt, uint64_t s, uint64_t e)
{
	if (pt->t)
		hmm_pt_clear(pt->t, s, e, NULL, NULL);
}

static inline void sim_pt_destroy(struct sim_pt *pt)
{
	hmm_pt_destroy(pt->t);
	pt->t = NULL;
}

/* In the child of fork: the parent's table (whose lock a thread of the
 * parent may hold) is left behind, copied on write; start empty. */
static inline void sim_pt_forget(struct sim_pt *pt)
{
	pt->t = NULL;
}

#endif
