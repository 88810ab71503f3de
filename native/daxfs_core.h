/*
 * daxfs_core.h - public interface of the daxfs native core.
 *
 * The core holds, in C and without a Python object per page:
 *   - the page table ("struct page" for every pmem page: pin count, owner),
 *   - the pfn map (per inode: file page index -> pmem page frame),
 *   - layout-break blocks on file ranges (refuse new pins),
 *   - event-driven "range became unpinned" waiters (one eventfd each),
 *   - the DMA engine (C worker threads copying into/out of pinned pages),
 *   - the DMA-vs-truncate collision detector (bounded ring of records).
 *
 * This header is also the cffi cdef: native/build_core.py feeds cffi the
 * text between the CDEF-BEGIN and CDEF-END markers, so it may only contain
 * what cffi's parser accepts there (integer #defines, typedefs, plain
 * structs, prototypes).  Keep includes and guards outside the markers.
 *
 * Conventions:
 *   - every function that can fail returns 0 or a non-negative result on
 *     success and -errno on failure; nothing is changed on failure unless
 *     the comment says otherwise;
 *   - all page-table / map operations take ranges (first, count);
 *     count == 0 is a no-op that succeeds;
 *   - "pfn" is a page frame number inside the pmem device (byte offset /
 *     DAXFS_PAGE_SIZE); "index" is a page index inside a file;
 *   - inode number 0 means "no owner" and is never a valid inode;
 *   - every function is thread-safe, except daxfs_core_free(), which must
 *     not race with any other call on the same core.
 *
 * Error codes used consistently:
 *   EINVAL  bad argument / range outside the device
 *   EFBIG   file page index >= DAXFS_MAX_FILE_PAGES
 *   EFAULT  a page of a file range is a hole (not mapped)
 *   ESTALE  a page's owner is not the expected (inode, index)
 *   EAGAIN  the file range is blocked by a layout break: no new pins
 *   EEXIST  map_extent over an already mapped index
 *   EOVERFLOW  a page's pin count would exceed DAXFS_MAX_PINS
 *   ERANGE  unpin of a page that is not pinned (a caller bug)
 *   ESHUTDOWN  DMA engine stopped
 */
#ifndef DAXFS_CORE_H
#define DAXFS_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* CDEF-BEGIN */

/* Bump on any change of this interface or of behaviour the Python side
 * relies on; daxfs/native.py refuses a core of another version. */
#define DAXFS_CORE_VERSION 3

#define DAXFS_PAGE_SIZE 4096
/* File page indexes are stored in 32 bits in the page table (the same
 * 16 TiB file size limit as ext4 with 4 KiB blocks). */
#define DAXFS_MAX_FILE_PAGES 4294967296
/* Pin count per page is 24 bits; the top 8 bits of the word are flags. */
#define DAXFS_MAX_PINS 16777215

/* Page flags (daxfs_page_info.flags). */
#define DAXFS_PG_ORPHAN 1   /* owner was cleared while pinned; cleared
                               again when the last pin drops */

/* Collision kinds. */
#define DAXFS_COLL_FREE 1   /* owner cleared (block freed) while pinned */
#define DAXFS_COLL_REUSE 2  /* pinned page given to another owner */

/* DMA descriptor fields. */
#define DAXFS_DMA_TO_PMEM 1     /* source -> pmem (a device write) */
#define DAXFS_DMA_FROM_PMEM 2   /* pmem -> destination (a device read) */

#define DAXFS_TGT_FILE 1        /* ino + byte offset in the file */
#define DAXFS_TGT_PFN 2         /* pfn + byte offset; pages must be pinned */

#define DAXFS_SRC_BUF 1         /* caller memory at buf */
#define DAXFS_SRC_SHM 2         /* shared memory: fd + offset, mapped by C */
#define DAXFS_SRC_FD 3          /* pread/pwrite on fd at offset */
#define DAXFS_SRC_PATTERN 4     /* generated from seed (write) / verified (read) */

typedef struct daxfs_core daxfs_core;
typedef struct daxfs_waiter daxfs_waiter;

struct daxfs_page_info {
    uint32_t pins;
    uint32_t flags;
    uint64_t ino;       /* 0 = free */
    uint64_t index;     /* file page index, meaningful when ino != 0 */
};

struct daxfs_run {
    uint64_t pfn;
    uint64_t count;
};

