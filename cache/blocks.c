/*
 * The disk tier (contract in blocks.h).
 *
 * A file's bytes live in one sparse data file, DIR/NN/INO (NN: the low byte
 * of the inode in hex, to keep directories small), cut into blocks of
 * block_size bytes. Block idx of a file of size S holds bytes
 * [idx*B, min((idx+1)*B, S)). Its state is a row of meta.db:
 *
 *   blocks(ino, idx, state, name, sums, have)   no row: a hole, all zeros
 *
 *   REMOTE  the bytes are chunk `name` in the bucket, not here: the block's
 *           range of the data file is a hole
 *   CLEAN   the bytes are here, equal to chunk `name`, which is in the bucket;
 *           sums holds an XXH3-64 of each BLOCKS_PIECE of the block (the
 *           zeros past the chunk's end included), checked before bytes are
 *           served: a block that fails is dropped and fetched again. If
 *           have is not NULL, only the pieces whose bits it sets are here
 *           (bit i of byte i/8), fetched alone for random reads (rule 12);
 *           the rest of the range is a hole and its sums are 0
 *   DIRTY   the bytes are here and newer than any chunk (name NULL)
 *
 * A chunk may be shorter than its block (the file grew by truncate since):
 * the rest of the block is zeros.
 *
 * The disk tier's budget (space.h) counts what the data and staging files
 * take on disk (st_blocks, measured after each change) and meta.db. Clean
 * blocks are listed in the eviction policy (policy.h); evicting one punches
 * its range out of the data file and makes it REMOTE (rule 10).
 *
 * Transitions (numbered as the comments below refer to them):
 *   1. A write to a hole or a CLEAN block makes it DIRTY, committed to
 *      meta.db before the bytes are written: a crash never leaves changed
 *      bytes under a CLEAN row. A write to a DIRTY block touches no row.
 *   2. A write to a REMOTE block that does not cover all of its old bytes
 *      first fetches the chunk into the data file; then as 1.
 *   3. A read of a REMOTE block fetches the chunk, checked (codec.h), into
 *      the data file: REMOTE -> CLEAN.
 *   4. Truncation removes the blocks past the new end; a block cut in two
 *      is written (as 1 or 2).
 *   5. Publishing a snapshot turns DIRTY blocks CLEAN (below).
 *  10. Eviction turns a CLEAN block REMOTE; so does a failed check (then it
 *      is fetched again at once).
 *  11. Versions are never reused, not even by a block that became clean and
 *      then dirty again: a seal or an upload of the block's earlier bytes
 *      finishing late must not find "its" version and make it clean.
 *  12. A random read of a REMOTE block, or of a CLEAN one that lacks a
 *      piece it needs, fetches just the pieces it touches (remote.h): the
 *      block is CLEAN with those pieces added to have, if the budget has
 *      room for them. Any other read, a read-ahead or a warm-up of such a
 *      block fetches the whole chunk, and have becomes NULL (as rule 3
 *      says, room permitting); a write that does not cover the whole
 *      block fetches it first (rule 2). Random means under 128 KiB and
 *      not continuing the last read (fs/ops.c); blocks under SPARSE_BLOCK
 *      are fetched whole all the same.
 *
 * Freezing. The in-memory dirty table has an entry per DIRTY block with a
 * version, bumped by every write. blocks_freeze marks all entries frozen:
 * their bytes at that instant belong to the snapshot. Afterwards:
 *   6. A write, truncate or remove that would change a frozen block first
 *      seals it: copies its bytes to DIR/../staging and clears `frozen`.
 *   7. blocks_seal seals the rest by reading them from the data files, then
 *      names every sealed copy (cut to the file's size at the freeze) and
 *      uploads it.
 *   8. blocks_commit turns DIRTY into CLEAN(name) for each sealed block whose
 *      version has not moved since its seal: its bytes are still the chunk's.
 *
 * Uploading ahead (blocks_upload_ahead). A full block nobody has written for
 * quiet_ms is named and uploaded in the background while the engine goes on
 * writing, so a snapshot finds most bytes already in the bucket:
 *   9. after the upload, a block whose version has not moved becomes CLEAN;
 *      if a freeze came in between, the upload is remembered (up_name at
 *      up_version) and the seal takes that name without reading or hashing
 *      the block again. Partial blocks wait for the publish: their chunk's
 *      length depends on the file's size at the freeze.
 * Locks, in the order taken: a block's stripe lock, then the database lock,
 * then b->lock (which is never held while another is taken). A stripe lock
 * serializes everything done to one block.
 */
#include "blocks.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "cache/memcache.h"
#include "cache/policy.h"
#include "cache/space.h"
#include "util/clock.h"
#include "util/err.h"
#include "util/hmap.h"
#include "util/log.h"

#define STRIPES 256
/* Blocks smaller than this are fetched whole even for random reads (rule
 * 12): on a server some ms away, one GET of such a block costs less than
 * the GET of its chunk's index and then the one of a piece. */
#define SPARSE_BLOCK ((size_t)1 << 20)
#define MAX_PIECES   1024 /* the biggest block has this many pieces */

enum { ST_DIRTY = 1, ST_CLEAN = 2, ST_REMOTE = 3 };

struct dirty {
    uint64_t version; /* unique across all blocks and entries (rule 11) */
    int frozen;
    int uploading; /* a background upload is in flight (rule 9) */
    int has_up;    /* up_name is the chunk of its bytes at up_version */
    uint64_t up_version;
    int64_t quiet_since; /* CLOCK_MONOTONIC ns of its last write */
    uint8_t up_name[CODEC_NAME_LEN];
    uint64_t *up_sums;
};

/* A frozen block's bytes as of the freeze, and what became of them. */
struct seal {
    uint64_t ino, idx, version;
    int staged; /* the bytes are in the staging file (rule 6), else in the data file */
    int has_name;
    uint64_t staged_bytes; /* what the staging file takes on disk */
    uint8_t name[CODEC_NAME_LEN];
    uint64_t *sums; /* the sealed bytes' checksums, once named */
};

struct blocks {
    struct db *db;
    struct remote *remote;
    char *dir, *staging;
    size_t bsize;
    pthread_mutex_t stripe[STRIPES];
    pthread_mutex_t lock;  /* guards dirty, fds, seals and the counters below */
    struct hmap *dirty;    /* (ino, idx) -> struct dirty */
    struct hmap *fds;      /* (ino, 0) -> data file descriptor + 1 */
    struct hmap *seals;    /* (ino, idx) -> struct seal, during a publish */
    struct hmap *alloc;    /* (ino, 0) -> bytes its data file takes on disk, + 1 */
    struct policy *policy; /* the CLEAN blocks on disk */
    struct space *space;
    struct memcache *mem;
    uint64_t db_bytes; /* meta.db and its WAL, as last measured */
    uint64_t versions; /* the last version handed out */
    size_t npieces;
    unsigned protect_pct;
    size_t capacity;   /* blocks a full cache holds, for the policy */
    uint64_t zero_sum; /* of a piece of zeros */
    int64_t full_timeout_ms;
    int no_direct; /* the cache's file system refused O_DIRECT */
    struct {
        uint64_t fetches, hits_memory, hits_disk, evictions, corrupt, prefetched;
    } n;
    struct {
        pthread_t thread;
        int running, stop;
        void (*pressure)(void *arg);
        void *arg;
        int64_t last_pressure;
    } evictor; /* guarded by b->lock */
    struct {
        struct pool *pool;
        struct batch batch;
        struct hmap *inflight; /* (ino, idx) -> 1: queued or being fetched */
        size_t max;            /* blocks under way at most */
    } ra;                      /* fetching ahead, guarded by b->lock */
    struct {
        pthread_t thread;
        pthread_cond_t wake;
        int running, stop;
        unsigned quiet_ms;
        struct pool *pool;
        struct batch batch;
    } ahead; /* the background uploader (rule 9), guarded by b->lock */
    sqlite3_stmt *st_get, *st_set, *st_del_from, *st_del_all, *st_dirty, *st_count, *st_clear,
        *st_clean, *st_clean_from, *st_remote, *st_del_one, *st_names, *st_all, *st_last;
};

struct block {
    int state; /* 0: a hole */
    int has_sums;
    int partial; /* CLEAN, with only the pieces in have here */
    uint8_t name[CODEC_NAME_LEN];
    uint64_t sums[MAX_PIECES];
    uint8_t have[MAX_PIECES / 8];
};

static pthread_mutex_t *stripe_of(struct blocks *b, uint64_t ino, uint64_t idx)
{
    return &b->stripe[(ino * 31 + idx) % STRIPES];
}

/* ---- rows ---- */

/* Bytes in a have bitmap. */
static size_t have_len(const struct blocks *b)
{
    return (b->npieces + 7) / 8;
}

static int row_get(struct blocks *b, uint64_t ino, uint64_t idx, struct block *out)
{
    db_lock(b->db);
    sqlite3_bind_int64(b->st_get, 1, (sqlite3_int64)ino);
    sqlite3_bind_int64(b->st_get, 2, (sqlite3_int64)idx);
    int rc = sqlite3_step(b->st_get);
    out->state = 0;
    if (rc == SQLITE_ROW) {
        out->state = sqlite3_column_int(b->st_get, 0);
        const void *name = sqlite3_column_blob(b->st_get, 1);
        if (name && sqlite3_column_bytes(b->st_get, 1) == CODEC_NAME_LEN)
            memcpy(out->name, name, CODEC_NAME_LEN);
        const void *sums = sqlite3_column_blob(b->st_get, 2);
        out->has_sums = sums && (size_t)sqlite3_column_bytes(b->st_get, 2) == b->npieces * 8;
        if (out->has_sums)
            memcpy(out->sums, sums, b->npieces * 8);
        const void *have = sqlite3_column_blob(b->st_get, 3);
        out->partial = have && (size_t)sqlite3_column_bytes(b->st_get, 3) == have_len(b);
        if (out->partial)
            memcpy(out->have, have, have_len(b));
    }
    sqlite3_reset(b->st_get);
    db_unlock(b->db);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : db_fail(db_handle(b->db), rc, "block state");
}

/* Caller holds the database lock. */
static int row_write(struct blocks *b, uint64_t ino, uint64_t idx, int state, const uint8_t *name,
                     const uint64_t *sums, const uint8_t *have)
{
    sqlite3_bind_int64(b->st_set, 1, (sqlite3_int64)ino);
    sqlite3_bind_int64(b->st_set, 2, (sqlite3_int64)idx);
    sqlite3_bind_int(b->st_set, 3, state);
    if (name)
        sqlite3_bind_blob(b->st_set, 4, name, CODEC_NAME_LEN, SQLITE_STATIC);
    else
        sqlite3_bind_null(b->st_set, 4);
    if (sums)
        sqlite3_bind_blob(b->st_set, 5, sums, (int)(b->npieces * 8), SQLITE_STATIC);
    else
        sqlite3_bind_null(b->st_set, 5);
    if (have)
        sqlite3_bind_blob(b->st_set, 6, have, (int)have_len(b), SQLITE_STATIC);
    else
        sqlite3_bind_null(b->st_set, 6);
    return db_run(b->st_set);
}

static int row_set_locked(struct blocks *b, uint64_t ino, uint64_t idx, int state,
                          const uint8_t *name, const uint64_t *sums)
{
    return row_write(b, ino, idx, state, name, sums, NULL);
}

/* A CLEAN block with only the pieces have sets (NULL: all of them). */
static int row_set_have(struct blocks *b, uint64_t ino, uint64_t idx, const uint8_t *name,
                        const uint64_t *sums, const uint8_t *have)
{
    db_lock(b->db);
    int rc = row_write(b, ino, idx, ST_CLEAN, name, sums, have);
    db_unlock(b->db);
    return rc;
}

static int row_set(struct blocks *b, uint64_t ino, uint64_t idx, int state, const uint8_t *name,
                   const uint64_t *sums)
{
    db_lock(b->db);
    int rc = row_set_locked(b, ino, idx, state, name, sums);
    db_unlock(b->db);
    return rc;
}

static int rows_delete(struct blocks *b, sqlite3_stmt *st, uint64_t ino, uint64_t from)
{
    db_lock(b->db);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)ino);
    if (st != b->st_del_all)
        sqlite3_bind_int64(st, 2, (sqlite3_int64)from);
    int rc = db_run(st);
    db_unlock(b->db);
    return rc;
}

static int row_delete(struct blocks *b, uint64_t ino, uint64_t idx)
{
    return rows_delete(b, b->st_del_one, ino, idx);
}

/* ---- data files ---- */

static void data_path(const struct blocks *b, uint64_t ino, char *path)
{
    snprintf(path, PATH_MAX, "%s/%02x/%llu", b->dir, (unsigned)(ino & 0xff),
             (unsigned long long)ino);
}

/* Opens (creating) ino's data file. */
static int open_path(struct blocks *b, uint64_t ino)
{
    char path[PATH_MAX];
    data_path(b, ino, path);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 && errno == ENOENT) {
        char *slash = strrchr(path, '/');
        *slash = '\0';
        mkdir(path, 0700);
        *slash = '/';
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    }
    if (fd < 0)
        return err_set(errno == ENOSPC ? -ENOSPC : -EIO, "cache file %s: %s", path,
                       strerror(errno));
    return fd;
}

