/* SPDX-License-Identifier: MIT */
/*
 * userfaultfd: opening it with what this process may have, probing the
 * features, and the ioctls.  errno is turned into -errno here, once.
 */
#include <fcntl.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "compat.h"
#include "internal.h"

/* Features libhmm asks for; the ones marked required must be granted. */
#define UFFD_WANTED                                                          \
	(UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP |              \
	 UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_MISSING_SHMEM |             \
	 UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM |  \
	 UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_THREAD_ID |                 \
	 UFFD_FEATURE_MOVE)
#define UFFD_REQUIRED                                                        \
	(UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP |              \
	 UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_MISSING_SHMEM)

static int open_syscall(int flags)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | flags);
	return fd < 0 ? -errno : fd;
}

static int open_dev(void)
{
	int dfd = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	int fd;

	if (dfd < 0)
		return -errno;
	fd = ioctl(dfd, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	fd = fd < 0 ? -errno : fd;
	close(dfd);
	return fd;
}

/* The UFFDIO_API handshake: first ask what exists, then ask for it. */
static int handshake(int fd, uint64_t *features)
{
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	uint64_t avail;
	int inj = hmm__inject(HMM_INJ_UFFD_API);

	if (inj)
		return inj;
	if (ioctl(fd, UFFDIO_API, &api))
		return -errno;
	avail = api.features;
	if ((avail & UFFD_REQUIRED) != UFFD_REQUIRED) {
		hmm__warn("userfaultfd lacks required features (have %#llx, "
			  "need %#llx)", (unsigned long long)avail,
			  (unsigned long long)UFFD_REQUIRED);
		return -EOPNOTSUPP;
	}
	/* A second UFFDIO_API on the same descriptor fails: reopen. */
	*features = avail & UFFD_WANTED;
	return 0;
}

static int enable(int fd, uint64_t features)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };

	if (ioctl(fd, UFFDIO_API, &api))
		return -errno;
	return 0;
}

/* How the main descriptor was opened (0 syscall, 1 user-mode-only,
 * 2 /dev/userfaultfd): the SIGBUS descriptor is opened the same way. */
static int open_method = -1;

static int open_by(int method)
{
	return method == 0   ? open_syscall(0)
	       : method == 1 ? open_syscall(UFFD_USER_MODE_ONLY)
			     : open_dev();
}

int hmm__uffd_open_sigbus(int *out)
{
	const uint64_t want = UFFD_FEATURE_SIGBUS | UFFD_FEATURE_EVENT_REMOVE |
			      UFFD_FEATURE_EVENT_UNMAP |
			      UFFD_FEATURE_EVENT_REMAP |
			      UFFD_FEATURE_MISSING_SHMEM;
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	int fd, ret;

	if (open_method < 0)
		return -ESHUTDOWN;
	fd = open_by(open_method);
	if (fd < 0)
		return fd;
	ret = ioctl(fd, UFFDIO_API, &api) ? -errno : 0;
	close(fd);
	if (ret)
		return ret;
	if ((api.features & want) != want) {
		hmm__warn("userfaultfd has no SIGBUS mode here: ranges cannot "
			  "be locked to a device");
		return -EOPNOTSUPP;
	}
	fd = open_by(open_method);
	if (fd < 0)
		return fd;
	ret = enable(fd, want);
	if (ret) {
		close(fd);
		return ret;
	}
	*out = fd;
	return 0;
}

int hmm__uffd_open(int *out, uint64_t *features, unsigned int *caps)
{
	int fd, ret, user_mode = 0;
	uint64_t f = 0;
	bool force_user = hmm__option(HMM_OPT_FORCE_USER_MODE) != 0;

	/* Probe on a throw-away descriptor, then enable on the real one. */
	for (int attempt = force_user ? 1 : 0; attempt < 3; attempt++) {
		fd = open_by(attempt);
		if (fd < 0) {
			ret = fd;
			continue;
		}
		ret = handshake(fd, &f);
		close(fd);
		if (ret)
			return ret;
		fd = open_by(attempt);
		if (fd < 0)
			return fd;
		ret = enable(fd, f);
		if (ret) {
			close(fd);
			return ret;
		}
		user_mode = attempt == 1;
		open_method = attempt;
		goto done;
	}
	if (ret == -EPERM || ret == -EACCES) {
		hmm__warn("no userfaultfd for this process: "
			  "vm.unprivileged_userfaultfd is 0, UFFD_USER_MODE_ONLY "
			  "was refused and /dev/userfaultfd is not readable");
		return -EPERM;
	}
	return ret;
done:
	*out = fd;
	*features = f;
	*caps = (user_mode ? 0 : HMM_CAP_KERNEL_FAULTS) | HMM_CAP_EVENTS;
	if (f & UFFD_FEATURE_PAGEFAULT_FLAG_WP)
		*caps |= HMM_CAP_WP;
	if (f & UFFD_FEATURE_MOVE)
		*caps |= HMM_CAP_MOVE;
	if (f & UFFD_FEATURE_MINOR_SHMEM)
		*caps |= HMM_CAP_MINOR_SHMEM;
	if (user_mode)
		hmm__info("userfaultfd in user-mode-only mode: system calls "
			  "touching device-resident pages fail with EFAULT");
	return 0;
}

/* UFFDIO_REGISTER of [start, start + len) in @mode. */
static int register_mode(int fd, uintptr_t start, size_t len, uint64_t mode)
{
	struct uffdio_register reg = {
		.range = { .start = start, .len = len },
		.mode = mode,
	};
	int inj = hmm__inject(HMM_INJ_UFFD_REGISTER);

	if (inj)
		return inj;
	if (ioctl(fd, UFFDIO_REGISTER, &reg))
		return -errno;
	return 0;
}

