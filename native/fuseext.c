/*
 * fuseext.c - add FUSE operations and INIT flags that pyfuse3 3.5 on
 * libfuse 3.14 cannot express.
 *
 * How it hooks in
 * ---------------
 * daxfs.fuse_ext.install() loads this module with RTLD_GLOBAL before pyfuse3
 * is imported.  Its exported fuse_session_new / fuse_session_mount /
 * fuse_session_destroy therefore come first in the global lookup scope and
 * pyfuse3's calls bind to them; each wrapper forwards to libfuse's real
 * function found with dlsym(RTLD_NEXT).  (An unversioned definition satisfies
 * pyfuse3's versioned reference fuse_session_new@FUSE_3.0.)
 *
 *  - fuse_session_new: passes libfuse a copy of pyfuse3's
 *    struct fuse_lowlevel_ops with fallocate / lseek / copy_file_range filled
 *    in (only where pyfuse3 left them NULL), init wrapped, and setattr
 *    wrapped: size changes are queued for Python like fallocate (so a
 *    truncate waiting for DMA pins can see FUSE_INTERRUPT, which pyfuse3
 *    never reports), everything else goes to pyfuse3's handler.
 *  - fuse_session_mount: after the real mount, installs a custom io
 *    (fuse_session_custom_io, libfuse >= 3.13) on the same /dev/fuse fd.  Its
 *    read is plain read(2) that remembers the FUSE_INIT request; its writev
 *    is plain writev(2) except for the INIT reply, which it patches (see
 *    write_init_reply) to request flags libfuse 3.14 has no API for.
 *  - fuse_session_destroy: answers requests still outstanding (so none
 *    refers to a freed session) before destroying.
 *
 * Threading
 * ---------
 * The lowlevel handlers run inside fuse_session_process_buf(), called by
 * pyfuse3's trio thread with the GIL held.  They must not call into Python:
 * they only append an event to a queue and bump an eventfd; a trio task in
 * daxfs/fuse_ext.py waits on the eventfd, drains the queue and later answers
 * through fuseext_reply_*().  The interrupt callback (fuse_req_interrupt_func)
 * is called by libfuse with the request's lock held, possibly synchronously
 * from fuse_req_interrupt_func() itself.  Everything here is guarded by one
 * mutex that is never held while calling into libfuse, so no lock-order
 * cycle with libfuse's req->lock / se->lock can form.  One session per
 * process (pyfuse3 has the same limit).
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 314

#include <fuse_lowlevel.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "daxfs_core.h"   /* the fast path's types; called through pointers */
#include "fuseext.h"

#define EXPORT __attribute__((visibility("default")))

/*
 * FUSE wire structs (include/uapi/linux/fuse.h).  Declared here because
 * libfuse does not install its fuse_kernel.h and Debian 12's linux/fuse.h is
 * protocol 7.38 (no FUSE_DIRECT_IO_ALLOW_MMAP).  Layouts only ever grow at
 * the end; the fields we use and the protocol minor that introduced them:
 *
 * fuse_in_header (40 bytes, every request):
 *   0 len u32 | 4 opcode u32 | 8 unique u64 | 16 nodeid u64 | 24 uid u32 |
 *   28 gid u32 | 32 pid u32 | 36 total_extlen u16 | 38 padding u16
 * fuse_out_header (16 bytes, every reply):
 *   0 len u32 | 4 error s32 | 8 unique u64
 * fuse_init_in (request payload; 16 bytes before 7.36, 64 since):
 *   0 major | 4 minor | 8 max_readahead | 12 flags | 16 flags2 (7.36) | ...
 * fuse_init_out (reply payload; 24 bytes for minor < 23, 64 since 7.23):
 *   0 major u32 | 4 minor u32 | 8 max_readahead u32 | 12 flags u32 |
 *   16 max_background u16 | 18 congestion_threshold u16 | 20 max_write u32 |
 *   24 time_gran u32 | 28 max_pages u16 (7.28) | 30 map_alignment u16 |
 *   32 flags2 u32 (7.36) | 36 max_stack_depth u32 (7.40) |
 *   40 request_timeout u16 (7.43) | 42 unused
 * The 64-bit flag set is flags | (flags2 << 32), flags2 being valid only when
 * FUSE_INIT_EXT is set in flags (the kernel applies the same rule to both
 * the request and the reply).
 */
struct wire_in_header {
    uint32_t len;
    uint32_t opcode;
    uint64_t unique;
    uint64_t nodeid;
    uint32_t uid;
    uint32_t gid;
    uint32_t pid;
    uint16_t total_extlen;
    uint16_t padding;
};

struct wire_out_header {
    uint32_t len;
    int32_t error;
    uint64_t unique;
};

struct wire_init_in {
    uint32_t major;
    uint32_t minor;
    uint32_t max_readahead;
    uint32_t flags;
    uint32_t flags2;
    uint32_t unused[11];
};

struct wire_init_out {
    uint32_t major;
    uint32_t minor;
    uint32_t max_readahead;
    uint32_t flags;
    uint16_t max_background;
    uint16_t congestion_threshold;
    uint32_t max_write;
    uint32_t time_gran;
    uint16_t max_pages;
    uint16_t map_alignment;
    uint32_t flags2;
    uint32_t unused[7];
};

_Static_assert(sizeof(struct wire_in_header) == 40, "fuse_in_header layout");
_Static_assert(sizeof(struct wire_out_header) == 16, "fuse_out_header layout");
_Static_assert(offsetof(struct wire_init_in, flags2) == 16, "fuse_init_in layout");
_Static_assert(offsetof(struct wire_init_out, max_pages) == 28, "fuse_init_out layout");
_Static_assert(offsetof(struct wire_init_out, flags2) == 32, "fuse_init_out layout");
_Static_assert(sizeof(struct wire_init_out) == 64, "fuse_init_out layout");

struct wire_read_in {
    uint64_t fh;
    uint64_t offset;
    uint32_t size;
    uint32_t read_flags;
    uint64_t lock_owner;
    uint32_t flags;
    uint32_t padding;
};

struct wire_write_in {
    uint64_t fh;
    uint64_t offset;
    uint32_t size;
    uint32_t write_flags;
    uint64_t lock_owner;
    uint32_t flags;
    uint32_t padding;
};

struct wire_write_out {
    uint32_t size;
    uint32_t padding;
};

struct wire_forget_in {
    uint64_t nlookup;
};

struct wire_batch_forget_in {
    uint32_t count;
    uint32_t dummy;
};

struct wire_forget_one {
    uint64_t nodeid;
    uint64_t nlookup;
};

struct wire_release_in {
    uint64_t fh;
    uint32_t flags;
    uint32_t release_flags;
    uint64_t lock_owner;
};

_Static_assert(sizeof(struct wire_release_in) == 24, "fuse_release_in layout");

struct wire_getattr_in {
    uint32_t getattr_flags;
    uint32_t dummy;
    uint64_t fh;
};

struct wire_attr {
    uint64_t ino, size, blocks, atime, mtime, ctime;
    uint32_t atimensec, mtimensec, ctimensec;
    uint32_t mode, nlink, uid, gid, rdev, blksize, flags;
};

struct wire_attr_out {
    uint64_t attr_valid;
    uint32_t attr_valid_nsec;
    uint32_t dummy;
    struct wire_attr attr;
};

