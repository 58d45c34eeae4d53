/*
 * Unit tests for cache/codec.c. A standalone program: prints each failed
 * check and exits non-zero if any failed.
 *
 * Besides round trips through the codec itself, every encoded chunk is also
 * decoded by an independent reader written here from the layout drawn in
 * codec.c (fixed offsets, HKDF-derived data key, header and name as AAD), so
 * the format cannot drift while the codec still agrees with itself.
 */
#include "cache/codec.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/sha.h>
#include <xxhash.h>
#include <zstd.h>

#include "check.h"
#include "util/buf.h"
#include "util/err.h"

/* An expected error: the code, and that out was left as it was. */
#define CHECK_ERR(rc, want, out, before, ...)                                                      \
    do {                                                                                           \
        int rc_ = (rc);                                                                            \
        CHECK(rc_ == (want), "got %d (%s), want %d: %s", rc_, err_msg(rc_), (want),                \
              describe(__VA_ARGS__));                                                              \
        CHECK((out)->len == (before)->len &&                                                       \
                  memcmp((out)->data, (before)->data, (before)->len) == 0,                         \
              "out changed on error: %s", describe(__VA_ARGS__));                                  \
    } while (0)

static const char *describe(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *describe(const char *fmt, ...)
{
    static __thread char s[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s, sizeof s, fmt, ap);
    va_end(ap);
    return s;
}

#define HDR_PLAIN 32 /* version 2, not encrypted: with the checksum */
#define HDR_V1    16 /* version 1, not encrypted */
#define HDR_ENC   28
#define TAG_LEN   16
#define MiB       (1u << 20)

static const uint8_t key1[CODEC_KEY_LEN] = { 0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10,
                                             11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                                             22, 23, 24, 25, 26, 27, 28, 29, 30, 31 };
static uint8_t key2[CODEC_KEY_LEN]; /* key1 with one bit flipped */

/* ---- data -------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static void fill_random(uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(rng_next(&s) >> 56);
}

/* Checkpoint-like: sorted record ids, small integers, repeated tensor names. */
static void fill_ckpt(uint8_t *p, size_t n, uint64_t seed)
{
    static const char *const names[] = { "layers.0.attn.q_proj", "layers.0.mlp.up", "embed",
                                         "layers.1.attn.k_proj", "norm.weight" };
    uint64_t s = seed + 7;
    size_t i = 0;
    for (uint32_t id = 0; i < n; id++) {
        char rec[96];
        uint64_t r = rng_next(&s);
        int len = snprintf(rec, sizeof rec, "%08u %s %u %u\n", id * 3, names[r % 5],
                           (unsigned)(r >> 8) % 64, (unsigned)(r >> 16) % 1000);
        for (int k = 0; k < len && i < n; k++)
            p[i++] = (uint8_t)rec[k];
    }
}

/* ---- an independent reader of the format ------------------------------- */

static void derive(const uint8_t *key, const char *info, uint8_t out[32])
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *k = EVP_KDF_CTX_new(kdf);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, 32),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, strlen(info)),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_KDF_derive(k, out, 32, params) != 1)
        abort();
    EVP_KDF_CTX_free(k);
    EVP_KDF_free(kdf);
}