static int open_data(struct blocks *b, uint64_t ino)
{
    pthread_mutex_lock(&b->lock);
    intptr_t fd = (intptr_t)hmap_get(b->fds, ino, 0) - 1;
    pthread_mutex_unlock(&b->lock);
    if (fd >= 0)
        return (int)fd;
    int nfd = open_path(b, ino);
    if (nfd < 0)
        return nfd;
    pthread_mutex_lock(&b->lock);
    fd = (intptr_t)hmap_get(b->fds, ino, 0) - 1;
    if (fd < 0 && hmap_put(b->fds, ino, 0, (void *)(intptr_t)(nfd + 1)) == 0)
        fd = nfd, nfd = -1;
    pthread_mutex_unlock(&b->lock);
    if (nfd >= 0) /* another thread opened it first, or no memory to remember ours */
        close(nfd);
    return fd >= 0 ? (int)fd : -ENOMEM;
}

static int io_fail(const char *what, uint64_t ino)
{
    int e = errno;
    return err_set(e == ENOSPC ? -ENOSPC : -EIO, "cache: %s of inode %llu: %s", what,
                   (unsigned long long)ino, strerror(e));
}

/* Reads [off, off+len) of the data file, zeros past its end. */
static int read_local(int fd, uint64_t ino, uint64_t off, size_t len, uint8_t *out)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, out + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return io_fail("read", ino);
        if (n == 0) {
            memset(out + done, 0, len - done);
            break;
        }
        done += (size_t)n;
    }
    return 0;
}

static int write_local(int fd, uint64_t ino, uint64_t off, const uint8_t *p, size_t len)
{
    while (len) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return io_fail("write", ino);
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

/* The descriptor of ino's data file: the kept one, or (*own set) one the
 * caller closes, so that background work on files nobody has open does not
 * pile up descriptors. */
static int data_fd(struct blocks *b, uint64_t ino, int *own)
{
    pthread_mutex_lock(&b->lock);
    intptr_t fd = (intptr_t)hmap_get(b->fds, ino, 0) - 1;
    pthread_mutex_unlock(&b->lock);
    *own = fd < 0;
    return fd >= 0 ? (int)fd : open_path(b, ino);
}

static void data_fd_done(int fd, int own)
{
    if (own && fd >= 0)
        close(fd);
}

/* What ino's data file takes on disk now, reported to the budget.
 * Returns the change in bytes. */
static int64_t account(struct blocks *b, uint64_t ino, int fd)
{
    struct stat st;
    if (fstat(fd, &st))
        return 0;
    uint64_t now = (uint64_t)st.st_blocks * 512;
    pthread_mutex_lock(&b->lock);
    uint64_t was = (uint64_t)(uintptr_t)hmap_get(b->alloc, ino, 0);
    was = was ? was - 1 : 0;
    int rc = hmap_put(b->alloc, ino, 0, (void *)(uintptr_t)(now + 1));
    pthread_mutex_unlock(&b->lock);
    if (rc)
        return 0;
    space_add(b->space, (int64_t)now - (int64_t)was);
    return (int64_t)now - (int64_t)was;
}

/* The file is gone from disk: its bytes leave the budget. */
static void account_gone(struct blocks *b, uint64_t ino)
{
    pthread_mutex_lock(&b->lock);
    uint64_t was = (uint64_t)(uintptr_t)hmap_del(b->alloc, ino, 0);
    pthread_mutex_unlock(&b->lock);
    if (was)
        space_add(b->space, -(int64_t)(was - 1));
}

/* Makes [off, off+len) of the data file a hole; zeros where holes cannot be. */
static int punch(int fd, uint64_t ino, uint64_t off, size_t len)
{
    if (len == 0 ||
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
        return 0;
    if (errno != EOPNOTSUPP)
        return io_fail("hole punch", ino);
    static const uint8_t zeros[65536];
    for (size_t done = 0; done < len;) {
        size_t n = len - done < sizeof zeros ? len - done : sizeof zeros;
        int rc = write_local(fd, ino, off + done, zeros, n);
        if (rc)
            return rc;
        done += n;
    }
    return 0;
}

/* The checksums of a block whose first len bytes are data, zeros after,
 * from malloc (NULL if out of memory). The first nknown of its whole
 * pieces have theirs in known already: the chunk they came in carried them
 * (codec.h), checked. */
static uint64_t *sums_of(const struct blocks *b, const uint8_t *data, size_t len,
                         const uint64_t *known, size_t nknown)
{
    uint64_t *sums = malloc(b->npieces * sizeof *sums);
    for (size_t i = 0; sums && i < b->npieces; i++) {
        size_t off = i * BLOCKS_PIECE;
        if (off + BLOCKS_PIECE <= len && i < nknown) {
            sums[i] = known[i];
        } else if (off + BLOCKS_PIECE <= len) {
            sums[i] = XXH3_64bits(data + off, BLOCKS_PIECE);
        } else if (off >= len) {
            sums[i] = b->zero_sum;
        } else {
            static __thread uint8_t piece[BLOCKS_PIECE];
            memcpy(piece, data + off, len - off);
            memset(piece + (len - off), 0, BLOCKS_PIECE - (len - off));
            sums[i] = XXH3_64bits(piece, BLOCKS_PIECE);
        }
    }
    return sums;
}

static void count(uint64_t *counter)
{
    __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

static uint64_t counted(const uint64_t *counter)
{
    return __atomic_load_n(counter, __ATOMIC_RELAXED);
}

/* What a chunk is fetched into: a block, its header and tag, buf's NUL,
 * and the room to place the header so that the block starts aligned. */
static size_t buf_size(const struct blocks *b)
{
    size_t most = remote_encoded_max(b->remote, b->bsize);
    return (most + BUFPOOL_ALIGN - 1) / BUFPOOL_ALIGN * BUFPOOL_ALIGN + 2 * BUFPOOL_ALIGN;
}

/* A chunk's plaintext: len bytes at data, inside base (a memory tier buffer). */
struct chunk {
    uint64_t sums[MAX_PIECES]; /* of its first nsums pieces, if it carried them */
    size_t nsums;
    uint8_t *base;
    size_t cap; /* base's size */
    const uint8_t *data;
    size_t len;
};

/* Fetches and verifies the chunk into c (whose base is a memory tier
 * buffer), its plaintext aligned for write_direct: a raw chunk is received
 * so that its header ends on BUFPOOL_ALIGN, a compressed one is
 * decompressed into a second buffer, which c then takes. */
static int fetch_chunk(struct blocks *b, uint64_t ino, const struct block *blk, struct chunk *c)
{
    uint8_t *other = memcache_buffer(b->mem);
    if (!other)
        return -ENOMEM;
    size_t skip = BUFPOOL_ALIGN - remote_raw_offset(b->remote, b->bsize) % BUFPOOL_ALIGN;
    struct buf got = { .data = c->base + skip, .cap = c->cap - skip, .fixed = 1 };
    struct buf spare = { .data = other, .cap = c->cap, .fixed = 1 };
    size_t start = 0;
    c->nsums = b->npieces;
    int rc = remote_fetch(b->remote, blk->name, &got, &start, &spare, c->sums, &c->nsums);
    if (rc == 0 && got.len - start > b->bsize)
        rc = err_set(-EBADMSG, "a chunk of inode %llu holds more than a block",
                     (unsigned long long)ino);
    count(&b->n.fetches);
    if (got.data == other) { /* decompressed */
        other = c->base;
        c->base = got.data;
    }
    memcache_recycle(b->mem, other, c->cap);
    if (rc)
        return rc;
    c->data = got.data + start;
    c->len = got.len - start;
    return 0;
}

/* The plaintext of the block's chunk, from the memory tier if it is there,
 * else from the bucket, verified. The caller recycles c->base, or hands it
 * to the memory tier. */
static int chunk_bytes(struct blocks *b, uint64_t ino, const struct block *blk, struct chunk *c)
{
    *c = (struct chunk){ .base = memcache_buffer(b->mem), .cap = buf_size(b) };
    if (!c->base)
        return -ENOMEM;
    if (memcache_read(b->mem, blk->name, 0, b->bsize, c->base)) {
        c->data = c->base;
        c->len = b->bsize; /* the zeros past the chunk's end included */
        return 0;
    }
    int rc = fetch_chunk(b, ino, blk, c);
    if (rc) {
        memcache_recycle(b->mem, c->base, c->cap);
        *c = (struct chunk){ 0 };
    }
    return rc;
}

/* Writes a fetched chunk into its block past the page cache, if the file
 * system lets it: the bytes are in the memory tier already, and copying
 * them into the page cache too cost more CPU than fetching them did. The
 * bytes up to the next BUFPOOL_ALIGN become zeros, as the block's are.
 * Returns 1 if it could not (the caller writes them the usual way). */
static int write_direct(struct blocks *b, uint64_t ino, uint64_t off, struct chunk *c)
{
    size_t n = (c->len + BUFPOOL_ALIGN - 1) & ~(size_t)(BUFPOOL_ALIGN - 1);
    size_t at = (size_t)(c->data - c->base);
    if (__atomic_load_n(&b->no_direct, __ATOMIC_RELAXED) || (uintptr_t)c->data % BUFPOOL_ALIGN ||
        at + n > c->cap || n > b->bsize)
        return 1;
    char path[PATH_MAX];
    data_path(b, ino, path);
    int fd = open(path, O_WRONLY | O_DIRECT | O_CLOEXEC);
    if (fd < 0) {
        if (errno == EINVAL) /* not on this file system: never again */
            __atomic_store_n(&b->no_direct, 1, __ATOMIC_RELAXED);
        return 1;
    }
    memset(c->base + at + c->len, 0, n - c->len);
    ssize_t put;
    do
        put = pwrite(fd, c->base + at, n, (off_t)off);
    while (put < 0 && errno == EINTR);
    int rc = put == (ssize_t)n             ? 0
             : put >= 0 || errno == EINVAL ? 1 /* a short or refused write: buffered redoes it */
                                           : io_fail("write", ino);
    close(fd);
    return rc;
}

/* Rules 2 and 3: the chunk's bytes into the block's range of the data file
 * (a hole until now: the rest stays zeros). */
static int place(struct blocks *b, int fd, uint64_t ino, uint64_t idx, struct chunk *c)
{
    int rc = write_direct(b, ino, idx * b->bsize, c);
    if (rc == 1)
        rc = write_local(fd, ino, idx * b->bsize, c->data, c->len);
    account(b, ino, fd);
    return rc;
}

/* Rule 3: a fetched chunk becomes a CLEAN block on disk, if the budget has
 * room for it now; if not, the block stays REMOTE (its bytes live on in
 * the memory tier). Caller holds the block's stripe lock. */
static int keep_on_disk(struct blocks *b, int fd, uint64_t ino, uint64_t idx,
                        const struct block *blk, struct chunk *c, int64_t wait_ms)
{
    int rc = space_reserve(b->space, b->bsize, wait_ms);
    if (rc)
        return rc;
    uint64_t *sums = sums_of(b, c->data, c->len, c->sums, c->nsums);
    rc = sums ? place(b, fd, ino, idx, c) : -ENOMEM;
    if (rc == 0)
        rc = row_set(b, ino, idx, ST_CLEAN, blk->name, sums);
    if (rc == 0) {
        pthread_mutex_lock(&b->lock);
        policy_add(b->policy, ino, idx);
        pthread_mutex_unlock(&b->lock);
    }
    space_release(b->space, b->bsize);
    free(sums);
    return rc;
}

static uint64_t evict(struct blocks *b, uint64_t want);

/* Room for bytes a caller holding a stripe lock must add now (it cannot
 * wait for uploads): evicts clean blocks if need be, never waits. Returns
 * what was reserved, to release once the bytes are accounted; 0 if the
 * cache is full of dirty data (they go in all the same: the margin). */
static uint64_t room_now(struct blocks *b, uint64_t bytes)
{
    if (space_reserve(b->space, bytes, 0) == 0)
        return bytes;
    evict(b, bytes); /* other stripes only: evict_one never waits for a lock */
    return space_reserve(b->space, bytes, 0) == 0 ? bytes : 0;
}

/* Rule 2: a REMOTE block about to be written in part gets its bytes first. */
static int fetch_for_write(struct blocks *b, int fd, uint64_t ino, uint64_t idx,
                           const struct block *blk)
{
    struct chunk c;
    int rc = chunk_bytes(b, ino, blk, &c);
    uint64_t held = rc ? 0 : room_now(b, c.len);
    if (rc == 0)
        rc = place(b, fd, ino, idx, &c);
    space_release(b->space, held);
    memcache_recycle(b->mem, c.base, c.cap);
    return rc;
}

/* Rule 10: the block's bytes leave the disk, and it is REMOTE under name
 * (NULL: the block goes, a hole). Caller holds its stripe lock. *freed (if
 * given) gets the bytes the disk gave back. */
static int drop_local(struct blocks *b, int fd, uint64_t ino, uint64_t idx, const uint8_t *name,
                      int64_t *freed)
{
    int rc = punch(fd, ino, idx * b->bsize, b->bsize);
    if (rc == 0)
        rc = name ? row_set(b, ino, idx, ST_REMOTE, name, NULL) : row_delete(b, ino, idx);
    pthread_mutex_lock(&b->lock);
    policy_remove(b->policy, ino, idx);
    pthread_mutex_unlock(&b->lock);
    int64_t delta = account(b, ino, fd);
    if (freed)
        *freed = -delta;
    return rc;
}

/* A block's bytes into the bucket (unless already there): their chunk's
 * name, and their checksums (*sums from malloc) for when they are clean. */
static int upload(struct blocks *b, const uint8_t *data, size_t len, uint8_t name[CODEC_NAME_LEN],
                  uint64_t **sums)
{
    int rc = remote_name(b->remote, data, len, name);
    if (rc == 0)
        rc = remote_put(b->remote, name, data, len);
    if (rc == 0 && (*sums = sums_of(b, data, len, NULL, 0)) == NULL)
        rc = -ENOMEM;
    return rc;
}

/* ---- the dirty table ---- */

static struct dirty *dirty_get(struct blocks *b, uint64_t ino, uint64_t idx)
{
    pthread_mutex_lock(&b->lock);
    struct dirty *d = hmap_get(b->dirty, ino, idx);
    pthread_mutex_unlock(&b->lock);
    return d;
}

/* Rule 11. */
static uint64_t next_version(struct blocks *b)
{
    return __atomic_add_fetch(&b->versions, 1, __ATOMIC_RELAXED);
}

static int dirty_add(struct blocks *b, uint64_t ino, uint64_t idx, struct dirty **out)
{
    struct dirty *d = calloc(1, sizeof *d);
    if (d)
        d->version = next_version(b);
    pthread_mutex_lock(&b->lock);
    int rc = d ? hmap_put(b->dirty, ino, idx, d) : -ENOMEM;
    pthread_mutex_unlock(&b->lock);
    if (rc)
        free(d);
    *out = rc ? NULL : d;
    return rc;
}

static void dirty_free(struct dirty *d)
{
    if (d)
        free(d->up_sums);
    free(d);
}

static void dirty_drop(struct blocks *b, uint64_t ino, uint64_t idx)
{
    pthread_mutex_lock(&b->lock);
    dirty_free(hmap_del(b->dirty, ino, idx));
    pthread_mutex_unlock(&b->lock);
}

/* Rules 8 and 9: a dirty block is clean now (its row says so already). */
static void became_clean(struct blocks *b, uint64_t ino, uint64_t idx)
{
    pthread_mutex_lock(&b->lock);
    dirty_free(hmap_del(b->dirty, ino, idx));
    policy_add(b->policy, ino, idx);
    pthread_mutex_unlock(&b->lock);
}

/* ---- sealing (rules 6 and 7) ---- */

static void staging_path(const struct blocks *b, uint64_t ino, uint64_t idx, char *path)
{
    snprintf(path, PATH_MAX, "%s/%llu-%llu", b->staging, (unsigned long long)ino,
             (unsigned long long)idx);
}

static int add_seal(struct blocks *b, uint64_t ino, uint64_t idx, uint64_t version, int staged,
                    uint64_t staged_bytes)
{
    struct seal *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    *s = (struct seal){
        .ino = ino, .idx = idx, .version = version, .staged = staged, .staged_bytes = staged_bytes
    };
    pthread_mutex_lock(&b->lock);
    int rc = hmap_put(b->seals, ino, idx, s);
    pthread_mutex_unlock(&b->lock);
    if (rc)
        free(s);
    return rc;
}

/* Rule 6: copies a frozen block's bytes aside before they change. Caller
 * holds the block's stripe lock. */
static int seal_to_staging(struct blocks *b, int fd, uint64_t ino, uint64_t idx, struct dirty *d)
{
    char path[PATH_MAX];
    staging_path(b, ino, idx, path);
    int out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0)
        return io_fail("staging copy", ino);
    uint64_t held = room_now(b, b->bsize);
    uint8_t *buf = malloc(b->bsize);
    int rc = buf ? read_local(fd, ino, idx * b->bsize, b->bsize, buf) : -ENOMEM;
    if (rc == 0)
        rc = write_local(out, ino, 0, buf, b->bsize);
    free(buf);
    /* In the budget until the publish ends: a writer waits for room after this. */
    struct stat st;
    uint64_t bytes = fstat(out, &st) == 0 ? (uint64_t)st.st_blocks * 512 : b->bsize;
    space_add(b->space, (int64_t)bytes);
    space_release(b->space, held);
    close(out);
    if (rc == 0)
        rc = add_seal(b, ino, idx, d->version, 1, bytes);
    else
        space_add(b->space, -(int64_t)bytes);
    if (rc == 0)
        d->frozen = 0;
    return rc;
}

/* The dirty entries of ino at or past block `from` (only frozen ones if asked). */
struct scan {
    uint64_t ino, from;
    int frozen_only;
    uint64_t *idx;
    size_t n, cap;
};

static void scan_one(void *arg, uint64_t ino, uint64_t idx, void *v)
{
    struct scan *f = arg;
    struct dirty *d = v;
    if (ino != f->ino || idx < f->from || (f->frozen_only && !d->frozen))
        return;
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        uint64_t *p = realloc(f->idx, cap * sizeof *p);
        if (!p)
            return;
        f->idx = p;
        f->cap = cap;
    }
    f->idx[f->n++] = idx;
}

static struct scan scan(struct blocks *b, uint64_t ino, uint64_t from, int frozen_only)
{
    struct scan f = { .ino = ino, .from = from, .frozen_only = frozen_only };
    pthread_mutex_lock(&b->lock);
    hmap_each(b->dirty, scan_one, &f);
    pthread_mutex_unlock(&b->lock);
    return f;
}

/* The clean blocks of ino from `first` on leave the eviction policy. */
static int forget_clean(struct blocks *b, uint64_t ino, uint64_t first)
{
    db_lock(b->db);
    sqlite3_bind_int64(b->st_clean_from, 1, (sqlite3_int64)ino);
    sqlite3_bind_int64(b->st_clean_from, 2, (sqlite3_int64)first);
    int rc;
    while ((rc = sqlite3_step(b->st_clean_from)) == SQLITE_ROW) {
        pthread_mutex_lock(&b->lock);
        policy_remove(b->policy, ino, (uint64_t)sqlite3_column_int64(b->st_clean_from, 0));
        pthread_mutex_unlock(&b->lock);
    }
    sqlite3_reset(b->st_clean_from);
    db_unlock(b->db);
    return rc == SQLITE_DONE ? 0 : db_fail(db_handle(b->db), rc, "clean blocks");
}

/* Rule 4 and removal: the blocks of ino from `first` on go, after the bytes
 * of the frozen ones are sealed (rule 6). */
static int drop_blocks_from(struct blocks *b, int fd, uint64_t ino, uint64_t first)
{
    struct scan f = scan(b, ino, first, 0);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < f.n; i++) {
        pthread_mutex_t *lk = stripe_of(b, ino, f.idx[i]);
        pthread_mutex_lock(lk);
        struct dirty *d = dirty_get(b, ino, f.idx[i]);
        if (d && d->frozen)
            rc = seal_to_staging(b, fd, ino, f.idx[i], d);
        if (rc == 0)
            dirty_drop(b, ino, f.idx[i]);
        pthread_mutex_unlock(lk);
    }
    free(f.idx);
    if (rc == 0)
        rc = forget_clean(b, ino, first);
    if (rc == 0)
        rc = first ? rows_delete(b, b->st_del_from, ino, first)
                   : rows_delete(b, b->st_del_all, ino, 0);
    return rc;
}

