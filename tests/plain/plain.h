/* SPDX-License-Identifier: MIT */
/*
 * Helpers of the plain test programs: each is a main() run in its own
 * process by meson, exit status 0 for a pass, 77 for a skip (with the
 * reason on stderr), anything else for a failure (with a message).  They
 * need no test framework, so they also run in the ThreadSanitizer build,
 * where Criterion cannot start.
 */
#ifndef HMM_TESTS_PLAIN_H
#define HMM_TESTS_PLAIN_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PLAIN_SKIP 77

/* Fail the test (exit 1) with a message unless @cond holds. */
#define CHECK(cond, ...)                                                    \
	do {                                                                \
		if (!(cond)) {                                              \
			fprintf(stderr, "%s:%d: check failed: %s: ",        \
				__FILE__, __LINE__, #cond);                 \
			fprintf(stderr, __VA_ARGS__);                       \
			fputc('\n', stderr);                                \
			exit(1);                                            \
		}                                                           \
	} while (0)

/* Skip the test (exit 77) with a reason. */
#define SKIP(...)                                                           \
	do {                                                                \
		fprintf(stderr, "SKIP: ");                                  \
		fprintf(stderr, __VA_ARGS__);                               \
		fputc('\n', stderr);                                        \
		exit(PLAIN_SKIP);                                           \
	} while (0)

/* hmm_init(), or skip when this machine has no usable userfaultfd. */
#define PLAIN_NEED_HMM()                                                    \
	do {                                                                \
		int r_ = hmm_init();                                        \
		if (r_ == -EPERM || r_ == -ENOSYS || r_ == -EOPNOTSUPP)     \
			SKIP("hmm_init() = %d: no usable userfaultfd", r_); \
		CHECK(r_ == 0, "hmm_init() = %d", r_);                      \
	} while (0)

#endif
