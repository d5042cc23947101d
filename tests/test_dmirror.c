/* SPDX-License-Identifier: MIT */
/*
 * The kernel's HMM selftest scenarios (tools/testing/selftests/mm/
 * hmm-tests.c), written afresh from their semantics for libhmm's user-space
 * dmirror driver: the program opens /dev/hmm_dmirror0 and 1 and issues
 * HMM_DMIRROR_* ioctls exactly as it would with lib/test_hmm.ko loaded, and
 * libhmm-dmirror.so (linked in) answers.  Only the device-private variants
 * exist: devices 2 and 3 are not offered.
 *
 * Where libhmm knowingly differs from the kernel, the test checks libhmm's
 * documented behaviour and says so:
 *  - shared anonymous memory migrates (the kernel gives -ENOENT);
 *  - MAP_PRIVATE file mappings cannot migrate yet (-ENOENT, data intact;
 *    the kernel migrates their COW'ed anonymous pages);
 *  - SNAPSHOT never reports PMD for device-resident pages;
 *  - /proc/self/pagemap does not show device-resident pages as swap
 *    entries, so that check of the kernel's THP test is left out.
 * hmm_gup_test (needs the kernel's gup_test) and the THP throughput
 * benchmark are not ported.
 */
#include <pthread.h>
#include <signal.h>
#include <time.h>

#include "dmirror_common.h"

/* SNAPSHOT of a writable page on the device that asks. */
#define DEV_LOCAL_RW \
	(HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | HMM_DMIRROR_PROT_WRITE)

/* ---- the device files ------------------------------------------------ */

Test(dmirror, open_close, .timeout = 60)
{
	int fd0 = dm_open(0), fd1 = dm_open(1), fd;

	cr_assert_eq(close(fd0), 0, "close: %s", strerror(errno));
	cr_assert_eq(close(fd1), 0, "close: %s", strerror(errno));

	/* openat reaches the same devices, and two mirrors of one device
	 * can be open at once. */
	fd0 = openat(AT_FDCWD, "/dev/hmm_dmirror0", O_RDWR | O_CLOEXEC);
	cr_assert_geq(fd0, 0, "openat: %s", strerror(errno));
	fd = dm_open(0);
	cr_assert_neq(fd, fd0);
	cr_assert_eq(close(fd), 0);
	cr_assert_eq(close(fd0), 0);
}

/* Devices 2 and 3 (device-coherent in the kernel) do not exist. */
Test(dmirror, open_coherent_enodev, .timeout = 60)
{
	close(dm_open(0));
	for (int n = 2; n <= 3; n++) {
		char path[32];
		int fd;

		snprintf(path, sizeof(path), HMM_DMIRROR_PATH "%d", n);
		errno = 0;
		fd = open(path, O_RDWR | O_CLOEXEC);
		cr_assert_eq(fd, -1, "open(%s) = %d, expected failure", path,
			     fd);
		cr_assert_eq(errno, ENODEV, "open(%s): errno %d (%s)", path,
			     errno, strerror(errno));
	}
}

/* Everything that is not a dmirror device goes to the kernel unchanged. */
Test(dmirror, passthrough, .timeout = 60)
{
	static const char text[] = "not a device\n";
	char path[] = "/tmp/hmm-dmirror-pt-XXXXXX", buf[64];
	struct hmm_dmirror_cmd cmd = { 0 };
	int fd;
	char *p;

	close(dm_open(0));

	fd = mkstemp(path);
	cr_assert_geq(fd, 0, "mkstemp: %s", strerror(errno));
	cr_assert_eq(write(fd, text, sizeof(text)), (ssize_t)sizeof(text));
	cr_assert_eq(close(fd), 0);

	fd = open(path, O_RDONLY);
	cr_assert_geq(fd, 0, "open(%s): %s", path, strerror(errno));
	cr_assert_eq(read(fd, buf, sizeof(buf)), (ssize_t)sizeof(text));
	cr_assert_str_eq(buf, text);
	/* A dmirror request on an ordinary file is the file's business. */
	errno = 0;
	cr_assert_eq(ioctl(fd, HMM_DMIRROR_READ, &cmd), -1);
	cr_assert_eq(errno, ENOTTY, "ioctl on a file: errno %d (%s)", errno,
		     strerror(errno));
	p = test_map(pg(), PROT_READ, MAP_SHARED, fd, 0);
	cr_assert_neq(p, MAP_FAILED, "mmap of a file: %s", strerror(errno));
	cr_assert_str_eq(p, text);
	cr_assert_eq(munmap(p, pg()), 0);
	cr_assert_eq(close(fd), 0);

	fd = openat(AT_FDCWD, path, O_RDONLY);
	cr_assert_geq(fd, 0, "openat(%s): %s", path, strerror(errno));
	cr_assert_eq(close(fd), 0);
	unlink(path);

	fd = open("/dev/null", O_RDONLY);
	cr_assert_geq(fd, 0, "open(/dev/null): %s", strerror(errno));
	cr_assert_eq(read(fd, buf, sizeof(buf)), 0);
	cr_assert_eq(close(fd), 0);

	/* The prefix without a device number is not a device. */
	errno = 0;
	cr_assert_eq(open(HMM_DMIRROR_PATH, O_RDWR), -1);
	cr_assert_eq(errno, ENOENT, "open(%s): errno %d (%s)", HMM_DMIRROR_PATH,
		     errno, strerror(errno));
}

Test(dmirror, unknown_ioctl, .timeout = 60)
{
	const unsigned long bad_h = _IOWR('H', 0x3f, struct hmm_dmirror_cmd);
	const unsigned long bad_q = _IOWR('Q', 0x00, struct hmm_dmirror_cmd);
	int fd = dm_open(0);
	void *p = map_anon(pg(), PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct hmm_dmirror_cmd cmd = {
		.addr = (uintptr_t)p, .ptr = (uintptr_t)p, .npages = 1,
	};

	errno = 0;
	cr_assert_eq(ioctl(fd, bad_h, &cmd), -1);
	cr_assert_eq(errno, ENOTTY, "errno %d (%s), expected ENOTTY", errno,
		     strerror(errno));
	errno = 0;
	cr_assert_eq(ioctl(fd, bad_q, &cmd), -1);
	cr_assert_eq(errno, ENOTTY, "errno %d (%s), expected ENOTTY", errno,
		     strerror(errno));
}

/*
 * Malformed ranges: every command checks addr alignment, npages > 0 and
 * that the range does not wrap, and a failed command copies back neither
 * cpages nor faults (dm_expect checks the sentinels) and touches neither
 * the range nor the buffer.
 */
Test(dmirror, bad_args, .timeout = 60)
{
	static const unsigned long reqs[] = {
		HMM_DMIRROR_READ, HMM_DMIRROR_WRITE,
		HMM_DMIRROR_MIGRATE_TO_DEV, HMM_DMIRROR_MIGRATE_TO_SYS,
		HMM_DMIRROR_SNAPSHOT, HMM_DMIRROR_EXCLUSIVE,
		HMM_DMIRROR_CHECK_EXCLUSIVE, HMM_DMIRROR_RELEASE,
		HMM_DMIRROR_READ_UNLOCKED,
	};
	const size_t size = 4 * pg();
	const uintptr_t top = UINTPTR_MAX & ~(uintptr_t)(pg() - 1);
	int fd = dm_open(0);
	char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *m = mirror_alloc(size, SEED_DEV);

	fill_words(p, size, SEED_CPU, 0);
	for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
		dm_expect(fd, reqs[i], p + 1, m, 1, -EINVAL);
		dm_expect(fd, reqs[i], p, m, 0, -EINVAL);
		dm_expect(fd, reqs[i], (void *)top, m, 2, -EINVAL);
		/* npages * page size itself overflows 64 bits: a check that
		 * multiplies first sees a range of one page here. */
		dm_expect(fd, reqs[i], p, m, UINT64_MAX / pg() + 2, -EINVAL);
	}
	dm_expect(fd, HMM_DMIRROR_FLAGS, p + 1, m, HMM_DMIRROR_FLAG_FAIL_ALLOC,
		  -EINVAL);
	assert_words(p, size, SEED_CPU, 0, "range after failed commands");
	assert_words(m, size, SEED_DEV, 0, "buffer after failed commands");
	/* Nothing moved: the pages are still ordinary writable memory. */
	snapshot_all(fd, p, size / pg(), HMM_DMIRROR_PROT_WRITE);
}

