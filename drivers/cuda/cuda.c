/* SPDX-License-Identifier: MIT */
/*
 * The cuda driver (libhmm-cuda): GPU memory behind libhmm's driver ops.
 *
 * It is a driver like any user's (examples/toy_driver.c): it sees only
 * hmm/hmm_driver.h and hmm/hmm_pt.h, lives in its own library, and
 * registers itself when that library loads, so that libhmm never needs
 * CUDA.  It uses the CUDA runtime (libcudart), and the one driver-API
 * call it needs (cuLaunchKernel, which launches a CUfunction from any
 * runtime of the process) through cudaGetDriverEntryPointByVersion, so
 * that nothing links libcuda: without a GPU or a driver, opening a device
 * fails with -ENODEV.
 *
 * Device memory: one cudaMalloc'd pool; device page dpfn is at
 * pool + dpfn * 4 KiB.
 *
 * Copies: one copy stream per device, so that every copy, zero and launch
 * on a device page is ordered after the copies queued before it.  Copies
 * to the GPU return once queued (the source is consumed: pinned pages
 * that stay, or a staging buffer); copies back complete before they
 * return, because libhmm maps the page next.  A host page inside one of
 * libhmm's aliases that this driver pinned (host_register: the
 * page-cache pages of HMM_MEM_ZERO_COPY memory and shmem file ranges) is
 * copied directly, so that a CPU fault has the GPU write the page-cache
 * page itself, which UFFDIO_CONTINUE then maps: the zero-copy fault-back.
 * Other host pages go through a ring of pinned staging buffers of the
 * calling thread.
 *
 * Mirror: an interval notifier over the whole address space and a device
 * page table (hmm_pt) of the translations the last launches used; the
 * invalidation callback clears them, and waits for the launches in flight
 * that use the range (a GPU kernel cannot fault, so the pages it uses
 * stay until it ends).  It never waits for a CPU fault: kernels only use
 * pages that were made present and pinned before they started.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <hmm/hmm.h>
#include <hmm/hmm_cuda.h>
#include <hmm/hmm_driver.h>
#include <hmm/hmm_pt.h>

#define PG 4096UL
#define STAGE_SLOTS 4
#define STAGE_BYTES (2UL << 20)
#define FAULT_TRIES 100

typedef CUresult (*launch_fn)(CUfunction, unsigned, unsigned, unsigned,
			      unsigned, unsigned, unsigned, unsigned, CUstream,
			      void **, void **);

/* A host mapping of libhmm's that the driver pinned (host_register). */
struct cuda_region {
	char *addr;
	size_t len;
	bool pinned;		/* cudaHostRegister succeeded */
	struct cuda_region *next;
};

/* A kernel in flight, and the pages it uses. */
struct cuda_launch {
	uintptr_t start[HMM_CUDA_MAX_RANGES], end[HMM_CUDA_MAX_RANGES];
	unsigned int n;
	cudaEvent_t done;
	struct cuda_launch *next;
};

/* The translation table of the last launch whose pages were all in GPU
 * memory (or reachable unpinned), kept in GPU memory while no
 * invalidation came: a launch over the same ranges reuses it and needs
 * no hmm_range_fault. */
struct cuda_tcache {
	uintptr_t start[HMM_CUDA_MAX_RANGES], end[HMM_CUDA_MAX_RANGES];
	bool write[HMM_CUDA_MAX_RANGES];
	unsigned int n;
	unsigned long gen;	/* cd->gen when it was built */
	uint64_t *gtable;
	struct hmm_cuda_view *gview;
};

struct cuda_dev {
	hmm_device_t *dev;
	int ordinal;
	char *pool;
	size_t pool_size;
	bool pageable;		/* the GPU reaches pageable memory */
	bool same_va;		/* registered memory has the host's address */
	cudaStream_t cstream;	/* copies and zeroes, in order */
	cudaStream_t kstream;	/* launches */
	atomic_int copy_err;	/* an asynchronous copy failed */

	pthread_mutex_t lock;	/* protects pt and launches against
				 * invalidations */
	struct hmm_interval_notifier notifier;
	bool notifier_on;
	struct hmm_pt *pt;
	struct cuda_launch *launches;
	unsigned long gen;	/* invalidations so far */
	struct cuda_tcache tcache;

	pthread_rwlock_t reg_lock; /* protects regions */
	struct cuda_region *regions;
	/* An application drop (MADV_REMOVE) may have replaced pinned
	 * page-cache pages: pin the regions again before the next copy. */
	atomic_bool regions_stale;
};

static launch_fn cu_launch;
static pthread_once_t launch_once = PTHREAD_ONCE_INIT;

/* ---- staging buffers: pinned, per thread ------------------------------- */

struct stage {
	int ordinal;
	char *buf[STAGE_SLOTS];
	cudaEvent_t ev[STAGE_SLOTS];
	unsigned int next;
};