struct daxfs_extent {
    uint64_t index;     /* first file page index */
    uint64_t pfn;       /* first pmem page */
    uint64_t count;     /* pages */
};

struct daxfs_collision {
    uint64_t seq;       /* 0, 1, 2, ... over the life of the core */
    uint64_t pfn;
    uint64_t ino;       /* owner before the free / reuse */
    uint64_t index;
    uint64_t new_ino;   /* COLL_REUSE: the new owner; else 0 */
    uint32_t pins;      /* pin count at the time */
    uint32_t kind;      /* DAXFS_COLL_* */
    int64_t time_ns;    /* CLOCK_REALTIME */
};

struct daxfs_dma_desc {
    uint32_t dir;           /* DAXFS_DMA_* */
    uint32_t target;        /* DAXFS_TGT_* */
    uint64_t ino;           /* TGT_FILE */
    uint64_t pfn;           /* TGT_PFN */
    uint64_t offset;        /* TGT_FILE: byte offset in file;
                               TGT_PFN: byte offset from the start of pfn */
    uint64_t length;        /* bytes, > 0 */
    uint32_t src;           /* DAXFS_SRC_* */
    int32_t fd;             /* SRC_SHM, SRC_FD */
    void *buf;              /* SRC_BUF: must stay valid until completion */
    uint64_t src_offset;    /* SRC_SHM / SRC_FD: byte offset in fd;
                               SRC_PATTERN: offset in the pattern stream */
    uint64_t seed;          /* SRC_PATTERN */
    uint64_t delay_ns;      /* injected before copying ("bio_delay") */
};

struct daxfs_completion {
    uint64_t id;
    int64_t status;         /* 0 or -errno (-ECANCELED, -EILSEQ, ...) */
    uint64_t bytes;         /* bytes transferred (or verified) */
};

struct daxfs_stats {
    uint64_t npages;
    uint64_t pinned_pages;      /* pages with pin count > 0 now */
    uint64_t pins_held;         /* sum of all pin counts now */
    uint64_t pins_taken;        /* page pins taken, cumulative */
    uint64_t pins_released;     /* page pins dropped, cumulative */
    uint64_t collisions;        /* collision records, cumulative */
    uint64_t late_unpins;       /* last pin dropped on an orphaned page */
    uint64_t inodes;            /* inodes with a map / block / waiter */
    uint64_t waiters;           /* registered now */
    uint64_t waiters_fired;     /* cumulative */
    uint64_t blocks;            /* layout-break blocks active now */
    uint64_t dma_threads;
    uint64_t dma_submitted;
    uint64_t dma_completed;     /* executed (status 0 or an I/O error) */
    uint64_t dma_cancelled;
    uint64_t dma_failed;        /* completed with status < 0 (not cancel) */
    uint64_t dma_bytes;
    uint64_t dma_queued;        /* waiting for a worker now */
    uint64_t dma_running;       /* in a worker now */
    uint64_t dma_pinned_pages;  /* page pins held by descriptors now */
    uint64_t dma_global_delay_ns;
    uint64_t fast_reads;        /* requests served by the fast path */
    uint64_t fast_writes;
    uint64_t fast_read_bytes;
    uint64_t fast_write_bytes;
    uint64_t fast_fallbacks;    /* handed back (-EAGAIN) to the slow path */
    uint64_t fast_pending;      /* inodes with stamps not yet drained */
    uint64_t fast_getattrs;     /* attributes answered from a published copy */
};

/* One piece of a fast read: dev_off into the pmem mapping, or
 * DAXFS_FAST_ZEROS for a hole (the reader supplies zeros). */
#define DAXFS_FAST_ZEROS 0xFFFFFFFFFFFFFFFF
#define DAXFS_FAST_MAX_SEGS 32

struct daxfs_fast_seg {
    uint64_t dev_off;
    uint64_t len;
};

/* What a fast read pinned; give it back to daxfs_fast_read_end(). */
struct daxfs_fast_read {
    uint64_t nsegs;
    struct daxfs_fast_seg segs[DAXFS_FAST_MAX_SEGS];
    uint64_t nruns;
    struct daxfs_run runs[DAXFS_FAST_MAX_SEGS];
};

/* Timestamps the fast path left for the filesystem to fold in. */
struct daxfs_fast_stamp {
    uint64_t ino;
    int64_t wtime;      /* last fast write, CLOCK_REALTIME ns; 0 = none */
    int64_t rtime;      /* last fast read that was due an atime; 0 = none */
};

