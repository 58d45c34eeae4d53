#include "remote.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "util/err.h"

struct remote {
    struct store *store;
    struct codec *codec;
    struct db *db;
    sqlite3_stmt *is_known, *add_put;
    struct remote_stats st;
};

int remote_open(struct store *store, struct codec *codec, struct db *db, struct remote **out)
{
    struct remote *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    *r = (struct remote){ .store = store, .codec = codec, .db = db };
    db_lock(db);
    /* put_at: when we last put the chunk (unix seconds); NULL in rows of older versions,
     * which also listed chunks seen named by a snapshot. */
    int rc = db_exec(db, "CREATE TABLE IF NOT EXISTS chunks(name BLOB PRIMARY KEY, put_at INTEGER) "
                         "WITHOUT ROWID");
    if (rc == 0 && !db_has_column(db, "chunks", "put_at")) /* a cache of 0.4 */
        rc = db_exec(db, "ALTER TABLE chunks ADD COLUMN put_at INTEGER");
    if (rc == 0)
        rc = db_prepare(db, "SELECT 1 FROM chunks WHERE name = ? AND put_at >= ?", &r->is_known);
    if (rc == 0)
        rc =
            db_prepare(db, "INSERT OR REPLACE INTO chunks(name, put_at) VALUES(?, ?)", &r->add_put);
    db_unlock(db);
    if (rc) {
        remote_close(r);
        return rc;
    }
    *out = r;
    return 0;
}

void remote_close(struct remote *r)
{
    if (!r)
        return;
    sqlite3_finalize(r->is_known);
    sqlite3_finalize(r->add_put);
    free(r);
}

void remote_chunk_key(const uint8_t name[CODEC_NAME_LEN], char key[82])
{
    char hex[2 * CODEC_NAME_LEN + 1];
    codec_name_hex(name, hex);
    snprintf(key, 82, "chunks/%.2s/%s", hex, hex);
}

int remote_name(struct remote *r, const void *data, size_t len, uint8_t name[CODEC_NAME_LEN])
{
    return codec_name(r->codec, data, len, name);
}

/* Whether we put the chunk recently enough to trust it is there (remote.h). */
static int known(struct remote *r, const uint8_t name[CODEC_NAME_LEN])
{
    db_lock(r->db);
    sqlite3_bind_blob(r->is_known, 1, name, CODEC_NAME_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(r->is_known, 2, (sqlite3_int64)time(NULL) - REMOTE_DEDUP_SECS);
    int found = sqlite3_step(r->is_known) == SQLITE_ROW;
    sqlite3_reset(r->is_known);
    db_unlock(r->db);
    return found;
}

static void add(uint64_t *counter, uint64_t n)
{
    __atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
}

int remote_fresh(struct remote *r, const uint8_t name[CODEC_NAME_LEN])
{
    return known(r, name);
}

int remote_put(struct remote *r, const uint8_t name[CODEC_NAME_LEN], const void *data, size_t len)
{
    if (known(r, name)) {
        add(&r->st.chunks_deduped, 1);
        add(&r->st.bytes_deduped, len);
        return 0;
    }
    struct buf enc = { 0 };
    char key[82];
    remote_chunk_key(name, key);
    int rc = codec_encode(r->codec, data, len, name, &enc);
    if (rc == 0)
        rc = store_put(r->store, key, enc.data, enc.len, STORE_SELF_VERIFYING);
    buf_free(&enc);
    /* Known only once the store said it is there: a snapshot never names a chunk in doubt. */
    if (rc == 0) {
        db_lock(r->db);
        sqlite3_bind_blob(r->add_put, 1, name, CODEC_NAME_LEN, SQLITE_STATIC);
        sqlite3_bind_int64(r->add_put, 2, (sqlite3_int64)time(NULL));
        rc = db_run(r->add_put);
        db_unlock(r->db);
    }
    if (rc == 0) {
        add(&r->st.chunks_put, 1);
        add(&r->st.bytes_put, len);
    }
    return rc;
}

int remote_fetch(struct remote *r, const uint8_t name[CODEC_NAME_LEN], struct buf *chunk,
                 size_t *start, struct buf *spare)
{
    char key[82];
    remote_chunk_key(name, key);
    int rc = store_get(r->store, key, 0, STORE_TO_END, chunk);
    if (rc == 0)
        rc = codec_decode_in_place(r->codec, chunk, name, start, spare);
    if (rc)
        return err_wrap(rc, "chunk %s", key);
    add(&r->st.chunks_got, 1);
    add(&r->st.bytes_got, chunk->len - *start);
    return 0;
}

size_t remote_raw_offset(const struct remote *r)
{
    return codec_raw_offset(r->codec);
}

int remote_get(struct remote *r, const uint8_t name[CODEC_NAME_LEN], struct buf *out)
{
    struct buf chunk = { 0 }, spare = { 0 };
    size_t start = 0;
    int rc = remote_fetch(r, name, &chunk, &start, &spare);
    if (rc == 0)
        rc = buf_append(out, chunk.data + start, chunk.len - start);
    buf_free(&chunk);
    buf_free(&spare);
    return rc;
}

void remote_get_stats(struct remote *r, struct remote_stats *st)
{
    const uint64_t *src = (const uint64_t *)&r->st;
    uint64_t *dst = (uint64_t *)st;
    for (size_t i = 0; i < sizeof *st / sizeof(uint64_t); i++)
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}