/* ---- reads and writes ---- */

/* Whole pieces of the data file into buf: out of the page cache if they are
 * all there, else past it, straight from the disk into buf when it is
 * aligned (fetched blocks were written past it, and the copy out of the
 * page cache cost more CPU than all the rest of a read). */
static int read_pieces(struct blocks *b, int fd, uint64_t ino, uint64_t off, size_t len,
                       uint8_t *buf)
{
    struct iovec iov = { buf, len };
    if (preadv2(fd, &iov, 1, (off_t)off, RWF_NOWAIT) == (ssize_t)len)
        return 0;
    if ((uintptr_t)buf % BUFPOOL_ALIGN == 0 && !__atomic_load_n(&b->no_direct, __ATOMIC_RELAXED)) {
        char path[PATH_MAX];
        data_path(b, ino, path);
        int direct = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
        if (direct < 0 && errno == EINVAL)
            __atomic_store_n(&b->no_direct, 1, __ATOMIC_RELAXED);
        int rc = direct < 0 ? 1 : read_local(direct, ino, off, len, buf);
        if (direct >= 0)
            close(direct);
        if (rc == 0)
            return 0;
    }
    return read_local(fd, ino, off, len, buf);
}

/* Reads [pos, pos+n) of a CLEAN block from disk into out (if not NULL),
 * checking the pieces it touches first. Returns -EBADMSG if one fails
 * (out may then hold anything). */
static int read_checked(struct blocks *b, int fd, uint64_t ino, uint64_t idx,
                        const struct block *blk, uint64_t pos, size_t n, uint8_t *out)
{
    uint64_t start = idx * b->bsize;
    size_t first = (size_t)(pos - start) / BLOCKS_PIECE;
    size_t last = (size_t)(pos + n - 1 - start) / BLOCKS_PIECE;
    size_t span = (last - first + 1) * BLOCKS_PIECE;
    uint64_t from = start + first * BLOCKS_PIECE;
    /* Whole pieces (as the kernel asks for them) are checked where they land. */
    int whole = out && from == pos && span == n;
    uint8_t *buf = whole ? out : memcache_buffer(b->mem); /* span <= a block */
    int rc = buf ? read_pieces(b, fd, ino, from, span, buf) : -ENOMEM;
    for (size_t i = first; rc == 0 && i <= last; i++)
        if (!blk->has_sums ||
            XXH3_64bits(buf + (i - first) * BLOCKS_PIECE, BLOCKS_PIECE) != blk->sums[i])
            rc = -EBADMSG;
    if (rc == 0 && out && !whole)
        memcpy(out, buf + (pos - from), n);
    if (!whole)
        memcache_recycle(b->mem, buf, buf_size(b));
    return rc;
}

/* A cached block whose bytes are not what was cached: never served, gone
 * from disk, to be fetched again (rule 10). */
static int failed_check(struct blocks *b, int fd, uint64_t ino, uint64_t idx,
                        const struct block *blk)
{
    log_warn("cache: block %llu of inode %llu failed its check on disk; fetching it again",
             (unsigned long long)idx, (unsigned long long)ino);
    count(&b->n.corrupt);
    return drop_local(b, fd, ino, idx, blk->name, NULL);
}

/* [pos, pos+n) of a block only in the bucket, fetched; kept on disk if
 * fd is not -1 and there is room (and in the memory tier in any case). */
static int read_remote(struct blocks *b, int fd, uint64_t ino, uint64_t idx,
                       const struct block *blk, uint64_t pos, size_t n, uint8_t *out)
{
    struct chunk c;
    int rc = chunk_bytes(b, ino, blk, &c);
    if (rc)
        return rc;
    size_t in = (size_t)(pos - idx * b->bsize), have = in < c.len ? c.len - in : 0;
    have = have < n ? have : n;
    memcpy(out, c.data + in, have);
    memset(out + have, 0, n - have);
    if (fd >= 0 && keep_on_disk(b, fd, ino, idx, blk, &c, 0) == -EIO)
        log_warn("%s", err_msg(-EIO)); /* served all the same */
    memcache_put(b->mem, blk->name, c.base, c.cap, c.data, c.len);
    return 0;
}

/* A read was served from a tier: counted, and the block is warmer. */
static int served(struct blocks *b, uint64_t *tier, uint64_t ino, uint64_t idx)
{
    count(tier);
    pthread_mutex_lock(&b->lock);
    policy_hit(b->policy, ino, idx);
    pthread_mutex_unlock(&b->lock);
    return 0;
}

/* The pieces of a block that [pos, pos+n) touches: [*first, *last]. */
static void pieces_touched(const struct blocks *b, uint64_t idx, uint64_t pos, size_t n,
                           size_t *first, size_t *last)
{
    *first = (size_t)(pos - idx * b->bsize) / BLOCKS_PIECE;
    *last = (size_t)(pos + n - 1 - idx * b->bsize) / BLOCKS_PIECE;
}

static int has_piece(const struct block *blk, size_t i)
{
    return !blk->partial || (blk->have[i / 8] >> (i % 8) & 1);
}

/* Whether a CLEAN block holds every piece [pos, pos+n) touches. */
static int holds(const struct blocks *b, const struct block *blk, uint64_t idx, uint64_t pos,
                 size_t n)
{
    size_t first, last;
    pieces_touched(b, idx, pos, n, &first, &last);
    for (size_t i = first; i <= last; i++)
        if (!has_piece(blk, i))
            return 0;
    return 1;
}

/* Whether a block has bytes in the bucket that are not here. */
static int wants_fetch(const struct block *blk)
{
    return blk->state == ST_REMOTE || (blk->state == ST_CLEAN && blk->partial);
}

/* Rule 12: fetched pieces [first, first+count) of a block, at buf, join
 * what is on disk of it, if the budget has room for them now. Caller holds
 * the block's stripe lock. */