static pthread_key_t stage_key;
static pthread_once_t stage_once = PTHREAD_ONCE_INIT;

static void stage_free(void *p)
{
	struct stage *s = p;

	for (int i = 0; i < STAGE_SLOTS; i++) {
		if (s->ev[i])
			cudaEventDestroy(s->ev[i]);
		if (s->buf[i])
			cudaFreeHost(s->buf[i]);
	}
	free(s);
}

static void stage_key_init(void)
{
	pthread_key_create(&stage_key, stage_free);
}

/* The calling thread's staging ring for GPU @ordinal, or NULL. */
static struct stage *stage_get(int ordinal)
{
	struct stage *s;

	pthread_once(&stage_once, stage_key_init);
	s = pthread_getspecific(stage_key);
	if (s && s->ordinal == ordinal)
		return s;
	if (s) {
		stage_free(s);
		pthread_setspecific(stage_key, NULL);
	}
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->ordinal = ordinal;
	for (int i = 0; i < STAGE_SLOTS; i++)
		if (cudaHostAlloc((void **)&s->buf[i], STAGE_BYTES,
				  cudaHostAllocPortable) != cudaSuccess ||
		    cudaEventCreateWithFlags(&s->ev[i],
					     cudaEventDisableTiming) !=
			    cudaSuccess) {
			stage_free(s);
			return NULL;
		}
	pthread_setspecific(stage_key, s);
	return s;
}

/* The next slot, once the copy that last used it is done. */
static int stage_slot(struct stage *s)
{
	unsigned int i = s->next++ % STAGE_SLOTS;

	return cudaEventSynchronize(s->ev[i]) == cudaSuccess ? (int)i : -1;
}

/* ---- pinned host regions (host_register) ------------------------------- */

static unsigned int pin_flags(bool ro)
{
	return cudaHostRegisterPortable | cudaHostRegisterMapped |
	       (ro ? cudaHostRegisterReadOnly : 0);
}

static bool pin(char *addr, size_t len)
{
	if (cudaHostRegister(addr, len, pin_flags(false)) == cudaSuccess)
		return true;
	cudaGetLastError();
	/* A read-only alias (a file open read-only) */
	if (cudaHostRegister(addr, len, pin_flags(true)) == cudaSuccess)
		return true;
	cudaGetLastError();
	return false;
}

static int cuda_host_register(hmm_device_t *dev, void *addr, size_t len)
{
	struct cuda_dev *cd = dev->priv;
	struct cuda_region *r = calloc(1, sizeof(*r));

	if (!r)
		return -ENOMEM;
	cudaSetDevice(cd->ordinal);
	r->addr = addr;
	r->len = len;
	r->pinned = pin(addr, len);
	pthread_rwlock_wrlock(&cd->reg_lock);
	r->next = cd->regions;
	cd->regions = r;
	pthread_rwlock_unlock(&cd->reg_lock);
	return r->pinned ? 0 : -ENOMEM;
}

static void cuda_host_unregister(hmm_device_t *dev, void *addr, size_t len)
{
	struct cuda_dev *cd = dev->priv;
	struct cuda_region **pp, *r = NULL;

	pthread_rwlock_wrlock(&cd->reg_lock);
	for (pp = &cd->regions; *pp; pp = &(*pp)->next)
		if ((*pp)->addr == addr && (*pp)->len == len) {
			r = *pp;
			*pp = r->next;
			break;
		}
	pthread_rwlock_unlock(&cd->reg_lock);
	if (r && r->pinned) {
		cudaSetDevice(cd->ordinal);
		cudaHostUnregister(r->addr);
		cudaGetLastError();
	}
	free(r);
}

/* Pin every region again (after an application's drop may have replaced
 * some of their pages). */
static void repin_regions(struct cuda_dev *cd)
{
	pthread_rwlock_wrlock(&cd->reg_lock);
	if (atomic_exchange(&cd->regions_stale, false))
		for (struct cuda_region *r = cd->regions; r; r = r->next) {
			if (r->pinned)
				cudaHostUnregister(r->addr);
			cudaGetLastError();
			r->pinned = pin(r->addr, r->len);
		}
	pthread_rwlock_unlock(&cd->reg_lock);
}

/* Whether [p, p + len) lies in a pinned region.  Under reg_lock (read). */
static bool pinned(struct cuda_dev *cd, const char *p, size_t len)
{
	for (struct cuda_region *r = cd->regions; r; r = r->next)
		if (r->pinned && p >= r->addr && p + len <= r->addr + r->len)
			return true;
	return false;
}

/* ---- copies ------------------------------------------------------------ */

/* The length of the run of descriptors from @i on whose device pages and
 * host pages are both contiguous, at most @max bytes. */
