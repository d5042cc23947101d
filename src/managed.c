/* SPDX-License-Identifier: MIT */
/*
 * Managed memory: adopting existing anonymous ranges, allocating
 * memfd-backed memory, releasing, and the public migration entry point.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "compat.h"
#include "internal.h"

/* Check that [s, e) is mapped, accessible, and (for adoption) private
 * anonymous.  Returns 0 or -errno; *vmas is set on success. */
static int check_vmas(uintptr_t s, uintptr_t e, bool adopt,
		      struct hmm_vma **vmas, long *nvmas)
{
	long n = hmm__vma_snapshot(s, e, vmas);
	int ret;

	if (n < 0)
		return (int)n;
	hmm__file_fix_prot(vmas, &n);
	ret = hmm__vma_covered(*vmas, n, s, e);
	for (long i = 0; !ret && i < n; i++) {
		/* (file pieces split off a VMA may lie outside [s, e)) */
		if ((*vmas)[i].end <= s || (*vmas)[i].start >= e)
			continue;
		if ((*vmas)[i].prot == PROT_NONE || (*vmas)[i].special)
			ret = -EFAULT;
		else if (adopt && !(*vmas)[i].anon && !(*vmas)[i].shmem_anon)
			ret = -EOPNOTSUPP;
		else if (adopt && (*vmas)[i].shmem_anon && n > 1)
			ret = -EOPNOTSUPP; /* shared: one mapping at a time */
	}
	if (ret) {
		free(*vmas);
		*vmas = NULL;
		return ret;
	}
	*nvmas = n;
	return 0;
}

int hmm__check_vmas(uintptr_t s, uintptr_t e, struct hmm_vma **vmas,
		    long *nvmas)
{
	return check_vmas(s, e, false, vmas, nvmas);
}

/* Whether any page of [s, e) is on a device or in flight. */
bool hmm__range_busy(uintptr_t s, uintptr_t e)
{
	for (uintptr_t p = s; p < e;) {
		struct hmm_block *b = hmm__block_lookup(p);
		uintptr_t bend = HMM_MIN((p & ~(HMM_BLOCK_SIZE - 1)) +
						 HMM_BLOCK_SIZE, e);
		if (b) {
			pthread_mutex_lock(&b->lock);
			for (uintptr_t q = p; q < bend; q += HMM_PAGE_SIZE) {
				uint8_t k = PS_KIND(b->state[hmm__block_index(q)]);
				if (k == PS_DEVICE || k == PS_MIGRATING) {
					pthread_mutex_unlock(&b->lock);
					return true;
				}
			}
			pthread_mutex_unlock(&b->lock);
		}
		p = bend;
	}
	return false;
}

/* An earlier mapping at this address may still have pages in flight (a
 * migration that met its munmap finishes them off): wait for them. */
void hmm__wait_idle(uintptr_t s, uintptr_t e)
{
	long ms = hmm__option(HMM_OPT_MIGRATE_TIMEOUT_MS);

	for (long waited = 0; hmm__range_busy(s, e) && waited < ms; waited++) {
		hmm__service_sync();
		usleep(1000);
	}
}

