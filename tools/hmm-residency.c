/* SPDX-License-Identifier: MIT */
/*
 * hmm-residency: draw where pages lived over time, from an HMM_TRACE file.
 *
 * Reads the migration events of a trace (migrate_to_device,
 * migrate_to_system: the ranges they covered, their end times) and writes
 * an SVG picture: time from left to right, addresses from top to bottom,
 * system memory grey and each device its own colour.  A cell takes the
 * location of the last migration that covered it before the end of its
 * time slice; pages no migration touched are system memory.  By default
 * the picture covers the range of every migration in the trace; --addr and
 * --len choose another.
 *
 * The trace is libhmm's own output, one event a line; this is not a
 * general JSON parser.
 */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PG 4096ULL

struct mig {
	double t;		/* end of the migration, us */
	uint64_t addr, len;	/* bytes */
	int dev;		/* -1: system memory */
};

static const char *const colours[] = {
	"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
	"#e377c2", "#17becf",
};
#define SYSTEM_COLOUR "#d9d9d9"

static int cmp_mig(const void *a, const void *b)
{
	double x = ((const struct mig *)a)->t, y = ((const struct mig *)b)->t;

	return x < y ? -1 : x > y;
}

/* The number after "key": in @line (0 if absent). */
static double num(const char *line, const char *key)
{
	const char *p = strstr(line, key);

	if (!p)
		return 0;
	p += strlen(key);
	while (*p == '"' || *p == ':' || *p == ' ')
		p++;
	return strtod(p, NULL);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: hmm-residency [--out FILE.svg] [--addr ADDR] "
		   "[--len BYTES] [--columns N] [--rows N] TRACE.json\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "out", required_argument, NULL, 'o' },
		{ "addr", required_argument, NULL, 'a' },
		{ "len", required_argument, NULL, 'l' },
		{ "columns", required_argument, NULL, 'c' },
		{ "rows", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *out_path = NULL;
	uint64_t lo = 0, len = 0;
	int cols = 400, rows = 200, c;
	struct mig *m = NULL;
	size_t n = 0, cap = 0;
	char line[1024];
	double tmax = 0;

	while ((c = getopt_long(argc, argv, "o:a:l:c:r:h", opts, NULL)) != -1) {
		switch (c) {
		case 'o': out_path = optarg; break;
		case 'a': lo = strtoull(optarg, NULL, 0); break;
		case 'l': len = strtoull(optarg, NULL, 0); break;
		case 'c': cols = atoi(optarg); break;
		case 'r': rows = atoi(optarg); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc - 1 || cols < 1 || rows < 1 || cols > 4000 ||
	    rows > 4000) {
		usage(stderr);
		return 2;
	}
	FILE *in = fopen(argv[optind], "r");
	if (!in) {
		fprintf(stderr, "hmm-residency: %s: %s\n", argv[optind],
			strerror(errno));
		return 1;
	}
	while (fgets(line, sizeof(line), in)) {
		bool to_dev = strstr(line, "\"name\":\"migrate_to_device\"");
		bool to_sys = strstr(line, "\"name\":\"migrate_to_system\"");
		const char *a = strstr(line, "\"addr\":\"");
		if (!(to_dev || to_sys) || !a)
			continue;
		if (n == cap) {
			cap = cap ? 2 * cap : 1024;
			m = realloc(m, cap * sizeof(*m));
			if (!m) {
				fprintf(stderr, "hmm-residency: out of memory\n");
				return 1;
			}
		}
		m[n].t = num(line, "\"ts\"") + num(line, "\"dur\"");
		m[n].addr = strtoull(a + 8, NULL, 16);
		m[n].len = (uint64_t)num(line, "\"span\"") * PG;
		m[n].dev = to_dev ? (int)num(line, "\"dev\"") : -1;
		if (m[n].len && m[n].t > tmax)
			tmax = m[n].t;
		n += m[n].len != 0;
	}
	fclose(in);
	if (!n) {
		fprintf(stderr, "hmm-residency: no migration in %s\n",
			argv[optind]);
		return 1;
	}
	qsort(m, n, sizeof(*m), cmp_mig);
	if (!len) {
		uint64_t hi = 0;
		lo = UINT64_MAX;
		for (size_t i = 0; i < n; i++) {
			if (m[i].addr < lo)
				lo = m[i].addr;
			if (m[i].addr + m[i].len > hi)
				hi = m[i].addr + m[i].len;
		}
		len = hi - lo;
	}
	if (tmax <= 0)
		tmax = 1;

	/* loc[r]: where row r lives now; grid[col][row] the picture. */
	int *loc = malloc((size_t)rows * sizeof(*loc));
	signed char *grid = malloc((size_t)rows * (size_t)cols);
	if (!loc || !grid) {
		fprintf(stderr, "hmm-residency: out of memory\n");
		return 1;
	}
	for (int r = 0; r < rows; r++)
		loc[r] = -1;
	size_t k = 0;
	for (int col = 0; col < cols; col++) {
		double tend = tmax * (col + 1) / cols;
		for (; k < n && m[k].t <= tend; k++) {
			if (m[k].addr + m[k].len <= lo || m[k].addr >= lo + len)
				continue;
			for (int r = 0; r < rows; r++) {
				uint64_t rs = lo + len * (uint64_t)r / rows;
				uint64_t re = lo + len * (uint64_t)(r + 1) / rows;
				if (m[k].addr < re && m[k].addr + m[k].len > rs)
					loc[r] = m[k].dev;
			}
		}
		for (int r = 0; r < rows; r++)
			grid[(size_t)col * rows + r] = (signed char)loc[r];
	}

	FILE *out = out_path ? fopen(out_path, "w") : stdout;
	if (!out) {
		fprintf(stderr, "hmm-residency: %s: %s\n", out_path,
			strerror(errno));
		return 1;
	}
	const int cw = 2, rh = 2, left = 90, top = 30, w = cols * cw,
		  h = rows * rh;
	fprintf(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
		     "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
		     "height=\"%d\" font-family=\"sans-serif\" "
		     "font-size=\"11\">\n",
		left + w + 140, top + h + 40);
	fprintf(out, "<title>libhmm residency: %#llx + %llu bytes, %.3f ms"
		     "</title>\n",
		(unsigned long long)lo, (unsigned long long)len, tmax / 1000);
	fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
		     "fill=\"%s\"/>\n",
		left, top, w, h, SYSTEM_COLOUR);
	for (int r = 0; r < rows; r++) {
		for (int col = 0; col < cols;) {
			int d = grid[(size_t)col * rows + r], run = 1;
			while (col + run < cols &&
			       grid[(size_t)(col + run) * rows + r] == d)
				run++;
			if (d >= 0)
				fprintf(out, "<rect class=\"dev%d\" x=\"%d\" "
					     "y=\"%d\" width=\"%d\" height=\"%d\" "
					     "fill=\"%s\"/>\n",
					d, left + col * cw, top + r * rh,
					run * cw, rh, colours[d % 8]);
			col += run;
		}
	}
	fprintf(out, "<text x=\"%d\" y=\"%d\">time: 0 to %.3f ms</text>\n",
		left, top + h + 20, tmax / 1000);
	fprintf(out, "<text x=\"4\" y=\"%d\">%#llx</text>\n", top + 10,
		(unsigned long long)lo);
	fprintf(out, "<text x=\"4\" y=\"%d\">%#llx</text>\n", top + h,
		(unsigned long long)(lo + len));
	fprintf(out, "<text x=\"%d\" y=\"%d\">residency</text>\n", left,
		top - 10);
	int ly = top;
	fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" "
		     "fill=\"%s\"/><text x=\"%d\" y=\"%d\">system</text>\n",
		left + w + 10, ly, SYSTEM_COLOUR, left + w + 28, ly + 10);
	for (int d = 0; d < 8; d++) {
		bool used = false;
		for (size_t i = 0; i < n && !used; i++)
			used = m[i].dev == d;
		if (!used)
			continue;
		ly += 18;
		fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"12\" "
			     "height=\"12\" fill=\"%s\"/><text x=\"%d\" "
			     "y=\"%d\">device %d</text>\n",
			left + w + 10, ly, colours[d], left + w + 28, ly + 10,
			d);
	}
	fprintf(out, "</svg>\n");
	if (out != stdout)
		fclose(out);
	free(loc);
	free(grid);
	free(m);
	return 0;
}
