/*
 * waiters.c - "tell me when this file range has no pins": one eventfd per
 * waiter, written exactly once, by whichever thread observes the range idle.
 *
 * A waiter sits on its inode's list (inode->lock).  Whoever drops a pin count
 * to 0 rechecks the waiters whose range holds that page:
 *   - unpins through the map (daxfs_unpin_file) hold the inode lock and call
 *     waiters_check_locked() directly;
 *   - unpins by pfn (DMA completions, daxfs_unpin_pfn) hold no lock; they
 *     read the page owner and go through waiters_check(), but only if
 *     core->nwaiters != 0, so the common case costs one load.
 *
 * No lost wake-up (Dekker): registration does   nwaiters++ ; fence ; scan
 * and a pfn unpinner does                        pins-- ; fence ; load nwaiters
 * With both fences seq_cst, either the scan sees the dropped pin (and fires
 * at once) or the unpinner sees nwaiters != 0 and rechecks; the recheck
 * takes the inode lock, which the registration holds while it links the
 * waiter, so it sees the waiter.  Two unpinners dropping the last two pins
 * of a range concurrently: each decrements, fences, then scans the range;
 * at least one of them sees both counts at 0.
 *
 * "Exactly when": the fire happens in the thread that drops the last pin,
 * before its unpin call returns, and never while a page of the range is
 * seen pinned.  If new pins may enter the range while waiting (it is not
 * blocked), the scan is not a snapshot and fires on the first idle moment
 * it observes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core_internal.h"

static inline uint64_t sat_end(uint64_t first, uint64_t count)
{
    return count > UINT64_MAX - first ? UINT64_MAX : first + count;
}

static void fire(struct daxfs_core *c, struct daxfs_waiter *w)
{
    int expected = 0;
    uint64_t one = 1;

    if (!atomic_compare_exchange_strong(&w->fired, &expected, 1))
        return;
    /* The counter cannot overflow (written once), so only EINTR can
     * interrupt this write. */
    while (write(w->efd, &one, sizeof(one)) < 0 && errno == EINTR)
        ;
    atomic_fetch_add_explicit(&c->waiters_fired, 1, memory_order_relaxed);
}

/* Rescan w's range; start at the hint, where the last busy page was. */
static void recheck(struct daxfs_core *c, struct dx_inode *in,
                    struct daxfs_waiter *w)
{
    uint64_t end = sat_end(w->index, w->count);
    uint64_t h = atomic_load_explicit(&w->hint, memory_order_relaxed);
    int64_t r;

    if (h < w->index || h >= end)
        h = w->index;
    r = pm_first_busy_locked(c, in, h, end - h);
    if (r < 0 && h > w->index)
        r = pm_first_busy_locked(c, in, w->index, h - w->index);
    if (r < 0)
        fire(c, w);
    else
        atomic_store_explicit(&w->hint, (uint64_t)r, memory_order_relaxed);
}

/* inode->lock held (read or write). */
void waiters_check_locked(struct daxfs_core *c, struct dx_inode *in,
                          uint64_t index, uint64_t count)
{
    uint64_t hi = sat_end(index, count);

    for (struct daxfs_waiter *w = in->waiters; w; w = w->next) {
        if (atomic_load_explicit(&w->fired, memory_order_relaxed))
            continue;
        if (w->index >= hi || index >= sat_end(w->index, w->count))
            continue;
        recheck(c, in, w);
    }
}

void waiters_check(struct daxfs_core *c, uint64_t ino, uint64_t index,
                   uint64_t count)
{
    struct dx_inode *in;
    bool wr;

    in = pm_get(c, ino, false, &wr);
    if (in) {
        pthread_rwlock_rdlock(&in->lock);
        if (in->waiters)
            waiters_check_locked(c, in, index, count);
        pthread_rwlock_unlock(&in->lock);
    }
    pm_put(c);
}

/* inodes_lock held for writing (the inode is being dropped): its range is
 * no longer mapped, so nothing in it is pinned. */
void waiters_detach_all(struct daxfs_core *c, struct dx_inode *in)
{
    while (in->waiters) {
        struct daxfs_waiter *w = in->waiters;

        in->waiters = w->next;
        w->next = NULL;
        fire(c, w);
    }
}

int daxfs_waiter_new(daxfs_core *c, uint64_t ino, uint64_t index,
                     uint64_t count, daxfs_waiter **out)
{
    struct daxfs_waiter *w;
    struct dx_inode *in;
    bool wr;

    *out = NULL;
    if (ino == 0)
        return -EINVAL;
    w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->efd < 0) {
        int e = errno;

        free(w);
        return -e;
    }
    w->ino = ino;
    w->index = index;
    w->count = count;
    atomic_init(&w->fired, 0);
    atomic_init(&w->hint, index);

    in = pm_get(c, ino, true, &wr);
    if (!in) {
        pm_put(c);
        close(w->efd);
        free(w);
        return -ENOMEM;
    }
    pthread_rwlock_wrlock(&in->lock);
    w->next = in->waiters;
    in->waiters = w;
    atomic_fetch_add_explicit(&c->nwaiters, 1, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);     /* see the top comment */
    recheck(c, in, w);
    pthread_rwlock_unlock(&in->lock);
    pm_put(c);
    *out = w;
    return 0;
}

int daxfs_waiter_fd(daxfs_waiter *w)
{
    return w->efd;
}

int daxfs_waiter_fired(daxfs_waiter *w)
{
    return atomic_load(&w->fired);
}

void daxfs_waiter_free(daxfs_core *c, daxfs_waiter *w)
{
    struct dx_inode *in;
    bool wr;

    if (!w)
        return;
    /* The waiter may have been detached by drop_inode, and a new inode
     * with the same number created since: only unlink if it is there. */
    in = pm_get(c, w->ino, false, &wr);
    if (in) {
        pthread_rwlock_wrlock(&in->lock);
        for (struct daxfs_waiter **pp = &in->waiters; *pp; pp = &(*pp)->next) {
            if (*pp == w) {
                *pp = w->next;
                break;
            }
        }
        pthread_rwlock_unlock(&in->lock);
    }
    pm_put(c);
    atomic_fetch_sub_explicit(&c->nwaiters, 1, memory_order_relaxed);
    close(w->efd);
    free(w);
}
