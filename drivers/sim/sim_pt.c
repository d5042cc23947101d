/* SPDX-License-Identifier: MIT */
/* The sim device's page table (see sim_pt.h). */
#include <errno.h>
#include <stdlib.h>

#include "sim_pt.h"
#include "internal.h"

#define LVL_BITS 9
#define LVL_SIZE (1u << LVL_BITS)
#define LEVELS 4		/* 4 x 9 bits: 36-bit page numbers (48-bit VA) */

struct dir {
	void *slot[LVL_SIZE];	/* struct dir *, or uint64_t[] at the last level */
	unsigned used;
};

static unsigned slot_of(uint64_t vpn, int level)
{
	return (unsigned)(vpn >> ((LEVELS - 1 - level) * LVL_BITS)) &
	       (LVL_SIZE - 1);
}

uint64_t sim_pt_lookup(const struct sim_pt *pt, uint64_t vpn)
{
	const struct dir *d = pt->root;

	if (vpn >> (LEVELS * LVL_BITS))
		return 0;
	for (int l = 0; d && l < LEVELS - 1; l++)
		d = d->slot[slot_of(vpn, l)];
	if (!d)
		return 0;
	return ((const uint64_t *)d->slot)[slot_of(vpn, LEVELS - 1)];
}

int sim_pt_set(struct sim_pt *pt, uint64_t vpn, uint64_t entry)
{
	struct dir **dp = (struct dir **)&pt->root, *d;

	if (vpn >> (LEVELS * LVL_BITS))
		return -EINVAL;
	for (int l = 0; l < LEVELS; l++) {
		if (!*dp) {
			*dp = calloc(1, sizeof(struct dir));
			if (!*dp)
				return -ENOMEM;
			pt->dirs++;
			hmm__stat_add(HMM_STAT_metadata_bytes,
				      sizeof(struct dir));
		}
		d = *dp;
		if (l == LEVELS - 1)
			break;
		if (!d->slot[slot_of(vpn, l)])
			d->used++;
		dp = (struct dir **)&d->slot[slot_of(vpn, l)];
	}
	uint64_t *e = &((uint64_t *)d->slot)[slot_of(vpn, LEVELS - 1)];
	if (!*e && entry) {
		d->used++;
		pt->entries++;
	} else if (*e && !entry) {
		d->used--;
		pt->entries--;
	}
	*e = entry;
	return 0;
}

/* Clear [s, e) under directory @d at @level covering vpns from @base.
 * Returns true if @d became empty (and was freed). */
static int clear_rec(struct sim_pt *pt, struct dir *d, int level,
		     uint64_t base, uint64_t s, uint64_t e)
{
	uint64_t span = 1ULL << ((LEVELS - 1 - level) * LVL_BITS);

	unsigned first = s > base ? (unsigned)((s - base) / span) : 0;
	uint64_t last = (e - base + span - 1) / span;

	if (last > LVL_SIZE)
		last = LVL_SIZE;
	for (unsigned i = first; i < last; i++) {
		uint64_t lo = base + i * span;
		if (level == LEVELS - 1) {
			uint64_t *ent = &((uint64_t *)d->slot)[i];
			if (*ent) {
				*ent = 0;
				d->used--;
				pt->entries--;
			}
		} else if (d->slot[i]) {
			if (clear_rec(pt, d->slot[i], level + 1, lo, s, e)) {
				d->slot[i] = NULL;
				d->used--;
			}
		}
	}
	if (d->used == 0) {
		free(d);
		pt->dirs--;
		hmm__stat_sub(HMM_STAT_metadata_bytes, sizeof(struct dir));
		return 1;
	}
	return 0;
}

void sim_pt_clear(struct sim_pt *pt, uint64_t s, uint64_t e)
{
	if (pt->root && s < e && clear_rec(pt, pt->root, 0, 0, s, e))
		pt->root = NULL;
}

void sim_pt_destroy(struct sim_pt *pt)
{
	sim_pt_clear(pt, 0, 1ULL << (LEVELS * LVL_BITS));
}
