/* SPDX-License-Identifier: MIT */
/*
 * File-backed memory on a device: hmm_file_adopt manages part of a file
 * mapping, whose pages may then migrate like anonymous memory.  Data the
 * device writes reaches the file (its page cache, then the disk) when it
 * is written back: at hmm_file_sync, msync, munmap, release, device close
 * and exit.
 *
 * The same steps run on two kinds of file, which libhmm serves two ways:
 *  - a memfd (shmem): CPU accesses come back through userfaultfd minor
 *    faults;
 *  - a regular file in $TMPDIR (default /var/tmp): through protection
 *    faults (the page is PROT_NONE while a device holds it).
 *
 * Steps: map the file shared and fill it on the CPU; adopt the mapping;
 * migrate it to a sim device; the device overwrites it; hmm_file_sync
 * writes the device's data to the file, after which another mapping of the
 * file and pread() see it; a CPU load through the managed mapping brings
 * its page home.
 *
 * Exit status 0 when every check passes, 1 otherwise, 77 when this machine
 * offers no userfaultfd.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#define PAGES 32
#define LEN (PAGES * HMM_PAGE_SIZE)
#define WORDS (LEN / sizeof(uint64_t))
#define DEVICE_VALUE 0xd1ce0000d1ce0000ULL

static int failures;

#define CHECK(cond, ...)                                              \
	do {                                                          \
		if (!(cond)) {                                        \
			fprintf(stderr, "file_migrate: FAIL: " __VA_ARGS__); \
			fputc('\n', stderr);                          \
			failures++;                                   \
		}                                                     \
	} while (0)

/* Every step above, on the file open on @fd (LEN bytes long). */
static void run(const char *kind, int fd, hmm_device_t *dev)
{
	uint64_t *map, *view, word = 0;
	long moved;
	int ret;

	map = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	view = mmap(NULL, LEN, PROT_READ, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED || view == MAP_FAILED) {
		CHECK(0, "%s: mmap: %s", kind, strerror(errno));
		return;
	}
	for (size_t i = 0; i < WORDS; i++)
		map[i] = i;

	/* The descriptor is needed only during the call; it must be open
	 * for writing since the mapping is writable and shared. */
	ret = hmm_file_adopt(map, LEN, fd, 0);
	CHECK(ret == 0, "%s: hmm_file_adopt: %s", kind, strerror(-ret));
	if (ret)
		goto out;
	moved = hmm_migrate(map, LEN, dev, 0);
	CHECK(moved == PAGES, "%s: hmm_migrate moved %ld pages", kind, moved);

	/* The device overwrites every word, in its own memory. */
	ret = hmm_sim_fill64(dev, map, DEVICE_VALUE, LEN, NULL);
	CHECK(ret == 0, "%s: hmm_sim_fill64: %s", kind, strerror(-ret));

	/* Until a write-back, other views of the file need not see it. */
	printf("%s: before hmm_file_sync another mapping reads %#lx\n", kind,
	       (unsigned long)view[1]);

	/* Write back: every page the device wrote goes to the file; the
	 * pages stay on the device. */
	ret = hmm_file_sync(map, LEN);
	CHECK(ret == PAGES, "%s: hmm_file_sync wrote %d pages, not %d", kind,
	      ret, PAGES);
	CHECK(hmm_page_location(map, NULL) == HMM_LOC_DEVICE,
	      "%s: hmm_file_sync moved the pages", kind);
	CHECK(view[WORDS - 1] == DEVICE_VALUE,
	      "%s: the other mapping reads %#lx after hmm_file_sync", kind,
	      (unsigned long)view[WORDS - 1]);
	CHECK(pread(fd, &word, sizeof(word), 8) == sizeof(word) &&
		      word == DEVICE_VALUE,
	      "%s: pread reads %#lx after hmm_file_sync", kind,
	      (unsigned long)word);
	printf("%s: after hmm_file_sync (%d pages) it reads %#lx\n", kind, ret,
	       (unsigned long)view[1]);

	/* The CPU reads through the managed mapping: the page comes home. */
	CHECK(map[3] == DEVICE_VALUE, "%s: CPU load reads %#lx", kind,
	      (unsigned long)map[3]);
	CHECK(hmm_page_location(map, NULL) == HMM_LOC_SYSTEM,
	      "%s: page 0 did not come home", kind);

	/* Release brings the rest home (writing it back) and lets go. */
	ret = hmm_range_release(map, LEN);
	CHECK(ret == 0, "%s: hmm_range_release: %s", kind, strerror(-ret));
out:
	munmap(map, LEN);
	munmap(view, LEN);
}

int main(void)
{
	char path[4096];
	const char *dir = getenv("TMPDIR");
	hmm_device_t *dev;
	int ret, fd;

	ret = hmm_init();
	if (ret == -EPERM || ret == -ENOSYS || ret == -ENOENT ||
	    ret == -EOPNOTSUPP) {
		fprintf(stderr, "file_migrate: skipped: hmm_init: %s\n",
			strerror(-ret));
		return 77;
	}
	if (ret) {
		fprintf(stderr, "file_migrate: hmm_init: %s\n", strerror(-ret));
		return 1;
	}
	ret = hmm_device_open("sim", NULL, &dev);
	if (ret) {
		fprintf(stderr, "file_migrate: hmm_device_open: %s\n",
			strerror(-ret));
		return 1;
	}

	/* A memfd: shmem, minor faults. */
	fd = memfd_create("file_migrate", MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, LEN)) {
		perror("file_migrate: memfd");
		return 1;
	}
	run("memfd", fd, dev);
	close(fd);

	/* A file on disk, removed at once (the descriptor keeps it). */
	snprintf(path, sizeof(path), "%s/file_migrate.XXXXXX",
		 dir && *dir ? dir : "/var/tmp");
	fd = mkstemp(path);
	if (fd < 0 || unlink(path) || ftruncate(fd, LEN)) {
		fprintf(stderr, "file_migrate: %s: %s\n", path,
			strerror(errno));
		return 1;
	}
	run("disk file", fd, dev);
	close(fd);

	ret = hmm_device_close(dev);
	CHECK(ret == 0, "hmm_device_close: %s", strerror(-ret));
	printf("file_migrate: %s\n", failures ? "FAILED" : "ok");
	return failures ? 1 : 0;
}
