/* SPDX-License-Identifier: MIT */
/*
 * Locking a range to a device (hmm_range_lock): the data lives on the
 * device, the CPU gets SIGBUS (the kernel's, with the exact address, in the
 * thread that touched it) until the range is unlocked, the device goes on
 * using it, and nothing is ever lost: not under device-memory pressure,
 * not across fork, munmap, mremap, madvise or device close.
 */
#include <execinfo.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <hmm/hmm_driver.h>

#include "common.h"
#include "probe.h"

#define NPAGES 16

/* ---- catching SIGBUS in any thread ---------------------------------------- */

static void on_fault(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (!probe_jb) {
		void *bt[32];
		backtrace_symbols_fd(bt, backtrace(bt, 32), 2);
		_exit(70 + sig); /* not expected here */
	}
	probe_caught(sig, si);
}

static void catch_faults(void)
{
	struct sigaction sa = { 0 };

	sa.sa_sigaction = on_fault;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	cr_assert_eq(sigaction(SIGBUS, &sa, NULL), 0);
	cr_assert_eq(sigaction(SIGSEGV, &sa, NULL), 0);
}


struct probe_arg {
	volatile uint64_t *p;
	bool write;
	int sig;
	struct caught got;
	pid_t tid;
};

static void *probe_thread(void *arg)
{
	struct probe_arg *a = arg;

	a->tid = (pid_t)syscall(SYS_gettid);
	a->sig = probe(a->p, a->write, 7, NULL, &a->got);
	return NULL;
}

/* A range of NPAGES adopted pages holding pattern @seed, locked to @dev. */
static char *locked_range(hmm_device_t *dev, uint64_t seed)
{
	char *p = map_adopt(NPAGES * PG);
	int r;

	fill_pattern(p, NPAGES * PG, seed);
	r = hmm_range_lock(p, NPAGES * PG, dev);
	cr_assert_eq(r, 0, "hmm_range_lock = %d (%s)", r, strerror(-r));
	return p;
}

static void skip_without_lock(void)
{
	hmm_device_t *dev;
	char *p;
	int r;

	need_hmm();
	dev = open_sim(0);
	p = map_adopt(PG);
	r = hmm_range_lock(p, PG, dev);
	if (r == -EOPNOTSUPP)
		cr_skip_test("no userfaultfd SIGBUS mode on this kernel");
	cr_assert_eq(r, 0, "hmm_range_lock = %d", r);
	cr_assert_eq(hmm_range_unlock(p, PG, dev), 1);
	hmm_device_close(dev);
}

/* ---- the tests -------------------------------------------------------------- */

Test(lock, sigbus_on_read_and_write_in_the_touching_thread, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p;
	struct probe_arg rd, wr;
	pthread_t t1, t2;

	skip_without_lock();
	catch_faults();
	dev = open_sim(0);
	p = locked_range(dev, 0x10c);
	assert_all_loc(p, NPAGES * PG, HMM_LOC_DEVICE, dev);

	rd = (struct probe_arg){ .p = (uint64_t *)(p + 5 * PG + 24) };
	wr = (struct probe_arg){ .p = (uint64_t *)(p + 9 * PG + 8),
				 .write = true };
	cr_assert_eq(pthread_create(&t1, NULL, probe_thread, &rd), 0);
	cr_assert_eq(pthread_create(&t2, NULL, probe_thread, &wr), 0);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	for (int k = 0; k < 2; k++) {
		struct probe_arg *a = k ? &wr : &rd;
		cr_assert_eq(a->sig, SIGBUS, "%s: signal %d, expected SIGBUS",
			     k ? "write" : "read", a->sig);
		cr_assert_eq(a->got.code, BUS_ADRERR, "si_code %d", a->got.code);
		cr_assert_eq(a->got.addr, (uintptr_t)a->p,
			     "si_addr %#lx, touched %p",
			     (unsigned long)a->got.addr, (void *)a->p);
		cr_assert_eq(a->got.tid, a->tid, "signal in thread %d, not %d",
			     a->got.tid, a->tid);
	}
	/* And in the main thread too. */
	cr_assert_eq(probe((uint64_t *)p, false, 0, NULL, NULL), SIGBUS);

	/* The device reads the data, and writes its own. */
	char *buf = malloc(NPAGES * PG);
	cr_assert_eq(hmm_sim_read(dev, p, buf, NPAGES * PG, NULL), 0);
	assert_pattern(buf, NPAGES * PG, 0x10c);
	fill_pattern(buf, NPAGES * PG, 0x20d);
	cr_assert_eq(hmm_sim_write(dev, p, buf, NPAGES * PG, NULL), 0);
	assert_all_loc(p, NPAGES * PG, HMM_LOC_DEVICE, dev);

	/* Unlocked: the CPU sees the device's latest data. */
	cr_assert_eq(hmm_range_unlock(p, NPAGES * PG, dev), NPAGES);
	assert_pattern(p, NPAGES * PG, 0x20d);
	free(buf);
}

