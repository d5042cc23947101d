/* SPDX-License-Identifier: MIT */
/* Diagnostics to stderr, filtered by HMM_LOG_LEVEL (0 quiet .. 3 debug). */
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

void hmm__log(int level, const char *fmt, ...)
{
	va_list ap;

	if (level > hmm__option(HMM_OPT_LOG_LEVEL))
		return;
	va_start(ap, fmt);
	fputs("libhmm: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}
