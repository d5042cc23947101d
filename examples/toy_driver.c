/* SPDX-License-Identifier: MIT */
/*
 * toy_driver: a complete device driver written with libhmm's driver kit
 * (hmm/hmm_driver.h, hmm/hmm_pt.h), and a program that uses it.
 *
 * The "toy" device has a few pages of its own memory and one kind of
 * command: it runs a function over 64-bit words of the process's memory,
 * with the same pointers the CPU uses.  It needs no page-table or
 * DMA-mapping code of its own:
 *
 *   - its page table is an hmm_pt (virtual page -> entry);
 *   - its IOMMU is an hmm_iommu, and a DMA map of the whole address space
 *     links system pages for it on device faults and unlinks them when the
 *     CPU side changes or pages migrate, calling toy_invalidate, which
 *     clears the page table;
 *   - migration to its memory is libhmm's: the driver only copies pages
 *     (toy_copy) and zeroes them (toy_zero).
 *
 * The device runs its commands in the caller's thread and never in
 * parallel, so its page-table lock only has to order a command against
 * invalidations coming from other threads.  A device with engines of its
 * own must also make blockable invalidations wait for accesses to system
 * memory in flight (the sim driver, drivers/sim/sim.c, shows how).
 *
 * The program checks every result and exits 1 on a mismatch, 77 when this
 * machine cannot run libhmm.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <hmm/hmm.h>
#include <hmm/hmm_driver.h>
#include <hmm/hmm_pt.h>

#define PG HMM_PAGE_SIZE
#define TOY_PAGES 64 /* device memory: 256 KiB */

struct toy {
	hmm_device_t *dev;
	char *mem;			/* device memory */
	struct hmm_iommu *mmu;
	struct hmm_dma_map *map;
	pthread_mutex_t lock;		/* protects pt against invalidations */
	struct hmm_pt *pt;		/* vpn -> IOVA page or device frame */
};

/* ---- the driver --------------------------------------------------------- */

/* The DMA map calls this when part of the address space changed; the
 * IOVAs are unlinked already, the device's own entries go now. */
static bool toy_invalidate(struct hmm_dma_map *map,
			   const struct hmm_notifier_range *r, void *priv)
{
	struct toy *t = priv;

	(void)map;
	pthread_mutex_lock(&t->lock);
	hmm_pt_clear(t->pt, r->start / PG, r->end / PG, NULL, NULL);
	pthread_mutex_unlock(&t->lock);
	return true;
}

static const struct hmm_dma_map_ops toy_map_ops = {
	.invalidate = toy_invalidate,
};

static int toy_init(hmm_device_t *dev, const struct hmm_device_attr *attr)
{
	struct toy *t = calloc(1, sizeof(*t));
	int ret;

	(void)attr;
	if (!t)
		return -ENOMEM;
	t->dev = dev;
	t->mem = aligned_alloc(PG, TOY_PAGES * PG);
	pthread_mutex_init(&t->lock, NULL);
	dev->priv = t;
	dev->mem_pages = TOY_PAGES;
	if (!t->mem || hmm_pt_create(&t->pt))
		return -ENOMEM; /* hmm_device_open calls toy_fini */
	ret = hmm_iommu_create(&t->mmu);
	if (!ret)
		ret = hmm_dma_map_create(dev, t->mmu, NULL, 0, &toy_map_ops, t,
					 &t->map);
	return ret;
}

static void toy_fini(hmm_device_t *dev)
{
	struct toy *t = dev->priv;

	if (t->map)
		hmm_dma_map_destroy(t->map);
	if (t->mmu)
		hmm_iommu_destroy(t->mmu);
	hmm_pt_destroy(t->pt);
	pthread_mutex_destroy(&t->lock);
	free(t->mem);
	free(t);
}

