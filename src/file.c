/* SPDX-License-Identifier: MIT */
/*
 * File-backed memory (capability 6): hmm_file_adopt, write-back, the
 * protection-fault path, and the file I/O calls that must see what devices
 * wrote.
 *
 * Two mechanisms, chosen per mapping at adoption:
 *
 *  FILE   a shmem-backed file (memfd, tmpfs) mapped MAP_SHARED, with
 *         userfaultfd MINOR faults.  Moving a page to a device zaps the
 *         user's page-table entry (MADV_DONTNEED, which keeps the page in
 *         the page cache) and copies the page-cache page through libhmm's
 *         alias mapping.  A CPU access then raises a MINOR fault; the
 *         device's data is written into the page-cache page through the
 *         alias and UFFDIO_CONTINUE maps it: no extra copy, and a page the
 *         device could not write needs no copy at all.
 *  FPROT  every other file mapping (disk filesystems; MAP_PRIVATE), which
 *         userfaultfd cannot register.  A page on a device is PROT_NONE in
 *         the user's mapping; libhmm's SIGSEGV handler (guard.c) brings it
 *         back in the faulting thread, writing the device's data through
 *         the alias (shared) or /proc/self/mem (private), then restores the
 *         protection.  Faults that are not libhmm's go to the application's
 *         handler as before.
 *
 * In both, the page cache keeps the page while a device holds it; what
 * other views (file I/O, other mappings, other processes) read there is
 * the data as of the last write-back (hmm_file_sync, msync, munmap,
 * release, device close, exit, and with HMM_FILE_SYNC_EACH the end of
 * every device command).  read()/write() and friends in this process,
 * ftruncate, fallocate and msync are interposed so that they see, and do
 * not lose, device data.
 */
#include <alloca.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <ucontext.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <linux/magic.h>

#include "compat.h"
#include "internal.h"

atomic_int hmm__file_ranges;
atomic_int hmm__file_sync_each;

int hmm__sys_mprotect(void *addr, size_t len, int prot)
{
	return (int)syscall(SYS_mprotect, addr, len, prot);
}

/* mprotect, or pkey_mprotect when @pkey >= 0: 0, or -1 with errno. */
static long sys_protect(uintptr_t s, size_t len, int prot, int pkey)
{
	return pkey < 0 ? syscall(SYS_mprotect, s, len, prot)
			: syscall(SYS_pkey_mprotect, s, len, prot, pkey);
}

/* Whether managed file ranges may exist: the cheap first test of every
 * wrapper and hook (most processes manage no file at all). */
static bool files_live(void)
{
	return atomic_load_explicit(&hmm__file_ranges, memory_order_relaxed) &&
	       atomic_load(&hmm__ctx.state) == HMM_CTX_UP;
}

/* ---- /proc/self/mem ----------------------------------------------------- */

/* One descriptor per process (a child of fork opens its own: the parent's
 * names the parent's memory). */
static int procmem_fd = -1;
static pid_t procmem_pid;
static pthread_mutex_t procmem_lock = PTHREAD_MUTEX_INITIALIZER;

int hmm__procmem_rw(bool write, void *buf, uintptr_t va, size_t len)
{
	pid_t pid = getpid();
	int fd;

	pthread_mutex_lock(&procmem_lock);
	if (procmem_fd < 0 || procmem_pid != pid) {
		/* The parent's descriptor, inherited by this child: not ours
		 * to close (it may be reused); just forget it. */
		procmem_fd = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
		procmem_pid = pid;
	}
	fd = procmem_fd;
	pthread_mutex_unlock(&procmem_lock);
	if (fd < 0)
		return -EIO;
	while (len) {
		/* Straight to the kernel: not through the file wrappers
		 * below (this runs under block locks). */
		ssize_t n = syscall(write ? SYS_pwrite64 : SYS_pread64, fd, buf,
				    len, (off_t)va);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -EIO; /* past the end of the file, say */
		buf = (char *)buf + n;
		va += (uintptr_t)n;
		len -= (size_t)n;
	}
	return 0;
}

static struct hmm_mrange *fprot_pieces(uintptr_t s, uintptr_t e, size_t *np);

/* ---- which files are managed ------------------------------------------- */

/*
 * The files that managed ranges map, for the I/O wrappers, which must not
 * take a lock for a file libhmm does not manage (libhmm itself reads
 * /proc files under its locks): slots of (device, inode) read without a
 * lock; an overflow flag sends every regular file to the locked path.
 * Written under ctx.ranges_lock (write).
 */
#define FILE_SLOTS 64
static _Atomic uint64_t slot_dev[FILE_SLOTS], slot_ino[FILE_SLOTS];
static int slot_refs[FILE_SLOTS];
static atomic_bool slots_overflow;

static uint64_t obj_dev(const struct hmm_vma *o)
{
	return makedev(o->dev_major, o->dev_minor) + 1; /* never 0 */
}

static void slot_get(const struct hmm_vma *o)
{
	int free_slot = -1;

	for (int i = 0; i < FILE_SLOTS; i++) {
		if (slot_refs[i] && atomic_load(&slot_dev[i]) == obj_dev(o) &&
		    atomic_load(&slot_ino[i]) == o->ino) {
			slot_refs[i]++;
			return;
		}
		if (!slot_refs[i] && free_slot < 0)
			free_slot = i;
	}
	if (free_slot < 0) {
		atomic_store(&slots_overflow, true);
		return;
	}
	slot_refs[free_slot] = 1;
	atomic_store(&slot_ino[free_slot], o->ino);
	atomic_store(&slot_dev[free_slot], obj_dev(o));
}

void hmm__file_slot_put(const struct hmm_vma *o)
{
	for (int i = 0; i < FILE_SLOTS; i++)
		if (slot_refs[i] && atomic_load(&slot_dev[i]) == obj_dev(o) &&
		    atomic_load(&slot_ino[i]) == o->ino) {
			if (--slot_refs[i] == 0)
				atomic_store(&slot_dev[i], 0);
			return;
		}
}

static bool slot_match(const struct stat *sb)
{
	uint64_t dev = (uint64_t)sb->st_dev + 1;

	if (atomic_load_explicit(&slots_overflow, memory_order_relaxed))
		return true;
	for (int i = 0; i < FILE_SLOTS; i++)
		if (atomic_load_explicit(&slot_dev[i], memory_order_acquire) ==
			    dev &&
		    atomic_load_explicit(&slot_ino[i], memory_order_relaxed) ==
			    sb->st_ino)
			return true;
	return false;
}

/* ---- adoption ----------------------------------------------------------- */

/* Whether a managed file range maps part of file offsets [off, off + len)
 * of @obj (ctx.ranges_lock held). */
