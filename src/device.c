/* SPDX-License-Identifier: MIT */
/*
 * Devices: the driver registry, opening and closing devices, and the
 * device-memory page allocator (a stack of free page numbers per device).
 */
#include <stdlib.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define MAX_DRIVERS 8

static pthread_mutex_t drivers_lock = PTHREAD_MUTEX_INITIALIZER;
static const struct hmm_driver_ops *drivers[MAX_DRIVERS]; /* drivers_lock */

int hmm_driver_register(const struct hmm_driver_ops *ops)
{
	int ret = -ENOMEM;

	if (!ops || !ops->name || !ops->init || !ops->copy || !ops->zero)
		return -EINVAL;
	pthread_mutex_lock(&drivers_lock);
	for (int i = 0; i < MAX_DRIVERS; i++) {
		if (drivers[i] && !strcmp(drivers[i]->name, ops->name)) {
			ret = -EEXIST;
			break;
		}
		if (!drivers[i]) {
			drivers[i] = ops;
			ret = 0;
			break;
		}
	}
	pthread_mutex_unlock(&drivers_lock);
	return ret;
}

static const struct hmm_driver_ops *driver_find(const char *name)
{
	const struct hmm_driver_ops *ops = NULL;

	pthread_mutex_lock(&drivers_lock);
	for (int i = 0; i < MAX_DRIVERS && drivers[i]; i++)
		if (!strcmp(drivers[i]->name, name))
			ops = drivers[i];
	pthread_mutex_unlock(&drivers_lock);
	return ops;
}

int hmm_device_id(const hmm_device_t *dev)
{
	return dev ? (int)dev->id : -EINVAL;
}

hmm_device_t *hmm__device_of_owner(const void *owner)
{
	for (unsigned id = 0; owner && id < HMM_MAX_DEVICES; id++)
		if (hmm__device_get(id) == owner)
			return hmm__device_get(id);
	return NULL;
}

hmm_device_t *hmm__device_get(unsigned int id)
{
	hmm_device_t *d;

	if (id >= HMM_MAX_DEVICES)
		return NULL;
	pthread_mutex_lock(&hmm__ctx.dev_lock);
	d = hmm__ctx.devices[id];
	pthread_mutex_unlock(&hmm__ctx.dev_lock);
	return d;
}

/*
 * A movable device's memory (host_movable) is registered with libhmm's
 * userfaultfd, write-protect mode only, so that UFFDIO_MOVE may take
 * whole huge pages into it and out of it (thp.c).  Anything missing
 * leaves the device copying, as others do.
 */
static void pool_register(hmm_device_t *dev, struct hmm_devmem *m)
{
	size_t nchunks = dev->mem_pages / HMM_BLOCK_PAGES;
	uintptr_t pool;
	int ret;

	if (!dev->ops->host_movable || !dev->ops->host_ptr || !nchunks ||
	    !hmm__option(HMM_OPT_THP_MOVE))
		return;
	if ((hmm__ctx.caps & (HMM_CAP_MOVE | HMM_CAP_WP)) !=
	    (HMM_CAP_MOVE | HMM_CAP_WP)) {
		hmm__info("device %u: this kernel has no UFFDIO_MOVE or no "
			  "userfaultfd write-protection: huge pages are copied",
			  dev->id);
		return;
	}
	pool = (uintptr_t)dev->ops->host_ptr(dev, 0);
	if (pool & (HMM_BLOCK_SIZE - 1))
		return;
	m->clean = malloc(nchunks * sizeof(uint32_t));
	if (!m->clean)
		return;
	ret = hmm__uffd_register_wp(hmm__ctx.uffd, pool,
				    dev->mem_pages << HMM_PAGE_SHIFT);
	if (ret) {
		hmm__info("device %u: its memory cannot be registered (%s): "
			  "huge pages are copied", dev->id, strerror(-ret));
		free(m->clean);
		m->clean = NULL;
		return;
	}
	m->movable = true;
}

static void pool_unregister(hmm_device_t *dev)
{
	if (!dev->mem->movable)
		return;
	dev->mem->movable = false;
	hmm__uffd_unregister(hmm__ctx.uffd,
			     (uintptr_t)dev->ops->host_ptr(dev, 0),
			     dev->mem_pages << HMM_PAGE_SHIFT);
}

