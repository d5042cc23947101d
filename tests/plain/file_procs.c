/* SPDX-License-Identifier: MIT */
/*
 * File-backed memory across processes: what other processes see of data a
 * device wrote, and what survives the death of the process that wrote it.
 *
 *   file_procs share  memfd|disk   two processes map one file; one
 *                                  migrates it and writes on a device
 *   file_procs exit   memfd|disk main|thread
 *                                  a child writes on a device and exits
 *                                  (from main, or from another thread)
 *   file_procs exec   memfd|disk execv|execl
 *                                  a child writes on a device and execs
 *   file_procs kill   memfd|disk safe|default
 *                                  a child writes on a device and is
 *                                  killed with SIGKILL
 *
 * "memfd" is a memfd (MINOR faults), "disk" an unlinked regular file in
 * /var/tmp on a disk filesystem (protection faults).  The parent never
 * uses libhmm: it reads the file with pread() and its own mapping, as any
 * other process would.  Every check is byte exact: word i of the file
 * holds i ^ seed.
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <linux/magic.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#include "plain.h"

#define NPAGES 96
#define LEN ((size_t)NPAGES * HMM_PAGE_SIZE)
#define WORDS (LEN / 8)

static int open_file(const char *kind)
{
	struct statfs sfs;
	int fd;

	if (!strcmp(kind, "memfd")) {
		fd = memfd_create("file_procs", MFD_CLOEXEC);
	} else {
		char path[] = "/var/tmp/libhmm-file-XXXXXX";
		fd = mkstemp(path);
		CHECK(fd >= 0, "mkstemp: %s", strerror(errno));
		unlink(path);
		CHECK(!fstatfs(fd, &sfs), "fstatfs: %s", strerror(errno));
		if (sfs.f_type == TMPFS_MAGIC)
			SKIP("/var/tmp is tmpfs: no disk filesystem to test");
	}
	CHECK(fd >= 0, "open: %s", strerror(errno));
	CHECK(!ftruncate(fd, (off_t)LEN), "ftruncate: %s", strerror(errno));
	return fd;
}

/* Write words [from, to) of the file with i ^ seed, through pwrite. */
static void file_fill(int fd, size_t from, size_t to, uint64_t seed)
{
	uint64_t *buf = malloc((to - from) * 8);

	CHECK(buf, "malloc");
	for (size_t i = from; i < to; i++)
		buf[i - from] = i ^ seed;
	CHECK(pwrite(fd, buf, (to - from) * 8, (off_t)(from * 8)) ==
		      (ssize_t)((to - from) * 8),
	      "pwrite: %s", strerror(errno));
	free(buf);
}

/* Check words [from, to) of @p (or of the file through pread if @p is
 * NULL) hold i ^ seed. */
static void expect(int fd, const uint64_t *p, size_t from, size_t to,
		   uint64_t seed, const char *what)
{
	uint64_t *buf = NULL;

	if (!p) {
		buf = malloc(LEN);
		CHECK(buf, "malloc");
		CHECK(pread(fd, buf, LEN, 0) == (ssize_t)LEN, "pread: %s",
		      strerror(errno));
		p = buf;
	}
	for (size_t i = from; i < to; i++)
		CHECK(p[i] == (i ^ seed),
		      "%s: word %zu = %#llx, want %#llx (seed %#llx)", what, i,
		      (unsigned long long)p[i], (unsigned long long)(i ^ seed),
		      (unsigned long long)seed);
	free(buf);
}

/* The device writes words [from, to) of @p with i ^ seed. */
static void device_fill(hmm_device_t *dev, uint64_t *p, size_t from,
			size_t to, uint64_t seed)
{
	uint64_t *buf = malloc((to - from) * 8);
	int r;

	CHECK(buf, "malloc");
	for (size_t i = from; i < to; i++)
		buf[i - from] = i ^ seed;
	r = hmm_sim_write(dev, p + from, buf, (to - from) * 8, NULL);
	CHECK(r == 0, "hmm_sim_write: %d", r);
	free(buf);
}