static size_t run_len(const struct hmm_copy_desc *d, size_t n, size_t i,
		      size_t max)
{
	size_t k = 1;

	while (i + k < n && k * PG < max && d[i + k].dpfn == d[i].dpfn + k &&
	       (char *)d[i + k].host == (char *)d[i].host + k * PG)
		k++;
	return k;
}

static int copy_to_device(struct cuda_dev *cd, const struct hmm_copy_desc *d,
			  size_t n)
{
	struct stage *s = NULL;

	for (size_t i = 0, k; i < n; i += k) {
		k = run_len(d, n, i, STAGE_BYTES);
		char *dst = cd->pool + d[i].dpfn * PG;
		size_t len = k * PG;
		cudaError_t e;
		if (pinned(cd, d[i].host, len)) {
			e = cudaMemcpyAsync(dst, d[i].host, len,
					    cudaMemcpyHostToDevice, cd->cstream);
		} else {
			int slot;
			if (!s && !(s = stage_get(cd->ordinal)))
				return -EIO;
			if ((slot = stage_slot(s)) < 0)
				return -EIO;
			/* The source is libhmm's safe pointer (read under its
			 * guard): consumed before this returns. */
			memcpy(s->buf[slot], d[i].host, len);
			e = cudaMemcpyAsync(dst, s->buf[slot], len,
					    cudaMemcpyHostToDevice, cd->cstream);
			if (e == cudaSuccess)
				e = cudaEventRecord(s->ev[slot], cd->cstream);
		}
		if (e != cudaSuccess)
			return -EIO;
	}
	return 0;
}

/* Staged copies back wait in the slots until the stream is synchronised. */
struct pending {
	int slot;
	void *host;
	size_t len;
};

static int drain(struct cuda_dev *cd, struct stage *s, struct pending *p,
		 size_t *np)
{
	if (cudaStreamSynchronize(cd->cstream) != cudaSuccess)
		return -EIO;
	for (size_t j = 0; j < *np; j++)
		memcpy(p[j].host, s->buf[p[j].slot], p[j].len);
	*np = 0;
	return 0;
}

static int copy_to_system(struct cuda_dev *cd, const struct hmm_copy_desc *d,
			  size_t n)
{
	struct pending p[STAGE_SLOTS];
	struct stage *s = NULL;
	size_t np = 0;
	int ret;

	for (size_t i = 0, k; i < n; i += k) {
		k = run_len(d, n, i, STAGE_BYTES);
		const char *src = cd->pool + d[i].dpfn * PG;
		size_t len = k * PG;
		cudaError_t e;
		if (pinned(cd, d[i].host, len)) {
			/* Straight into the page (the zero-copy path). */
			e = cudaMemcpyAsync(d[i].host, src, len,
					    cudaMemcpyDeviceToHost, cd->cstream);
		} else {
			if (!s && !(s = stage_get(cd->ordinal)))
				return -EIO;
			if (np == STAGE_SLOTS && (ret = drain(cd, s, p, &np)))
				return ret;
			/* The slot's last copy to a device (maybe on
			 * another device's stream) must be done. */
			int slot = stage_slot(s);
			if (slot < 0)
				return -EIO;
			e = cudaMemcpyAsync(s->buf[slot], src, len,
					    cudaMemcpyDeviceToHost, cd->cstream);
			p[np++] = (struct pending){ slot, d[i].host, len };
		}
		if (e != cudaSuccess)
			return -EIO;
	}
	if (s)
		return drain(cd, s, p, &np);
	return cudaStreamSynchronize(cd->cstream) == cudaSuccess ? 0 : -EIO;
}

static int cuda_copy(hmm_device_t *dev, enum hmm_copy_dir dir,
		     const struct hmm_copy_desc *d, size_t n)
{
	struct cuda_dev *cd = dev->priv;
	int ret;

	for (size_t i = 0; i < n; i++)
		if (d[i].dpfn >= dev->mem_pages)
			return -EIO;
	if (atomic_load(&cd->regions_stale))
		repin_regions(cd);
	cudaSetDevice(cd->ordinal);
	pthread_rwlock_rdlock(&cd->reg_lock);
	ret = dir == HMM_COPY_TO_DEVICE ? copy_to_device(cd, d, n)
					: copy_to_system(cd, d, n);
	pthread_rwlock_unlock(&cd->reg_lock);
	if (ret)
		cudaGetLastError();
	return ret;
}

static int cuda_zero(hmm_device_t *dev, const uint64_t *dpfns, size_t n)
{
	struct cuda_dev *cd = dev->priv;

	cudaSetDevice(cd->ordinal);
	for (size_t i = 0, k; i < n; i += k) {
		if (dpfns[i] >= dev->mem_pages)
			return -EIO;
		for (k = 1; i + k < n && dpfns[i + k] == dpfns[i] + k; k++)
			;
		if (dpfns[i + k - 1] >= dev->mem_pages ||
		    cudaMemsetAsync(cd->pool + dpfns[i] * PG, 0, k * PG,
				    cd->cstream) != cudaSuccess) {
			cudaGetLastError();
			return -EIO;
		}
	}
	return 0;
}