/* An inode's attributes as the filesystem answers getattr (times in
 * CLOCK_REALTIME ns, blocks in 512-byte units). */
struct daxfs_attr {
    uint64_t ino;
    uint64_t size;
    uint64_t blocks;
    int64_t atime, mtime, ctime;
    uint32_t mode, nlink, uid, gid, rdev;
};

uint32_t daxfs_core_version(void);

/* Create a core for npages pmem pages whose mapping starts at base (may be
 * 0 when no DMA will be done) with dma_threads worker threads.  The page
 * table is MAP_NORESERVE anonymous memory: untouched pages cost no RSS. */
int daxfs_core_new(uintptr_t base, uint64_t npages, uint32_t dma_threads,
                   daxfs_core **out);
/* Shut the DMA engine down (see daxfs_dma_shutdown), free everything.
 * Waiters still attached to an inode are freed too (fds closed); free the
 * others (detached by daxfs_drop_inode) before. */
void daxfs_core_free(daxfs_core *c);
void daxfs_core_stats(daxfs_core *c, struct daxfs_stats *out);

/* ---- page table (pfn ranges) ---- */

/* Give pages pfn..pfn+count-1 to (ino, index..index+count-1).  A pinned
 * page that changes owner is recorded as a COLL_REUSE collision (the page
 * still changes owner).  Returns the number of collisions recorded. */
int64_t daxfs_set_owner(daxfs_core *c, uint64_t pfn, uint64_t count,
                        uint64_t ino, uint64_t index);
/* Free pages (owner := none).  A page with pins > 0 is a COLL_FREE
 * collision: recorded, marked DAXFS_PG_ORPHAN, and still freed.
 * Returns the number of collisions recorded. */
int64_t daxfs_clear_owner(daxfs_core *c, uint64_t pfn, uint64_t count);
/* Pin pages whose owner must be (ino, index + i); all or nothing.  Like
 * daxfs_pin_file, fails with -EAGAIN on a blocked range of ino.
 * Returns count. */
int64_t daxfs_pin_pfn(daxfs_core *c, uint64_t pfn, uint64_t count,
                      uint64_t ino, uint64_t index);
/* Drop one pin on each page (owner not checked: a bio's put_page must work
 * after a truncate).  -ERANGE if a page is not pinned (nothing changed). */
int64_t daxfs_unpin_pfn(daxfs_core *c, uint64_t pfn, uint64_t count);
/* First pfn with pins > 0 in the range, or -1. */
int64_t daxfs_first_busy_pfn(daxfs_core *c, uint64_t pfn, uint64_t count);
/* Number of pages with pins > 0 in the range. */
int64_t daxfs_count_pinned(daxfs_core *c, uint64_t pfn, uint64_t count);
int daxfs_page_info(daxfs_core *c, uint64_t pfn, struct daxfs_page_info *out);

/* ---- pfn map (per inode extents) ---- */

/* Map file pages index..index+count-1 to pfn..pfn+count-1.  -EEXIST if any
 * index is already mapped.  Does not touch the page table owner. */
int daxfs_map_extent(daxfs_core *c, uint64_t ino, uint64_t index,
                     uint64_t pfn, uint64_t count);
/* Unmap file pages; extents partially covered are split.  Returns the
 * number of pages that were mapped. */
int64_t daxfs_unmap_range(daxfs_core *c, uint64_t ino, uint64_t index,
                          uint64_t count);
/* Forget an inode: its map and blocks.  Its waiters fire and are detached
 * (they still have to be freed).  Returns 0, or -ENOENT. */
int daxfs_drop_inode(daxfs_core *c, uint64_t ino);
/* 0 and (*pfn, *run) = mapped run starting at index; or -ENODATA for a
 * hole, *run = pages until the next extent (UINT64_MAX: none). */
int daxfs_lookup(daxfs_core *c, uint64_t ino, uint64_t index,
                 uint64_t *pfn, uint64_t *run);
/* Copy up to max extents starting at the first one ending after index.
 * Returns the number copied. */
int64_t daxfs_get_extents(daxfs_core *c, uint64_t ino, uint64_t index,
                          struct daxfs_extent *out, uint64_t max);

