/* SPDX-License-Identifier: MIT */
/*
 * libhmm-dmirror.so: run programs written for the kernel's HMM test driver
 * unchanged.  Preloaded (LD_PRELOAD, or build/hmm-run), it answers
 * open("/dev/hmm_dmirror0".."3") with a descriptor of its own (a memfd
 * named after the device) bound to a libhmm dmirror, and serves ioctl,
 * mmap and close on those descriptors.  Every other path, descriptor and
 * request goes to the kernel untouched.
 *
 * The wrappers reach the kernel with syscall(2) directly, so they need no
 * dlsym and work from the first call, constructors included.  The library
 * also carries libhmm itself, whose mprotect/munmap/mremap/madvise wrappers
 * keep the mirrors exact for the program's own calls.
 *
 * Limits: descriptors made by dup/dup2/fcntl(F_DUPFD) of a dmirror
 * descriptor, or numbered 4096 and above, are not recognised (the open
 * fails with EMFILE in the second case); after exec the descriptor is an
 * empty memfd.
 */
/* Define open and open64 (mmap and mmap64) each under its own name. */
#undef _FILE_OFFSET_BITS
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "hmm/hmm_dmirror.h"

/* libhmm's mmap, which this library's replaces (src/file.c). */
void *hmm__mmap(void *addr, size_t len, int prot, int flags, int fd,
		off_t off);

#define HMM_PUBLIC __attribute__((visibility("default")))
#define MAX_FDS 4096

/* Mirrors by descriptor.  Set by open, cleared by close, read anywhere. */
static _Atomic(hmm_dmirror_t *) fd_table[MAX_FDS];
static atomic_int nopen; /* dmirror descriptors ever opened: fast path */

static hmm_dmirror_t *lookup(int fd)
{
	if (atomic_load_explicit(&nopen, memory_order_relaxed) == 0 || fd < 0 ||
	    fd >= MAX_FDS)
		return NULL;
	return atomic_load_explicit(&fd_table[fd], memory_order_acquire);
}

/* Device number if @path names a dmirror device, else -1. */
static int dmirror_number(const char *path)
{
	size_t n = sizeof(HMM_DMIRROR_PATH) - 1;

	if (!path || strncmp(path, HMM_DMIRROR_PATH, n) != 0 ||
	    path[n] < '0' || path[n] > '9' || path[n + 1] != '\0')
		return -1;
	return path[n] - '0';
}

static int open_dmirror(int devno, int flags)
{
	char name[] = "hmm_dmirrorN";
	hmm_dmirror_t *m;
	int fd, ret;

	name[sizeof(name) - 2] = (char)('0' + devno);
	if (devno >= HMM_DMIRROR_NDEVICES) {
		errno = ENOENT; /* like a device node that does not exist */
		return -1;
	}
	fd = (int)syscall(SYS_memfd_create, name,
			  (flags & O_CLOEXEC) ? MFD_CLOEXEC : 0);
	if (fd < 0)
		return -1;
	if (fd >= MAX_FDS) {
		syscall(SYS_close, fd);
		errno = EMFILE;
		return -1;
	}
	ret = hmm_dmirror_open((unsigned)devno, &m);
	if (ret) {
		syscall(SYS_close, fd);
		errno = -ret;
		return -1;
	}
	atomic_fetch_add(&nopen, 1);
	atomic_store_explicit(&fd_table[fd], m, memory_order_release);
	return fd;
}

static int do_openat(int dirfd, const char *path, int flags, mode_t mode)
{
	int devno = dmirror_number(path);

	if (devno >= 0)
		return open_dmirror(devno, flags);
	return (int)syscall(SYS_openat, dirfd, path, flags, mode);
}

/* The mode argument is there only with O_CREAT or O_TMPFILE. */
#define MODE_ARG(flags, mode)                                               \
	do {                                                                \
		if ((flags) & (O_CREAT | __O_TMPFILE)) {                    \
			va_list ap;                                         \
			va_start(ap, flags);                                \
			mode = (mode_t)va_arg(ap, int);                     \
			va_end(ap);                                         \
		}                                                           \
	} while (0)

HMM_PUBLIC int open(const char *path, int flags, ...)
{
	mode_t mode = 0;

	MODE_ARG(flags, mode);
	return do_openat(AT_FDCWD, path, flags, mode);
}

HMM_PUBLIC int open64(const char *path, int flags, ...)
{
	mode_t mode = 0;

	MODE_ARG(flags, mode);
	return do_openat(AT_FDCWD, path, flags, mode);
}

HMM_PUBLIC int openat(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = 0;

	MODE_ARG(flags, mode);
	return do_openat(dirfd, path, flags, mode);
}

HMM_PUBLIC int openat64(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = 0;

	MODE_ARG(flags, mode);
	return do_openat(dirfd, path, flags, mode);
}

/* _FORTIFY_SOURCE entry points (no mode argument). */
HMM_PUBLIC int __open_2(const char *path, int flags)
{
	return do_openat(AT_FDCWD, path, flags, 0);
}

HMM_PUBLIC int __open64_2(const char *path, int flags)
{
	return do_openat(AT_FDCWD, path, flags, 0);
}

HMM_PUBLIC int __openat_2(int dirfd, const char *path, int flags)
{
	return do_openat(dirfd, path, flags, 0);
}

HMM_PUBLIC int __openat64_2(int dirfd, const char *path, int flags)
{
	return do_openat(dirfd, path, flags, 0);
}

HMM_PUBLIC int ioctl(int fd, unsigned long request, ...)
{
	hmm_dmirror_t *m = lookup(fd);
	va_list ap;
	void *arg;
	int ret;

	va_start(ap, request);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (!m)
		return (int)syscall(SYS_ioctl, fd, request, arg);
	ret = hmm_dmirror_ioctl(m, request, arg);
	if (ret < 0) {
		errno = -ret;
		return -1;
	}
	return ret;
}

HMM_PUBLIC void *mmap(void *addr, size_t len, int prot, int flags, int fd,
		      off_t off)
{
	hmm_dmirror_t *m = (flags & MAP_ANONYMOUS) ? NULL : lookup(fd);

	if (m)
		return hmm_dmirror_mmap(m, addr, len, prot, flags);
	/* libhmm's own mmap (this definition replaces it in the preload
	 * library): a MAP_FIXED over managed file ranges writes back. */
	return hmm__mmap(addr, len, prot, flags, fd, off);
}

HMM_PUBLIC void *mmap64(void *addr, size_t len, int prot, int flags, int fd,
			off_t off)
{
	return mmap(addr, len, prot, flags, fd, off);
}

HMM_PUBLIC int close(int fd)
{
	hmm_dmirror_t *m = NULL;

	if (lookup(fd))
		m = atomic_exchange(&fd_table[fd], NULL);
	if (m)
		hmm_dmirror_close(m);
	return (int)syscall(SYS_close, fd);
}