/* ---- the mirror ---------------------------------------------------------- */

static bool overlaps(const struct cuda_launch *l, uintptr_t s, uintptr_t e)
{
	for (unsigned int i = 0; i < l->n; i++)
		if (l->start[i] < e && s < l->end[i])
			return true;
	return false;
}

static bool cuda_invalidate(struct hmm_interval_notifier *n,
			    const struct hmm_notifier_range *r,
			    unsigned long cur_seq)
{
	struct cuda_dev *cd = (struct cuda_dev *)((char *)n -
		offsetof(struct cuda_dev, notifier));

	if (r->event == HMM_NOTIFY_CLEAR)
		atomic_store(&cd->regions_stale, true);
	pthread_mutex_lock(&cd->lock);
	hmm_interval_set_seq(n, cur_seq);
	hmm_pt_clear(cd->pt, r->start / PG, r->end / PG, NULL, NULL);
	cd->gen++; /* the cached translation table is stale */
	/* A kernel cannot fault: the pages it uses stay until it ends.  It
	 * waits for nothing the CPU does, so this wait is bounded by the
	 * kernel's run time even on the fault-service thread. */
	for (struct cuda_launch *l = cd->launches; l; l = l->next)
		if (overlaps(l, r->start, r->end))
			cudaEventSynchronize(l->done);
	pthread_mutex_unlock(&cd->lock);
	return true;
}

static const struct hmm_interval_notifier_ops cuda_notifier_ops = {
	.invalidate = cuda_invalidate,
};

/* ---- driver ops ---------------------------------------------------------- */

static int no_device(char *why, size_t len, const char *call, cudaError_t e)
{
	if (why && len)
		snprintf(why, len, "%s: %s", call, cudaGetErrorString(e));
	return -ENODEV;
}

int hmm_cuda_device_count(char *why, size_t len)
{
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);

	if (e != cudaSuccess)
		return no_device(why, len, "cudaGetDeviceCount", e);
	if (n < 1)
		return no_device(why, len, "cudaGetDeviceCount",
				 cudaErrorNoDevice);
	return n;
}

static void cuda_fini(hmm_device_t *dev)
{
	struct cuda_dev *cd = dev->priv;

	if (!cd)
		return;
	if (cd->notifier_on)
		hmm_interval_notifier_remove(&cd->notifier);
	cudaSetDevice(cd->ordinal);
	if (cd->cstream) {
		cudaStreamSynchronize(cd->cstream);
		cudaStreamDestroy(cd->cstream);
	}
	if (cd->kstream) {
		cudaStreamSynchronize(cd->kstream);
		cudaStreamDestroy(cd->kstream);
	}
	if (cd->pool)
		cudaFree(cd->pool);
	if (cd->tcache.gtable)
		cudaFree(cd->tcache.gtable);
	if (cd->tcache.gview)
		cudaFree(cd->tcache.gview);
	/* libhmm detached the regions before fini; any left were never
	 * announced as removed. */
	while (cd->regions) {
		struct cuda_region *r = cd->regions;
		cd->regions = r->next;
		if (r->pinned)
			cudaHostUnregister(r->addr);
		free(r);
	}
	cudaGetLastError();
	if (cd->pt)
		hmm_pt_destroy(cd->pt);
	pthread_rwlock_destroy(&cd->reg_lock);
	pthread_mutex_destroy(&cd->lock);
	free(cd);
	dev->priv = NULL;
}

static void launch_init(void)
{
	void *fn = NULL;
	enum cudaDriverEntryPointQueryResult q;

	if (cudaGetDriverEntryPointByVersion("cuLaunchKernel", &fn, 12000,
					     cudaEnableDefault, &q) ==
		    cudaSuccess &&
	    q == cudaDriverEntryPointSuccess)
		cu_launch = (launch_fn)fn;
	cudaGetLastError();
}

/* Parse $HMM_CUDA_DEVICE: the GPU to use (default 0). */
static int env_ordinal(int count)
{
	const char *s = getenv("HMM_CUDA_DEVICE");
	char *end;
	long v;

	if (!s || !*s)
		return 0;
	v = strtol(s, &end, 10);
	return *end || v < 0 || v >= count ? -1 : (int)v;
}