/* Pin the pages backing file pages index..index+count-1 through the map.
 * Fails, nothing pinned, with -EAGAIN (blocked), -EFAULT (hole), -ESTALE
 * (page table owner disagrees with the map).  If runs is not NULL the pinned
 * pfn runs are stored there in file order (-E2BIG, nothing pinned, if more
 * than max_runs are needed) and *nruns is set.  Returns count. */
int64_t daxfs_pin_file(daxfs_core *c, uint64_t ino, uint64_t index,
                       uint64_t count, struct daxfs_run *runs,
                       uint64_t max_runs, uint64_t *nruns);
/* Unpin through the map; -EFAULT if the range has a hole, -ERANGE if a
 * page is not pinned (nothing changed). */
int64_t daxfs_unpin_file(daxfs_core *c, uint64_t ino, uint64_t index,
                         uint64_t count);
/* First pinned file index in the range, or -1 (holes are not busy). */
int64_t daxfs_busy_file(daxfs_core *c, uint64_t ino, uint64_t index,
                        uint64_t count);
/* Refuse new file pins (-EAGAIN) on the range until daxfs_unblock().
 * Blocks nest and may overlap.  *token identifies this block. */
int daxfs_block_range(daxfs_core *c, uint64_t ino, uint64_t index,
                      uint64_t count, uint64_t *token);
int daxfs_unblock(daxfs_core *c, uint64_t ino, uint64_t token);

/* ---- waiters ---- */

/* Register interest in file pages index..index+count-1 of ino.  The
 * waiter's eventfd (daxfs_waiter_fd) becomes readable exactly when no
 * mapped page of the range is pinned any more: at once if none is pinned
 * now, else when the last pin in the range drops.  One-shot: it stays
 * readable until freed.  Exact as long as no new pins enter the range
 * (block it first); otherwise it fires on the first observed idle moment. */
int daxfs_waiter_new(daxfs_core *c, uint64_t ino, uint64_t index,
                     uint64_t count, daxfs_waiter **out);
int daxfs_waiter_fd(daxfs_waiter *w);
int daxfs_waiter_fired(daxfs_waiter *w);
void daxfs_waiter_free(daxfs_core *c, daxfs_waiter *w);

/* ---- collisions ---- */

/* Copy up to max records with seq >= since (oldest first) into out.  The
 * ring holds the last 1024 records; older ones are lost (the first
 * returned seq tells how many).  *next is the seq to pass next time.
 * Returns the number copied. */
int64_t daxfs_collisions_since(daxfs_core *c, uint64_t since,
                               struct daxfs_collision *out, uint64_t max,
                               uint64_t *next);

/* ---- DMA engine ---- */

/* Validate, pin the target (through the map for TGT_FILE; an extra
 * reference on already pinned pages for TGT_PFN), map SRC_SHM, queue.
 * Errors come back here, synchronously.  Returns the descriptor id (> 0). */
int64_t daxfs_dma_submit(daxfs_core *c, const struct daxfs_dma_desc *d);
/* Cancel a queued descriptor: its pins drop and it completes with
 * -ECANCELED.  -EBUSY if it already started, -ENOENT if unknown or done. */
int daxfs_dma_cancel(daxfs_core *c, uint64_t id);
/* eventfd that is readable while completions may be waiting. */
int daxfs_dma_eventfd(daxfs_core *c);
/* Drain the eventfd, then move up to max completions to out.  *posted is
 * set to the number of completions ever posted at that moment (for
 * daxfs_dma_wait_posted).  Returns the number copied. */
int64_t daxfs_dma_reap(daxfs_core *c, struct daxfs_completion *out,
                       uint64_t max, uint64_t *posted);
/* Block until more than `posted` completions were ever posted:
 * 0, -ETIMEDOUT (timeout_ns < 0: no timeout), -ESHUTDOWN. */
int daxfs_dma_wait_posted(daxfs_core *c, uint64_t posted, int64_t timeout_ns);
void daxfs_dma_set_delay(daxfs_core *c, uint64_t ns);
/* Stop accepting, cancel queued descriptors, interrupt delays (the copy
 * then runs at once), join the workers.  Aborts if a DMA pin is left.
 * Idempotent.  Returns the number of descriptors cancelled. */
int64_t daxfs_dma_shutdown(daxfs_core *c);
/* "memcpy": how the engine moves bytes (no non-temporal stores). */
const char *daxfs_dma_copy_method(void);