static void ref_name(const uint8_t *key, const void *data, size_t len, uint8_t name[32])
{
    if (!key) {
        SHA256(data, len, name);
        return;
    }
    uint8_t nk[32];
    unsigned n = 32;
    derive(key, "ckptfs v1 name", nk);
    HMAC(EVP_sha256(), nk, 32, data, len, name, &n);
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void le64_store(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

/* A version 2 chunk's checksum, from the layout's words. */
static void ref_checksum(const void *data, size_t len, const uint8_t name[32], uint8_t sum[16])
{
    XXH128_hash_t x = XXH3_128bits_withSeed(data, len, XXH3_64bits(name, 32));
    le64_store(sum, x.low64);
    le64_store(sum + 8, x.high64);
}

/* Checks what the layout says a plaintext is checked by: the checksum in a
 * version 2 chunk not encrypted, the name in version 1 (the tag was checked). */
static int ref_check(const uint8_t *key, const uint8_t *enc, const uint8_t name[32],
                     const uint8_t *plain, size_t len)
{
    uint8_t want[32];
    if (enc[4] == 1) {
        ref_name(key, plain, len, want);
        return memcmp(want, name, 32) == 0;
    }
    if (key)
        return 1;
    ref_checksum(plain, len, name, want);
    return memcmp(want, enc + 16, 16) == 0;
}

/* The payload, decrypted if it is encrypted (NULL if the tag fails). */
static uint8_t *ref_payload(const uint8_t *key, const uint8_t *enc, size_t n,
                            const uint8_t name[32], size_t hlen, size_t *plen_out)
{
    int encrypted = enc[5] & 2;
    if (n < hlen + (encrypted ? TAG_LEN : 0))
        return NULL;
    size_t plen = n - hlen - (encrypted ? TAG_LEN : 0);
    uint8_t *payload = malloc(plen + 1);
    memcpy(payload, enc + hlen, plen);
    if (encrypted) {
        uint8_t dk[32];
        int l;
        derive(key, "ckptfs v1 data", dk);
        EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
        int ok = EVP_DecryptInit_ex(x, EVP_aes_256_gcm(), NULL, dk, enc + 16) == 1 &&
                 EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_TAG, TAG_LEN, (void *)(enc + n - 16)) &&
                 EVP_DecryptUpdate(x, NULL, &l, enc, HDR_ENC) == 1 &&
                 EVP_DecryptUpdate(x, NULL, &l, name, 32) == 1 &&
                 EVP_DecryptUpdate(x, payload, &l, enc + hlen, (int)plen) == 1 &&
                 EVP_DecryptFinal_ex(x, payload + plen, &l) == 1;
        EVP_CIPHER_CTX_free(x);
        if (!ok) {
            free(payload);
            return NULL;
        }
    }
    *plen_out = plen;
    return payload;
}

/* Returns the plaintext (malloc'ed, *len set) or NULL. */
static uint8_t *ref_decode(const uint8_t *key, const uint8_t *enc, size_t n, const uint8_t name[32],
                           size_t *len)
{
    if (n < HDR_V1 || memcmp(enc, "CKCH", 4) != 0 || (enc[4] != 1 && enc[4] != 2))
        return NULL;
    int compressed = enc[5] & 1;
    size_t plain = (size_t)le64(enc + 8);
    size_t hlen = enc[5] & 2 ? HDR_ENC : enc[4] == 1 ? HDR_V1 : HDR_PLAIN, plen = 0;
    uint8_t *payload = ref_payload(key, enc, n, name, hlen, &plen);
    if (!payload)
        return NULL;
    uint8_t *out = payload;
    size_t got = plen;
    if (compressed) {
        out = malloc(plain + 1);
        size_t r = ZSTD_decompress(out, plain, payload, plen);
        free(payload);
        got = ZSTD_isError(r) ? plain + 1 : r;
    }
    if (got != plain || !ref_check(key, enc, name, out, got)) {
        free(out);
        return NULL;
    }
    *len = got;
    return out;
}

/* ---- helpers ------------------------------------------------------------ */

static struct codec *new_codec(int level, const uint8_t *key)
{
    struct codec *c = NULL;
    struct codec_options o = { .level = level, .key = key };
    int rc = codec_new(&o, &c);
    if (rc) {
        fprintf(stderr, "codec_new(level %d): %s\n", level, err_msg(rc));
        exit(2);
    }
    return c;
}

static struct buf encode(struct codec *c, const void *data, size_t len, uint8_t name[32])
{
    struct buf b = { 0 };
    CHECK(codec_name(c, data, len, name) == 0);
    int rc = codec_encode(c, data, len, name, &b);
    if (rc) {
        fprintf(stderr, "codec_encode(%zu bytes): %s\n", len, err_msg(rc));
        exit(2);
    }
    return b;
}

static struct buf prefilled(void)
{
    struct buf b = { 0 };
    buf_append(&b, "prefix", 6);
    return b;
}

/* ---- round trips ------------------------------------------------------- */

static void round_trip(struct codec *c, int level, const uint8_t *key, const uint8_t *data,
                       size_t size, const char *kind)
{
    const char *what =
        describe("%zu bytes of %s data, level %d, %s", size, kind, level, key ? "key" : "no key");
    char ctx[256];
    snprintf(ctx, sizeof ctx, "%s", what);
    uint8_t name[32], ref[32];
    CHECK(codec_name(c, data, size, name) == 0);
    ref_name(key, data, size, ref);
    CHECK(memcmp(name, ref, 32) == 0, "%s: name is not %s", ctx, key ? "the HMAC" : "SHA-256");

    /* Appends after what is already there. */
    struct buf enc = prefilled();
    int rc = codec_encode(c, data, size, name, &enc);
    CHECK(rc == 0, "%s: encode: %s", ctx, err_msg(rc));
    CHECK(memcmp(enc.data, "prefix", 6) == 0, "%s: encode overwrote out", ctx);
    const uint8_t *e = enc.data + 6;
    size_t elen = enc.len - 6;

    size_t hlen = key ? HDR_ENC : HDR_PLAIN, tlen = key ? TAG_LEN : 0;
    CHECK(elen >= hlen + tlen, "%s: encoded only %zu bytes", ctx, elen);
    CHECK(memcmp(e, "CKCH", 4) == 0 && e[4] == 2, "%s: magic/version", ctx);
    CHECK(e[6] == 0 && e[7] == 0, "%s: reserved bytes", ctx);
    CHECK(le64(e + 8) == size, "%s: header length %llu", ctx, (unsigned long long)le64(e + 8));
    int compressed = e[5] & 1;
    CHECK((e[5] & 2) == (key ? 2 : 0), "%s: encrypted flag 0x%02x", ctx, e[5]);
    CHECK((e[5] & ~3) == 0, "%s: stray flags 0x%02x", ctx, e[5]);
    if (compressed)
        CHECK(elen - hlen - tlen < size, "%s: compressed but not smaller", ctx);
    else
        CHECK(elen == hlen + size + tlen, "%s: raw chunk is %zu bytes", ctx, elen);
    if (level == 0 || size == 0)
        CHECK(!compressed, "%s: compressed at level 0 or size 0", ctx);
    if (level > 0 && size >= 4095 && strcmp(kind, "checkpoint") == 0)
        CHECK(compressed, "%s: compressible data stored raw", ctx);
    if (size >= 64 && strcmp(kind, "random") == 0)
        CHECK(!compressed, "%s: random data stored compressed", ctx);

    size_t rlen = 0;
    uint8_t *rp = ref_decode(key, e, elen, name, &rlen);
    CHECK(rp && rlen == size && (size == 0 || memcmp(rp, data, size) == 0),
          "%s: the reference reader disagrees with the format", ctx);
    free(rp);

    struct buf out = prefilled();
    rc = codec_decode(c, e, elen, name, &out);
    CHECK(rc == 0, "%s: decode: %s", ctx, err_msg(rc));
    CHECK(out.len == 6 + size && memcmp(out.data, "prefix", 6) == 0 &&
              (size == 0 || memcmp(out.data + 6, data, size) == 0),
          "%s: decoded bytes differ", ctx);
    CHECK(out.data[out.len] == 0, "%s: out not NUL-terminated", ctx);
    buf_free(&out);

    /* In place: a raw chunk's plaintext follows codec_raw_offset bytes; a
     * compressed one lands in spare, which trades places with the chunk. */
    CHECK(codec_raw_offset(c) == hlen, "%s: raw offset %zu", ctx, codec_raw_offset(c));
    struct buf chunk = { 0 }, spare = { 0 };
    CHECK(buf_append(&chunk, e, elen) == 0);
    uint8_t *was_chunk = chunk.data;
    CHECK(buf_reserve(&spare, size + 64) == 0);
    uint8_t *was_spare = spare.data;
    size_t start = 99;
    rc = codec_decode_in_place(c, &chunk, name, &start, &spare);
    CHECK(rc == 0, "%s: decode in place: %s", ctx, err_msg(rc));
    CHECK(chunk.len - start == size && (size == 0 || memcmp(chunk.data + start, data, size) == 0),
          "%s: decoded in place bytes differ", ctx);
    if (compressed)
        CHECK(start == 0 && chunk.data == was_spare && spare.data == was_chunk,
              "%s: decompressed elsewhere than into spare", ctx);
    else
        CHECK(start == hlen && chunk.data == was_chunk && spare.data == was_spare,
              "%s: a raw chunk moved", ctx);
    buf_free(&chunk);
    buf_free(&spare);
    buf_free(&enc);
}

static void test_round_trips(void)
{
    static const size_t sizes[] = { 0, 1, 7, 4095, 65537, 1000003, 4 * MiB, 4 * MiB + 1 };
    static const int levels[] = { 0, 1, 3 };
    size_t max = 4 * MiB + 1;
    uint8_t *ckpt = malloc(max), *rnd = malloc(max);
    fill_ckpt(ckpt, max, 1);
    fill_random(rnd, max, 1);
    for (size_t l = 0; l < 3; l++) {
        for (int k = 0; k < 2; k++) {
            const uint8_t *key = k ? key1 : NULL;
            struct codec *c = new_codec(levels[l], key);
            for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
                round_trip(c, levels[l], key, ckpt, sizes[s], "checkpoint");
                round_trip(c, levels[l], key, rnd, sizes[s], "random");
            }
            codec_free(c);
        }
    }
    free(ckpt);
    free(rnd);
}