/* In the process that uses libhmm: map, adopt, migrate to a new device. */
static uint64_t *adopt(int fd, unsigned int flags, hmm_device_t **dev)
{
	uint64_t *p;
	long m;
	int r;

	r = hmm_init();
	if (r == -EPERM || r == -ENOSYS || r == -EOPNOTSUPP)
		SKIP("hmm_init() = %d: no usable userfaultfd", r);
	p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(p != MAP_FAILED, "mmap: %s", strerror(errno));
	r = hmm_file_adopt(p, LEN, fd, flags);
	CHECK(r == 0, "hmm_file_adopt: %d", r);
	r = hmm_device_open("sim", NULL, dev);
	CHECK(r == 0, "hmm_device_open: %d", r);
	m = hmm_migrate(p, LEN, *dev, 0);
	CHECK(m == NPAGES, "hmm_migrate: %ld", m);
	return p;
}

/* A pipe pair: the two processes take turns. */
struct turn {
	int to_child[2], to_parent[2];
};

static void turn_give(int fd)
{
	char c = 1;

	CHECK(write(fd, &c, 1) == 1, "pipe write: %s", strerror(errno));
}

static void turn_take(int fd)
{
	char c;

	CHECK(read(fd, &c, 1) == 1, "pipe read: %s", strerror(errno));
}

static int wait_child(pid_t pid)
{
	int st;

	CHECK(waitpid(pid, &st, 0) == pid, "waitpid: %s", strerror(errno));
	return st;
}

/*
 * share: the child (libhmm) migrates the file and writes its first half on
 * the device.  The parent (plain mappings, pread) sees the old data until
 * the child's hmm_file_sync, the device's after.  The child then brings
 * the second half home, the parent writes it, and the child's mapping sees
 * the parent's data while its device keeps the first half; at its exit the
 * first half, written once more on the device, reaches the file.
 */
static int share(const char *kind)
{
	int fd = open_file(kind);
	struct turn t;
	uint64_t *q;
	pid_t pid;

	file_fill(fd, 0, WORDS, 0x1111);
	CHECK(!pipe(t.to_child) && !pipe(t.to_parent), "pipe");
	q = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(q != MAP_FAILED, "mmap: %s", strerror(errno));
	pid = fork();
	CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		hmm_device_t *dev;
		uint64_t *p = adopt(fd, 0, &dev);
		device_fill(dev, p, 0, WORDS / 2, 0x2222);
		turn_give(t.to_parent[1]);		/* 1: written */
		turn_take(t.to_child[0]);
		CHECK(hmm_file_sync(p, LEN) >= NPAGES / 2, "hmm_file_sync");
		CHECK(hmm_migrate(p + WORDS / 2, LEN / 2, NULL, 0) >= 0,
		      "hmm_migrate home");
		turn_give(t.to_parent[1]);		/* 2: synced */
		turn_take(t.to_child[0]);		/* 3: parent wrote */
		expect(fd, p, WORDS / 2, WORDS, 0x3333, "child sees parent");
		CHECK(hmm_page_location(p, NULL) == HMM_LOC_DEVICE,
		      "first half left its device");
		device_fill(dev, p, 0, WORDS / 2, 0x4444);
		exit(0); /* the exit handlers write the device's data */
	}
	turn_take(t.to_parent[0]);
	/* Not yet written back: the file still has what it had. */
	expect(fd, NULL, 0, WORDS, 0x1111, "pread before sync");
	expect(fd, q, 0, WORDS, 0x1111, "mapping before sync");
	turn_give(t.to_child[1]);
	turn_take(t.to_parent[0]);
	expect(fd, NULL, 0, WORDS / 2, 0x2222, "pread after sync");
	expect(fd, q, 0, WORDS / 2, 0x2222, "mapping after sync");
	expect(fd, q, WORDS / 2, WORDS, 0x1111, "second half after sync");
	for (size_t i = WORDS / 2; i < WORDS; i++)
		q[i] = i ^ 0x3333;
	turn_give(t.to_child[1]);
	int st = wait_child(pid);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
	expect(fd, NULL, 0, WORDS / 2, 0x4444, "pread after exit");
	expect(fd, q, 0, WORDS / 2, 0x4444, "mapping after exit");
	expect(fd, NULL, WORDS / 2, WORDS, 0x3333, "parent's half");
	return 0;
}

