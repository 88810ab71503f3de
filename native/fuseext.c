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
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

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

#define WIRE_FUSE_INIT 26                     /* opcode */
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
} g = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .efd = -1,
    .accepting = 1,
};

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

static ssize_t io_read(int fd, void *buf, size_t buf_len, void *userdata)
{
    ssize_t n = read(fd, buf, buf_len);

    (void)userdata;
    /* INIT is always the first request (libfuse answers a major > 7 INIT
     * and the kernel sends another), so only its header is peeked. */
    if (n >= (ssize_t)(sizeof(struct wire_in_header) + 16)) {
        struct wire_in_header h;

        memcpy(&h, buf, sizeof(h));
        if (h.opcode == WIRE_FUSE_INIT)
            note_init_request(&h, (const char *)buf + sizeof(h),
                              (size_t)n - sizeof(h));
    }
    return n;   /* errno from read() untouched: libfuse 3.14 inspects it */
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
        /* Same fd; libfuse closes it once, in fuse_session_destroy. */
        int ok = fuse_session_custom_io(se, &io, fuse_session_fd(se)) == 0;

        pthread_mutex_lock(&g.lock);
        g.info.custom_io = ok;
        pthread_mutex_unlock(&g.lock);
        if (!ok)
            warn("fuse_session_custom_io failed; INIT reply not patched");
    }
    return res;
}

EXPORT void fuse_session_destroy(struct fuse_session *se)
{
    session_destroy_fn real = (session_destroy_fn)real_symbol("fuse_session_destroy");

    if (se && se == g.session) {
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
