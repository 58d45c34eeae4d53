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
    if (array_grow((void **)&l->v, &l->cap, l->n, sizeof *l->v))
        return -ENOMEM;
    memcpy(l->v[l->n++], name, CODEC_NAME_LEN);
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return memcmp(a, b, CODEC_NAME_LEN);
}

struct copying {
    struct fs *fs;
    const struct names *names;
    uint64_t copied, server_side;
};

/* One chunk from the seed into our bucket, unless it is there: copied by
 * the server where it can (the same endpoint and credentials: the bytes
 * never come here), else fetched, checked on the way (a damaged chunk is
 * not spread) and put as the same bytes. A server-side copy is checked as
 * every chunk is: when it is read. */
static int copy_one(void *arg, size_t i)
{
    struct copying *c = arg;
    struct fs *fs = c->fs;
    const uint8_t *name = c->names->v[i];
    char key[82];
    remote_chunk_key(name, key);
    struct store_object o;
    struct buf enc = { 0 }, plain = { 0 };
    int rc = store_head(fs->store, key, &o);
    if (rc == -ENOENT && (rc = store_copy_from(fs->store, fs->seed_store, key)) == 0)
        __atomic_fetch_add(&c->server_side, 1, __ATOMIC_RELAXED);
    if (rc == -EXDEV) {
        rc = store_get(fs->seed_store, key, 0, (uint64_t)CODEC_MAX_CHUNK + 4096, &enc);
        if (rc == 0)
            rc = codec_decode(fs->codec, enc.data, enc.len, name, &plain);
        if (rc == 0)
            rc = store_put(fs->store, key, enc.data, enc.len, STORE_SELF_VERIFYING);
        if (rc == 0)
            __atomic_fetch_add(&c->copied, 1, __ATOMIC_RELAXED);
        if (rc)
            err_wrap(rc, "seeding chunk %s", key);
    }
    buf_free(&enc);
    buf_free(&plain);
    return rc;
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
    struct copying copying = { fs, &names, 0, 0 };
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
        rc = pool_for_each(COPIERS, names.n, copy_one, &copying);
    }
    if (rc == 0)
        rc = snapshot_load(&plain, fs->db, fs->ns, fs->blocks, &info);
    if (rc == 0)
        log_info("seeded from %s, snapshot %s: %llu files, %llu bytes; %llu of %zu chunks "
                 "copied (%llu by the server)",
                 fs->seed_url, text, (unsigned long long)info.files, (unsigned long long)info.bytes,
                 (unsigned long long)(copying.copied + copying.server_side), names.n,
                 (unsigned long long)copying.server_side);
    free(names.v);
    buf_free(&plain);
    return rc ? err_wrap(rc, "seeding from %s", fs->seed_url) : 0;
}
