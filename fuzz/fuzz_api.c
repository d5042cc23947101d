/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness over the argument checking of the public API:
 * hmm_range_adopt/release, hmm_mem_alloc/free, hmm_migrate,
 * hmm_page_location, hmm_device_open/close/mem_usage, hmm_range_fault,
 * hmm_file_adopt/hmm_file_sync
 * (with the harness's interval notifier or none), the hmm_sim_* commands,
 * hmm_option_set/get and hmm_interval_notifier_insert.
 *
 * Each call gets fuzzed pointers, lengths and flags over the arena of
 * fuzz_common.h (holes, PROT_NONE, read-only, shared, unaligned) or over
 * addresses that are never mapped.  The harness checks that every call
 * returns 0 / a count or a code its header documents (the exact one where
 * the arena model predicts it), that a failed call changes nothing
 * (page locations before and after, contents through the shadow), and that
 * what succeeds did what it says (locations after a migration, data read
 * by the device, the notifier called when the CPU side changes).
 */
#include <unistd.h>

#include <hmm/hmm_driver.h>
#include <hmm/hmm_sim.h>

#include "fuzz_common.h"

#define MAX_STEPS 40
#define NDEV 2
#define NCLOSED 16

static hmm_device_t *devs[NDEV];
static size_t dev_pages[NDEV];		/* mem_size / PG, 0 if default */
static hmm_device_t *closed[NCLOSED];	/* closed handles stay valid */
static int nclosed;

static const uint64_t bad_addrs[] = {
	0, 0x1000, 0x7000, 0x7ffffffff000ULL,
};

/* ------------------------------------------------------------------ */
/* The harness's own notifier over the arena                           */
/* ------------------------------------------------------------------ */

static struct hmm_interval_notifier nt;
static unsigned long nt_calls;

static bool nt_invalidate(struct hmm_interval_notifier *sub,
			  const struct hmm_notifier_range *r,
			  unsigned long cur_seq)
{
	if (r->start >= r->end || (r->start | r->end) & (PG - 1))
		FZ_FAIL("notifier called with [%#lx, %#lx)",
			(unsigned long)r->start, (unsigned long)r->end);
	hmm_interval_set_seq(sub, cur_seq);
	__atomic_add_fetch(&nt_calls, 1, __ATOMIC_RELAXED);
	return true;
}

static const struct hmm_interval_notifier_ops nt_ops = {
	.invalidate = nt_invalidate,
};

/* ------------------------------------------------------------------ */
/* Locations                                                           */
/* ------------------------------------------------------------------ */

struct locsnap {
	int loc[AR_PAGES];
	hmm_device_t *dev[AR_PAGES];
};

static void snap_locs(struct locsnap *s)
{
	for (int i = 0; i < AR_PAGES; i++) {
		s->dev[i] = NULL;
		s->loc[i] = pg[i].kind == K_FOREIGN
				    ? 0
				    : hmm_page_location(pa(i), &s->dev[i]);
		if (s->loc[i] < 0 || s->loc[i] > HMM_LOC_MIGRATING ||
		    (s->loc[i] == HMM_LOC_DEVICE) != (s->dev[i] != NULL))
			FZ_FAIL("hmm_page_location(page %d) = %d, device %p", i,
				s->loc[i], (void *)s->dev[i]);
		if (s->loc[i] == HMM_LOC_MIGRATING)
			FZ_FAIL("page %d is migrating with nothing running", i);
		if (!k_mapped(i) && pg[i].kind != K_FOREIGN &&
		    s->loc[i] != HMM_LOC_UNMANAGED)
			FZ_FAIL("unmapped page %d is still managed (location "
				"%d)", i, s->loc[i]);
	}
}

enum { SAME, MAY_GO_HOME, MAY_MOVE_TO };

/*
 * After a failed call: SAME (nothing moved), MAY_GO_HOME (device pages
 * may have come back: faults), MAY_MOVE_TO (pages of [first, first + n)
 * may be at @target, NULL meaning system memory; others may have been
 * evicted from @target to make room).
 */
static void check_locs(const struct locsnap *b, int how, int first, int n,
		       hmm_device_t *target, const char *what, long ret)
{
	struct locsnap a;

	snap_locs(&a);
	for (int i = 0; i < AR_PAGES; i++) {
		bool in = i >= first && i < first + n;
		if (a.loc[i] == b->loc[i] && a.dev[i] == b->dev[i])
			continue;
		if (how == MAY_GO_HOME && b->loc[i] == HMM_LOC_DEVICE &&
		    a.loc[i] == HMM_LOC_SYSTEM)
			continue;
		if (how == MAY_MOVE_TO && in &&
		    (target ? a.dev[i] == target : a.loc[i] == HMM_LOC_SYSTEM))
			continue;
		if (how == MAY_MOVE_TO && target && b->dev[i] == target &&
		    a.loc[i] == HMM_LOC_SYSTEM)
			continue;
		FZ_FAIL("%s = %ld: page %d went from location %d (device %p) "
			"to %d (device %p)", what, ret, i, b->loc[i],
			(void *)b->dev[i], a.loc[i], (void *)a.dev[i]);
	}
}

/* Contents of pages the CPU reaches without a fault that moves data. */
static void check_contents_home(const char *what)
{
	for (int i = 0; i < AR_PAGES; i++) {
		int loc;
		if (!k_readable(i) || !pg[i].known)
			continue;
		loc = hmm_page_location(pa(i), NULL);
		if (loc == HMM_LOC_DEVICE || loc == HMM_LOC_MIGRATING)
			continue;
		if (memcmp(pa(i), shadow + (size_t)i * PG, PG))
			fz_cpu_check(i, 1, what);
	}
}

/* ------------------------------------------------------------------ */
/* Arguments                                                           */
/* ------------------------------------------------------------------ */

/* A page-granular range: in the arena, or a bad one. */
struct rng {
	uintptr_t addr;
	size_t len;
	bool einval;		/* unaligned, empty or overflowing */
	bool arena;		/* [first, first + n) of the arena */
	int first, n;
};

static void pick_range(struct fz_in *in, struct rng *r, int maxn)
{
	unsigned mode = in8(in) % 16;

	memset(r, 0, sizeof(*r));
	r->first = in8(in) % AR_PAGES;
	r->n = 1 + in8(in) % maxn;
	clip(&r->first, &r->n);
	r->addr = (uintptr_t)pa(r->first);
	r->len = (size_t)r->n * PG;
	r->arena = true;
	switch (mode) {
	case 12:
		r->addr += 1 + in16(in) % (PG - 1);
		r->einval = r->arena = true;
		break;
	case 13:
		r->len += 1 + in16(in) % (PG - 1);
		r->einval = true;
		break;
	case 14:
		r->len = 0;
		r->einval = true;
		break;
	case 15:
		r->arena = false;
		r->addr = bad_addrs[in8(in) & 3];
		if (in8(in) & 1) {
			r->addr = ~(uintptr_t)0 - PG * (in8(in) + 1ULL) + 1;
			r->len = SIZE_MAX & ~(PG - 1);
			r->einval = true;
		}
		break;
	}
	if (r->einval)
		r->arena = r->arena && !(r->addr & (PG - 1)) && r->len;
}

static bool range_foreign(const struct rng *r)
{
	return r->arena && run_has_foreign(r->first, r->n);
}

static hmm_device_t *pick_dev(struct fz_in *in, int *kind)
{
	unsigned s = in8(in) % 8;

	if (s < 2 * NDEV && devs[s % NDEV]) {
		*kind = 0;
		return devs[s % NDEV];
	}
	if (s == 6 && nclosed) {
		*kind = 1;
		return closed[in8(in) % nclosed];
	}
	*kind = 2;
	return NULL;
}

static int dev_slot(hmm_device_t *d)
{
	for (int s = 0; s < NDEV; s++)
		if (d && devs[s] == d)
			return s;
	return -1;
}

static void check_mem_usage(hmm_device_t *d)
{
	size_t used = 0, total = 0, want = 0;
	int s = dev_slot(d), ret;

	ret = hmm_device_mem_usage(d, &used, &total);
	if (ret)
		FZ_FAIL("hmm_device_mem_usage of an open device = %d", ret);
	for (int i = 0; i < AR_PAGES; i++) {
		hmm_device_t *pd = NULL;
		if (pg[i].kind != K_FOREIGN &&
		    hmm_page_location(pa(i), &pd) == HMM_LOC_DEVICE && pd == d)
			want++;
	}
	if (used != want || used > total ||
	    (s >= 0 && dev_pages[s] && total != dev_pages[s]))
		FZ_FAIL("hmm_device_mem_usage: used %zu total %zu; the arena "
			"has %zu pages on it, opened with %zu pages", used,
			total, want, s >= 0 ? dev_pages[s] : 0);
}

/* ------------------------------------------------------------------ */
/* Managed memory                                                      */
/* ------------------------------------------------------------------ */

static void do_adopt(struct fz_in *in)
{
	static const int ok[] = { EINVAL, EFAULT, EEXIST, EOPNOTSUPP, EBUSY,
				  ENOMEM, 0 };
	struct rng r;
	struct locsnap b;
	unsigned flags = (in8(in) & 7) == 7 ? in32(in) | 1 : 0;
	int want = 0, ret;
	bool shared = false;

	pick_range(in, &r, 32);
	if (range_foreign(&r))
		return;
	if (r.einval || flags) {
		want = -EINVAL;
	} else if (!r.arena) {
		want = -EFAULT;
	} else {
		for (int i = r.first; i < r.first + r.n && !want; i++) {
			if (!k_mapped(i) || pg[i].prot == PROT_NONE)
				want = -EFAULT;
			else if (k_odd(i) || pg[i].kind == K_SHARED)
				shared = true;
		}
		for (int i = r.first; i < r.first + r.n && !want && !shared;
		     i++)
			if (hmm_page_location(pa(i), NULL) != HMM_LOC_UNMANAGED)
				want = -EEXIST;
		if (shared && want != -EFAULT)
			want = 1; /* depends on how the VMAs lie */
		if (want == -EFAULT) {
			/* The first vma in order decides with shared ones. */
			for (int i = r.first; i < r.first + r.n; i++) {
				if (!k_mapped(i) || pg[i].prot == PROT_NONE)
					break;
				if (pg[i].kind == K_SHARED)
					want = 1;
			}
		}
	}
	snap_locs(&b);
	ret = hmm_range_adopt((void *)r.addr, r.len, flags);
	if (ret && !err_in(ret, ok))
		FZ_FAIL("hmm_range_adopt = %d: not documented", ret);
	if (want != 1 && ret != want)
		FZ_FAIL("hmm_range_adopt(%#lx [page %d], %zu, %#x) = %d, "
			"expected %d", (unsigned long)r.addr, r.first, r.len,
			flags, ret, want);
	if (ret) {
		check_locs(&b, SAME, 0, 0, NULL, "hmm_range_adopt", ret);
	} else {
		for (int i = r.first; i < r.first + r.n; i++)
			if (hmm_page_location(pa(i), NULL) != HMM_LOC_SYSTEM)
				FZ_FAIL("adopted page %d is not in system "
					"memory", i);
		fz_cpu_check(r.first, r.n, "contents after hmm_range_adopt");
	}
}

static void do_release(struct fz_in *in)
{
	static const int ok[] = { EINVAL, ENOENT, ENOMEM, 0 };
	struct rng r;
	struct locsnap b;
	int want = 0, ret;

	pick_range(in, &r, 32);
	if (range_foreign(&r))
		return;
	if (r.einval) {
		want = -EINVAL;
	} else if (!r.arena) {
		want = -ENOENT;
	} else {
		for (int i = r.first; i < r.first + r.n && !want; i++)
			if (hmm_page_location(pa(i), NULL) == HMM_LOC_UNMANAGED)
				want = -ENOENT;
		for (int i = r.first; i < r.first + r.n && !want; i++)
			if (pg[i].kind == K_SHARED)
				want = 1; /* one shared mapping at a time */
	}
	snap_locs(&b);
	ret = hmm_range_release((void *)r.addr, r.len);
	if (ret && !err_in(ret, ok))
		FZ_FAIL("hmm_range_release = %d: not documented", ret);
	if (want != 1 && ret != want)
		FZ_FAIL("hmm_range_release(%#lx [page %d], %zu) = %d, expected "
			"%d", (unsigned long)r.addr, r.first, r.len, ret, want);
	if (ret) {
		check_locs(&b, SAME, 0, 0, NULL, "hmm_range_release", ret);
		return;
	}
	for (int i = r.first; i < r.first + r.n; i++)
		if (hmm_page_location(pa(i), NULL) != HMM_LOC_UNMANAGED)
			FZ_FAIL("released page %d is still managed", i);
	/* The data came home with the release. */
	fz_cpu_check(r.first, r.n, "contents after hmm_range_release");
}

static void do_migrate(struct fz_in *in)
{
	static const int ok[] = { EINVAL, EFAULT, ENOENT, ENOMEM, ENODEV, EIO,
				  EBUSY, 0 };
	struct rng r;
	struct locsnap b;
	int dk;
	hmm_device_t *d = pick_dev(in, &dk);
	unsigned flags = (in8(in) & 15) == 15 ? in32(in) | 1 : 0;
	long want = 0, ret, moves = 0;

	pick_range(in, &r, 64);
	if (range_foreign(&r))
		return;
	snap_locs(&b);
	if (r.einval || flags) {
		want = -EINVAL;
	} else if (dk == 1) {
		want = -ENODEV;
	} else if (!r.arena) {
		want = -ENOENT;
	} else {
		for (int i = r.first; i < r.first + r.n && !want; i++)
			if (b.loc[i] == HMM_LOC_UNMANAGED)
				want = -ENOENT;
		for (int i = r.first; i < r.first + r.n && !want; i++)
			if (pg[i].prot == PROT_NONE)
				want = -EFAULT;
		for (int i = r.first; i < r.first + r.n; i++)
			moves += d ? b.dev[i] != d : b.loc[i] == HMM_LOC_DEVICE;
		if (!want && d && dev_pages[dev_slot(d)])
			want = 1; /* small device memory: ENOMEM or evictions */
	}
	ret = hmm_migrate((void *)r.addr, r.len, d, flags);
	if (ret < 0 && !err_in(ret, ok))
		FZ_FAIL("hmm_migrate = %ld: not documented", ret);
	if (want != 1 && !(want == 0 && ret >= 0) && ret != want)
		FZ_FAIL("hmm_migrate(%#lx [page %d], %zu, dev %p, %#x) = %ld, "
			"expected %ld", (unsigned long)r.addr, r.first, r.len,
			(void *)d, flags, ret, want);
	if (ret < 0) {
		check_locs(&b, r.arena && !r.einval && !flags && dk != 1
				       ? MAY_MOVE_TO : SAME,
			   r.first, r.n, d, "hmm_migrate", ret);
		check_contents_home("contents after a failed hmm_migrate");
		return;
	}
	if (ret != moves)
		FZ_FAIL("hmm_migrate(%d pages from page %d, dev %p) moved %ld, "
			"%ld were elsewhere", r.n, r.first, (void *)d, ret,
			moves);
	for (int i = r.first; i < r.first + r.n; i++) {
		hmm_device_t *pd = NULL;
		int loc = hmm_page_location(pa(i), &pd);
		if (d ? pd != d : loc != HMM_LOC_SYSTEM)
			FZ_FAIL("hmm_migrate to %p succeeded but page %d is at "
				"%d (device %p)", (void *)d, i, loc, (void *)pd);
	}
	if (d)
		check_mem_usage(d);
}

/* hmm_prefetch_start + wait: hmm_migrate's outcome, later. */
static void do_prefetch(struct fz_in *in)
{
	static const int ok[] = { EINVAL, EFAULT, ENOENT, ENOMEM, ENODEV, EIO,
				  EBUSY, ECANCELED, 0 };
	struct rng r;
	int dk;
	hmm_device_t *d = pick_dev(in, &dk);
	unsigned flags = (in8(in) & 15) == 15 ? 1 : 0;
	hmm_prefetch_t *pf = NULL;
	long ret;

	pick_range(in, &r, 64);
	if (range_foreign(&r))
		return;
	ret = hmm_prefetch_start((void *)r.addr, r.len, d, flags, &pf);
	if (r.einval || flags) {
		if (ret != -EINVAL)
			FZ_FAIL("hmm_prefetch_start(bad) = %ld", ret);
		return;
	}
	if (ret) {
		if (ret != -ENOENT && ret != -ENODEV && ret != -ENOMEM)
			FZ_FAIL("hmm_prefetch_start = %ld: not documented",
				ret);
		if (ret == -ENODEV && dk != 1)
			FZ_FAIL("hmm_prefetch_start: -ENODEV for an open "
				"device");
		return;
	}
	if (in8(in) & 1)
		(void)hmm_prefetch_wait(pf, 0);
	ret = hmm_prefetch_release(pf);
	if (ret < 0 && !err_in(ret, ok))
		FZ_FAIL("prefetch result %ld: not documented", ret);
	check_contents_home("contents after a prefetch");
}

/* hmm_advise with any advice: documented results, data unchanged except
 * by DISCARD (zeros). */
static void do_advise(struct fz_in *in)
{
	static const int ok[] = { EINVAL, ENOENT, ENODEV, EOPNOTSUPP, ENOMEM,
				  0 };
	struct rng r;
	int dk, advice = in8(in) % 8;
	hmm_device_t *d = pick_dev(in, &dk);
	int ret;

	pick_range(in, &r, 64);
	if (range_foreign(&r))
		return;
	if (advice == HMM_ADVISE_DISCARD)
		return; /* the model of the arena's contents has no zeros */
	ret = hmm_advise((void *)r.addr, r.len, advice, d);
	if (ret < 0 && !err_in(ret, ok))
		FZ_FAIL("hmm_advise = %d: not documented", ret);
	if (r.einval && ret != -EINVAL)
		FZ_FAIL("hmm_advise(bad range) = %d", ret);
	check_contents_home("contents after hmm_advise");
}

/* hmm_mem_alloc / hmm_mem_free, with a short life for the memory in
 * between: written, migrated, read by a device, checked, freed. */
static void do_mem(struct fz_in *in)
{
	static const size_t lens[] = { 0, 1, 4095, 4096, 4097, 3 * 4096,
				       16 * 4096, SIZE_MAX, SIZE_MAX / 2 + 1 };
	size_t len = lens[in8(in) % 9];
	unsigned flags = (in8(in) & 7) == 7 ? 1u << (in8(in) & 31) : 0;
	bool null_out = (in8(in) & 15) == 15;
	void *p = NULL;
	int ret, want;

	want = null_out || !len || (flags & ~HMM_MEM_ZERO_COPY) ||
			       len > SIZE_MAX / 2
		       ? -EINVAL
		       : 0;
	ret = hmm_mem_alloc(len, flags, null_out ? NULL : &p);
	if (ret != want &&
	    !(want == 0 && (ret == -ENOMEM || ret == -EMFILE)))
		FZ_FAIL("hmm_mem_alloc(%zu, %#x, %s) = %d, expected %d", len,
			flags, null_out ? "NULL" : "&p", ret, want);
	if (ret)
		return;
	size_t alen = (len + PG - 1) & ~(PG - 1);
	for (size_t k = 0; k < alen; k++)
		if (((uint8_t *)p)[k])
			FZ_FAIL("hmm_mem_alloc memory is not zeroed at %zu", k);
	for (size_t k = 0; k < alen; k += 8)
		*(uint64_t *)((char *)p + k) = k ^ 0x5a5a;
	if (hmm_page_location(p, NULL) != HMM_LOC_SYSTEM)
		FZ_FAIL("hmm_mem_alloc memory is not managed");
	int dk;
	hmm_device_t *d = pick_dev(in, &dk);
	if (d && dk == 0) {
		long m = hmm_migrate(p, alen, d, 0);
		if (m < 0 && m != -ENOMEM)
			FZ_FAIL("hmm_migrate of hmm_mem_alloc memory = %ld", m);
		uint64_t *buf = malloc(alen);
		if (!buf)
			FZ_FAIL("out of memory");
		ret = hmm_sim_read(d, p, buf, alen, NULL);
		if (ret)
			FZ_FAIL("hmm_sim_read of hmm_mem_alloc memory = %d", ret);
		for (size_t k = 0; k < alen / 8; k++)
			if (buf[k] != ((k * 8) ^ 0x5a5a))
				FZ_FAIL("device read of hmm_mem_alloc memory: "
					"word %zu", k);
		free(buf);
	}
	/* Frees that are wrong: another length (after rounding up). */
	static const long bad_delta[] = { (long)PG, -(long)PG, 1, 2 * (long)PG };
	long bd = bad_delta[in8(in) & 3];
	if ((long)alen + bd > 0) {
		ret = hmm_mem_free(p, (size_t)((long)alen + bd));
		if (ret != -EINVAL)
			FZ_FAIL("hmm_mem_free(p, %zu) of %zu bytes = %d",
				(size_t)((long)alen + bd), alen, ret);
	}
	ret = hmm_mem_free((char *)p + PG, alen);
	if (ret != -EINVAL)
		FZ_FAIL("hmm_mem_free(p + 4096) = %d", ret);
	ret = hmm_mem_free(pa(in8(in) % AR_PAGES), PG);
	if (ret != -EINVAL)
		FZ_FAIL("hmm_mem_free(arena page) = %d", ret);
	ret = hmm_mem_free(NULL, PG);
	if (ret != -EINVAL)
		FZ_FAIL("hmm_mem_free(NULL) = %d", ret);
	ret = hmm_mem_free(p, len);
	if (ret)
		FZ_FAIL("hmm_mem_free(p, %zu) = %d", len, ret);
}

static void do_location(struct fz_in *in)
{
	static const uint64_t wild[] = { 0, 1, 0xfff, 0x800000000000ULL,
		0xffff800000000000ULL, ~0ULL, 0x7fffffffffffULL };
	uintptr_t a;
	hmm_device_t *d = (hmm_device_t *)1;
	int ret;

	if (in8(in) & 1)
		a = (uintptr_t)wild[in8(in) % 7];
	else
		a = (uintptr_t)ar + in32(in) % (AR_PAGES * PG);
	ret = hmm_page_location((const void *)a, (in8(in) & 1) ? &d : NULL);
	if (ret < 0 || ret > HMM_LOC_MIGRATING)
		FZ_FAIL("hmm_page_location(%#lx) = %d", (unsigned long)a, ret);
	if (d != (hmm_device_t *)1 && (ret == HMM_LOC_DEVICE) != (d != NULL))
		FZ_FAIL("hmm_page_location(%#lx) = %d, device %p",
			(unsigned long)a, ret, (void *)d);
	if (page_of(a) < 0 && ret != HMM_LOC_UNMANAGED)
		FZ_FAIL("hmm_page_location(%#lx) = %d", (unsigned long)a, ret);
}

/* ------------------------------------------------------------------ */
/* Devices                                                             */
/* ------------------------------------------------------------------ */

static void remember_closed(hmm_device_t *d)
{
	if (nclosed < NCLOSED)
		closed[nclosed++] = d;
}

static void close_dev(int s)
{
	hmm_device_t *d = devs[s];
	struct locsnap b;
	int ret;

	if (!d)
		return;
	snap_locs(&b);
	ret = hmm_device_close(d);
	if (ret)
		FZ_FAIL("hmm_device_close of an open device = %d", ret);
	devs[s] = NULL;
	remember_closed(d);
	for (int i = 0; i < AR_PAGES; i++)
		if (b.dev[i] == d &&
		    hmm_page_location(pa(i), NULL) != HMM_LOC_SYSTEM)
			FZ_FAIL("page %d not home after its device closed", i);
	ret = hmm_device_close(d);
	if (ret != -ENODEV)
		FZ_FAIL("hmm_device_close twice = %d", ret);
	ret = hmm_device_mem_usage(d, NULL, NULL);
	if (ret != -ENODEV)
		FZ_FAIL("hmm_device_mem_usage of a closed device = %d", ret);
}

static void do_dev_open(struct fz_in *in)
{
	static const char *const drivers[] = { "sim", "sim", "", "SIM",
					       "simx", NULL };
	static const unsigned engines[] = { 0, 1, 2, 3, 64, 65, 1000,
					    0xffffffffu };
	const char *drv = drivers[in8(in) % 6];
	struct hmm_device_attr attr = { 0 };
	bool use_attr = in8(in) & 1, null_out = (in8(in) & 15) == 15;
	int s = in8(in) % NDEV, want, ret;
	hmm_device_t *d = NULL;
	unsigned m = in8(in);

	if (use_attr) {
		attr.mem_size = m < 200 ? (size_t)(m % 64) * PG
				: m < 250 ? (size_t)in16(in) % (1 << 16)
					  : (size_t)in8(in) << 20;
		attr.engines = engines[in8(in) % 8];
		attr.flags = (in8(in) & 15) == 15 ? in32(in) | 1 : 0;
	}
	if (!drv || null_out)
		want = -EINVAL;
	else if (use_attr && (attr.flags || attr.mem_size % PG))
		want = -EINVAL;
	else if (strcmp(drv, "sim"))
		want = -ENODEV;
	else if (use_attr && attr.engines > 64)
		want = -EINVAL;
	else
		want = 0;
	close_dev(s); /* a slot for it */
	ret = hmm_device_open(drv, use_attr ? &attr : NULL,
			      null_out ? NULL : &d);
	if (ret != want)
		FZ_FAIL("hmm_device_open(%s, mem %zu engines %u flags %#x%s) = "
			"%d, expected %d", drv ? drv : "NULL", attr.mem_size,
			attr.engines, attr.flags, use_attr ? "" : " (no attr)",
			ret, want);
	if (ret)
		return;
	devs[s] = d;
	dev_pages[s] = use_attr ? attr.mem_size / PG : 0;
	check_mem_usage(d);
}

static void do_dev_close(struct fz_in *in)
{
	unsigned s = in8(in) % 4;
	int ret;

	if (s < NDEV) {
		close_dev((int)s);
	} else if (s == 2) {
		ret = hmm_device_close(NULL);
		if (ret != -EINVAL)
			FZ_FAIL("hmm_device_close(NULL) = %d", ret);
		ret = hmm_device_mem_usage(NULL, NULL, NULL);
		if (ret != -EINVAL)
			FZ_FAIL("hmm_device_mem_usage(NULL) = %d", ret);
	} else if (nclosed) {
		ret = hmm_device_close(closed[in8(in) % nclosed]);
		if (ret != -ENODEV)
			FZ_FAIL("hmm_device_close(closed) = %d", ret);
	}
}

/* ------------------------------------------------------------------ */
/* hmm_range_fault                                                     */
/* ------------------------------------------------------------------ */

static void do_range_fault(struct fz_in *in)
{
	static const int ok[] = { EINVAL, EFAULT, EPERM, EBUSY, ENOMEM, 0 };
	static const uint64_t defs[] = { 0, HMM_PFN_REQ_FAULT,
		HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE, HMM_PFN_REQ_WRITE };
	uint64_t pfns[64], in_pfns[64];
	struct hmm_range range = { 0 };
	struct locsnap b;
	struct rng r;
	int dk, want = 0, ret;
	unsigned nsel = in8(in);
	bool use_nt = nsel & 1, stale = use_nt && (nsel & 6) == 6;
	bool null_pfns = (nsel & 0xf0) == 0xf0;
	hmm_device_t *owner = pick_dev(in, &dk);

	pick_range(in, &r, 64);
	if (range_foreign(&r) || r.len > 64 * PG)
		return;
	range.start = r.addr;
	range.end = r.addr + r.len;
	range.hmm_pfns = null_pfns ? NULL : pfns;
	range.default_flags = defs[in8(in) & 3];
	range.pfn_flags_mask = (in8(in) & 1) ? HMM_PFN_REQ_FAULT |
						       HMM_PFN_REQ_WRITE : 0;
	range.dev_private_owner = owner;
	for (int k = 0; k < 64; k++)
		in_pfns[k] = pfns[k] = defs[in8(in) & 3] |
				       (fz_rand() & ~HMM_PFN_FLAGS);
	if (use_nt) {
		range.notifier = &nt;
		range.notifier_seq = hmm_interval_read_begin(&nt);
		if (stale) {
			/* The CPU side changes after read_begin. */
			unsigned long before = nt_calls;
			int i = in8(in) % AR_PAGES;
			if (k_mapped(i))
				fz_mprotect(i, 1, pg[i].prot);
			if (nt_calls == before)
				stale = false;
		}
	}
	bool bad = r.einval || null_pfns || range.end <= range.start ||
		   ((range.default_flags & HMM_PFN_REQ_WRITE) &&
		    !(range.default_flags & HMM_PFN_REQ_FAULT));
	if (bad)
		want = -EINVAL;
	else if (stale)
		/* Page 0's own flags are checked before the sequence. */
		want = ((in_pfns[0] & range.pfn_flags_mask) & HMM_PFN_REQ_WRITE) &&
		       !(((in_pfns[0] & range.pfn_flags_mask) |
			  range.default_flags) & HMM_PFN_REQ_FAULT)
			       ? -EINVAL : -EBUSY;
	else {
		int n = (int)(r.len / PG);
		for (int k = 0; k < n && !want; k++) {
			uint64_t req = (in_pfns[k] & range.pfn_flags_mask) |
				       range.default_flags;
			bool fault = req & HMM_PFN_REQ_FAULT,
			     write = req & HMM_PFN_REQ_WRITE;
			int i = r.arena ? r.first + k : -1;
			hmm_device_t *pd = NULL;
			int loc = i < 0 ? 0 : hmm_page_location(pa(i), &pd);
			if (write && !fault) {
				want = -EINVAL;
				break;
			}
			if (!fault)
				continue;
			if (i < 0 || !k_mapped(i) || pg[i].prot == PROT_NONE) {
				want = (owner && pd == owner && i >= 0) ? 1
									: -EFAULT;
				break;
			}
			if (k_odd(i)) {
				want = 1;
				break;
			}
			if (write && pg[i].prot == PROT_READ)
				want = (owner && pd == owner) ? 1 : -EPERM;
			(void)loc;
		}
	}
	snap_locs(&b);
	ret = hmm_range_fault(&range);
	if (ret && !err_in(ret, ok))
		FZ_FAIL("hmm_range_fault = %d: not documented", ret);
	/* Known bug 1 (see fuzz_dmirror.c): clang's write probe. */
	if (fz_known() && want == -EPERM)
		want = 1;
	if (want != 1 && ret != want)
		FZ_FAIL("hmm_range_fault([%#lx, %#lx) [page %d], default %#llx, "
			"mask %#llx, owner %p, notifier %d stale %d) = %d, "
			"expected %d", (unsigned long)range.start,
			(unsigned long)range.end, r.first,
			(unsigned long long)range.default_flags,
			(unsigned long long)range.pfn_flags_mask,
			(void *)owner, use_nt, stale, ret, want);
	if (ret) {
		check_locs(&b, want == -EINVAL || want == -EBUSY ? SAME
								 : MAY_GO_HOME,
			   0, 0, NULL, "hmm_range_fault", ret);
		check_contents_home("contents after a failed hmm_range_fault");
		return;
	}
	if (bad || !r.arena)
		return;
	for (int k = 0; k < r.n; k++) {
		int i = r.first + k;
		uint64_t req = (in_pfns[k] & range.pfn_flags_mask) |
			       range.default_flags, o = pfns[k];
		bool ondev = b.dev[i] && b.dev[i] == owner;
		if (ondev) {
			if (pg[i].prot != PROT_NONE &&
			    (o & (HMM_PFN_VALID | HMM_PFN_DEVICE)) !=
				    (HMM_PFN_VALID | HMM_PFN_DEVICE))
				FZ_FAIL("range_fault: page %d on the owner "
					"device reads %#llx", i,
					(unsigned long long)o);
			continue;
		}
		if (req & HMM_PFN_REQ_FAULT) {
			if (!(o & HMM_PFN_VALID) || (o & HMM_PFN_ERROR) ||
			    hmm_pfn_to_frame(o) != (uint64_t)pa(i) / PG ||
			    ((req & HMM_PFN_REQ_WRITE) && !(o & HMM_PFN_WRITE)))
				FZ_FAIL("range_fault: faulted page %d (req "
					"%#llx) reads %#llx", i,
					(unsigned long long)req,
					(unsigned long long)o);
			if (hmm_page_location(pa(i), NULL) == HMM_LOC_DEVICE)
				FZ_FAIL("range_fault: faulted page %d is still "
					"on a device", i);
		} else if (!k_mapped(i) || pg[i].prot == PROT_NONE) {
			if (!(o & HMM_PFN_ERROR))
				FZ_FAIL("range_fault: snapshot of unreachable "
					"page %d reads %#llx", i,
					(unsigned long long)o);
		} else if ((o & HMM_PFN_VALID) && !(o & HMM_PFN_ERROR) &&
			   !k_odd(i) &&
			   (hmm_pfn_to_frame(o) != (uint64_t)pa(i) / PG ||
			    (pg[i].prot == PROT_READ && (o & HMM_PFN_WRITE))))
			FZ_FAIL("range_fault: snapshot of page %d (prot %d) "
				"reads %#llx", i, pg[i].prot,
				(unsigned long long)o);
	}
}

static void do_notifier_args(struct fz_in *in)
{
	struct hmm_interval_notifier sub;
	uintptr_t start = (in8(in) & 1) ? (uintptr_t)in64(in)
					: (uintptr_t)pa(in8(in) % AR_PAGES);
	size_t len = (in8(in) & 1) ? (size_t)in64(in) : in16(in);
	int ret;

	memset(&sub, 0, sizeof(sub));
	ret = hmm_interval_notifier_insert(&sub, start, len, &nt_ops);
	if (ret && ret != -EINVAL)
		FZ_FAIL("hmm_interval_notifier_insert(%#lx, %zu) = %d",
			(unsigned long)start, len, ret);
	if (!ret)
		hmm_interval_notifier_remove(&sub);
	ret = hmm_interval_notifier_insert(&sub, start, len, NULL);
	if (ret != -EINVAL) {
		if (!ret)
			hmm_interval_notifier_remove(&sub);
		FZ_FAIL("hmm_interval_notifier_insert(ops NULL) = %d", ret);
	}
}

/* ------------------------------------------------------------------ */
/* Sim commands                                                        */
/* ------------------------------------------------------------------ */

/* The first page of [a, a + len) a device cannot read (-EFAULT) or, with
 * @write, write (-EPERM); 0 if all can; 1 if unpredictable. */
static int sim_expect(uintptr_t a, size_t len, bool write)
{
	if (!len)
		return 1;
	for (uintptr_t p = a & ~(PG - 1); p < a + len; p += PG) {
		int i = page_of(p);
		if (i < 0 || !k_mapped(i) || pg[i].prot == PROT_NONE)
			return -EFAULT;
		if (pg[i].kind == K_FOREIGN || k_odd(i))
			return 1;
		if (write && pg[i].prot == PROT_READ)
			return -EPERM;
	}
	return 0;
}

/* An address in the arena at any alignment, or a bad one; @len bounded. */
static uintptr_t pick_addr(struct fz_in *in, size_t *len, size_t align)
{
	uintptr_t a;

	*len = (size_t)in16(in) % (16 * PG) + ((in8(in) & 7) ? 1 : 0);
	if ((in8(in) & 15) == 15) {
		a = bad_addrs[in8(in) & 3] + (in16(in) % PG);
	} else {
		a = (uintptr_t)ar + in32(in) % (AR_PAGES * PG);
		if (a + *len > (uintptr_t)ar + AR_PAGES * PG)
			*len = (uintptr_t)ar + AR_PAGES * PG - a;
	}
	if (align && (in8(in) & 7)) {
		a &= ~(uintptr_t)(align - 1);
		*len &= ~(size_t)(align - 1);
		if (a < (uintptr_t)ar && page_of(a) < 0 && a >= 0x10000)
			a = (uintptr_t)ar;
	}
	return a;
}

static bool touches_foreign(uintptr_t a, size_t len)
{
	for (uintptr_t p = a & ~(PG - 1); p < a + len; p += PG)
		if (page_of(p) >= 0 && pg[page_of(p)].kind == K_FOREIGN)
			return true;
	return false;
}

static bool range_known(uintptr_t a, size_t len)
{
	/* Empty or wrapping: nothing to compare (and no pointer into the
	 * shadow can be formed for it). */
	if (!len || a + len < a || page_of(a) < 0)
		return false;
	for (uintptr_t p = a & ~(PG - 1); p < a + len; p += PG)
		if (page_of(p) < 0 || !pg[page_of(p)].known)
			return false;
	return true;
}

/* After a write that failed or did not: every byte is old or @newd; the
 * shadow takes what is there. */
static void bytes_old_or_new(uintptr_t a, size_t len, const uint8_t *newd,
			     const char *what, int ret)
{
	for (uintptr_t p = a & ~(PG - 1); p < a + len; p += PG) {
		int i = page_of(p);
		uintptr_t s = p > a ? p : a, e = p + PG < a + len ? p + PG
								 : a + len;
		if (i < 0 || !k_readable(i))
			continue;
		for (uintptr_t x = s; x < e; x++) {
			uint8_t now = *(volatile uint8_t *)x;
			uint8_t *sh = &shadow[x - (uintptr_t)ar];
			if (pg[i].known && now != *sh && now != newd[x - a])
				FZ_FAIL("%s = %d: byte %#lx is 0x%02x, neither "
					"0x%02x nor 0x%02x", what, ret,
					(unsigned long)x, now, *sh, newd[x - a]);
			*sh = now;
		}
	}
}

static const int sim_ok[] = { EINVAL, EFAULT, EPERM, ENODEV, EBUSY, ENOMEM,
			      0 };

static int sim_want(int dk, hmm_device_t *d, uintptr_t a, size_t len,
		    bool write)
{
	if (!d)
		return -EINVAL;
	if (dk == 1)
		return -ENODEV;
	return sim_expect(a, len, write);
}

static void do_sim_rw(struct fz_in *in)
{
	int dk, ret, want;
	hmm_device_t *d = pick_dev(in, &dk);
	unsigned op = in8(in) % 4;
	size_t len;
	uintptr_t a = pick_addr(in, &len, op == 2 ? 8 : 0);
	struct hmm_sim_result res = { 0 };
	uint8_t *buf;

	if (touches_foreign(a, len))
		return;
	buf = malloc(len + 1);
	if (!buf)
		FZ_FAIL("out of memory");
	for (size_t k = 0; k < len + 1; k++)
		buf[k] = (uint8_t)fz_rand();
	switch (op) {
	case 0: { /* read */
		uint8_t *saved = malloc(len + 1);
		if (!saved)
			FZ_FAIL("out of memory");
		memcpy(saved, buf, len + 1);
		want = sim_want(dk, d, a, len, false);
		ret = hmm_sim_read(d, (const void *)a, buf, len, &res);
		if ((ret && !err_in(ret, sim_ok)) || (want != 1 && ret != want))
			FZ_FAIL("hmm_sim_read(%#lx, %zu) = %d, expected %d",
				(unsigned long)a, len, ret, want);
		if (ret && memcmp(buf, saved, len + 1))
			FZ_FAIL("hmm_sim_read failed (%d) but wrote the buffer",
				ret);
		if (!ret && range_known(a, len) &&
		    memcmp(buf, shadow + (a - (uintptr_t)ar), len))
			FZ_FAIL("hmm_sim_read(%#lx, %zu) read wrong data",
				(unsigned long)a, len);
		if (buf[len] != saved[len])
			FZ_FAIL("hmm_sim_read wrote past the buffer");
		free(saved);
		break;
	}
	case 1: /* write */
	case 2: { /* fill64 */
		uint64_t v = in64(in);
		if (op == 2)
			for (size_t k = 0; k + 8 <= len; k += 8)
				memcpy(buf + k, &v, 8);
		want = sim_want(dk, d, a, len, true);
		if (op == 2 && (a | len) & 7)
			want = -EINVAL;
		ret = op == 1 ? hmm_sim_write(d, (void *)a, buf, len, &res)
			      : hmm_sim_fill64(d, (void *)a, v, len, &res);
		if (fz_known() && want == -EPERM)
			want = 1; /* known bug 1 */
		if ((ret && !err_in(ret, sim_ok)) || (want != 1 && ret != want))
			FZ_FAIL("hmm_sim_%s(%#lx, %zu) = %d, expected %d",
				op == 1 ? "write" : "fill64", (unsigned long)a,
				len, ret, want);
		if (page_of(a) < 0)
			break;
		if (!ret) {
			memcpy(shadow + (a - (uintptr_t)ar), buf, len);
		} else {
			bytes_old_or_new(a, len, buf, op == 1 ? "hmm_sim_write"
							      : "hmm_sim_fill64",
					 ret);
		}
		break;
	}
	default: { /* memcpy within the arena */
		size_t l2;
		uintptr_t src = pick_addr(in, &l2, 0);
		if (l2 < len)
			len = l2;
		if (touches_foreign(src, len))
			break;
		int ws = sim_want(dk, d, src, len, false);
		int wd = sim_want(dk, d, a, len, true);
		bool overlap = a < src + len && src < a + len;
		want = !d ? -EINVAL : dk == 1 ? -ENODEV
			: ws == 0 && wd == 0 ? 0 : 1;
		uint8_t *exp = NULL;
		bool known = page_of(src) >= 0 && range_known(src, len);
		if (known) {
			exp = malloc(len + 1);
			if (!exp)
				FZ_FAIL("out of memory");
			memcpy(exp, shadow + (src - (uintptr_t)ar), len);
		}
		ret = hmm_sim_memcpy(d, (void *)a, (const void *)src, len, &res);
		if ((ret && !err_in(ret, sim_ok)) || (want != 1 && ret != want))
			FZ_FAIL("hmm_sim_memcpy(%#lx, %#lx, %zu) = %d, "
				"expected %d", (unsigned long)a,
				(unsigned long)src, len, ret, want);
		if (page_of(a) >= 0) {
			if (!ret && known && !overlap)
				memcpy(shadow + (a - (uintptr_t)ar), exp, len);
			else if (!ret || overlap || !known)
				for (uintptr_t p = a & ~(PG - 1); p < a + len;
				     p += PG)
					pg[page_of(p)].known = 0;
			else
				bytes_old_or_new(a, len, exp, "hmm_sim_memcpy",
						 ret);
		}
		free(exp);
		break;
	}
	}
	free(buf);
}

struct launch_ctx {
	uintptr_t base;
	size_t next_off;
	int write;
	bool bad;
	const uint8_t *expect;	/* shadow of the range, or NULL */
	char msg[160];
};

static void launch_fn(void *dptr, size_t off, size_t n, void *arg)
{
	struct launch_ctx *c = arg;

	if (c->bad)
		return;
	if (off != c->next_off || !n || n > (2UL << 20) || n % PG) {
		snprintf(c->msg, sizeof(c->msg),
			 "run at offset %zu of %zu bytes, expected offset %zu",
			 off, n, c->next_off);
		c->bad = true;
		return;
	}
	if (c->expect && memcmp(dptr, c->expect + off, n)) {
		size_t k = 0;
		while (((uint8_t *)dptr)[k] == c->expect[off + k])
			k++;
		snprintf(c->msg, sizeof(c->msg),
			 "the kernel saw wrong data in the run at %zu (+%zu "
			 "bytes, page %d): 0x%02x, expected 0x%02x", off, n,
			 page_of(c->base + off + k), ((uint8_t *)dptr)[k],
			 c->expect[off + k]);
		c->bad = true;
		return;
	}
	if (c->write)
		for (size_t k = 0; k < n; k += 8)
			*(uint64_t *)((char *)dptr + k) = (c->base + off + k) ^ 1;
	c->next_off = off + n;
}

static void do_sim_atomic_launch(struct fz_in *in)
{
	int dk, ret, want;
	hmm_device_t *d = pick_dev(in, &dk);
	unsigned op = in8(in) % 3;

	if (op < 2) {
		size_t len;
		uintptr_t a = pick_addr(in, &len, 8);
		uint64_t v = in64(in), e = in64(in), old = 0, was = 0;
		int i = page_of(a);
		if (touches_foreign(a, 8))
			return;
		want = sim_want(dk, d, a, 8, true);
		if (a & 7)
			want = -EINVAL;
		if (i >= 0 && pg[i].known && !(a & 7))
			memcpy(&was, shadow + (a - (uintptr_t)ar), 8);
		if (op == 1 && (in8(in) & 1))
			e = was;
		ret = op ? hmm_sim_atomic_cas(d, (uint64_t *)a, e, v, &old)
			 : hmm_sim_atomic_add(d, (uint64_t *)a, v, &old);
		if (fz_known() && want == -EPERM)
			want = 1; /* known bug 1 */
		if ((ret && !err_in(ret, sim_ok)) || (want != 1 && ret != want))
			FZ_FAIL("hmm_sim_atomic_%s(%#lx) = %d, expected %d",
				op ? "cas" : "add", (unsigned long)a, ret, want);
		if (ret || i < 0)
			return;
		if (pg[i].known && old != was)
			FZ_FAIL("hmm_sim_atomic_%s(%#lx): old %#llx, the word "
				"held %#llx", op ? "cas" : "add",
				(unsigned long)a, (unsigned long long)old,
				(unsigned long long)was);
		uint64_t now = op ? (old == e ? v : old) : old + v;
		memcpy(shadow + (a - (uintptr_t)ar), &now, 8);
		return;
	}
	struct rng r;
	struct launch_ctx c = { 0 };
	pick_range(in, &r, 32);
	if (range_foreign(&r) || r.len > 64 * PG)
		return;
	c.base = r.addr;
	c.write = in8(in) & 1;
	if (r.arena && !r.einval && range_known(r.addr, r.len))
		c.expect = shadow + (r.addr - (uintptr_t)ar);
	want = r.einval ? 1 : sim_want(dk, d, r.addr, r.len, c.write);
	if (!d)
		want = -EINVAL;
	else if (dk == 1 && !r.einval)
		want = -ENODEV; /* (a bad range on a closed device: either) */
	/* Known bug 1: a write launch over read-only pages is given a
	 * writable mapping; the kernel's store faults, the guard takes it out
	 * of the middle of @fn and the run starts again, seeing its own
	 * partial writes.  Nothing about data can be expected then. */
	bool k1 = fz_known() && want == -EPERM;
	if (k1)
		c.expect = NULL, want = 1;
	ret = hmm_sim_launch(d, (void *)r.addr, r.len, c.write, launch_fn, &c,
			     NULL);
	if (k1 && r.arena && !r.einval)
		for (int i = r.first; i < r.first + r.n; i++)
			pg[i].known = 0;
	if (k1)
		return;
	if ((ret && !err_in(ret, sim_ok)) || (want != 1 && ret != want))
		FZ_FAIL("hmm_sim_launch(%#lx, %zu, write %d) = %d, expected %d",
			(unsigned long)r.addr, r.len, c.write, ret, want);
	if (c.bad) {
		for (int i = r.first; i < r.first + r.n; i++)
			fprintf(stderr, "page %d: kind %d prot %d known %d "
				"location %d\n", i, pg[i].kind, pg[i].prot,
				pg[i].known, hmm_page_location(pa(i), NULL));
		FZ_FAIL("hmm_sim_launch(%#lx, %zu, write %d) = %d: %s",
			(unsigned long)r.addr, r.len, c.write, ret, c.msg);
	}
	if (!ret && c.next_off != r.len)
		FZ_FAIL("hmm_sim_launch(%#lx, %zu) covered %zu bytes",
			(unsigned long)r.addr, r.len, c.next_off);
	if (!r.arena || r.einval || !c.write)
		return;
	for (size_t off = 0; off < r.len; off += PG) {
		int i = r.first + (int)(off / PG);
		if (off < c.next_off && !ret) {
			for (size_t k = 0; k < PG; k += 8) {
				uint64_t w = (r.addr + off + k) ^ 1;
				memcpy(shadow + (size_t)i * PG + k, &w, 8);
			}
		} else if (ret) {
			pg[i].known = 0; /* written or not */
		}
	}
}

/* ------------------------------------------------------------------ */
/* Options                                                             */
/* ------------------------------------------------------------------ */

static const char *const opt_names[] = {
	"LOG_LEVEL", "STATS", "SIM_MEM_SIZE", "SIM_ENGINES", "FAULT_AROUND",
	"MIGRATE_TIMEOUT_MS", "FORCE_USER_MODE", "USE_MOVE", "EVICT",
};
static long opt_init[9];

static void do_option(struct fz_in *in)
{
	char name[40];
	unsigned k = in8(in) % 12;
	long v = (long)in64(in), old = 0, got = 0;
	int ret, ret2;

	if (k < 9) {
		snprintf(name, sizeof(name), "%s%s", (in8(in) & 1) ? "HMM_" : "",
			 opt_names[k]);
	} else {
		size_t n = in8(in) % 24;
		for (size_t j = 0; j < n; j++)
			name[j] = (char)(in8(in) | 1);
		name[n] = 0;
	}
	ret = hmm_option_get(name, &old);
	if (ret && ret != -ENOENT)
		FZ_FAIL("hmm_option_get(%s) = %d", name, ret);
	if (ret == -ENOENT) {
		ret = hmm_option_set(name, v);
		if (ret != -ENOENT)
			FZ_FAIL("hmm_option_set(unknown %s) = %d", name, ret);
		return;
	}
	if (in8(in) & 1)
		v = (long)(in8(in) % 4);
	ret = hmm_option_set(name, v);
	if (ret && ret != -ERANGE)
		FZ_FAIL("hmm_option_set(%s, %ld) = %d", name, v, ret);
	ret2 = hmm_option_get(name, &got);
	if (ret2 || got != (ret ? old : v))
		FZ_FAIL("hmm_option_set(%s, %ld) = %d, then get = %d: %ld (was "
			"%ld)", name, v, ret, ret2, got, old);
	/* Only FAULT_AROUND and EVICT stay set until the end of the input:
	 * the others would change later inputs' runs too much. */
	if (!ret && k != 4 && k != 8)
		hmm_option_set(name, old);
}

static void restore_options(void)
{
	for (int k = 0; k < 9; k++)
		if (hmm_option_set(opt_names[k], opt_init[k]))
			FZ_FAIL("cannot restore option %s", opt_names[k]);
}

/* ------------------------------------------------------------------ */

/* A CPU change through libc calls the notifier of the range. */
static void arena_op_notified(struct fz_in *in, unsigned op)
{
	unsigned long before = nt_calls;
	struct fz_in peek = *in;
	int first = in8(&peek) % AR_PAGES, n = 1 + in8(&peek) % 16;
	bool mapped_before = true;

	clip(&first, &n);
	for (int i = first; i < first + n; i++)
		mapped_before &= k_mapped(i);
	fz_arena_op(in, op);
	/* munmap (op 1) of a mapped run, mprotect (op 2) of one. */
	if ((op == 1 || op == 2) && mapped_before && nt_calls == before)
		FZ_FAIL("%s of pages %d..%d did not call the notifier",
			op == 1 ? "munmap" : "mprotect", first, first + n - 1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	int ret;

	(void)argc;
	(void)argv;
	ret = hmm_init();
	if (ret) {
		fprintf(stderr, "fuzz_api: hmm_init = %d\n", ret);
		exit(1);
	}
	fz_arena_init();
	ret = hmm_interval_notifier_insert(&nt, (uintptr_t)ar, AR_PAGES * PG,
					   &nt_ops);
	if (ret)
		FZ_FAIL("hmm_interval_notifier_insert(arena) = %d", ret);
	for (int k = 0; k < 9; k++)
		if (hmm_option_get(opt_names[k], &opt_init[k]))
			FZ_FAIL("hmm_option_get(%s) failed", opt_names[k]);
	return 0;
}

/*
 * hmm_file_adopt and hmm_file_sync over a small file of the input's own (a
 * memfd or an unlinked file in /var/tmp, mapped shared or private), with
 * good and bad arguments: each call returns what the header documents; a
 * device's write is seen through the mapping, reaches the file after
 * hmm_file_sync when shared and never when private; release leaves the
 * data in place.
 */
static void do_file(struct fz_in *in)
{
	uint8_t sel = in8(in), variant = in8(in) % 8;
	bool disk = sel & 1, priv = sel & 2;
	size_t n = 1 + in8(in) % 8, len = n * PG, l = len;
	char path[] = "/var/tmp/fuzz-hmm-XXXXXX";
	int fd = disk ? mkstemp(path) : memfd_create("fuzz", MFD_CLOEXEC);
	int other = memfd_create("other", MFD_CLOEXEC);
	hmm_device_t *d = devs[in8(in) % NDEV];
	char *m, *a, buf[PG];
	unsigned flags = 0;
	int f = fd, want = 0, ret;

	if (fd < 0 || other < 0)
		goto out_fd;
	if (disk)
		unlink(path);
	if (ftruncate(fd, (off_t)len))
		goto out_fd;
	m = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 priv ? MAP_PRIVATE : MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		goto out_fd;
	memset(m, 'a', len);
	a = m;
	switch (variant) {
	case 1: a = m + 1; want = -EINVAL; break;
	case 2: l = 0; want = -EINVAL; break;
	case 3: f = -1; want = -EBADF; break;
	case 4: f = other; want = -EBADF; break;
	case 5: flags = 2; want = -EINVAL; break;
	case 6: l = SIZE_MAX & ~(PG - 1); want = -EINVAL; break;
	case 7: if (n > 1) { a = m + PG; l = len - PG; } break;
	default: break;
	}
	ret = hmm_file_adopt(a, l, f, flags);
	if (ret != want)
		FZ_FAIL("hmm_file_adopt(variant %u, %s %s) = %d, expected %d",
			variant, disk ? "disk" : "memfd",
			priv ? "private" : "shared", ret, want);
	if (ret)
		goto out_map;
	if (hmm_file_sync(a + 1, PG) != -EINVAL)
		FZ_FAIL("hmm_file_sync of an unaligned address");
	if (d) {
		long mv = hmm_migrate(a, l, d, 0);
		if (mv < 0 && mv != -ENOMEM)
			FZ_FAIL("hmm_migrate of a file range = %ld", mv);
		ret = hmm_sim_fill64(d, a, 0x6262626262626262ULL, PG, NULL);
		if (ret)
			FZ_FAIL("hmm_sim_fill64 on a file range = %d", ret);
		for (size_t k = 0; k < PG; k++)
			if (a[k] != 'b')
				FZ_FAIL("file mapping byte %zu after a device "
					"write: %#x", k, a[k]);
		if (hmm_file_sync(a, l) < 0)
			FZ_FAIL("hmm_file_sync failed");
		if (pread(fd, buf, PG, (off_t)(a - m)) != (ssize_t)PG)
			FZ_FAIL("pread of the file");
		for (size_t k = 0; k < PG; k++)
			if (buf[k] != (priv ? 0 : 'b'))
				FZ_FAIL("file byte %zu after hmm_file_sync "
					"(%s): %#x", k,
					priv ? "private" : "shared", buf[k]);
	}
	ret = hmm_range_release(a, l);
	if (ret)
		FZ_FAIL("hmm_range_release of a file range = %d", ret);
	if (a[0] != (d ? 'b' : 'a'))
		FZ_FAIL("file mapping after release: %#x", a[0]);
out_map:
	munmap(m, len);
out_fd:
	if (fd >= 0)
		close(fd);
	if (other >= 0)
		close(other);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_in in = { data, size };

	fz_rng = 0x9e3779b97f4a7c15ULL ^ size;
	nclosed = 0;
	fz_arena_reset(in64(&in));
	for (int step = 0; step < MAX_STEPS && in.n; step++) {
		unsigned op = in8(&in) % 22;
		switch (op) {
		case 0: case 1: case 2: case 3: case 4: case 5:
			arena_op_notified(&in, op);
			break;
		case 6: case 18:
			do_adopt(&in);
			break;
		case 7:
			do_release(&in);
			break;
		case 8: case 19:
			do_migrate(&in);
			break;
		case 9:
			do_dev_open(&in);
			break;
		case 10:
			do_dev_close(&in);
			break;
		case 11:
			do_mem(&in);
			break;
		case 12:
			do_location(&in);
			break;
		case 13:
			do_range_fault(&in);
			break;
		case 14: case 17:
			do_sim_rw(&in);
			break;
		case 15:
			do_sim_atomic_launch(&in);
			break;
		case 16:
			do_file(&in);
			break;
		case 20:
			do_prefetch(&in);
			break;
		case 21:
			do_advise(&in);
			break;
		default:
			if (in8(&in) & 1)
				do_option(&in);
			else
				do_notifier_args(&in);
			break;
		}
	}
	for (int s = 0; s < NDEV; s++)
		close_dev(s);
	fz_cpu_check(0, AR_PAGES, "end of input");
	restore_options();
	fz_arena_cleanup();
	return 0;
}
