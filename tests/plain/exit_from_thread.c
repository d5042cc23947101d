/* SPDX-License-Identifier: MIT */
/*
 * A process that exits while libhmm is busy must exit, promptly, with the
 * status it asked for.
 *
 * Each variant runs in a fork()ed child that starts libhmm itself, puts
 * data on a sim device and gets everything moving:
 *  - the main thread (or, for the last variant, two faulter threads) reads
 *    device-resident pages in a loop while a migrator thread keeps sending
 *    them back to the device, so it is usually inside a CPU fault;
 *  - an engine runs a long device command: hmm_sim_launch of a kernel that
 *    sleeps 500 ms per 2 MiB run over 64 MiB (16 s in all), or
 *    hmm_sim_fill64 over 64 MiB in a loop.
 * Then one thread ends the process:
 *   exit(42) from a secondary thread, the engine in hmm_sim_launch;
 *   exit(42) from a secondary thread, the engine in hmm_sim_fill64;
 *   _exit(43) from a secondary thread, the engine in hmm_sim_launch;
 *   exit(44) from the main thread while other threads fault.
 * The parent expects that exit status within 10 s.  On a hang it prints
 * where each of the child's threads waits before killing it.
 */
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#include "plain.h"

#define PG HMM_PAGE_SIZE
#define NPAGES 256
#define LEN (NPAGES * PG)
#define BIG (64UL << 20)
#define SEED 0x5e5e

enum busy { BUSY_LAUNCH, BUSY_FILL };
enum how { HOW_EXIT, HOW__EXIT, HOW_MAIN_EXIT };

static hmm_device_t *dev;
static uint64_t *buf;	/* NPAGES, device-resident, CPU-faulted */
static void *big;	/* what the long device command works on */
static atomic_int engine_busy, stop;
static atomic_long reads;

/* The device kernel: a slow one, 500 ms per run. */
static void slow_kernel(void *dptr, size_t off, size_t n, void *arg)
{
	struct timespec ts = { 0, 500 * 1000 * 1000 };

	(void)dptr, (void)off, (void)n, (void)arg;
	atomic_store(&engine_busy, 1);
	nanosleep(&ts, NULL);
}

static void *launcher(void *arg)
{
	(void)arg;
	hmm_sim_launch(dev, big, BIG, 0, slow_kernel, NULL, NULL);
	return NULL;
}

static void *filler(void *arg)
{
	(void)arg;
	for (uint64_t v = 1;; v++) {
		atomic_store(&engine_busy, 1);
		hmm_sim_fill64(dev, big, v, BIG, NULL);
	}
	return NULL;
}

static void *migrator(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop))
		hmm_migrate(buf, LEN, dev, 0);
	return NULL;
}

/* CPU reads of device-resident pages; a wrong word ends the child with
 * status 20 (the parent reports it). */
static void read_loop(void)
{
	const volatile uint64_t *w = buf;

	for (;;) {
		for (size_t i = 0; i < LEN / 8; i += 256)
			if (w[i] != (i ^ SEED))
				_exit(20);
		atomic_fetch_add(&reads, 1);
	}
}

static void *faulter(void *arg)
{
	(void)arg;
	read_loop();
	return NULL;
}

/* Wait until the engine is in its long command and the CPU side has been
 * faulting for a while. */
static void wait_busy(void)
{
	for (int i = 0; i < 5000; i++) {
		if (atomic_load(&engine_busy) && atomic_load(&reads) > 20)
			break;
		usleep(1000);
	}
	usleep(20000);
}

static void *exiter(void *arg)
{
	enum how how = (enum how)(intptr_t)arg;

	wait_busy();
	if (how == HOW__EXIT)
		_exit(43);
	exit(42);
}

static void spawn(void *(*fn)(void *), void *arg)
{
	pthread_t t;

	if (pthread_create(&t, NULL, fn, arg))
		_exit(61);
	pthread_detach(t);
}