static bool offsets_managed(const struct hmm_vma *obj, uint64_t off,
			    uint64_t len)
{
	for (size_t i = 0; i < hmm__ctx.nranges; i++) {
		const struct hmm_mrange *r = &hmm__ctx.ranges[i];
		const struct hmm_alloc *a = r->alloc;
		if (!HMM_MK_IS_FILE(r->kind) || a->obj.ino != obj->ino ||
		    a->obj.dev_major != obj->dev_major ||
		    a->obj.dev_minor != obj->dev_minor)
			continue;
		if (r->off < off + len && off < r->off + (r->end - r->start))
			return true;
	}
	return false;
}

struct vma_prots {
	const struct hmm_vma *v;
	long n;
};

/* FPROT: every page of [s, e) records the protection of its VMA. */
static void set_prot_block(struct hmm_block *b, uintptr_t s, uintptr_t e,
			   void *arg)
{
	const struct vma_prots *vp = arg;

	pthread_mutex_lock(&b->lock);
	for (uintptr_t p = s; p < e; p += HMM_PAGE_SIZE) {
		const struct hmm_vma *v = hmm__vma_find(vp->v, vp->n, p);
		b->mod[hmm__block_index(p)] = (uint8_t)(v ? v->prot & 7 : 0);
	}
	pthread_mutex_unlock(&b->lock);
}

int hmm_file_adopt(void *addr, size_t len, int fd, unsigned int flags)
{
	uintptr_t s = (uintptr_t)addr, e = s + len;
	struct hmm_alloc *a = NULL;
	struct hmm_vma *vmas = NULL;
	struct statfs sfs;
	struct stat sb;
	enum hmm_mkind kind;
	long n;
	int ret, acc;

	ret = hmm__check_range(addr, len);
	if (ret || (flags & ~HMM_FILE_SYNC_EACH))
		return ret ? ret : -EINVAL;
	if (fd < 0 || fstat(fd, &sb) || (acc = fcntl(fd, F_GETFL)) < 0)
		return -EBADF;
	ret = hmm__ensure();
	if (ret)
		return ret;
	/* An unmap of this address whose event is still queued, or whose
	 * pages are still in flight, must not meet the new range. */
	hmm__service_sync();
	hmm__wait_idle(s, e);
	n = hmm__vma_snapshot(s, e, &vmas);
	if (n < 0)
		return (int)n;
	ret = hmm__vma_covered(vmas, n, s, e);
	/* One mapping of one file, which mprotect may have cut into several
	 * VMAs: the same file, shared or not throughout, offsets following
	 * the addresses. */
	bool writable = false;
	for (long i = 0; !ret && i < n; i++) {
		const struct hmm_vma *v = &vmas[i];
		if (v->prot == PROT_NONE || v->special)
			ret = -EFAULT;
		else if (v->anon || v->shmem_anon)
			ret = i ? -EOPNOTSUPP : -EINVAL; /* hmm_range_adopt */
		else if (v->ino != vmas[0].ino ||
			 v->dev_major != vmas[0].dev_major ||
			 v->dev_minor != vmas[0].dev_minor ||
			 v->shared != vmas[0].shared ||
			 v->off != vmas[0].off + (v->start - vmas[0].start))
			ret = -EOPNOTSUPP; /* more than one mapping */
		writable |= v->shared && (v->prot & PROT_WRITE);
	}
	if (!ret && (vmas[0].ino != sb.st_ino ||
		     vmas[0].dev_major != major(sb.st_dev) ||
		     vmas[0].dev_minor != minor(sb.st_dev)))
		ret = -EBADF; /* not the file mapped there */
	else if (!ret && writable && (acc & O_ACCMODE) != O_RDWR)
		ret = -EACCES; /* write-back needs a writable descriptor */
	if (ret) {
		free(vmas);
		return ret;
	}
	a = calloc(1, sizeof(*a));
	if (!a) {
		free(vmas);
		return -ENOMEM;
	}
	a->obj = vmas[0];
	a->priv = !vmas[0].shared;
	a->sync_each = (flags & HMM_FILE_SYNC_EACH) ||
		       hmm__option(HMM_OPT_FILE_SYNC_EACH);
	a->memfd = -1;
	a->start = s;
	a->len = len;
	a->alias_off = vmas[0].off + (s - vmas[0].start);
	kind = HMM_MK_FPROT;
	if (!a->priv && !fstatfs(fd, &sfs) && sfs.f_type == TMPFS_MAGIC &&
	    (hmm__ctx.caps & HMM_CAP_MINOR_SHMEM))
		kind = HMM_MK_FILE;
	if (!a->priv) {
		/* libhmm's own view of the file's pages: it reads and writes
		 * the page cache there, unregistered and never PROT_NONE. */
		/* Writable whenever the descriptor allows: an mprotect may
		 * make a read-only mapping writable later. */
		a->alias = hmm__mmap_own(len,
					 (acc & O_ACCMODE) == O_RDWR
						 ? PROT_READ | PROT_WRITE
						 : PROT_READ,
					 MAP_SHARED, fd, (off_t)a->alias_off);
		if (a->alias == MAP_FAILED) {
			ret = errno == EACCES ? -EACCES : -ENOMEM;
			free(vmas);
			free(a);
			return ret;
		}
	}
	struct vma_prots vp = { vmas, n };

	pthread_rwlock_wrlock(&hmm__ctx.ranges_lock);
	if (hmm__ranges_overlap(s, e) ||
	    offsets_managed(&a->obj, a->alias_off, len)) {
		ret = -EEXIST;
		goto out;
	}
	if (kind == HMM_MK_FILE) {
		ret = hmm__uffd_register_minor(hmm__ctx.uffd, s, len);
		/* The kernel registers a shared mapping only if its file is
		 * writable through it (EPERM otherwise): protection faults
		 * serve a read-only one as well. */
		if (ret == -EPERM) {
			kind = HMM_MK_FPROT;
			ret = 0;
		}
	}
	if (ret)
		goto out;
	ret = hmm__pages_set_state(s, e, PS_SYSTEM);
	if (ret == -EAGAIN)
		ret = -EBUSY; /* an earlier mapping's pages still in flight */
	if (!ret)
		ret = hmm__range_insert(s, e, kind, a, a->alias_off);
	if (ret) {
		hmm__pages_set_state(s, e, PS_NONE);
		if (kind == HMM_MK_FILE)
			hmm__uffd_unregister(hmm__ctx.uffd, s, len);
		goto out;
	}
	if (kind == HMM_MK_FPROT)
		hmm__blocks_for_each(s, e, set_prot_block, &vp);
	/* The page-cache pages behind a FILE alias stay while the range
	 * lives (moving to a device only unmaps the user's view), so a
	 * driver may pin the alias and DMA straight into them (hostreg.c). */
	if (kind == HMM_MK_FILE) {
		a->host_reg = true;
		hmm__host_region_add(a->alias, len);
	}
	slot_get(&a->obj);
	a->file = true;
	atomic_fetch_add(&hmm__file_ranges, 1);
	if (a->sync_each)
		atomic_fetch_add(&hmm__file_sync_each, 1);
out:
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	free(vmas);
	if (ret) {
		if (a->alias)
			hmm__munmap_own(a->alias, len);
		free(a);
	}
	return ret;
}

