/* SPDX-License-Identifier: MIT */
/*
 * Read duplication (HMM_ADVISE_READ_MOSTLY): devices that read get copies
 * in their own memory while the page stays in system memory; every write
 * (CPU or device), drop, unmap, migration, unset, close and shortage of
 * device memory removes them, and readers see the data as it is.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>

#include <hmm/hmm_driver.h>

#include "common.h"

#define NP 64

static void need_wp(void)
{
	if (!(hmm_caps() & HMM_CAP_WP))
		cr_skip_test("no userfaultfd write-protect faults here");
}

/* The device reads the word at @w. */
static uint64_t dev_word(hmm_device_t *dev, const void *w)
{
	uint64_t v = 0;
	int r = hmm_sim_read(dev, w, &v, sizeof(v), NULL);

	cr_assert_eq(r, 0, "hmm_sim_read = %d", r);
	return v;
}

/* @p (NP pages, @seed's pattern) read-mostly, read by @a and @b: each
 * holds a copy of every page, which stays in system memory. */
static void dup_on_both(char *p, uint64_t seed, hmm_device_t *a,
			hmm_device_t *b)
{
	uint64_t c0 = stat_of("dup_pages_created");
	struct hmm_advice_info ai;

	cr_assert_eq(hmm_advise(p, NP * PG, HMM_ADVISE_READ_MOSTLY, NULL), 0);
	cr_assert_eq(hmm_advice_get(p, &ai), 0);
	cr_assert_eq(ai.read_mostly, 1);
	assert_dev_pattern(a, p, 0, NP, seed);
	assert_dev_pattern(b, p, 0, NP, seed);
	cr_assert_eq(stat_of("dup_pages_created") - c0, 2 * NP,
		     "copies made: %" PRIu64 ", expected %d",
		     stat_of("dup_pages_created") - c0, 2 * NP);
	cr_assert_eq(dev_used(a), NP);
	cr_assert_eq(dev_used(b), NP);
	assert_all_loc(p, NP * PG, HMM_LOC_SYSTEM, NULL);
}

Test(dup, reads_make_copies_on_each_device, .timeout = T_SHORT)
{
	hmm_device_t *a, *b;
	uint64_t c0, f0, d0;
	char *p;

	need_hmm();
	need_wp();
	a = open_sim(0);
	b = open_sim(0);
	p = map_adopt(NP * PG);
	fill_pattern(p, NP * PG, 21);
	dup_on_both(p, 21, a, b);
	/* Read again: the copies are there, the devices do not fault. */
	c0 = stat_of("dup_pages_created");
	d0 = stat_of("device_faults");
	assert_dev_pattern(a, p, 0, NP, 21);
	assert_dev_pattern(b, p, 0, NP, 21);
	cr_assert_eq(stat_of("dup_pages_created"), c0);
	cr_assert_eq(stat_of("device_faults"), d0,
		     "devices faulted on their own copies");
	/* The CPU reads its copy without a fault. */
	f0 = stat_of("cpu_faults");
	assert_pattern(p, NP * PG, 21);
	cr_assert_eq(stat_of("cpu_faults"), f0, "a CPU read faulted");
}

Test(dup, cpu_write_collapses_every_copy, .timeout = T_SHORT)
{
	hmm_device_t *a, *b;
	uint64_t k0;
	char *p;

	need_hmm();
	need_wp();
	a = open_sim(0);
	b = open_sim(0);
	p = map_adopt(NP * PG);
	fill_pattern(p, NP * PG, 22);
	dup_on_both(p, 22, a, b);
	k0 = stat_of("dup_pages_collapsed");
	uint64_t *w = (uint64_t *)(p + 5 * PG);
	*w = 0xabcdef;
	cr_assert_eq(stat_of("dup_pages_collapsed") - k0, 2,
		     "one page's two copies should go");
	cr_assert_eq(dev_used(a), NP - 1);
	cr_assert_eq(dev_used(b), NP - 1);
	cr_assert_eq(dev_word(a, w), 0xabcdef);
	cr_assert_eq(dev_word(b, w), 0xabcdef);
	/* Every page written: every copy goes, and the devices read what
	 * the CPU wrote. */
	fill_pattern(p, NP * PG, 23);
	assert_dev_pattern(a, p, 0, NP, 23);
	assert_dev_pattern(b, p, 0, NP, 23);
	assert_pattern(p, NP * PG, 23);
}

