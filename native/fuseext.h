/*
 * fuseext.h - public interface of daxfs._fuseext (see fuseext.c).
 *
 * The text between the CDEF BEGIN / CDEF END markers is fed verbatim to
 * cffi's ffibuilder.cdef() by native/build_fuseext.py, so it must stay plain
 * C declarations plus "#define NAME <integer>" lines (no other preprocessor
 * directives, no includes, no macros with expressions).
 *
 * The module interposes fuse_session_new / fuse_session_mount /
 * fuse_session_destroy (the process must load it with RTLD_GLOBAL before
 * pyfuse3), adds lowlevel handlers for FALLOCATE, LSEEK and COPY_FILE_RANGE
 * that queue the request for Python, takes size-changing SETATTR over from
 * pyfuse3 (when enabled) so that it too sees FUSE_INTERRUPT, and patches the
 * FUSE_INIT reply.
 * Python never sees a fuse_req_t: requests are named by a 64-bit id.
 */
#ifndef DAXFS_FUSEEXT_H
#define DAXFS_FUSEEXT_H

#include <stdint.h>

/* CDEF BEGIN */

/* fuseext_event.kind */
#define FUSEEXT_EV_REQUEST 1
#define FUSEEXT_EV_INTERRUPT 2

/* fuseext_event.op */
#define FUSEEXT_OP_FALLOCATE 1
#define FUSEEXT_OP_LSEEK 2
#define FUSEEXT_OP_COPY_FILE_RANGE 3
#define FUSEEXT_OP_SETATTR 4

/* fuseext_event.to_set: libfuse's FUSE_SET_ATTR_* bits (fuseext.c asserts
 * they match).  libfuse only passes these (plus KILL_SUID/KILL_SGID) on. */
#define FUSEEXT_SET_ATTR_MODE 1
#define FUSEEXT_SET_ATTR_UID 2
#define FUSEEXT_SET_ATTR_GID 4
#define FUSEEXT_SET_ATTR_SIZE 8
#define FUSEEXT_SET_ATTR_ATIME 16
#define FUSEEXT_SET_ATTR_MTIME 32
#define FUSEEXT_SET_ATTR_ATIME_NOW 128
#define FUSEEXT_SET_ATTR_MTIME_NOW 256
#define FUSEEXT_SET_ATTR_CTIME 1024

/*
 * One queued event.  REQUEST: a new request that must later get exactly one
 * fuseext_reply_*() call.  INTERRUPT: the kernel sent FUSE_INTERRUPT for the
 * outstanding request `id` (the calling thread got a signal).
 *
 * FALLOCATE:       ino, fh, mode, offset, length
 * LSEEK:           ino, fh, offset, whence
 * COPY_FILE_RANGE: ino, fh, offset (in); ino_out, fh_out, offset_out (out);
 *                  length; flags
 * SETATTR:         ino, fh (0 if no file handle: has_fh), to_set and the
 *                  struct stat fields st_* as libfuse passed them (only
 *                  those named by to_set are meaningful; *_NOW times are
 *                  NOT filled in).  Only sent with FUSEEXT_SET_ATTR_SIZE.
 * Every REQUEST:   ctx_uid, ctx_gid, ctx_pid from fuse_req_ctx() (ctx_pid
 *                  is the calling thread's id, as in pyfuse3's ctx.pid).
 */
struct fuseext_event {
    uint64_t id;
    int kind;
    int op;
    uint64_t ino;
    uint64_t fh;
    int64_t offset;
    int64_t length;
    int mode;
    int whence;
    uint64_t ino_out;
    uint64_t fh_out;
    int64_t offset_out;
    uint64_t flags;
    int has_fh;
    int to_set;
    uint32_t st_mode;
    uint32_t st_uid;
    uint32_t st_gid;
    int64_t st_size;
    int64_t st_atime_ns;
    int64_t st_mtime_ns;
    int64_t st_ctime_ns;
    uint32_t ctx_uid;
    uint32_t ctx_gid;
    uint32_t ctx_pid;
};

/* Attributes for fuseext_reply_attr() (turned into a struct stat). */
struct fuseext_attr {
    uint64_t ino;
    uint32_t mode;
    uint32_t nlink;
    uint32_t uid;
    uint32_t gid;
    uint64_t rdev;
    int64_t size;
    int64_t blocks;
    int64_t blksize;
    int64_t atime_ns;
    int64_t mtime_ns;
    int64_t ctime_ns;
};

/*
 * What the INIT handshake looked like (for logging and tests).  The kernel_*
 * fields are from the FUSE_INIT request, libfuse_* from the reply libfuse
 * built, sent_* from the reply actually written (after our patching).
 * The flags are the 64-bit combination flags | flags2 << 32.
 */
