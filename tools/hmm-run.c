/* SPDX-License-Identifier: MIT */
/*
 * hmm-run: run a program with libhmm-dmirror.so preloaded, so that a
 * program written for the kernel's HMM test driver (/dev/hmm_dmirrorN)
 * runs unchanged on libhmm's simulated devices.
 *
 *	hmm-run [--lib PATH] [--] PROGRAM [ARGS...]
 *
 * The library is looked for next to hmm-run (the build directory), then in
 * the library directory it was installed to.  LD_PRELOAD keeps what it
 * already held, after libhmm-dmirror.so.
 */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dlfcn.h>
#include <unistd.h>

#ifndef HMM_LIBDIR
#define HMM_LIBDIR "/usr/local/lib"
#endif
#define LIBNAME "libhmm-dmirror.so"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: hmm-run [--lib PATH] [--] PROGRAM [ARGS...]\n"
		"Run PROGRAM with " LIBNAME " preloaded: /dev/hmm_dmirror0 and 1\n"
		"are served by libhmm's simulated devices.\n"
		"  --lib PATH   the preload library to use\n"
		"  --options    print libhmm's options (HMM_* environment\n"
		"               variables) with their values and sources\n"
		"  --help       this text\n");
}

static int find_lib(char *out, size_t n)
{
	char self[PATH_MAX];
	ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);

	if (len > 0) {
		self[len] = '\0';
		snprintf(out, n, "%s/%s", dirname(self), LIBNAME);
		if (access(out, R_OK) == 0)
			return 0;
	}
	snprintf(out, n, "%s/%s", HMM_LIBDIR, LIBNAME);
	return access(out, R_OK) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "lib", required_argument, NULL, 'l' },
		{ "options", no_argument, NULL, 'o' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char lib[PATH_MAX], *preload;
	const char *old;
	int c, options = 0;

	lib[0] = '\0';
	while ((c = getopt_long(argc, argv, "+l:oh", opts, NULL)) != -1) {
		switch (c) {
		case 'o':
			options = 1;
			break;
		case 'l':
			snprintf(lib, sizeof(lib), "%s", optarg);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind >= argc && !options) {
		usage(stderr);
		return 2;
	}
	if (!lib[0] && find_lib(lib, sizeof(lib))) {
		fprintf(stderr, "hmm-run: cannot find %s next to hmm-run or in "
			HMM_LIBDIR "\n", LIBNAME);
		return 127;
	}
	if (access(lib, R_OK)) {
		fprintf(stderr, "hmm-run: %s: %s\n", lib, strerror(errno));
		return 127;
	}
	if (options) {
		/* The preload library carries libhmm: ask it.  (hmm-run
		 * itself stays free of libhmm, so that it can be copied
		 * and run alone.) */
		void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
		void (*print)(FILE *) =
			h ? (void (*)(FILE *))dlsym(h, "hmm_options_print")
			  : NULL;
		if (!print) {
			fprintf(stderr, "hmm-run: %s: %s\n", lib, dlerror());
			return 127;
		}
		print(stdout);
		return 0;
	}
	old = getenv("LD_PRELOAD");
	if (old && *old) {
		size_t n = strlen(lib) + strlen(old) + 2;
		preload = malloc(n);
		if (!preload)
			return 127;
		snprintf(preload, n, "%s:%s", lib, old);
	} else {
		preload = lib;
	}
	if (setenv("LD_PRELOAD", preload, 1)) {
		perror("hmm-run: setenv");
		return 127;
	}
	execvp(argv[optind], argv + optind);
	fprintf(stderr, "hmm-run: %s: %s\n", argv[optind], strerror(errno));
	return errno == ENOENT ? 127 : 126;
}
