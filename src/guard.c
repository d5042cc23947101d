/* SPDX-License-Identifier: MIT */
/*
 * Guarded accesses (see internal.h).  The handler is installed once, for
 * SIGSEGV and SIGBUS, with SA_NODEFER so that a guard can trip again after a
 * siglongjmp without restoring the signal mask.  A fault outside a guard is
 * handed to the handler that was installed before libhmm's, or gets the
 * default action.
 */
#include <string.h>

#include "internal.h"

static __thread struct hmm_guard *guard_top;
static struct sigaction old_segv, old_bus;
static pthread_once_t guard_once = PTHREAD_ONCE_INIT;
static int guard_err;

void hmm__guard_arm(struct hmm_guard *g)
{
	g->prev = guard_top;
	g->signo = 0;
	g->armed = 1;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	guard_top = g;
}

void hmm__guard_end(struct hmm_guard *g)
{
	g->armed = 0;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	guard_top = g->prev;
}

static void chain(int sig, siginfo_t *si, void *uc)
{
	const struct sigaction *old = sig == SIGSEGV ? &old_segv : &old_bus;

	if (old->sa_flags & SA_SIGINFO) {
		if (old->sa_sigaction) {
			old->sa_sigaction(sig, si, uc);
			return;
		}
	} else if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) {
		old->sa_handler(sig);
		return;
	}
	/* Default action: restore it and let the access fault again. */
	signal(sig, SIG_DFL);
}

static void guard_handler(int sig, siginfo_t *si, void *uc)
{
	struct hmm_guard *g = guard_top;

	if (g && g->armed) {
		g->signo = sig;
		g->code = si->si_code;
		g->addr = (uintptr_t)si->si_addr;
		siglongjmp(g->jb, 1);
	}
	chain(sig, si, uc);
}

static void install(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = guard_handler;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGSEGV, &sa, &old_segv) ||
	    sigaction(SIGBUS, &sa, &old_bus))
		guard_err = -errno;
}

int hmm__guard_install(void)
{
	pthread_once(&guard_once, install);
	return guard_err;
}
