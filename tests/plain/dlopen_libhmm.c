/* SPDX-License-Identifier: MIT */
/*
 * libhmm loaded with dlopen and unloaded with dlclose.
 *
 * A plugin (a device runtime loaded on demand) may bring libhmm in and
 * take it out again.  After dlclose, nothing of libhmm may be left running
 * code that is no longer mapped: no thread, no signal handler, no
 * userfaultfd registration that nobody serves.  The process must go on:
 * its own SIGSEGV handler works, mmap and friends work, the memory libhmm
 * managed holds its data, and libhmm can be loaded and used again.
 *
 * This program does not link libhmm: argv[1] is the path of libhmm.so,
 * argv[2] that of libhmm-dmirror.so.  Scenarios, in one process:
 *  1. dlopen + dlclose, no call made;
 *  2. dlopen, init, a sim device, data migrated there and faulted back,
 *     the device closed, dlclose;
 *  3. the same again, but with the device left open and half of the data
 *     on it at dlclose: the unload must bring it home;
 *  4. dlopen + dlclose of libhmm-dmirror.so.
 * After each: the checks of after_unload().  A CPU access that would wait
 * forever for a fault nobody serves is caught by an alarm (20 s).
 */
#include <dirent.h>
#include <dlfcn.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include <hmm/hmm.h>

#include "plain.h"

#define PG HMM_PAGE_SIZE
#define NPAGES 64
#define LEN (NPAGES * PG)

/* libhmm's entry points, looked up with dlsym. */
struct api {
	int (*init)(void);
	int (*device_open)(const char *, const struct hmm_device_attr *,
			   hmm_device_t **);
	int (*device_close)(hmm_device_t *);
	int (*range_adopt)(void *, size_t, unsigned int);
	long (*migrate)(void *, size_t, hmm_device_t *, unsigned int);
	int (*page_location)(const void *, hmm_device_t **);
	int (*sim_fill64)(hmm_device_t *, void *, uint64_t, size_t, void *);
	int (*sim_read)(hmm_device_t *, const void *, void *, size_t, void *);
};

static const char *phase = "start";
static sigjmp_buf jb;
static void *volatile expect_addr;
static volatile sig_atomic_t segv_seen;
/* The dispositions before libhmm was first loaded: SIG_DFL, or a
 * sanitizer's handler. */
static struct sigaction pre_segv, pre_bus;

static void on_alarm(int sig)
{
	char msg[256];
	int n = snprintf(msg, sizeof(msg),
			 "dlopen_libhmm: stuck for 20 s in \"%s\": probably "
			 "a CPU access to memory left registered with "
			 "libhmm's userfaultfd, which nobody serves after "
			 "dlclose\n", phase);

	(void)sig;
	if (write(2, msg, (size_t)n) < 0)
		_exit(2);
	_exit(2);
}

static void app_segv(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)uc;
	if (expect_addr && si->si_addr == expect_addr) {
		segv_seen = 1;
		siglongjmp(jb, 1);
	}
	signal(SIGSEGV, SIG_DFL);	/* not ours: die on return */
}

static void *sym(void *h, const char *name)
{
	void *p = dlsym(h, name);

	CHECK(p, "dlsym(%s): %s", name, dlerror());
	return p;
}

static void *load(const char *path)
{
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);

	CHECK(h, "dlopen(%s): %s", path, dlerror());
	return h;
}

static void unload(void *h, const char *path)
{
	void *again;

	phase = "dlclose";
	alarm(20);
	CHECK(dlclose(h) == 0, "dlclose: %s", dlerror());
	alarm(0);
	again = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	fprintf(stderr, "  %s is %s after dlclose\n", path,
		again ? "still loaded" : "unloaded");
	if (again)
		dlclose(again);
}

static int count_tasks_named_hmm(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	CHECK(d, "opendir: %s", strerror(errno));
	while ((e = readdir(d))) {
		char path[300], comm[32] = "";
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm",
			 e->d_name);
		if (!(f = fopen(path, "r")))
			continue;
		if (fgets(comm, sizeof(comm), f) && !strncmp(comm, "hmm-", 4))
			n++;
		fclose(f);
	}
	closedir(d);
	return n;
}

static int count_userfaultfds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	CHECK(d, "opendir: %s", strerror(errno));
	while ((e = readdir(d))) {
		char path[300], target[64];
		ssize_t len;

		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		len = readlink(path, target, sizeof(target) - 1);
		if (len <= 0)
			continue;
		target[len] = 0;
		if (!strcmp(target, "anon_inode:[userfaultfd]"))
			n++;
	}
	closedir(d);
	return n;
}

