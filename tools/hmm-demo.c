/* SPDX-License-Identifier: MIT */
/*
 * hmm-demo: a small workload on the simulated device.
 *
 * The CPU and a sim device work on the same managed buffer through the same
 * pointers:
 *
 *   1. the CPU fills the buffer with a pseudo-random sequence;
 *   2. a device kernel computes x = 3x + 1 on every word, in place, through
 *      the device's mirror of the process (device faults fill the mirror);
 *   3. the second half migrates to device memory (hmm_migrate);
 *   4. a device kernel computes x ^= 0x5555... on the second half, in device
 *      memory, while the CPU rotates every word of the first half;
 *   5. a read-only device kernel sums every word (the checksum);
 *   6. the CPU reads everything back (the device-resident half returns by
 *      CPU faults) and checks each word and the checksum against the same
 *      pipeline run on a plain malloc'd copy.
 *
 * It prints each phase's wall time and what the libhmm counters saw.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#define MIB (1024UL * 1024UL)
#define SEED 0x9e3779b97f4a7c15ULL
#define XOR_MASK 0x5555555555555555ULL
#define ROT 13

static const char *const counter_names[] = {
	"cpu_faults",	   "device_faults",   "pages_to_device", "pages_to_system",
	"bytes_to_device", "bytes_to_system", "invalidations",
};
#define NCOUNTERS (sizeof(counter_names) / sizeof(counter_names[0]))

struct counters {
	uint64_t v[NCOUNTERS];
	int known[NCOUNTERS];
};

static void counters_read(struct counters *c)
{
	for (size_t i = 0; i < NCOUNTERS; i++)
		c->known[i] = hmm_stat_get(counter_names[i], &c->v[i]) == 0;
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ------------------------------------------------------------------ */
/* The pipeline's steps, shared by the device kernels and the CPU      */
/* ------------------------------------------------------------------ */

static inline uint64_t xorshift64(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static inline uint64_t rotl64(uint64_t x, unsigned int r)
{
	return (x << r) | (x >> (64 - r));
}

static void fill_input(uint64_t *p, size_t n)
{
	uint64_t s = SEED;

	for (size_t i = 0; i < n; i++)
		p[i] = xorshift64(&s);
}

static void step_mul3(uint64_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = p[i] * 3 + 1;
}

static void step_xor(uint64_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] ^= XOR_MASK;
}

static void step_rotate(uint64_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = rotl64(p[i], ROT);
}

static uint64_t sum_words(const uint64_t *p, size_t n)
{
	uint64_t s = 0;

	for (size_t i = 0; i < n; i++)
		s += p[i];
	return s;
}

/* Device kernels: called once per run of pages, with the device's view. */

static void kernel_mul3(void *dptr, size_t off, size_t n, void *arg)
{
	(void)off;
	(void)arg;
	step_mul3(dptr, n / sizeof(uint64_t));
}

static void kernel_xor(void *dptr, size_t off, size_t n, void *arg)
{
	(void)off;
	(void)arg;
	step_xor(dptr, n / sizeof(uint64_t));
}

