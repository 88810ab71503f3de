/*
 * stress.c - multi-threaded exercise of the core for ASan/UBSan/TSan runs
 * (native/sanitize.sh).  No Python involved.
 *
 * Threads, all at once on one core:
 *   pinners     pin/unpin through the map and by pfn, check exact counts
 *   submitters  DMA (pattern, buffer, pfn targets), cancel some, reap
 *   breakers    block a range, wait for it to be unpinned (eventfd), check
 *               it is idle, unblock  (the safe truncate path)
 *   truncator   unsafe truncate of one inode under DMA (collisions)
 *   observer    stats and collision ring reads
 * Then: shutdown with long delays in flight, and the final invariants.
 *
 * Exit status 0 and "stress: ok" on success.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daxfs_core.h"

#define NPAGES 8192
#define FILE_PAGES 1024         /* per inode */
#define NINODES 4               /* ino 1..4; ino 4 gets truncated */
#define ITERS 3000

static daxfs_core *core;
static char *pmem;
static char *dma_buf;   /* SRC_BUF source; freed only after every DMA ended */
static atomic_int stop;
static atomic_uint_fast64_t collisions_seen;

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "stress: %s:%d: check failed: %s\n", __FILE__,   \
                    __LINE__, #cond);                                        \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Inode i (1-based) owns pfns (i-1)*FILE_PAGES .. in two extents, the
 * second half mapped first in pmem to make the map non-trivial. */
static uint64_t pfn_of(uint64_t ino, uint64_t index)
{
    uint64_t base = (ino - 1) * FILE_PAGES, half = FILE_PAGES / 2;

    return index < half ? base + half + index : base + index - half;
}

static void map_inode(uint64_t ino)
{
    uint64_t half = FILE_PAGES / 2;

    CHECK(daxfs_set_owner(core, pfn_of(ino, 0), half, ino, 0) >= 0);
    CHECK(daxfs_set_owner(core, pfn_of(ino, half), half, ino, half) >= 0);
    CHECK(daxfs_map_extent(core, ino, 0, pfn_of(ino, 0), half) == 0);
    CHECK(daxfs_map_extent(core, ino, half, pfn_of(ino, half), half) == 0);
}

static void *pinner(void *arg)
{
    uint64_t s = (uintptr_t)arg * 7919 + 1;

    for (int i = 0; i < ITERS; i++) {
        uint64_t ino = 1 + rnd(&s) % 3;             /* never the truncated one */
        uint64_t idx = rnd(&s) % (FILE_PAGES - 64), n = 1 + rnd(&s) % 64;
        int64_t r = daxfs_pin_file(core, ino, idx, n, NULL, 0, NULL);

        if (r == -EAGAIN)
            continue;                               /* a breaker blocked it */
        CHECK(r == (int64_t)n);
        CHECK(daxfs_busy_file(core, ino, idx, n) == (int64_t)idx);
        CHECK(daxfs_unpin_file(core, ino, idx, n) == (int64_t)n);

        /* By pfn with the owner check (blocks apply here too). */
        r = daxfs_pin_pfn(core, pfn_of(ino, 0), 8, ino, 0);
        CHECK(r == 8 || r == -EAGAIN);
        if (r == 8)
            CHECK(daxfs_unpin_pfn(core, pfn_of(ino, 0), 8) == 8);
    }
    return NULL;
}

static void reap_some(void)
{
    struct daxfs_completion comp[64];
    uint64_t posted;
    int64_t n = daxfs_dma_reap(core, comp, 64, &posted);

    for (int64_t i = 0; i < n; i++)
        CHECK(comp[i].status == 0 || comp[i].status == -ECANCELED);
}

