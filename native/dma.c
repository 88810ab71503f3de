/*
 * dma.c - the DMA engine: C worker threads that copy between pinned pmem
 * pages and a source/destination, with injectable delay ("bio_delay").
 *
 * Life of a descriptor:
 *   submit (caller's thread): validate, pin the target pages (through the
 *     pfn map for TGT_FILE, so blocked ranges and holes fail right here),
 *     map SRC_SHM, queue, return the id;
 *   worker: dequeue, sleep delay_ns + global delay on a condition variable
 *     (shutdown interrupts it), copy with memcpy / pread / pwrite, drop the
 *     pins (a bio's put_page: by pfn, so it works after a truncate), post
 *     the completion, write the eventfd.
 *   cancel (queued only) and shutdown: drop the pins, post -ECANCELED.
 *
 * Invariants:
 *   - a job is in exactly one place: the queue (dma.lock), a worker's
 *     hands (running[i] == id), or a local variable of the canceller;
 *   - dma.pinned_pages == sum of npinned over all unfinished jobs; it is 0
 *     after shutdown (checked, abort otherwise);
 *   - C threads never call into Python: they only write the eventfd.
 *   - dma.lock and dma.cq_lock are never held while pinning/unpinning.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "core_internal.h"

/* ---- pattern ---- */

static inline uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static inline uint8_t pattern_byte(uint64_t seed, uint64_t pos)
{
    return (uint8_t)(splitmix64(seed + pos / 8) >> (8 * (pos % 8)));
}

void daxfs_pattern_fill(void *buf, uint64_t len, uint64_t seed, uint64_t start)
{
    uint8_t *p = buf;
    uint64_t i = 0;

    for (; i < len && (start + i) % 8; i++)
        p[i] = pattern_byte(seed, start + i);
    for (; i + 8 <= len; i += 8) {
        uint64_t w = splitmix64(seed + (start + i) / 8);

        memcpy(p + i, &w, 8);   /* little-endian host assumed (x86, arm64) */
    }
    for (; i < len; i++)
        p[i] = pattern_byte(seed, start + i);
}

int64_t daxfs_pattern_check(const void *buf, uint64_t len, uint64_t seed,
                            uint64_t start)
{
    const uint8_t *p = buf;
    uint64_t i = 0;

    for (; i < len && (start + i) % 8; i++)
        if (p[i] != pattern_byte(seed, start + i))
            return (int64_t)i;
    for (; i + 8 <= len; i += 8) {
        uint64_t w = splitmix64(seed + (start + i) / 8), v;

        memcpy(&v, p + i, 8);
        if (v != w)
            break;  /* locate the byte below */
    }
    for (; i < len; i++)
        if (p[i] != pattern_byte(seed, start + i))
            return (int64_t)i;
    return -1;
}

const char *daxfs_dma_copy_method(void)
{
    return "memcpy";
}

/* ---- completion queue ---- */

static void post(struct daxfs_core *c, uint64_t id, int64_t status,
                 uint64_t bytes)
{
    struct dx_dma *d = &c->dma;
    uint64_t one = 1;

    pthread_mutex_lock(&d->cq_lock);
    if (d->cq_len == d->cq_cap) {
        uint64_t cap = d->cq_cap ? d->cq_cap * 2 : 64;
        struct daxfs_completion *q = malloc(cap * sizeof(*q));

        if (!q)
            DX_BUG("out of memory for the DMA completion queue");
        for (uint64_t i = 0; i < d->cq_len; i++)
            q[i] = d->cq[(d->cq_head + i) % d->cq_cap];
        free(d->cq);
        d->cq = q;
        d->cq_cap = cap;
        d->cq_head = 0;
    }
    d->cq[(d->cq_head + d->cq_len++) % d->cq_cap] =
        (struct daxfs_completion){ id, status, bytes };
    d->posted++;
    pthread_cond_broadcast(&d->cq_cv);
    pthread_mutex_unlock(&d->cq_lock);
    while (write(d->efd, &one, sizeof(one)) < 0 && errno == EINTR)
        ;
}