Test(dup, device_write_collapses_every_copy, .timeout = T_SHORT)
{
	hmm_device_t *a, *b;
	char *p, *buf;

	need_hmm();
	need_wp();
	a = open_sim(0);
	b = open_sim(0);
	p = map_adopt(NP * PG);
	fill_pattern(p, NP * PG, 24);
	dup_on_both(p, 24, a, b);
	buf = malloc(4 * PG);
	cr_assert_not_null(buf);
	fill_pattern(buf, 4 * PG, 99);
	uint64_t k0 = stat_of("dup_pages_collapsed");
	cr_assert_eq(hmm_sim_write(a, p + 3 * PG, buf, 4 * PG, NULL), 0);
	cr_assert_eq(stat_of("dup_pages_collapsed") - k0, 8);
	cr_assert_eq(pattern_mismatch(p + 3 * PG, 4 * PG, 99, 0), -1,
		     "the CPU does not see the device's write");
	char *rb = malloc(4 * PG);
	cr_assert_eq(hmm_sim_read(b, p + 3 * PG, rb, 4 * PG, NULL), 0);
	cr_assert_eq(memcmp(rb, buf, 4 * PG), 0,
		     "the other device does not see the write");
	cr_assert_eq(hmm_sim_read(a, p + 3 * PG, rb, 4 * PG, NULL), 0);
	cr_assert_eq(memcmp(rb, buf, 4 * PG), 0);
	/* The rest kept its copies and its data. */
	assert_dev_pattern(b, p, 8, NP - 8, 24);
	free(rb);
	free(buf);
}

Test(dup, drop_and_unmap_free_copies, .timeout = T_SHORT)
{
	hmm_device_t *a, *b;
	char *p;

	need_hmm();
	need_wp();
	a = open_sim(0);
	b = open_sim(0);
	p = map_adopt(NP * PG);
	fill_pattern(p, NP * PG, 25);
	dup_on_both(p, 25, a, b);
	cr_assert_eq(madvise(p, 8 * PG, MADV_DONTNEED), 0);
	cr_assert_eq(wait_dev_used(a, NP - 8), NP - 8);
	cr_assert_eq(wait_dev_used(b, NP - 8), NP - 8);
	char *z = malloc(8 * PG);
	cr_assert_eq(hmm_sim_read(b, p, z, 8 * PG, NULL), 0);
	assert_zero(z, 8 * PG);
	free(z);
	assert_zero(p, 8 * PG);
	assert_dev_pattern(a, p, 8, NP - 8, 25);
	/* The copies made of the zeros after the drop go with the unmap. */
	cr_assert_eq(munmap(p, NP * PG), 0);
	cr_assert_eq(wait_dev_used(a, 0), 0);
	cr_assert_eq(wait_dev_used(b, 0), 0);
}

Test(dup, shared_memory_copies, .timeout = T_SHORT)
{
	hmm_device_t *a, *b;
	char *s;

	need_hmm();
	need_wp();
	a = open_sim(0);
	b = open_sim(0);
	s = alloc_managed(NP * PG);
	fill_pattern(s, NP * PG, 26);
	dup_on_both(s, 26, a, b);
	fill_pattern(s, 2 * PG, 27);
	assert_dev_pattern(a, s, 0, 2, 27);
	assert_dev_pattern(b, s, 0, 2, 27);
	assert_dev_pattern(b, s, 2, NP - 2, 26);
	/* A drop (MADV_REMOVE punches shared memory) takes them. */
	cr_assert_eq(madvise(s + 2 * PG, 2 * PG, MADV_REMOVE), 0);
	char *z = malloc(2 * PG);
	cr_assert_eq(hmm_sim_read(a, s + 2 * PG, z, 2 * PG, NULL), 0);
	assert_zero(z, 2 * PG);
	free(z);
	cr_assert_eq(hmm_mem_free(s, NP * PG), 0);
	cr_assert_eq(wait_dev_used(a, 0), 0);
	cr_assert_eq(wait_dev_used(b, 0), 0);
}

