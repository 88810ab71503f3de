/*
 * fastpath.c - reads and in-place overwrites served without Python.
 *
 * The filesystem (Python) owns all metadata.  It publishes an inode once the
 * core holds the inode's complete pfn map, and keeps the published size
 * current; from then on a C thread can answer a read, or an overwrite of
 * pages that are mapped and inside the size, straight from the pmem mapping.
 * Everything else - allocation, size changes, holes written - returns
 * -EAGAIN and takes the slow path, with nothing done.
 *
 * Safety against truncate / punch is the DMA rule: the pages are pinned,
 * owner-checked, under inode->lock (read), before the copy, and unpinned
 * after it; a layout break blocks the range first (new pins fail with
 * -EAGAIN here) and then waits for the pins to drop, so a page is never
 * freed - or its tail zeroed by a shrinking truncate, whose block starts at
 * the page holding the new EOF - while a copy is in it.
 *
 * Timestamps are not written here.  A fast write stores its time in
 * inode->wtime, a read that is due an atime update (Python computed when:
 * inode->atime_next, relatime rules) stores inode->rtime, and the inode is
 * queued once on core->fast.dirty.  Python drains the queue before it
 * answers any request and before every commit, so getattr, fsync and the
 * journal always see the times of every write that completed.
 *
 * Attributes: the filesystem also publishes getattr's answer per inode
 * (struct daxfs_attr), so a GETATTR - the kernel asks one for a directory
 * after every create or unlink in it - costs no Python.  The copy is cleared
 * under inode->lock (read) wherever a stamp is stored, and set_attr, under
 * inode->lock (write), refuses while stamps wait: a published copy never
 * misses a write or atime it would have shown.
 *
 * Memory order: stamps are stored before `queued` is tested-and-set, and
 * the drain clears `queued` before taking the stamps; so a stamp stored
 * after the drain took them finds `queued` clear and queues the inode again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <time.h>

#include "core_internal.h"

int fast_init(struct daxfs_core *c)
{
    pthread_mutex_init(&c->fast.lock, NULL);
    c->fast.dirty = NULL;
    c->fast.ndirty = c->fast.cap = 0;
    atomic_store(&c->fast.writable, 0);
    return 0;
}

void fast_destroy(struct daxfs_core *c)
{
    free(c->fast.dirty);
    c->fast.dirty = NULL;
    pthread_mutex_destroy(&c->fast.lock);
}

static int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void fallback(struct daxfs_core *c)
{
    atomic_fetch_add_explicit(&c->fast.fallbacks, 1, memory_order_relaxed);
}

/* After a stamp was stored: make sure Python will see the inode. */
static void queue_dirty(struct daxfs_core *c, struct dx_inode *in)
{
    struct dx_fast *f = &c->fast;

    if (atomic_exchange(&in->queued, 1))
        return;
    pthread_mutex_lock(&f->lock);
    if (f->ndirty == f->cap) {
        uint64_t cap = f->cap ? f->cap * 2 : 64;
        uint64_t *d = realloc(f->dirty, cap * sizeof(*d));

        if (!d) {
            /* The stamp stays on the inode; the next one queues it. */
            atomic_store(&in->queued, 0);
            pthread_mutex_unlock(&f->lock);
            return;
        }
        f->dirty = d;
        f->cap = cap;
    }
    f->dirty[f->ndirty++] = in->ino;
    atomic_store(&f->pending, f->ndirty);
    pthread_mutex_unlock(&f->lock);
}

/* ---- publishing (Python) ---- */

int daxfs_fast_publish(daxfs_core *c, uint64_t ino, uint64_t size,
                       int64_t atime_next)
{
    struct dx_inode *in;
    bool wr;

    if (ino == 0)
        return -EINVAL;
    in = pm_get(c, ino, true, &wr);
    if (!in) {
        pm_put(c);
        return -ENOMEM;
    }
    atomic_store(&in->size, size);
    atomic_store(&in->atime_next, atime_next);
    atomic_store(&in->published, 1);
    pm_put(c);
    return 0;
}

typedef void (*inode_fn)(struct dx_inode *in, uint64_t arg);

static int with_inode(struct daxfs_core *c, uint64_t ino, inode_fn fn,
                      uint64_t arg)
{
    struct dx_inode *in;
    bool wr;

    in = pm_get(c, ino, false, &wr);
    if (in)
        fn(in, arg);
    pm_put(c);
    return in ? 0 : -ENOENT;
}

static void set_size(struct dx_inode *in, uint64_t size)
{
    atomic_store(&in->size, size);
}