int daxfs_dma_eventfd(daxfs_core *c)
{
    return c->dma.efd;
}

int64_t daxfs_dma_reap(daxfs_core *c, struct daxfs_completion *out,
                       uint64_t max, uint64_t *posted)
{
    struct dx_dma *d = &c->dma;
    uint64_t n = 0, v;

    /* Drain first: a completion posted after this read writes it again. */
    while (read(d->efd, &v, sizeof(v)) < 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&d->cq_lock);
    while (n < max && d->cq_len) {
        out[n++] = d->cq[d->cq_head];
        d->cq_head = (d->cq_head + 1) % d->cq_cap;
        d->cq_len--;
    }
    *posted = d->posted;
    if (d->cq_len) {
        /* Caller's buffer was too small: keep the fd readable. */
        uint64_t one = 1;

        while (write(d->efd, &one, sizeof(one)) < 0 && errno == EINTR)
            ;
    }
    pthread_mutex_unlock(&d->cq_lock);
    return (int64_t)n;
}

static void deadline_after(struct timespec *ts, uint64_t ns)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ns += (uint64_t)ts->tv_nsec;
    ts->tv_sec += (time_t)(ns / 1000000000);
    ts->tv_nsec = (long)(ns % 1000000000);
}

int daxfs_dma_wait_posted(daxfs_core *c, uint64_t posted, int64_t timeout_ns)
{
    struct dx_dma *d = &c->dma;
    struct timespec ts;
    int r = 0;

    if (timeout_ns >= 0)
        deadline_after(&ts, (uint64_t)timeout_ns);
    pthread_mutex_lock(&d->cq_lock);
    d->cq_sleepers++;
    while (d->posted <= posted && !d->joined && r == 0) {
        if (timeout_ns < 0)
            pthread_cond_wait(&d->cq_cv, &d->cq_lock);
        else if (pthread_cond_timedwait(&d->cq_cv, &d->cq_lock, &ts) == ETIMEDOUT)
            r = -ETIMEDOUT;
    }
    if (d->posted > posted)
        r = 0;
    else if (d->joined)
        r = -ESHUTDOWN;
    d->cq_sleepers--;
    pthread_cond_broadcast(&d->cq_cv);  /* dma_destroy may wait for us */
    pthread_mutex_unlock(&d->cq_lock);
    return r;
}

/* ---- jobs ---- */

static void job_release(struct daxfs_core *c, struct dma_job *j)
{
    for (uint64_t i = 0; i < j->nruns; i++) {
        int64_t zeros = pt_unpin(c, j->runs[i].pfn, j->runs[i].count);

        if (zeros < 0)
            DX_BUG("DMA job %llu lost its pins", (unsigned long long)j->id);
        if (zeros > 0)
            pt_notify_unpinned(c, j->runs[i].pfn, j->runs[i].count);
    }
    atomic_fetch_sub(&c->dma.pinned_pages, j->npinned);
    if (j->map)
        munmap(j->map, j->maplen);
    free(j->runs);
    free(j);
}

static void job_cancel(struct daxfs_core *c, struct dma_job *j)
{
    uint64_t id = j->id;

    job_release(c, j);
    atomic_fetch_add(&c->dma.cancelled, 1);
    post(c, id, -ECANCELED, 0);
}

/* Copy n bytes between pmem at pm and the job's other side at stream
 * offset done.  Returns bytes moved (< n only on EOF) or -errno; for a
 * pattern check, -EILSEQ with *bad = offset of the first wrong byte. */