/* Migration: libhmm gives host pages it can read or write safely. */
static int toy_copy(hmm_device_t *dev, enum hmm_copy_dir dir,
		    const struct hmm_copy_desc *d, size_t n)
{
	struct toy *t = dev->priv;

	for (size_t i = 0; i < n; i++) {
		char *dp = t->mem + d[i].dpfn * PG;

		if (d[i].dpfn >= TOY_PAGES)
			return -EIO;
		if (dir == HMM_COPY_TO_DEVICE)
			memcpy(dp, d[i].host, PG);
		else
			memcpy(d[i].host, dp, PG);
	}
	return 0;
}

static int toy_zero(hmm_device_t *dev, const uint64_t *dpfns, size_t n)
{
	struct toy *t = dev->priv;

	for (size_t i = 0; i < n; i++) {
		if (dpfns[i] >= TOY_PAGES)
			return -EIO;
		memset(t->mem + dpfns[i] * PG, 0, PG);
	}
	return 0;
}

static const struct hmm_driver_ops toy_ops = {
	.name = "toy",
	.init = toy_init,
	.fini = toy_fini,
	.copy = toy_copy,
	.zero = toy_zero,
};

/* A device fault on the page at @va: fault it in through the DMA map and
 * install its entry, unless an invalidation came in between. */
static int toy_fault(struct toy *t, uintptr_t va, bool write)
{
	for (int tries = 0; tries < 100; tries++) {
		unsigned long seq = hmm_dma_map_begin(t->map);
		uint64_t ent;
		int ret = hmm_dma_map_range(t->map, seq, (void *)va, PG,
					    write ? HMM_DMA_WRITE : 0, &ent);

		if (ret == -EBUSY)
			continue;
		if (ret)
			return ret;
		pthread_mutex_lock(&t->lock);
		if (hmm_dma_map_retry(t->map, seq)) {
			pthread_mutex_unlock(&t->lock);
			continue;
		}
		ret = hmm_pt_set(t->pt, va / PG, 1, &ent);
		pthread_mutex_unlock(&t->lock);
		return ret;
	}
	return -EBUSY;
}

/* The device's view of the word at @va: its own memory, or system memory
 * through the IOMMU.  Called with t->lock held; NULL: fault first. */
static uint64_t *toy_word(struct toy *t, uintptr_t va, bool write)
{
	uint64_t ent = hmm_pt_lookup(t->pt, va / PG);
	void *host;

	if (!(ent & HMM_PTE_VALID) || (write && !(ent & HMM_PTE_WRITE)))
		return NULL;
	if (ent & HMM_PTE_DEVICE) {
		uint64_t dpfn = ent & HMM_PTE_ADDR_MASK;
		hmm_device_mark_used(t->dev, dpfn);
		if (write) /* write-back of file pages copies only these */
			hmm_device_mark_dirty(t->dev, dpfn);
		return (uint64_t *)(t->mem + dpfn * PG + va % PG);
	}
	/* The entry holds an IOVA page: a real device would put it on the
	 * bus; the IOMMU turns it into the host page. */
	if (hmm_iommu_translate(t->mmu, (ent & HMM_PTE_ADDR_MASK) * PG + va % PG,
				write ? HMM_DMA_WRITE : HMM_DMA_READ, &host))
		return NULL;
	return host;
}

typedef uint64_t (*toy_fn)(uint64_t word, uint64_t arg, uint64_t *acc);

/* The one command: @fn over the words of [addr, addr + len), storing its
 * result when @write.  0 or the fault's error (-EFAULT, -EPERM, ...). */
static int toy_run(hmm_device_t *dev, void *addr, size_t len, bool write,
		   toy_fn fn, uint64_t arg, uint64_t *acc)
{
	struct toy *t = dev->priv;
	uintptr_t va = (uintptr_t)addr;
	int ret = 0;

	if ((va | len) % 8)
		return -EINVAL;
	if (hmm_device_enter(dev))
		return -ENODEV;
	for (uintptr_t p = va; p < va + len && !ret; p += 8) {
		pthread_mutex_lock(&t->lock);
		uint64_t *w = toy_word(t, p, write);
		if (w) {
			uint64_t v = fn(*w, arg, acc);
			if (write)
				*w = v;
		}
		pthread_mutex_unlock(&t->lock);
		if (!w) {
			ret = toy_fault(t, p & ~(PG - 1), write);
			p -= 8; /* and try the word again */
		}
	}
	hmm_device_command_done(dev);
	hmm_device_leave(dev);
	return ret;
}

