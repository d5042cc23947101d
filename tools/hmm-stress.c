/* SPDX-License-Identifier: MIT */
/*
 * hmm-stress: a verifying stress test of libhmm.
 *
 * CPU threads and sim devices read, write and atomically add over managed
 * memory while other threads migrate it both ways, drop it (madvise),
 * unmap and map it again, write-protect it and fork children that check
 * it.  Every word is checked against a shadow copy kept in plain memory.
 *
 * The model, and why the shadow stays exact under concurrency:
 *
 *  - Memory is R regions of P pages.  Even regions are private anonymous
 *    memory (mmap + hmm_range_adopt), odd ones are libhmm's shared memory
 *    (hmm_mem_alloc).  With --files, regions cycle through four kinds: those
 *    two, a memfd and an unlinked file in /var/tmp, each mapped MAP_SHARED
 *    and managed with hmm_file_adopt; a remap of a file region is munmap
 *    (which writes the device's data back) and mmap of the same file, and
 *    keeps the data.  Each region has a shadow: a plain array of words.
 *
 *  - Ownership.  The words of a region are cut into runs of RUN_WORDS
 *    words (384 bytes, so runs straddle page boundaries); run k belongs to
 *    worker k % T.  Only the owner changes a word: by a CPU store, a CPU
 *    atomic add, a device write, fill, copy, atomic add or compare-and-swap.
 *    It updates the shadow once the operation returned 0, and checks its
 *    words by CPU reads and device reads.  Pages are thus shared by all
 *    workers, each touching its own words, while pages move underneath.
 *    A device command that fails must have changed nothing: the owner
 *    checks that too.
 *
 *  - Region locks.  A worker holds its region's rwlock for reading around
 *    each operation.  Operations that change data or mappings behind the
 *    owners' backs (madvise, munmap + mmap, hmm_mem_free + hmm_mem_alloc,
 *    mprotect, mlock + munlock, release + adopt) hold it for writing, and
 *    apply their effect to the whole shadow: zero after a private
 *    MADV_DONTNEED, a remap or a shared MADV_REMOVE; unchanged after a
 *    shared MADV_DONTNEED (shmem keeps its data, see src/interpose.c) or
 *    anything else.
 *
 *  - Migrations change no data.  Migrators move random sub-ranges to a
 *    random device or home, half of the time without any lock (then the
 *    region may be remapped or protected meanwhile, and -ENOENT or -EFAULT
 *    are fine) and half under the read lock (then only -ENOMEM and -EBUSY
 *    are).  Other errors are failures.
 *
 *  - fork.  The forker takes every region lock for writing, so that memory
 *    matches the shadow, and forks.  The child's private memory and its
 *    shadow are a snapshot of that moment; its shared memory is not (the
 *    parent keeps writing it), so the parent keeps the shared regions
 *    locked until the child has checked them and says so through a pipe.
 *    The child checks every word by CPU reads and some pages by device
 *    reads on its inherited device handles, then exits with its count of
 *    mismatches.  The parent reaps it later; one alive after
 *    --hang-seconds is a hang.
 *
 *  - A watchdog.  Every thread publishes a heartbeat and what it is doing
 *    ("hmm_sim_atomic_add dev1 region 3 page 17").  One that makes no
 *    progress for --hang-seconds gets everyone's state printed, and the
 *    run ends with status 3.
 *
 *  - At the end everything stops, every word is checked by the CPU and by
 *    a device, hmm_fini() brings every page home and every word is checked
 *    again with plain reads.
 *
 * Every thread draws its operations from its own PRNG, seeded from the
 * seed and its index, so that a failure can be retried with the same seed;
 * the interleavings of threads still differ from run to run.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#define PG HMM_PAGE_SIZE
#define PAGE_WORDS (PG / 8)
#define RUN_WORDS 48		/* 384 bytes: runs straddle page boundaries */
#define MAX_THREADS 64
#define MAX_DEVICES 8
#define MIGRATORS 2
#define MAX_CHILDREN 4
#define MAX_REPORTS 20		/* mismatches printed without --verbose */
#define DEV_SPAN_WORDS (2 * PAGE_WORDS) /* longest device read of a worker */

#if defined(__SANITIZE_ADDRESS__)
#define QUIESCE_FORK 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define QUIESCE_FORK 1
#endif
#endif
#ifndef QUIESCE_FORK
#define QUIESCE_FORK 0
#endif

#ifdef __SANITIZE_THREAD__
/* libhmm starts its service thread again in a forked child, which TSan
 * refuses by default (TSAN_OPTIONS from the environment still apply). */
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
	return "die_after_fork=0";
}
#endif

/* ------------------------------------------------------------------ */
/* Options, counters, threads                                          */
/* ------------------------------------------------------------------ */

static struct {
	unsigned long seconds, hang_seconds, size_mib;
	uint64_t seed;
	unsigned int threads, devices, regions;
	bool fork, verbose, files, thp;
} opt = {
	.seconds = 10, .hang_seconds = 30, .size_mib = 64,
	.threads = 4, .devices = 2, .regions = 8, .fork = true,
};

/* Operation kinds (counted in "operations"), then documented refusals. */
#define KINDS(X)							\
	X(CPU_READ, "cpu_rd") X(CPU_WRITE, "cpu_wr") X(CPU_ADD, "cpu_add")	\
	X(DEV_READ, "dev_rd") X(DEV_WRITE, "dev_wr") X(DEV_FILL, "dev_fill")	\
	X(DEV_ADD, "dev_add") X(DEV_CAS, "dev_cas") X(DEV_COPY, "dev_cpy")	\
	X(MIGRATE, "migrate") X(MADVISE, "madvise") X(REMAP, "remap")	\
	X(MPROTECT, "mprotect") X(MLOCK, "mlock") X(RELEASE, "release")	\
	X(SWEEP, "sweep") X(DEVLOCK, "devlock") X(EXCL, "excl")		\
	X(FORK, "fork") X(ADVISE, "advise")				\
	X(DEV_REFUSED, "dev_err") X(MIG_REFUSED, "mig_err")
#define X_ENUM(e, s) K_##e,
#define X_NAME(e, s) s,
enum kind { KINDS(X_ENUM) NKINDS };
static const char *const kind_name[] = { KINDS(X_NAME) };
#define NOPS K_DEV_REFUSED	/* kinds before this one are operations */

/*
 * One per thread.  The activity fields and the counters are written by
 * their thread only and read by the watchdog and the progress printer:
 * relaxed atomics, each a value of its own.
 */
struct thr {
	char name[24];
	unsigned int index;		/* worker index, or PRNG stream */
	uint64_t rng;
	pthread_t tid;
	uint64_t *buf;			/* DEV_SPAN_WORDS words, plain memory */
	_Atomic(const char *) what;	/* current operation (static string) */
	atomic_int dev, region;
	atomic_long page;
	atomic_ulong beat;		/* bumped after each step */
	atomic_bool live;		/* watched by the watchdog */
	atomic_ulong cnt[NKINDS];
} __attribute__((aligned(64)));

struct region {
	pthread_rwlock_t lock;	/* read: owners' operations; write: the rest */
	_Atomic(uint64_t *) mem; /* changes under the write lock only */
	uint64_t *shadow;	/* word w: its owner under the read lock, or
				 * anyone under the write lock */
	bool shared;		/* not private anonymous memory */
	int kind;		/* R_* */
	int fd;			/* R_MEMFD, R_DISK: the file */
};
enum { R_ANON, R_SHM, R_MEMFD, R_DISK };

static struct region *regions;
static size_t region_words, region_len;
static hmm_device_t *devs[MAX_DEVICES];
static struct thr *thr;		/* [0] main, then workers, migrators, ... */
static unsigned int nthr;
static atomic_bool stop, watchdog_stop;
static atomic_ulong mismatches, hangs, reports;

/* Children waiting to be reaped (the forker's only). */
static struct child {
	pid_t pid;
	double start;
} children[MAX_CHILDREN];
static unsigned int nchildren;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t rnd64(struct thr *t)
{
	uint64_t x = t->rng;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	t->rng = x;
	return x * 0x2545f4914f6cdd1dULL;
}

static size_t rnd(struct thr *t, size_t n)
{
	return n ? rnd64(t) % n : 0;
}

static void act(struct thr *t, const char *what, int dev, int region,
		long page)
{
	atomic_store_explicit(&t->what, what, memory_order_relaxed);
	atomic_store_explicit(&t->dev, dev, memory_order_relaxed);
	atomic_store_explicit(&t->region, region, memory_order_relaxed);
	atomic_store_explicit(&t->page, page, memory_order_relaxed);
}

static void beat(struct thr *t)
{
	atomic_fetch_add_explicit(&t->beat, 1, memory_order_relaxed);
}

static void count(struct thr *t, enum kind k)
{
	atomic_fetch_add_explicit(&t->cnt[k], 1, memory_order_relaxed);
}

static uint64_t total(enum kind k)
{
	uint64_t n = 0;

	for (unsigned int i = 0; i < nthr; i++)
		n += atomic_load_explicit(&thr[i].cnt[k], memory_order_relaxed);
	return n;
}

static uint64_t total_ops(void)
{
	uint64_t n = 0;

	for (int k = 0; k < NOPS; k++)
		n += total(k);
	return n;
}

/* Sleep @ms, beating meanwhile; nap() returns early when told to stop. */
static void sleep_beat(struct thr *t, unsigned int ms, bool stoppable)
{
	while (ms && !(stoppable && atomic_load(&stop))) {
		unsigned int step = ms > 50 ? 50 : ms;
		struct timespec ts = { 0, step * 1000000L };

		nanosleep(&ts, NULL);
		ms -= step;
		beat(t);
	}
}

