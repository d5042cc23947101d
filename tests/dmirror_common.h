/* SPDX-License-Identifier: MIT */
/*
 * Helpers of test_dmirror.c: a program written for the kernel's dmirror
 * test driver (/dev/hmm_dmirrorN), using nothing but open, ioctl, mmap and
 * close, run against libhmm's preload library.
 *
 * Data is checked with a pattern of 32-bit words: word i of a buffer holds
 * seed + i, i counted from the start of the buffer, so every word of every
 * page differs from its neighbours and from the same buffer written with
 * another seed.  SEED_CPU plays the kernel tests' "i", SEED_DEV their "-i".
 *
 * Every command is issued with cpages and faults preset to DM_SENTINEL, so
 * a test can tell that a failed command copied nothing back.
 *
 * cr_assert must only be called from the test's own thread and process:
 * helpers meant for a forked child or another thread return a status.
 */
#ifndef HMM_TESTS_DMIRROR_COMMON_H
#define HMM_TESTS_DMIRROR_COMMON_H

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hmm/hmm_dmirror.h>

#include "vaspace.h"

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif

/* The kernel selftest's buffer: 1024 pages (4 MiB with 4 KiB pages). */
#define NPAGES 1024
/* Rounds of the *_multiple and teardown tests. */
#define NTIMES 10

#define SEED_CPU 0x10000000u
#define SEED_DEV 0x20000000u

#define DM_SENTINEL 0x5a5a5a5a5a5a5a5aULL
/* "Do not check this counter." */
#define DM_ANY UINT64_MAX

static inline size_t pg(void)
{
	static size_t size;

	if (!size)
		size = (size_t)sysconf(_SC_PAGESIZE);
	return size;
}

/* ---- data patterns --------------------------------------------------- */

/* Word i of @buf := seed + first + i. */
static inline void fill_words(void *buf, size_t len, uint32_t seed,
			      size_t first)
{
	uint32_t *w = buf;

	for (size_t i = 0; i < len / sizeof(*w); i++)
		w[i] = seed + (uint32_t)(first + i);
}

/* Index of the first word of @buf that is not seed + first + i, or -1. */
static inline long words_mismatch(const void *buf, size_t len, uint32_t seed,
				  size_t first)
{
	const volatile uint32_t *w = buf;

	for (size_t i = 0; i < len / sizeof(*w); i++)
		if (w[i] != seed + (uint32_t)(first + i))
			return (long)i;
	return -1;
}

/* Index of the first non-zero word of @buf, or -1. */
static inline long zero_mismatch(const void *buf, size_t len)
{
	const volatile uint32_t *w = buf;

	for (size_t i = 0; i < len / sizeof(*w); i++)
		if (w[i])
			return (long)i;
	return -1;
}

#define WORD_AT(buf, i) (((const volatile uint32_t *)(buf))[(i) < 0 ? 0 : (i)])

/* @len bytes at @buf hold the pattern @seed, starting at word @first. */
#define assert_words(buf, len, seed, first, what)                             \
	do {                                                                  \
		long b_ = words_mismatch((buf), (len), (seed), (first));      \
		cr_assert_eq(b_, -1,                                          \
			     "%s: word %ld (page %ld) is %#x, not %#x",       \
			     (what), b_, b_ * 4 / (long)pg(),                 \
			     WORD_AT(buf, b_),                                \
			     (uint32_t)((seed) + (first) + (size_t)b_));      \
	} while (0)

#define assert_zero(buf, len, what)                                           \
	do {                                                                  \
		long b_ = zero_mismatch((buf), (len));                        \
		cr_assert_eq(b_, -1, "%s: word %ld (page %ld) is %#x, not 0", \
			     (what), b_, b_ * 4 / (long)pg(),                 \
			     WORD_AT(buf, b_));                               \
	} while (0)

/* ---- commands -------------------------------------------------------- */