/* ---- device reads and writes of anonymous memory --------------------- */

/*
 * Page 0 never touched, page 1 the zero page (read by the CPU), the rest
 * data, all read-only: the device reads everything in one fault round.
 */
Test(dmirror, anon_read, .timeout = 60)
{
	const size_t size = NPAGES * pg(), first = 2 * pg() / 4;
	int fd = dm_open(0);
	char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *m = mirror_alloc(size, SEED_DEV);

	fill_words(p + 2 * pg(), size - 2 * pg(), SEED_CPU, first);
	cr_assert_eq(mprotect(p, size, PROT_READ), 0);
	cr_assert_eq(*(volatile uint32_t *)(p + pg()), 0);

	dm_ok(fd, HMM_DMIRROR_READ, p, m, NPAGES, NPAGES, 1);
	assert_zero(m, 2 * pg(), "mirror of the empty and zero pages");
	assert_words(m + 2 * pg(), size - 2 * pg(), SEED_CPU, first, "mirror");
}

/* READ_UNLOCKED is READ (libhmm's device faults never hold mmap_lock). */
Test(dmirror, anon_read_unlocked, .timeout = 60)
{
	const size_t size = NPAGES * pg();
	int fd = dm_open(0);
	char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *m = mirror_alloc(size, SEED_DEV);

	fill_words(p, size, SEED_CPU, 0);
	dm_ok(fd, HMM_DMIRROR_READ_UNLOCKED, p, m, NPAGES, NPAGES, 1);
	assert_words(m, size, SEED_CPU, 0, "mirror");
}

/* A PROT_NONE range cannot be read: -EFAULT, and nothing changes. */
Test(dmirror, anon_read_prot, .timeout = 60)
{
	const size_t size = NPAGES * pg();
	int fd = dm_open(0);
	char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *m = mirror_alloc(size, SEED_DEV);

	fill_words(p, size, SEED_CPU, 0);
	cr_assert_eq(mprotect(p, size, PROT_NONE), 0);
	dm_expect(fd, HMM_DMIRROR_READ, p, m, NPAGES, -EFAULT);
	assert_words(m, size, SEED_DEV, 0, "mirror after a failed READ");
	cr_assert_eq(mprotect(p, size, PROT_READ), 0);
	assert_words(p, size, SEED_CPU, 0, "buffer");
}

Test(dmirror, anon_write, .timeout = 60)
{
	const size_t size = NPAGES * pg();
	int fd = dm_open(0);
	char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *m = mirror_alloc(size, SEED_CPU);

	dm_ok(fd, HMM_DMIRROR_WRITE, p, m, NPAGES, NPAGES, 1);
	assert_words(p, size, SEED_CPU, 0, "buffer written by the device");
}

/*
 * A read-only mapping: the device may read (the zero page) but not write
 * (-EPERM, nothing written); after mprotect(RW) it may.
 */
Test(dmirror, anon_write_prot, .timeout = 60)
{
	const size_t size = NPAGES * pg();
	int fd = dm_open(0);
	char *p = map_anon(size, PROT_READ, MAP_PRIVATE);
	char *m = mirror_alloc(size, SEED_DEV);

	dm_ok(fd, HMM_DMIRROR_READ, p, m, 1, 1, 1);
	assert_zero(m, pg(), "mirror of the zero page");

	fill_words(m, size, SEED_CPU, 0);
	dm_expect(fd, HMM_DMIRROR_WRITE, p, m, NPAGES, -EPERM);
	assert_zero(p, size, "read-only buffer after a refused WRITE");

	cr_assert_eq(mprotect(p, size, PROT_READ | PROT_WRITE), 0);
	dm_ok(fd, HMM_DMIRROR_WRITE, p, m, NPAGES, NPAGES, 1);
	assert_words(p, size, SEED_CPU, 0, "buffer written by the device");
}

/* ---- fork: a child's device writes ----------------------------------- */

static const char *const child_write_steps[] = {
	"ok",
	"child does not see the parent's data",
	"child cannot open /dev/hmm_dmirror0",
	"child's WRITE failed",
	"child's WRITE: cpages != npages",
	"child's WRITE: faults != 1",
	"child does not see its device's write",
};

/*
 * In the child: the parent's data is there (migrated pages included), and
 * the child's own mirror writes SEED_DEV through its own descriptor.
 */
static int child_write(char *p, char *m, size_t size)
{
	struct hmm_dmirror_cmd cmd;
	size_t npages = size / pg();
	int fd;

	if (words_mismatch(p, size, SEED_CPU, 0) >= 0)
		return 1;
	fd = open("/dev/hmm_dmirror0", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return 2;
	fill_words(m, size, SEED_DEV, 0);
	if (dm_cmd(fd, HMM_DMIRROR_WRITE, p, m, npages, &cmd))
		return 3;
	if (cmd.cpages != npages)
		return 4;
	if (cmd.faults != 1)
		return 5;
	if (words_mismatch(p, size, SEED_DEV, 0) >= 0)
		return 6;
	close(fd);
	return 0;
}

/*
 * Parent fills SEED_CPU (optionally in a THP, optionally migrated to
 * device 0 first), forks, the child writes SEED_DEV with its own device.
 * A private mapping is COW: the parent keeps its data.  A shared one is
 * one set of pages: the parent sees the child's write.
 */
static void write_child(bool shared, bool migrate, bool thp)
{
	const size_t size = thp ? thp_size() : NPAGES * pg();
	const size_t npages = size / pg();
	char *p, *m;
	pid_t pid;
	int fd;

	fd = dm_open(0);
	if (thp)
		p = map_thp(PROT_READ | PROT_WRITE);
	else
		p = map_anon(size, PROT_READ | PROT_WRITE,
			     shared ? MAP_SHARED : MAP_PRIVATE);
	m = mirror_alloc(size, SEED_DEV);
	fill_words(p, size, SEED_CPU, 0);
	if (migrate) {
		dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, npages, npages,
		      DM_ANY);
		assert_words(m, size, SEED_CPU, 0, "mirror after migration");
	}

	pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0)
		_exit(child_write(p, m, size));
	wait_child(pid, child_write_steps,
		   sizeof(child_write_steps) / sizeof(child_write_steps[0]));

	assert_words(p, size, shared ? SEED_DEV : SEED_CPU, 0,
		     "parent after the child's write");
	/* The parent's device still sees the parent's view. */
	dm_ok(fd, HMM_DMIRROR_READ, p, m, npages, npages, DM_ANY);
	assert_words(m, size, shared ? SEED_DEV : SEED_CPU, 0,
		     "parent's mirror");
}