/* A child with SIG_DFL dies of a wild access (no stale handler runs). */
static void wild_access_kills_child(void)
{
	volatile char *p = mmap(NULL, PG, PROT_NONE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int st;
	pid_t pid;

	CHECK(p != MAP_FAILED, "mmap: %s", strerror(errno));
	pid = fork();
	CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		signal(SIGSEGV, SIG_DFL);
		alarm(10);
		(void)p[0];
		_exit(10);
	}
	CHECK(waitpid(pid, &st, 0) == pid, "waitpid: %s", strerror(errno));
	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV,
	      "%s: a wild access in a child %s %d, want death by SIGSEGV",
	      phase, WIFSIGNALED(st) ? "ended with signal" : "exited",
	      WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	munmap((void *)p, PG);
}

/* What must hold once libhmm is unloaded. */
static void after_unload(const char *what)
{
	struct sigaction sa, old;
	volatile char *p;
	char *q;
	int n;

	phase = what;
	fprintf(stderr, "  checks after: %s\n", what);
	CHECK(sigaction(SIGSEGV, NULL, &old) == 0, "sigaction");
	CHECK(old.sa_sigaction == pre_segv.sa_sigaction,
	      "%s: SIGSEGV has handler %p, not the one from before dlopen "
	      "(%p): libhmm's, left behind", what, (void *)old.sa_sigaction,
	      (void *)pre_segv.sa_sigaction);
	CHECK(sigaction(SIGBUS, NULL, &old) == 0, "sigaction");
	CHECK(old.sa_sigaction == pre_bus.sa_sigaction,
	      "%s: SIGBUS has handler %p, not the one from before dlopen "
	      "(%p): libhmm's, left behind", what, (void *)old.sa_sigaction,
	      (void *)pre_bus.sa_sigaction);
	n = count_tasks_named_hmm();
	CHECK(n == 0, "%s: %d libhmm threads (hmm-*) still run", what, n);
	n = count_userfaultfds();
	CHECK(n == 0, "%s: %d userfaultfd descriptors left open", what, n);

	/* mmap, mprotect, mremap, madvise, munmap. */
	q = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(q != MAP_FAILED, "%s: mmap: %s", what, strerror(errno));
	memset(q, 0x5c, 4 * PG);
	CHECK(mprotect(q, PG, PROT_READ) == 0, "mprotect: %s", strerror(errno));
	CHECK(madvise(q + PG, PG, MADV_DONTNEED) == 0, "madvise: %s",
	      strerror(errno));
	CHECK(q[PG] == 0 && q[2 * PG] == 0x5c, "madvise/memset");
	/* One mapping again: mremap does not span two. */
	CHECK(mprotect(q, PG, PROT_READ | PROT_WRITE) == 0, "mprotect: %s",
	      strerror(errno));
	q = mremap(q, 4 * PG, 8 * PG, MREMAP_MAYMOVE);
	CHECK(q != MAP_FAILED, "mremap: %s", strerror(errno));
	CHECK(q[3 * PG] == 0x5c, "mremap lost data");
	CHECK(munmap(q, 8 * PG) == 0, "munmap: %s", strerror(errno));

	/* The application's own handler gets its own fault. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = app_segv;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	CHECK(sigaction(SIGSEGV, &sa, NULL) == 0, "sigaction");
	p = mmap(NULL, PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED, "mmap: %s", strerror(errno));
	segv_seen = 0;
	expect_addr = (void *)p;
	if (sigsetjmp(jb, 1) == 0)
		(void)p[0];
	expect_addr = NULL;
	CHECK(segv_seen, "%s: the application's SIGSEGV handler did not run",
	      what);
	munmap((void *)p, PG);
	CHECK(sigaction(SIGSEGV, &pre_segv, NULL) == 0, "sigaction");

	wild_access_kills_child();
}

/* Scenario 2 (@leave_on_device = 0) and 3 (= 1). */
static void use_and_unload(const char *path, int round, int leave_on_device)
{
	struct api a;
	hmm_device_t *dev;
	uint64_t seed = 0x1000 + (uint64_t)round, tmp[8];
	uint64_t *buf;
	long moved;
	void *h;
	int r;

	phase = "use";
	h = load(path);
	a.init = sym(h, "hmm_init");
	a.device_open = sym(h, "hmm_device_open");
	a.device_close = sym(h, "hmm_device_close");
	a.range_adopt = sym(h, "hmm_range_adopt");
	a.migrate = sym(h, "hmm_migrate");
	a.page_location = sym(h, "hmm_page_location");
	a.sim_fill64 = sym(h, "hmm_sim_fill64");
	a.sim_read = sym(h, "hmm_sim_read");

	r = a.init();
	if (r == -EPERM || r == -ENOSYS || r == -EOPNOTSUPP)
		SKIP("hmm_init() = %d: no usable userfaultfd", r);
	CHECK(r == 0, "hmm_init = %d", r);
	r = a.device_open("sim", NULL, &dev);
	CHECK(r == 0, "hmm_device_open = %d", r);
	buf = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(buf != MAP_FAILED, "mmap: %s", strerror(errno));
	r = a.range_adopt(buf, LEN, 0);
	CHECK(r == 0, "hmm_range_adopt = %d", r);
	for (size_t i = 0; i < LEN / 8; i++)
		buf[i] = i ^ seed;
	moved = a.migrate(buf, LEN, dev, 0);
	CHECK(moved == NPAGES, "hmm_migrate = %ld", moved);
	CHECK(a.page_location(buf, NULL) == HMM_LOC_DEVICE, "not on device");
	r = a.sim_read(dev, buf + 9, tmp, sizeof(tmp), NULL);
	CHECK(r == 0 && tmp[0] == (9 ^ seed), "hmm_sim_read = %d", r);
	/* CPU faults bring it back. */
	for (size_t i = 0; i < LEN / 8; i++)
		CHECK(buf[i] == (i ^ seed), "round %d: word %zu is %#lx",
		      round, i, (unsigned long)buf[i]);
	CHECK(a.page_location(buf, NULL) == HMM_LOC_SYSTEM, "not home");
	/* Half goes back to the device, a quarter rewritten there. */
	moved = a.migrate(buf + LEN / 16, LEN / 2, dev, 0);
	CHECK(moved == NPAGES / 2, "hmm_migrate = %ld", moved);
	r = a.sim_fill64(dev, buf + LEN / 16, seed << 32, LEN / 4, NULL);
	CHECK(r == 0, "hmm_sim_fill64 = %d", r);
	if (!leave_on_device) {
		r = a.device_close(dev);
		CHECK(r == 0, "hmm_device_close = %d", r);
	}
	unload(h, path);

	/* Every word, with the data on the device at dlclose brought home. */
	phase = "reading managed memory after dlclose";
	alarm(20);
	for (size_t i = 0; i < LEN / 8; i++) {
		uint64_t want = i >= LEN / 16 && i < LEN / 16 + LEN / 32 ?
				seed << 32 : i ^ seed;

		CHECK(buf[i] == want, "round %d (device %s): after dlclose "
		      "word %zu is %#lx, want %#lx", round,
		      leave_on_device ? "left open" : "closed", i,
		      (unsigned long)buf[i], (unsigned long)want);
	}
	alarm(0);
	CHECK(munmap(buf, LEN) == 0, "munmap: %s", strerror(errno));
	after_unload(leave_on_device ?
		     "use, device left open with data, dlclose" :
		     "use, device closed, dlclose");
}

int main(int argc, char **argv)
{
	void *h;

	if (argc < 3)
		SKIP("usage: %s LIBHMM.so LIBHMM-DMIRROR.so", argv[0]);
	signal(SIGALRM, on_alarm);
	CHECK(sigaction(SIGSEGV, NULL, &pre_segv) == 0, "sigaction");
	CHECK(sigaction(SIGBUS, NULL, &pre_bus) == 0, "sigaction");

	/* 1. Loaded and unloaded, nothing called. */
	h = load(argv[1]);
	unload(h, argv[1]);
	after_unload("dlopen + dlclose, no call");

	/* 2 and 3; 2 again after 3 (a third load). */
	use_and_unload(argv[1], 1, 0);
	use_and_unload(argv[1], 2, 1);
	use_and_unload(argv[1], 3, 0);

	/* 4. The dmirror preload library, loaded and unloaded. */
	h = load(argv[2]);
	sym(h, "hmm_dmirror_open");
	unload(h, argv[2]);
	after_unload("libhmm-dmirror.so dlopen + dlclose");

	printf("dlopen_libhmm: ok\n");
	return 0;
}