static void set_atime_next(struct dx_inode *in, uint64_t t)
{
    atomic_store(&in->atime_next, (int64_t)t);
}

static void unpublish(struct dx_inode *in, uint64_t unused)
{
    (void)unused;
    atomic_store(&in->published, 0);
}

static void set_nocaps(struct dx_inode *in, uint64_t on)
{
    atomic_store(&in->nocaps, on != 0);
}

int daxfs_fast_set_nocaps(daxfs_core *c, uint64_t ino, int on)
{
    return with_inode(c, ino, set_nocaps, (uint64_t)(on != 0));
}

/* 1 if ino is published (and, if want_nocaps, vouched capability-free). */
static int published_with(struct daxfs_core *c, uint64_t ino, bool want_nocaps)
{
    struct dx_inode *in;
    int r = 0;
    bool wr;

    in = pm_get(c, ino, false, &wr);
    if (in)
        r = atomic_load(&in->published) && (!want_nocaps || atomic_load(&in->nocaps));
    pm_put(c);
    return r;
}

int daxfs_fast_nocaps(daxfs_core *c, uint64_t ino)
{
    return published_with(c, ino, true);
}

int daxfs_fast_set_size(daxfs_core *c, uint64_t ino, uint64_t size)
{
    return with_inode(c, ino, set_size, size);
}

int daxfs_fast_set_atime_next(daxfs_core *c, uint64_t ino, int64_t atime_next)
{
    return with_inode(c, ino, set_atime_next, (uint64_t)atime_next);
}

int daxfs_fast_unpublish(daxfs_core *c, uint64_t ino)
{
    return with_inode(c, ino, unpublish, 0);
}

int daxfs_fast_published(daxfs_core *c, uint64_t ino)
{
    return published_with(c, ino, false);
}

void daxfs_fast_set_writable(daxfs_core *c, int on)
{
    atomic_store(&c->fast.writable, on != 0);
}

uint64_t daxfs_fast_pending(daxfs_core *c)
{
    return atomic_load_explicit(&c->fast.pending, memory_order_acquire);
}

int64_t daxfs_fast_drain(daxfs_core *c, struct daxfs_fast_stamp *out,
                         uint64_t max)
{
    struct dx_fast *f = &c->fast;
    uint64_t take, n = 0;
    uint64_t *inos;

    if (max == 0)
        return 0;
    pthread_mutex_lock(&f->lock);
    take = f->ndirty < max ? f->ndirty : max;
    /* From the end: order does not matter, and nothing moves. */
    f->ndirty -= take;
    inos = f->dirty + f->ndirty;
    /* Copy out before unlocking: a push may realloc the array. */
    for (uint64_t i = 0; i < take; i++)
        out[i].ino = inos[i];
    atomic_store(&f->pending, f->ndirty);
    pthread_mutex_unlock(&f->lock);

    for (uint64_t i = 0; i < take; i++) {
        uint64_t ino = out[i].ino;
        struct dx_inode *in;
        bool wr;

        in = pm_get(c, ino, false, &wr);
        if (in) {
            int64_t w, r;

            atomic_store(&in->queued, 0);
            w = atomic_exchange(&in->wtime, 0);
            r = atomic_exchange(&in->rtime, 0);
            if (w || r)
                out[n++] = (struct daxfs_fast_stamp){ ino, w, r };
        }
        pm_put(c);
    }
    return (int64_t)n;
}

/* ---- attributes ---- */

int daxfs_fast_set_attr(daxfs_core *c, const struct daxfs_attr *a)
{
    struct dx_inode *in;
    int r = 0;
    bool wr;

    if (a->ino == 0)
        return -EINVAL;
    in = pm_get(c, a->ino, true, &wr);
    if (!in) {
        pm_put(c);
        return -ENOMEM;
    }
    pthread_rwlock_wrlock(&in->lock);
    if (atomic_load(&in->wtime) || atomic_load(&in->rtime)) {
        atomic_store(&in->attr_valid, 0);
        r = -EAGAIN;
    } else {
        in->attr = *a;
        atomic_store(&in->attr_valid, 1);
    }
    pthread_rwlock_unlock(&in->lock);
    pm_put(c);
    return r;
}

static void clear_attr(struct dx_inode *in, uint64_t unused)
{
    (void)unused;
    atomic_store(&in->attr_valid, 0);
}

int daxfs_fast_clear_attr(daxfs_core *c, uint64_t ino)
{
    /* No lock: a single store, and whoever reads the copy tests the flag
     * under the lock after this store is visible. */
    return with_inode(c, ino, clear_attr, 0);
}

