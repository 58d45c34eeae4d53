/*
 * The FUSE operations: each turns a kernel request into namespace and block
 * calls and replies. Permission checks are the kernel's (default_permissions);
 * what remains here is the file system's own semantics.
 *
 * Every operation that changes the tree or a file's bytes holds fs->freeze
 * shared, so a snapshot freeze (exclusive) sees no change half done.
 */
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "fs/control.h"
#include "fs/fs.h"
#include "fs/publisher.h"
#include "fs/snapview.h"
#include "util/bufpool.h"
#include "util/err.h"
#include "util/log.h"

#define TIMEOUT    60.0 /* one writer: the kernel's caches can only be stale by our own changes */
#define CTL_XATTR  "user.ckptfs.control"
#define CTL_PREFIX "user.ckptfs."
#define DAY_NS     (86400LL * 1000000000LL)

static struct fs *fs_of(fuse_req_t req)
{
    return fuse_req_userdata(req);
}

/* How long the kernel may keep names and attributes: while following, the
 * tree changes under it with every snapshot, so not at all. */
static double ttl(fuse_req_t req)
{
    return fs_following(fs_of(req)) ? 0.0 : TIMEOUT;
}

/* ... and of inode ino: a snapshot under .snapshots never changes, the
 * list of them does. */
static double ttl_of(fuse_req_t req, uint64_t ino)
{
    return ino == SNAPVIEW_DIR ? 1.0 : snapview_owns(ino) ? TIMEOUT : ttl(req);
}

/* A negative errno as FUSE wants it, logging what is not a plain POSIX outcome. */
static void reply_err(fuse_req_t req, int rc)
{
    if (rc == -EIO || rc == -ENOMEM || rc == -ENOSPC || rc == -EBADMSG || rc == -EAGAIN ||
        rc == -EACCES)
        log_error("%s", err_msg(rc));
    /* A store error the kernel would misread (EACCES is a permission, EAGAIN a retry): EIO. */
    if (rc == -EAGAIN || rc == -EACCES || rc == -EBADMSG || rc == -ENXIO)
        rc = -EIO;
    fuse_reply_err(req, -rc);
}

static void to_stat(struct fs *fs, const struct ns_attr *a, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_ino = a->ino;
    st->st_mode = a->mode;
    st->st_nlink = a->nlink;
    st->st_uid = a->uid;
    st->st_gid = a->gid;
    st->st_rdev = a->rdev;
    st->st_size = (off_t)a->size;
    st->st_blksize = 4096;
    uint64_t held = snapview_owns(a->ino) ? a->size : blocks_allocated(fs->blocks, a->ino, a->size);
    st->st_blocks = (blkcnt_t)((held + 511) / 512);
    st->st_atim = a->atime;
    st->st_mtim = a->mtime;
    st->st_ctim = a->ctime;
}

/* Replies with an entry the kernel keeps a reference to (counted first). */
static void reply_entry(fuse_req_t req, const struct ns_attr *a)
{
    struct fs *fs = fs_of(req);
    struct fuse_entry_param e = { .ino = a->ino,
                                  .attr_timeout = ttl_of(req, a->ino),
                                  .entry_timeout = ttl_of(req, a->ino) };
    int rc = snapview_owns(a->ino) ? 0 : inode_ref(fs, a->ino, 1);
    if (rc)
        return reply_err(req, rc);
    to_stat(fs, a, &e.attr);
    if (fuse_reply_entry(req, &e) && !snapview_owns(a->ino))
        inode_forget(fs, a->ino, 1);
}

static struct timespec now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts;
}