static void *submitter(void *arg)
{
    uint64_t s = (uintptr_t)arg * 104729 + 3;
    char *buf = dma_buf;

    for (int i = 0; i < ITERS / 4; i++) {
        struct daxfs_dma_desc d = { 0 };
        uint64_t ino = 1 + rnd(&s) % NINODES;
        int64_t id;

        d.dir = DAXFS_DMA_TO_PMEM;
        d.target = DAXFS_TGT_FILE;
        d.ino = ino;
        d.offset = (rnd(&s) % (FILE_PAGES - 16)) * DAXFS_PAGE_SIZE + rnd(&s) % 100;
        d.length = 1 + rnd(&s) % (8 * DAXFS_PAGE_SIZE);
        d.delay_ns = rnd(&s) % 4 == 0 ? rnd(&s) % 200000 : 0;
        if (i % 2) {
            d.src = DAXFS_SRC_BUF;
            d.buf = buf;
        } else {
            d.src = DAXFS_SRC_PATTERN;
            d.seed = rnd(&s);
        }
        if (i % 5 == 0 && ino != 4) {
            /* A registration-style pin, then DMA to it by pfn. */
            uint64_t idx = d.offset / DAXFS_PAGE_SIZE;
            struct daxfs_run run;
            uint64_t nr;

            if (daxfs_pin_file(core, ino, idx, 1, &run, 1, &nr) == 1) {
                struct daxfs_dma_desc p = d;

                p.target = DAXFS_TGT_PFN;
                p.pfn = run.pfn;
                p.offset = 10;
                p.length = 1000;
                id = daxfs_dma_submit(core, &p);
                CHECK(id > 0);
                CHECK(daxfs_unpin_pfn(core, run.pfn, 1) == 1);
            }
        }
        id = daxfs_dma_submit(core, &d);
        /* ino 4 is being truncated: holes and owner changes are expected. */
        CHECK(id > 0 || id == -EAGAIN || (ino == 4 && (id == -EFAULT || id == -ESTALE)));
        if (id > 0 && i % 7 == 0) {
            int r = daxfs_dma_cancel(core, (uint64_t)id);

            CHECK(r == 0 || r == -EBUSY || r == -ENOENT);
        }
        reap_some();
    }
    return NULL;
}

static void *breaker(void *arg)
{
    uint64_t s = (uintptr_t)arg * 31337 + 5;

    for (int i = 0; i < ITERS / 30; i++) {
        uint64_t ino = 1 + rnd(&s) % 3, idx = rnd(&s) % (FILE_PAGES - 128);
        uint64_t token;
        daxfs_waiter *w;
        struct pollfd pfd;

        CHECK(daxfs_block_range(core, ino, idx, 128, &token) == 0);
        CHECK(daxfs_waiter_new(core, ino, idx, 128, &w) == 0);
        pfd.fd = daxfs_waiter_fd(w);
        pfd.events = POLLIN;
        CHECK(poll(&pfd, 1, 30000) == 1);       /* event driven: no polling */
        CHECK(daxfs_waiter_fired(w));
        /* Blocked and drained: nothing can be pinned here now. */
        CHECK(daxfs_busy_file(core, ino, idx, 128) == -1);
        CHECK(daxfs_pin_file(core, ino, idx, 1, NULL, 0, NULL) == -EAGAIN);
        daxfs_waiter_free(core, w);
        CHECK(daxfs_unblock(core, ino, token) == 0);
    }
    return NULL;
}

static void *truncator(void *arg)
{
    (void)arg;
    for (int i = 0; i < ITERS / 30; i++) {
        /* Unsafe: no block, no wait - the pre-fix behaviour. */
        int64_t n = daxfs_unmap_range(core, 4, 0, FILE_PAGES);

        CHECK(n == FILE_PAGES);
        CHECK(daxfs_clear_owner(core, pfn_of(4, 0), FILE_PAGES / 2) >= 0);
        CHECK(daxfs_clear_owner(core, pfn_of(4, FILE_PAGES / 2), FILE_PAGES / 2) >= 0);
        map_inode(4);
    }
    return NULL;
}

static void *observer(void *arg)
{
    struct daxfs_collision recs[64];
    struct daxfs_stats st;
    uint64_t seq = 0, next;

    (void)arg;
    while (!atomic_load(&stop)) {
        int64_t n = daxfs_collisions_since(core, seq, recs, 64, &next);

        CHECK(n >= 0);
        for (int64_t i = 0; i < n; i++)
            CHECK(recs[i].ino == 4 || recs[i].kind == DAXFS_COLL_REUSE);
        atomic_fetch_add(&collisions_seen, (uint64_t)n);
        seq = next;
        daxfs_core_stats(core, &st);    /* not a snapshot: just exercise it */
        sched_yield();
    }
    return NULL;
}