_Static_assert(sizeof(struct wire_getattr_in) == 16, "fuse_getattr_in layout");
_Static_assert(sizeof(struct wire_attr) == 88, "fuse_attr layout");
_Static_assert(sizeof(struct wire_attr_out) == 104, "fuse_attr_out layout");
_Static_assert(sizeof(struct wire_read_in) == 40, "fuse_read_in layout");
_Static_assert(sizeof(struct wire_write_in) == 40, "fuse_write_in layout");

#define WIRE_FUSE_FORGET 2                    /* opcodes */
#define WIRE_FUSE_GETATTR 3
#define WIRE_FUSE_RELEASE 18
#define WIRE_FUSE_RELEASEDIR 29
#define WIRE_FUSE_BATCH_FORGET 42
#define WIRE_FUSE_READ 15
#define WIRE_FUSE_WRITE 16
#define WIRE_FUSE_GETXATTR 22
#define WIRE_FUSE_INIT 26
#define WIRE_MAX_PAGES (1ULL << 22)           /* 7.28: max_pages is valid */
#define WIRE_INIT_EXT (1ULL << 30)            /* 7.36: flags2 is valid */
#define WIRE_DIRECT_IO_ALLOW_MMAP (1ULL << 36) /* 7.39 (was DIRECT_IO_RELAX):
                                                 MAP_SHARED on FOPEN_DIRECT_IO */
#define WIRE_MAX_MAX_PAGES 65535              /* max_pages is a u16 */

/* The header repeats libfuse's values so that cffi (and Python) see them. */
_Static_assert(FUSEEXT_SET_ATTR_MODE == FUSE_SET_ATTR_MODE, "to_set bits");
_Static_assert(FUSEEXT_SET_ATTR_UID == FUSE_SET_ATTR_UID, "to_set bits");
_Static_assert(FUSEEXT_SET_ATTR_GID == FUSE_SET_ATTR_GID, "to_set bits");
_Static_assert(FUSEEXT_SET_ATTR_SIZE == FUSE_SET_ATTR_SIZE, "to_set bits");
_Static_assert(FUSEEXT_SET_ATTR_ATIME == FUSE_SET_ATTR_ATIME, "to_set bits");
_Static_assert(FUSEEXT_SET_ATTR_MTIME == FUSE_SET_ATTR_MTIME, "to_set bits");
_Static_assert(FUSEEXT_SET_ATTR_ATIME_NOW == FUSE_SET_ATTR_ATIME_NOW, "to_set bits");
_Static_assert(FUSEEXT_SET_ATTR_MTIME_NOW == FUSE_SET_ATTR_MTIME_NOW, "to_set bits");
_Static_assert(FUSEEXT_SET_ATTR_CTIME == FUSE_SET_ATTR_CTIME, "to_set bits");

/* ---------------------------------------------------------------- state */

struct pending {              /* a request queued for Python, not answered */
    uint64_t id;
    fuse_req_t req;
    int interrupted;
    struct pending *next;
};

struct evnode {
    struct fuseext_event ev;
    struct evnode *next;
};

static struct {
    pthread_mutex_t lock;
    int efd;
    int accepting;
    uint64_t next_id;
    struct pending *pending;
    struct evnode *head, *tail;

    struct fuse_session *session;
    struct fuse_lowlevel_ops ops;  /* pyfuse3's ops plus ours */
    void (*fs_init)(void *userdata, struct fuse_conn_info *conn);
    /* pyfuse3's setattr: everything ll_setattr does not take over */
    void (*fs_setattr)(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
                       int to_set, struct fuse_file_info *fi);
    int take_setattr_size;      /* fuseext_set_setattr_size() */

    int cfg_allow_mmap;
    int cfg_max_pages;
    int init_pending;           /* INIT seen, reply not yet written */
    uint64_t init_unique;
    struct fuseext_info info;

    /* Reader threads (see "Reader threads" below).  devfd is the /dev/fuse
     * fd; while the threads run, the session's fd is qfd instead. */
    int devfd;
    int qfd;                    /* eventfd: slow requests queued */
    struct slowreq *qhead, *qtail;  /* under g.lock */
    int dev_gone;               /* a reader saw ENODEV (under g.lock) */
    int cfg_threads;
    int nthreads;
    pthread_t threads[FUSEEXT_MAX_THREADS];
    daxfs_core *core;
    char *core_base;            /* the pmem mapping the core's offsets index */
    int64_t (*read_begin)(daxfs_core *, uint64_t, uint64_t, uint64_t,
                          struct daxfs_fast_read *);
    void (*read_end)(daxfs_core *, struct daxfs_fast_read *);
    int64_t (*write)(daxfs_core *, uint64_t, uint64_t, const void *, uint64_t);
    int (*nocaps)(daxfs_core *, uint64_t);
    int (*getattr)(daxfs_core *, uint64_t, struct daxfs_attr *);
    uint64_t attr_valid_ns;     /* attr timeout of a fast GETATTR reply */
    _Atomic uint64_t fast_reads, fast_writes, fast_getattrs, slow_requests;
    _Atomic uint64_t slow_by_opcode[FUSEEXT_OPCODES]; /* the request mix Python sees */
    /* FORGET / RELEASE / RELEASEDIR taken here for Python to apply in bulk
     * (fuseext_take_deferred); protected by dlock. */
    pthread_mutex_t dlock;
    int defer;                  /* Python asked for it (fuseext_set_defer) */
    struct fuseext_deferred *dv;
    size_t dn, dcap;
    _Atomic uint64_t dpending;  /* == dn, readable without the lock */
    _Atomic uint64_t deferred;  /* ever taken */
} g = {
    .dlock = PTHREAD_MUTEX_INITIALIZER,
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .efd = -1,
    .accepting = 1,
    .devfd = -1,
    .qfd = -1,
};

struct slowreq {               /* a request a reader read for libfuse */
    struct slowreq *next;
    size_t len;
    char data[];
};

static void pool_put(struct slowreq *r);

static void warn(const char *msg)
{
    fprintf(stderr, "daxfs._fuseext: %s\n", msg);
}

/* Needs g.lock. */
static int ensure_efd(void)
{
    if (g.efd < 0)
        g.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return g.efd;
}

static void signal_efd(void)
{
    uint64_t one = 1;
    int fd;

    pthread_mutex_lock(&g.lock);
    fd = g.efd;
    pthread_mutex_unlock(&g.lock);
    /* EAGAIN only if the counter is saturated: the reader wakes anyway. */
    if (fd >= 0 && write(fd, &one, sizeof(one)) < 0) {
    }
}

/* Needs g.lock.  Returns 0 or -ENOMEM. */
static int push_event(const struct fuseext_event *ev)
{
    struct evnode *n = malloc(sizeof(*n));

    if (!n)
        return -ENOMEM;
    n->ev = *ev;
    n->next = NULL;
    if (g.tail)
        g.tail->next = n;
    else
        g.head = n;
    g.tail = n;
    return 0;
}

/* Needs g.lock. */
static struct pending *find_pending(uint64_t id)
{
    struct pending *p;

    for (p = g.pending; p; p = p->next)
        if (p->id == id)
            return p;
    return NULL;
}

/* Needs g.lock.  Unlinks and returns the entry, or NULL. */
static struct pending *take_pending(uint64_t id)
{
    struct pending **pp;

    for (pp = &g.pending; *pp; pp = &(*pp)->next) {
        if ((*pp)->id == id) {
            struct pending *p = *pp;
            *pp = p->next;
            return p;
        }
    }
    return NULL;
}

