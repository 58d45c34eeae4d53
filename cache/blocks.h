/*
 * The disk tier: the bytes of every file of the mount, kept locally and
 * persisted as content-named chunks through the remote tier. It knows
 * inodes (numbers) and byte ranges, never file names; the file sizes are
 * the caller's and are passed in.
 *
 * Snapshots: the caller freezes (blocks_freeze) at an instant when no write
 * is in progress; from then until blocks_commit or blocks_abort, every block
 * that was dirty at the freeze keeps its bytes of that instant for the
 * snapshot, whatever is written afterwards (blocks.c, "Freezing").
 *
 * Tiers: a read is served from the memory tier (decoded chunks), else from
 * the data files (clean blocks checked against their checksums first), else
 * fetched from the bucket. The data files stay within the cache size
 * (space.h): clean blocks are evicted (policy.h), dirty ones never; a writer
 * waits for room while uploads turn dirty blocks clean, and fails with
 * -ENOSPC only after full_timeout_ms.
 *
 * Errors: negative errno with the thread's message set (util/err.h); -EIO
 * for local I/O, and the store's errors when a chunk must be fetched.
 */
#ifndef CKPT_CACHE_BLOCKS_H
#define CKPT_CACHE_BLOCKS_H

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <sys/types.h>

#include "cache/codec.h"
#include "cache/remote.h"
#include "util/db.h"
#include "util/pool.h"

#define BLOCKS_DEFAULT_SIZE ((size_t)4 << 20)
#define BLOCKS_PIECE        CODEC_PIECE /* what one checksum covers; block sizes are multiples */

struct blocks;

struct blocks_options {
    size_t block_size;       /* 0: BLOCKS_DEFAULT_SIZE */
    uint64_t cache_size;     /* bytes the cache directory may hold; 0: no bound */
    size_t memory_cache;     /* bytes of decoded chunks kept in memory */
    int64_t full_timeout_ms; /* how long a writer waits for room */
    unsigned protect_pct;    /* the eviction policy's protected share (policy.h) */
};

struct blocks_stats {
    uint64_t dirty_blocks; /* blocks not yet in the bucket */
    uint64_t dirty_bytes;  /* at most dirty_blocks * block size */
    uint64_t fetches;      /* chunks fetched from the bucket (misses of both tiers) */
    uint64_t hits_memory, hits_disk;
    uint64_t evictions, corrupt; /* clean blocks dropped; cached blocks that failed their check */
    uint64_t prefetched;         /* chunks fetched ahead of reads, or by a warm-up */
    uint64_t prefetch_queue;     /* fetches under way or waiting */
    uint64_t clean_blocks;       /* blocks on disk that can be evicted */
    uint64_t cache_used, cache_limit, cache_reserved;
    uint64_t writers_waiting, writer_waits, writer_timeouts;
    uint64_t memory_used, memory_limit;
};

/* Keeps data files under dir (created if missing); db and remote must
 * outlive it. Blocks left dirty by an earlier run are dirty again; clean
 * ones are clean again (and checked when read). */
int blocks_open(struct db *db, struct remote *remote, const char *dir,
                const struct blocks_options *opt, struct blocks **out);

/* Starts the evictor's thread, which keeps the cache within its size.
 * Threads do not survive a fork: call it after daemonizing. */
int blocks_evictor_start(struct blocks *b);

/* Called (from the evictor's thread) when dirty data fills the cache and
 * only a snapshot can make it clean (partial blocks wait for one). */
void blocks_on_pressure(struct blocks *b, void (*fn)(void *arg), void *arg);
void blocks_close(struct blocks *b);

size_t blocks_block_size(const struct blocks *b);

/* Reads up to len bytes at off of a file of size bytes into out, fetching
 * what is not local. Returns the byte count (0 at or past the end).
 * BLOCKS_RANDOM: the read is not part of a sequential one, so what is not
 * local is fetched by the pieces it needs (codec.h), not by whole chunks. */
#define BLOCKS_RANDOM 1u
ssize_t blocks_read(struct blocks *b, uint64_t ino, uint64_t size, uint64_t off, size_t len,
                    void *out, unsigned flags);

/* A read served in place: bytes of a chunk in the memory tier, pinned. */
struct blocks_view {
    const void *data;
    size_t len;
    void *pin;
};

