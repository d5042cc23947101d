/* SPDX-License-Identifier: MIT */
/*
 * Options: one table, each read from HMM_<NAME> on first use.  A bad value
 * is reported once and the default kept.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct hmm_option_desc {
	const char *name;	/* environment variable */
	long def, min, max;
	const char *help;
};

static const struct hmm_option_desc option_table[HMM_OPT__COUNT] = {
	[HMM_OPT_LOG_LEVEL] = { "HMM_LOG_LEVEL", 1, 0, 3,
		"0 quiet, 1 warnings, 2 info, 3 debug" },
	[HMM_OPT_STATS] = { "HMM_STATS", 0, 0, 1,
		"print every counter to stderr at exit" },
	[HMM_OPT_SIM_MEM_SIZE] = { "HMM_SIM_MEM_SIZE", 256L << 20, 1L << 12,
		1L << 40, "sim device memory, bytes (suffix K, M or G)" },
	[HMM_OPT_SIM_ENGINES] = { "HMM_SIM_ENGINES", 2, 1, 64,
		"engines (threads) per sim device" },
	[HMM_OPT_FAULT_AROUND] = { "HMM_FAULT_AROUND", 64L << 10, 0,
		2L << 20, "bytes brought back around a CPU fault (0 off)" },
	[HMM_OPT_MIGRATE_TIMEOUT_MS] = { "HMM_MIGRATE_TIMEOUT_MS", 10000, 1,
		3600000, "longest wait for a page in flight, ms" },
	[HMM_OPT_FORCE_USER_MODE] = { "HMM_FORCE_USER_MODE", 0, 0, 1,
		"open userfaultfd with UFFD_USER_MODE_ONLY even when privileged" },
	[HMM_OPT_USE_MOVE] = { "HMM_USE_MOVE", 0, 0, 1,
		"isolate anonymous pages with UFFDIO_MOVE when migrating "
		"(experimental: a hang under racing drops is open)" },
	[HMM_OPT_THP_MOVE] = { "HMM_THP_MOVE", 1, 0, 1,
		"move whole 2 MiB huge pages between the application and a "
		"movable device's memory (sim) instead of copying them" },
	[HMM_OPT_EVICT] = { "HMM_EVICT", 1, 0, 1,
		"when a migration finds device memory full, move the least "
		"recently used device pages to system memory first" },
	[HMM_OPT_FILE_SYNC_EACH] = { "HMM_FILE_SYNC_EACH", 0, 0, 1,
		"file mappings adopted from now on write device data back "
		"after every device command (as with HMM_FILE_SYNC_EACH)" },
	[HMM_OPT_THRASH_COUNT] = { "HMM_THRASH_COUNT", 3, 0, 1000,
		"ping-pongs in a row (a move to the preferred device, then a "
		"CPU fault back) after which a 2 MiB block stays in system "
		"memory and devices map it remotely (0: never)" },
	[HMM_OPT_THRASH_PIN_MS] = { "HMM_THRASH_PIN_MS", 1000, 1, 3600000,
		"how long a thrashing block stays pinned, ms" },
	[HMM_OPT_PEER_MIGRATE] = { "HMM_PEER_MIGRATE", 1, 0, 1,
		"a migration to a device takes anonymous and shared pages "
		"that are on another device straight from it (0: through "
		"system memory)" },
	[HMM_OPT_THRASH_THROTTLE_MS] = { "HMM_THRASH_THROTTLE_MS", 0, 0,
		3600000,
		"once a block ping-pongs, its next move to the preferred "
		"device waits this long after the last one, devices mapping "
		"it where it is meanwhile (0: no throttle)" },
	[HMM_OPT_FAULT_WORKERS] = { "HMM_FAULT_WORKERS", 0, 0, 8,
		"threads that bring device pages home for CPU faults next to "
		"the fault-service thread, when several faults wait at once "
		"(0, the default: the service thread alone)" },
	[HMM_OPT_SIM_LINK_GBPS] = { "HMM_SIM_LINK_GBPS", 0, 0, 100000,
		"sim devices opened from now on reach system memory over a "
		"link of this many GB/s (their reads and writes of system "
		"pages, and the driver's copies, take that long; 0: as fast "
		"as the host)" },
};

/* 0 not read yet, 1 default, 2 environment, 3 hmm_option_set */
static _Atomic int option_source[HMM_OPT__COUNT];
static _Atomic long option_value[HMM_OPT__COUNT];

static int parse_value(const char *s, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 0);
	if (errno || end == s)
		return -1;
	switch (*end) {
	case 'k': case 'K': v <<= 10; end++; break;
	case 'm': case 'M': v <<= 20; end++; break;
	case 'g': case 'G': v <<= 30; end++; break;
	default: break;
	}
	if (*end)
		return -1;
	*out = v;
	return 0;
}

long hmm__option(enum hmm_option opt)
{
	const struct hmm_option_desc *d = &option_table[opt];
	const char *env;
	long v;

	if (atomic_load_explicit(&option_source[opt], memory_order_acquire))
		return atomic_load_explicit(&option_value[opt],
					    memory_order_relaxed);
	v = d->def;
	env = getenv(d->name);
	int src = 1;
	if (env && *env) {
		long parsed;
		if (parse_value(env, &parsed) || parsed < d->min ||
		    parsed > d->max) {
			/* Not hmm__warn: that would recurse into LOG_LEVEL. */
			fprintf(stderr,
				"libhmm: ignoring %s=%s (expected %ld..%ld)\n",
				d->name, env, d->min, d->max);
		} else {
			v = parsed;
			src = 2;
		}
	}
	atomic_store_explicit(&option_value[opt], v, memory_order_relaxed);
	atomic_store_explicit(&option_source[opt], src, memory_order_release);
	return v;
}

void hmm_options_print(FILE *out)
{
	for (int i = 0; i < HMM_OPT__COUNT; i++) {
		long v = hmm__option((enum hmm_option)i);
		fprintf(out, "%-24s %-12ld %-11s %s\n", option_table[i].name, v,
			option_source[i] == 3   ? "program"
			: option_source[i] == 2 ? "environment"
						: "default",
			option_table[i].help);
	}
	/* The one option that is a string, read by trace.c at hmm_init. */
	const char *trace = getenv("HMM_TRACE");
	fprintf(out, "%-24s %-12s %-11s %s\n", "HMM_TRACE",
		trace && *trace ? trace : "(none)",
		trace && *trace ? "environment" : "default",
		"write a Chrome trace-event file of faults, migrations, "
		"invalidations and evictions there");
}

int hmm_option_set(const char *name, long value)
{
	if (!name)
		return -EINVAL;
	for (int i = 0; i < HMM_OPT__COUNT; i++) {
		const struct hmm_option_desc *d = &option_table[i];
		if (strcmp(name, d->name) && strcmp(name, d->name + 4))
			continue;
		if (value < d->min || value > d->max)
			return -ERANGE;
		atomic_store_explicit(&option_value[i], value,
				      memory_order_relaxed);
		atomic_store_explicit(&option_source[i], 3,
				      memory_order_release);
		return 0;
	}
	return -ENOENT;
}

int hmm_option_get(const char *name, long *value)
{
	if (!name || !value)
		return -EINVAL;
	for (int i = 0; i < HMM_OPT__COUNT; i++) {
		const struct hmm_option_desc *d = &option_table[i];
		if (strcmp(name, d->name) && strcmp(name, d->name + 4))
			continue;
		*value = hmm__option((enum hmm_option)i);
		return 0;
	}
	return -ENOENT;
}
