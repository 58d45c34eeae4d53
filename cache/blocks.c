/*
 * The disk tier (contract in blocks.h).
 *
 * A file's bytes live in one sparse data file, DIR/NN/INO (NN: the low byte
 * of the inode in hex, to keep directories small), cut into blocks of
 * block_size bytes. Block idx of a file of size S holds bytes
 * [idx*B, min((idx+1)*B, S)). Its state is a row of meta.db:
 *
 *   blocks(ino, idx, state, name)        no row: a hole, all zeros
 *
 *   REMOTE  the bytes are chunk `name` in the bucket, not here
 *   CLEAN   the bytes are here, equal to chunk `name`, which is in the bucket
 *   DIRTY   the bytes are here and newer than any chunk (name NULL)
 *
 * A chunk may be shorter than its block (the file grew by truncate since):
 * the rest of the block is zeros.
 *
 * Transitions (numbered as the comments below refer to them):
 *   1. A write to a hole or a CLEAN block makes it DIRTY, committed to
 *      meta.db before the bytes are written: a crash never leaves changed
 *      bytes under a CLEAN row. A write to a DIRTY block touches no row.
 *   2. A write to a REMOTE block that does not cover all of its old bytes
 *      first fetches the chunk into the data file; then as 1.
 *   3. A read of a REMOTE block fetches the chunk, verified against its
 *      name, into the data file: REMOTE -> CLEAN.
 *   4. Truncation removes the blocks past the new end; a block cut in two
 *      is written (as 1 or 2).
 *   5. Publishing a snapshot turns DIRTY blocks CLEAN (below).
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
 * Locks, in the order taken: a block's stripe lock, then b->lock, then the
 * database lock. A stripe lock serializes everything done to one block.
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
#include <time.h>
#include <unistd.h>

#include "util/err.h"
#include "util/hmap.h"
#include "util/log.h"

#define STRIPES 256

enum { ST_DIRTY = 1, ST_CLEAN = 2, ST_REMOTE = 3 };

struct dirty {
    uint64_t version;
    int frozen;
    int uploading; /* a background upload is in flight (rule 9) */
    int has_up;    /* up_name is the chunk of its bytes at up_version */
    uint64_t up_version;
    int64_t quiet_since; /* CLOCK_MONOTONIC ns of its last write */
    uint8_t up_name[CODEC_NAME_LEN];
};

/* A frozen block's bytes as of the freeze, and what became of them. */
struct seal {
    uint64_t ino, idx, version;
    int staged; /* the bytes are in the staging file (rule 6), else in the data file */
    int has_name;
    uint8_t name[CODEC_NAME_LEN];
};

struct blocks {
    struct db *db;
    struct remote *remote;
    char *dir, *staging;
    size_t bsize;
    pthread_mutex_t stripe[STRIPES];
    pthread_mutex_t lock; /* guards dirty, fds, seals and the counters below */
    struct hmap *dirty;   /* (ino, idx) -> struct dirty */
    struct hmap *fds;     /* (ino, 0) -> data file descriptor + 1 */
    struct hmap *seals;   /* (ino, idx) -> struct seal, during a publish */
    uint64_t fetches;
    struct {
        pthread_t thread;
        pthread_cond_t wake;
        int running, stop;
        unsigned quiet_ms;
        struct pool *pool;
        struct batch batch;
    } ahead; /* the background uploader (rule 9), guarded by b->lock */
    sqlite3_stmt *st_get, *st_set, *st_del_from, *st_del_all, *st_dirty, *st_count, *st_clear;
};

struct block {
    int state; /* 0: a hole */
    uint8_t name[CODEC_NAME_LEN];
};

static pthread_mutex_t *stripe_of(struct blocks *b, uint64_t ino, uint64_t idx)
{
    return &b->stripe[(ino * 31 + idx) % STRIPES];
}

/* ---- rows ---- */

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
    }
    sqlite3_reset(b->st_get);
    db_unlock(b->db);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : db_fail(db_handle(b->db), rc, "block state");
}

