/* SPDX-License-Identifier: MIT */
/*
 * The application has a userfaultfd of its own.
 *
 * It registers an anonymous range in MISSING mode and serves it from a
 * handler thread that fills each faulting page with a known pattern
 * (UFFDIO_COPY).  libhmm must leave that range to its owner:
 *  - hmm_range_adopt of it returns -EBUSY and changes nothing (the range
 *    stays registered with the application's userfaultfd and unmanaged);
 *  - a sim device read (hmm_sim_read) of never-touched pages returns the
 *    handler's data: the device fault goes through the application's
 *    handler like a CPU access would;
 *  - dmirror READ_UNLOCKED and READ (open("/dev/hmm_dmirror0"), served by
 *    libhmm-dmirror.so, which this program links) return the handler's
 *    data with cpages == npages, as the kernel's hmm selftest
 *    "userfaultfd_read" expects of the kernel driver.
 * Last, once the application unregisters its range, libhmm adopts it.
 *
 * Word i of the range (counted from its start) holds i ^ SEED, written by
 * the handler only.  Skips if the application cannot get a userfaultfd.
 */
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include <hmm/hmm.h>
#include <hmm/hmm_dmirror.h>
#include <hmm/hmm_sim.h>

#include "plain.h"

#define PG HMM_PAGE_SIZE
#define NPAGES 64
#define QUARTER (NPAGES / 4)
#define LEN (NPAGES * PG)
#define SEED 0xf00dULL

static int uffd = -1;
static int stop_pipe[2];
static char *range;
static atomic_int served;	/* pages the handler filled */
static atomic_int handler_error;

/* The application's userfaultfd: the syscall, then user-mode only. */
static int open_uffd(void)
{
	struct uffdio_api api = { .api = UFFD_API };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0)
		fd = (int)syscall(SYS_userfaultfd,
				  O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0)
		return -errno;
	if (ioctl(fd, UFFDIO_API, &api)) {
		int e = -errno;

		close(fd);
		return e;
	}
	return fd;
}

/* The application's handler thread: every missing page gets the pattern. */
static void *handler(void *arg)
{
	uint64_t *page = aligned_alloc(PG, PG);

	(void)arg;
	if (!page) {
		atomic_store(&handler_error, ENOMEM);
		return NULL;
	}
	for (;;) {
		struct pollfd pfd[2] = { { uffd, POLLIN, 0 },
					 { stop_pipe[0], POLLIN, 0 } };
		struct uffdio_copy copy;
		struct uffd_msg msg;
		uintptr_t addr;
		size_t first;

		if (poll(pfd, 2, -1) < 0)
			continue;
		if (pfd[1].revents)
			break;
		if (read(uffd, &msg, sizeof(msg)) != sizeof(msg))
			continue;
		if (msg.event != UFFD_EVENT_PAGEFAULT) {
			atomic_store(&handler_error, 1000 + msg.event);
			continue;
		}
		addr = (uintptr_t)msg.arg.pagefault.address & ~(PG - 1);
		first = (addr - (uintptr_t)range) / 8;
		for (size_t i = 0; i < PG / 8; i++)
			page[i] = (first + i) ^ SEED;
		copy.dst = addr;
		copy.src = (uintptr_t)page;
		copy.len = PG;
		copy.mode = 0;
		copy.copy = 0;
		/* Counted before the copy: the copy wakes the faulting
		 * thread, which may look at the count at once. */
		atomic_fetch_add(&served, 1);
		if (ioctl(uffd, UFFDIO_COPY, &copy) != 0) {
			atomic_fetch_sub(&served, 1);
			if (errno != EEXIST)
				atomic_store(&handler_error, errno);
		}
	}
	free(page);
	return NULL;
}

/* Index of the first wrong word of @buf, a copy of range pages from @pg. */
static long mismatch(const uint64_t *buf, size_t pg, size_t npages)
{
	size_t first = pg * (PG / 8);

	for (size_t i = 0; i < npages * (PG / 8); i++)
		if (buf[i] != ((first + i) ^ SEED))
			return (long)i;
	return -1;
}

static void dmirror_read(int fd, unsigned long req, const char *name,
			 size_t pg, uint64_t *buf)
{
	struct hmm_dmirror_cmd cmd = {
		.addr = (uintptr_t)(range + pg * PG),
		.ptr = (uintptr_t)buf,
		.npages = QUARTER,
	};
	int before = atomic_load(&served);
	long i;

	CHECK(ioctl(fd, req, &cmd) == 0, "dmirror %s: %s", name,
	      strerror(errno));
	CHECK(cmd.cpages == QUARTER, "dmirror %s: cpages %lu, want %d", name,
	      (unsigned long)cmd.cpages, QUARTER);
	i = mismatch(buf, pg, QUARTER);
	CHECK(i == -1, "dmirror %s: word %ld is %#lx, not the handler's", name,
	      i, (unsigned long)buf[i]);
	CHECK(atomic_load(&served) - before == QUARTER,
	      "dmirror %s: the handler served %d pages, want %d", name,
	      atomic_load(&served) - before, QUARTER);
}

