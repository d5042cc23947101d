/* SPDX-License-Identifier: MIT */
/*
 * libhmm's threads (the fault-service thread, sim engines) must never take
 * the application's asynchronous signals: each blocks every signal except
 * the synchronous fault signals SIGSEGV, SIGBUS, SIGFPE and SIGILL.
 *
 * 1. After hmm_init and opening a sim device, every thread of libhmm's
 *    (a task that was not there when main() began, named "hmm-..." in
 *    /proc/self/task/TID/comm; there must be at least two: the service
 *    thread and an engine) has a SigBlk in /proc/self/task/TID/status
 *    that covers every signal but those four (SIGKILL and SIGSTOP cannot
 *    be blocked, and glibc keeps its internal signals 32 and 33 to
 *    itself: those are not checked), and the four are unblocked (the
 *    guard handler needs SIGSEGV and SIGBUS).
 *
 * 2. Process-directed signals (kill(getpid())) with a handler installed
 *    are handled by the main thread, the only thread of the application
 *    that leaves them unblocked, never by a libhmm thread, even when they
 *    arrive in bursts while libhmm's threads are busy serving faults and
 *    the kernel looks past a main thread that already has one pending.
 *
 * 3. The same while the main thread (signals open) keeps opening sim
 *    devices, so that libhmm keeps creating engine threads: a new thread
 *    must not be open to the application's signals even for the moment
 *    between its creation and its first instruction.  (This can only
 *    catch such a window by chance; when it does, the failure is real.)
 */
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#include "plain.h"

#define PG HMM_PAGE_SIZE
#define NPAGES 256
#define LEN (NPAGES * PG)
#define MAX_TASKS 256
#define BURSTS 200
#define RT_PER_BURST 8

static pid_t main_tid;
static _Atomic pid_t app_tids[2];	/* the test's other threads */
static atomic_int handled_main, handled_elsewhere, rt_handled;
static atomic_int wrong_tid;
static atomic_int stop;
static hmm_device_t *dev;
static uint64_t *buf;

static pid_t my_tid(void)
{
	return (pid_t)syscall(SYS_gettid);
}

/* The tids in /proc/self/task; returns how many. */
static int list_tasks(pid_t *tids, int max)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	CHECK(d, "opendir /proc/self/task: %s", strerror(errno));
	while ((e = readdir(d)) && n < max)
		if (e->d_name[0] != '.')
			tids[n++] = (pid_t)atoi(e->d_name);
	closedir(d);
	return n;
}

static int in_list(pid_t t, const pid_t *tids, int n)
{
	for (int i = 0; i < n; i++)
		if (tids[i] == t)
			return 1;
	return 0;
}

/* SigBlk of task @tid; its name in @comm.  Returns 0, or -1 if it is gone. */
static int task_info(pid_t tid, uint64_t *sigblk, char *comm, size_t clen)
{
	char path[64], line[256];
	int found = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/task/%d/comm", tid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (!fgets(comm, (int)clen, f))
		comm[0] = 0;
	comm[strcspn(comm, "\n")] = 0;
	fclose(f);

	snprintf(path, sizeof(path), "/proc/self/task/%d/status", tid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "SigBlk: %lx", (unsigned long *)sigblk) == 1)
			found = 1;
	fclose(f);
	return found ? 0 : -1;
}

static uint64_t bit(int sig)
{
	return 1ULL << (sig - 1);
}