/* ---- write-back --------------------------------------------------------- */

/* Write back the DEVICE pages of one piece [s, e) of the shared file range
 * @r (of @only, if set).  Returns pages written or -errno. */
static long writeback_piece(const struct hmm_mrange *r, uintptr_t s,
			    uintptr_t e, hmm_device_t *only)
{
	struct hmm_block *b = hmm__block_lookup(s);
	unsigned ids[HMM_BLOCK_PAGES];
	hmm_device_t *devs[HMM_MAX_DEVICES] = { 0 };
	size_t n = 0;
	long done = 0;
	int ret = 0;

	if (!b)
		return 0;
	/* The devices first (dev_lock is not taken under a block lock). */
	pthread_mutex_lock(&b->lock);
	for (uintptr_t p = s; p < e; p += HMM_PAGE_SIZE) {
		unsigned i = hmm__block_index(p);
		if (PS_KIND(b->state[i]) == PS_DEVICE)
			ids[n++] = PDEV_ID(b->dev[i]);
	}
	pthread_mutex_unlock(&b->lock);
	for (size_t k = 0; k < n; k++)
		if (!devs[ids[k]])
			devs[ids[k]] = hmm__device_get(ids[k]);
	if (!n)
		return 0;
	/*
	 * Each copy under the block lock: the device page cannot be freed or
	 * reused meanwhile (a drop changes the state under the lock and frees
	 * after), and a drop of the application's (a truncation) is ordered
	 * with it.  A driver's copy waits for nothing of libhmm's.
	 */
	pthread_mutex_lock(&b->lock);
	for (uintptr_t p = s; p < e && !ret; p += HMM_PAGE_SIZE) {
		unsigned i = hmm__block_index(p);
		hmm_device_t *d;
		struct hmm_copy_desc desc;
		if (PS_KIND(b->state[i]) != PS_DEVICE)
			continue;
		d = devs[PDEV_ID(b->dev[i])];
		/* A device closed since the lookup (its id may be another
		 * device's now): the next write-back gets the page. */
		if (!d || atomic_load((_Atomic int *)&d->closed) ||
		    (only && d != only) ||
		    !hmm__page_owes_take(d, b->dpfn[i], b->state[i], b->dev[i]))
			continue;
		desc = (struct hmm_copy_desc){ b->dpfn[i],
					       hmm__file_alias_ptr(r, p) };
		ret = hmm__guarded_copy(d, HMM_COPY_TO_SYSTEM, &desc, 1);
		if (ret == -EFAULT)
			ret = 0; /* past the end of the file: nothing to keep */
		else if (!ret)
			done++;
		else /* still owed */
			hmm_device_mark_dirty(d, b->dpfn[i]);
		if (!ret) /* written: what is owed now is what it may write */
			b->dev[i] &= (uint8_t)~PDEV_DIRTY;
	}
	pthread_mutex_unlock(&b->lock);
	return ret ? ret : done;
}

long hmm__file_writeback(uintptr_t s, uintptr_t e, hmm_device_t *only)
{
	long total = 0;

	for (uintptr_t pos = s; pos < e;) {
		uintptr_t bend = HMM_MIN((pos & ~(HMM_BLOCK_SIZE - 1)) +
						 HMM_BLOCK_SIZE, e);
		struct hmm_mrange r;
		long n = 0;
		if (hmm__range_get(pos, &r) && bend > r.end)
			bend = r.end;
		else if (bend > r.end)
			bend = r.end;
		if (HMM_MK_IS_FILE(r.kind) && r.alloc && r.alloc->alias)
			n = writeback_piece(&r, pos, bend, only);
		hmm__range_put(&r);
		if (n < 0)
			return n;
		total += n;
		pos = bend;
	}
	return total;
}

int hmm_file_sync(void *addr, size_t len)
{
	uintptr_t s = (uintptr_t)addr;
	long n;
	int ret = hmm__check_range(addr, len);

	if (ret)
		return ret;
	if (atomic_load(&hmm__ctx.state) == HMM_CTX_DOWN)
		return -ESHUTDOWN;
	ret = hmm__ensure();
	if (ret)
		return ret;
	pthread_rwlock_rdlock(&hmm__ctx.ranges_lock);
	ret = hmm__ranges_cover(s, s + len);
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	if (ret)
		return ret;
	n = hmm__file_writeback(s, s + len, NULL);
	return n < 0 ? (int)n : (int)HMM_MIN(n, (long)INT32_MAX);
}

/* Write back every managed file range (only those in safe mode if
 * @sync_each_only), pages of @only if set. */
static void writeback_all(hmm_device_t *only, bool sync_each_only)
{
	struct hmm_mrange *copy;
	size_t n;

	copy = hmm__ranges_copy(&n);
	for (size_t i = 0; copy && i < n; i++)
		if (HMM_MK_IS_FILE(copy[i].kind) &&
		    (!sync_each_only || copy[i].alloc->sync_each))
			hmm__file_writeback(copy[i].start, copy[i].end, only);
	free(copy);
}

void hmm_device_command_done(hmm_device_t *dev)
{
	if (atomic_load_explicit(&hmm__file_sync_each, memory_order_relaxed))
		writeback_all(dev, true);
}

/* ---- the protection-fault path ------------------------------------------ */

/* Append @v to the array being built (*out, *n, *cap); false if out of
 * memory. */
static bool vma_push(struct hmm_vma **out, long *n, long *cap,
		     const struct hmm_vma *v)
{
	if (*n == *cap) {
		long c = *cap ? *cap * 2 : 16;
		struct hmm_vma *nv = realloc(*out, (size_t)c * sizeof(*nv));
		if (!nv)
			return false;
		*out = nv;
		*cap = c;
	}
	(*out)[(*n)++] = *v;
	return true;
}

static int fix_piece(const struct hmm_vma *v, uintptr_t s, uintptr_t e,
		     struct hmm_vma **out, long *on, long *cap);

