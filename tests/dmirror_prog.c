/* SPDX-License-Identifier: MIT */
/*
 * A program written for the kernel's HMM test driver, knowing nothing of
 * libhmm: it opens /dev/hmm_dmirror0, has the device read, write and
 * migrate its memory, forks a child that opens its own mirror, and exits
 * with data still on the device.  The test suite runs it under hmm-run
 * (exit 0: all good, 77: no usable device, anything else: a failure with
 * a message on stderr).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

/* The kernel's uapi, spelled out: this program must not need libhmm. */
struct cmd {
	uint64_t addr, ptr, npages, cpages, faults;
};
#define READ _IOWR('H', 0x00, struct cmd)
#define WRITE _IOWR('H', 0x01, struct cmd)
#define MIGRATE_TO_DEV _IOWR('H', 0x02, struct cmd)
#define SNAPSHOT _IOWR('H', 0x04, struct cmd)
#define DEV_PRIVATE_LOCAL 0x20

#define NPAGES 256

static long pg;

static int run(int fd, unsigned long req, void *addr, void *ptr,
	       struct cmd *c)
{
	int r;

	memset(c, 0, sizeof(*c));
	c->addr = (uintptr_t)addr;
	c->ptr = (uintptr_t)ptr;
	c->npages = NPAGES;
	while ((r = ioctl(fd, req, c)) < 0 && errno == EINTR)
		;
	return r < 0 ? -errno : 0;
}

#define CHECK(cond, ...)                                                    \
	do {                                                                \
		if (!(cond)) {                                              \
			fprintf(stderr, "dmirror_prog: line %d: ", __LINE__); \
			fprintf(stderr, __VA_ARGS__);                       \
			fputc('\n', stderr);                                \
			exit(1);                                            \
		}                                                           \
	} while (0)

int main(void)
{
	size_t size, n;
	int fd, cfd, status, r;
	unsigned char snap[NPAGES];
	struct cmd c;
	int *p, *m;
	pid_t pid;

	pg = sysconf(_SC_PAGESIZE);
	size = NPAGES * (size_t)pg;
	n = size / sizeof(int);
	fd = open("/dev/hmm_dmirror0", O_RDWR | O_CLOEXEC);
	if (fd < 0 && (errno == ENOENT || errno == EPERM || errno == ENOSYS)) {
		fprintf(stderr, "dmirror_prog: no dmirror device: %s\n",
			strerror(errno));
		return 77;
	}
	CHECK(fd >= 0, "open: %s", strerror(errno));
	p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	m = malloc(size);
	CHECK(p != MAP_FAILED && m, "out of memory");
	for (size_t i = 0; i < n; i++)
		p[i] = (int)i;

	r = run(fd, READ, p, m, &c);
	CHECK(r == 0 && c.cpages == NPAGES && c.faults == 1,
	      "READ = %d, cpages %lu, faults %lu", r, (unsigned long)c.cpages,
	      (unsigned long)c.faults);
	for (size_t i = 0; i < n; i++)
		CHECK(m[i] == (int)i, "READ: word %zu is %d", i, m[i]);

	for (size_t i = 0; i < n; i++)
		m[i] = -(int)i;
	r = run(fd, WRITE, p, m, &c);
	CHECK(r == 0 && c.cpages == NPAGES, "WRITE = %d", r);
	for (size_t i = 0; i < n; i++)
		CHECK(p[i] == -(int)i, "WRITE: word %zu is %d", i, p[i]);

	r = run(fd, MIGRATE_TO_DEV, p, m, &c);
	CHECK(r == 0 && c.cpages == NPAGES, "MIGRATE_TO_DEV = %d", r);
	r = run(fd, SNAPSHOT, p, snap, &c);
	CHECK(r == 0 && snap[0] == (DEV_PRIVATE_LOCAL | 0x02),
	      "SNAPSHOT = %d, byte %#x", r, snap[0]);

	/* A child sees the parent's data and writes its copy through a
	 * mirror of its own; the parent's copy does not change. */
	pid = fork();
	CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		cfd = open("/dev/hmm_dmirror0", O_RDWR);
		CHECK(cfd >= 0, "child open: %s", strerror(errno));
		for (size_t i = 0; i < n; i++)
			CHECK(p[i] == -(int)i, "child: word %zu is %d", i,
			      p[i]);
		for (size_t i = 0; i < n; i++)
			m[i] = 7;
		r = run(cfd, WRITE, p, m, &c);
		CHECK(r == 0 && c.cpages == NPAGES, "child WRITE = %d", r);
		CHECK(p[n - 1] == 7, "child: write not seen");
		close(cfd);
		_exit(0);
	}
	CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
		      WEXITSTATUS(status) == 0,
	      "child status %#x", status);
	for (size_t i = 0; i < n; i++)
		CHECK(p[i] == -(int)i, "parent after fork: word %zu is %d", i,
		      p[i]);

	/* Other files pass through. */
	cfd = open("/proc/self/stat", O_RDONLY);
	CHECK(cfd >= 0 && read(cfd, m, 16) == 16, "plain open/read failed");
	close(cfd);

	/* Exit with the data on the device again: nothing may hang. */
	r = run(fd, MIGRATE_TO_DEV, p, m, &c);
	CHECK(r == 0, "MIGRATE_TO_DEV again = %d", r);
	return 0;
}
