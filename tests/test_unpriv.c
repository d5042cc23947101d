/* SPDX-License-Identifier: MIT */
/*
 * libhmm without privileges (run as "nobody" by unprivileged.sh).
 *
 * A plain program, not Criterion: exit 0 pass, 1 fail, 77 skip.  Without
 * CAP_SYS_PTRACE, with vm.unprivileged_userfaultfd=0 and /dev/userfaultfd
 * closed to it, libhmm must fall back to UFFD_USER_MODE_ONLY and still
 * migrate; only kernel-mode accesses to device-resident pages are lost.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#define PG HMM_PAGE_SIZE
#define NPAGES 64
#define LEN (NPAGES * PG)

static int failures;

#define CHECK(cond, ...)                                                      \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__,         \
				__LINE__, #cond);                             \
			fprintf(stderr, __VA_ARGS__);                         \
			fputc('\n', stderr);                                  \
			failures++;                                           \
		}                                                             \
	} while (0)

static long mismatch(const void *buf, size_t len, uint64_t seed, size_t first)
{
	const volatile uint64_t *w = buf;

	for (size_t i = 0; i < len / 8; i++)
		if (w[i] != ((first + i) ^ seed))
			return (long)i;
	return -1;
}

static void fill(void *buf, size_t len, uint64_t seed)
{
	uint64_t *w = buf;

	for (size_t i = 0; i < len / 8; i++)
		w[i] = i ^ seed;
}

static int count_loc(const char *p, size_t len, int want)
{
	int n = 0;

	for (size_t off = 0; off < len; off += PG)
		if (hmm_page_location(p + off, NULL) == want)
			n++;
	return n;
}

/* write() from a device-resident page: the data, or EFAULT, never a hang. */
static void syscall_on_device_page(hmm_device_t *dev, char *p, int caps)
{
	char *out = malloc(PG);
	int fds[2];
	ssize_t n;

	if (!out || pipe(fds) != 0) {
		CHECK(0, "pipe: %s", strerror(errno));
		free(out);
		return;
	}
	CHECK(hmm_migrate(p, LEN, dev, 0) >= 0, "migrate for syscall");
	n = write(fds[1], p + PG, PG);
	if (n == (ssize_t)PG) {
		CHECK(read(fds[0], out, PG) == (ssize_t)PG, "pipe read");
		CHECK(mismatch(out, PG, 0x0b0d, PG / 8) == -1,
		      "write() from a device page sent wrong data");
	} else {
		CHECK(n == -1 && errno == EFAULT,
		      "write() from a device page: %zd (%s)", n, strerror(errno));
		CHECK(!(caps & HMM_CAP_KERNEL_FAULTS),
		      "EFAULT although HMM_CAP_KERNEL_FAULTS is set");
	}
	close(fds[0]);
	close(fds[1]);
	free(out);
	/* The user-space path works whatever happened above. */
	CHECK(mismatch(p, LEN, 0x0b0d, 0) == -1, "data after syscall test");
}

/*
 * File-backed memory without privileges: a memfd (MINOR faults, which
 * user-mode-only userfaultfd serves for user-space accesses) and a file in
 * /var/tmp (protection faults, no userfaultfd at all).  pread() on the
 * file sees what the device wrote.
 */
static void file_check(hmm_device_t *dev, bool disk)
{
	char path[] = "/var/tmp/libhmm-unpriv-XXXXXX";
	int fd = disk ? mkstemp(path) : memfd_create("unpriv", MFD_CLOEXEC);
	uint64_t *p, word;
	int r;

	if (fd < 0) {
		printf("file (%s): cannot create: %s (skipped)\n",
		       disk ? "disk" : "memfd", strerror(errno));
		return;
	}
	if (disk)
		unlink(path);
	CHECK(!ftruncate(fd, LEN), "ftruncate");
	p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(p != MAP_FAILED, "mmap file");
	if (p == MAP_FAILED)
		return;
	fill(p, LEN, 0x0f11);
	r = hmm_file_adopt(p, LEN, fd, 0);
	CHECK(r == 0, "hmm_file_adopt (%s) = %d", disk ? "disk" : "memfd", r);
	CHECK(hmm_migrate(p, LEN, dev, 0) == NPAGES, "file migrate");
	CHECK(count_loc((char *)p, LEN, HMM_LOC_DEVICE) == NPAGES,
	      "file pages on device");
	r = hmm_sim_fill64(dev, p + 8, 0xabcd, 8, NULL);
	CHECK(r == 0, "hmm_sim_fill64 on a file = %d", r);
	CHECK(pread(fd, &word, 8, 64) == 8 && word == 0xabcd,
	      "pread sees the device's write");
	CHECK(p[8] == 0xabcd && p[9] == (9 ^ 0x0f11), "CPU read of the file");
	CHECK(hmm_range_release(p, LEN) == 0, "release the file range");
	munmap(p, LEN);
	close(fd);
}