void hmm__file_fix_prot(struct hmm_vma **vp, long *np)
{
	struct hmm_vma *v = *vp, *out = NULL;
	long n = *np, on = 0, cap = 0;
	bool any = false;

	if (!atomic_load_explicit(&hmm__file_ranges, memory_order_relaxed))
		return;
	for (long i = 0; i < n && !any; i++)
		any = v[i].prot == PROT_NONE;
	if (!any)
		return;
	pthread_rwlock_rdlock(&hmm__ctx.ranges_lock);
	for (long i = 0; i < n; i++) {
		if (v[i].prot != PROT_NONE) {
			if (!vma_push(&out, &on, &cap, &v[i]))
				goto oom;
			continue;
		}
		/* A PROT_NONE VMA may join pages on devices with pages the
		 * application made PROT_NONE, inside the range or next to it
		 * (a guard page): one VMA per run of pages with the same
		 * protection of the application's, PROT_NONE outside FPROT
		 * ranges. */
		for (uintptr_t p = v[i].start, seg_end; p < v[i].end;
		     p = seg_end) {
			struct hmm_mrange *r = hmm__range_find(p);
			struct hmm_vma piece = v[i];
			if (!r || r->end <= p || r->kind != HMM_MK_FPROT) {
				/* up to the next FPROT range, if any */
				seg_end = v[i].end;
				for (size_t k = 0; k < hmm__ctx.nranges; k++) {
					const struct hmm_mrange *q =
						&hmm__ctx.ranges[k];
					if (q->kind == HMM_MK_FPROT &&
					    q->start > p && q->start < seg_end)
						seg_end = q->start;
				}
				piece.start = p;
				piece.end = seg_end;
				piece.off = v[i].off + (p - v[i].start);
				if (!vma_push(&out, &on, &cap, &piece))
					goto oom;
				continue;
			}
			seg_end = HMM_MIN(v[i].end, r->end);
			if (fix_piece(&v[i], p, seg_end, &out, &on, &cap))
				goto oom;
		}
	}
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	free(v);
	*vp = out;
	*np = on;
	return;
oom:
	/* Keep the kernel's view: PROT_NONE, refused as such. */
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	free(out);
}

/* The part [s, e) of the PROT_NONE VMA @v that a FPROT range covers, one
 * piece per run of pages with the same protection (mod).  -ENOMEM. */
static int fix_piece(const struct hmm_vma *v, uintptr_t s, uintptr_t e,
		     struct hmm_vma **out, long *on, long *cap)
{
	for (uintptr_t p = s; p < e;) {
		struct hmm_block *b = hmm__block_lookup(p);
		uintptr_t bend = HMM_MIN((p & ~(HMM_BLOCK_SIZE - 1)) +
						 HMM_BLOCK_SIZE, e);
		struct hmm_vma piece = *v;
		if (!b) {
			piece.start = p;
			piece.end = bend;
			piece.off = v->off + (p - v->start);
			if (!vma_push(out, on, cap, &piece))
				return -ENOMEM;
			p = bend;
			continue;
		}
		pthread_mutex_lock(&b->lock);
		while (p < bend) {
			int prot = PMOD_PROT(b->mod[hmm__block_index(p)]);
			piece.start = p;
			while (p < bend &&
			       PMOD_PROT(b->mod[hmm__block_index(p)]) == prot)
				p += HMM_PAGE_SIZE;
			piece.end = p;
			piece.prot = prot;
			piece.off = v->off + (piece.start - v->start);
			if (!vma_push(out, on, cap, &piece)) {
				pthread_mutex_unlock(&b->lock);
				return -ENOMEM;
			}
		}
		pthread_mutex_unlock(&b->lock);
	}
	return 0;
}

void hmm__fprot_restore_locked(struct hmm_block *b, uintptr_t s, uintptr_t e)
{
	for (uintptr_t p = s; p < e;) {
		unsigned i = hmm__block_index(p);
		uintptr_t q = p;
		if (PS_KIND(b->state[i]) != PS_SYSTEM) {
			p += HMM_PAGE_SIZE;
			continue;
		}
		while (q < e &&
		       PS_KIND(b->state[hmm__block_index(q)]) == PS_SYSTEM &&
		       b->mod[hmm__block_index(q)] == b->mod[i])
			q += HMM_PAGE_SIZE;
		hmm__sys_mprotect((void *)p, q - p, PMOD_PROT(b->mod[i]));
		p = q;
	}
}

static void restore_block(struct hmm_block *b, uintptr_t s, uintptr_t e,
			  void *arg)
{
	(void)arg;
	pthread_mutex_lock(&b->lock);
	hmm__fprot_restore_locked(b, s, e);
	pthread_mutex_unlock(&b->lock);
}

void hmm__file_after_drop(uintptr_t s, uintptr_t e)
{
	struct hmm_mrange *p;
	size_t n;

	/* Pages a drop took from their device are in system memory, and
	 * must be reachable again (by the CPU without a fault, and by
	 * devices, which read system pages through the mapping). */
	p = fprot_pieces(s, e, &n);
	for (size_t i = 0; i < n; i++)
		hmm__blocks_for_each(p[i].start, p[i].end, restore_block, NULL);
	free(p);
}

/* The last page this thread restored without bringing anything home, and
 * how many times in a row. */
static __thread uintptr_t last_restored;
static __thread unsigned restored_again;