Test(dmirror, anon_write_child, .timeout = 60)
{
	write_child(false, false, false);
}

Test(dmirror, anon_write_child_migrated, .timeout = 60)
{
	write_child(false, true, false);
}

Test(dmirror, anon_write_child_thp, .timeout = 60)
{
	write_child(false, false, true);
}

Test(dmirror, anon_write_child_thp_migrated, .timeout = 60)
{
	write_child(false, true, true);
}

Test(dmirror, anon_write_child_shared, .timeout = 60)
{
	write_child(true, false, false);
}

/* Shared anonymous memory migrates under libhmm (not in the kernel). */
Test(dmirror, anon_write_child_shared_migrated, .timeout = 60)
{
	write_child(true, true, false);
}

/* ---- huge pages ------------------------------------------------------ */

/*
 * Where the kernel really mapped @p with a THP (smaps says so), SNAPSHOT
 * must report it as a PMD mapping: WRITE|PMD on every page.  A machine
 * that declined the huge page is not a failure of libhmm's.
 */
static void snapshot_thp_if_huge(int fd, void *p)
{
	const size_t size = thp_size();

	if (smaps_anon_huge_kb(p) * 1024 < size) {
		cr_log_warn("no THP behind %p: PMD snapshot not checked", p);
		return;
	}
	snapshot_all(fd, p, size / pg(),
		     HMM_DMIRROR_PROT_WRITE | HMM_DMIRROR_PROT_PMD);
}

Test(dmirror, anon_write_huge, .timeout = 60)
{
	int fd = dm_open(0);
	char *p = map_thp(PROT_READ | PROT_WRITE);
	const size_t size = thp_size(), npages = size / pg();
	char *m = mirror_alloc(size, SEED_CPU);

	dm_ok(fd, HMM_DMIRROR_WRITE, p, m, npages, npages, 1);
	assert_words(p, size, SEED_CPU, 0, "huge page written by the device");
	snapshot_thp_if_huge(fd, p);
}

Test(dmirror, anon_write_hugetlbfs, .timeout = 60)
{
	int fd = dm_open(0);
	size_t size;
	char *p = map_hugetlb(&size);
	char *m = mirror_alloc(size, SEED_CPU);

	dm_ok(fd, HMM_DMIRROR_WRITE, p, m, size / pg(), size / pg(), 1);
	assert_words(p, size, SEED_CPU, 0, "hugetlb page");
	cr_assert_eq(munmap(p, size), 0);
}

/*
 * SNAPSHOT of a hugetlb page reports the level of its mapping on every
 * base page, and follows mprotect.
 */
Test(dmirror, compound, .timeout = 60)
{
	int fd = dm_open(0);
	size_t size;
	char *p = map_hugetlb(&size);
	size_t npages = size / pg();
	uint8_t *s = malloc(npages), level;

	cr_assert_not_null(s);
	fill_words(p, size, SEED_CPU, 0);
	dm_ok(fd, HMM_DMIRROR_SNAPSHOT, p, s, npages, npages, DM_ANY);
	level = s[0] & (HMM_DMIRROR_PROT_PMD | HMM_DMIRROR_PROT_PUD);
	cr_assert(level == HMM_DMIRROR_PROT_PMD ||
			  level == HMM_DMIRROR_PROT_PUD,
		  "hugetlb page reported as %#x", s[0]);
	snapshot_all(fd, p, npages, HMM_DMIRROR_PROT_WRITE | level);
	cr_assert_eq(mprotect(p, size, PROT_READ), 0);
	snapshot_all(fd, p, npages, HMM_DMIRROR_PROT_READ | level);
	free(s);
	cr_assert_eq(munmap(p, size), 0);
}

/* ---- file-backed memory ---------------------------------------------- */

Test(dmirror, file_read, .timeout = 60)
{
	const size_t size = NPAGES * pg();
	int fd = dm_open(0), file = tmpfile_fd(size);
	char *m = mirror_alloc(size, SEED_CPU), *p;

	cr_assert_eq(pwrite(file, m, size, 0), (ssize_t)size);
	fill_words(m, size, SEED_DEV, 0);
	p = test_map(size, PROT_READ, MAP_SHARED, file, 0);
	cr_assert_neq(p, MAP_FAILED, "mmap(file): %s", strerror(errno));

	dm_ok(fd, HMM_DMIRROR_READ, p, m, NPAGES, NPAGES, 1);
	assert_words(m, size, SEED_CPU, 0, "mirror of the file");
	cr_assert_eq(munmap(p, size), 0);
	close(file);
}

Test(dmirror, file_write, .timeout = 60)
{
	const size_t size = NPAGES * pg();
	int fd = dm_open(0), file = tmpfile_fd(size);
	char *m = mirror_alloc(size, SEED_CPU), *p;

	p = test_map(size, PROT_READ | PROT_WRITE, MAP_SHARED, file, 0);
	cr_assert_neq(p, MAP_FAILED, "mmap(file): %s", strerror(errno));

	dm_ok(fd, HMM_DMIRROR_WRITE, p, m, NPAGES, NPAGES, 1);
	assert_words(p, size, SEED_CPU, 0, "file mapping");
	fill_words(m, size, SEED_DEV, 0);
	cr_assert_eq(pread(file, m, size, 0), (ssize_t)size);
	assert_words(m, size, SEED_CPU, 0, "file contents (pread)");
	cr_assert_eq(munmap(p, size), 0);
	close(file);
}

/*
 * libhmm limit: a MAP_PRIVATE file mapping cannot migrate yet, not even
 * its COW'ed (anonymous) pages, so MIGRATE_TO_DEV gives -ENOENT; the data
 * must survive the attempt.  The kernel migrates these pages and returns
 * 0 with cpages == npages (hmm-tests.c migrate_file_private); bringing
 * libhmm there is issue 5's work.
 */
Test(dmirror, migrate_file_private, .timeout = 60)
{
	const size_t size = NPAGES * pg();
	int fd = dm_open(0), file = tmpfile_fd(size);
	char *m = mirror_alloc(size, SEED_DEV), *p;

	p = test_map(size, PROT_READ | PROT_WRITE, MAP_PRIVATE, file, 0);
	cr_assert_neq(p, MAP_FAILED, "mmap(file): %s", strerror(errno));
	fill_words(p, size, SEED_CPU, 0);

	dm_expect(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, NPAGES, -ENOENT);
	assert_words(p, size, SEED_CPU, 0, "private mapping");
	/* The writes were private: the file itself still holds zeros. */
	cr_assert_eq(pread(file, m, size, 0), (ssize_t)size);
	assert_zero(m, size, "file under a private mapping");
	cr_assert_eq(munmap(p, size), 0);
	close(file);
}