static void kernel_sum(void *dptr, size_t off, size_t n, void *arg)
{
	uint64_t s = sum_words(dptr, n / sizeof(uint64_t));

	(void)off;
	/* Runs may be handed to several engines at once. */
	__atomic_fetch_add((uint64_t *)arg, s, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ */
/* Reporting                                                           */
/* ------------------------------------------------------------------ */

static struct counters phase_start;
static double phase_t0;
static int phase_no;

static void phase_begin(void)
{
	counters_read(&phase_start);
	phase_t0 = now_ms();
}

static void phase_end(const char *what)
{
	double ms = now_ms() - phase_t0;
	struct counters c;
	int any = 0;

	counters_read(&c);
	printf("[%d] %-46s %9.1f ms\n", ++phase_no, what, ms);
	for (size_t i = 0; i < NCOUNTERS; i++) {
		if (!c.known[i] || !phase_start.known[i] ||
		    c.v[i] == phase_start.v[i])
			continue;
		printf("%s%s +%" PRIu64, any ? ", " : "      ", counter_names[i],
		       c.v[i] - phase_start.v[i]);
		any = 1;
	}
	if (any)
		printf("\n");
}

static void print_caps(void)
{
	static const struct {
		int bit;
		const char *name;
	} caps[] = {
		{ HMM_CAP_KERNEL_FAULTS, "kernel-faults" },
		{ HMM_CAP_WP, "write-protect" },
		{ HMM_CAP_MOVE, "move" },
		{ HMM_CAP_MINOR_SHMEM, "minor-shmem" },
		{ HMM_CAP_EVENTS, "events" },
		{ HMM_CAP_FORK, "fork" },
		{ HMM_CAP_PAGEMAP_SCAN, "pagemap-scan" },
	};
	int c = hmm_caps();

	if (c < 0)
		return;
	printf("hmm-demo: userfaultfd capabilities:");
	for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++)
		if (c & caps[i].bit)
			printf(" %s", caps[i].name);
	printf("\n");
}

static int fail(const char *what, long ret)
{
	fprintf(stderr, "hmm-demo: %s: %s\n", what, strerror((int)-ret));
	return 1;
}

/* The device half of phase 4 runs on its own thread. */
struct device_job {
	hmm_device_t *dev;
	void *addr;
	size_t len;
	struct hmm_sim_result res;
	int ret;
	double ms;
};

/*
 * 7. File-backed memory: a file in /var/tmp mapped shared goes to the
 * device, the device writes a line into it, msync writes it back, and a
 * second mapping of the file (any other view: another process, read())
 * sees the line.  Returns 0, or 1 on a mismatch.
 */
static int file_phase(hmm_device_t *dev)
{
	static const char msg[] = "written by the sim device";
	char path[] = "/var/tmp/hmm-demo-XXXXXX";
	size_t len = 16 * HMM_PAGE_SIZE;
	char *p, *q;
	long moved;
	int fd, ret;

	fd = mkstemp(path);
	if (fd < 0 || ftruncate(fd, (off_t)len)) {
		printf("[%d] file-backed memory: skipped (%s)\n", ++phase_no,
		       strerror(errno));
		return 0;
	}
	unlink(path);
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	q = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED || q == MAP_FAILED)
		return fail("mmap of the file", -errno);
	memset(p, '.', len);
	phase_begin();
	ret = hmm_file_adopt(p, len, fd, 0);
	if (ret)
		return fail("hmm_file_adopt", ret);
	moved = hmm_migrate(p, len, dev, 0);
	if (moved < 0)
		return fail("hmm_migrate (file)", moved);
	ret = hmm_sim_write(dev, p + HMM_PAGE_SIZE, msg, sizeof(msg), NULL);
	if (ret)
		return fail("hmm_sim_write (file)", ret);
	if (msync(p, len, MS_SYNC))
		return fail("msync", -errno);
	phase_end("file: device writes, msync, other view reads");
	printf("      %ld pages of a file in /var/tmp moved; another mapping of "
	       "the file reads \"%s\"\n", moved, q + HMM_PAGE_SIZE);
	if (memcmp(q + HMM_PAGE_SIZE, msg, sizeof(msg))) {
		fprintf(stderr, "hmm-demo: MISMATCH: the file does not have "
			"the device's line after msync\n");
		return 1;
	}
	munmap(q, len);
	munmap(p, len); /* writes back too */
	close(fd);
	return 0;
}

static void *device_xor_thread(void *p)
{
	struct device_job *j = p;
	double t0 = now_ms();

	j->ret = hmm_sim_launch(j->dev, j->addr, j->len, 1, kernel_xor, NULL,
				&j->res);
	j->ms = now_ms() - t0;
	return NULL;
}