static uint64_t f_sum(uint64_t w, uint64_t arg, uint64_t *acc)
{
	(void)arg;
	*acc += w;
	return w;
}

static uint64_t f_scale(uint64_t w, uint64_t arg, uint64_t *acc)
{
	(void)acc;
	return w * arg;
}

/* ---- the program -------------------------------------------------------- */

#define N (16 * PG / 8) /* 16 pages of words */

static int fails;

#define EXPECT(cond, ...)                                                   \
	do {                                                                \
		if (!(cond)) {                                              \
			fprintf(stderr, "toy_driver: " __VA_ARGS__);        \
			fputc('\n', stderr);                                \
			fails++;                                            \
		}                                                           \
	} while (0)

int main(void)
{
	hmm_device_t *dev;
	uint64_t *a, sum = 0, want = 0;
	int r = hmm_init();

	if (r == -EPERM || r == -ENOSYS || r == -EOPNOTSUPP) {
		fprintf(stderr, "SKIP: hmm_init() = %d\n", r);
		return 77;
	}
	if (r || hmm_driver_register(&toy_ops) ||
	    hmm_device_open("toy", NULL, &dev)) {
		fprintf(stderr, "toy_driver: setup failed\n");
		return 1;
	}
	r = hmm_mem_alloc(N * 8, 0, (void **)&a);
	EXPECT(!r, "hmm_mem_alloc = %d", r);
	for (size_t i = 0; i < N; i++) {
		a[i] = i;
		want += i;
	}

	/* 1. The device reads system memory: device faults fill its table. */
	r = toy_run(dev, a, N * 8, false, f_sum, 0, &sum);
	EXPECT(!r && sum == want, "sum = %llu (%d), expected %llu",
	       (unsigned long long)sum, r, (unsigned long long)want);

	/* 2. The CPU changes a word; the device sees it (same page). */
	a[5] += 1000;
	sum = 0;
	r = toy_run(dev, a, N * 8, false, f_sum, 0, &sum);
	EXPECT(!r && sum == want + 1000, "sum after a CPU write = %llu",
	       (unsigned long long)sum);

	/* 3. Migrate to the device, compute there, fault back on the CPU. */
	long m = hmm_migrate(a, N * 8, dev, 0);
	EXPECT(m == N * 8 / PG, "hmm_migrate = %ld", m);
	r = toy_run(dev, a, N * 8, true, f_scale, 3, NULL);
	EXPECT(!r, "scale = %d", r);
	EXPECT(hmm_page_location(a, NULL) == HMM_LOC_DEVICE,
	       "the pages left the device");
	for (size_t i = 0; i < N; i++)
		EXPECT(a[i] == 3 * (i == 5 ? i + 1000 : i), "a[%zu] = %llu",
		       i, (unsigned long long)a[i]);

	/* 4. Read-only memory: the device may read, not write. */
	EXPECT(!mprotect(a, PG, PROT_READ), "mprotect");
	r = toy_run(dev, a, 8, true, f_scale, 2, NULL);
	EXPECT(r == -EPERM, "write to read-only memory = %d", r);
	sum = 0;
	r = toy_run(dev, a, 8, false, f_sum, 0, &sum);
	EXPECT(!r && sum == 0, "read of read-only memory = %d", r);

	/* 5. Freed memory: a device fault, not a crash. */
	EXPECT(!hmm_mem_free(a, N * 8), "hmm_mem_free");
	r = toy_run(dev, a, 8, false, f_sum, 0, &sum);
	EXPECT(r == -EFAULT, "read of freed memory = %d", r);

	if (fails == 0)
		printf("toy_driver: all checks passed\n");
	hmm_device_close(dev);
	hmm_fini();
	return fails ? 1 : 0;
}