/* ------------------------------------------------------ request handlers */

/* Called by libfuse when FUSE_INTERRUPT arrives for a request of ours (or
 * right away from fuse_req_interrupt_func if it came earlier). */
static void on_interrupt(fuse_req_t req, void *data)
{
    uint64_t id = (uint64_t)(uintptr_t)data;
    struct pending *p;
    int queued = 0;

    (void)req;
    pthread_mutex_lock(&g.lock);
    p = find_pending(id);
    if (p && !p->interrupted) {
        struct fuseext_event ev;

        memset(&ev, 0, sizeof(ev));
        ev.id = id;
        ev.kind = FUSEEXT_EV_INTERRUPT;
        p->interrupted = 1;
        g.info.interrupts++;
        queued = push_event(&ev) == 0;
    }
    pthread_mutex_unlock(&g.lock);
    if (queued)
        signal_efd();
}

/* Queue `ev` (kind/id filled in here) for Python; the request stays
 * outstanding until fuseext_reply_*(ev->id). */
static void queue_request(fuse_req_t req, struct fuseext_event *ev)
{
    struct pending *p = malloc(sizeof(*p));
    const struct fuse_ctx *ctx = fuse_req_ctx(req);
    int err = 0;

    /* Cheap and valid only while the request lives: copy it now.  Python
     * uses the pid as the breaker's identity (EDEADLK on its own lease). */
    if (ctx) {
        ev->ctx_uid = (uint32_t)ctx->uid;
        ev->ctx_gid = (uint32_t)ctx->gid;
        ev->ctx_pid = (uint32_t)ctx->pid;
    }

    pthread_mutex_lock(&g.lock);
    if (!p)
        err = ENOMEM;
    else if (!g.accepting)
        err = EIO;          /* serve() has stopped: nobody would answer */
    else if (ensure_efd() < 0)
        err = EIO;
    if (!err) {
        ev->kind = FUSEEXT_EV_REQUEST;
        ev->id = ++g.next_id;
        if (push_event(ev) < 0)
            err = ENOMEM;
    }
    if (!err) {
        p->id = ev->id;
        p->req = req;
        p->interrupted = 0;
        p->next = g.pending;
        g.pending = p;
        g.info.requests++;
    }
    pthread_mutex_unlock(&g.lock);

    if (err) {
        free(p);
        fuse_reply_err(req, err);
        return;
    }
    /* Not under g.lock: may call on_interrupt synchronously. */
    fuse_req_interrupt_func(req, on_interrupt, (void *)(uintptr_t)ev->id);
    signal_efd();
}

static void ll_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset,
                         off_t length, struct fuse_file_info *fi)
{
    struct fuseext_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.op = FUSEEXT_OP_FALLOCATE;
    ev.ino = ino;
    ev.fh = fi ? fi->fh : 0;
    ev.mode = mode;
    ev.offset = offset;
    ev.length = length;
    queue_request(req, &ev);
}

static void ll_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
                     struct fuse_file_info *fi)
{
    struct fuseext_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.op = FUSEEXT_OP_LSEEK;
    ev.ino = ino;
    ev.fh = fi ? fi->fh : 0;
    ev.offset = off;
    ev.whence = whence;
    queue_request(req, &ev);
}

static void ll_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
                               struct fuse_file_info *fi_in, fuse_ino_t ino_out,
                               off_t off_out, struct fuse_file_info *fi_out,
                               size_t len, int flags)
{
    struct fuseext_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.op = FUSEEXT_OP_COPY_FILE_RANGE;
    ev.ino = ino_in;
    ev.fh = fi_in ? fi_in->fh : 0;
    ev.offset = off_in;
    ev.ino_out = ino_out;
    ev.fh_out = fi_out ? fi_out->fh : 0;
    ev.offset_out = off_out;
    ev.length = (int64_t)len;
    ev.flags = (uint64_t)(unsigned)flags;
    queue_request(req, &ev);
}

static int64_t timespec_ns(const struct timespec *ts)
{
    return (int64_t)ts->tv_sec * 1000000000LL + ts->tv_nsec;
}

/*
 * Size changes are taken over because a shrinking truncate may wait a long
 * time for DMA pins to drop, and only requests answered here get an
 * interrupt callback (pyfuse3 registers none, so its handler can never learn
 * that the caller got a signal).  Everything else — chmod, chown, utimes —
 * is passed to pyfuse3's handler unchanged, in this same call, so pyfuse3
 * still owns those replies.  The *_NOW times are left for Python to fill in,
 * as pyfuse3 does in its handler.
 */
static void ll_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
                       int to_set, struct fuse_file_info *fi)
{
    struct fuseext_event ev;
    int take;

    pthread_mutex_lock(&g.lock);
    take = g.take_setattr_size && g.accepting;
    pthread_mutex_unlock(&g.lock);
    if (!take || !(to_set & FUSE_SET_ATTR_SIZE) || !attr) {
        g.fs_setattr(req, ino, attr, to_set, fi);
        return;
    }
    memset(&ev, 0, sizeof(ev));
    ev.op = FUSEEXT_OP_SETATTR;
    ev.ino = ino;
    ev.has_fh = fi != NULL;
    ev.fh = fi ? fi->fh : 0;
    ev.to_set = to_set;
    ev.st_mode = (uint32_t)attr->st_mode;
    ev.st_uid = (uint32_t)attr->st_uid;
    ev.st_gid = (uint32_t)attr->st_gid;
    ev.st_size = (int64_t)attr->st_size;
    ev.st_atime_ns = timespec_ns(&attr->st_atim);
    ev.st_mtime_ns = timespec_ns(&attr->st_mtim);
    ev.st_ctime_ns = timespec_ns(&attr->st_ctim);
    queue_request(req, &ev);
}

/* Wraps the filesystem's init: with our custom io installed we provide no
 * splice_receive/splice_send, and libfuse 3.14 then already leaves the
 * SPLICE caps out of conn->capable (documented for fuse_session_custom_io);
 * clearing them from want as well guarantees every request goes through
 * io_read (no splice(2) from /dev/fuse behind our back). */
static void ll_init(void *userdata, struct fuse_conn_info *conn)
{
    int custom_io;

    if (g.fs_init)
        g.fs_init(userdata, conn);
    pthread_mutex_lock(&g.lock);
    custom_io = g.info.custom_io;
    pthread_mutex_unlock(&g.lock);
    if (custom_io)
        conn->want &= ~(unsigned)(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE |
                                  FUSE_CAP_SPLICE_MOVE);
    pthread_mutex_lock(&g.lock);
    g.info.conn_capable = conn->capable;
    g.info.conn_want = conn->want;
    pthread_mutex_unlock(&g.lock);
}

/* ------------------------------------------------------------ custom io */

static void note_init_request(const struct wire_in_header *h, const char *payload,
                              size_t len)
{
    struct wire_init_in in;
    uint64_t flags;

    memset(&in, 0, sizeof(in));
    memcpy(&in, payload, len < sizeof(in) ? len : sizeof(in));
    flags = in.flags;
    if (flags & WIRE_INIT_EXT)
        flags |= (uint64_t)in.flags2 << 32;

    pthread_mutex_lock(&g.lock);
    g.init_unique = h->unique;
    __atomic_store_n(&g.init_pending, 1, __ATOMIC_RELEASE);
    g.info.init_seen = 1;
    g.info.kernel_major = in.major;
    g.info.kernel_minor = in.minor;
    g.info.kernel_flags = flags;
    pthread_mutex_unlock(&g.lock);
}

