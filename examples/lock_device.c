/* SPDX-License-Identifier: MIT */
/*
 * Locking memory to a device: hmm_range_lock moves a range into a
 * device's memory and keeps it there.  Until hmm_range_unlock, the device
 * uses the pages as usual, while a CPU load or store in the range raises
 * SIGBUS in the thread that made it (si_code BUS_ADRERR, si_addr the
 * address touched) and a system call given a pointer into it fails with
 * EFAULT.
 *
 * The program catches the SIGBUS with a handler that jumps back
 * (sigsetjmp/siglongjmp), prints what the signal said, checks that the
 * device could still work on the locked range, then unlocks it and reads
 * the device's data on the CPU.
 *
 * Exit status 0 when every check passes, 1 otherwise, 77 when this machine
 * offers no userfaultfd or no userfaultfd SIGBUS mode.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#define PAGES 16
#define LEN (PAGES * HMM_PAGE_SIZE)

static int failures;

#define CHECK(cond, ...)                                              \
	do {                                                          \
		if (!(cond)) {                                        \
			fprintf(stderr, "lock_device: FAIL: " __VA_ARGS__); \
			fputc('\n', stderr);                          \
			failures++;                                   \
		}                                                     \
	} while (0)

/* What the SIGBUS handler saw, and where it jumps back to. */
static sigjmp_buf touch_env;
static volatile sig_atomic_t touching;
static volatile int got_code;
static void *volatile got_addr;

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (!touching) {
		/* Not one of ours: die of it as without a handler. */
		signal(sig, SIG_DFL);
		raise(sig);
		return;
	}
	got_code = si->si_code;
	got_addr = si->si_addr;
	siglongjmp(touch_env, 1);
}

/* Load one word at @p: 0 if the load worked, 1 if it raised SIGBUS. */
static int touch(volatile uint64_t *p, uint64_t *out)
{
	if (sigsetjmp(touch_env, 1)) {
		touching = 0;
		return 1;
	}
	touching = 1;
	*out = *p;
	touching = 0;
	return 0;
}

int main(void)
{
	struct sigaction sa;
	hmm_device_t *dev;
	uint64_t *buf, v = 0;
	int ret, fds[2];
	long n;

	ret = hmm_init();
	if (ret == -EPERM || ret == -ENOSYS || ret == -ENOENT ||
	    ret == -EOPNOTSUPP) {
		fprintf(stderr, "lock_device: skipped: hmm_init: %s\n",
			strerror(-ret));
		return 77;
	}
	if (ret) {
		fprintf(stderr, "lock_device: hmm_init: %s\n", strerror(-ret));
		return 1;
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigbus;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, NULL) || pipe(fds)) {
		perror("lock_device: setup");
		return 1;
	}

	/* Managed memory from libhmm, filled by the CPU. */
	ret = hmm_mem_alloc(LEN, 0, (void **)&buf);
	if (ret) {
		fprintf(stderr, "lock_device: hmm_mem_alloc: %s\n",
			strerror(-ret));
		return 1;
	}
	for (size_t i = 0; i < LEN / sizeof(*buf); i++)
		buf[i] = i;
	ret = hmm_device_open("sim", NULL, &dev);
	if (ret) {
		fprintf(stderr, "lock_device: hmm_device_open: %s\n",
			strerror(-ret));
		return 1;
	}

	ret = hmm_range_lock(buf, LEN, dev);
	if (ret == -EOPNOTSUPP) {
		fprintf(stderr, "lock_device: skipped: this kernel's "
				"userfaultfd has no SIGBUS mode\n");
		return 77;
	}
	CHECK(ret == 0, "hmm_range_lock: %s", strerror(-ret));
	if (ret)
		return 1;

	/* The CPU may not touch it: the load raises SIGBUS. */
	volatile uint64_t *p = &buf[HMM_PAGE_SIZE / sizeof(*buf) * 3 + 5];
	ret = touch(p, &v);
	CHECK(ret == 1, "a CPU load in a locked range worked");
	CHECK(got_code == BUS_ADRERR, "si_code %d, not BUS_ADRERR", got_code);
	CHECK(got_addr == (void *)p, "si_addr %p, not %p", got_addr,
	      (void *)p);
	printf("CPU load at %p: SIGBUS, si_code %s, si_addr %p\n", (void *)p,
	       got_code == BUS_ADRERR ? "BUS_ADRERR" : "other", got_addr);

	/* Neither may the kernel on the program's behalf. */
	errno = 0;
	n = write(fds[1], buf, 64);
	CHECK(n == -1 && errno == EFAULT, "write() from a locked range: %ld "
	      "(%s)", n, strerror(errno));
	printf("write() from the locked range: %s\n", strerror(errno));

	/* The device goes on using it: a device write, then a device read. */
	ret = hmm_sim_fill64(dev, buf, 42, LEN, NULL);
	CHECK(ret == 0, "device write to its locked range: %s",
	      strerror(-ret));
	ret = hmm_sim_read(dev, (const void *)p, &v, sizeof(v), NULL);
	CHECK(ret == 0 && v == 42, "device read: %s, %lu", strerror(-ret),
	      (unsigned long)v);
	CHECK(hmm_page_location(buf, NULL) == HMM_LOC_DEVICE,
	      "a locked page is not on the device");

	/* Unlocked, the pages are ordinary device-resident pages: the CPU
	 * load brings the page home with the device's data. */
	n = hmm_range_unlock(buf, LEN, dev);
	CHECK(n == PAGES, "hmm_range_unlock unlocked %ld pages", n);
	ret = touch(p, &v);
	CHECK(ret == 0 && v == 42, "after unlock: %s, value %lu",
	      ret ? "SIGBUS" : "loaded", (unsigned long)v);
	printf("after hmm_range_unlock: CPU load reads %lu\n",
	       (unsigned long)v);

	ret = hmm_mem_free(buf, LEN);
	CHECK(ret == 0, "hmm_mem_free: %s", strerror(-ret));
	ret = hmm_device_close(dev);
	CHECK(ret == 0, "hmm_device_close: %s", strerror(-ret));
	printf("lock_device: %s\n", failures ? "FAILED" : "ok");
	return failures ? 1 : 0;
}