static int cuda_init(hmm_device_t *dev, const struct hmm_device_attr *attr)
{
	struct cuda_dev *cd;
	size_t free_b = 0, total_b = 0, size;
	int count = hmm_cuda_device_count(NULL, 0), v = 0, ret = -ENOMEM;

	if (count < 0)
		return count;
	if (attr && attr->engines > 64)
		return -EINVAL; /* as sim */
	cd = calloc(1, sizeof(*cd));
	if (!cd)
		return -ENOMEM;
	dev->priv = cd;
	cd->dev = dev;
	pthread_mutex_init(&cd->lock, NULL);
	pthread_rwlock_init(&cd->reg_lock, NULL);
	if ((cd->ordinal = env_ordinal(count)) < 0)
		return -EINVAL;
	if (cudaSetDevice(cd->ordinal) != cudaSuccess ||
	    cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
		cudaGetLastError();
		return -ENODEV;
	}
	/* Default: half the free GPU memory.  More than the GPU has fails
	 * as it would on sim when the pool cannot be mapped. */
	size = attr && attr->mem_size ? attr->mem_size : free_b / 2;
	size &= ~(PG - 1);
	if (!size || size > total_b)
		return -ENOMEM;
	if (cudaMalloc((void **)&cd->pool, size) != cudaSuccess) {
		cudaGetLastError();
		cd->pool = NULL;
		return -ENOMEM;
	}
	cd->pool_size = size;
	cudaDeviceGetAttribute(&v, cudaDevAttrPageableMemoryAccess, cd->ordinal);
	cd->pageable = v;
	v = 0;
	cudaDeviceGetAttribute(&v, cudaDevAttrCanUseHostPointerForRegisteredMem,
			       cd->ordinal);
	cd->same_va = v;
	if (cudaStreamCreateWithFlags(&cd->cstream, cudaStreamNonBlocking) !=
		    cudaSuccess ||
	    cudaStreamCreateWithFlags(&cd->kstream, cudaStreamNonBlocking) !=
		    cudaSuccess) {
		cudaGetLastError();
		return -ENOMEM;
	}
	pthread_once(&launch_once, launch_init);
	if ((ret = hmm_pt_create(&cd->pt)))
		return ret;
	ret = hmm_interval_notifier_insert(&cd->notifier, 0, 0,
					   &cuda_notifier_ops);
	if (ret)
		return ret;
	cd->notifier_on = true;
	dev->mem_pages = size / PG;
	return 0; /* on failure, hmm_device_open calls fini */
}

static const struct hmm_driver_ops cuda_ops = {
	.name = "cuda",
	.init = cuda_init,
	.fini = cuda_fini,
	.copy = cuda_copy,
	.zero = cuda_zero,
	/* No fork_child: CUDA does not survive fork(); libhmm brings the
	 * pages home before a fork and closes the device in the child. */
	.host_register = cuda_host_register,
	.host_unregister = cuda_host_unregister,
};

int hmm_cuda_register(void)
{
	int ret = hmm_driver_register(&cuda_ops);

	return ret == -EEXIST ? 0 : ret;
}

/* Loading libhmm-cuda makes "cuda" known to hmm_device_open. */
__attribute__((constructor)) static void cuda_register_on_load(void)
{
	hmm_cuda_register();
}

/* The cuda device behind @dev, entered (hmm_device_leave after), or NULL. */
static struct cuda_dev *cuda_enter(hmm_device_t *dev)
{
	if (!dev || dev->ops != &cuda_ops)
		return NULL;
	if (hmm_device_enter(dev))
		return NULL;
	return dev->priv;
}

int hmm_cuda_sync(hmm_device_t *dev)
{
	struct cuda_dev *cd;
	int ret = 0;

	if (!dev)
		return -EINVAL;
	if (!(cd = cuda_enter(dev)))
		return -ENODEV;
	cudaSetDevice(cd->ordinal);
	if (cudaStreamSynchronize(cd->cstream) != cudaSuccess ||
	    atomic_load(&cd->copy_err)) {
		atomic_store(&cd->copy_err, 1);
		cudaGetLastError();
		ret = -EIO;
	}
	hmm_device_leave(dev);
	return ret;
}

struct count_arg {
	uint64_t need;
	long n;
};

static void count_fn(uint64_t vpn, uint64_t entry, void *arg)
{
	struct count_arg *c = arg;

	(void)vpn;
	if ((entry & c->need) == c->need)
		c->n++;
}

long hmm_cuda_mirror_count(hmm_device_t *dev, const void *addr, size_t len,
			   unsigned int flags)
{
	uintptr_t s = (uintptr_t)addr & ~(PG - 1);
	uintptr_t e = ((uintptr_t)addr + len + PG - 1) & ~(PG - 1);
	struct count_arg c = { HMM_PTE_VALID, 0 };
	struct cuda_dev *cd;

	if (!dev || !len || e < s || e / PG > (1ULL << HMM_PT_VPN_BITS))
		return -EINVAL;
	if (!(cd = cuda_enter(dev)))
		return -ENODEV;
	if (flags & HMM_CUDA_WRITE)
		c.need |= HMM_PTE_WRITE;
	pthread_mutex_lock(&cd->lock);
	hmm_pt_walk(cd->pt, s / PG, e / PG, count_fn, &c);
	pthread_mutex_unlock(&cd->lock);
	hmm_device_leave(dev);
	return c.n;
}