/* The session's read while reader threads run: hand libfuse the oldest
 * request a reader queued.  Empty: EINTR, which pyfuse3 answers by waiting
 * for qfd again; after the device went away: ENODEV, which ends the
 * session like a read of /dev/fuse would. */
static ssize_t read_queued(void *buf, size_t buf_len)
{
    struct slowreq *r;
    uint64_t cnt;
    ssize_t n;
    int gone;

    pthread_mutex_lock(&g.lock);
    r = g.qhead;
    if (r) {
        g.qhead = r->next;
        if (!g.qhead)
            g.qtail = NULL;
    }
    gone = g.dev_gone;
    /* Readiness follows the queue; producers write qfd after linking. */
    if (!g.qhead && !gone && read(g.qfd, &cnt, sizeof(cnt)) < 0) {
    }
    pthread_mutex_unlock(&g.lock);
    if (!r) {
        errno = gone ? ENODEV : EINTR;
        return -1;
    }
    if (r->len > buf_len) {
        /* Cannot happen: readers read at most what libfuse's buffer holds. */
        warn("queued request larger than libfuse's buffer; dropped");
        pool_put(r);
        errno = EINTR;
        return -1;
    }
    memcpy(buf, r->data, r->len);
    n = (ssize_t)r->len;
    pool_put(r);
    return n;
}

static ssize_t io_read(int fd, void *buf, size_t buf_len, void *userdata)
{
    ssize_t n;
    int saved;

    (void)userdata;
    if (g.nthreads > 0 && fd == g.qfd)
        n = read_queued(buf, buf_len);
    else
        n = read(fd, buf, buf_len);
    saved = errno;
    /* INIT is always the first request (libfuse answers a major > 7 INIT
     * and the kernel sends another), so only its header is peeked. */
    if (n >= (ssize_t)(sizeof(struct wire_in_header) + 16)) {
        struct wire_in_header h;

        memcpy(&h, buf, sizeof(h));
        if (h.opcode == WIRE_FUSE_INIT)
            note_init_request(&h, (const char *)buf + sizeof(h),
                              (size_t)n - sizeof(h));
    }
    errno = saved;  /* libfuse 3.14 inspects it */
    return n;
}

/*
 * Write the INIT reply, patched.  libfuse 3.14 sends
 * [fuse_out_header][fuse_init_out]; we flatten the iovec, then:
 *  - FUSE_DIRECT_IO_ALLOW_MMAP (bit 36, flags2) if configured and offered by
 *    the kernel (offering it implies protocol >= 7.39); needs FUSE_INIT_EXT
 *    in flags so the kernel reads flags2.
 *  - FUSE_MAX_PAGES + max_pages if configured and offered (7.28).
 * Any other reply shape (error, old protocol, unexpected size) is passed on
 * untouched.
 *
 * Observed on Debian 12 (libfuse 3.14.0, kernel 6.18 = protocol 7.45):
 * libfuse answers minor 31, 64-byte payload, flags ASYNC_READ |
 * ATOMIC_O_TRUNC | EXPORT_SUPPORT | BIG_WRITES | AUTO_INVAL_DATA |
 * DO_READDIRPLUS | ASYNC_DIO | MAX_PAGES | INIT_EXT, flags2 0,
 * max_write 1 MiB, max_pages 256.  The kernel does not gate flags on the
 * reply's minor, so bit 36 is honoured although libfuse says 7.31.
 */
static ssize_t write_init_reply(int fd, const struct iovec *iov, int count)
{
    unsigned char buf[sizeof(struct wire_out_header) + 512];
    struct wire_out_header oh;
    struct wire_init_out out;
    size_t total = 0, plen, n;
    uint64_t flags;
    int i;

    for (i = 0; i < count; i++)
        total += iov[i].iov_len;
    if (total > sizeof(buf) || total < sizeof(oh))
        return writev(fd, iov, count);
    for (i = 0, n = 0; i < count; n += iov[i].iov_len, i++)
        memcpy(buf + n, iov[i].iov_base, iov[i].iov_len);

    memcpy(&oh, buf, sizeof(oh));
    plen = total - sizeof(oh);
    pthread_mutex_lock(&g.lock);
    g.info.reply_len = (uint32_t)plen;
    if (oh.error == 0 && g.info.kernel_major == 7 &&
        plen >= offsetof(struct wire_init_out, flags2) + sizeof(out.flags2)) {
        n = plen < sizeof(out) ? plen : sizeof(out);
        memset(&out, 0, sizeof(out));
        memcpy(&out, buf + sizeof(oh), n);

        flags = out.flags;
        if (flags & WIRE_INIT_EXT)
            flags |= (uint64_t)out.flags2 << 32;
        g.info.libfuse_minor = out.minor;
        g.info.libfuse_flags = flags;
        g.info.libfuse_max_write = out.max_write;
        g.info.libfuse_max_pages = out.max_pages;

        if (g.cfg_allow_mmap && (g.info.kernel_flags & WIRE_DIRECT_IO_ALLOW_MMAP))
            flags |= WIRE_DIRECT_IO_ALLOW_MMAP;
        if (g.cfg_max_pages > 0 && (g.info.kernel_flags & WIRE_MAX_PAGES)) {
            flags |= WIRE_MAX_PAGES;
            out.max_pages = (uint16_t)g.cfg_max_pages;
        }
        if (flags >> 32)
            flags |= WIRE_INIT_EXT;
        out.flags = (uint32_t)flags;
        out.flags2 = (uint32_t)(flags >> 32);
        memcpy(buf + sizeof(oh), &out, n);

        g.info.sent_flags = flags;
        g.info.sent_max_pages = out.max_pages;
        g.info.init_patched = 1;
    }
    pthread_mutex_unlock(&g.lock);
    return write(fd, buf, total);
}

static ssize_t io_writev(int fd, struct iovec *iov, int count, void *userdata)
{
    (void)userdata;
    /* Replies go to the fd the request was read from: with reader threads
     * that is the device, whatever fd libfuse holds (qfd). */
    if (g.nthreads > 0)
        fd = g.devfd;
    /* Fast path: one atomic load per reply once INIT is done. */
    if (__atomic_load_n(&g.init_pending, __ATOMIC_ACQUIRE) && count > 0 &&
        iov[0].iov_len >= sizeof(struct wire_out_header)) {
        struct wire_out_header oh;
        int is_init;

        memcpy(&oh, iov[0].iov_base, sizeof(oh));
        pthread_mutex_lock(&g.lock);
        is_init = g.init_pending && oh.unique == g.init_unique;
        if (is_init)
            g.init_pending = 0;
        pthread_mutex_unlock(&g.lock);
        if (is_init)
            return write_init_reply(fd, iov, count);
    }
    return writev(fd, iov, count);
}

/* ------------------------------------------------------- reader threads */

