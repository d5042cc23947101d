/* SPDX-License-Identifier: MIT */
/*
 * The simulated device.
 *
 * Memory: a host pool (reserved, committed on use) that no application
 * pointer reaches; device page N is pool + N * 4 KiB.
 * Mirror: one device page table (sim_pt) per device, filled on device
 * faults through the driver kit's DMA map of the whole address space
 * (hmm_dma_map_range) and cleared by the map's invalidate callback.
 * IOMMU: the device reaches system memory only through IOVAs that its
 * IOMMU (an hmm_iommu) translates: the page table holds a system page's
 * IOVA, not its address, and an unlinked or read-only IOVA is a device
 * fault.  hmm_sim_dma_read/write are raw DMA by IOVA.
 * Engines: threads that run commands and touch memory only through the page
 * table and the IOMMU.  Pool pages are accessed with the mirror lock held
 * (they cannot fault); system pages are accessed at the host address the
 * IOMMU gives without the lock (they can fault, and the fault-service
 * thread may need the lock meanwhile), announced in the engine's busy
 * window so that a blockable invalidation waits for them to finish.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "hmm/hmm_sim.h"
#include "internal.h"
#include "sim_pt.h"

#define SIM_RUN_MAX HMM_BLOCK_SIZE
#define SIM_FAULT_CHUNK 512	/* pages per hmm_range_fault call */
#define SIM_RETRY_MS 5000	/* how long a command retries a range */
#define SIM_AS_END (1ULL << 47)	/* the end of the user address space */

enum sim_op { OP_READ, OP_WRITE, OP_FILL, OP_ADD, OP_CAS, OP_LAUNCH,
	      OP_MEMCPY, OP_DMA_READ, OP_DMA_WRITE };

struct sim_cmd {
	enum sim_op op;
	uintptr_t addr, addr2;
	size_t len;
	char *buf;		/* READ/WRITE: caller-side bounce */
	uint64_t v1, v2, old;
	hmm_sim_kernel_fn fn;
	void *arg;
	int write;
	int ret;
	struct hmm_sim_result res;
	int done;		/* sim_dev.qlock */
	struct sim_cmd *next;	/* sim_dev.qlock */
};

struct sim_dev;

struct sim_engine {
	struct sim_dev *sd;
	struct hmm_thread th;
	/* The system-memory window this engine is accessing without the
	 * mirror lock; 0 when none.  Written by the engine, read by
	 * blockable invalidations. */
	_Atomic uintptr_t busy_s, busy_e;
};

struct sim_dev {
	hmm_device_t *dev;
	char *pool;
	size_t pool_size;

	pthread_mutex_t qlock;	/* protects head, tail, stop, cmd->done */
	pthread_cond_t qcond;	/* work queued, or stop */
	pthread_cond_t dcond;	/* a command finished */
	struct sim_cmd *head, *tail;
	int stop;
	unsigned nengines;
	struct sim_engine *engines;

	struct hmm_iommu *mmu;
	struct hmm_dma_map *map; /* the whole address space, in mmu */
	/* The link to system memory (HMM_SIM_LINK_GBPS, 0: none): a
	 * transfer of n bytes holds it n / gbps ns from when it is free. */
	long link_gbps;
	_Atomic uint64_t link_free_ns;
	pthread_mutex_t lock;	/* the mirror lock: protects pt */
	struct sim_pt pt;
};

static const struct hmm_driver_ops sim_ops, sim_ops_linked;
#define IS_SIM(dev) ((dev)->ops == &sim_ops || (dev)->ops == &sim_ops_linked)

/* ---- mirror -------------------------------------------------------------- */

static long ms_since(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - t0->tv_sec) * 1000 +
	       (now.tv_nsec - t0->tv_nsec) / 1000000;
}

static bool overlaps(struct sim_engine *e, uintptr_t s, uintptr_t end)
{
	uintptr_t bs = atomic_load_explicit(&e->busy_s, memory_order_acquire);
	uintptr_t be = atomic_load_explicit(&e->busy_e, memory_order_acquire);

	return bs && bs < end && be > s;
}

