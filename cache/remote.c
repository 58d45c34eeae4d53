#include "remote.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/err.h"
#include "util/hmap.h"
#include "util/le.h"

/* Indexes of chunks read in pieces, so that each later piece costs one GET,
 * not two: a ring of INDEXES entries, the oldest out first, about 1 KiB
 * each for a 4 MiB chunk. A chunk found to have no index (an older format)
 * is remembered too, so it is not asked again. */
#define INDEXES 4096

struct known {
    uint8_t name[CODEC_NAME_LEN];
    struct codec_index *ix; /* NULL: the chunk has none */
    unsigned refs;          /* the ring's, and each user's */
};

struct remote {
    struct store *store;
    struct codec *codec;
    struct db *db;
    sqlite3_stmt *is_known, *add_put;
    struct remote_stats st;
    pthread_mutex_t lock; /* guards the indexes */
    struct hmap *indexes; /* the name's first 16 bytes -> struct known */
    struct known *ring[INDEXES];
    size_t next;
};

int remote_open(struct store *store, struct codec *codec, struct db *db, struct remote **out)
{
    struct remote *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    *r = (struct remote){ .store = store, .codec = codec, .db = db, .indexes = hmap_new() };
    pthread_mutex_init(&r->lock, NULL);
    if (!r->indexes) {
        remote_close(r);
        return -ENOMEM;
    }
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
    for (size_t i = 0; i < INDEXES; i++)
        if (r->ring[i]) {
            codec_index_free(r->ring[i]->ix);
            free(r->ring[i]);
        }
    hmap_free(r->indexes);
    pthread_mutex_destroy(&r->lock);
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

/* Appends the first len bytes of chunk key (STORE_TO_END: all of it) to out.
 * Every chunk starts with the magic (codec.h), which is not asked for: a
 * GET from byte 0 to the end makes Swift check the whole object's MD5
 * against its disk, server CPU spent on what the chunk's own checks catch
 * anyway; a range from byte 4 it serves without. So the stored magic is
 * not checked here (ckptctl verify does): it carries nothing. */
static int get_chunk(struct remote *r, const char *key, uint64_t len, struct buf *out)
{
    size_t had = out->len;
    if (len <= CODEC_MAGIC_LEN) /* nothing past the magic: as it is */
        return store_get(r->store, key, 0, len, out);
    if (buf_append(out, CODEC_MAGIC, CODEC_MAGIC_LEN))
        return err_set(-ENOMEM, "no room for chunk %s", key);
    int rc = store_get(r->store, key, CODEC_MAGIC_LEN,
                       len == STORE_TO_END ? len : len - CODEC_MAGIC_LEN, out);
    if (rc == -ERANGE)
        rc = err_set(-EBADMSG, "truncated (shorter than a chunk's magic)");
    if (rc) { /* as it was; the magic made it longer, so there is room for the NUL */
        out->len = had;
        out->data[had] = 0;
    }
    return rc;
}

int remote_fetch(struct remote *r, const uint8_t name[CODEC_NAME_LEN], struct buf *chunk,
                 size_t *start, struct buf *spare, uint64_t *sums, size_t *nsums)
{
    char key[82];
    remote_chunk_key(name, key);
    int rc = get_chunk(r, key, STORE_TO_END, chunk);
    if (rc == 0)
        rc = codec_decode_in_place(r->codec, chunk, name, start, spare, sums, nsums);
    if (rc)
        return err_wrap(rc, "chunk %s", key);
    add(&r->st.chunks_got, 1);
    add(&r->st.bytes_got, chunk->len - *start);
    return 0;
}

size_t remote_raw_offset(const struct remote *r, size_t plain)
{
    return codec_raw_offset(r->codec, plain);
}

size_t remote_encoded_max(const struct remote *r, size_t plain)
{
    return codec_encoded_max(r->codec, plain);
}

/* ---- pieces ---- */

static uint64_t half(const uint8_t *name, int second)
{
    return le_load(name + 8 * second, 8);
}

static void known_put(struct remote *r, struct known *k)
{
    pthread_mutex_lock(&r->lock);
    int last = --k->refs == 0;
    pthread_mutex_unlock(&r->lock);
    if (last) {
        codec_index_free(k->ix);
        free(k);
    }
}

/* Takes k out of the map if the map still finds it there (a newer entry for
 * the same chunk may have replaced it). Caller holds r->lock. */
static void unmap(struct remote *r, const struct known *k)
{
    if (hmap_get(r->indexes, half(k->name, 0), half(k->name, 1)) == k)
        hmap_del(r->indexes, half(k->name, 0), half(k->name, 1));
}

static struct known *known_get(struct remote *r, const uint8_t name[CODEC_NAME_LEN])
{
    pthread_mutex_lock(&r->lock);
    struct known *k = hmap_get(r->indexes, half(name, 0), half(name, 1));
    if (k && memcmp(k->name, name, CODEC_NAME_LEN) == 0)
        k->refs++;
    else
        k = NULL;
    pthread_mutex_unlock(&r->lock);
    return k;
}

/* Into the ring, in place of its oldest entry (which its users keep alive
 * until they are done). A chunk two threads looked up at once is in twice:
 * harmless, the later one is what the map finds. */
static void known_add(struct remote *r, struct known *k)
{
    struct known *old = NULL;
    pthread_mutex_lock(&r->lock);
    if (hmap_put(r->indexes, half(k->name, 0), half(k->name, 1), k) == 0) {
        k->refs++;
        old = r->ring[r->next];
        r->ring[r->next] = k;
        r->next = (r->next + 1) % INDEXES;
        if (old)
            unmap(r, old);
    }
    pthread_mutex_unlock(&r->lock);
    if (old)
        known_put(r, old);
}

/* The index of chunk key: the first bytes of the chunk, enough for one of
 * max_plain bytes, and the rest if it is bigger. */
static int fetch_index(struct remote *r, const uint8_t name[CODEC_NAME_LEN], const char *key,
                       size_t max_plain, struct codec_index **ix)
{
    struct buf head = { 0 };
    size_t need = codec_index_size(r->codec, max_plain);
    int rc = 1;
    for (int tries = 0; rc == 1 && tries < 2; tries++) {
        size_t asked = need;
        head.len = 0;
        rc = get_chunk(r, key, asked, &head);
        if (rc == 0)
            rc = codec_index_parse(r->codec, head.data, head.len, name, &need, ix);
        if (rc == 1 && head.len < asked) /* that was the whole chunk */
            break;
    }
    buf_free(&head);
    if (rc == 1)
        rc = err_set(-EBADMSG, "truncated (shorter than its index)");
    if (rc == 0 && codec_index_plain(*ix) > max_plain) { /* as remote_fetch's callers check */
        rc = err_set(-EBADMSG, "holds %zu bytes, more than the %zu expected",
                     codec_index_plain(*ix), max_plain);
        codec_index_free(*ix);
    }
    return rc;
}

/* Takes a stale index out of the ring (if it is still there). */
static void known_forget(struct remote *r, struct known *k)
{
    pthread_mutex_lock(&r->lock);
    unmap(r, k);
    pthread_mutex_unlock(&r->lock);
}

/* The chunk's index, from the ring (unless fresh is set) or fetched;
 * -ENOTSUP if it has none. */
static int index_of(struct remote *r, const uint8_t name[CODEC_NAME_LEN], const char *key,
                    size_t max_plain, int fresh, struct known **out)
{
    struct known *k = fresh ? NULL : known_get(r, name);
    if (!k) {
        struct codec_index *ix = NULL;
        int rc = fetch_index(r, name, key, max_plain, &ix);
        if (rc && rc != -ENOTSUP)
            return rc;
        if (!(k = calloc(1, sizeof *k))) {
            codec_index_free(ix);
            return err_set(-ENOMEM, "no memory for a chunk's index");
        }
        memcpy(k->name, name, CODEC_NAME_LEN);
        k->ix = ix;
        k->refs = 1;
        known_add(r, k);
    }
    *out = k;
    if (k->ix)
        return 0;
    known_put(r, k);
    return err_set(-ENOTSUP, "made by an older version, without pieces");
}

/* The pieces by index k: their span fetched and decoded. */
static ssize_t pieces_by(struct remote *r, const struct known *k, const char *key, size_t first,
                         size_t *count, uint8_t *out)
{
    struct buf enc = { 0 };
    uint64_t off, len;
    *count = codec_index_span(k->ix, first, *count, &off, &len);
    int rc = *count ? store_get(r->store, key, off, len, &enc) : 0;
    if (rc == -ERANGE) /* shorter than the index says: put again since, or damaged */
        rc = err_set(-EBADMSG, "pieces %zu to %zu lie past its end", first, first + *count);
    ssize_t plain =
        rc ? rc
           : codec_decode_pieces(r->codec, k->ix, k->name, first, *count, enc.data, enc.len, out);
    buf_free(&enc);
    return plain;
}

/* A chunk put again (its content did not change, so its name did not) may
 * be encoded anew: with a key, under a new salt. An index kept from before
 * then no longer fits its bytes, which fail their check: such a failure is
 * tried once more with a fresh index. */
int remote_get_pieces(struct remote *r, const uint8_t name[CODEC_NAME_LEN], size_t max_plain,
                      size_t first, size_t count, uint8_t *out, size_t *got)
{
    char key[82];
    ssize_t plain = -EBADMSG;
    size_t want = count;
    remote_chunk_key(name, key);
    for (int fresh = 0; plain == -EBADMSG && fresh < 2; fresh++) {
        struct known *k = NULL;
        int rc = index_of(r, name, key, max_plain, fresh, &k);
        if (rc)
            return err_wrap(rc, "chunk %s", key);
        count = want;
        plain = pieces_by(r, k, key, first, &count, out);
        if (plain == -EBADMSG)
            known_forget(r, k);
        known_put(r, k);
    }
    if (plain < 0)
        return err_wrap((int)plain, "chunk %s", key);
    add(&r->st.pieces_got, count);
    add(&r->st.bytes_got, (uint64_t)plain);
    *got = (size_t)plain;
    return 0;
}

int remote_get(struct remote *r, const uint8_t name[CODEC_NAME_LEN], struct buf *out)
{
    struct buf chunk = { 0 }, spare = { 0 };
    size_t start = 0;
    int rc = remote_fetch(r, name, &chunk, &start, &spare, NULL, NULL);
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