static int devmem_init(hmm_device_t *dev)
{
	struct hmm_devmem *m = calloc(1, sizeof(*m));

	if (!m || dev->mem_pages > UINT32_MAX) {
		free(m);
		return m ? -EINVAL : -ENOMEM;
	}
	m->free = malloc(dev->mem_pages * sizeof(uint32_t));
	m->owner = calloc(dev->mem_pages, sizeof(*m->owner));
	m->ref = calloc(dev->mem_pages, sizeof(*m->ref));
	m->dirty = calloc(dev->mem_pages, sizeof(*m->dirty));
	if (!m->free || !m->owner || !m->ref || !m->dirty) {
		free(m->free);
		free((void *)m->owner);
		free((void *)m->ref);
		free((void *)m->dirty);
		free(m);
		return -ENOMEM;
	}
	hmm__stat_add(HMM_STAT_metadata_bytes,
		      dev->mem_pages * (sizeof(*m->owner) + sizeof(*m->ref) +
					sizeof(*m->dirty)));
	m->npages = dev->mem_pages;
	pool_register(dev, m);
	if (m->movable) {
		/* Whole chunks on the chunk stack, the tail on the page
		 * stack; low numbers first. */
		size_t nchunks = dev->mem_pages / HMM_BLOCK_PAGES;
		for (size_t c = 0; c < nchunks; c++)
			m->clean[c] = (uint32_t)(nchunks - 1 - c);
		m->nclean = nchunks;
		for (size_t i = dev->mem_pages; i-- > nchunks * HMM_BLOCK_PAGES;)
			m->free[m->nfree++] = (uint32_t)i;
	} else {
		/* Hand out low page numbers first. */
		for (size_t i = 0; i < dev->mem_pages; i++)
			m->free[i] = (uint32_t)(dev->mem_pages - 1 - i);
		m->nfree = dev->mem_pages;
	}
	pthread_mutex_init(&m->lock, NULL);
	dev->mem = m;
	return 0;
}

/* Pages free on the page stack and in clean chunks.  m->lock. */
static size_t devmem_free_locked(const struct hmm_devmem *m)
{
	return m->nfree + m->nclean * HMM_BLOCK_PAGES;
}

size_t hmm__devmem_used(hmm_device_t *dev)
{
	struct hmm_devmem *m = dev->mem;
	size_t used;

	pthread_mutex_lock(&m->lock);
	used = m->npages - devmem_free_locked(m);
	pthread_mutex_unlock(&m->lock);
	return used;
}

/* Pages of the chunk on top of the clean stack go onto the page stack
 * (low numbers on top), for good.  m->lock. */
static void chunk_to_pages(struct hmm_devmem *m)
{
	uint32_t base = m->clean[--m->nclean] * (uint32_t)HMM_BLOCK_PAGES;

	for (size_t i = 0; i < HMM_BLOCK_PAGES; i++)
		m->free[m->nfree++] =
			base + (uint32_t)(HMM_BLOCK_PAGES - 1 - i);
}

int hmm__devmem_alloc_chunk(hmm_device_t *dev, uint32_t *out)
{
	struct hmm_devmem *m = dev->mem;
	uint32_t base;

	if (hmm__inject(HMM_INJ_DEVMEM_ALLOC))
		return -ENOMEM;
	pthread_mutex_lock(&m->lock);
	if (!m->movable || !m->nclean || (m->fail & HMM_FAIL_DEVMEM)) {
		pthread_mutex_unlock(&m->lock);
		return -ENOSPC; /* the caller allocates pages instead */
	}
	base = m->clean[--m->nclean] * (uint32_t)HMM_BLOCK_PAGES;
	for (size_t i = 0; i < HMM_BLOCK_PAGES; i++) {
		out[i] = base + (uint32_t)i;
		atomic_store_explicit(&m->dirty[base + i], 0,
				      memory_order_relaxed);
	}
	pthread_mutex_unlock(&m->lock);
	hmm__stat_add(HMM_STAT_device_bytes_in_use, HMM_BLOCK_SIZE);
	return 0;
}

