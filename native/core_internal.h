/*
 * core_internal.h - shared state of the native core (not part of the cdef).
 *
 * Lock order (outer to inner; never take an outer lock while holding an
 * inner one):
 *
 *   core->inodes_lock (rwlock)          inode hash table; held (read) for
 *     -> inode->lock (rwlock)           the whole of any per-inode operation
 *       -> core->pt_locks[stripe]       page owner changes, pins with check
 *         -> core->coll_lock            collision ring
 *
 *   core->dma.lock and core->dma.cq_lock are taken alone: the engine never
 *   holds them while pinning, unpinning or notifying waiters.
 *
 * Pin counts are C11 atomics changed by CAS loops and read without locks.
 * Owners are atomics too (so lock-free readers are not data races), but a
 * consistent (ino, index) pair and the "owner matches -> pin" step are only
 * guaranteed under the page's stripe lock.
 */
#ifndef DAXFS_CORE_INTERNAL_H
#define DAXFS_CORE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "daxfs_core.h"

#define PAGE_SHIFT 12

/* ---- struct page ---- */

#define PIN_COUNT_MASK 0x00ffffffu
#define PIN_FLAGS_SHIFT 24

/*
 * One per pmem page, 16 bytes, zero = free and unpinned (so the table can
 * live in untouched MAP_NORESERVE memory).
 */
struct dx_page {
    _Atomic uint32_t pins;  /* bits 0..23 pin count, 24..31 DAXFS_PG_* */
    _Atomic uint32_t index; /* file page index; stripe lock for writes */
    _Atomic uint64_t ino;   /* owner, 0 = free; stripe lock for writes */
};
_Static_assert(sizeof(struct dx_page) == 16, "struct page must be 16 bytes");

/* A stripe lock covers runs of 512 consecutive pages; runs are hashed onto
 * PT_NLOCKS mutexes.  Range operations take one stripe lock at a time. */
#define PT_STRIPE_SHIFT 9
#define PT_NLOCKS 256

/* ---- pfn map ---- */

struct dx_block {
    uint64_t token;
    uint64_t index;
    uint64_t count;
};

struct dx_inode {
    uint64_t ino;
    struct dx_inode *hnext;         /* hash chain; protected by inodes_lock */
    pthread_rwlock_t lock;          /* protects everything below */
    struct daxfs_extent *ext;       /* sorted by index, disjoint, merged */
    uint64_t next, cap_ext;
    struct dx_block *blocks;        /* active layout-break blocks */
    uint64_t nblocks, cap_blocks;
    struct daxfs_waiter *waiters;   /* registered waiters (list) */

    /* Fast data path (fastpath.c).  Atomics: the fast path reads them under
     * inode->lock held for reading, Python's updates are single stores. */
    _Atomic uint32_t published;     /* Python vouches: the map is complete */
    _Atomic uint32_t queued;        /* on core->fast.dirty, not drained */
    _Atomic uint64_t size;          /* file size in bytes */
    _Atomic int64_t wtime;          /* last fast write (ns), 0 = none */
    _Atomic int64_t rtime;          /* last fast read due an atime, 0 = none */
    _Atomic int64_t atime_next;     /* a read at or after this needs atime */
    _Atomic uint32_t nocaps;        /* no security.capability xattr */
    /* getattr's answer, valid while attr_valid; written under lock (write),
     * read under lock (read); cleared with the stamps, under lock (read). */
    struct daxfs_attr attr;
    _Atomic uint32_t attr_valid;
};

/* ---- waiters ---- */

struct daxfs_waiter {
    struct daxfs_waiter *next;  /* inode->waiters; protected by inode->lock */
    uint64_t ino, index, count; /* immutable */
    int efd;                    /* immutable, closed by daxfs_waiter_free */
    _Atomic int fired;          /* 0 -> 1 once; then efd is readable */
    _Atomic uint64_t hint;      /* last busy index seen: rescans start here */
};

/* ---- DMA ---- */

struct dma_job {
    struct dma_job *next;           /* queue link; protected by dma.lock */
    uint64_t id;
    struct daxfs_dma_desc d;
    struct daxfs_run *runs;         /* pages pinned for this job, in order */
    uint64_t nruns;
    uint64_t npinned;               /* sum of runs[].count */
    uint64_t first_off;             /* byte offset into the first run */
    void *map;                      /* SRC_SHM mapping (munmap at the end) */
    size_t maplen;
    char *mem;                      /* SRC_BUF / SRC_SHM memory */
};

struct dx_dma {
    pthread_mutex_t lock;       /* protects queue, running[], stopping */
    pthread_cond_t queue_cv;    /* work queued or stopping */
    pthread_cond_t delay_cv;    /* stopping: interrupts injected delays */
    struct dma_job *head, *tail;
    uint64_t *running;          /* id run by worker i, 0 = idle */
    bool stopping;
    bool joined;
    bool inited;                /* locks initialised (dma_init ran) */
    uint32_t nthreads;
    pthread_t *threads;

    pthread_mutex_t cq_lock;    /* protects the completion queue */
    pthread_cond_t cq_cv;       /* a completion was posted / shutdown */
    struct daxfs_completion *cq;/* ring */
    uint64_t cq_head, cq_len, cq_cap;
    uint64_t posted;            /* completions ever posted */
    uint32_t cq_sleepers;       /* threads in daxfs_dma_wait_posted */
    int efd;                    /* written after each post */