static int64_t nsec(struct timespec ts)
{
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- publishing on demand ---- */

static int publish_wanted(struct fs *fs, const char *name)
{
    for (char *const *g = fs->publish_on; g && *g && name; g++)
        if (fnmatch(*g, name, 0) == 0)
            return 1;
    return 0;
}

/* Names of ino to match --publish-on against, for fsync (which names no file). */
struct name_match {
    struct fs *fs;
    int hit;
};

static int match_name(void *arg, const char *name)
{
    struct name_match *m = arg;
    m->hit |= publish_wanted(m->fs, name);
    return m->hit;
}

/* FUSE passes names up to 1024 bytes; POSIX file systems take 255. */
static int name_ok(const char *name)
{
    return strlen(name) > NAME_MAX ? -ENAMETOOLONG : 0;
}

/* A follower, a writer another mount took over from, and the snapshots
 * under .snapshots (inodes a and b, 0 for none) change nothing: replies
 * EROFS and returns 1 then. */
static int refused(fuse_req_t req, uint64_t a, uint64_t b)
{
    if (!fs_read_only(fs_of(req)) && !snapview_owns(a) && !snapview_owns(b))
        return 0;
    fuse_reply_err(req, EROFS);
    return 1;
}

/* .snapshots in the root is the snapshots' (snapview.h): no file takes its name. */
static int name_free(uint64_t parent, const char *name)
{
    return parent == NS_ROOT && !strcmp(name, SNAPVIEW_NAME) ? -EEXIST : 0;
}

/* ---- lookup and attributes ---- */

/* mountinfo escapes a space, tab, newline and backslash as \ooo. */
static void unescape(char *s)
{
    char *out = s;
    for (; *s; s++) {
        unsigned v;
        if (s[0] == '\\' && sscanf(s + 1, "%3o", &v) == 1 && v < 256) {
            *out++ = (char)v;
            s += 3;
        } else {
            *out++ = *s;
        }
    }
    *out = '\0';
}

/* The kernel offers a FUSE mount 128 KiB of read-ahead and lets the daemon
 * ask for no more, so a sequential read arrives in 128 KiB requests. The
 * mount's own knob in sysfs (root's to turn) takes it to FS_MAX_READ: four
 * times fewer requests, each a wake-up and a reply. Turned on the first
 * request after INIT (whose answer resets it), and found through
 * /proc/self/mountinfo: a stat of the mount point from in here would be a
 * request to ourselves, which a SIGKILL at the wrong moment turns into a
 * daemon that can never exit. */
static void widen_read_ahead(struct fs *fs)
{
    /* A load first: every lookup and getattr passes here, and only the first need write. */
    if (__atomic_load_n(&fs->widened, __ATOMIC_RELAXED) ||
        __atomic_exchange_n(&fs->widened, 1, __ATOMIC_RELAXED) || geteuid() != 0 || !fs->mount_path)
        return;
    FILE *f = fopen("/proc/self/mountinfo", "re");
    char line[4096 + 256], path[4096 + 256], dev[32] = "";
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "%*s %*s %31s %*s %4351s", dev, path) == 2 && (unescape(path), 1) &&
            !strcmp(path, fs->mount_path) && strstr(line, " - fuse"))
            break;
        else
            dev[0] = '\0';
    if (f)
        fclose(f);
    char knob[96], kb[24];
    snprintf(knob, sizeof knob, "/sys/class/bdi/%s/read_ahead_kb", dev);
    int n = snprintf(kb, sizeof kb, "%zu", FS_MAX_READ >> 10);
    int fd = dev[0] ? open(knob, O_WRONLY | O_CLOEXEC) : -1;
    if (fd < 0 || write(fd, kb, (size_t)n) != n)
        log_debug("read-ahead stays the kernel's: %s", dev[0] ? knob : "mount not found");
    if (fd >= 0)
        close(fd);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    widen_read_ahead(fs_of(req));
    struct fs *fs = fs_of(req);
    struct ns_attr a;
    int rc = name_ok(name);
    if (rc == 0 && (snapview_owns(parent) || name_free(parent, name))) {
        rc = snapview_lookup(fs->views, parent, name, &a);
        return rc ? reply_err(req, rc) : reply_entry(req, &a);
    }
    if (rc == 0)
        rc = ns_lookup(fs->ns, parent, name, &a);
    if (rc == -ENOENT) { /* cached as absent: nothing but us changes this tree */
        struct fuse_entry_param e = { .ino = 0, .entry_timeout = ttl(req) };
        fuse_reply_entry(req, &e);
        return;
    }
    if (rc == 0)
        rc = inode_attr(fs_of(req), a.ino, &a);
    if (rc)
        return reply_err(req, rc);
    reply_entry(req, &a);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t n)
{
    if (!snapview_owns(ino))
        inode_forget(fs_of(req), ino, n);
    fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *v)
{
    for (size_t i = 0; i < count; i++)
        if (!snapview_owns(v[i].ino))
            inode_forget(fs_of(req), v[i].ino, v[i].nlookup);
    fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    widen_read_ahead(fs_of(req));
    (void)fi;
    struct fs *fs = fs_of(req);
    struct ns_attr a;
    struct stat st;
    int rc = snapview_owns(ino) ? snapview_getattr(fs->views, ino, &a) : inode_attr(fs, ino, &a);
    if (rc)
        return reply_err(req, rc);
    to_stat(fs, &a, &st);
    fuse_reply_attr(req, &st, ttl_of(req, ino));
}

/* The kernel's setattr flags as namespace fields. */
static unsigned setattr_mask(int to_set, const struct stat *st, struct ns_attr *a)
{
    unsigned mask = 0;
    struct timespec t = now();
    a->mode = st->st_mode, a->uid = st->st_uid, a->gid = st->st_gid;
    a->atime = to_set & FUSE_SET_ATTR_ATIME_NOW ? t : st->st_atim;
    a->mtime = to_set & FUSE_SET_ATTR_MTIME_NOW ? t : st->st_mtim;
    a->ctime = st->st_ctim;
    mask |= to_set & FUSE_SET_ATTR_MODE ? NS_SET_MODE : 0;
    mask |= to_set & FUSE_SET_ATTR_UID ? NS_SET_UID : 0;
    mask |= to_set & FUSE_SET_ATTR_GID ? NS_SET_GID : 0;
    mask |= to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_ATIME_NOW) ? NS_SET_ATIME : 0;
    mask |= to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW) ? NS_SET_MTIME : 0;
    mask |= to_set & FUSE_SET_ATTR_CTIME ? NS_SET_CTIME : 0;
    return mask;
}

/* Truncation: bytes first, then the size, with the inode's cache flushed so
 * the two agree. Caller holds fs->freeze shared. */