Test(lock, system_calls_get_efault, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	int fds[2];
	char *p;

	skip_without_lock();
	dev = open_sim(0);
	p = locked_range(dev, 0x31);
	cr_assert_eq(pipe(fds), 0);
	errno = 0;
	cr_assert_eq(write(fds[1], p, 64), -1);
	cr_assert_eq(errno, EFAULT, "write from a locked page: errno %d", errno);
	cr_assert_eq(write(fds[1], "abcdefgh", 8), 8);
	errno = 0;
	cr_assert_eq(read(fds[0], p + PG, 8), -1);
	cr_assert_eq(errno, EFAULT, "read into a locked page: errno %d", errno);
	cr_assert_eq(hmm_range_unlock(p, NPAGES * PG, dev), NPAGES);
	assert_pattern(p, NPAGES * PG, 0x31);
}

Test(lock, bad_requests_change_nothing, .timeout = T_SHORT)
{
	hmm_device_t *dev, *dev2;
	char *p, *q;

	skip_without_lock();
	catch_faults();
	dev = open_sim(0);
	dev2 = open_sim(0);
	p = locked_range(dev, 0x44);
	q = map_anon(4 * PG);

	cr_assert_eq(hmm_range_lock(p + 1, PG, dev), -EINVAL);
	cr_assert_eq(hmm_range_lock(p, PG + 1, dev), -EINVAL);
	cr_assert_eq(hmm_range_lock(p, 0, dev), -EINVAL);
	cr_assert_eq(hmm_range_lock((void *)-PG, 2 * PG, dev), -EINVAL);
	cr_assert_eq(hmm_range_lock(p, PG, NULL), -EINVAL);
	cr_assert_eq(hmm_range_lock(q, 4 * PG, dev), -ENOENT, "unmanaged");
	cr_assert_eq(hmm_range_unlock(q, 4 * PG, dev), -ENOENT);
	cr_assert_eq(hmm_range_unlock(p, PG, NULL), -EINVAL);
	/* Locked to another device, whole or in part. */
	cr_assert_eq(hmm_range_lock(p, NPAGES * PG, dev2), -EBUSY);
	cr_assert_eq(hmm_range_lock(p + 2 * PG, PG, dev2), -EBUSY);
	/* Partly locked to the same device, partly not. */
	char *r = map_adopt(2 * NPAGES * PG);
	cr_assert_eq(hmm_range_lock(r, NPAGES * PG, dev), 0);
	cr_assert_eq(hmm_range_lock(r, 2 * NPAGES * PG, dev), -EBUSY);
	cr_assert_eq(hmm_range_lock(r, NPAGES * PG, dev), 0, "again: no-op");
	/* The locked range cannot be moved, released or held for atomics. */
	cr_assert_eq(hmm_migrate(p, NPAGES * PG, NULL, 0), -EBUSY);
	cr_assert_eq(hmm_migrate(p, NPAGES * PG, dev2, 0), -EBUSY);
	cr_assert_eq(hmm_range_release(p, NPAGES * PG), -EBUSY);
	cr_assert_eq(hmm_exclusive_begin(p, PG, dev2, HMM_EXCL_REVOKE, 0),
		     -EBUSY);
	/* Nothing changed: still on dev, still locked. */
	assert_all_loc(p, NPAGES * PG, HMM_LOC_DEVICE, dev);
	cr_assert_eq(probe((uint64_t *)p, false, 0, NULL, NULL), SIGBUS);
	/* Unlocking pages not locked to that device does nothing. */
	cr_assert_eq(hmm_range_unlock(p, NPAGES * PG, dev2), 0);
	cr_assert_eq(probe((uint64_t *)p, false, 0, NULL, NULL), SIGBUS);
	/* A closed device takes nothing. */
	hmm_device_t *dev3 = open_sim(0);
	cr_assert_eq(hmm_device_close(dev3), 0);
	cr_assert_eq(hmm_range_lock(r + NPAGES * PG, PG, dev3), -ENODEV);
	cr_assert_eq(hmm_range_unlock(r, PG, dev3), -ENODEV);
	cr_assert_eq(hmm_range_unlock(p, NPAGES * PG, dev), NPAGES);
	assert_pattern(p, NPAGES * PG, 0x44);
	cr_assert_eq(hmm_fini(), 0);
	cr_assert_eq(hmm_range_lock(p, PG, dev), -ESHUTDOWN);
	cr_assert_eq(hmm_range_unlock(p, PG, dev), -ESHUTDOWN);
}