int hmm__uffd_register(int fd, uintptr_t start, size_t len, bool wp)
{
	return register_mode(fd, start, len,
			     UFFDIO_REGISTER_MODE_MISSING |
				     (wp ? UFFDIO_REGISTER_MODE_WP : 0));
}

int hmm__uffd_register_wp(int fd, uintptr_t start, size_t len)
{
	return register_mode(fd, start, len, UFFDIO_REGISTER_MODE_WP);
}

int hmm__uffd_register_minor(int fd, uintptr_t start, size_t len)
{
	return register_mode(fd, start, len, UFFDIO_REGISTER_MODE_MINOR);
}

/*
 * The answer of a filling ioctl (UFFDIO_COPY, ZEROPAGE, CONTINUE) that
 * returned @rc over @len bytes, *@done being the bytes it reports done
 * before a failure: pages filled (maybe short), or -errno.
 */
static long mfill_result(int rc, size_t len, const __s64 *done)
{
	if (rc == 0)
		return (long)(len >> HMM_PAGE_SHIFT);
	if (errno == EAGAIN)
		hmm__stat_add(HMM_STAT_uffd_eagain, 1);
	if (*done > 0)
		return (long)((size_t)*done >> HMM_PAGE_SHIFT);
	return -errno;
}

long hmm__uffd_continue(int fd, uintptr_t start, size_t len, bool dontwake)
{
	struct uffdio_continue c = {
		.range = { .start = start, .len = len },
		.mode = dontwake ? UFFDIO_CONTINUE_MODE_DONTWAKE : 0,
	};
	int inj = hmm__inject(HMM_INJ_UFFD_COPY);

	if (inj)
		return inj;
	return mfill_result(ioctl(fd, UFFDIO_CONTINUE, &c), len, &c.mapped);
}

int hmm__uffd_unregister(int fd, uintptr_t start, size_t len)
{
	struct uffdio_range r = { .start = start, .len = len };
	int inj = hmm__inject(HMM_INJ_UFFD_UNREGISTER);

	if (inj)
		return inj;
	if (ioctl(fd, UFFDIO_UNREGISTER, &r))
		return -errno;
	return 0;
}

long hmm__uffd_copy(int fd, uintptr_t dst, const void *src, size_t len,
		    bool wp, bool dontwake)
{
	struct uffdio_copy c = {
		.dst = dst, .src = (uintptr_t)src, .len = len,
		.mode = (wp ? UFFDIO_COPY_MODE_WP : 0) |
			(dontwake ? UFFDIO_COPY_MODE_DONTWAKE : 0),
	};

	int inj = hmm__inject(HMM_INJ_UFFD_COPY);

	if (inj)
		return inj;
	/* c.copy holds bytes done before the failure, or -errno. */
	return mfill_result(ioctl(fd, UFFDIO_COPY, &c), len, &c.copy);
}

long hmm__uffd_zeropage(int fd, uintptr_t dst, size_t len)
{
	struct uffdio_zeropage z = { .range = { .start = dst, .len = len } };

	int inj = hmm__inject(HMM_INJ_UFFD_ZEROPAGE);

	if (inj)
		return inj;
	return mfill_result(ioctl(fd, UFFDIO_ZEROPAGE, &z), len, &z.zeropage);
}

long hmm__uffd_move(int fd, uintptr_t dst, uintptr_t src, size_t len,
		    bool holes)
{
	struct uffdio_move m = {
		.dst = dst, .src = src, .len = len,
		.mode = UFFDIO_MOVE_MODE_DONTWAKE |
			(holes ? UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES : 0),
	};
	int inj = hmm__inject(HMM_INJ_UFFD_MOVE);

	if (inj)
		return inj;
	if (ioctl(fd, UFFDIO_MOVE, &m) == 0)
		return (long)len;
	if (errno == EAGAIN)
		hmm__stat_add(HMM_STAT_uffd_eagain, 1);
	/* m.move holds bytes moved before the failure, or -errno. */
	if (m.move > 0)
		return m.move;
	return -errno;
}

/*
 * A thread parked in a fault sleeps until it is woken: a wake that fails
 * (the kernel gives ENOMEM or EINVAL only for ranges libhmm never passes)
 * is tried again before it is reported.
 */
int hmm__uffd_wake(int fd, uintptr_t start, size_t len)
{
	struct uffdio_range r = { .start = start, .len = len };
	int ret = 0;

	for (int tries = 0; tries < 3; tries++) {
		ret = hmm__inject(HMM_INJ_UFFD_WAKE);
		if (!ret && ioctl(fd, UFFDIO_WAKE, &r))
			ret = -errno;
		if (!ret)
			return 0;
	}
	hmm__warn("UFFDIO_WAKE of [%#lx, %#lx) failed: %s",
		  (unsigned long)start, (unsigned long)(start + len),
		  strerror(-ret));
	return ret;
}

int hmm__uffd_writeprotect(int fd, uintptr_t start, size_t len, bool wp)
{
	struct uffdio_writeprotect w = {
		.range = { .start = start, .len = len },
		.mode = wp ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};

	int inj = hmm__inject(HMM_INJ_UFFD_WRITEPROTECT);

	if (inj)
		return inj;
	if (ioctl(fd, UFFDIO_WRITEPROTECT, &w)) {
		if (errno == EAGAIN)
			hmm__stat_add(HMM_STAT_uffd_eagain, 1);
		return -errno;
	}
	return 0;
}