/* ---- what decoding must refuse ----------------------------------------- */

/* A compressible and an incompressible chunk, each with and without a key,
 * so that every check is tried on both payload kinds and both layouts. */
struct sample {
    const uint8_t *key;
    struct codec *c;
    uint8_t data[65536];
    uint8_t name[32];
    struct buf enc;
    int compressed;
};

static void sample_init(struct sample *s, const uint8_t *key, int random)
{
    s->key = key;
    s->c = new_codec(3, key);
    if (random)
        fill_random(s->data, sizeof s->data, 9);
    else
        fill_ckpt(s->data, sizeof s->data, 9);
    s->enc = encode(s->c, s->data, sizeof s->data, s->name);
    s->compressed = s->enc.data[5] & 1;
}

static void sample_free(struct sample *s)
{
    buf_free(&s->enc);
    codec_free(s->c);
}

static const char *sample_desc(const struct sample *s)
{
    return s->key ? (s->compressed ? "encrypted compressed" : "encrypted raw")
                  : (s->compressed ? "compressed" : "raw");
}

static int decode_copy(struct codec *c, const uint8_t *enc, size_t len, const uint8_t name[32],
                       struct buf *out)
{
    /* A private copy, so ASan sees any read beyond len. */
    uint8_t *p = malloc(len ? len : 1);
    memcpy(p, enc, len);
    int rc = codec_decode(c, p, len, name, out);
    free(p);
    return rc;
}

