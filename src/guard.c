/* SPDX-License-Identifier: MIT */
/*
 * Guarded accesses (see internal.h), and the application's SIGSEGV and
 * SIGBUS handlers.
 *
 * libhmm's handler is installed once, for SIGSEGV and SIGBUS, with
 * SA_NODEFER so that a guard can trip again after a siglongjmp without
 * restoring the signal mask.  A fault outside a guard goes to the
 * application's handler, or gets the default action.
 *
 * The application's handler is whatever it installed before libhmm's or
 * installs after: libhmm defines sigaction() and signal(), and while its
 * handler is in place they record the application's handler for these two
 * signals (and report it back as the current one) instead of replacing
 * libhmm's.  So a program that installs its own SIGSEGV handler after
 * libhmm started keeps both working.  Other signals, and every call made
 * while libhmm's handler is not installed, go to libc.  The library's
 * destructor (process exit, or dlclose) puts the application's handlers
 * back in the kernel.
 */
#include <dlfcn.h>
#include <string.h>
#include <ucontext.h>

#include "internal.h"

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);

static __thread struct hmm_guard *guard_top;
static pthread_mutex_t guard_lock = PTHREAD_MUTEX_INITIALIZER;
static bool installed;		/* guard_lock; read racily by the wrappers */
static int guard_err;

/*
 * The application's handlers, read by the signal handler without a lock:
 * a writer fills the slot not in use, then publishes its index.
 */
struct app_handlers {
	struct sigaction act[2];
	atomic_int cur;
};
static struct app_handlers app_segv, app_bus; /* writers hold guard_lock */

static struct app_handlers *app_of(int sig)
{
	return sig == SIGSEGV ? &app_segv : &app_bus;
}

static void app_get(int sig, struct sigaction *out)
{
	struct app_handlers *a = app_of(sig);

	*out = a->act[atomic_load_explicit(&a->cur, memory_order_acquire)];
}

static void app_set(int sig, const struct sigaction *act)
{
	struct app_handlers *a = app_of(sig);
	int next = !atomic_load_explicit(&a->cur, memory_order_relaxed);

	a->act[next] = *act;
	atomic_store_explicit(&a->cur, next, memory_order_release);
}

/* libc's sigaction, behind ours. */
static sigaction_fn real_sigaction(void)
{
	static _Atomic(sigaction_fn) fn;
	sigaction_fn f = atomic_load_explicit(&fn, memory_order_acquire);

	if (!f) {
		f = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
		if (!f)
			f = (sigaction_fn)dlsym(RTLD_DEFAULT, "__sigaction");
		atomic_store_explicit(&fn, f, memory_order_release);
	}
	return f;
}

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

/* A fault that is not libhmm's: the application's handler, or death. */
static void chain(int sig, siginfo_t *si, void *uc)
{
	struct sigaction app;
	sigset_t old;

	app_get(sig, &app);
	/* libhmm's own threads never run the application's handlers: a
	 * fault there outside a guard is a bug of libhmm's, and fatal. */
	if (!hmm__own_thread &&
	    ((app.sa_flags & SA_SIGINFO) ? app.sa_sigaction != NULL
					  : (app.sa_handler != SIG_DFL &&
					     app.sa_handler != SIG_IGN))) {
		if (app.sa_flags & SA_RESETHAND) {
			struct sigaction dfl = { .sa_handler = SIG_DFL };
			app_set(sig, &dfl);
		}
		/* The mask the application asked for while its handler runs
		 * (if it jumps out, its sigsetjmp decides the mask). */
		pthread_sigmask(SIG_BLOCK, &app.sa_mask, &old);
		if (app.sa_flags & SA_SIGINFO)
			app.sa_sigaction(sig, si, uc);
		else
			app.sa_handler(sig);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		return;
	}
	/* Default action (a synchronous fault cannot be ignored): restore
	 * it and let the access fault again. */
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	real_sigaction()(sig, &dfl, NULL);
}