int hmm_range_adopt(void *addr, size_t len, unsigned int flags)
{
	uintptr_t s = (uintptr_t)addr, e = s + len;
	struct hmm_alloc *a = NULL;
	struct hmm_vma *vmas;
	bool shared;
	long nvmas;
	int ret;

	ret = hmm__check_range(addr, len);
	if (ret || flags)
		return ret ? ret : -EINVAL;
	ret = hmm__ensure();
	if (ret)
		return ret;
	/* An unmap of this address that libhmm did not see through its
	 * wrappers (libc's own) may still have its event queued. */
	hmm__service_sync();
	ret = check_vmas(s, e, true, &vmas, &nvmas);
	if (ret)
		return ret;
	/* Managed already: no waiting for its pages (checked again below,
	 * under the lock). */
	pthread_rwlock_rdlock(&hmm__ctx.ranges_lock);
	ret = hmm__ranges_overlap(s, e) ? -EEXIST : 0;
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	if (ret) {
		free(vmas);
		return ret;
	}
	hmm__wait_idle(s, e);
	shared = vmas[0].shmem_anon;
	if (shared && hmm__mapped_elsewhere(&vmas[0])) {
		/* Another process (a child from an earlier fork) maps it:
		 * moving its pages would leave holes there. */
		free(vmas);
		return -EBUSY;
	}
	if (shared) {
		/* A second mapping of the same shmem pages, made before the
		 * range is registered so that it is not: libhmm reads and
		 * punches pages through it (mremap with old size 0). */
		a = calloc(1, sizeof(*a));
		if (!a)
			return -ENOMEM;
		a->alias = (void *)syscall(SYS_mremap, addr, 0, len,
					   MREMAP_MAYMOVE);
		if (a->alias == MAP_FAILED) {
			free(a);
			return -ENOMEM;
		}
		hmm__own_add(a->alias, len);
		a->start = s;
		a->len = len;
		a->memfd = -1;
		a->obj = vmas[0];
	}
	free(vmas);

	pthread_rwlock_wrlock(&hmm__ctx.ranges_lock);
	if (hmm__ranges_overlap(s, e)) {
		ret = -EEXIST;
		goto out;
	}
	ret = hmm__uffd_register(hmm__ctx.uffd, s, len,
				 hmm__ctx.caps & HMM_CAP_WP);
	if (ret) {
		/* EINVAL from the kernel here means a VMA type it refuses. */
		if (ret == -EINVAL)
			ret = -EOPNOTSUPP;
		goto out;
	}
	ret = hmm__pages_set_state(s, e, PS_SYSTEM);
	if (ret == -EAGAIN)
		ret = -EBUSY; /* still in flight after wait_idle's deadline */
	if (!ret)
		ret = hmm__range_insert(s, e, shared ? HMM_MK_SHMEM : HMM_MK_ANON,
					a, 0);
	if (ret) {
		hmm__pages_set_state(s, e, PS_NONE);
		hmm__uffd_unregister(hmm__ctx.uffd, s, len);
	}
out:
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	if (ret && a) {
		hmm__munmap_own(a->alias, len);
		free(a);
	}
	if (!ret && !shared)
		hmm__thp_adopted(s, e);
	return ret;
}

/* Bring [s, e) home, looping until no page is left on a device (a
 * migration may have been in flight), then mark it unmanaged.  The range
 * is already out of the registry, so no new migration starts. */
static int unmanage(uintptr_t s, uintptr_t e)
{
	for (int round = 0; round < 1000; round++) {
		long r = hmm__migrate_to_system(s, e, NULL, 0);
		if (r < 0 && r != -ETIMEDOUT && r != -EAGAIN)
			return (int)r;
		if (!hmm__range_busy(s, e)) {
			int ret = hmm__pages_set_state(s, e, PS_NONE);
			if (ret != -EAGAIN) {
				/* Read-only copies on devices go too: no copy
				 * is made of an unmanaged page. */
				hmm__dups_collapse(s, e, NULL, HMM_NOTIFY_UNMAP,
						   true);
				return ret;
			}
		}
		sched_yield();
	}
	return -EBUSY;
}

