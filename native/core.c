/*
 * core.c - creation, teardown and statistics of a daxfs core.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "core_internal.h"

uint32_t daxfs_core_version(void)
{
    return DAXFS_CORE_VERSION;
}

int daxfs_core_new(uintptr_t base, uint64_t npages, uint32_t dma_threads,
                   daxfs_core **out)
{
    struct daxfs_core *c;
    int r;

    *out = NULL;
    /* pfns and counts are added to 64-bit values everywhere: keep the
     * device well below any overflow (2^52 pages = 16 EiB). */
    if (npages == 0 || npages > (1ull << 52) || dma_threads > 1024)
        return -EINVAL;
    c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->base = (char *)base;
    c->npages = npages;
    c->dma.efd = -1;
    if ((r = pt_init(c)) < 0 || (r = pm_init(c)) < 0 ||
        (r = fast_init(c)) < 0 || (r = dma_init(c, dma_threads)) < 0) {
        daxfs_core_free(c);
        return r;
    }
    *out = c;
    return 0;
}

void daxfs_core_free(daxfs_core *c)
{
    if (!c)
        return;
    dma_destroy(c);     /* joins the workers: nothing runs after this */
    fast_destroy(c);
    pm_destroy(c);
    pt_destroy(c);
    free(c);
}

void daxfs_core_stats(daxfs_core *c, struct daxfs_stats *s)
{
    struct dx_dma *d = &c->dma;

    memset(s, 0, sizeof(*s));
    s->npages = c->npages;
    s->pinned_pages = atomic_load(&c->pinned_pages);
    s->pins_held = atomic_load(&c->pins_held);
    s->pins_taken = atomic_load(&c->pins_taken);
    s->pins_released = atomic_load(&c->pins_released);
    s->late_unpins = atomic_load(&c->late_unpins);
    pthread_mutex_lock(&c->coll_lock);
    s->collisions = c->coll_seq;
    pthread_mutex_unlock(&c->coll_lock);
    pthread_rwlock_rdlock(&c->inodes_lock);
    s->inodes = c->ninodes;
    pthread_rwlock_unlock(&c->inodes_lock);
    s->waiters = atomic_load(&c->nwaiters);
    s->waiters_fired = atomic_load(&c->waiters_fired);
    s->blocks = atomic_load(&c->nblocks);
    s->dma_threads = d->nthreads;
    s->dma_submitted = atomic_load(&d->submitted);
    s->dma_completed = atomic_load(&d->completed);
    s->dma_cancelled = atomic_load(&d->cancelled);
    s->dma_failed = atomic_load(&d->failed);
    s->dma_bytes = atomic_load(&d->bytes);
    s->dma_queued = atomic_load(&d->queued);
    s->dma_running = atomic_load(&d->nrunning);
    s->dma_pinned_pages = atomic_load(&d->pinned_pages);
    s->dma_global_delay_ns = atomic_load(&d->delay_ns);
    s->fast_reads = atomic_load(&c->fast.reads);
    s->fast_writes = atomic_load(&c->fast.writes);
    s->fast_read_bytes = atomic_load(&c->fast.read_bytes);
    s->fast_write_bytes = atomic_load(&c->fast.write_bytes);
    s->fast_fallbacks = atomic_load(&c->fast.fallbacks);
    s->fast_pending = atomic_load(&c->fast.pending);
    s->fast_getattrs = atomic_load(&c->fast.getattrs);
}