static void child(enum busy busy, enum how how)
{
	struct hmm_device_attr attr = { .mem_size = 16 * LEN };
	void *m;
	int r = hmm_init();

	if (r == -EPERM || r == -ENOSYS || r == -EOPNOTSUPP)
		_exit(PLAIN_SKIP);
	if (r || hmm_device_open("sim", &attr, &dev))
		_exit(60);
	if (hmm_mem_alloc(LEN, 0, &m))
		_exit(62);
	buf = m;
	for (size_t i = 0; i < LEN / 8; i++)
		buf[i] = i ^ SEED;
	if (hmm_migrate(buf, LEN, dev, 0) != NPAGES)
		_exit(63);
	big = mmap(NULL, BIG, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (big == MAP_FAILED)
		_exit(64);

	spawn(busy == BUSY_LAUNCH ? launcher : filler, NULL);
	spawn(migrator, NULL);
	if (how == HOW_MAIN_EXIT) {
		spawn(faulter, NULL);
		spawn(faulter, NULL);
		wait_busy();
		exit(44);
	}
	spawn(exiter, (void *)(intptr_t)how);
	read_loop();
}

/* What each of the child's threads is doing, for a hang report. */
static void dump_threads(pid_t pid)
{
	char path[320], line[256];
	struct dirent *e;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	d = opendir(path);
	if (!d)
		return;
	while ((e = readdir(d))) {
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		fprintf(stderr, "  thread %s:", e->d_name);
		snprintf(path, sizeof(path), "/proc/%d/task/%s/comm", pid,
			 e->d_name);
		if ((f = fopen(path, "r"))) {
			if (fgets(line, sizeof(line), f))
				fprintf(stderr, " %s", line);
			fclose(f);
		}
		snprintf(path, sizeof(path), "/proc/%d/task/%s/stack", pid,
			 e->d_name);
		if ((f = fopen(path, "r"))) {
			while (fgets(line, sizeof(line), f))
				fprintf(stderr, "    %s", line);
			fclose(f);
		}
	}
	closedir(d);
}

/* Reports a failed variant and counts it; the others still run. */
static int failures;

#define FAIL_IF(cond, ...)                                                  \
	do {                                                                \
		if (cond) {                                                 \
			fprintf(stderr, "FAIL: " __VA_ARGS__);              \
			fputc('\n', stderr);                                \
			failures++;                                         \
			return;                                             \
		}                                                           \
	} while (0)

static void run(const char *name, enum busy busy, enum how how, int want)
{
	struct timespec t0, t1;
	int status = 0;
	pid_t pid;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	pid = fork();
	CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0)
		child(busy, how);
	for (int i = 0;; i++) {
		pid_t w = waitpid(pid, &status, WNOHANG);

		CHECK(w >= 0, "waitpid: %s", strerror(errno));
		if (w == pid)
			break;
		if (i == 1000) {
			fprintf(stderr, "%s: the child has not exited after "
				"10 s; its threads:\n", name);
			dump_threads(pid);
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			FAIL_IF(1, "%s: the process hung in exit", name);
		}
		usleep(10000);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (WIFEXITED(status) && WEXITSTATUS(status) == PLAIN_SKIP)
		SKIP("hmm_init() in the child: no usable userfaultfd");
	FAIL_IF(!WIFEXITED(status),
		"%s: the child was killed by signal %d instead of exiting",
		name, WTERMSIG(status));
	FAIL_IF(WEXITSTATUS(status) == 20,
		"%s: the child read a wrong word from a device page", name);
	FAIL_IF(WEXITSTATUS(status) != want,
		"%s: exit status %d, want %d (60-64: setup failed)", name,
		WEXITSTATUS(status), want);
	fprintf(stderr, "ok: %s: exited %d after %.2f s\n", name, want,
		(double)(t1.tv_sec - t0.tv_sec) +
			(double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
}

int main(void)
{
	run("exit() from a thread, engine in hmm_sim_launch", BUSY_LAUNCH,
	    HOW_EXIT, 42);
	run("exit() from a thread, engine in hmm_sim_fill64", BUSY_FILL,
	    HOW_EXIT, 42);
	run("_exit() from a thread, engine in hmm_sim_launch", BUSY_LAUNCH,
	    HOW__EXIT, 43);
	run("exit() from main while threads fault, engine in "
	    "hmm_sim_launch", BUSY_LAUNCH, HOW_MAIN_EXIT, 44);
	run("exit() from main while threads fault, engine in "
	    "hmm_sim_fill64", BUSY_FILL, HOW_MAIN_EXIT, 44);
	CHECK(failures == 0, "%d of 5 variants failed (above)", failures);
	printf("exit_from_thread: ok\n");
	return 0;
}
