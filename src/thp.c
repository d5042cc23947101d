/* SPDX-License-Identifier: MIT */
/*
 * Whole huge pages (THP) moved instead of copied.
 *
 * A movable device (host_movable: the sim) keeps its memory in private
 * anonymous memory of this process, registered with libhmm's userfaultfd
 * in write-protect mode (device.c).  When an application's 2 MiB block is
 * one huge page and the device has a clean chunk (nothing mapped in it:
 * its PMD is empty), UFFDIO_MOVE takes the huge page out of the
 * application's page table and puts it in the device's: one PMD changes
 * hands, and no byte is copied (migrate.c).  The block remembers it
 * (thp_out): its PMD is empty now, so the huge page can come back the
 * same way, whole, on the first CPU fault or migration that covers the
 * block (migrate_sys.c), and the chunk is clean again.
 *
 * The kernel moves a PMD only when the source is mapped by one and the
 * destination PMD is empty; otherwise it splits the huge page and moves
 * 4 KiB entries one by one (correct, but slower than copying, and the
 * huge page is lost).  So both sides are checked first: the source with
 * PAGEMAP_SCAN (here), the destination with the clean stack or thp_out.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "compat.h"
#include "internal.h"

/* /proc/self/pagemap of this process (a descriptor opened before a fork
 * would read the parent's page tables: reopened in a new process). */
static int pm_fd = -1;		/* pm_lock */
static pid_t pm_pid;		/* pm_lock */
static pthread_mutex_t pm_lock = PTHREAD_MUTEX_INITIALIZER;

static int pagemap_fd(void)
{
	pid_t pid = getpid();
	int fd;

	pthread_mutex_lock(&pm_lock);
	if (pm_fd < 0 || pm_pid != pid) {
		if (pm_fd >= 0) /* the parent's, inherited */
			close(pm_fd);
		pm_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
		pm_pid = pid;
	}
	fd = pm_fd;
	pthread_mutex_unlock(&pm_lock);
	return fd;
}

bool hmm__thp_mapped(uintptr_t va)
{
	struct page_region vec[2];
	struct pm_scan_arg a = {
		.size = sizeof(a),
		.start = va,
		.end = va + HMM_BLOCK_SIZE,
		.vec = (uintptr_t)vec,
		.vec_len = 2,
		.category_mask = PAGE_IS_PRESENT,
		.return_mask = PAGE_IS_HUGE | PAGE_IS_PFNZERO,
	};
	int fd = pagemap_fd();
	long n;

	if (fd < 0)
		return false;
	n = ioctl(fd, PAGEMAP_SCAN, &a);
	return n == 1 && vec[0].start == va &&
	       vec[0].end == va + HMM_BLOCK_SIZE &&
	       (vec[0].categories & (PAGE_IS_HUGE | PAGE_IS_PFNZERO)) ==
		       PAGE_IS_HUGE;
}

/* ---- first writes: a whole huge page ------------------------------------ */

/*
 * Memory managed before it is touched gets its pages from libhmm
 * (userfaultfd MISSING), 4 KiB at a time, where the kernel would have
 * given a huge page.  So where the kernel would (THP "always", or
 * "madvise" and MADV_HUGEPAGE on the mapping, not MADV_NOHUGEPAGE), a
 * block of private anonymous memory with nothing in it when it was
 * adopted is marked (thp_fill), and the first write into it gets a whole
 * zeroed huge page: the kernel makes one in a mapping of libhmm's (the
 * fill stash, written once), and UFFDIO_MOVE puts it in the block.
 * Reads of untouched memory still get the zero page, 4 KiB at a time.
 */

/* THP policy of the system: 0 never, 1 madvise, 2 always. */
static int thp_policy(void)
{
	char buf[128] = "";
	int fd = open("/sys/kernel/mm/transparent_hugepage/enabled",
		      O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;

	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	if (strstr(buf, "[always]"))
		return 2;
	return strstr(buf, "[madvise]") ? 1 : 0;
}

/* Whether the kernel would give [@s, @e) huge pages, from the VmFlags of
 * the mappings in /proc/self/smaps (hg: MADV_HUGEPAGE, nh: NOHUGEPAGE):
 * every mapping in the range must, and they must cover it.  Read once
 * per adopt. */
static bool thp_wanted(uintptr_t s, uintptr_t e, int policy)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	char line[512];
	uintptr_t vs = 0, ve = 0, covered = s;
	bool in = false, ok = true;

	if (!f)
		return false;
	while (ok && fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		char *dash = strchr(line, '-'), *sp = strchr(line, ' ');
		if (dash && sp && dash < sp &&
		    sscanf(line, "%lx-%lx ", &a, &b) == 2) {
			vs = a;
			ve = b;
			in = ve > s && vs < e;
			continue;
		}
		if (!in || strncmp(line, "VmFlags:", 8))
			continue;
		bool hg = strstr(line, " hg") != NULL;
		bool nh = strstr(line, " nh") != NULL;
		ok = !nh && (hg || policy == 2) && vs <= covered;
		covered = ve;
		in = false;
	}
	fclose(f);
	return ok && covered >= e;
}