Test(dup, migrate_and_unset_remove_copies, .timeout = T_SHORT)
{
	hmm_device_t *a, *b;
	uint64_t f0;
	char *p;

	need_hmm();
	need_wp();
	a = open_sim(0);
	b = open_sim(0);
	p = map_adopt(NP * PG);
	fill_pattern(p, NP * PG, 28);
	dup_on_both(p, 28, a, b);
	/* A migration moves the one copy; the duplicates go first. */
	assert_migrate(p, 16 * PG, a, 16);
	assert_all_loc(p, 16 * PG, HMM_LOC_DEVICE, a);
	cr_assert_eq(dev_used(b), NP - 16);
	assert_pattern(p, 16 * PG, 28);
	settle(p, 16 * PG);
	/* Unset: every copy goes, and the CPU writes without a fault. */
	cr_assert_eq(hmm_advise(p, NP * PG, HMM_ADVISE_UNSET_READ_MOSTLY, NULL),
		     0);
	cr_assert_eq(dev_used(a), 0);
	cr_assert_eq(dev_used(b), 0);
	f0 = stat_of("cpu_faults");
	for (size_t i = 16 * WORDS_PER_PAGE; i < NP * WORDS_PER_PAGE; i++)
		((uint64_t *)p)[i] = i ^ 29;
	cr_assert_eq(stat_of("cpu_faults"), f0,
		     "the write protection stayed after unset");
	assert_dev_pattern(b, p, 16, NP - 16, 29);
	cr_assert_eq(dev_used(b), 0, "copies made without the advice");
}

/* A device whose memory is full gets what fits; copies are the first to
 * give way when a migration needs the room; a close frees the rest. */
Test(dup, device_memory_limits, .timeout = T_SHORT)
{
	hmm_device_t *a, *b;
	char *p, *q;

	need_hmm();
	need_wp();
	a = open_sim(16 * PG);
	b = open_sim(0);
	p = map_adopt(NP * PG);
	q = map_adopt(8 * PG);
	fill_pattern(p, NP * PG, 30);
	fill_pattern(q, 8 * PG, 31);
	cr_assert_eq(hmm_advise(p, NP * PG, HMM_ADVISE_READ_MOSTLY, NULL), 0);
	assert_dev_pattern(a, p, 0, NP, 30);
	cr_assert_eq(dev_used(a), 16, "copies beyond the device's memory");
	assert_dev_pattern(a, p, 0, NP, 30);
	/* The room a migration needs comes from the copies. */
	assert_migrate(q, 8 * PG, a, 8);
	assert_all_loc(q, 8 * PG, HMM_LOC_DEVICE, a);
	assert_dev_pattern(a, p, 0, NP, 30);
	assert_pattern(q, 8 * PG, 31);
	/* Close with copies on it: they go, the other device's stay. */
	assert_dev_pattern(b, p, 0, NP, 30);
	cr_assert_eq(dev_used(b), NP);
	cr_assert_eq(hmm_device_close(a), 0);
	fill_pattern(p, NP * PG, 32);
	assert_dev_pattern(b, p, 0, NP, 32);
}

Test(dup, fork_child_writes_and_reads, .timeout = T_SHORT)
{
	hmm_device_t *a, *b;
	char *p;
	pid_t pid;
	int st;

	need_hmm();
	need_wp();
	a = open_sim(0);
	b = open_sim(0);
	p = map_adopt(NP * PG);
	fill_pattern(p, NP * PG, 33);
	dup_on_both(p, 33, a, b);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		/* The child's copy of the memory is its own: it writes it
		 * and its devices read what it wrote. */
		fill_pattern(p, NP * PG, 34);
		char *buf = malloc(NP * PG);
		if (!buf || hmm_sim_read(a, p, buf, NP * PG, NULL) ||
		    pattern_mismatch(buf, NP * PG, 34, 0) != -1)
			_exit(1);
		_exit(0);
	}
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		  "child failed (status %#x)", st);
	/* The parent's copies are intact, and its writes still collapse
	 * them. */
	assert_dev_pattern(a, p, 0, NP, 33);
	fill_pattern(p, NP * PG, 35);
	assert_dev_pattern(a, p, 0, NP, 35);
	assert_dev_pattern(b, p, 0, NP, 35);
}