/*
 * Reader threads: the fast data path
 * ----------------------------------
 * pyfuse3 reads /dev/fuse from its trio thread and calls into Python for
 * every request; that costs ~100 us per request.  With a core attached
 * (fuseext_fast_configure), fuse_session_mount starts C threads that own
 * the device instead: each reads requests itself and serves READ, and WRITE
 * over mapped pages inside the size, through the core's fast path (pins,
 * copy, unpin: native/fastpath.c) with one writev of the reply - the pmem
 * pages themselves are the reply's iovec, so a read is one copy, done by
 * the kernel.  Anything else (and any fast-path refusal) is queued for
 * libfuse: the session's fd becomes the eventfd qfd, whose custom read
 * (read_queued) hands libfuse the queued request, so pyfuse3's loop runs
 * unchanged, only fed from the queue.  Replies from libfuse go to the
 * device (io_writev).  Stopping: pthread_cancel, honoured only inside
 * read(2); ENODEV (unmount, abort) ends them by itself and is passed on to
 * libfuse.
 *
 * Request buffers come from a small pool: a queued request keeps its
 * buffer until libfuse copied it, and the reader takes another one, so a
 * 1 MiB write costs no malloc/page faults per request.
 */
#define READER_BUFSIZE ((size_t)(256 * 4096 + 4096))   /* = libfuse's bufsize */
#define POOL_KEEP 16
#define ZERO_CHUNK ((size_t)256 * 1024)
#define MAX_IOV 128

static const char zero_chunk[ZERO_CHUNK];
static struct slowreq *pool;        /* free buffers, under g.lock */
static int pool_len;

static struct slowreq *pool_get(void)
{
    struct slowreq *r;

    pthread_mutex_lock(&g.lock);
    r = pool;
    if (r) {
        pool = r->next;
        pool_len--;
    }
    pthread_mutex_unlock(&g.lock);
    if (!r)
        r = malloc(sizeof(*r) + READER_BUFSIZE);
    return r;
}

static void pool_put(struct slowreq *r)
{
    pthread_mutex_lock(&g.lock);
    if (pool_len < POOL_KEEP) {
        r->next = pool;
        pool = r;
        pool_len++;
        r = NULL;
    }
    pthread_mutex_unlock(&g.lock);
    free(r);
}

static void pool_free_all(void)
{
    pthread_mutex_lock(&g.lock);
    while (pool) {
        struct slowreq *r = pool;

        pool = r->next;
        free(r);
    }
    pool_len = 0;
    pthread_mutex_unlock(&g.lock);
}

static void wake_libfuse(void)
{
    uint64_t one = 1;

    if (write(g.qfd, &one, sizeof(one)) < 0) {
        /* EAGAIN only when the counter is saturated: readable anyway */
    }
}

static void queue_slow(struct slowreq *r)
{
    r->next = NULL;
    pthread_mutex_lock(&g.lock);
    if (g.qtail)
        g.qtail->next = r;
    else
        g.qhead = r;
    g.qtail = r;
    pthread_mutex_unlock(&g.lock);
    atomic_fetch_add_explicit(&g.slow_requests, 1, memory_order_relaxed);
    if (r->len >= sizeof(struct wire_in_header)) {
        uint32_t op = ((const struct wire_in_header *)r->data)->opcode;

        atomic_fetch_add_explicit(&g.slow_by_opcode[op < FUSEEXT_OPCODES ? op : 0], 1,
                                  memory_order_relaxed);
    }
    wake_libfuse();
}

static void reply_iov(struct iovec *iov, int cnt)
{
    /* ENOENT: the request was interrupted or aborted meanwhile - fine. */
    if (writev(g.devfd, iov, cnt) < 0 && errno != ENOENT && errno != ENODEV)
        warn("writing a fast reply failed");
}

static int serve_read(const struct wire_in_header *h, const struct wire_read_in *in)
{
    struct daxfs_fast_read rd;
    struct wire_out_header oh;
    struct iovec iov[MAX_IOV];
    int cnt = 1;
    int64_t n;

    n = g.read_begin(g.core, h->nodeid, in->offset, in->size, &rd);
    if (n < 0)
        return 0;
    for (uint64_t i = 0; i < rd.nsegs; i++) {
        const struct daxfs_fast_seg *sg = &rd.segs[i];

        if (sg->dev_off != (uint64_t)DAXFS_FAST_ZEROS) {
            if (cnt == MAX_IOV)
                goto too_many;
            iov[cnt++] = (struct iovec){ g.core_base + sg->dev_off, sg->len };
            continue;
        }
        for (uint64_t done = 0; done < sg->len;) {
            size_t k = sg->len - done < ZERO_CHUNK ? sg->len - done : ZERO_CHUNK;

            if (cnt == MAX_IOV)
                goto too_many;
            iov[cnt++] = (struct iovec){ (void *)zero_chunk, k };
            done += k;
        }
    }
    oh = (struct wire_out_header){ (uint32_t)(sizeof(oh) + (uint64_t)n), 0, h->unique };
    iov[0] = (struct iovec){ &oh, sizeof(oh) };
    reply_iov(iov, cnt);
    g.read_end(g.core, &rd);
    atomic_fetch_add_explicit(&g.fast_reads, 1, memory_order_relaxed);
    return 1;
too_many:
    g.read_end(g.core, &rd);
    return 0;
}

static int serve_write(const struct wire_in_header *h, const struct wire_write_in *in,
                       const char *data, size_t avail)
{
    struct wire_out_header oh;
    struct wire_write_out out;
    struct iovec iov[2];
    int64_t n;

    if (in->size > avail)
        return 0;
    n = g.write(g.core, h->nodeid, in->offset, data, in->size);
    if (n < 0)
        return 0;
    oh = (struct wire_out_header){ sizeof(oh) + sizeof(out), 0, h->unique };
    out = (struct wire_write_out){ (uint32_t)n, 0 };
    iov[0] = (struct iovec){ &oh, sizeof(oh) };
    iov[1] = (struct iovec){ &out, sizeof(out) };
    reply_iov(iov, 2);
    atomic_fetch_add_explicit(&g.fast_writes, 1, memory_order_relaxed);
    return 1;
}

/*
 * Before every write through the page cache (dax=never) the kernel asks
 * whether the file has capabilities to drop (file_remove_privs ->
 * getxattr "security.capability"): one Python round trip per write unless
 * answered here, for files the filesystem vouched have none.
 */
static int serve_getxattr(const struct wire_in_header *h, const char *payload, size_t len)
{
    static const char cap[] = "security.capability";
    struct wire_out_header oh;

    /* fuse_getxattr_in: u32 size, u32 padding; then the NUL-terminated name */
    if (len != 8 + sizeof(cap) || memcmp(payload + 8, cap, sizeof(cap)) != 0 ||
        !g.nocaps(g.core, h->nodeid))
        return 0;
    oh = (struct wire_out_header){ sizeof(oh), -ENODATA, h->unique };
    if (write(g.devfd, &oh, sizeof(oh)) < 0 && errno != ENOENT && errno != ENODEV)
        warn("writing a fast reply failed");
    return 1;
}

/* dlock held.  0, or -1 when out of memory (the request then goes the
 * ordinary way, through libfuse). */
static int defer_locked(uint32_t opcode, uint64_t nodeid, uint64_t arg)
{
    if (g.dn == g.dcap) {
        size_t cap = g.dcap ? g.dcap * 2 : 256;
        struct fuseext_deferred *v = realloc(g.dv, cap * sizeof(*v));

        if (!v)
            return -1;
        g.dv = v;
        g.dcap = cap;
    }
    g.dv[g.dn++] = (struct fuseext_deferred){ opcode, nodeid, arg };
    atomic_store(&g.dpending, g.dn);
    return 0;
}

