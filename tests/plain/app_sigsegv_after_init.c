/* SPDX-License-Identifier: MIT */
/*
 * An application that installs its own SIGSEGV and SIGBUS handlers after
 * libhmm is up keeps both its own faults and libhmm's guarded accesses
 * working, and libhmm stays invisible to sigaction().
 *
 * libhmm's sim engines reach system memory through the application's
 * addresses under a guard: a racing munmap (or truncation of a mapped
 * file) makes the device access fail with -EFAULT instead of killing the
 * process.  That needs libhmm's handler to see SIGSEGV/SIGBUS first, even
 * after the application replaced the handler; and every fault that is not
 * libhmm's must reach the application's handler, or the default action.
 *
 * The stale-translation cases below take the mapping away with a raw
 * system call (or ftruncate), which libhmm does not see: the device mirror
 * still holds the translation, so the engine really touches the vanished
 * page and the guard, not a lookup, produces -EFAULT.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

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

static hmm_device_t *dev;
static pid_t main_tid;
static sigjmp_buf jb;
static void *volatile expect_segv_addr;
static volatile sig_atomic_t expect_bus;
static atomic_int segv_count, bus_count;

static pid_t my_tid(void)
{
	return (pid_t)syscall(SYS_gettid);
}

/* A fault the application did not expect: say so and die (returning would
 * only fault again). */
static void unexpected(const char *what, int sig, void *addr)
{
	char msg[200];
	int n = snprintf(msg, sizeof(msg),
			 "app_sigsegv_after_init: the application's %s "
			 "handler got signal %d at %p on thread %d (main is "
			 "%d): a fault that was not the application's\n",
			 what, sig, addr, (int)my_tid(), (int)main_tid);

	if (write(2, msg, (size_t)n) < 0)
		_exit(3);
	_exit(3);
}

static void app_segv(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (expect_segv_addr && si->si_addr == expect_segv_addr &&
	    my_tid() == main_tid) {
		atomic_fetch_add(&segv_count, 1);
		siglongjmp(jb, 1);
	}
	unexpected("SIGSEGV", sig, si->si_addr);
}

/* Installed with signal(): no siginfo, only the flag says it is expected. */
static void app_bus(int sig)
{
	if (expect_bus && my_tid() == main_tid) {
		atomic_fetch_add(&bus_count, 1);
		siglongjmp(jb, 1);
	}
	unexpected("SIGBUS", sig, NULL);
}

static void fill(uint64_t *p, size_t len, uint64_t seed)
{
	for (size_t i = 0; i < len / 8; i++)
		p[i] = i ^ seed;
}

static long mismatch(const uint64_t *p, size_t len, uint64_t seed)
{
	for (size_t i = 0; i < len / 8; i++)
		if (p[i] != (i ^ seed))
			return (long)i;
	return -1;
}