static int64_t copy_segment(struct dma_job *j, char *pm, uint64_t n,
                            uint64_t done, uint64_t *bad)
{
    const struct daxfs_dma_desc *d = &j->d;
    bool to = d->dir == DAXFS_DMA_TO_PMEM;
    uint64_t k = 0;

    switch (d->src) {
    case DAXFS_SRC_BUF:
    case DAXFS_SRC_SHM:
        if (to)
            memcpy(pm, j->mem + done, n);
        else
            memcpy(j->mem + done, pm, n);
        return (int64_t)n;
    case DAXFS_SRC_PATTERN:
        if (to) {
            daxfs_pattern_fill(pm, n, d->seed, d->src_offset + done);
        } else {
            int64_t b = daxfs_pattern_check(pm, n, d->seed, d->src_offset + done);

            if (b >= 0) {
                *bad = (uint64_t)b;
                return -EILSEQ;
            }
        }
        return (int64_t)n;
    case DAXFS_SRC_FD:
        while (k < n) {
            off_t off = (off_t)(d->src_offset + done + k);
            ssize_t r = to ? pread(d->fd, pm + k, n - k, off)
                           : pwrite(d->fd, pm + k, n - k, off);

            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0)
                return -errno;
            if (r == 0)
                break;  /* EOF on read */
            k += (uint64_t)r;
        }
        return (int64_t)k;
    }
    return -EINVAL;
}

static void job_run(struct daxfs_core *c, struct dma_job *j)
{
    uint64_t done = 0, off = j->first_off, len = j->d.length, id = j->id;
    int64_t status = 0;

    for (uint64_t i = 0; i < j->nruns && done < len; i++) {
        uint64_t span = j->runs[i].count * DAXFS_PAGE_SIZE - off;
        uint64_t n = len - done < span ? len - done : span;
        char *pm = c->base + (j->runs[i].pfn << PAGE_SHIFT) + off;
        uint64_t bad = 0;
        int64_t r = copy_segment(j, pm, n, done, &bad);

        off = 0;
        if (r < 0) {
            status = r;
            done += bad;
            break;
        }
        done += (uint64_t)r;
        if ((uint64_t)r < n)
            break;  /* EOF */
    }
    job_release(c, j);      /* before posting: completion implies unpinned */
    if (status < 0)
        atomic_fetch_add(&c->dma.failed, 1);
    atomic_fetch_add(&c->dma.completed, 1);
    atomic_fetch_add(&c->dma.bytes, done);
    post(c, id, status, done);
}

struct worker_arg {
    struct daxfs_core *c;
    uint32_t slot;
};