/*
 * FORGET, BATCH_FORGET, RELEASE and RELEASEDIR change nothing the kernel
 * waits for (FORGET has no reply; a RELEASE reply's error is ignored, and
 * close(2) has returned long before): record them for Python, which applies
 * them before the next request it serves and at every periodic commit, in bulk - not
 * one trip through pyfuse3 each.  Counts commute, so a LOOKUP served before
 * an older FORGET is applied leaves the same lookup count.
 */
static int serve_deferred(const struct wire_in_header *h, const char *payload, size_t len)
{
    size_t n0;
    int ok = 0;

    pthread_mutex_lock(&g.dlock);
    n0 = g.dn;
    if (!g.defer) {
        pthread_mutex_unlock(&g.dlock);
        return 0;
    }
    switch (h->opcode) {
    case WIRE_FUSE_FORGET:
        if (len >= sizeof(struct wire_forget_in))
            ok = defer_locked(WIRE_FUSE_FORGET, h->nodeid,
                              ((const struct wire_forget_in *)payload)->nlookup) == 0;
        break;
    case WIRE_FUSE_BATCH_FORGET: {
        const struct wire_batch_forget_in *b = (const void *)payload;
        const struct wire_forget_one *one = (const void *)(payload + sizeof(*b));
        size_t n = g.dn;

        if (len < sizeof(*b) || (len - sizeof(*b)) / sizeof(*one) < b->count)
            break;
        ok = 1;
        for (uint32_t i = 0; i < b->count && ok; i++)
            ok = defer_locked(WIRE_FUSE_FORGET, one[i].nodeid, one[i].nlookup) == 0;
        if (!ok) {          /* all or nothing: libfuse gets the whole batch */
            g.dn = n;
            atomic_store(&g.dpending, n);
        }
        break;
    }
    case WIRE_FUSE_RELEASE:
    case WIRE_FUSE_RELEASEDIR:
        if (len >= sizeof(struct wire_release_in))
            ok = defer_locked(h->opcode, h->nodeid,
                              ((const struct wire_release_in *)payload)->fh) == 0;
        break;
    }
    if (ok)
        atomic_fetch_add_explicit(&g.deferred, g.dn - n0, memory_order_relaxed);
    pthread_mutex_unlock(&g.dlock);
    if (!ok)
        return 0;
    /* No wake-up: the next request, or the next commit, applies them. */
    if (h->opcode == WIRE_FUSE_RELEASE || h->opcode == WIRE_FUSE_RELEASEDIR) {
        struct wire_out_header oh = { sizeof(oh), 0, h->unique };

        if (write(g.devfd, &oh, sizeof(oh)) < 0 && errno != ENOENT && errno != ENODEV)
            warn("writing a fast reply failed");
    }
    return 1;
}

/* (seconds, nanoseconds) of a CLOCK_REALTIME ns time, floored like stat's. */
static void split_ns(int64_t t, uint64_t *sec, uint32_t *nsec)
{
    int64_t s = t / 1000000000LL, ns = t % 1000000000LL;

    if (ns < 0) {
        ns += 1000000000LL;
        s -= 1;
    }
    *sec = (uint64_t)s;
    *nsec = (uint32_t)ns;
}

/* GETATTR from the copy the filesystem published (fastpath.c). */
static int serve_getattr(const struct wire_in_header *h)
{
    struct wire_out_header oh;
    struct wire_attr_out out;
    struct daxfs_attr a;
    struct iovec iov[2];

    if (g.getattr(g.core, h->nodeid, &a) < 0)
        return 0;
    memset(&out, 0, sizeof(out));
    out.attr_valid = g.attr_valid_ns / 1000000000ULL;
    out.attr_valid_nsec = (uint32_t)(g.attr_valid_ns % 1000000000ULL);
    out.attr = (struct wire_attr){
        .ino = a.ino, .size = a.size, .blocks = a.blocks,
        .mode = a.mode, .nlink = a.nlink, .uid = a.uid, .gid = a.gid,
        .rdev = a.rdev, .blksize = 4096,
    };
    split_ns(a.atime, &out.attr.atime, &out.attr.atimensec);
    split_ns(a.mtime, &out.attr.mtime, &out.attr.mtimensec);
    split_ns(a.ctime, &out.attr.ctime, &out.attr.ctimensec);
    oh = (struct wire_out_header){ sizeof(oh) + sizeof(out), 0, h->unique };
    iov[0] = (struct iovec){ &oh, sizeof(oh) };
    iov[1] = (struct iovec){ &out, sizeof(out) };
    reply_iov(iov, 2);
    atomic_fetch_add_explicit(&g.fast_getattrs, 1, memory_order_relaxed);
    return 1;
}

/* 1 if served here. */
static int serve_fast(const char *buf, size_t n)
{
    const struct wire_in_header *h = (const void *)buf;
    const size_t hl = sizeof(*h);

    /* Extension headers (security context, groups) only come with
     * creating requests; anything unusual goes to libfuse. */
    if (h->total_extlen || h->len != n)
        return 0;
    if (h->opcode == WIRE_FUSE_READ && n >= hl + sizeof(struct wire_read_in))
        return serve_read(h, (const void *)(buf + hl));
    if (h->opcode == WIRE_FUSE_WRITE && n >= hl + sizeof(struct wire_write_in))
        return serve_write(h, (const void *)(buf + hl),
                           buf + hl + sizeof(struct wire_write_in),
                           n - hl - sizeof(struct wire_write_in));
    if (h->opcode == WIRE_FUSE_GETXATTR)
        return serve_getxattr(h, buf + hl, n - hl);
    if (h->opcode == WIRE_FUSE_GETATTR && n >= hl + sizeof(struct wire_getattr_in) &&
        g.getattr)
        return serve_getattr(h);
    if (h->opcode == WIRE_FUSE_FORGET || h->opcode == WIRE_FUSE_BATCH_FORGET ||
        h->opcode == WIRE_FUSE_RELEASE || h->opcode == WIRE_FUSE_RELEASEDIR)
        return serve_deferred(h, buf + hl, n - hl);
    return 0;
}

static void *reader_main(void *arg)
{
    struct slowreq *r = pool_get();
    sigset_t all;

    (void)arg;
    /* Signals are Python's business (trio's wakeup fd in the main thread). */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    /* Cancellation (stop_readers) only inside read(2): everywhere else a
     * reader may hold pins or locks. */
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
    while (r) {
        ssize_t n;
        int err;

        /* Blocking read: the kernel wakes one waiting reader per request
         * (exclusive wait), where poll(2) would wake them all. */
        pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
        n = read(g.devfd, r->data, READER_BUFSIZE);
        err = errno;
        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
        if (n < 0) {
            if (err == EINTR || err == EAGAIN || err == ENOENT)
                continue;           /* ENOENT: interrupted before we got it */
            /* ENODEV (unmounted / aborted) or worse: the device is done. */
            pthread_mutex_lock(&g.lock);
            g.dev_gone = 1;
            pthread_mutex_unlock(&g.lock);
            wake_libfuse();
            break;
        }
        if ((size_t)n >= sizeof(struct wire_in_header) && serve_fast(r->data, (size_t)n))
            continue;
        r->len = (size_t)n;
        queue_slow(r);
        r = pool_get();
    }
    if (r)
        pool_put(r);
    else
        warn("out of memory for request buffers; reader thread stopped");
    return NULL;
}