static inline const char *dm_name(unsigned long req)
{
	switch (req) {
	case HMM_DMIRROR_READ: return "READ";
	case HMM_DMIRROR_WRITE: return "WRITE";
	case HMM_DMIRROR_MIGRATE_TO_DEV: return "MIGRATE_TO_DEV";
	case HMM_DMIRROR_MIGRATE_TO_SYS: return "MIGRATE_TO_SYS";
	case HMM_DMIRROR_SNAPSHOT: return "SNAPSHOT";
	case HMM_DMIRROR_EXCLUSIVE: return "EXCLUSIVE";
	case HMM_DMIRROR_CHECK_EXCLUSIVE: return "CHECK_EXCLUSIVE";
	case HMM_DMIRROR_RELEASE: return "RELEASE";
	case HMM_DMIRROR_FLAGS: return "FLAGS";
	case HMM_DMIRROR_READ_UNLOCKED: return "READ_UNLOCKED";
	default: return "?";
	}
}

/* ioctl, retried on EINTR; 0 or -errno. */
static inline int dm_ioctl(int fd, unsigned long req,
			   struct hmm_dmirror_cmd *cmd)
{
	int r;

	do {
		r = ioctl(fd, req, cmd);
	} while (r < 0 && errno == EINTR);
	return r < 0 ? -errno : r;
}

/*
 * One command over @npages pages at @addr with buffer @ptr; cpages and
 * faults go in as DM_SENTINEL.  Returns 0 or -errno, *@cmd what came back.
 * Safe in a forked child or another thread.
 */
static inline int dm_cmd(int fd, unsigned long req, const void *addr,
			 void *ptr, uint64_t npages,
			 struct hmm_dmirror_cmd *cmd)
{
	*cmd = (struct hmm_dmirror_cmd){
		.addr = (uintptr_t)addr,
		.ptr = (uintptr_t)ptr,
		.npages = npages,
		.cpages = DM_SENTINEL,
		.faults = DM_SENTINEL,
	};
	return dm_ioctl(fd, req, cmd);
}

/*
 * Run a command that must return @want (0 or -errno).  A failed command
 * must leave cpages and faults as they were.  @line is the caller's.
 */
static inline struct hmm_dmirror_cmd dm_expect_at(int line, int fd,
						  unsigned long req,
						  const void *addr, void *ptr,
						  uint64_t npages, int want)
{
	struct hmm_dmirror_cmd cmd;
	int r = dm_cmd(fd, req, addr, ptr, npages, &cmd);

	cr_assert_eq(r, want,
		     "line %d: %s(%p, %llu pages) = %d (%s), expected %d (%s)",
		     line, dm_name(req), addr, (unsigned long long)npages, r,
		     strerror(r < 0 ? -r : 0), want, strerror(-want));
	if (want)
		cr_assert(cmd.cpages == DM_SENTINEL &&
				  cmd.faults == DM_SENTINEL,
			  "line %d: %s failed (%d) but wrote back "
			  "cpages %#llx, faults %#llx",
			  line, dm_name(req), r, (unsigned long long)cmd.cpages,
			  (unsigned long long)cmd.faults);
	return cmd;
}

/* A command that must succeed with @cpages and @faults (DM_ANY: unchecked). */
static inline void dm_ok_at(int line, int fd, unsigned long req,
			    const void *addr, void *ptr, uint64_t npages,
			    uint64_t cpages, uint64_t faults)
{
	struct hmm_dmirror_cmd cmd =
		dm_expect_at(line, fd, req, addr, ptr, npages, 0);

	if (cpages != DM_ANY)
		cr_assert_eq(cmd.cpages, cpages,
			     "line %d: %s(%p, %llu pages): cpages %llu, "
			     "expected %llu",
			     line, dm_name(req), addr,
			     (unsigned long long)npages,
			     (unsigned long long)cmd.cpages,
			     (unsigned long long)cpages);
	if (faults != DM_ANY)
		cr_assert_eq(cmd.faults, faults,
			     "line %d: %s(%p, %llu pages): faults %llu, "
			     "expected %llu",
			     line, dm_name(req), addr,
			     (unsigned long long)npages,
			     (unsigned long long)cmd.faults,
			     (unsigned long long)faults);
}