/*
 * Coherence under races: a CPU thread writes round after round into every
 * page while two devices read all pages over and over.  A round finished
 * before a device read began must be seen by it (never an older value).
 */
struct race {
	char *p;
	_Atomic uint64_t done;	/* last round written completely */
	_Atomic int stop;
};

static void *writer(void *arg)
{
	struct race *r = arg;

	for (uint64_t round = 1; !atomic_load(&r->stop); round++) {
		for (size_t i = 0; i < NP; i++)
			((_Atomic uint64_t *)(r->p + i * PG))[0] = round;
		atomic_store(&r->done, round);
		usleep(200);
	}
	return NULL;
}

Test(dup, readers_see_every_finished_write, .timeout = T_LONG)
{
	hmm_device_t *dev[2];
	struct race r = { 0 };
	pthread_t th;
	uint64_t *buf = malloc(NP * PG);
	uint64_t end, reads = 0, k0;

	need_hmm();
	need_wp();
	dev[0] = open_sim(0);
	dev[1] = open_sim(0);
	r.p = map_adopt(NP * PG);
	memset(r.p, 0, NP * PG);
	cr_assert_eq(hmm_advise(r.p, NP * PG, HMM_ADVISE_READ_MOSTLY, NULL),
		     0);
	k0 = stat_of("dup_pages_collapsed");
	cr_assert_eq(pthread_create(&th, NULL, writer, &r), 0);
	end = now_ms() + 2000;
	while (now_ms() < end) {
		for (int d = 0; d < 2; d++) {
			uint64_t before = atomic_load(&r.done);
			cr_assert_eq(hmm_sim_read(dev[d], r.p, buf, NP * PG,
						  NULL),
				     0);
			for (size_t i = 0; i < NP; i++)
				cr_assert_geq(buf[i * WORDS_PER_PAGE], before,
					      "device %d read round %" PRIu64
					      " of page %zu after round %" PRIu64
					      " was done",
					      d, buf[i * WORDS_PER_PAGE], i,
					      before);
			reads++;
		}
	}
	atomic_store(&r.stop, 1);
	pthread_join(th, NULL);
	cr_assert_gt(reads, 10);
	cr_assert_gt(stat_of("dup_pages_collapsed"), k0,
		     "no copy was ever collapsed: the race did not happen");
	free(buf);
}

/* A prefetch to a device of read-mostly memory makes copies there (the
 * pages stay in system memory); a second one finds them in place. */
Test(dup, prefetch_makes_copies, .timeout = T_SHORT)
{
	hmm_device_t *a, *b;
	hmm_prefetch_t *pf;
	uint64_t c0, f0, in0;
	char *p;

	need_hmm();
	need_wp();
	a = open_sim(0);
	b = open_sim(0);
	p = map_adopt(2 * NP * PG);
	fill_pattern(p, 2 * NP * PG, 36);
	/* The first half read-mostly, the second not: it moves. */
	cr_assert_eq(hmm_advise(p, NP * PG, HMM_ADVISE_READ_MOSTLY, NULL), 0);
	c0 = stat_of("dup_pages_created");
	cr_assert_eq(hmm_prefetch_start(p, 2 * NP * PG, a, 0, &pf), 0);
	cr_assert_eq(hmm_prefetch_wait(pf, -1), 2 * NP);
	cr_assert_eq(hmm_prefetch_release(pf), 2 * NP);
	cr_assert_eq(stat_of("dup_pages_created") - c0, NP);
	assert_all_loc(p, NP * PG, HMM_LOC_SYSTEM, NULL);
	assert_all_loc(p + NP * PG, NP * PG, HMM_LOC_DEVICE, a);
	cr_assert_eq(dev_used(a), 2 * NP);
	/* The device reads its copies without faulting for them. */
	f0 = stat_of("device_faults");
	assert_dev_pattern(a, p, 0, NP, 36);
	cr_assert_leq(stat_of("device_faults") - f0, 1);
	/* Again: in place, done in the call. */
	in0 = stat_of("prefetches_in_place");
	cr_assert_eq(hmm_prefetch_start(p, 2 * NP * PG, a, 0, &pf), 0);
	cr_assert_eq(stat_of("prefetches_in_place") - in0, 1);
	cr_assert_eq(hmm_prefetch_release(pf), 0);
	/* Another device's prefetch makes its own copies. */
	cr_assert_eq(hmm_prefetch_start(p, NP * PG, b, 0, &pf), 0);
	cr_assert_eq(hmm_prefetch_wait(pf, -1), NP);
	hmm_prefetch_release(pf);
	cr_assert_eq(dev_used(b), NP);
	assert_dev_pattern(b, p, 0, NP, 36);
	/* A write still reaches every reader. */
	fill_pattern(p, NP * PG, 37);
	assert_dev_pattern(a, p, 0, NP, 37);
	assert_dev_pattern(b, p, 0, NP, 37);
}

