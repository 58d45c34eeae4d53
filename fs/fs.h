/*
 * The daemon's state, shared by the files of fs/: what ops.c serves FUSE
 * requests from, what publisher.c publishes, what control.c reports.
 *
 * Locks, in the order they may be taken: fs->freeze (shared by every
 * operation that changes files or the tree, exclusive while a snapshot is
 * frozen), an inode's lock, then the locks inside namespace, blocks and db.
 */
#ifndef CKPT_FS_FS_H
#define CKPT_FS_FS_H

#include <pthread.h>
#include <stdint.h>

#include "cache/blocks.h"
#include "cache/codec.h"
#include "cache/remote.h"
#include "cache/store.h"
#include "fs/namespace.h"
#include "fs/snapshot.h"
#include "util/db.h"
#include "util/hmap.h"
#include "util/pool.h"

struct publisher;
struct follow;
struct writer;
struct bootstrap;
struct snapview;
struct fuse_session;

enum sync_mode { SYNC_LOCAL, SYNC_REMOTE };

#define FS_READ_AHEAD_MAX ((size_t)64 << 20) /* chunks in flight ahead of readers, at most */
#define FS_MAX_READ       ((size_t)1 << 20)  /* the kernel's biggest read request */

/* An inode the kernel knows of or has open (others live only in meta.db). */
struct inode {
    uint64_t ino;
    uint64_t nlookup; /* the kernel's references (lookup, create, readdirplus) */
    uint32_t opens;   /* open file handles */
    pthread_mutex_t lock;
    int dirty; /* size, mtime, ctime below are newer than meta.db */
    uint64_t size;
    struct timespec mtime, ctime;
    /* read-ahead (ops.c): where the last read ended, the window in blocks,
     * and the block after the last one asked for */
    uint64_t ra_next, ra_upto;
    unsigned ra_window;
};

struct bufpool;

struct fs {
    char *url;
    char *cache_dir;
    char *db_path;
    struct store *store;
    const char *seed_url;     /* --seed-from, or NULL */
    size_t block_size;        /* --block-size for a new bucket, or 0 */
    struct store *seed_store; /* its store: only ever read */
    struct codec *codec;
    struct db *db;
    struct ns *ns;
    struct remote *remote;
    struct blocks *blocks;
    struct pool *uploads;
    struct pool *fetches;      /* read-ahead and warm-up */
    size_t read_ahead;         /* bytes a reader's window may hold ahead of it */
    struct bufpool *read_bufs; /* op_read's, FS_MAX_READ bytes each */
    const char *mount_path;    /* absolute */
    int widened;               /* the kernel's read-ahead was looked at (ops.c) */
    struct blocks_options cache;
    struct publisher *pub;
    struct fuse_session *se; /* for notifications to the kernel */
    enum sync_mode sync;
    char *const *publish_on; /* globs matched against names, NULL-terminated, or NULL */
    int codec_keyed;         /* chunks are encrypted */
    int read_only;           /* changes refused (fs_read_only); a --read-only mount never
                                writes to the bucket */
    int following;           /* --follow, until promoted (fs_following) */
    int half_switched;       /* a follower's switch failed between its tables: no opens
                                (guarded by freeze) */
    struct follow *follow;   /* the follower's thread, or NULL */
    struct writer *writer;   /* a writable or promoted mount's running parts, or NULL */
    struct bootstrap *boot;  /* how it started: what a promotion continues from */
    struct snapview *views;  /* MOUNTPOINT/.snapshots */
    int pinned;              /* read-only at the snapshot below, not the newest */
    struct snapshot_id snapshot;
    unsigned caps; /* STORE_CAP_* of the server */

    pthread_rwlock_t freeze;
    pthread_mutex_t inodes_lock;
    struct hmap *inodes; /* ino -> struct inode */
    uint64_t changes;    /* bumped by every change; the publisher compares */
};

/* ---- fs/inodes.c ---- */

/* The kernel learned of ino n more times (lookup, create ...). */
int inode_ref(struct fs *fs, uint64_t ino, uint64_t n);
/* The kernel forgot n references; the inode may go (and, unlinked, be deleted). */
void inode_forget(struct fs *fs, uint64_t ino, uint64_t n);
/* An open handle more or less. */
int inode_open(struct fs *fs, uint64_t ino);
void inode_release(struct fs *fs, uint64_t ino);
/* The in-memory inode, or NULL; the caller holds a reference the kernel gave. */
struct inode *inode_get(struct fs *fs, uint64_t ino);
/* Attributes as the kernel should see them: meta.db's, with cached sizes and times. */
int inode_attr(struct fs *fs, uint64_t ino, struct ns_attr *out);
/* Puts the cached size and times (if any) over attributes read from meta.db. */
void inode_overlay(struct fs *fs, struct ns_attr *a);
/* Writes an inode's cached size and times to meta.db. */
int inode_flush(struct fs *fs, struct inode *in);
/* Frees the table at exit (an unmount sends no forgets for what the kernel held). */
void inode_table_free(struct fs *fs);
/* Flushes every inode (before a snapshot freeze); caller holds fs->freeze exclusively. */
int inode_flush_all(struct fs *fs);
/* An unlinked inode nothing refers to any more: its rows and bytes go. */
void inode_delete_if_unused(struct fs *fs, uint64_t ino);

/* Something changed: the next snapshot has something to publish. */
static inline void fs_changed(struct fs *fs)
{
    __atomic_fetch_add(&fs->changes, 1, __ATOMIC_RELAXED);
}

/* Whether changes are refused now: a read-only mount, a follower not yet
 * promoted, or a writer another mount took over from (fencing). */
static inline int fs_read_only(const struct fs *fs)
{
    return __atomic_load_n(&fs->read_only, __ATOMIC_ACQUIRE);
}

/* Whether the mount follows another writer's snapshots now (--follow, not
 * promoted): its tree changes with each one. */
static inline int fs_following(const struct fs *fs)
{
    return __atomic_load_n(&fs->following, __ATOMIC_ACQUIRE);
}

/* ---- fs/ops.c ---- */
struct fuse_lowlevel_ops;
extern const struct fuse_lowlevel_ops ckptfs_ops;

#endif