/* The DMA map's callback: its IOVAs in @r are unlinked already. */
static bool sim_invalidate(struct hmm_dma_map *map,
			   const struct hmm_notifier_range *r, void *priv)
{
	struct sim_dev *sd = priv;

	(void)map;
	pthread_mutex_lock(&sd->lock);
	sim_pt_clear(&sd->pt, r->start >> HMM_PAGE_SHIFT,
		     (r->end + HMM_PAGE_MASK) >> HMM_PAGE_SHIFT);
	pthread_mutex_unlock(&sd->lock);
	/*
	 * Accesses to system memory that began before the clear finish on
	 * their own (they do not need this thread).  A non-blockable caller
	 * is the fault-service thread, which such an access may be waiting
	 * for; it must not wait here.
	 */
	if (!(r->flags & HMM_NOTIFIER_RANGE_BLOCKABLE))
		return true;
	/*
	 * Wait, bounded: an access in flight may itself be waiting for the
	 * caller (a fault parked on a page the caller is migrating).  Then
	 * report failure; the caller backs off, which releases the access.
	 */
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (unsigned i = 0; i < sd->nengines; i++) {
		struct sim_engine *e = &sd->engines[i];
		if (pthread_equal(pthread_self(), e->th.th))
			continue; /* an engine invalidating its own window */
		while (overlaps(e, r->start, r->end)) {
			if (ms_since(&t0) > 20)
				return false;
			sched_yield();
		}
	}
	return true;
}

static const struct hmm_dma_map_ops sim_map_ops = {
	.invalidate = sim_invalidate,
};

/* The IOMMU and the DMA map of a device being set up (or of a fork
 * child's, whose parent's are left behind). */
static int sim_map_create(struct sim_dev *sd)
{
	int ret = hmm_iommu_create(&sd->mmu);

	if (ret)
		return ret;
	ret = hmm_dma_map_create(sd->dev, sd->mmu, NULL, 0, &sim_map_ops, sd,
				 &sd->map);
	if (ret) {
		hmm_iommu_destroy(sd->mmu);
		sd->mmu = NULL;
	}
	return ret;
}