Test(lock, other_devices_are_refused, .timeout = T_SHORT)
{
	hmm_device_t *dev, *dev2;
	uint64_t old;
	char *p, buf[64];

	skip_without_lock();
	dev = open_sim(0);
	dev2 = open_sim(0);
	p = locked_range(dev, 0x55);
	cr_assert_eq(hmm_sim_read(dev2, p, buf, sizeof(buf), NULL), -EACCES);
	cr_assert_eq(hmm_sim_atomic_add(dev2, (uint64_t *)p, 1, &old), -EACCES);
	cr_assert_eq(hmm_sim_atomic_add(dev, (uint64_t *)p, 1, &old), 0);
	cr_assert_eq(old, 0x55);
	cr_assert_eq(hmm_range_unlock(p, NPAGES * PG, dev), NPAGES);
	cr_assert_eq(hmm_sim_read(dev2, p, buf, sizeof(buf), NULL), 0);
	cr_assert_eq(*(uint64_t *)buf, 0x56);
}

/* Locked pages are never evicted; a working set 4x the device's memory
 * streams through the rest of it. */
Test(lock, survives_device_memory_pressure, .timeout = T_LONG)
{
	const size_t dev_pages = 256, len = 4 * dev_pages * PG;
	hmm_device_t *dev;
	char *p, *big;

	skip_without_lock();
	dev = open_sim(dev_pages * PG);
	p = map_adopt(64 * PG);
	fill_pattern(p, 64 * PG, 0x66);
	cr_assert_eq(hmm_range_lock(p, 64 * PG, dev), 0);
	big = map_adopt(len);
	fill_pattern(big, len, 0x77);
	for (int round = 0; round < 2; round++)
		for (size_t off = 0; off < len; off += 64 * PG)
			cr_assert_eq(hmm_migrate(big + off, 64 * PG, dev, 0),
				     64, "round %d offset %zu", round, off);
	assert_all_loc(p, 64 * PG, HMM_LOC_DEVICE, dev);
	assert_pattern(big, len, 0x77);
	/* Filled with locked pages, the device takes no more. */
	char *rest = map_adopt((dev_pages - 64) * PG);
	cr_assert_eq(hmm_range_lock(rest, (dev_pages - 64) * PG, dev), 0);
	long r = hmm_migrate(big, PG, dev, 0);
	cr_assert_eq(r, -ENOMEM, "migrate into a device full of locked pages: "
		     "%ld", r);
	assert_pattern(big, len, 0x77);
	cr_assert_eq(hmm_range_unlock(p, 64 * PG, dev), 64);
	assert_pattern(p, 64 * PG, 0x66);
}

