/*
 * page_table.c - "struct page" for every pmem page, and the collision ring.
 *
 * The table is one anonymous MAP_NORESERVE mapping of 16-byte entries; an
 * all-zero entry is a free, unpinned page, so a 64M-page device costs no
 * RSS until pages are touched.
 *
 * Invariants:
 *   - a page's pin count only changes through CAS loops here; it never goes
 *     below 0 nor above DAXFS_MAX_PINS;
 *   - owner changes (set/clear) and "check owner, then pin" happen under the
 *     page's stripe lock, so a pin can never be taken on a page whose owner
 *     changes underneath the check;
 *   - unpinning takes no lock (a DMA completion must never wait for an
 *     allocator); so clear_owner decides "pinned or not" with a CAS on the
 *     pin word, which is the single point where a free and the last unpin
 *     are ordered;
 *   - DAXFS_PG_ORPHAN is set only on a pinned page and cleared by the unpin
 *     that drops its count to 0.
 *
 * Waking waiters after pins drop: see the Dekker note in waiters.c.  The
 * functions here never notify waiters themselves except the public
 * daxfs_*_pfn entry points and pt_notify_unpinned().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "core_internal.h"

#define ORPHAN_BIT ((uint32_t)DAXFS_PG_ORPHAN << PIN_FLAGS_SHIFT)

static inline pthread_mutex_t *stripe_lock(struct daxfs_core *c, uint64_t pfn)
{
    return &c->pt_locks[(pfn >> PT_STRIPE_SHIFT) % PT_NLOCKS];
}

/* End (exclusive) of the stripe run holding pfn, clipped to end. */
static inline uint64_t stripe_end(uint64_t pfn, uint64_t end)
{
    uint64_t e = ((pfn >> PT_STRIPE_SHIFT) + 1) << PT_STRIPE_SHIFT;
    return e < end ? e : end;
}