    _Atomic uint64_t next_id;
    _Atomic uint64_t delay_ns;  /* global injected delay */
    _Atomic uint64_t submitted, completed, cancelled, failed, bytes;
    _Atomic uint64_t queued, nrunning, pinned_pages;
};

/* ---- fast path ---- */

struct dx_fast {
    pthread_mutex_t lock;       /* protects dirty[] */
    uint64_t *dirty;            /* inodes with stamps Python has not seen */
    uint64_t ndirty, cap;
    _Atomic uint64_t pending;   /* == ndirty, readable without the lock */
    _Atomic uint32_t writable;  /* fast writes allowed (mount is rw) */
    _Atomic uint64_t reads, writes, read_bytes, write_bytes, fallbacks;
    _Atomic uint64_t getattrs;
};

/* ---- collisions ---- */

#define COLL_RING 1024

/* ---- the core ---- */

struct daxfs_core {
    char *base;                 /* pmem mapping, may be NULL */
    uint64_t npages;

    struct dx_page *pages;      /* mmap(MAP_NORESERVE), npages entries */
    size_t pages_len;
    pthread_mutex_t pt_locks[PT_NLOCKS];

    pthread_rwlock_t inodes_lock;   /* protects the hash table */
    struct dx_inode **buckets;
    uint64_t nbuckets, ninodes;

    _Atomic uint64_t nwaiters;      /* registered waiters (see waiters.c) */
    _Atomic uint64_t waiters_fired;
    _Atomic uint64_t next_token;
    _Atomic uint64_t nblocks;

    pthread_mutex_t coll_lock;      /* protects coll_ring, coll_seq */
    struct daxfs_collision coll_ring[COLL_RING];
    uint64_t coll_seq;              /* records ever written */

    _Atomic uint64_t pinned_pages, pins_held, pins_taken, pins_released;
    _Atomic uint64_t late_unpins;

    struct dx_dma dma;
    struct dx_fast fast;
};

/* Abort loudly on a broken invariant (never for a caller error). */
#define DX_BUG(...)                                                         \
    do {                                                                    \
        fprintf(stderr, "daxfs core BUG %s:%d: ", __FILE__, __LINE__);      \
        fprintf(stderr, __VA_ARGS__);                                       \
        fputc('\n', stderr);                                                \
        abort();                                                            \
    } while (0)

static inline bool range_ok(uint64_t first, uint64_t count, uint64_t limit)
{
    return count <= limit && first <= limit - count;
}

/* page_table.c */
int pt_init(struct daxfs_core *c);
void pt_destroy(struct daxfs_core *c);
enum pin_check {
    PIN_OWNER,  /* page must be owned by the expected (ino, index) */
    PIN_REF,    /* page must already be pinned (an extra reference) */
    PIN_ANY,    /* no check: only to undo an unpin */
};
int64_t pt_pin(struct daxfs_core *c, uint64_t pfn, uint64_t count,
               enum pin_check how, uint64_t ino, uint64_t index);
int64_t pt_pin_locked(struct daxfs_core *c, uint64_t pfn, uint64_t count,
                      enum pin_check how, uint64_t ino, uint64_t index,
                      uint64_t *rolled_back);
int64_t pt_unpin(struct daxfs_core *c, uint64_t pfn, uint64_t count);
int64_t pt_first_busy(struct daxfs_core *c, uint64_t pfn, uint64_t count);
void pt_notify_unpinned(struct daxfs_core *c, uint64_t pfn, uint64_t count);
void coll_record(struct daxfs_core *c, uint32_t kind, uint64_t pfn,
                 uint64_t ino, uint64_t index, uint64_t new_ino,
                 uint32_t pins);

/* pfn_map.c */
int pm_init(struct daxfs_core *c);
void pm_destroy(struct daxfs_core *c);
/* Find (create) the inode with inodes_lock held for reading (writing if it
 * had to be created).  Release with pm_put(). */
struct dx_inode *pm_get(struct daxfs_core *c, uint64_t ino, bool create,
                        bool *wr);
void pm_put(struct daxfs_core *c);
int64_t pm_first_busy_locked(struct daxfs_core *c, struct dx_inode *in,
                             uint64_t index, uint64_t count);
uint64_t pm_ext_find(const struct dx_inode *in, uint64_t index);
bool pm_blocked_locked(const struct dx_inode *in, uint64_t index, uint64_t count);
int64_t pm_pin_file_runs(struct daxfs_core *c, uint64_t ino, uint64_t index,
                         uint64_t count, struct daxfs_run **runs,
                         uint64_t *nruns);

/* waiters.c */
void waiters_check_locked(struct daxfs_core *c, struct dx_inode *in,
                          uint64_t index, uint64_t count);
void waiters_check(struct daxfs_core *c, uint64_t ino, uint64_t index,
                   uint64_t count);
void waiters_detach_all(struct daxfs_core *c, struct dx_inode *in);

/* fastpath.c */
int fast_init(struct daxfs_core *c);
void fast_destroy(struct daxfs_core *c);

/* dma.c */
int dma_init(struct daxfs_core *c, uint32_t nthreads);
void dma_destroy(struct daxfs_core *c);

#endif /* DAXFS_CORE_INTERNAL_H */
