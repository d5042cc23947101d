/* SPDX-License-Identifier: MIT */
/*
 * execve() of a process using libhmm leaves nothing of libhmm behind in
 * the new image: no userfaultfd, no eventfd, no memfd named "libhmm".  The
 * new program may not know libhmm at all, and an inherited userfaultfd or
 * shared-memory file would leak memory and confuse it.
 *
 * The program inits libhmm, opens a sim device, puts data on it (managed
 * memory of both kinds), checks that its checker does see libhmm's
 * descriptors, and then re-executes itself (/proc/self/exe) from the main
 * thread, while a sim engine and the fault-service thread exist.  The new
 * image scans /proc/self/fd, then does it all again, this time calling
 * execv from a secondary thread; the last image scans /proc/self/fd and
 * exits 0 if it finds none of them.
 */
#include <dirent.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#include "plain.h"

#define PG HMM_PAGE_SIZE
#define NPAGES 32
#define LEN (NPAGES * PG)

static char **g_argv;

/* Counts the descriptors of this process that belong to libhmm, printing
 * each when @verbose. */
static int libhmm_fds(int verbose)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	CHECK(d, "opendir /proc/self/fd: %s", strerror(errno));
	while ((e = readdir(d))) {
		char path[300], target[256];
		ssize_t len;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		len = readlink(path, target, sizeof(target) - 1);
		if (len < 0)
			continue;
		target[len] = 0;
		if (strcmp(target, "anon_inode:[userfaultfd]") == 0 ||
		    strcmp(target, "anon_inode:[eventfd]") == 0 ||
		    strncmp(target, "/memfd:libhmm", 13) == 0) {
			if (verbose)
				fprintf(stderr, "fd %s -> %s\n", e->d_name,
					target);
			n++;
		}
	}
	closedir(d);
	return n;
}

static void *do_exec(void *arg)
{
	char *args[] = { g_argv[0], arg, NULL };

	execv("/proc/self/exe", args);
	fprintf(stderr, "execv /proc/self/exe: %s\n", strerror(errno));
	exit(1);
}

/* The new image: nothing of libhmm's may be there. */
static void check_clean(const char *when)
{
	int n = libhmm_fds(1);

	CHECK(n == 0, "after exec from %s, %d descriptors of libhmm "
		      "survived (listed above): they need O_CLOEXEC", when, n);
}

int main(int argc, char **argv)
{
	hmm_device_t *dev;
	uint64_t *a, *b;
	pthread_t th;
	void *m;
	int r, n;

	int from_thread = 0;

	g_argv = argv;
	if (argc > 1 && strcmp(argv[1], "--check") == 0) {
		check_clean("a secondary thread");
		printf("exec_leaves_nothing: the new images had no libhmm "
		       "descriptor\n");
		return 0;
	}
	if (argc > 1 && strcmp(argv[1], "--again") == 0) {
		check_clean("the main thread");
		from_thread = 1;
	}

	PLAIN_NEED_HMM();
	r = hmm_device_open("sim", NULL, &dev);
	CHECK(r == 0, "hmm_device_open(sim) = %d", r);
	r = hmm_mem_alloc(LEN, 0, &m);
	CHECK(r == 0, "hmm_mem_alloc = %d", r);
	a = m;
	b = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(b != MAP_FAILED, "mmap: %s", strerror(errno));
	r = hmm_range_adopt(b, LEN, 0);
	CHECK(r == 0, "hmm_range_adopt = %d", r);
	for (size_t i = 0; i < LEN / 8; i++) {
		a[i] = i ^ 0x1;
		b[i] = i ^ 0x2;
	}
	CHECK(hmm_migrate(a, LEN, dev, 0) == NPAGES, "hmm_migrate a");
	CHECK(hmm_migrate(b, LEN, dev, 0) == NPAGES, "hmm_migrate b");
	r = hmm_sim_fill64(dev, a, 0xfeed, PG, NULL);
	CHECK(r == 0, "hmm_sim_fill64 = %d", r);
	CHECK(hmm_page_location(a, NULL) == HMM_LOC_DEVICE &&
	      hmm_page_location(b, NULL) == HMM_LOC_DEVICE,
	      "the data is not on the device");

	/* The checker is not blind: before exec it sees libhmm's
	 * userfaultfd and its memfd. */
	n = libhmm_fds(0);
	CHECK(n >= 2, "before exec only %d libhmm descriptors were found: "
		      "the check after exec would prove nothing", n);

	fflush(NULL);
	if (!from_thread)
		do_exec("--again");
	r = pthread_create(&th, NULL, do_exec, "--check");
	CHECK(r == 0, "pthread_create: %s", strerror(r));
	pthread_join(th, NULL);
	CHECK(0, "exec did not happen");
	return 1;
}