static int set_size(struct fs *fs, uint64_t ino, uint64_t size, struct ns_attr *a, unsigned *mask)
{
    struct ns_attr cur;
    int rc = inode_attr(fs, ino, &cur);
    if (rc == 0 && !S_ISREG(cur.mode))
        rc = S_ISDIR(cur.mode) ? -EISDIR : -EINVAL;
    struct inode *in = rc ? NULL : inode_get(fs, ino);
    if (in)
        rc = inode_flush(fs, in);
    if (rc == 0)
        rc = blocks_truncate(fs->blocks, ino, cur.size, size);
    a->size = size;
    *mask |= NS_SET_SIZE;
    /* FUSE leaves a truncation's times to the file system; ext4 moves both, always. */
    if (!(*mask & NS_SET_MTIME)) {
        a->mtime = now();
        *mask |= NS_SET_MTIME;
    }
    return rc;
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *st, int to_set,
                       struct fuse_file_info *fi)
{
    if (refused(req, ino, 0))
        return;
    (void)fi;
    struct fs *fs = fs_of(req);
    struct ns_attr a = { 0 }, out;
    unsigned mask = setattr_mask(to_set, st, &a);
    pthread_rwlock_rdlock(&fs->freeze);
    int rc = 0;
    if (to_set & FUSE_SET_ATTR_SIZE)
        rc = set_size(fs, ino, (uint64_t)st->st_size, &a, &mask);
    struct inode *in = rc ? NULL : inode_get(fs, ino);
    if (in) /* cached size and times are older than what is set now */
        rc = inode_flush(fs, in);
    if (rc == 0)
        rc = ns_setattr(fs->ns, ino, &a, mask, &out);
    pthread_rwlock_unlock(&fs->freeze);
    fs_changed(fs);
    if (rc)
        return reply_err(req, rc);
    struct stat res;
    to_stat(fs, &out, &res);
    fuse_reply_attr(req, &res, ttl(req));
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
    struct buf b = { 0 };
    struct fs *fs = fs_of(req);
    int rc =
        snapview_owns(ino) ? snapview_readlink(fs->views, ino, &b) : ns_readlink(fs->ns, ino, &b);
    if (rc == 0)
        rc = buf_append(&b, "", 1);
    if (rc)
        reply_err(req, rc);
    else
        fuse_reply_readlink(req, (char *)b.data);
    buf_free(&b);
}

/* An open file's handle. Who opened it for writing: with the kernel's
 * writeback cache, writes reach us from its flusher, not from the writer,
 * so the writer's identity is taken at open (root needs no record). And a
 * follower's file keeps reading the version it opened (blocks.h). */
struct handle {
    int has_opener;
    uid_t uid;
    gid_t gid;
    int ngroups;
    gid_t groups[64];
    struct blocks_version *version;
    uint64_t version_next; /* where the last read of the version ended */
};

static struct handle *handle_of(const struct fuse_file_info *fi)
{
    return (struct handle *)(uintptr_t)fi->fh;
}

static void handle_free(struct handle *h)
{
    if (h)
        blocks_version_free(h->version);
    free(h);
}

static int add_opener(fuse_req_t req, int flags, struct handle **h)
{
    const struct fuse_ctx *ctx = fuse_req_ctx(req);
    if ((flags & O_ACCMODE) == O_RDONLY || ctx->uid == 0)
        return 0;
    if (!*h && !(*h = calloc(1, sizeof **h)))
        return -ENOMEM;
    (*h)->has_opener = 1;
    (*h)->uid = ctx->uid;
    (*h)->gid = ctx->gid;
    int n = fuse_req_getgroups(req, 64, (*h)->groups);
    (*h)->ngroups = n < 0 ? 0 : n > 64 ? 64 : n;
    return 0;
}

/* A follower's open: the file's version as of now, which no switch to a
 * newer snapshot (fs->freeze exclusive) can be halfway through. */
static int add_version(struct fs *fs, uint64_t ino, struct handle **h)
{
    struct ns_attr a;
    if (!*h && !(*h = calloc(1, sizeof **h)))
        return -ENOMEM;
    pthread_rwlock_rdlock(&fs->freeze);
    int rc = !fs->half_switched ? inode_attr(fs, ino, &a)
                                : err_set(-EIO, "the follower is between two snapshots after a "
                                                "failed switch; its next poll tries again");
    if (rc == 0 && S_ISREG(a.mode))
        rc = blocks_version_get(fs->blocks, ino, a.size, &(*h)->version);
    pthread_rwlock_unlock(&fs->freeze);
    return rc;
}

/* ---- creating and removing ---- */

static int make(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev,
                const char *target, struct ns_attr *a)
{
    struct fs *fs = fs_of(req);
    const struct fuse_ctx *ctx = fuse_req_ctx(req);
    int rc = name_ok(name);
    if (rc == 0)
        rc = name_free(parent, name);
    if (rc)
        return rc;
    pthread_rwlock_rdlock(&fs->freeze);
    rc = ns_create(fs->ns, parent, name, mode, rdev, ctx->uid, ctx->gid, target, a);
    pthread_rwlock_unlock(&fs->freeze);
    fs_changed(fs);
    return rc;
}

static void reply_made(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev,
                       const char *target)
{
    struct ns_attr a;
    int rc = make(req, parent, name, mode, rdev, target, &a);
    if (rc)
        return reply_err(req, rc);
    reply_entry(req, &a);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
    if (refused(req, parent, 0))
        return;
    reply_made(req, parent, name, mode, rdev, NULL);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    if (refused(req, parent, 0))
        return;
    reply_made(req, parent, name, S_IFDIR | (mode & 07777), 0, NULL);
}