static int keep_pieces(struct blocks *b, int fd, uint64_t ino, uint64_t idx, struct block *blk,
                       size_t first, size_t count, const uint8_t *buf)
{
    size_t bytes = count * BLOCKS_PIECE;
    uint64_t at = idx * b->bsize + first * BLOCKS_PIECE;
    int rc = space_reserve(b->space, bytes, 0), was_clean = blk->state == ST_CLEAN;
    if (rc)
        return rc;
    if (!was_clean) {
        blk->partial = 1;
        memset(blk->have, 0, sizeof blk->have);
        memset(blk->sums, 0, sizeof blk->sums);
    }
    for (size_t i = 0; i < count; i++) {
        blk->sums[first + i] = XXH3_64bits(buf + i * BLOCKS_PIECE, BLOCKS_PIECE);
        blk->have[(first + i) / 8] |= (uint8_t)(1u << ((first + i) % 8));
    }
    size_t all = 0;
    while (all < b->npieces && has_piece(blk, all))
        all++;
    rc = write_local(fd, ino, at, buf, bytes);
    if (rc == 0)
        rc = row_set_have(b, ino, idx, blk->name, blk->sums, all == b->npieces ? NULL : blk->have);
    if (rc && !was_clean) /* unlisted, in a block no eviction would punch */
        punch(fd, ino, at, bytes);
    account(b, ino, fd);
    if (rc == 0 && !was_clean) { /* a miss, not a hit: only a block new to the list goes in */
        pthread_mutex_lock(&b->lock);
        policy_add(b->policy, ino, idx);
        pthread_mutex_unlock(&b->lock);
    }
    space_release(b->space, bytes);
    return rc;
}

/* Rule 12: [pos, pos+n) of a block by the pieces it touches alone, kept on
 * disk if fd is not -1 and there is room. -ENOTSUP if the block's chunk has
 * no pieces. */
static int read_sparse(struct blocks *b, int fd, uint64_t ino, uint64_t idx, struct block *blk,
                       uint64_t pos, size_t n, uint8_t *out)
{
    size_t first, last, got = 0;
    pieces_touched(b, idx, pos, n, &first, &last);
    size_t want = last - first + 1, in = (size_t)(pos - idx * b->bsize) - first * BLOCKS_PIECE;
    uint8_t *buf = memcache_buffer(b->mem); /* a block's room */
    int rc =
        buf ? remote_get_pieces(b->remote, blk->name, b->bsize, first, want, buf, &got) : -ENOMEM;
    if (rc == 0) {
        count(&b->n.fetches);
        memset(buf + got, 0, want * BLOCKS_PIECE - got); /* the zeros past the chunk's end */
        memcpy(out, buf + in, n);
        if (fd >= 0 && keep_pieces(b, fd, ino, idx, blk, first, want, buf) == -EIO)
            log_warn("%s", err_msg(-EIO)); /* served all the same */
    }
    if (buf)
        memcache_recycle(b->mem, buf, buf_size(b));
    return rc;
}

/* [pos, pos+n) of a block whose bytes are not here: by its pieces for a
 * sparse read if its chunk has them, else the whole chunk. */
static int read_missing(struct blocks *b, int fd, uint64_t ino, uint64_t idx, struct block *blk,
                        uint64_t pos, size_t n, uint8_t *out, int sparse)
{
    int rc = sparse ? read_sparse(b, fd, ino, idx, blk, pos, n, out) : -ENOTSUP;
    return rc != -ENOTSUP ? rc : read_remote(b, fd, ino, idx, blk, pos, n, out);
}

/* One block's part of a read, tier by tier; a sparse read (a random one)
 * fetches only the pieces it needs. Caller holds the block's stripe lock. */
static int read_block(struct blocks *b, int fd, uint64_t ino, uint64_t idx, uint64_t pos, size_t n,
                      uint8_t *out, int sparse)
{
    if (dirty_get(b, ino, idx)) {
        count(&b->n.hits_disk);
        return read_local(fd, ino, pos, n, out);
    }
    struct block blk = { 0 };
    int rc = row_get(b, ino, idx, &blk);
    if (rc || blk.state == 0) {
        memset(out, 0, n);
        return rc;
    }
    if (memcache_read(b->mem, blk.name, (size_t)(pos - idx * b->bsize), n, out))
        return served(b, &b->n.hits_memory, ino, idx);
    if (blk.state == ST_CLEAN && holds(b, &blk, idx, pos, n)) {
        rc = read_checked(b, fd, ino, idx, &blk, pos, n, out);
        if (rc == 0)
            return served(b, &b->n.hits_disk, ino, idx);
        if (rc != -EBADMSG)
            return rc;
        if ((rc = failed_check(b, fd, ino, idx, &blk)) != 0)
            return rc;
        blk.state = ST_REMOTE;
    }
    return read_missing(b, fd, ino, idx, &blk, pos, n, out, sparse);
}

/* A file's chunks at one instant (blocks_version_get). Blocks past n are
 * holes: a huge sparse file costs only what it names. */
struct blocks_version {
    uint64_t ino, size, n;
    uint8_t (*names)[CODEC_NAME_LEN];
    uint8_t *has; /* 0: block idx was a hole */
};

/* One block's part of a read of version v: the block as it is now if it
 * still is the chunk v names, else that chunk from the memory tier or the
 * bucket (kept in memory only: the disk holds the current version). Caller
 * holds the block's stripe lock. The data file is opened for the read
 * alone: the inode may be one the live tree is forgetting (its cached
 * descriptor closed under us), or none it has open at all. */
static int read_versioned(struct blocks *b, const struct blocks_version *v, uint64_t idx,
                          uint64_t pos, size_t n, uint8_t *out, int sparse)
{
    struct block blk = { 0 };
    if (idx >= v->n || !v->has[idx]) {
        memset(out, 0, n);
        return 0;
    }
    int rc = dirty_get(b, v->ino, idx) ? 0 : row_get(b, v->ino, idx, &blk);
    if (rc)
        return rc;
    if (blk.state && blk.state != ST_DIRTY && !memcmp(blk.name, v->names[idx], CODEC_NAME_LEN)) {
        int fd = open_path(b, v->ino);
        if (fd < 0)
            return fd;
        rc = read_block(b, fd, v->ino, idx, pos, n, out, sparse);
        close(fd);
        return rc;
    }
    if (memcache_read(b->mem, v->names[idx], (size_t)(pos - idx * b->bsize), n, out)) {
        count(&b->n.hits_memory);
        return 0;
    }
    blk = (struct block){ .state = ST_REMOTE };
    memcpy(blk.name, v->names[idx], CODEC_NAME_LEN);
    return read_missing(b, -1, v->ino, idx, &blk, pos, n, out, sparse);
}

/* Reads of the file as it is (v NULL) or of version v, block by block. */
static ssize_t read_range(struct blocks *b, uint64_t ino, uint64_t size, uint64_t off, size_t len,
                          void *out, const struct blocks_version *v, unsigned flags)
{
    int sparse = (flags & BLOCKS_RANDOM) && b->bsize >= SPARSE_BLOCK;
    if (off >= size)
        return 0;
    if (len > size - off)
        len = (size_t)(size - off);
    int fd = v ? -1 : open_data(b, ino);
    if (!v && fd < 0)
        return fd;
    for (size_t done = 0; done < len;) {
        uint64_t pos = off + done, idx = pos / b->bsize;
        size_t n = (size_t)((idx + 1) * b->bsize - pos);
        n = n < len - done ? n : len - done;
        pthread_mutex_t *lk = stripe_of(b, ino, idx);
        pthread_mutex_lock(lk);
        int rc = v ? read_versioned(b, v, idx, pos, n, (uint8_t *)out + done, sparse)
                   : read_block(b, fd, ino, idx, pos, n, (uint8_t *)out + done, sparse);
        pthread_mutex_unlock(lk);
        if (rc)
            return rc;
        done += n;
    }
    return (ssize_t)len;
}

ssize_t blocks_read(struct blocks *b, uint64_t ino, uint64_t size, uint64_t off, size_t len,
                    void *out, unsigned flags)
{
    return read_range(b, ino, size, off, len, out, NULL, flags);
}

ssize_t blocks_read_version(struct blocks *b, const struct blocks_version *v, uint64_t off,
                            size_t len, void *out, unsigned flags)
{
    return read_range(b, v->ino, v->size, off, len, out, v, flags);
}

void blocks_version_free(struct blocks_version *v)
{
    if (!v)
        return;
    free(v->names);
    free(v->has);
    free(v);
}

/* One past the highest block index ino has a row for (0 if none). */
static int last_block(struct blocks *b, uint64_t ino, uint64_t *out)
{
    db_lock(b->db);
    sqlite3_bind_int64(b->st_last, 1, (sqlite3_int64)ino);
    int rc = sqlite3_step(b->st_last);
    *out = rc == SQLITE_ROW && sqlite3_column_type(b->st_last, 0) != SQLITE_NULL
               ? (uint64_t)sqlite3_column_int64(b->st_last, 0) + 1
               : 0;
    sqlite3_reset(b->st_last);
    db_unlock(b->db);
    return rc == SQLITE_ROW ? 0 : db_fail(db_handle(b->db), rc, "last block");
}

static int version_fill(struct blocks *b, struct blocks_version *v)
{
    int rc;
    db_lock(b->db);
    sqlite3_bind_int64(b->st_names, 1, (sqlite3_int64)v->ino);
    sqlite3_bind_int64(b->st_names, 2, (sqlite3_int64)v->n);
    while ((rc = sqlite3_step(b->st_names)) == SQLITE_ROW) {
        uint64_t idx = (uint64_t)sqlite3_column_int64(b->st_names, 0);
        const void *name = sqlite3_column_blob(b->st_names, 2);
        if (sqlite3_column_int(b->st_names, 1) == ST_DIRTY || !name ||
            sqlite3_column_bytes(b->st_names, 2) != CODEC_NAME_LEN)
            break;
        memcpy(v->names[idx], name, CODEC_NAME_LEN);
        v->has[idx] = 1;
    }
    sqlite3_reset(b->st_names);
    db_unlock(b->db);
    if (rc == SQLITE_ROW)
        return err_set(-EBUSY, "inode %llu has changes not in a snapshot: no version of it",
                       (unsigned long long)v->ino);
    return rc == SQLITE_DONE ? 0 : db_fail(db_handle(b->db), rc, "block names");
}

/* A version with room for blocks [0, n): n is one past the last one named. */
static struct blocks_version *version_new(uint64_t ino, uint64_t size, uint64_t n)
{
    struct blocks_version *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->ino = ino;
    v->size = size;
    v->n = n;
    v->names = calloc(v->n ? v->n : 1, CODEC_NAME_LEN);
    v->has = calloc(v->n ? v->n : 1, 1);
    if (v->names && v->has)
        return v;
    blocks_version_free(v);
    return NULL;
}

int blocks_version_get(struct blocks *b, uint64_t ino, uint64_t size, struct blocks_version **out)
{
    uint64_t blocks = (size + b->bsize - 1) / b->bsize, last = 0;
    int rc = last_block(b, ino, &last);
    if (rc)
        return rc;
    struct blocks_version *v = version_new(ino, size, last < blocks ? last : blocks);
    rc = v ? version_fill(b, v) : -ENOMEM;
    if (rc) {
        blocks_version_free(v);
        return rc;
    }
    *out = v;
    return 0;
}

int blocks_version_of(struct blocks *b, uint64_t ino, uint64_t size, const struct blocks_ref *refs,
                      size_t n, struct blocks_version **out)
{
    uint64_t blocks = (size + b->bsize - 1) / b->bsize;
    struct blocks_version *v = version_new(ino, size, n ? refs[n - 1].idx + 1 : 0);
    if (!v)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (refs[i].ino != ino || refs[i].idx >= v->n || refs[i].idx >= blocks) {
            blocks_version_free(v);
            return err_set(-EINVAL, "block %llu is not one of inode %llu's",
                           (unsigned long long)refs[i].idx, (unsigned long long)ino);
        }
        memcpy(v->names[refs[i].idx], refs[i].name, CODEC_NAME_LEN);
        v->has[refs[i].idx] = 1;
    }
    *out = v;
    return 0;
}

/* ---- following another writer's snapshots ---- */

struct old_row {
    uint64_t ino, idx;
    int state;
    uint8_t name[CODEC_NAME_LEN];
};

/* Every row, in (ino, idx) order, into *rows (from malloc). */
static int all_rows(struct blocks *b, struct old_row **rows, size_t *n)
{
    size_t cap = 0;
    int rc;
    *rows = NULL;
    *n = 0;
    db_lock(b->db);
    while ((rc = sqlite3_step(b->st_all)) == SQLITE_ROW) {
        if (array_grow((void **)rows, &cap, *n, sizeof **rows)) {
            rc = SQLITE_NOMEM;
            break;
        }
        struct old_row *r = &(*rows)[(*n)++];
        r->ino = (uint64_t)sqlite3_column_int64(b->st_all, 0);
        r->idx = (uint64_t)sqlite3_column_int64(b->st_all, 1);
        r->state = sqlite3_column_int(b->st_all, 2);
        const void *name = sqlite3_column_blob(b->st_all, 3);
        memset(r->name, 0, CODEC_NAME_LEN);
        if (name && sqlite3_column_bytes(b->st_all, 3) == CODEC_NAME_LEN)
            memcpy(r->name, name, CODEC_NAME_LEN);
    }
    sqlite3_reset(b->st_all);
    db_unlock(b->db);
    if (rc == SQLITE_DONE)
        return 0;
    free(*rows);
    return rc == SQLITE_NOMEM ? -ENOMEM : db_fail(db_handle(b->db), rc, "block states");
}

/* Block idx of ino becomes chunk name (NULL: a hole); bytes cached under
 * another name leave the disk. Reads of the block wait on its stripe lock,
 * so none sees it half changed. */