static void test_flipped_bytes(struct sample *s)
{
    const char *d = sample_desc(s);
    size_t hlen = s->key ? HDR_ENC : HDR_PLAIN, tlen = s->key ? TAG_LEN : 0;
    size_t n = s->enc.len;
    struct buf out = prefilled(), before = prefilled();
    uint8_t *e = malloc(n);

    /* Every bit of the header, nonce included. */
    for (size_t i = 0; i < hlen; i++) {
        for (int bit = 0; bit < 8; bit++) {
            memcpy(e, s->enc.data, n);
            e[i] ^= (uint8_t)(1 << bit);
            int rc = decode_copy(s->c, e, n, s->name, &out);
            if (i == 4)
                CHECK_ERR(rc, -EPROTONOSUPPORT, &out, &before, "%s: version bit %d", d, bit);
            else if (i == 5 && bit == 1 && !s->key && rc == -ENOKEY)
                CHECK_ERR(rc, -ENOKEY, &out, &before, "%s: encrypted flag set", d);
            else
                CHECK_ERR(rc, -EBADMSG, &out, &before, "%s: header byte %zu bit %d", d, i, bit);
        }
    }
    /* The payload: first, middle, last byte. */
    size_t plen = n - hlen - tlen;
    size_t at[] = { hlen, hlen + plen / 2, hlen + plen - 1 };
    for (int i = 0; i < 3; i++) {
        memcpy(e, s->enc.data, n);
        e[at[i]] ^= 0x40;
        CHECK_ERR(decode_copy(s->c, e, n, s->name, &out), -EBADMSG, &out, &before,
                  "%s: payload byte %zu", d, at[i]);
    }
    /* Every byte of the tag. */
    for (size_t i = n - tlen; i < n; i++) {
        memcpy(e, s->enc.data, n);
        e[i] ^= 0x01;
        int rc = decode_copy(s->c, e, n, s->name, &out);
        CHECK_ERR(rc, -EBADMSG, &out, &before, "%s: tag byte %zu", d, i - (n - tlen));
        CHECK(strstr(err_msg(rc), "authentication failed"), "%s: tag message: %s", d, err_msg(rc));
    }
    /* And the untouched copy still decodes (the flips above were the cause). */
    memcpy(e, s->enc.data, n);
    int rc = decode_copy(s->c, e, n, s->name, &out);
    CHECK(rc == 0, "%s: pristine copy: %s", d, err_msg(rc));
    free(e);
    buf_free(&out);
    buf_free(&before);
}

static void test_truncated(struct sample *s)
{
    const char *d = sample_desc(s);
    size_t n = s->enc.len;
    size_t cuts[] = { 0, 1, 4, 5, 15, 16, 17, 27, 28, 29, 44, n / 2, n - 17, n - 16, n - 1 };
    struct buf out = prefilled(), before = prefilled();
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++)
        CHECK_ERR(decode_copy(s->c, s->enc.data, cuts[i], s->name, &out), -EBADMSG, &out, &before,
                  "%s: cut to %zu of %zu bytes", d, cuts[i], n);
    /* Too long is as wrong as too short. */
    struct buf longer = { 0 };
    buf_append(&longer, s->enc.data, n);
    buf_append(&longer, "", 1);
    CHECK_ERR(decode_copy(s->c, longer.data, longer.len, s->name, &out), -EBADMSG, &out, &before,
              "%s: one byte appended", d);
    buf_free(&longer);
    buf_free(&out);
    buf_free(&before);
}

static void test_version(struct sample *s)
{
    const uint8_t versions[] = { 0, 3, 255 };
    struct buf out = prefilled(), before = prefilled();
    for (int i = 0; i < 3; i++) {
        uint8_t *e = malloc(s->enc.len);
        memcpy(e, s->enc.data, s->enc.len);
        e[4] = versions[i];
        int rc = decode_copy(s->c, e, s->enc.len, s->name, &out);
        CHECK_ERR(rc, -EPROTONOSUPPORT, &out, &before, "%s: version %u", sample_desc(s),
                  versions[i]);
        free(e);
    }
    buf_free(&out);
    buf_free(&before);
}

static void test_wrong_name(struct sample *s)
{
    const char *d = sample_desc(s);
    struct buf out = prefilled(), before = prefilled();
    uint8_t other[32], data[100];
    memcpy(other, s->name, 32);
    other[31] ^= 1;
    int rc = decode_copy(s->c, s->enc.data, s->enc.len, other, &out);
    CHECK_ERR(rc, -EBADMSG, &out, &before, "%s: one bit of the name flipped", d);

    /* A genuine name, of some other genuine chunk. */
    memset(data, 'x', sizeof data);
    CHECK(codec_name(s->c, data, sizeof data, other) == 0);
    rc = decode_copy(s->c, s->enc.data, s->enc.len, other, &out);
    CHECK_ERR(rc, -EBADMSG, &out, &before, "%s: another chunk's name", d);
    if (!s->key)
        CHECK(strstr(err_msg(rc), "content does not match its checksum"), "%s: message: %s", d,
              err_msg(rc));
    buf_free(&out);
    buf_free(&before);
}

static void test_damage(void)
{
    static struct sample samples[4];
    for (int i = 0; i < 4; i++) {
        struct sample *s = &samples[i];
        sample_init(s, i & 1 ? key1 : NULL, i & 2);
        CHECK(s->compressed == !(i & 2), "sample %d: compressed=%d", i, s->compressed);
        test_flipped_bytes(s);
        test_truncated(s);
        test_version(s);
        test_wrong_name(s);
        sample_free(s);
    }
}