static void op_symlink(fuse_req_t req, const char *target, fuse_ino_t parent, const char *name)
{
    if (refused(req, parent, 0))
        return;
    reply_made(req, parent, name, S_IFLNK | 0777, 0, target);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
    if (refused(req, parent, 0))
        return;
    struct fs *fs = fs_of(req);
    struct ns_attr a;
    int rc = make(req, parent, name, S_IFREG | (mode & 07777), 0, NULL, &a);
    if (rc == 0)
        rc = inode_ref(fs, a.ino, 1);
    if (rc == 0 && (rc = inode_open(fs, a.ino)) != 0)
        inode_forget(fs, a.ino, 1);
    if (rc)
        return reply_err(req, rc);
    struct fuse_entry_param e = { .ino = a.ino,
                                  .attr_timeout = ttl(req),
                                  .entry_timeout = ttl(req) };
    to_stat(fs, &a, &e.attr);
    fi->keep_cache = 1;
    struct handle *h = NULL;
    if (add_opener(req, fi->flags, &h)) {
        inode_release(fs, a.ino);
        inode_forget(fs, a.ino, 1);
        return reply_err(req, -ENOMEM);
    }
    fi->fh = (uint64_t)(uintptr_t)h;
    if (fuse_reply_create(req, &e, fi)) {
        handle_free(h);
        inode_release(fs, a.ino);
        inode_forget(fs, a.ino, 1);
    }
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t parent, const char *name)
{
    if (refused(req, ino, parent))
        return;
    struct fs *fs = fs_of(req);
    struct ns_attr a;
    struct inode *in = inode_get(fs, ino);
    int rc = name_ok(name);
    if (rc == 0)
        rc = name_free(parent, name);
    pthread_rwlock_rdlock(&fs->freeze);
    if (rc == 0 && in)
        rc = inode_flush(fs, in);
    if (rc == 0)
        rc = ns_link(fs->ns, ino, parent, name, &a);
    pthread_rwlock_unlock(&fs->freeze);
    fs_changed(fs);
    if (rc)
        return reply_err(req, rc);
    reply_entry(req, &a);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    if (refused(req, parent, 0))
        return;
    struct fs *fs = fs_of(req);
    uint64_t ino = 0;
    uint32_t nlink = 1;
    pthread_rwlock_rdlock(&fs->freeze);
    int rc = ns_unlink(fs->ns, parent, name, &ino, &nlink);
    pthread_rwlock_unlock(&fs->freeze);
    fs_changed(fs);
    if (rc == 0 && nlink == 0)
        inode_delete_if_unused(fs, ino);
    fuse_reply_err(req, -rc);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    if (refused(req, parent, 0))
        return;
    struct fs *fs = fs_of(req);
    uint64_t ino = 0;
    pthread_rwlock_rdlock(&fs->freeze);
    int rc = ns_rmdir(fs->ns, parent, name, &ino);
    pthread_rwlock_unlock(&fs->freeze);
    fs_changed(fs);
    if (rc == 0)
        inode_delete_if_unused(fs, ino);
    fuse_reply_err(req, -rc);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags)
{
    if (refused(req, parent, newparent))
        return;
    struct fs *fs = fs_of(req);
    uint64_t victim = 0;
    uint32_t nlink = 1;
    int rc = name_ok(newname);
    if (rc == 0)
        rc = name_free(newparent, newname);
    pthread_rwlock_rdlock(&fs->freeze);
    if (rc == 0)
        rc = ns_rename(fs->ns, parent, name, newparent, newname, flags, &victim, &nlink);
    pthread_rwlock_unlock(&fs->freeze);
    fs_changed(fs);
    if (rc == 0 && victim && nlink == 0)
        inode_delete_if_unused(fs, victim);
    /* The engine's commit: it returns once the snapshot holding it is in the bucket. */
    if (rc == 0 && publish_wanted(fs, newname))
        rc = publisher_sync(fs->pub);
    if (rc)
        return reply_err(req, rc);
    fuse_reply_err(req, 0);
}

/* ---- file data ---- */

/* relatime, as ext4 mounts by default: atime moves on a read if it is not
 * newer than mtime or ctime, or is a day old. Returns 1 if it moved. */
static int touch_atime(struct fs *fs, const struct ns_attr *a)
{
    struct timespec t = now();
    if (fs_read_only(fs))
        return 0;
    if (nsec(a->atime) > nsec(a->mtime) && nsec(a->atime) > nsec(a->ctime) &&
        nsec(t) - nsec(a->atime) < DAY_NS)
        return 0;
    struct ns_attr set = { .atime = t }, out;
    if (ns_setattr(fs->ns, a->ino, &set, NS_SET_ATIME, &out) != 0)
        return 0;
    fs_changed(fs);
    return 1;
}

/* Reads the kernel serves from its page cache never reach us, so relatime
 * is also applied when a file is opened for reading (where ext4 would wait
 * for the first read), and the kernel told its cached atime is stale. */
static void touch_atime_on_open(struct fs *fs, uint64_t ino, int flags)
{
    struct ns_attr a;
    if ((flags & O_ACCMODE) == O_WRONLY || inode_attr(fs, ino, &a) || !touch_atime(fs, &a))
        return;
    fuse_lowlevel_notify_inval_inode(fs->se, ino, -1, 0);
}

/* With atomic O_TRUNC (libfuse's default) the kernel leaves truncation to open. */
static int truncate_on_open(struct fs *fs, uint64_t ino)
{
    struct ns_attr a = { 0 }, out;
    unsigned mask = 0;
    pthread_rwlock_rdlock(&fs->freeze);
    int rc = set_size(fs, ino, 0, &a, &mask);
    if (rc == 0)
        rc = ns_setattr(fs->ns, ino, &a, mask, &out);
    pthread_rwlock_unlock(&fs->freeze);
    fs_changed(fs);
    return rc;
}

/* A file under .snapshots: its version, which never changes (the page
 * cache may keep it). */