static void guard_handler(int sig, siginfo_t *si, void *uc)
{
	struct hmm_guard *g;

	/* A range that hmm_range_lock/unlock is switching over is PROT_NONE
	 * for a moment: wait for it, and run the access again (libhmm's own
	 * guarded accesses too: the moment is not a failure). */
	if (sig == SIGSEGV && si->si_code == SEGV_ACCERR &&
	    hmm__lock_transition_wait((uintptr_t)si->si_addr))
		return;
	/* A page of a file mapping that lives on a device (PROT_NONE): it
	 * comes back here, in the faulting thread, and the access runs
	 * again -- libhmm's own guarded accesses too (a device fault's touch
	 * of such a page is a CPU access, as with userfaultfd).  errno is the
	 * application's. */
	if (sig == SIGSEGV && si->si_code == SEGV_ACCERR) {
		int saved = errno;
		bool write = false;
#if defined(__x86_64__)
		write = ((ucontext_t *)uc)->uc_mcontext.gregs[REG_ERR] & 2;
#endif
		bool done = hmm__file_prot_fault((uintptr_t)si->si_addr, write);
		errno = saved;
		if (done)
			return;
	}
	g = guard_top;
	if (g && g->armed) {
		g->signo = sig;
		g->code = si->si_code;
		g->addr = (uintptr_t)si->si_addr;
		siglongjmp(g->jb, 1);
	}
	chain(sig, si, uc);
}

int hmm__guard_install(void)
{
	struct sigaction sa, old_segv, old_bus;
	sigaction_fn real = real_sigaction();

	pthread_mutex_lock(&guard_lock);
	if (installed || guard_err || !real) {
		int ret = real ? guard_err : -ENOSYS;
		pthread_mutex_unlock(&guard_lock);
		return ret;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = guard_handler;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	if (real(SIGSEGV, &sa, &old_segv) || real(SIGBUS, &sa, &old_bus)) {
		guard_err = -errno;
	} else {
		app_set(SIGSEGV, &old_segv);
		app_set(SIGBUS, &old_bus);
		__atomic_store_n(&installed, true, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&guard_lock);
	return guard_err;
}

void hmm__guard_uninstall(void)
{
	struct sigaction a;

	pthread_mutex_lock(&guard_lock);
	if (installed) {
		__atomic_store_n(&installed, false, __ATOMIC_RELEASE);
		app_get(SIGSEGV, &a);
		real_sigaction()(SIGSEGV, &a, NULL);
		app_get(SIGBUS, &a);
		real_sigaction()(SIGBUS, &a, NULL);
	}
	pthread_mutex_unlock(&guard_lock);
}

/* ---- the application's calls ------------------------------------------- */

static bool ours(int sig)
{
	return (sig == SIGSEGV || sig == SIGBUS) &&
	       __atomic_load_n(&installed, __ATOMIC_ACQUIRE);
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *oldact)
{
	sigaction_fn real;

	if (ours(sig)) {
		pthread_mutex_lock(&guard_lock);
		if (installed) {
			if (oldact)
				app_get(sig, oldact);
			if (act)
				app_set(sig, act);
			pthread_mutex_unlock(&guard_lock);
			return 0;
		}
		pthread_mutex_unlock(&guard_lock);
	}
	real = real_sigaction();
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	return real(sig, act, oldact);
}

sighandler_t signal(int sig, sighandler_t handler)
{
	struct sigaction act, old;

	/* glibc's signal(): BSD semantics. */
	memset(&act, 0, sizeof(act));
	act.sa_handler = handler;
	act.sa_flags = SA_RESTART;
	sigemptyset(&act.sa_mask);
	sigaddset(&act.sa_mask, sig);
	if (sig <= 0 || sig >= NSIG || sigaction(sig, &act, &old)) {
		errno = EINVAL;
		return SIG_ERR;
	}
	return old.sa_handler; /* shares its storage with sa_sigaction */
}
