/* SPDX-License-Identifier: MIT */
/*
 * What the two libFuzzer harnesses share: the input reader, and an arena of
 * pages the harness owns, with a model of each page (mapped or not, its
 * protection, what kind of memory) and a shadow copy of its contents.
 *
 * The arena is reserved once, at a fixed address far below where mmap puts
 * anything, so that holes the harness punches in it stay holes.  Each input
 * starts from a fresh layout and ends with everything it mapped unmapped
 * again (reset/cleanup), so that one input never sees another's state.
 * Pages are only ever touched by the CPU where the model says they are
 * readable (or writable), so a model that goes wrong shows up as an
 * invariant failure, never as a stray SIGSEGV.
 *
 * An invariant that fails calls FZ_FAIL: a message, then abort(), which is
 * what libFuzzer records as a crash.
 */
#ifndef HMM_FUZZ_COMMON_H
#define HMM_FUZZ_COMMON_H

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <hmm/hmm.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define PG 4096UL
#define AR_PAGES 128			/* pages of the arena */
#define AR_HINT 0x3f0000000000UL	/* far from mmap's top-down search */

__attribute__((format(printf, 1, 2), noreturn))
static inline void fz_fail(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "\n==FUZZ INVARIANT== ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	abort();
}
#define FZ_FAIL(...) fz_fail(__VA_ARGS__)

/* ------------------------------------------------------------------ */
/* Input                                                               */
/* ------------------------------------------------------------------ */

struct fz_in {
	const uint8_t *p;
	size_t n;
};

static inline uint8_t in8(struct fz_in *in)
{
	if (!in->n)
		return 0;
	in->n--;
	return *in->p++;
}

static inline uint16_t in16(struct fz_in *in)
{
	return (uint16_t)(in8(in) | in8(in) << 8);
}

static inline uint32_t in32(struct fz_in *in)
{
	return (uint32_t)in16(in) | (uint32_t)in16(in) << 16;
}

static inline uint64_t in64(struct fz_in *in)
{
	return (uint64_t)in32(in) | (uint64_t)in32(in) << 32;
}

/* ------------------------------------------------------------------ */
/* Arena model                                                         */
/* ------------------------------------------------------------------ */

enum fz_kind {
	K_HOLE = 0,	/* unmapped by the harness */
	K_FOREIGN,	/* was a hole, now somebody else's: never touched */
	K_PRIV,		/* MAP_PRIVATE | MAP_ANONYMOUS */
	K_SHARED,	/* MAP_SHARED | MAP_ANONYMOUS */
	K_DEVSHM,	/* hmm_dmirror_mmap, MAP_SHARED (a memfd) */
	K_DEVPRIV,	/* hmm_dmirror_mmap, MAP_PRIVATE */
};

struct fz_page {
	uint8_t kind;	/* enum fz_kind */
	uint8_t prot;	/* PROT_* when mapped */
	uint8_t known;	/* shadow holds the contents */
};

static char *ar;			/* the arena */
static struct fz_page pg[AR_PAGES];
static uint8_t *shadow;			/* AR_PAGES * PG bytes */
static uint64_t fz_rng = 0x9e3779b97f4a7c15ULL;

static inline uint64_t fz_rand(void)
{
	fz_rng ^= fz_rng << 13;
	fz_rng ^= fz_rng >> 7;
	fz_rng ^= fz_rng << 17;
	return fz_rng;
}

static inline bool k_mapped(int i)
{
	return pg[i].kind >= K_PRIV;
}

static inline bool k_readable(int i)
{
	return k_mapped(i) && (pg[i].prot & PROT_READ);
}

static inline bool k_writable(int i)
{
	return k_mapped(i) && pg[i].prot == (PROT_READ | PROT_WRITE);
}

/* Mapped with PROT_WRITE but not PROT_READ: outcomes not modelled. */
static inline bool k_odd(int i)
{
	return k_mapped(i) && pg[i].prot == PROT_WRITE;
}

static inline char *pa(int i)
{
	return ar + (size_t)i * PG;
}

/* The arena page holding @addr, or -1. */
static inline int page_of(uintptr_t addr)
{
	uintptr_t a = (uintptr_t)ar;

	if (addr < a || addr >= a + AR_PAGES * PG)
		return -1;
	return (int)((addr - a) / PG);
}

static inline bool run_has_foreign(int first, int n)
{
	for (int i = first; i < first + n; i++)
		if (pg[i].kind == K_FOREIGN)
			return true;
	return false;
}

/* Clip a run [first, first + n) to the arena. */
static inline void clip(int *first, int *n)
{
	if (*first < 0)
		*first = 0;
	if (*first >= AR_PAGES)
		*first = AR_PAGES - 1;
	if (*n < 1)
		*n = 1;
	if (*first + *n > AR_PAGES)
		*n = AR_PAGES - *first;
}