static void open_in_snapshot(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct handle *h = calloc(1, sizeof *h);
    int rc = h ? snapview_version(fs_of(req)->views, ino, &h->version) : -ENOMEM;
    if (rc) {
        handle_free(h);
        return reply_err(req, rc);
    }
    fi->keep_cache = 1;
    fi->fh = (uint64_t)(uintptr_t)h;
    if (fuse_reply_open(req, fi))
        handle_free(h);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct fs *fs = fs_of(req);
    struct handle *h = NULL;
    int following = fs_following(fs);
    if (((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) && refused(req, ino, 0))
        return;
    if (snapview_owns(ino))
        return open_in_snapshot(req, ino, fi);
    int rc = inode_open(fs, ino);
    if (rc == 0 && (fi->flags & O_TRUNC) && (rc = truncate_on_open(fs, ino)) != 0)
        inode_release(fs, ino);
    if (rc)
        return reply_err(req, rc);
    rc = add_opener(req, fi->flags, &h);
    if (rc == 0 && following)
        rc = add_version(fs, ino, &h);
    if (rc) {
        handle_free(h);
        inode_release(fs, ino);
        return reply_err(req, rc);
    }
    touch_atime_on_open(fs, ino, fi->flags);
    /* Nothing but this mount writes the file: what the kernel cached stays
     * true. A follower's files change with each snapshot, and each open
     * reads its own version: the page cache, shared by all, is no place
     * for them. */
    fi->keep_cache = !following;
    fi->direct_io = following;
    fi->fh = (uint64_t)(uintptr_t)h;
    if (fuse_reply_open(req, fi)) {
        handle_free(h);
        inode_release(fs, ino);
    }
}

#define READ_SLACK (4 * FS_MAX_READ)

/* A read smaller than this that does not continue the last is random: the
 * kernel asks for a page, or a first read-ahead of a few, for one random
 * access, and for 128 KiB at least for a stream, even one of several
 * streams through one file that take turns (which look like jumps). */
#define RANDOM_READ ((size_t)128 << 10)

/* Whether a read at off continues one that ended at next, give or take the
 * kernel's own read-ahead, served out of order by several threads. */
static int continues(uint64_t next, uint64_t off)
{
    return off + READ_SLACK >= next && off <= next + READ_SLACK;
}

/* Read-ahead. A read that continues the last one doubles the window, in
 * blocks, up to what the budget allows; any other read closes it. The
 * blocks in the window are fetched in parallel. Returns BLOCKS_RANDOM for
 * a read that is not sequential. */
static unsigned read_ahead(struct fs *fs, uint64_t ino, uint64_t size, uint64_t off, size_t len)
{
    struct inode *in = inode_get(fs, ino);
    if (!in)
        return 0;
    uint64_t bs = blocks_block_size(fs->blocks);
    uint64_t end = off + len, first = 0;
    unsigned count = 0, random = 0;
    pthread_mutex_lock(&in->lock);
    if (continues(in->ra_next, off)) {
        unsigned max = (unsigned)(fs->read_ahead / bs ? fs->read_ahead / bs : 1);
        in->ra_window = in->ra_window ? (in->ra_window * 2 < max ? in->ra_window * 2 : max) : 1;
        uint64_t from = end / bs + 1, to = end / bs + 1 + in->ra_window;
        first = from > in->ra_upto ? from : in->ra_upto;
        count = to > first ? (unsigned)(to - first) : 0;
        if (count)
            in->ra_upto = to;
    } else {
        in->ra_window = 0;
        in->ra_upto = 0;
        random = len < RANDOM_READ ? BLOCKS_RANDOM : 0;
    }
    in->ra_next = end > in->ra_next || !in->ra_window ? end : in->ra_next;
    pthread_mutex_unlock(&in->lock);
    if (count)
        blocks_prefetch(fs->blocks, ino, size, first, count);
    return random;
}

/* As read_ahead decides for a file, for a handle's version (fetched on
 * demand only: no window). */
static unsigned version_read(struct handle *h, uint64_t off, size_t len)
{
    uint64_t next = __atomic_exchange_n(&h->version_next, off + len, __ATOMIC_RELAXED);
    return continues(next, off) || len >= RANDOM_READ ? 0 : BLOCKS_RANDOM;
}

/* A read copied into a buffer and replied: of the file as it is (of size
 * bytes), or of a handle's version. Returns what the read returned. */
static ssize_t reply_copied(fuse_req_t req, uint64_t ino, uint64_t fsize,
                            const struct blocks_version *version, size_t size, off_t off,
                            unsigned flags)
{
    struct fs *fs = fs_of(req);
    size_t cap = size <= FS_MAX_READ ? FS_MAX_READ : size; /* the kernel asks no more */
    char *buf = cap == FS_MAX_READ ? bufpool_get(fs->read_bufs) : aligned_alloc(BUFPOOL_ALIGN, cap);
    ssize_t n = !buf ? -ENOMEM
                : version
                    ? blocks_read_version(fs->blocks, version, (uint64_t)off, size, buf, flags)
                    : blocks_read(fs->blocks, ino, fsize, (uint64_t)off, size, buf, flags);
    if (n < 0)
        reply_err(req, (int)n);
    else
        fuse_reply_buf(req, buf, (size_t)n);
    bufpool_put(fs->read_bufs, buf, cap);
    return n;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    struct fs *fs = fs_of(req);
    struct ns_attr a;
    struct handle *h = handle_of(fi);
    if (h && h->version) { /* the file may be gone from the tree */
        reply_copied(req, ino, 0, h->version, size, off, version_read(h, (uint64_t)off, size));
        return;
    }
    int rc = inode_attr(fs, ino, &a);
    if (rc)
        return reply_err(req, rc);
    unsigned flags = read_ahead(fs, ino, a.size, (uint64_t)off, size);
    struct blocks_view v;
    if (blocks_view(fs->blocks, ino, a.size, (uint64_t)off, size, &v)) {
        fuse_reply_buf(req, v.data, v.len); /* the one copy: into the kernel */
        blocks_view_done(fs->blocks, &v);
        touch_atime(fs, &a);
        return;
    }
    if (reply_copied(req, ino, a.size, NULL, size, off, flags) >= 0)
        touch_atime(fs, &a);
}

/* Whether a write by o must clear setuid and setgid, as the kernel decides
 * for ext4: a writer without CAP_FSETID (taken here as anyone but root)
 * loses setuid, and setgid when the file is group-executable or the writer
 * is not in its group. */
static unsigned privs_to_kill(const struct handle *o, const struct ns_attr *a)
{
    unsigned kill = a->mode & S_ISUID;
    if (a->mode & S_ISGID) {
        int member = o->gid == a->gid;
        for (int i = 0; i < o->ngroups; i++)
            member |= o->groups[i] == a->gid;
        if ((a->mode & S_IXGRP) || !member)
            kill |= S_ISGID;
    }
    return kill;
}

static void kill_privs(struct fs *fs, uint64_t ino, const struct fuse_file_info *fi)
{
    const struct handle *o = handle_of(fi);
    struct ns_attr a, out;
    if (!o || !o->has_opener || ns_getattr(fs->ns, ino, &a) != 0 || !(a.mode & (S_ISUID | S_ISGID)))
        return;
    unsigned kill = privs_to_kill(o, &a);
    if (!kill)
        return;
    a.mode &= ~kill;
    if (ns_setattr(fs->ns, ino, &a, NS_SET_MODE, &out) == 0)
        fuse_lowlevel_notify_inval_inode(fs->se, ino, -1, 0);
}

/* Copies a write request's bytes into the cache file, a block at a time; a
 * request the kernel delivered in a pipe is spliced, never copied through
 * our memory (which costs more than anything else here on some VMs). */
static int write_data(struct fs *fs, uint64_t ino, uint64_t size_before, uint64_t off,
                      struct fuse_bufvec *in, size_t len)
{
    size_t bs = blocks_block_size(fs->blocks);
    for (size_t done = 0; done < len;) {
        uint64_t pos = off + done;
        size_t n = (size_t)(bs - pos % bs) < len - done ? (size_t)(bs - pos % bs) : len - done;
        struct blocks_span sp;
        int rc = blocks_write_begin(fs->blocks, ino, size_before, pos, n, &sp);
        if (rc)
            return rc;
        struct fuse_bufvec out = FUSE_BUFVEC_INIT(n);
        out.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
        out.buf[0].fd = sp.fd;
        out.buf[0].pos = (off_t)pos;
        ssize_t w = fuse_buf_copy(&out, in, 0);
        blocks_write_end(fs->blocks, &sp);
        if (w != (ssize_t)n)
            return w < 0
                       ? err_set((int)w, "cache: write of inode %llu: %s", (unsigned long long)ino,
                                 strerror((int)-w))
                       : err_set(-EIO, "cache: short write of inode %llu", (unsigned long long)ino);
        done += n;
    }
    return 0;
}

/* Room for a write, then fs->freeze shared. The room is reserved holding
 * nothing, since a snapshot must be able to freeze while a writer waits;
 * if one froze the write's blocks in between, the copies they now need
 * were not counted: try again. */
static int hold_room(struct fs *fs, uint64_t ino, uint64_t off, size_t len,
                     struct blocks_room *room)
{
    for (;;) {
        int rc = blocks_reserve(fs->blocks, ino, off, len, room);
        if (rc)
            return rc;
        pthread_rwlock_rdlock(&fs->freeze);
        if (blocks_room_holds(fs->blocks, ino, off, len, room))
            return 0;
        pthread_rwlock_unlock(&fs->freeze);
        blocks_release(fs->blocks, room);
    }
}

static void op_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in, off_t off,
                         struct fuse_file_info *fi)
{
    if (refused(req, ino, 0))
        return;
    struct fs *fs = fs_of(req);
    struct inode *in_mem = inode_get(fs, ino);
    struct ns_attr a;
    size_t size = fuse_buf_size(in);
    if (!in_mem)
        return reply_err(req, -EBADF);
    struct blocks_room room;
    int rc = hold_room(fs, ino, (uint64_t)off, size, &room);
    if (rc)
        return reply_err(req, rc);
    pthread_mutex_lock(&in_mem->lock);
    rc = in_mem->dirty ? 0 : ns_getattr(fs->ns, ino, &a);
    uint64_t size_before = in_mem->dirty ? in_mem->size : a.size;
    if (rc == 0)
        rc = write_data(fs, ino, size_before, (uint64_t)off, in, size);
    if (rc == 0) {
        uint64_t end = (uint64_t)off + size;
        in_mem->size = end > size_before ? end : size_before;
        in_mem->mtime = in_mem->ctime = now();
        in_mem->dirty = 1;
    }
    pthread_mutex_unlock(&in_mem->lock);
    if (rc == 0)
        kill_privs(fs, ino, fi);
    pthread_rwlock_unlock(&fs->freeze);
    blocks_release(fs->blocks, &room);
    fs_changed(fs);
    if (rc)
        return reply_err(req, rc);
    fuse_reply_write(req, size);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    handle_free(handle_of(fi));
    if (!snapview_owns(ino))
        inode_release(fs_of(req), ino);
    fuse_reply_err(req, 0);
}