int main(void)
{
	struct uffdio_register reg;
	struct uffdio_range ur;
	hmm_device_t *dev;
	uint64_t *buf;
	pthread_t th;
	long moved, i;
	int r, fd, before;

	PLAIN_NEED_HMM();
	uffd = open_uffd();
	if (uffd < 0)
		SKIP("the application cannot get a userfaultfd: %s",
		     strerror(-uffd));
	range = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(range != MAP_FAILED, "mmap: %s", strerror(errno));
	reg.range.start = (uintptr_t)range;
	reg.range.len = LEN;
	reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	CHECK(ioctl(uffd, UFFDIO_REGISTER, &reg) == 0, "UFFDIO_REGISTER: %s",
	      strerror(errno));
	CHECK(pipe(stop_pipe) == 0, "pipe");
	r = pthread_create(&th, NULL, handler, NULL);
	CHECK(r == 0, "pthread_create: %s", strerror(r));
	buf = malloc(LEN);
	CHECK(buf, "malloc");

	/* Adoption is refused and changes nothing. */
	r = hmm_range_adopt(range, LEN, 0);
	CHECK(r == -EBUSY, "hmm_range_adopt of a range registered with the "
			   "application's userfaultfd = %d, want -EBUSY", r);
	r = hmm_range_adopt(range + PG, PG, 0);
	CHECK(r == -EBUSY, "hmm_range_adopt of one page of it = %d", r);
	for (size_t pg = 0; pg < NPAGES; pg++)
		CHECK(hmm_page_location(range + pg * PG, NULL) ==
		      HMM_LOC_UNMANAGED, "page %zu is managed after a "
		      "refused adoption", pg);
	CHECK(atomic_load(&served) == 0, "the refused adoption touched %d "
		      "pages", atomic_load(&served));

	/* First quarter: the sim device reads it. */
	r = hmm_device_open("sim", NULL, &dev);
	CHECK(r == 0, "hmm_device_open(sim) = %d", r);
	r = hmm_sim_read(dev, range, buf, QUARTER * PG, NULL);
	CHECK(r == 0, "hmm_sim_read of the application's range = %d", r);
	i = mismatch(buf, 0, QUARTER);
	CHECK(i == -1, "hmm_sim_read: word %ld is %#lx, not the handler's", i,
	      (unsigned long)buf[i]);
	CHECK(atomic_load(&served) == QUARTER,
	      "hmm_sim_read: the handler served %d pages, want %d",
	      atomic_load(&served), QUARTER);

	/* Second and third quarters: dmirror READ_UNLOCKED and READ. */
	fd = open("/dev/hmm_dmirror0", O_RDWR | O_CLOEXEC);
	CHECK(fd >= 0, "open /dev/hmm_dmirror0: %s", strerror(errno));
	dmirror_read(fd, HMM_DMIRROR_READ_UNLOCKED, "READ_UNLOCKED", QUARTER,
		     buf);
	dmirror_read(fd, HMM_DMIRROR_READ, "READ", 2 * QUARTER, buf);

	/* Last quarter: the CPU; the range is still the application's. */
	before = atomic_load(&served);
	i = mismatch((uint64_t *)(range + 3 * QUARTER * PG), 3 * QUARTER,
		     QUARTER);
	CHECK(i == -1, "CPU read: word %ld wrong", i);
	CHECK(atomic_load(&served) - before == QUARTER,
	      "CPU read: the handler served %d pages, want %d",
	      atomic_load(&served) - before, QUARTER);
	CHECK(atomic_load(&handler_error) == 0, "the handler saw error %d",
	      atomic_load(&handler_error));
	r = hmm_range_adopt(range, LEN, 0);
	CHECK(r == -EBUSY, "hmm_range_adopt again = %d, want -EBUSY", r);

	/* Released by the application, the range can be adopted. */
	ur.start = (uintptr_t)range;
	ur.len = LEN;
	CHECK(ioctl(uffd, UFFDIO_UNREGISTER, &ur) == 0, "UFFDIO_UNREGISTER: %s",
	      strerror(errno));
	r = hmm_range_adopt(range, LEN, 0);
	CHECK(r == 0, "hmm_range_adopt after the application unregistered = "
		      "%d", r);
	moved = hmm_migrate(range, LEN, dev, 0);
	CHECK(moved == NPAGES, "hmm_migrate = %ld", moved);
	i = mismatch((uint64_t *)range, 0, NPAGES);
	CHECK(i == -1, "after adopt + migrate: word %ld wrong", i);

	CHECK(write(stop_pipe[1], "x", 1) == 1, "write");
	pthread_join(th, NULL);
	close(fd);
	free(buf);
	printf("foreign_userfaultfd: ok\n");
	return 0;
}
