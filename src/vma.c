/* SPDX-License-Identifier: MIT */
/*
 * What the CPU mapping looks like, from /proc/self/maps.  Used to validate
 * ranges (mapped, readable, private anonymous) and to learn protections.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

static char *read_maps(const char *path, size_t *lenp)
{
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (!buf || fd < 0) {
		free(buf);
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	for (;;) {
		ssize_t n;
		if (cap - len < 4096) {
			char *nb = realloc(buf, cap * 2);
			if (!nb) {
				free(buf);
				close(fd);
				return NULL;
			}
			buf = nb;
			cap *= 2;
		}
		n = read(fd, buf + len, cap - len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	buf[len] = 0;
	*lenp = len;
	return buf;
}

/* Parse one line "start-end perms offset dev inode   path". */
static int parse_line(char *line, struct hmm_vma *v)
{
	char *p = line, *end;
	int field = 0;

	v->start = strtoul(p, &end, 16);
	if (*end != '-')
		return -1;
	v->end = strtoul(end + 1, &end, 16);
	if (*end != ' ')
		return -1;
	p = end + 1;
	v->prot = (p[0] == 'r' ? PROT_READ : 0) | (p[1] == 'w' ? PROT_WRITE : 0) |
		  (p[2] == 'x' ? PROT_EXEC : 0);
	v->shared = p[3] == 's';
	/* skip perms, offset, dev, inode (keeping the last two) */
	v->dev_major = v->dev_minor = v->ino = 0;
	v->off = 0;
	while (*p && field < 4) {
		if (field == 1) {
			v->off = strtoull(p, NULL, 16);
		} else if (field == 2) {
			v->dev_major = strtoul(p, &end, 16);
			if (*end == ':')
				v->dev_minor = strtoul(end + 1, NULL, 16);
		} else if (field == 3) {
			v->ino = strtoul(p, NULL, 10);
		}
		while (*p && *p != ' ')
			p++;
		while (*p == ' ')
			p++;
		field++;
	}
	v->anon = !*p || !strcmp(p, "[heap]") || !strncmp(p, "[stack", 6) ||
		  !strncmp(p, "[anon:", 6);
	v->special = !strcmp(p, "[vvar]") || !strcmp(p, "[vdso]") ||
		     !strcmp(p, "[vsyscall]") || !strcmp(p, "[vvar_vclock]");
	/* MAP_SHARED|MAP_ANONYMOUS is shmem: "/dev/zero (deleted)". */
	v->shmem_anon = v->shared &&
			(!*p || !strcmp(p, "/dev/zero (deleted)"));
	if (v->shared)
		v->anon = false;
	return 0;
}

long hmm__vma_snapshot(uintptr_t start, uintptr_t end, struct hmm_vma **out)
{
	size_t len, n = 0, cap = 8;
	char *buf = read_maps("/proc/self/maps", &len), *line, *save = NULL;
	struct hmm_vma *v = malloc(cap * sizeof(*v));

	if (!buf || !v) {
		free(buf);
		free(v);
		return -ENOMEM;
	}
	for (line = strtok_r(buf, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		struct hmm_vma cur;
		if (parse_line(line, &cur))
			continue;
		if (cur.end <= start)
			continue;
		if (cur.start >= end)
			break;
		if (n == cap) {
			struct hmm_vma *nv = realloc(v, 2 * cap * sizeof(*v));
			if (!nv) {
				free(v);
				free(buf);
				return -ENOMEM;
			}
			v = nv;
			cap *= 2;
		}
		v[n++] = cur;
	}
	free(buf);
	*out = v;
	return (long)n;
}

int hmm__vma_covered(const struct hmm_vma *v, long n, uintptr_t start,
		     uintptr_t end)
{
	uintptr_t pos = start;

	for (long i = 0; i < n && pos < end; i++) {
		if (v[i].start > pos)
			return -EFAULT;
		if (v[i].end > pos)
			pos = v[i].end;
	}
	return pos >= end ? 0 : -EFAULT;
}

const struct hmm_vma *hmm__vma_find(const struct hmm_vma *v, long n,
				    uintptr_t addr)
{
	for (long i = 0; i < n; i++)
		if (v[i].start <= addr && addr < v[i].end)
			return &v[i];
	return NULL;
}

bool hmm__mapped_elsewhere(const struct hmm_vma *v)
{
	char needle[64], path[64];
	bool found = false;
	struct dirent *d;
	DIR *dir;
	pid_t self = getpid();

	if (!v->ino)
		return false;
	snprintf(needle, sizeof(needle), " %02lx:%02lx %lu ", v->dev_major,
		 v->dev_minor, v->ino);
	dir = opendir("/proc");
	if (!dir)
		return true; /* cannot tell: assume the worst */
	while (!found && (d = readdir(dir))) {
		char *buf, *end;
		long pid = strtol(d->d_name, &end, 10);
		size_t len;
		if (*end || pid <= 0 || pid == self)
			continue;
		snprintf(path, sizeof(path), "/proc/%ld/maps", pid);
		buf = read_maps(path, &len);
		if (buf)
			found = strstr(buf, needle) != NULL;
		free(buf); /* unreadable: another user's, cannot share ours */
	}
	closedir(dir);
	return found;
}
