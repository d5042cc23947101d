/* SPDX-License-Identifier: MIT */
/*
 * File-backed memory (hmm_file_adopt, hmm_file_sync): pages of file
 * mappings move to a device and come back with their data, and every other
 * view of the file sees what the device wrote at the documented write-back
 * points, and never sees it for a private mapping.
 *
 * Three kinds of mapping, each a different mechanism inside libhmm:
 *  - memfd           a memfd mapped MAP_SHARED: userfaultfd MINOR faults
 *                    (suite file_memfd);
 *  - disk, shared    an unlinked regular file in /var/tmp (a disk file
 *                    system: skipped on tmpfs) mapped MAP_SHARED: the pages
 *                    are PROT_NONE while a device holds them and come back
 *                    through libhmm's SIGSEGV handler (suite file_shared);
 *  - disk, private   the same kind of file mapped MAP_PRIVATE: the same
 *                    protection-fault path, and device writes never reach
 *                    the file (suite file_private).
 * Tests that do not depend on the kind are in the suite file.
 *
 * Every mapping starts at file offset 0, so word i of a mapping is word i
 * of the file, and the checks compare every word with a model: per page,
 * either zeros or the pattern "word i of the file holds i ^ seed".
 */
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/magic.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include "common.h"
#include "probe.h"

#define NP 64			/* pages in most tests */
#define ZPAGE UINT64_MAX	/* a page of zeros, in a model */

/* Seeds: the file as written, and what devices and the CPU write later. */
#define SA 0xa11ce0000ULL
#define SB 0xb0b000000ULL
#define SC 0xc0ffee000ULL
#define SD 0xd00d00000ULL

enum fkind { K_MEMFD, K_SHARED, K_PRIVATE };

static const char *const kind_name[] = { "memfd", "disk shared",
					 "disk private" };

/* ---- files and mappings -------------------------------------------------- */

/* Words [first, first + len / 8) of the pattern @seed into @buf. */
static void fill_from(void *buf, size_t len, uint64_t seed, size_t first)
{
	uint64_t *w = buf;

	for (size_t i = 0; i < len / sizeof(uint64_t); i++)
		w[i] = (first + i) ^ seed;
}

/* Write pattern @seed over file bytes [off, off + len) (page multiples). */
static void file_write_pattern(int fd, size_t off, size_t len, uint64_t seed)
{
	char *buf = malloc(len);
	ssize_t n;

	cr_assert_not_null(buf);
	fill_from(buf, len, seed, off / sizeof(uint64_t));
	n = pwrite(fd, buf, len, (off_t)off);
	cr_assert_eq(n, (ssize_t)len, "pwrite(%zu at %zu) = %zd: %s", len, off,
		     n, strerror(errno));
	free(buf);
}

/*
 * A file of @len bytes holding pattern @seed, open read/write: a memfd for
 * K_MEMFD, else a file made in /var/tmp and unlinked at once, which must
 * be on a disk file system (the protection-fault path is for those).
 */
static int make_file(enum fkind k, size_t len, uint64_t seed)
{
	int fd;

	if (k == K_MEMFD) {
		fd = memfd_create("hmm-test-file", MFD_CLOEXEC);
		cr_assert_geq(fd, 0, "memfd_create: %s", strerror(errno));
	} else {
		char path[] = "/var/tmp/hmm-test-file-XXXXXX";
		struct statfs sfs;

		fd = mkstemp(path);
		cr_assert_geq(fd, 0, "mkstemp(%s): %s", path, strerror(errno));
		cr_assert_eq(unlink(path), 0);
		cr_assert_eq(fstatfs(fd, &sfs), 0);
		if (sfs.f_type == TMPFS_MAGIC || sfs.f_type == RAMFS_MAGIC)
			cr_skip_test("/var/tmp is tmpfs: no disk file system "
				     "for the protection-fault path");
	}
	cr_assert_eq(ftruncate(fd, (off_t)len), 0, "ftruncate: %s",
		     strerror(errno));
	file_write_pattern(fd, 0, len, seed);
	return fd;
}

/* The same file, open O_RDONLY (through /proc: memfds and unlinked files
 * have no other name). */
static int reopen_ro(int fd)
{
	char name[64];
	int ro;

	snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
	ro = open(name, O_RDONLY | O_CLOEXEC);
	cr_assert_geq(ro, 0, "open(%s, O_RDONLY): %s", name, strerror(errno));
	return ro;
}

/* File bytes [off, off + len) mapped with @prot, shared unless the kind
 * is private. */
static char *map_file(enum fkind k, int fd, size_t len, int prot, size_t off)
{
	int flags = k == K_PRIVATE ? MAP_PRIVATE : MAP_SHARED;
	char *p = test_map(len, prot, flags, fd, (off_t)off);

	cr_assert_neq(p, MAP_FAILED, "mmap(%s, %zu at %zu): %s", kind_name[k],
		      len, off, strerror(errno));
	return p;
}

/* An unmanaged read-only MAP_SHARED view of the file: "another mapping". */
static char *map_view(int fd, size_t len)
{
	char *q = test_map(len, PROT_READ, MAP_SHARED, fd, 0);

	cr_assert_neq(q, MAP_FAILED, "mmap(view): %s", strerror(errno));
	return q;
}

struct fmap {
	enum fkind kind;
	int fd;		/* read/write descriptor of the file */
	char *p;	/* the managed mapping, of the whole file */
	size_t len;
};

/* A file of @len bytes with pattern @seed, mapped read/write whole, and
 * adopted (flags @flags). */
static struct fmap fmap_new(enum fkind k, size_t len, uint64_t seed,
			    unsigned int flags)
{
	struct fmap m = { .kind = k, .len = len };
	int r;

	m.fd = make_file(k, len, seed);
	m.p = map_file(k, m.fd, len, PROT_READ | PROT_WRITE, 0);
	r = hmm_file_adopt(m.p, len, m.fd, flags);
	cr_assert_eq(r, 0, "hmm_file_adopt(%s, %zu) = %d (%s)", kind_name[k],
		     len, r, strerror(-r));
	assert_all_loc(m.p, len, HMM_LOC_SYSTEM, NULL);
	return m;
}

/* ---- the model ----------------------------------------------------------- */

static void set_seeds(uint64_t *seeds, size_t first, size_t n, uint64_t s)
{
	for (size_t i = first; i < first + n; i++)
		seeds[i] = s;
}

/*
 * First word of the @npages pages at @buf, which are pages @first... of
 * the file, that differs from the model @seeds (indexed by file page), or
 * -1.  *@got and *@want tell the values.
 */
static long model_mismatch(const void *buf, size_t first, size_t npages,
			   const uint64_t *seeds, uint64_t *got,
			   uint64_t *want)
{
	const volatile uint64_t *w = buf;

	for (size_t pg = 0; pg < npages; pg++) {
		uint64_t s = seeds[first + pg];

		for (size_t j = 0; j < WORDS_PER_PAGE; j++) {
			size_t i = pg * WORDS_PER_PAGE + j;
			uint64_t e = s == ZPAGE ? 0
					: (first * WORDS_PER_PAGE + i) ^ s;
			uint64_t v = w[i];

			if (v != e) {
				*got = v;
				*want = e;
				return (long)i;
			}
		}
	}
	return -1;
}

#define assert_model(buf, first, npages, seeds, what)                         \
	do {                                                                  \
		uint64_t g_ = 0, w_ = 0;                                      \
		long b_ = model_mismatch((buf), (first), (npages), (seeds),   \
					 &g_, &w_);                           \
		cr_assert_eq(b_, -1,                                          \
			     "%s: page %zu word %zu is %#llx, expected %#llx", \
			     (what), (size_t)(first) + (size_t)b_ /           \
					     WORDS_PER_PAGE,                  \
			     (size_t)b_ % WORDS_PER_PAGE,                     \
			     (unsigned long long)g_,                          \
			     (unsigned long long)w_);                         \
	} while (0)

/* pread of file pages [first, first + n) (interposed: writes back). */
static char *file_read(int fd, size_t first, size_t n)
{
	char *buf = malloc(n * PG);
	ssize_t r;

	cr_assert_not_null(buf);
	r = pread(fd, buf, n * PG, (off_t)(first * PG));
	cr_assert_eq(r, (ssize_t)(n * PG), "pread(%zu pages at %zu) = %zd: %s",
		     n, first, r, strerror(errno));
	return buf;
}

#define assert_file(fd, first, n, seeds, what)                                \
	do {                                                                  \
		char *fb_ = file_read((fd), (first), (n));                    \
		assert_model(fb_, (first), (n), (seeds), (what));             \
		free(fb_);                                                    \
	} while (0)

/* The device writes pattern @seed over pages [first, first + n) of @p. */
static void dev_write(hmm_device_t *dev, char *p, size_t first, size_t n,
		      uint64_t seed)
{
	char *buf = malloc(n * PG);
	int r;

	cr_assert_not_null(buf);
	fill_from(buf, n * PG, seed, first * WORDS_PER_PAGE);
	r = hmm_sim_write(dev, p + first * PG, buf, n * PG, NULL);
	cr_assert_eq(r, 0, "hmm_sim_write(%zu pages at %zu) = %d", n, first,
		     r);
	free(buf);
}

/* What the device reads at pages [first, first + n) of @p matches. */
#define assert_dev_model(dev, p, first, n, seeds, what)                       \
	do {                                                                  \
		char *db_ = malloc((n) * PG);                                 \
		int dr_;                                                      \
		cr_assert_not_null(db_);                                      \
		dr_ = hmm_sim_read((dev), (p) + (first) * PG, db_, (n) * PG,  \
				   NULL);                                     \
		cr_assert_eq(dr_, 0, "hmm_sim_read = %d", dr_);               \
		assert_model(db_, (first), (n), (seeds), (what));             \
		free(db_);                                                    \
	} while (0)

/* The CPU writes pattern @seed over pages [first, first + n) of @p. */
static void cpu_write(char *p, size_t first, size_t n, uint64_t seed)
{
	fill_from(p + first * PG, n * PG, seed, first * WORDS_PER_PAGE);
}

/* Index of the first word of @buf that is not @v, or -1. */
static long const_mismatch(const void *buf, size_t len, uint64_t v)
{
	const volatile uint64_t *w = buf;

	for (size_t i = 0; i < len / sizeof(uint64_t); i++)
		if (w[i] != v)
			return (long)i;
	return -1;
}

/* ---- catching SIGSEGV / SIGBUS: the application's own handler ------------ */

static atomic_int app_calls; /* calls of the application's handler */