#define dm_expect(fd, req, addr, ptr, npages, want) \
	dm_expect_at(__LINE__, (fd), (req), (addr), (ptr), (npages), (want))
#define dm_ok(fd, req, addr, ptr, npages, cpages, faults)                 \
	dm_ok_at(__LINE__, (fd), (req), (addr), (ptr), (npages), (cpages), \
		 (faults))

/* SNAPSHOT of @npages pages; every byte must be @want. */
static inline void snapshot_all_at(int line, int fd, const void *addr,
				   size_t npages, uint8_t want)
{
	uint8_t *s = malloc(npages);

	cr_assert_not_null(s);
	memset(s, 0xEE, npages);
	dm_ok_at(line, fd, HMM_DMIRROR_SNAPSHOT, addr, s, npages, npages,
		 DM_ANY);
	for (size_t i = 0; i < npages; i++)
		cr_assert_eq(s[i], want,
			     "line %d: SNAPSHOT page %zu of %p: %#x, not %#x",
			     line, i, addr, s[i], want);
	free(s);
}

#define snapshot_all(fd, addr, npages, want) \
	snapshot_all_at(__LINE__, (fd), (addr), (npages), (want))

/* ---- devices --------------------------------------------------------- */

/*
 * open("/dev/hmm_dmirror@n"), skipping the test where libhmm cannot get a
 * usable userfaultfd.
 */
static inline int dm_open(unsigned int n)
{
	char path[32];
	int fd;

	snprintf(path, sizeof(path), HMM_DMIRROR_PATH "%u", n);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0 &&
	    (errno == EPERM || errno == ENOSYS || errno == EOPNOTSUPP))
		cr_skip_test("open(%s): %s: no usable userfaultfd", path,
			     strerror(errno));
	cr_assert_geq(fd, 0, "open(%s): %s", path, strerror(errno));
	return fd;
}

/* ---- memory ---------------------------------------------------------- */

static inline void *map_anon(size_t len, int prot, int flags)
{
	void *p = test_map(len, prot, flags | MAP_ANONYMOUS, -1, 0);

	cr_assert_neq(p, MAP_FAILED, "mmap(%zu): %s", len, strerror(errno));
	return p;
}

/* A buffer for the device's side of a command, filled with @seed. */
static inline void *mirror_alloc(size_t len, uint32_t seed)
{
	void *m = malloc(len);

	cr_assert_not_null(m);
	fill_words(m, len, seed, 0);
	return m;
}

/* Read one whole text file into @buf; false if it cannot be read. */
static inline bool read_text(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");
	size_t n;

	if (!f)
		return false;
	n = fread(buf, 1, len - 1, f);
	buf[n] = '\0';
	fclose(f);
	return true;
}

/* Size of a transparent huge page (the PMD size). */
static inline size_t thp_size(void)
{
	char buf[64];

	if (read_text("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size",
		      buf, sizeof(buf)))
		return strtoul(buf, NULL, 10);
	return 2UL << 20;
}

/* Skip the test unless the kernel gives THPs to MADV_HUGEPAGE memory. */
static inline void need_thp(void)
{
	char buf[128];

	if (!read_text("/sys/kernel/mm/transparent_hugepage/enabled", buf,
		       sizeof(buf)))
		cr_skip_test("no transparent huge pages on this kernel");
	if (strstr(buf, "[never]"))
		cr_skip_test("transparent huge pages are disabled "
			     "(/sys/kernel/mm/transparent_hugepage/enabled)");
}

/*
 * Private anonymous memory of @size bytes aligned to @size (a multiple of
 * the PMD size), with MADV_HUGEPAGE if @huge and MADV_NOHUGEPAGE if not,
 * so both kinds are what the test asks for whatever the system default.
 */