void hmm__devmem_free_chunk(hmm_device_t *dev, uint32_t base)
{
	struct hmm_devmem *m = dev->mem;

	pthread_mutex_lock(&m->lock);
	for (size_t i = 0; i < HMM_BLOCK_PAGES; i++)
		atomic_store_explicit(&m->owner[base + i], 0,
				      memory_order_relaxed);
	m->clean[m->nclean++] = base / (uint32_t)HMM_BLOCK_PAGES;
	pthread_mutex_unlock(&m->lock);
	hmm__stat_sub(HMM_STAT_device_bytes_in_use, HMM_BLOCK_SIZE);
}

int hmm__devmem_alloc(hmm_device_t *dev, size_t n, uint32_t *out)
{
	struct hmm_devmem *m = dev->mem;

	if (hmm__inject(HMM_INJ_DEVMEM_ALLOC))
		return -ENOMEM;
	pthread_mutex_lock(&m->lock);
	if (devmem_free_locked(m) < n || (m->fail & HMM_FAIL_DEVMEM)) {
		m->fail &= ~HMM_FAIL_DEVMEM;
		pthread_mutex_unlock(&m->lock);
		return -ENOMEM;
	}
	while (m->nfree < n)
		chunk_to_pages(m);
	for (size_t i = 0; i < n; i++) {
		out[i] = m->free[--m->nfree];
		/* arriving data is the system copy's */
		atomic_store_explicit(&m->dirty[out[i]], 0,
				      memory_order_relaxed);
	}
	pthread_mutex_unlock(&m->lock);
	hmm__stat_add(HMM_STAT_device_bytes_in_use, n * HMM_PAGE_SIZE);
	return 0;
}

void hmm__devmem_fail_arm(hmm_device_t *dev, unsigned int what)
{
	pthread_mutex_lock(&dev->mem->lock);
	dev->mem->fail |= what;
	pthread_mutex_unlock(&dev->mem->lock);
}

bool hmm__devmem_fail_take(hmm_device_t *dev, unsigned int what)
{
	bool armed;

	pthread_mutex_lock(&dev->mem->lock);
	armed = dev->mem->fail & what;
	dev->mem->fail &= ~what;
	pthread_mutex_unlock(&dev->mem->lock);
	return armed;
}

void hmm__devmem_free(hmm_device_t *dev, const uint32_t *dpfns, size_t n)
{
	struct hmm_devmem *m;

	if (!dev)
		return;
	m = dev->mem;
	pthread_mutex_lock(&m->lock);
	for (size_t i = 0; i < n; i++) {
		atomic_store_explicit(&m->owner[dpfns[i]], 0,
				      memory_order_relaxed);
		m->free[m->nfree++] = dpfns[i];
	}
	pthread_mutex_unlock(&m->lock);
	hmm__stat_sub(HMM_STAT_device_bytes_in_use, n * HMM_PAGE_SIZE);
}

bool hmm__devpages_add(struct hmm_devpages *dp, unsigned dev, uint32_t dpfn)
{
	if (dp->n == dp->cap) {
		size_t cap = dp->cap ? 2 * dp->cap : 64;
		uint32_t *p = realloc(dp->dpfn, cap * sizeof(*p));
		if (!p)
			return false;
		dp->dpfn = p;
		uint8_t *d = realloc(dp->dev, cap);
		if (!d)
			return false;
		dp->dev = d;
		dp->cap = cap;
	}
	dp->dpfn[dp->n] = dpfn;
	dp->dev[dp->n++] = (uint8_t)dev;
	return true;
}

void hmm__devpages_free(struct hmm_devpages *dp)
{
	for (size_t k = 0; k < dp->n; k++)
		hmm__devmem_free(hmm__device_get(dp->dev[k]), &dp->dpfn[k], 1);
	free(dp->dpfn);
	free(dp->dev);
	*dp = (struct hmm_devpages){ 0 };
}