int pt_init(struct daxfs_core *c)
{
    size_t len = (size_t)c->npages * sizeof(struct dx_page);

    len = (len + 4095) & ~(size_t)4095;
    if (len == 0)
        len = 4096;
    c->pages = mmap(NULL, len, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (c->pages == MAP_FAILED) {
        c->pages = NULL;
        return -errno;
    }
    c->pages_len = len;
    for (int i = 0; i < PT_NLOCKS; i++)
        pthread_mutex_init(&c->pt_locks[i], NULL);
    pthread_mutex_init(&c->coll_lock, NULL);
    return 0;
}

void pt_destroy(struct daxfs_core *c)
{
    if (!c->pages)
        return;
    munmap(c->pages, c->pages_len);
    c->pages = NULL;
    for (int i = 0; i < PT_NLOCKS; i++)
        pthread_mutex_destroy(&c->pt_locks[i]);
    pthread_mutex_destroy(&c->coll_lock);
}

/* ---- single-page primitives ---- */

/* Returns 1 if the count went 0 -> 1, 0 if it was already pinned, or
 * -EFAULT (PIN_REF and not pinned) / -EOVERFLOW. */
static inline int pin_one(struct dx_page *p, enum pin_check how)
{
    uint32_t old = atomic_load_explicit(&p->pins, memory_order_relaxed);

    do {
        uint32_t cnt = old & PIN_COUNT_MASK;

        if (how == PIN_REF && cnt == 0)
            return -EFAULT;
        if (cnt == PIN_COUNT_MASK)
            return -EOVERFLOW;
    } while (!atomic_compare_exchange_weak_explicit(
        &p->pins, &old, old + 1, memory_order_seq_cst, memory_order_relaxed));
    return (old & PIN_COUNT_MASK) == 0;
}

/* Returns 1 if the count went 1 -> 0, 0 if still pinned, -ERANGE if it
 * was not pinned. */
static inline int unpin_one(struct daxfs_core *c, struct dx_page *p)
{
    uint32_t old = atomic_load_explicit(&p->pins, memory_order_relaxed);
    uint32_t cnt, new;

    do {
        cnt = old & PIN_COUNT_MASK;
        if (cnt == 0)
            return -ERANGE;
        new = old - 1;
        if (cnt == 1)
            new &= ~ORPHAN_BIT;
    } while (!atomic_compare_exchange_weak_explicit(
        &p->pins, &old, new, memory_order_seq_cst, memory_order_relaxed));
    if (cnt == 1 && (old & ORPHAN_BIT))
        atomic_fetch_add_explicit(&c->late_unpins, 1, memory_order_relaxed);
    return cnt == 1;
}

/* Drop one pin on [pfn, pfn+n), all known to be pinned by the caller. */
static uint64_t unpin_raw(struct daxfs_core *c, uint64_t pfn, uint64_t n)
{
    uint64_t zeros = 0;

    for (uint64_t q = pfn; q < pfn + n; q++) {
        int r = unpin_one(c, &c->pages[q]);

        if (r < 0)
            DX_BUG("unpin of pfn %llu we pinned ourselves failed",
                   (unsigned long long)q);
        zeros += (uint64_t)r;
    }
    return zeros;
}

static void stats_pinned(struct daxfs_core *c, int64_t pins, int64_t pages)
{
    /* Two's complement wrap makes "add a negative" work on u64 counters. */
    atomic_fetch_add_explicit(&c->pins_held, (uint64_t)pins,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&c->pinned_pages, (uint64_t)pages,
                              memory_order_relaxed);
}

/* ---- range operations ---- */

/*
 * Pin [pfn, pfn+count), all or nothing.  PIN_OWNER: page q must be owned by
 * (ino, index + (q - pfn)); PIN_REF: page must already be pinned; PIN_ANY:
 * no check (rollback of an unpin).  Returns count or -errno.
 *
 * On failure the pins taken so far are dropped again; if that dropped a
 * count to 0 the caller must notify waiters (the caller knows whether it
 * holds an inode lock): *rolled_back is set to the number of pages that
 * were pinned and released again (starting at pfn).
 */
static int64_t pt_pin_nonotify(struct daxfs_core *c, uint64_t pfn,
                               uint64_t count, enum pin_check how,
                               uint64_t ino, uint64_t index,
                               uint64_t *rolled_back)
{
    uint64_t end = pfn + count, p = pfn, q = pfn, newly = 0;
    int64_t err = 0;

    *rolled_back = 0;
    if (!range_ok(pfn, count, c->npages))
        return -EINVAL;
    while (p < end && !err) {
        uint64_t e = stripe_end(p, end);
        pthread_mutex_t *l = stripe_lock(c, p);

        pthread_mutex_lock(l);
        if (how == PIN_OWNER) {
            for (q = p; q < e; q++) {
                struct dx_page *pg = &c->pages[q];

                if (atomic_load_explicit(&pg->ino, memory_order_relaxed) != ino ||
                    atomic_load_explicit(&pg->index, memory_order_relaxed) !=
                        (uint32_t)(index + (q - pfn))) {
                    err = -ESTALE;
                    break;
                }
            }
            q = p;  /* nothing of this stripe pinned yet */
        }
        if (!err) {
            for (q = p; q < e; q++) {
                int r = pin_one(&c->pages[q], how);

                if (r < 0) {
                    err = r;
                    break;
                }
                newly += (uint64_t)r;
            }
        }
        pthread_mutex_unlock(l);
        p = e;
    }
    if (err) {
        /* [pfn, q) is pinned by us. */
        uint64_t zeros = unpin_raw(c, pfn, q - pfn);

        stats_pinned(c, 0, (int64_t)newly - (int64_t)zeros);
        *rolled_back = q - pfn;
        return err;
    }
    stats_pinned(c, (int64_t)count, (int64_t)newly);
    atomic_fetch_add_explicit(&c->pins_taken, count, memory_order_relaxed);
    return (int64_t)count;
}

int64_t pt_pin(struct daxfs_core *c, uint64_t pfn, uint64_t count,
               enum pin_check how, uint64_t ino, uint64_t index)
{
    uint64_t rolled;
    int64_t r = pt_pin_nonotify(c, pfn, count, how, ino, index, &rolled);

    if (r < 0 && rolled)
        pt_notify_unpinned(c, pfn, rolled);
    return r;
}

/* Pin with the caller holding an inode lock: no notification here. */
int64_t pt_pin_locked(struct daxfs_core *c, uint64_t pfn, uint64_t count,
                      enum pin_check how, uint64_t ino, uint64_t index,
                      uint64_t *rolled_back)
{
    return pt_pin_nonotify(c, pfn, count, how, ino, index, rolled_back);
}

/*
 * Drop one pin on each page of [pfn, pfn+count), all or nothing.  Returns
 * the number of pages whose count dropped to 0 (the caller must notify
 * waiters if > 0), or -ERANGE (a page was not pinned; nothing changed).
 * Takes no lock.
 */
int64_t pt_unpin(struct daxfs_core *c, uint64_t pfn, uint64_t count)
{
    uint64_t zeros = 0, q;

    if (!range_ok(pfn, count, c->npages))
        return -EINVAL;
    for (q = pfn; q < pfn + count; q++) {
        int r = unpin_one(c, &c->pages[q]);

        if (r < 0)
            break;
        zeros += (uint64_t)r;
    }
    if (q < pfn + count) {
        /* Caller bug (unbalanced unpin): restore what we dropped. */
        uint64_t newly = 0;

        for (uint64_t u = pfn; u < q; u++) {
            int r = pin_one(&c->pages[u], PIN_ANY);

            if (r < 0)
                DX_BUG("re-pin of pfn %llu failed", (unsigned long long)u);
            newly += (uint64_t)r;
        }
        stats_pinned(c, 0, (int64_t)newly - (int64_t)zeros);
        return -ERANGE;
    }
    stats_pinned(c, -(int64_t)count, -(int64_t)zeros);
    atomic_fetch_add_explicit(&c->pins_released, count, memory_order_relaxed);
    return (int64_t)zeros;
}

int64_t pt_first_busy(struct daxfs_core *c, uint64_t pfn, uint64_t count)
{
    for (uint64_t q = pfn; q < pfn + count; q++)
        if (atomic_load_explicit(&c->pages[q].pins, memory_order_relaxed) &
            PIN_COUNT_MASK)
            return (int64_t)q;
    return -1;
}

/*
 * Some pins in [pfn, pfn+count) dropped to 0: recheck the waiters of the
 * owners of the now idle pages.  Caller holds no inode lock.
 */
void pt_notify_unpinned(struct daxfs_core *c, uint64_t pfn, uint64_t count)
{
    uint64_t cur = 0, lo = 0, hi = 0;

    /* Pairs with the fence in daxfs_waiter_new (see waiters.c). */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&c->nwaiters, memory_order_relaxed) == 0)
        return;
    for (uint64_t q = pfn; q < pfn + count; q++) {
        struct dx_page *pg = &c->pages[q];
        uint64_t ino, idx;

        if (atomic_load_explicit(&pg->pins, memory_order_relaxed) &
            PIN_COUNT_MASK)
            continue;
        ino = atomic_load_explicit(&pg->ino, memory_order_relaxed);
        if (ino == 0)
            continue;
        idx = atomic_load_explicit(&pg->index, memory_order_relaxed);
        if (ino == cur && idx + 1 >= lo && idx <= hi) {
            /* contiguous (either direction) with the current run */
            if (idx < lo)
                lo = idx;
            if (idx + 1 > hi)
                hi = idx + 1;
            continue;
        }
        if (cur)
            waiters_check(c, cur, lo, hi - lo);
        cur = ino;
        lo = idx;
        hi = idx + 1;
    }
    if (cur)
        waiters_check(c, cur, lo, hi - lo);
}