static inline void *map_aligned(size_t size, int prot, bool huge)
{
	char *raw = map_anon(2 * size, prot, MAP_PRIVATE);
	char *p = (char *)(((uintptr_t)raw + size - 1) &
			   ~(uintptr_t)(size - 1));
	char *end = raw + 2 * size;

	if (p > raw)
		cr_assert_eq(munmap(raw, (size_t)(p - raw)), 0);
	if (p + size < end)
		cr_assert_eq(munmap(p + size, (size_t)(end - (p + size))), 0);
	cr_assert_eq(madvise(p, size,
			     huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE), 0,
		     "madvise(%s): %s", huge ? "HUGEPAGE" : "NOHUGEPAGE",
		     strerror(errno));
	return p;
}

/* One PMD-sized, PMD-aligned MADV_HUGEPAGE region (skips without THP). */
static inline void *map_thp(int prot)
{
	need_thp();
	return map_aligned(thp_size(), prot, true);
}

/* AnonHugePages (kB) of the mapping that holds @addr, from smaps. */
static inline unsigned long smaps_anon_huge_kb(const void *addr)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	unsigned long start, end, kb = 0;
	bool in = false;
	char line[512];

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2) {
			in = (uintptr_t)addr >= start && (uintptr_t)addr < end;
			continue;
		}
		if (in && sscanf(line, "AnonHugePages: %lu kB", &kb) == 1)
			break;
	}
	fclose(f);
	return kb;
}

/* A field of /proc/meminfo ("HugePages_Free:"), or 0. */
static inline unsigned long meminfo(const char *field)
{
	FILE *f = fopen("/proc/meminfo", "r");
	unsigned long v = 0;
	char line[256];

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, field, strlen(field))) {
			v = strtoul(line + strlen(field), NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

/*
 * One default-sized hugetlb page, or skip: the test does not reserve pages
 * itself (that would change the machine's settings).  *@size gets its size.
 */
static inline void *map_hugetlb(size_t *size)
{
	void *p;

	*size = meminfo("Hugepagesize:") * 1024;
	if (!*size || meminfo("HugePages_Free:") < 1)
		cr_skip_test("no free hugetlb page "
			     "(/proc/sys/vm/nr_hugepages)");
	p = mmap(NULL, *size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	if (p == MAP_FAILED)
		cr_skip_test("mmap(MAP_HUGETLB, %zu): %s", *size,
			     strerror(errno));
	return p;
}

/*
 * Whether the page at @addr is still a hole.  test_map() keeps the
 * tests' buffers out of the way of other mmaps of the process, but where
 * it had to fall back to mmap(NULL, ...) a sanitizer's bookkeeping or a
 * new thread's stack may land in a hole; a test checks this before
 * relying on one.
 */
static inline bool is_hole(const void *addr)
{
	return msync((void *)addr, pg(), MS_ASYNC) < 0 && errno == ENOMEM;
}

/* An unlinked regular file of @len bytes (zeros) in /tmp. */
static inline int tmpfile_fd(size_t len)
{
	char path[] = "/tmp/hmm-dmirror-XXXXXX";
	int fd = open("/tmp", O_TMPFILE | O_RDWR | O_EXCL, 0600);

	if (fd < 0) {
		fd = mkstemp(path);
		cr_assert_geq(fd, 0, "mkstemp: %s", strerror(errno));
		unlink(path);
	}
	cr_assert_eq(ftruncate(fd, (off_t)len), 0, "ftruncate: %s",
		     strerror(errno));
	return fd;
}

/* ---- children -------------------------------------------------------- */

/*
 * Wait for @pid, which must exit with 0; a non-zero status is the step of
 * the child that failed, named by @steps[status] where given.
 */
static inline void wait_child(pid_t pid, const char *const *steps,
			      size_t nsteps)
{
	int status;

	cr_assert_eq(waitpid(pid, &status, 0), pid, "waitpid: %s",
		     strerror(errno));
	cr_assert(WIFEXITED(status), "child died: status %#x", status);
	cr_assert_eq(WEXITSTATUS(status), 0, "child failed at step %d: %s",
		     WEXITSTATUS(status),
		     (size_t)WEXITSTATUS(status) < nsteps ?
			     steps[WEXITSTATUS(status)] : "?");
}

#endif /* HMM_TESTS_DMIRROR_COMMON_H */