static int retarget(struct blocks *b, uint64_t ino, uint64_t idx, const uint8_t *name)
{
    pthread_mutex_t *lk = stripe_of(b, ino, idx);
    pthread_mutex_lock(lk);
    struct block blk = { 0 };
    int rc = dirty_get(b, ino, idx) ? -EBUSY : row_get(b, ino, idx, &blk);
    if (rc == 0 && blk.state == ST_DIRTY)
        rc = -EBUSY;
    if (rc == 0 && blk.state == ST_CLEAN) {
        int fd = open_data(b, ino);
        rc = fd < 0 ? fd : drop_local(b, fd, ino, idx, name, NULL);
    } else if (rc == 0) {
        rc = name ? row_set(b, ino, idx, ST_REMOTE, name, NULL) : row_delete(b, ino, idx);
    }
    pthread_mutex_unlock(lk);
    if (rc == -EBUSY)
        return err_set(-EBUSY, "block %llu of inode %llu has changes no snapshot holds",
                       (unsigned long long)idx, (unsigned long long)ino);
    return rc;
}

static int ref_cmp(uint64_t ino_a, uint64_t idx_a, uint64_t ino_b, uint64_t idx_b)
{
    return ino_a != ino_b   ? (ino_a < ino_b ? -1 : 1)
           : idx_a != idx_b ? (idx_a < idx_b ? -1 : 1)
                            : 0;
}

static int ref_order(const void *a, const void *b)
{
    const struct blocks_ref *x = a, *y = b;
    return ref_cmp(x->ino, x->idx, y->ino, y->idx);
}

/* Whether refs (sorted) name a block of ino. */
static int has_ino(const struct blocks_ref *refs, size_t n, uint64_t ino)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (refs[mid].ino < ino)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && refs[lo].ino == ino;
}

struct follow_job {
    const struct blocks_ref *refs;
    size_t n;
    int (*in_use)(void *arg, uint64_t ino);
    void *arg;
};

/* Merges the rows there are with the refs there should be (both sorted). A
 * file gone from the snapshot loses its data file too, unless it is open:
 * a read may be using the descriptor (its blocks go one by one, and the
 * empty data file stays). */
static int follow_merge(struct blocks *b, const struct old_row *rows, size_t nrows,
                        const struct follow_job *job, uint64_t *changed)
{
    const struct blocks_ref *refs = job->refs;
    size_t n = job->n;
    size_t i = 0, j = 0;
    int rc = 0;
    while (rc == 0 && (i < nrows || j < n)) {
        int c = i == nrows ? 1
                : j == n   ? -1
                           : ref_cmp(rows[i].ino, rows[i].idx, refs[j].ino, refs[j].idx);
        if (c < 0 && !has_ino(refs, n, rows[i].ino) && !job->in_use(job->arg, rows[i].ino)) {
            uint64_t ino = rows[i].ino;
            rc = blocks_remove(b, ino);
            while (i < nrows && rows[i].ino == ino)
                i++;
            ++*changed;
        } else if (c < 0) {
            rc = retarget(b, rows[i].ino, rows[i].idx, NULL);
            i++, ++*changed;
        } else if (c > 0) {
            rc = retarget(b, refs[j].ino, refs[j].idx, refs[j].name);
            j++, ++*changed;
        } else {
            if (rows[i].state == ST_DIRTY || memcmp(rows[i].name, refs[j].name, CODEC_NAME_LEN)) {
                rc = retarget(b, refs[j].ino, refs[j].idx, refs[j].name);
                ++*changed;
            }
            i++, j++;
        }
    }
    return rc;
}

void blocks_refs_sort(struct blocks_ref *refs, size_t n)
{
    qsort(refs, n, sizeof *refs, ref_order);
}

int blocks_follow(struct blocks *b, const struct blocks_ref *refs, size_t n,
                  int (*in_use)(void *arg, uint64_t ino), void *arg, uint64_t *changed)
{
    struct old_row *rows;
    size_t nrows;
    struct follow_job job = { refs, n, in_use, arg };
    *changed = 0;
    int rc = all_rows(b, &rows, &nrows);
    if (rc == 0)
        rc = follow_merge(b, rows, nrows, &job, changed);
    free(rows);
    return rc;
}

int blocks_view(struct blocks *b, uint64_t ino, uint64_t size, uint64_t off, size_t len,
                struct blocks_view *v)
{
    uint64_t idx = off / b->bsize, in = off - idx * b->bsize;
    if (off >= size || len > size - off || in + len > b->bsize)
        return 0;
    pthread_mutex_t *lk = stripe_of(b, ino, idx);
    pthread_mutex_lock(lk);
    struct block blk = { 0 };
    const uint8_t *data = NULL;
    size_t have = 0;
    if (!dirty_get(b, ino, idx) && row_get(b, ino, idx, &blk) == 0 && blk.state != 0)
        data = memcache_pin(b->mem, blk.name, &have, &v->pin);
    pthread_mutex_unlock(lk);
    if (data && in + len > have) { /* the zeros past the chunk's end: blocks_read makes them */
        memcache_unpin(b->mem, v->pin);
        data = NULL;
    }
    if (!data)
        return 0;
    served(b, &b->n.hits_memory, ino, idx);
    v->data = data + in;
    v->len = len;
    return 1;
}

void blocks_view_done(struct blocks *b, struct blocks_view *v)
{
    memcache_unpin(b->mem, v->pin);
}

/* A CLEAN block's bytes that a write will keep must be right before they
 * become the only copy: 0, or 1 if it failed its check and was dropped. */
static int check_whole(struct blocks *b, int fd, uint64_t ino, uint64_t idx,
                       const struct block *blk)
{
    int rc = read_checked(b, fd, ino, idx, blk, idx * b->bsize, b->bsize, NULL);
    if (rc != -EBADMSG)
        return rc;
    rc = failed_check(b, fd, ino, idx, blk);
    return rc ? rc : 1;
}

/* Rules 1, 2 and 6 for one block; caller holds its stripe lock. */
static int make_dirty(struct blocks *b, int fd, uint64_t ino, uint64_t idx, int covers_all,
                      struct dirty **out)
{
    struct dirty *d = dirty_get(b, ino, idx);
    if (d) {
        *out = d;
        return d->frozen ? seal_to_staging(b, fd, ino, idx, d) : 0;
    }
    struct block blk = { 0 };
    int rc = row_get(b, ino, idx, &blk);
    if (rc == 0 && blk.state == ST_CLEAN && !blk.partial && !covers_all &&
        (rc = check_whole(b, fd, ino, idx, &blk)) == 1) {
        blk.state = ST_REMOTE; /* it failed, and is gone from disk */
        rc = 0;
    }
    if (rc == 0 && wants_fetch(&blk) && !covers_all)
        rc = fetch_for_write(b, fd, ino, idx, &blk);
    if (rc == 0)
        rc = row_set(b, ino, idx, ST_DIRTY, NULL, NULL);
    if (rc == 0 && blk.state == ST_CLEAN) {
        pthread_mutex_lock(&b->lock);
        policy_remove(b->policy, ino, idx);
        pthread_mutex_unlock(&b->lock);
    }
    return rc ? rc : dirty_add(b, ino, idx, out);
}

/* Whether [off, off+len) of the file has disk blocks already: rewriting
 * them takes no more room. */
static int allocated(int fd, uint64_t off, size_t len)
{
    off_t hole = lseek(fd, (off_t)off, SEEK_HOLE);
    return hole >= 0 && (uint64_t)hole >= off + len;
}

/* Bytes a write of [off, off+len) will copy aside first (rule 6): a block
 * per frozen block it touches. */
static size_t staging_for(struct blocks *b, uint64_t ino, uint64_t off, size_t len)
{
    size_t n = 0;
    pthread_mutex_lock(&b->lock);
    for (uint64_t idx = off / b->bsize; idx <= (off + len - 1) / b->bsize; idx++) {
        struct dirty *d = hmap_get(b->dirty, ino, idx);
        n += d && d->frozen;
    }
    pthread_mutex_unlock(&b->lock);
    return n * b->bsize;
}

int blocks_reserve(struct blocks *b, uint64_t ino, uint64_t off, size_t len, struct blocks_room *r)
{
    r->staged = staging_for(b, ino, off, len);
    r->held = len + r->staged;
    /* With room to spare, a write needs no more thought (nor a syscall). */
    if (len == 0 || space_reserve(b->space, r->held, 0) == 0)
        return 0;
    int fd = open_data(b, ino);
    if (fd < 0)
        return fd;
    if (allocated(fd, off, len))
        r->held = r->staged;
    int rc = r->held ? space_reserve(b->space, r->held, b->full_timeout_ms) : 0;
    if (rc)
        r->held = 0;
    return rc;
}

int blocks_room_holds(struct blocks *b, uint64_t ino, uint64_t off, size_t len,
                      const struct blocks_room *r)
{
    return len == 0 || staging_for(b, ino, off, len) <= r->staged;
}

void blocks_release(struct blocks *b, struct blocks_room *r)
{
    space_release(b->space, r->held);
    r->held = 0;
}

int blocks_write_begin(struct blocks *b, uint64_t ino, uint64_t size, uint64_t off, size_t len,
                       struct blocks_span *sp)
{
    memset(sp, 0, sizeof *sp);
    if (len == 0 || len > b->bsize)
        return err_set(-EINVAL, "a write span holds 1 to %zu bytes", b->bsize);
    int fd = open_data(b, ino);
    if (fd < 0)
        return fd;
    sp->ino = ino;
    sp->fd = fd;
    uint64_t first = off / b->bsize, last = (off + len - 1) / b->bsize;
    pthread_mutex_t *a = stripe_of(b, ino, first), *z = stripe_of(b, ino, last);
    /* Two stripes in address order, so two spans can never lock in opposite orders. */
    sp->locks[0] = a < z ? a : z;
    sp->locks[1] = a == z ? NULL : a < z ? z : a;
    for (int i = 0; i < 2 && sp->locks[i]; i++)
        pthread_mutex_lock(sp->locks[i]);
    int rc = 0;
    for (uint64_t idx = first; rc == 0 && idx <= last; idx++) {
        uint64_t start = idx * b->bsize, lo = off > start ? off : start;
        uint64_t hi = off + len < start + b->bsize ? off + len : start + b->bsize;
        /* The block's old bytes, all overwritten: no need to fetch them first. */
        uint64_t old_end =
            size > start ? (size - start < b->bsize ? size : start + b->bsize) : start;
        rc = make_dirty(b, fd, ino, idx, lo == start && hi >= old_end, &sp->d[idx - first]);
    }
    if (rc)
        blocks_write_end(b, sp);
    return rc;
}

void blocks_write_end(struct blocks *b, struct blocks_span *sp)
{
    if (sp->ino)
        account(b, sp->ino, sp->fd);
    /* Whatever reached the file, the blocks' bytes may have changed. */
    int64_t t = clock_monotonic_ns();
    for (int i = 0; i < 2; i++)
        if (sp->d[i]) {
            sp->d[i]->version = next_version(b);
            sp->d[i]->quiet_since = t;
        }
    for (int i = 1; i >= 0; i--)
        if (sp->locks[i])
            pthread_mutex_unlock(sp->locks[i]);
    memset(sp, 0, sizeof *sp);
}

int blocks_truncate(struct blocks *b, uint64_t ino, uint64_t old_size, uint64_t new_size)
{
    if (new_size >= old_size)
        return 0; /* the new bytes are zeros: a hole, nothing to record */
    int fd = open_data(b, ino);
    if (fd < 0)
        return fd;
    uint64_t first_gone = (new_size + b->bsize - 1) / b->bsize;
    int rc = drop_blocks_from(b, fd, ino, first_gone);
    if (rc == 0 && new_size % b->bsize) { /* the block cut in two changes: write it */
        uint64_t idx = new_size / b->bsize;
        pthread_mutex_t *lk = stripe_of(b, ino, idx);
        pthread_mutex_lock(lk);
        struct dirty *d = NULL;
        rc = make_dirty(b, fd, ino, idx, 0, &d);
        if (rc == 0) {
            d->version = next_version(b);
            d->quiet_since = clock_monotonic_ns();
        }
        pthread_mutex_unlock(lk);
    }
    if (rc == 0 && ftruncate(fd, (off_t)new_size))
        rc = io_fail("truncate", ino);
    account(b, ino, fd);
    return rc;
}

/* Runs a count(*) statement for ino. */
static uint64_t count_of(struct blocks *b, sqlite3_stmt *st, uint64_t ino)
{
    db_lock(b->db);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)ino);
    uint64_t n = sqlite3_step(st) == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    db_unlock(b->db);
    return n;
}

uint64_t blocks_allocated(struct blocks *b, uint64_t ino, uint64_t size)
{
    uint64_t n = count_of(b, b->st_count, ino);
    return n * b->bsize < size ? n * b->bsize : size;
}

int blocks_fsync(struct blocks *b, uint64_t ino)
{
    pthread_mutex_lock(&b->lock);
    intptr_t fd = (intptr_t)hmap_get(b->fds, ino, 0) - 1;
    pthread_mutex_unlock(&b->lock);
    if (fd >= 0 && fdatasync((int)fd))
        return io_fail("fsync", ino);
    return 0;
}

void blocks_forget(struct blocks *b, uint64_t ino)
{
    pthread_mutex_lock(&b->lock);
    intptr_t fd = (intptr_t)hmap_del(b->fds, ino, 0) - 1;
    pthread_mutex_unlock(&b->lock);
    if (fd >= 0)
        close((int)fd);
}