/* ---- launches ------------------------------------------------------------ */

/* One declared range of a launch, page aligned, with its pfns. */
struct lrange {
	uintptr_t start, end;
	size_t npages;
	bool write;
	uint64_t *pfns;
};

/* A run of system pages registered for one launch. */
struct hostpin {
	char *addr;
	size_t len;
};

struct launch_state {
	struct lrange r[HMM_CUDA_MAX_RANGES];
	unsigned int n;
	size_t total;		/* pages in all ranges */
	struct hostpin *pins;
	size_t npins, maxpins;
	uint64_t *table;	/* host copy of the GPU translation table */
	uint64_t *gtable;	/* the GPU's */
	struct hmm_cuda_view *gview;
};

static void unpin_all(struct launch_state *ls)
{
	for (size_t i = 0; i < ls->npins; i++)
		cudaHostUnregister(ls->pins[i].addr);
	ls->npins = 0;
	cudaGetLastError();
}

/* Register the runs of system pages of the ranges for the GPU (unless it
 * reaches pageable memory).  Pages registered by someone else already
 * (the application, or a pinned alias) are fine. */
static int pin_system_runs(struct cuda_dev *cd, struct launch_state *ls)
{
	if (cd->pageable)
		return 0;
	for (unsigned int i = 0; i < ls->n; i++) {
		struct lrange *r = &ls->r[i];
		for (size_t k = 0, m; k < r->npages; k += m) {
			m = 1;
			if (r->pfns[k] & HMM_PFN_DEVICE)
				continue;
			while (k + m < r->npages &&
			       !(r->pfns[k + m] & HMM_PFN_DEVICE))
				m++;
			char *a = (char *)(r->start + k * PG);
			cudaError_t e = cudaHostRegister(a, m * PG,
						pin_flags(!r->write));
			if (e == cudaErrorHostMemoryAlreadyRegistered) {
				cudaGetLastError();
				continue;
			}
			if (e != cudaSuccess) {
				cudaGetLastError();
				return -EFAULT;
			}
			if (ls->npins == ls->maxpins) {
				size_t nm = ls->maxpins ? 2 * ls->maxpins : 16;
				void *p = realloc(ls->pins, nm * sizeof(*ls->pins));
				if (!p) {
					cudaHostUnregister(a);
					return -ENOMEM;
				}
				ls->pins = p;
				ls->maxpins = nm;
			}
			ls->pins[ls->npins++] = (struct hostpin){ a, m * PG };
		}
	}
	return 0;
}

/* The GPU's address of the page of @pfn at @va. */
static uint64_t gpu_addr(struct cuda_dev *cd, uint64_t pfn, uintptr_t va)
{
	void *dp = NULL;

	if (pfn & HMM_PFN_DEVICE)
		return (uint64_t)(uintptr_t)(cd->pool +
					     hmm_pfn_to_frame(pfn) * PG);
	if (cd->pageable || cd->same_va)
		return va;
	if (cudaHostGetDevicePointer(&dp, (void *)va, 0) != cudaSuccess) {
		cudaGetLastError();
		return va;
	}
	return (uint64_t)(uintptr_t)dp;
}

/* Fault the ranges in for the device, pin their system pages, and check
 * under cd->lock that nothing changed; returns 0 with cd->lock held. */
static int fault_and_lock(struct cuda_dev *cd, struct launch_state *ls)
{
	for (int tries = 0; tries < FAULT_TRIES; tries++) {
		unsigned long seq = hmm_interval_read_begin(&cd->notifier);
		int ret = 0;
		for (unsigned int i = 0; i < ls->n && !ret; i++) {
			struct lrange *r = &ls->r[i];
			struct hmm_range hr = {
				.notifier = &cd->notifier,
				.notifier_seq = seq,
				.start = r->start,
				.end = r->end,
				.hmm_pfns = r->pfns,
				.default_flags = HMM_PFN_REQ_FAULT |
					(r->write ? HMM_PFN_REQ_WRITE : 0),
				.dev_private_owner = hmm_device_owner(cd->dev),
			};
			ret = hmm_range_fault(&hr);
		}
		if (ret == -EBUSY)
			continue;
		if (ret)
			return ret;
		if ((ret = pin_system_runs(cd, ls))) {
			unpin_all(ls);
			return ret;
		}
		pthread_mutex_lock(&cd->lock);
		if (!hmm_interval_read_retry(&cd->notifier, seq))
			return 0;
		pthread_mutex_unlock(&cd->lock);
		unpin_all(ls);
	}
	return -EBUSY;
}