int hmm_device_open(const char *driver, const struct hmm_device_attr *attr,
		    hmm_device_t **out)
{
	const struct hmm_driver_ops *ops;
	hmm_device_t *dev;
	int ret, id = -1;

	if (!driver || !out)
		return -EINVAL;
	if (attr && (attr->flags || (attr->mem_size & HMM_PAGE_MASK)))
		return -EINVAL;
	ret = hmm__ensure();
	if (ret)
		return ret;
	ops = driver_find(driver);
	if (!ops)
		return -ENODEV;
	dev = calloc(1, sizeof(*dev));
	if (!dev)
		return -ENOMEM;
	dev->ops = ops;
	pthread_mutex_lock(&hmm__ctx.dev_lock);
	for (int i = 0; i < HMM_MAX_DEVICES; i++)
		if (!hmm__ctx.devices[i]) {
			id = i;
			/* reserve the slot; published once initialised */
			hmm__ctx.devices[i] = dev;
			break;
		}
	pthread_mutex_unlock(&hmm__ctx.dev_lock);
	if (id < 0) {
		free(dev);
		return -ENOMEM;
	}
	dev->id = (unsigned)id;
	ret = ops->init(dev, attr);
	if (!ret)
		ret = devmem_init(dev);
	if (ret) {
		if (dev->priv && ops->fini)
			ops->fini(dev);
		pthread_mutex_lock(&hmm__ctx.dev_lock);
		hmm__ctx.devices[id] = NULL;
		pthread_mutex_unlock(&hmm__ctx.dev_lock);
		free(dev);
		return ret;
	}
	/* Drivers that register host memory for DMA learn of libhmm's
	 * aliases (hostreg.c). */
	hmm__host_regions_attach(dev);
	*out = dev;
	return 0;
}

/* Bring every page of @dev home, looping until none is left (a migration
 * to @dev may have been in flight when the close began). */
static bool evict_all(hmm_device_t *dev)
{
	for (int round = 0; round < 1000; round++) {
		if (!hmm__devmem_used(dev))
			return true;
		hmm__dups_reclaim(dev);
		hmm__migrate_all_to_system(dev);
		if (round)
			sched_yield();
	}
	hmm__warn("device %u: pages still in use after close", dev->id);
	return false;
}

int hmm_device_enter(hmm_device_t *dev)
{
	atomic_fetch_add((_Atomic int *)&dev->users, 1);
	if (atomic_load((_Atomic int *)&dev->closed)) {
		atomic_fetch_sub((_Atomic int *)&dev->users, 1);
		return -ENODEV;
	}
	return 0;
}

void hmm_device_leave(hmm_device_t *dev)
{
	atomic_fetch_sub((_Atomic int *)&dev->users, 1);
}

/*
 * Close: refuse new calls, wait for those in flight, bring every page
 * home, stop the driver.  The struct itself is kept (a few dozen bytes) so
 * that a call racing with the close, or made after it, reads "closed" and
 * fails with -ENODEV instead of touching freed memory.
 */
int hmm_device_close(hmm_device_t *dev)
{
	if (!dev)
		return -EINVAL;
	bool busy = false;

	if (atomic_exchange((_Atomic int *)&dev->closed, 1))
		return -ENODEV;
	for (int i = 0; atomic_load((_Atomic int *)&dev->users); i++) {
		if (i == 10000)
			hmm__warn("device %u: still waiting for calls in "
				  "flight to finish", dev->id);
		/* At exit, a long device kernel does not hold the process:
		 * its pages come home under it (it faults on), and the
		 * driver's threads end with the process. */
		if (i == 200 && __atomic_load_n(&hmm__exiting,
						__ATOMIC_ACQUIRE)) {
			busy = true;
			break;
		}
		usleep(1000);
	}
	/* Its locks and holds end first: locked pages could not leave. */
	hmm__holds_drop_device(dev);
	if (!evict_all(dev)) {
		/* Pages still name this device: keep its memory, its slot
		 * and its id, so that nothing they point to is freed or
		 * reused.  The device accepts no more calls. */
		return -EBUSY;
	}
	hmm__advice_forget_device(dev->id);
	if (busy)
		return 0; /* exiting: the memory and threads go with the process */
	hmm__host_regions_detach(dev);
	pool_unregister(dev);
	if (dev->ops->fini)
		dev->ops->fini(dev);
	pthread_mutex_lock(&hmm__ctx.dev_lock);
	hmm__ctx.devices[dev->id] = NULL;
	pthread_mutex_unlock(&hmm__ctx.dev_lock);
	pthread_mutex_destroy(&dev->mem->lock);
	hmm__stat_sub(HMM_STAT_metadata_bytes,
		      dev->mem->npages *
			      (sizeof(*dev->mem->owner) + sizeof(*dev->mem->ref) +
			       sizeof(*dev->mem->dirty)));
	free(dev->mem->free);
	free(dev->mem->clean);
	free((void *)dev->mem->owner);
	free((void *)dev->mem->ref);
	free((void *)dev->mem->dirty);
	free(dev->mem);
	dev->mem = NULL;
	return 0;
}