static void app_handler(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	atomic_fetch_add(&app_calls, 1);
	if (!probe_jb) {
		/* not expected here: say where, and die (the raw system
		 * call: libhmm's write() wrapper is no business of this) */
		char msg[96];
		int n = snprintf(msg, sizeof(msg),
				 "unexpected signal %d (code %d) at %p\n", sig,
				 si->si_code, si->si_addr);
		syscall(SYS_write, 2, msg, (size_t)n);
		_exit(70 + sig);
	}
	probe_caught(sig, si);
}

/* The application installs its handler (after hmm_init: libhmm's
 * sigaction keeps it behind its own). */
static void app_catch(void)
{
	struct sigaction sa = { 0 };

	sa.sa_sigaction = app_handler;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	cr_assert_eq(sigaction(SIGSEGV, &sa, NULL), 0);
	cr_assert_eq(sigaction(SIGBUS, &sa, NULL), 0);
}

/* The tests of one kind, instantiated for the kinds named. */
#define TEST_MEMFD(fn, ...)                                                   \
	Test(file_memfd, fn, __VA_ARGS__) { fn(K_MEMFD); }
#define TEST_SHARED(fn, ...)                                                  \
	Test(file_shared, fn, __VA_ARGS__) { fn(K_SHARED); }
#define TEST_PRIVATE(fn, ...)                                                 \
	Test(file_private, fn, __VA_ARGS__) { fn(K_PRIVATE); }

/* ---- 1. migration there and back ----------------------------------------- */

/*
 * The basic round trip: after hmm_file_adopt the pages move to the device
 * (DEVICE, and the device reads the file's data), CPU reads see the
 * original data and bring the pages home (SYSTEM, device memory freed),
 * CPU writes to pages home and to pages still on the device both land,
 * and a second migration carries the CPU's data.  A shared mapping's
 * CPU writes are the file's; a private one's never are.
 */
static void migrate_round_trip(enum fkind k)
{
	uint64_t seeds[NP], fseeds[NP];
	hmm_device_t *dev;
	struct fmap m;

	need_hmm();
	dev = open_sim(0);
	m = fmap_new(k, NP * PG, SA, 0);
	set_seeds(seeds, 0, NP, SA);

	assert_migrate(m.p, m.len, dev, NP);
	assert_all_loc(m.p, m.len, HMM_LOC_DEVICE, dev);
	cr_assert_eq(dev_used(dev), NP);
	assert_dev_model(dev, m.p, 0, NP, seeds, "device read");

	assert_model(m.p, 0, NP, seeds, "CPU read after migration");
	settle(m.p, m.len);
	assert_all_loc(m.p, m.len, HMM_LOC_SYSTEM, NULL);
	cr_assert_eq(wait_dev_used(dev, 0), 0);

	/* CPU writes in system memory, then while on the device. */
	cpu_write(m.p, 0, NP / 2, SC);
	set_seeds(seeds, 0, NP / 2, SC);
	assert_migrate(m.p, m.len, dev, NP);
	assert_dev_model(dev, m.p, 0, NP, seeds, "device read, 2nd");
	cpu_write(m.p, NP / 2, NP / 2, SD);
	set_seeds(seeds, NP / 2, NP / 2, SD);
	assert_model(m.p, 0, NP, seeds, "CPU read after CPU writes");
	assert_dev_model(dev, m.p, 0, NP, seeds, "device read, 3rd");

	memcpy(fseeds, seeds, sizeof(seeds));
	if (k == K_PRIVATE)
		set_seeds(fseeds, 0, NP, SA);
	assert_file(m.fd, 0, NP, fseeds, "pread of the file");
	cr_assert_eq(hmm_device_close(dev), 0);
	assert_model(m.p, 0, NP, seeds, "CPU read after close");
	assert_file(m.fd, 0, NP, fseeds, "pread after close");
}
TEST_MEMFD(migrate_round_trip, .timeout = T_SHORT)
TEST_SHARED(migrate_round_trip, .timeout = T_SHORT)
TEST_PRIVATE(migrate_round_trip, .timeout = T_SHORT)

/* ---- 2. device writes ---------------------------------------------------- */

struct kpat {
	uint64_t seed;
	size_t first_word; /* word index (in the file) of the launch address */
};

/* A device kernel writing pattern @seed (word index counted in the file). */
static void k_pattern(void *dptr, size_t off, size_t n, void *arg)
{
	const struct kpat *kp = arg;
	uint64_t *w = dptr;
	size_t base = kp->first_word + off / sizeof(uint64_t);

	for (size_t j = 0; j < n / sizeof(uint64_t); j++)
		w[j] = (base + j) ^ kp->seed;
}

/*
 * The three ways a sim device writes (fill64, write, a launched kernel),
 * over a 2.5 MiB range (more than one 2 MiB block) of which only the
 * first half was migrated: pages in device memory and pages the device
 * reaches in system memory through its mirror.  CPU reads through the
 * managed mapping see every device write, byte for byte; a shared file
 * sees them too (pread writes back), a private one never does.
 */
static void device_writes_seen_by_cpu(enum fkind k)
{
	const size_t np = 640, len = np * PG;
	const uint64_t fillv = 0xf111f111deadbeefULL;
	uint64_t *seeds = malloc(np * sizeof(*seeds));
	struct kpat kp = { SD, 400 * WORDS_PER_PAGE };
	hmm_device_t *dev;
	struct fmap m;
	long bad;
	int r;

	cr_assert_not_null(seeds);
	need_hmm();
	dev = open_sim(0);
	m = fmap_new(k, len, SA, 0);
	set_seeds(seeds, 0, np, SA);
	assert_migrate(m.p, len / 2, dev, np / 2);

	r = hmm_sim_fill64(dev, m.p, fillv, 100 * PG, NULL);
	cr_assert_eq(r, 0, "hmm_sim_fill64 = %d", r);
	dev_write(dev, m.p, 100, 300, SB);
	set_seeds(seeds, 100, 300, SB);
	r = hmm_sim_launch(dev, m.p + 400 * PG, 240 * PG, 1, k_pattern, &kp,
			   NULL);
	cr_assert_eq(r, 0, "hmm_sim_launch = %d", r);
	set_seeds(seeds, 400, 240, SD);
	assert_all_loc(m.p, len / 2, HMM_LOC_DEVICE, dev);

	bad = const_mismatch(m.p, 100 * PG, fillv);
	cr_assert_eq(bad, -1, "fill64: word %ld is %#llx", bad,
		     (unsigned long long)((uint64_t *)m.p)[bad < 0 ? 0 : bad]);
	assert_model(m.p + 100 * PG, 100, np - 100, seeds, "CPU read");
	settle(m.p, len);
	assert_all_loc(m.p, len, HMM_LOC_SYSTEM, NULL);

	/* The file: the device's data (shared), or untouched (private). */
	char *fb = file_read(m.fd, 0, np);
	if (k == K_PRIVATE) {
		set_seeds(seeds, 0, np, SA);
		assert_model(fb, 0, np, seeds, "pread (private)");
	} else {
		bad = const_mismatch(fb, 100 * PG, fillv);
		cr_assert_eq(bad, -1, "pread of the filled pages: word %ld",
			     bad);
		assert_model(fb + 100 * PG, 100, np - 100, seeds, "pread");
	}
	free(fb);
	free(seeds);
}
TEST_MEMFD(device_writes_seen_by_cpu, .timeout = T_SHORT)
TEST_SHARED(device_writes_seen_by_cpu, .timeout = T_SHORT)
TEST_PRIVATE(device_writes_seen_by_cpu, .timeout = T_SHORT)

/* ---- 3. the consistency contract (shared kinds) -------------------------- */

/* A file range of NP pages (pattern SA), all on @dev, that the device
 * overwrote with SB on pages [0, @nb); @seeds gets the model of the
 * managed mapping. */
static struct fmap dev_written(enum fkind k, hmm_device_t *dev, size_t nb,
			       uint64_t *seeds, unsigned int flags)
{
	struct fmap m = fmap_new(k, NP * PG, SA, flags);

	assert_migrate(m.p, m.len, dev, NP);
	dev_write(dev, m.p, 0, nb, SB);
	set_seeds(seeds, 0, NP, SA);
	set_seeds(seeds, 0, nb, SB);
	assert_all_loc(m.p, m.len, HMM_LOC_DEVICE, dev);
	return m;
}

/*
 * hmm_file_sync writes back exactly the pages the device wrote (it returns
 * their number), after which another mapping of the file sees the device's
 * data; the pages stay on the device.  (Before it, that mapping may be
 * stale: not checked.)
 */
static void sync_updates_other_mappings(enum fkind k)
{
	uint64_t seeds[NP];
	hmm_device_t *dev;
	struct fmap m;
	char *q;
	int r;

	need_hmm();
	dev = open_sim(0);
	m = dev_written(k, dev, NP / 2, seeds, 0);
	q = map_view(m.fd, m.len);
	cr_log_info("%s: other mapping before sync: %s", kind_name[k],
		    model_mismatch(q, 0, NP, seeds, &(uint64_t){ 0 },
				   &(uint64_t){ 0 }) < 0 ? "current" : "stale");

	/* At least the pages written (a write-back copies every page the
	 * device could write, so it may count more). */
	r = hmm_file_sync(m.p, m.len);
	cr_assert_geq(r, NP / 2, "hmm_file_sync = %d, expected >= %d", r,
		      NP / 2);
	assert_all_loc(m.p, m.len, HMM_LOC_DEVICE, dev);
	assert_model(q, 0, NP, seeds, "other mapping after hmm_file_sync");
	/* A part of the range only. */
	dev_write(dev, m.p, 40, 8, SC);
	set_seeds(seeds, 40, 8, SC);
	r = hmm_file_sync(m.p + 40 * PG, 8 * PG);
	cr_assert_eq(r, 8, "hmm_file_sync(8 pages) = %d", r);
	assert_model(q, 0, NP, seeds, "other mapping after 2nd sync");
	assert_all_loc(m.p, m.len, HMM_LOC_DEVICE, dev);
	assert_model(m.p, 0, NP, seeds, "managed mapping");
}
TEST_MEMFD(sync_updates_other_mappings, .timeout = T_SHORT)
TEST_SHARED(sync_updates_other_mappings, .timeout = T_SHORT)

/*
 * read(), pread() and preadv() on the file write back what they cover
 * first, so they return the device's data without hmm_file_sync; the pages
 * stay on the device, and the page cache now has the data (another
 * mapping sees it).
 */
