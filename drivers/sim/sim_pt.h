/* SPDX-License-Identifier: MIT */
/*
 * The sim device's page table: a four-level radix tree keyed by virtual
 * page number, with hmm_range_fault entries (HMM_PFN_* flags and a frame)
 * in its leaves.  Not thread-safe: the mirror lock protects it.
 */
#ifndef HMM_SIM_PT_H
#define HMM_SIM_PT_H

#include <stdint.h>

struct sim_pt {
	void *root;		/* level-0 directory, or NULL */
	uint64_t entries;	/* valid leaf entries */
	uint64_t dirs;		/* directories allocated */
};

uint64_t sim_pt_lookup(const struct sim_pt *pt, uint64_t vpn);
int sim_pt_set(struct sim_pt *pt, uint64_t vpn, uint64_t entry);
void sim_pt_clear(struct sim_pt *pt, uint64_t vpn_start, uint64_t vpn_end);
void sim_pt_destroy(struct sim_pt *pt);

#endif