int hmm_device_mem_usage(hmm_device_t *dev, size_t *used, size_t *total)
{
	if (!dev)
		return -EINVAL;
	if (hmm_device_enter(dev))
		return -ENODEV;
	pthread_mutex_lock(&dev->mem->lock);
	if (used)
		*used = dev->mem->npages - devmem_free_locked(dev->mem);
	if (total)
		*total = dev->mem->npages;
	pthread_mutex_unlock(&dev->mem->lock);
	hmm_device_leave(dev);
	return 0;
}

void hmm__devices_close_all(void)
{
	for (unsigned i = 0; i < HMM_MAX_DEVICES; i++) {
		hmm_device_t *d = hmm__device_get(i);
		if (d)
			hmm_device_close(d);
	}
}

/* ---- fork ---------------------------------------------------------------- */

static bool forkable(const hmm_device_t *d)
{
	return d->ops->fork_child != NULL;
}

bool hmm__devices_fork_ready(bool evict)
{
	bool ready = true;

	for (unsigned i = 0; i < HMM_MAX_DEVICES; i++) {
		hmm_device_t *d = hmm__device_get(i);
		if (!d || forkable(d) || atomic_load((_Atomic int *)&d->closed))
			continue;
		if (evict)
			hmm__migrate_all_to_system(d);
		ready &= hmm__devmem_used(d) == 0;
	}
	return ready;
}

void hmm__devices_fork_child(void)
{
	for (unsigned i = 0; i < HMM_MAX_DEVICES; i++) {
		hmm_device_t *d = hmm__ctx.devices[i];
		int ret = -ENOTSUP;
		if (!d)
			continue;
		/* The parent's calls in flight are not the child's. */
		atomic_store((_Atomic int *)&d->users, 0);
		if (atomic_load((_Atomic int *)&d->closed))
			continue; /* kept for pages that name it */
		pthread_mutex_init(&d->mem->lock, NULL);
		/* The child's userfaultfd is a new one, and its device
		 * memory is shared with the parent's until written: it
		 * copies (clean chunks still serve as pages). */
		d->mem->movable = false;
		if (forkable(d))
			ret = d->ops->fork_child(d);
		if (ret) {
			/* Its pages came home before the fork: the child's
			 * copy is not a device the child can use. */
			if (forkable(d))
				hmm__warn("device %u is not usable after fork: "
					  "%s", d->id, strerror(-ret));
			atomic_store((_Atomic int *)&d->closed, 1);
		}
	}
}

/* ---- eviction ------------------------------------------------------------ */

/* A page that just arrived is not "referenced": only device use counts,
 * so that a page the device keeps using outlives one migrated after it
 * and never touched (the inactive-list insertion of the kernel's LRU). */
void hmm__devmem_set_owner(hmm_device_t *dev, uint32_t dpfn, uintptr_t va)
{
	atomic_store_explicit(&dev->mem->owner[dpfn], va, memory_order_relaxed);
	atomic_store_explicit(&dev->mem->ref[dpfn], 0, memory_order_relaxed);
}

void hmm_device_mark_dirty(hmm_device_t *dev, uint64_t dpfn)
{
	if (dev && dev->mem && dpfn < dev->mem->npages)
		atomic_store_explicit(&dev->mem->dirty[dpfn], 1,
				      memory_order_release);
}

