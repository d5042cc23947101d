/* SPDX-License-Identifier: MIT */
/*
 * hmm-bench: libhmm's figures, each next to its baseline measured in the
 * same run (the bare kernel mechanism, or memcpy).  The targets are the
 * table of DESIGN.md.  Prints a table; with --json one object per line.
 *
 *   hmm-bench [--size MiB] [--repeat N] [--json] [SCENARIO...]
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hmm/hmm.h>
#include <hmm/hmm_driver.h>
#include <hmm/hmm_pt.h>
#include <hmm/hmm_sim.h>

#include "bench_time.h"

#define PG 4096UL

static size_t opt_size = 1UL << 30;
static long opt_link;		/* --link: HMM_SIM_LINK_GBPS for sim devices */
static int opt_repeat = 3;
static bool opt_json;

struct result {
	const char *scenario, *unit, *baseline;
	double value, baseline_value;
	bool lower_better;
	const char *note;
};

static void report(const struct result *r)
{
	double ratio = r->baseline_value ? r->value / r->baseline_value : 0;

	if (opt_json) {
		printf("{\"scenario\": \"%s\", \"value\": %.4g, \"unit\": \"%s\", "
		       "\"baseline\": \"%s\", \"baseline_value\": %.4g, "
		       "\"ratio\": %.4g, \"better\": \"%s\"}\n",
		       r->scenario, r->value, r->unit, r->baseline,
		       r->baseline_value, ratio,
		       r->lower_better ? "lower" : "higher");
	} else {
		printf("%-22s %12.3f %-6s %-28s %12.3f %8.3f %s%s\n",
		       r->scenario, r->value, r->unit, r->baseline,
		       r->baseline_value, ratio,
		       r->lower_better ? "(lower is better)" : "(higher is better)",
		       r->note ? r->note : "");
	}
	fflush(stdout);
}

static void die(const char *what, long ret)
{
	fprintf(stderr, "hmm-bench: %s: %s\n", what,
		strerror(ret < 0 ? (int)-ret : errno));
	exit(1);
}

static void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap", 0);
	return p;
}

static void populate(void *p, size_t len)
{
	for (size_t i = 0; i < len; i += PG)
		((volatile char *)p)[i] = (char)i;
}

static hmm_device_t *open_sim(size_t mem)
{
	struct hmm_device_attr attr = { .mem_size = mem };
	hmm_device_t *dev;
	int r = hmm_device_open("sim", &attr, &dev);

	if (r)
		die("hmm_device_open", r);
	return dev;
}

/* @len bytes of private anonymous memory, written once and managed. */
static char *map_adopted(size_t len)
{
	char *p = map_anon(len);
	int r;

	populate(p, len);
	if ((r = hmm_range_adopt(p, len, 0)))
		die("hmm_range_adopt", r);
	return p;
}

/* --size, but at most @cap_mib MiB. */
static size_t size_capped(size_t cap_mib)
{
	return opt_size < (cap_mib << 20) ? opt_size : cap_mib << 20;
}

static void advise(void *p, size_t len, int advice, hmm_device_t *dev)
{
	int r = hmm_advise(p, len, advice, dev);

	if (r)
		die("hmm_advise", r);
}

/* AnonHugePages of this process, bytes. */
static size_t anon_huge_bytes(void)
{
	FILE *f = fopen("/proc/self/smaps_rollup", "r");
	char line[256];
	size_t kb = 0;

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "AnonHugePages: %zu kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb << 10;
}

/*
 * @len bytes (a multiple of 2 MiB) of private anonymous memory, 2 MiB
 * aligned, asked to be backed by huge pages (MADV_HUGEPAGE) and written
 * once.  Says so on stderr where they are not all huge pages (THP
 * "never", or none free): the figures are then 4 KiB ones.
 */
static char *map_thp(size_t len)
{
	char *raw = map_anon(len + (2 << 20));
	char *p = (char *)(((uintptr_t)raw + (2 << 20) - 1) &
			   ~(uintptr_t)((2 << 20) - 1));
	size_t before = anon_huge_bytes();

	if (p > raw)
		munmap(raw, (size_t)(p - raw));
	munmap(p + len, (size_t)(raw + len + (2 << 20) - (p + len)));
	madvise(p, len, MADV_HUGEPAGE);
	populate(p, len);
	if (anon_huge_bytes() - before < len)
		fprintf(stderr, "hmm-bench: no huge pages here (THP off or "
				"none free): 4 KiB pages instead\n");
	return p;
}

/* memcpy of @len bytes, GB/s, median of repeats; between buffers backed
 * by huge pages if @thp. */
static double memcpy_gbs_kind(size_t len, bool thp)
{
	char *a = thp ? map_thp(len) : map_anon(len);
	char *b = thp ? map_thp(len) : map_anon(len);
	double v[16];

	if (!thp) { /* map_thp wrote them already */
		populate(a, len);
		populate(b, len);
	}
	for (int i = 0; i < opt_repeat; i++) {
		double t = now_s();
		memcpy(b, a, len);
		v[i] = len / (now_s() - t) / 1e9;
	}
	munmap(a, len);
	munmap(b, len);
	return median(v, opt_repeat);
}

static double memcpy_gbs(size_t len)
{
	return memcpy_gbs_kind(len, false);
}

/* ---- migrate_to_device / migrate_to_system ----------------------------- */

/*
 * Application memory backed by 2 MiB huge pages (populated before it is
 * adopted, as a runtime's large buffers are) moves whole to the sim
 * device and back: page tables only.  The _4k variants adopt first and
 * fill through libhmm's first touches: 4 KiB pages, copied.  Each is
 * compared with memcpy over the same kind of memory.
 */
static void migrate_kind(bool thp)
{
	size_t len = opt_size;
	hmm_device_t *dev = open_sim(len);
	char *p = thp ? map_thp(len) : map_anon(len);
	double to_dev[16], to_sys[16];
	long r;

	if (!thp) /* 4 KiB pages, whatever the system's THP setting */
		madvise(p, len, MADV_NOHUGEPAGE);

	if ((r = hmm_range_adopt(p, len, 0)))
		die("hmm_range_adopt", r);
	if (!thp)
		populate(p, len);
	for (int i = 0; i < opt_repeat; i++) {
		double t = now_s();
		if ((r = hmm_migrate(p, len, dev, 0)) != (long)(len / PG))
			die("hmm_migrate to device", r);
		to_dev[i] = len / (now_s() - t) / 1e9;
		t = now_s();
		if ((r = hmm_migrate(p, len, NULL, 0)) != (long)(len / PG))
			die("hmm_migrate to system", r);
		to_sys[i] = len / (now_s() - t) / 1e9;
	}
	double mc = memcpy_gbs_kind(len, thp);
	report(&(struct result){ thp ? "migrate_to_device" : "migrate_to_device_4k",
				 "GB/s", thp ? "memcpy (huge pages)" : "memcpy",
				 median(to_dev, opt_repeat), mc, false, NULL });
	report(&(struct result){ thp ? "migrate_to_system" : "migrate_to_system_4k",
				 "GB/s", thp ? "memcpy (huge pages)" : "memcpy",
				 median(to_sys, opt_repeat), mc, false, NULL });
	munmap(p, len);
	hmm_device_close(dev);
}