/* Caller holds the database lock. */
static int row_set_locked(struct blocks *b, uint64_t ino, uint64_t idx, int state,
                          const uint8_t *name)
{
    sqlite3_bind_int64(b->st_set, 1, (sqlite3_int64)ino);
    sqlite3_bind_int64(b->st_set, 2, (sqlite3_int64)idx);
    sqlite3_bind_int(b->st_set, 3, state);
    if (name)
        sqlite3_bind_blob(b->st_set, 4, name, CODEC_NAME_LEN, SQLITE_STATIC);
    else
        sqlite3_bind_null(b->st_set, 4);
    return db_run(b->st_set);
}

static int row_set(struct blocks *b, uint64_t ino, uint64_t idx, int state, const uint8_t *name)
{
    db_lock(b->db);
    int rc = row_set_locked(b, ino, idx, state, name);
    db_unlock(b->db);
    return rc;
}

static int rows_delete(struct blocks *b, sqlite3_stmt *st, uint64_t ino, uint64_t from)
{
    db_lock(b->db);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)ino);
    if (st == b->st_del_from)
        sqlite3_bind_int64(st, 2, (sqlite3_int64)from);
    int rc = db_run(st);
    db_unlock(b->db);
    return rc;
}

/* ---- data files ---- */

static void data_path(const struct blocks *b, uint64_t ino, char *path)
{
    snprintf(path, PATH_MAX, "%s/%02x/%llu", b->dir, (unsigned)(ino & 0xff),
             (unsigned long long)ino);
}

