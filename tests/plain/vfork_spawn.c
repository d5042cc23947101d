/* SPDX-License-Identifier: MIT */
/*
 * vfork, posix_spawn and system() with data on a device.
 *
 * A vfork() child shares the parent's address space and its userfaultfd
 * registration: its reads of device-resident pages fault like the
 * parent's would and are served by the parent's fault-service thread,
 * which keeps running while the parent's vforking thread is suspended.
 * The child checks every word and _exit()s with 0 (right), 1 (a wrong
 * word) or 2 (a wrong word in the second buffer).  No pthread_atfork
 * handler runs for vfork, so nothing may depend on one.
 *
 * posix_spawn (glibc: clone(CLONE_VM | CLONE_VFORK)) of /bin/true and
 * system("true") must work and report exit status 0, with data on the
 * device, and the data must be intact afterwards.
 */
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#include "plain.h"

#ifdef __SANITIZE_THREAD__
/*
 * ThreadSanitizer turns vfork into fork and by default kills a child of a
 * multi-threaded process that starts a thread, which libhmm's fork
 * handling does: let it (TSAN_OPTIONS from the environment still apply).
 */
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
	return "die_after_fork=0";
}
#endif

#define PG HMM_PAGE_SIZE
#define NPAGES 64
#define LEN (NPAGES * PG)
#define SEED_A 0x7a7aULL
#define SEED_B 0x7b7bULL

extern char **environ;

static hmm_device_t *dev;
static uint64_t *bufa, *bufb;

static void fill(uint64_t *p, uint64_t seed)
{
	for (size_t i = 0; i < LEN / 8; i++)
		p[i] = i ^ seed;
}

static long mismatch(const uint64_t *p, uint64_t seed)
{
	const volatile uint64_t *w = p;

	for (size_t i = 0; i < LEN / 8; i++)
		if (w[i] != (i ^ seed))
			return (long)i;
	return -1;
}

static void to_device(void)
{
	long n;

	n = hmm_migrate(bufa, LEN, dev, 0);
	CHECK(n >= 0, "hmm_migrate a = %ld", n);
	n = hmm_migrate(bufb, LEN, dev, 0);
	CHECK(n >= 0, "hmm_migrate b = %ld", n);
	CHECK(hmm_page_location(bufa, NULL) == HMM_LOC_DEVICE &&
	      hmm_page_location(bufb + LEN / 8 - 1, NULL) == HMM_LOC_DEVICE,
	      "the data is not on the device");
}

/* Waits for @pid at most 10 s; returns its status. */
static int wait_bounded(pid_t pid, const char *what)
{
	int st;

	for (int i = 0; i < 1000; i++) {
		pid_t w = waitpid(pid, &st, WNOHANG);

		CHECK(w >= 0, "%s: waitpid: %s", what, strerror(errno));
		if (w == pid)
			return st;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	CHECK(0, "%s: the child did not finish in 10 s", what);
	return -1;
}

static void vfork_reads(void)
{
	volatile int code = 0;
	pid_t pid;
	int st;

	to_device();
	pid = vfork();
	if (pid == 0) {
		/* Only loads and _exit here: the parent's stack is ours. */
		const volatile uint64_t *a = bufa, *b = bufb;

		for (size_t i = 0; i < LEN / 8 && !code; i++)
			if (a[i] != (i ^ SEED_A))
				code = 1;
		for (size_t i = 0; i < LEN / 8 && !code; i++)
			if (b[i] != (i ^ SEED_B))
				code = 2;
		_exit(code);
	}
	CHECK(pid > 0, "vfork: %s", strerror(errno));
	st = wait_bounded(pid, "vfork");
	CHECK(WIFEXITED(st), "the vfork child was killed by signal %d",
	      WTERMSIG(st));
	CHECK(WEXITSTATUS(st) != 1 && WEXITSTATUS(st) != 2,
	      "the vfork child read a wrong word from device-resident "
	      "buffer %c", WEXITSTATUS(st) == 1 ? 'a' : 'b');
	CHECK(WEXITSTATUS(st) == 0, "the vfork child exited with %d",
	      WEXITSTATUS(st));
	/* The child's reads brought the pages home, for the parent too. */
	CHECK(hmm_page_location(bufa, NULL) == HMM_LOC_SYSTEM,
	      "a page the vfork child read is not in system memory");
}

static void spawn_true(void)
{
	char *args[] = { "true", NULL };
	pid_t pid;
	int r, st;

	to_device();
	r = posix_spawn(&pid, "/bin/true", NULL, NULL, args, environ);
	CHECK(r == 0, "posix_spawn /bin/true: %s", strerror(r));
	st = wait_bounded(pid, "posix_spawn");
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
	      "/bin/true from posix_spawn: status %#x", st);

	r = posix_spawnp(&pid, "true", NULL, NULL, args, environ);
	CHECK(r == 0, "posix_spawnp true: %s", strerror(r));
	st = wait_bounded(pid, "posix_spawnp");
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
	      "true from posix_spawnp: status %#x", st);
}

static void system_true(void)
{
	int st;

	to_device();
	st = system("true");
	CHECK(st != -1, "system: %s", strerror(errno));
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
	      "system(\"true\"): status %#x", st);
	st = system("exit 3");
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 3,
	      "system(\"exit 3\"): status %#x", st);
}

int main(void)
{
	struct hmm_device_attr attr = { .mem_size = 4 * LEN };
	long i;
	void *m;
	int r;

	PLAIN_NEED_HMM();
	r = hmm_device_open("sim", &attr, &dev);
	CHECK(r == 0, "hmm_device_open(sim) = %d", r);
	r = hmm_mem_alloc(LEN, 0, &m);
	CHECK(r == 0, "hmm_mem_alloc = %d", r);
	bufa = m;
	m = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(m != MAP_FAILED, "mmap: %s", strerror(errno));
	r = hmm_range_adopt(m, LEN, 0);
	CHECK(r == 0, "hmm_range_adopt = %d", r);
	bufb = m;
	fill(bufa, SEED_A);
	fill(bufb, SEED_B);

	vfork_reads();
	spawn_true();
	system_true();

	i = mismatch(bufa, SEED_A);
	CHECK(i == -1, "buffer a: word %ld wrong at the end", i);
	i = mismatch(bufb, SEED_B);
	CHECK(i == -1, "buffer b: word %ld wrong at the end", i);
	printf("vfork_spawn: ok\n");
	return 0;
}