/* Under cd->lock: the device page table and the translation table. */
static int install(struct cuda_dev *cd, struct launch_state *ls)
{
	size_t off = 0;
	int ret = 0;

	for (unsigned int i = 0; i < ls->n && !ret; i++) {
		struct lrange *r = &ls->r[i];
		for (size_t k = 0; k < r->npages; k++) {
			uint64_t pfn = r->pfns[k];
			ls->table[off + k] = gpu_addr(cd, pfn, r->start + k * PG);
			if (pfn & HMM_PFN_DEVICE)
				hmm_device_mark_used(cd->dev,
						     hmm_pfn_to_frame(pfn));
		}
		ret = hmm_pt_set(cd->pt, r->start / PG, r->npages, r->pfns);
		off += r->npages;
	}
	return ret;
}

static int launch_prepare(struct launch_state *ls,
			  const struct hmm_cuda_range *ranges, unsigned int n)
{
	ls->n = n;
	for (unsigned int i = 0; i < n; i++) {
		uintptr_t a = (uintptr_t)ranges[i].addr;
		struct lrange *r = &ls->r[i];
		if (!ranges[i].len || !(ranges[i].flags & HMM_CUDA_RW) ||
		    (ranges[i].flags & ~HMM_CUDA_RW) ||
		    a + ranges[i].len < a)
			return -EINVAL;
		r->start = a & ~(PG - 1);
		r->end = (a + ranges[i].len + PG - 1) & ~(PG - 1);
		r->npages = (r->end - r->start) / PG;
		r->write = ranges[i].flags & HMM_CUDA_WRITE;
		r->pfns = calloc(r->npages, sizeof(*r->pfns));
		if (!r->pfns)
			return -ENOMEM;
		ls->total += r->npages;
	}
	return 0;
}

/* The translation tables of a launch that the cache does not serve. */
static int launch_tables(struct launch_state *ls)
{
	ls->table = malloc((ls->total ? ls->total : 1) * sizeof(*ls->table));
	if (!ls->table)
		return -ENOMEM;
	if (cudaMalloc((void **)&ls->gtable,
		       (ls->total ? ls->total : 1) * sizeof(uint64_t)) !=
		    cudaSuccess ||
	    cudaMalloc((void **)&ls->gview, sizeof(*ls->gview)) !=
		    cudaSuccess) {
		cudaGetLastError();
		return -ENOMEM;
	}
	return 0;
}

static void launch_cleanup(struct launch_state *ls)
{
	unpin_all(ls);
	free(ls->pins);
	for (unsigned int i = 0; i < ls->n; i++)
		free(ls->r[i].pfns);
	free(ls->table);
	if (ls->gtable)
		cudaFree(ls->gtable);
	if (ls->gview)
		cudaFree(ls->gview);
	cudaGetLastError();
}

/* Under cd->lock: upload the tables and queue the kernel after the copies
 * queued so far; @l gets the event of its end. */
static int enqueue(struct cuda_dev *cd, struct launch_state *ls, void *func,
		   const struct hmm_cuda_dims *dims, void **args,
		   unsigned int nargs, struct cuda_launch *l,
		   struct hmm_cuda_view *cached)
{
	struct hmm_cuda_view v = { .nranges = ls->n };
	void *params[1 + 64];
	cudaEvent_t copies;
	size_t off = 0;

	for (unsigned int i = 0; i < ls->n; i++) {
		v.start[i] = ls->r[i].start;
		v.end[i] = ls->r[i].end;
		v.pages[i] = ls->gtable + off;
		off += ls->r[i].npages;
	}
	params[0] = cached ? &cached : &ls->gview;
	for (unsigned int i = 0; i < nargs; i++)
		params[1 + i] = args[i];
	if (cudaEventCreateWithFlags(&copies, cudaEventDisableTiming) !=
	    cudaSuccess)
		return -EIO;
	cudaError_t e = cudaEventRecord(copies, cd->cstream);
	if (e == cudaSuccess)
		e = cudaStreamWaitEvent(cd->kstream, copies, 0);
	cudaEventDestroy(copies);
	if (e == cudaSuccess && !cached)
		e = cudaMemcpyAsync(ls->gtable, ls->table,
				    ls->total * sizeof(uint64_t),
				    cudaMemcpyHostToDevice, cd->kstream);
	if (e == cudaSuccess && !cached)
		e = cudaMemcpyAsync(ls->gview, &v, sizeof(v),
				    cudaMemcpyHostToDevice, cd->kstream);
	/* Pageable sources: both copies are done with them on return. */
	if (e != cudaSuccess)
		return -EIO;
	if (cu_launch(func, dims->grid[0], dims->grid[1], dims->grid[2],
		      dims->block[0], dims->block[1], dims->block[2],
		      dims->shared_mem, (CUstream)cd->kstream, params, NULL) !=
	    CUDA_SUCCESS)
		return -EIO;
	if (cudaEventCreateWithFlags(&l->done, cudaEventDisableTiming) !=
		    cudaSuccess ||
	    cudaEventRecord(l->done, cd->kstream) != cudaSuccess) {
		cudaStreamSynchronize(cd->kstream);
		return -EIO;
	}
	return 0;
}