static int open_data(struct blocks *b, uint64_t ino)
{
    pthread_mutex_lock(&b->lock);
    intptr_t fd = (intptr_t)hmap_get(b->fds, ino, 0) - 1;
    pthread_mutex_unlock(&b->lock);
    if (fd >= 0)
        return (int)fd;
    char path[PATH_MAX];
    data_path(b, ino, path);
    int nfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (nfd < 0 && errno == ENOENT) {
        char *slash = strrchr(path, '/');
        *slash = '\0';
        mkdir(path, 0700);
        *slash = '/';
        nfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    }
    if (nfd < 0)
        return err_set(-errno == -ENOSPC ? -ENOSPC : -EIO, "cache file %s: %s", path,
                       strerror(errno));
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

/* Rules 2 and 3: the chunk's bytes into the data file, the rest of the block zeros. */
static int fetch(struct blocks *b, int fd, uint64_t ino, uint64_t idx, const struct block *blk)
{
    struct buf chunk = { 0 };
    int rc = remote_get(b->remote, blk->name, &chunk);
    if (rc == 0 && chunk.len > b->bsize)
        rc = err_set(-EBADMSG, "a chunk of inode %llu holds more than a block",
                     (unsigned long long)ino);
    if (rc == 0 && buf_reserve(&chunk, b->bsize - chunk.len) == 0) {
        memset(chunk.data + chunk.len, 0, b->bsize - chunk.len);
        rc = write_local(fd, ino, idx * b->bsize, chunk.data, b->bsize);
    }
    buf_free(&chunk);
    pthread_mutex_lock(&b->lock);
    b->fetches++;
    pthread_mutex_unlock(&b->lock);
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

static int dirty_add(struct blocks *b, uint64_t ino, uint64_t idx, struct dirty **out)
{
    struct dirty *d = calloc(1, sizeof *d);
    pthread_mutex_lock(&b->lock);
    int rc = d ? hmap_put(b->dirty, ino, idx, d) : -ENOMEM;
    pthread_mutex_unlock(&b->lock);
    if (rc)
        free(d);
    *out = rc ? NULL : d;
    return rc;
}

static void dirty_drop(struct blocks *b, uint64_t ino, uint64_t idx)
{
    pthread_mutex_lock(&b->lock);
    free(hmap_del(b->dirty, ino, idx));
    pthread_mutex_unlock(&b->lock);
}

/* ---- sealing (rules 6 and 7) ---- */

static void staging_path(const struct blocks *b, uint64_t ino, uint64_t idx, char *path)
{
    snprintf(path, PATH_MAX, "%s/%llu-%llu", b->staging, (unsigned long long)ino,
             (unsigned long long)idx);
}

static int add_seal(struct blocks *b, uint64_t ino, uint64_t idx, uint64_t version, int staged)
{
    struct seal *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    *s = (struct seal){ .ino = ino, .idx = idx, .version = version, .staged = staged };
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
    uint8_t *buf = malloc(b->bsize);
    int rc = buf ? read_local(fd, ino, idx * b->bsize, b->bsize, buf) : -ENOMEM;
    if (rc == 0)
        rc = write_local(out, ino, 0, buf, b->bsize);
    free(buf);
    close(out);
    if (rc == 0)
        rc = add_seal(b, ino, idx, d->version, 1);
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
        rc = first ? rows_delete(b, b->st_del_from, ino, first)
                   : rows_delete(b, b->st_del_all, ino, 0);
    return rc;
}

/* ---- reads and writes ---- */

ssize_t blocks_read(struct blocks *b, uint64_t ino, uint64_t size, uint64_t off, size_t len,
                    void *out)
{
    if (off >= size)
        return 0;
    if (len > size - off)
        len = (size_t)(size - off);
    int fd = open_data(b, ino);
    if (fd < 0)
        return fd;
    for (size_t done = 0; done < len;) {
        uint64_t pos = off + done, idx = pos / b->bsize;
        size_t n = (size_t)((idx + 1) * b->bsize - pos);
        n = n < len - done ? n : len - done;
        pthread_mutex_t *lk = stripe_of(b, ino, idx);
        pthread_mutex_lock(lk);
        struct block blk = { 0 };
        int rc = dirty_get(b, ino, idx) ? 0 : row_get(b, ino, idx, &blk);
        if (rc == 0 && blk.state == ST_REMOTE && (rc = fetch(b, fd, ino, idx, &blk)) == 0)
            rc = row_set(b, ino, idx, ST_CLEAN, blk.name);
        if (rc == 0)
            rc = read_local(fd, ino, pos, n, (uint8_t *)out + done);
        pthread_mutex_unlock(lk);
        if (rc)
            return rc;
        done += n;
    }
    return (ssize_t)len;
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
    if (rc == 0 && blk.state == ST_REMOTE && !covers_all)
        rc = fetch(b, fd, ino, idx, &blk);
    if (rc == 0)
        rc = row_set(b, ino, idx, ST_DIRTY, NULL);
    return rc ? rc : dirty_add(b, ino, idx, out);
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
    uint64_t first = off / b->bsize, last = (off + len - 1) / b->bsize;
    pthread_mutex_t *a = stripe_of(b, ino, first), *z = stripe_of(b, ino, last);
    /* Two stripes in address order, so two spans can never lock in opposite orders. */
    sp->locks[0] = a < z ? a : z;
    sp->locks[1] = a == z ? NULL : a < z ? z : a;
    for (int i = 0; i < 2 && sp->locks[i]; i++)
        pthread_mutex_lock(sp->locks[i]);
    sp->fd = fd;
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

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void blocks_write_end(struct blocks *b, struct blocks_span *sp)
{
    (void)b;
    /* Whatever reached the file, the blocks' bytes may have changed. */
    int64_t t = mono_ns();
    for (int i = 0; i < 2; i++)
        if (sp->d[i]) {
            sp->d[i]->version++;
            sp->d[i]->quiet_since = t;
        }
    for (int i = 1; i >= 0; i--)
        if (sp->locks[i])
            pthread_mutex_unlock(sp->locks[i]);
    memset(sp, 0, sizeof *sp);
}

int blocks_write(struct blocks *b, uint64_t ino, uint64_t size, uint64_t off, const void *data,
                 size_t len)
{
    for (size_t done = 0; done < len;) {
        size_t n = len - done < b->bsize ? len - done : b->bsize;
        struct blocks_span sp;
        int rc = blocks_write_begin(b, ino, size, off + done, n, &sp);
        if (rc == 0) {
            rc = write_local(sp.fd, ino, off + done, (const uint8_t *)data + done, n);
            blocks_write_end(b, &sp);
        }
        if (rc)
            return rc;
        done += n;
    }
    return 0;
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
            d->version++;
            d->quiet_since = mono_ns();
        }
        pthread_mutex_unlock(lk);
    }
    if (rc == 0 && ftruncate(fd, (off_t)new_size))
        rc = io_fail("truncate", ino);
    return rc;
}

uint64_t blocks_allocated(struct blocks *b, uint64_t ino, uint64_t size)
{
    db_lock(b->db);
    sqlite3_bind_int64(b->st_count, 1, (sqlite3_int64)ino);
    uint64_t n = sqlite3_step(b->st_count) == SQLITE_ROW
                     ? (uint64_t)sqlite3_column_int64(b->st_count, 0)
                     : 0;
    sqlite3_reset(b->st_count);
    db_unlock(b->db);
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
    return rc;
}

int blocks_clear_locked(struct blocks *b)
{
    return db_run(b->st_clear);
}

int blocks_set_remote(struct blocks *b, uint64_t ino, uint64_t idx,
                      const uint8_t name[CODEC_NAME_LEN])
{
    return row_set_locked(b, ino, idx, ST_REMOTE, name);
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
        if (rc == 0 && (rc = add_seal(b, ino, idx, d->version, 0)) == 0) {
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
    int done = !staged && d && d->frozen && d->has_up && d->up_version == d->version &&
               j->len == b->bsize && add_seal(b, j->ino, j->idx, d->version, 0) == 0;
    if (done) {
        pthread_mutex_lock(&b->lock);
        struct seal *s = hmap_get(b->seals, j->ino, j->idx);
        memcpy(s->name, d->up_name, CODEC_NAME_LEN);
        s->has_name = 1;
        d->frozen = 0;
        pthread_mutex_unlock(&b->lock);
    }
    pthread_mutex_unlock(lk);
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
    if (rc == 0)
        rc = remote_name(b->remote, buf, j->len, name);
    if (rc == 0)
        rc = remote_put(b->remote, name, buf, j->len);
    if (rc == 0) {
        pthread_mutex_lock(&b->lock);
        memcpy(s->name, name, CODEC_NAME_LEN);
        s->has_name = 1;
        pthread_mutex_unlock(&b->lock);
    }
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
        rc = row_set(b, s->ino, s->idx, ST_CLEAN, s->name);
        if (rc == 0)
            dirty_drop(b, s->ino, s->idx);
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
        }
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
    pthread_mutex_lock(&b->lock);
    st->dirty_blocks = hmap_count(b->dirty);
    st->dirty_bytes = st->dirty_blocks * b->bsize;
    st->fetches = b->fetches;
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
                      const uint8_t name[CODEC_NAME_LEN])
{
    pthread_mutex_t *lk = stripe_of(b, j->ino, j->idx);
    pthread_mutex_lock(lk);
    struct dirty *d = dirty_get(b, j->ino, j->idx);
    if (d)
        d->uploading = 0;
    if (rc && rc != -ENOENT && d) /* the store is failing: try this block again later */
        d->quiet_since = mono_ns() + AHEAD_BACKOFF_NS;
    if (rc == 0 && d && d->version == version) {
        d->has_up = 1;
        d->up_version = version;
        memcpy(d->up_name, name, CODEC_NAME_LEN);
        if (!d->frozen && (rc = row_set(b, j->ino, j->idx, ST_CLEAN, name)) == 0)
            dirty_drop(b, j->ino, j->idx);
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
    if (rc == 0)
        rc = remote_name(b->remote, buf, b->bsize, name);
    if (rc == 0)
        rc = remote_put(b->remote, name, buf, b->bsize);
    int done = ahead_done(b, j, rc, version, name);
    if (rc && rc != -ENOENT) /* the publish will carry it; say why it could not go now */
        log_debug("upload ahead of inode %llu block %llu: %s", (unsigned long long)j->ino,
                  (unsigned long long)j->idx, err_msg(rc));
    free(buf);
    free(j);
    (void)done; /* a failed upload ahead is the publish's to carry, not an error */
    return 0;
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
        struct ahead_scan s = { .b = b, .now = mono_ns() };
        hmap_each(b->dirty, ahead_pick, &s);
        pthread_mutex_unlock(&b->lock);
        for (size_t i = 0; i < s.n; i++) /* waits while the pool's queue is full */
            pool_submit(b->ahead.pool, &b->ahead.batch, ahead_one, s.v[i]);
        pthread_mutex_lock(&b->lock);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 50 * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
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

/* ---- lifetime ---- */

static int prepare(struct blocks *b)
{
    static const char schema[] =
        "CREATE TABLE IF NOT EXISTS blocks(ino INTEGER NOT NULL, idx INTEGER NOT NULL, "
        "state INTEGER NOT NULL, name BLOB, PRIMARY KEY(ino, idx)) WITHOUT ROWID";
    int rc = db_exec(b->db, schema);
    if (rc == 0)
        rc = db_prepare(b->db, "SELECT state, name FROM blocks WHERE ino = ? AND idx = ?",
                        &b->st_get);
    if (rc == 0)
        rc = db_prepare(b->db,
                        "INSERT OR REPLACE INTO blocks(ino, idx, state, name) VALUES(?, ?, ?, ?)",
                        &b->st_set);
    if (rc == 0)
        rc = db_prepare(b->db, "DELETE FROM blocks WHERE ino = ? AND idx >= ?", &b->st_del_from);
    if (rc == 0)
        rc = db_prepare(b->db, "DELETE FROM blocks WHERE ino = ?", &b->st_del_all);
    if (rc == 0)
        rc = db_prepare(b->db, "SELECT ino, idx FROM blocks WHERE state = 1", &b->st_dirty);
    if (rc == 0)
        rc = db_prepare(b->db, "SELECT count(*) FROM blocks WHERE ino = ?", &b->st_count);
    if (rc == 0)
        rc = db_prepare(b->db, "DELETE FROM blocks", &b->st_clear);
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

int blocks_open(struct db *db, struct remote *remote, const char *dir, size_t block_size,
                struct blocks **out)
{
    struct blocks *b = calloc(1, sizeof *b);
    if (!b)
        return -ENOMEM;
    b->db = db;
    b->remote = remote;
    b->bsize = block_size ? block_size : BLOCKS_DEFAULT_SIZE;
    pthread_mutex_init(&b->lock, NULL);
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_init(&b->stripe[i], NULL);
    b->dirty = hmap_new();
    b->fds = hmap_new();
    b->seals = hmap_new();
    int rc = b->dirty && b->fds && b->seals ? 0 : -ENOMEM;
    if (rc == 0 &&
        (asprintf(&b->dir, "%s/data", dir) < 0 || asprintf(&b->staging, "%s/staging", dir) < 0))
        rc = -ENOMEM;
    if (rc == 0 &&
        ((mkdir(b->dir, 0700) && errno != EEXIST) || (mkdir(b->staging, 0700) && errno != EEXIST)))
        rc = err_set(-EIO, "cache directory %s: %s", dir, strerror(errno));
    if (rc == 0) {
        clear_staging(b->staging);
        db_lock(db);
        rc = prepare(b);
        if (rc == 0)
            rc = load_dirty(b);
        db_unlock(db);
    }
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

static void free_value(void *arg, uint64_t a, uint64_t bb, void *v)
{
    (void)arg;
    (void)a;
    (void)bb;
    free(v);
}

void blocks_close(struct blocks *b)
{
    if (!b)
        return;
    blocks_upload_stop(b);
    if (b->fds)
        hmap_each(b->fds, close_fd, NULL);
    if (b->dirty)
        hmap_each(b->dirty, free_value, NULL);
    if (b->seals)
        hmap_each(b->seals, free_value, NULL);
    hmap_free(b->fds);
    hmap_free(b->dirty);
    hmap_free(b->seals);
    sqlite3_finalize(b->st_get);
    sqlite3_finalize(b->st_set);
    sqlite3_finalize(b->st_del_from);
    sqlite3_finalize(b->st_del_all);
    sqlite3_finalize(b->st_dirty);
    sqlite3_finalize(b->st_count);
    sqlite3_finalize(b->st_clear);
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_destroy(&b->stripe[i]);
    pthread_mutex_destroy(&b->lock);
    free(b->dir);
    free(b->staging);
    free(b);
}