static void check_libhmm_threads(const pid_t *before, int nbefore)
{
	const uint64_t sync = bit(SIGSEGV) | bit(SIGBUS) | bit(SIGFPE) |
			      bit(SIGILL);
	/* Not blockable, or glibc's own (SIGCANCEL, SIGSETXID). */
	const uint64_t dontcare = bit(SIGKILL) | bit(SIGSTOP) | bit(32) |
				  bit(33);
	const uint64_t want = ~sync & ~dontcare;
	pid_t tids[MAX_TASKS];
	int n = list_tasks(tids, MAX_TASKS), nhmm = 0;

	for (int i = 0; i < n; i++) {
		uint64_t blk = 0;
		char comm[32];

		if (in_list(tids[i], before, nbefore))
			continue;
		if (task_info(tids[i], &blk, comm, sizeof(comm)))
			continue;
		/* libhmm names its threads "hmm-..."; a new thread named
		 * otherwise belongs to a sanitizer's runtime (TSan starts
		 * its background thread late). */
		if (strncmp(comm, "hmm-", 4) != 0) {
			fprintf(stderr, "note: new thread %d \"%s\" is not "
				"named hmm-*: not libhmm's, not checked\n",
				tids[i], comm);
			continue;
		}
		/* A thread that has just been created runs for a moment
		 * with every signal blocked (glibc's pthread_create), then
		 * with its creator's mask, until it sets its own: give it a
		 * second to get there.  (The creator's mask is what the
		 * last phase below is about.) */
		for (int k = 0; k < 100 && ((blk & want) != want ||
					    (blk & sync)); k++) {
			if (k == 0)
				fprintf(stderr, "note: thread %d \"%s\" seen "
					"with SigBlk %016lx, waiting for it "
					"to settle\n", tids[i], comm,
					(unsigned long)blk);
			usleep(10000);
			task_info(tids[i], &blk, comm, sizeof(comm));
		}
		nhmm++;
		fprintf(stderr, "libhmm thread %d \"%s\": SigBlk %016lx\n",
			tids[i], comm, (unsigned long)blk);
		CHECK((blk & want) == want,
		      "libhmm thread %d (\"%s\") leaves signals unblocked: "
		      "SigBlk %016lx, unblocked mask %016lx (bit n-1 = "
		      "signal n)", tids[i], comm, (unsigned long)blk,
		      (unsigned long)(want & ~blk));
		CHECK((blk & sync) == 0,
		      "libhmm thread %d (\"%s\") blocks a synchronous fault "
		      "signal: SigBlk %016lx", tids[i], comm,
		      (unsigned long)blk);
	}
	/* The fault-service thread and at least one engine. */
	CHECK(nhmm >= 2, "only %d new threads named hmm-* after init and a "
			 "sim device", nhmm);
}

static void on_signal(int sig)
{
	int saved = errno;

	if (my_tid() == main_tid) {
		atomic_fetch_add(&handled_main, 1);
	} else {
		atomic_fetch_add(&handled_elsewhere, 1);
		atomic_store(&wrong_tid, (int)my_tid());
	}
	if (sig >= SIGRTMIN)
		atomic_fetch_add(&rt_handled, 1);
	errno = saved;
}

/*
 * The sender: an application thread that blocks the test signals, so that
 * the main thread is the only one of the application to take them.  It
 * sends bursts of process-directed signals, real-time ones (queued, so the
 * main thread soon has some pending and the kernel looks for another
 * thread) and SIGUSR1/SIGUSR2.
 */
static void *sender(void *arg)
{
	sigset_t set;
	int *sent_rt = arg;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGUSR2);
	sigaddset(&set, SIGRTMIN + 1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	atomic_store(&app_tids[0], my_tid());
	for (int b = 0; b < BURSTS; b++) {
		for (int i = 0; i < RT_PER_BURST; i++) {
			union sigval v = { .sival_int = i };

			if (sigqueue(getpid(), SIGRTMIN + 1, v) == 0)
				(*sent_rt)++;
		}
		kill(getpid(), SIGUSR1);
		kill(getpid(), SIGUSR2);
		usleep(500);
	}
	atomic_store(&stop, 1);
	return NULL;
}

/* Keeps libhmm's threads busy: pages go to the device, the CPU pulls them
 * back, the device reads them. */
static void *migrator(void *arg)
{
	sigset_t set;
	char tmp[256];

	(void)arg;
	sigfillset(&set);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	atomic_store(&app_tids[1], my_tid());
	while (!atomic_load(&stop)) {
		hmm_migrate(buf, LEN, dev, 0);
		hmm_sim_read(dev, buf + 7, tmp, sizeof(tmp), NULL);
	}
	return NULL;
}

/* After a phase: every queued signal arrived, all of them on main. */
static void wait_and_check(const char *phase, int sent_rt)
{
	int tid;

	for (int i = 0; i < 500 && atomic_load(&rt_handled) < sent_rt; i++)
		usleep(10000);
	tid = atomic_load(&wrong_tid);
	fprintf(stderr, "%s: signals handled by main: %d, elsewhere: %d; "
		"real-time sent %d handled %d\n", phase,
		atomic_load(&handled_main), atomic_load(&handled_elsewhere),
		sent_rt, atomic_load(&rt_handled));
	CHECK(atomic_load(&handled_elsewhere) == 0,
	      "%s: %d process-directed signals were handled by a thread "
	      "other than main (last: tid %d, %s)", phase,
	      atomic_load(&handled_elsewhere), tid,
	      tid == app_tids[0] || tid == app_tids[1] ?
		      "a thread of the test: a test bug" :
		      "a thread of libhmm's, the application's handler ran "
		      "on it");
#ifndef __SANITIZE_THREAD__
	CHECK(atomic_load(&rt_handled) == sent_rt,
	      "%s: %d of %d real-time signals handled", phase,
	      atomic_load(&rt_handled), sent_rt);
#else
	/* TSan defers signals and keeps one pending per signal number:
	 * queued real-time signals are merged, only some arrive. */
	CHECK(atomic_load(&rt_handled) > 0, "%s: no real-time signal handled",
	      phase);
#endif
	atomic_store(&rt_handled, 0);
}