static void test_shutdown_in_flight(void)
{
    struct daxfs_stats st;
    daxfs_core *c;
    char *mem = calloc(64, DAXFS_PAGE_SIZE);

    CHECK(mem);
    CHECK(daxfs_core_new((uintptr_t)mem, 64, 2, &c) == 0);
    CHECK(daxfs_set_owner(c, 0, 64, 9, 0) == 0);
    CHECK(daxfs_map_extent(c, 9, 0, 0, 64) == 0);
    for (int i = 0; i < 16; i++) {
        struct daxfs_dma_desc d = {
            .dir = DAXFS_DMA_TO_PMEM, .target = DAXFS_TGT_FILE, .ino = 9,
            .offset = (uint64_t)i * DAXFS_PAGE_SIZE, .length = DAXFS_PAGE_SIZE,
            .src = DAXFS_SRC_PATTERN, .seed = (uint64_t)i,
            .delay_ns = 3600ull * 1000000000,  /* an hour: must be cut short */
        };
        CHECK(daxfs_dma_submit(c, &d) > 0);
    }
    CHECK(daxfs_dma_shutdown(c) >= 14);
    daxfs_core_stats(c, &st);
    CHECK(st.pins_held == 0 && st.dma_pinned_pages == 0);
    CHECK(daxfs_dma_wait_posted(c, 16, 0) == -ESHUTDOWN);
    daxfs_core_free(c);
    free(mem);
}

int main(void)
{
    pthread_t th[16];
    int nth = 0;
    struct daxfs_stats st;
    struct daxfs_completion comp[256];
    uint64_t posted;

    pmem = calloc(NPAGES, DAXFS_PAGE_SIZE);
    dma_buf = malloc(16 * DAXFS_PAGE_SIZE);
    CHECK(pmem && dma_buf);
    memset(dma_buf, 0x5a, 16 * DAXFS_PAGE_SIZE);
    CHECK(daxfs_core_version() == DAXFS_CORE_VERSION);
    CHECK(daxfs_core_new((uintptr_t)pmem, NPAGES, 4, &core) == 0);
    for (uint64_t ino = 1; ino <= NINODES; ino++)
        map_inode(ino);

    for (uintptr_t i = 0; i < 4; i++)
        pthread_create(&th[nth++], NULL, pinner, (void *)i);
    for (uintptr_t i = 0; i < 2; i++)
        pthread_create(&th[nth++], NULL, submitter, (void *)i);
    for (uintptr_t i = 0; i < 2; i++)
        pthread_create(&th[nth++], NULL, breaker, (void *)i);
    pthread_create(&th[nth++], NULL, truncator, NULL);
    pthread_t obs;
    pthread_create(&obs, NULL, observer, NULL);
    for (int i = 0; i < nth; i++)
        pthread_join(th[i], NULL);

    /* Drain: wait for every submitted descriptor to complete. */
    for (;;) {
        daxfs_core_stats(core, &st);
        if (st.dma_completed + st.dma_cancelled == st.dma_submitted)
            break;
        daxfs_dma_reap(core, comp, 256, &posted);
        daxfs_dma_wait_posted(core, posted, 1000000000);
    }
    while (daxfs_dma_reap(core, comp, 256, &posted) > 0)
        ;
    atomic_store(&stop, 1);
    pthread_join(obs, NULL);

    daxfs_core_stats(core, &st);
    CHECK(st.pins_held == 0);
    CHECK(st.pinned_pages == 0);
    CHECK(st.dma_pinned_pages == 0);
    CHECK(st.pins_taken == st.pins_released);
    CHECK(st.waiters == 0);
    CHECK(daxfs_count_pinned(core, 0, NPAGES) == 0);
    printf("stress: %llu pins, %llu DMA (%llu cancelled), %llu collisions, "
           "%llu waits\n",
           (unsigned long long)st.pins_taken, (unsigned long long)st.dma_completed,
           (unsigned long long)st.dma_cancelled, (unsigned long long)st.collisions,
           (unsigned long long)st.waiters_fired);
    daxfs_core_free(core);
    free(pmem);
    free(dma_buf);

    test_shutdown_in_flight();
    printf("stress: ok\n");
    return 0;
}