/* fsync: durable locally (the contract); remote too with --sync=remote, or
 * when the file's name matches --publish-on. */
static int sync_file(struct fs *fs, uint64_t ino, int datasync)
{
    struct inode *in = inode_get(fs, ino);
    int rc = in && !datasync ? inode_flush(fs, in) : in ? inode_flush(fs, in) : 0;
    if (rc == 0)
        rc = blocks_fsync(fs->blocks, ino);
    if (rc == 0)
        rc = db_sync(fs->db);
    struct name_match m = { fs, 0 };
    if (rc == 0 && fs->publish_on)
        ns_names_of(fs->ns, ino, match_name, &m);
    if (rc == 0 && (fs->sync == SYNC_REMOTE || m.hit))
        rc = publisher_sync(fs->pub);
    return rc;
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    (void)fi;
    int rc = sync_file(fs_of(req), ino, datasync);
    if (rc)
        return reply_err(req, rc);
    fuse_reply_err(req, 0);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    op_fsync(req, ino, datasync, fi);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
                         struct fuse_file_info *fi)
{
    if (refused(req, ino, 0))
        return;
    (void)fi;
    struct fs *fs = fs_of(req);
    struct inode *in = inode_get(fs, ino);
    if (mode != 0)
        return reply_err(req, -EOPNOTSUPP);
    if (!in)
        return reply_err(req, -EBADF);
    /* Mode 0 promises the space and, past the end, a larger file of zeros:
     * a hole here, as the bucket has room. */
    pthread_rwlock_rdlock(&fs->freeze);
    pthread_mutex_lock(&in->lock);
    struct ns_attr a;
    int rc = in->dirty ? 0 : ns_getattr(fs->ns, ino, &a);
    uint64_t size = in->dirty ? in->size : a.size, end = (uint64_t)off + (uint64_t)len;
    if (rc == 0 && end > size) {
        in->size = end;
        in->ctime = now();
        if (!in->dirty)
            in->mtime = a.mtime;
        in->dirty = 1;
    }
    pthread_mutex_unlock(&in->lock);
    pthread_rwlock_unlock(&fs->freeze);
    fs_changed(fs);
    fuse_reply_err(req, -rc);
}