/* ---- migration ------------------------------------------------------- */

Test(dmirror, migrate, .timeout = 60)
{
	const size_t size = NPAGES * pg();
	int fd = dm_open(0);
	char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *m = mirror_alloc(size, SEED_DEV);

	fill_words(p, size, SEED_CPU, 0);
	dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, NPAGES, NPAGES, DM_ANY);
	assert_words(m, size, SEED_CPU, 0, "mirror after migration");
	snapshot_all(fd, p, NPAGES, DEV_LOCAL_RW);
	assert_words(p, size, SEED_CPU, 0, "buffer faulted back");
}

/* Migrate, the CPU faults half back, migrate again: all of it moves. */
Test(dmirror, migrate_fault, .timeout = 60)
{
	const size_t size = NPAGES * pg();
	int fd = dm_open(0);
	char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *m = mirror_alloc(size, SEED_DEV);

	fill_words(p, size, SEED_CPU, 0);
	dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, NPAGES, NPAGES, DM_ANY);
	assert_words(m, size, SEED_CPU, 0, "mirror after migration");
	assert_words(p, size / 2, SEED_CPU, 0, "first half faulted back");

	fill_words(m, size, SEED_DEV, 0);
	dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, NPAGES, NPAGES, DM_ANY);
	assert_words(m, size, SEED_CPU, 0, "mirror after the second migration");
	snapshot_all(fd, p, NPAGES, DEV_LOCAL_RW);
	assert_words(p, size, SEED_CPU, 0, "buffer faulted back");
}

/*
 * RELEASE takes the device's memory away: everything comes home with its
 * data, and the device can be used again afterwards.
 */
Test(dmirror, migrate_release, .timeout = 60)
{
	const size_t size = NPAGES * pg();
	int fd = dm_open(0);
	char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *m = mirror_alloc(size, SEED_DEV);
	uint8_t *s = malloc(NPAGES);

	cr_assert_not_null(s);
	fill_words(p, size, SEED_CPU, 0);
	dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, NPAGES, NPAGES, DM_ANY);
	assert_words(m, size, SEED_CPU, 0, "mirror after migration");

	dm_ok(fd, HMM_DMIRROR_RELEASE, p, m, NPAGES, DM_ANY, DM_ANY);
	dm_ok(fd, HMM_DMIRROR_SNAPSHOT, p, s, NPAGES, NPAGES, DM_ANY);
	for (size_t i = 0; i < NPAGES; i++)
		cr_assert_eq(s[i] & 0xF0, 0,
			     "page %zu still on a device after RELEASE: %#x",
			     i, s[i]);
	assert_words(p, size / 2, SEED_CPU, 0, "first half after RELEASE");
	assert_words(p, size, SEED_CPU, 0, "buffer after RELEASE");

	dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, NPAGES, NPAGES, DM_ANY);
	assert_words(m, size, SEED_CPU, 0, "mirror after migrating again");
	assert_words(p, size, SEED_CPU, 0, "buffer faulted back");
	free(s);
}

/*
 * Shared anonymous memory (shmem).  The kernel cannot migrate it and gives
 * -ENOENT; libhmm moves it like private memory, which is what this checks.
 */
Test(dmirror, migrate_shared, .timeout = 60)
{
	const size_t size = NPAGES * pg();
	int fd = dm_open(0);
	char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_SHARED);
	char *m = mirror_alloc(size, SEED_DEV);

	fill_words(p, size, SEED_CPU, 0);
	dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, NPAGES, NPAGES, DM_ANY);
	assert_words(m, size, SEED_CPU, 0, "mirror after migration");
	snapshot_all(fd, p, NPAGES, DEV_LOCAL_RW);
	assert_words(p, size, SEED_CPU, 0, "shared buffer faulted back");
}

/*
 * Six pages: PROT_NONE and holes make a migration -EINVAL; read-only zero,
 * read-only data and writable data migrate to device 1; a page on device
 * 1 cannot be taken by device 0 (-ENOENT).
 */
Test(dmirror, migrate_mixed, .timeout = 60)
{
	const size_t size = 6 * pg();
	int fd0 = dm_open(0), fd1 = dm_open(1);
	char *p = map_anon(size, PROT_NONE, MAP_PRIVATE);
	char *m = mirror_alloc(size, SEED_DEV);

	dm_expect(fd1, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, 6, -EINVAL);

	/* Page 1 becomes a hole; pages 2..5 get their kinds. */
	cr_assert_eq(munmap(p + pg(), pg()), 0);
	cr_assert_eq(mprotect(p + 2 * pg(), 4 * pg(), PROT_READ | PROT_WRITE),
		     0);
	fill_words(p + 3 * pg(), 3 * pg(), SEED_CPU, 3 * pg() / 4);
	cr_assert_eq(mprotect(p + 2 * pg(), 2 * pg(), PROT_READ), 0);
	cr_assert_eq(*(volatile uint32_t *)(p + 2 * pg()), 0);
	if (is_hole(p + pg()))
		dm_expect(fd1, HMM_DMIRROR_MIGRATE_TO_DEV, p + pg(), m, 3,
			  -EINVAL);
	else
		cr_log_warn("page 1 is no longer a hole: not migrated");

	dm_ok(fd1, HMM_DMIRROR_MIGRATE_TO_DEV, p + 2 * pg(), m, 4, 4, DM_ANY);
	assert_zero(m, pg(), "mirror of the zero page");
	assert_words(m + pg(), 3 * pg(), SEED_CPU, 3 * pg() / 4,
		     "mirror of data");

	dm_expect(fd0, HMM_DMIRROR_MIGRATE_TO_DEV, p + 5 * pg(), m, 1, -ENOENT);

	assert_zero(p + 2 * pg(), pg(), "zero page after migration");
	assert_words(p + 3 * pg(), 3 * pg(), SEED_CPU, 3 * pg() / 4,
		     "data after migration");
}

/* Ten rounds: migrate, read through the mirror, bring back, CPU reads. */
Test(dmirror, migrate_multiple, .timeout = 60)
{
	const size_t size = NPAGES * pg();
	int fd = dm_open(0);
	char *m = mirror_alloc(size, SEED_DEV);

	for (uint32_t c = 0; c < NTIMES; c++) {
		char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);

		fill_words(p, size, SEED_CPU + c, 0);
		dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, NPAGES, NPAGES,
		      DM_ANY);
		assert_words(m, size, SEED_CPU + c, 0, "mirror");
		dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_SYS, p, m, NPAGES, NPAGES,
		      DM_ANY);
		snapshot_all(fd, p, NPAGES, HMM_DMIRROR_PROT_WRITE);
		assert_words(p, size, SEED_CPU + c, 0, "buffer back home");
		cr_assert_eq(munmap(p, size), 0);
	}
}

Test(dmirror, anon_read_multiple, .timeout = 60)
{
	const size_t size = NPAGES * pg();
	int fd = dm_open(0);
	char *m = mirror_alloc(size, SEED_DEV);

	for (uint32_t c = 0; c < NTIMES; c++) {
		char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);

		fill_words(p, size, SEED_CPU + c, 0);
		dm_ok(fd, HMM_DMIRROR_READ, p, m, NPAGES, NPAGES, 1);
		assert_words(m, size, SEED_CPU + c, 0, "mirror");
		cr_assert_eq(munmap(p, size), 0);
	}
}