static void bench_migrate(void)
{
	migrate_kind(true);
	migrate_kind(false);
}

/* ---- bare userfaultfd round trip (the baseline of CPU fault-back) ------ */

struct bare {
	int uffd;
	char *src;
	volatile int stop;
};

static void *bare_handler(void *arg)
{
	struct bare *b = arg;
	struct pollfd pfd = { .fd = b->uffd, .events = POLLIN };
	struct uffd_msg msg;

	while (!b->stop) {
		if (poll(&pfd, 1, 100) <= 0)
			continue;
		if (read(b->uffd, &msg, sizeof(msg)) != sizeof(msg))
			continue;
		if (msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		struct uffdio_copy c = {
			.dst = msg.arg.pagefault.address & ~(PG - 1),
			.src = (uintptr_t)b->src, .len = PG,
		};
		ioctl(b->uffd, UFFDIO_COPY, &c);
	}
	return NULL;
}

/* Microseconds per fault: a thread touching @n missing pages, served by
 * UFFDIO_COPY from a handler thread.  Per-fault times go to @lat. */
static void bare_faults(size_t n, double *lat)
{
	struct bare b = { .src = map_anon(PG) };
	struct uffdio_api api = { .api = UFFD_API };
	char *p = map_anon(n * PG);
	pthread_t th;

	populate(b.src, PG);
	b.uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (b.uffd < 0)
		b.uffd = (int)syscall(SYS_userfaultfd,
				      O_CLOEXEC | O_NONBLOCK | 1 /* user */);
	if (b.uffd < 0 || ioctl(b.uffd, UFFDIO_API, &api))
		die("userfaultfd", 0);
	struct uffdio_register reg = {
		.range = { .start = (uintptr_t)p, .len = n * PG },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	if (ioctl(b.uffd, UFFDIO_REGISTER, &reg))
		die("UFFDIO_REGISTER", 0);
	pthread_create(&th, NULL, bare_handler, &b);
	for (size_t i = 0; i < n; i++) {
		double t = now_s();
		(void)*(volatile char *)(p + i * PG);
		lat[i] = (now_s() - t) * 1e6;
	}
	b.stop = 1;
	pthread_join(th, NULL);
	close(b.uffd);
	munmap(p, n * PG);
	munmap(b.src, PG);
}

static double percentile(double *v, size_t n, double q)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return v[(size_t)(q * (double)(n - 1))];
}

/* ---- cpu_faultback_4k -------------------------------------------------- */

static void bench_faultback_4k(void)
{
	const size_t n = 4096;
	hmm_device_t *dev = open_sim(n * PG);
	char *p = map_anon(n * PG);
	double *lat = malloc(n * sizeof(double));
	double *base = malloc(n * sizeof(double));
	double p50[16], p99[16], b50[16];
	long r;

	long fa;

	hmm_option_get("FAULT_AROUND", &fa);
	hmm_option_set("FAULT_AROUND", 0); /* by definition of the figure */
	if ((r = hmm_range_adopt(p, n * PG, 0)))
		die("hmm_range_adopt", r);
	populate(p, n * PG);
	for (int k = 0; k < opt_repeat; k++) {
		if ((r = hmm_migrate(p, n * PG, dev, 0)) != (long)n)
			die("hmm_migrate", r);
		for (size_t i = 0; i < n; i++) {
			double t = now_s();
			(void)*(volatile char *)(p + i * PG);
			lat[i] = (now_s() - t) * 1e6;
		}
		p50[k] = percentile(lat, n, 0.5);
		p99[k] = percentile(lat, n, 0.99);
		bare_faults(n, base);
		b50[k] = percentile(base, n, 0.5);
	}
	char note[64];
	snprintf(note, sizeof(note), " p99 %.1f us", median(p99, opt_repeat));
	hmm_option_set("FAULT_AROUND", fa);
	report(&(struct result){ "cpu_faultback_4k", "us",
				 "bare uffd MISSING+COPY", median(p50, opt_repeat),
				 median(b50, opt_repeat), true, note });
	free(lat);
	free(base);
	munmap(p, n * PG);
	hmm_device_close(dev);
}

/* ---- cpu_faultback_bulk ------------------------------------------------ */

/* As migrate_kind: the device-resident data is huge pages that come
 * back whole (and, along a sequential stream, several at a time), or 4
 * KiB pages copied back in fault-around windows (_4k). */
static void faultback_bulk_kind(bool thp)
{
	size_t len = opt_size;
	hmm_device_t *dev = open_sim(len);
	char *p = thp ? map_thp(len) : map_anon(len);
	char *dst = thp ? map_thp(len) : map_anon(len);
	double v[16];
	long r;

	if (!thp)
		madvise(p, len, MADV_NOHUGEPAGE);

	if ((r = hmm_range_adopt(p, len, 0)))
		die("hmm_range_adopt", r);
	if (!thp)
		populate(p, len);
	populate(dst, len);
	for (int k = 0; k < opt_repeat; k++) {
		if ((r = hmm_migrate(p, len, dev, 0)) != (long)(len / PG))
			die("hmm_migrate", r);
		double t = now_s();
		memcpy(dst, p, len); /* the sequential CPU pass */
		v[k] = len / (now_s() - t) / 1e9;
	}
	report(&(struct result){ thp ? "cpu_faultback_bulk" : "cpu_faultback_bulk_4k",
				 "GB/s", thp ? "memcpy (huge pages)" : "memcpy",
				 median(v, opt_repeat), memcpy_gbs_kind(len, thp),
				 false, NULL });
	munmap(p, len);
	munmap(dst, len);
	hmm_device_close(dev);
}

static void bench_faultback_bulk(void)
{
	faultback_bulk_kind(true);
	faultback_bulk_kind(false);
}

/* ---- file_faultback_bulk, file_sync ----------------------------------- */

/* A shared mapping of a new file: a memfd, or an unlinked file in
 * /var/tmp (@disk), @len bytes, populated. */
static char *map_file(size_t len, bool disk, int *fdp)
{
	char path[] = "/var/tmp/hmm-bench-XXXXXX";
	int fd = disk ? mkstemp(path) : memfd_create("hmm-bench", MFD_CLOEXEC);
	char *p;

	if (fd < 0)
		die("file", 0);
	if (disk)
		unlink(path);
	if (ftruncate(fd, (off_t)len))
		die("ftruncate", 0);
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		die("mmap file", 0);
	populate(p, len);
	*fdp = fd;
	return p;
}

/*
 * A sequential CPU pass over device-resident file data: MINOR faults and
 * UFFDIO_CONTINUE for a memfd (the device's data written into the page
 * cache page, mapped in place), protection faults for a disk file; then
 * hmm_file_sync of the whole range after a device wrote all of it.  Each
 * next to memcpy of the same size.
 */
static void bench_file(void)
{
	size_t len = opt_size;
	hmm_device_t *dev = open_sim(len);
	char *dst = map_anon(len);
	double mc = memcpy_gbs(len);

	populate(dst, len);
	for (int disk = 0; disk < 2; disk++) {
		double v[16], w[16];
		int fd;
		char *p = map_file(len, disk, &fd);
		long r;
		if ((r = hmm_file_adopt(p, len, fd, 0)))
			die("hmm_file_adopt", r);
		for (int k = 0; k < opt_repeat; k++) {
			if ((r = hmm_migrate(p, len, dev, 0)) != (long)(len / PG))
				die("hmm_migrate", r);
			if ((r = hmm_sim_fill64(dev, p, (uint64_t)k, len, NULL)))
				die("hmm_sim_fill64", r);
			double t = now_s();
			if ((r = hmm_file_sync(p, len)) != (long)(len / PG))
				die("hmm_file_sync", r);
			w[k] = len / (now_s() - t) / 1e9;
			t = now_s();
			memcpy(dst, p, len); /* the sequential CPU pass */
			v[k] = len / (now_s() - t) / 1e9;
		}
		report(&(struct result){ disk ? "file_faultback_bulk_disk"
					      : "file_faultback_bulk",
					 "GB/s", "memcpy", median(v, opt_repeat),
					 mc, false, NULL });
		report(&(struct result){ disk ? "file_sync_disk" : "file_sync",
					 "GB/s", "memcpy", median(w, opt_repeat),
					 mc, false, NULL });
		munmap(p, len);
		close(fd);
	}
	munmap(dst, len);
	hmm_device_close(dev);
}

/* ---- device_stream_read ------------------------------------------------ */

/* A reading kernel bound by memory, not by its loop: four independent
 * sums (one chained sum runs at about 70% of memcpy's rate here, on the
 * CPU as on the engine). */
static void sum_kernel(void *dptr, size_t off, size_t n, void *arg)
{
	const uint64_t *w = dptr;
	uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	size_t i = 0;

	(void)off;
	for (; i + 4 <= n / 8; i += 4) {
		s0 += w[i];
		s1 += w[i + 1];
		s2 += w[i + 2];
		s3 += w[i + 3];
	}
	for (; i < n / 8; i++)
		s0 += w[i];
	*(uint64_t *)arg += s0 + s1 + s2 + s3;
}

/* The device reads all of [p, p + len) (sum_kernel into *@sink). */
static void dev_sum(hmm_device_t *dev, char *p, size_t len, uint64_t *sink)
{
	int r = hmm_sim_launch(dev, p, len, 0, sum_kernel, sink, NULL);

	if (r)
		die("hmm_sim_launch", r);
}

static void bench_stream_read(void)
{
	size_t len = opt_size;
	hmm_device_t *dev = open_sim(16 << 20);
	char *p = map_anon(len);
	double v[16], c[16];
	uint64_t sum = 0;

	populate(p, len);
	/* The first pass fills the mirror; the figure is the warm pass. */
	dev_sum(dev, p, len, &sum);
	for (int k = 0; k < opt_repeat; k++) {
		double t = now_s();
		hmm_sim_launch(dev, p, len, 0, sum_kernel, &sum, NULL);
		v[k] = len / (now_s() - t) / 1e9;
		t = now_s();
		sum_kernel(p, 0, len, &sum);
		c[k] = len / (now_s() - t) / 1e9;
	}
	/* The engine against the CPU running the same kernel: its own cost. */
	fprintf(stderr, "device_stream_read: the CPU runs the same kernel at "
		"%.2f GB/s\n", median(c, opt_repeat));
	report(&(struct result){ "device_stream_read", "GB/s", "memcpy",
				 median(v, opt_repeat), memcpy_gbs(len), false,
				 NULL });
	munmap(p, len);
	hmm_device_close(dev);
}

/* ---- range_fault_1g ---------------------------------------------------- */

static void nop_kernel(void *dptr, size_t off, size_t n, void *arg)
{
	(void)dptr, (void)off, (void)n, (void)arg;
}

/* A driver's page-table lock and its invalidate callback. */
static pthread_mutex_t rf_lock = PTHREAD_MUTEX_INITIALIZER;

static bool rf_invalidate(struct hmm_interval_notifier *sub,
			  const struct hmm_notifier_range *range,
			  unsigned long cur_seq)
{
	(void)range;
	pthread_mutex_lock(&rf_lock);
	hmm_interval_set_seq(sub, cur_seq);
	pthread_mutex_unlock(&rf_lock);
	return true;
}

static const struct hmm_interval_notifier_ops rf_ops = { rf_invalidate };

/*
 * What a driver does on a device fault over @len bytes at @p, with the
 * driver kit: 512 pages at a time, hmm_range_fault under an interval
 * notifier's sequence, then the entries into its page table (hmm_pt) under
 * its lock if the sequence still holds.  Returns ms.
 */
static double fill_device_pt(char *p, size_t len)
{
	struct hmm_interval_notifier sub;
	static uint64_t pfns[512];
	struct hmm_pt *pt;
	double t;
	int r;

	if ((r = hmm_pt_create(&pt)))
		die("hmm_pt_create", r);
	if ((r = hmm_interval_notifier_insert(&sub, (uintptr_t)p, len, &rf_ops)))
		die("hmm_interval_notifier_insert", r);
	t = now_s();
	for (size_t off = 0; off < len;) {
		size_t n = (len - off) / PG < 512 ? (len - off) / PG : 512;
		struct hmm_range range = {
			.notifier = &sub,
			.notifier_seq = hmm_interval_read_begin(&sub),
			.start = (uintptr_t)p + off,
			.end = (uintptr_t)p + off + n * PG,
			.hmm_pfns = pfns,
			.default_flags = HMM_PFN_REQ_FAULT,
		};
		r = hmm_range_fault(&range);
		if (r == -EBUSY)
			continue;
		if (r)
			die("hmm_range_fault", r);
		pthread_mutex_lock(&rf_lock);
		if (hmm_interval_read_retry(&sub, range.notifier_seq)) {
			pthread_mutex_unlock(&rf_lock);
			continue;
		}
		r = hmm_pt_set(pt, range.start / PG, n, pfns);
		pthread_mutex_unlock(&rf_lock);
		if (r)
			die("hmm_pt_set", r);
		off += n * PG;
	}
	t = (now_s() - t) * 1e3;
	hmm_interval_notifier_remove(&sub);
	hmm_pt_destroy(pt);
	return t;
}

/*
 * range_fault_1g: a device page table filled for populated memory, the
 * driver kit's way (fill_device_pt), against reading /proc/self/pagemap
 * for the same range.  range_fault_1g_sim: a sim device's own fault of
 * the range (its IOMMU links every page, hmm_dma_map_range) and a pass of
 * a kernel that does nothing over it, on a fresh device each time.
 */
static void bench_range_fault(void)
{
	size_t len = opt_size;
	char *p = map_anon(len);
	uint64_t *pm = malloc(len / PG * 8);
	double v[16], w[16], b[16];
	int fd = open("/proc/self/pagemap", O_RDONLY);

	populate(p, len);
	for (int k = 0; k < opt_repeat; k++) {
		/* A fresh device each time: an empty page table to fill. */
		hmm_device_t *dev = open_sim(16 << 20);
		double t = now_s();
		int r = hmm_sim_launch(dev, p, len, 0, nop_kernel, NULL, NULL);
		w[k] = (now_s() - t) * 1e3;
		if (r)
			die("hmm_sim_launch", r);
		hmm_device_close(dev);
		v[k] = fill_device_pt(p, len);
		t = now_s();
		if (pread(fd, pm, len / PG * 8,
			  (off_t)((uintptr_t)p / PG * 8)) < 0)
			die("pagemap", 0);
		b[k] = (now_s() - t) * 1e3;
	}
	report(&(struct result){ "range_fault_1g", "ms", "read /proc/self/pagemap",
				 median(v, opt_repeat), median(b, opt_repeat), true,
				 NULL });
	report(&(struct result){ "range_fault_1g_sim", "ms",
				 "read /proc/self/pagemap", median(w, opt_repeat),
				 median(b, opt_repeat), true, NULL });
	close(fd);
	free(pm);
	munmap(p, len);
}

/* ---- munmap_mirrored_1g ------------------------------------------------ */

static void bench_munmap(void)
{
	size_t len = opt_size;
	double v[16], b[16];

	for (int k = 0; k < opt_repeat; k++) {
		hmm_device_t *dev = open_sim(len / 4);
		char *p = map_anon(len);
		long r;
		if ((r = hmm_range_adopt(p, len, 0)))
			die("hmm_range_adopt", r);
		populate(p, len);
		hmm_sim_launch(dev, p, len, 0, nop_kernel, NULL, NULL);
		if ((r = hmm_migrate(p, len / 4, dev, 0)) < 0)
			die("hmm_migrate", r);
		double t = now_s();
		munmap(p, len);
		v[k] = (now_s() - t) * 1e3;
		hmm_device_close(dev);
		p = map_anon(len);
		populate(p, len);
		t = now_s();
		syscall(SYS_munmap, p, len);
		b[k] = (now_s() - t) * 1e3;
	}
	report(&(struct result){ "munmap_mirrored_1g", "ms", "plain munmap",
				 median(v, opt_repeat), median(b, opt_repeat), true,
				 " (1/4 device-resident)" });
}

/* ---- oversubscribe_4x -------------------------------------------------- */

/*
 * A working set four times the device's memory, streamed through the
 * device in 2 MiB chunks, round after round: every migration in evicts
 * least recently used pages first.  Value: GB/s moved to the device
 * (evictions included); baseline: migrate_to_device into a device with
 * room, in the same run.
 */
static void bench_oversubscribe(void)
{
	size_t len = opt_size, chunk = 2UL << 20;
	hmm_device_t *dev = open_sim(len / 4), *big = open_sim(len);
	char *p = map_anon(len);
	double v[opt_repeat], b[opt_repeat];
	uint64_t ev0 = 0, ev1 = 0;
	long r;

	if ((r = hmm_range_adopt(p, len, 0)))
		die("hmm_range_adopt", r);
	populate(p, len);
	hmm_stat_get("pages_evicted", &ev0);
	for (int k = 0; k < opt_repeat; k++) {
		double t = now_s();
		for (size_t off = 0; off < len; off += chunk)
			if ((r = hmm_migrate(p + off, chunk, dev, 0)) < 0)
				die("hmm_migrate (oversubscribed)", r);
		v[k] = len / (now_s() - t) / 1e9;
	}
	hmm_stat_get("pages_evicted", &ev1);
	hmm_migrate(p, len, NULL, 0);
	for (int k = 0; k < opt_repeat; k++) {
		double t = now_s();
		for (size_t off = 0; off < len; off += chunk)
			if ((r = hmm_migrate(p + off, chunk, big, 0)) < 0)
				die("hmm_migrate", r);
		b[k] = len / (now_s() - t) / 1e9;
		hmm_migrate(p, len, NULL, 0);
	}
	munmap(p, len);
	hmm_device_close(dev);
	hmm_device_close(big);
	char note[96];
	snprintf(note, sizeof(note), " (%.0f pages evicted per round)",
		 (double)(ev1 - ev0) / opt_repeat);
	report(&(struct result){ "oversubscribe_4x", "GB/s",
				 "migrate, device with room",
				 median(v, opt_repeat), median(b, opt_repeat),
				 false, note });
}

/* ---- fork_1g_device ---------------------------------------------------- */

/* fork() and the child's _exit, as the parent waits for them. */
static double fork_exit_ms(void)
{
	double t = now_s();
	pid_t pid = fork();
	int st;

	if (pid < 0)
		die("fork", -errno);
	if (pid == 0)
		_exit(0);
	waitpid(pid, &st, 0);
	return (now_s() - t) * 1e3;
}

/*
 * fork with the whole buffer on a device: the pages stay there, the child
 * gets a copy of libhmm's state and of the device memory (copied on write)
 * and registers its ranges again.  Baseline: fork with the same buffer as
 * plain populated memory.
 */
static void bench_fork(void)
{
	size_t len = opt_size;
	double v[opt_repeat], b[opt_repeat];
	hmm_device_t *dev = open_sim(len), *d2;
	char *p = map_anon(len);
	long r;
	int on;

	if ((r = hmm_range_adopt(p, len, 0)))
		die("hmm_range_adopt", r);
	populate(p, len);
	if ((r = hmm_migrate(p, len, dev, 0)) < 0)
		die("hmm_migrate", r);
	for (int k = 0; k < opt_repeat; k++)
		v[k] = fork_exit_ms();
	on = hmm_page_location(p, &d2) == HMM_LOC_DEVICE && d2 == dev;
	munmap(p, len);
	hmm_device_close(dev);
	p = map_anon(len);
	populate(p, len);
	for (int k = 0; k < opt_repeat; k++)
		b[k] = fork_exit_ms();
	munmap(p, len);
	report(&(struct result){ "fork_1g_device", "ms", "fork, 1 GiB plain",
				 median(v, opt_repeat), median(b, opt_repeat),
				 true,
				 on ? " (fork + child exit; pages stay on the "
				      "device)"
				    : " (pages left the device!)" });
}

/* ---- fault_threads_2v1 ------------------------------------------------- */

struct toucher {
	char *p;
	size_t n;
};

static void *touch_pages(void *arg)
{
	struct toucher *t = arg;

	for (size_t i = 0; i < t->n; i++)
		(void)*(volatile char *)(t->p + i * PG);
	return NULL;
}

/* Faults per second with @threads threads faulting disjoint pages. */
static double fault_rate(hmm_device_t *dev, char *p, size_t n, int threads)
{
	pthread_t th[2];
	struct toucher t[2];
	long r;

	if ((r = hmm_migrate(p, n * PG, dev, 0)) != (long)n)
		die("hmm_migrate", r);
	double t0 = now_s();
	for (int i = 0; i < threads; i++) {
		t[i] = (struct toucher){ p + i * (n / threads) * PG,
					 n / threads };
		pthread_create(&th[i], NULL, touch_pages, &t[i]);
	}
	for (int i = 0; i < threads; i++)
		pthread_join(th[i], NULL);
	return n / (now_s() - t0);
}

static void bench_fault_threads(void)
{
	const size_t n = 8192;
	hmm_device_t *dev = open_sim(n * PG);
	char *p = map_anon(n * PG);
	double one[16], two[16];
	long r;

	if ((r = hmm_range_adopt(p, n * PG, 0)))
		die("hmm_range_adopt", r);
	populate(p, n * PG);
	for (int k = 0; k < opt_repeat; k++) {
		one[k] = fault_rate(dev, p, n, 1);
		two[k] = fault_rate(dev, p, n, 2);
	}
	report(&(struct result){ "fault_threads_2v1", "faults/s", "1 thread",
				 median(two, opt_repeat), median(one, opt_repeat),
				 false, NULL });
	munmap(p, n * PG);
	hmm_device_close(dev);
}

/* ---- faultback_10k_ranges ---------------------------------------------- */

static double per_fault_us(hmm_device_t *dev, char *p, size_t n)
{
	long r;

	if ((r = hmm_migrate(p, n * PG, dev, 0)) != (long)n)
		die("hmm_migrate", r);
	double t = now_s();
	for (size_t i = 0; i < n; i++)
		(void)*(volatile char *)(p + i * PG);
	return (now_s() - t) * 1e6 / n;
}

static void bench_many_ranges(void)
{
	const size_t n = 2048, nranges = 10000;
	hmm_device_t *dev = open_sim(n * PG);
	char *p = map_anon(n * PG);
	double one[16], many[16];
	char *others = map_anon(nranges * 2 * PG);
	long r, fa;

	/* Per fault, so one page a fault. */
	hmm_option_get("FAULT_AROUND", &fa);
	hmm_option_set("FAULT_AROUND", 0);
	if ((r = hmm_range_adopt(p, n * PG, 0)))
		die("hmm_range_adopt", r);
	populate(p, n * PG);
	for (int k = 0; k < opt_repeat; k++)
		one[k] = per_fault_us(dev, p, n);
	/* 10,000 more ranges (every other page, so none merge). */
	for (size_t i = 0; i < nranges; i++)
		if ((r = hmm_range_adopt(others + 2 * i * PG, PG, 0)))
			die("hmm_range_adopt (many)", r);
	for (int k = 0; k < opt_repeat; k++)
		many[k] = per_fault_us(dev, p, n);
	hmm_option_set("FAULT_AROUND", fa);
	report(&(struct result){ "faultback_10k_ranges", "us", "1 range",
				 median(many, opt_repeat), median(one, opt_repeat),
				 true, NULL });
	munmap(p, n * PG);
	munmap(others, nranges * 2 * PG);
	hmm_device_close(dev);
}

/* ---- metadata_per_gib -------------------------------------------------- */

static void bench_metadata(void)
{
	size_t len = opt_size;
	/* At an address no earlier scenario used: libhmm keeps the state of
	 * a 2 MiB block once it has managed it, and a block found again
	 * would not be counted. */
	char *p = mmap((void *)0x5e0000000000UL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1,
		       0);
	if (p == MAP_FAILED)
		p = map_anon(len);
	hmm_device_t *dev = open_sim(16 << 20);
	uint64_t before, after;
	int r;

	populate(p, len);
	hmm_stat_get("metadata_bytes", &before);
	if ((r = hmm_range_adopt(p, len, 0)))
		die("hmm_range_adopt", r);
	/* Mirror all of it: the device page table is part of the cost. */
	hmm_sim_launch(dev, p, len, 0, nop_kernel, NULL, NULL);
	hmm_stat_get("metadata_bytes", &after);
	double per_gib = (double)(after - before) / ((double)len / (1 << 30));
	report(&(struct result){ "metadata_per_gib", "bytes",
				 "struct page (16 MiB/GiB)", per_gib,
				 16.0 * (1 << 20), true, NULL });
	hmm_device_close(dev);
	munmap(p, len);
}

/* ---- pt_update / pt_lookup (the driver kit's page table) --------------- */

#define PT_LOOKUPS (1u << 21)

struct pt_job {
	struct hmm_pt *pt;
	const uint64_t *flat;	/* NULL: look up in pt */
	const uint32_t *idx;	/* random page indices */
	uint64_t base, sum;
	double rate;
};

static void *pt_lookups(void *arg)
{
	struct pt_job *j = arg;
	double t = now_s();
	uint64_t sum = 0;

	for (unsigned k = 0; k < PT_LOOKUPS; k += 64) {
		if (!j->flat)
			hmm_pt_read_lock();
		for (unsigned i = k; i < k + 64; i++)
			sum += j->flat ? j->flat[j->idx[i]]
				       : hmm_pt_lookup(j->pt, j->base + j->idx[i]);
		if (!j->flat)
			hmm_pt_read_unlock();
	}
	j->rate = PT_LOOKUPS / (now_s() - t);
	j->sum = sum;
	return NULL;
}

static void bench_pt(void)
{
	size_t n = opt_size / PG;
	const uint64_t base = 0x7f0000000ULL; /* a typical mmap area (vpn) */
	uint64_t *flat = calloc(n, 8), *ents = malloc(n * 8);
	uint32_t *idx = malloc(PT_LOOKUPS * sizeof(*idx));
	double up[16], upflat[16], l1[16], lflat[16], l2[16];
	struct hmm_pt *pt;
	uint64_t rs = 88172645463325252ULL;

	for (size_t i = 0; i < n; i++)
		ents[i] = HMM_PTE_VALID | HMM_PTE_WRITE | (base + i);
	for (unsigned i = 0; i < PT_LOOKUPS; i++) {
		rs ^= rs << 13;
		rs ^= rs >> 7;
		rs ^= rs << 17;
		idx[i] = (uint32_t)(rs % n);
	}
	for (int k = 0; k < opt_repeat; k++) {
		double t;
		if (hmm_pt_create(&pt))
			die("hmm_pt_create", -ENOMEM);
		/* Updates as a driver makes them: 512 entries a call. */
		t = now_s();
		for (size_t i = 0; i < n; i += 512)
			hmm_pt_set(pt, base + i, (n - i < 512 ? n - i : 512), ents + i);
		up[k] = n / (now_s() - t);
		t = now_s();
		for (size_t i = 0; i < n; i += 512)
			memcpy(flat + i, ents + i, (n - i < 512 ? n - i : 512) * 8);
		upflat[k] = n / (now_s() - t);

		struct pt_job a = { pt, NULL, idx, base, 0, 0 }, b = a;
		struct pt_job f = { pt, flat, idx, base, 0, 0 };
		pt_lookups(&a);
		l1[k] = a.rate;
		pt_lookups(&f);
		lflat[k] = f.rate;
		pthread_t th;
		pthread_create(&th, NULL, pt_lookups, &b);
		pt_lookups(&a);
		pthread_join(th, NULL);
		l2[k] = a.rate + b.rate;
		if (k == opt_repeat - 1) {
			double per_gib = (double)hmm_pt_bytes(pt) /
					 ((double)opt_size / (1 << 30));
			report(&(struct result){ "pt_memory_per_gib", "bytes",
						 "flat array (8 B/page)",
						 per_gib, 2.0 * (1 << 20),
						 true, NULL });
		}
		hmm_pt_destroy(pt);
	}
	report(&(struct result){ "pt_update", "entries/s", "flat array store",
				 median(up, opt_repeat),
				 median(upflat, opt_repeat), false,
				 " (512 entries a call)" });
	report(&(struct result){ "pt_lookup", "lookups/s", "flat array load",
				 median(l1, opt_repeat), median(lflat, opt_repeat),
				 false, " (1 thread, random pages)" });
	report(&(struct result){ "pt_lookup_2t", "lookups/s", "1 thread",
				 median(l2, opt_repeat), median(l1, opt_repeat),
				 false, " (2 threads)" });
	free(flat);
	free(ents);
	free(idx);
}

/* ---- dma_map_range / iommu_translate (the driver kit's DMA mapping) ---- */

static void bench_dma(void)
{
	size_t len = opt_size, n = len / PG;
	char *p = map_anon(len);
	uint64_t *ents = malloc(512 * 8);
	uint32_t *idx = malloc(PT_LOOKUPS * sizeof(*idx));
	double m[16], f[16], tr[16], lk[16];
	uint64_t rs = 88172645463325252ULL;

	populate(p, len);
	for (unsigned i = 0; i < PT_LOOKUPS; i++) {
		rs ^= rs << 13;
		rs ^= rs >> 7;
		rs ^= rs << 17;
		idx[i] = (uint32_t)(rs % n);
	}
	for (int k = 0; k < opt_repeat; k++) {
		struct hmm_iommu *mmu;
		struct hmm_dma_map *map;
		double t;
		int r;

		if (hmm_iommu_create(&mmu))
			die("hmm_iommu_create", -ENOMEM);
		r = hmm_dma_map_create(NULL, mmu, p, len, NULL, NULL, &map);
		if (r)
			die("hmm_dma_map_create", r);
		/* Fault and link 512 pages a call, as a driver does. */
		t = now_s();
		for (size_t i = 0; i < n; i += 512) {
			size_t c = n - i < 512 ? n - i : 512;
			r = hmm_dma_map_range(map, hmm_dma_map_begin(map),
					      p + i * PG, c * PG, HMM_DMA_WRITE,
					      ents);
			if (r)
				die("hmm_dma_map_range", r);
		}
		m[k] = n / (now_s() - t);
		/* The same without the links: hmm_range_fault alone. */
		t = now_s();
		for (size_t i = 0; i < n; i += 512) {
			size_t c = n - i < 512 ? n - i : 512;
			struct hmm_range rg = {
				.notifier = NULL,
				.start = (uintptr_t)p + i * PG,
				.end = (uintptr_t)p + (i + c) * PG,
				.hmm_pfns = ents,
				.default_flags = HMM_PFN_REQ_FAULT |
						 HMM_PFN_REQ_WRITE,
			};
			r = hmm_range_fault(&rg);
			if (r)
				die("hmm_range_fault", r);
		}
		f[k] = n / (now_s() - t);
		/* Translations of random linked pages. */
		uint64_t base = hmm_dma_map_iova(map, p), sum = 0;
		t = now_s();
		for (unsigned i = 0; i < PT_LOOKUPS; i++) {
			void *h;
			if (!hmm_iommu_translate(mmu, base + (uint64_t)idx[i] * PG,
						 HMM_DMA_READ, &h))
				sum += (uintptr_t)h;
		}
		tr[k] = PT_LOOKUPS / (now_s() - t);
		/* Baseline: a page-table lookup in a read section each. */
		struct hmm_pt *pt;
		if (hmm_pt_create(&pt))
			die("hmm_pt_create", -ENOMEM);
		for (size_t i = 0; i < n; i += 512) {
			size_t c = n - i < 512 ? n - i : 512;
			for (size_t j = 0; j < c; j++)
				ents[j] = HMM_PTE_VALID | (i + j + 1);
			hmm_pt_set(pt, 0x7f0000000ULL + i, c, ents);
		}
		t = now_s();
		for (unsigned i = 0; i < PT_LOOKUPS; i++) {
			hmm_pt_read_lock();
			sum += hmm_pt_lookup(pt, 0x7f0000000ULL + idx[i]);
			hmm_pt_read_unlock();
		}
		lk[k] = PT_LOOKUPS / (now_s() - t);
		if (sum == 42)
			printf("(unlikely)\n");
		hmm_pt_destroy(pt);
		hmm_dma_map_destroy(map);
		hmm_iommu_destroy(mmu);
	}
	report(&(struct result){ "dma_map_range", "pages/s",
				 "hmm_range_fault alone", median(m, opt_repeat),
				 median(f, opt_repeat), false,
				 " (fault + link, 512 pages a call)" });
	report(&(struct result){ "iommu_translate", "translations/s",
				 "hmm_pt_lookup in a read section",
				 median(tr, opt_repeat), median(lk, opt_repeat),
				 false, " (random pages)" });
	free(ents);
	free(idx);
	munmap(p, len);
}

/* ---- prefetch_in_place ------------------------------------------------ */

/* A prefetch of data already on the device: one look at the page states,
 * against hmm_migrate of the same resident data. */
static void bench_prefetch(void)
{
	size_t len = opt_size;
	char *p = map_adopted(len);
	hmm_device_t *dev = open_sim(len + (64 << 20));
	double v[16], b[16];
	long r;

	if ((r = hmm_migrate(p, len, dev, 0)) < 0)
		die("hmm_migrate", (int)r);
	for (int k = 0; k < opt_repeat; k++) {
		hmm_prefetch_t *pf;
		double t = now_s();
		if ((r = hmm_prefetch_start(p, len, dev, 0, &pf)))
			die("hmm_prefetch_start", (int)r);
		if ((r = hmm_prefetch_release(pf)) != 0)
			die("prefetch moved pages", (int)r);
		v[k] = (now_s() - t) * 1e6;
		t = now_s();
		if ((r = hmm_migrate(p, len, dev, 0)) != 0)
			die("hmm_migrate moved pages", (int)r);
		b[k] = (now_s() - t) * 1e6;
	}
	report(&(struct result){ "prefetch_in_place", "us",
				 "hmm_migrate of resident data",
				 median(v, opt_repeat), median(b, opt_repeat),
				 true, NULL });
	hmm_device_close(dev);
	munmap(p, len);
}

/* ---- advice_discard ---------------------------------------------------- */

/* Data on the device that the CPU is about to overwrite whole: discarding
 * it first spares the copies back, against on-demand fault-back. */
static void bench_discard(void)
{
	size_t len = opt_size;
	char *p = map_adopted(len);
	hmm_device_t *dev = open_sim(len + (64 << 20));
	double v[16], b[16];
	long r;

	for (int k = 0; k < opt_repeat; k++) {
		for (int with = 0; with < 2; with++) {
			if ((r = hmm_migrate(p, len, dev, 0)) < 0)
				die("hmm_migrate", (int)r);
			double t = now_s();
			if (with && (r = hmm_advise(p, len, HMM_ADVISE_DISCARD,
						    NULL)))
				die("hmm_advise", (int)r);
			memset(p, k + with, len);
			(with ? v : b)[k] = (now_s() - t) * 1e3;
		}
	}
	report(&(struct result){ "advice_discard", "ms",
				 "on-demand fault-back", median(v, opt_repeat),
				 median(b, opt_repeat), true,
				 " (device data overwritten by the CPU)" });
	hmm_device_close(dev);
	munmap(p, len);
}

/* ---- peer_migrate --------------------------------------------------------- */

/* Data on one device that another device needs: straight between the two
 * device memories (peer migration) against the way through system memory
 * (HMM_PEER_MIGRATE=0: home, then out again), GB/s. */
static void bench_peer(void)
{
	size_t len = opt_size;
	char *p = map_adopted(len);
	hmm_device_t *d[2] = { open_sim(len + (64 << 20)),
			       open_sim(len + (64 << 20)) };
	double v[16], b[16];
	long r;

	if ((r = hmm_migrate(p, len, d[0], 0)) < 0)
		die("hmm_migrate", (int)r);
	for (int k = 0, at = 0; k < opt_repeat; k++) {
		for (int peer = 1; peer >= 0; peer--) {
			hmm_option_set("PEER_MIGRATE", peer);
			double t = now_s();
			if ((r = hmm_migrate(p, len, d[!at], 0)) !=
			    (long)(len / PG))
				die("hmm_migrate", (int)r);
			(peer ? v : b)[k] = len / (now_s() - t) / 1e9;
			at = !at;
		}
	}
	hmm_option_set("PEER_MIGRATE", 1);
	report(&(struct result){ "peer_migrate", "GB/s",
				 "through system memory",
				 median(v, opt_repeat), median(b, opt_repeat),
				 false, " (device to device)" });
	hmm_device_close(d[0]);
	hmm_device_close(d[1]);
	munmap(p, len);
}

/* ---- thrash_pingpong ---------------------------------------------------- */

/* The device and the CPU take turns reading the same data, whose
 * preferred location is the device: with thrashing control, after three
 * rounds it stays in system memory and the device reads it there; without,
 * every round moves it both ways. */
static void bench_thrash(void)
{
	size_t len = size_capped(64);
	char *p = map_adopted(len);
	hmm_device_t *dev = open_sim(2 * len);
	double v[16], b[16];
	uint64_t sink = 0;
	long r;

	for (int k = 0; k < opt_repeat; k++) {
		for (int on = 0; on < 2; on++) {
			hmm_option_set("THRASH_COUNT", on ? 3 : 0);
			/* advice again: a fresh start for the counters'
			 * effect (and the device faults again) */
			advise(p, len, HMM_ADVISE_PREFERRED_LOCATION, dev);
			double t = now_s();
			for (int round = 0; round < 10; round++) {
				dev_sum(dev, p, len, &sink);
				for (size_t i = 0; i < len; i += PG)
					sink += ((volatile char *)p)[i];
			}
			(on ? v : b)[k] = (now_s() - t) * 1e3;
			if ((r = hmm_migrate(p, len, NULL, 0)) < 0)
				die("hmm_migrate", (int)r);
			usleep(1100 * 1000); /* let any pin run out */
		}
	}
	hmm_option_set("THRASH_COUNT", 3);
	report(&(struct result){ "thrash_pingpong", "ms", "no thrashing control",
				 median(v, opt_repeat), median(b, opt_repeat),
				 true, " (10 rounds of device then CPU reads)" });
	hmm_device_close(dev);
	munmap(p, len);
}

/* ---- preferred_location ---------------------------------------------------- */

/* One device reads the same data ten times: with its preferred location
 * on the device, the first fault moves it there and the rest read local
 * memory; without advice, every read crosses to system memory (on sim,
 * as fast as a local read unless --link models a bus). */
static void bench_preferred(void)
{
	size_t len = size_capped(256);
	char *p = map_adopted(len);
	hmm_device_t *dev = open_sim(2 * len);
	double v[16], b[16];
	uint64_t sink = 0;
	long r;

	for (int k = 0; k < opt_repeat; k++) {
		for (int adv = 0; adv < 2; adv++) {
			if ((r = hmm_migrate(p, len, NULL, 0)) < 0)
				die("hmm_migrate", (int)r);
			advise(p, len,
			       adv ? HMM_ADVISE_PREFERRED_LOCATION
				   : HMM_ADVISE_UNSET_PREFERRED_LOCATION,
			       adv ? dev : NULL);
			double t = now_s();
			for (int round = 0; round < 10; round++)
				dev_sum(dev, p, len, &sink);
			(adv ? v : b)[k] = (now_s() - t) * 1e3;
		}
	}
	report(&(struct result){ "preferred_location", "ms",
				 "no advice: remote reads",
				 median(v, opt_repeat), median(b, opt_repeat),
				 true, " (10 device reads of the same data)" });
	hmm_device_close(dev);
	munmap(p, len);
	(void)sink;
}

/* ---- accessed_by ----------------------------------------------------------- */

/* The device reads the data and the CPU updates every page of it, ten
 * rounds, with the device as the preferred location: each device read
 * moves the data there and each CPU pass brings it back (until thrashing
 * control pins it, HMM_THRASH_COUNT 0 here so the policy itself shows).
 * With the device also in the accessed-by set, it reads the data where it
 * is and nothing moves. */
static void bench_accessed_by(void)
{
	size_t len = size_capped(64);
	char *p = map_adopted(len);
	hmm_device_t *dev = open_sim(2 * len);
	double v[16], b[16];
	uint64_t sink = 0;
	long thr = 3;

	hmm_option_get("THRASH_COUNT", &thr);
	hmm_option_set("THRASH_COUNT", 0);
	advise(p, len, HMM_ADVISE_PREFERRED_LOCATION, dev);
	for (int k = 0; k < opt_repeat; k++) {
		for (int acc = 0; acc < 2; acc++) {
			advise(p, len,
			       acc ? HMM_ADVISE_ACCESSED_BY
				   : HMM_ADVISE_UNSET_ACCESSED_BY,
			       dev);
			double t = now_s();
			for (int round = 0; round < 10; round++) {
				dev_sum(dev, p, len, &sink);
				for (size_t i = 0; i < len; i += PG)
					((volatile char *)p)[i]++;
			}
			(acc ? v : b)[k] = (now_s() - t) * 1e3;
		}
	}
	hmm_option_set("THRASH_COUNT", thr);
	report(&(struct result){ "accessed_by", "ms",
				 "preferred location only",
				 median(v, opt_repeat), median(b, opt_repeat),
				 true, " (10 rounds: device read, CPU update)" });
	hmm_device_close(dev);
	munmap(p, len);
	(void)sink;
}

/* ---- read_mostly ---------------------------------------------------------- */

/* Two devices and the CPU take turns reading the same data, ten rounds:
 * with HMM_ADVISE_READ_MOSTLY each device reads a copy of its own, made
 * on its first fault, and the CPU reads in place; the baseline is
 * on-demand migration to each reader (what placement does without the
 * advice when every reader is the preferred location: the data moves to
 * A, straight to B, then home on the CPU's faults, every round). */
static void bench_read_mostly(void)
{
	size_t len = size_capped(256);
	char *p = map_adopted(len);
	hmm_device_t *d[2] = { open_sim(2 * len), open_sim(2 * len) };
	double v[16], b[16], rm[16];
	uint64_t sink = 0;
	long r;

	/* mode 0: migrate to each reader; 1: read-mostly copies; 2: no
	 * advice, every device reads system memory where it is. */
	for (int k = 0; k < opt_repeat; k++) {
		for (int mode = 0; mode < 3; mode++) {
			bool dup = mode == 1;
			advise(p, len,
			       dup ? HMM_ADVISE_READ_MOSTLY
				   : HMM_ADVISE_UNSET_READ_MOSTLY,
			       NULL);
			double t = now_s();
			for (int round = 0; round < 10; round++) {
				for (int i = 0; i < 2; i++) {
					if (!mode && (r = hmm_migrate(p, len, d[i],
								      0)) < 0)
						die("hmm_migrate", (int)r);
					dev_sum(d[i], p, len, &sink);
				}
				for (size_t i = 0; i < len; i += PG)
					sink += ((volatile char *)p)[i];
			}
			(mode == 1 ? v : mode ? rm : b)[k] = (now_s() - t) * 1e3;
		}
	}
	uint64_t made = 0;
	hmm_stat_get("dup_pages_created", &made);
	hmm_advise(p, len, HMM_ADVISE_UNSET_READ_MOSTLY, NULL);
	report(&(struct result){ "read_mostly", "ms",
				 "migrate to each reader",
				 median(v, opt_repeat), median(b, opt_repeat),
				 true, " (10 rounds: device A, device B, CPU read)" });
	/* On sim, device memory is host memory too: a remote read costs what
	 * a local one does, and copies cannot win here (a GPU reading over
	 * its bus would show the difference). */
	report(&(struct result){ "read_mostly_vs_remote", "ms",
				 "devices read system memory",
				 median(v, opt_repeat), median(rm, opt_repeat),
				 true, " (same workload, no advice)" });
	if (!opt_json)
		printf("  (%" PRIu64 " copies made in all)\n", made);
	hmm_device_close(d[0]);
	hmm_device_close(d[1]);
	munmap(p, len);
	(void)sink;
}

/* ---- idle -------------------------------------------------------------- */

static double cpu_seconds(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 +
	       ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

static void bench_idle(void)
{
	hmm_device_t *dev = open_sim(16 << 20);
	char *p = map_anon(64 * PG);
	double c0, c1;

	hmm_range_adopt(p, 64 * PG, 0);
	populate(p, 64 * PG);
	hmm_migrate(p, 64 * PG, dev, 0);
	c0 = cpu_seconds();
	sleep(1);
	c1 = cpu_seconds();
	report(&(struct result){ "idle", "cpu-ms/s", "none", (c1 - c0) * 1e3, 0,
				 true, NULL });
	hmm_device_close(dev);
	munmap(p, 64 * PG);
}

/* ---- GPU scenarios (gpu_bench.cu, with the cuda driver) --------------- */

#ifdef HMM_BENCH_CUDA
#include "gpu_bench.h"

static void gpu_scenario(const char *name, gpu_scenario_fn fn,
			 const char *baseline)
{
	struct gpu_figure f = { 0, 0 };
	char why[256] = "";
	int r = fn(opt_size, opt_repeat, &f, why, sizeof(why));

	if (r == 0) {
		report(&(struct result){ name, "GB/s", baseline, f.value,
					 f.baseline, false, NULL });
		return;
	}
	/* No GPU is no failure: the scenario says why it did not run. */
	if (opt_json)
		printf("{\"scenario\": \"%s\", \"skipped\": \"%s\"}\n",
		       name, r == 77 ? "no CUDA device" : "failed");
	else
		printf("%-22s skipped: %s\n", name, why);
	if (r != 77)
		fprintf(stderr, "hmm-bench: %s: %s\n", name, why);
	fflush(stdout);
}

static void bench_gpu_faultback(void)
{
	gpu_scenario("gpu_cpu_faultback", gpu_cpu_faultback,
		     "cudaMallocManaged, same pass");
}

static void bench_gpu_prefetch(void)
{
	gpu_scenario("gpu_prefetch_to_device", gpu_prefetch_to_device,
		     "pinned cudaMemcpy");
}

static void bench_gpu_kernel_read(void)
{
	gpu_scenario("gpu_kernel_read_mirrored", gpu_kernel_read_mirrored,
		     "kernel on managed, prefetched");
}
#endif

static const struct {
	const char *name;
	void (*fn)(void);
} scenarios[] = {
	{ "migrate", bench_migrate },
	{ "cpu_faultback_4k", bench_faultback_4k },
	{ "cpu_faultback_bulk", bench_faultback_bulk },
	{ "file", bench_file },
	{ "range_fault_1g", bench_range_fault },
	{ "munmap_mirrored_1g", bench_munmap },
	{ "fault_threads_2v1", bench_fault_threads },
	{ "faultback_10k_ranges", bench_many_ranges },
	{ "device_stream_read", bench_stream_read },
	{ "metadata_per_gib", bench_metadata },
	{ "fork_1g_device", bench_fork },
	{ "oversubscribe_4x", bench_oversubscribe },
	{ "pt", bench_pt },
	{ "dma", bench_dma },
	{ "prefetch_in_place", bench_prefetch },
	{ "advice_discard", bench_discard },
	{ "thrash_pingpong", bench_thrash },
	{ "preferred_location", bench_preferred },
	{ "accessed_by", bench_accessed_by },
	{ "read_mostly", bench_read_mostly },
	{ "peer_migrate", bench_peer },
	{ "idle", bench_idle },
#ifdef HMM_BENCH_CUDA
	{ "gpu_cpu_faultback", bench_gpu_faultback },
	{ "gpu_prefetch_to_device", bench_gpu_prefetch },
	{ "gpu_kernel_read_mirrored", bench_gpu_kernel_read },
#endif
};

static void usage(FILE *f)
{
	fprintf(f, "usage: hmm-bench [--size MiB] [--repeat N] [--json] "
		   "[--link GB/s] [SCENARIO...]\nscenarios:");
	for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++)
		fprintf(f, " %s", scenarios[i].name);
	fprintf(f, "\n(migrate runs migrate_to_device and migrate_to_system, "
		   "on huge pages, and their _4k variants; cpu_faultback_bulk "
		   "runs cpu_faultback_bulk_4k too)\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "size", required_argument, NULL, 's' },
		{ "repeat", required_argument, NULL, 'r' },
		{ "json", no_argument, NULL, 'j' },
		{ "link", required_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c, r;

	while ((c = getopt_long(argc, argv, "s:r:jl:h", opts, NULL)) != -1) {
		switch (c) {
		case 'l': opt_link = strtol(optarg, NULL, 0); break;
		case 's': opt_size = strtoul(optarg, NULL, 0) << 20; break;
		case 'r': opt_repeat = atoi(optarg); break;
		case 'j': opt_json = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (opt_repeat < 1 || opt_repeat > 16 || opt_size < (2 << 20)) {
		usage(stderr);
		return 2;
	}
	if ((r = hmm_init()))
		die("hmm_init", r);
	/* A modelled link between sim devices and system memory, so that
	 * placement policies show what they save on a discrete device. */
	if (opt_link && (r = hmm_option_set("SIM_LINK_GBPS", opt_link)))
		die("hmm_option_set(SIM_LINK_GBPS)", r);
	if (!opt_json && opt_link)
		printf("(sim devices reach system memory over a %ld GB/s link)\n",
		       opt_link);
	if (!opt_json)
		printf("%-22s %12s %-6s %-28s %12s %8s\n", "scenario", "value",
		       "unit", "baseline", "baseline", "ratio");
	for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++) {
		bool run = optind == argc;
		for (int a = optind; a < argc; a++)
			if (!strcmp(argv[a], scenarios[i].name) ||
			    (!strcmp(scenarios[i].name, "migrate") &&
			     !strncmp(argv[a], "migrate_to_", 11)))
				run = true;
		if (run)
			scenarios[i].fn();
	}
	return 0;
}