/* Before the session starts: returns 1 if readers run (session fd := qfd). */
static int start_readers(int devfd)
{
    int flags, want;

    pthread_mutex_lock(&g.lock);
    want = g.core ? g.cfg_threads : 0;
    pthread_mutex_unlock(&g.lock);
    if (want <= 0)
        return 0;
    g.qfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    /* libfuse opened it blocking; readers rely on that. */
    flags = fcntl(devfd, F_GETFL);
    if (g.qfd < 0 || flags < 0 ||
        (flags & O_NONBLOCK && fcntl(devfd, F_SETFL, flags & ~O_NONBLOCK) < 0))
        goto fail;
    g.devfd = devfd;
    g.dev_gone = 0;
    for (int i = 0; i < want; i++) {
        if (pthread_create(&g.threads[i], NULL, reader_main, NULL) != 0)
            break;
        g.nthreads++;
    }
    if (g.nthreads > 0)
        return 1;
fail:
    warn("cannot start reader threads; requests go through pyfuse3 alone");
    if (g.qfd >= 0)
        close(g.qfd);
    g.qfd = g.devfd = -1;
    return 0;
}

/* Stop and join the readers, drop queued requests, close the device fd
 * (which aborts the connection if it was the last one, as libfuse's own
 * close would).  qfd is the session's fd: libfuse closes it.  A reader
 * blocked in read(2) is cancelled there (closing the fd would not wake
 * it); one that exited on ENODEV is joined as it is.  A request read just
 * as the cancel lands is lost, which is harmless: the connection is
 * aborted next and the kernel fails whatever is outstanding. */
static void stop_readers(void)
{
    struct slowreq *q;

    if (g.nthreads == 0)
        return;
    for (int i = 0; i < g.nthreads; i++)
        pthread_cancel(g.threads[i]);
    for (int i = 0; i < g.nthreads; i++)
        pthread_join(g.threads[i], NULL);
    pthread_mutex_lock(&g.lock);
    q = g.qhead;
    g.qhead = g.qtail = NULL;
    g.dev_gone = 1;
    pthread_mutex_unlock(&g.lock);
    while (q) {
        struct slowreq *next = q->next;

        free(q);
        q = next;
    }
    pool_free_all();
    close(g.devfd);
    g.devfd = -1;
    g.nthreads = 0;
}

/* ----------------------------------------------------- interposed symbols */

typedef struct fuse_session *(*session_new_fn)(struct fuse_args *,
                                               const struct fuse_lowlevel_ops *,
                                               size_t, void *);
typedef int (*session_mount_fn)(struct fuse_session *, const char *);
typedef void (*session_destroy_fn)(struct fuse_session *);

static void *real_symbol(const char *name)
{
    void *sym = dlsym(RTLD_NEXT, name);

    if (!sym)
        warn("libfuse symbol not found via RTLD_NEXT");
    return sym;
}

EXPORT struct fuse_session *fuse_session_new(struct fuse_args *args,
                                             const struct fuse_lowlevel_ops *op,
                                             size_t op_size, void *userdata)
{
    session_new_fn real = (session_new_fn)real_symbol("fuse_session_new");
    struct fuse_session *se;
    int installed = 0;

    if (!real)
        return NULL;
    if (!op || op_size > sizeof(g.ops)) {
        /* Built against a newer libfuse than ours: don't touch it. */
        warn("fuse_lowlevel_ops larger than expected; not extending");
        return real(args, op, op_size, userdata);
    }
    memset(&g.ops, 0, sizeof(g.ops));
    memcpy(&g.ops, op, op_size);
    if (!g.ops.fallocate) {
        g.ops.fallocate = ll_fallocate;
        installed |= 1 << FUSEEXT_OP_FALLOCATE;
    }
    if (!g.ops.lseek) {
        g.ops.lseek = ll_lseek;
        installed |= 1 << FUSEEXT_OP_LSEEK;
    }
    if (!g.ops.copy_file_range) {
        g.ops.copy_file_range = ll_copy_file_range;
        installed |= 1 << FUSEEXT_OP_COPY_FILE_RANGE;
    }
    g.fs_init = g.ops.init;
    g.ops.init = ll_init;
    /* Only wrapped if there is a handler to fall back to (pyfuse3 always
     * has one); without one libfuse answers ENOSYS as before. */
    g.fs_setattr = g.ops.setattr;
    if (g.fs_setattr) {
        g.ops.setattr = ll_setattr;
        installed |= 1 << FUSEEXT_OP_SETATTR;
    }

    se = real(args, &g.ops, sizeof(g.ops), userdata);
    pthread_mutex_lock(&g.lock);
    if (se) {
        g.session = se;
        g.init_pending = 0;
        memset(&g.info, 0, sizeof(g.info));
        g.info.session_wrapped = 1;
        g.info.ops_installed = installed;
    }
    pthread_mutex_unlock(&g.lock);
    return se;
}

EXPORT int fuse_session_mount(struct fuse_session *se, const char *mountpoint)
{
    static const struct fuse_custom_io io = {
        .writev = io_writev,
        .read = io_read,
        /* no splice_receive / splice_send: libfuse then never splices */
    };
    session_mount_fn real = (session_mount_fn)real_symbol("fuse_session_mount");
    int res;

    if (!real)
        return -1;
    res = real(se, mountpoint);
    if (res == 0 && se == g.session) {
        int devfd = fuse_session_fd(se);
        /* With readers the session's fd becomes qfd and the device fd is
         * ours to close (stop_readers); without, libfuse closes it once. */
        int readers = start_readers(devfd);
        int ok = fuse_session_custom_io(se, &io, readers ? g.qfd : devfd) == 0;

        if (!ok && readers) {
            stop_readers();     /* closes devfd: the mount is unusable */
            warn("fuse_session_custom_io failed after starting readers");
            return -1;
        }
        pthread_mutex_lock(&g.lock);
        g.info.custom_io = ok;
        g.info.reader_threads = g.nthreads;
        pthread_mutex_unlock(&g.lock);
        if (!ok)
            warn("fuse_session_custom_io failed; INIT reply not patched");
    }
    return res;
}

typedef void (*session_unmount_fn)(struct fuse_session *);

EXPORT void fuse_session_unmount(struct fuse_session *se)
{
    session_unmount_fn real = (session_unmount_fn)real_symbol("fuse_session_unmount");

    /* libfuse closes the device fd before unmounting (else the unmount
     * could wait on us); ours is the readers', so stop them and close it. */
    if (se && se == g.session)
        stop_readers();
    if (real)
        real(se);
}

EXPORT void fuse_session_destroy(struct fuse_session *se)
{
    session_destroy_fn real = (session_destroy_fn)real_symbol("fuse_session_destroy");

    if (se && se == g.session) {
        stop_readers();
        fuseext_reply_all(EIO);
        pthread_mutex_lock(&g.lock);
        g.session = NULL;
        g.init_pending = 0;
        g.info.custom_io = 0;
        pthread_mutex_unlock(&g.lock);
    }
    if (real)
        real(se);
}

/* -------------------------------------------------------- Python-facing */

void fuseext_configure(int direct_io_allow_mmap, int max_pages)
{
    if (max_pages < 0)
        max_pages = 0;
    if (max_pages > WIRE_MAX_MAX_PAGES)
        max_pages = WIRE_MAX_MAX_PAGES;
    pthread_mutex_lock(&g.lock);
    g.cfg_allow_mmap = direct_io_allow_mmap != 0;
    g.cfg_max_pages = max_pages;
    pthread_mutex_unlock(&g.lock);
}

