/* SPDX-License-Identifier: MIT */
/*
 * Exit: a process leaving data on a device must exit cleanly, whatever way
 * it exits.  Each scenario runs in a fork()ed child that sets libhmm up
 * itself; the parent expects exit status 0 within 20 s.
 */
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

#include "common.h"

#define LEN (64 * PG)

static hmm_device_t *g_dev;
static char *g_adopted, *g_alloc;
static volatile int g_stop;

/* Child side: never cr_assert here, return a code instead. */
static int child_setup(void)
{
	struct hmm_device_attr attr = { .mem_size = 2 * LEN };
	void *m = NULL;
	char buf[64];

	if (hmm_init() != 0)
		return 10;
	if (hmm_device_open("sim", &attr, &g_dev) != 0)
		return 11;
	g_adopted = test_map(LEN, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (g_adopted == MAP_FAILED || hmm_range_adopt(g_adopted, LEN, 0) != 0)
		return 12;
	if (hmm_mem_alloc(LEN, 0, &m) != 0)
		return 13;
	g_alloc = m;
	fill_pattern(g_adopted, LEN, 0xe1);
	fill_pattern(g_alloc, LEN, 0xe2);
	if (hmm_migrate(g_adopted, LEN, g_dev, 0) != (long)(LEN / PG) ||
	    hmm_migrate(g_alloc, LEN, g_dev, 0) != (long)(LEN / PG))
		return 14;
	/* Some back, through CPU faults; the device mirrors some too. */
	if (pattern_mismatch(g_adopted, 4 * PG, 0xe1, 0) != -1 ||
	    pattern_mismatch(g_alloc, 4 * PG, 0xe2, 0) != -1)
		return 15;
	if (hmm_sim_read(g_dev, g_adopted + 8 * PG, buf, sizeof(buf), NULL) != 0)
		return 16;
	return 0;
}

/* Runs @scenario in a child; returns its wait status, or -1 on a hang. */
static int run_child(void (*scenario)(void))
{
	int status = 0;
	pid_t pid = fork();

	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		scenario();
		_exit(99);	/* the scenario must not return */
	}
	for (uint64_t end = now_ms() + 20000; now_ms() < end;) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		cr_assert_neq(r, -1, "waitpid: %s", strerror(errno));
		if (r == pid)
			return status;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return -1;
}

static void expect_clean_exit(void (*scenario)(void))
{
	int st = run_child(scenario);

	cr_assert_neq(st, -1, "the child hung for 20 s at exit");
	cr_assert(WIFEXITED(st), "the child died of signal %d",
		  WIFSIGNALED(st) ? WTERMSIG(st) : -1);
	cr_assert_eq(WEXITSTATUS(st), 0,
		     "child exit status %d (10-16: setup step failed, 99: "
		     "scenario returned)", WEXITSTATUS(st));
}

static void setup_or_exit(void)
{
	int r = child_setup();

	if (r)
		_exit(r);
}

static void sc_exit_main(void)
{
	setup_or_exit();
	exit(0);
}

static void sc_underscore_exit(void)
{
	setup_or_exit();
	_exit(0);
}

static void *exit_thread(void *arg)
{
	(void)arg;
	exit(0);
}

static void sc_exit_thread(void)
{
	pthread_t th;

	setup_or_exit();
	if (pthread_create(&th, NULL, exit_thread, NULL) != 0)
		_exit(20);
	pthread_join(th, NULL);
	_exit(21);
}

static void sc_exit_after_fini(void)
{
	setup_or_exit();
	if (hmm_fini() != 0)
		_exit(22);
	if (pattern_mismatch(g_adopted, LEN, 0xe1, 0) != -1 ||
	    pattern_mismatch(g_alloc, LEN, 0xe2, 0) != -1)
		_exit(23);
	exit(0);
}

/* A thread keeps faulting pages back and migrating them out again. */
static void *busy_cpu(void *arg)
{
	(void)arg;
	while (!g_stop) {
		hmm_migrate(g_adopted, LEN, g_dev, 0);
		for (size_t off = 0; off < LEN; off += PG)
			if (((volatile uint64_t *)(g_adopted + off))[1] !=
			    ((off / 8 + 1) ^ 0xe1))
				_exit(24);
	}
	return NULL;
}

static void sc_exit_while_faulting(void)
{
	pthread_t th;

	setup_or_exit();
	if (pthread_create(&th, NULL, busy_cpu, NULL) != 0)
		_exit(20);
	usleep(50 * 1000);
	exit(0);
}

/* A device engine keeps reading device-resident memory. */
static void *busy_engine(void *arg)
{
	static char buf[LEN];

	(void)arg;
	while (!g_stop)
		hmm_sim_read(g_dev, g_alloc, buf, LEN, NULL);
	return NULL;
}

static void sc_exit_while_engine_runs(void)
{
	pthread_t th;

	setup_or_exit();
	if (pthread_create(&th, NULL, busy_engine, NULL) != 0)
		_exit(20);
	usleep(50 * 1000);
	exit(0);
}

/* A process that used libhmm forks; the grandchild exits both ways. */
static void sc_grandchild_exits(void)
{
	setup_or_exit();
	for (int how = 0; how < 2; how++) {
		int status = 0;
		pid_t pid = fork();

		if (pid < 0)
			_exit(30);
		if (pid == 0) {
			if (how)
				_exit(0);
			exit(0);
		}
		uint64_t end = now_ms() + 8000;
		pid_t r;

		while ((r = waitpid(pid, &status, WNOHANG)) == 0 &&
		       now_ms() < end)
			usleep(10000);
		if (r != pid) {
			kill(pid, SIGKILL);
			_exit(31 + how);
		}
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			_exit(33 + how);
	}
	/* The parent's data is unharmed. */
	if (pattern_mismatch(g_adopted, LEN, 0xe1, 0) != -1 ||
	    pattern_mismatch(g_alloc, LEN, 0xe2, 0) != -1)
		_exit(35);
	exit(0);
}

Test(exit, exit_from_main, .timeout = T_SHORT)
{
	expect_clean_exit(sc_exit_main);
}

Test(exit, exit_from_secondary_thread, .timeout = T_SHORT)
{
	expect_clean_exit(sc_exit_thread);
}

Test(exit, underscore_exit, .timeout = T_SHORT)
{
	expect_clean_exit(sc_underscore_exit);
}

Test(exit, exit_after_fini, .timeout = T_SHORT)
{
	expect_clean_exit(sc_exit_after_fini);
}

Test(exit, exit_while_a_thread_faults, .timeout = T_SHORT)
{
	expect_clean_exit(sc_exit_while_faulting);
}

Test(exit, exit_while_an_engine_runs, .timeout = T_SHORT)
{
	expect_clean_exit(sc_exit_while_engine_runs);
}

Test(exit, forked_child_of_libhmm_process_exits, .timeout = T_SHORT)
{
	expect_clean_exit(sc_grandchild_exits);
}
