/* Seeding a writable mount from another bucket (contract in seed.h). */
#include "seed.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fs/bootstrap.h"
#include "fs/snapshot.h"
#include "util/err.h"
#include "util/log.h"
#include "util/pool.h"

#define COPIERS 8 /* chunks copied at once, as the mount fetches */

int seed_block_size(struct fs *fs, size_t *block_size)
{
    return marker_read(fs->seed_store, fs->seed_url, fs->codec_keyed, block_size);
}

struct names {
    uint8_t (*v)[CODEC_NAME_LEN];
    size_t n, cap;
};

static int add_name(void *arg, uint64_t ino, uint64_t idx, const uint8_t name[CODEC_NAME_LEN])
{
    (void)ino, (void)idx;
    struct names *l = arg;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        void *v = realloc(l->v, cap * sizeof *l->v);
        if (!v)
            return -ENOMEM;
        l->v = v, l->cap = cap;
    }
    memcpy(l->v[l->n++], name, CODEC_NAME_LEN);
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return memcmp(a, b, CODEC_NAME_LEN);
}

struct copy_job {
    struct fs *fs;
    const uint8_t *name;
    uint64_t *copied;
};

/* One chunk from the seed into our bucket, unless it is there: checked on
 * the way (a damaged chunk is not spread), and put as the same bytes. */
static int copy_one(void *arg)
{
    struct copy_job *j = arg;
    struct fs *fs = j->fs;
    char key[82];
    remote_chunk_key(j->name, key);
    struct store_object o;
    struct buf enc = { 0 }, plain = { 0 };
    int rc = store_head(fs->store, key, &o);
    if (rc == -ENOENT) {
        rc = store_get(fs->seed_store, key, 0, (uint64_t)CODEC_MAX_CHUNK + 4096, &enc);
        if (rc == 0)
            rc = codec_decode(fs->codec, enc.data, enc.len, j->name, &plain);
        if (rc == 0)
            rc = store_put(fs->store, key, enc.data, enc.len, STORE_SELF_VERIFYING);
        if (rc == 0)
            __atomic_fetch_add(j->copied, 1, __ATOMIC_RELAXED);
        if (rc)
            err_wrap(rc, "seeding chunk %s", key);
    }
    buf_free(&enc);
    buf_free(&plain);
    free(j);
    return rc;
}

static int copy_chunks(struct fs *fs, const struct names *names, uint64_t *copied)
{
    struct pool *pool;
    struct batch batch;
    int rc = pool_new(COPIERS, 2 * COPIERS, &pool);
    if (rc)
        return rc;
    batch_init(&batch);
    for (size_t i = 0; rc == 0 && i < names->n; i++) {
        struct copy_job *j = malloc(sizeof *j);
        rc = j ? 0 : -ENOMEM;
        if (j)
            *j = (struct copy_job){ fs, names->v[i], copied };
        if (rc == 0 && (rc = pool_submit(pool, &batch, copy_one, j)) != 0)
            free(j);
    }
    int waited = batch_wait(&batch);
    batch_destroy(&batch);
    pool_free(pool);
    return rc ? rc : waited;
}

/* The seed's snapshot to start from: --snapshot's, else its newest. */
static int seed_snapshot(struct fs *fs, struct snapshot_id *id)
{
    if (fs->pinned) {
        *id = fs->snapshot;
        return 0;
    }
    int rc = snapshot_latest(fs->seed_store, id);
    return rc == -ENOENT ? err_set(-ENOENT, "the seed %s holds no snapshot", fs->seed_url) : rc;
}

int seed_tree(struct fs *fs)
{
    static const struct snapshot_visitor collect = { .block = add_name };
    struct snapshot_id id;
    struct snapshot_info info;
    struct buf plain = { 0 };
    struct names names = { 0 };
    uint64_t copied = 0;
    char text[SNAPSHOT_ID_LEN];
    int rc = seed_snapshot(fs, &id);
    if (rc == 0) {
        snapshot_id_text(id, text);
        rc = snapshot_fetch(fs->seed_store, fs->codec, id, &plain);
    }
    if (rc == 0)
        rc = snapshot_walk(&plain, blocks_block_size(fs->blocks), &collect, &names, &info);
    if (rc == 0) {
        qsort(names.v, names.n, sizeof *names.v, by_name);
        size_t k = 0;
        for (size_t i = 0; i < names.n; i++)
            if (k == 0 || memcmp(names.v[k - 1], names.v[i], CODEC_NAME_LEN))
                memmove(names.v[k++], names.v[i], CODEC_NAME_LEN);
        names.n = k;
        rc = copy_chunks(fs, &names, &copied);
    }
    if (rc == 0)
        rc = snapshot_load(&plain, fs->db, fs->ns, fs->blocks, fs->remote, &info);
    if (rc == 0)
        log_info("seeded from %s, snapshot %s: %llu files, %llu bytes; %llu of %zu chunks "
                 "copied",
                 fs->seed_url, text, (unsigned long long)info.files, (unsigned long long)info.bytes,
                 (unsigned long long)copied, names.n);
    free(names.v);
    buf_free(&plain);
    return rc ? err_wrap(rc, "seeding from %s", fs->seed_url) : 0;
}