/* ---- a READ racing munmap -------------------------------------------- */

struct unmapper {
	char *addr;
	size_t len;
	unsigned int delay_us;
};

static void *unmap_later(void *arg)
{
	struct unmapper *u = arg;
	struct timespec ts = { 0, (long)u->delay_us * 1000 };

	nanosleep(&ts, NULL);
	munmap(u->addr, u->len);
	return NULL;
}

/*
 * Ten rounds of a device READ while another thread unmaps the second half
 * of the range after a random short delay.  The READ either finishes
 * first (all data, one fault round) or fails with -EFAULT, reporting
 * nothing; it never returns stale or partial data as a success.
 */
Test(dmirror, anon_teardown, .timeout = 60)
{
	const size_t size = NPAGES * pg();
	int fd = dm_open(0);
	char *m = mirror_alloc(size, SEED_DEV);
	unsigned int seed = (unsigned int)getpid();
	int ok = 0;

	for (uint32_t c = 0; c < NTIMES; c++) {
		char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
		struct unmapper u = { p + size / 2, size / 2,
				      (unsigned int)rand_r(&seed) % 32 };
		struct hmm_dmirror_cmd cmd;
		pthread_t th;
		int r;

		fill_words(p, size, SEED_CPU + c, 0);
		cr_assert_eq(pthread_create(&th, NULL, unmap_later, &u), 0);
		r = dm_cmd(fd, HMM_DMIRROR_READ, p, m, NPAGES, &cmd);
		pthread_join(th, NULL);
		if (r == 0) {
			ok++;
			cr_assert_eq(cmd.cpages, NPAGES,
				     "round %u: cpages %llu", c,
				     (unsigned long long)cmd.cpages);
			cr_assert_eq(cmd.faults, 1, "round %u: faults %llu",
				     c, (unsigned long long)cmd.faults);
			assert_words(m, size, SEED_CPU + c, 0, "mirror");
		} else {
			cr_assert_eq(r, -EFAULT, "round %u: READ = %d (%s)", c,
				     r, strerror(-r));
			cr_assert(cmd.cpages == DM_SENTINEL &&
					  cmd.faults == DM_SENTINEL,
				  "round %u: a failed READ wrote back", c);
		}
		assert_words(p, size / 2, SEED_CPU + c, 0, "first half");
		cr_assert_eq(munmap(p, size), 0);
	}
	cr_log_info("anon_teardown: %d of %d READs finished first", ok, NTIMES);
}

/* ---- mmap of the device file ----------------------------------------- */

/*
 * The kernel's "mixedmap": the device file mapped read-only and private
 * gives zeroed, device-provided pages; SNAPSHOT reports them readable.
 * (Snapshot first: it must not depend on the CPU having touched them.)
 */
Test(dmirror, mixedmap, .timeout = 60)
{
	int fd = dm_open(0);
	uint8_t s = 0xEE;
	char *p;

	p = test_map(pg(), PROT_READ, MAP_PRIVATE, fd, 0);
	cr_assert_neq(p, MAP_FAILED, "mmap(dmirror fd): %s", strerror(errno));
	dm_ok(fd, HMM_DMIRROR_SNAPSHOT, p, &s, 1, 1, DM_ANY);
	cr_assert_eq(s, HMM_DMIRROR_PROT_READ, "SNAPSHOT = %#x", s);
	assert_zero(p, pg(), "mapping of the device file");
	cr_assert_eq(munmap(p, pg()), 0);
}

/*
 * Mapped private and writable (what the kernel selftest does): the pages
 * are the device's until the first CPU write copies one, so SNAPSHOT says
 * READ; after a write, that page is the process's own: WRITE.
 */
