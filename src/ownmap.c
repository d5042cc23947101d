/* SPDX-License-Identifier: MIT */
/*
 * libhmm's own mappings: device pools, bounce buffers, aliases of shared
 * memory, the stacks of its threads.
 *
 * They live among the application's mappings, and may land in a hole the
 * application made inside a range it reserved (an mremap out of a
 * PROT_NONE reservation, say).  Programs then release the whole
 * reservation with one munmap, or madvise or mprotect it, unaware that
 * someone else mapped into the hole.  libhmm's wrappers of those calls
 * leave these mappings alone: a device's memory must not vanish under it.
 */
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#define OWN_MAX 512

static pthread_mutex_t own_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	uintptr_t start, end;
} own[OWN_MAX];			/* own_lock; unsorted, few entries */
static size_t nown;		/* own_lock */
static atomic_size_t own_count;	/* nown, for the lock-free fast path */

void hmm__own_add(void *p, size_t len)
{
	pthread_mutex_lock(&own_lock);
	if (nown < OWN_MAX) {
		own[nown].start = (uintptr_t)p;
		own[nown].end = (uintptr_t)p + len;
		nown++;
		atomic_store(&own_count, nown);
	}
	pthread_mutex_unlock(&own_lock);
}

static void own_del(void *p, size_t len)
{
	uintptr_t s = (uintptr_t)p, e = s + len;

	pthread_mutex_lock(&own_lock);
	for (size_t i = 0; i < nown; i++) {
		if (own[i].start == s && own[i].end == e) {
			own[i] = own[--nown];
			break;
		}
	}
	atomic_store(&own_count, nown);
	pthread_mutex_unlock(&own_lock);
}

void *hmm__mmap_own(size_t len, int prot, int flags, int fd, off_t off)
{
	void *p = mmap(NULL, len, prot, flags, fd, off);

	if (p != MAP_FAILED)
		hmm__own_add(p, len);
	return p;
}

void *hmm__mmap_own_aligned(size_t len)
{
	size_t over = len + HMM_BLOCK_SIZE;
	char *raw = mmap(NULL, over, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	uintptr_t a;

	if (raw == MAP_FAILED)
		return MAP_FAILED;
	a = ((uintptr_t)raw + HMM_BLOCK_SIZE - 1) & ~(HMM_BLOCK_SIZE - 1);
	if (a > (uintptr_t)raw)
		hmm__sys_munmap(raw, a - (uintptr_t)raw);
	hmm__sys_munmap((char *)a + len, (uintptr_t)raw + over - (a + len));
	hmm__own_add((void *)a, len);
	return (void *)a;
}

void hmm__munmap_own(void *p, size_t len)
{
	own_del(p, len);
	hmm__sys_munmap(p, len);
}

int hmm__outside_own(uintptr_t s, uintptr_t e,
		     int (*fn)(uintptr_t s, uintptr_t e, void *arg), void *arg)
{
	uintptr_t cut[OWN_MAX][2];
	size_t n = 0;
	int ret = 0;

	if (atomic_load_explicit(&own_count, memory_order_relaxed) == 0)
		return fn(s, e, arg);
	pthread_mutex_lock(&own_lock);
	for (size_t i = 0; i < nown; i++) {
		if (own[i].end <= s || own[i].start >= e)
			continue;
		cut[n][0] = own[i].start;
		cut[n][1] = own[i].end;
		n++;
	}
	pthread_mutex_unlock(&own_lock);
	if (n == 0)
		return fn(s, e, arg);
	/* Sort the (few) overlapping mappings, then visit the gaps. */
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j > 0 && cut[j][0] < cut[j - 1][0]; j--) {
			uintptr_t t0 = cut[j][0], t1 = cut[j][1];
			cut[j][0] = cut[j - 1][0];
			cut[j][1] = cut[j - 1][1];
			cut[j - 1][0] = t0;
			cut[j - 1][1] = t1;
		}
	hmm__debug("a call over [%#lx, %#lx) spares %zu of libhmm's mappings",
		   (unsigned long)s, (unsigned long)e, n);
	for (size_t i = 0; i <= n && !ret; i++) {
		uintptr_t gs = i == 0 ? s : HMM_MAX(s, cut[i - 1][1]);
		uintptr_t ge = i == n ? e : HMM_MIN(e, cut[i][0]);
		if (gs < ge)
			ret = fn(gs, ge, arg);
	}
	return ret;
}

/* ---- threads --------------------------------------------------------- */

#define STACK_SIZE (1UL << 20)	/* reserved; touched pages only count */
#define STACK_GUARD HMM_PAGE_SIZE

int hmm__thread_create(struct hmm_thread *t, void *(*fn)(void *), void *arg,
		       const char *name)
{
	pthread_attr_t attr;
	int ret = hmm__inject(HMM_INJ_THREAD_CREATE);

	if (ret)
		return ret;
	t->stack = hmm__mmap_own(STACK_SIZE, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK |
					 MAP_NORESERVE, -1, 0);
	if (t->stack == MAP_FAILED) {
		t->stack = NULL;
		return -ENOMEM;
	}
	/* A guard page below the stack (straight to the kernel: the
	 * wrapper would spare libhmm's own mapping). */
	syscall(SYS_mprotect, t->stack, STACK_GUARD, PROT_NONE);
	pthread_attr_init(&attr);
	pthread_attr_setstack(&attr, (char *)t->stack + STACK_GUARD,
			      STACK_SIZE - STACK_GUARD);
	/* Born with every signal blocked (the thread unblocks the fault
	 * signals itself): a signal pending for the process must not run the
	 * application's handler on a thread of libhmm in between. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	ret = -pthread_create(&t->th, &attr, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (!ret)
		pthread_setname_np(t->th, name); /* at most 15 characters */
	if (ret) {
		hmm__munmap_own(t->stack, STACK_SIZE);
		t->stack = NULL;
	}
	return ret;
}

int hmm__thread_respawn(struct hmm_thread *t, void *(*fn)(void *), void *arg,
			const char *name)
{
	/* The parent's stack stays mapped (reserved address space; its few
	 * touched pages are copies shared with the parent): a thread created
	 * later on a stack at the same address would reuse the parent
	 * thread's id, which ThreadSanitizer, remembering the parent's
	 * threads in the child, takes for a bug. */
	t->stack = NULL;
	return hmm__thread_create(t, fn, arg, name);
}

void hmm__thread_join(struct hmm_thread *t)
{
	pthread_join(t->th, NULL);
	if (t->stack)
		hmm__munmap_own(t->stack, STACK_SIZE);
	t->stack = NULL;
}
