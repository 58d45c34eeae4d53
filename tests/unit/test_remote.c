/*
 * The remote tier's piece reads (cache/remote.c) against a file:// bucket:
 * pieces fetched alone and counted, the index kept, a chunk put again
 * under a new salt while its old index is kept, a chunk that holds more
 * than the caller expects, and a chunk of an older format.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/codec.h"
#include "cache/remote.h"
#include "cache/store.h"
#include "check.h"
#include "util/buf.h"
#include "util/db.h"
#include "util/err.h"

#define MIB   ((size_t)1 << 20)
#define BLOCK (4 * MIB)

struct rig {
    char dir[64];
    struct store *store;
    struct codec *codec;
    struct db *db;
    struct remote *remote;
};

static void rig_open(struct rig *g, const uint8_t *key)
{
    char url[96], db[96];
    snprintf(g->dir, sizeof g->dir, "/tmp/test_remote.XXXXXX");
    CHECK(mkdtemp(g->dir) != NULL);
    snprintf(url, sizeof url, "file://%s", g->dir);
    snprintf(db, sizeof db, "%s/meta.db", g->dir);
    struct store_options so = { 0 };
    struct codec_options co = { .level = 1, .key = key };
    int rc = store_open(url, &so, &g->store);
    CHECK(rc == 0, "store_open: %s", err_msg(rc));
    CHECK(codec_new(&co, &g->codec) == 0);
    CHECK(db_open(db, &g->db) == 0);
    CHECK(remote_open(g->store, g->codec, g->db, &g->remote) == 0);
}

static void rig_close(struct rig *g)
{
    char cmd[96];
    remote_close(g->remote);
    db_close(g->db);
    codec_free(g->codec);
    store_close(g->store);
    snprintf(cmd, sizeof cmd, "rm -rf %s", g->dir);
    CHECK(system(cmd) == 0);
}

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (uint8_t)(seed >> 56);
    }
}

/* Pieces [first, first+count) of chunk name must be data's. */
static void expect_pieces(struct rig *g, const uint8_t name[CODEC_NAME_LEN], const uint8_t *data,
                          size_t len, size_t first, size_t count, const char *what)
{
    uint8_t *out = malloc(count * CODEC_PIECE);
    size_t got = 0, at = first * CODEC_PIECE;
    size_t want = at >= len ? 0 : (len - at < count * CODEC_PIECE ? len - at : count * CODEC_PIECE);
    int rc = remote_get_pieces(g->remote, name, BLOCK, first, count, out, &got);
    CHECK(rc == 0, "%s: %s", what, err_msg(rc));
    CHECK(got == want && memcmp(out, data + at, got) == 0, "%s: %zu bytes, want %zu", what, got,
          want);
    free(out);
}

static void test_pieces_and_a_chunk_put_again(const uint8_t *key)
{
    struct rig g;
    rig_open(&g, key);
    size_t len = BLOCK - 1000;
    uint8_t *data = malloc(len), name[CODEC_NAME_LEN];
    fill(data, len, 7);
    CHECK(remote_name(g.remote, data, len, name) == 0);
    CHECK(remote_put(g.remote, name, data, len) == 0);

    struct store_stats before, after;
    store_get_stats(g.store, &before);
    expect_pieces(&g, name, data, len, 5, 2, "two pieces");
    expect_pieces(&g, name, data, len, 63, 4, "the short last piece, cut");
    expect_pieces(&g, name, data, len, 70, 1, "past the end");
    store_get_stats(g.store, &after);
    /* The index once, then one GET per run of pieces (none past the end). */
    uint64_t gets = after.op[STORE_OP_GET].requests - before.op[STORE_OP_GET].requests;
    CHECK(gets == 3, "%llu GETs for two runs of pieces", (unsigned long long)gets);
    struct remote_stats rs;
    remote_get_stats(g.remote, &rs);
    CHECK(rs.pieces_got == 3 && rs.chunks_got == 0, "pieces %llu, chunks %llu",
          (unsigned long long)rs.pieces_got, (unsigned long long)rs.chunks_got);

    /* Put again, encoded anew (with a key: a new salt), as another host
     * would put it: the kept index is stale, and a fresh one is fetched. */
    struct buf enc = { 0 };
    char objkey[82];
    remote_chunk_key(name, objkey);
    CHECK(codec_encode(g.codec, data, len, name, &enc) == 0);
    CHECK(store_put(g.store, objkey, enc.data, enc.len, 0) == 0);
    expect_pieces(&g, name, data, len, 20, 3, "after the chunk was put again");
    buf_free(&enc);

    /* A chunk that holds more than the caller says a chunk can. */
    size_t big = BLOCK + CODEC_PIECE;
    uint8_t *more = malloc(big), bigname[CODEC_NAME_LEN], out[CODEC_PIECE];
    fill(more, big, 8);
    CHECK(remote_name(g.remote, more, big, bigname) == 0);
    CHECK(remote_put(g.remote, bigname, more, big) == 0);
    size_t got = 0;
    int rc = remote_get_pieces(g.remote, bigname, BLOCK, 0, 1, out, &got);
    CHECK(rc == -EBADMSG && strstr(err_msg(rc), "more than"), "a chunk over the block: %s",
          err_msg(rc));
    free(more);
    free(data);
    rig_close(&g);
}