int main(void)
{
	hmm_device_t *dev = NULL;
	struct hmm_device_attr attr = { .mem_size = 2 * LEN };
	char *p, *buf;
	long moved;
	int r, caps;

	alarm(120);
	r = hmm_init();
	if (r == -EPERM || r == -ENOSYS) {
		printf("SKIP: hmm_init() = %d (%s) as uid %d: no userfaultfd "
		       "for this process\n", r, strerror(-r), (int)geteuid());
		return 77;
	}
	if (r != 0) {
		fprintf(stderr, "FAIL: hmm_init() = %d (%s)\n", r, strerror(-r));
		return 1;
	}
	caps = hmm_caps();
	CHECK(caps >= 0, "hmm_caps() = %d", caps);
	if (geteuid() != 0)
		CHECK(!(caps & HMM_CAP_KERNEL_FAULTS),
		      "unprivileged but HMM_CAP_KERNEL_FAULTS set (caps %#x)",
		      caps);
	printf("uid %d, caps %#x\n", (int)geteuid(), caps);

	p = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	buf = malloc(LEN);
	if (p == MAP_FAILED || !buf) {
		fprintf(stderr, "FAIL: out of memory\n");
		return 1;
	}
	fill(p, LEN, 0x0b0d);
	r = hmm_range_adopt(p, LEN, 0);
	CHECK(r == 0, "hmm_range_adopt = %d", r);
	r = hmm_device_open("sim", &attr, &dev);
	CHECK(r == 0, "hmm_device_open = %d", r);
	if (failures)
		return 1;

	moved = hmm_migrate(p, LEN, dev, 0);
	CHECK(moved == NPAGES, "hmm_migrate to device = %ld", moved);
	CHECK(count_loc(p, LEN, HMM_LOC_DEVICE) == NPAGES, "pages on device");
	r = hmm_sim_read(dev, p + 3 * PG, buf, 2 * PG, NULL);
	CHECK(r == 0, "hmm_sim_read = %d", r);
	CHECK(mismatch(buf, 2 * PG, 0x0b0d, 3 * PG / 8) == -1,
	      "device read of device-resident data");
	moved = hmm_migrate(p, LEN, NULL, 0);
	CHECK(moved == NPAGES, "hmm_migrate to system = %ld", moved);
	CHECK(count_loc(p, LEN, HMM_LOC_SYSTEM) == NPAGES, "pages in system");
	CHECK(mismatch(p, LEN, 0x0b0d, 0) == -1, "data after migrate back");

	/* CPU faults bring the pages back without hmm_migrate. */
	moved = hmm_migrate(p, LEN, dev, 0);
	CHECK(moved == NPAGES, "second hmm_migrate to device = %ld", moved);
	CHECK(mismatch(p, LEN, 0x0b0d, 0) == -1, "data after CPU fault-back");
	CHECK(count_loc(p, LEN, HMM_LOC_SYSTEM) == NPAGES,
	      "pages in system after CPU reads");

	/* CPU writes to device-resident pages. */
	CHECK(hmm_migrate(p, LEN, dev, 0) == NPAGES, "third migrate");
	((volatile uint64_t *)p)[5] = 42;
	CHECK(((volatile uint64_t *)p)[5] == 42, "CPU write");
	((volatile uint64_t *)p)[5] = 5 ^ 0x0b0d;
	CHECK(mismatch(p, LEN, 0x0b0d, 0) == -1, "data after CPU write");

	syscall_on_device_page(dev, p, caps);

	/* Locked to the device, unprivileged too: the SIGBUS descriptor is
	 * opened the same way as libhmm's own. */
	r = hmm_range_lock(p, LEN, dev);
	CHECK(r == 0, "hmm_range_lock = %d", r);
	if (r == 0) {
		CHECK(count_loc(p, LEN, HMM_LOC_DEVICE) == NPAGES,
		      "locked pages on device");
		r = hmm_sim_read(dev, p, buf, 2 * PG, NULL);
		CHECK(r == 0 && mismatch(buf, 2 * PG, 0x0b0d, 0) == -1,
		      "device read of locked range: %d", r);
		CHECK(hmm_range_unlock(p, LEN, dev) == NPAGES, "unlock");
		CHECK(mismatch(p, LEN, 0x0b0d, 0) == -1, "data after unlock");
	}
	/* A read-only hold for atomics. */
	if (caps & HMM_CAP_WP) {
		uint64_t old = 0;
		r = hmm_exclusive_begin(p, LEN, dev, HMM_EXCL_READONLY, 0);
		CHECK(r == 0, "hmm_exclusive_begin = %d", r);
		r = hmm_sim_atomic_add(dev, (uint64_t *)p + 7, 0, &old);
		CHECK(r == 0 && old == (7 ^ 0x0b0d), "device atomic: %d", r);
		CHECK(((volatile uint64_t *)p)[7] == (7 ^ 0x0b0d),
		      "CPU read in a hold");
		CHECK(hmm_exclusive_end(p, LEN, dev) >= 0, "end");
	}

	file_check(dev, false);
	file_check(dev, true);

	CHECK(hmm_migrate(p, LEN, dev, 0) >= 0, "migrate before close");
	r = hmm_device_close(dev);
	CHECK(r == 0, "hmm_device_close = %d", r);
	CHECK(count_loc(p, LEN, HMM_LOC_SYSTEM) == NPAGES, "after close");
	CHECK(mismatch(p, LEN, 0x0b0d, 0) == -1, "data after close");
	r = hmm_fini();
	CHECK(r == 0, "hmm_fini = %d", r);
	free(buf);
	if (failures) {
		fprintf(stderr, "%d checks failed\n", failures);
		return 1;
	}
	printf("PASS\n");
	return 0;
}