int daxfs_fast_getattr(daxfs_core *c, uint64_t ino, struct daxfs_attr *out)
{
    struct dx_inode *in;
    int r = -EAGAIN;
    bool wr;

    in = pm_get(c, ino, false, &wr);
    if (in) {
        pthread_rwlock_rdlock(&in->lock);
        if (atomic_load(&in->attr_valid)) {
            *out = in->attr;
            r = 0;
        }
        pthread_rwlock_unlock(&in->lock);
    }
    pm_put(c);
    if (r == 0)
        atomic_fetch_add_explicit(&c->fast.getattrs, 1, memory_order_relaxed);
    return r;
}

/* ---- the data path (C threads) ---- */

/* inode->lock held (read).  Unpin what a failed attempt pinned. */
static void unpin_runs_locked(struct daxfs_core *c, struct dx_inode *in,
                              const struct daxfs_run *runs, uint64_t nruns,
                              uint64_t index, uint64_t count)
{
    int64_t zeros = 0;

    for (uint64_t i = 0; i < nruns; i++) {
        int64_t z = pt_unpin(c, runs[i].pfn, runs[i].count);

        if (z < 0)
            DX_BUG("fast path: unpin of its own pins failed");
        zeros += z;
    }
    if (zeros && in->waiters)
        waiters_check_locked(c, in, index, count);
}

/*
 * inode->lock held (read).  Pin the mapped pages of file pages
 * [first, last] into runs, describe [off, off+len) as segs (holes as
 * DAXFS_FAST_ZEROS if segs is given, else a hole fails).  All or nothing.
 */
static int64_t pin_range(struct daxfs_core *c, struct dx_inode *in,
                         uint64_t off, uint64_t len, struct daxfs_run *runs,
                         uint64_t *nruns, struct daxfs_fast_seg *segs,
                         uint64_t *nsegs)
{
    uint64_t first = off >> PAGE_SHIFT, last = (off + len - 1) >> PAGE_SHIFT;
    uint64_t pos = first, j = pm_ext_find(in, first), ns = 0, nr = 0;
    uint64_t end = off + len;

    while (pos <= last) {
        const struct daxfs_extent *e = j < in->next ? &in->ext[j] : NULL;
        bool mapped = e && e->index <= pos;
        uint64_t t, pfn = 0, bs, be;

        if (mapped) {
            uint64_t rolled = 0;

            t = e->index + e->count;
            if (t > last + 1)
                t = last + 1;
            pfn = e->pfn + (pos - e->index);
            if (nr == DAXFS_FAST_MAX_SEGS ||
                pt_pin_locked(c, pfn, t - pos, PIN_OWNER, in->ino, pos,
                              &rolled) < 0) {
                unpin_runs_locked(c, in, runs, nr, first, last - first + 1);
                if (rolled && in->waiters)
                    waiters_check_locked(c, in, first, last - first + 1);
                return -EAGAIN;
            }
            runs[nr++] = (struct daxfs_run){ pfn, t - pos };
            j++;
        } else {
            if (!segs) {
                unpin_runs_locked(c, in, runs, nr, first, last - first + 1);
                return -EAGAIN;
            }
            t = e && e->index <= last ? e->index : last + 1;
        }
        if (segs) {
            if (ns == DAXFS_FAST_MAX_SEGS) {
                unpin_runs_locked(c, in, runs, nr, first, last - first + 1);
                return -EAGAIN;
            }
            bs = pos << PAGE_SHIFT;
            if (bs < off)
                bs = off;
            be = t << PAGE_SHIFT;
            if (be > end)
                be = end;
            segs[ns++] = (struct daxfs_fast_seg){
                mapped ? (pfn << PAGE_SHIFT) + (bs - (pos << PAGE_SHIFT))
                       : (uint64_t)DAXFS_FAST_ZEROS,
                be - bs };
        }
        pos = t;
    }
    *nruns = nr;
    if (nsegs)
        *nsegs = ns;
    return 0;
}