void fuseext_get_info(struct fuseext_info *out)
{
    pthread_mutex_lock(&g.lock);
    *out = g.info;
    pthread_mutex_unlock(&g.lock);
    out->fast_reads = atomic_load(&g.fast_reads);
    out->fast_writes = atomic_load(&g.fast_writes);
    out->fast_getattrs = atomic_load(&g.fast_getattrs);
    out->deferred = atomic_load(&g.deferred);
    out->slow_requests = atomic_load(&g.slow_requests);
}

void fuseext_set_defer(int on)
{
    pthread_mutex_lock(&g.dlock);
    g.defer = on != 0;
    pthread_mutex_unlock(&g.dlock);
}

uint64_t fuseext_deferred_pending(void)
{
    return atomic_load_explicit(&g.dpending, memory_order_acquire);
}

int64_t fuseext_take_deferred(struct fuseext_deferred *out, uint64_t max)
{
    uint64_t take;

    pthread_mutex_lock(&g.dlock);
    take = g.dn < max ? g.dn : max;
    /* In arrival order: a RELEASE before the FORGET of the same inode. */
    memcpy(out, g.dv, take * sizeof(*out));
    memmove(g.dv, g.dv + take, (g.dn - take) * sizeof(*out));
    g.dn -= take;
    atomic_store(&g.dpending, g.dn);
    pthread_mutex_unlock(&g.dlock);
    return (int64_t)take;
}

int fuseext_slow_by_opcode(uint64_t *out, int n)
{
    if (n > FUSEEXT_OPCODES)
        n = FUSEEXT_OPCODES;
    for (int i = 0; i < n; i++)
        out[i] = atomic_load_explicit(&g.slow_by_opcode[i], memory_order_relaxed);
    return n;
}

int fuseext_fast_configure(uintptr_t core, uintptr_t base, uintptr_t read_begin,
                           uintptr_t read_end, uintptr_t write, uintptr_t nocaps,
                           uintptr_t getattr, uint64_t attr_valid_ns, int threads)
{
    if (threads < 0 || threads > FUSEEXT_MAX_THREADS)
        return -EINVAL;
    if (core && (!base || !read_begin || !read_end || !write || !nocaps))
        return -EINVAL;
    if (getattr && !attr_valid_ns)
        return -EINVAL;     /* a 0 s timeout: every stat asks; nothing to serve */
    pthread_mutex_lock(&g.lock);
    if (g.nthreads > 0) {
        pthread_mutex_unlock(&g.lock);
        return -EBUSY;      /* a mount is being served with the old core */
    }
    g.core = (daxfs_core *)core;
    g.core_base = (char *)base;
    g.read_begin = (void *)read_begin;
    g.read_end = (void *)read_end;
    g.write = (void *)write;
    g.nocaps = (void *)nocaps;
    g.getattr = (void *)getattr;
    g.attr_valid_ns = attr_valid_ns;
    g.cfg_threads = core ? threads : 0;
    pthread_mutex_unlock(&g.lock);
    return 0;
}

void fuseext_fast_stop(void)
{
    stop_readers();
}

int fuseext_eventfd(void)
{
    int fd;

    pthread_mutex_lock(&g.lock);
    fd = ensure_efd();
    pthread_mutex_unlock(&g.lock);
    return fd < 0 ? -errno : fd;
}

int fuseext_next_event(struct fuseext_event *ev)
{
    struct evnode *n;

    pthread_mutex_lock(&g.lock);
    n = g.head;
    if (n) {
        g.head = n->next;
        if (!g.head)
            g.tail = NULL;
    }
    pthread_mutex_unlock(&g.lock);
    if (!n)
        return 0;
    *ev = n->ev;
    free(n);
    return 1;
}

void fuseext_set_accepting(int on)
{
    pthread_mutex_lock(&g.lock);
    g.accepting = on != 0;
    pthread_mutex_unlock(&g.lock);
}

void fuseext_set_setattr_size(int on)
{
    pthread_mutex_lock(&g.lock);
    g.take_setattr_size = on != 0;
    pthread_mutex_unlock(&g.lock);
}

/* Unlinks the request so that a second reply for the same id is refused
 * instead of touching a freed fuse_req. */
static fuse_req_t claim(uint64_t id)
{
    struct pending *p;
    fuse_req_t req = NULL;

    pthread_mutex_lock(&g.lock);
    p = take_pending(id);
    pthread_mutex_unlock(&g.lock);
    if (p) {
        req = p->req;
        free(p);
    }
    return req;
}

int fuseext_reply_err(uint64_t id, int err)
{
    fuse_req_t req = claim(id);

    return req ? fuse_reply_err(req, err) : -ENOENT;
}

int fuseext_reply_lseek(uint64_t id, int64_t offset)
{
    fuse_req_t req = claim(id);

    return req ? fuse_reply_lseek(req, (off_t)offset) : -ENOENT;
}

int fuseext_reply_write(uint64_t id, uint64_t count)
{
    fuse_req_t req = claim(id);

    return req ? fuse_reply_write(req, (size_t)count) : -ENOENT;
}

/* Floor division, so times before 1970 keep 0 <= tv_nsec < 1e9. */
static struct timespec ns_timespec(int64_t ns)
{
    struct timespec ts;
    int64_t sec = ns / 1000000000LL, rem = ns % 1000000000LL;

    if (rem < 0) {
        rem += 1000000000LL;
        sec--;
    }
    ts.tv_sec = (time_t)sec;
    ts.tv_nsec = (long)rem;
    return ts;
}

int fuseext_reply_attr(uint64_t id, const struct fuseext_attr *attr, double attr_timeout)
{
    fuse_req_t req = claim(id);
    struct stat st;

    if (!req)
        return -ENOENT;
    memset(&st, 0, sizeof(st));
    st.st_ino = (ino_t)attr->ino;
    st.st_mode = (mode_t)attr->mode;
    st.st_nlink = (nlink_t)attr->nlink;
    st.st_uid = (uid_t)attr->uid;
    st.st_gid = (gid_t)attr->gid;
    st.st_rdev = (dev_t)attr->rdev;
    st.st_size = (off_t)attr->size;
    st.st_blocks = (blkcnt_t)attr->blocks;
    st.st_blksize = (blksize_t)attr->blksize;
    st.st_atim = ns_timespec(attr->atime_ns);
    st.st_mtim = ns_timespec(attr->mtime_ns);
    st.st_ctim = ns_timespec(attr->ctime_ns);
    return fuse_reply_attr(req, &st, attr_timeout);
}

int fuseext_reply_all(int err)
{
    struct evnode *n;
    int replied = 0;

    pthread_mutex_lock(&g.lock);
    n = g.head;
    g.head = g.tail = NULL;
    pthread_mutex_unlock(&g.lock);
    while (n) {
        struct evnode *next = n->next;
        free(n);
        n = next;
    }

    for (;;) {
        struct pending *p;

        pthread_mutex_lock(&g.lock);
        p = g.pending;
        if (p)
            g.pending = p->next;
        pthread_mutex_unlock(&g.lock);
        if (!p)
            break;
        fuse_reply_err(p->req, p->interrupted ? EINTR : err);
        free(p);
        replied++;
    }
    return replied;
}