struct fuseext_info {
    int session_wrapped;     /* our fuse_session_new ran */
    int custom_io;           /* our custom io is installed on the session */
    int init_seen;           /* INIT request seen */
    int init_patched;        /* INIT reply went through our writev */
    uint32_t kernel_major;
    uint32_t kernel_minor;
    uint64_t kernel_flags;
    uint32_t libfuse_minor;
    uint64_t libfuse_flags;
    uint32_t libfuse_max_write;
    uint32_t libfuse_max_pages;
    uint64_t sent_flags;
    uint32_t sent_max_pages;
    uint32_t reply_len;      /* payload length of the INIT reply */
    unsigned conn_capable;   /* fuse_conn_info after the fs init() callback */
    unsigned conn_want;
    int ops_installed;       /* bit (1 << FUSEEXT_OP_*) per handler we added */
    uint64_t requests;       /* total requests queued */
    uint64_t interrupts;     /* total interrupt notifications */
    int reader_threads;      /* C threads reading /dev/fuse (0: pyfuse3 alone) */
    uint64_t fast_reads;     /* requests the readers answered themselves */
    uint64_t fast_writes;
    uint64_t fast_getattrs;  /* GETATTR answered from the core's attr copy */
    uint64_t deferred;       /* records (an inode each) of FORGET/RELEASE(DIR) for Python */
    uint64_t slow_requests;  /* requests the readers passed to libfuse */
};

#define FUSEEXT_MAX_THREADS 16

/* Settings for the INIT reply; take effect at the next FUSE_INIT.
 * max_pages == 0 leaves libfuse's value. */
void fuseext_configure(int direct_io_allow_mmap, int max_pages);
void fuseext_get_info(struct fuseext_info *out);
/* Requests the readers handed to libfuse (not served in C), by FUSE opcode
 * (index 0: opcodes >= FUSEEXT_OPCODES).  Fills out[0..n), returns the count. */
#define FUSEEXT_OPCODES 64
int fuseext_slow_by_opcode(uint64_t *out, int n);

/* With the reader threads, FORGET / BATCH_FORGET (opcode 2 for each inode),
 * RELEASE (18) and RELEASEDIR (29) can be recorded instead of handed to
 * libfuse (RELEASE* answered 0 at once), for the filesystem to apply in
 * bulk.  Off until fuseext_set_defer(1); whoever turns it on must take them. */
struct fuseext_deferred {
    uint32_t opcode;
    uint64_t nodeid;
    uint64_t arg;            /* FORGET: nlookup; RELEASE*: fh */
};
void fuseext_set_defer(int on);
uint64_t fuseext_deferred_pending(void);
/* Move up to max records, oldest first, to out; returns the number. */
int64_t fuseext_take_deferred(struct fuseext_deferred *out, uint64_t max);

/* Non-blocking eventfd that becomes readable when events are queued, or
 * -errno. */
int fuseext_eventfd(void);
/* Pop the oldest event into *ev: 1 if one was returned, 0 if empty. */
int fuseext_next_event(struct fuseext_event *ev);
/* When 0, new requests are answered at once (EIO) instead of queued. */
void fuseext_set_accepting(int on);
/* When 1 (and accepting), SETATTR requests that change the size are queued
 * as FUSEEXT_OP_SETATTR; otherwise (the default) every SETATTR goes to
 * pyfuse3's own handler unchanged.  serve() turns it on while it runs, if
 * its handler can answer them. */
void fuseext_set_setattr_size(int on);

/* Replies.  0 on success, -ENOENT if `id` is not outstanding (already
 * answered), else the negative errno from libfuse. */
int fuseext_reply_err(uint64_t id, int err);
int fuseext_reply_lseek(uint64_t id, int64_t offset);
int fuseext_reply_write(uint64_t id, uint64_t count);
/* fuse_reply_attr() for a SETATTR; attr_timeout in seconds. */
int fuseext_reply_attr(uint64_t id, const struct fuseext_attr *attr, double attr_timeout);
/* Answer every outstanding request (err for ordinary ones, EINTR for those
 * that were interrupted) and drop queued events.  Returns how many. */
int fuseext_reply_all(int err);

/* The fast data path: a daxfs core (pointer as an integer, 0 = none), its
 * pmem mapping and the addresses of daxfs_fast_read_begin / _read_end /
 * daxfs_fast_write / daxfs_fast_nocaps, and of daxfs_fast_getattr (0: GETATTR
 * always goes to Python) with the attr timeout its replies carry (ns, > 0);
 * `threads` reader threads start at
 * the next fuse_session_mount.  -EBUSY while readers run, -EINVAL on bad
 * values. */
int fuseext_fast_configure(uintptr_t core, uintptr_t base, uintptr_t read_begin,
                           uintptr_t read_end, uintptr_t write, uintptr_t nocaps,
                           uintptr_t getattr, uint64_t attr_valid_ns, int threads);
/* Join the reader threads and close the device fd now (idempotent); the
 * session's own unmount / destroy do the same. */
void fuseext_fast_stop(void);

/* CDEF END */

#endif /* DAXFS_FUSEEXT_H */