static void file_reads_write_back(enum fkind k)
{
	uint64_t seeds[NP];
	hmm_device_t *dev;
	struct fmap m;
	char *buf = malloc(NP * PG), *q;
	struct iovec iov[2];
	ssize_t n;

	cr_assert_not_null(buf);
	need_hmm();
	dev = open_sim(0);
	m = dev_written(k, dev, NP, seeds, 0);

	/* pread of a few pages in the middle */
	n = pread(m.fd, buf, 4 * PG, 10 * PG);
	cr_assert_eq(n, (ssize_t)(4 * PG));
	assert_model(buf, 10, 4, seeds, "pread");
	/* read() at the file position */
	cr_assert_eq(lseek(m.fd, 20 * PG, SEEK_SET), (off_t)(20 * PG));
	n = read(m.fd, buf, 4 * PG);
	cr_assert_eq(n, (ssize_t)(4 * PG));
	assert_model(buf, 20, 4, seeds, "read");
	/* preadv, two pieces */
	iov[0] = (struct iovec){ buf, 2 * PG };
	iov[1] = (struct iovec){ buf + 2 * PG, 2 * PG };
	n = preadv(m.fd, iov, 2, 30 * PG);
	cr_assert_eq(n, (ssize_t)(4 * PG));
	assert_model(buf, 30, 4, seeds, "preadv");
	assert_all_loc(m.p, m.len, HMM_LOC_DEVICE, dev);

	/* The whole file, then another mapping. */
	assert_file(m.fd, 0, NP, seeds, "pread of all");
	q = map_view(m.fd, m.len);
	assert_model(q, 0, NP, seeds, "other mapping after pread");
	assert_all_loc(m.p, m.len, HMM_LOC_DEVICE, dev);
	free(buf);
}
TEST_MEMFD(file_reads_write_back, .timeout = T_SHORT)
TEST_SHARED(file_reads_write_back, .timeout = T_SHORT)

/*
 * pwrite() and write() over device-resident pages bring them home first:
 * the managed mapping then shows the written bytes (with the device's data
 * around them in a partly written page), and a later hmm_file_sync does
 * not overwrite them with the device's older copy.
 */
static void file_writes_bring_pages_home(enum fkind k)
{
	const size_t in = 1000, boff = 9 * PG + in, blen = 200;
	uint64_t seeds[NP];
	hmm_device_t *dev;
	struct fmap m;
	char *buf = malloc(PG), *q, bytes[200];
	ssize_t n;
	int r;

	cr_assert_not_null(buf);
	need_hmm();
	dev = open_sim(0);
	m = dev_written(k, dev, NP, seeds, 0);

	/* a whole page with pwrite */
	fill_from(buf, PG, SC, 5 * WORDS_PER_PAGE);
	n = pwrite(m.fd, buf, PG, 5 * PG);
	cr_assert_eq(n, (ssize_t)PG);
	set_seeds(seeds, 5, 1, SC);
	cr_assert_neq(loc_of(m.p + 5 * PG, NULL), HMM_LOC_DEVICE,
		      "page 5 still on the device after pwrite");
	/* 200 bytes inside page 9 with write() */
	memset(bytes, 0x5a, sizeof(bytes));
	cr_assert_eq(lseek(m.fd, (off_t)boff, SEEK_SET), (off_t)boff);
	n = write(m.fd, bytes, blen);
	cr_assert_eq(n, (ssize_t)blen);
	cr_assert_neq(loc_of(m.p + 9 * PG, NULL), HMM_LOC_DEVICE,
		      "page 9 still on the device after write");

	r = hmm_file_sync(m.p, m.len);
	cr_assert_geq(r, 0, "hmm_file_sync = %d", r);
	q = map_view(m.fd, m.len);
	for (int v = 0; v < 3; v++) {
		/* the managed mapping, the file, another mapping */
		char *view = v == 0 ? m.p : v == 1 ? file_read(m.fd, 0, NP) : q;
		const char *what = v == 0 ? "managed mapping"
				 : v == 1 ? "pread" : "other mapping";
		char *page9 = malloc(PG);

		cr_assert_not_null(page9);
		memcpy(page9, view + 9 * PG, PG);
		cr_assert_eq(memcmp(page9 + in, bytes, blen), 0,
			     "%s: the bytes write() wrote are lost", what);
		/* around them: the device's data */
		fill_from(buf, PG, SB, 9 * WORDS_PER_PAGE);
		cr_assert_eq(memcmp(page9, buf, in), 0,
			     "%s: page 9 before the write() bytes", what);
		cr_assert_eq(memcmp(page9 + in + blen, buf + in + blen,
				    PG - in - blen),
			     0, "%s: page 9 after the write() bytes", what);
		assert_model(view, 0, 9, seeds, what);
		assert_model(view + 10 * PG, 10, NP - 10, seeds, what);
		free(page9);
		if (v == 1)
			free(view);
	}
	free(buf);
}
TEST_MEMFD(file_writes_bring_pages_home, .timeout = T_SHORT)
TEST_SHARED(file_writes_bring_pages_home, .timeout = T_SHORT)

/* msync() of the managed range writes back; the pages stay on the
 * device. */
static void msync_writes_back(enum fkind k)
{
	uint64_t seeds[NP];
	hmm_device_t *dev;
	struct fmap m;
	char *q;

	need_hmm();
	dev = open_sim(0);
	m = dev_written(k, dev, NP, seeds, 0);
	q = map_view(m.fd, m.len);
	cr_assert_eq(msync(m.p, m.len, MS_SYNC), 0, "msync: %s",
		     strerror(errno));
	assert_model(q, 0, NP, seeds, "other mapping after msync");
	assert_all_loc(m.p, m.len, HMM_LOC_DEVICE, dev);
	assert_model(m.p, 0, NP, seeds, "managed mapping");
}
TEST_MEMFD(msync_writes_back, .timeout = T_SHORT)
TEST_SHARED(msync_writes_back, .timeout = T_SHORT)

/*
 * munmap() of the managed range writes back (the file has the device's
 * data after it, pread checks), first of half of it, then of the rest;
 * the device memory is freed, and the file can be mapped and adopted
 * again.
 */
static void munmap_writes_back(enum fkind k)
{
	uint64_t seeds[NP];
	hmm_device_t *dev;
	struct fmap m;
	char *p2;
	int r;

	need_hmm();
	dev = open_sim(0);
	m = dev_written(k, dev, NP, seeds, 0);
	cr_assert_eq(munmap(m.p, m.len / 2), 0);
	assert_file(m.fd, 0, NP / 2, seeds, "pread after munmap of half");
	cr_assert_eq(wait_dev_used(dev, NP / 2), NP / 2);
	cr_assert_eq(munmap(m.p + m.len / 2, m.len / 2), 0);
	assert_file(m.fd, 0, NP, seeds, "pread after munmap");
	cr_assert_eq(wait_dev_used(dev, 0), 0);

	p2 = map_file(k, m.fd, m.len, PROT_READ | PROT_WRITE, 0);
	r = hmm_file_adopt(p2, m.len, m.fd, 0);
	cr_assert_eq(r, 0, "adopting again = %d", r);
	assert_migrate(p2, m.len, dev, NP);
	assert_model(p2, 0, NP, seeds, "new mapping");
}
TEST_MEMFD(munmap_writes_back, .timeout = T_SHORT)
TEST_SHARED(munmap_writes_back, .timeout = T_SHORT)

/*
 * hmm_range_release writes back, and leaves the memory mapped as a plain
 * shared mapping: it reads the device's data, and CPU writes to it reach
 * the file as usual.
 */
static void release_writes_back(enum fkind k)
{
	uint64_t seeds[NP];
	hmm_device_t *dev;
	struct fmap m;
	int r;

	need_hmm();
	dev = open_sim(0);
	m = dev_written(k, dev, NP, seeds, 0);
	r = hmm_range_release(m.p, m.len);
	cr_assert_eq(r, 0, "hmm_range_release = %d", r);
	assert_all_loc(m.p, m.len, HMM_LOC_UNMANAGED, NULL);
	cr_assert_eq(wait_dev_used(dev, 0), 0);
	assert_file(m.fd, 0, NP, seeds, "pread after release");
	assert_model(m.p, 0, NP, seeds, "mapping after release");
	cpu_write(m.p, 8, 8, SC);
	set_seeds(seeds, 8, 8, SC);
	assert_file(m.fd, 0, NP, seeds, "pread after CPU writes");
	cr_assert_eq(hmm_file_sync(m.p, m.len), -ENOENT);
}
TEST_MEMFD(release_writes_back, .timeout = T_SHORT)
TEST_SHARED(release_writes_back, .timeout = T_SHORT)

/* hmm_device_close writes back and brings the pages home. */
static void device_close_writes_back(enum fkind k)
{
	uint64_t seeds[NP];
	hmm_device_t *dev;
	struct fmap m;
	char *q;

	need_hmm();
	dev = open_sim(0);
	m = dev_written(k, dev, NP, seeds, 0);
	q = map_view(m.fd, m.len);
	cr_assert_eq(hmm_device_close(dev), 0);
	assert_model(q, 0, NP, seeds, "other mapping after close");
	assert_all_loc(m.p, m.len, HMM_LOC_SYSTEM, NULL);
	assert_model(m.p, 0, NP, seeds, "managed mapping after close");
	assert_file(m.fd, 0, NP, seeds, "pread after close");
}
TEST_MEMFD(device_close_writes_back, .timeout = T_SHORT)
TEST_SHARED(device_close_writes_back, .timeout = T_SHORT)

/* hmm_fini writes back; the mapping stays usable as plain memory. */
static void fini_writes_back(enum fkind k)
{
	uint64_t seeds[NP];
	hmm_device_t *dev;
	struct fmap m;
	char *q;

	need_hmm();
	dev = open_sim(0);
	m = dev_written(k, dev, NP, seeds, 0);
	q = map_view(m.fd, m.len);
	cr_assert_eq(hmm_fini(), 0);
	assert_model(q, 0, NP, seeds, "other mapping after hmm_fini");
	assert_model(m.p, 0, NP, seeds, "managed mapping after hmm_fini");
	cpu_write(m.p, 0, 4, SC);
	set_seeds(seeds, 0, 4, SC);
	assert_file(m.fd, 0, NP, seeds, "pread after hmm_fini");
}
TEST_MEMFD(fini_writes_back, .timeout = T_SHORT)
TEST_SHARED(fini_writes_back, .timeout = T_SHORT)

/* HMM_FILE_SYNC_EACH: every device command is written back when it ends;
 * the pages stay on the device. */
static void sync_each_command(enum fkind k)
{
	uint64_t seeds[NP];
	hmm_device_t *dev;
	struct fmap m;
	char *q;

	need_hmm();
	dev = open_sim(0);
	m = dev_written(k, dev, NP, seeds, HMM_FILE_SYNC_EACH);
	q = map_view(m.fd, m.len);
	assert_model(q, 0, NP, seeds, "other mapping after the command");
	dev_write(dev, m.p, 3, 5, SC);
	set_seeds(seeds, 3, 5, SC);
	assert_model(q, 0, NP, seeds, "other mapping after 2nd command");
	assert_all_loc(m.p, m.len, HMM_LOC_DEVICE, dev);
}
TEST_MEMFD(sync_each_command, .timeout = T_SHORT)
TEST_SHARED(sync_each_command, .timeout = T_SHORT)