/* If the len bytes at off of a file of size bytes lie in one block whose
 * chunk is in the memory tier, points v at them (pinned until
 * blocks_view_done) and returns 1; else 0, and blocks_read is the way. */
int blocks_view(struct blocks *b, uint64_t ino, uint64_t size, uint64_t off, size_t len,
                struct blocks_view *v);
void blocks_view_done(struct blocks *b, struct blocks_view *v);

/* Room in the disk tier for a write of len bytes at off of ino, and for the
 * copies of frozen blocks it will make first (rule 6). blocks_reserve waits
 * while there is none, up to the full timeout, so the caller must hold no
 * lock a snapshot or an upload needs; it fails with -ENOSPC. Once the
 * caller holds the lock that keeps snapshots out, blocks_room_holds says
 * whether the room still covers the write: 0 if a snapshot froze its blocks
 * in between (release, unlock, reserve again). blocks_release gives the
 * room back once the write is done. */
struct blocks_room {
    size_t held;   /* bytes reserved */
    size_t staged; /* of which for copies of frozen blocks */
};
int blocks_reserve(struct blocks *b, uint64_t ino, uint64_t off, size_t len, struct blocks_room *r);
int blocks_room_holds(struct blocks *b, uint64_t ino, uint64_t off, size_t len,
                      const struct blocks_room *r);
void blocks_release(struct blocks *b, struct blocks_room *r);

/* A write whose bytes the caller puts into sp->fd itself (with splice, say):
 * blocks_write_begin readies and locks the blocks of [off, off+len), len at
 * most one block; the caller writes that range of sp->fd, then calls
 * blocks_write_end, whatever the outcome. Room for the bytes must be
 * reserved first (blocks_reserve). */
struct blocks_span {
    int fd;
    uint64_t ino;
    struct dirty *d[2];
    pthread_mutex_t *locks[2];
};
int blocks_write_begin(struct blocks *b, uint64_t ino, uint64_t size, uint64_t off, size_t len,
                       struct blocks_span *sp);
void blocks_write_end(struct blocks *b, struct blocks_span *sp);

/* The file changes from old_size to new_size bytes. */
int blocks_truncate(struct blocks *b, uint64_t ino, uint64_t old_size, uint64_t new_size);

/* Bytes the file's blocks hold (at most size): st_blocks, so sparse files look sparse. */
uint64_t blocks_allocated(struct blocks *b, uint64_t ino, uint64_t size);

/* Makes the file's local bytes durable (the caller syncs the database). */
int blocks_fsync(struct blocks *b, uint64_t ino);

/* The file is gone: its bytes and block states are dropped (a block frozen
 * for a snapshot in progress keeps its bytes until that snapshot is done). */
int blocks_remove(struct blocks *b, uint64_t ino);

/* The caller will not touch the file for a while: release its descriptor. */
void blocks_forget(struct blocks *b, uint64_t ino);

/* Forgets every block (before a snapshot is loaded in its place). Caller
 * holds the database lock inside a transaction; no file may be in use. */
int blocks_clear_locked(struct blocks *b);

/* Records that block idx of ino is chunk name, in the bucket and not here
 * (a mount starting from a snapshot). Caller holds the database lock inside
 * a transaction. */
int blocks_set_remote(struct blocks *b, uint64_t ino, uint64_t idx,
                      const uint8_t name[CODEC_NAME_LEN]);

/* ---- versions: what a follower's open files keep reading ---- */

/* The chunks of ino, of size bytes, as they are now: reads through it see
 * those bytes whatever the file becomes (blocks_follow). -EBUSY if a block
 * of ino has changes no snapshot holds (a writer's file has no version). */
struct blocks_version;
int blocks_version_get(struct blocks *b, uint64_t ino, uint64_t size, struct blocks_version **out);

/* As blocks_read, of the version: a block that is still its chunk is read
 * as usual, others from the memory tier or the bucket. */
ssize_t blocks_read_version(struct blocks *b, const struct blocks_version *v, uint64_t off,
                            size_t len, void *out, unsigned flags);
void blocks_version_free(struct blocks_version *v);

/* A block of a snapshot: chunk name is block idx of ino. */
struct blocks_ref {
    uint64_t ino, idx;
    uint8_t name[CODEC_NAME_LEN];
};

/* In (ino, idx) order. */
void blocks_refs_sort(struct blocks_ref *refs, size_t n);