Test(dmirror, mixedmap_private_writable, .timeout = 60)
{
	int fd = dm_open(0);
	uint8_t s[2] = { 0xEE, 0xEE };
	char *p;

	p = test_map(2 * pg(), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	cr_assert_neq(p, MAP_FAILED, "mmap(dmirror fd): %s", strerror(errno));
	dm_ok(fd, HMM_DMIRROR_SNAPSHOT, p, s, 2, 2, DM_ANY);
	cr_assert_eq(s[0], HMM_DMIRROR_PROT_READ, "SNAPSHOT[0] = %#x", s[0]);
	cr_assert_eq(s[1], HMM_DMIRROR_PROT_READ, "SNAPSHOT[1] = %#x", s[1]);
	p[0] = 1; /* copy-on-write of page 0 */
	dm_ok(fd, HMM_DMIRROR_SNAPSHOT, p, s, 2, 2, DM_ANY);
	cr_assert_eq(s[0], HMM_DMIRROR_PROT_WRITE, "after a write: %#x", s[0]);
	cr_assert_eq(s[1], HMM_DMIRROR_PROT_READ, "untouched: %#x", s[1]);
	cr_assert_eq(munmap(p, 2 * pg()), 0);
}

/* The device file mapped shared and writable: zeroed memory that the CPU
 * and the device both reach. */
Test(dmirror, mmap_device_rw, .timeout = 60)
{
	const size_t size = 4 * pg();
	int fd = dm_open(0);
	char *m = mirror_alloc(size, SEED_DEV), *p;

	p = test_map(size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	cr_assert_neq(p, MAP_FAILED, "mmap(dmirror fd): %s", strerror(errno));
	assert_zero(p, size, "mapping of the device file");
	fill_words(p, size, SEED_CPU, 0);
	dm_ok(fd, HMM_DMIRROR_READ, p, m, 4, 4, DM_ANY);
	assert_words(m, size, SEED_CPU, 0, "mirror of the device mapping");
	snapshot_all(fd, p, 4, HMM_DMIRROR_PROT_WRITE);
	cr_assert_eq(munmap(p, size), 0);
}

/* ---- snapshot -------------------------------------------------------- */

/*
 * The seven kinds of page SNAPSHOT tells apart, seen from device 0.
 * A page on device 1 is device-private memory of another owner: the
 * kernel's hmm_range_fault reports it as not present (NONE) to device 0,
 * and so does libhmm.
 */
Test(dmirror, snapshot, .timeout = 60)
{
	static const uint8_t want[7] = {
		HMM_DMIRROR_PROT_ERROR,			/* PROT_NONE */
		HMM_DMIRROR_PROT_ERROR,			/* hole */
		HMM_DMIRROR_PROT_ZERO | HMM_DMIRROR_PROT_READ,
		HMM_DMIRROR_PROT_READ,			/* read-only data */
		HMM_DMIRROR_PROT_WRITE,			/* written */
		HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | HMM_DMIRROR_PROT_WRITE,
		HMM_DMIRROR_PROT_NONE,			/* on device 1 */
	};
	const size_t size = 7 * pg();
	int fd0 = dm_open(0), fd1 = dm_open(1);
	char *p = map_anon(size, PROT_NONE, MAP_PRIVATE);
	char *m = mirror_alloc(size, SEED_DEV);
	uint8_t s[7];

	cr_assert_eq(mprotect(p + 2 * pg(), pg(), PROT_READ), 0);
	cr_assert_eq(*(volatile uint32_t *)(p + 2 * pg()), 0);
	cr_assert_eq(mprotect(p + 3 * pg(), 4 * pg(), PROT_READ | PROT_WRITE),
		     0);
	fill_words(p + 3 * pg(), 2 * pg(), SEED_CPU, 0);
	cr_assert_eq(mprotect(p + 3 * pg(), pg(), PROT_READ), 0);
	dm_ok(fd0, HMM_DMIRROR_MIGRATE_TO_DEV, p + 5 * pg(), m, 1, 1, DM_ANY);
	dm_ok(fd1, HMM_DMIRROR_MIGRATE_TO_DEV, p + 6 * pg(), m, 1, 1, DM_ANY);
	/* The hole last, so that nothing else has time to land in it. */
	cr_assert_eq(munmap(p + pg(), pg()), 0);

	memset(s, 0xEE, sizeof(s));
	dm_ok(fd0, HMM_DMIRROR_SNAPSHOT, p, s, 7, 7, DM_ANY);
	for (int i = 0; i < 7; i++) {
		if (i == 1 && !is_hole(p + pg())) {
			cr_log_warn("page 1 is no longer a hole: not checked");
			continue;
		}
		cr_expect_eq(s[i], want[i], "page %d: %#x, expected %#x", i,
			     s[i], want[i]);
	}
}

/* Both devices read the same read-only pages; then device 1 takes them
 * and device 0 still reads them (faulting them back). */
Test(dmirror, double_map, .timeout = 60)
{
	const size_t size = 6 * pg();
	int fd0 = dm_open(0), fd1 = dm_open(1);
	char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *m = mirror_alloc(size, SEED_DEV);

	fill_words(p, size, SEED_CPU, 0);
	cr_assert_eq(mprotect(p, size, PROT_READ), 0);

	dm_ok(fd0, HMM_DMIRROR_READ, p, m, 6, 6, 1);
	assert_words(m, size, SEED_CPU, 0, "mirror of device 0");
	fill_words(m, size, SEED_DEV, 0);
	dm_ok(fd1, HMM_DMIRROR_READ, p, m, 6, 6, 1);
	assert_words(m, size, SEED_CPU, 0, "mirror of device 1");

	fill_words(m, size, SEED_DEV, 0);
	dm_ok(fd1, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, 6, 6, DM_ANY);
	assert_words(m, size, SEED_CPU, 0, "mirror of device 1");

	fill_words(m, size, SEED_DEV, 0);
	dm_ok(fd0, HMM_DMIRROR_READ, p, m, 6, 6, 1);
	assert_words(m, size, SEED_CPU, 0, "device 0 reading device 1's pages");
	assert_words(p, size, SEED_CPU, 0, "buffer");
}

/* ---- exclusive access ------------------------------------------------ */

Test(dmirror, exclusive, .timeout = 60)
{
	const size_t size = NPAGES * pg();
	int fd = dm_open(0);
	char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *m = mirror_alloc(size, SEED_DEV);
	uint32_t *w = (uint32_t *)p;

	fill_words(p, size, SEED_CPU, 0);
	dm_ok(fd, HMM_DMIRROR_EXCLUSIVE, p, m, NPAGES, NPAGES, DM_ANY);
	assert_words(m, size, SEED_CPU, 0, "mirror of exclusive pages");
	dm_expect(fd, HMM_DMIRROR_CHECK_EXCLUSIVE, p, m, NPAGES, -EPERM);

	/* Every CPU access revokes the device's exclusivity. */
	for (size_t i = 0; i < size / 4; i++)
		w[i]++;
	assert_words(p, size, SEED_CPU + 1, 0, "buffer after CPU increments");
	dm_ok(fd, HMM_DMIRROR_CHECK_EXCLUSIVE, p, m, NPAGES, DM_ANY, DM_ANY);
}

Test(dmirror, exclusive_mprotect, .timeout = 60)
{
	const size_t size = NPAGES * pg();
	int fd = dm_open(0);
	char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *m = mirror_alloc(size, SEED_DEV);

	fill_words(p, size, SEED_CPU, 0);
	dm_ok(fd, HMM_DMIRROR_EXCLUSIVE, p, m, NPAGES, NPAGES, DM_ANY);
	assert_words(m, size, SEED_CPU, 0, "mirror of exclusive pages");

	cr_assert_eq(mprotect(p, size, PROT_READ), 0);
	dm_expect(fd, HMM_DMIRROR_WRITE, p, m, NPAGES, -EPERM);
	assert_words(p, size, SEED_CPU, 0, "buffer after a refused WRITE");
}

/* Exclusive access needs memory mapped writable. */
Test(dmirror, exclusive_readonly, .timeout = 60)
{
	const size_t size = 16 * pg();
	int fd = dm_open(0);
	char *p = map_anon(size, PROT_READ, MAP_PRIVATE);
	char *m = mirror_alloc(size, SEED_DEV);

	dm_expect(fd, HMM_DMIRROR_EXCLUSIVE, p, m, 16, -EFAULT);
	assert_words(m, size, SEED_DEV, 0, "buffer after a refused EXCLUSIVE");
}

static const char *const child_increment_steps[] = {
	"ok",
	"child's increments do not read back",
};

static int increment_and_check(char *p, size_t size)
{
	uint32_t *w = (uint32_t *)p;

	for (size_t i = 0; i < size / 4; i++)
		w[i]++;
	return words_mismatch(p, size, SEED_CPU + 1, 0) >= 0;
}

/* Exclusive pages across fork: parent and child each get their own copy. */
Test(dmirror, exclusive_cow, .timeout = 60)
{
	const size_t size = NPAGES * pg();
	int fd = dm_open(0);
	char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *m = mirror_alloc(size, SEED_DEV);
	pid_t pid;

	fill_words(p, size, SEED_CPU, 0);
	dm_ok(fd, HMM_DMIRROR_EXCLUSIVE, p, m, NPAGES, NPAGES, DM_ANY);
	assert_words(m, size, SEED_CPU, 0, "mirror of exclusive pages");

	pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0)
		_exit(increment_and_check(p, size));
	cr_assert_eq(increment_and_check(p, size), 0,
		     "parent's increments do not read back");
	wait_child(pid, child_increment_steps,
		   sizeof(child_increment_steps) /
			   sizeof(child_increment_steps[0]));
	assert_words(p, size, SEED_CPU + 1, 0, "parent after the child's");
}

/* ---- COW of device-resident pages ------------------------------------ */

/*
 * Pages on the device when the process forks; the parent then writes
 * them all (COW) while the child lives.  Afterwards they are ordinary
 * writable pages of the parent holding the parent's data.
 */
Test(dmirror, cow_in_device, .timeout = 60)
{
	const size_t size = 4 * pg();
	int fd = dm_open(0), status;
	char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *m = mirror_alloc(size, SEED_DEV);
	pid_t pid;

	fill_words(p, size, SEED_CPU, 0);
	dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, 4, 4, DM_ANY);

	pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		for (;;)
			pause();
	}
	fill_words(p, size, SEED_DEV, 0);
	kill(pid, SIGKILL);
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
		  "child status %#x", status);

	snapshot_all(fd, p, 4, HMM_DMIRROR_PROT_WRITE);
	assert_words(p, size, SEED_DEV, 0, "parent's writes");
}

