/* SPDX-License-Identifier: MIT */
/*
 * Tracing: with HMM_TRACE=path, a Chrome trace-event file (a JSON array,
 * one event a line; Perfetto and chrome://tracing open it) of CPU faults,
 * device faults, migrations, invalidations and evictions, each a complete
 * event ("ph": "X") on the thread that did the work, with the address,
 * the pages and the device in its args.  Threads are named by metadata
 * events.  The file is closed, with its closing bracket, by hmm_fini and
 * at exit from any thread; a process killed by a signal leaves it without
 * the bracket (Perfetto reads it all the same).
 *
 * Off, a trace point costs one relaxed load (hmm__tracing()).  On, events
 * are formatted into a buffer under trace_lock and written out when it
 * fills and at the end.  Trace points never run in a signal handler of
 * libhmm's own making except the file fault path's, which already takes
 * locks (see file.c); the trace lock is never held across anything that
 * could fault.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define TBUF_SIZE (64 << 10)

_Atomic bool hmm__trace_on;

static pthread_mutex_t trace_lock = PTHREAD_MUTEX_INITIALIZER;
static int trace_fd = -1;		/* trace_lock */
static char tbuf[TBUF_SIZE];		/* trace_lock */
static size_t tlen;			/* trace_lock */
static bool any;			/* trace_lock: an event written */
static uint64_t t0;			/* set before tracing turns on */
static _Thread_local bool named;

uint64_t hmm__now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

/* trace_lock held. */
static void flush_locked(void)
{
	size_t off = 0;

	while (off < tlen && trace_fd >= 0) {
		ssize_t n = write(trace_fd, tbuf + off, tlen - off);
		if (n <= 0)
			break;
		off += (size_t)n;
	}
	tlen = 0;
}

/* Append one event (a JSON object, without separator).  trace_lock held. */
static void emit_locked(const char *fmt, ...)
{
	char ev[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(ev, sizeof(ev), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(ev))
		return;
	if (tlen + (size_t)n + 3 > sizeof(tbuf))
		flush_locked();
	if (any)
		tbuf[tlen++] = ',';
	tbuf[tlen++] = '\n';
	memcpy(tbuf + tlen, ev, (size_t)n);
	tlen += (size_t)n;
	any = true;
}

void hmm__trace_init(void)
{
	const char *path = getenv("HMM_TRACE");
	int fd;

	if (!path || !*path)
		return;
	pthread_mutex_lock(&trace_lock);
	if (trace_fd < 0) {
		fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0) {
			hmm__warn("HMM_TRACE=%s: %s: no trace", path,
				  strerror(errno));
		} else {
			trace_fd = fd;
			t0 = hmm__now_ns();
			tlen = 0;
			any = false;
			tbuf[tlen++] = '[';
			emit_locked("{\"name\":\"process_name\",\"ph\":\"M\","
				    "\"pid\":%d,\"args\":{\"name\":\"libhmm "
				    "%d\"}}",
				    (int)getpid(), (int)getpid());
			atomic_store(&hmm__trace_on, true);
		}
	}
	pthread_mutex_unlock(&trace_lock);
}

void hmm__trace_close(void)
{
	pthread_mutex_lock(&trace_lock);
	if (trace_fd >= 0) {
		atomic_store(&hmm__trace_on, false);
		flush_locked();
		if (write(trace_fd, "\n]\n", 3) != 3)
			hmm__warn("HMM_TRACE: the trace file is incomplete");
		close(trace_fd);
		trace_fd = -1;
	}
	pthread_mutex_unlock(&trace_lock);
}

/* In the child of fork: the file is the parent's. */
void hmm__trace_fork_child(void)
{
	pthread_mutex_init(&trace_lock, NULL);
	if (trace_fd >= 0)
		close(trace_fd);
	trace_fd = -1;
	tlen = 0;
	atomic_store(&hmm__trace_on, false);
}

void hmm__trace_event(const char *name, const char *cat, uint64_t start,
		      uintptr_t addr, uint64_t pages, int dev)
{
	hmm__trace_span(name, cat, start, addr, pages, pages, dev);
}

void hmm__trace_span(const char *name, const char *cat, uint64_t start,
		     uintptr_t addr, uint64_t span, uint64_t pages, int dev)
{
	uint64_t end = hmm__now_ns();
	int pid = (int)getpid(), tid = (int)syscall(SYS_gettid);

	pthread_mutex_lock(&trace_lock);
	if (trace_fd < 0) {
		pthread_mutex_unlock(&trace_lock);
		return;
	}
	if (!named) {
		char tname[32] = "thread";
		pthread_getname_np(pthread_self(), tname, sizeof(tname));
		for (char *c = tname; *c; c++)
			if (*c == '"' || *c == '\\' || (unsigned char)*c < 32)
				*c = '_';
		emit_locked("{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,"
			    "\"tid\":%d,\"args\":{\"name\":\"%s\"}}",
			    pid, tid, tname);
		named = true;
	}
	if (start < t0)
		start = t0;
	emit_locked("{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"X\","
		    "\"ts\":%.3f,\"dur\":%.3f,\"pid\":%d,\"tid\":%d,"
		    "\"args\":{\"addr\":\"%#lx\",\"span\":%llu,"
		    "\"pages\":%llu,\"dev\":%d}}",
		    name, cat, (double)(start - t0) / 1000.0,
		    (double)(end - start) / 1000.0, pid, tid,
		    (unsigned long)addr, (unsigned long long)span,
		    (unsigned long long)pages, dev);
	pthread_mutex_unlock(&trace_lock);
}