/* ---- 4. private mappings ------------------------------------------------- */

/*
 * MAP_PRIVATE: the device's writes are the process's private data.  They
 * are visible through the mapping (before and after the pages come home),
 * but never in the file: not to pread, not to another mapping, not after
 * hmm_file_sync (which writes nothing: 0 pages), msync, device close or
 * munmap.
 */
Test(file_private, device_writes_never_reach_the_file, .timeout = T_SHORT)
{
	uint64_t seeds[NP], fseeds[NP];
	hmm_device_t *dev;
	struct fmap m;
	char *q;
	int r;

	need_hmm();
	dev = open_sim(0);
	m = fmap_new(K_PRIVATE, NP * PG, SA, 0);
	set_seeds(fseeds, 0, NP, SA);
	memcpy(seeds, fseeds, sizeof(seeds));
	q = map_view(m.fd, m.len);

	/* Half the pages written by the CPU before: private already. */
	cpu_write(m.p, 0, NP / 2, SD);
	set_seeds(seeds, 0, NP / 2, SD);
	assert_migrate(m.p, m.len, dev, NP);
	assert_dev_model(dev, m.p, 0, NP, seeds, "device read");
	dev_write(dev, m.p, 16, 32, SB);
	set_seeds(seeds, 16, 32, SB);

	r = hmm_file_sync(m.p, m.len);
	cr_assert_eq(r, 0, "hmm_file_sync of a private range = %d", r);
	cr_assert_eq(msync(m.p, m.len, MS_SYNC), 0);
	assert_file(m.fd, 0, NP, fseeds, "pread");
	assert_model(q, 0, NP, fseeds, "other mapping");
	assert_all_loc(m.p, m.len, HMM_LOC_DEVICE, dev);

	assert_model(m.p, 0, NP, seeds, "CPU read");
	assert_file(m.fd, 0, NP, fseeds, "pread after CPU read");

	/* Again on the device, then the device goes. */
	assert_migrate(m.p, m.len, dev, NP);
	dev_write(dev, m.p, 40, 24, SC);
	set_seeds(seeds, 40, 24, SC);
	cr_assert_eq(hmm_device_close(dev), 0);
	assert_model(m.p, 0, NP, seeds, "CPU read after device close");
	assert_file(m.fd, 0, NP, fseeds, "pread after device close");
	cr_assert_eq(munmap(m.p, m.len), 0);
	assert_file(m.fd, 0, NP, fseeds, "pread after munmap");
	assert_model(q, 0, NP, fseeds, "other mapping at the end");
}

/* ---- 5. read-only mappings ----------------------------------------------- */

/*
 * A PROT_READ mapping adopted with an O_RDONLY descriptor (closed right
 * after: libhmm keeps its own view): it migrates, the device reads it,
 * device writes fail with -EPERM (fill64, write and a writing kernel),
 * CPU reads bring it back, and the file never changes.
 */
static void read_only_mapping(enum fkind k)
{
	uint64_t seeds[NP];
	hmm_device_t *dev;
	struct kpat kp = { SC, 0 };
	char *p, *buf = malloc(PG);
	int fd, ro, r;

	cr_assert_not_null(buf);
	need_hmm();
	dev = open_sim(0);
	fd = make_file(k, NP * PG, SA);
	ro = reopen_ro(fd);
	set_seeds(seeds, 0, NP, SA);
	p = map_file(k, ro, NP * PG, PROT_READ, 0);
	/* Regression (memfd, c82ebf1): -EPERM.  The kernel refuses MINOR
	 * registration of a shared mapping without VM_MAYWRITE (an O_RDONLY
	 * descriptor); hmm_file_adopt() now takes the protection-fault path
	 * for it. */
	r = hmm_file_adopt(p, NP * PG, ro, 0);
	cr_assert_eq(r, 0, "hmm_file_adopt(PROT_READ, O_RDONLY) = %d", r);
	cr_assert_eq(close(ro), 0);

	assert_migrate(p, NP * PG, dev, NP);
	assert_all_loc(p, NP * PG, HMM_LOC_DEVICE, dev);
	assert_dev_model(dev, p, 0, NP, seeds, "device read");
	r = hmm_sim_fill64(dev, p, 7, NP * PG, NULL);
	cr_assert_eq(r, -EPERM, "hmm_sim_fill64 on read-only = %d", r);
	fill_from(buf, PG, SB, 0);
	r = hmm_sim_write(dev, p + 3 * PG, buf, PG, NULL);
	cr_assert_eq(r, -EPERM, "hmm_sim_write on read-only = %d", r);
	r = hmm_sim_launch(dev, p, NP * PG, 1, k_pattern, &kp, NULL);
	cr_assert_eq(r, -EPERM, "hmm_sim_launch(write) on read-only = %d", r);
	assert_dev_model(dev, p, 0, NP, seeds, "device read after EPERM");

	r = hmm_file_sync(p, NP * PG);
	cr_assert_eq(r, 0, "hmm_file_sync of unwritten pages = %d", r);
	assert_model(p, 0, NP, seeds, "CPU read");
	settle(p, NP * PG);
	assert_all_loc(p, NP * PG, HMM_LOC_SYSTEM, NULL);
	cr_assert_eq(wait_dev_used(dev, 0), 0);
	assert_file(fd, 0, NP, seeds, "pread");
	assert_migrate(p, NP * PG, dev, NP);
	cr_assert_eq(munmap(p, NP * PG), 0);
	assert_file(fd, 0, NP, seeds, "pread after munmap");
	free(buf);
}
TEST_MEMFD(read_only_mapping, .timeout = T_SHORT)
TEST_SHARED(read_only_mapping, .timeout = T_SHORT)
TEST_PRIVATE(read_only_mapping, .timeout = T_SHORT)

/* ---- 6. truncation and holes --------------------------------------------- */

/*
 * ftruncate() shrinking the file to 40 pages and 512 bytes while every
 * page is on the device with device-written data: the pages wholly past
 * the new end are dropped (no longer DEVICE, device memory freed), the
 * page the end falls in keeps its first 512 bytes (it came home first,
 * the kernel cleared the rest), and the pages before keep the device's
 * data.  Grown again, the file reads zeros past the old end.  (A private
 * mapping loses its private pages past the end too, as without libhmm.)
 */
static void truncate_drops_pages_past_eof(enum fkind k)
{
	const size_t keep = 40, tail = 512;
	uint64_t seeds[NP];
	hmm_device_t *dev;
	struct fmap m;
	char *want = malloc(PG);
	long bad;

	cr_assert_not_null(want);
	need_hmm();
	dev = open_sim(0);
	m = fmap_new(k, NP * PG, SA, 0);
	assert_migrate(m.p, m.len, dev, NP);
	dev_write(dev, m.p, 0, NP, SB);
	set_seeds(seeds, 0, NP, SB);

	cr_assert_eq(ftruncate(m.fd, (off_t)(keep * PG + tail)), 0,
		     "ftruncate: %s", strerror(errno));
	for (size_t pg = keep + 1; pg < NP; pg++)
		cr_assert_neq(loc_of(m.p + pg * PG, NULL), HMM_LOC_DEVICE,
			      "page %zu past the end still on the device", pg);
	cr_assert_leq(wait_dev_used(dev, keep), keep,
		      "device pages of the lost part not freed");
	assert_dev_model(dev, m.p, 0, keep, seeds, "device read before EOF");
	assert_model(m.p, 0, keep, seeds, "CPU read before EOF");
	fill_from(want, PG, SB, keep * WORDS_PER_PAGE);
	/* (a private copy of that page keeps all of it, as without libhmm:
	 * the kernel clears the tail of the file's page only) */
	if (k != K_PRIVATE)
		memset(want + tail, 0, PG - tail);
	cr_assert_eq(memcmp(m.p + keep * PG, want, PG), 0,
		     "the page holding the new end of the file");
	if (k != K_PRIVATE) {
		assert_file(m.fd, 0, keep, seeds, "pread before EOF");
	}

	/* Grown again: zeros past the old end, through the mapping. */
	cr_assert_eq(ftruncate(m.fd, (off_t)m.len), 0);
	bad = zero_mismatch(m.p + (keep + 1) * PG, (NP - keep - 1) * PG);
	cr_assert_eq(bad, -1, "word %ld past the old end is not zero", bad);
	cr_assert_eq(memcmp(m.p + keep * PG, want, PG), 0,
		     "the old end page after growing");
	assert_model(m.p, 0, keep, seeds, "CPU read after growing");
	free(want);
}
TEST_MEMFD(truncate_drops_pages_past_eof, .timeout = T_SHORT)
TEST_SHARED(truncate_drops_pages_past_eof, .timeout = T_SHORT)
TEST_PRIVATE(truncate_drops_pages_past_eof, .timeout = T_SHORT)

/*
 * After ftruncate() below device-resident pages, a CPU access past the new
 * end of the file raises SIGBUS, as without libhmm (the test dies of it).
 * The application's SIGBUS disposition is the default one.
 */
static void access_past_eof_sigbus(enum fkind k)
{
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	hmm_device_t *dev;
	struct fmap m;

	/* The default action, even under a sanitizer's handler. */
	sigaction(SIGBUS, &dfl, NULL);
	need_hmm();
	dev = open_sim(0);
	m = fmap_new(k, NP * PG, SA, 0);
	assert_migrate(m.p, m.len, dev, NP);
	dev_write(dev, m.p, 0, NP, SB);
	cr_assert_eq(ftruncate(m.fd, 40 * PG), 0);
	cr_assert_neq(loc_of(m.p + 50 * PG, NULL), HMM_LOC_DEVICE);
	/* Before the end: fine. */
	cr_assert_eq(((volatile uint64_t *)m.p)[39 * WORDS_PER_PAGE],
		     (39 * WORDS_PER_PAGE) ^ SB);
	(void)((volatile char *)m.p)[50 * PG + 8];
	cr_assert_fail("read past the end of the file did not raise SIGBUS");
}
TEST_MEMFD(access_past_eof_sigbus, .timeout = T_SHORT, .signal = SIGBUS)
TEST_SHARED(access_past_eof_sigbus, .timeout = T_SHORT, .signal = SIGBUS)
TEST_PRIVATE(access_past_eof_sigbus, .timeout = T_SHORT, .signal = SIGBUS)

/*
 * fallocate(PUNCH_HOLE | KEEP_SIZE) over device-resident pages the device
 * wrote: the device copies are dropped, the CPU reads zeros there (and so
 * does pread), the neighbours keep the device's data.  The hole starts
 * and ends inside pages: those come home first and keep the device's data
 * outside the hole.
 */