/* Under cd->lock: whether the cached table serves these ranges. */
static bool tcache_hit(struct cuda_dev *cd, const struct launch_state *ls)
{
	const struct cuda_tcache *c = &cd->tcache;

	if (!c->gview || c->gen != cd->gen || c->n != ls->n)
		return false;
	for (unsigned int i = 0; i < ls->n; i++)
		if (c->start[i] != ls->r[i].start || c->end[i] != ls->r[i].end ||
		    (ls->r[i].write && !c->write[i]))
			return false;
	return true;
}

/* Under cd->lock, after a launch: keep its table if no page of it needed
 * pinning for the launch (the pins end with it). */
static void tcache_keep(struct cuda_dev *cd, struct launch_state *ls,
			unsigned long gen)
{
	struct cuda_tcache *c = &cd->tcache;

	if (ls->npins || gen != cd->gen)
		return;
	for (unsigned int i = 0; !cd->pageable && i < ls->n; i++)
		for (size_t k = 0; k < ls->r[i].npages; k++)
			if (!(ls->r[i].pfns[k] & HMM_PFN_DEVICE))
				return; /* registered by someone else */
	if (c->gtable)
		cudaFree(c->gtable);
	if (c->gview)
		cudaFree(c->gview);
	c->n = ls->n;
	for (unsigned int i = 0; i < ls->n; i++) {
		c->start[i] = ls->r[i].start;
		c->end[i] = ls->r[i].end;
		c->write[i] = ls->r[i].write;
	}
	c->gen = gen;
	c->gtable = ls->gtable;
	c->gview = ls->gview;
	ls->gtable = NULL;
	ls->gview = NULL;
}

int hmm_cuda_launch(hmm_device_t *dev, void *func,
		    const struct hmm_cuda_dims *dims, void **args,
		    unsigned int nargs, const struct hmm_cuda_range *ranges,
		    unsigned int nranges)
{
	struct launch_state ls = { 0 };
	struct cuda_launch l = { 0 };
	struct cuda_dev *cd;
	unsigned long gen;
	bool hit = false;
	int ret;

	if (!dev || !func || !dims || (nargs && !args) || nargs > 64 ||
	    nranges > HMM_CUDA_MAX_RANGES || (nranges && !ranges))
		return -EINVAL;
	if (!(cd = cuda_enter(dev)))
		return -ENODEV;
	if (!cu_launch) {
		hmm_device_leave(dev);
		return -EIO;
	}
	cudaSetDevice(cd->ordinal);
	ret = launch_prepare(&ls, ranges, nranges);
	if (!ret) {
		pthread_mutex_lock(&cd->lock);
		hit = tcache_hit(cd, &ls);
		if (!hit)
			pthread_mutex_unlock(&cd->lock);
	}
	if (!ret && !hit)
		ret = launch_tables(&ls);
	if (!ret && !hit)
		ret = fault_and_lock(cd, &ls);
	if (!ret) {
		gen = cd->gen;
		if (!hit)
			ret = install(cd, &ls);
		if (!ret)
			ret = enqueue(cd, &ls, func, dims, args, nargs, &l,
				      hit ? cd->tcache.gview : NULL);
		if (!ret && !hit)
			tcache_keep(cd, &ls, gen);
		if (!ret) {
			for (unsigned int i = 0; i < ls.n; i++) {
				l.start[i] = ls.r[i].start;
				l.end[i] = ls.r[i].end;
			}
			l.n = ls.n;
			l.next = cd->launches;
			cd->launches = &l;
		}
		pthread_mutex_unlock(&cd->lock);
	}
	if (!ret) {
		/* Invalidations of its ranges wait for this event meanwhile. */
		if (cudaEventSynchronize(l.done) != cudaSuccess)
			ret = -EIO;
		pthread_mutex_lock(&cd->lock);
		for (struct cuda_launch **pp = &cd->launches; *pp;
		     pp = &(*pp)->next)
			if (*pp == &l) {
				*pp = l.next;
				break;
			}
		pthread_mutex_unlock(&cd->lock);
		cudaEventDestroy(l.done);
		/* Pages the kernel may have written, file write-back. */
		hmm_device_command_done(dev);
	}
	launch_cleanup(&ls);
	hmm_device_leave(dev);
	return ret;
}
