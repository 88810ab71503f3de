/*
 * pfn_map.c - per inode: file page index -> pmem page frame ("store pfns in
 * the radix"), layout-break blocks, and pins taken through the map.
 *
 * The inodes live in a chained hash table protected by core->inodes_lock.
 * Every per-inode operation holds inodes_lock for reading for its whole
 * duration (pm_get .. pm_put), so an inode can only be freed by
 * daxfs_drop_inode, which holds it for writing: nobody else is inside then.
 *
 * Per inode, inode->lock (rwlock) protects the extent array, the blocks and
 * the waiter list.  Pins through the map hold it for reading, map changes
 * for writing, so a pin never sees a half-changed map.
 *
 * Extent array invariants (under inode->lock): sorted by index, disjoint,
 * count > 0, and two neighbours contiguous in both index and pfn are
 * merged.  Lookups are binary searches: O(log n).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "core_internal.h"

#define INITIAL_BUCKETS 256

static inline uint64_t sat_end(uint64_t first, uint64_t count)
{
    return count > UINT64_MAX - first ? UINT64_MAX : first + count;
}

static inline uint64_t hash_ino(uint64_t ino, uint64_t nbuckets)
{
    return (ino * 0x9E3779B97F4A7C15ull) >> 17 & (nbuckets - 1);
}

int pm_init(struct daxfs_core *c)
{
    c->nbuckets = INITIAL_BUCKETS;
    c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
    if (!c->buckets)
        return -ENOMEM;
    pthread_rwlock_init(&c->inodes_lock, NULL);
    return 0;
}

static void inode_free(struct dx_inode *in)
{
    pthread_rwlock_destroy(&in->lock);
    free(in->ext);
    free(in->blocks);
    free(in);
}

void pm_destroy(struct daxfs_core *c)
{
    if (!c->buckets)
        return;
    for (uint64_t b = 0; b < c->nbuckets; b++) {
        struct dx_inode *in = c->buckets[b], *next;

        for (; in; in = next) {
            next = in->hnext;
            /* Waiters still attached are the caller's leak; free them so
             * their fds do not outlive the core. */
            while (in->waiters) {
                struct daxfs_waiter *w = in->waiters;

                in->waiters = w->next;
                close(w->efd);
                free(w);
            }
            inode_free(in);
        }
    }
    free(c->buckets);
    c->buckets = NULL;
    pthread_rwlock_destroy(&c->inodes_lock);
}

static struct dx_inode *find(struct daxfs_core *c, uint64_t ino)
{
    struct dx_inode *in = c->buckets[hash_ino(ino, c->nbuckets)];

    while (in && in->ino != ino)
        in = in->hnext;
    return in;
}

/* inodes_lock held for writing. */
static void grow_buckets(struct daxfs_core *c)
{
    uint64_t nb = c->nbuckets * 2;
    struct dx_inode **b = calloc(nb, sizeof(*b));

    if (!b)
        return;     /* chains just get longer */
    for (uint64_t i = 0; i < c->nbuckets; i++) {
        struct dx_inode *in = c->buckets[i], *next;

        for (; in; in = next) {
            uint64_t h = hash_ino(in->ino, nb);

            next = in->hnext;
            in->hnext = b[h];
            b[h] = in;
        }
    }
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = nb;
}

struct dx_inode *pm_get(struct daxfs_core *c, uint64_t ino, bool create,
                        bool *wr)
{
    struct dx_inode *in;

    *wr = false;
    pthread_rwlock_rdlock(&c->inodes_lock);
    in = find(c, ino);
    if (in || !create)
        return in;
    pthread_rwlock_unlock(&c->inodes_lock);

    pthread_rwlock_wrlock(&c->inodes_lock);
    *wr = true;
    in = find(c, ino);
    if (in)
        return in;
    in = calloc(1, sizeof(*in));
    if (!in)
        return NULL;
    in->ino = ino;
    pthread_rwlock_init(&in->lock, NULL);
    if (c->ninodes >= 2 * c->nbuckets)
        grow_buckets(c);
    in->hnext = c->buckets[hash_ino(ino, c->nbuckets)];
    c->buckets[hash_ino(ino, c->nbuckets)] = in;
    c->ninodes++;
    return in;
}