/* ---- directories ---- */

struct dirbuf {
    fuse_req_t req;
    struct fs *fs;
    char *buf;
    size_t size, used;
    int plus;
};

static int add_entry(void *arg, const char *name, const struct ns_attr *row, uint64_t next_off)
{
    struct dirbuf *d = arg;
    struct ns_attr attr = *row, *a = &attr;
    int ours = snapview_owns(a->ino);
    if (!ours)
        inode_overlay(d->fs, a);
    size_t left = d->size - d->used, n;
    int dot = name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2]));
    if (d->plus) {
        /* A snapshot's entries are looked up: no reference to count. */
        struct fuse_entry_param e = { .ino = ours ? 0 : a->ino,
                                      .attr_timeout = ttl(d->req),
                                      .entry_timeout = ttl(d->req) };
        to_stat(d->fs, a, &e.attr);
        n = fuse_add_direntry_plus(d->req, d->buf + d->used, left, name, &e, (off_t)next_off);
        if (n <= left && !dot && !ours && inode_ref(d->fs, a->ino, 1))
            return 1;
    } else {
        struct stat st = { .st_ino = a->ino, .st_mode = a->mode };
        n = fuse_add_direntry(d->req, d->buf + d->used, left, name, &st, (off_t)next_off);
    }
    if (n > left)
        return 1;
    d->used += n;
    return 0;
}