int blocks_remove(struct blocks *b, uint64_t ino)
{
    int fd = open_data(b, ino);
    int rc = fd < 0 ? fd : drop_blocks_from(b, fd, ino, 0);
    blocks_forget(b, ino);
    char path[PATH_MAX];
    data_path(b, ino, path);
    unlink(path);
    account_gone(b, ino);
    return rc;
}

static int measure_data(struct blocks *b, int remove);
static void close_fd(void *arg, uint64_t a, uint64_t bb, void *v);

static void unaccount(void *arg, uint64_t ino, uint64_t zero, void *v)
{
    (void)ino;
    (void)zero;
    space_add(arg, -(int64_t)((uintptr_t)v - 1));
}

/* Every data file goes, with the descriptors, the budget's count of them,
 * and the eviction policy. Nothing may be in use. */
static int clear_files(struct blocks *b)
{
    struct hmap *fds = hmap_new(), *alloc = hmap_new();
    struct policy *policy = NULL;
    if (!fds || !alloc || policy_new(b->protect_pct, b->capacity, &policy)) {
        hmap_free(fds);
        hmap_free(alloc);
        return -ENOMEM;
    }
    pthread_mutex_lock(&b->lock);
    hmap_each(b->fds, close_fd, NULL);
    hmap_each(b->alloc, unaccount, b->space);
    hmap_free(b->fds);
    hmap_free(b->alloc);
    policy_free(b->policy);
    b->fds = fds;
    b->alloc = alloc;
    b->policy = policy;
    pthread_mutex_unlock(&b->lock);
    return measure_data(b, 1);
}

int blocks_clear_locked(struct blocks *b)
{
    int rc = db_run(b->st_clear);
    return rc ? rc : clear_files(b);
}

int blocks_set_remote(struct blocks *b, uint64_t ino, uint64_t idx,
                      const uint8_t name[CODEC_NAME_LEN])
{
    return row_set_locked(b, ino, idx, ST_REMOTE, name, NULL);
}

/* ---- snapshots ---- */

static void freeze_one(void *arg, uint64_t ino, uint64_t idx, void *v)
{
    (void)ino;
    (void)idx;
    ((struct dirty *)v)->frozen = 1;
    ++*(size_t *)arg;
}

size_t blocks_freeze(struct blocks *b)
{
    size_t n = 0;
    pthread_mutex_lock(&b->lock);
    hmap_each(b->dirty, freeze_one, &n);
    pthread_mutex_unlock(&b->lock);
    return n;
}

/* One frozen block on its way to the bucket. */
struct seal_job {
    struct blocks *b;
    uint64_t ino, idx;
    uint64_t len; /* the block's length at the freeze */
};

/* Rule 7: the block's bytes of the freeze instant, from the staging copy
 * (rule 6 ran) or the data file (nothing has written it since). */
static int sealed_bytes(struct blocks *b, uint64_t ino, uint64_t idx, uint8_t *buf,
                        struct seal **out)
{
    pthread_mutex_t *lk = stripe_of(b, ino, idx);
    pthread_mutex_lock(lk);
    pthread_mutex_lock(&b->lock);
    struct seal *s = hmap_get(b->seals, ino, idx);
    pthread_mutex_unlock(&b->lock);
    int rc = 0;
    char path[PATH_MAX];
    if (s && s->staged) {
        staging_path(b, ino, idx, path);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        rc = fd < 0 ? io_fail("staging read", ino) : read_local(fd, ino, 0, b->bsize, buf);
        if (fd >= 0)
            close(fd);
    } else {
        struct dirty *d = dirty_get(b, ino, idx);
        int fd = open_data(b, ino);
        rc = fd < 0 ? fd : !d ? -ENOENT : read_local(fd, ino, idx * b->bsize, b->bsize, buf);
        if (rc == 0 && (rc = add_seal(b, ino, idx, d->version, 0, 0)) == 0) {
            d->frozen = 0;
            pthread_mutex_lock(&b->lock);
            s = hmap_get(b->seals, ino, idx);
            pthread_mutex_unlock(&b->lock);
        }
    }
    pthread_mutex_unlock(lk);
    *out = s;
    return rc;
}

/* Rule 9 at a seal: a frozen block uploaded ahead and not written since needs
 * no reading, naming or uploading. Returns 1 if it was sealed that way. */
static int seal_from_upload(struct blocks *b, const struct seal_job *j)
{
    pthread_mutex_t *lk = stripe_of(b, j->ino, j->idx);
    pthread_mutex_lock(lk);
    pthread_mutex_lock(&b->lock);
    struct seal *staged = hmap_get(b->seals, j->ino, j->idx);
    struct dirty *d = hmap_get(b->dirty, j->ino, j->idx);
    pthread_mutex_unlock(&b->lock);
    uint64_t *sums = malloc(b->npieces * sizeof *sums);
    /* An upload too old for gc's grace is not relied on: the seal puts it again. */
    int done = sums && !staged && d && d->frozen && d->has_up && d->up_version == d->version &&
               j->len == b->bsize && remote_fresh(b->remote, d->up_name) &&
               add_seal(b, j->ino, j->idx, d->version, 0, 0) == 0;
    if (done) {
        pthread_mutex_lock(&b->lock);
        struct seal *s = hmap_get(b->seals, j->ino, j->idx);
        memcpy(s->name, d->up_name, CODEC_NAME_LEN);
        memcpy(sums, d->up_sums, b->npieces * sizeof *sums);
        s->sums = sums;
        sums = NULL;
        s->has_name = 1;
        d->frozen = 0;
        pthread_mutex_unlock(&b->lock);
    }
    pthread_mutex_unlock(lk);
    free(sums);
    return done;
}

static int seal_one(void *arg)
{
    struct seal_job *j = arg;
    struct blocks *b = j->b;
    if (seal_from_upload(b, j)) {
        free(j);
        return 0;
    }
    uint8_t *buf = malloc(b->bsize);
    struct seal *s = NULL;
    int rc = buf ? sealed_bytes(b, j->ino, j->idx, buf, &s) : -ENOMEM;
    uint8_t name[CODEC_NAME_LEN];
    uint64_t *sums = NULL;
    if (rc == 0)
        rc = upload(b, buf, j->len, name, &sums);
    if (rc == 0) {
        pthread_mutex_lock(&b->lock);
        memcpy(s->name, name, CODEC_NAME_LEN);
        s->sums = sums;
        sums = NULL;
        s->has_name = 1;
        pthread_mutex_unlock(&b->lock);
    }
    free(sums);
    free(buf);
    free(j);
    return rc == -ENOENT ? 0 : rc;
}

struct frozen_list {
    uint64_t (*pair)[2];
    size_t n, cap;
};

static void list_frozen(void *arg, uint64_t ino, uint64_t idx, void *v)
{
    struct frozen_list *l = arg;
    if (!((struct dirty *)v)->frozen)
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        void *p = realloc(l->pair, cap * sizeof *l->pair);
        if (!p)
            return;
        l->pair = p;
        l->cap = cap;
    }
    l->pair[l->n][0] = ino;
    l->pair[l->n++][1] = idx;
}

static void list_staged(void *arg, uint64_t ino, uint64_t idx, void *v)
{
    if (((struct seal *)v)->staged)
        list_frozen(arg, ino, idx, &(struct dirty){ .frozen = 1 });
}

/* Every block whose bytes of the freeze still have to go up. */
static struct frozen_list frozen_blocks(struct blocks *b)
{
    struct frozen_list l = { 0 };
    pthread_mutex_lock(&b->lock);
    hmap_each(b->dirty, list_frozen, &l);
    hmap_each(b->seals, list_staged, &l);
    pthread_mutex_unlock(&b->lock);
    return l;
}

/* Queues one sealed upload; a block wholly past its file's end at the freeze has none. */
static int submit_seal(struct blocks *b, struct pool *pool, struct batch *batch, uint64_t ino,
                       uint64_t idx, uint64_t size)
{
    uint64_t start = idx * b->bsize;
    if (size <= start)
        return 0;
    struct seal_job *j = malloc(sizeof *j);
    if (!j)
        return -ENOMEM;
    *j = (struct seal_job){ b, ino, idx, size - start < b->bsize ? size - start : b->bsize };
    return pool_submit(pool, batch, seal_one, j);
}

int blocks_seal(struct blocks *b, struct pool *pool, blocks_size_fn size_of, void *arg)
{
    struct frozen_list l = frozen_blocks(b);
    struct batch batch;
    batch_init(&batch);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < l.n; i++) {
        uint64_t size;
        int found = size_of(arg, l.pair[i][0], &size);
        if (found == -ENOENT)
            continue; /* not in the snapshot (unlinked before the freeze) */
        rc = found ? found : submit_seal(b, pool, &batch, l.pair[i][0], l.pair[i][1], size);
    }
    int brc = batch_wait(&batch);
    batch_destroy(&batch);
    free(l.pair);
    return rc ? rc : brc;
}

int blocks_scan_at(struct blocks *b, sqlite3 *reader, blocks_list_fn fn, void *arg)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(
        reader, "SELECT ino, idx, state, name FROM blocks ORDER BY ino, idx", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return db_fail(reader, rc, "list blocks");
    int err = 0;
    while (!err && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        uint64_t ino = (uint64_t)sqlite3_column_int64(st, 0);
        uint64_t idx = (uint64_t)sqlite3_column_int64(st, 1);
        const uint8_t *name = sqlite3_column_blob(st, 3);
        if (sqlite3_column_int(st, 2) == ST_DIRTY) {
            pthread_mutex_lock(&b->lock);
            struct seal *s = hmap_get(b->seals, ino, idx);
            name = s && s->has_name ? s->name : NULL;
            pthread_mutex_unlock(&b->lock);
            if (!name) /* dirty but not sealed: past the end at the freeze */
                continue;
        } else if (!name || sqlite3_column_bytes(st, 3) != CODEC_NAME_LEN) {
            err = err_set(-EIO, "cache database: block %llu of inode %llu has no chunk name",
                          (unsigned long long)idx, (unsigned long long)ino);
            break;
        }
        err = fn(arg, ino, idx, name);
    }
    if (!err && rc != SQLITE_DONE)
        err = db_fail(reader, rc, "list blocks");
    sqlite3_finalize(st);
    return err;
}

/* Rule 8 for one sealed block. */
static int commit_one(struct blocks *b, struct seal *s)
{
    pthread_mutex_t *lk = stripe_of(b, s->ino, s->idx);
    pthread_mutex_lock(lk);
    struct dirty *d = dirty_get(b, s->ino, s->idx);
    int rc = 0;
    if (d && !d->frozen && d->version == s->version && s->has_name) {
        rc = row_set(b, s->ino, s->idx, ST_CLEAN, s->name, s->sums);
        if (rc == 0)
            became_clean(b, s->ino, s->idx);
    }
    pthread_mutex_unlock(lk);
    return rc;
}

static void list_seal(void *arg, uint64_t ino, uint64_t idx, void *v)
{
    (void)ino;
    (void)idx;
    struct frozen_list *l = arg;
    list_frozen(l, (uint64_t)(uintptr_t)v, 0, &(struct dirty){ .frozen = 1 });
}

/* Takes all seals out of the table, to finish them without b->lock held. */
static struct frozen_list take_seals(struct blocks *b)
{
    struct frozen_list l = { 0 };
    pthread_mutex_lock(&b->lock);
    hmap_each(b->seals, list_seal, &l);
    for (size_t i = 0; i < l.n; i++) {
        struct seal *s = (struct seal *)(uintptr_t)l.pair[i][0];
        hmap_del(b->seals, s->ino, s->idx);
    }
    pthread_mutex_unlock(&b->lock);
    return l;
}

static void unfreeze_one(void *arg, uint64_t ino, uint64_t idx, void *v)
{
    (void)arg;
    (void)ino;
    (void)idx;
    ((struct dirty *)v)->frozen = 0;
}

/* Commits (or, if commit is 0, forgets) every seal and deletes the staging copies. */
static int finish(struct blocks *b, int commit)
{
    struct frozen_list l = take_seals(b);
    int rc = 0;
    for (size_t i = 0; i < l.n; i++) {
        struct seal *s = (struct seal *)(uintptr_t)l.pair[i][0];
        int one = commit ? commit_one(b, s) : 0;
        rc = rc ? rc : one;
        if (s->staged) {
            char path[PATH_MAX];
            staging_path(b, s->ino, s->idx, path);
            unlink(path);
            space_add(b->space, -(int64_t)s->staged_bytes);
        }
        free(s->sums);
        free(s);
    }
    free(l.pair);
    pthread_mutex_lock(&b->lock);
    hmap_each(b->dirty, unfreeze_one, NULL);
    pthread_mutex_unlock(&b->lock);
    return rc;
}

int blocks_commit(struct blocks *b)
{
    return finish(b, 1);
}

void blocks_abort(struct blocks *b)
{
    finish(b, 0);
}