static void punch_hole_gives_zeros(enum fkind k)
{
	const size_t hs = 10 * PG + 256, he = 20 * PG + 768;
	uint64_t seeds[NP];
	hmm_device_t *dev;
	struct fmap m;
	char *want = malloc(NP * PG), *fb;
	int r;

	cr_assert_not_null(want);
	need_hmm();
	dev = open_sim(0);
	m = dev_written(k, dev, NP, seeds, 0);
	r = fallocate(m.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      (off_t)hs, (off_t)(he - hs));
	if (r && errno == EOPNOTSUPP)
		cr_skip_test("no FALLOC_FL_PUNCH_HOLE on this file system");
	cr_assert_eq(r, 0, "fallocate(PUNCH_HOLE): %s", strerror(errno));
	for (size_t pg = 11; pg < 20; pg++)
		cr_assert_neq(loc_of(m.p + pg * PG, NULL), HMM_LOC_DEVICE,
			      "page %zu in the hole still on the device", pg);

	fill_from(want, NP * PG, SB, 0);
	memset(want + hs, 0, he - hs);
	cr_assert_eq(memcmp(m.p, want, NP * PG), 0, "mapping after the hole");
	fb = file_read(m.fd, 0, NP);
	cr_assert_eq(memcmp(fb, want, NP * PG), 0, "pread after the hole");
	free(fb);
	free(want);
}
TEST_MEMFD(punch_hole_gives_zeros, .timeout = T_SHORT)
TEST_SHARED(punch_hole_gives_zeros, .timeout = T_SHORT)

/*
 * A private mapping and a hole punched in its file.  Without libhmm, a
 * page the process wrote is its own copy and a hole in the file does not
 * touch it (the kernel unmaps only the page cache's pages); checked first
 * on an unmanaged mapping.  A page the device wrote through a managed
 * private mapping is the process's private data too: it must survive the
 * hole as well.  Pages the device only read read zeros, as the file.
 */
Test(file_private, punch_hole_keeps_device_written_pages, .timeout = T_SHORT)
{
	uint64_t seeds[NP];
	hmm_device_t *dev;
	struct fmap m;
	char *u;
	long bad;
	int r;

	need_hmm();
	dev = open_sim(0);
	m = fmap_new(K_PRIVATE, NP * PG, SA, 0);
	set_seeds(seeds, 0, NP, SA);

	/* The kernel's behaviour, on an unmanaged private mapping. */
	u = map_file(K_PRIVATE, m.fd, m.len, PROT_READ | PROT_WRITE, 0);
	cpu_write(u, 10, 4, SC);
	r = fallocate(m.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      10 * PG, 8 * PG);
	cr_assert_eq(r, 0, "fallocate(PUNCH_HOLE): %s", strerror(errno));
	if (pattern_mismatch(u + 10 * PG, 4 * PG, SC, 10 * WORDS_PER_PAGE) >= 0)
		cr_skip_test("this kernel drops private pages in a hole");
	bad = zero_mismatch(u + 14 * PG, 4 * PG);
	cr_assert_eq(bad, -1, "unwritten private page in the hole");
	cr_assert_eq(munmap(u, m.len), 0);
	file_write_pattern(m.fd, 10 * PG, 8 * PG, SA);

	/* Managed: pages 10..13 written by the device, 14..17 only read.
	 * As without libhmm, a page the device wrote is the process's own
	 * copy, which the hole leaves alone, and a page it only read follows
	 * the file (the sim device tracks what it writes). */
	assert_migrate(m.p, m.len, dev, NP);
	dev_write(dev, m.p, 10, 4, SB);
	set_seeds(seeds, 10, 4, SB);
	set_seeds(seeds, 14, 4, ZPAGE);
	r = fallocate(m.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      10 * PG, 8 * PG);
	cr_assert_eq(r, 0, "fallocate(PUNCH_HOLE): %s", strerror(errno));
	/* Regression (c82ebf1): file_lose() dropped the device copies of
	 * private mappings too, and the device's data read as zeros. */
	assert_model(m.p, 0, NP, seeds, "private mapping after the hole");
}

/*
 * madvise(MADV_REMOVE) over device-resident pages of a shared mapping
 * frees that part of the file: the CPU reads zeros there (and so does
 * pread), the neighbours keep the device's data.
 */
static void madv_remove_gives_zeros(enum fkind k)
{
	uint64_t seeds[NP];
	hmm_device_t *dev;
	struct fmap m;
	int r;

	need_hmm();
	dev = open_sim(0);
	m = dev_written(k, dev, NP, seeds, 0);
	/* Regression (disk shared; failed at 3216150, fixed by 5b131a6): the
	 * device copies were not dropped: the madvise wrapper (interpose.c)
	 * settled MADV_REMOVE only when hmm__range_is_shmem(), false for
	 * protection-fault ranges, so the next write-back (here pread's)
	 * put the device's data back into the hole. */
	r = madvise(m.p + 10 * PG, 10 * PG, MADV_REMOVE);
	if (r && errno == EOPNOTSUPP)
		cr_skip_test("no MADV_REMOVE on this file system");
	cr_assert_eq(r, 0, "madvise(MADV_REMOVE): %s", strerror(errno));
	set_seeds(seeds, 10, 10, ZPAGE);
	assert_file(m.fd, 0, NP, seeds, "pread after MADV_REMOVE");
	assert_model(m.p, 0, NP, seeds, "mapping after MADV_REMOVE");
	settle(m.p, m.len);
	for (size_t pg = 10; pg < 20; pg++)
		cr_assert_neq(loc_of(m.p + pg * PG, NULL), HMM_LOC_DEVICE,
			      "removed page %zu still on the device", pg);
}
TEST_MEMFD(madv_remove_gives_zeros, .timeout = T_SHORT)
TEST_SHARED(madv_remove_gives_zeros, .timeout = T_SHORT)

/*
 * madvise(MADV_DONTNEED) on a shared file mapping only unmaps: the file
 * keeps its data, so the device's data must stay too (the pages read it
 * afterwards, and it reaches the file).
 */
static void madv_dontneed_keeps_data(enum fkind k)
{
	uint64_t seeds[NP];
	hmm_device_t *dev;
	struct fmap m;
	int r;

	need_hmm();
	dev = open_sim(0);
	m = dev_written(k, dev, NP, seeds, 0);
	/* Regression (disk shared; failed at 3216150, fixed by 5b131a6): the
	 * madvise wrapper (interpose.c) took a protection-fault range for
	 * private memory (hmm__range_is_shmem() is false for it) and dropped
	 * the device copies before the call; the CPU then read the file's
	 * older data. */
	r = madvise(m.p + 10 * PG, 10 * PG, MADV_DONTNEED);
	cr_assert_eq(r, 0, "madvise(MADV_DONTNEED): %s", strerror(errno));
	assert_model(m.p, 0, NP, seeds, "mapping after MADV_DONTNEED");
	assert_file(m.fd, 0, NP, seeds, "pread after MADV_DONTNEED");
}
TEST_MEMFD(madv_dontneed_keeps_data, .timeout = T_SHORT)
TEST_SHARED(madv_dontneed_keeps_data, .timeout = T_SHORT)

/*
 * madvise(MADV_DONTNEED) on a private mapping discards the process's
 * private data: afterwards the pages read the file again, whatever the
 * device wrote there.  The CPU read some pages of the range before (so
 * libhmm's fault handler has served this thread already).  The pages
 * outside keep the device's data.
 */
Test(file_private, madv_dontneed_discards_private_data, .timeout = T_SHORT)
{
	uint64_t seeds[NP], v = 0;
	hmm_device_t *dev;
	struct fmap m;
	long moved;
	int sig;

	need_hmm();
	app_catch();
	dev = open_sim(0);
	m = fmap_new(K_PRIVATE, NP * PG, SA, 0);
	set_seeds(seeds, 0, NP, SA);
	assert_migrate(m.p, m.len, dev, NP);
	dev_write(dev, m.p, 0, NP, SB);
	set_seeds(seeds, 0, NP, SB);
	assert_model(m.p + 5 * PG, 5, 1, seeds, "CPU read of page 5");
	moved = hmm_migrate(m.p, m.len, dev, 0);
	cr_assert_gt(moved, 0, "hmm_migrate = %ld", moved);
	assert_all_loc(m.p, m.len, HMM_LOC_DEVICE, dev);

	cr_assert_eq(madvise(m.p, 20 * PG, MADV_DONTNEED), 0);
	set_seeds(seeds, 0, 20, SA);
	/* Regression (failed at 3216150, fixed by 5b131a6): the read of
	 * page 5 reached the application's handler: file.c
	 * hmm__file_prot_fault() found the page SYSTEM (the drop took it
	 * from the device) but PROT_NONE, and declined the fault because it
	 * had restored that same page for this thread before
	 * (last_restored). */
	sig = probe((uint64_t *)(m.p + 5 * PG), false, 0, &v, NULL);
	cr_assert_eq(sig, 0, "read of a dropped page: signal %d to the "
		     "application", sig);
	cr_assert_eq(v, (5 * WORDS_PER_PAGE) ^ SA);
	assert_model(m.p, 0, NP, seeds, "after MADV_DONTNEED");
	cr_assert_eq(atomic_load(&app_calls), 0);
}

/*
 * Write-back against writes through other views of the file, page by page
 * (the contract: a page written both by a device and, meanwhile, through
 * another view ends with the device's data; pages a device could not
 * write are never written back, so other views' writes to them stay).
 * The other view is a mapping libhmm does not manage, written while the
 * managed pages are on the device:
 *  - a writable managed mapping whose pages 0-7 the device wrote: the
 *    device's data wins over the other view's writes to pages 4-5;
 *  - a read-only managed mapping: hmm_file_sync writes nothing (0), the
 *    other view's writes stay, and the managed mapping shows them once
 *    the pages come home.
 */