int hmm_range_release(void *addr, size_t len)
{
	uintptr_t s = (uintptr_t)addr, e = s + len;
	struct hmm_alloc *alloc = NULL;
	enum hmm_mkind kind = HMM_MK_ANON;
	uint64_t off = 0;
	int ret = hmm__check_range(addr, len);

	if (ret)
		return ret;
	ret = hmm__ensure();
	if (ret)
		return ret;
	/* A locked range stays managed until it is unlocked. */
	if (hmm__range_locked(s, e))
		return -EBUSY;
	pthread_rwlock_wrlock(&hmm__ctx.ranges_lock);
	ret = hmm__ranges_cover(s, e);
	if (!ret) {
		for (uintptr_t p = s; p < e;) {
			struct hmm_mrange *r = hmm__range_find(p);
			if (r->kind == HMM_MK_SHMEM && r->alloc->memfd >= 0) {
				ret = -EINVAL; /* use hmm_mem_free */
				break;
			}
			if (r->kind != HMM_MK_ANON) {
				/* Adopted shared memory, files: keep the
				 * alias until the pages are home. */
				if ((alloc && alloc != r->alloc) ||
				    (!alloc && p != s)) {
					ret = -EINVAL; /* one at a time */
					break;
				}
				if (!alloc) {
					off = r->off + (s - r->start);
					kind = r->kind;
				}
				alloc = r->alloc;
			} else if (alloc) {
				ret = -EINVAL; /* shared and private mixed */
				break;
			}
			p = r->end;
		}
	}
	struct hmm_mrange piece = { s, e, kind, alloc, off };
	if (!ret) {
		if (alloc)
			alloc->refs++;
		/* A file's pages come home by writing the file: until they
		 * have, the migration engine finds the range here. */
		if (HMM_MK_IS_FILE(kind))
			ret = hmm__retired_push(&piece);
		if (!ret)
			ret = hmm__range_trim(s, e);
		if (ret && HMM_MK_IS_FILE(kind))
			hmm__retired_pop(s);
		if (ret)
			hmm__alloc_put(alloc);
	}
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	if (ret)
		return ret;
	/* Holds for atomics end (the range is valid and out of the
	 * registry: no new one starts); new migrations fail with -ENOENT. */
	hmm__holds_revoke(s, e, NULL);
	ret = unmanage(s, e);
	if (HMM_MK_IS_FILE(kind)) {
		pthread_rwlock_wrlock(&hmm__ctx.ranges_lock);
		hmm__retired_pop(s);
		pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	}
	if (!ret && kind != HMM_MK_FPROT) {
		ret = hmm__uffd_unregister(hmm__ctx.uffd, s, len);
		/* Still registered: faults would reach libhmm for memory it
		 * no longer knows.  Manage it again (every page is home). */
		if (ret)
			hmm__pages_set_state(s, e, PS_SYSTEM);
	}
	pthread_rwlock_wrlock(&hmm__ctx.ranges_lock);
	if (ret)
		/* Pages are still on a device: keep the registration, or
		 * they would read as zeros.  Manage the range again (or it
		 * could not be unregistered). */
		hmm__range_insert(s, e, kind, alloc, off);
	hmm__alloc_put(alloc);
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	return ret;
}

/*
 * hmm_mem_alloc(HMM_MEM_ZERO_COPY): a memfd of libhmm's, mapped shared and
 * managed as a file range (hmm_file_adopt, MINOR faults when the kernel
 * has them).  A page that moves to a device keeps its page-cache page;
 * coming back, the device's data is written into that page through the
 * alias and UFFDIO_CONTINUE maps it, so a driver that pinned the alias
 * (host_register) DMAs straight into the page: no bounce buffer, no
 * UFFDIO_COPY.  The price: device-resident pages free no system memory.
 */
static int mem_alloc_zero_copy(size_t len, void **out)
{
	int fd = memfd_create("libhmm", MFD_CLOEXEC), ret = 0;
	struct hmm_mrange *r;
	void *user;

	if (fd < 0)
		return errno == EMFILE || errno == ENFILE ? -EMFILE : -ENOMEM;
	if (ftruncate(fd, (off_t)len)) {
		close(fd);
		return -ENOMEM;
	}
	user = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (user == MAP_FAILED) {
		close(fd);
		return -ENOMEM;
	}
	ret = hmm_file_adopt(user, len, fd, 0);
	close(fd); /* hmm_file_adopt keeps its own descriptor */
	if (ret) {
		hmm__sys_munmap(user, len);
		/* hmm_mem_alloc's documented errors */
		return ret == -EPERM || ret == -ESHUTDOWN || ret == -EMFILE
			       ? ret : -ENOMEM;
	}
	pthread_rwlock_wrlock(&hmm__ctx.ranges_lock);
	r = hmm__range_find((uintptr_t)user);
	if (r && r->alloc)
		r->alloc->mem_alloc = true;
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	*out = user;
	return 0;
}