void blocks_get_stats(struct blocks *b, struct blocks_stats *st)
{
    struct space_stats sp;
    struct memcache_stats ms;
    space_get_stats(b->space, &sp);
    memcache_get_stats(b->mem, &ms);
    pthread_mutex_lock(&b->lock);
    *st = (struct blocks_stats){
        .dirty_blocks = hmap_count(b->dirty),
        .fetches = counted(&b->n.fetches),
        .hits_memory = counted(&b->n.hits_memory),
        .hits_disk = counted(&b->n.hits_disk),
        .evictions = counted(&b->n.evictions),
        .corrupt = counted(&b->n.corrupt),
        .prefetched = counted(&b->n.prefetched),
        .prefetch_queue = b->ra.inflight ? hmap_count(b->ra.inflight) : 0,
        .clean_blocks = policy_count(b->policy),
        .cache_used = sp.used,
        .cache_limit = sp.limit,
        .cache_reserved = sp.reserved,
        .writers_waiting = sp.waiting,
        .writer_waits = sp.waits,
        .writer_timeouts = sp.timeouts,
        .memory_used = ms.bytes,
        .memory_limit = ms.limit,
    };
    st->dirty_bytes = st->dirty_blocks * b->bsize;
    pthread_mutex_unlock(&b->lock);
}

size_t blocks_block_size(const struct blocks *b)
{
    return b->bsize;
}

/* ---- uploading ahead (rule 9) ---- */

#define AHEAD_BACKOFF_NS (5 * 1000000000LL)

struct ahead_job {
    struct blocks *b;
    uint64_t ino, idx;
};

/* A full block's bytes and version, unless it is gone, frozen or not full. */
static int ahead_read(struct blocks *b, const struct ahead_job *j, uint8_t *buf, uint64_t *version)
{
    int fd = open_data(b, j->ino);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) || (uint64_t)st.st_size < (j->idx + 1) * b->bsize)
        return -ENOENT;
    pthread_mutex_t *lk = stripe_of(b, j->ino, j->idx);
    pthread_mutex_lock(lk);
    struct dirty *d = dirty_get(b, j->ino, j->idx);
    int rc = !d || d->frozen ? -ENOENT : read_local(fd, j->ino, j->idx * b->bsize, b->bsize, buf);
    if (rc == 0)
        *version = d->version;
    pthread_mutex_unlock(lk);
    return rc;
}

/* After the upload: clean if untouched, remembered if frozen meanwhile. */
static int ahead_done(struct blocks *b, const struct ahead_job *j, int rc, uint64_t version,
                      const uint8_t name[CODEC_NAME_LEN], uint64_t *sums)
{
    pthread_mutex_t *lk = stripe_of(b, j->ino, j->idx);
    pthread_mutex_lock(lk);
    struct dirty *d = dirty_get(b, j->ino, j->idx);
    if (d)
        d->uploading = 0;
    if (rc && rc != -ENOENT && d) /* the store is failing: try this block again later */
        d->quiet_since = clock_monotonic_ns() + AHEAD_BACKOFF_NS;
    if (rc == 0 && d && d->version == version) {
        d->has_up = 1;
        d->up_version = version;
        memcpy(d->up_name, name, CODEC_NAME_LEN);
        free(d->up_sums);
        d->up_sums = sums;
        if (!d->frozen && (rc = row_set(b, j->ino, j->idx, ST_CLEAN, name, sums)) == 0)
            became_clean(b, j->ino, j->idx);
    } else {
        free(sums);
    }
    pthread_mutex_unlock(lk);
    return rc;
}

static int ahead_one(void *arg)
{
    struct ahead_job *j = arg;
    struct blocks *b = j->b;
    uint8_t *buf = malloc(b->bsize), name[CODEC_NAME_LEN];
    uint64_t version = 0;
    int rc = buf ? ahead_read(b, j, buf, &version) : -ENOMEM;
    uint64_t *sums = NULL;
    if (rc == 0)
        rc = upload(b, buf, b->bsize, name, &sums);
    ahead_done(b, j, rc, version, name, sums);
    if (rc && rc != -ENOENT) /* the publish will carry it; say why it could not go now */
        log_debug("upload ahead of inode %llu block %llu: %s", (unsigned long long)j->ino,
                  (unsigned long long)j->idx, err_msg(rc));
    free(buf);
    free(j);
    return 0; /* a failed upload ahead is the publish's to carry, not an error */
}

struct ahead_scan {
    struct blocks *b;
    int64_t now;
    struct ahead_job *v[32];
    size_t n;
};

static void ahead_pick(void *arg, uint64_t ino, uint64_t idx, void *v)
{
    struct ahead_scan *s = arg;
    struct dirty *d = v;
    if (s->n == 32 || d->frozen || d->uploading || (d->has_up && d->up_version == d->version) ||
        s->now - d->quiet_since < (int64_t)s->b->ahead.quiet_ms * 1000000)
        return;
    struct ahead_job *j = malloc(sizeof *j);
    if (!j)
        return;
    *j = (struct ahead_job){ s->b, ino, idx };
    d->uploading = 1;
    s->v[s->n++] = j;
}