static void other_views_and_write_back(enum fkind k)
{
	uint64_t seeds[NP];
	hmm_device_t *dev;
	struct fmap m;
	char *q, *ro;
	int fd, r;

	need_hmm();
	dev = open_sim(0);
	m = dev_written(k, dev, 8, seeds, 0);
	q = test_map(m.len, PROT_READ | PROT_WRITE, MAP_SHARED, m.fd, 0);
	cr_assert_neq(q, MAP_FAILED);
	cpu_write(q, 4, 2, SC);
	r = hmm_file_sync(m.p, m.len);
	cr_assert_geq(r, 8, "hmm_file_sync = %d", r);
	assert_model(q, 0, 8, seeds, "other mapping: pages the device wrote");
	assert_model(m.p, 0, NP, seeds, "managed mapping");
	assert_file(m.fd, 0, 8, seeds, "pread of pages the device wrote");
	cr_assert_eq(munmap(q, m.len), 0);

	/* A read-only managed mapping. */
	fd = make_file(k, NP * PG, SA);
	set_seeds(seeds, 0, NP, SA);
	ro = map_file(k, fd, NP * PG, PROT_READ, 0);
	r = hmm_file_adopt(ro, NP * PG, fd, 0);
	cr_assert_eq(r, 0, "hmm_file_adopt(PROT_READ) = %d", r);
	assert_migrate(ro, NP * PG, dev, NP);
	q = test_map(NP * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	cr_assert_neq(q, MAP_FAILED);
	cpu_write(q, 20, 4, SC);
	set_seeds(seeds, 20, 4, SC);
	r = hmm_file_sync(ro, NP * PG);
	cr_assert_eq(r, 0, "hmm_file_sync of a read-only mapping = %d", r);
	assert_model(q, 0, NP, seeds, "other mapping after hmm_file_sync");
	assert_model(ro, 0, NP, seeds, "read-only managed mapping");
	assert_file(fd, 0, NP, seeds, "pread");
	cr_assert_eq(munmap(ro, NP * PG), 0);
	assert_model(q, 0, NP, seeds, "other mapping after munmap");
}
TEST_MEMFD(other_views_and_write_back, .timeout = T_SHORT)
TEST_SHARED(other_views_and_write_back, .timeout = T_SHORT)

/* ---- 7. SIGSEGV chaining ------------------------------------------------- */

/*
 * The application installs its own SIGSEGV handler after hmm_init, then
 * adopts a read-only mapping (of a read/write descriptor: read-only
 * descriptors are read_only_mapping's) and moves it to the device.  CPU
 * reads of the device pages are libhmm's faults: served, the
 * application's handler is not called.  A CPU write to the read-only
 * mapping is the application's fault: its handler gets it (SEGV_ACCERR,
 * si_addr the address written), whether the page is on the device or
 * home, and the data is unchanged.  So does a fault libhmm has nothing to
 * do with.
 */
static void sigsegv_chains_to_application(enum fkind k)
{
	uint64_t seeds[NP], v;
	hmm_device_t *dev;
	struct caught got;
	char *p, *none;
	int fd, r, sig;

	need_hmm();
	app_catch();
	dev = open_sim(0);
	fd = make_file(k, NP * PG, SA);
	set_seeds(seeds, 0, NP, SA);
	p = map_file(k, fd, NP * PG, PROT_READ, 0);
	r = hmm_file_adopt(p, NP * PG, fd, 0);
	cr_assert_eq(r, 0, "hmm_file_adopt = %d", r);
	assert_migrate(p, NP * PG, dev, NP);

	/* (a) reads: libhmm's */
	for (size_t pg = 0; pg < NP; pg++) {
		volatile uint64_t *w = (uint64_t *)(p + pg * PG) + 3;

		sig = probe(w, false, 0, &v, NULL);
		cr_assert_eq(sig, 0, "read of page %zu: signal %d to the app",
			     pg, sig);
		cr_assert_eq(v, (pg * WORDS_PER_PAGE + 3) ^ SA);
	}
	cr_assert_eq(atomic_load(&app_calls), 0);
	assert_model(p, 0, NP, seeds, "read-only mapping");

	/* (b) a write to a device page: the application's */
	assert_migrate(p, NP * PG, dev, NP);
	uint64_t *target = (uint64_t *)(p + 7 * PG + 16);
	sig = probe(target, true, 42, NULL, &got);
	cr_assert_eq(sig, SIGSEGV, "write to read-only device page: signal %d",
		     sig);
	cr_assert_eq(got.addr, (uintptr_t)target, "si_addr %#lx, wrote %p",
		     (unsigned long)got.addr, (void *)target);
	cr_assert_eq(got.code, SEGV_ACCERR, "si_code %d", got.code);
	cr_assert_eq(atomic_load(&app_calls), 1);

	/* (c) a write to a page home */
	assert_model(p, 0, NP, seeds, "after the refused write");
	target = (uint64_t *)(p + 9 * PG + 24);
	sig = probe(target, true, 42, NULL, &got);
	cr_assert_eq(sig, SIGSEGV, "write to read-only page: signal %d", sig);
	cr_assert_eq(got.addr, (uintptr_t)target);
	cr_assert_eq(atomic_load(&app_calls), 2);

	/* (d) a fault that is nobody's but the application's */
	none = test_map(PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(none, MAP_FAILED);
	sig = probe((uint64_t *)none, false, 0, &v, &got);
	cr_assert_eq(sig, SIGSEGV);
	cr_assert_eq(got.addr, (uintptr_t)none);
	cr_assert_eq(atomic_load(&app_calls), 3);
	assert_model(p, 0, NP, seeds, "read-only mapping at the end");
	assert_file(fd, 0, NP, seeds, "pread");
}
TEST_MEMFD(sigsegv_chains_to_application, .timeout = T_SHORT)
TEST_SHARED(sigsegv_chains_to_application, .timeout = T_SHORT)
TEST_PRIVATE(sigsegv_chains_to_application, .timeout = T_SHORT)

/* ---- 8. mprotect --------------------------------------------------------- */

/*
 * mprotect(PROT_READ) over part of a range whose pages are on the device
 * with device-written data (whether the pages come home at the mprotect
 * or stay on the device is libhmm's business): a CPU write there is the
 * application's SIGSEGV (si_addr the address) and changes nothing, a
 * device write is refused (-EPERM), reads by the device and the CPU give
 * the device's data, and the CPU's reads leave the pages home.  The rest
 * of the range stays writable.  The whole range
 * read-only, then read/write again: it migrates and works as before, and
 * the file (shared kinds) gets the data.
 */
static void mprotect_device_pages(enum fkind k)
{
	uint64_t seeds[NP], v;
	hmm_device_t *dev;
	struct caught got;
	struct fmap m;
	char *buf = malloc(PG);
	uint64_t *target;
	long moved;
	int sig, r;

	cr_assert_not_null(buf);
	need_hmm();
	app_catch();
	dev = open_sim(0);
	m = dev_written(k, dev, NP, seeds, 0);

	/* Regression (memfd; failed at 3216150, fixed by 5b131a6): the
	 * device's data was lost.  The mprotect wrapper (interpose.c
	 * protect_block) cleared PSF_DEV_WRITE of the pages on the device;
	 * for a file that flag also said "the device copy has data to write
	 * back" (migrate_sys.c install_file_run, file.c writeback_piece),
	 * so the page came home with the stale page-cache data. */
	cr_assert_eq(mprotect(m.p + 16 * PG, 16 * PG, PROT_READ), 0,
		     "mprotect: %s", strerror(errno));
	target = (uint64_t *)(m.p + 20 * PG + 8);
	sig = probe(target, true, 1, NULL, &got);
	cr_assert_eq(sig, SIGSEGV, "write to the read-only part: signal %d",
		     sig);
	cr_assert_eq(got.addr, (uintptr_t)target, "si_addr %#lx, wrote %p",
		     (unsigned long)got.addr, (void *)target);
	fill_from(buf, PG, SC, 24 * WORDS_PER_PAGE);
	r = hmm_sim_write(dev, m.p + 24 * PG, buf, PG, NULL);
	cr_assert_eq(r, -EPERM, "device write to the read-only part = %d", r);
	assert_dev_model(dev, m.p, 16, 16, seeds, "device read, read-only");
	assert_model(m.p + 16 * PG, 16, 16, seeds, "read-only part");
	settle(m.p, m.len);
	assert_all_loc(m.p + 16 * PG, 16 * PG, HMM_LOC_SYSTEM, NULL);
	/* the rest (on the device, or home with the fault-around window,
	 * which follows addresses, not mappings): still writable, by the
	 * CPU and the device */
	sig = probe((uint64_t *)(m.p + 40 * PG), true, 0x4040, NULL, NULL);
	cr_assert_eq(sig, 0, "write to the read/write part: signal %d", sig);
	sig = probe((uint64_t *)(m.p + 40 * PG), false, 0, &v, NULL);
	cr_assert_eq(v, 0x4040);
	((uint64_t *)(m.p + 40 * PG))[0] = (40 * WORDS_PER_PAGE) ^ SB;
	dev_write(dev, m.p, 48, 4, SD);
	set_seeds(seeds, 48, 4, SD);
	assert_model(m.p, 0, NP, seeds, "after mprotect");

	/* The whole range read-only, then read/write again. */
	moved = hmm_migrate(m.p, m.len, dev, 0);
	cr_assert_geq(moved, 0, "hmm_migrate = %ld", moved);
	cr_assert_eq(mprotect(m.p, m.len, PROT_READ), 0);
	sig = probe((uint64_t *)(m.p + 50 * PG), true, 1, NULL, &got);
	cr_assert_eq(sig, SIGSEGV, "write to the read-only range: signal %d",
		     sig);
	assert_model(m.p, 0, NP, seeds, "read-only range");
	cr_assert_eq(mprotect(m.p, m.len, PROT_READ | PROT_WRITE), 0);
	moved = hmm_migrate(m.p, m.len, dev, 0);
	cr_assert_geq(moved, 0, "hmm_migrate after mprotect = %ld", moved);
	assert_all_loc(m.p, m.len, HMM_LOC_DEVICE, dev);
	dev_write(dev, m.p, 0, NP, SC);
	set_seeds(seeds, 0, NP, SC);
	cpu_write(m.p, 60, 4, SD);
	set_seeds(seeds, 60, 4, SD);
	assert_model(m.p, 0, NP, seeds, "after mprotect back");
	cr_assert_eq(atomic_load(&app_calls), 2);
	if (k != K_PRIVATE)
		assert_file(m.fd, 0, NP, seeds, "pread");
	free(buf);
}
TEST_MEMFD(mprotect_device_pages, .timeout = T_SHORT)
TEST_SHARED(mprotect_device_pages, .timeout = T_SHORT)
TEST_PRIVATE(mprotect_device_pages, .timeout = T_SHORT)

/* ---- 9. bad input -------------------------------------------------------- */

/*
 * Every bad call returns its documented error and changes nothing: the
 * memory stays unmanaged (or managed as it was), with its data, and the
 * valid calls after still work.
 */
static void bad_input(enum fkind k)
{
	const size_t len = 16 * PG;
	uint64_t seeds[16];
	hmm_device_t *dev;
	int fd, fd2, ro, dead, r;
	char *p, *q, *anon, *shanon, *none, *hole, *p2;

	need_hmm();
	dev = open_sim(0);
	fd = make_file(k, 2 * len, SA);
	fd2 = make_file(k, len, SB);
	set_seeds(seeds, 0, 16, SA);
	p = map_file(k, fd, len, PROT_READ | PROT_WRITE, 0);

	/* alignment, length, flags */
	cr_assert_eq(hmm_file_adopt(p + 1, PG, fd, 0), -EINVAL);
	cr_assert_eq(hmm_file_adopt(p + PG / 2, PG, fd, 0), -EINVAL);
	cr_assert_eq(hmm_file_adopt(p, PG + 1, fd, 0), -EINVAL);
	cr_assert_eq(hmm_file_adopt(p, 0, fd, 0), -EINVAL);
	cr_assert_eq(hmm_file_adopt(p, len, fd, 2), -EINVAL);
	cr_assert_eq(hmm_file_adopt(p, len, fd, HMM_FILE_SYNC_EACH | 4),
		     -EINVAL);
	/* descriptors */
	cr_assert_eq(hmm_file_adopt(p, len, -1, 0), -EBADF);
	dead = dup(fd);
	cr_assert_geq(dead, 0);
	cr_assert_eq(close(dead), 0);
	cr_assert_eq(hmm_file_adopt(p, len, dead, 0), -EBADF, "closed fd");
	cr_assert_eq(hmm_file_adopt(p, len, fd2, 0), -EBADF, "another file");
	ro = reopen_ro(fd);
	if (k != K_PRIVATE) {
		r = hmm_file_adopt(p, len, ro, 0);
		cr_assert_eq(r, -EACCES, "writable shared mapping, O_RDONLY "
			     "descriptor: %d", r);
	} else {
		/* never written back: a read-only descriptor is enough */
		q = map_file(k, ro, len, PROT_READ | PROT_WRITE, 0);
		cr_assert_eq(hmm_file_adopt(q, len, ro, 0), 0);
		cr_assert_eq(munmap(q, len), 0);
	}
	/* not a file */
	anon = map_anon(len);
	cr_assert_eq(hmm_file_adopt(anon, len, fd, 0), -EINVAL, "anonymous");
	shanon = test_map(len, PROT_READ | PROT_WRITE,
			  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(shanon, MAP_FAILED);
	cr_assert_eq(hmm_file_adopt(shanon, len, fd, 0), -EINVAL,
		     "shared anonymous");
	/* not mapped, not wholly, PROT_NONE */
	hole = map_anon(2 * len);
	cr_assert_eq(munmap(hole, 2 * len), 0);
	cr_assert_eq(hmm_file_adopt(hole, len, fd, 0), -EFAULT, "unmapped");
	p2 = map_file(k, fd, len, PROT_READ | PROT_WRITE, len);
	cr_assert_eq(munmap(p2 + len / 2, len / 2), 0);
	cr_assert_eq(hmm_file_adopt(p2, len, fd, 0), -EFAULT,
		     "past the end of the mapping");
	none = map_file(k, fd, len, PROT_NONE, 0);
	cr_assert_eq(hmm_file_adopt(none, len, fd, 0), -EFAULT, "PROT_NONE");
	/* the wrong entry point */
	cr_assert_eq(hmm_range_adopt(p, len, 0), -EOPNOTSUPP);
	/* nothing changed */
	assert_all_loc(p, len, HMM_LOC_UNMANAGED, NULL);
	assert_all_loc(p2, len / 2, HMM_LOC_UNMANAGED, NULL);
	assert_model(p, 0, 16, seeds, "after the refused calls");

	/* adopted: not twice, not the same offsets elsewhere */
	cr_assert_eq(hmm_file_adopt(p, len, fd, 0), 0);
	cr_assert_eq(hmm_file_adopt(p, len, fd, 0), -EEXIST, "twice");
	cr_assert_eq(hmm_file_adopt(p + PG, PG, fd, 0), -EEXIST, "a part");
	q = map_file(k, fd, len, PROT_READ | PROT_WRITE, 0);
	r = hmm_file_adopt(q, len, fd, 0);
	cr_assert_eq(r, -EEXIST, "same offsets, another mapping: %d", r);
	cr_assert_eq(munmap(q, len), 0);
	q = map_file(k, fd, len, PROT_READ | PROT_WRITE, len / 2);
	r = hmm_file_adopt(q, len, fd, 0);
	cr_assert_eq(r, -EEXIST, "overlapping offsets: %d", r);
	assert_all_loc(q, len, HMM_LOC_UNMANAGED, NULL);
	/* ...but other offsets of the file may */
	cr_assert_eq(hmm_file_adopt(q + len / 2, len / 2, fd, 0), 0);
	/* what file ranges cannot do */
	cr_assert_eq(hmm_range_lock(p, len, dev), -EOPNOTSUPP);
	cr_assert_eq(hmm_exclusive_begin(p, len, dev, HMM_EXCL_REVOKE, 0),
		     -EOPNOTSUPP);
	cr_assert_eq(hmm_exclusive_begin(p, PG, dev, HMM_EXCL_READONLY, 0),
		     -EOPNOTSUPP);
	/* hmm_file_sync */
	cr_assert_eq(hmm_file_sync(p + 1, PG), -EINVAL);
	cr_assert_eq(hmm_file_sync(p, 0), -EINVAL);
	cr_assert_eq(hmm_file_sync(anon, len), -ENOENT, "unmanaged");
	cr_assert_eq(hmm_file_sync(p, 2 * len), -ENOENT, "partly managed");
	cr_assert_eq(hmm_range_adopt(anon, len, 0), 0);
	cr_assert_eq(hmm_file_sync(anon, len), 0, "anonymous: skipped");
	/* and the adopted range works */
	assert_all_loc(p, len, HMM_LOC_SYSTEM, NULL);
	assert_migrate(p, len, dev, 16);
	assert_model(p, 0, 16, seeds, "adopted range");

	/* after hmm_fini */
	cr_assert_eq(hmm_fini(), 0);
	cr_assert_eq(hmm_file_adopt(p2, len / 2, fd, 0), -ESHUTDOWN);
	cr_assert_eq(hmm_file_sync(p, len), -ESHUTDOWN);
	assert_model(p, 0, 16, seeds, "after hmm_fini");
}
TEST_MEMFD(bad_input, .timeout = T_SHORT)
TEST_SHARED(bad_input, .timeout = T_SHORT)
TEST_PRIVATE(bad_input, .timeout = T_SHORT)

/*
 * A range over two mappings (of two files, adjacent) is refused with
 * -EOPNOTSUPP, each of them alone is fine.  One mapping that mprotect cut
 * into several protections is still one mapping: adopted whole, it
 * migrates, and its read-only part stays read-only.
 */
Test(file, range_over_two_mappings, .timeout = T_SHORT)
{
	const size_t len = 8 * PG;
	uint64_t seeds[8];
	hmm_device_t *dev;
	int fd1, fd2, fd3, r;
	char *p, *q, *c;

	need_hmm();
	fd1 = make_file(K_MEMFD, len, SA);
	fd2 = make_file(K_MEMFD, len, SB);
	p = test_map(2 * len, PROT_READ | PROT_WRITE, MAP_SHARED, fd1, 0);
	cr_assert_neq(p, MAP_FAILED);
	q = mmap(p + len, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
		 fd2, 0);
	cr_assert_eq(q, p + len);
	cr_assert_eq(hmm_file_adopt(p, 2 * len, fd1, 0), -EOPNOTSUPP);
	assert_all_loc(p, 2 * len, HMM_LOC_UNMANAGED, NULL);
	cr_assert_eq(hmm_file_adopt(p, len, fd1, 0), 0);
	cr_assert_eq(hmm_file_adopt(q, len, fd2, 0), 0);

	fd3 = make_file(K_SHARED, len, SC);
	set_seeds(seeds, 0, 8, SC);
	c = map_file(K_SHARED, fd3, len, PROT_READ | PROT_WRITE, 0);
	cr_assert_eq(mprotect(c + 2 * PG, 2 * PG, PROT_READ), 0);
	r = hmm_file_adopt(c, len, fd3, 0);
	cr_assert_eq(r, 0, "adopting a mapping cut by mprotect = %d", r);
	dev = open_sim(0);
	assert_migrate(c, len, dev, 8);
	r = hmm_sim_fill64(dev, c + 2 * PG, 1, PG, NULL);
	cr_assert_eq(r, -EPERM, "device write to the read-only part = %d", r);
	dev_write(dev, c, 5, 1, SD);
	set_seeds(seeds, 5, 1, SD);
	assert_model(c, 0, 8, seeds, "mapping cut by mprotect");
}

/* ---- 10. threads --------------------------------------------------------- */

/*
 * Layout of each of the two ranges of the threads test (CT_NP pages):
 * pages [0, 32) belong to the CPU workers, 8 each; in pages [32, 48) word
 * i belongs to worker i % CT_W; pages [48, 64) only the device writes
 * (hmm_sim_fill64).  CPU worker w writes word i in round n as
 * i ^ CT_SEED ^ (n << 40).
 */
#define CT_W 4
#define CT_NP 64
#define CT_SEED 0x5eed5eedULL
#define CT_FILL(n) ((0xf111ULL << 32) | (n))
#define CT_SECONDS 3

struct ct {
	char *r[2];
	int fd[2];
	hmm_device_t *dev;
	atomic_bool stop;
	pthread_barrier_t bar;
};

struct ct_thread {
	pthread_t th;
	struct ct *c;
	int id;
	uint64_t last; /* last round finished */
	long errors, ops;
	long first_bad;
	long first_val;
};

static void ct_bad(struct ct_thread *t, long where, long val)
{
	if (t->errors++ == 0) {
		t->first_bad = where;
		t->first_val = val;
	}
}

static inline uint64_t ct_val(size_t i, uint64_t round)
{
	return i ^ CT_SEED ^ (round << 40);
}

/* Whether word i holds a value some round of a worker, or the file's
 * original pattern, may have left there. */
static inline bool ct_plausible(size_t i, uint64_t v)
{
	return v == (i ^ SA) || ((v ^ i ^ CT_SEED) & ((1ULL << 40) - 1)) == 0;
}

static bool ct_mine(int id, size_t i)
{
	size_t pg = i / WORDS_PER_PAGE;

	if (pg < 32)
		return pg / 8 == (size_t)id;
	return pg < 48 && i % CT_W == (size_t)id;
}

/* Words other CPU threads read are stored and loaded atomically (relaxed:
 * the values are checked, not ordered). */
static inline void ct_store(uint64_t *w, uint64_t v)
{
	__atomic_store_n(w, v, __ATOMIC_RELAXED);
}

static inline uint64_t ct_load(const uint64_t *w)
{
	return __atomic_load_n(w, __ATOMIC_RELAXED);
}

static void *ct_cpu(void *arg)
{
	struct ct_thread *t = arg;
	struct ct *c = t->c;

	pthread_barrier_wait(&c->bar);
	for (uint64_t n = 1; !atomic_load(&c->stop); n++) {
		for (int ri = 0; ri < 2; ri++) {
			uint64_t *w = (uint64_t *)c->r[ri];
			size_t own = (size_t)t->id * 8 * WORDS_PER_PAGE;

			for (size_t i = own; i < own + 8 * WORDS_PER_PAGE; i++)
				ct_store(&w[i], ct_val(i, n));
			for (size_t i = 32 * WORDS_PER_PAGE + t->id;
			     i < 48 * WORDS_PER_PAGE; i += CT_W)
				ct_store(&w[i], ct_val(i, n));
			for (size_t i = own; i < own + 8 * WORDS_PER_PAGE;
			     i++) {
				uint64_t v = ct_load(&w[i]);
				if (v != ct_val(i, n))
					ct_bad(t, (long)i, (long)v);
			}
			/* every other word: some value it may hold */
			for (size_t i = 0; i < 48 * WORDS_PER_PAGE; i += 61) {
				uint64_t v = ct_load(&w[i]);
				if (ct_mine(t->id, i) ? v != ct_val(i, n)
						      : !ct_plausible(i, v))
					ct_bad(t, (long)i, (long)v);
			}
			for (size_t i = 48 * WORDS_PER_PAGE;
			     i < CT_NP * WORDS_PER_PAGE; i += 67) {
				uint64_t v = ct_load(&w[i]);
				if (v != (i ^ SA) && (v >> 32) != 0xf111)
					ct_bad(t, (long)i, (long)v);
			}
			t->ops++;
		}
		t->last = n;
	}
	return NULL;
}

static void *ct_migrator(void *arg)
{
	struct ct_thread *t = arg;
	struct ct *c = t->c;

	pthread_barrier_wait(&c->bar);
	while (!atomic_load(&c->stop)) {
		for (int ri = 0; ri < 2; ri++) {
			long r = hmm_migrate(c->r[ri], CT_NP * PG, c->dev, 0);
			if (r < 0)
				ct_bad(t, ri, r);
			t->ops++;
		}
		if (t->ops % 16 == 0) {
			int r = hmm_file_sync(c->r[t->ops % 32 == 0],
					      CT_NP * PG);
			if (r < 0)
				ct_bad(t, 2, r);
		}
	}
	return NULL;
}

static void *ct_filler(void *arg)
{
	struct ct_thread *t = arg;
	struct ct *c = t->c;

	pthread_barrier_wait(&c->bar);
	for (uint64_t n = 1; !atomic_load(&c->stop); n++) {
		for (int ri = 0; ri < 2; ri++) {
			int r = hmm_sim_fill64(c->dev, c->r[ri] + 48 * PG,
					       CT_FILL(n),
					       (CT_NP - 48) * PG, NULL);
			if (r)
				ct_bad(t, ri, r);
		}
		t->last = n;
		t->ops++;
	}
	return NULL;
}

/* Every word of @buf (a whole range, or the file) is what the threads
 * left. */
static long ct_final_mismatch(const void *buf, const struct ct_thread *t)
{
	const volatile uint64_t *w = buf;

	for (size_t i = 0; i < CT_NP * WORDS_PER_PAGE; i++) {
		size_t pg = i / WORDS_PER_PAGE;
		uint64_t want;

		if (pg < 32)
			want = ct_val(i, t[pg / 8].last);
		else if (pg < 48)
			want = ct_val(i, t[i % CT_W].last);
		else
			want = CT_FILL(t[CT_W + 1].last);
		if (w[i] != want)
			return (long)i;
	}
	return -1;
}

/*
 * Four CPU threads read and write their own pages and their own words of
 * shared pages of a disk-file range (protection faults) and a memfd range
 * (MINOR faults), while a thread migrates both ranges to the device again
 * and again (and writes them back now and then) and another has the
 * device fill a part no CPU thread writes.  Nothing is lost or torn, and
 * at the end the mappings and the files (pread) hold exactly what was
 * written last.
 */
Test(file, threads_fault_migrate_and_fill, .timeout = T_LONG)
{
	struct ct c = { 0 };
	struct ct_thread t[CT_W + 2];

	need_hmm();
	app_catch(); /* a fault libhmm declines: reported, not a crash */
	c.dev = open_sim(0);
	for (int ri = 0; ri < 2; ri++) {
		enum fkind k = ri ? K_MEMFD : K_SHARED;

		c.fd[ri] = make_file(k, CT_NP * PG, SA);
		c.r[ri] = map_file(k, c.fd[ri], CT_NP * PG,
				   PROT_READ | PROT_WRITE, 0);
		cr_assert_eq(hmm_file_adopt(c.r[ri], CT_NP * PG, c.fd[ri], 0),
			     0);
	}
	pthread_barrier_init(&c.bar, NULL, CT_W + 3);
	for (int i = 0; i < CT_W + 2; i++) {
		t[i] = (struct ct_thread){ .c = &c, .id = i };
		cr_assert_eq(pthread_create(&t[i].th, NULL,
					    i < CT_W	   ? ct_cpu
					    : i == CT_W ? ct_migrator
							: ct_filler,
					    &t[i]),
			     0);
	}
	/* Regression (disk range; failed at 3216150, fixed by 5b131a6):
	 * within milliseconds a CPU thread's fault reached the
	 * application's handler ("unexpected signal 11"): file.c
	 * hmm__file_prot_fault() declined a fault on a page it found in
	 * system memory if it had restored that same page for this thread
	 * before (last_restored), the case when another thread brought the
	 * page home meanwhile.  Smallest repro:
	 * file_private/madv_dontneed_discards_private_data. */
	pthread_barrier_wait(&c.bar);
	sleep(CT_SECONDS);
	atomic_store(&c.stop, true);
	for (int i = 0; i < CT_W + 2; i++)
		pthread_join(t[i].th, NULL);
	for (int i = 0; i < CT_W + 2; i++) {
		cr_log_info("thread %d: %ld ops, last %llu", i, t[i].ops,
			    (unsigned long long)t[i].last);
		cr_assert_eq(t[i].errors, 0,
			     "thread %d: %ld errors, first at %ld (%#lx)", i,
			     t[i].errors, t[i].first_bad,
			     (unsigned long)t[i].first_val);
		cr_assert_gt(t[i].ops, 0, "thread %d did nothing", i);
	}
	for (int ri = 0; ri < 2; ri++) {
		long bad = ct_final_mismatch(c.r[ri], t);
		char *fb;

		cr_assert_eq(bad, -1, "range %d: word %ld is %#llx", ri, bad,
			     (unsigned long long)((uint64_t *)c.r[ri])
				     [bad < 0 ? 0 : bad]);
		fb = file_read(c.fd[ri], 0, CT_NP);
		bad = ct_final_mismatch(fb, t);
		cr_assert_eq(bad, -1, "file %d: word %ld is %#llx", ri, bad,
			     (unsigned long long)((uint64_t *)fb)
				     [bad < 0 ? 0 : bad]);
		free(fb);
	}
}

/* ---- 11. fault-around ---------------------------------------------------- */

/*
 * A sequential CPU pass over a 4 MiB range on the device: every page
 * comes home with its data (fault-around brings neighbours along, so it
 * takes fewer faults than pages), and the device memory is freed.
 */
static void sequential_pass_brings_all_home(enum fkind k)
{
	const size_t np = 1024, len = np * PG;
	uint64_t *seeds = malloc(np * sizeof(*seeds));
	hmm_device_t *dev;
	struct fmap m;
	uint64_t f0, faults;

	cr_assert_not_null(seeds);
	need_hmm();
	dev = open_sim(0);
	m = fmap_new(k, len, SA, 0);
	set_seeds(seeds, 0, np, SA);
	cpu_write(m.p, 100, 100, SC); /* some pages differ from the file */
	set_seeds(seeds, 100, 100, SC);
	assert_migrate(m.p, len, dev, np);
	f0 = stat_of("cpu_faults");
	assert_model(m.p, 0, np, seeds, "sequential pass");
	faults = stat_of("cpu_faults") - f0;
	cr_log_info("%s: %llu CPU faults for %zu pages", kind_name[k],
		    (unsigned long long)faults, np);
	settle(m.p, len);
	assert_all_loc(m.p, len, HMM_LOC_SYSTEM, NULL);
	cr_assert_eq(wait_dev_used(dev, 0), 0);
	cr_assert_lt(faults, np, "%llu faults: no fault-around",
		     (unsigned long long)faults);
	free(seeds);
}
TEST_MEMFD(sequential_pass_brings_all_home, .timeout = T_SHORT)
TEST_SHARED(sequential_pass_brings_all_home, .timeout = T_SHORT)
TEST_PRIVATE(sequential_pass_brings_all_home, .timeout = T_SHORT)

/*
 * Device dirty tracking (the sim driver marks the pages it writes): a
 * write-back copies only pages the device wrote since their last copy, so
 * hmm_file_sync counts them, and another view's write to a page the device
 * only read survives both the write-back and the page's return (which
 * needs no copy: the page cache has the data).
 */
static void dirty_tracking(enum fkind k)
{
	uint64_t seeds[NP];
	hmm_device_t *dev;
	struct fmap m;
	char *q, buf[64];
	int r;

	need_hmm();
	dev = open_sim(0);
	m = fmap_new(k, NP * PG, SA, 0);
	set_seeds(seeds, 0, NP, SA);
	assert_migrate(m.p, m.len, dev, NP);
	r = hmm_sim_read(dev, m.p, buf, sizeof(buf), NULL);
	cr_assert_eq(r, 0, "hmm_sim_read = %d", r);
	cr_assert_eq(hmm_file_sync(m.p, m.len), 0,
		     "nothing written, nothing to write back");
	dev_write(dev, m.p, 3, 2, SB);
	set_seeds(seeds, 3, 2, SB);
	cr_assert_eq(hmm_file_sync(m.p, m.len), 2, "the two pages written");
	cr_assert_eq(hmm_file_sync(m.p, m.len), 0, "and only once");

	/* Another view writes page 7, which the device only read. */
	q = map_file(k, m.fd, m.len, PROT_READ | PROT_WRITE, 0);
	cpu_write(q, 7, 1, SC);
	set_seeds(seeds, 7, 1, SC);
	cr_assert_eq(loc_of(m.p + 7 * PG, NULL), HMM_LOC_DEVICE);
	cr_assert_eq(hmm_file_sync(m.p, m.len), 0);
	assert_model(q, 0, NP, seeds, "other view after the write-back");
	assert_model(m.p, 0, NP, seeds, "managed mapping, pages home");
	cr_assert_eq(munmap(q, m.len), 0);
}
TEST_MEMFD(dirty_tracking, .timeout = T_SHORT)
TEST_SHARED(dirty_tracking, .timeout = T_SHORT)