static void test_keys(void)
{
    uint8_t data[50000], name[32];
    fill_ckpt(data, sizeof data, 3);
    struct codec *k1 = new_codec(1, key1), *k2 = new_codec(1, key2), *none = new_codec(1, NULL);
    struct buf out = prefilled(), before = prefilled();

    /* A fresh nonce each time: different bytes, both genuine. */
    struct buf a = encode(k1, data, sizeof data, name), b = encode(k1, data, sizeof data, name);
    CHECK(a.len == b.len, "re-encoding changed the length");
    CHECK(memcmp(a.data + 16, b.data + 16, 12) != 0, "same nonce twice");
    CHECK(memcmp(a.data + 28, b.data + 28, a.len - 28) != 0, "same ciphertext twice");
    int rc = codec_decode(k1, a.data, a.len, name, &out);
    CHECK(rc == 0, "first encoding: %s", err_msg(rc));
    rc = codec_decode(k1, b.data, b.len, name, &out);
    CHECK(rc == 0, "second encoding: %s", err_msg(rc));
    CHECK(out.len == 6 + 2 * sizeof data && memcmp(out.data + 6, data, sizeof data) == 0 &&
              memcmp(out.data + 6 + sizeof data, data, sizeof data) == 0,
          "decoded bytes differ");
    buf_free(&out);
    out = prefilled();

    /* The wrong key: under its own name for the data, and under the right one. */
    uint8_t name2[32];
    CHECK(codec_name(k2, data, sizeof data, name2) == 0);
    CHECK_ERR(codec_decode(k2, a.data, a.len, name, &out), -EBADMSG, &out, &before, "wrong key");
    CHECK_ERR(codec_decode(k2, a.data, a.len, name2, &out), -EBADMSG, &out, &before,
              "wrong key, its own name");

    /* No key at all. */
    rc = codec_decode(none, a.data, a.len, name, &out);
    CHECK_ERR(rc, -ENOKEY, &out, &before, "encrypted chunk, codec without a key");

    /* A plain chunk offered to a codec with a key (a substitution). */
    uint8_t pname[32];
    struct buf p = encode(none, data, sizeof data, pname);
    CHECK_ERR(codec_decode(k1, p.data, p.len, name, &out), -EBADMSG, &out, &before,
              "plain chunk, codec with a key");
    CHECK_ERR(codec_decode(k1, p.data, p.len, pname, &out), -EBADMSG, &out, &before,
              "plain chunk under its plain name, codec with a key");

    buf_free(&p);
    buf_free(&a);
    buf_free(&b);
    buf_free(&out);
    buf_free(&before);
    codec_free(k1);
    codec_free(k2);
    codec_free(none);
}

/* Headers no encoder writes, made by hand (no key, so no tag to forge). */
static void test_forged(void)
{
    struct codec *c = new_codec(3, NULL);
    struct buf out = prefilled(), before = prefilled();
    uint8_t data[20000], name[32];
    fill_ckpt(data, sizeof data, 5);
    struct buf good = encode(c, data, sizeof data, name);
    CHECK(good.data[5] == 1, "sample not compressed");
    size_t n = good.len;
    uint8_t *e = malloc(n + 64);

#define FORGE(what, ...)                                                                           \
    do {                                                                                           \
        memcpy(e, good.data, n);                                                                   \
        __VA_ARGS__;                                                                               \
        CHECK_ERR(decode_copy(c, e, n, name, &out), -EBADMSG, &out, &before, what);                \
    } while (0)

    FORGE("unknown flag", e[5] |= 0x04);
    FORGE("reserved byte", e[7] = 1);
    FORGE("length over CODEC_MAX_CHUNK", e[8] = 1, e[9] = 0, e[10] = 0, e[11] = 0x40);
    CHECK(strstr(err_msg(-EBADMSG), "over the limit"), "over the limit: %s", err_msg(-EBADMSG));
    FORGE("length 2^63", e[15] = 0x80);
    CHECK(strstr(err_msg(-EBADMSG), "over the limit"), "2^63: %s", err_msg(-EBADMSG));
    FORGE("length one more than the frame", e[8] = (uint8_t)(e[8] + 1));
    FORGE("length one less than the frame", e[8] = (uint8_t)(e[8] - 1));
    FORGE("compressed flag on a raw length", e[8] = (uint8_t)(n - HDR_PLAIN),
          e[9] = (uint8_t)((n - HDR_PLAIN) >> 8), e[10] = 0);
    /* A header claiming the largest chunk allowed, on a small frame: refused
     * before anything is reserved on the header's word. */
    FORGE("length CODEC_MAX_CHUNK", e[8] = 0, e[9] = 0, e[10] = 0, e[11] = 0x40);
    CHECK(out.cap < 64 * MiB, "reserved %zu bytes for a forged length", out.cap);
    /* A frame followed by trailing bytes the frame does not account for. */
    memcpy(e, good.data, n);
    memcpy(e + n, good.data + 16, 8);
    CHECK_ERR(decode_copy(c, e, n + 8, name, &out), -EBADMSG, &out, &before, "trailing bytes");
#undef FORGE

    free(e);
    buf_free(&good);
    buf_free(&out);
    buf_free(&before);
    codec_free(c);
}