/* ---- THP migration --------------------------------------------------- */

/* An untouched read-only THP region migrates as zeros. */
Test(dmirror, migrate_anon_huge_empty, .timeout = 60)
{
	int fd = dm_open(0);
	char *p = map_thp(PROT_READ);
	const size_t size = thp_size(), npages = size / pg();
	char *m = mirror_alloc(size, SEED_DEV);

	dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, npages, npages, DM_ANY);
	assert_zero(m, size, "mirror of an empty huge page");
	assert_zero(p, size, "empty huge page faulted back");
}

/* The huge zero page (a CPU read of a read-only THP region) migrates. */
Test(dmirror, migrate_anon_huge_zero, .timeout = 60)
{
	int fd = dm_open(0);
	char *p = map_thp(PROT_READ);
	const size_t size = thp_size(), npages = size / pg();
	char *m = mirror_alloc(size, SEED_DEV);

	cr_assert_eq(*(volatile uint32_t *)p, 0);
	dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, npages, npages, DM_ANY);
	assert_zero(m, size, "mirror of the huge zero page");
	assert_zero(p, size, "huge zero page faulted back");
}

/*
 * A filled THP migrates; MADV_FREE of device-resident memory succeeds and
 * leaves every page either as it was or zero (the kernel may drop freed
 * pages), never anything else.
 */
Test(dmirror, migrate_anon_huge_free, .timeout = 60)
{
	int fd = dm_open(0);
	char *p = map_thp(PROT_READ | PROT_WRITE);
	const size_t size = thp_size(), npages = size / pg();
	char *m = mirror_alloc(size, SEED_DEV);

	fill_words(p, size, SEED_CPU, 0);
	dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, npages, npages, DM_ANY);
	assert_words(m, size, SEED_CPU, 0, "mirror of a huge page");
	cr_assert_eq(madvise(p, size, MADV_FREE), 0, "MADV_FREE: %s",
		     strerror(errno));
	for (size_t i = 0; i < npages; i++) {
		char *q = p + i * pg();

		cr_assert(zero_mismatch(q, pg()) < 0 ||
				  words_mismatch(q, pg(), SEED_CPU,
						 i * pg() / 4) < 0,
			  "page %zu after MADV_FREE: neither zero nor data", i);
	}
}

/*
 * A collapsed THP: in system memory SNAPSHOT reports it as a PMD mapping;
 * migrated, each page is reported on the device.  libhmm limit: no PMD
 * bit for device-resident pages (the kernel reports
 * DEV_PRIVATE_LOCAL|WRITE|PMD); the kernel's pagemap check (swap entries,
 * not present) is left out because libhmm's device pages do not show as
 * swap entries.
 */
Test(dmirror, migrate_anon_huge_fault, .timeout = 60)
{
	int fd = dm_open(0);
	char *p = map_thp(PROT_READ | PROT_WRITE);
	const size_t size = thp_size(), npages = size / pg();
	char *m = mirror_alloc(size, SEED_DEV);

	fill_words(p, size, SEED_CPU, 0);
	if (madvise(p, size, MADV_COLLAPSE))
		cr_log_warn("MADV_COLLAPSE: %s", strerror(errno));
	snapshot_thp_if_huge(fd, p);

	dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, npages, npages, DM_ANY);
	assert_words(m, size, SEED_CPU, 0, "mirror of a huge page");
	snapshot_all(fd, p, npages, DEV_LOCAL_RW);
	assert_words(p, size, SEED_CPU, 0, "huge page faulted back");
}

/* ---- munmap and mremap of migrated memory ---------------------------- */

/*
 * Migrate a PMD-sized region, unmap half of it at @offset, then the CPU
 * reads what is left.
 */
static void partial_unmap(bool thp)
{
	const size_t size = thp_size(), npages = size / pg();
	const size_t offsets[] = { 0, size / 4, size / 2 };
	int fd = dm_open(0);
	char *m = mirror_alloc(size, SEED_DEV);

	if (thp)
		need_thp();
	for (size_t k = 0; k < 3; k++) {
		const size_t off = offsets[k], hole = size / 2;
		char *p = map_aligned(size, PROT_READ | PROT_WRITE, thp);

		fill_words(p, size, SEED_CPU, 0);
		fill_words(m, size, SEED_DEV, 0);
		dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, npages, npages,
		      DM_ANY);
		assert_words(m, size, SEED_CPU, 0, "mirror after migration");
		cr_assert_eq(munmap(p + off, hole), 0, "munmap: %s",
			     strerror(errno));
		assert_words(p, off, SEED_CPU, 0, "pages before the hole");
		assert_words(p + off + hole, size - off - hole, SEED_CPU,
			     (off + hole) / 4, "pages after the hole");
		if (off)
			cr_assert_eq(munmap(p, off), 0);
		if (off + hole < size)
			cr_assert_eq(munmap(p + off + hole,
					    size - off - hole), 0);
	}
}

Test(dmirror, migrate_partial_unmap_fault, .timeout = 60)
{
	partial_unmap(false);
}

Test(dmirror, migrate_partial_unmap_fault_thp, .timeout = 60)
{
	partial_unmap(true);
}

/*
 * Move a migrated (@before false) or about-to-be-migrated (@before true)
 * PMD-sized region with mremap(MAYMOVE|FIXED) to @offset past its end,
 * optionally keeping the old range mapped (MREMAP_DONTUNMAP); the CPU
 * then reads the data at the new place, and zeros at the old one.
 */
static void remap_case(int fd, char *m, bool thp, bool before, bool dontunmap,
		       size_t offset)
{
	const size_t size = thp_size(), npages = size / pg();
	const int flags = MREMAP_MAYMOVE | MREMAP_FIXED |
			  (dontunmap ? MREMAP_DONTUNMAP : 0);
	char *area, *old, *dst, *q;

	/* Reserve room for both places, the old one PMD-aligned. */
	area = map_anon(4 * size, PROT_NONE, MAP_PRIVATE | MAP_NORESERVE);
	old = (char *)(((uintptr_t)area + size - 1) & ~(uintptr_t)(size - 1));
	dst = old + size + offset;
	q = mmap(old, size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	cr_assert_eq(q, old, "mmap(MAP_FIXED): %s", strerror(errno));
	cr_assert_eq(madvise(old, size,
			     thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE), 0);
	fill_words(old, size, SEED_CPU, 0);

	if (!before) {
		fill_words(m, size, SEED_DEV, 0);
		dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, old, m, npages, npages,
		      DM_ANY);
		assert_words(m, size, SEED_CPU, 0, "mirror before mremap");
	}
	q = mremap(old, size, size, flags, dst);
	cr_assert_eq(q, dst, "mremap(%s%s, offset %zu): %s",
		     before ? "before" : "after",
		     dontunmap ? ", DONTUNMAP" : "", offset, strerror(errno));
	if (before) {
		fill_words(m, size, SEED_DEV, 0);
		dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, dst, m, npages, npages,
		      DM_ANY);
		assert_words(m, size, SEED_CPU, 0, "mirror after mremap");
	}
	cr_log_info("mremap %s migration%s%s, offset %zu",
		    before ? "before" : "after", dontunmap ? ", DONTUNMAP" : "",
		    thp ? ", THP" : "", offset);
	assert_words(dst, size, SEED_CPU, 0, "moved region faulted back");
	if (dontunmap)
		assert_zero(old, size, "old range left by MREMAP_DONTUNMAP");
	/* The whole reservation goes in one call, holes and all, as
	 * programs do: libhmm must keep its own mappings out of the way
	 * (one landed in the hole that mremap left, once). */
	cr_assert_eq(munmap(area, 4 * size), 0);
}