static void *worker(void *arg)
{
    struct daxfs_core *c = ((struct worker_arg *)arg)->c;
    uint32_t slot = ((struct worker_arg *)arg)->slot;
    struct dx_dma *d = &c->dma;

    free(arg);
    pthread_mutex_lock(&d->lock);
    for (;;) {
        struct dma_job *j;
        struct timespec ts;
        uint64_t delay;

        while (!d->head && !d->stopping)
            pthread_cond_wait(&d->queue_cv, &d->lock);
        if (!d->head)
            break;      /* stopping and nothing queued */
        j = d->head;
        d->head = j->next;
        if (!d->head)
            d->tail = NULL;
        atomic_fetch_sub(&d->queued, 1);
        atomic_fetch_add(&d->nrunning, 1);
        d->running[slot] = j->id;

        /* Injected delay: a timed wait that shutdown can cut short. */
        delay = j->d.delay_ns + atomic_load(&d->delay_ns);
        if (delay) {
            deadline_after(&ts, delay);
            while (!d->stopping &&
                   pthread_cond_timedwait(&d->delay_cv, &d->lock, &ts) != ETIMEDOUT)
                ;
        }
        pthread_mutex_unlock(&d->lock);

        job_run(c, j);

        pthread_mutex_lock(&d->lock);
        d->running[slot] = 0;
        atomic_fetch_sub(&d->nrunning, 1);
    }
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

/* ---- submit / cancel ---- */

static int64_t job_prepare(struct daxfs_core *c, const struct daxfs_dma_desc *d,
                           struct dma_job *j)
{
    uint64_t first, npages;
    int64_t r;

    if (!c->base || d->length == 0 ||
        (d->dir != DAXFS_DMA_TO_PMEM && d->dir != DAXFS_DMA_FROM_PMEM))
        return -EINVAL;
    if (d->offset > UINT64_MAX - d->length)
        return -EINVAL;
    first = d->offset >> PAGE_SHIFT;
    npages = ((d->offset + d->length - 1) >> PAGE_SHIFT) - first + 1;
    j->first_off = d->offset & (DAXFS_PAGE_SIZE - 1);

    switch (d->src) {
    case DAXFS_SRC_BUF:
        if (!d->buf)
            return -EINVAL;
        j->mem = d->buf;
        break;
    case DAXFS_SRC_FD:
        if (d->fd < 0)
            return -EBADF;
        break;
    case DAXFS_SRC_PATTERN:
        break;
    case DAXFS_SRC_SHM: {
        uint64_t skew = d->src_offset & (uint64_t)(sysconf(_SC_PAGESIZE) - 1);
        int prot = d->dir == DAXFS_DMA_TO_PMEM ? PROT_READ : PROT_READ | PROT_WRITE;

        if (d->fd < 0)
            return -EBADF;
        j->maplen = d->length + skew;
        j->map = mmap(NULL, j->maplen, prot, MAP_SHARED, d->fd,
                      (off_t)(d->src_offset - skew));
        if (j->map == MAP_FAILED) {
            j->map = NULL;
            return -errno;
        }
        j->mem = (char *)j->map + skew;
        break;
    }
    default:
        return -EINVAL;
    }

    if (d->target == DAXFS_TGT_FILE) {
        r = pm_pin_file_runs(c, d->ino, first, npages, &j->runs, &j->nruns);
        if (r < 0)
            return r;
    } else if (d->target == DAXFS_TGT_PFN) {
        if (!range_ok(d->pfn, first, c->npages) ||
            !range_ok(d->pfn + first, npages, c->npages))
            return -EINVAL;
        j->runs = malloc(sizeof(*j->runs));
        if (!j->runs)
            return -ENOMEM;
        r = pt_pin(c, d->pfn + first, npages, PIN_REF, 0, 0);
        if (r < 0)
            return r;
        j->runs[0] = (struct daxfs_run){ d->pfn + first, npages };
        j->nruns = 1;
    } else {
        return -EINVAL;
    }
    j->npinned = npages;
    atomic_fetch_add(&c->dma.pinned_pages, npages);
    return 0;
}

int64_t daxfs_dma_submit(daxfs_core *c, const struct daxfs_dma_desc *desc)
{
    struct dx_dma *d = &c->dma;
    struct dma_job *j = calloc(1, sizeof(*j));
    int64_t r;

    if (!j)
        return -ENOMEM;
    j->d = *desc;
    r = job_prepare(c, &j->d, j);
    if (r < 0) {
        job_release(c, j);  /* nruns == 0 unless pinned: drops map/runs */
        return r;
    }
    j->id = atomic_fetch_add(&d->next_id, 1) + 1;

    pthread_mutex_lock(&d->lock);
    if (d->stopping || d->nthreads == 0) {
        pthread_mutex_unlock(&d->lock);
        job_release(c, j);
        return -ESHUTDOWN;
    }
    if (d->tail)
        d->tail->next = j;
    else
        d->head = j;
    d->tail = j;
    atomic_fetch_add(&d->queued, 1);
    atomic_fetch_add(&d->submitted, 1);
    r = (int64_t)j->id;
    pthread_cond_signal(&d->queue_cv);
    pthread_mutex_unlock(&d->lock);
    return r;
}

int daxfs_dma_cancel(daxfs_core *c, uint64_t id)
{
    struct dx_dma *d = &c->dma;
    struct dma_job *prev = NULL, *j;
    int r = -ENOENT;

    pthread_mutex_lock(&d->lock);
    for (j = d->head; j && j->id != id; j = j->next)
        prev = j;
    if (j) {
        if (prev)
            prev->next = j->next;
        else
            d->head = j->next;
        if (d->tail == j)
            d->tail = prev;
        atomic_fetch_sub(&d->queued, 1);
        r = 0;
    }
    for (uint32_t i = 0; !j && i < d->nthreads; i++)
        if (d->running[i] == id)
            r = -EBUSY;
    pthread_mutex_unlock(&d->lock);
    if (j)
        job_cancel(c, j);
    return r;
}

void daxfs_dma_set_delay(daxfs_core *c, uint64_t ns)
{
    atomic_store(&c->dma.delay_ns, ns);
}

/* ---- lifecycle ---- */

int dma_init(struct daxfs_core *c, uint32_t nthreads)
{
    struct dx_dma *d = &c->dma;
    pthread_condattr_t ca;
    sigset_t all, old;
    int r = 0;

    pthread_mutex_init(&d->lock, NULL);
    pthread_mutex_init(&d->cq_lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&d->queue_cv, &ca);
    pthread_cond_init(&d->delay_cv, &ca);
    pthread_cond_init(&d->cq_cv, &ca);
    pthread_condattr_destroy(&ca);
    d->inited = true;
    d->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (d->efd < 0)
        return -errno;
    d->running = calloc(nthreads ? nthreads : 1, sizeof(*d->running));
    d->threads = calloc(nthreads ? nthreads : 1, sizeof(*d->threads));
    if (!d->running || !d->threads)
        return -ENOMEM;

    /* Workers block all signals: Python's handlers belong to its main
     * thread, and a signal landing in a worker would only add latency. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (uint32_t i = 0; i < nthreads; i++) {
        struct worker_arg *a = malloc(sizeof(*a));

        if (!a) {
            r = -ENOMEM;
            break;
        }
        a->c = c;
        a->slot = i;
        r = -pthread_create(&d->threads[i], NULL, worker, a);
        if (r) {
            free(a);
            break;
        }
        d->nthreads++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return r;
}

int64_t daxfs_dma_shutdown(daxfs_core *c)
{
    struct dx_dma *d = &c->dma;
    struct dma_job *queued;
    int64_t n = 0;

    pthread_mutex_lock(&d->lock);
    if (d->stopping) {
        pthread_mutex_unlock(&d->lock);
        return 0;
    }
    d->stopping = true;
    queued = d->head;
    d->head = d->tail = NULL;
    pthread_cond_broadcast(&d->queue_cv);
    pthread_cond_broadcast(&d->delay_cv);
    pthread_mutex_unlock(&d->lock);

    while (queued) {
        struct dma_job *j = queued;

        queued = j->next;
        atomic_fetch_sub(&d->queued, 1);
        job_cancel(c, j);
        n++;
    }
    for (uint32_t i = 0; i < d->nthreads; i++)
        pthread_join(d->threads[i], NULL);

    pthread_mutex_lock(&d->cq_lock);
    d->joined = true;
    pthread_cond_broadcast(&d->cq_cv);
    pthread_mutex_unlock(&d->cq_lock);

    if (atomic_load(&d->pinned_pages) != 0)
        DX_BUG("%llu page pins left by the DMA engine after shutdown",
               (unsigned long long)atomic_load(&d->pinned_pages));
    return n;
}

void dma_destroy(struct daxfs_core *c)
{
    struct dx_dma *d = &c->dma;

    if (!d->inited)
        return;
    if (d->threads)
        daxfs_dma_shutdown(c);
    /* Let threads still inside daxfs_dma_wait_posted leave. */
    pthread_mutex_lock(&d->cq_lock);
    while (d->cq_sleepers)
        pthread_cond_wait(&d->cq_cv, &d->cq_lock);
    pthread_mutex_unlock(&d->cq_lock);

    if (d->efd >= 0)
        close(d->efd);
    free(d->cq);
    free(d->running);
    free(d->threads);
    pthread_mutex_destroy(&d->lock);
    pthread_mutex_destroy(&d->cq_lock);
    pthread_cond_destroy(&d->queue_cv);
    pthread_cond_destroy(&d->delay_cv);
    pthread_cond_destroy(&d->cq_cv);
}