static void test_bad_args(void)
{
    struct codec *c = NULL;
    struct codec_options o = { .level = -1 };
    CHECK(codec_new(&o, &c) == -EINVAL, "level -1 accepted");
    o.level = 20;
    CHECK(codec_new(&o, &c) == -EINVAL, "level 20 accepted");
    o.level = 19;
    int rc = codec_new(&o, &c);
    CHECK(rc == 0, "level 19: %s", err_msg(rc));
    codec_free(c);
    codec_free(NULL);

    c = new_codec(1, key1);
    struct buf out = prefilled(), before = prefilled();
    uint8_t name[32] = { 0 }, byte = 0;
    /* Refused on the length alone, before touching the (one-byte) data. */
    CHECK_ERR(codec_encode(c, &byte, (size_t)CODEC_MAX_CHUNK + 1, name, &out), -EINVAL, &out,
              &before, "oversized chunk");
    buf_free(&out);
    buf_free(&before);
    codec_free(c);
}

/* ---- names ------------------------------------------------------------- */

static void test_names(void)
{
    struct codec *none = new_codec(0, NULL), *k1 = new_codec(0, key1), *k2 = new_codec(3, key2);
    struct codec *k1b = new_codec(3, key1);
    uint8_t a[32], b[32], c[32], d[32];
    char hex[65];

    CHECK(codec_name(none, "abc", 3, a) == 0);
    codec_name_hex(a, hex);
    CHECK(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0,
          "SHA-256(\"abc\") is %s", hex);
    CHECK(codec_name(none, "", 0, a) == 0);
    codec_name_hex(a, hex);
    CHECK(strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0,
          "SHA-256(\"\") is %s", hex);

    CHECK(codec_name(none, "abc", 3, a) == 0);
    CHECK(codec_name(k1, "abc", 3, b) == 0);
    CHECK(codec_name(k2, "abc", 3, c) == 0);
    CHECK(codec_name(k1b, "abc", 3, d) == 0);
    CHECK(memcmp(a, b, 32) != 0, "keyed name equals the plain hash");
    CHECK(memcmp(b, c, 32) != 0, "two keys, one name");
    CHECK(memcmp(b, d, 32) == 0, "the name depends on the level");
    ref_name(key1, "abc", 3, d);
    CHECK(memcmp(b, d, 32) == 0, "keyed name is not HMAC(HKDF(key, \"ckptfs v1 name\"))");
    /* Keyed with the derived name key, not the user key itself. */
    unsigned len = 32;
    HMAC(EVP_sha256(), key1, 32, (const uint8_t *)"abc", 3, d, &len);
    CHECK(memcmp(b, d, 32) != 0, "names are keyed with the raw user key");

    codec_free(none);
    codec_free(k1);
    codec_free(k2);
    codec_free(k1b);
}

static void test_hex(void)
{
    uint8_t name[32], back[32];
    char hex[65];
    for (int i = 0; i < 32; i++)
        name[i] = (uint8_t)(i * 8 + 0x0f);
    codec_name_hex(name, hex);
    CHECK(strlen(hex) == 64, "hex length %zu", strlen(hex));
    CHECK(strncmp(hex, "0f171f27", 8) == 0, "hex is %s", hex);
    CHECK(strspn(hex, "0123456789abcdef") == 64, "not lowercase hex: %s", hex);
    memset(back, 0, 32);
    CHECK(codec_name_parse(hex, back) == 0 && memcmp(back, name, 32) == 0, "round trip of %s", hex);

    char bad[80];
    const char *reject[] = { "", "0", hex + 1 };
    for (int i = 0; i < 3; i++)
        CHECK(codec_name_parse(reject[i], back) == -EINVAL, "accepted %zu digits",
              strlen(reject[i]));
    snprintf(bad, sizeof bad, "%s0", hex);
    CHECK(codec_name_parse(bad, back) == -EINVAL, "accepted 65 digits");
    snprintf(bad, sizeof bad, "%s", hex);
    bad[10] = 'g';
    CHECK(codec_name_parse(bad, back) == -EINVAL, "accepted a 'g'");
    bad[10] = 'F';
    CHECK(codec_name_parse(bad, back) == -EINVAL, "accepted uppercase");
    bad[10] = ' ';
    CHECK(codec_name_parse(bad, back) == -EINVAL, "accepted a space");
    CHECK(memcmp(back, name, 32) == 0, "a failed parse changed the name");
}

/* ---- key files --------------------------------------------------------- */

static char tmpdir[64];

static const char *key_file(const char *leaf, const void *body, size_t len, mode_t mode)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", tmpdir, leaf);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, body, len) != (ssize_t)len || fchmod(fd, mode) != 0) {
        perror(path);
        exit(2);
    }
    close(fd);
    return path;
}