static void *exit_thread(void *arg)
{
	(void)arg;
	exit(0);
}

/* exit: the child writes on the device and exits without a sync; the
 * file has the device's data once it is gone. */
static int exit_child(const char *kind, bool from_thread)
{
	int fd = open_file(kind);
	pid_t pid;

	file_fill(fd, 0, WORDS, 0x5555);
	pid = fork();
	CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		hmm_device_t *dev;
		uint64_t *p = adopt(fd, 0, &dev);
		pthread_t th;
		device_fill(dev, p, 0, WORDS, 0x6666);
		if (from_thread) {
			CHECK(!pthread_create(&th, NULL, exit_thread, NULL),
			      "pthread_create");
			for (;;)
				pause();
		}
		exit(0);
	}
	int st = wait_child(pid);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
	expect(fd, NULL, 0, WORDS, 0x6666, "pread after the child's exit");
	return 0;
}

/*
 * kill: the child writes on the device and dies by SIGKILL, which runs no
 * exit handler.  In safe mode (HMM_FILE_SYNC_EACH) every completed device
 * command was written back: nothing is lost.  Without it, what the device
 * wrote since the last write-back point is lost, as documented: the file
 * has its old data.
 */
static int kill_child(const char *kind, bool safe)
{
	int fd = open_file(kind);
	pid_t pid;

	file_fill(fd, 0, WORDS, 0x7777);
	pid = fork();
	CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		hmm_device_t *dev;
		uint64_t *p = adopt(fd, safe ? HMM_FILE_SYNC_EACH : 0, &dev);
		device_fill(dev, p, 0, WORDS / 2, 0x8888);
		CHECK(hmm_sim_fill64(dev, p + WORDS / 2, 0x9999, LEN / 2,
				     NULL) == 0,
		      "hmm_sim_fill64");
		CHECK(hmm_page_location(p, NULL) == HMM_LOC_DEVICE,
		      "data left the device");
		kill(getpid(), SIGKILL);
		for (;;)
			pause();
	}
	int st = wait_child(pid);
	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "child status %#x",
	      st);
	if (safe) {
		uint64_t *buf = malloc(LEN);
		CHECK(buf, "malloc");
		expect(fd, NULL, 0, WORDS / 2, 0x8888, "safe mode, first half");
		CHECK(pread(fd, buf, LEN, 0) == (ssize_t)LEN, "pread");
		for (size_t i = WORDS / 2; i < WORDS; i++)
			CHECK(buf[i] == 0x9999, "safe mode: word %zu = %#llx",
			      i, (unsigned long long)buf[i]);
		free(buf);
	} else {
		expect(fd, NULL, 0, WORDS, 0x7777, "default mode");
	}
	return 0;
}

/* exec: the child writes on the device and execs a program that knows
 * nothing of libhmm; the file has the device's data when it is gone. */
static int exec_child(const char *kind, const char *how)
{
	int fd = open_file(kind);
	pid_t pid;

	file_fill(fd, 0, WORDS, 0xaaaa);
	pid = fork();
	CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		hmm_device_t *dev;
		uint64_t *p = adopt(fd, 0, &dev);
		char *const argv[] = { "true", NULL };
		device_fill(dev, p, 0, WORDS, 0xbbbb);
		if (!strcmp(how, "execl"))
			execl("/bin/true", "true", (char *)NULL);
		else
			execv("/bin/true", argv);
		_exit(3);
	}
	int st = wait_child(pid);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
	expect(fd, NULL, 0, WORDS, 0xbbbb, "pread after the child's exec");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "share"))
		return share(argv[2]);
	if (argc >= 4 && !strcmp(argv[1], "exit"))
		return exit_child(argv[2], !strcmp(argv[3], "thread"));
	if (argc >= 4 && !strcmp(argv[1], "exec"))
		return exec_child(argv[2], argv[3]);
	if (argc >= 4 && !strcmp(argv[1], "kill"))
		return kill_child(argv[2], !strcmp(argv[3], "safe"));
	fprintf(stderr, "usage: %s share|exit|kill KIND [MODE]\n", argv[0]);
	return 2;
}