Test(lock, munmap_frees_it, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	size_t used = 1;
	char *p;

	skip_without_lock();
	dev = open_sim(0);
	p = locked_range(dev, 0x88);
	cr_assert_eq(munmap(p, NPAGES * PG), 0);
	cr_assert_eq(hmm_device_mem_usage(dev, &used, NULL), 0);
	cr_assert_eq(used, 0, "%zu device pages still used", used);
	/* The address can be mapped and managed afresh. */
	char *q = mmap(p, NPAGES * PG, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (q == p) {
		cr_assert_eq(hmm_range_adopt(q, NPAGES * PG, 0), 0);
		assert_zero(q, NPAGES * PG);
	}
}

Test(lock, madvise_dontneed_zeroes_the_device_copy, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p, *buf = malloc(NPAGES * PG);

	skip_without_lock();
	catch_faults();
	dev = open_sim(0);
	p = locked_range(dev, 0x99);
	cr_assert_eq(madvise(p + 4 * PG, 4 * PG, MADV_DONTNEED), 0);
	assert_all_loc(p, NPAGES * PG, HMM_LOC_DEVICE, dev);
	cr_assert_eq(probe((uint64_t *)(p + 4 * PG), false, 0, NULL, NULL),
		     SIGBUS);
	cr_assert_eq(hmm_sim_read(dev, p, buf, NPAGES * PG, NULL), 0);
	cr_assert_eq(pattern_mismatch(buf, 4 * PG, 0x99, 0), -1);
	cr_assert_eq(zero_mismatch(buf + 4 * PG, 4 * PG), -1);
	cr_assert_eq(pattern_mismatch(buf + 8 * PG, 8 * PG, 0x99, 8 * PG / 8),
		     -1);
	cr_assert_eq(hmm_range_unlock(p, NPAGES * PG, dev), NPAGES);
	cr_assert_eq(memcmp(p, buf, NPAGES * PG), 0);
	free(buf);
}

Test(lock, mremap_moves_the_lock, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p, *q;

	skip_without_lock();
	catch_faults();
	dev = open_sim(0);
	p = locked_range(dev, 0xab);
	q = mremap(p, NPAGES * PG, NPAGES * PG, MREMAP_MAYMOVE | MREMAP_FIXED,
		   (char *)map_anon(NPAGES * PG));
	cr_assert_neq(q, MAP_FAILED);
	cr_assert_eq(probe((uint64_t *)(q + PG), false, 0, NULL, NULL), SIGBUS);
	cr_assert_eq(probe((uint64_t *)(p + PG), false, 0, NULL, NULL), SIGSEGV,
		     "the old address is gone");
	cr_assert_eq(hmm_range_unlock(q, NPAGES * PG, dev), NPAGES);
	assert_pattern(q, NPAGES * PG, 0xab);
}

Test(lock, device_close_unlocks_with_the_devices_data, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p, *buf = malloc(NPAGES * PG);

	skip_without_lock();
	dev = open_sim(0);
	p = locked_range(dev, 0xbc);
	fill_pattern(buf, NPAGES * PG, 0xcd);
	cr_assert_eq(hmm_sim_write(dev, p, buf, NPAGES * PG, NULL), 0);
	cr_assert_eq(hmm_device_close(dev), 0);
	assert_all_loc(p, NPAGES * PG, HMM_LOC_SYSTEM, NULL);
	assert_pattern(p, NPAGES * PG, 0xcd);
	free(buf);
}

/* Locks are not inherited: the child reads the data; the parent's range
 * stays locked. */
Test(lock, fork_child_reads_the_data, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	int status;
	char *p;
	pid_t pid;

	skip_without_lock();
	catch_faults();
	dev = open_sim(0);
	p = locked_range(dev, 0xde);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		long bad = pattern_mismatch(p, NPAGES * PG, 0xde, 0);
		p[0] = 1; /* writable too */
		_exit(bad == -1 ? 0 : 1);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "child: status %#x", status);
	cr_assert_eq(probe((uint64_t *)p, false, 0, NULL, NULL), SIGBUS);
	cr_assert_eq(hmm_range_unlock(p, NPAGES * PG, dev), NPAGES);
	assert_pattern(p, NPAGES * PG, 0xde);
}

