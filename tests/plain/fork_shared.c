/* SPDX-License-Identifier: MIT */
/*
 * fork with shared managed memory (hmm_mem_alloc, and adopted
 * MAP_SHARED|MAP_ANONYMOUS memory).
 *
 * Its device-resident pages come home before the fork, so both processes
 * see one copy; writes on either side are seen by the other.  While the
 * child maps it, the memory cannot go to a device again (-EBUSY): the
 * other process would find holes.  Once the child is gone it can.
 */
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include <hmm/hmm.h>

#include "plain.h"

#define PAGES 32
#define LEN (PAGES * 4096UL)

static void fill(volatile uint64_t *p, uint64_t seed)
{
	for (size_t i = 0; i < LEN / 8; i++)
		p[i] = i ^ seed;
}

static long mismatch(const volatile uint64_t *p, uint64_t seed)
{
	for (size_t i = 0; i < LEN / 8; i++)
		if (p[i] != (i ^ seed))
			return (long)i;
	return -1;
}

static void one(hmm_device_t *dev, volatile uint64_t *p, const char *what)
{
	int to_child[2], to_parent[2], st;
	long r;
	pid_t pid;
	char c;

	fill(p, 1);
	r = hmm_migrate((void *)p, LEN, dev, 0);
	CHECK(r == PAGES, "%s: migrate = %ld", what, r);
	CHECK(pipe(to_child) == 0 && pipe(to_parent) == 0, "pipe");
	pid = fork();
	CHECK(pid >= 0, "fork");
	if (pid == 0) {
		alarm(30);
		if (mismatch(p, 1) != -1)
			_exit(2);
		fill(p, 2); /* the parent must see this */
		if (write(to_parent[1], "w", 1) != 1 ||
		    read(to_child[0], &c, 1) != 1)
			_exit(3);
		/* The parent wrote 3 meanwhile. */
		_exit(mismatch(p, 3) == -1 ? 0 : 4);
	}
	CHECK(read(to_parent[0], &c, 1) == 1, "%s: child died", what);
	CHECK(mismatch(p, 2) == -1, "%s: the child's write is not seen",
	      what);
	/* While the child maps it, it stays home. */
	r = hmm_migrate((void *)p, LEN, dev, 0);
	CHECK(r == -EBUSY, "%s: migrate while shared = %ld", what, r);
	CHECK(hmm_page_location((void *)p, NULL) == HMM_LOC_SYSTEM,
	      "%s: moved", what);
	fill(p, 3);
	CHECK(write(to_child[1], "r", 1) == 1, "write");
	CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
	      "%s: child status %#x", what, st);
	/* Nobody else maps it now. */
	r = hmm_migrate((void *)p, LEN, dev, 0);
	CHECK(r == PAGES, "%s: migrate after the child = %ld", what, r);
	CHECK(mismatch(p, 3) == -1, "%s: data", what);
	close(to_child[0]);
	close(to_child[1]);
	close(to_parent[0]);
	close(to_parent[1]);
}

int main(void)
{
	hmm_device_t *dev;
	void *a, *s;

	PLAIN_NEED_HMM();
	CHECK(hmm_device_open("sim", NULL, &dev) == 0, "device");
	CHECK(hmm_mem_alloc(LEN, 0, &a) == 0, "alloc");
	one(dev, a, "hmm_mem_alloc");
	s = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
		 -1, 0);
	CHECK(s != MAP_FAILED, "mmap");
	/* Already shared with a child: not adoptable while it maps it. */
	{
		int gate[2], st;
		char c;
		pid_t pid;
		CHECK(pipe(gate) == 0, "pipe");
		pid = fork();
		CHECK(pid >= 0, "fork");
		if (pid == 0) {
			close(gate[1]);
			_exit(read(gate[0], &c, 1) == 0 ? 0 : 1);
		}
		close(gate[0]);
		CHECK(hmm_range_adopt(s, LEN, 0) == -EBUSY,
		      "adopted memory a child maps");
		close(gate[1]);
		CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st), "wait");
	}
	CHECK(hmm_range_adopt(s, LEN, 0) == 0, "adopt");
	one(dev, s, "MAP_SHARED|MAP_ANONYMOUS");
	return 0;
}
