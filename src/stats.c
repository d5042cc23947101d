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

long hmm_stats_json(char *buf, size_t len)
{
	size_t need = 0;

	if (!buf && len)
		return -EINVAL;
	/* One pass that counts what it writes, snprintf-like: with a short
	 * buffer the caller learns the size it needs. */
	for (int i = 0; i <= HMM_STAT__COUNT; i++) {
		char item[128];
		int n;

		if (i == HMM_STAT__COUNT)
			n = snprintf(item, sizeof(item), "}");
		else
			n = snprintf(item, sizeof(item), "%s\"%s\": %llu",
				     i ? ", " : "{", stat_names[i],
				     (unsigned long long)atomic_load(
					     &hmm__stats[i]));
		if (n < 0 || (size_t)n >= sizeof(item))
			return -EINVAL; /* cannot happen: names are short */
		if (need + 1 < len) {
			size_t room = len - 1 - need;
			memcpy(buf + need, item,
			       (size_t)n < room ? (size_t)n : room);
		}
		need += (size_t)n;
	}
	if (len)
		buf[need < len ? need : len - 1] = '\0';
	return (long)need;
}

void hmm_stats_reset(void)
{
	for (int i = 0; i < HMM_STAT__COUNT; i++)
		if (!stat_gauge[i])
			atomic_store(&hmm__stats[i], 0);
}