/* ---- collisions ---- */

void coll_record(struct daxfs_core *c, uint32_t kind, uint64_t pfn,
                 uint64_t ino, uint64_t index, uint64_t new_ino,
                 uint32_t pins)
{
    struct timespec ts;
    struct daxfs_collision *r;

    clock_gettime(CLOCK_REALTIME, &ts);
    pthread_mutex_lock(&c->coll_lock);
    r = &c->coll_ring[c->coll_seq % COLL_RING];
    r->seq = c->coll_seq++;
    r->pfn = pfn;
    r->ino = ino;
    r->index = index;
    r->new_ino = new_ino;
    r->pins = pins;
    r->kind = kind;
    r->time_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    pthread_mutex_unlock(&c->coll_lock);
}

int64_t daxfs_collisions_since(daxfs_core *c, uint64_t since,
                               struct daxfs_collision *out, uint64_t max,
                               uint64_t *next)
{
    uint64_t n = 0, first;

    pthread_mutex_lock(&c->coll_lock);
    first = c->coll_seq > COLL_RING ? c->coll_seq - COLL_RING : 0;
    if (since < first)
        since = first;
    for (uint64_t s = since; s < c->coll_seq && n < max; s++)
        out[n++] = c->coll_ring[s % COLL_RING];
    *next = since + n;
    if (*next > c->coll_seq)
        *next = c->coll_seq;
    pthread_mutex_unlock(&c->coll_lock);
    return (int64_t)n;
}

/* ---- public page table API ---- */

