/* SPDX-License-Identifier: MIT */
/* Counters: defined once in HMM_STATS_LIST (internal.h). */
#include <stdio.h>
#include <string.h>

#include "internal.h"

_Atomic uint64_t hmm__stats[HMM_STAT__COUNT];

static const char *const stat_names[HMM_STAT__COUNT] = {
#define HMM_STAT_NAME(n, g, d) #n,
	HMM_STATS_LIST(HMM_STAT_NAME)
#undef HMM_STAT_NAME
};

static const unsigned char stat_gauge[HMM_STAT__COUNT] = {
#define HMM_STAT_GAUGE(n, g, d) g,
	HMM_STATS_LIST(HMM_STAT_GAUGE)
#undef HMM_STAT_GAUGE
};

int hmm_stat_get(const char *name, uint64_t *value)
{
	if (!name || !value)
		return -EINVAL;
	for (int i = 0; i < HMM_STAT__COUNT; i++) {
		if (!strcmp(name, stat_names[i])) {
			*value = atomic_load(&hmm__stats[i]);
			return 0;
		}
	}
	return -ENOENT;
}

void hmm_stats_print(FILE *out)
{
	for (int i = 0; i < HMM_STAT__COUNT; i++)
		fprintf(out, "%s %llu\n", stat_names[i],
			(unsigned long long)atomic_load(&hmm__stats[i]));
}

void hmm_stats_reset(void)
{
	for (int i = 0; i < HMM_STAT__COUNT; i++)
		if (!stat_gauge[i])
			atomic_store(&hmm__stats[i], 0);
}
