/* SPDX-License-Identifier: MIT */
/*
 * Host regions: libhmm's own mappings whose pages stay put while they
 * live (the aliases of shmem file ranges), announced to the drivers that
 * want to register them for DMA (hmm_driver_ops.host_register).  The cuda
 * driver pins them, so that a page coming home is written by the GPU
 * straight into its page-cache page, which UFFDIO_CONTINUE then maps:
 * the zero-copy CPU fault-back.
 *
 * One lock orders everything here, and the driver hooks run under it, so
 * that a driver never sees a region removed before it was added, nor a
 * region added twice.  It may be taken under ctx.ranges_lock (an alias
 * is announced as its range is inserted, and removed as the last
 * reference to its allocation goes); the hooks call nothing of libhmm's,
 * so it is taken under nothing else.
 */
#include <stdlib.h>

#include "internal.h"

struct host_region {
	void *addr;
	size_t len;
	struct host_region *next;
};

static pthread_mutex_t hostreg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct host_region *regions;		/* hostreg_lock */
static hmm_device_t *devs[HMM_MAX_DEVICES];	/* hostreg_lock */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* A child of fork() has one thread: the lock may have been held by
 * another at the fork (a list update takes a few loads and stores, a
 * driver hook longer); the devices that registered anything have no
 * fork_child hook and are closed in the child without a detach. */
static void hostreg_child(void)
{
	pthread_mutex_init(&hostreg_lock, NULL);
	for (unsigned i = 0; i < HMM_MAX_DEVICES; i++)
		devs[i] = NULL;
}

static void atfork_init(void)
{
	pthread_atfork(NULL, NULL, hostreg_child);
}

void hmm__host_region_add(void *addr, size_t len)
{
	struct host_region *r = malloc(sizeof(*r));

	if (!r)
		return; /* copies from it go the ordinary way */
	pthread_once(&atfork_once, atfork_init);
	pthread_mutex_lock(&hostreg_lock);
	*r = (struct host_region){ addr, len, regions };
	regions = r;
	for (unsigned i = 0; i < HMM_MAX_DEVICES; i++)
		if (devs[i])
			devs[i]->ops->host_register(devs[i], addr, len);
	pthread_mutex_unlock(&hostreg_lock);
}

void hmm__host_region_remove(void *addr, size_t len)
{
	struct host_region **pp, *r = NULL;

	pthread_mutex_lock(&hostreg_lock);
	for (pp = &regions; *pp; pp = &(*pp)->next)
		if ((*pp)->addr == addr && (*pp)->len == len) {
			r = *pp;
			*pp = r->next;
			break;
		}
	for (unsigned i = 0; r && i < HMM_MAX_DEVICES; i++)
		if (devs[i] && devs[i]->ops->host_unregister)
			devs[i]->ops->host_unregister(devs[i], addr, len);
	pthread_mutex_unlock(&hostreg_lock);
	free(r);
}

void hmm__host_regions_attach(hmm_device_t *dev)
{
	if (!dev->ops->host_register || dev->id >= HMM_MAX_DEVICES)
		return;
	pthread_once(&atfork_once, atfork_init);
	pthread_mutex_lock(&hostreg_lock);
	devs[dev->id] = dev;
	for (struct host_region *r = regions; r; r = r->next)
		dev->ops->host_register(dev, r->addr, r->len);
	pthread_mutex_unlock(&hostreg_lock);
}

void hmm__host_regions_detach(hmm_device_t *dev)
{
	if (!dev->ops->host_register || dev->id >= HMM_MAX_DEVICES)
		return;
	pthread_mutex_lock(&hostreg_lock);
	if (devs[dev->id] == dev) {
		devs[dev->id] = NULL;
		for (struct host_region *r = regions;
		     r && dev->ops->host_unregister; r = r->next)
			dev->ops->host_unregister(dev, r->addr, r->len);
	}
	pthread_mutex_unlock(&hostreg_lock);
}