static void nap(struct thr *t, unsigned int ms)
{
	sleep_beat(t, ms, true);
}

/*
 * CPU accesses to managed memory: relaxed atomics, never cached.  They are
 * left out of ThreadSanitizer's view: what orders them with libhmm's page
 * copies is userfaultfd write-protection and unmapping, which TSan cannot
 * see, so that every copy would look like a race.  TSan still checks
 * libhmm's own state and this program's shadow and locks.
 */
#define NO_TSAN __attribute__((no_sanitize("thread"), noinline))

static NO_TSAN uint64_t ld(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static NO_TSAN void st(uint64_t *p, uint64_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELAXED);
}

static NO_TSAN uint64_t fetch_add(uint64_t *p, uint64_t v)
{
	return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

/* --skip: kinds of operations not to do, a bit each. */
static unsigned long skip_mask;

struct mix {
	enum kind k;
	unsigned int weight;
};

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* A kind from @m by weight, leaving out skipped ones; NKINDS if none. */
static enum kind pick(struct thr *t, const struct mix *m, size_t n)
{
	unsigned int sum = 0, x;

	for (size_t i = 0; i < n; i++)
		if (!(skip_mask & (1UL << m[i].k)))
			sum += m[i].weight;
	x = (unsigned int)rnd(t, sum);
	for (size_t i = 0; sum && i < n; i++) {
		if (skip_mask & (1UL << m[i].k))
			continue;
		if (x < m[i].weight)
			return m[i].k;
		x -= m[i].weight;
	}
	return NKINDS;
}

static unsigned int owner(size_t w)
{
	return (w / RUN_WORDS) % opt.threads;
}

static int dev_index(hmm_device_t *d)
{
	for (unsigned int i = 0; i < opt.devices; i++)
		if (devs[i] == d)
			return (int)i;
	return -1;
}

/* ------------------------------------------------------------------ */
/* Reports                                                             */
/* ------------------------------------------------------------------ */

static bool may_print(void)
{
	return atomic_fetch_add(&reports, 1) < MAX_REPORTS || opt.verbose;
}

/* A word differs from the shadow.  The caller holds the region's lock. */
static void mismatch(struct thr *t, int r, size_t w, uint64_t want,
		     uint64_t got, const char *how)
{
	hmm_device_t *d = NULL;
	int loc;

	atomic_fetch_add(&mismatches, 1);
	if (!may_print())
		return;
	loc = hmm_page_location(atomic_load(&regions[r].mem) + w, &d);
	fprintf(stderr,
		"MISMATCH [%s] %s: region %d (%s) page %zu word %zu: expected "
		"%#" PRIx64 " got %#" PRIx64 " (page now: %s%d)\n",
		t->name, how, r, regions[r].shared ? "shared" : "private",
		w / PAGE_WORDS, w % PAGE_WORDS, want, got,
		loc == HMM_LOC_DEVICE ? "device " :
		loc == HMM_LOC_SYSTEM ? "system " :
		loc == HMM_LOC_MIGRATING ? "migrating " : "location ",
		loc == HMM_LOC_DEVICE ? dev_index(d) : loc);
}

/* Something went wrong that is not a wrong word: counted as a mismatch. */
static void failure(struct thr *t, const char *fmt, ...)
{
	va_list ap;

	atomic_fetch_add(&mismatches, 1);
	if (!may_print())
		return;
	va_start(ap, fmt);
	fprintf(stderr, "FAILURE [%s] ", t->name);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static void final_line(void);

/* Something this program cannot go on after: always printed; status 2. */
static _Noreturn void fatal(struct thr *t, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "FATAL [%s] ", t->name);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	final_line();
	_exit(2);
}

static void describe(const struct thr *t, char *s, size_t n)
{
	const char *what = atomic_load_explicit(&t->what, memory_order_relaxed);
	int dev = atomic_load_explicit(&t->dev, memory_order_relaxed);
	int r = atomic_load_explicit(&t->region, memory_order_relaxed);
	long page = atomic_load_explicit(&t->page, memory_order_relaxed);
	int k = snprintf(s, n, "%s", what ? what : "starting");

	if (dev >= 0 && k < (int)n)
		k += snprintf(s + k, n - k, " dev%d", dev);
	if (r >= 0 && k < (int)n)
		k += snprintf(s + k, n - k, " region %d", r);
	if (page >= 0 && k < (int)n)
		snprintf(s + k, n - k, " page %ld", page);
}

/* @kids: the caller is the forker, which owns the list of children. */
static void dump_threads(const char *why, bool kids)
{
	char s[128];

	fprintf(stderr, "HANG: %s; what every thread is doing:\n", why);
	for (unsigned int i = 0; i < nthr; i++) {
		describe(&thr[i], s, sizeof(s));
		fprintf(stderr, "  %-12s beat %-10lu %s\n", thr[i].name,
			atomic_load(&thr[i].beat), s);
	}
	for (unsigned int i = 0; kids && i < nchildren; i++)
		fprintf(stderr, "  child %d, forked %.1fs ago\n",
			(int)children[i].pid, now_s() - children[i].start);
}

static void final_line(void)
{
	printf("operations: %" PRIu64 " mismatches: %lu\n", total_ops(),
	       atomic_load(&mismatches));
	fflush(stdout);
}

/* Any thread stuck for --hang-seconds ends the run: status 3. */
static void *watchdog(void *arg)
{
	unsigned long *last = calloc(nthr, sizeof(*last));
	double *since = calloc(nthr, sizeof(*since));
	char why[160];

	(void)arg;
	if (!last || !since)
		return NULL;
	for (unsigned int i = 0; i < nthr; i++)
		since[i] = now_s();
	while (!atomic_load(&watchdog_stop)) {
		struct timespec ts = { 0, 200000000L };

		/* The system call itself: ThreadSanitizer's nanosleep takes a
		 * lock that a thread stuck in its runtime may hold. */
		syscall(SYS_nanosleep, &ts, NULL);
		for (unsigned int i = 0; i < nthr; i++) {
			unsigned long b = atomic_load(&thr[i].beat);
			double now = now_s();

			if (b != last[i] || !atomic_load(&thr[i].live)) {
				last[i] = b;
				since[i] = now;
				continue;
			}
			if (now - since[i] < opt.hang_seconds)
				continue;
			snprintf(why, sizeof(why),
				 "%s made no progress for %.0f s", thr[i].name,
				 now - since[i]);
			dump_threads(why, false);
			final_line();
			fflush(stderr);
			_exit(3);
		}
	}
	free(last);
	free(since);
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Parking (fork under ASan)                                           */
/* ------------------------------------------------------------------ */

/*
 * GCC 12's ASan allocator is not fork-safe: a child forked while another
 * thread is inside malloc deadlocks in its own next malloc.  Under ASan the
 * forker therefore parks every thread of ours (at the top of its loop,
 * holding no lock) around fork().
 */
static pthread_mutex_t park_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t park_cv = PTHREAD_COND_INITIALIZER;
static atomic_bool park_req;
static unsigned int parked;	/* park_mu */

static void timed_wait(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += 50000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(&park_cv, &park_mu, &ts);
}

static void park_point(struct thr *t)
{
	if (!QUIESCE_FORK || !atomic_load(&park_req))
		return;
	act(t, "parked for fork", -1, -1, -1);
	pthread_mutex_lock(&park_mu);
	parked++;
	pthread_cond_broadcast(&park_cv);
	while (atomic_load(&park_req)) {
		timed_wait();
		beat(t);
	}
	parked--;
	pthread_mutex_unlock(&park_mu);
}

/* Park the workers, migrators and disruptor; false if told to stop. */
static bool park_all(struct thr *t)
{
	unsigned int want = opt.threads + MIGRATORS + 1;
	bool ok;

	act(t, "waiting for threads to park", -1, -1, -1);
	pthread_mutex_lock(&park_mu);
	atomic_store(&park_req, true);
	while (parked < want && !atomic_load(&stop)) {
		timed_wait();
		beat(t);
	}
	ok = parked == want;
	pthread_mutex_unlock(&park_mu);
	return ok;
}

static void unpark_all(void)
{
	pthread_mutex_lock(&park_mu);
	atomic_store(&park_req, false);
	pthread_cond_broadcast(&park_cv);
	pthread_mutex_unlock(&park_mu);
}

/* ------------------------------------------------------------------ */
/* Checks                                                              */
/* ------------------------------------------------------------------ */

/* CPU-read words [a, b) of region @r; only @who's words unless -1. */
static void check_cpu(struct thr *t, int r, size_t a, size_t b, int who,
		      const char *how)
{
	struct region *g = &regions[r];
	uint64_t *mem = atomic_load(&g->mem);

	for (size_t w = a; w < b; w++) {
		uint64_t got;

		if (who >= 0 && owner(w) != (unsigned int)who)
			continue;
		got = ld(&mem[w]);
		if (got != g->shadow[w]) {
			mismatch(t, r, w, g->shadow[w], got, how);
			g->shadow[w] = got;	/* report each change once */
		}
	}
}

/* Compare @buf, a device's copy of words [a, a + n), to the shadow. */
static void check_buf(struct thr *t, int r, size_t a, size_t n,
		      const uint64_t *buf, int who, const char *how)
{
	const uint64_t *sh = regions[r].shadow;

	for (size_t i = 0; i < n; i++)
		if ((who < 0 || owner(a + i) == (unsigned int)who) &&
		    buf[i] != sh[a + i])
			mismatch(t, r, a + i, sh[a + i], buf[i], how);
}

/* The errors a device command may return on mapped, writable memory. */
static bool dev_refusal_ok(int ret)
{
	return ret == -EBUSY || ret == -ENOMEM;
}

/* A device command failed: it must be a documented refusal and must have
 * left words [a, b) as they were. */
static void dev_failed(struct thr *t, int r, int ret, const char *cmd,
		       size_t a, size_t b)
{
	char how[64];

	count(t, K_DEV_REFUSED);
	if (!dev_refusal_ok(ret))
		failure(t, "%s region %d page %zu: unexpected %d (%s)", cmd, r,
			a / PAGE_WORDS, ret, strerror(-ret));
	snprintf(how, sizeof(how), "after failed %s (%d)", cmd, ret);
	check_cpu(t, r, a, b, -1, how);
}

/* ------------------------------------------------------------------ */
/* Workers: the owners                                                 */
/* ------------------------------------------------------------------ */

static void op_cpu(struct thr *t, int r, size_t a, size_t b, int op)
{
	uint64_t *mem = atomic_load(&regions[r].mem);
	uint64_t *sh = regions[r].shadow;
	size_t w = a + rnd(t, b - a);
	uint64_t v = rnd64(t), old;

	act(t, op == 0 ? "cpu read" : op == 1 ? "cpu store" : "cpu atomic add",
	    -1, r, w / PAGE_WORDS);
	if (op == 0) {
		/* Half the time the whole run, else all of our words in its
		 * first page. */
		if (rnd(t, 2))
			check_cpu(t, r, a, b, -1, "cpu read");
		else
			check_cpu(t, r, a / PAGE_WORDS * PAGE_WORDS,
				  (a / PAGE_WORDS + 1) * PAGE_WORDS,
				  (int)t->index, "cpu read of page");
		count(t, K_CPU_READ);
	} else if (op == 1) {
		st(&mem[w], v);
		sh[w] = v;
		count(t, K_CPU_WRITE);
	} else {
		old = fetch_add(&mem[w], v);
		if (old != sh[w])
			mismatch(t, r, w, sh[w], old, "cpu atomic add (old)");
		sh[w] = old + v;
		count(t, K_CPU_ADD);
	}
}

/* A device reads a span of up to two pages; we check our words in it. */
static void op_dev_read(struct thr *t, int r, int d)
{
	uint64_t *mem = atomic_load(&regions[r].mem);
	size_t n = 1 + rnd(t, DEV_SPAN_WORDS);
	size_t a = rnd(t, region_words - n + 1);
	int ret;

	act(t, "hmm_sim_read", d, r, a / PAGE_WORDS);
	ret = hmm_sim_read(devs[d], &mem[a], t->buf, n * 8, NULL);
	if (ret) {
		dev_failed(t, r, ret, "hmm_sim_read", a, a + n);
	} else {
		check_buf(t, r, a, n, t->buf, (int)t->index, "hmm_sim_read");
		/* Half the time, the same span again by raw DMA through the
		 * IOVAs the read linked: unlinked since (a CPU-side change,
		 * a migration) is a fault; anything read must be right. */
		if (rnd(t, 2)) {
			uint64_t iova = hmm_sim_iova(devs[d], &mem[a]);
			act(t, "hmm_sim_dma_read", d, r, a / PAGE_WORDS);
			ret = hmm_sim_dma_read(devs[d], iova, t->buf, n * 8);
			if (ret == 0)
				check_buf(t, r, a, n, t->buf, (int)t->index,
					  "hmm_sim_dma_read");
			else if (ret != -EFAULT)
				failure(t, "hmm_sim_dma_read region %d page "
					"%zu: unexpected %d", r,
					a / PAGE_WORDS, ret);
		}
	}
	count(t, K_DEV_READ);
}

/* Device writes, fills and copies of (part of) our run [a, b). */
static void op_dev_write(struct thr *t, int r, int d, size_t a, size_t b,
			 int op)
{
	uint64_t *mem = atomic_load(&regions[r].mem);
	uint64_t *sh = regions[r].shadow;
	size_t s = a + rnd(t, b - a);
	size_t n = 1 + rnd(t, b - s);
	uint64_t v = rnd64(t);
	const char *cmd = op == 0 ? "hmm_sim_write" : "hmm_sim_fill64";
	int ret;

	act(t, cmd, d, r, s / PAGE_WORDS);
	if (op == 0) {
		for (size_t i = 0; i < n; i++)
			t->buf[i] = rnd64(t);
		ret = hmm_sim_write(devs[d], &mem[s], t->buf, n * 8, NULL);
	} else {
		ret = hmm_sim_fill64(devs[d], &mem[s], v, n * 8, NULL);
	}
	if (ret) {
		dev_failed(t, r, ret, cmd, s, s + n);
	} else {
		for (size_t i = 0; i < n; i++)
			sh[s + i] = op == 0 ? t->buf[i] : v;
	}
	count(t, op == 0 ? K_DEV_WRITE : K_DEV_FILL);
}

/* Run number @k of ours (k < our_runs()), as words [*a, *b). */
static size_t our_runs(unsigned int me)
{
	size_t runs = (region_words + RUN_WORDS - 1) / RUN_WORDS;

	return runs > me ? (runs - me + opt.threads - 1) / opt.threads : 0;
}

static void run_bounds(unsigned int me, size_t k, size_t *a, size_t *b)
{
	*a = (me + k * opt.threads) * RUN_WORDS;
	*b = *a + RUN_WORDS < region_words ? *a + RUN_WORDS : region_words;
}

/* The device copies part of one of our runs onto part of another. */
static void op_dev_copy(struct thr *t, int r, int d, size_t a, size_t b)
{
	uint64_t *mem = atomic_load(&regions[r].mem);
	uint64_t *sh = regions[r].shadow;
	size_t c, e, n;
	int ret;

	run_bounds(t->index, rnd(t, our_runs(t->index)), &c, &e);
	if (c == a)
		return;
	n = 1 + rnd(t, (b - a < e - c ? b - a : e - c));
	act(t, "hmm_sim_memcpy", d, r, c / PAGE_WORDS);
	ret = hmm_sim_memcpy(devs[d], &mem[c], &mem[a], n * 8, NULL);
	if (ret)
		dev_failed(t, r, ret, "hmm_sim_memcpy", c, c + n);
	else
		memcpy(&sh[c], &sh[a], n * 8);
	count(t, K_DEV_COPY);
}

static void op_dev_atomic(struct thr *t, int r, int d, size_t w, int op)
{
	uint64_t *mem = atomic_load(&regions[r].mem);
	uint64_t *sh = regions[r].shadow;
	uint64_t v = rnd64(t), old = 0, expected;
	int ret;

	if (op == 0) {
		act(t, "hmm_sim_atomic_add", d, r, w / PAGE_WORDS);
		ret = hmm_sim_atomic_add(devs[d], &mem[w], v, &old);
		expected = sh[w];
	} else {
		/* Three times out of four the swap should succeed. */
		expected = rnd(t, 4) ? sh[w] : sh[w] ^ (v | 1);
		act(t, "hmm_sim_atomic_cas", d, r, w / PAGE_WORDS);
		ret = hmm_sim_atomic_cas(devs[d], &mem[w], expected, v, &old);
	}
	if (ret) {
		dev_failed(t, r, ret, op ? "hmm_sim_atomic_cas" :
			   "hmm_sim_atomic_add", w, w + 1);
	} else {
		if (old != sh[w])
			mismatch(t, r, w, sh[w], old, op ? "atomic_cas (old)" :
				 "atomic_add (old)");
		if (op == 0)
			sh[w] = old + v;
		else
			sh[w] = old == expected ? v : old;
		/* The word is ours: what the CPU sees now is what the device
		 * left there. */
		if (rnd(t, 4) == 0)
			check_cpu(t, r, w, w + 1, -1, "cpu read after atomic");
	}
	count(t, op == 0 ? K_DEV_ADD : K_DEV_CAS);
}

/* The operation mix of the workers, in percent. */
static const struct mix worker_mix[] = {
	{ K_CPU_READ, 20 }, { K_CPU_WRITE, 13 }, { K_CPU_ADD, 10 },
	{ K_DEV_READ, 15 }, { K_DEV_WRITE, 10 }, { K_DEV_FILL, 8 },
	{ K_DEV_ADD, 8 }, { K_DEV_CAS, 8 }, { K_DEV_COPY, 8 },
};

static void worker_op(struct thr *t, int r)
{
	int d = (int)rnd(t, opt.devices);
	size_t a, b;

	run_bounds(t->index, rnd(t, our_runs(t->index)), &a, &b);
	switch (pick(t, worker_mix, ARRAY_SIZE(worker_mix))) {
	case K_CPU_READ: op_cpu(t, r, a, b, 0); break;
	case K_CPU_WRITE: op_cpu(t, r, a, b, 1); break;
	case K_CPU_ADD: op_cpu(t, r, a, b, 2); break;
	case K_DEV_READ: op_dev_read(t, r, d); break;
	case K_DEV_WRITE: op_dev_write(t, r, d, a, b, 0); break;
	case K_DEV_FILL: op_dev_write(t, r, d, a, b, 1); break;
	case K_DEV_ADD: op_dev_atomic(t, r, d, a + rnd(t, b - a), 0); break;
	case K_DEV_CAS: op_dev_atomic(t, r, d, a + rnd(t, b - a), 1); break;
	case K_DEV_COPY: op_dev_copy(t, r, d, a, b); break;
	default: nap(t, 10); break;	/* everything skipped */
	}
}

static void *worker(void *arg)
{
	struct thr *t = arg;

	while (!atomic_load(&stop)) {
		int r = (int)rnd(t, opt.regions);

		park_point(t);
		act(t, "region read lock", -1, r, -1);
		pthread_rwlock_rdlock(&regions[r].lock);
		worker_op(t, r);
		pthread_rwlock_unlock(&regions[r].lock);
		beat(t);
	}
	act(t, "done", -1, -1, -1);
	atomic_store(&t->live, false);
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Migrators                                                           */
/* ------------------------------------------------------------------ */

static void *migrator(void *arg)
{
	struct thr *t = arg;
	size_t pages = region_len / PG;

	while (!atomic_load(&stop)) {
		int r = (int)rnd(t, opt.regions);
		struct region *g = &regions[r];
		size_t n = rnd(t, 8) ? 1 + rnd(t, 32) : 1 + rnd(t, pages);
		size_t p, d = rnd(t, opt.devices + 1);
		bool locked = rnd(t, 2);
		hmm_device_t *dev = d < opt.devices ? devs[d] : NULL;
		long ret;

		park_point(t);
		if (skip_mask & (1UL << K_MIGRATE)) {
			nap(t, 100);
			continue;
		}
		n = n < pages ? n : pages;
		p = rnd(t, pages - n + 1);
		if (opt.thp && rnd(t, 32)) {
			/* Whole 2 MiB blocks: huge pages move whole. */
			size_t blocks = pages / 512;
			n = 512 * (1 + rnd(t, blocks < 4 ? blocks : 4));
			p = 512 * rnd(t, blocks - n / 512 + 1);
		}
		if (locked) {
			act(t, "region read lock", -1, r, -1);
			pthread_rwlock_rdlock(&g->lock);
		}
		if (!(skip_mask & (1UL << K_ADVISE)) && rnd(t, 8) == 0) {
			/* Read-mostly on and off: devices' reads then make
			 * copies, which every write and change must remove
			 * (the checks of every read find any left). */
			int adv = rnd(t, 3) ? HMM_ADVISE_READ_MOSTLY
					    : HMM_ADVISE_UNSET_READ_MOSTLY;
			act(t, "hmm_advise read-mostly", -1, r, (long)p);
			ret = hmm_advise(atomic_load(&g->mem) + p * PAGE_WORDS,
					 n * PG, adv, NULL);
			if (locked)
				pthread_rwlock_unlock(&g->lock);
			count(t, K_ADVISE);
			if (ret && ret != -ENOENT && ret != -ENOMEM)
				failure(t, "hmm_advise region %d pages %zu+%zu: "
					"unexpected %ld", r, p, n, ret);
			beat(t);
			continue;
		}
		act(t, dev ? "hmm_migrate to device" : "hmm_migrate home",
		    dev ? (int)d : -1, r, (long)p);
		ret = hmm_migrate(atomic_load(&g->mem) + p * PAGE_WORDS, n * PG,
				  dev, 0);
		if (locked)
			pthread_rwlock_unlock(&g->lock);
		count(t, K_MIGRATE);
		if (ret < 0) {
			count(t, K_MIG_REFUSED);
			if (!(ret == -ENOMEM || ret == -EBUSY ||
			      (!locked && (ret == -ENOENT || ret == -EFAULT))))
				failure(t, "hmm_migrate region %d pages %zu+%zu "
					"to %s%d%s: unexpected %ld (%s)", r, p,
					n, dev ? "dev" : "system",
					dev ? (int)d : 0,
					locked ? " (locked)" : "", ret,
					strerror((int)-ret));
		}
		beat(t);
	}
	act(t, "done", -1, -1, -1);
	atomic_store(&t->live, false);
	return NULL;
}

/* ------------------------------------------------------------------ */
/* The disruptor: operations under a region's write lock               */
/* ------------------------------------------------------------------ */

static void zero_shadow(int r, size_t a, size_t b)
{
	memset(&regions[r].shadow[a], 0, (b - a) * 8);
}

static void dis_madvise(struct thr *t, int r)
{
	struct region *g = &regions[r];
	size_t pages = region_len / PG, n = 1 + rnd(t, pages / 4);
	size_t p = rnd(t, pages - n + 1);
	/* Shared memory: MADV_DONTNEED keeps the data, MADV_REMOVE drops it. */
	int advice = g->shared && rnd(t, 2) ? MADV_REMOVE : MADV_DONTNEED;

	act(t, advice == MADV_REMOVE ? "madvise(MADV_REMOVE)" :
	    "madvise(MADV_DONTNEED)", -1, r, (long)p);
	if (madvise(atomic_load(&g->mem) + p * PAGE_WORDS, n * PG, advice)) {
		failure(t, "madvise(%d) region %d: %s", advice, r,
			strerror(errno));
		return;
	}
	if (!g->shared || advice == MADV_REMOVE)
		zero_shadow(r, p * PAGE_WORDS, (p + n) * PAGE_WORDS);
	check_cpu(t, r, p * PAGE_WORDS, (p + n) * PAGE_WORDS, -1,
		  advice == MADV_REMOVE ? "cpu read after MADV_REMOVE" :
		  "cpu read after MADV_DONTNEED");
	count(t, K_MADVISE);
}

/* Fill the whole region with fresh values (we hold its write lock). */
static void refill(struct thr *t, int r)
{
	uint64_t *mem = atomic_load(&regions[r].mem);

	for (size_t w = 0; w < region_words; w++) {
		uint64_t v = rnd64(t);

		st(&mem[w], v);
		regions[r].shadow[w] = v;
	}
}

/*
 * A private anonymous region (zeros), near @hint if it is free.  With
 * --thp: 2 MiB aligned, asked to be huge pages, and (every other time)
 * written with zeros before libhmm adopts it, as a runtime's large
 * buffers are; libhmm then moves its blocks whole (src/thp.c).
 */
static void *map_private(void *hint)
{
	size_t over = region_len + (2 << 20);
	char *raw, *p;

	if (!opt.thp) {
		p = mmap(hint, region_len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS |
				 (hint ? MAP_FIXED_NOREPLACE : 0),
			 -1, 0);
		if (p == MAP_FAILED && hint)
			p = mmap(NULL, region_len, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		return p;
	}
	raw = mmap(NULL, over, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		return raw;
	p = (char *)(((uintptr_t)raw + (2 << 20) - 1) &
		     ~(uintptr_t)((2 << 20) - 1));
	if (p > raw)
		munmap(raw, (size_t)(p - raw));
	munmap(p + region_len, (size_t)(raw + over - (p + region_len)));
	madvise(p, region_len, MADV_HUGEPAGE);
	/* Every other time, left untouched: libhmm then gives the first
	 * write into each block a whole huge page. */
	static atomic_uint turn;
	if (atomic_fetch_add(&turn, 1) & 1)
		memset(p, 0, region_len);
	return p;
}

/*
 * hmm_range_adopt, retried: an error it does not document is a failure, but
 * the run goes on with the region managed if a retry succeeds.
 */
static int adopt_once(int r, void *p)
{
	if (regions[r].kind >= R_MEMFD)
		return hmm_file_adopt(p, region_len, regions[r].fd, 0);
	return hmm_range_adopt(p, region_len, 0);
}

static void adopt(struct thr *t, int r, void *p, const char *after)
{
	int ret = adopt_once(r, p), first = ret, tries = 1;

	while (ret && tries < 1000) {
		sleep_beat(t, 1, false);
		ret = adopt_once(r, p);
		tries++;
	}
	if (first)
		failure(t, "hmm_range_adopt region %d after %s: %d (%s), then "
			"%d after %d tries", r, after, first, strerror(-first),
			ret, tries);
}

static void dis_remap(struct thr *t, int r)
{
	struct region *g = &regions[r];
	uint64_t *old = atomic_load(&g->mem);
	void *p;
	int ret;

	if (g->kind >= R_MEMFD) {
		/* munmap writes the devices' data back: the file keeps it. */
		act(t, "munmap + mmap + hmm_file_adopt", -1, r, -1);
		if (munmap(old, region_len))
			failure(t, "munmap region %d: %s", r, strerror(errno));
		p = mmap(old, region_len, PROT_READ | PROT_WRITE,
			 MAP_SHARED | MAP_FIXED_NOREPLACE, g->fd, 0);
		if (p == MAP_FAILED)
			p = mmap(NULL, region_len, PROT_READ | PROT_WRITE,
				 MAP_SHARED, g->fd, 0);
		if (p == MAP_FAILED)
			fatal(t, "mmap region %d: %s", r, strerror(errno));
		adopt(t, r, p, "munmap + mmap");
		atomic_store(&g->mem, p);
		check_cpu(t, r, 0, region_words, -1,
			  "cpu read of a file region mapped again");
		count(t, K_REMAP);
		return;
	}
	if (g->shared) {
		act(t, "hmm_mem_free + hmm_mem_alloc", -1, r, -1);
		ret = hmm_mem_free(old, region_len);
		if (ret)
			failure(t, "hmm_mem_free region %d: %d", r, ret);
		ret = hmm_mem_alloc(region_len, 0, &p);
		if (ret) {
			fatal(t, "hmm_mem_alloc region %d: %d", r, ret);
		}
	} else {
		act(t, "munmap + mmap + hmm_range_adopt", -1, r, -1);
		if (munmap(old, region_len))
			failure(t, "munmap region %d: %s", r, strerror(errno));
		/* The same address if nobody took it meanwhile. */
		p = map_private(old);
		if (p == MAP_FAILED) {
			fatal(t, "mmap region %d: %s", r,
				strerror(errno));
		}
		adopt(t, r, p, "munmap + mmap");
	}
	atomic_store(&g->mem, p);
	zero_shadow(r, 0, region_words);
	check_cpu(t, r, 0, region_words, -1, "cpu read of remapped region");
	if (rnd(t, 2))
		refill(t, r);
	count(t, K_REMAP);
}

/* Read-only for a moment: reads work, device writes get -EPERM and change
 * nothing, migrations go on. */
static void dis_readonly(struct thr *t, int r)
{
	struct region *g = &regions[r];
	uint64_t *mem = atomic_load(&g->mem);
	size_t pages = region_len / PG;
	size_t n = rnd(t, 4) ? 1 + rnd(t, pages / 4) : pages;
	size_t p = rnd(t, pages - n + 1), a = p * PAGE_WORDS;
	size_t w = a + rnd(t, n * PAGE_WORDS - 1);
	int d = (int)rnd(t, opt.devices), ret;
	uint64_t old;

	act(t, "mprotect(PROT_READ)", -1, r, (long)p);
	if (mprotect(&mem[a], n * PG, PROT_READ)) {
		failure(t, "mprotect(PROT_READ) region %d: %s", r,
			strerror(errno));
		return;
	}
	act(t, "hmm_sim_read (read-only)", d, r, (long)(w / PAGE_WORDS));
	ret = hmm_sim_read(devs[d], &mem[w], t->buf, 8, NULL);
	if (ret && !dev_refusal_ok(ret))
		failure(t, "hmm_sim_read of read-only memory: %d", ret);
	else if (!ret)
		check_buf(t, r, w, 1, t->buf, -1, "hmm_sim_read (read-only)");
	act(t, "hmm_sim_write (read-only)", d, r, (long)(w / PAGE_WORDS));
	old = ~g->shadow[w];
	ret = hmm_sim_write(devs[d], &mem[w], &old, 8, NULL);
	if (ret == 0)
		failure(t, "hmm_sim_write to read-only memory succeeded "
			"(region %d page %zu)", r, w / PAGE_WORDS);
	else if (ret != -EPERM && !dev_refusal_ok(ret))
		failure(t, "hmm_sim_write to read-only memory: %d, not -EPERM",
			ret);
	act(t, "hmm_sim_atomic_add (read-only)", d, r, (long)(w / PAGE_WORDS));
	ret = hmm_sim_atomic_add(devs[d], &mem[w], 1, &old);
	if (ret == 0)
		failure(t, "hmm_sim_atomic_add on read-only memory succeeded "
			"(region %d page %zu)", r, w / PAGE_WORDS);
	else if (ret != -EPERM && !dev_refusal_ok(ret))
		failure(t, "hmm_sim_atomic_add on read-only memory: %d", ret);
	act(t, "cpu read (read-only)", -1, r, (long)p);
	check_cpu(t, r, a, a + n * PAGE_WORDS, -1, "cpu read of read-only");
	act(t, "mprotect(PROT_READ|PROT_WRITE)", -1, r, (long)p);
	if (mprotect(&mem[a], n * PG, PROT_READ | PROT_WRITE))
		fatal(t, "mprotect back region %d: %s", r,
			strerror(errno));
	check_cpu(t, r, a, a + n * PAGE_WORDS, -1,
		  "cpu read after read-only");
	count(t, K_MPROTECT);
}

/* One page PROT_NONE: a device write across it fails with -EFAULT and
 * leaves the accessible page before it unchanged too. */
static void dis_noaccess(struct thr *t, int r)
{
	struct region *g = &regions[r];
	uint64_t *mem = atomic_load(&g->mem);
	size_t p = 1 + rnd(t, region_len / PG - 1), a = p * PAGE_WORDS;
	size_t k = 1 + rnd(t, PAGE_WORDS / 2);
	int d = (int)rnd(t, opt.devices), ret;

	act(t, "mprotect(PROT_NONE)", -1, r, (long)p);
	if (mprotect(&mem[a], PG, PROT_NONE)) {
		failure(t, "mprotect(PROT_NONE) region %d: %s", r,
			strerror(errno));
		return;
	}
	for (size_t i = 0; i < 2 * k; i++)
		t->buf[i] = rnd64(t);
	act(t, "hmm_sim_write across PROT_NONE", d, r, (long)p);
	hmm_device_t *before_dev = NULL;
	int before_loc = hmm_page_location(&mem[a], &before_dev);
	ret = hmm_sim_write(devs[d], &mem[a - k], t->buf, 2 * k * 8, NULL);
	if (ret != -EFAULT && ret != -EBUSY) {
		hmm_device_t *after_dev = NULL;
		int after_loc = hmm_page_location(&mem[a], &after_dev);
		failure(t, "hmm_sim_write across a PROT_NONE page (region %d "
			"page %zu, dev%d): %d, not -EFAULT; the page was at "
			"%d/dev%d before the write, %d/dev%d after", r, p, d,
			ret, before_loc, dev_index(before_dev), after_loc,
			dev_index(after_dev));
	}
	act(t, "hmm_sim_read across PROT_NONE", d, r, (long)p);
	ret = hmm_sim_read(devs[d], &mem[a - k], t->buf, 2 * k * 8, NULL);
	if (ret != -EFAULT && ret != -EBUSY)
		failure(t, "hmm_sim_read across a PROT_NONE page: %d, not "
			"-EFAULT", ret);
	act(t, "mprotect(PROT_READ|PROT_WRITE)", -1, r, (long)p);
	if (mprotect(&mem[a], PG, PROT_READ | PROT_WRITE))
		fatal(t, "mprotect back region %d: %s", r,
			strerror(errno));
	check_cpu(t, r, a - PAGE_WORDS, a + PAGE_WORDS, -1,
		  "cpu read after a device write across PROT_NONE");
	count(t, K_MPROTECT);
}

/* Locked into memory for a moment (mlock brings device pages home, and
 * migrations that race it take locked pages away again): devices and the
 * CPU read the same data, and still do after munlock. */
static void dis_mlock(struct thr *t, int r)
{
	uint64_t *mem = atomic_load(&regions[r].mem);
	size_t pages = region_len / PG;
	size_t n = rnd(t, 4) ? 1 + rnd(t, pages / 4) : pages;
	size_t p = rnd(t, pages - n + 1), a = p * PAGE_WORDS;
	int d = (int)rnd(t, opt.devices), ret;

	act(t, "mlock", -1, r, (long)p);
	if (mlock(&mem[a], n * PG)) {
		if (errno != ENOMEM && errno != EPERM && errno != EAGAIN)
			failure(t, "mlock region %d: %s", r, strerror(errno));
		/* over RLIMIT_MEMLOCK, not ours to test; part of the range
		 * may be locked all the same */
		munlock(&mem[a], n * PG);
		return;
	}
	act(t, "hmm_sim_read (locked)", d, r, (long)p);
	ret = hmm_sim_read(devs[d], &mem[a], t->buf, PG, NULL);
	if (ret && !dev_refusal_ok(ret))
		failure(t, "hmm_sim_read of locked memory: %d", ret);
	else if (!ret)
		check_buf(t, r, a, PAGE_WORDS, t->buf, -1,
			  "hmm_sim_read (locked)");
	check_cpu(t, r, a, a + n * PAGE_WORDS, -1, "cpu read of locked");
	act(t, "munlock", -1, r, (long)p);
	if (munlock(&mem[a], n * PG))
		fatal(t, "munlock region %d: %s", r, strerror(errno));
	check_cpu(t, r, a, a + n * PAGE_WORDS, -1, "cpu read after munlock");
	count(t, K_MLOCK);
}

/* SIGBUS of a page locked to a device, caught where a spell expects it. */
static __thread sigjmp_buf *volatile bus_jb;
static __thread volatile uintptr_t bus_addr;

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (!bus_jb) {
		/* Not expected: the default action, on the retried access. */
		signal(sig, SIG_DFL);
		return;
	}
	bus_addr = (uintptr_t)si->si_addr;
	siglongjmp(*bus_jb, 1);
}

/* Read *@p: 0, or SIGBUS (with *@at the address it named). */
static int probe_read(const uint64_t *p, uintptr_t *at)
{
	sigjmp_buf jb;

	if (sigsetjmp(jb, 1)) {
		bus_jb = NULL;
		*at = bus_addr;
		return SIGBUS;
	}
	bus_jb = &jb;
	(void)ld(p);
	bus_jb = NULL;
	return 0;
}

/* A run locked to a device: the CPU gets SIGBUS at the word it reads, the
 * device reads and writes it, another device is refused; unlocked, the CPU
 * reads the device's data. */
static void dis_devlock(struct thr *t, int r)
{
	uint64_t *mem = atomic_load(&regions[r].mem), *sh = regions[r].shadow;
	size_t pages = region_len / PG, n = 1 + rnd(t, pages / 4);
	size_t p = rnd(t, pages - n + 1), a = p * PAGE_WORDS;
	size_t w = a + rnd(t, n * PAGE_WORDS), span;
	int d = (int)rnd(t, opt.devices), ret;
	uint64_t v = rnd64(t);
	uintptr_t at = 0;

	act(t, "hmm_range_lock", d, r, (long)p);
	ret = hmm_range_lock(&mem[a], n * PG, devs[d]);
	if (ret) {
		if (ret != -ENOMEM && ret != -EBUSY && ret != -EOPNOTSUPP)
			failure(t, "hmm_range_lock region %d: %d", r, ret);
		return;
	}
	act(t, "cpu read of locked", -1, r, (long)(w / PAGE_WORDS));
	if (probe_read(&mem[w], &at) != SIGBUS || at != (uintptr_t)&mem[w])
		failure(t, "cpu read of a locked page: no SIGBUS at %p (%#lx)",
			(void *)&mem[w], (unsigned long)at);
	span = n * PAGE_WORDS < DEV_SPAN_WORDS ? n * PAGE_WORDS
						   : DEV_SPAN_WORDS;
	act(t, "hmm_sim_read (locked)", d, r, (long)p);
	ret = hmm_sim_read(devs[d], &mem[a], t->buf, span * 8, NULL);
	if (ret)
		failure(t, "device read of its locked range: %d", ret);
	else
		check_buf(t, r, a, span, t->buf, -1, "hmm_sim_read (locked)");
	act(t, "hmm_sim_write (locked)", d, r, (long)(w / PAGE_WORDS));
	ret = hmm_sim_write(devs[d], &mem[w], &v, 8, NULL);
	if (ret)
		failure(t, "device write of its locked range: %d", ret);
	else
		sh[w] = v;
	if (opt.devices > 1) {
		int o = (d + 1) % (int)opt.devices;
		act(t, "hmm_sim_read (locked elsewhere)", o, r, (long)p);
		ret = hmm_sim_read(devs[o], &mem[a], t->buf, 8, NULL);
		if (ret != -EACCES)
			failure(t, "read of a range locked to another device: "
				"%d, not -EACCES", ret);
	}
	act(t, "hmm_range_unlock", d, r, (long)p);
	ret = (int)hmm_range_unlock(&mem[a], n * PG, devs[d]);
	if (ret != (int)n)
		fatal(t, "hmm_range_unlock region %d: %d, not %zu", r, ret, n);
	check_cpu(t, r, a, a + n * PAGE_WORDS, -1, "cpu read after unlock");
	count(t, K_DEVLOCK);
}

/* A device holds a run for atomics (either mode, sometimes with a
 * timeout); its atomics and the CPU's reads meanwhile see the shadow. */
static void dis_excl(struct thr *t, int r)
{
	uint64_t *mem = atomic_load(&regions[r].mem), *sh = regions[r].shadow;
	size_t pages = region_len / PG, n = 1 + rnd(t, pages / 4);
	size_t p = rnd(t, pages - n + 1), a = p * PAGE_WORDS;
	int d = (int)rnd(t, opt.devices), mode = (int)rnd(t, 2), ret;
	long lret;

	act(t, "hmm_exclusive_begin", d, r, (long)p);
	ret = hmm_exclusive_begin(&mem[a], n * PG, devs[d], mode,
				  rnd(t, 2) ? 0 : 5);
	if (ret) {
		if (!dev_refusal_ok(ret))
			failure(t, "hmm_exclusive_begin region %d: %d", r, ret);
		return;
	}
	for (int i = 0; i < 8; i++) {
		size_t w = a + rnd(t, n * PAGE_WORDS);
		uint64_t v = 1 + rnd(t, 1000), old = 0;
		act(t, "hmm_sim_atomic_add (held)", d, r, (long)(w / PAGE_WORDS));
		ret = hmm_sim_atomic_add(devs[d], &mem[w], v, &old);
		if (ret) {
			if (!dev_refusal_ok(ret))
				failure(t, "atomic add in a hold: %d", ret);
			continue;
		}
		if (old != sh[w])
			mismatch(t, r, w, sh[w], old, "device atomic (held)");
		sh[w] = old + v;
		if (i & 1)
			check_cpu(t, r, w, w + 1, -1, "cpu read in a hold");
	}
	act(t, "hmm_exclusive_end", d, r, (long)p);
	lret = hmm_exclusive_end(&mem[a], n * PG, devs[d]);
	if (lret < 0 || lret > (long)n)
		failure(t, "hmm_exclusive_end region %d: %ld", r, lret);
	check_cpu(t, r, a, a + n * PAGE_WORDS, -1, "cpu read after a hold");
	count(t, K_EXCL);
}

/* Private regions: stop managing, manage again; the data stays. */
static void dis_release(struct thr *t, int r)
{
	uint64_t *mem = atomic_load(&regions[r].mem);
	int ret;

	act(t, regions[r].kind >= R_MEMFD ? "hmm_range_release + hmm_file_adopt"
					  : "hmm_range_release + hmm_range_adopt",
	    -1, r, -1);
	ret = hmm_range_release(mem, region_len);
	if (ret)
		failure(t, "hmm_range_release region %d: %d", r, ret);
	adopt(t, r, mem, "hmm_range_release");
	check_cpu(t, r, 0, region_words, -1, "cpu read after release+adopt");
	count(t, K_RELEASE);
}

/* Every word by the CPU, some pages by a device. */
static void dis_sweep(struct thr *t, int r)
{
	uint64_t *mem = atomic_load(&regions[r].mem);
	int d = (int)rnd(t, opt.devices), ret;

	for (int i = 0; i < 4; i++) {
		size_t p = rnd(t, region_len / PG - 1);

		act(t, "hmm_sim_read (sweep)", d, r, (long)p);
		ret = hmm_sim_read(devs[d], &mem[p * PAGE_WORDS], t->buf,
				   DEV_SPAN_WORDS * 8, NULL);
		if (ret && !dev_refusal_ok(ret))
			failure(t, "hmm_sim_read (sweep): %d", ret);
		else if (!ret)
			check_buf(t, r, p * PAGE_WORDS, DEV_SPAN_WORDS, t->buf,
				  -1, "hmm_sim_read (sweep)");
	}
	act(t, "cpu read (sweep)", -1, r, -1);
	check_cpu(t, r, 0, region_words, -1, "cpu read (sweep)");
	count(t, K_SWEEP);
}

static const struct mix disruptor_mix[] = {
	{ K_MADVISE, 30 }, { K_REMAP, 15 }, { K_MPROTECT, 35 },
	{ K_MLOCK, 10 }, { K_RELEASE, 10 }, { K_SWEEP, 10 },
	{ K_DEVLOCK, 10 }, { K_EXCL, 10 },
};

static void *disruptor(void *arg)
{
	struct thr *t = arg;

	while (!atomic_load(&stop)) {
		int r = (int)rnd(t, opt.regions);
		enum kind k = pick(t, disruptor_mix, ARRAY_SIZE(disruptor_mix));

		park_point(t);
		nap(t, 1 + (unsigned int)rnd(t, 10));
		act(t, "region write lock", -1, r, -1);
		pthread_rwlock_wrlock(&regions[r].lock);
		if (k == K_MADVISE)
			dis_madvise(t, r);
		else if (k == K_REMAP)
			dis_remap(t, r);
		else if (k == K_MPROTECT && rnd(t, 2))
			dis_readonly(t, r);
		else if (k == K_MPROTECT)
			dis_noaccess(t, r);
		else if (k == K_MLOCK)
			dis_mlock(t, r);
		else if (k == K_RELEASE && regions[r].kind != R_SHM)
			dis_release(t, r);
		else if (k == K_DEVLOCK && regions[r].kind < R_MEMFD)
			dis_devlock(t, r);
		else if (k == K_EXCL && regions[r].kind < R_MEMFD)
			dis_excl(t, r);
		else if (k != NKINDS)
			dis_sweep(t, r);
		pthread_rwlock_unlock(&regions[r].lock);
		beat(t);
	}
	act(t, "done", -1, -1, -1);
	atomic_store(&t->live, false);
	return NULL;
}

/* ------------------------------------------------------------------ */
/* fork                                                                */
/* ------------------------------------------------------------------ */

/* In the child: every word by the CPU, 8 pages by a device. */
static unsigned long child_check(struct thr *t, int r)
{
	struct region *g = &regions[r];
	uint64_t *mem = atomic_load(&g->mem);
	unsigned long bad = 0;

	for (size_t w = 0; w < region_words; w++) {
		uint64_t got = ld(&mem[w]);

		if (got != g->shadow[w] && bad++ < 5)
			fprintf(stderr, "MISMATCH [child %d] cpu read: region "
				"%d (%s) page %zu word %zu: expected %#" PRIx64
				" got %#" PRIx64 "\n", (int)getpid(), r,
				g->shared ? "shared" : "private",
				w / PAGE_WORDS, w % PAGE_WORDS, g->shadow[w],
				got);
	}
	for (int i = 0; i < 8; i++) {
		size_t p = rnd(t, region_len / PG), d = rnd(t, opt.devices);
		int ret = hmm_sim_read(devs[d], &mem[p * PAGE_WORDS], t->buf,
				       PG, NULL);

		if (ret) {
			fprintf(stderr, "FAILURE [child %d] hmm_sim_read dev%zu"
				" region %d page %zu: %d\n", (int)getpid(), d,
				r, p, ret);
			bad++;
			continue;
		}
		for (size_t k = 0; k < PAGE_WORDS; k++)
			if (t->buf[k] != g->shadow[p * PAGE_WORDS + k] &&
			    bad++ < 5)
				fprintf(stderr, "MISMATCH [child %d] "
					"hmm_sim_read dev%zu: region %d page "
					"%zu word %zu: expected %#" PRIx64
					" got %#" PRIx64 "\n", (int)getpid(), d,
					r, p, k, g->shadow[p * PAGE_WORDS + k],
					t->buf[k]);
	}
	return bad;
}

static _Noreturn void child_main(struct thr *t, int wfd)
{
	unsigned long bad = 0;

	/* Shared regions first: the parent waits for this to change them. */
	for (unsigned int r = 0; r < opt.regions; r++)
		if (regions[r].shared)
			bad += child_check(t, (int)r);
	if (write(wfd, "k", 1) != 1)
		bad++;
	close(wfd);
	for (unsigned int r = 0; r < opt.regions; r++)
		if (!regions[r].shared)
			bad += child_check(t, (int)r);
	_exit(bad > 100 ? 101 : (int)bad);
}

static void child_done(struct thr *t, pid_t pid, int st)
{
	if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
		return;
	if (WIFEXITED(st)) {
		atomic_fetch_add(&mismatches, WEXITSTATUS(st) - 1);
		failure(t, "child %d found %d mismatches", (int)pid,
			WEXITSTATUS(st));
	} else {
		failure(t, "child %d died of signal %d", (int)pid,
			WTERMSIG(st));
	}
}

/* Reap finished children; kill one that ran past --hang-seconds. */
static void reap(struct thr *t, bool wait_all)
{
	for (unsigned int i = 0; i < nchildren;) {
		struct child *c = &children[i];
		int st;
		pid_t pid = waitpid(c->pid, &st, WNOHANG);

		if (pid == 0 && now_s() - c->start > opt.hang_seconds) {
			char why[64];

			snprintf(why, sizeof(why), "child %d still running",
				 (int)c->pid);
			dump_threads(why, true);
			atomic_fetch_add(&hangs, 1);
			kill(c->pid, SIGKILL);
			pid = waitpid(c->pid, &st, 0);
			st = 0;
		} else if (pid == 0) {
			if (wait_all)
				sleep_beat(t, 10, false);
			else
				i++;
			continue;
		}
		if (pid > 0)
			child_done(t, c->pid, st);
		*c = children[--nchildren];
	}
}

static void fork_once(struct thr *t)
{
	int pfd[2];
	pid_t pid;
	char c;

	if (QUIESCE_FORK && !park_all(t)) {
		unpark_all();
		return;
	}
	for (unsigned int r = 0; r < opt.regions; r++) {
		act(t, "region write lock (fork)", -1, (int)r, -1);
		pthread_rwlock_wrlock(&regions[r].lock);
	}
	if (pipe(pfd)) {
		failure(t, "pipe: %s", strerror(errno));
		pfd[0] = pfd[1] = -1;
	}
	act(t, "fork", -1, -1, -1);
	fflush(stdout);
	fflush(stderr);
	pid = pfd[0] >= 0 ? fork() : -1;
	if (pid == 0)
		child_main(t, pfd[1]);
	for (unsigned int r = 0; r < opt.regions; r++)
		if (!regions[r].shared)
			pthread_rwlock_unlock(&regions[r].lock);
	if (QUIESCE_FORK)
		unpark_all();
	if (pfd[0] >= 0)
		close(pfd[1]);
	if (pid < 0) {
		failure(t, "fork: %s", strerror(errno));
	} else {
		struct pollfd pf = { .fd = pfd[0], .events = POLLIN };
		double t0 = now_s();

		/* Wait for the child to check the shared regions. */
		act(t, "waiting for the child to check shared memory", -1, -1,
		    (long)pid);
		while (poll(&pf, 1, 100) == 0 &&
		       now_s() - t0 < opt.hang_seconds)
			beat(t);
		if (read(pfd[0], &c, 1) != 1 && opt.verbose)
			fprintf(stderr, "child %d closed its pipe\n", (int)pid);
		children[nchildren++] = (struct child){ pid, t0 };
		count(t, K_FORK);
	}
	if (pfd[0] >= 0)
		close(pfd[0]);
	for (unsigned int r = 0; r < opt.regions; r++)
		if (regions[r].shared)
			pthread_rwlock_unlock(&regions[r].lock);
}

static void *forker(void *arg)
{
	struct thr *t = arg;

	while (!atomic_load(&stop)) {
		act(t, "sleeping", -1, -1, -1);
		nap(t, 100 + (unsigned int)rnd(t, 300));
		reap(t, false);
		if (!atomic_load(&stop) && nchildren < MAX_CHILDREN)
			fork_once(t);
		beat(t);
	}
	act(t, "reaping children", -1, -1, -1);
	reap(t, true);
	act(t, "done", -1, -1, -1);
	atomic_store(&t->live, false);
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Setup, progress, the end                                            */
/* ------------------------------------------------------------------ */

static void usage(FILE *f)
{
	fprintf(f,
"usage: hmm-stress [--seconds N] [--seed S] [--threads T] [--devices D]\n"
"                  [--size MiB] [--regions R] [--hang-seconds N] [--no-fork]\n"
"                  [--skip KIND,...] [--files] [--thp] [--verbose]\n"
"\n"
"T worker threads (default 4) and D sim devices (default 2) read, write and\n"
"atomically add over --size MiB (default 64) of managed memory in R regions\n"
"(default 8; half private anonymous memory, half hmm_mem_alloc; with --files\n"
"a quarter each of those, of memfd files and of files in /var/tmp, managed\n"
"with hmm_file_adopt; with --thp, private anonymous regions are 2 MiB\n"
"huge pages, written before they are adopted, so that migrations move them\n"
"whole), while other\n"
"threads migrate it, madvise, unmap and remap, mprotect it and fork children\n"
"that check it.  Every word is checked against a shadow copy.  Progress is\n"
"printed each second; the last line is 'operations: N mismatches: M'.\n"
"--skip leaves out kinds of operations named as in the progress lines\n"
"(cpu_wr, dev_cas, migrate, madvise, remap, mprotect, release, fork, ...),\n"
"to narrow a failure down.\n"
"\n"
"Every thread draws its operations from its own PRNG, seeded from the seed\n"
"(default: from the clock, printed) and the thread's index: rerun a failure\n"
"with the same --seed and options.  Thread interleavings still vary.\n"
"\n"
"Exit status: 0 all good, 1 mismatches or failures, 2 bad usage or setup,\n"
"3 a thread or child made no progress for --hang-seconds (default 30),\n"
"77 no usable userfaultfd.\n");
}

static bool parse_ul(const char *s, unsigned long *v, unsigned long lo,
		     unsigned long hi)
{
	char *end;

	errno = 0;
	*v = strtoul(s, &end, 0);
	return !errno && *s && !*end && *v >= lo && *v <= hi;
}

/* A comma-separated list of kind names (as in the progress lines). */
static bool parse_skip(const char *list)
{
	char *copy = strdup(list), *save = NULL;
	bool ok = copy != NULL;

	for (char *w = strtok_r(copy, ",", &save); ok && w;
	     w = strtok_r(NULL, ",", &save)) {
		int k = 0;

		while (k < NOPS && strcmp(w, kind_name[k]))
			k++;
		ok = k < NOPS;
		skip_mask |= 1UL << k;
	}
	free(copy);
	if (skip_mask & (1UL << K_FORK))
		opt.fork = false;
	return ok;
}

static int parse_args(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "seconds", required_argument, NULL, 's' },
		{ "seed", required_argument, NULL, 'S' },
		{ "threads", required_argument, NULL, 't' },
		{ "devices", required_argument, NULL, 'd' },
		{ "size", required_argument, NULL, 'm' },
		{ "regions", required_argument, NULL, 'r' },
		{ "hang-seconds", required_argument, NULL, 'H' },
		{ "no-fork", no_argument, NULL, 'F' },
		{ "skip", required_argument, NULL, 'x' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "files", no_argument, NULL, 'f' },
		{ "thp", no_argument, NULL, 'T' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	unsigned long v;
	bool seeded = false, ok;
	int c;

	while ((c = getopt_long(argc, argv, "s:S:t:d:m:r:H:Fx:vfTh", opts,
				NULL)) != -1) {
		ok = true;
		switch (c) {
		case 's': ok = parse_ul(optarg, &opt.seconds, 1, 1UL << 30); break;
		case 'S':
			errno = 0;
			opt.seed = strtoull(optarg, NULL, 0);
			ok = !errno;
			seeded = true;
			break;
		case 't': ok = parse_ul(optarg, &v, 1, MAX_THREADS);
			opt.threads = (unsigned int)v; break;
		case 'd': ok = parse_ul(optarg, &v, 1, MAX_DEVICES);
			opt.devices = (unsigned int)v; break;
		case 'm': ok = parse_ul(optarg, &opt.size_mib, 1, 1UL << 20); break;
		case 'r': ok = parse_ul(optarg, &v, 2, 256);
			opt.regions = (unsigned int)v; break;
		case 'H': ok = parse_ul(optarg, &opt.hang_seconds, 2, 1UL << 20);
			break;
		case 'F': opt.fork = false; break;
		case 'x': ok = parse_skip(optarg); break;
		case 'v': opt.verbose = true; break;
		case 'f': opt.files = true; break;
		case 'T': opt.thp = true; break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return -1;
		}
		if (!ok) {
			fprintf(stderr, "hmm-stress: bad value: %s\n", optarg);
			usage(stderr);
			return -1;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return -1;
	}
	if (!seeded)
		opt.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	region_len = (opt.size_mib << 20) / opt.regions / PG * PG;
	if (opt.thp) /* whole huge pages */
		region_len &= ~(size_t)((2 << 20) - 1);
	region_words = region_len / 8;
	if (region_len < 4 * PG || region_words / RUN_WORDS < opt.threads) {
		fprintf(stderr, "hmm-stress: regions of %zu bytes are too "
			"small (4 pages, and a run of %d words a thread)\n",
			region_len, RUN_WORDS);
		return -1;
	}
	return 0;
}

static int setup(void)
{
	struct hmm_device_attr attr = {
		/* Half the working set each: migrations fit, and fill it. */
		.mem_size = (opt.size_mib << 20) / 2 / PG * PG,
	};
	int ret = hmm_init();

	if (ret == -EPERM || ret == -ENOSYS || ret == -EOPNOTSUPP) {
		fprintf(stderr, "hmm-stress: hmm_init: %s: skipped\n",
			strerror(-ret));
		exit(77);
	}
	struct sigaction sa = { .sa_sigaction = on_sigbus,
				.sa_flags = SA_SIGINFO | SA_NODEFER };
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, NULL))
		return -errno;
	for (unsigned int d = 0; d < opt.devices && !ret; d++)
		ret = hmm_device_open("sim", &attr, &devs[d]);
	if (ret)
		return ret;
	regions = calloc(opt.regions, sizeof(*regions));
	if (!regions)
		return -ENOMEM;
	for (unsigned int r = 0; r < opt.regions; r++) {
		struct region *g = &regions[r];
		pthread_rwlockattr_t la;
		void *p;

		/* Writers first: owners come back constantly. */
		pthread_rwlockattr_init(&la);
		pthread_rwlockattr_setkind_np(&la,
			PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
		pthread_rwlock_init(&g->lock, &la);
		pthread_rwlockattr_destroy(&la);
		g->kind = opt.files ? (int)(r % 4) : (int)(r % 2);
		g->shared = g->kind != R_ANON;
		g->fd = -1;
		g->shadow = malloc(region_len);
		if (!g->shadow)
			return -ENOMEM;
		if (g->kind >= R_MEMFD) {
			char path[] = "/var/tmp/hmm-stress-XXXXXX";
			g->fd = g->kind == R_MEMFD
					? memfd_create("hmm-stress", MFD_CLOEXEC)
					: mkstemp(path);
			if (g->fd < 0)
				return -errno;
			if (g->kind == R_DISK)
				unlink(path);
			if (ftruncate(g->fd, (off_t)region_len))
				return -errno;
			p = mmap(NULL, region_len, PROT_READ | PROT_WRITE,
				 MAP_SHARED, g->fd, 0);
			ret = p == MAP_FAILED ? -errno : 0;
			if (!ret)
				ret = hmm_file_adopt(p, region_len, g->fd, 0);
		} else if (g->shared) {
			ret = hmm_mem_alloc(region_len, 0, &p);
		} else {
			p = map_private(NULL);
			ret = p == MAP_FAILED ? -errno : 0;
			if (!ret)
				ret = hmm_range_adopt(p, region_len, 0);
		}
		if (ret)
			return ret;
		atomic_store(&g->mem, p);
		refill(&thr[0], (int)r);
	}
	return 0;
}

static void start(struct thr *t, const char *name, unsigned int index,
		  void *(*fn)(void *))
{
	uint64_t s = opt.seed ^ ((uint64_t)index * 0xd1b54a32d192ed03ULL);

	snprintf(t->name, sizeof(t->name), "%s", name);
	t->index = index;
	t->rng = splitmix64(&s) | 1;
	t->buf = calloc(DEV_SPAN_WORDS, 8);
	atomic_init(&t->dev, -1);
	atomic_init(&t->region, -1);
	atomic_init(&t->page, -1);
	atomic_init(&t->live, fn != NULL || index == opt.threads + MIGRATORS + 2);
	if (!t->buf) {
		fprintf(stderr, "hmm-stress: out of memory\n");
		exit(2);
	}
	if (fn && pthread_create(&t->tid, NULL, fn, t)) {
		fprintf(stderr, "hmm-stress: pthread_create failed\n");
		exit(2);
	}
}

static void progress(unsigned long sec, uint64_t *prev)
{
	char line[512];
	int k = snprintf(line, sizeof(line), "[%4lus] ops/s", sec);

	for (int i = 0; i < NKINDS; i++) {
		uint64_t n = total(i);

		if (i == NOPS)
			k += snprintf(line + k, sizeof(line) - k, " | refused");
		k += snprintf(line + k, sizeof(line) - k, " %s %" PRIu64,
			      kind_name[i], n - prev[i]);
		prev[i] = n;
	}
	printf("%s | mismatches %lu\n", line, atomic_load(&mismatches));
	fflush(stdout);
}

/* After the run: every word by the CPU, and (before hmm_fini) by a device. */
static void final_check(struct thr *t, bool device, const char *how)
{
	for (unsigned int r = 0; r < opt.regions; r++) {
		uint64_t *mem = atomic_load(&regions[r].mem);

		act(t, how, -1, (int)r, -1);
		check_cpu(t, (int)r, 0, region_words, -1, how);
		for (size_t a = 0; device && a < region_words;
		     a += DEV_SPAN_WORDS) {
			int d = (int)((a / DEV_SPAN_WORDS) % opt.devices);
			int ret = hmm_sim_read(devs[d], &mem[a], t->buf,
					       DEV_SPAN_WORDS * 8, NULL);

			if (ret)
				failure(t, "final hmm_sim_read: %d", ret);
			else
				check_buf(t, (int)r, a, DEV_SPAN_WORDS, t->buf,
					  -1, "final hmm_sim_read");
		}
		beat(t);
	}
}

/*
 * Shared memory refuses to migrate (-EBUSY) while a child maps it; once
 * every child is gone it must migrate again.
 */
static void shared_unbusy(struct thr *t)
{
	for (unsigned int r = 0; opt.fork && r < opt.regions; r++) {
		uint64_t *mem = atomic_load(&regions[r].mem);
		long ret = -EBUSY;

		if (regions[r].kind != R_SHM)
			continue;

		act(t, "hmm_migrate of shared memory after the children", 0,
		    (int)r, 0);
		for (int i = 0; i < 40 && ret == -EBUSY; i++) {
			ret = hmm_migrate(mem, PG, devs[0], 0);
			if (ret == -EBUSY)
				sleep_beat(t, 50, false);
		}
		if (ret < 0 && ret != -ENOMEM)
			failure(t, "region %u: hmm_migrate after every child "
				"exited: %ld (%s)", r, ret, strerror((int)-ret));
	}
}

int main(int argc, char **argv)
{
	unsigned int w0 = 1, m0, nworkers, i;
	uint64_t prev[NKINDS] = { 0 };
	pthread_t wd;
	double t0;
	int ret;

	if (parse_args(argc, argv))
		return 2;
	nworkers = opt.threads;
	m0 = w0 + nworkers;
	nthr = m0 + MIGRATORS + 2;	/* + disruptor, forker */
	thr = aligned_alloc(64, nthr * sizeof(*thr));
	if (!thr)
		return 2;
	memset(thr, 0, nthr * sizeof(*thr));
	start(&thr[0], "main", opt.threads + MIGRATORS + 2, NULL);
	printf("hmm-stress: --seed %" PRIu64 " --seconds %lu --threads %u "
	       "--devices %u --size %lu --regions %u%s%s: %u regions of %zu "
	       "pages%s\n", opt.seed, opt.seconds, opt.threads, opt.devices,
	       opt.size_mib, opt.regions, opt.fork ? "" : " --no-fork",
	       opt.files ? " --files" : "",
	       opt.regions, region_len / PG,
	       opt.fork && QUIESCE_FORK ?
	       " (ASan: threads parked around each fork)" : "");
	fflush(stdout);
	ret = setup();
	if (ret) {
		fprintf(stderr, "hmm-stress: setup: %s\n", strerror(-ret));
		return 2;
	}
	if (pthread_create(&wd, NULL, watchdog, NULL))
		return 2;
	for (i = 0; i < nworkers; i++) {
		char name[24];

		snprintf(name, sizeof(name), "worker%u", i);
		start(&thr[w0 + i], name, i, worker);
	}
	for (i = 0; i < MIGRATORS; i++) {
		char name[24];

		snprintf(name, sizeof(name), "migrator%u", i);
		start(&thr[m0 + i], name, opt.threads + i, migrator);
	}
	start(&thr[m0 + MIGRATORS], "disruptor", opt.threads + MIGRATORS,
	      disruptor);
	start(&thr[m0 + MIGRATORS + 1], "forker", opt.threads + MIGRATORS + 1,
	      opt.fork ? forker : NULL);
	t0 = now_s();
	for (unsigned long s = 1; s <= opt.seconds; s++) {
		act(&thr[0], "sleeping", -1, -1, -1);
		while (now_s() < t0 + s)
			nap(&thr[0], 50);
		progress(s, prev);
		beat(&thr[0]);
	}
	atomic_store(&stop, true);
	for (i = 1; i < nthr; i++) {
		if (i == nthr - 1 && !opt.fork)
			break;
		act(&thr[0], "joining", -1, -1, (long)i);
		pthread_join(thr[i].tid, NULL);
		beat(&thr[0]);
	}
	final_check(&thr[0], true, "final check");
	shared_unbusy(&thr[0]);
	act(&thr[0], "hmm_fini", -1, -1, -1);
	ret = hmm_fini();
	if (ret)
		failure(&thr[0], "hmm_fini: %d", ret);
	final_check(&thr[0], false, "plain read after hmm_fini");
	atomic_store(&watchdog_stop, true);
	pthread_join(wd, NULL);
	printf("totals:");
	for (int k = 0; k < NKINDS; k++)
		printf(" %s %" PRIu64, kind_name[k], total(k));
	printf("\n");
	if (atomic_load(&hangs))
		printf("hangs: %lu\n", atomic_load(&hangs));
	final_line();
	if (atomic_load(&hangs))
		return 3;
	return atomic_load(&mismatches) ? 1 : 0;
}
