/* SPDX-License-Identifier: MIT */
/*
 * Touching memory that may fault, for the tests: probe() makes the access
 * and returns 0, or the signal the test's own handler caught (it calls
 * probe_caught, which records the details and jumps back into probe).
 * Each test program keeps its handler, which decides what an unexpected
 * signal (none probing in this thread) does.
 */
#ifndef HMM_TESTS_PROBE_H
#define HMM_TESTS_PROBE_H

#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

struct caught {
	int signo, code;
	uintptr_t addr;
	pid_t tid;
};

static __thread sigjmp_buf *volatile probe_jb; /* the handler reads it */
static __thread struct caught probe_got;

/* From the handler, when probe_jb is set: record and jump back. */
__attribute__((noreturn, unused)) static void probe_caught(int sig,
							   siginfo_t *si)
{
	probe_got.signo = sig;
	probe_got.code = si->si_code;
	probe_got.addr = (uintptr_t)si->si_addr;
	probe_got.tid = (pid_t)syscall(SYS_gettid);
	siglongjmp(*probe_jb, 1);
}

/* Touch @p (a read into *@out if set, or a write of @v): 0 if it worked,
 * else the signal (details in *@got if set). */
__attribute__((unused)) static int probe(volatile uint64_t *p, bool write,
					 uint64_t v, uint64_t *out,
					 struct caught *got)
{
	sigjmp_buf jb;

	memset(&probe_got, 0, sizeof(probe_got));
	if (sigsetjmp(jb, 1)) {
		probe_jb = NULL;
		if (got)
			*got = probe_got;
		return probe_got.signo;
	}
	probe_jb = &jb;
	if (write)
		*p = v;
	else if (out)
		*out = *p;
	else
		(void)*p;
	probe_jb = NULL;
	return 0;
}

#endif
