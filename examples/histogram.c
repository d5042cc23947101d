/* SPDX-License-Identifier: MIT */
/*
 * A histogram built by device atomics while CPU threads read it and add to
 * it: libhmm's exclusive access for device atomics (hmm_exclusive_begin)
 * at work, in either mode.
 *
 * Two sim devices take items from their own streams in batches; for each
 * batch a device takes the histogram for atomics (if the other device has
 * it, the batch runs without a hold: device atomics stay atomic anyway),
 * adds one to each item's bin with hmm_sim_atomic_add (or a compare-and-swap
 * loop, every fourth item), and lets go.  Meanwhile CPU threads read bins
 * (a bin never goes down) and add items of their own with CPU atomics: in
 * read-only mode those writes wait for the device's hold (or revoke it
 * after --timeout-ms), in revoke mode they end it.  At the end every bin
 * must equal the count computed on the CPU alone from the same streams.
 *
 *   histogram [--mode readonly|revoke] [--timeout-ms N] [--items N]
 *             [--batch N] [--seed S]
 *
 * Exit status 0 when every bin is exact, 1 otherwise, 77 when the machine
 * lacks what the mode needs.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#define NBINS 4096
#define NDEV 2
#define NCPU 2

static struct {
	int mode;
	long timeout_ms;
	uint64_t items;		/* per device */
	uint64_t batch;
	uint64_t seed;
} opt = { HMM_EXCL_READONLY, 0, 20000, 500, 1 };

static uint64_t *bins;		/* managed: the histogram */
static size_t bins_len;
static hmm_device_t *devs[NDEV];
static atomic_bool stop;
static atomic_ulong holds, unheld, cpu_items, reads, errors;
static uint64_t cpu_done[NCPU];	/* items each CPU thread added */

/* Item @i of stream @s, and its bin: a skewed distribution. */
static uint64_t item(uint64_t s, uint64_t i)
{
	uint64_t x = (s + 1) * 0x9e3779b97f4a7c15ULL ^ (i + opt.seed) *
						       0xbf58476d1ce4e5b9ULL;
	x ^= x >> 31;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 29;
	return x;
}

static unsigned bin_of(uint64_t x)
{
	/* Two thirds of the items fall in the first 64 bins: contention. */
	return (x % 3) ? (unsigned)(x >> 8) % 64 : (unsigned)(x >> 8) % NBINS;
}

static void *device_main(void *arg)
{
	int k = (int)(intptr_t)arg;
	hmm_device_t *dev = devs[k];

	for (uint64_t i = 0; i < opt.items; i += opt.batch) {
		uint64_t n = opt.items - i < opt.batch ? opt.items - i
						       : opt.batch;
		int r = hmm_exclusive_begin(bins, bins_len, dev, opt.mode,
					    opt.timeout_ms);
		if (r && r != -EBUSY) {
			fprintf(stderr, "device %d: hmm_exclusive_begin: %s\n",
				k, strerror(-r));
			atomic_fetch_add(&errors, 1);
		}
		atomic_fetch_add(r ? &unheld : &holds, 1);
		for (uint64_t j = i; j < i + n; j++) {
			uint64_t *w = &bins[bin_of(item((uint64_t)k, j))];
			uint64_t old, cur = 0;
			int a;
			if (j % 4) {
				a = hmm_sim_atomic_add(dev, w, 1, &old);
			} else {
				do {
					a = hmm_sim_atomic_cas(dev, w, cur,
							       cur + 1, &old);
				} while (!a && old != cur && (cur = old, 1));
			}
			if (a) {
				fprintf(stderr, "device %d: atomic: %s\n", k,
					strerror(-a));
				atomic_fetch_add(&errors, 1);
			}
		}
		if (!r && hmm_exclusive_end(bins, bins_len, dev) < 0)
			atomic_fetch_add(&errors, 1);
	}
	return NULL;
}

static void *cpu_main(void *arg)
{
	int k = (int)(intptr_t)arg;
	uint64_t n = 0, rs = 0x1234567 + (uint64_t)k;

	while (!atomic_load(&stop)) {
		rs ^= rs << 13;
		rs ^= rs >> 7;
		rs ^= rs << 17;
		unsigned b = (unsigned)(rs % NBINS);
		uint64_t a = __atomic_load_n(&bins[b], __ATOMIC_SEQ_CST);
		uint64_t c = __atomic_load_n(&bins[b], __ATOMIC_SEQ_CST);
		if (c < a) {
			fprintf(stderr, "bin %u went down: %lu then %lu\n", b,
				(unsigned long)a, (unsigned long)c);
			atomic_fetch_add(&errors, 1);
		}
		atomic_fetch_add(&reads, 1);
		if (rs % 16 == 0) {
			uint64_t x = item((uint64_t)(NDEV + k), n++);
			__atomic_fetch_add(&bins[bin_of(x)], 1,
					   __ATOMIC_SEQ_CST);
			atomic_fetch_add(&cpu_items, 1);
		}
	}
	cpu_done[k] = n;
	return NULL;
}