static inline void fz_arena_init(void)
{
	ar = mmap((void *)AR_HINT, AR_PAGES * PG, PROT_NONE,
		  MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (ar == MAP_FAILED)
		ar = mmap(NULL, AR_PAGES * PG, PROT_NONE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ar == MAP_FAILED)
		FZ_FAIL("cannot reserve the arena: %s", strerror(errno));
	shadow = calloc(AR_PAGES, PG);
	if (!shadow)
		FZ_FAIL("no memory for the shadow");
	for (int i = 0; i < AR_PAGES; i++)
		pg[i] = (struct fz_page){ K_PRIV, PROT_NONE, 1 };
}

/* Claim hole pages [first, first + n) again with a PROT_NONE mapping;
 * pages somebody else took become K_FOREIGN. */
static inline void reclaim(int first, int n)
{
	if (mmap(pa(first), (size_t)n * PG, PROT_NONE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) ==
	    pa(first)) {
		for (int i = first; i < first + n; i++)
			pg[i] = (struct fz_page){ K_PRIV, PROT_NONE, 1 };
		memset(shadow + (size_t)first * PG, 0, (size_t)n * PG);
		return;
	}
	for (int i = first; i < first + n; i++) {
		void *r = mmap(pa(i), PG, PROT_NONE,
			       MAP_PRIVATE | MAP_ANONYMOUS |
				       MAP_FIXED_NOREPLACE, -1, 0);
		if (r == pa(i)) {
			pg[i] = (struct fz_page){ K_PRIV, PROT_NONE, 1 };
			memset(shadow + (size_t)i * PG, 0, PG);
		} else {
			if (r != MAP_FAILED)
				munmap(r, PG); /* an old kernel's hint */
			pg[i].kind = K_FOREIGN;
		}
	}
}

/* Unmap everything of ours (through libc: libhmm's wrapper), then reserve
 * it again PROT_NONE. */
static inline void fz_arena_cleanup(void)
{
	for (int i = 0; i < AR_PAGES;) {
		int j = i;
		while (j < AR_PAGES && pg[j].kind != K_FOREIGN)
			j++;
		if (j > i) {
			if (munmap(pa(i), (size_t)(j - i) * PG))
				FZ_FAIL("cleanup: munmap(%p, %d pages): %s",
					(void *)pa(i), j - i, strerror(errno));
			for (int k = i; k < j; k++)
				pg[k].kind = K_HOLE;
			reclaim(i, j - i);
		}
		i = j + 1;
	}
}

/* Map [first, first + n) with @prot and @kind (K_PRIV or K_SHARED) in
 * place of whatever of ours is there.  Returns false if it could not. */
static inline bool fz_map(int first, int n, int prot, int kind)
{
	int flags = (kind == K_SHARED ? MAP_SHARED : MAP_PRIVATE) |
		    MAP_ANONYMOUS | MAP_FIXED_NOREPLACE;

	if (run_has_foreign(first, n))
		return false;
	/* libhmm wraps munmap, not mmap: replace through munmap first. */
	if (munmap(pa(first), (size_t)n * PG))
		FZ_FAIL("munmap(%p, %d pages) of our own pages: %s",
			(void *)pa(first), n, strerror(errno));
	for (int i = first; i < first + n; i++)
		pg[i].kind = K_HOLE;
	if (mmap(pa(first), (size_t)n * PG, prot, flags, -1, 0) != pa(first)) {
		reclaim(first, n);
		return false;
	}
	for (int i = first; i < first + n; i++)
		pg[i] = (struct fz_page){ (uint8_t)kind, (uint8_t)prot, 1 };
	memset(shadow + (size_t)first * PG, 0, (size_t)n * PG);
	return true;
}

static inline void fz_unmap(int first, int n)
{
	if (run_has_foreign(first, n))
		return;
	if (munmap(pa(first), (size_t)n * PG))
		FZ_FAIL("munmap(%p, %d pages): %s", (void *)pa(first), n,
			strerror(errno));
	for (int i = first; i < first + n; i++)
		pg[i].kind = K_HOLE;
}

static const int fz_prots[4] = { PROT_NONE, PROT_READ, PROT_READ | PROT_WRITE,
				 PROT_WRITE };

/* mprotect a run that is entirely mapped (a partial one would leave the
 * kernel's result unknown: it stops at the hole). */
static inline void fz_mprotect(int first, int n, int prot)
{
	for (int i = first; i < first + n; i++)
		if (!k_mapped(i))
			return;
	if (mprotect(pa(first), (size_t)n * PG, prot))
		FZ_FAIL("mprotect(%p, %d pages, %d) of mapped pages: %s",
			(void *)pa(first), n, prot, strerror(errno));
	for (int i = first; i < first + n; i++)
		pg[i].prot = (uint8_t)prot;
}

static const int fz_advice[8] = { MADV_DONTNEED, MADV_FREE, MADV_REMOVE,
				  MADV_WILLNEED, MADV_COLD, MADV_PAGEOUT,
				  MADV_DONTNEED, MADV_POPULATE_WRITE };

/* madvise over a mapped run; the shadow follows what the advice does to
 * each kind of memory. */
static inline void fz_madvise(int first, int n, int advice)
{
	int ret;

	for (int i = first; i < first + n; i++)
		if (!k_mapped(i))
			return;
	ret = madvise(pa(first), (size_t)n * PG, advice);
	for (int i = first; i < first + n; i++) {
		bool zero = false, unknown = false;
		switch (advice) {
		case MADV_DONTNEED:
			/* Private pages fall back to the zero page (or
			 * the memfd's, zero too); shared ones keep data. */
			zero = pg[i].kind == K_PRIV || pg[i].kind == K_DEVPRIV;
			break;
		case MADV_REMOVE:
			zero = pg[i].kind == K_SHARED || pg[i].kind == K_DEVSHM;
			break;
		case MADV_FREE:
			/* Zero or not, at the kernel's choice, later. */
			unknown = pg[i].kind == K_PRIV || pg[i].kind == K_DEVPRIV;
			break;
		default:
			break;
		}
		if (ret && (zero || unknown))
			unknown = true, zero = false;
		if (zero)
			memset(shadow + (size_t)i * PG, 0, PG);
		if (unknown)
			pg[i].known = 0;
	}
	if (ret && (advice == MADV_DONTNEED || advice == MADV_COLD ||
		    advice == MADV_WILLNEED))
		FZ_FAIL("madvise(%p, %d pages, %d) of mapped pages: %s",
			(void *)pa(first), n, advice, strerror(errno));
}

/* The CPU writes a pattern over every writable page of the run. */
static inline void fz_cpu_write(int first, int n, uint64_t seed)
{
	fz_rng ^= seed | 1;
	for (int i = first; i < first + n; i++) {
		uint64_t w[PG / 8];
		if (!k_writable(i))
			continue;
		for (size_t k = 0; k < PG / 8; k++)
			w[k] = (k & 7) ? fz_rand() : (uint64_t)i << 32 | k;
		memcpy(pa(i), w, PG);
		memcpy(shadow + (size_t)i * PG, w, PG);
		pg[i].known = 1;
	}
}

/* The CPU reads every readable page of the run whose contents are known
 * and compares it with the shadow. */
static inline void fz_cpu_check(int first, int n, const char *when)
{
	for (int i = first; i < first + n; i++) {
		const uint8_t *a = (const uint8_t *)pa(i);
		const uint8_t *s = shadow + (size_t)i * PG;
		if (!k_readable(i) || !pg[i].known)
			continue;
		if (memcmp(a, s, PG)) {
			size_t k = 0;
			while (a[k] == s[k])
				k++;
			FZ_FAIL("%s: page %d (%p) kind %d prot %d: byte %zu "
				"is 0x%02x, expected 0x%02x (location %d)",
				when, i, (void *)a, pg[i].kind, pg[i].prot, k,
				a[k], s[k], hmm_page_location(a, NULL));
		}
	}
}

/* A starting layout from one byte: runs of 8 pages, each private or
 * shared, with one of the protections; most of them read/write. */
static inline void fz_arena_reset(uint64_t layout)
{
	for (int r = 0; r < AR_PAGES / 8; r++) {
		unsigned b = (unsigned)(layout >> ((r * 2) & 63)) & 3;
		int prot = b == 3 ? PROT_READ : PROT_READ | PROT_WRITE;
		int kind = (r & 1) && (layout & 1) ? K_SHARED : K_PRIV;
		if (r >= 12 && b == 0)
			continue; /* stays reserved, PROT_NONE */
		if (b == 2 && r >= 8) {
			fz_unmap(r * 8, 8);
			continue;
		}
		fz_map(r * 8, 8, prot, kind);
	}
}

/* One of the operations on the arena itself, from the input. */
static inline void fz_arena_op(struct fz_in *in, unsigned op)
{
	int first = in8(in) % AR_PAGES, n = 1 + in8(in) % 16;

	clip(&first, &n);
	switch (op % 6) {
	case 0:
		fz_map(first, n, fz_prots[in8(in) & 3],
		       (in8(in) & 1) ? K_SHARED : K_PRIV);
		break;
	case 1:
		fz_unmap(first, n);
		break;
	case 2:
		fz_mprotect(first, n, fz_prots[in8(in) & 3]);
		break;
	case 3:
		fz_madvise(first, n, fz_advice[in8(in) & 7]);
		break;
	case 4:
		fz_cpu_write(first, n, in64(in));
		break;
	default:
		fz_cpu_check(first, n, "cpu check");
		break;
	}
}

/*
 * Known libhmm bugs, reported and saved in fuzz/regressions/, that would
 * otherwise stop every run at once: with HMM_FUZZ_KNOWN=1 in the
 * environment the harnesses let them pass, so that fuzzing can look for
 * other ones.  Each use names its bug.
 */
static inline bool fz_known(void)
{
	static int k = -1;

	if (k < 0) {
		const char *e = getenv("HMM_FUZZ_KNOWN");
		k = e && *e && *e != '0';
	}
	return k;
}

/* Errno lists: whether -@ret is one of @codes (0-terminated). */
static inline bool err_in(long ret, const int *codes)
{
	for (; *codes; codes++)
		if (ret == -*codes)
			return true;
	return false;
}

#endif /* HMM_FUZZ_COMMON_H */