int64_t daxfs_fast_read_begin(daxfs_core *c, uint64_t ino, uint64_t off,
                              uint64_t len, struct daxfs_fast_read *rd)
{
    struct dx_inode *in;
    int64_t r = -EAGAIN;
    uint64_t size;
    bool wr;

    rd->nsegs = rd->nruns = 0;
    if (ino == 0 || len > (1ULL << 40) || off > (1ULL << 60)) {
        fallback(c);
        return -EAGAIN;
    }
    in = pm_get(c, ino, false, &wr);
    if (!in)
        goto out_put;
    pthread_rwlock_rdlock(&in->lock);
    if (!atomic_load(&in->published))
        goto out_unlock;
    size = atomic_load(&in->size);
    if (off >= size || len == 0) {
        r = 0;
        goto out_unlock;
    }
    if (len > size - off)
        len = size - off;
    if (pm_blocked_locked(in, off >> PAGE_SHIFT,
                          ((off + len - 1) >> PAGE_SHIFT) - (off >> PAGE_SHIFT) + 1))
        goto out_unlock;
    if (pin_range(c, in, off, len, rd->runs, &rd->nruns, rd->segs, &rd->nsegs) < 0)
        goto out_unlock;
    r = (int64_t)len;
    {
        int64_t t = now_ns();

        if (t >= atomic_load(&in->atime_next)) {
            atomic_store(&in->rtime, t);
            atomic_store(&in->attr_valid, 0);
            queue_dirty(c, in);
        }
    }
out_unlock:
    pthread_rwlock_unlock(&in->lock);
out_put:
    pm_put(c);
    if (r < 0) {
        fallback(c);
    } else {
        atomic_fetch_add_explicit(&c->fast.reads, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&c->fast.read_bytes, (uint64_t)r,
                                  memory_order_relaxed);
    }
    return r;
}

void daxfs_fast_read_end(daxfs_core *c, struct daxfs_fast_read *rd)
{
    for (uint64_t i = 0; i < rd->nruns; i++)
        if (daxfs_unpin_pfn(c, rd->runs[i].pfn, rd->runs[i].count) < 0)
            DX_BUG("fast read: unpin of its own pins failed");
    rd->nruns = rd->nsegs = 0;
}

int64_t daxfs_fast_write(daxfs_core *c, uint64_t ino, uint64_t off,
                         const void *src, uint64_t len)
{
    struct daxfs_run runs[DAXFS_FAST_MAX_SEGS];
    uint64_t nruns = 0, pos = 0;
    struct dx_inode *in;
    int64_t r = -EAGAIN;
    bool wr;

    if (!atomic_load_explicit(&c->fast.writable, memory_order_relaxed) ||
        ino == 0 || len == 0 || len > (1ULL << 40) || off > (1ULL << 60) ||
        !c->base) {
        fallback(c);
        return -EAGAIN;
    }
    in = pm_get(c, ino, false, &wr);
    if (!in)
        goto out_put;
    pthread_rwlock_rdlock(&in->lock);
    if (atomic_load(&in->published) && off + len <= atomic_load(&in->size) &&
        !pm_blocked_locked(in, off >> PAGE_SHIFT,
                           ((off + len - 1) >> PAGE_SHIFT) - (off >> PAGE_SHIFT) + 1))
        r = pin_range(c, in, off, len, runs, &nruns, NULL, NULL);
    pthread_rwlock_unlock(&in->lock);
out_put:
    pm_put(c);
    if (r < 0) {
        fallback(c);
        return r;
    }

    /* The copy, with no lock held: the pins keep the pages ours. */
    for (uint64_t i = 0; i < nruns; i++) {
        uint64_t dev = runs[i].pfn << PAGE_SHIFT, n = runs[i].count << PAGE_SHIFT;

        if (i == 0) {
            dev += off & ((1u << PAGE_SHIFT) - 1);
            n -= off & ((1u << PAGE_SHIFT) - 1);
        }
        if (n > len - pos)
            n = len - pos;
        memcpy(c->base + dev, (const char *)src + pos, n);
        pos += n;
    }

    /* Stamp after the data landed: whoever drains the stamp and then
     * flushes the file's pages flushes this write too. */
    in = pm_get(c, ino, false, &wr);
    if (in) {
        pthread_rwlock_rdlock(&in->lock);  /* orders us with set_attr */
        atomic_store(&in->wtime, now_ns());
        atomic_store(&in->attr_valid, 0);
        /* mtime moved past atime: relatime wants the next read's atime. */
        atomic_store(&in->atime_next, 0);
        queue_dirty(c, in);
        pthread_rwlock_unlock(&in->lock);
    }
    pm_put(c);
    for (uint64_t i = 0; i < nruns; i++)
        if (daxfs_unpin_pfn(c, runs[i].pfn, runs[i].count) < 0)
            DX_BUG("fast write: unpin of its own pins failed");
    atomic_fetch_add_explicit(&c->fast.writes, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&c->fast.write_bytes, len, memory_order_relaxed);
    return (int64_t)len;
}