/* Shared memory with copies, then a fork: the child writes the shared
 * pages through its own mapping, where no write-protect fault of ours
 * happens, so the copies must be gone before it can; the parent's devices
 * read what the child wrote. */
Test(dup, fork_shared_memory_child_writes, .timeout = T_SHORT)
{
	hmm_device_t *a, *b;
	char *s;
	pid_t pid;
	int st;

	need_hmm();
	need_wp();
	a = open_sim(0);
	b = open_sim(0);
	s = alloc_managed(NP * PG);
	fill_pattern(s, NP * PG, 41);
	dup_on_both(s, 41, a, b);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		fill_pattern(s, NP * PG, 42);
		_exit(0);
	}
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	assert_dev_pattern(a, s, 0, NP, 42);
	assert_dev_pattern(b, s, 0, NP, 42);
	assert_pattern(s, NP * PG, 42);
}

/* What hmm_range_fault reports of pages with copies: to a device with
 * one, its own copy (device memory, read-only), even in a snapshot; to
 * anyone else, the system page without write access (a write must fault
 * through the CPU, which removes the copies). */
Test(dup, range_fault_reports_copies, .timeout = T_SHORT)
{
	hmm_device_t *a, *b;
	uint64_t pfns[NP];
	char *p;

	need_hmm();
	need_wp();
	a = open_sim(0);
	b = open_sim(0);
	p = map_adopt(NP * PG);
	fill_pattern(p, NP * PG, 43);
	cr_assert_eq(hmm_advise(p, NP * PG, HMM_ADVISE_READ_MOSTLY, NULL), 0);
	assert_dev_pattern(a, p, 0, NP, 43);
	for (int mode = 0; mode < 3; mode++) {
		struct hmm_range r = {
			.start = (uintptr_t)p,
			.end = (uintptr_t)p + NP * PG,
			.hmm_pfns = pfns,
			/* a snapshot, a read fault, a read fault by b */
			.default_flags = mode ? HMM_PFN_REQ_FAULT : 0,
			.dev_private_owner =
				hmm_device_owner(mode == 2 ? b : a),
		};
		int ret;
		while ((ret = hmm_range_fault(&r)) == -EBUSY)
			;
		cr_assert_eq(ret, 0, "hmm_range_fault = %d", ret);
		for (size_t i = 0; i < NP; i++) {
			cr_assert(pfns[i] & HMM_PFN_VALID, "page %zu", i);
			cr_assert(!(pfns[i] & HMM_PFN_WRITE),
				  "mode %d page %zu: writable", mode, i);
			cr_assert(pfns[i] & HMM_PFN_DEVICE,
				  "mode %d page %zu: not the device's copy",
				  mode, i);
		}
	}
	/* No owner: the system pages, read-only. */
	struct hmm_range r = {
		.start = (uintptr_t)p, .end = (uintptr_t)p + NP * PG,
		.hmm_pfns = pfns,
	};
	cr_assert_eq(hmm_range_fault(&r), 0);
	for (size_t i = 0; i < NP; i++) {
		cr_assert(pfns[i] & HMM_PFN_VALID);
		cr_assert(!(pfns[i] & (HMM_PFN_WRITE | HMM_PFN_DEVICE)),
			  "page %zu: %#" PRIx64, i, pfns[i]);
	}
	/* b's read fault made copies in b's memory too. */
	cr_assert_eq(dev_used(b), NP);
}