/* Pattern for SRC_PATTERN: little-endian 64-bit words, word k of the stream
 * is splitmix64(seed + k); bytes [start, start+len) of the stream. */
void daxfs_pattern_fill(void *buf, uint64_t len, uint64_t seed, uint64_t start);
/* First mismatching byte offset (relative to buf), or -1. */
int64_t daxfs_pattern_check(const void *buf, uint64_t len, uint64_t seed,
                            uint64_t start);

/* ---- fast data path (fastpath.c) ----
 *
 * Reads, and overwrites inside the file size of already mapped pages, served
 * from C threads without Python: the filesystem publishes an inode (its
 * complete pfn map is in the core, its size is known), and keeps the size
 * current.  Pages are pinned for the copy exactly like a DMA, so a truncate
 * or punch (block_range + wait for pins) never frees a page under a copy.
 * A request the fast path cannot serve returns -EAGAIN, nothing done, and
 * goes to the slow path.  Timestamps are left as stamps for the filesystem
 * to fold in (daxfs_fast_drain), so getattr / fsync stay exact. */

/* Publish ino with its size; atime_next: a read at or after this time
 * (CLOCK_REALTIME ns) needs an atime update (INT64_MAX: never, e.g. ro).
 * The caller guarantees the pfn map of ino is complete while published. */
int daxfs_fast_publish(daxfs_core *c, uint64_t ino, uint64_t size,
                       int64_t atime_next);
/* -ENOENT if ino has no core inode (nothing published). */
int daxfs_fast_set_size(daxfs_core *c, uint64_t ino, uint64_t size);
int daxfs_fast_set_atime_next(daxfs_core *c, uint64_t ino, int64_t atime_next);
int daxfs_fast_unpublish(daxfs_core *c, uint64_t ino);
/* Python vouches that ino has no security.capability xattr (on = 1) or
 * withdraws that; the kernel asks for it before every page-cache write
 * (file_remove_privs), and the readers answer ENODATA from this. */
int daxfs_fast_set_nocaps(daxfs_core *c, uint64_t ino, int on);
/* 1 if ino is published and vouched to have no security.capability. */
int daxfs_fast_nocaps(daxfs_core *c, uint64_t ino);
/* 1 if ino is published (tests and status). */
int daxfs_fast_published(daxfs_core *c, uint64_t ino);
/* Allow fast writes (a read-only mount, or one gone read-only, does not). */
void daxfs_fast_set_writable(daxfs_core *c, int on);
/* Number of inodes with stamps not yet drained: one atomic load. */
uint64_t daxfs_fast_pending(daxfs_core *c);
/* Move up to max stamps (clearing them) to out; returns the number. */
int64_t daxfs_fast_drain(daxfs_core *c, struct daxfs_fast_stamp *out,
                         uint64_t max);

/* Attributes (any inode, not only published files).  The filesystem
 * publishes a copy after it changed an inode, and clears it the moment it
 * changes one; a fast write or a read due an atime clears it too (their
 * stamps are not in the copy).  set_attr publishes nothing (-EAGAIN) while
 * the inode has stamps not yet drained. */
int daxfs_fast_set_attr(daxfs_core *c, const struct daxfs_attr *a);
int daxfs_fast_clear_attr(daxfs_core *c, uint64_t ino);
/* Copy ino's published attributes to *out: 0, or -EAGAIN (none: slow path). */
int daxfs_fast_getattr(daxfs_core *c, uint64_t ino, struct daxfs_attr *out);

/* Read [off, off+len) of ino: pins the mapped pages, fills rd with the
 * pieces (clipped at the file size), returns the byte count (0 at or past
 * EOF), or -EAGAIN (not published, blocked, too fragmented: slow path).
 * The pages stay pinned until daxfs_fast_read_end(rd). */
int64_t daxfs_fast_read_begin(daxfs_core *c, uint64_t ino, uint64_t off,
                              uint64_t len, struct daxfs_fast_read *rd);
void daxfs_fast_read_end(daxfs_core *c, struct daxfs_fast_read *rd);
/* Overwrite [off, off+len) of ino with src: all of it must be mapped and
 * inside the size.  Returns len, or -EAGAIN (slow path, nothing written). */
int64_t daxfs_fast_write(daxfs_core *c, uint64_t ino, uint64_t off,
                         const void *src, uint64_t len);

/* CDEF-END */

#endif /* DAXFS_CORE_H */
