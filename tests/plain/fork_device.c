/* SPDX-License-Identifier: MIT */
/*
 * fork with data on a device.
 *
 * The child sees exactly the parent's data at the moment of the fork, the
 * pages that were on the device included; the parent's pages stay on the
 * device (fork moves nothing); afterwards neither side sees the other's
 * writes, whether they are CPU writes or device writes; the child can use
 * the devices it inherited, open its own and tear libhmm down.
 */
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#include "plain.h"

#define PAGES 64
#define PG 4096UL
#define LEN (PAGES * PG)

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

static int count_on(const char *p, size_t len, hmm_device_t *dev)
{
	int n = 0;

	for (size_t off = 0; off < len; off += PG) {
		hmm_device_t *d;
		if (hmm_page_location(p + off, &d) == HMM_LOC_DEVICE && d == dev)
			n++;
	}
	return n;
}

/* Waits for the child; its exit status names the step that failed. */
static void wait_ok(pid_t pid)
{
	int st;

	CHECK(waitpid(pid, &st, 0) == pid, "waitpid: %s", strerror(errno));
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
	      "child failed: status %#x (exit %d)", st,
	      WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

#define CHILD_CHECK(cond, code)                                             \
	do {                                                                \
		if (!(cond)) {                                              \
			fprintf(stderr, "child: line %d: %s\n", __LINE__,   \
				#cond);                                     \
			_exit(code);                                        \
		}                                                           \
	} while (0)

int main(void)
{
	hmm_device_t *dev, *dev2;
	uint64_t *p, *q;
	int fds[2];
	pid_t pid;
	char c;

	PLAIN_NEED_HMM();
	CHECK(hmm_device_open("sim", NULL, &dev) == 0, "device");
	p = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED, "mmap");
	fill(p, LEN, 1);
	CHECK(hmm_range_adopt(p, LEN, 0) == 0, "adopt");
	CHECK(hmm_migrate(p, LEN, dev, 0) == PAGES, "migrate");
	CHECK(count_on((char *)p, LEN, dev) == PAGES, "not on the device");

	/* 1. The child sees the data; the parent's pages stay put. */
	CHECK(pipe(fds) == 0, "pipe");
	pid = fork();
	CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		uint64_t out[PG / 8];
		close(fds[1]);
		alarm(30);
		/* Wait until the parent has written on its device. */
		CHILD_CHECK(read(fds[0], &c, 1) == 1, 2);
		/* Still on (the child's copy of) the device. */
		CHILD_CHECK(count_on((char *)p, LEN, dev) == PAGES, 3);
		/* The device reads the fork-time data, not the parent's
		 * later device write. */
		CHILD_CHECK(hmm_sim_read(dev, p, out, PG, NULL) == 0, 4);
		CHILD_CHECK(mismatch(out, PG, 1) == -1, 5);
		/* The CPU too. */
		CHILD_CHECK(mismatch(p, LEN, 1) == -1, 6);
		CHILD_CHECK(count_on((char *)p, LEN, dev) == 0, 7);
		/* Its own writes, and its own migrations. */
		fill(p, LEN, 3);
		CHILD_CHECK(hmm_migrate(p, LEN, dev, 0) == PAGES, 8);
		CHILD_CHECK(hmm_device_open("sim", NULL, &dev2) == 0, 9);
		CHILD_CHECK(hmm_migrate(p, LEN, dev2, 0) == PAGES, 10);
		CHILD_CHECK(mismatch(p, LEN, 3) == -1, 11);
		CHILD_CHECK(hmm_fini() == 0, 12);
		CHILD_CHECK(mismatch(p, LEN, 3) == -1, 13);
		_exit(0);
	}
	close(fds[0]);
	CHECK(count_on((char *)p, LEN, dev) == PAGES,
	      "the parent's pages left the device at fork");
	/* A device write in the parent after the fork. */
	CHECK(hmm_sim_fill64(dev, p, 0x77, PG, NULL) == 0, "fill");
	CHECK(write(fds[1], "x", 1) == 1, "write");
	wait_ok(pid);
	close(fds[1]);
	CHECK(count_on((char *)p, LEN, dev) == PAGES,
	      "the child's activity moved the parent's pages");
	for (size_t i = 0; i < PG / 8; i++)
		CHECK(p[i] == 0x77, "word %zu: %#lx", i, (unsigned long)p[i]);
	for (size_t i = PG / 8; i < LEN / 8; i++)
		CHECK(p[i] == (i ^ 1), "parent word %zu: %#lx", i,
		      (unsigned long)p[i]);

	/* 2. The parent's CPU writes after the fork stay the parent's; a
	 * child's CPU write on a page still on the device ("COW in
	 * device") stays the child's. */
	CHECK(hmm_migrate(p, LEN, dev, 0) == PAGES, "migrate again");
	pid = fork();
	CHECK(pid >= 0, "fork");
	if (pid == 0) {
		alarm(30);
		for (size_t i = 0; i < LEN / 8; i++)
			p[i] += 1000; /* read-modify-write: faults */
		for (size_t i = 0; i < LEN / 8; i++)
			CHILD_CHECK(p[i] == (i < PG / 8 ? 0x77 + 1000
							: (i ^ 1) + 1000),
				    20);
		_exit(0);
	}
	for (size_t i = 0; i < LEN / 8; i++)
		p[i] = i ^ 5;
	wait_ok(pid);
	CHECK(mismatch(p, LEN, 5) == -1, "the child's writes leaked");

	/* 3. Many children, each checking the whole range. */
	CHECK(hmm_migrate(p, LEN, dev, 0) == PAGES, "migrate");
	q = p;
	for (int k = 0; k < 16; k++) {
		pid = fork();
		CHECK(pid >= 0, "fork %d", k);
		if (pid == 0) {
			alarm(30);
			CHILD_CHECK(mismatch(q, LEN, 5) == -1, 30);
			_exit(0);
		}
		wait_ok(pid);
	}
	CHECK(count_on((char *)p, LEN, dev) == PAGES, "moved by children");
	CHECK(mismatch(p, LEN, 5) == -1, "parent data at the end");
	return 0;
}