/* A chunk of format version 2 has no index: -ENOTSUP, asked only once. */
static void test_an_older_chunk(void)
{
    struct rig g;
    rig_open(&g, NULL);
    /* "hello, chunk", raw, version 2 (a golden chunk of test_codec). */
    static const uint8_t enc[] = {
        'C',  'K',  'C',  'H',  2,    0,    0,    0,    12,   0,    0,    0,    0,    0,    0,
        0,    0x3b, 0xb5, 0x5c, 0xc9, 0x07, 0x91, 0xff, 0x26, 0x76, 0x10, 0x84, 0xce, 0xdf, 0x12,
        0x74, 0x77, 'h',  'e',  'l',  'l',  'o',  ',',  ' ',  'c',  'h',  'u',  'n',  'k'
    };
    uint8_t name[CODEC_NAME_LEN], out[CODEC_PIECE];
    char objkey[82];
    CHECK(codec_name_parse("73ba66513fb2ccbd41856d729b68aa6edc1b70afa23f136c04c9478f63706adc",
                           name) == 0);
    remote_chunk_key(name, objkey);
    CHECK(store_put(g.store, objkey, enc, sizeof enc, 0) == 0);
    struct store_stats before, after;
    store_get_stats(g.store, &before);
    for (int i = 0; i < 2; i++) {
        size_t got = 0;
        int rc = remote_get_pieces(g.remote, name, BLOCK, 0, 1, out, &got);
        CHECK(rc == -ENOTSUP, "a version 2 chunk: %d %s", rc, err_msg(rc));
    }
    store_get_stats(g.store, &after);
    CHECK(after.op[STORE_OP_GET].requests - before.op[STORE_OP_GET].requests == 1,
          "the older chunk's head was fetched more than once");
    struct buf plain = { 0 };
    CHECK(remote_get(g.remote, name, &plain) == 0 && plain.len == 12 &&
          memcmp(plain.data, "hello, chunk", 12) == 0);
    buf_free(&plain);
    rig_close(&g);
}

/* Puts data under its name as a codec of level would encode it. */
static void put_as(struct rig *g, int level, const uint8_t *data, size_t len,
                   const uint8_t name[CODEC_NAME_LEN])
{
    struct codec *c;
    struct codec_options o = { .level = level };
    struct buf enc = { 0 };
    char objkey[82];
    CHECK(codec_new(&o, &c) == 0);
    CHECK(codec_encode(c, data, len, name, &enc) == 0);
    remote_chunk_key(name, objkey);
    CHECK(store_put(g->store, objkey, enc.data, enc.len, 0) == 0);
    buf_free(&enc);
    codec_free(c);
}

/* A chunk put again by a writer that compresses where the first did not is
 * shorter: the kept index points past its end, and is fetched anew. */
static void test_a_chunk_put_again_shorter(void)
{
    struct rig g;
    rig_open(&g, NULL);
    size_t len = BLOCK;
    uint8_t *data = malloc(len), name[CODEC_NAME_LEN];
    for (size_t i = 0; i < len; i++)
        data[i] = (uint8_t)("checkpoint "[i % 11] + (i / 4096) % 3);
    CHECK(remote_name(g.remote, data, len, name) == 0);
    put_as(&g, 0, data, len, name); /* raw: as long as it gets */
    expect_pieces(&g, name, data, len, 60, 4, "the last pieces, raw");
    put_as(&g, 1, data, len, name); /* compressed: far shorter */
    expect_pieces(&g, name, data, len, 60, 4, "the last pieces, put again compressed");
    free(data);
    rig_close(&g);
}

/* Objects under a chunk's name too short to be one are damaged, never data;
 * the magic itself is not fetched (remote.c), so it is not what is checked. */
static void test_short_objects(void)
{
    struct rig g;
    rig_open(&g, NULL);
    static const char *bodies[] = { "", "CKCH", "CKCH\3" };
    for (size_t i = 0; i < 3; i++) {
        uint8_t name[CODEC_NAME_LEN], out[CODEC_PIECE];
        char objkey[82];
        memset(name, (int)i + 1, sizeof name);
        remote_chunk_key(name, objkey);
        CHECK(store_put(g.store, objkey, bodies[i], strlen(bodies[i]), 0) == 0);
        struct buf plain = { 0 };
        int rc = remote_get(g.remote, name, &plain);
        CHECK(rc == -EBADMSG && plain.len == 0, "a %zu-byte object, whole: %d %s",
              strlen(bodies[i]), rc, err_msg(rc));
        size_t got = 0;
        rc = remote_get_pieces(g.remote, name, BLOCK, 0, 1, out, &got);
        CHECK(rc == -EBADMSG, "a %zu-byte object, in pieces: %d %s", strlen(bodies[i]), rc,
              err_msg(rc));
        buf_free(&plain);
    }
    rig_close(&g);
}

int main(void)
{
    static const uint8_t key[CODEC_KEY_LEN] = { 1, 2,  3,  4,  5,  6,  7,  8,
                                                9, 10, 11, 12, 13, 14, 15, 16 };
    test_pieces_and_a_chunk_put_again(NULL);
    test_pieces_and_a_chunk_put_again(key);
    test_an_older_chunk();
    test_a_chunk_put_again_shorter();
    test_short_objects();
    return check_done("remote");
}