/* The version of a file of size bytes that refs (its blocks in a snapshot,
 * n of them) make: ino's blocks on disk are read where they are the same
 * chunk. -EINVAL if a ref is not one of its blocks. */
int blocks_version_of(struct blocks *b, uint64_t ino, uint64_t size, const struct blocks_ref *refs,
                      size_t n, struct blocks_version **out);

/* A follower moves to a newer snapshot, whose blocks are refs (sorted):
 * blocks that are the same chunk keep their cached bytes; changed ones
 * become REMOTE under their new names, their old bytes punched out; blocks
 * and files no longer named go (their data files too, unless in_use(arg,
 * ino) says a handle may still read them). Each block changes under its
 * stripe lock, so reads go on meanwhile (a version reads its own chunks).
 * *changed gets the number of blocks or files that changed. -EBUSY if a
 * block has changes no snapshot holds. */
int blocks_follow(struct blocks *b, const struct blocks_ref *refs, size_t n,
                  int (*in_use)(void *arg, uint64_t ino), void *arg, uint64_t *changed);

/* ---- snapshots ---- */

/* Marks every dirty block as frozen. The caller guarantees no write,
 * truncate or remove runs during the call. Returns the number frozen. */
size_t blocks_freeze(struct blocks *b);

/* For a frozen block: the file's size at the freeze, or -ENOENT if the file
 * is not in the snapshot. */
typedef int (*blocks_size_fn)(void *arg, uint64_t ino, uint64_t *size);

/* Captures every frozen block's bytes of the freeze instant, names them and
 * makes them present in the bucket, using pool for parallel uploads.
 * size_of is called from this thread only. */
int blocks_seal(struct blocks *b, struct pool *pool, blocks_size_fn size_of, void *arg);

/* Calls fn(ino, idx, name) for each block that has bytes, ordered by inode
 * and index, as of the read transaction open on reader (a connection to the
 * same database, inside BEGIN): dirty blocks give their sealed names. */
typedef int (*blocks_list_fn)(void *arg, uint64_t ino, uint64_t idx,
                              const uint8_t name[CODEC_NAME_LEN]);
int blocks_scan_at(struct blocks *b, sqlite3 *reader, blocks_list_fn fn, void *arg);

/* The snapshot naming the sealed blocks is in the bucket: sealed blocks not
 * written since become clean. */
int blocks_commit(struct blocks *b);

/* The snapshot failed: forget the seals; the blocks stay dirty. */
void blocks_abort(struct blocks *b);

void blocks_get_stats(struct blocks *b, struct blocks_stats *st);

/* Starts uploading full blocks nobody has written for quiet_ms, in the
 * background through pool, so that snapshots find their bytes already in
 * the bucket (blocks.c, rule 9). */
int blocks_upload_ahead(struct blocks *b, struct pool *pool, unsigned quiet_ms);

/* Stops that, waiting for uploads in flight. Harmless if never started. */
void blocks_upload_stop(struct blocks *b);

/* ---- fetching ahead ---- */

/* Fetches through pool from now on, with at most max_bytes of chunks under
 * way (the read-ahead memory budget). */
void blocks_prefetch_start(struct blocks *b, struct pool *pool, size_t max_bytes);

/* Read-ahead: starts fetching blocks [first, first+count) of a file of size
 * bytes, those that are only in the bucket; skips the rest, and everything
 * beyond the budget. Never waits. */
void blocks_prefetch(struct blocks *b, uint64_t ino, uint64_t size, uint64_t first, unsigned count);

/* Warm-up: bytes of ino's blocks that are only in the bucket. */
uint64_t blocks_remote_bytes(struct blocks *b, uint64_t ino);

/* Warm-up: queues a fetch into the disk tier of every block of ino that is
 * only in the bucket, in batch (the caller waits for it); each adds its
 * bytes to *done when it is in (atomically). A fetch that finds no room
 * fails with -ENOSPC. Once *stop is non-zero (read atomically) no more is
 * queued: the fetches queued already end, and 0 is returned. */
int blocks_warm(struct blocks *b, struct batch *batch, uint64_t ino, uint64_t size, uint64_t *done,
                const int *stop);

/* Waits for fetches under way (before the pool goes). */
void blocks_prefetch_stop(struct blocks *b);

#endif
