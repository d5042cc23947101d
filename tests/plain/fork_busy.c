/* SPDX-License-Identifier: MIT */
/*
 * fork while other threads migrate pages both ways and fault them back:
 * every child must see every word of the data (which nobody changes), and
 * so must the parent afterwards.  A fork that copied libhmm's state half
 * way through a migration would give a child holes (zeros) or a page that
 * no fault can bring back (a hang, caught by alarm).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#include "plain.h"

#define PAGES 512
#define LEN (PAGES * 4096UL)
#define FORKS 40

static uint64_t *p;
static hmm_device_t *dev;
static atomic_int stop;

static long mismatch(const volatile uint64_t *q)
{
	for (size_t i = 0; i < LEN / 8; i++)
		if (q[i] != (i ^ 0xabcdef))
			return (long)i;
	return -1;
}

static void *migrator(void *arg)
{
	(void)arg;
	for (unsigned k = 0; !atomic_load(&stop); k++) {
		size_t off = (k * 37 % PAGES) * 4096UL;
		size_t len = off + 64 * 4096UL <= LEN ? 64 * 4096UL : LEN - off;
		hmm_migrate((char *)p + off, len, (k & 1) ? dev : NULL, 0);
	}
	return NULL;
}

static void *reader(void *arg)
{
	volatile uint64_t sum = 0;

	(void)arg;
	while (!atomic_load(&stop))
		for (size_t i = 0; i < LEN / 8; i += 512)
			sum += p[i];
	return NULL;
}

int main(void)
{
	pthread_t th[3];

#if defined(__SANITIZE_ADDRESS__)
	/* The child of a fork taken while another thread is inside ASan's
	 * malloc deadlocks in its next malloc (GCC 12's ASan allocator is
	 * not fork-safe): nothing libhmm could change. */
	SKIP("ASan's allocator is not fork-safe with other threads in malloc");
#endif
	PLAIN_NEED_HMM();
	CHECK(hmm_device_open("sim", NULL, &dev) == 0, "device");
	p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		 -1, 0);
	CHECK(p != MAP_FAILED, "mmap");
	for (size_t i = 0; i < LEN / 8; i++)
		p[i] = i ^ 0xabcdef;
	CHECK(hmm_range_adopt(p, LEN, 0) == 0, "adopt");
	CHECK(pthread_create(&th[0], NULL, migrator, NULL) == 0, "thread");
	CHECK(pthread_create(&th[1], NULL, migrator, NULL) == 0, "thread");
	CHECK(pthread_create(&th[2], NULL, reader, NULL) == 0, "thread");
	for (int k = 0; k < FORKS; k++) {
		int st;
		pid_t pid = fork();
		CHECK(pid >= 0, "fork %d: %s", k, strerror(errno));
		if (pid == 0) {
			long w;
			alarm(20);
			w = mismatch(p);
			if (w != -1) {
				fprintf(stderr, "child %d: word %ld is %#lx\n",
					k, w, (unsigned long)p[w]);
				_exit(2);
			}
			/* The child can move its own copy too. */
			if (hmm_migrate(p, LEN, dev, 0) < 0 || mismatch(p) != -1)
				_exit(3);
			_exit(0);
		}
		CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "child %d: status %#x", k, st);
	}
	atomic_store(&stop, 1);
	for (int i = 0; i < 3; i++)
		pthread_join(th[i], NULL);
	CHECK(mismatch(p) == -1, "parent data");
	return 0;
}