static void remap(bool thp, bool before)
{
	const size_t size = thp_size();
	const size_t offsets[] = { 0, size / 4, size / 2 };
	int fd = dm_open(0);
	char *m = mirror_alloc(size, SEED_DEV);

	if (thp)
		need_thp();
	for (int dontunmap = 0; dontunmap <= 1; dontunmap++)
		for (size_t k = 0; k < 3; k++)
			remap_case(fd, m, thp, before, dontunmap, offsets[k]);
}

Test(dmirror, migrate_remap_fault, .timeout = 60)
{
	remap(false, false);
}

Test(dmirror, migrate_remap_fault_before, .timeout = 60)
{
	remap(false, true);
}

Test(dmirror, migrate_remap_fault_thp, .timeout = 60)
{
	remap(true, false);
}

Test(dmirror, migrate_remap_fault_thp_before, .timeout = 60)
{
	remap(true, true);
}

/* ---- allocation failures --------------------------------------------- */

static void fail_flag(int fd, void *p)
{
	dm_ok(fd, HMM_DMIRROR_FLAGS, p, NULL, HMM_DMIRROR_FLAG_FAIL_ALLOC,
	      DM_ANY, DM_ANY);
}

/*
 * FAIL_ALLOC makes the next allocation of a migration fail once, to the
 * device and back: the migration falls back to page by page and still
 * succeeds, every page moved and its data intact.
 */
static void alloc_fail(bool thp)
{
	const size_t size = thp ? thp_size() : NPAGES * pg();
	const size_t npages = size / pg();
	int fd = dm_open(0);
	char *p = thp ? map_thp(PROT_READ | PROT_WRITE) :
			map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *m = mirror_alloc(size, SEED_DEV);

	fill_words(p, size, SEED_CPU, 0);
	fail_flag(fd, p);
	dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, npages, npages, DM_ANY);
	assert_words(m, size, SEED_CPU, 0, "mirror after a failed allocation");
	snapshot_all(fd, p, npages, DEV_LOCAL_RW);

	fail_flag(fd, p);
	dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_SYS, p, m, npages, npages, DM_ANY);
	cr_assert_eq(((uint32_t *)p)[2048], SEED_CPU + 2048);
	assert_words(p, size, SEED_CPU, 0, "buffer after a failed allocation");

	/* The flag was used up: a plain round trip works. */
	dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, npages, npages, DM_ANY);
	assert_words(p, size, SEED_CPU, 0, "buffer faulted back");
}

Test(dmirror, migrate_anon_err, .timeout = 60)
{
	alloc_fail(false);
}

Test(dmirror, migrate_anon_huge_err, .timeout = 60)
{
	alloc_fail(true);
}

/* The same with the huge zero page: zeros all the way. */
Test(dmirror, migrate_anon_huge_zero_err, .timeout = 60)
{
	int fd = dm_open(0);
	char *p = map_thp(PROT_READ);
	const size_t size = thp_size(), npages = size / pg();
	char *m = mirror_alloc(size, SEED_DEV);

	cr_assert_eq(*(volatile uint32_t *)p, 0);
	fail_flag(fd, p);
	dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, m, npages, npages, DM_ANY);
	assert_zero(m, size, "mirror after a failed allocation");

	fail_flag(fd, p);
	dm_ok(fd, HMM_DMIRROR_MIGRATE_TO_SYS, p, m, npages, npages, DM_ANY);
	cr_assert_eq(((uint32_t *)p)[2048], 0);
	assert_zero(p, size, "zero huge page after a failed allocation");
}

/* ---- CPU-side changes reach the mirror ---------------------------------- */

/*
 * A warm mirror (a second READ needs no fault round) loses its
 * translations when the CPU side changes through libc: the next device
 * access faults again and sees the new state.  Each case starts from a
 * fresh buffer and checks that the change was seen.
 */
static char *warm_buffer(int fd, char *m, size_t size)
{
	char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	const size_t npages = size / pg();

	fill_words(p, size, SEED_CPU, 0);
	dm_ok(fd, HMM_DMIRROR_READ, p, m, npages, npages, 1);
	dm_ok(fd, HMM_DMIRROR_READ, p, m, npages, npages, 0);
	return p;
}

Test(dmirror, cpu_changes_invalidate, .timeout = 60)
{
	const size_t size = 64 * pg(), npages = size / pg();
	int fd = dm_open(0);
	char *m = mirror_alloc(size, SEED_DEV);
	char *p, *q;

	/* mprotect read-only: a device write is refused, a read faults. */
	p = warm_buffer(fd, m, size);
	cr_assert_eq(mprotect(p, size, PROT_READ), 0);
	dm_expect(fd, HMM_DMIRROR_WRITE, p, m, npages, -EPERM);
	dm_ok(fd, HMM_DMIRROR_READ, p, m, npages, npages, 1);
	cr_assert_eq(mprotect(p, size, PROT_NONE), 0);
	dm_expect(fd, HMM_DMIRROR_READ, p, m, npages, -EFAULT);
	cr_assert_eq(munmap(p, size), 0);

	/* pkey_mprotect (no key) does the same. */
	p = warm_buffer(fd, m, size);
	cr_assert_eq(pkey_mprotect(p, size, PROT_READ, -1), 0);
	dm_expect(fd, HMM_DMIRROR_WRITE, p, m, npages, -EPERM);
	cr_assert_eq(munmap(p, size), 0);

	/* madvise(MADV_DONTNEED): the device reads the zeros, not the old
	 * pages. */
	p = warm_buffer(fd, m, size);
	cr_assert_eq(madvise(p, size, MADV_DONTNEED), 0);
	dm_ok(fd, HMM_DMIRROR_READ, p, m, npages, npages, 1);
	assert_zero(m, size, "device read after MADV_DONTNEED");
	cr_assert_eq(munmap(p, size), 0);

	/* mremap: the old address is gone for the device too; the new one
	 * faults in with the data. */
	p = warm_buffer(fd, m, size);
	q = mremap(p, size, size, MREMAP_MAYMOVE | MREMAP_FIXED,
		   map_anon(size, PROT_NONE, MAP_PRIVATE));
	cr_assert_neq(q, MAP_FAILED, "mremap: %s", strerror(errno));
	dm_expect(fd, HMM_DMIRROR_READ, p, m, npages, -EFAULT);
	fill_words(m, size, SEED_DEV, 0);
	dm_ok(fd, HMM_DMIRROR_READ, q, m, npages, npages, 1);
	assert_words(m, size, SEED_CPU, 0, "device read after mremap");
	cr_assert_eq(munmap(q, size), 0);

	/* munmap: the device gets -EFAULT, never the old pages. */
	p = warm_buffer(fd, m, size);
	cr_assert_eq(munmap(p, size), 0);
	dm_expect(fd, HMM_DMIRROR_READ, p, m, npages, -EFAULT);
}