int64_t daxfs_set_owner(daxfs_core *c, uint64_t pfn, uint64_t count,
                        uint64_t ino, uint64_t index)
{
    int64_t ncoll = 0;

    if (ino == 0 || !range_ok(pfn, count, c->npages))
        return -EINVAL;
    if (!range_ok(index, count, DAXFS_MAX_FILE_PAGES))
        return -EFBIG;
    for (uint64_t p = pfn, end = pfn + count; p < end;) {
        uint64_t e = stripe_end(p, end);
        pthread_mutex_t *l = stripe_lock(c, p);

        pthread_mutex_lock(l);
        for (uint64_t q = p; q < e; q++) {
            struct dx_page *pg = &c->pages[q];
            uint64_t old_ino = atomic_load_explicit(&pg->ino, memory_order_relaxed);
            uint32_t old_idx = atomic_load_explicit(&pg->index, memory_order_relaxed);
            uint32_t new_idx = (uint32_t)(index + (q - pfn));
            uint32_t pins = atomic_load_explicit(&pg->pins, memory_order_seq_cst) &
                            PIN_COUNT_MASK;

            if (pins && (old_ino != ino || old_idx != new_idx)) {
                coll_record(c, DAXFS_COLL_REUSE, q, old_ino, old_idx, ino, pins);
                ncoll++;
            }
            atomic_store_explicit(&pg->index, new_idx, memory_order_relaxed);
            atomic_store_explicit(&pg->ino, ino, memory_order_relaxed);
        }
        pthread_mutex_unlock(l);
        p = e;
    }
    return ncoll;
}

int64_t daxfs_clear_owner(daxfs_core *c, uint64_t pfn, uint64_t count)
{
    int64_t ncoll = 0;

    if (!range_ok(pfn, count, c->npages))
        return -EINVAL;
    for (uint64_t p = pfn, end = pfn + count; p < end;) {
        uint64_t e = stripe_end(p, end);
        pthread_mutex_t *l = stripe_lock(c, p);

        pthread_mutex_lock(l);
        for (uint64_t q = p; q < e; q++) {
            struct dx_page *pg = &c->pages[q];
            uint64_t ino = atomic_load_explicit(&pg->ino, memory_order_relaxed);
            uint32_t old;

            if (ino == 0)
                continue;
            /* The CAS orders this free against a concurrent last unpin:
             * either the unpin comes first (no collision) or it sees the
             * ORPHAN bit we set and clears it. */
            old = atomic_load_explicit(&pg->pins, memory_order_relaxed);
            while ((old & PIN_COUNT_MASK) &&
                   !atomic_compare_exchange_weak_explicit(
                       &pg->pins, &old, old | ORPHAN_BIT,
                       memory_order_seq_cst, memory_order_relaxed))
                ;
            if (old & PIN_COUNT_MASK) {
                coll_record(c, DAXFS_COLL_FREE, q, ino,
                            atomic_load_explicit(&pg->index, memory_order_relaxed),
                            0, old & PIN_COUNT_MASK);
                ncoll++;
            }
            atomic_store_explicit(&pg->ino, 0, memory_order_relaxed);
            atomic_store_explicit(&pg->index, 0, memory_order_relaxed);
        }
        pthread_mutex_unlock(l);
        p = e;
    }
    return ncoll;
}

int64_t daxfs_unpin_pfn(daxfs_core *c, uint64_t pfn, uint64_t count)
{
    int64_t zeros = pt_unpin(c, pfn, count);

    if (zeros < 0)
        return zeros;
    if (zeros > 0)
        pt_notify_unpinned(c, pfn, count);
    return (int64_t)count;
}

int64_t daxfs_first_busy_pfn(daxfs_core *c, uint64_t pfn, uint64_t count)
{
    if (!range_ok(pfn, count, c->npages))
        return -EINVAL;
    return pt_first_busy(c, pfn, count);
}

int64_t daxfs_count_pinned(daxfs_core *c, uint64_t pfn, uint64_t count)
{
    int64_t n = 0;

    if (!range_ok(pfn, count, c->npages))
        return -EINVAL;
    for (uint64_t q = pfn; q < pfn + count; q++)
        n += (atomic_load_explicit(&c->pages[q].pins, memory_order_relaxed) &
              PIN_COUNT_MASK) != 0;
    return n;
}

int daxfs_page_info(daxfs_core *c, uint64_t pfn, struct daxfs_page_info *out)
{
    struct dx_page *pg;
    uint32_t w;

    if (pfn >= c->npages)
        return -EINVAL;
    pg = &c->pages[pfn];
    pthread_mutex_lock(stripe_lock(c, pfn));    /* consistent owner pair */
    w = atomic_load_explicit(&pg->pins, memory_order_relaxed);
    out->pins = w & PIN_COUNT_MASK;
    out->flags = w >> PIN_FLAGS_SHIFT;
    out->ino = atomic_load_explicit(&pg->ino, memory_order_relaxed);
    out->index = atomic_load_explicit(&pg->index, memory_order_relaxed);
    pthread_mutex_unlock(stripe_lock(c, pfn));
    return 0;
}