static void readdir_any(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, int plus)
{
    struct dirbuf d = { req, fs_of(req), malloc(size), size, 0, plus };
    /* No entry takes less than 24 bytes of the reply: a bound on how many fit. */
    size_t max = size / 24 + 2;
    int rc = !d.buf ? -ENOMEM
             : snapview_owns(ino)
                 ? snapview_readdir(d.fs->views, ino, (uint64_t)off, max, add_entry, &d)
                 : ns_readdir(d.fs->ns, ino, (uint64_t)off, max, add_entry, &d);
    if (rc)
        reply_err(req, rc);
    else
        fuse_reply_buf(req, d.buf, d.used);
    free(d.buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    (void)fi;
    readdir_any(req, ino, size, off, 0);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
    (void)fi;
    readdir_any(req, ino, size, off, 1);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
    (void)ino;
    uint64_t inodes = 0, bytes = 0;
    int rc = ns_usage(fs_of(req)->ns, &inodes, &bytes);
    if (rc)
        return reply_err(req, rc);
    /* A bucket has no fixed size: report a petabyte, less what is used. */
    const uint64_t bsize = 4096, total = (1ull << 50) / bsize, files = 1ull << 32;
    uint64_t used = (bytes + bsize - 1) / bsize;
    struct statvfs st = { .f_bsize = bsize,
                          .f_frsize = bsize,
                          .f_blocks = total,
                          .f_bfree = total - used,
                          .f_bavail = total - used,
                          .f_files = files,
                          .f_ffree = files - inodes,
                          .f_favail = files - inodes,
                          .f_namemax = 255 };
    fuse_reply_statfs(req, &st);
}

/* ---- extended attributes ---- */

/* ACLs would need enforcing, which this file system does not do: refuse
 * them rather than store a promise it would not keep. */
static int xattr_allowed(const char *name)
{
    if (strncmp(name, "system.", 7) == 0)
        return -EOPNOTSUPP;
    return strncmp(name, CTL_PREFIX, strlen(CTL_PREFIX)) == 0 ? -EPERM : 0;
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                        size_t size, int flags)
{
    if (refused(req, ino, 0))
        return;
    struct fs *fs = fs_of(req);
    int rc = xattr_allowed(name);
    int nsflags = (flags & XATTR_CREATE ? NS_XATTR_CREATE : 0) |
                  (flags & XATTR_REPLACE ? NS_XATTR_REPLACE : 0);
    if (rc == 0) {
        pthread_rwlock_rdlock(&fs->freeze);
        rc = ns_setxattr(fs->ns, ino, name, value, size, nsflags);
        pthread_rwlock_unlock(&fs->freeze);
        fs_changed(fs);
    }
    fuse_reply_err(req, -rc);
}

/* getxattr and listxattr share the size protocol: 0 asks for the length. */
static void reply_xattr(fuse_req_t req, int rc, const struct buf *b, size_t size)
{
    if (rc)
        reply_err(req, rc);
    else if (size == 0)
        fuse_reply_xattr(req, b->len);
    else if (size < b->len)
        fuse_reply_err(req, ERANGE);
    else
        fuse_reply_buf(req, (const char *)b->data, b->len);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    struct fs *fs = fs_of(req);
    struct buf b = { 0 };
    int rc;
    if (ino == NS_ROOT && strcmp(name, CTL_XATTR) == 0) /* where ckptctl finds us */
        rc = buf_printf(&b, "%s", control_socket_path(fs));
    else if (xattr_allowed(name) == -EOPNOTSUPP)
        rc = -ENODATA;
    else
        rc = snapview_owns(ino) ? snapview_getxattr(fs->views, ino, name, &b)
                                : ns_getxattr(fs->ns, ino, name, &b);
    reply_xattr(req, rc, &b, size);
    buf_free(&b);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
    struct buf b = { 0 };
    struct fs *fs = fs_of(req);
    int rc =
        snapview_owns(ino) ? snapview_listxattr(fs->views, ino, &b) : ns_listxattr(fs->ns, ino, &b);
    reply_xattr(req, rc, &b, size);
    buf_free(&b);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
    if (refused(req, ino, 0))
        return;
    struct fs *fs = fs_of(req);
    int rc = xattr_allowed(name);
    if (rc == 0) {
        pthread_rwlock_rdlock(&fs->freeze);
        rc = ns_removexattr(fs->ns, ino, name);
        pthread_rwlock_unlock(&fs->freeze);
        fs_changed(fs);
    }
    fuse_reply_err(req, -rc);
}

/* ---- session ---- */

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    struct fs *fs = userdata;
    /* Large writes and many requests in flight: throughput of sequential I/O. */
    /* A page under 1 MiB, so a request with its header fits a pipe of the default
     * maximum size (fs.pipe-max-size) and libfuse can splice it. */
    conn->max_write = (1 << 20) - 4096;
    conn->max_readahead = FS_MAX_READ;
    conn->max_background = 32; /* below the worker threads: writers waiting for room leave some */
    conn->congestion_threshold = 24;
    if (conn->capable & FUSE_CAP_READDIRPLUS)
        conn->want |= FUSE_CAP_READDIRPLUS;
    if (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT)
        conn->want |= FUSE_CAP_NO_OPENDIR_SUPPORT;
    /* Writes land in the kernel's page cache and reach us in large batches
     * in the background: write() runs at page-cache speed, fsync flushes.
     * The kernel then trusts its own file sizes over ours, which a
     * follower's files, changing with each snapshot, cannot have: it goes
     * without, also once promoted (until mounted again). */
    if ((conn->capable & FUSE_CAP_WRITEBACK_CACHE) && !fs_following(fs))
        conn->want |= FUSE_CAP_WRITEBACK_CACHE;
    /* Write requests arrive in a pipe and are spliced into the cache files. */
    if (conn->capable & FUSE_CAP_SPLICE_READ)
        conn->want |= FUSE_CAP_SPLICE_READ;
    log_debug("FUSE capable 0x%x, want 0x%x", conn->capable, conn->want);
    /* Locks stay local to this machine (the kernel handles them), which is
     * all a single writer needs. */
    conn->want &= ~(unsigned)(FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS);
}

/* Not implemented on purpose, each a round trip the kernel then skips: flush
 * (close has nothing to write back), opendir and releasedir (a directory
 * needs no handle). */
const struct fuse_lowlevel_ops ckptfs_ops = {
    .init = op_init,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .readlink = op_readlink,
    .mknod = op_mknod,
    .mkdir = op_mkdir,
    .symlink = op_symlink,
    .unlink = op_unlink,
    .rmdir = op_rmdir,
    .rename = op_rename,
    .link = op_link,
    .create = op_create,
    .open = op_open,
    .read = op_read,
    .write_buf = op_write_buf,
    .release = op_release,
    .fsync = op_fsync,
    .fallocate = op_fallocate,
    .readdir = op_readdir,
    .readdirplus = op_readdirplus,
    .fsyncdir = op_fsyncdir,
    .statfs = op_statfs,
    .setxattr = op_setxattr,
    .getxattr = op_getxattr,
    .listxattr = op_listxattr,
    .removexattr = op_removexattr,
};