static void test_load_key(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_codec.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        exit(2);
    }
    char hex[65], upper[66];
    uint8_t key[32];
    codec_name_hex(key1, hex);
    for (int i = 0; i < 64; i++)
        upper[i] = (char)(hex[i] >= 'a' ? hex[i] - 32 : hex[i]);
    upper[64] = '\n';

    const char *p = key_file("raw", key1, 32, 0600);
    memset(key, 0, 32);
    int rc = codec_load_key(p, key);
    CHECK(rc == 0 && memcmp(key, key1, 32) == 0, "raw key: %s", err_msg(rc));

    char line[66];
    memcpy(line, hex, 64);
    line[64] = '\n';
    struct {
        const char *leaf;
        const void *body;
        size_t len;
    } good[] = { { "hex-nl", line, 65 }, { "hex", hex, 64 }, { "upper", upper, 65 } };
    for (int i = 0; i < 3; i++) {
        p = key_file(good[i].leaf, good[i].body, good[i].len, 0400);
        memset(key, 0, 32);
        rc = codec_load_key(p, key);
        CHECK(rc == 0 && memcmp(key, key1, 32) == 0, "%s key: %s", good[i].leaf, err_msg(rc));
    }

    const mode_t open_modes[] = { 0644, 0640, 0620, 0604, 0602 };
    for (int i = 0; i < 5; i++) {
        p = key_file("loose", key1, 32, open_modes[i]);
        rc = codec_load_key(p, key);
        CHECK(rc == -EACCES, "mode %03o: got %d", (unsigned)open_modes[i], rc);
        CHECK(strstr(err_msg(rc), p) != NULL, "message does not name the file: %s", err_msg(rc));
    }

    char junk[200], nl63[64], nonhex[64], hexx[65];
    memset(junk, 'a', sizeof junk);
    memcpy(line + 64, "\n\n", 2); /* line: 64 digits and two newlines */
    memcpy(nl63, hex, 63);
    nl63[63] = '\n';
    memcpy(nonhex, hex, 64);
    nonhex[30] = 'g';
    memcpy(hexx, hex, 64);
    hexx[64] = 'x';
    struct {
        const char *what;
        const void *body;
        size_t len;
    } bad[] = {
        { "empty", "", 0 },
        { "31 bytes", key1, 31 },
        { "33 bytes", junk, 33 },
        { "63 digits and a newline", nl63, 64 },
        { "64 characters, one not hex", nonhex, 64 },
        { "64 digits and two newlines", line, 66 },
        { "64 digits and an x", hexx, 65 },
        { "200 bytes", junk, 200 },
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        p = key_file("bad", bad[i].body, bad[i].len, 0600);
        rc = codec_load_key(p, key);
        CHECK(rc == -EINVAL, "%s: got %d (%s)", bad[i].what, rc, err_msg(rc));
        CHECK(strstr(err_msg(rc), p) != NULL, "%s: message does not name the file: %s", bad[i].what,
              err_msg(rc));
    }

    char missing[128];
    snprintf(missing, sizeof missing, "%s/missing", tmpdir);
    rc = codec_load_key(missing, key);
    CHECK(rc == -ENOENT && strstr(err_msg(rc), missing), "missing file: %d (%s)", rc, err_msg(rc));
    CHECK(codec_load_key(tmpdir, key) == -EINVAL, "a directory was accepted");

    const char *leaves[] = { "raw", "hex-nl", "hex", "upper", "loose", "bad" };
    for (int i = 0; i < 6; i++) {
        snprintf(missing, sizeof missing, "%s/%s", tmpdir, leaves[i]);
        unlink(missing);
    }
    rmdir(tmpdir);
}

/* ---- golden chunks ----------------------------------------------------- */

#define GOLDEN_V1 "ckptfs golden chunk, version 1\n"
#define GOLDEN_V2 "ckptfs golden chunk, version 2\n"
#define HELLO     "hello, chunk"

/* Encoded by the codec of each version (the version 1 raw one by hand, to
 * its layout): later builds must still read them all. */
static const struct {
    const char *what;
    int keyed;
    const char *text;
    const char *name;
    const char *enc;
} golden[] = {
    { "v1 encrypted, compressed", 1, GOLDEN_V1 GOLDEN_V1 GOLDEN_V1 GOLDEN_V1,
      "289393e09041b9cca570598275fccf8c548c1d33c7773f527c5263a2741fdbf7",
      "434b4348010300007c0000000000000008c477c6c893b01bd494f9af45284b2325a18f1a5518f7717ddd665e65ac"
      "50856330b3d793f47cf0555d59539b7d3b9696c01190670509bb7734a0bb395a5fa88be9dc5ccb895555cff1e"
      "8" },
    { "v1 compressed", 0, GOLDEN_V1 GOLDEN_V1 GOLDEN_V1 GOLDEN_V1,
      "841f0f2c36623d104d3d1e0d64579cbcd5c5e5aed661ea600d3aead328d005ec",
      "434b4348010100007c0000000000000028b52ffd207c350100f8636b7074667320676f6c64656e206368756e6b"
      "2c2076657273696f6e20310a0100ab989413" },
    { "v1 encrypted, raw", 1, HELLO,
      "78edc17f198095fc7d272fe678b575eb3afe2a6a07ab2e8f007c2dca673bbed5",
      "434b4348010200000c000000000000002c4ee28ea95274342810e64c7d2bca09d0d8b2e095a9b81d167f2314668e"
      "18da40b97ed76e67498d" },
    { "v1 raw", 0, HELLO, "73ba66513fb2ccbd41856d729b68aa6edc1b70afa23f136c04c9478f63706adc",
      "434b4348010000000c0000000000000068656c6c6f2c206368756e6b" },
    { "v2 compressed", 0, GOLDEN_V2 GOLDEN_V2 GOLDEN_V2 GOLDEN_V2,
      "18de6400d820f0731512d7b3cbc064469e0a618e32a1dd4c62788ae961250201",
      "434b4348020100007c000000000000009f5b332597b30d6fe0d58f646cb51b4728b52ffd207c350100f8636b70"
      "74667320676f6c64656e206368756e6b2c2076657273696f6e20320a0100ab989413" },
    { "v2 raw", 0, HELLO, "73ba66513fb2ccbd41856d729b68aa6edc1b70afa23f136c04c9478f63706adc",
      "434b4348020000000c000000000000003bb55cc90791ff26761084cedf12747768656c6c6f2c206368756e6b" },
    { "v2 encrypted, raw", 1, HELLO,
      "78edc17f198095fc7d272fe678b575eb3afe2a6a07ab2e8f007c2dca673bbed5",
      "434b4348020200000c00000000000000c09164538933d2833ab9e7112c8e0e893a3f99456041dbd7ba74b9c56f"
      "c60ac87efff33a6050a4b3" },
};

