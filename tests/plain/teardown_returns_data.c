/* SPDX-License-Identifier: MIT */
/*
 * hmm_fini() with data on two devices brings every byte back.
 *
 * Two sim devices; one buffer from hmm_mem_alloc and one adopted, each with
 * pages on device 1, on device 2 and in system memory, and some pages
 * written by a device only (hmm_sim_fill64 on device-resident pages: the
 * only copy of that data is in device memory).  After hmm_fini() every
 * word is read with plain CPU loads and must hold what was last written;
 * libhmm's calls then return -ESHUTDOWN, its threads and its userfaultfd
 * are gone, and the memory stays ordinary read/write memory.
 */
#include <dirent.h>
#include <stdint.h>
#include <sys/mman.h>

#include <hmm/hmm.h>
#include <hmm/hmm_sim.h>

#include "plain.h"

#define PG HMM_PAGE_SIZE
#define NPAGES 96
#define LEN (NPAGES * PG)
#define WPP (PG / 8)

static const char *const names[2] = { "hmm_mem_alloc", "adopted" };

/*
 * What page @pg of buffer @b must hold at word i (counted from the buffer
 * start): pages 0-31 go to device 1, 32-63 to device 2, 64-95 stay in
 * system memory; within each third the first 8 pages are overwritten by
 * the device that holds them (a constant), the rest keep the CPU pattern.
 */
static uint64_t expect(int b, size_t i)
{
	size_t pg = i / WPP;

	if (pg < 64 && pg % 32 < 8)
		return 0xd0d0000000000000ULL | (uint64_t)(b << 8) | (pg / 32);
	return i ^ (0xabc0 + (uint64_t)b);
}

static int count_threads_named_hmm(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	CHECK(d, "opendir: %s", strerror(errno));
	while ((e = readdir(d))) {
		char path[300], comm[32] = "";
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm",
			 e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(comm, sizeof(comm), f) && !strncmp(comm, "hmm-", 4))
			n++;
		fclose(f);
	}
	closedir(d);
	return n;
}

static int count_userfaultfds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	CHECK(d, "opendir: %s", strerror(errno));
	while ((e = readdir(d))) {
		char path[300], target[64];
		ssize_t len;

		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		len = readlink(path, target, sizeof(target) - 1);
		if (len <= 0)
			continue;
		target[len] = 0;
		if (!strcmp(target, "anon_inode:[userfaultfd]"))
			n++;
	}
	closedir(d);
	return n;
}

int main(void)
{
	struct hmm_device_attr attr = { .mem_size = 4 * LEN };
	hmm_device_t *devs[2], *where;
	uint64_t *bufs[2];
	long moved;
	void *m;
	int r;

	PLAIN_NEED_HMM();
	for (int d = 0; d < 2; d++) {
		r = hmm_device_open("sim", &attr, &devs[d]);
		CHECK(r == 0, "hmm_device_open(sim) #%d = %d", d + 1, r);
	}
	r = hmm_mem_alloc(LEN, 0, &m);
	CHECK(r == 0, "hmm_mem_alloc = %d", r);
	bufs[0] = m;
	m = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(m != MAP_FAILED, "mmap: %s", strerror(errno));
	r = hmm_range_adopt(m, LEN, 0);
	CHECK(r == 0, "hmm_range_adopt = %d", r);
	bufs[1] = m;

	for (int b = 0; b < 2; b++) {
		for (size_t i = 0; i < LEN / 8; i++)
			bufs[b][i] = i ^ (0xabc0 + (uint64_t)b);
		for (int d = 0; d < 2; d++) {
			uint64_t *part = bufs[b] + d * 32 * WPP;
			uint64_t v = 0xd0d0000000000000ULL |
				     (uint64_t)(b << 8) | (uint64_t)d;

			moved = hmm_migrate(part, 32 * PG, devs[d], 0);
			CHECK(moved == 32, "%s: hmm_migrate to device %d = %ld",
			      names[b], d + 1, moved);
			r = hmm_sim_fill64(devs[d], part, v, 8 * PG, NULL);
			CHECK(r == 0, "hmm_sim_fill64 = %d", r);
		}
		for (size_t pg = 0; pg < 64; pg++) {
			r = hmm_page_location(bufs[b] + pg * WPP, &where);
			CHECK(r == HMM_LOC_DEVICE && where == devs[pg / 32],
			      "%s: page %zu is at %d, not on device %zu",
			      names[b], pg, r, pg / 32 + 1);
		}
	}

	r = hmm_fini();
	CHECK(r == 0, "hmm_fini = %d", r);

	/* Every word, with plain loads. */
	for (int b = 0; b < 2; b++)
		for (size_t i = 0; i < LEN / 8; i++)
			CHECK(bufs[b][i] == expect(b, i),
			      "%s after hmm_fini: word %zu (page %zu) is %#lx, "
			      "want %#lx", names[b], i, i / WPP,
			      (unsigned long)bufs[b][i],
			      (unsigned long)expect(b, i));

	r = hmm_page_location(bufs[0], NULL);
	CHECK(r == -ESHUTDOWN, "hmm_page_location after fini = %d", r);
	moved = hmm_migrate(bufs[1], PG, devs[0], 0);
	CHECK(moved == -ESHUTDOWN, "hmm_migrate after fini = %ld", moved);
	r = hmm_init();
	CHECK(r == -ESHUTDOWN, "hmm_init after fini = %d", r);
	r = hmm_fini();
	CHECK(r == 0, "a second hmm_fini = %d", r);
	CHECK(count_threads_named_hmm() == 0,
	      "%d threads named hmm-* remain after hmm_fini",
	      count_threads_named_hmm());
	CHECK(count_userfaultfds() == 0,
	      "%d userfaultfd descriptors remain after hmm_fini",
	      count_userfaultfds());

	/* Plain memory now: writes stick, munmap works. */
	for (int b = 0; b < 2; b++) {
		for (size_t i = 0; i < LEN / 8; i++)
			bufs[b][i] = ~i;
		for (size_t i = 0; i < LEN / 8; i++)
			CHECK(bufs[b][i] == ~i, "%s: store after fini lost",
			      names[b]);
	}
	CHECK(munmap(bufs[1], LEN) == 0, "munmap: %s", strerror(errno));
	printf("teardown_returns_data: every byte came back\n");
	return 0;
}