static void *map_anon(int prot)
{
	void *p = mmap(NULL, PG, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	CHECK(p != MAP_FAILED, "mmap: %s", strerror(errno));
	return p;
}

/* A one-page file (memfd) mapped shared, filled with a pattern. */
static uint64_t *map_file_page(int *fdp)
{
	int fd = memfd_create("app-bus-test", 0);
	uint64_t *p;

	CHECK(fd >= 0, "memfd_create: %s", strerror(errno));
	CHECK(ftruncate(fd, PG) == 0, "ftruncate: %s", strerror(errno));
	p = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(p != MAP_FAILED, "mmap file: %s", strerror(errno));
	fill(p, PG, 0xb5);
	*fdp = fd;
	return p;
}

/* The application's own SIGSEGV: a PROT_NONE page it mapped. */
static void own_segv(void)
{
	volatile char *p = map_anon(PROT_NONE);

	for (int round = 0; round < 3; round++) {
		int before = atomic_load(&segv_count);

		expect_segv_addr = (void *)p;
		if (sigsetjmp(jb, 1) == 0) {
			(void)p[0];
			CHECK(0, "reading a PROT_NONE page did not fault");
		}
		expect_segv_addr = NULL;
		CHECK(atomic_load(&segv_count) == before + 1,
		      "round %d: the application's SIGSEGV handler ran %d "
		      "times", round, atomic_load(&segv_count) - before);
	}
	munmap((void *)p, PG);
}

/* The application's own SIGBUS: a read beyond the end of a file. */
static void own_sigbus(void)
{
	int fd, before = atomic_load(&bus_count);
	volatile uint64_t *p = map_file_page(&fd);

	CHECK(ftruncate(fd, 0) == 0, "ftruncate 0: %s", strerror(errno));
	expect_bus = 1;
	if (sigsetjmp(jb, 1) == 0) {
		(void)p[0];
		CHECK(0, "reading a truncated file page did not raise SIGBUS");
	}
	expect_bus = 0;
	CHECK(atomic_load(&bus_count) == before + 1,
	      "the application's SIGBUS handler ran %d times",
	      atomic_load(&bus_count) - before);
	munmap((void *)p, PG);
	close(fd);
}

/* Device reads of vanished memory: -EFAULT, no death, no app handler. */
static void guarded_reads(void)
{
	int segv = atomic_load(&segv_count), bus = atomic_load(&bus_count);
	uint64_t buf[PG / 8];
	uint64_t *p;
	int fd, r;

	/* Unmapped through libc: libhmm knows.  Any mmap of the process (a
	 * sanitizer's allocator) may take the hole before the read: then try
	 * again elsewhere. */
	for (int tries = 0;; tries++) {
		unsigned char vec;
		p = map_anon(PROT_READ | PROT_WRITE);
		CHECK(munmap(p, PG) == 0, "munmap");
		r = hmm_sim_read(dev, p, buf, PG, NULL);
		if (r == -EFAULT)
			break;
		CHECK(tries < 5 && mincore(p, PG, &vec) == 0,
		      "device read of an unmapped page = %d, want -EFAULT", r);
	}

	/* Unmapped behind libhmm's back, with the mirror warm: the engine
	 * touches the page and its guard must catch SIGSEGV. */
	p = map_anon(PROT_READ | PROT_WRITE);
	fill(p, PG, 0xa7);
	r = hmm_sim_read(dev, p, buf, PG, NULL);
	CHECK(r == 0, "device read of a mapped page = %d", r);
	CHECK(mismatch(buf, PG, 0xa7) == -1, "device read wrong data");
	CHECK(syscall(SYS_munmap, p, PG) == 0, "raw munmap");
	r = hmm_sim_read(dev, p, buf, PG, NULL);
	CHECK(r == -EFAULT, "device read of a page unmapped with a raw "
			    "syscall = %d, want -EFAULT", r);

	/* A file truncated under a warm mirror: SIGBUS under the guard. */
	p = map_file_page(&fd);
	r = hmm_sim_read(dev, p, buf, PG, NULL);
	CHECK(r == 0, "device read of a file page = %d", r);
	CHECK(mismatch(buf, PG, 0xb5) == -1, "device read wrong file data");
	CHECK(ftruncate(fd, 0) == 0, "ftruncate 0: %s", strerror(errno));
	r = hmm_sim_read(dev, p, buf, PG, NULL);
	CHECK(r == -EFAULT, "device read of a truncated file page = %d, "
			    "want -EFAULT", r);
	munmap(p, PG);
	close(fd);

	CHECK(atomic_load(&segv_count) == segv &&
	      atomic_load(&bus_count) == bus,
	      "libhmm's guarded accesses reached the application's "
	      "handlers (%d SIGSEGV, %d SIGBUS)",
	      atomic_load(&segv_count) - segv, atomic_load(&bus_count) - bus);
}

/* Runs @fn in a child and returns its wait status (10 s at most). */
static int in_child(void (*fn)(void))
{
	int status;
	pid_t pid = fork();

	CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		main_tid = my_tid();
		fn();
		_exit(0);
	}
	for (int i = 0; i < 1000; i++) {
		pid_t w = waitpid(pid, &status, WNOHANG);

		CHECK(w >= 0, "waitpid: %s", strerror(errno));
		if (w == pid)
			return status;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	CHECK(0, "the child hung for 10 s");
	return -1;
}

/* Child: back to SIG_DFL, then a wild access must kill it with SIGSEGV. */
static void child_dfl_segv(void)
{
	volatile char *p = map_anon(PROT_NONE);

	signal(SIGSEGV, SIG_DFL);
	(void)p[1];
	_exit(10); /* survived */
}

/* Child: SIG_DFL, libhmm started afresh, a guarded device access still
 * returns -EFAULT, and then a wild access kills it with SIGSEGV. */
static void child_dfl_guard_then_segv(void)
{
	volatile char *wild = map_anon(PROT_NONE);
	hmm_device_t *d;
	uint64_t buf[PG / 8];
	uint64_t *p;

	signal(SIGSEGV, SIG_DFL);
	if (hmm_device_open("sim", NULL, &d))
		_exit(11);
	p = map_anon(PROT_READ | PROT_WRITE);
	fill(p, PG, 0xc3);
	if (hmm_sim_read(d, p, buf, PG, NULL) || mismatch(buf, PG, 0xc3) != -1)
		_exit(12);
	syscall(SYS_munmap, p, PG);
	if (hmm_sim_read(d, p, buf, PG, NULL) != -EFAULT)
		_exit(13);
	(void)wild[1];
	_exit(14); /* survived */
}

/* Child: SIG_DFL for SIGBUS, a read past the end of a file kills it. */
static void child_dfl_bus(void)
{
	int fd;
	volatile uint64_t *p = map_file_page(&fd);

	signal(SIGBUS, SIG_DFL);
	if (ftruncate(fd, 0))
		_exit(15);
	(void)p[0];
	_exit(16); /* survived */
}

static void expect_killed(void (*fn)(void), int sig, const char *what)
{
	int st = in_child(fn);

	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == sig,
	      "%s: the child %s %d, want killed by signal %d", what,
	      WIFSIGNALED(st) ? "was killed by signal" : "exited with",
	      WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), sig);
}