/* Threads keep reading while the range is locked and unlocked over and
 * over: each read gets the data or SIGBUS, never a wrong value, never a
 * crash (the switch's PROT_NONE moment is waited out). */
struct hammer {
	const uint64_t *p;
	atomic_bool stop;
	atomic_ulong ok, bus, bad;
};

static void *hammer_main(void *arg)
{
	struct hammer *h = arg;
	unsigned seed = (unsigned)(uintptr_t)&seed;

	while (!atomic_load(&h->stop)) {
		size_t w = (size_t)rand_r(&seed) % (NPAGES * WORDS_PER_PAGE);
		uint64_t v = 0;
		int sig = probe((volatile uint64_t *)&h->p[w], false, 0, &v,
				NULL);
		if (sig == SIGBUS)
			atomic_fetch_add(&h->bus, 1);
		else if (sig || v != (w ^ 0xef))
			atomic_fetch_add(&h->bad, 1);
		else
			atomic_fetch_add(&h->ok, 1);
	}
	return NULL;
}

Test(lock, reads_racing_lock_and_unlock, .timeout = T_LONG)
{
	struct hammer h = { 0 };
	hmm_device_t *dev;
	pthread_t t[2];
	char *p;

	skip_without_lock();
	catch_faults();
	dev = open_sim(0);
	p = map_adopt(NPAGES * PG);
	fill_pattern(p, NPAGES * PG, 0xef);
	h.p = (const uint64_t *)p;
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, hammer_main, &h), 0);
	int locked = 0;
	/* 200 rounds, and on (up to 2000) until the readers met both a lock
	 * and its absence: a loaded machine may not run them in time. */
	for (int round = 0;
	     round < 200 || (round < 2000 && (!atomic_load(&h.ok) ||
					       !atomic_load(&h.bus)));
	     round++) {
		int r = hmm_range_lock(p, NPAGES * PG, dev);
		cr_assert(r == 0 || r == -EBUSY, "round %d: lock = %d", round, r);
		locked += r == 0;
		usleep(500);
		long u = hmm_range_unlock(p, NPAGES * PG, dev);
		cr_assert(u == (r == 0 ? NPAGES : 0), "round %d: unlock = %ld",
			  round, u);
	}
	atomic_store(&h.stop, true);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	cr_assert_eq(atomic_load(&h.bad), 0, "%lu bad reads",
		     atomic_load(&h.bad));
	cr_assert_gt(locked, 0, "never locked");
	cr_assert_gt(atomic_load(&h.ok), 0);
	cr_assert_gt(atomic_load(&h.bus), 0, "no read ever met the lock");
	assert_pattern(p, NPAGES * PG, 0xef);
}

/* Memory of hmm_mem_alloc (shared memory) locks the same way. */
Test(lock, shared_memory, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p, *buf = malloc(NPAGES * PG);

	skip_without_lock();
	catch_faults();
	dev = open_sim(0);
	p = alloc_managed(NPAGES * PG);
	fill_pattern(p, NPAGES * PG, 0x5a);
	cr_assert_eq(hmm_range_lock(p, NPAGES * PG, dev), 0);
	assert_all_loc(p, NPAGES * PG, HMM_LOC_DEVICE, dev);
	cr_assert_eq(probe((uint64_t *)(p + 3 * PG), true, 1, NULL, NULL),
		     SIGBUS);
	cr_assert_eq(hmm_sim_read(dev, p, buf, NPAGES * PG, NULL), 0);
	assert_pattern(buf, NPAGES * PG, 0x5a);
	fill_pattern(buf, NPAGES * PG, 0x6b);
	cr_assert_eq(hmm_sim_write(dev, p, buf, NPAGES * PG, NULL), 0);
	cr_assert_eq(hmm_range_unlock(p, NPAGES * PG, dev), NPAGES);
	assert_pattern(p, NPAGES * PG, 0x6b);
	cr_assert_eq(hmm_mem_free(p, NPAGES * PG), 0);
	free(buf);
}

