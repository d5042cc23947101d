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
#include <sys/ioctl.h>
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