/* A device fault: fill the page table for [s, e), page aligned. */
static int sim_fault(struct sim_dev *sd, uintptr_t s, uintptr_t e, bool write)
{
	uint64_t pfns[SIM_FAULT_CHUNK];
	struct timespec t0;
	uint64_t tt = hmm__tracing() ? hmm__now_ns() : 0;
	int ret = 0;

	hmm__stat_add(HMM_STAT_device_faults, 1);
	/* Nothing is mapped above the user address space (2^47), which is
	 * where the DMA map ends. */
	if (e > SIM_AS_END) {
		if (s >= SIM_AS_END)
			return -EFAULT;
		e = SIM_AS_END;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (uintptr_t cs = s; cs < e;) {
		uintptr_t ce = HMM_MIN(e, cs + SIM_FAULT_CHUNK * HMM_PAGE_SIZE);
		unsigned long seq = hmm_dma_map_begin(sd->map);

		/* System pages come back as IOVAs, linked in the IOMMU. */
		ret = hmm_dma_map_range(sd->map, seq, (void *)cs, ce - cs,
					write ? HMM_DMA_WRITE : 0, pfns);
		if (ret == -EBUSY && ms_since(&t0) < SIM_RETRY_MS)
			continue;
		if (ret)
			return ret;
		pthread_mutex_lock(&sd->lock);
		if (hmm_dma_map_retry(sd->map, seq)) {
			pthread_mutex_unlock(&sd->lock);
			if (ms_since(&t0) >= SIM_RETRY_MS)
				return -EBUSY;
			continue;
		}
		ret = sim_pt_set_many(&sd->pt, cs >> HMM_PAGE_SHIFT,
				      (ce - cs) >> HMM_PAGE_SHIFT, pfns);
		pthread_mutex_unlock(&sd->lock);
		if (ret)
			break;
		cs = ce;
	}
	if (tt)
		hmm__trace_event("device_fault", "device", tt, s,
				 (e - s) >> HMM_PAGE_SHIFT, (int)sd->dev->id);
	return ret;
}

/* ---- engines ------------------------------------------------------------- */

typedef void (*walk_fn)(void *dptr, size_t off, size_t n, void *arg);

static bool entry_ok(uint64_t ent, bool write)
{
	return (ent & HMM_PFN_VALID) && (!write || (ent & HMM_PFN_WRITE));
}

/* Fault in for writing every page of [addr, end) that is not writable in
 * the page table yet, in one round. */
static int prefault_writable(struct sim_dev *sd, uintptr_t addr, uintptr_t end,
			     struct hmm_sim_result *res)
{
	uintptr_t first = 0;

	pthread_mutex_lock(&sd->lock);
	for (uintptr_t p = addr & ~HMM_PAGE_MASK; p < end; p += HMM_PAGE_SIZE)
		if (!entry_ok(sim_pt_lookup(&sd->pt, p >> HMM_PAGE_SHIFT),
			      true)) {
			first = p;
			break;
		}
	pthread_mutex_unlock(&sd->lock);
	if (!first)
		return 0;
	res->faults++;
	return sim_fault(sd, first, (end + HMM_PAGE_MASK) & ~HMM_PAGE_MASK,
			 true);
}

/* @fn on system memory, under a guard: returns 1 if it faulted. */
static __attribute__((noinline)) int guarded_call(walk_fn fn, void *dptr,
						  size_t off, size_t n,
						  void *arg)
{
	struct hmm_guard g;

	if (hmm__guard_begin(&g))
		return 1;
	fn(dptr, off, n, arg);
	hmm__guard_end(&g);
	return 0;
}

/*
 * The modelled link to system memory: @bytes cross it, after the
 * transfers before them, and the caller waits until they have.  Called
 * with no lock held (a slow link must not stall invalidations).
 */
static void link_charge(struct sim_dev *sd, size_t bytes)
{
	uint64_t now, start, end, old;

	if (!sd->link_gbps || !bytes)
		return;
	now = hmm__now_ns();
	old = atomic_load(&sd->link_free_ns);
	do {
		start = old > now ? old : now;
		end = start + bytes / (uint64_t)sd->link_gbps;
	} while (!atomic_compare_exchange_weak(&sd->link_free_ns, &old, end));
	while ((now = hmm__now_ns()) < end) {
		if (end - now > 50000) {
			struct timespec ts = { 0, (long)(end - now - 20000) };
			nanosleep(&ts, NULL);
		}
	}
}

/*
 * @fn over @n bytes at @ptr, inside the @npages host pages at @host that
 * the IOMMU gave, with the mirror lock held on entry and released here.
 * The window is announced before the lock goes: an invalidation that takes
 * the lock after this sees it and waits for the access.  Returns 1 if the
 * access faulted (the pages went away under it).
 */
static int access_system(struct sim_engine *e, char *host, size_t npages,
			 walk_fn fn, char *ptr, size_t off, size_t n, void *arg)
{
	int tripped;

	atomic_store_explicit(&e->busy_e,
			      (uintptr_t)host + (npages << HMM_PAGE_SHIFT),
			      memory_order_relaxed);
	atomic_store_explicit(&e->busy_s, (uintptr_t)host,
			      memory_order_release);
	pthread_mutex_unlock(&e->sd->lock);
	hmm__dma_begin();
	tripped = guarded_call(fn, ptr, off, n, arg);
	hmm__dma_end();
	atomic_store_explicit(&e->busy_s, 0, memory_order_release);
	if (!tripped)
		link_charge(e->sd, n);
	return tripped;
}

/*
 * Run @fn over [addr, addr + len) through the page table, faulting as
 * needed, in runs of contiguous device (or system) pages.
 */
static int sim_walk(struct sim_engine *e, uintptr_t addr, size_t len,
		    bool write, walk_fn fn, void *arg,
		    struct hmm_sim_result *res)
{
	struct sim_dev *sd = e->sd;
	uintptr_t pos = addr, end = addr + len;
	struct timespec t0;
	bool timed = false;

	if (end < addr)
		return -EINVAL;
	/* A write that would fail part-way must change nothing: make every
	 * page writable first (the kernel's dmirror, too, faults the whole
	 * range before it writes).  An invalidation in between can still
	 * make the loop below fault again, but not fail on a bad range. */
	if (write) {
		int ret = prefault_writable(sd, addr, end, res);
		if (ret)
			return ret;
	}
	while (pos < end) {
		uintptr_t page = pos & ~HMM_PAGE_MASK, run_end;
		uint64_t ent;

		pthread_mutex_lock(&sd->lock);
		ent = sim_pt_lookup(&sd->pt, page >> HMM_PAGE_SHIFT);
		if (!entry_ok(ent, write)) {
			pthread_mutex_unlock(&sd->lock);
			if (!timed) {
				clock_gettime(CLOCK_MONOTONIC, &t0);
				timed = true;
			} else if (ms_since(&t0) > SIM_RETRY_MS) {
				return -EBUSY;
			}
			int ret = sim_fault(sd, page,
					    (end + HMM_PAGE_MASK) & ~HMM_PAGE_MASK,
					    write);
			res->faults++;
			if (ret)
				return ret;
			continue;
		}
		/* Extend the run over contiguous translations. */
		uint64_t kind = ent & HMM_PFN_DEVICE;
		uint64_t frame = hmm_pfn_to_frame(ent);
		run_end = page + HMM_PAGE_SIZE;
		while (run_end < end && run_end - page < SIM_RUN_MAX) {
			uint64_t e2 = sim_pt_lookup(&sd->pt,
						    run_end >> HMM_PAGE_SHIFT);
			if (!entry_ok(e2, write) ||
			    (e2 & HMM_PFN_DEVICE) != kind ||
			    hmm_pfn_to_frame(e2) !=
				    frame + ((run_end - page) >> HMM_PAGE_SHIFT))
				break;
			run_end += HMM_PAGE_SIZE;
		}
		size_t n = HMM_MIN(run_end, end) - pos;
		if (kind) {
			res->pages += (run_end - page) >> HMM_PAGE_SHIFT;
			/* Device memory: cannot fault, so under the lock.
			 * Tell libhmm's eviction clock it is in use. */
			for (uint64_t f = frame; f < frame + ((run_end - page) >>
							      HMM_PAGE_SHIFT);
			     f++)
				hmm_device_mark_used(sd->dev, f);
			fn(sd->pool + (frame << HMM_PAGE_SHIFT) + (pos - page),
			   pos - addr, n, arg);
			/* After the write (tracks_dirty): file write-back
			 * copies only the pages written. */
			for (uint64_t f = frame + ((pos - page) >> HMM_PAGE_SHIFT);
			     write && f <= frame + ((pos + n - 1 - page) >>
						    HMM_PAGE_SHIFT);
			     f++)
				hmm_device_mark_dirty(sd->dev, f);
			pthread_mutex_unlock(&sd->lock);
			pos += n;
			continue;
		}
		/* System memory: the frames are IOVAs, and the IOMMU gives
		 * the host pages.  An IOVA found unlinked means that an
		 * invalidation is on its way to this entry: fault again. */
		char *host;
		size_t ok = hmm__iommu_translate_run(
			sd->mmu, frame << HMM_PAGE_SHIFT,
			(run_end - page) >> HMM_PAGE_SHIFT,
			write ? HMM_DMA_WRITE : HMM_DMA_READ, &host);
		if (!ok) {
			sim_pt_clear(&sd->pt, page >> HMM_PAGE_SHIFT,
				     (page >> HMM_PAGE_SHIFT) + 1);
			pthread_mutex_unlock(&sd->lock);
			continue;
		}
		run_end = page + (ok << HMM_PAGE_SHIFT);
		n = HMM_MIN(run_end, end) - pos;
		res->pages += ok;
		int tripped = access_system(e, host, ok, fn, host + (pos - page),
					    pos - addr, n, arg);
		if (tripped) {
			/* Unmapped or protected under us: forget these
			 * translations and fault again (which reports why). */
			pthread_mutex_lock(&sd->lock);
			sim_pt_clear(&sd->pt, page >> HMM_PAGE_SHIFT,
				     run_end >> HMM_PAGE_SHIFT);
			pthread_mutex_unlock(&sd->lock);
			continue;
		}
		pos += n;
	}
	return 0;
}

/*
 * Raw DMA: @fn over [iova, iova + len) through the IOMMU alone, as a
 * device given a DMA address by its driver.  An IOVA that is not linked,
 * or read-only for a write, is a device fault: -EFAULT or -EPERM, with
 * what came before it done.
 */
static int dma_walk(struct sim_engine *e, uint64_t iova, size_t len,
		    bool write, walk_fn fn, void *arg,
		    struct hmm_sim_result *res)
{
	struct sim_dev *sd = e->sd;
	uint64_t pos = iova, end = iova + len;

	if (end < iova)
		return -EINVAL;
	while (pos < end) {
		uint64_t page = pos & ~(uint64_t)HMM_PAGE_MASK;
		size_t want = (HMM_MIN(end - page, (uint64_t)SIM_RUN_MAX) +
			       HMM_PAGE_MASK) >> HMM_PAGE_SHIFT;
		char *host;
		size_t ok, n;

		/* Translate and announce under the mirror lock: an
		 * invalidation unlinks before it takes the lock, so either
		 * this sees the IOVA unlinked or the invalidation sees the
		 * window and waits for the access. */
		pthread_mutex_lock(&sd->lock);
		ok = hmm__iommu_translate_run(sd->mmu, page, want,
					      write ? HMM_DMA_WRITE
						    : HMM_DMA_READ,
					      &host);
		if (!ok) {
			/* Readable but not writable: a write fault.  (The
			 * fault is counted once, above.) */
			bool readable = write && hmm__iommu_readable(sd->mmu,
								     page);
			pthread_mutex_unlock(&sd->lock);
			return readable ? -EPERM : -EFAULT;
		}
		n = HMM_MIN(page + (ok << HMM_PAGE_SHIFT), end) - pos;
		if (access_system(e, host, ok, fn, host + (pos - page),
				  (size_t)(pos - iova), n, arg))
			return -EFAULT;
		res->pages += ok;
		pos += n;
	}
	return 0;
}

static void cb_read(void *dptr, size_t off, size_t n, void *arg)
{
	memcpy((char *)arg + off, dptr, n);
}

static void cb_write(void *dptr, size_t off, size_t n, void *arg)
{
	memcpy(dptr, (const char *)arg + off, n);
}

static void cb_fill(void *dptr, size_t off, size_t n, void *arg)
{
	uint64_t v = *(const uint64_t *)arg;
	uint64_t *p = dptr;

	(void)off;
	for (size_t i = 0; i < n / 8; i++)
		p[i] = v;
}

static void cb_add(void *dptr, size_t off, size_t n, void *arg)
{
	struct sim_cmd *c = arg;

	(void)off;
	(void)n;
	c->old = __atomic_fetch_add((uint64_t *)dptr, c->v1, __ATOMIC_SEQ_CST);
}

static void cb_cas(void *dptr, size_t off, size_t n, void *arg)
{
	struct sim_cmd *c = arg;
	uint64_t expected = c->v1;

	(void)off;
	(void)n;
	__atomic_compare_exchange_n((uint64_t *)dptr, &expected, c->v2, false,
				    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
	c->old = expected;
}

struct launch_arg {
	hmm_sim_kernel_fn fn;
	void *arg;
};

static void cb_launch(void *dptr, size_t off, size_t n, void *arg)
{
	struct launch_arg *la = arg;

	la->fn(dptr, off, n, la->arg);
}

static int run_memcpy(struct sim_engine *e, struct sim_cmd *c)
{
	size_t chunk = HMM_MIN(c->len, (size_t)(1 << 20));
	char *tmp = malloc(chunk ? chunk : 1);
	int ret = 0;

	if (!tmp)
		return -ENOMEM;
	for (size_t off = 0; off < c->len && !ret; off += chunk) {
		size_t n = HMM_MIN(chunk, c->len - off);
		ret = sim_walk(e, c->addr2 + off, n, false, cb_read, tmp,
			       &c->res);
		if (!ret)
			ret = sim_walk(e, c->addr + off, n, true, cb_write, tmp,
				       &c->res);
	}
	free(tmp);
	return ret;
}

static void run_cmd(struct sim_engine *e, struct sim_cmd *c)
{
	struct launch_arg la = { c->fn, c->arg };

	switch (c->op) {
	case OP_READ:
		c->ret = sim_walk(e, c->addr, c->len, false, cb_read, c->buf,
				  &c->res);
		break;
	case OP_WRITE:
		c->ret = sim_walk(e, c->addr, c->len, true, cb_write, c->buf,
				  &c->res);
		break;
	case OP_FILL:
		c->ret = sim_walk(e, c->addr, c->len, true, cb_fill, &c->v1,
				  &c->res);
		break;
	case OP_ADD:
		c->ret = sim_walk(e, c->addr, 8, true, cb_add, c, &c->res);
		break;
	case OP_CAS:
		c->ret = sim_walk(e, c->addr, 8, true, cb_cas, c, &c->res);
		break;
	case OP_LAUNCH:
		c->ret = sim_walk(e, c->addr, c->len, c->write, cb_launch, &la,
				  &c->res);
		break;
	case OP_MEMCPY:
		c->ret = run_memcpy(e, c);
		break;
	case OP_DMA_READ:
		c->ret = dma_walk(e, c->addr, c->len, false, cb_read, c->buf,
				  &c->res);
		break;
	case OP_DMA_WRITE:
		c->ret = dma_walk(e, c->addr, c->len, true, cb_write, c->buf,
				  &c->res);
		break;
	}
}

static void *engine_main(void *arg)
{
	struct sim_engine *e = arg;
	struct sim_dev *sd = e->sd;

	hmm__block_signals();
	pthread_mutex_lock(&sd->qlock);
	for (;;) {
		struct sim_cmd *c;
		while (!sd->head && !sd->stop)
			pthread_cond_wait(&sd->qcond, &sd->qlock);
		if (!sd->head)
			break; /* stopping, queue drained */
		c = sd->head;
		sd->head = c->next;
		if (!sd->head)
			sd->tail = NULL;
		pthread_mutex_unlock(&sd->qlock);
		run_cmd(e, c);
		pthread_mutex_lock(&sd->qlock);
		c->done = 1;
		pthread_cond_broadcast(&sd->dcond);
	}
	pthread_mutex_unlock(&sd->qlock);
	return NULL;
}

/* ---- driver ops ---------------------------------------------------------- */

static int sim_init(hmm_device_t *dev, const struct hmm_device_attr *attr)
{
	struct sim_dev *sd = calloc(1, sizeof(*sd));
	size_t size = attr && attr->mem_size ? attr->mem_size
			: (size_t)hmm__option(HMM_OPT_SIM_MEM_SIZE);
	unsigned ne = attr && attr->engines ? attr->engines
			: (unsigned)hmm__option(HMM_OPT_SIM_ENGINES);
	int ret;

	if (!sd)
		return -ENOMEM;
	if (ne > 64) {
		free(sd);
		return -EINVAL;
	}
	size = (size + HMM_PAGE_MASK) & ~HMM_PAGE_MASK;
	sd->dev = dev;
	sd->pool_size = size;
	sd->link_gbps = hmm__option(HMM_OPT_SIM_LINK_GBPS);
	if (sd->link_gbps)
		dev->ops = &sim_ops_linked;
	/* Reserved, committed on use; 2 MiB aligned so that whole huge
	 * pages can move into it (host_movable). */
	sd->pool = hmm__mmap_own_aligned(size);
	if (sd->pool == MAP_FAILED) {
		free(sd);
		return -ENOMEM;
	}
	pthread_mutex_init(&sd->qlock, NULL);
	pthread_cond_init(&sd->qcond, NULL);
	pthread_cond_init(&sd->dcond, NULL);
	pthread_mutex_init(&sd->lock, NULL);
	sd->engines = calloc(ne, sizeof(*sd->engines));
	if (!sd->engines) {
		ret = -ENOMEM;
		goto fail;
	}
	ret = sim_map_create(sd);
	if (ret)
		goto fail;
	for (unsigned i = 0; i < ne; i++) {
		sd->engines[i].sd = sd;
		ret = hmm__thread_create(&sd->engines[i].th, engine_main,
					 &sd->engines[i], "hmm-sim-engine");
		if (ret)
			break;
		sd->nengines++;
	}
	dev->priv = sd;
	dev->mem_pages = size >> HMM_PAGE_SHIFT;
	return ret; /* on failure hmm_device_open calls fini */
fail:
	free(sd->engines);
	hmm__munmap_own(sd->pool, size);
	free(sd);
	return ret;
}

static void sim_fini(hmm_device_t *dev)
{
	struct sim_dev *sd = dev->priv;

	pthread_mutex_lock(&sd->qlock);
	sd->stop = 1;
	pthread_cond_broadcast(&sd->qcond);
	pthread_mutex_unlock(&sd->qlock);
	for (unsigned i = 0; i < sd->nengines; i++)
		hmm__thread_join(&sd->engines[i].th);
	if (sd->map) {
		hmm_dma_map_destroy(sd->map);
		hmm_iommu_destroy(sd->mmu);
	}
	sim_pt_destroy(&sd->pt);
	hmm__munmap_own(sd->pool, sd->pool_size);
	pthread_mutex_destroy(&sd->lock);
	pthread_mutex_destroy(&sd->qlock);
	pthread_cond_destroy(&sd->qcond);
	pthread_cond_destroy(&sd->dcond);
	free(sd->engines);
	free(sd);
	dev->priv = NULL;
}

static int sim_copy(hmm_device_t *dev, enum hmm_copy_dir dir,
		    const struct hmm_copy_desc *d, size_t n)
{
	struct sim_dev *sd = dev->priv;

	for (size_t i = 0; i < n; i++) {
		char *dp = sd->pool + (d[i].dpfn << HMM_PAGE_SHIFT);
		if (d[i].dpfn >= dev->mem_pages)
			return -EIO;
		/* Merge runs contiguous on both sides into one memcpy. */
		size_t run = 1;
		while (i + run < n && d[i + run].dpfn == d[i].dpfn + run &&
		       (char *)d[i + run].host ==
			       (char *)d[i].host + run * HMM_PAGE_SIZE &&
		       d[i + run].dpfn < dev->mem_pages)
			run++;
		if (dir == HMM_COPY_TO_DEVICE)
			memcpy(dp, d[i].host, run * HMM_PAGE_SIZE);
		else
			memcpy(d[i].host, dp, run * HMM_PAGE_SIZE);
		link_charge(sd, run * HMM_PAGE_SIZE);
		i += run - 1;
	}
	return 0;
}

static int sim_zero(hmm_device_t *dev, const uint64_t *dpfns, size_t n)
{
	struct sim_dev *sd = dev->priv;

	for (size_t i = 0; i < n; i++) {
		if (dpfns[i] >= dev->mem_pages)
			return -EIO;
		memset(sd->pool + (dpfns[i] << HMM_PAGE_SHIFT), 0,
		       HMM_PAGE_SIZE);
	}
	return 0;
}

static void *sim_host_ptr(hmm_device_t *dev, uint64_t dpfn)
{
	struct sim_dev *sd = dev->priv;

	return sd->pool + (dpfn << HMM_PAGE_SHIFT);
}

/*
 * The child of fork: the pool (private, copied on write) holds the
 * parent's device data as it was at the fork, and the page table mirrors
 * an address space laid out the same.  The engines are not there, and
 * commands the parent's threads queued are theirs to wait for: drop them,
 * take the locks anew, start engines.
 */
static int sim_fork_child(hmm_device_t *dev)
{
	struct sim_dev *sd = dev->priv;
	unsigned ne = sd->nengines;
	int ret = 0;

	pthread_mutex_init(&sd->qlock, NULL);
	pthread_cond_init(&sd->qcond, NULL);
	pthread_cond_init(&sd->dcond, NULL);
	pthread_mutex_init(&sd->lock, NULL);
	sd->head = sd->tail = NULL;
	sd->stop = 0;
	sd->nengines = 0;
	/* Notifiers do not follow a fork (the kernel's do not either): the
	 * device mirrors the child's address space from now on. */
	sim_pt_forget(&sd->pt);
	sd->map = NULL;
	sd->mmu = NULL;
	ret = sim_map_create(sd);
	if (ret)
		return ret;
	for (unsigned i = 0; i < ne; i++) {
		atomic_store(&sd->engines[i].busy_s, 0);
		atomic_store(&sd->engines[i].busy_e, 0);
		ret = hmm__thread_respawn(&sd->engines[i].th, engine_main,
					  &sd->engines[i], "hmm-sim-engine");
		if (ret)
			break;
		sd->nengines++;
	}
	return sd->nengines ? 0 : ret;
}

#define SIM_OPS                                                             \
	.name = "sim", .init = sim_init, .fini = sim_fini, .copy = sim_copy, \
	.zero = sim_zero, .fork_child = sim_fork_child, .tracks_dirty = true

/* Its memory is a private anonymous pool of this process: libhmm may
 * move whole huge pages into it and out of it (host_movable). */
static const struct hmm_driver_ops sim_ops = {
	SIM_OPS,
	.host_ptr = sim_host_ptr,
	.host_movable = true,
};

/* A sim device with a modelled link (HMM_SIM_LINK_GBPS) is a discrete
 * device: libhmm cannot address its memory (no host_ptr), so that every
 * transfer between it and system memory (or another device) goes through
 * its copy operation, and over the link. */
static const struct hmm_driver_ops sim_ops_linked = { SIM_OPS };

int hmm__sim_register(void)
{
	return hmm_driver_register(&sim_ops);
}

/* ---- commands ------------------------------------------------------------ */

static int submit(hmm_device_t *dev, struct sim_cmd *c,
		  struct hmm_sim_result *res)
{
	struct sim_dev *sd;

	if (!dev || !IS_SIM(dev))
		return -EINVAL;
	if (hmm_device_enter(dev))
		return -ENODEV;
	sd = dev->priv;
	pthread_mutex_lock(&sd->qlock);
	c->next = NULL;
	if (sd->tail)
		sd->tail->next = c;
	else
		sd->head = c;
	sd->tail = c;
	pthread_cond_signal(&sd->qcond);
	while (!c->done)
		pthread_cond_wait(&sd->dcond, &sd->qlock);
	pthread_mutex_unlock(&sd->qlock);
	hmm_device_command_done(dev);
	hmm_device_leave(dev);
	if (res)
		*res = c->res;
	return c->ret;
}

int hmm_sim_read(hmm_device_t *dev, const void *addr, void *buf, size_t len,
		 struct hmm_sim_result *res)
{
	/* The engine fills a bounce buffer; the caller's buffer, which may
	 * itself be managed memory, is copied here, outside any device lock.
	 * Large reads go a few MiB at a time through one bounce buffer,
	 * which stays in the caches instead of being faulted in afresh. */
	const size_t chunk = 4UL << 20;
	struct hmm_sim_result sum = { 0 }, r1;
	void *bounce;
	int ret = 0;

	if (!buf && len)
		return -EINVAL;
	bounce = malloc(len < chunk ? (len ? len : 1) : chunk);
	if (!bounce)
		return -ENOMEM;
	for (size_t off = 0; off < len || (!len && !off); off += chunk) {
		size_t n = len - off < chunk ? len - off : chunk;
		struct sim_cmd c = { .op = OP_READ,
				     .addr = (uintptr_t)addr + off,
				     .len = n, .buf = bounce };
		r1 = (struct hmm_sim_result){ 0 };
		ret = submit(dev, &c, &r1);
		sum.faults += r1.faults;
		sum.pages += r1.pages;
		if (ret || !len)
			break;
		memcpy((char *)buf + off, bounce, n);
	}
	free(bounce);
	if (res)
		*res = sum;
	return ret;
}

int hmm_sim_write(hmm_device_t *dev, void *addr, const void *buf, size_t len,
		  struct hmm_sim_result *res)
{
	struct sim_cmd c = { .op = OP_WRITE, .addr = (uintptr_t)addr, .len = len };
	int ret;

	if (!buf && len)
		return -EINVAL;
	c.buf = malloc(len ? len : 1);
	if (!c.buf)
		return -ENOMEM;
	memcpy(c.buf, buf, len);
	ret = submit(dev, &c, res);
	free(c.buf);
	return ret;
}

int hmm_sim_memcpy(hmm_device_t *dev, void *dst, const void *src, size_t len,
		   struct hmm_sim_result *res)
{
	struct sim_cmd c = { .op = OP_MEMCPY, .addr = (uintptr_t)dst,
			     .addr2 = (uintptr_t)src, .len = len };

	return submit(dev, &c, res);
}

int hmm_sim_fill64(hmm_device_t *dev, void *addr, uint64_t value, size_t len,
		   struct hmm_sim_result *res)
{
	struct sim_cmd c = { .op = OP_FILL, .addr = (uintptr_t)addr, .len = len,
			     .v1 = value };

	if (((uintptr_t)addr | len) & 7)
		return -EINVAL;
	return submit(dev, &c, res);
}

int hmm_sim_atomic_add(hmm_device_t *dev, uint64_t *addr, uint64_t value,
		       uint64_t *old)
{
	struct sim_cmd c = { .op = OP_ADD, .addr = (uintptr_t)addr, .v1 = value };
	int ret;

	if ((uintptr_t)addr & 7)
		return -EINVAL;
	ret = submit(dev, &c, NULL);
	if (!ret && old)
		*old = c.old;
	return ret;
}

int hmm_sim_atomic_cas(hmm_device_t *dev, uint64_t *addr, uint64_t expected,
		       uint64_t desired, uint64_t *old)
{
	struct sim_cmd c = { .op = OP_CAS, .addr = (uintptr_t)addr,
			     .v1 = expected, .v2 = desired };
	int ret;

	if ((uintptr_t)addr & 7)
		return -EINVAL;
	ret = submit(dev, &c, NULL);
	if (!ret && old)
		*old = c.old;
	return ret;
}

uint64_t hmm_sim_iova(hmm_device_t *dev, const void *addr)
{
	struct sim_dev *sd;
	uint64_t iova = 0;

	if (!dev || !IS_SIM(dev) || hmm_device_enter(dev))
		return 0;
	sd = dev->priv;
	iova = hmm_dma_map_iova(sd->map, addr);
	hmm_device_leave(dev);
	return iova;
}

int hmm_sim_dma_read(hmm_device_t *dev, uint64_t iova, void *buf, size_t len)
{
	struct sim_cmd c = { .op = OP_DMA_READ, .addr = iova, .len = len };
	int ret;

	if (!buf || !len)
		return -EINVAL;
	c.buf = malloc(len);
	if (!c.buf)
		return -ENOMEM;
	ret = submit(dev, &c, NULL);
	if (!ret)
		memcpy(buf, c.buf, len);
	free(c.buf);
	return ret;
}

int hmm_sim_dma_write(hmm_device_t *dev, uint64_t iova, const void *buf,
		      size_t len)
{
	struct sim_cmd c = { .op = OP_DMA_WRITE, .addr = iova, .len = len };
	int ret;

	if (!buf || !len)
		return -EINVAL;
	c.buf = malloc(len);
	if (!c.buf)
		return -ENOMEM;
	memcpy(c.buf, buf, len);
	ret = submit(dev, &c, NULL);
	free(c.buf);
	return ret;
}

int hmm_sim_launch(hmm_device_t *dev, void *addr, size_t len, int write,
		   hmm_sim_kernel_fn fn, void *arg, struct hmm_sim_result *res)
{
	struct sim_cmd c = { .op = OP_LAUNCH, .addr = (uintptr_t)addr,
			     .len = len, .fn = fn, .arg = arg, .write = write };

	if (!fn || ((uintptr_t)addr & HMM_PAGE_MASK) || (len & HMM_PAGE_MASK))
		return -EINVAL;
	return submit(dev, &c, res);
}