int main(void)
{
	struct sigaction sa, old, pre_segv, pre_bus;
	void (*prev)(int);
	int r;

	main_tid = my_tid();
	/* What the application had before libhmm: SIG_DFL, or a
	 * sanitizer's handler (TSan installs one for SIGSEGV/SIGBUS). */
	CHECK(sigaction(SIGSEGV, NULL, &pre_segv) == 0, "sigaction");
	CHECK(sigaction(SIGBUS, NULL, &pre_bus) == 0, "sigaction");
	PLAIN_NEED_HMM();
	r = hmm_device_open("sim", NULL, &dev);
	CHECK(r == 0, "hmm_device_open(sim) = %d", r);

	/* libhmm's own handler is not what the application sees. */
	CHECK(sigaction(SIGSEGV, NULL, &old) == 0, "sigaction");
	CHECK(old.sa_sigaction == pre_segv.sa_sigaction &&
	      old.sa_flags == pre_segv.sa_flags,
	      "after hmm_init, sigaction(SIGSEGV) shows handler %p (flags "
	      "%#x), not the one from before hmm_init (%p, flags %#x): "
	      "libhmm's is visible", (void *)old.sa_sigaction,
	      (unsigned)old.sa_flags, (void *)pre_segv.sa_sigaction,
	      (unsigned)pre_segv.sa_flags);

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = app_segv;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	CHECK(sigaction(SIGSEGV, &sa, NULL) == 0, "sigaction: %s",
	      strerror(errno));
	CHECK(sigaction(SIGSEGV, NULL, &old) == 0, "sigaction");
	CHECK((old.sa_flags & SA_SIGINFO) && old.sa_sigaction == app_segv,
	      "sigaction(SIGSEGV, NULL, &old) returns %p (flags %#x), not "
	      "the application's handler %p", (void *)old.sa_sigaction,
	      (unsigned)old.sa_flags, (void *)app_segv);

	prev = signal(SIGBUS, app_bus);
	CHECK(prev == pre_bus.sa_handler,
	      "signal(SIGBUS) returned %p, not the handler from before "
	      "hmm_init (%p): libhmm's is visible", (void *)prev,
	      (void *)pre_bus.sa_handler);
	CHECK(sigaction(SIGBUS, NULL, &old) == 0, "sigaction");
	CHECK(!(old.sa_flags & SA_SIGINFO) && old.sa_handler == app_bus,
	      "sigaction(SIGBUS, NULL, &old) returns %p, not the "
	      "application's handler %p", (void *)old.sa_handler,
	      (void *)app_bus);

	own_segv();
	own_sigbus();
	guarded_reads();
	/* And the application's own faults still reach it afterwards. */
	own_segv();
	own_sigbus();

	expect_killed(child_dfl_segv, SIGSEGV, "SIG_DFL then a wild access");
	expect_killed(child_dfl_bus, SIGBUS, "SIG_DFL then a truncated file");
	expect_killed(child_dfl_guard_then_segv, SIGSEGV,
		      "SIG_DFL, a guarded device read, then a wild access "
		      "(exit 11-13: the device part failed)");
	printf("app_sigsegv_after_init: ok\n");
	return 0;
}