bool hmm__file_prot_fault(uintptr_t addr, bool write)
{
	uintptr_t page = addr & ~HMM_PAGE_MASK;
	unsigned idx = hmm__block_index(page);
	struct hmm_mrange *rp;
	struct hmm_block *b;
	bool fprot;

	if (!files_live())
		return false;
	pthread_rwlock_rdlock(&hmm__ctx.ranges_lock);
	rp = hmm__range_find(page);
	fprot = rp && rp->kind == HMM_MK_FPROT;
	pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	b = fprot ? hmm__block_lookup(page) : NULL;
	if (!b)
		return false;
	for (int round = 0; round < 1000; round++) {
		struct timespec deadline;
		uint8_t st;
		int prot;
		pthread_mutex_lock(&b->lock);
		st = b->state[idx];
		prot = PMOD_PROT(b->mod[idx]);
		if (!(prot & (write ? PROT_WRITE : PROT_READ))) {
			/* the application's own protection */
			pthread_mutex_unlock(&b->lock);
			return false;
		}
		if (PS_KIND(st) == PS_MIGRATING) {
			/* Wait for the migration (the handler runs in an
			 * application thread that held nothing of libhmm's
			 * when it faulted). */
			clock_gettime(CLOCK_REALTIME, &deadline);
			deadline.tv_sec += 1;
			pthread_cond_timedwait(&b->cond, &b->lock, &deadline);
			pthread_mutex_unlock(&b->lock);
			continue;
		}
		pthread_mutex_unlock(&b->lock);
		if (PS_KIND(st) == PS_DEVICE) {
			uintptr_t s = page, e = page + HMM_PAGE_SIZE;
			long fa = hmm__option(HMM_OPT_FAULT_AROUND);
			if (fa >= (long)HMM_PAGE_SIZE) {
				fa = 1L << (63 - __builtin_clzl((unsigned long)fa));
				s = HMM_MAX(page & ~((uintptr_t)fa - 1),
					    page & ~(HMM_BLOCK_SIZE - 1));
				e = HMM_MIN(s + (uintptr_t)fa,
					    (page & ~(HMM_BLOCK_SIZE - 1)) +
						    HMM_BLOCK_SIZE);
			}
			hmm__stat_add(HMM_STAT_cpu_faults, 1);
			long r = hmm__migrate_to_system(s, e, NULL, 0);
			if (r < 0 && r != -ETIMEDOUT && r != -EAGAIN)
				return false; /* cannot: the fault stands */
			last_restored = 0;
			continue;
		}
		if (PS_KIND(st) != PS_SYSTEM)
			return false;
		/* Restoring the same page again and again without a
		 * migration in between: the fault is not libhmm's (a raw
		 * mprotect it did not see, a failing mprotect). */
		if (last_restored == page && ++restored_again > 64) {
			last_restored = 0;
			return false;
		}
		if (last_restored != page)
			restored_again = 0;
		pthread_mutex_lock(&b->lock);
		hmm__fprot_restore_locked(b, page, page + HMM_PAGE_SIZE);
		pthread_mutex_unlock(&b->lock);
		last_restored = page;
		return true;
	}
	return false;
}

/* ---- interposed file calls ---------------------------------------------- */

/* Set while a wrapper runs libhmm's work, so that libhmm's own reads
 * (of /proc/self/maps, say) go straight through. */
static __thread bool in_wrapper;

/* The managed file ranges of the file @fd names, as copies (malloc'd), or
 * NULL.  Only when file ranges exist at all. */
static struct hmm_mrange *ranges_of_file(int fd, const char *path,
					 size_t *np)
{
	struct hmm_mrange *copy, *out;
	struct stat sb;
	size_t n, k = 0;

	*np = 0;
	/* The cheap test first. */
	if (!files_live() || in_wrapper || hmm__own_thread)
		return NULL;
	if (path ? stat(path, &sb) : fstat(fd, &sb))
		return NULL;
	if (!S_ISREG(sb.st_mode) || !slot_match(&sb))
		return NULL;
	copy = hmm__ranges_copy(&n);
	if (!copy)
		return NULL;
	out = copy;
	for (size_t i = 0; i < n; i++) {
		const struct hmm_alloc *a = copy[i].alloc;
		if (HMM_MK_IS_FILE(copy[i].kind) && a->obj.ino == sb.st_ino &&
		    a->obj.dev_major == major(sb.st_dev) &&
		    a->obj.dev_minor == minor(sb.st_dev))
			out[k++] = copy[i];
	}
	if (!k) {
		free(copy);
		return NULL;
	}
	*np = k;
	return out;
}

/* The part of range @r that maps file offsets [off, off + len): *s, *e
 * (page aligned, outward); false if none. */
static bool file_span(const struct hmm_mrange *r, uint64_t off, uint64_t len,
		      uintptr_t *s, uintptr_t *e)
{
	uint64_t rs = r->off, re = r->off + (r->end - r->start);
	uint64_t lo = off & ~(uint64_t)HMM_PAGE_MASK;
	uint64_t hi = len > UINT64_MAX - off ? UINT64_MAX : off + len;

	hi = hi > UINT64_MAX - HMM_PAGE_MASK ? UINT64_MAX & ~HMM_PAGE_MASK
					     : (hi + HMM_PAGE_MASK) &
						       ~(uint64_t)HMM_PAGE_MASK;
	lo = HMM_MAX(lo, rs);
	hi = HMM_MIN(hi, re);
	if (lo >= hi)
		return false;
	*s = r->start + (lo - rs);
	*e = r->start + (hi - rs);
	return true;
}

enum io_kind { IO_READ, IO_WRITE };

/*
 * Before I/O on file offsets [off, off + len) of @fd: a read must see what
 * devices wrote (write back); a write must not be undone by a later
 * write-back, nor be missed by a device's copy (bring the pages home).
 */
/*
 * A write to a managed file, or a truncation, and its preparation (pages
 * brought home, device copies dropped) are one step for migrations to a
 * device: these hold file_io_lock for writing from the preparation to the
 * end of the system call, migrations hold it for reading
 * (hmm__file_mig_begin), so that no page goes back to a device with the
 * old data in between.  Lock order: file_io_lock, then ctx.fork_lock.
 */
static pthread_rwlock_t file_io_lock = PTHREAD_RWLOCK_INITIALIZER;

bool hmm__file_mig_begin(void)
{
	if (!atomic_load_explicit(&hmm__file_ranges, memory_order_relaxed) ||
	    in_wrapper)
		return false;
	pthread_rwlock_rdlock(&file_io_lock);
	return true;
}

void hmm__file_mig_end(bool held)
{
	if (held)
		pthread_rwlock_unlock(&file_io_lock);
}

/* Before I/O on @fd: see below.  Returns whether file_io_lock is held
 * (for writing): the caller releases it after its system call. */
static bool file_io_prepare(int fd, int64_t off, uint64_t len,
			    enum io_kind k)
{
	struct hmm_mrange *rs;
	size_t n;

	rs = ranges_of_file(fd, NULL, &n);
	if (!rs)
		return false;
	if (k == IO_WRITE)
		pthread_rwlock_wrlock(&file_io_lock);
	in_wrapper = true;
	if (off < 0) {
		/* read()/write() at the file position; O_APPEND: anywhere
		 * from the position on. */
		int fl = fcntl(fd, F_GETFL);
		off = lseek(fd, 0, SEEK_CUR);
		if (off < 0 || (fl >= 0 && (fl & O_APPEND))) {
			off = 0;
			len = UINT64_MAX;
		}
	}
	for (size_t i = 0; i < n; i++) {
		uintptr_t s, e;
		if (!file_span(&rs[i], (uint64_t)off, len, &s, &e))
			continue;
		if (k == IO_READ)
			hmm__file_writeback(s, e, NULL);
		else
			hmm__migrate_to_system(s, e, NULL, 0);
	}
	in_wrapper = false;
	free(rs);
	return k == IO_WRITE;
}

static ssize_t io_done(bool held, ssize_t ret)
{
	if (held) {
		int e = errno;
		pthread_rwlock_unlock(&file_io_lock);
		errno = e;
	}
	return ret;
}