static void usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"usage: %s [--mode readonly|revoke] [--timeout-ms N] "
		"[--items N] [--batch N] [--seed S]\n"
		"  --mode        how the CPU meets a device's hold: readonly "
		"(writes wait) or revoke (any access ends it)\n"
		"  --timeout-ms  readonly: a write that waited this long "
		"revokes the hold (0: wait for ever)\n"
		"  --items       items per device (default 20000)\n"
		"  --batch       items per hold (default 500)\n",
		argv0);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "mode", required_argument, NULL, 'm' },
		{ "timeout-ms", required_argument, NULL, 't' },
		{ "items", required_argument, NULL, 'n' },
		{ "batch", required_argument, NULL, 'b' },
		{ "seed", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	pthread_t dt[NDEV], ct[NCPU];
	uint64_t *expect;
	size_t bad = 0;
	int c, r;

	while ((c = getopt_long(argc, argv, "m:t:n:b:s:h", lo, NULL)) != -1) {
		switch (c) {
		case 'm':
			if (!strcmp(optarg, "readonly"))
				opt.mode = HMM_EXCL_READONLY;
			else if (!strcmp(optarg, "revoke"))
				opt.mode = HMM_EXCL_REVOKE;
			else {
				usage(stderr, argv[0]);
				return 2;
			}
			break;
		case 't': opt.timeout_ms = strtol(optarg, NULL, 0); break;
		case 'n': opt.items = strtoull(optarg, NULL, 0); break;
		case 'b': opt.batch = strtoull(optarg, NULL, 0); break;
		case 's': opt.seed = strtoull(optarg, NULL, 0); break;
		case 'h': usage(stdout, argv[0]); return 0;
		default: usage(stderr, argv[0]); return 2;
		}
	}
	if (!opt.batch || opt.timeout_ms < 0) {
		usage(stderr, argv[0]);
		return 2;
	}
	r = hmm_init();
	if (r) {
		fprintf(stderr, "hmm_init: %s\n", strerror(-r));
		return r == -EPERM || r == -EOPNOTSUPP ? 77 : 1;
	}
	if (opt.mode == HMM_EXCL_READONLY && !(hmm_caps() & HMM_CAP_WP)) {
		fprintf(stderr, "readonly mode needs userfaultfd "
				"write-protection, which this kernel lacks\n");
		return 77;
	}
	bins_len = NBINS * sizeof(uint64_t);
	bins = mmap(NULL, bins_len, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (bins == MAP_FAILED || (r = hmm_range_adopt(bins, bins_len, 0))) {
		fprintf(stderr, "managed memory: %s\n", strerror(-r));
		return 1;
	}
	for (int k = 0; k < NDEV; k++)
		if ((r = hmm_device_open("sim", NULL, &devs[k]))) {
			fprintf(stderr, "hmm_device_open: %s\n", strerror(-r));
			return 1;
		}

	double t0 = now_s();
	for (int k = 0; k < NCPU; k++)
		pthread_create(&ct[k], NULL, cpu_main, (void *)(intptr_t)k);
	for (int k = 0; k < NDEV; k++)
		pthread_create(&dt[k], NULL, device_main, (void *)(intptr_t)k);
	for (int k = 0; k < NDEV; k++)
		pthread_join(dt[k], NULL);
	atomic_store(&stop, true);
	for (int k = 0; k < NCPU; k++)
		pthread_join(ct[k], NULL);
	double t = now_s() - t0;

	/* The same histogram, by the CPU alone. */
	expect = calloc(NBINS, sizeof(*expect));
	for (int k = 0; k < NDEV; k++)
		for (uint64_t j = 0; j < opt.items; j++)
			expect[bin_of(item((uint64_t)k, j))]++;
	for (int k = 0; k < NCPU; k++)
		for (uint64_t j = 0; j < cpu_done[k]; j++)
			expect[bin_of(item((uint64_t)(NDEV + k), j))]++;
	for (unsigned b = 0; b < NBINS; b++)
		if (bins[b] != expect[b] && bad++ < 5)
			fprintf(stderr, "bin %u: %lu, expected %lu\n", b,
				(unsigned long)bins[b],
				(unsigned long)expect[b]);

	uint64_t waited = 0, revoked = 0, timed_out = 0;
	hmm_stat_get("cpu_writes_held", &waited);
	hmm_stat_get("holds_revoked", &revoked);
	hmm_stat_get("holds_timed_out", &timed_out);
	printf("mode %s%s: %lu device items (%d devices), %lu CPU items, "
	       "%lu CPU reads in %.2f s\n",
	       opt.mode == HMM_EXCL_READONLY ? "readonly" : "revoke",
	       opt.timeout_ms ? " with timeout" : "",
	       (unsigned long)(NDEV * opt.items), NDEV,
	       (unsigned long)atomic_load(&cpu_items),
	       (unsigned long)atomic_load(&reads), t);
	printf("holds: %lu taken, %lu batches without one (the other device "
	       "had it); CPU writes that waited: %lu; pages revoked: %lu; "
	       "holds timed out: %lu\n",
	       (unsigned long)atomic_load(&holds),
	       (unsigned long)atomic_load(&unheld), (unsigned long)waited,
	       (unsigned long)revoked, (unsigned long)timed_out);
	printf("histogram: %d bins, %zu wrong, %lu errors\n", NBINS, bad,
	       (unsigned long)atomic_load(&errors));
	/* The holds must have mattered: CPU writes waited for them
	 * (read-only), or CPU accesses ended them (revoke). */
	if (atomic_load(&holds) &&
	    (opt.mode == HMM_EXCL_READONLY ? waited : revoked) == 0) {
		fprintf(stderr, "no CPU access ever met a hold\n");
		bad++;
	}
	free(expect);
	for (int k = 0; k < NDEV; k++)
		hmm_device_close(devs[k]);
	return bad || atomic_load(&errors) ? 1 : 0;
}