void pm_put(struct daxfs_core *c)
{
    pthread_rwlock_unlock(&c->inodes_lock);
}

/* ---- extents (inode->lock held) ---- */

/* Index of the first extent that ends after index (may be in->next). */
static uint64_t ext_find(const struct dx_inode *in, uint64_t index)
{
    uint64_t lo = 0, hi = in->next;

    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        const struct daxfs_extent *e = &in->ext[mid];

        if (e->index + e->count <= index)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int ext_reserve(struct dx_inode *in, uint64_t n)
{
    struct daxfs_extent *x;
    uint64_t cap;

    if (n <= in->cap_ext)
        return 0;
    cap = in->cap_ext ? in->cap_ext * 2 : 8;
    while (cap < n)
        cap *= 2;
    x = realloc(in->ext, cap * sizeof(*x));
    if (!x)
        return -ENOMEM;
    in->ext = x;
    in->cap_ext = cap;
    return 0;
}

/* Merge ext[i] with ext[i+1] when contiguous in index and pfn. */
static void ext_merge_next(struct dx_inode *in, uint64_t i)
{
    struct daxfs_extent *a = &in->ext[i], *b = &in->ext[i + 1];

    if (i + 1 >= in->next || a->index + a->count != b->index ||
        a->pfn + a->count != b->pfn)
        return;
    a->count += b->count;
    memmove(b, b + 1, (in->next - i - 2) * sizeof(*b));
    in->next--;
}

/*
 * Walk the mapped pieces of [index, index+count): calls fn for each piece
 * (file index s, pfn, pages n).  Returns -EFAULT at the first hole if
 * need_full, else skips holes.  Stops early if fn returns non-zero.
 */
typedef int64_t (*piece_fn)(struct daxfs_core *c, void *arg, uint64_t s,
                            uint64_t pfn, uint64_t n);

static int64_t walk(struct daxfs_core *c, struct dx_inode *in, uint64_t index,
                    uint64_t count, bool need_full, piece_fn fn, void *arg)
{
    uint64_t hi = sat_end(index, count), pos = index;

    for (uint64_t j = ext_find(in, index); pos < hi; j++) {
        const struct daxfs_extent *e;
        uint64_t s, t;
        int64_t r;

        if (j >= in->next) {
            if (need_full)
                return -EFAULT;
            break;
        }
        e = &in->ext[j];
        if (e->index >= hi)
            return need_full ? -EFAULT : 0;
        if (e->index > pos && need_full)
            return -EFAULT;
        s = e->index > pos ? e->index : pos;
        t = e->index + e->count < hi ? e->index + e->count : hi;
        if (fn && (r = fn(c, arg, s, e->pfn + (s - e->index), t - s)) != 0)
            return r;
        pos = t;
    }
    return 0;
}

/* ---- busy scans ---- */

struct busy_arg {
    int64_t found;
};

static int64_t busy_piece(struct daxfs_core *c, void *arg, uint64_t s,
                          uint64_t pfn, uint64_t n)
{
    int64_t r = pt_first_busy(c, pfn, n);

    if (r < 0)
        return 0;
    ((struct busy_arg *)arg)->found = (int64_t)(s + ((uint64_t)r - pfn));
    return 1;
}

int64_t pm_first_busy_locked(struct daxfs_core *c, struct dx_inode *in,
                             uint64_t index, uint64_t count)
{
    struct busy_arg a = { -1 };

    walk(c, in, index, count, false, busy_piece, &a);
    return a.found;
}

/* ---- pins through the map ---- */

struct pin_arg {
    uint64_t ino;
    struct daxfs_run *runs;     /* may be NULL */
    uint64_t nruns;
    uint64_t done_to;           /* file index pinned up to (exclusive) */
    uint64_t rolled;            /* pages pinned+unpinned by a failed piece */
    int64_t zeros;
};

static int64_t pin_piece(struct daxfs_core *c, void *arg, uint64_t s,
                         uint64_t pfn, uint64_t n)
{
    struct pin_arg *a = arg;
    int64_t r = pt_pin_locked(c, pfn, n, PIN_OWNER, a->ino, s, &a->rolled);

    if (r < 0)
        return r;
    if (a->runs)
        a->runs[a->nruns] = (struct daxfs_run){ pfn, n };
    a->nruns++;
    a->done_to = s + n;
    return 0;
}

static int64_t unpin_piece(struct daxfs_core *c, void *arg, uint64_t s,
                           uint64_t pfn, uint64_t n)
{
    struct pin_arg *a = arg;
    int64_t r = pt_unpin(c, pfn, n);

    if (r < 0)
        return r;
    a->zeros += r;
    a->done_to = s + n;
    return 0;
}

static int64_t repin_piece(struct daxfs_core *c, void *arg, uint64_t s,
                           uint64_t pfn, uint64_t n)
{
    uint64_t rolled;

    (void)arg;
    (void)s;
    if (pt_pin_locked(c, pfn, n, PIN_ANY, 0, 0, &rolled) < 0)
        DX_BUG("re-pin after a failed unpin failed");
    return 0;
}

static int64_t count_piece(struct daxfs_core *c, void *arg, uint64_t s,
                           uint64_t pfn, uint64_t n)
{
    (void)c;
    (void)s;
    (void)pfn;
    (void)n;
    ((struct pin_arg *)arg)->nruns++;
    return 0;
}

static bool blocked_locked(const struct dx_inode *in, uint64_t index,
                           uint64_t count)
{
    uint64_t hi = sat_end(index, count);

    for (uint64_t i = 0; i < in->nblocks; i++) {
        const struct dx_block *b = &in->blocks[i];

        if (b->index < hi && index < sat_end(b->index, b->count))
            return true;
    }
    return false;
}

/*
 * inode->lock held (read).  Pin [index, index+count) through the map into
 * runs (room for max_runs, or NULL).  All or nothing.
 */
static int64_t pin_file_locked(struct daxfs_core *c, struct dx_inode *in,
                               uint64_t index, uint64_t count,
                               struct daxfs_run *runs, uint64_t max_runs,
                               uint64_t *nruns)
{
    struct pin_arg a = { .ino = in->ino };
    int64_t r;

    if (blocked_locked(in, index, count))
        return -EAGAIN;
    r = walk(c, in, index, count, true, count_piece, &a);
    if (r < 0)
        return r;
    if (runs && a.nruns > max_runs)
        return -E2BIG;
    a = (struct pin_arg){ .ino = in->ino, .runs = runs, .done_to = index };
    r = walk(c, in, index, count, true, pin_piece, &a);
    if (r < 0) {
        struct pin_arg u = { .done_to = index };

        if (a.done_to > index)
            walk(c, in, index, a.done_to - index, true, unpin_piece, &u);
        /* Our own short-lived pins may have hidden an idle moment from a
         * concurrent waiter scan: rescan. */
        if (u.zeros || a.rolled)
            waiters_check_locked(c, in, index, count);
        return r;
    }
    if (nruns)
        *nruns = a.nruns;
    return (int64_t)count;
}

static int64_t check_file_range(uint64_t ino, uint64_t index, uint64_t count)
{
    if (ino == 0)
        return -EINVAL;
    if (!range_ok(index, count, DAXFS_MAX_FILE_PAGES))
        return -EFBIG;
    return 0;
}

int64_t daxfs_pin_file(daxfs_core *c, uint64_t ino, uint64_t index,
                       uint64_t count, struct daxfs_run *runs,
                       uint64_t max_runs, uint64_t *nruns)
{
    struct dx_inode *in;
    int64_t r;
    bool wr;

    if (nruns)
        *nruns = 0;
    if ((r = check_file_range(ino, index, count)) < 0 || count == 0)
        return r;
    in = pm_get(c, ino, false, &wr);
    if (!in) {
        pm_put(c);
        return -EFAULT;
    }
    pthread_rwlock_rdlock(&in->lock);
    r = pin_file_locked(c, in, index, count, runs, max_runs, nruns);
    pthread_rwlock_unlock(&in->lock);
    pm_put(c);
    return r;
}

int64_t pm_pin_file_runs(struct daxfs_core *c, uint64_t ino, uint64_t index,
                         uint64_t count, struct daxfs_run **runs,
                         uint64_t *nruns)
{
    struct pin_arg a = { 0 };
    struct dx_inode *in;
    int64_t r;
    bool wr;

    *runs = NULL;
    *nruns = 0;
    if ((r = check_file_range(ino, index, count)) < 0)
        return r;
    if (count == 0)
        return -EINVAL;
    in = pm_get(c, ino, false, &wr);
    if (!in) {
        pm_put(c);
        return -EFAULT;
    }
    pthread_rwlock_rdlock(&in->lock);
    r = walk(c, in, index, count, true, count_piece, &a);
    if (r == 0) {
        *runs = malloc(a.nruns * sizeof(**runs));
        r = *runs ? pin_file_locked(c, in, index, count, *runs, a.nruns, nruns)
                  : -ENOMEM;
    }
    pthread_rwlock_unlock(&in->lock);
    pm_put(c);
    if (r < 0) {
        free(*runs);
        *runs = NULL;
    }
    return r;
}

/*
 * A pin by pfn names its owner, so it is a pin on that inode's range and
 * honours the inode's layout-break blocks like a pin through the map.
 */
int64_t daxfs_pin_pfn(daxfs_core *c, uint64_t pfn, uint64_t count,
                      uint64_t ino, uint64_t index)
{
    struct dx_inode *in;
    uint64_t rolled = 0;
    int64_t r;
    bool wr;

    if ((r = check_file_range(ino, index, count)) < 0 || count == 0)
        return r;
    in = pm_get(c, ino, false, &wr);
    if (in)
        pthread_rwlock_rdlock(&in->lock);
    if (in && blocked_locked(in, index, count))
        r = -EAGAIN;
    else
        r = pt_pin_locked(c, pfn, count, PIN_OWNER, ino, index, &rolled);
    if (in) {
        /* Only pages owned by ino (checked) were pinned and rolled back. */
        if (rolled)
            waiters_check_locked(c, in, index, count);
        pthread_rwlock_unlock(&in->lock);
    }
    pm_put(c);
    return r;
}

int64_t daxfs_unpin_file(daxfs_core *c, uint64_t ino, uint64_t index,
                         uint64_t count)
{
    struct pin_arg u = { .done_to = index };
    struct dx_inode *in;
    int64_t r;
    bool wr;

    if ((r = check_file_range(ino, index, count)) < 0 || count == 0)
        return r;
    in = pm_get(c, ino, false, &wr);
    if (!in) {
        pm_put(c);
        return -EFAULT;
    }
    pthread_rwlock_rdlock(&in->lock);
    r = walk(c, in, index, count, true, NULL, NULL);
    if (r == 0)
        r = walk(c, in, index, count, true, unpin_piece, &u);
    if (r < 0 && u.done_to > index) {
        /* A page was not pinned (caller bug): undo, nothing changes. */
        walk(c, in, index, u.done_to - index, true, repin_piece, NULL);
    } else if (r == 0) {
        r = (int64_t)count;
    }
    if (u.zeros)
        waiters_check_locked(c, in, index, count);
    pthread_rwlock_unlock(&in->lock);
    pm_put(c);
    return r;
}

int64_t daxfs_busy_file(daxfs_core *c, uint64_t ino, uint64_t index,
                        uint64_t count)
{
    struct dx_inode *in;
    int64_t r = -1;
    bool wr;

    if (ino == 0)
        return -EINVAL;
    in = pm_get(c, ino, false, &wr);
    if (in) {
        pthread_rwlock_rdlock(&in->lock);
        r = pm_first_busy_locked(c, in, index, count);
        pthread_rwlock_unlock(&in->lock);
    }
    pm_put(c);
    return r;
}

/* ---- map changes ---- */

int daxfs_map_extent(daxfs_core *c, uint64_t ino, uint64_t index,
                     uint64_t pfn, uint64_t count)
{
    struct dx_inode *in;
    uint64_t i;
    int r = 0;
    bool wr;

    if ((r = (int)check_file_range(ino, index, count)) < 0)
        return r;
    if (!range_ok(pfn, count, c->npages))
        return -EINVAL;
    if (count == 0)
        return 0;
    in = pm_get(c, ino, true, &wr);
    if (!in) {
        pm_put(c);
        return -ENOMEM;
    }
    pthread_rwlock_wrlock(&in->lock);
    i = ext_find(in, index);
    if (i < in->next && in->ext[i].index < index + count) {
        r = -EEXIST;
    } else if ((r = ext_reserve(in, in->next + 1)) == 0) {
        memmove(&in->ext[i + 1], &in->ext[i], (in->next - i) * sizeof(*in->ext));
        in->ext[i] = (struct daxfs_extent){ index, pfn, count };
        in->next++;
        ext_merge_next(in, i);
        if (i > 0)
            ext_merge_next(in, i - 1);
    }
    pthread_rwlock_unlock(&in->lock);
    pm_put(c);
    return r;
}

int64_t daxfs_unmap_range(daxfs_core *c, uint64_t ino, uint64_t index,
                          uint64_t count)
{
    struct daxfs_extent keep[2];
    uint64_t hi = sat_end(index, count), removed = 0, i, j, k = 0;
    struct dx_inode *in;
    int64_t r = 0;
    bool wr;

    if (ino == 0)
        return -EINVAL;
    if (count == 0)
        return 0;
    in = pm_get(c, ino, false, &wr);
    if (!in) {
        pm_put(c);
        return 0;
    }
    pthread_rwlock_wrlock(&in->lock);
    i = ext_find(in, index);
    for (j = i; j < in->next && in->ext[j].index < hi; j++) {
        const struct daxfs_extent *e = &in->ext[j];
        uint64_t end = e->index + e->count;
        uint64_t s = e->index > index ? e->index : index;
        uint64_t t = end < hi ? end : hi;

        removed += t - s;
        if (e->index < index)   /* only possible for j == i */
            keep[k++] = (struct daxfs_extent){ e->index, e->pfn, index - e->index };
        if (end > hi)           /* only possible for the last j */
            keep[k++] = (struct daxfs_extent){ hi, e->pfn + (hi - e->index), end - hi };
    }
    /* Replace ext[i, j) by keep[0, k); k <= j - i + 1. */
    if (removed && (r = ext_reserve(in, in->next - (j - i) + k)) == 0) {
        memmove(&in->ext[i + k], &in->ext[j], (in->next - j) * sizeof(*in->ext));
        memcpy(&in->ext[i], keep, k * sizeof(*keep));
        in->next = in->next - (j - i) + k;
        r = (int64_t)removed;
        /* Pinned pages that left the range no longer hold its waiters. */
        if (in->waiters)
            waiters_check_locked(c, in, index, count);
    }
    pthread_rwlock_unlock(&in->lock);
    pm_put(c);
    return r;
}

int daxfs_drop_inode(daxfs_core *c, uint64_t ino)
{
    struct dx_inode **pp, *in;

    pthread_rwlock_wrlock(&c->inodes_lock);
    pp = &c->buckets[hash_ino(ino, c->nbuckets)];
    while (*pp && (*pp)->ino != ino)
        pp = &(*pp)->hnext;
    in = *pp;
    if (!in) {
        pthread_rwlock_unlock(&c->inodes_lock);
        return -ENOENT;
    }
    *pp = in->hnext;
    c->ninodes--;
    /* inodes_lock held for writing: nobody holds in->lock. */
    waiters_detach_all(c, in);
    atomic_fetch_sub_explicit(&c->nblocks, in->nblocks, memory_order_relaxed);
    pthread_rwlock_unlock(&c->inodes_lock);
    inode_free(in);
    return 0;
}

int daxfs_lookup(daxfs_core *c, uint64_t ino, uint64_t index, uint64_t *pfn,
                 uint64_t *run)
{
    struct dx_inode *in;
    int r = -ENODATA;
    bool wr;

    *pfn = 0;
    *run = UINT64_MAX;
    in = pm_get(c, ino, false, &wr);
    if (in) {
        uint64_t i;

        pthread_rwlock_rdlock(&in->lock);
        i = ext_find(in, index);
        if (i < in->next) {
            const struct daxfs_extent *e = &in->ext[i];

            if (e->index <= index) {
                *pfn = e->pfn + (index - e->index);
                *run = e->index + e->count - index;
                r = 0;
            } else {
                *run = e->index - index;
            }
        }
        pthread_rwlock_unlock(&in->lock);
    }
    pm_put(c);
    return r;
}

int64_t daxfs_get_extents(daxfs_core *c, uint64_t ino, uint64_t index,
                          struct daxfs_extent *out, uint64_t max)
{
    struct dx_inode *in;
    uint64_t n = 0;
    bool wr;

    in = pm_get(c, ino, false, &wr);
    if (in) {
        pthread_rwlock_rdlock(&in->lock);
        for (uint64_t i = ext_find(in, index); i < in->next && n < max; i++)
            out[n++] = in->ext[i];
        pthread_rwlock_unlock(&in->lock);
    }
    pm_put(c);
    return (int64_t)n;
}

/* For fastpath.c, which walks the map itself (holes are data there). */
uint64_t pm_ext_find(const struct dx_inode *in, uint64_t index)
{
    return ext_find(in, index);
}

bool pm_blocked_locked(const struct dx_inode *in, uint64_t index, uint64_t count)
{
    return blocked_locked(in, index, count);
}

/* ---- layout-break blocks ---- */

int daxfs_block_range(daxfs_core *c, uint64_t ino, uint64_t index,
                      uint64_t count, uint64_t *token)
{
    struct dx_inode *in;
    int r = 0;
    bool wr;

    if (ino == 0)
        return -EINVAL;
    in = pm_get(c, ino, true, &wr);
    if (!in) {
        pm_put(c);
        return -ENOMEM;
    }
    pthread_rwlock_wrlock(&in->lock);
    if (in->nblocks == in->cap_blocks) {
        uint64_t cap = in->cap_blocks ? in->cap_blocks * 2 : 4;
        struct dx_block *b = realloc(in->blocks, cap * sizeof(*b));

        if (!b) {
            r = -ENOMEM;
            goto out;
        }
        in->blocks = b;
        in->cap_blocks = cap;
    }
    *token = atomic_fetch_add_explicit(&c->next_token, 1, memory_order_relaxed) + 1;
    in->blocks[in->nblocks++] = (struct dx_block){ *token, index, count };
    atomic_fetch_add_explicit(&c->nblocks, 1, memory_order_relaxed);
out:
    pthread_rwlock_unlock(&in->lock);
    pm_put(c);
    return r;
}

int daxfs_unblock(daxfs_core *c, uint64_t ino, uint64_t token)
{
    struct dx_inode *in;
    int r = -ENOENT;
    bool wr;

    in = pm_get(c, ino, false, &wr);
    if (in) {
        pthread_rwlock_wrlock(&in->lock);
        for (uint64_t i = 0; i < in->nblocks; i++) {
            if (in->blocks[i].token == token) {
                in->blocks[i] = in->blocks[--in->nblocks];
                atomic_fetch_sub_explicit(&c->nblocks, 1, memory_order_relaxed);
                r = 0;
                break;
            }
        }
        pthread_rwlock_unlock(&in->lock);
    }
    pm_put(c);
    return r;
}