static void usage(FILE *out, const char *argv0)
{
	fprintf(out,
		"usage: %s [--size MiB] [--help]\n"
		"\n"
		"Runs a small workload shared by the CPU and libhmm's simulated\n"
		"device on one managed buffer, checks every result against a\n"
		"CPU-only run, and prints what libhmm did.\n"
		"\n"
		"  -s, --size MiB  size of the buffer (default 32; the device gets\n"
		"                  twice as much memory)\n"
		"  -h, --help      this text\n"
		"\n"
		"HMM_STATS=1 prints libhmm's counters at exit.\n",
		argv0);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "size", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	unsigned long size_mib = 32;
	int opt;

	while ((opt = getopt_long(argc, argv, "s:h", opts, NULL)) != -1) {
		char *end;

		switch (opt) {
		case 's':
			errno = 0;
			size_mib = strtoul(optarg, &end, 10);
			if (errno || *end || end == optarg || size_mib == 0 ||
			    size_mib > (1UL << 20)) {
				fprintf(stderr,
					"hmm-demo: --size wants a whole number of MiB, 1 to 1048576\n");
				return 2;
			}
			break;
		case 'h':
			usage(stdout, argv[0]);
			return 0;
		default:
			usage(stderr, argv[0]);
			return 2;
		}
	}
	if (optind < argc) {
		usage(stderr, argv[0]);
		return 2;
	}

	const size_t bytes = size_mib * MIB;
	const size_t nwords = bytes / sizeof(uint64_t);
	const size_t half_bytes = bytes / 2; /* a multiple of 512 KiB */
	const size_t half = half_bytes / sizeof(uint64_t);
	struct hmm_device_attr attr = { .mem_size = 2 * bytes };
	struct counters start, end;
	struct hmm_sim_result res;
	hmm_device_t *dev = NULL;
	uint64_t *data = NULL;
	uint64_t *ref;
	uint64_t dev_sum = 0, ref_sum;
	size_t used = 0, total = 0;
	long moved;
	int ret;

	printf("hmm-demo: %lu MiB (%zu words) of managed memory, sim device with %lu MiB\n",
	       size_mib, nwords, 2 * size_mib);

	ret = hmm_device_open("sim", &attr, &dev);
	if (ret)
		return fail("hmm_device_open(\"sim\")", ret);
	print_caps();
	ret = hmm_mem_alloc(bytes, 0, (void **)&data);
	if (ret)
		return fail("hmm_mem_alloc", ret);
	ref = malloc(bytes);
	if (!ref) {
		fprintf(stderr, "hmm-demo: malloc: %s\n", strerror(errno));
		return 1;
	}
	counters_read(&start);

	/* 1. The CPU writes the input. */
	phase_begin();
	fill_input(data, nwords);
	phase_end("CPU writes the input");

	/* 2. The device transforms all of it in place, through its mirror. */
	phase_begin();
	ret = hmm_sim_launch(dev, data, bytes, 1, kernel_mul3, NULL, &res);
	if (ret)
		return fail("hmm_sim_launch(x = 3x + 1)", ret);
	phase_end("device: x = 3x + 1, all, through the mirror");
	printf("      device fault rounds %" PRIu64 ", pages %" PRIu64 "\n",
	       res.faults, res.pages);

	/* 3. The second half moves to device memory. */
	phase_begin();
	moved = hmm_migrate((char *)data + half_bytes, half_bytes, dev, 0);
	if (moved < 0)
		return fail("hmm_migrate(to device)", moved);
	phase_end("migrate the second half to the device");
	ret = hmm_device_mem_usage(dev, &used, &total);
	if (ret)
		return fail("hmm_device_mem_usage", ret);
	printf("      %ld pages moved; device memory %zu of %zu pages in use\n",
	       moved, used, total);

	/* 4. Device and CPU work on their halves at the same time. */
	phase_begin();
	{
		struct device_job job = {
			.dev = dev,
			.addr = (char *)data + half_bytes,
			.len = half_bytes,
		};
		pthread_t t;
		double t0;

		ret = pthread_create(&t, NULL, device_xor_thread, &job);
		if (ret) {
			fprintf(stderr, "hmm-demo: pthread_create: %s\n",
				strerror(ret));
			return 1;
		}
		t0 = now_ms();
		step_rotate(data, half);
		double cpu_ms = now_ms() - t0;
		pthread_join(t, NULL);
		if (job.ret)
			return fail("hmm_sim_launch(x ^= 0x5555...)", job.ret);
		phase_end("device: x ^= 0x55.., 2nd half | CPU: rotate, 1st");
		printf("      device %.1f ms (fault rounds %" PRIu64
		       ", pages %" PRIu64 "), CPU %.1f ms\n",
		       job.ms, job.res.faults, job.res.pages, cpu_ms);
	}

	/* 5. The device sums every word, read-only. */
	phase_begin();
	ret = hmm_sim_launch(dev, data, bytes, 0, kernel_sum, &dev_sum, &res);
	if (ret)
		return fail("hmm_sim_launch(checksum)", ret);
	phase_end("device: checksum of all words (read-only)");

	/* The same pipeline on the CPU alone, on plain memory. */
	fill_input(ref, nwords);
	step_mul3(ref, nwords);
	step_rotate(ref, half);
	step_xor(ref + half, nwords - half);
	ref_sum = sum_words(ref, nwords);

	/* 6. The CPU reads every result; the device half comes back. */
	phase_begin();
	for (size_t i = 0; i < nwords; i++) {
		uint64_t got = data[i];

		if (got != ref[i]) {
			hmm_device_t *where = NULL;
			int loc = hmm_page_location(&data[i], &where);

			fprintf(stderr,
				"hmm-demo: MISMATCH at word %zu (address %p, %s half, page location %d): got 0x%016" PRIx64
				", expected 0x%016" PRIx64 "\n",
				i, (void *)&data[i], i < half ? "first" : "second",
				loc, got, ref[i]);
			return 1;
		}
	}
	phase_end("CPU checks every word");
	if (dev_sum != ref_sum) {
		fprintf(stderr,
			"hmm-demo: MISMATCH in the checksum: device 0x%016" PRIx64
			", expected 0x%016" PRIx64 "\n",
			dev_sum, ref_sum);
		return 1;
	}
	printf("      all %zu words match; checksum 0x%016" PRIx64 " matches\n",
	       nwords, dev_sum);
	if (file_phase(dev))
		return 1;

	counters_read(&end);
	printf("\ncounter               before        after\n");
	for (size_t i = 0; i < NCOUNTERS; i++) {
		if (!start.known[i] || !end.known[i]) {
			printf("%-16s %11s %12s\n", counter_names[i], "-", "-");
			continue;
		}
		printf("%-16s %11" PRIu64 " %12" PRIu64 "\n", counter_names[i],
		       start.v[i], end.v[i]);
	}

	free(ref);
	ret = hmm_mem_free(data, bytes);
	if (ret)
		return fail("hmm_mem_free", ret);
	ret = hmm_device_close(dev);
	if (ret)
		return fail("hmm_device_close", ret);
	printf("hmm-demo: OK\n");
	return 0;
}