int main(void)
{
	pid_t before[MAX_TASKS];
	int nbefore, r, sent_rt = 0;
	struct sigaction sa;
	sigset_t test_set, oldset;
	pthread_t ts, tm;
	void *m;

	main_tid = my_tid();
	/* Threads that exist before libhmm (a sanitizer's) are not its. */
	nbefore = list_tasks(before, MAX_TASKS);

	PLAIN_NEED_HMM();
	r = hmm_device_open("sim", NULL, &dev);
	CHECK(r == 0, "hmm_device_open(sim) = %d", r);
	r = hmm_mem_alloc(LEN, 0, &m);
	CHECK(r == 0, "hmm_mem_alloc = %d", r);
	buf = m;
	for (size_t i = 0; i < LEN / 8; i++)
		buf[i] = i ^ 0x77;
	CHECK(hmm_migrate(buf, LEN, dev, 0) == NPAGES, "hmm_migrate");

	check_libhmm_threads(before, nbefore);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction SIGUSR1");
	CHECK(sigaction(SIGUSR2, &sa, NULL) == 0, "sigaction SIGUSR2");
	CHECK(sigaction(SIGRTMIN + 1, &sa, NULL) == 0, "sigaction SIGRTMIN+1");

	sigemptyset(&test_set);
	sigaddset(&test_set, SIGUSR1);
	sigaddset(&test_set, SIGUSR2);
	sigaddset(&test_set, SIGRTMIN + 1);

	/* One signal while nothing else happens. */
	kill(getpid(), SIGUSR1);
	for (int i = 0; i < 100 && !atomic_load(&handled_main) &&
			!atomic_load(&handled_elsewhere); i++)
		usleep(10000);
	CHECK(atomic_load(&handled_main) == 1 &&
	      atomic_load(&handled_elsewhere) == 0,
	      "a lone SIGUSR1: %d handled by main, %d by thread %d",
	      atomic_load(&handled_main), atomic_load(&handled_elsewhere),
	      atomic_load(&wrong_tid));

	/* Bursts while the main thread faults device pages back and libhmm's
	 * threads migrate and serve.  The application's threads start with
	 * the test signals blocked (they inherit the mask), so that none of
	 * them can take one before it blocks them itself. */
	pthread_sigmask(SIG_BLOCK, &test_set, &oldset);
	r = pthread_create(&tm, NULL, migrator, NULL);
	CHECK(r == 0, "pthread_create: %s", strerror(r));
	r = pthread_create(&ts, NULL, sender, &sent_rt);
	CHECK(r == 0, "pthread_create: %s", strerror(r));
	pthread_sigmask(SIG_SETMASK, &oldset, NULL);
	while (!atomic_load(&stop)) {
		const volatile uint64_t *w = buf;

		for (size_t i = 0; i < LEN / 8; i += 512)
			CHECK(w[i] == (i ^ 0x77), "word %zu is %#lx", i,
			      (unsigned long)w[i]);
	}
	pthread_join(ts, NULL);
	pthread_join(tm, NULL);
	wait_and_check("bursts while libhmm serves faults", sent_rt);

	/*
	 * Bursts while the main thread, whose mask leaves the test signals
	 * open, opens and closes sim devices: each open creates engine
	 * threads.  A thread that inherits its creator's mask and blocks
	 * signals only once it runs can take one in between.
	 */
	atomic_store(&stop, 0);
	sent_rt = 0;
	pthread_sigmask(SIG_BLOCK, &test_set, &oldset);
	r = pthread_create(&ts, NULL, sender, &sent_rt);
	CHECK(r == 0, "pthread_create: %s", strerror(r));
	pthread_sigmask(SIG_SETMASK, &oldset, NULL);
	while (!atomic_load(&stop)) {
		struct hmm_device_attr attr = { .mem_size = 1 << 20,
						.engines = 4 };
		hmm_device_t *d;

		r = hmm_device_open("sim", &attr, &d);
		CHECK(r == 0, "hmm_device_open = %d", r);
		r = hmm_device_close(d);
		CHECK(r == 0, "hmm_device_close = %d", r);
	}
	pthread_join(ts, NULL);
	wait_and_check("bursts while sim devices are opened (new engine "
		       "threads)", sent_rt);
	printf("libhmm_threads_block_signals: ok\n");
	return 0;
}