static uint64_t iov_len(const struct iovec *iov, int cnt)
{
	uint64_t t = 0;

	for (int i = 0; iov && i < cnt; i++)
		t += iov[i].iov_len;
	return t;
}

/* libc's function behind ours, looked up once (racing lookups store the
 * same pointer). */
#define REAL(name, ret, ...)                                               \
	static ret (*real_##name)(__VA_ARGS__);                            \
	static ret (*get_##name(void))(__VA_ARGS__)                        \
	{                                                                  \
		ret (*f)(__VA_ARGS__) =                                    \
			__atomic_load_n(&real_##name, __ATOMIC_ACQUIRE);   \
		if (!f) {                                                  \
			f = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name);  \
			__atomic_store_n(&real_##name, f, __ATOMIC_RELEASE); \
		}                                                          \
		return f;                                                  \
	}

REAL(read, ssize_t, int, void *, size_t)
REAL(write, ssize_t, int, const void *, size_t)
REAL(pread, ssize_t, int, void *, size_t, off_t)
REAL(pwrite, ssize_t, int, const void *, size_t, off_t)
REAL(pread64, ssize_t, int, void *, size_t, off_t)
REAL(pwrite64, ssize_t, int, const void *, size_t, off_t)
REAL(readv, ssize_t, int, const struct iovec *, int)
REAL(writev, ssize_t, int, const struct iovec *, int)
REAL(preadv, ssize_t, int, const struct iovec *, int, off_t)
REAL(pwritev, ssize_t, int, const struct iovec *, int, off_t)
REAL(preadv64, ssize_t, int, const struct iovec *, int, off_t)
REAL(pwritev64, ssize_t, int, const struct iovec *, int, off_t)
REAL(preadv2, ssize_t, int, const struct iovec *, int, off_t, int)
REAL(pwritev2, ssize_t, int, const struct iovec *, int, off_t, int)
REAL(preadv64v2, ssize_t, int, const struct iovec *, int, off_t, int)
REAL(pwritev64v2, ssize_t, int, const struct iovec *, int, off_t, int)
REAL(msync, int, void *, size_t, int)

/* Each wrapper under its exact symbol name (libc's headers may rename
 * the 64-bit-offset forms). */
#define WRAP_IO(sym, kind, offexpr, lenexpr, params, args)                 \
	ssize_t hmm_wrap_##sym params __asm__(#sym);                      \
	ssize_t hmm_wrap_##sym params                                     \
	{                                                                  \
		bool held_ = file_io_prepare(fd, offexpr, lenexpr, kind);  \
		return io_done(held_, get_##sym() args);                   \
	}

WRAP_IO(read, IO_READ, -1, len, (int fd, void *buf, size_t len),
	(fd, buf, len))
WRAP_IO(write, IO_WRITE, -1, len, (int fd, const void *buf, size_t len),
	(fd, buf, len))
WRAP_IO(pread, IO_READ, off, len,
	(int fd, void *buf, size_t len, off_t off), (fd, buf, len, off))
WRAP_IO(pwrite, IO_WRITE, off, len,
	(int fd, const void *buf, size_t len, off_t off), (fd, buf, len, off))
WRAP_IO(pread64, IO_READ, off, len,
	(int fd, void *buf, size_t len, off_t off), (fd, buf, len, off))
WRAP_IO(pwrite64, IO_WRITE, off, len,
	(int fd, const void *buf, size_t len, off_t off), (fd, buf, len, off))
WRAP_IO(readv, IO_READ, -1, iov_len(iov, cnt),
	(int fd, const struct iovec *iov, int cnt), (fd, iov, cnt))
WRAP_IO(writev, IO_WRITE, -1, iov_len(iov, cnt),
	(int fd, const struct iovec *iov, int cnt), (fd, iov, cnt))
WRAP_IO(preadv, IO_READ, off, iov_len(iov, cnt),
	(int fd, const struct iovec *iov, int cnt, off_t off),
	(fd, iov, cnt, off))
WRAP_IO(pwritev, IO_WRITE, off, iov_len(iov, cnt),
	(int fd, const struct iovec *iov, int cnt, off_t off),
	(fd, iov, cnt, off))
WRAP_IO(preadv64, IO_READ, off, iov_len(iov, cnt),
	(int fd, const struct iovec *iov, int cnt, off_t off),
	(fd, iov, cnt, off))
WRAP_IO(pwritev64, IO_WRITE, off, iov_len(iov, cnt),
	(int fd, const struct iovec *iov, int cnt, off_t off),
	(fd, iov, cnt, off))
WRAP_IO(preadv2, IO_READ, off, iov_len(iov, cnt),
	(int fd, const struct iovec *iov, int cnt, off_t off, int fl),
	(fd, iov, cnt, off, fl))
WRAP_IO(pwritev2, IO_WRITE, off, iov_len(iov, cnt),
	(int fd, const struct iovec *iov, int cnt, off_t off, int fl),
	(fd, iov, cnt, off, fl))
WRAP_IO(preadv64v2, IO_READ, off, iov_len(iov, cnt),
	(int fd, const struct iovec *iov, int cnt, off_t off, int fl),
	(fd, iov, cnt, off, fl))
WRAP_IO(pwritev64v2, IO_WRITE, off, iov_len(iov, cnt),
	(int fd, const struct iovec *iov, int cnt, off_t off, int fl),
	(fd, iov, cnt, off, fl))

int msync(void *addr, size_t len, int flags)
{
	uintptr_t s = (uintptr_t)addr & ~HMM_PAGE_MASK;
	uintptr_t e = ((uintptr_t)addr + len + HMM_PAGE_MASK) & ~HMM_PAGE_MASK;

	if (files_live() && !in_wrapper && e > s) {
		in_wrapper = true;
		hmm__file_writeback(s, e, NULL);
		in_wrapper = false;
	}
	return get_msync()(addr, len, flags);
}

/*
 * The file loses file offsets [off, off + len) (a truncation, a hole):
 * device copies of whole pages there are dropped (the file has zeros or
 * nothing there now), and pages only partly inside come home first, so
 * that the kernel clears the part it clears in the current data.
 */
enum lose {
	LOSE_TRUNCATE,	/* past the new end: gone for every mapping */
	LOSE_HOLE,	/* a hole: private copies keep their data */
	LOSE_SHIFT,	/* collapse, insert: the data moves */
};

/* Returns whether file_io_lock is held (see file_io_prepare). */
static bool file_lose(int fd, const char *path, uint64_t off, uint64_t len,
		      enum lose how)
{
	struct hmm_mrange *rs;
	size_t n;

	rs = ranges_of_file(fd, path, &n);
	if (!rs)
		return false;
	pthread_rwlock_wrlock(&file_io_lock);
	in_wrapper = true;
	for (size_t i = 0; i < n; i++) {
		uintptr_t s, e;
		uint64_t lo, hi;
		if (!file_span(&rs[i], off, len, &s, &e))
			continue;
		if (how == LOSE_SHIFT) {
			/* The data moves within the file: home first. */
			hmm__migrate_to_system(s, e, NULL, 0);
			continue;
		}
		/* Device pages of a private mapping stay: one the device
		 * wrote becomes the process's own copy when it comes home
		 * (which a hole does not reach), one it did not comes home as
		 * the file has it.  A truncation drops even those. */
		if (how == LOSE_HOLE && rs[i].alloc->priv)
			continue;
		/* partial pages at either end */
		if (off & HMM_PAGE_MASK)
			hmm__migrate_to_system(s, s + HMM_PAGE_SIZE, NULL, 0);
		lo = (off + HMM_PAGE_MASK) & ~(uint64_t)HMM_PAGE_MASK;
		hi = len > UINT64_MAX - off ? UINT64_MAX : off + len;
		if (hi != UINT64_MAX && (hi & HMM_PAGE_MASK))
			hmm__migrate_to_system(e - HMM_PAGE_SIZE, e, NULL, 0);
		hi &= ~(uint64_t)HMM_PAGE_MASK;
		if (hi > lo && file_span(&rs[i], lo, hi - lo, &s, &e))
			hmm__pages_drop(s, e, false, false, false,
					HMM_NOTIFY_CLEAR, true);
	}
	in_wrapper = false;
	free(rs);
	return true;
}

int hmm_wrap_ftruncate(int fd, off_t len) __asm__("ftruncate");
int hmm_wrap_ftruncate(int fd, off_t len)
{
	bool held = len >= 0 && file_lose(fd, NULL, (uint64_t)len, UINT64_MAX,
					  LOSE_TRUNCATE);
	return (int)io_done(held, syscall(SYS_ftruncate, fd, len));
}

int hmm_wrap_ftruncate64(int fd, off_t len) __asm__("ftruncate64");
int hmm_wrap_ftruncate64(int fd, off_t len)
{
	return hmm_wrap_ftruncate(fd, len);
}

int hmm_wrap_truncate(const char *path, off_t len) __asm__("truncate");
int hmm_wrap_truncate(const char *path, off_t len)
{
	bool held = len >= 0 && path &&
		    file_lose(-1, path, (uint64_t)len, UINT64_MAX,
			      LOSE_TRUNCATE);
	return (int)io_done(held, syscall(SYS_truncate, path, len));
}

int hmm_wrap_truncate64(const char *path, off_t len) __asm__("truncate64");
int hmm_wrap_truncate64(const char *path, off_t len)
{
	return hmm_wrap_truncate(path, len);
}

int hmm_wrap_fallocate(int fd, int mode, off_t off, off_t len)
	__asm__("fallocate");
int hmm_wrap_fallocate(int fd, int mode, off_t off, off_t len)
{
	bool held = false;

	if (off >= 0 && len > 0 && (mode & ~FALLOC_FL_KEEP_SIZE)) {
		if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE))
			held = file_lose(fd, NULL, (uint64_t)off, (uint64_t)len,
					 LOSE_HOLE);
		else /* collapse, insert: the data after @off moves */
			held = file_lose(fd, NULL, (uint64_t)off, UINT64_MAX,
					 LOSE_SHIFT);
	}
	return (int)io_done(held, syscall(SYS_fallocate, fd, mode, off, len)
					  ? -1 : 0);
}

int hmm_wrap_fallocate64(int fd, int mode, off_t off, off_t len)
	__asm__("fallocate64");
int hmm_wrap_fallocate64(int fd, int mode, off_t off, off_t len)
{
	return hmm_wrap_fallocate(fd, mode, off, len);
}

/* ---- mapping changes (interpose.c) -------------------------------------- */

/* Copies of the FPROT ranges overlapping [s, e), clipped to it, or NULL. */
static struct hmm_mrange *fprot_pieces(uintptr_t s, uintptr_t e, size_t *np)
{
	struct hmm_mrange *copy;
	size_t n, k = 0;

	*np = 0;
	if (!files_live())
		return NULL;
	copy = hmm__ranges_copy(&n);
	for (size_t i = 0; copy && i < n; i++) {
		if (copy[i].kind != HMM_MK_FPROT || copy[i].end <= s ||
		    copy[i].start >= e)
			continue;
		copy[k] = copy[i];
		if (copy[k].start < s) {
			copy[k].off += s - copy[k].start;
			copy[k].start = s;
		}
		copy[k].end = HMM_MIN(copy[k].end, e);
		k++;
	}
	if (!k) {
		free(copy);
		return NULL;
	}
	*np = k;
	return copy;
}

void hmm__file_before_unmap(uintptr_t s, uintptr_t e)
{
	struct hmm_mrange *p;
	size_t n;

	if (!files_live())
		return;
	hmm__file_writeback(s, e, NULL);
	/* FPROT ranges send no UNMAP event: forget them here, before the
	 * system call, so that a migration in flight sees its pages
	 * unmapped (PSF_UNMAPPED) before anything else can be mapped there
	 * (fprot_zap in migrate.c). */
	p = fprot_pieces(s, e, &n);
	for (size_t i = 0; i < n; i++) {
		hmm__pages_drop(p[i].start, p[i].end, true, false, false,
				HMM_NOTIFY_UNMAP, true);
		pthread_rwlock_wrlock(&hmm__ctx.ranges_lock);
		hmm__range_trim(p[i].start, p[i].end);
		pthread_rwlock_unlock(&hmm__ctx.ranges_lock);
	}
	free(p);
}

/* mprotect of one piece of a FPROT range, under each block's lock: every
 * page records the new protection, pages in system memory take it now,
 * pages on a device (or moving) stay PROT_NONE and take it when they come
 * home.  Returns 0 or -errno. */
static int protect_piece(uintptr_t s, uintptr_t e, int prot, int pkey)
{
	int ret = 0;

	for (uintptr_t pos = s; pos < e;) {
		uintptr_t bend = HMM_MIN((pos & ~(HMM_BLOCK_SIZE - 1)) +
						 HMM_BLOCK_SIZE, e);
		struct hmm_block *b = hmm__block_lookup(pos);
		if (!b)
			return -ENOMEM; /* managed pages have blocks */
		pthread_mutex_lock(&b->lock);
		for (uintptr_t p = pos; p < bend && !ret;) {
			uintptr_t q = p;
			while (q < bend &&
			       PS_KIND(b->state[hmm__block_index(q)]) ==
				       PS_SYSTEM)
				q += HMM_PAGE_SIZE;
			if (q > p && sys_protect(p, q - p, prot, pkey))
				ret = -errno;
			p = q == p ? p + HMM_PAGE_SIZE : q;
		}
		for (uintptr_t p = pos; p < bend && !ret; p += HMM_PAGE_SIZE)
			b->mod[hmm__block_index(p)] = (uint8_t)(prot & 7);
		pthread_mutex_unlock(&b->lock);
		if (ret)
			return ret;
		pos = bend;
	}
	return 0;
}

bool hmm__file_protect(uintptr_t s, uintptr_t e, int prot, int pkey,
		       long *ret)
{
	struct hmm_mrange *p;
	uintptr_t pos = s;
	size_t n;
	int err = 0;

	p = fprot_pieces(s, e, &n);
	if (!p)
		return false;
	/* Bad protections are the kernel's to judge, first. */
	if (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)) {
		free(p);
		*ret = sys_protect(s, e - s, prot, pkey);
		return true;
	}
	for (size_t i = 0; i <= n && !err; i++) {
		uintptr_t gap_end = i < n ? p[i].start : e;
		/* the part that is not a FPROT range, as the caller would */
		if (gap_end > pos && sys_protect(pos, gap_end - pos, prot, pkey))
			err = -errno;
		if (i < n && !err) {
			err = protect_piece(p[i].start, p[i].end, prot, pkey);
			pos = p[i].end;
		}
	}
	free(p);
	if (err)
		errno = -err;
	*ret = err ? -1 : 0;
	return true;
}

void hmm__file_before_remap(uintptr_t s, uintptr_t e)
{
	struct hmm_mrange *p;
	size_t n;

	/* Nothing follows a FPROT mapping to its new address: home first,
	 * and no longer managed. */
	p = fprot_pieces(s, e, &n);
	for (size_t i = 0; i < n; i++)
		hmm_range_release((void *)p[i].start, p[i].end - p[i].start);
	free(p);
}

void hmm__file_home(uintptr_t s, uintptr_t e)
{
	struct hmm_mrange *p;
	size_t n;

	p = fprot_pieces(s, e, &n);
	for (size_t i = 0; i < n; i++)
		hmm__migrate_to_system(p[i].start, p[i].end, NULL, 0);
	free(p);
}

/* ---- exec ---------------------------------------------------------------- */

/*
 * exec replaces the image without exit handlers: device data of managed
 * files is written back first (the devices and their memory go with the
 * image; anonymous memory goes too, as it would without libhmm).  The
 * exec family calls execve inside libc, so each entry point is wrapped.
 */
static void before_exec(void)
{
	if (files_live())
		writeback_all(NULL, false);
}

REAL(execve, int, const char *, char *const[], char *const[])
REAL(execv, int, const char *, char *const[])
REAL(execvp, int, const char *, char *const[])
REAL(execvpe, int, const char *, char *const[], char *const[])
REAL(fexecve, int, int, char *const[], char *const[])

int execve(const char *path, char *const argv[], char *const envp[])
{
	before_exec();
	return get_execve()(path, argv, envp);
}

int execv(const char *path, char *const argv[])
{
	before_exec();
	return get_execv()(path, argv);
}

int execvp(const char *file, char *const argv[])
{
	before_exec();
	return get_execvp()(file, argv);
}

int execvpe(const char *file, char *const argv[], char *const envp[])
{
	before_exec();
	return get_execvpe()(file, argv, envp);
}

int fexecve(int fd, char *const argv[], char *const envp[])
{
	before_exec();
	return get_fexecve()(fd, argv, envp);
}

/* The list forms: their arguments gathered into a vector (on the stack,
 * as libc does), then the vector form above. */
#define GATHER(first, ap, argv)                                             \
	do {                                                                \
		va_list c_;                                                 \
		size_t n_ = 1;                                              \
		va_copy(c_, ap);                                            \
		while (va_arg(c_, char *))                                  \
			n_++;                                               \
		va_end(c_);                                                 \
		argv = alloca((n_ + 1) * sizeof(char *));                   \
		argv[0] = (char *)(first);                                  \
		for (size_t i_ = 1; i_ <= n_; i_++)                         \
			argv[i_] = va_arg(ap, char *);                      \
	} while (0)

int execl(const char *path, const char *arg, ...)
{
	char **argv;
	va_list ap;

	va_start(ap, arg);
	GATHER(arg, ap, argv);
	va_end(ap);
	return execv(path, argv);
}

int execlp(const char *file, const char *arg, ...)
{
	char **argv;
	va_list ap;

	va_start(ap, arg);
	GATHER(arg, ap, argv);
	va_end(ap);
	return execvp(file, argv);
}

int execle(const char *path, const char *arg, ...)
{
	char **argv, **env;
	va_list ap;

	va_start(ap, arg);
	GATHER(arg, ap, argv);
	env = va_arg(ap, char **); /* after the NULL that ends the list */
	va_end(ap);
	return execve(path, argv, env);
}

/* ---- mmap(MAP_FIXED) ----------------------------------------------------- */

/*
 * A MAP_FIXED mapping replaces whatever was there.  A managed file range
 * there writes back first, and FPROT ranges (which send no UNMAP event)
 * are forgotten, as for munmap.  Everything else goes straight to the
 * kernel: one test of the flags.
 */
void *hmm__mmap(void *addr, size_t len, int prot, int flags, int fd,
		off_t off)
{
	uintptr_t s = (uintptr_t)addr, e = s + len;

	if ((flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) == MAP_FIXED &&
	    files_live() && !(s & HMM_PAGE_MASK) && len && e > s)
		hmm__file_before_unmap(s, (e + HMM_PAGE_MASK) & ~HMM_PAGE_MASK);
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

/* Weak: the dmirror preload library defines its own, which calls
 * hmm__mmap for everything that is not a dmirror device. */
__attribute__((weak)) void *hmm_wrap_mmap(void *addr, size_t len, int prot,
					  int flags, int fd, off_t off)
	__asm__("mmap");
__attribute__((weak)) void *hmm_wrap_mmap(void *addr, size_t len, int prot,
					  int flags, int fd, off_t off)
{
	return hmm__mmap(addr, len, prot, flags, fd, off);
}

__attribute__((weak)) void *hmm_wrap_mmap64(void *addr, size_t len, int prot,
					    int flags, int fd, off_t off)
	__asm__("mmap64");
__attribute__((weak)) void *hmm_wrap_mmap64(void *addr, size_t len, int prot,
					    int flags, int fd, off_t off)
{
	return hmm__mmap(addr, len, prot, flags, fd, off);
}