static size_t golden_bytes(size_t i, uint8_t *enc)
{
    size_t n = strlen(golden[i].enc) / 2;
    for (size_t k = 0; k < n; k++)
        sscanf(golden[i].enc + 2 * k, "%2hhx", &enc[k]);
    return n;
}

static void test_golden(void)
{
    struct codec *keyed = new_codec(1, key1), *plain = new_codec(1, NULL);
    for (size_t i = 0; i < sizeof golden / sizeof *golden; i++) {
        const char *want = golden[i].text;
        struct codec *c = golden[i].keyed ? keyed : plain;
        uint8_t name[32], enc[160], computed[32];
        size_t n = golden_bytes(i, enc);
        int rc = codec_name_parse(golden[i].name, name);
        CHECK(rc == 0, "%s: name: %s", golden[i].what, err_msg(rc));
        CHECK(codec_name(c, want, strlen(want), computed) == 0);
        CHECK(memcmp(name, computed, 32) == 0, "%s: the name has changed", golden[i].what);
        struct buf out = { 0 };
        rc = codec_decode(c, enc, n, name, &out);
        CHECK(rc == 0, "%s: %s", golden[i].what, err_msg(rc));
        CHECK(out.len == strlen(want) && memcmp(out.data, want, out.len) == 0,
              "%s: wrong plaintext", golden[i].what);
        /* One payload byte changed: each version's check catches it. */
        enc[n - 1 - 16 * golden[i].keyed] ^= 0x20;
        rc = codec_decode(c, enc, n, name, &out);
        CHECK(rc == -EBADMSG, "%s, last byte changed: %s", golden[i].what, err_msg(rc));
        if (!golden[i].keyed && enc[5] == 0)
            CHECK(strstr(err_msg(rc),
                         enc[4] == 1 ? "does not match its name" : "does not match its checksum"),
                  "%s: message: %s", golden[i].what, err_msg(rc));
        buf_free(&out);
    }
    codec_free(keyed);
    codec_free(plain);
}

/* ---- threads ----------------------------------------------------------- */

struct worker {
    struct codec *c;
    int id;
    int bad;
};

static void *work(void *arg)
{
    struct worker *w = arg;
    size_t size = 256 * 1024 + (size_t)w->id * 1000;
    uint8_t *data = malloc(size), name[32];
    for (int i = 0; i < 20; i++) {
        if (i & 1)
            fill_random(data, size, (uint64_t)(w->id * 100 + i));
        else
            fill_ckpt(data, size, (uint64_t)(w->id * 100 + i));
        struct buf enc = { 0 }, out = { 0 };
        CHECK(codec_name(w->c, data, size, name) == 0);
        if (codec_encode(w->c, data, size, name, &enc) != 0 ||
            codec_decode(w->c, enc.data, enc.len, name, &out) != 0 || out.len != size ||
            memcmp(out.data, data, size) != 0)
            w->bad++;
        buf_free(&enc);
        buf_free(&out);
    }
    free(data);
    return NULL;
}

static void test_threads(void)
{
    struct codec *c = new_codec(1, key1);
    struct worker w[8];
    pthread_t t[8];
    for (int i = 0; i < 8; i++) {
        w[i] = (struct worker){ .c = c, .id = i };
        pthread_create(&t[i], NULL, work, &w[i]);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        CHECK(w[i].bad == 0, "thread %d: %d failed round trips", i, w[i].bad);
    }
    codec_free(c);
}

int main(void)
{
    memcpy(key2, key1, 32);
    key2[17] ^= 0x10;

    struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {
        { "round trips", test_round_trips },
        { "damage", test_damage },
        { "keys", test_keys },
        { "forged headers", test_forged },
        { "bad arguments", test_bad_args },
        { "names", test_names },
        { "hex", test_hex },
        { "key files", test_load_key },
        { "golden chunks", test_golden },
        { "threads", test_threads },
    };
    for (size_t i = 0; i < sizeof tests / sizeof *tests; i++) {
        int before = check_failures;
        tests[i].fn();
        printf("%-16s %s\n", tests[i].name, check_failures == before ? "ok" : "FAILED");
    }
    return check_done("test_codec");
}