int hmm_mem_alloc(size_t len, unsigned int flags, void **out)
{
	struct stat sb;
	struct hmm_alloc *a;
	void *user;
	int ret;

	if (!out || !len || (flags & ~HMM_MEM_ZERO_COPY) ||
	    len > (SIZE_MAX >> 1))
		return -EINVAL;
	len = (len + HMM_PAGE_MASK) & ~HMM_PAGE_MASK;
	ret = hmm__ensure();
	if (ret)
		return ret;
	if (flags & HMM_MEM_ZERO_COPY)
		return mem_alloc_zero_copy(len, out);
	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->memfd = memfd_create("libhmm", MFD_CLOEXEC);
	if (a->memfd < 0 || ftruncate(a->memfd, (off_t)len)) {
		ret = errno == EMFILE || errno == ENFILE ? -EMFILE : -ENOMEM;
		goto fail_fd;
	}
	if (fstat(a->memfd, &sb) == 0) {
		a->obj.dev_major = major(sb.st_dev);
		a->obj.dev_minor = minor(sb.st_dev);
		a->obj.ino = sb.st_ino;
	}
	a->alias = hmm__mmap_own(len, PROT_READ | PROT_WRITE, MAP_SHARED,
				 a->memfd, 0);
	if (a->alias == MAP_FAILED) {
		ret = -ENOMEM;
		goto fail_fd;
	}
	user = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, a->memfd, 0);
	if (user == MAP_FAILED) {
		ret = -ENOMEM;
		goto fail_alias;
	}
	a->start = (uintptr_t)user;
	a->len = len;
	/* An unmap of this address whose event is still queued, or whose
	 * pages are still in flight, must not meet the new range. */
	hmm__service_sync();
	hmm__wait_idle(a->start, a->start + len);
	pthread_rwlock_wrlock(&hmm__ctx.ranges_lock);
	ret = hmm__uffd_register(hmm__ctx.uffd, a->start, len,
				 hmm__ctx.caps & HMM_CAP_WP);
	if (!ret)
		ret = hmm__pages_set_state(a->start, a->start + len, PS_SYSTEM);
	if (ret == -EAGAIN)
		ret = -ENOMEM; /* documented; see wait_idle */
	if (!ret)
		ret = hmm__range_insert(a->start, a->start + len, HMM_MK_SHMEM,
					a, 0);
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	if (ret) {
		hmm__pages_set_state(a->start, a->start + len, PS_NONE);
		hmm__sys_munmap(user, len);
		goto fail_alias;
	}
	*out = user;
	return 0;
fail_alias:
	hmm__munmap_own(a->alias, len);
fail_fd:
	if (a->memfd >= 0)
		close(a->memfd);
	free(a);
	return ret;
}