/* Shared memory cannot stay locked across a fork (parent and child share
 * its pages): the fork unlocks it and brings it home; both see the data. */
Test(lock, fork_unlocks_shared_memory, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	int status;
	char *p, *buf = malloc(NPAGES * PG);
	pid_t pid;

	skip_without_lock();
	catch_faults();
	dev = open_sim(0);
	p = alloc_managed(NPAGES * PG);
	fill_pattern(p, NPAGES * PG, 0x71);
	cr_assert_eq(hmm_range_lock(p, NPAGES * PG, dev), 0);
	fill_pattern(buf, NPAGES * PG, 0x72);
	cr_assert_eq(hmm_sim_write(dev, p, buf, NPAGES * PG, NULL), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0)
		_exit(pattern_mismatch(p, NPAGES * PG, 0x72, 0) == -1 ? 0 : 1);
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "child: status %#x", status);
	cr_assert_eq(probe((uint64_t *)p, false, 0, NULL, NULL), 0,
		     "the parent's range is unlocked");
	assert_pattern(p, NPAGES * PG, 0x72);
	cr_assert_eq(hmm_range_unlock(p, NPAGES * PG, dev), 0);
	free(buf);
}

/* A lock whose switch fails changes nothing, and a thread that faulted
 * meanwhile is not left waiting. */
Test(lock, failed_switch_changes_nothing, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p;
	int r;

	skip_without_lock();
	catch_faults();
	dev = open_sim(0);
	p = map_adopt(NPAGES * PG);
	fill_pattern(p, NPAGES * PG, 0x73);
	cr_assert_eq(hmm_inject_fault("uffd_unregister", 0, 0, 1), 0);
	r = hmm_range_lock(p, NPAGES * PG, dev);
	cr_assert_eq(r, -ENOMEM, "hmm_range_lock with unregister failing: %d",
		     r);
	/* Not locked: the CPU reads its data (bringing pages home). */
	cr_assert_eq(probe((uint64_t *)(p + 2 * PG), false, 0, NULL, NULL), 0);
	assert_pattern(p, NPAGES * PG, 0x73);
	cr_assert_eq(hmm_range_unlock(p, NPAGES * PG, dev), 0);
	/* And it can be locked afterwards. */
	cr_assert_eq(hmm_range_lock(p, NPAGES * PG, dev), 0);
	cr_assert_eq(hmm_range_unlock(p, NPAGES * PG, dev), NPAGES);
	assert_pattern(p, NPAGES * PG, 0x73);
}

/* The last resort: the range could be registered with neither descriptor
 * (both registrations fail).  The data lands in place; nothing is lost. */
Test(lock, no_descriptor_takes_the_range, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p;
	int r;

	skip_without_lock();
	catch_faults();
	dev = open_sim(0);
	p = map_adopt(NPAGES * PG);
	fill_pattern(p, NPAGES * PG, 0x7a);
	cr_assert_eq(hmm_migrate(p, NPAGES * PG, dev, 0), NPAGES);
	cr_assert_eq(hmm_inject_fault("uffd_register", 0, 0, 2), 0);
	r = hmm_range_lock(p, NPAGES * PG, dev);
	cr_assert_eq(r, -ENOMEM, "hmm_range_lock with register failing: %d",
		     r);
	cr_assert_eq(probe((uint64_t *)p, false, 0, NULL, NULL), 0);
	assert_pattern(p, NPAGES * PG, 0x7a);
	/* Whatever libhmm does with the range next keeps the data. */
	long m = hmm_migrate(p, NPAGES * PG, dev, 0);
	cr_log_info("hmm_migrate after the failed lock: %ld", m);
	assert_pattern(p, NPAGES * PG, 0x7a);
}