void hmm__thp_adopted(uintptr_t s, uintptr_t e)
{
	uintptr_t bs = (s + HMM_BLOCK_SIZE - 1) & ~(HMM_BLOCK_SIZE - 1);
	uintptr_t be = e & ~(HMM_BLOCK_SIZE - 1);
	int policy;

	if (bs >= be || !hmm__option(HMM_OPT_THP_MOVE) ||
	    (hmm__ctx.caps & HMM_CAP_MOVE) == 0 || !(policy = thp_policy()) ||
	    !thp_wanted(bs, be, policy))
		return;
	for (uintptr_t p = bs; p < be; p += HMM_BLOCK_SIZE) {
		struct hmm_block *b = hmm__block_lookup(p);
		struct page_region vec[1];
		struct pm_scan_arg a = {
			.size = sizeof(a),
			.start = p,
			.end = p + HMM_BLOCK_SIZE,
			.vec = (uintptr_t)vec,
			.vec_len = 1,
			.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
			.return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
		};
		int fd = pagemap_fd();
		if (!b || fd < 0)
			return;
		/* Under the lock that first writes take: nothing filled in
		 * between. */
		pthread_mutex_lock(&b->lock);
		b->thp_fill = ioctl(fd, PAGEMAP_SCAN, &a) == 0;
		pthread_mutex_unlock(&b->lock);
	}
}

/* A 2 MiB aligned mapping of libhmm's where the kernel makes the huge
 * pages that first writes get.  fill_lock. */
static char *fill_stash;
static pthread_mutex_t fill_lock = PTHREAD_MUTEX_INITIALIZER;

static char *stash_map(void)
{
	char *p = hmm__mmap_own_aligned(HMM_BLOCK_SIZE);

	if (p == MAP_FAILED)
		return NULL;
	hmm__sys_madvise(p, HMM_BLOCK_SIZE, MADV_HUGEPAGE);
	return p;
}

int hmm__thp_fill_locked(struct hmm_block *b, uintptr_t page)
{
	long m = 0;
	int ret = 0;

	b->thp_fill = false; /* one try: whatever happens, 4 KiB after */
	for (unsigned i = 0; i < HMM_BLOCK_PAGES; i++)
		if (b->state[i] != PS_SYSTEM || b->mod[i])
			return 0;
	if (b->dups && hmm__dups_any_locked(b, 0, HMM_BLOCK_PAGES))
		return 0;
	pthread_mutex_lock(&fill_lock);
	if (!fill_stash && !(fill_stash = stash_map()))
		goto out;
	/* The kernel's zeroed huge page (or a 4 KiB page, if it has none to
	 * give: then it goes, and this block is filled the usual way).  The
	 * stash is libhmm's and not registered: no event, no wait. */
	*(volatile char *)fill_stash = 1;
	if (!hmm__thp_mapped((uintptr_t)fill_stash)) {
		hmm__sys_madvise(fill_stash, HMM_BLOCK_SIZE, MADV_DONTNEED);
		goto out;
	}
	*(volatile char *)fill_stash = 0;
	m = hmm__uffd_move(hmm__ctx.uffd, b->base, (uintptr_t)fill_stash,
			   HMM_BLOCK_SIZE, false);
	if (m == -EAGAIN) {
		ret = -EAGAIN; /* the stash keeps its page for next time */
		b->thp_fill = true;
		goto out;
	}
	if (m != (long)HMM_BLOCK_SIZE) {
		/* Refused (mlocked, other protections), or split and moved in
		 * part (something was mapped in the block): the part that
		 * moved is zeros, as a fill would be; the stash starts
		 * afresh. */
		hmm__sys_madvise(fill_stash, HMM_BLOCK_SIZE, MADV_DONTNEED);
		hmm__debug("huge page for the first write at %#lx: %s",
			   (unsigned long)page,
			   m < 0 ? strerror((int)-m) : "moved in part");
	}
out:
	pthread_mutex_unlock(&fill_lock);
	if (m > 0) {
		hmm__stat_add(HMM_STAT_cpu_zero_fills,
			      (uint64_t)m >> HMM_PAGE_SHIFT);
		if (m == (long)HMM_BLOCK_SIZE)
			hmm__stat_add(HMM_STAT_thp_fills, 1);
		hmm__uffd_wake(hmm__ctx.uffd, b->base, (size_t)m);
	}
	return ret ? ret : m == (long)HMM_BLOCK_SIZE;
}

/* The child of fork: only the forking thread is here; no lock of this
 * file is held by it. */
void hmm__thp_fork_child(void)
{
	pthread_mutex_init(&pm_lock, NULL);
	pthread_mutex_init(&fill_lock, NULL);
}