static void *ahead_loop(void *arg)
{
    struct blocks *b = arg;
    pthread_mutex_lock(&b->lock);
    while (!b->ahead.stop) {
        struct ahead_scan s = { .b = b, .now = clock_monotonic_ns() };
        hmap_each(b->dirty, ahead_pick, &s);
        pthread_mutex_unlock(&b->lock);
        for (size_t i = 0; i < s.n; i++) /* waits while the pool's queue is full */
            pool_submit(b->ahead.pool, &b->ahead.batch, ahead_one, s.v[i]);
        pthread_mutex_lock(&b->lock);
        struct timespec until = clock_deadline_ms(50);
        if (!b->ahead.stop)
            pthread_cond_timedwait(&b->ahead.wake, &b->lock, &until);
    }
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

int blocks_upload_ahead(struct blocks *b, struct pool *pool, unsigned quiet_ms)
{
    b->ahead.pool = pool;
    b->ahead.quiet_ms = quiet_ms;
    b->ahead.stop = 0;
    batch_init(&b->ahead.batch);
    pthread_cond_init(&b->ahead.wake, NULL);
    if (pthread_create(&b->ahead.thread, NULL, ahead_loop, b))
        return err_set(-EAGAIN, "cannot start the upload thread");
    b->ahead.running = 1;
    return 0;
}

void blocks_upload_stop(struct blocks *b)
{
    if (!b->ahead.running)
        return;
    pthread_mutex_lock(&b->lock);
    b->ahead.stop = 1;
    pthread_cond_signal(&b->ahead.wake);
    pthread_mutex_unlock(&b->lock);
    pthread_join(b->ahead.thread, NULL);
    batch_wait(&b->ahead.batch); /* uploads in flight finish (their errors do not matter) */
    batch_destroy(&b->ahead.batch);
    pthread_cond_destroy(&b->ahead.wake);
    b->ahead.running = 0;
}

/* ---- eviction (rule 10) ---- */

/* Evicts one clean block unless someone is using it. Returns the bytes freed. */
static uint64_t evict_one(struct blocks *b, uint64_t ino, uint64_t idx)
{
    pthread_mutex_t *lk = stripe_of(b, ino, idx);
    if (pthread_mutex_trylock(lk))
        return 0;
    struct block blk = { 0 };
    int64_t freed = 0;
    int own = 0, fd = -1;
    if (!dirty_get(b, ino, idx) && row_get(b, ino, idx, &blk) == 0 && blk.state == ST_CLEAN &&
        (fd = data_fd(b, ino, &own)) >= 0) {
        if (drop_local(b, fd, ino, idx, blk.name, &freed) == 0)
            count(&b->n.evictions);
    } else { /* not clean any more: it should not be listed */
        pthread_mutex_lock(&b->lock);
        if (!hmap_get(b->dirty, ino, idx) && blk.state != ST_CLEAN)
            policy_remove(b->policy, ino, idx);
        pthread_mutex_unlock(&b->lock);
    }
    data_fd_done(fd, own);
    pthread_mutex_unlock(lk);
    return freed > 0 ? (uint64_t)freed : 0;
}

/* Evicts the coldest clean blocks until want bytes are free. Returns the
 * bytes freed. */
static uint64_t evict(struct blocks *b, uint64_t want)
{
    uint64_t freed = 0;
    while (freed < want) {
        uint64_t v[64][2], got = 0;
        pthread_mutex_lock(&b->lock);
        size_t n = policy_coldest(b->policy, 64, v);
        pthread_mutex_unlock(&b->lock);
        for (size_t i = 0; i < n && freed + got < want; i++)
            got += evict_one(b, v[i][0], v[i][1]);
        freed += got;
        if (n == 0 || got == 0)
            break; /* nothing clean left, or all of it in use */
    }
    return freed;
}

/* meta.db grows with the tree: it is in the budget too. */
static void measure_db(struct blocks *b)
{
    const char *file = sqlite3_db_filename(db_handle(b->db), "main");
    uint64_t now = 0;
    struct stat st;
    char path[PATH_MAX];
    for (int wal = 0; file && *file && wal < 2; wal++) {
        snprintf(path, sizeof path, "%s%s", file, wal ? "-wal" : "");
        if (stat(path, &st) == 0)
            now += (uint64_t)st.st_blocks * 512;
    }
    space_add(b->space, (int64_t)now - (int64_t)b->db_bytes);
    b->db_bytes = now;
}

static int stopping(struct blocks *b)
{
    pthread_mutex_lock(&b->lock);
    int stop = b->evictor.stop;
    pthread_mutex_unlock(&b->lock);
    return stop;
}

/* Dirty data fills the cache: uploads ahead will clean full blocks; the
 * rest needs a snapshot, asked for at most once a second. */
static void pressure(struct blocks *b)
{
    int64_t now = clock_monotonic_ns();
    pthread_mutex_lock(&b->lock);
    void (*fn)(void *) = now - b->evictor.last_pressure > 1000000000LL ? b->evictor.pressure : NULL;
    void *arg = b->evictor.arg;
    if (fn)
        b->evictor.last_pressure = now;
    pthread_mutex_unlock(&b->lock);
    if (fn)
        fn(arg);
}

static void *evictor_loop(void *arg)
{
    struct blocks *b = arg;
    while (!stopping(b)) {
        uint64_t excess = space_await_excess(b->space, 1000);
        measure_db(b);
        if (excess && evict(b, excess) < excess && !stopping(b)) {
            pressure(b);
            struct timespec pause = { 0, 50 * 1000000L };
            nanosleep(&pause, NULL);
        }
    }
    return NULL;
}

void blocks_on_pressure(struct blocks *b, void (*fn)(void *arg), void *arg)
{
    pthread_mutex_lock(&b->lock);
    b->evictor.pressure = fn;
    b->evictor.arg = arg;
    pthread_mutex_unlock(&b->lock);
}

/* ---- fetching ahead ---- */

struct fetch_job {
    struct blocks *b;
    uint64_t ino, idx;
    uint64_t *done; /* a warm-up's progress, or NULL for read-ahead */
};

/* Fetches one block that is only in the bucket into the tiers. */
static int fetch_one(struct blocks *b, const struct fetch_job *j)
{
    int own, fd = data_fd(b, j->ino, &own);
    if (fd < 0)
        return fd;
    pthread_mutex_t *lk = stripe_of(b, j->ino, j->idx);
    pthread_mutex_lock(lk);
    struct block blk = { 0 };
    int rc = dirty_get(b, j->ino, j->idx) ? 0 : row_get(b, j->ino, j->idx, &blk);
    struct chunk c = { 0 };
    if (rc == 0 && wants_fetch(&blk))
        rc = chunk_bytes(b, j->ino, &blk, &c);
    size_t len = c.len;
    if (rc == 0 && c.base) {
        /* A warm-up is for the disk; read-ahead is served from memory when the disk is full. */
        rc = keep_on_disk(b, fd, j->ino, j->idx, &blk, &c, j->done ? b->full_timeout_ms : 0);
        if (!j->done)
            rc = 0;
        count(&b->n.prefetched);
        memcache_put(b->mem, blk.name, c.base, c.cap, c.data, c.len);
    }
    pthread_mutex_unlock(lk);
    data_fd_done(fd, own);
    if (rc == 0 && j->done && wants_fetch(&blk))
        __atomic_fetch_add(j->done, len ? (uint64_t)b->bsize : 0, __ATOMIC_RELAXED);
    return rc;
}

static int fetch_job_run(void *arg)
{
    struct fetch_job *j = arg;
    struct blocks *b = j->b;
    int rc = fetch_one(b, j);
    if (rc && !j->done)
        log_debug("read-ahead of inode %llu block %llu: %s", (unsigned long long)j->ino,
                  (unsigned long long)j->idx, err_msg(rc));
    pthread_mutex_lock(&b->lock);
    hmap_del(b->ra.inflight, j->ino, j->idx);
    pthread_mutex_unlock(&b->lock);
    int warm = j->done != NULL;
    free(j);
    return warm ? rc : 0;
}

void blocks_prefetch_start(struct blocks *b, struct pool *pool, size_t max_bytes)
{
    b->ra.pool = pool;
    b->ra.max = max_bytes / b->bsize ? max_bytes / b->bsize : 1;
    batch_init(&b->ra.batch);
}

/* Marks the block in flight; 0 if it is already, or the budget is spent. */
static int claim(struct blocks *b, uint64_t ino, uint64_t idx, int beyond_budget)
{
    pthread_mutex_lock(&b->lock);
    int ok = !hmap_get(b->ra.inflight, ino, idx) &&
             (beyond_budget || hmap_count(b->ra.inflight) < b->ra.max) &&
             hmap_put(b->ra.inflight, ino, idx, (void *)1) == 0;
    pthread_mutex_unlock(&b->lock);
    return ok;
}

static int submit_fetch(struct blocks *b, struct batch *batch, uint64_t ino, uint64_t idx,
                        uint64_t *done)
{
    struct fetch_job *j = malloc(sizeof *j);
    if (!j) {
        pthread_mutex_lock(&b->lock);
        hmap_del(b->ra.inflight, ino, idx);
        pthread_mutex_unlock(&b->lock);
        return -ENOMEM;
    }
    *j = (struct fetch_job){ b, ino, idx, done };
    return pool_submit(b->ra.pool, batch, fetch_job_run, j);
}

static int is_remote(struct blocks *b, uint64_t ino, uint64_t idx)
{
    struct block blk = { 0 };
    return !dirty_get(b, ino, idx) && row_get(b, ino, idx, &blk) == 0 && wants_fetch(&blk);
}

void blocks_prefetch(struct blocks *b, uint64_t ino, uint64_t size, uint64_t first, unsigned count)
{
    uint64_t end = (size + b->bsize - 1) / b->bsize;
    for (uint64_t idx = first; b->ra.pool && idx < end && idx < first + count; idx++)
        if (is_remote(b, ino, idx) && claim(b, ino, idx, 0) &&
            submit_fetch(b, &b->ra.batch, ino, idx, NULL))
            break;
}

uint64_t blocks_remote_bytes(struct blocks *b, uint64_t ino)
{
    return count_of(b, b->st_remote, ino) * b->bsize;
}

int blocks_warm(struct blocks *b, struct batch *batch, uint64_t ino, uint64_t size, uint64_t *done,
                const int *stop)
{
    if (!b->ra.pool)
        return err_set(-EINVAL, "fetching is not started");
    uint64_t end = (size + b->bsize - 1) / b->bsize;
    int rc = 0;
    for (uint64_t idx = 0; rc == 0 && idx < end && !__atomic_load_n(stop, __ATOMIC_RELAXED); idx++)
        if (is_remote(b, ino, idx) && claim(b, ino, idx, 1))
            rc = submit_fetch(b, batch, ino, idx, done);
    return rc;
}

void blocks_prefetch_stop(struct blocks *b)
{
    if (!b->ra.pool)
        return;
    batch_wait(&b->ra.batch);
    batch_destroy(&b->ra.batch);
    b->ra.pool = NULL;
}

/* ---- lifetime ---- */

static int prepare(struct blocks *b)
{
    static const char schema[] =
        "CREATE TABLE IF NOT EXISTS blocks(ino INTEGER NOT NULL, idx INTEGER NOT NULL, "
        "state INTEGER NOT NULL, name BLOB, sums BLOB, have BLOB, PRIMARY KEY(ino, idx)) "
        "WITHOUT ROWID";
    int rc = db_exec(b->db, schema);
    if (rc == 0 && !db_has_column(b->db, "blocks", "sums"))
        rc = db_exec(b->db, "ALTER TABLE blocks ADD COLUMN sums BLOB"); /* a cache of 0.1 */
    if (rc == 0 && !db_has_column(b->db, "blocks", "have"))
        rc = db_exec(b->db, "ALTER TABLE blocks ADD COLUMN have BLOB"); /* before pieces */
    if (rc == 0)
        rc = db_prepare(b->db,
                        "SELECT state, name, sums, have FROM blocks WHERE ino = ? AND idx = ?",
                        &b->st_get);
    if (rc == 0)
        rc = db_prepare(b->db,
                        "INSERT OR REPLACE INTO blocks(ino, idx, state, name, sums, have) "
                        "VALUES(?, ?, ?, ?, ?, ?)",
                        &b->st_set);
    if (rc == 0)
        rc = db_prepare(b->db, "DELETE FROM blocks WHERE ino = ? AND idx >= ?", &b->st_del_from);
    if (rc == 0)
        rc = db_prepare(b->db, "DELETE FROM blocks WHERE ino = ?", &b->st_del_all);
    if (rc == 0)
        rc = db_prepare(b->db, "DELETE FROM blocks WHERE ino = ? AND idx = ?", &b->st_del_one);
    if (rc == 0)
        rc = db_prepare(b->db, "SELECT idx, state, name FROM blocks WHERE ino = ? AND idx < ?",
                        &b->st_names);
    if (rc == 0)
        rc = db_prepare(b->db, "SELECT ino, idx, state, name FROM blocks ORDER BY ino, idx",
                        &b->st_all);
    if (rc == 0)
        rc = db_prepare(b->db, "SELECT max(idx) FROM blocks WHERE ino = ?", &b->st_last);
    if (rc == 0)
        rc = db_prepare(b->db, "SELECT ino, idx FROM blocks WHERE state = 1", &b->st_dirty);
    if (rc == 0)
        rc = db_prepare(b->db, "SELECT count(*) FROM blocks WHERE ino = ?", &b->st_count);
    if (rc == 0)
        rc = db_prepare(b->db, "DELETE FROM blocks", &b->st_clear);
    if (rc == 0)
        rc = db_prepare(b->db, "SELECT ino, idx FROM blocks WHERE state = 2", &b->st_clean);
    if (rc == 0)
        rc = db_prepare(b->db, "SELECT idx FROM blocks WHERE ino = ? AND idx >= ? AND state = 2",
                        &b->st_clean_from);
    if (rc == 0)
        rc = db_prepare(
            b->db, "SELECT count(*) FROM blocks WHERE ino = ? AND (state = 3 OR have NOT NULL)",
            &b->st_remote);
    return rc;
}

/* Blocks an earlier run left dirty are dirty again (their versions restart). */
static int load_dirty(struct blocks *b)
{
    int rc, err = 0;
    while (!err && (rc = sqlite3_step(b->st_dirty)) == SQLITE_ROW) {
        struct dirty *d;
        err = dirty_add(b, (uint64_t)sqlite3_column_int64(b->st_dirty, 0),
                        (uint64_t)sqlite3_column_int64(b->st_dirty, 1), &d);
    }
    if (!err && rc != SQLITE_DONE)
        err = db_fail(db_handle(b->db), rc, "dirty blocks");
    sqlite3_reset(b->st_dirty);
    return err;
}

/* Clean blocks of an earlier run are evictable again (their order is lost). */
static int load_clean(struct blocks *b)
{
    int rc, err = 0;
    while (!err && (rc = sqlite3_step(b->st_clean)) == SQLITE_ROW)
        err = policy_add(b->policy, (uint64_t)sqlite3_column_int64(b->st_clean, 0),
                         (uint64_t)sqlite3_column_int64(b->st_clean, 1));
    if (!err && rc != SQLITE_DONE)
        err = db_fail(db_handle(b->db), rc, "clean blocks");
    sqlite3_reset(b->st_clean);
    return err;
}

/* What the data files take on disk, file by file, into the budget. With
 * remove set, they go instead (the blocks were all forgotten). */
static int measure_data(struct blocks *b, int remove)
{
    DIR *top = opendir(b->dir);
    if (!top)
        return err_set(-EIO, "cache directory %s: %s", b->dir, strerror(errno));
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (de = readdir(top)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        int sub = openat(dirfd(top), de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        DIR *d = sub >= 0 ? fdopendir(sub) : NULL;
        struct dirent *fe;
        while (d && (fe = readdir(d)) != NULL) {
            struct stat st;
            char *end;
            uint64_t ino = strtoull(fe->d_name, &end, 10);
            if (fe->d_name[0] == '.' || *end || fstatat(dirfd(d), fe->d_name, &st, 0))
                continue;
            if (remove) {
                unlinkat(dirfd(d), fe->d_name, 0);
            } else {
                rc = hmap_put(b->alloc, ino, 0, (void *)(uintptr_t)(st.st_blocks * 512 + 1));
                space_add(b->space, (int64_t)st.st_blocks * 512);
            }
        }
        if (d)
            closedir(d);
        else if (sub >= 0)
            close(sub);
    }
    closedir(top);
    return rc;
}

/* Staging copies of a publish that never finished are worthless now. */
static void clear_staging(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        if (de->d_name[0] != '.')
            unlinkat(dirfd(d), de->d_name, 0);
    }
    if (d)
        closedir(d);
}

int blocks_evictor_start(struct blocks *b)
{
    if (pthread_create(&b->evictor.thread, NULL, evictor_loop, b))
        return err_set(-EAGAIN, "cannot start the evictor thread");
    b->evictor.running = 1;
    return 0;
}

/* The tables, the tiers and the budget, as an earlier run left them. */
static int open_state(struct blocks *b, const char *dir, const struct blocks_options *opt)
{
    b->dirty = hmap_new();
    b->fds = hmap_new();
    b->seals = hmap_new();
    b->alloc = hmap_new();
    b->ra.inflight = hmap_new();
    if (!b->dirty || !b->fds || !b->seals || !b->alloc || !b->ra.inflight ||
        policy_new(b->protect_pct, b->capacity, &b->policy) ||
        space_new(opt->cache_size, &b->space) ||
        memcache_new(opt->memory_cache, buf_size(b), &b->mem) ||
        asprintf(&b->dir, "%s/data", dir) < 0 || asprintf(&b->staging, "%s/staging", dir) < 0)
        return -ENOMEM;
    if ((mkdir(b->dir, 0700) && errno != EEXIST) || (mkdir(b->staging, 0700) && errno != EEXIST))
        return err_set(-EIO, "cache directory %s: %s", dir, strerror(errno));
    clear_staging(b->staging);
    db_lock(b->db);
    int rc = prepare(b);
    if (rc == 0)
        rc = load_dirty(b);
    if (rc == 0)
        rc = load_clean(b);
    db_unlock(b->db);
    if (rc == 0)
        rc = measure_data(b, 0);
    if (rc == 0)
        measure_db(b);
    return rc;
}

int blocks_open(struct db *db, struct remote *remote, const char *dir,
                const struct blocks_options *opt, struct blocks **out)
{
    size_t bsize = opt->block_size ? opt->block_size : BLOCKS_DEFAULT_SIZE;
    if (bsize % BLOCKS_PIECE || bsize / BLOCKS_PIECE > MAX_PIECES)
        return err_set(-EINVAL, "a block size of %zu bytes is not a multiple of %zu up to %zu",
                       bsize, BLOCKS_PIECE, BLOCKS_PIECE * MAX_PIECES);
    struct blocks *b = calloc(1, sizeof *b);
    if (!b)
        return -ENOMEM;
    b->db = db;
    b->remote = remote;
    b->bsize = bsize;
    b->npieces = bsize / BLOCKS_PIECE;
    b->protect_pct = opt->protect_pct;
    b->capacity = (size_t)(opt->cache_size / bsize);
    b->full_timeout_ms = opt->full_timeout_ms;
    static const uint8_t zeros[BLOCKS_PIECE];
    b->zero_sum = XXH3_64bits(zeros, sizeof zeros);
    pthread_mutex_init(&b->lock, NULL);
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_init(&b->stripe[i], NULL);
    int rc = open_state(b, dir, opt);
    if (rc) {
        blocks_close(b);
        return rc;
    }
    *out = b;
    return 0;
}

static void close_fd(void *arg, uint64_t a, uint64_t bb, void *v)
{
    (void)arg;
    (void)a;
    (void)bb;
    close((int)((intptr_t)v - 1));
}

static void free_dirty(void *arg, uint64_t a, uint64_t bb, void *v)
{
    (void)arg;
    (void)a;
    (void)bb;
    dirty_free(v);
}

static void free_seal(void *arg, uint64_t a, uint64_t bb, void *v)
{
    (void)arg;
    (void)a;
    (void)bb;
    free(((struct seal *)v)->sums);
    free(v);
}

static void stop_evictor(struct blocks *b)
{
    if (!b->evictor.running)
        return;
    pthread_mutex_lock(&b->lock);
    b->evictor.stop = 1;
    pthread_mutex_unlock(&b->lock);
    space_wake(b->space);
    pthread_join(b->evictor.thread, NULL);
    b->evictor.running = 0;
}

void blocks_close(struct blocks *b)
{
    if (!b)
        return;
    blocks_upload_stop(b);
    blocks_prefetch_stop(b);
    stop_evictor(b);
    if (b->fds)
        hmap_each(b->fds, close_fd, NULL);
    if (b->dirty)
        hmap_each(b->dirty, free_dirty, NULL);
    if (b->seals)
        hmap_each(b->seals, free_seal, NULL);
    hmap_free(b->fds);
    hmap_free(b->dirty);
    hmap_free(b->seals);
    hmap_free(b->alloc);
    hmap_free(b->ra.inflight);
    policy_free(b->policy);
    memcache_free(b->mem);
    space_free(b->space);
    sqlite3_finalize(b->st_get);
    sqlite3_finalize(b->st_set);
    sqlite3_finalize(b->st_del_from);
    sqlite3_finalize(b->st_del_all);
    sqlite3_finalize(b->st_dirty);
    sqlite3_finalize(b->st_count);
    sqlite3_finalize(b->st_clear);
    sqlite3_finalize(b->st_clean);
    sqlite3_finalize(b->st_clean_from);
    sqlite3_finalize(b->st_remote);
    sqlite3_finalize(b->st_del_one);
    sqlite3_finalize(b->st_names);
    sqlite3_finalize(b->st_all);
    sqlite3_finalize(b->st_last);
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_destroy(&b->stripe[i]);
    pthread_mutex_destroy(&b->lock);
    free(b->dir);
    free(b->staging);
    free(b);
}