bool hmm__page_owes(hmm_device_t *dev, uint32_t dpfn, uint8_t st,
		    uint8_t devbits)
{
	if (dev->ops->tracks_dirty)
		return atomic_load_explicit(&dev->mem->dirty[dpfn],
					    memory_order_acquire);
	return PDEV_OWES(st, devbits);
}

bool hmm__page_owes_take(hmm_device_t *dev, uint32_t dpfn, uint8_t st,
			 uint8_t devbits)
{
	/* Taken before the copy: a write after the copy began marks the
	 * page again, for the next write-back. */
	if (dev->ops->tracks_dirty)
		return atomic_exchange_explicit(&dev->mem->dirty[dpfn], 0,
						memory_order_acq_rel);
	return PDEV_OWES(st, devbits);
}

void hmm_device_mark_used(hmm_device_t *dev, uint64_t dpfn)
{
	if (dpfn < dev->mem->npages)
		atomic_store_explicit(&dev->mem->ref[dpfn], 1,
				      memory_order_relaxed);
}

static int cmp_uintptr(const void *a, const void *b)
{
	uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * The clock: sweep the device's pages from the hand; a referenced page
 * gets a second chance (its bit cleared), an unreferenced one in use is a
 * victim.  The victims' addresses are then brought home, contiguous runs
 * together; a page that is no longer where its owner hint says (freed,
 * moved meanwhile) is simply not on this device there, and
 * hmm__migrate_to_system skips it.
 */
long hmm__devmem_evict(hmm_device_t *dev, size_t want)
{
	struct hmm_devmem *m = dev->mem;
	uintptr_t *va;
	size_t n = 0;
	long moved = 0, freed = 0;

	/* Read-only copies (dup.c) are the cheapest room: nothing to copy
	 * back.  They go whether or not eviction is on. */
	if (want && atomic_load_explicit(&hmm__dup_blocks, memory_order_relaxed)) {
		freed = hmm__dups_reclaim(dev);
		if ((size_t)freed >= want)
			return freed;
		want -= (size_t)freed;
	}
	if (!hmm__option(HMM_OPT_EVICT) || !want)
		return freed;
	uint64_t t = hmm__tracing() ? hmm__now_ns() : 0;

	want = HMM_MIN(want, m->npages);
	va = malloc(want * sizeof(*va));
	if (!va)
		return freed ? freed : -ENOMEM;
	for (size_t step = 0; step < 2 * m->npages && n < want;) {
		size_t n0 = n, k = n0;
		pthread_mutex_lock(&m->lock);
		for (; step < 2 * m->npages && n < want; step++) {
			size_t d = m->hand;
			uintptr_t owner;
			m->hand = (m->hand + 1) % m->npages;
			owner = atomic_load_explicit(&m->owner[d],
						     memory_order_relaxed);
			if (!owner)
				continue;
			if (atomic_exchange_explicit(&m->ref[d], 0,
						     memory_order_relaxed))
				continue;
			va[n++] = owner;
		}
		pthread_mutex_unlock(&m->lock);
		/* Pages locked to the device are no victims: look further
		 * (block locks are not taken under the pool's). */
		for (size_t j = n0; j < n; j++)
			if (!hmm__range_locked(va[j], va[j] + HMM_PAGE_SIZE))
				va[k++] = va[j];
		n = k;
	}
	qsort(va, n, sizeof(*va), cmp_uintptr);
	for (size_t i = 0; i < n;) {
		size_t j = i + 1;
		long r;
		while (j < n && va[j] == va[j - 1] + HMM_PAGE_SIZE)
			j++;
		r = hmm__migrate_to_system(va[i], va[j - 1] + HMM_PAGE_SIZE,
					   dev, 0);
		if (r > 0)
			moved += r;
		i = j;
	}
	free(va);
	hmm__stat_add(HMM_STAT_pages_evicted, (uint64_t)moved);
	if (hmm__tracing())
		hmm__trace_event("evict", "migrate", t, 0, (uint64_t)moved,
				 (int)dev->id);
	return moved + freed;
}