int hmm_mem_free(void *addr, size_t len)
{
	uintptr_t s = (uintptr_t)addr;
	struct hmm_mrange *r;
	int ret = hmm__ensure();

	if (ret)
		return ret;
	if (!addr || hmm__check_range(addr, (len + HMM_PAGE_MASK) &
						    ~HMM_PAGE_MASK))
		return -EINVAL;
	len = (len + HMM_PAGE_MASK) & ~HMM_PAGE_MASK;
	pthread_rwlock_wrlock(&hmm__ctx.ranges_lock);
	r = hmm__range_find(s);
	if (r && HMM_MK_IS_FILE(r->kind) && r->alloc && r->alloc->mem_alloc &&
	    r->alloc->start == s && r->alloc->len == len) {
		/* HMM_MEM_ZERO_COPY: a file range; release it (device data
		 * comes home into its pages), then unmap it. */
		pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
		ret = hmm_range_release(addr, len);
		if (ret)
			return ret == -ESHUTDOWN ? ret : -EINVAL;
		hmm__sys_munmap(addr, len);
		return 0;
	}
	if (!r || r->kind != HMM_MK_SHMEM || r->alloc->memfd < 0 ||
	    r->alloc->start != s || r->alloc->len != len) {
		pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
		return -EINVAL;
	}
	r->alloc->refs++; /* keep the alias until the pages are gone */
	struct hmm_alloc *a = r->alloc;
	hmm__range_trim(s, s + len);
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	/* The contents are not wanted: drop device copies, then unmap. */
	hmm__pages_drop(s, s + len, true, false, false, HMM_NOTIFY_UNMAP, true);
	hmm__uffd_unregister(hmm__ctx.uffd, s, len);
	hmm__sys_munmap(addr, len);
	pthread_rwlock_wrlock(&hmm__ctx.ranges_lock);
	if (--a->refs == 0) {
		hmm__munmap_own(a->alias, a->len);
		close(a->memfd);
		free(a);
	}
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	return 0;
}

long hmm_migrate(void *addr, size_t len, hmm_device_t *dev,
		 unsigned int flags)
{
	unsigned long gen = atomic_load(&hmm__ctx.prot_gen);
	uintptr_t s = (uintptr_t)addr, e = s + len;
	struct hmm_vma *vmas;
	long nvmas, ret;

	ret = hmm__check_range(addr, len);
	if (ret || flags)
		return ret ? ret : -EINVAL;
	ret = hmm__ensure();
	if (ret)
		return ret;
	if (dev && hmm_device_enter(dev))
		return -ENODEV;
	pthread_rwlock_rdlock(&hmm__ctx.ranges_lock);
	ret = hmm__ranges_cover(s, e);
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	/* Locked pages move only when unlocked; another device's holds for
	 * atomics end when the pages go elsewhere. */
	if (!ret && hmm__range_locked(s, e))
		ret = -EBUSY;
	if (!ret)
		ret = check_vmas(s, e, false, &vmas, &nvmas);
	if (!ret && dev)
		hmm__holds_revoke(s, e, dev);
	if (!ret) {
		uint64_t t = hmm__tracing() ? hmm__now_ns() : 0;
		if (dev) {
			ret = hmm__migrate_to_device(s, e, dev, vmas, nvmas,
						     gen);
		} else {
			ret = hmm__migrate_to_system(s, e, NULL, 0);
		}
		free(vmas);
		if (t)
			hmm__trace_span(dev ? "migrate_to_device"
					    : "migrate_to_system",
					"migrate", t, s,
					(e - s) >> HMM_PAGE_SHIFT,
					ret > 0 ? (uint64_t)ret : 0,
					dev ? (int)dev->id : -1);
	}
	if (dev)
		hmm_device_leave(dev);
	return ret;
}

int hmm_page_location(const void *addr, hmm_device_t **dev)
{
	uintptr_t p = (uintptr_t)addr & ~HMM_PAGE_MASK;
	struct hmm_block *b;
	int loc = HMM_LOC_UNMANAGED;

	if (dev)
		*dev = NULL;
	if (atomic_load(&hmm__ctx.state) == HMM_CTX_DOWN)
		return -ESHUTDOWN;
	b = hmm__block_lookup(p);
	if (!b)
		return loc;
	pthread_mutex_lock(&b->lock);
	uint8_t st = b->state[hmm__block_index(p)];
	switch (PS_KIND(st)) {
	case PS_SYSTEM: loc = HMM_LOC_SYSTEM; break;
	case PS_DEVICE: loc = HMM_LOC_DEVICE; break;
	case PS_MIGRATING: loc = HMM_LOC_MIGRATING; break;
	default: break;
	}
	if (dev && loc == HMM_LOC_DEVICE)
		*dev = hmm__device_get(PDEV_ID(b->dev[hmm__block_index(p)]));
	pthread_mutex_unlock(&b->lock);
	return loc;
}
