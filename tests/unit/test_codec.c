/*
 * Unit tests for cache/codec.c. A standalone program: prints each failed
 * check and exits non-zero if any failed.
 *
 * Besides round trips through the codec itself, every encoded chunk is also
 * decoded by an independent reader written here from the layout drawn in
 * codec.c (fixed offsets, the index and its check, pieces and their nonces,
 * HKDF-derived data key, header and name as AAD), so the format cannot drift
 * while the codec still agrees with itself. A matching writer builds the
 * chunks no encoder writes (forged indexes with a valid check, version 2
 * chunks) by hand.
 */
#include "cache/codec.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
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

#define HDR_PLAIN  32 /* version 2, not encrypted: with the checksum */
#define HDR_V1     16 /* version 1, not encrypted */
#define HDR_ENC    28 /* versions 1 and 2, encrypted: with the nonce */
#define HDR3_PLAIN 16 /* version 3: magic, version, flags, shift, reserved, length */
#define HDR3_ENC   28 /* version 3, encrypted: and the nonce */
#define CHECK_LEN  16 /* the index's check, version 3 */
#define TAG_LEN    16
#define SHIFT      16                   /* the piece shift a version 3 chunk has */
#define PIECE      ((size_t)1 << SHIFT) /* bytes in a piece (the last may be short) */
#define MiB        (1u << 20)

_Static_assert(PIECE == CODEC_PIECE, "the layout's piece is codec.h's");

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

/* A private copy of n bytes (at least one allocated), so ASan sees any read
 * beyond n. */
static uint8_t *copy_of(const void *p, size_t n)
{
    uint8_t *q = malloc(n ? n : 1);
    if (!q)
        abort();
    if (n)
        memcpy(q, p, n);
    return q;
}

/* ---- an independent reader of the format ------------------------------- */

/* HKDF-SHA-256 of key, with salt (12 bytes) or none. */
static void derive_salted(const uint8_t *key, const uint8_t *salt, const char *info,
                          uint8_t out[32])
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *k = EVP_KDF_CTX_new(kdf);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, 32),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, strlen(info)),
        salt ? OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, 12)
             : OSSL_PARAM_construct_end(),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_KDF_derive(k, out, 32, params) != 1)
        abort();
    EVP_KDF_CTX_free(k);
    EVP_KDF_free(kdf);
}

static void derive(const uint8_t *key, const char *info, uint8_t out[32])
{
    derive_salted(key, NULL, info, out);
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

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void le64_store(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

static void le32_store(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

/* XXH3-128 of data seeded with the XXH3-64 of the name, low half first: a
 * version 2 chunk's checksum, and a version 3 index's check. */
static void ref_checksum(const void *data, size_t len, const uint8_t name[32], uint8_t sum[16])
{
    XXH128_hash_t x = XXH3_128bits_withSeed(data, len, XXH3_64bits(name, 32));
    le64_store(sum, x.low64);
    le64_store(sum + 8, x.high64);
}

/* AES-256-GCM decryption of n bytes from in to out under nonce, with aad
 * (alen bytes) and then the name as additional data, checked against tag.
 * Returns 1 if the tag holds. */
static int ref_open(const uint8_t dk[32], const uint8_t nonce[12], const uint8_t *aad, size_t alen,
                    const uint8_t name[32], const uint8_t *in, size_t n, const uint8_t *tag,
                    uint8_t *out)
{
    uint8_t none[TAG_LEN];
    int l;
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    int ok = EVP_DecryptInit_ex(x, EVP_aes_256_gcm(), NULL, dk, nonce) == 1 &&
             EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_TAG, TAG_LEN, (void *)tag) == 1 &&
             (alen == 0 || EVP_DecryptUpdate(x, NULL, &l, aad, (int)alen) == 1) &&
             EVP_DecryptUpdate(x, NULL, &l, name, 32) == 1 &&
             (n == 0 || EVP_DecryptUpdate(x, out, &l, in, (int)n) == 1) &&
             EVP_DecryptFinal_ex(x, out ? out + n : none, &l) == 1;
    EVP_CIPHER_CTX_free(x);
    return ok;
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

/* A version 1 or 2 chunk's payload, decrypted if it is encrypted (NULL if
 * the tag fails). */
static uint8_t *ref_payload(const uint8_t *key, const uint8_t *enc, size_t n,
                            const uint8_t name[32], size_t hlen, size_t *plen_out)
{
    int encrypted = enc[5] & 2;
    if (n < hlen + (encrypted ? TAG_LEN : 0) || (encrypted && !key))
        return NULL;
    size_t plen = n - hlen - (encrypted ? TAG_LEN : 0);
    uint8_t *payload = malloc(plen + 1);
    memcpy(payload, enc + hlen, plen);
    if (encrypted) {
        uint8_t dk[32];
        derive(key, "ckptfs v1 data", dk);
        if (!ref_open(dk, enc + 16, enc, HDR_ENC, name, enc + hlen, plen, enc + n - TAG_LEN,
                      payload)) {
            free(payload);
            return NULL;
        }
    }
    *plen_out = plen;
    return payload;
}

/* A version 1 or 2 chunk: the plaintext (malloc'ed, *len set) or NULL. */
static uint8_t *ref_decode12(const uint8_t *key, const uint8_t *enc, size_t n,
                             const uint8_t name[32], size_t *len)
{
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

/* Version 3, from the layout: pieces of 2^16 bytes, n = ceil(L / 2^16). */
static size_t ref_pieces(size_t plain)
{
    return (plain + PIECE - 1) / PIECE;
}

static size_t ref_piece_len(size_t plain, size_t i)
{
    size_t left = plain - i * PIECE;
    return left < PIECE ? left : PIECE;
}

/* I: the header, 4 n bytes of lengths, 8 n of sums (not ENCRYPTED), the check. */
static size_t ref_index_len(int encrypted, size_t plain)
{
    return (encrypted ? HDR3_ENC + 4 * ref_pieces(plain) : HDR3_PLAIN + 12 * ref_pieces(plain)) +
           CHECK_LEN;
}

/* Nonce k under a chunk's own key: k as a 96-bit big-endian counter. */
static void ref_nonce(uint32_t k, uint8_t out[12])
{
    memset(out, 0, 12);
    out[8] = (uint8_t)(k >> 24);
    out[9] = (uint8_t)(k >> 16);
    out[10] = (uint8_t)(k >> 8);
    out[11] = (uint8_t)k;
}

/* A version 3 index as the layout defines it. */
struct ref_index {
    int encrypted, compressed;
    size_t plain, n, ilen;
    uint8_t dk[32];   /* the chunk's own key, when encrypted */
    uint32_t *stored; /* n stored lengths */
    uint64_t *sums;   /* n XXH3-64s, when not encrypted */
    uint64_t *off;    /* n + 1: piece i (and its tag) is bytes [off[i], off[i+1]) */
};

static void ref_index_free(struct ref_index *ix)
{
    free(ix->stored);
    free(ix->sums);
    free(ix->off);
    memset(ix, 0, sizeof *ix);
}

/* Reads and checks the index at the start of the len bytes at enc, a version
 * 3 chunk named name. Returns 1 and *ix (ref_index_free it), or 0. */
static int ref_index_read(const uint8_t *key, const uint8_t *enc, size_t len,
                          const uint8_t name[32], struct ref_index *ix)
{
    memset(ix, 0, sizeof *ix);
    if (len < HDR3_PLAIN || memcmp(enc, "CKCH", 4) != 0 || enc[4] != 3 || (enc[5] & ~3) ||
        enc[6] != SHIFT || enc[7] != 0)
        return 0;
    ix->encrypted = (enc[5] & 2) != 0;
    ix->compressed = (enc[5] & 1) != 0;
    uint64_t plain = le64(enc + 8);
    if (ix->encrypted != (key != NULL) || plain > CODEC_MAX_CHUNK)
        return 0;
    ix->plain = (size_t)plain;
    ix->n = ref_pieces(ix->plain);
    ix->ilen = ref_index_len(ix->encrypted, ix->plain);
    if (len < ix->ilen)
        return 0;
    size_t hlen = ix->encrypted ? HDR3_ENC : HDR3_PLAIN, clen = ix->ilen - CHECK_LEN;
    if (ix->encrypted) {
        uint8_t n0[12], data_key[32];
        derive(key, "ckptfs v1 data", data_key);
        derive_salted(data_key, enc + 16, "ckptfs v3 chunk", ix->dk);
        ref_nonce(0, n0);
        if (!ref_open(ix->dk, n0, enc, clen, name, NULL, 0, enc + clen, NULL))
            return 0;
    } else {
        uint8_t sum[CHECK_LEN];
        ref_checksum(enc, clen, name, sum);
        if (memcmp(sum, enc + clen, CHECK_LEN) != 0)
            return 0;
    }
    ix->stored = calloc(ix->n + 1, sizeof *ix->stored);
    ix->sums = calloc(ix->n + 1, sizeof *ix->sums);
    ix->off = calloc(ix->n + 1, sizeof *ix->off);
    ix->off[0] = ix->ilen;
    for (size_t i = 0; i < ix->n; i++) {
        size_t s = le32(enc + hlen + 4 * i), p = ref_piece_len(ix->plain, i);
        /* Its plaintext length if raw, less if one zstd frame (never empty);
         * COMPRESSED says whether some piece is. */
        if (s == 0 || s > p || (!ix->compressed && s != p)) {
            ref_index_free(ix);
            return 0;
        }
        ix->stored[i] = (uint32_t)s;
        ix->off[i + 1] = ix->off[i] + s + (ix->encrypted ? TAG_LEN : 0);
        if (!ix->encrypted)
            ix->sums[i] = le64(enc + hlen + 4 * ix->n + 8 * i);
    }
    return 1;
}

/* Piece i, whose bytes (and tag) are at src, to out (room for its
 * plaintext). Returns 1 if it is whole and the piece its index says. */
static int ref_piece(const struct ref_index *ix, const uint8_t name[32], size_t i,
                     const uint8_t *src, uint8_t *out)
{
    size_t s = ix->stored[i], p = ref_piece_len(ix->plain, i);
    uint8_t *b = malloc(s + 1);
    int ok = 1;
    if (ix->encrypted) {
        uint8_t nonce[12];
        ref_nonce((uint32_t)(i + 1), nonce);
        ok = ref_open(ix->dk, nonce, NULL, 0, name, src, s, src + s, b);
    } else {
        memcpy(b, src, s);
    }
    if (ok && s < p) {
        size_t r = ZSTD_decompress(out, p, b, s);
        ok = !ZSTD_isError(r) && r == p;
    } else if (ok) {
        memcpy(out, b, p);
    }
    if (ok && !ix->encrypted)
        ok = XXH3_64bits(out, p) == ix->sums[i];
    free(b);
    return ok;
}

static uint8_t *ref_decode3(const uint8_t *key, const uint8_t *enc, size_t n,
                            const uint8_t name[32], size_t *len)
{
    struct ref_index ix;
    if (!ref_index_read(key, enc, n, name, &ix))
        return NULL;
    uint8_t *out = malloc(ix.plain + 1);
    int ok = ix.off[ix.n] == n; /* to the end of the chunk, exactly */
    for (size_t i = 0; ok && i < ix.n; i++)
        ok = ref_piece(&ix, name, i, enc + ix.off[i], out + i * PIECE);
    *len = ix.plain;
    ref_index_free(&ix);
    if (!ok) {
        free(out);
        return NULL;
    }
    return out;
}

/* Whether byte at of a version 3 chunk lies in a piece stored as a zstd
 * frame and not encrypted: checked by its plaintext's sum alone. */
static int in_frame(const struct ref_index *ix, uint64_t at)
{
    for (size_t i = 0; i < ix->n; i++)
        if (at >= ix->off[i] && at < ix->off[i + 1])
            return !ix->encrypted && ix->stored[i] < ref_piece_len(ix->plain, i);
    return 0;
}

/* Returns the plaintext (malloc'ed, *len set) or NULL. */
static uint8_t *ref_decode(const uint8_t *key, const uint8_t *enc, size_t n, const uint8_t name[32],
                           size_t *len)
{
    if (n < HDR_V1 || memcmp(enc, "CKCH", 4) != 0)
        return NULL;
    if (enc[4] == 3)
        return ref_decode3(key, enc, n, name, len);
    if (enc[4] == 1 || enc[4] == 2)
        return ref_decode12(key, enc, n, name, len);
    return NULL;
}

/* ---- and a writer, for chunks no encoder writes ------------------------- */

/* A piece as a version 3 chunk without a key stores it. */
struct ref_part {
    const uint8_t *bytes;
    size_t stored;
    uint64_t sum;
};

/* Seals the index of the version 3 chunk e (no key), ilen bytes: its check. */
static void ref_seal(uint8_t *e, size_t ilen, const uint8_t name[32])
{
    ref_checksum(e, ilen - CHECK_LEN, name, e + ilen - CHECK_LEN);
}

/* Appends a version 3 chunk without a key, of plain bytes in the n parts,
 * its index sealed. */
static void ref_build3(uint8_t flags, uint64_t plain, const struct ref_part *parts, size_t n,
                       const uint8_t name[32], struct buf *out)
{
    size_t ilen = HDR3_PLAIN + 12 * n + CHECK_LEN;
    uint8_t *h = calloc(1, ilen);
    memcpy(h, "CKCH", 4);
    h[4] = 3;
    h[5] = flags;
    h[6] = SHIFT;
    le64_store(h + 8, plain);
    for (size_t i = 0; i < n; i++) {
        le32_store(h + HDR3_PLAIN + 4 * i, (uint32_t)parts[i].stored);
        le64_store(h + HDR3_PLAIN + 4 * n + 8 * i, parts[i].sum);
    }
    ref_seal(h, ilen, name);
    buf_append(out, h, ilen);
    for (size_t i = 0; i < n; i++)
        buf_append(out, parts[i].bytes, parts[i].stored);
    free(h);
}

/* Appends the version 3 chunk without a key that stores data raw: what the
 * encoder must write for it, byte for byte. */
static void ref_encode3_raw(const uint8_t *data, size_t len, const uint8_t name[32],
                            struct buf *out)
{
    size_t n = ref_pieces(len);
    struct ref_part *parts = calloc(n + 1, sizeof *parts);
    for (size_t i = 0; i < n; i++) {
        size_t p = ref_piece_len(len, i);
        parts[i] = (struct ref_part){ data + i * PIECE, p, XXH3_64bits(data + i * PIECE, p) };
    }
    ref_build3(0, len, parts, n, name, out);
    free(parts);
}

/* Appends a version 2 chunk without a key (what the codec wrote before
 * version 3): the header, the checksum, and a zstd frame if compress and it
 * is smaller, else the plaintext. */
static void ref_encode2(const uint8_t *data, size_t len, const uint8_t name[32], int compress,
                        struct buf *out)
{
    uint8_t h[HDR_PLAIN] = { 'C', 'K', 'C', 'H', 2 };
    size_t bound = ZSTD_compressBound(len), z = 0;
    uint8_t *frame = malloc(bound);
    if (compress) {
        z = ZSTD_compress(frame, bound, data, len, 3);
        if (ZSTD_isError(z) || z >= len)
            z = 0;
    }
    h[5] = z ? 1 : 0;
    le64_store(h + 8, len);
    ref_checksum(data, len, name, h + 16);
    buf_append(out, h, sizeof h);
    buf_append(out, z ? frame : data, z ? z : len);
    free(frame);
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

static int decode_copy(struct codec *c, const uint8_t *enc, size_t len, const uint8_t name[32],
                       struct buf *out)
{
    uint8_t *p = copy_of(enc, len);
    int rc = codec_decode(c, p, len, name, out);
    free(p);
    return rc;
}

/* codec_decode_in_place on a copy of enc. Returns its code; on error the
 * chunk must be neither grown nor traded (codec.h). */
static int decode_in_place_copy(struct codec *c, const uint8_t *enc, size_t len,
                                const uint8_t name[32], const char *what)
{
    struct buf chunk = { 0 }, spare = { 0 };
    CHECK(buf_append(&chunk, enc, len) == 0);
    uint8_t *was = chunk.data;
    size_t cap = chunk.cap, start = 0;
    int rc = codec_decode_in_place(c, &chunk, name, &start, &spare, NULL, NULL);
    if (rc)
        CHECK(chunk.data == was && chunk.cap == cap && chunk.len <= len,
              "%s: in place, the chunk grew or moved on error", what);
    buf_free(&chunk);
    buf_free(&spare);
    return rc;
}

/* What decoding must say of a chunk whose byte i had bit flipped, by the
 * contract in codec.h: a version byte naming a version this build knows (1
 * to 3) makes a damaged chunk of that version, any other is not one to read;
 * the ENCRYPTED flag set where the codec has no key is -ENOKEY (version 3
 * tells it from the header alone); anything else is damage. */
static int flip_want(const uint8_t *orig, size_t i, int bit, int keyed)
{
    uint8_t v = (uint8_t)(orig[i] ^ (1u << bit));
    if (i == 4)
        return v >= 1 && v <= 3 ? -EBADMSG : -EPROTONOSUPPORT;
    if (i == 5 && (v & 2) && !(orig[5] & 2) && !keyed && (v & ~3) == 0)
        return -ENOKEY;
    return -EBADMSG;
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

    /* The header. */
    size_t n = ref_pieces(size), ilen = ref_index_len(key != NULL, size);
    size_t tlen = key ? TAG_LEN : 0;
    CHECK(ilen == (key ? 28 + 4 * n + 16 : 16 + 12 * n + 16), "%s: index length", ctx);
    CHECK(elen >= ilen + n * tlen, "%s: encoded only %zu bytes", ctx, elen);
    if (elen < HDR3_PLAIN) {
        buf_free(&enc);
        return;
    }
    CHECK(memcmp(e, "CKCH", 4) == 0 && e[4] == 3, "%s: magic/version %u", ctx, e[4]);
    CHECK(e[6] == SHIFT, "%s: piece shift %u", ctx, e[6]);
    CHECK(e[7] == 0, "%s: reserved byte %u", ctx, e[7]);
    CHECK(le64(e + 8) == size, "%s: header length %llu", ctx, (unsigned long long)le64(e + 8));
    int compressed = e[5] & 1;
    CHECK((e[5] & 2) == (key ? 2 : 0), "%s: encrypted flag 0x%02x", ctx, e[5]);
    CHECK((e[5] & ~3) == 0, "%s: stray flags 0x%02x", ctx, e[5]);

    /* Sizes: raw pieces are their plaintext (and a tag); a compressed chunk
     * is smaller than that. */
    if (compressed)
        CHECK(elen < ilen + size + n * tlen, "%s: compressed but not smaller", ctx);
    else
        CHECK(elen == ilen + size + n * tlen, "%s: raw chunk is %zu bytes, not %zu", ctx, elen,
              ilen + size + n * tlen);
    if (level == 0 || size == 0)
        CHECK(!compressed, "%s: compressed at level 0 or size 0", ctx);
    if (level > 0 && size >= 4095 && strcmp(kind, "checkpoint") == 0)
        CHECK(compressed, "%s: compressible data stored raw", ctx);
    if (size >= 64 && strcmp(kind, "random") == 0)
        CHECK(!compressed, "%s: random data stored compressed", ctx);

    /* The index, piece by piece: COMPRESSED says some piece is. */
    struct ref_index ix;
    if (ref_index_read(key, e, elen, name, &ix)) {
        int any = 0;
        CHECK(ix.n == n && ix.ilen == ilen, "%s: index of %zu pieces", ctx, ix.n);
        for (size_t i = 0; i < ix.n; i++) {
            size_t p = ref_piece_len(size, i);
            any |= ix.stored[i] < p;
            if (level > 0 && p >= 4095 && strcmp(kind, "checkpoint") == 0)
                CHECK(ix.stored[i] < p, "%s: piece %zu stored raw", ctx, i);
        }
        CHECK(any == compressed, "%s: COMPRESSED is %d, some piece compressed %d", ctx, compressed,
              any);
        CHECK(ix.off[ix.n] == elen, "%s: the pieces end at %llu of %zu", ctx,
              (unsigned long long)ix.off[ix.n], elen);
        ref_index_free(&ix);
    } else {
        CHECK(0, "%s: the reference reader rejects the index", ctx);
    }

    size_t rlen = 0;
    uint8_t *rp = ref_decode(key, e, elen, name, &rlen);
    CHECK(rp && rlen == size && (size == 0 || memcmp(rp, data, size) == 0),
          "%s: the reference reader disagrees with the format", ctx);
    free(rp);

    /* Without a key a raw chunk has one encoding: the reference writer's. */
    if (!key && !compressed) {
        struct buf want = { 0 };
        ref_encode3_raw(data, size, name, &want);
        CHECK(want.len == elen && memcmp(want.data, e, elen) == 0,
              "%s: not the bytes the layout gives", ctx);
        buf_free(&want);
    }

    struct buf out = prefilled();
    rc = codec_decode(c, e, elen, name, &out);
    CHECK(rc == 0, "%s: decode: %s", ctx, err_msg(rc));
    CHECK(out.len == 6 + size && memcmp(out.data, "prefix", 6) == 0 &&
              (size == 0 || memcmp(out.data + 6, data, size) == 0),
          "%s: decoded bytes differ", ctx);
    CHECK(out.data[out.len] == 0, "%s: out not NUL-terminated", ctx);
    buf_free(&out);

    /* In place: a chunk with neither compressed nor encrypted pieces is its
     * plaintext after codec_raw_offset bytes and stays; any other lands in
     * spare, which trades places with the chunk. */
    CHECK(codec_raw_offset(c, size) == ilen, "%s: raw offset %zu, not %zu", ctx,
          codec_raw_offset(c, size), ilen);
    int stays = !compressed && !key;
    struct buf chunk = { 0 }, spare = { 0 };
    CHECK(buf_append(&chunk, e, elen) == 0);
    uint8_t *was_chunk = chunk.data;
    CHECK(buf_reserve(&spare, size + 64) == 0);
    uint8_t *was_spare = spare.data;
    size_t start = 99, pieces = (size + PIECE - 1) / PIECE, nsums = pieces;
    uint64_t *sums = calloc(pieces + 1, sizeof *sums);
    rc = codec_decode_in_place(c, &chunk, name, &start, &spare, sums, &nsums);
    CHECK(rc == 0, "%s: decode in place: %s", ctx, err_msg(rc));
    /* The pieces' sums come along where the chunk carries them: not encrypted. */
    CHECK(nsums == (key ? 0 : pieces), "%s: %zu sums given, not %zu", ctx, nsums, key ? 0 : pieces);
    for (size_t i = 0; i < nsums; i++) {
        size_t n = size - i * PIECE < PIECE ? size - i * PIECE : PIECE;
        CHECK(sums[i] == XXH3_64bits(data + i * PIECE, n), "%s: sum of piece %zu", ctx, i);
    }
    free(sums);
    CHECK(start <= chunk.len && chunk.len - start == size &&
              (size == 0 || memcmp(chunk.data + start, data, size) == 0),
          "%s: decoded in place bytes differ", ctx);
    if (stays)
        CHECK(start == ilen && chunk.data == was_chunk && spare.data == was_spare,
              "%s: a raw chunk moved (start %zu)", ctx, start);
    else
        CHECK(start == 0 && chunk.data == was_spare && spare.data == was_chunk,
              "%s: decoded elsewhere than into spare (start %zu)", ctx, start);
    buf_free(&chunk);
    buf_free(&spare);

    /* And into a spare with no room: it is grown. */
    if (!stays) {
        struct buf small = { 0 };
        CHECK(buf_append(&chunk, e, elen) == 0);
        start = 99;
        rc = codec_decode_in_place(c, &chunk, name, &start, &small, NULL, NULL);
        CHECK(rc == 0 && start == 0 && chunk.len == size &&
                  (size == 0 || memcmp(chunk.data, data, size) == 0),
              "%s: decode in place, empty spare: %s", ctx, err_msg(rc));
        buf_free(&chunk);
        buf_free(&small);
    }
    buf_free(&enc);
}

static void test_round_trips(void)
{
    static const size_t sizes[] = { 0,     1,     7,       4095,    65535,
                                    65536, 65537, 1000003, 4 * MiB, 4 * MiB + 1 };
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

/* Three full pieces and a short one. */
#define SAMPLE_LEN (3 * PIECE + 1000)

/* A compressible and an incompressible chunk, each with and without a key,
 * so that every check is tried on both piece kinds and both layouts. */
struct sample {
    const uint8_t *key;
    struct codec *c;
    uint8_t data[SAMPLE_LEN];
    uint8_t name[32];
    struct buf enc;
    struct ref_index ix;
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
    if (!ref_index_read(key, s->enc.data, s->enc.len, s->name, &s->ix)) {
        fprintf(stderr, "the reference reader rejects a sample's index\n");
        exit(2);
    }
}

static void sample_free(struct sample *s)
{
    ref_index_free(&s->ix);
    buf_free(&s->enc);
    codec_free(s->c);
}

static const char *sample_desc(const struct sample *s)
{
    return s->key ? (s->compressed ? "encrypted compressed" : "encrypted raw")
                  : (s->compressed ? "compressed" : "raw");
}

static void test_flipped_bytes(struct sample *s)
{
    const char *d = sample_desc(s);
    const struct ref_index *ix = &s->ix;
    size_t tlen = s->key ? TAG_LEN : 0, n = s->enc.len;
    struct buf out = prefilled(), before = prefilled();
    uint8_t *e = malloc(n);
    CHECK(ix->n == 4, "%s: %zu pieces", d, ix->n);

    /* Every bit of the header, the nonce, the index and its check. */
    for (size_t i = 0; i < ix->ilen; i++) {
        for (int bit = 0; bit < 8; bit++) {
            memcpy(e, s->enc.data, n);
            e[i] ^= (uint8_t)(1 << bit);
            int want = flip_want(s->enc.data, i, bit, s->key != NULL);
            int rc = decode_copy(s->c, e, n, s->name, &out);
            CHECK_ERR(rc, want, &out, &before, "%s: index byte %zu bit %d", d, i, bit);
            if (s->key && i >= ix->ilen - CHECK_LEN)
                CHECK(strstr(err_msg(rc), "authentication failed"), "%s: check byte %zu: %s", d, i,
                      err_msg(rc));
            rc = decode_in_place_copy(s->c, e, n, s->name, d);
            CHECK(rc == want, "%s: in place, index byte %zu bit %d: got %d, want %d", d, i, bit, rc,
                  want);
        }
    }
    /* The stored bytes of the first, a middle and the last piece: their
     * first, middle and last bytes. A piece without a key is checked by the
     * sum of its plaintext, so a bit that zstd ignores in a frame (the
     * header's unused bit) may decode: then to exactly the plaintext. */
    size_t pieces[] = { 0, ix->n / 2, ix->n - 1 };
    for (int p = 0; p < 3; p++) {
        size_t from = ix->off[pieces[p]], len = ix->off[pieces[p] + 1] - tlen - from;
        size_t at[] = { from, from + len / 2, from + len - 1 };
        int frame = in_frame(ix, from);
        for (int i = 0; i < 3; i++) {
            memcpy(e, s->enc.data, n);
            e[at[i]] ^= 0x40;
            int rc = decode_copy(s->c, e, n, s->name, &out);
            if (frame && rc == 0) {
                CHECK(out.len == 6 + SAMPLE_LEN && memcmp(out.data + 6, s->data, SAMPLE_LEN) == 0,
                      "%s: piece %zu byte %zu: decoded to other bytes", d, pieces[p], at[i] - from);
                out.len = 6;
            } else {
                CHECK_ERR(rc, -EBADMSG, &out, &before, "%s: piece %zu byte %zu", d, pieces[p],
                          at[i] - from);
            }
            int in_place = decode_in_place_copy(s->c, e, n, s->name, d);
            CHECK(in_place == rc, "%s: in place, piece %zu byte %zu: %d, not %d", d, pieces[p],
                  at[i] - from, in_place, rc);
        }
    }
    /* Every byte of the last piece's tag, and of the first's. */
    for (size_t i = 0; i < 2 * tlen; i++) {
        size_t at = i < tlen ? n - tlen + i : ix->off[1] - tlen + (i - tlen);
        memcpy(e, s->enc.data, n);
        e[at] ^= 0x01;
        int rc = decode_copy(s->c, e, n, s->name, &out);
        CHECK_ERR(rc, -EBADMSG, &out, &before, "%s: %s tag byte %zu", d,
                  i < tlen ? "last" : "first", i % tlen);
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
    const struct ref_index *ix = &s->ix;
    size_t n = s->enc.len, il = ix->ilen, o1 = ix->off[1];
    /* Inside the header, the nonce, the index, at its end and at the
     * pieces' edges, and inside them. */
    size_t cuts[] = { 0,      1,      4,      5,      7,    8,      15,         16,
                      17,     27,     28,     29,     44,   il / 2, il - 17,    il - 16,
                      il - 1, il,     il + 1, o1 - 1, o1,   o1 + 1, ix->off[2], ix->off[3],
                      n / 2,  n - 17, n - 16, n - 15, n - 1 };
    struct buf out = prefilled(), before = prefilled();
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        CHECK_ERR(decode_copy(s->c, s->enc.data, cuts[i], s->name, &out), -EBADMSG, &out, &before,
                  "%s: cut to %zu of %zu bytes", d, cuts[i], n);
        int rc = decode_in_place_copy(s->c, s->enc.data, cuts[i], s->name, d);
        CHECK(rc == -EBADMSG, "%s: in place, cut to %zu of %zu bytes: %d", d, cuts[i], n, rc);
    }
    /* Too long is as wrong as too short. */
    struct buf longer = { 0 };
    buf_append(&longer, s->enc.data, n);
    buf_append(&longer, "", 1);
    CHECK_ERR(decode_copy(s->c, longer.data, longer.len, s->name, &out), -EBADMSG, &out, &before,
              "%s: one byte appended", d);
    int rc = decode_in_place_copy(s->c, longer.data, longer.len, s->name, d);
    CHECK(rc == -EBADMSG, "%s: in place, one byte appended: %d", d, rc);
    buf_free(&longer);
    buf_free(&out);
    buf_free(&before);
}

static void test_version(struct sample *s)
{
    const uint8_t versions[] = { 0, 4, 255 };
    struct buf out = prefilled(), before = prefilled();
    for (int i = 0; i < 3; i++) {
        uint8_t *e = copy_of(s->enc.data, s->enc.len);
        e[4] = versions[i];
        int rc = decode_copy(s->c, e, s->enc.len, s->name, &out);
        CHECK_ERR(rc, -EPROTONOSUPPORT, &out, &before, "%s: version %u", sample_desc(s),
                  versions[i]);
        rc = decode_in_place_copy(s->c, e, s->enc.len, s->name, sample_desc(s));
        CHECK(rc == -EPROTONOSUPPORT, "%s: in place, version %u: %d", sample_desc(s), versions[i],
              rc);
        size_t need = 0;
        struct codec_index *cix = NULL;
        rc = codec_index_parse(s->c, e, s->enc.len, s->name, &need, &cix);
        CHECK(rc == -EPROTONOSUPPORT, "%s: index of version %u: %d", sample_desc(s), versions[i],
              rc);
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
    rc = decode_in_place_copy(s->c, s->enc.data, s->enc.len, other, d);
    CHECK(rc == -EBADMSG, "%s: in place, one bit of the name flipped: %d", d, rc);

    /* A genuine name, of some other genuine chunk: the index is bound to it. */
    memset(data, 'x', sizeof data);
    CHECK(codec_name(s->c, data, sizeof data, other) == 0);
    rc = decode_copy(s->c, s->enc.data, s->enc.len, other, &out);
    CHECK_ERR(rc, -EBADMSG, &out, &before, "%s: another chunk's name", d);
    CHECK(strstr(err_msg(rc), s->key ? "authentication failed" : "does not match its checksum"),
          "%s: message: %s", d, err_msg(rc));
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
    size_t need = 0;
    struct codec_index *ix = NULL;
    rc = codec_index_parse(none, a.data, a.len, name, &need, &ix);
    CHECK(rc == -ENOKEY, "index of an encrypted chunk, codec without a key: %d", rc);

    /* A plain chunk offered to a codec with a key (a substitution). */
    uint8_t pname[32];
    struct buf p = encode(none, data, sizeof data, pname);
    CHECK_ERR(codec_decode(k1, p.data, p.len, name, &out), -EBADMSG, &out, &before,
              "plain chunk, codec with a key");
    CHECK_ERR(codec_decode(k1, p.data, p.len, pname, &out), -EBADMSG, &out, &before,
              "plain chunk under its plain name, codec with a key");
    rc = codec_index_parse(k1, p.data, p.len, pname, &need, &ix);
    CHECK(rc == -EBADMSG, "index of a plain chunk, codec with a key: %d", rc);

    buf_free(&p);
    buf_free(&a);
    buf_free(&b);
    buf_free(&out);
    buf_free(&before);
    codec_free(k1);
    codec_free(k2);
    codec_free(none);
}

/* Chunk a with the n bytes at from put at its offset at (in e, a's room)
 * must not decode, and out must stay as it was. */
static void expect_spliced_fails(struct codec *c, const struct buf *a, uint8_t *e, size_t at,
                                 const uint8_t *from, size_t n, const uint8_t name[32],
                                 const char *d, const char *what)
{
    struct buf out = prefilled(), before = prefilled();
    memcpy(e, a->data, a->len);
    memcpy(e + at, from, n);
    CHECK_ERR(decode_copy(c, e, a->len, name, &out), -EBADMSG, &out, &before, "%s: %s", d, what);
    buf_free(&out);
    buf_free(&before);
}

/* Pieces are tied to their place: swapped within their chunk, or taken from
 * another chunk, they fail (by their nonce, or by the sums in the index). */
static void test_moved_pieces(void)
{
    size_t size = 3 * PIECE + 500;
    uint8_t *data = malloc(size), *other = malloc(size), name[32], oname[32];
    fill_random(data, size, 21);
    fill_random(other, size, 22);
    for (int k = 0; k < 2; k++) {
        const uint8_t *key = k ? key1 : NULL;
        const char *d = key ? "encrypted" : "plain";
        struct codec *c = new_codec(1, key);
        struct buf a = encode(c, data, size, name), b = encode(c, other, size, oname);
        /* The same data again: with a key, another nonce. */
        struct buf a2 = encode(c, data, size, name);
        struct buf out = prefilled(), before = prefilled();
        struct ref_index ix;
        CHECK(ref_index_read(key, a.data, a.len, name, &ix), "%s: reference index", d);
        size_t plen = ix.off[1] - ix.off[0]; /* pieces 0 to 2 are alike in length */
        uint8_t *e = malloc(a.len);

        memcpy(e, a.data, a.len);
        memcpy(e + ix.off[0], a.data + ix.off[1], plen);
        memcpy(e + ix.off[1], a.data + ix.off[0], plen);
        CHECK_ERR(decode_copy(c, e, a.len, name, &out), -EBADMSG, &out, &before,
                  "%s: pieces 0 and 1 swapped", d);

        expect_spliced_fails(c, &a, e, ix.off[1], b.data + ix.off[1], plen, name, d,
                             "piece 1 of another chunk");

        if (key) {
            /* The index of one encoding, the pieces of another of the same data. */
            CHECK(a2.len == a.len && memcmp(a2.data, a.data, a.len) != 0, "%s: same bytes", d);
            expect_spliced_fails(c, &a, e, ix.ilen, a2.data + ix.ilen, a.len - ix.ilen, name, d,
                                 "pieces of another encoding");
            expect_spliced_fails(c, &a, e, ix.off[2], a2.data + ix.off[2], plen, name, d,
                                 "piece 2 of another encoding");
        } else {
            CHECK(a2.len == a.len && memcmp(a2.data, a.data, a.len) == 0,
                  "%s: two encodings differ", d);
        }
        int rc = decode_copy(c, a.data, a.len, name, &out);
        CHECK(rc == 0, "%s: pristine: %s", d, err_msg(rc));
        free(e);
        ref_index_free(&ix);
        buf_free(&a);
        buf_free(&a2);
        buf_free(&b);
        buf_free(&out);
        buf_free(&before);
        codec_free(c);
    }
    free(data);
    free(other);
}

/* ---- pieces ------------------------------------------------------------ */

/* The plaintext bytes pieces [first, first+count) of a chunk of size hold. */
static size_t run_bytes(size_t size, size_t first, size_t count)
{
    size_t end = (first + count) * PIECE;
    return (end < size ? end : size) - first * PIECE;
}

static ssize_t decode_pieces_copy(struct codec *c, const struct codec_index *ix,
                                  const uint8_t name[32], size_t first, size_t count,
                                  const uint8_t *enc, size_t len, uint8_t *out)
{
    uint8_t *p = copy_of(enc, len);
    ssize_t r = codec_decode_pieces(c, ix, name, first, count, p, len, out);
    free(p);
    return r;
}

/* One run of pieces: its span, what decodes from exactly its bytes, and
 * what must not. */
static void piece_run(struct codec *c, const uint8_t *key, const struct codec_index *cix,
                      const struct ref_index *rix, const struct buf *enc, const uint8_t *data,
                      const uint8_t name[32], size_t first, size_t count, const char *ctx)
{
    size_t size = rix->plain, n = rix->n;
    uint64_t off = 0, len = 0;
    codec_index_span(cix, first, count, &off, &len);
    CHECK(off == rix->off[first] && len == rix->off[first + count] - rix->off[first],
          "%s, pieces %zu+%zu: span %llu+%llu", ctx, first, count, (unsigned long long)off,
          (unsigned long long)len);
    if (off != rix->off[first] || len != rix->off[first + count] - rix->off[first])
        return;

    /* Exactly the span's bytes, into exactly count pieces' room. */
    uint8_t *bytes = malloc(len + 1), *out = malloc(count * PIECE);
    memcpy(bytes, enc->data + off, len);
    bytes[len] = enc->data[off + len - 1];
    size_t want = run_bytes(size, first, count);
    ssize_t r = decode_pieces_copy(c, cix, name, first, count, bytes, len, out);
    CHECK(r == (ssize_t)want, "%s, pieces %zu+%zu: %zd bytes (%s), want %zu", ctx, first, count, r,
          r < 0 ? err_msg((int)r) : "", want);
    CHECK(r != (ssize_t)want || memcmp(out, data + first * PIECE, want) == 0,
          "%s, pieces %zu+%zu: decoded bytes differ", ctx, first, count);
    if (first + count == n && size % PIECE)
        CHECK(want < count * PIECE, "%s: the last piece is not short", ctx);

    /* A span one byte short, or one byte long. */
    r = decode_pieces_copy(c, cix, name, first, count, bytes, len - 1, out);
    CHECK(r == -EBADMSG, "%s, pieces %zu+%zu, a byte short: %zd", ctx, first, count, r);
    r = decode_pieces_copy(c, cix, name, first, count, bytes, len + 1, out);
    CHECK(r == -EBADMSG, "%s, pieces %zu+%zu, a byte long: %zd", ctx, first, count, r);

    /* A byte flipped: first, middle, last (the last piece's tag, if any).
     * In a frame without a key, a bit zstd ignores may decode, but only to
     * exactly the plaintext. */
    size_t at[] = { 0, len / 2, len - 1 };
    for (int i = 0; i < 3; i++) {
        bytes[at[i]] ^= 0x10;
        memset(out, 0, count * PIECE);
        r = decode_pieces_copy(c, cix, name, first, count, bytes, len, out);
        if (r >= 0 && in_frame(rix, off + at[i]))
            CHECK(r == (ssize_t)want && memcmp(out, data + first * PIECE, want) == 0,
                  "%s, pieces %zu+%zu, byte %zu flipped: decoded to other bytes", ctx, first, count,
                  at[i]);
        else
            CHECK(r == -EBADMSG, "%s, pieces %zu+%zu, byte %zu flipped: %zd", ctx, first, count,
                  at[i], r);
        if (key && i == 2)
            CHECK(strstr(err_msg((int)r), "authentication failed"), "%s: message: %s", ctx,
                  err_msg((int)r));
        bytes[at[i]] ^= 0x10;
    }

    /* The bytes taken for pieces elsewhere in the chunk. */
    size_t others[] = { first + 1, first - 1, first + count };
    for (int i = 0; i < 3; i++) {
        size_t j = others[i];
        if (j >= n || count > n - j || j == first)
            continue;
        r = decode_pieces_copy(c, cix, name, j, count, bytes, len, out);
        CHECK(r == -EBADMSG, "%s, pieces %zu+%zu decoded as %zu+%zu: %zd", ctx, first, count, j,
              count, r);
    }
    /* With a key the pieces are bound to the name as well. */
    if (key) {
        uint8_t other[32];
        memcpy(other, name, 32);
        other[0] ^= 0x80;
        r = decode_pieces_copy(c, cix, other, first, count, bytes, len, out);
        CHECK(r == -EBADMSG, "%s, pieces %zu+%zu under another name: %zd", ctx, first, count, r);
    }

    /* And the pristine bytes still decode. */
    r = decode_pieces_copy(c, cix, name, first, count, bytes, len, out);
    CHECK(r == (ssize_t)want && memcmp(out, data + first * PIECE, want) == 0,
          "%s, pieces %zu+%zu: pristine bytes: %zd", ctx, first, count, r);
    free(bytes);
    free(out);
}

static void pieces_case(struct codec *c, const uint8_t *key, const uint8_t *data, size_t size,
                        const char *kind)
{
    char ctx[160];
    snprintf(ctx, sizeof ctx, "%zu bytes of %s data, %s", size, kind, key ? "key" : "no key");
    uint8_t name[32];
    struct buf enc = encode(c, data, size, name);
    struct ref_index rix;
    if (!ref_index_read(key, enc.data, enc.len, name, &rix)) {
        CHECK(0, "%s: the reference reader rejects the index", ctx);
        buf_free(&enc);
        return;
    }
    size_t n = rix.n, ilen = rix.ilen, hdr = key ? HDR3_ENC : HDR3_PLAIN, need = 0;
    struct codec_index *ix = NULL;
    int rc = 0;

    /* What to fetch first: exactly the index, or more for a larger limit. */
    CHECK(codec_index_size(c, size) == ilen, "%s: index size %zu, not %zu", ctx,
          codec_index_size(c, size), ilen);
    CHECK(codec_index_size(c, 4 * MiB + 100) >= ilen, "%s: index size for 4 MiB + 100", ctx);

    /* Too few bytes: 1 and what it takes. Short of the header, at least the
     * header and at most the index; past the header, exactly the index. */
    size_t shorts[] = { 0, 1, 4, 5, 8, 15, 16, 17, hdr - 1, hdr, hdr + 1, ilen / 2, ilen - 1 };
    for (size_t i = 0; i < sizeof shorts / sizeof *shorts; i++) {
        size_t have = shorts[i];
        if (have >= ilen)
            continue;
        uint8_t *head = copy_of(enc.data, have);
        need = 0;
        rc = codec_index_parse(c, head, have, name, &need, &ix);
        CHECK(rc == 1, "%s: index from %zu bytes: %d (%s)", ctx, have, rc, err_msg(rc));
        if (have < hdr)
            CHECK(need > have && need >= hdr && need <= ilen, "%s: from %zu bytes, need %zu", ctx,
                  have, need);
        else
            CHECK(need == ilen, "%s: from %zu bytes, need %zu, not %zu", ctx, have, need, ilen);
        free(head);
    }
    /* A reader fetching what need says, from nothing, gets there. */
    size_t have = 0;
    for (int round = 0; round < 4; round++) {
        uint8_t *head = copy_of(enc.data, have);
        rc = codec_index_parse(c, head, have, name, &need, &ix);
        free(head);
        if (rc != 1 || need <= have)
            break;
        have = need;
    }
    CHECK(rc == 0 && have <= ilen, "%s: fetching what need says: %d at %zu bytes", ctx, rc, have);
    if (rc == 0)
        codec_index_free(ix);

    /* The whole chunk parses too; under another name it does not. */
    rc = codec_index_parse(c, enc.data, enc.len, name, &need, &ix);
    CHECK(rc == 0, "%s: index from the whole chunk: %s", ctx, err_msg(rc));
    if (rc == 0)
        codec_index_free(ix);
    uint8_t other[32];
    memcpy(other, name, 32);
    other[5] ^= 0x04;
    uint8_t *head = copy_of(enc.data, ilen);
    rc = codec_index_parse(c, head, ilen, other, &need, &ix);
    CHECK(rc == -EBADMSG, "%s: index under another name: %d", ctx, rc);

    /* Exactly the index's bytes, let go of once parsed. */
    rc = codec_index_parse(c, head, ilen, name, &need, &ix);
    free(head);
    CHECK(rc == 0, "%s: index from %zu bytes: %d (%s)", ctx, ilen, rc, err_msg(rc));
    if (rc != 0) {
        ref_index_free(&rix);
        buf_free(&enc);
        return;
    }
    CHECK(codec_index_plain(ix) == size, "%s: plain %zu", ctx, codec_index_plain(ix));
    CHECK(codec_index_pieces(ix) == n, "%s: %zu pieces, not %zu", ctx, codec_index_pieces(ix), n);

    /* Spans: all pieces, the chunk after its index; past the last, cut. */
    uint64_t off = 0, len = 0;
    codec_index_span(ix, 0, n, &off, &len);
    CHECK(off == ilen && len == enc.len - ilen, "%s: span of all: %llu+%llu", ctx,
          (unsigned long long)off, (unsigned long long)len);
    codec_index_span(ix, 0, n + 7, &off, &len);
    CHECK(off == ilen && len == enc.len - ilen, "%s: span of all and more: %llu+%llu", ctx,
          (unsigned long long)off, (unsigned long long)len);
    if (n) {
        codec_index_span(ix, n - 1, 3, &off, &len);
        CHECK(off == rix.off[n - 1] && len == rix.off[n] - rix.off[n - 1],
              "%s: span of the last and more: %llu+%llu", ctx, (unsigned long long)off,
              (unsigned long long)len);
    }
    codec_index_span(ix, n + 2, 1, &off, &len);
    CHECK(off == enc.len && len == 0, "%s: span past the end: %llu+%llu", ctx,
          (unsigned long long)off, (unsigned long long)len);

    size_t runs[][2] = { { 0, 1 },     { 0, n }, { n - 1, 1 }, { n / 2, 1 }, { n / 2, 2 },
                         { 1, n - 1 }, { 0, 2 }, { n - 2, 2 }, { 1, 1 },     { n / 3, n / 3 } };
    for (size_t i = 0; i < sizeof runs / sizeof *runs; i++) {
        size_t first = runs[i][0], count = runs[i][1];
        if (count == 0 || first >= n || count > n - first)
            continue;
        piece_run(c, key, ix, &rix, &enc, data, name, first, count, ctx);
    }

    /* No pieces: nothing to read, nothing written. */
    size_t firsts[] = { 0, n / 2, n };
    uint8_t sentinel = 0x5a;
    for (int i = 0; i < 3; i++) {
        codec_index_span(ix, firsts[i], 0, &off, &len);
        CHECK(len == 0, "%s: span of no pieces at %zu: %llu bytes", ctx, firsts[i],
              (unsigned long long)len);
        ssize_t r = codec_decode_pieces(c, ix, name, firsts[i], 0, enc.data + off, 0, &sentinel);
        CHECK(r == 0 && sentinel == 0x5a, "%s: no pieces from %zu: %zd", ctx, firsts[i], r);
    }
    /* A run past the last piece is cut as its span is (codec.h). */
    if (n) {
        codec_index_span(ix, n - 1, 2, &off, &len);
        uint8_t *out = malloc((n > 2 ? n : 2) * PIECE);
        size_t want = run_bytes(size, n - 1, 1);
        ssize_t r = decode_pieces_copy(c, ix, name, n - 1, 2, enc.data + off, len, out);
        CHECK(r == (ssize_t)want && memcmp(out, data + (n - 1) * PIECE, want) == 0,
              "%s: pieces %zu+2 of %zu: %zd", ctx, n - 1, n, r);
        r = decode_pieces_copy(c, ix, name, 1, SIZE_MAX, enc.data + rix.off[1],
                               rix.off[n] - rix.off[1], out);
        want = n > 1 ? run_bytes(size, 1, n - 1) : 0;
        CHECK(r == (ssize_t)want && memcmp(out, data + PIECE, want) == 0,
              "%s: pieces 1+SIZE_MAX of %zu: %zd", ctx, n, r);
        free(out);
    }
    codec_index_free(ix);
    ref_index_free(&rix);
    buf_free(&enc);
}

static void test_pieces(void)
{
    static const size_t sizes[] = { 0, 1, 65535, 65536, 65537, 4 * MiB, 4 * MiB + 100 };
    size_t max = 4 * MiB + 100;
    uint8_t *ckpt = malloc(max), *rnd = malloc(max);
    fill_ckpt(ckpt, max, 2);
    fill_random(rnd, max, 2);
    for (int k = 0; k < 2; k++) {
        const uint8_t *key = k ? key1 : NULL;
        struct codec *c = new_codec(1, key);
        for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
            pieces_case(c, key, ckpt, sizes[s], "checkpoint");
            pieces_case(c, key, rnd, sizes[s], "random");
        }
        codec_free(c);
    }
    free(ckpt);
    free(rnd);
}

/* ---- forged chunks ------------------------------------------------------ */

/* Version 3 indexes no encoder writes, made by hand with a valid check (no
 * key, so no tag to forge): what the checks behind the check catch. */
static void test_forged(void)
{
    struct codec *c = new_codec(3, NULL);
    struct buf out = prefilled(), before = prefilled();
    size_t size = 2 * PIECE + 20000;
    uint8_t *data = malloc(size), name[32];
    fill_ckpt(data, size, 5);
    struct buf good = encode(c, data, size, name);
    struct ref_index ix;
    CHECK(ref_index_read(NULL, good.data, good.len, name, &ix), "reference index");
    CHECK(good.data[5] == 1 && ix.n == 3, "sample not compressed in 3 pieces");
    size_t n = good.len, il = ix.ilen, lens = HDR3_PLAIN, sums = HDR3_PLAIN + 4 * ix.n;
    uint8_t *e = malloc(n + 64);
    int rc;

#define FORGE(what, ...)                                                                           \
    do {                                                                                           \
        memcpy(e, good.data, n);                                                                   \
        __VA_ARGS__;                                                                               \
        ref_seal(e, il, name);                                                                     \
        CHECK_ERR(rc = decode_copy(c, e, n, name, &out), -EBADMSG, &out, &before, what);           \
        CHECK(decode_in_place_copy(c, e, n, name, what) == -EBADMSG, "in place: %s", what);        \
    } while (0)

    /* Resealing what was not changed changes nothing. */
    memcpy(e, good.data, n);
    ref_seal(e, il, name);
    CHECK(memcmp(e, good.data, n) == 0, "the reference seal is not the codec's");
    rc = decode_copy(c, e, n, name, &out);
    CHECK(rc == 0 && out.len == 6 + size && memcmp(out.data + 6, data, size) == 0, "the sample: %s",
          err_msg(rc));
    out.len = 6;

    FORGE("unknown flag", e[5] |= 0x04);
    FORGE("compressed flag cleared", e[5] = 0);
    FORGE("piece shift 15", e[6] = 15);
    FORGE("piece shift 17", e[6] = 17);
    FORGE("piece shift 0", e[6] = 0);
    FORGE("reserved byte", e[7] = 1);
    FORGE("length over CODEC_MAX_CHUNK", le64_store(e + 8, (uint64_t)CODEC_MAX_CHUNK + 1));
    CHECK(strstr(err_msg(rc), "over the limit"), "over the limit: %s", err_msg(rc));
    FORGE("length 2^63", le64_store(e + 8, (uint64_t)1 << 63));
    CHECK(strstr(err_msg(rc), "over the limit"), "2^63: %s", err_msg(rc));
    /* Claiming the largest chunk allowed: its index would be far longer than
     * the chunk, and nothing is reserved on the header's word. */
    FORGE("length CODEC_MAX_CHUNK", le64_store(e + 8, CODEC_MAX_CHUNK));
    CHECK(out.cap < 64 * MiB, "reserved %zu bytes for a forged length", out.cap);
    FORGE("length one more", le64_store(e + 8, size + 1));
    FORGE("length one less", le64_store(e + 8, size - 1));
    FORGE("piece 0 stored in 0 bytes", le32_store(e + lens, 0));
    CHECK(strstr(err_msg(rc), "damaged index"), "0 bytes: %s", err_msg(rc));
    FORGE("piece 0 stored in more than it holds", le32_store(e + lens, PIECE + 1));
    CHECK(strstr(err_msg(rc), "damaged index"), "more: %s", err_msg(rc));
    FORGE("last piece stored in more than it holds", le32_store(e + lens + 8, 20001));
    FORGE("piece 0 said raw", le32_store(e + lens, PIECE));
    FORGE("piece 1 one byte longer", le32_store(e + lens + 4, ix.stored[1] + 1));
    FORGE("piece 1 one byte shorter", le32_store(e + lens + 4, ix.stored[1] - 1));
    FORGE("pieces 0 and 1 lengths swapped", le32_store(e + lens, ix.stored[1]),
          le32_store(e + lens + 4, ix.stored[0]));
    FORGE("piece 1's sum", e[sums + 8] ^= 1);
    CHECK(strstr(err_msg(rc), "piece 1 does not match its checksum"), "sum: %s", err_msg(rc));
    FORGE("pieces 0 and 1 sums swapped", le64_store(e + sums, ix.sums[1]),
          le64_store(e + sums + 8, ix.sums[0]));
#undef FORGE

    /* A byte of a piece changed (its frame's magic number), the index intact. */
    memcpy(e, good.data, n);
    e[ix.off[2] + 3] ^= 0x08;
    CHECK_ERR(decode_copy(c, e, n, name, &out), -EBADMSG, &out, &before, "piece 2 changed");
    /* Trailing bytes the index does not account for. */
    memcpy(e, good.data, n);
    memcpy(e + n, good.data + 16, 8);
    CHECK_ERR(decode_copy(c, e, n + 8, name, &out), -EBADMSG, &out, &before, "trailing bytes");

    /* Frames that are not their piece, built by hand, each with the sum of
     * the piece's true plaintext: 64 KiB of zeros. */
    uint8_t *zeros = calloc(1, 4 * PIECE), *frame = malloc(ZSTD_compressBound(4 * PIECE));
    uint64_t zsum = XXH3_64bits(zeros, PIECE);
    struct {
        const char *what;
        size_t frame_of; /* zero bytes the frame holds */
        int junk;        /* a byte after the frame */
    } frames[] = {
        { "a frame of the piece (sanity)", PIECE, 0 },
        { "a frame past its piece", 2 * PIECE, 0 },
        { "a frame of 4 pieces", 4 * PIECE, 0 },
        { "a frame short of its piece", PIECE - 1, 0 },
        { "a frame of nothing", 0, 0 },
        { "a frame and a byte", PIECE, 1 },
    };
    for (size_t i = 0; i < sizeof frames / sizeof *frames; i++) {
        size_t z =
            ZSTD_compress(frame, ZSTD_compressBound(4 * PIECE), zeros, frames[i].frame_of, 3);
        CHECK(!ZSTD_isError(z) && z + 1 < PIECE, "%s: zstd", frames[i].what);
        frame[z] = 0;
        struct ref_part part = { frame, z + (size_t)frames[i].junk, zsum };
        struct buf f = { 0 };
        ref_build3(1, PIECE, &part, 1, name, &f);
        rc = decode_copy(c, f.data, f.len, name, &out);
        if (i == 0) {
            CHECK(rc == 0 && out.len == 6 + PIECE && memcmp(out.data + 6, zeros, PIECE) == 0,
                  "%s: %s", frames[i].what, err_msg(rc));
            out.len = 6;
        } else {
            CHECK_ERR(rc, -EBADMSG, &out, &before, "%s", frames[i].what);
            rc = decode_in_place_copy(c, f.data, f.len, name, frames[i].what);
            CHECK(rc == -EBADMSG, "in place: %s: %d", frames[i].what, rc);
        }
        buf_free(&f);
    }
    free(zeros);
    free(frame);

    free(e);
    free(data);
    ref_index_free(&ix);
    buf_free(&good);
    buf_free(&out);
    buf_free(&before);
    codec_free(c);
}

/* Version 2 chunks are no longer written but still read: made by hand to
 * the layout, and forged the same way. */
static void test_forged_v2(void)
{
    struct codec *c = new_codec(3, NULL);
    struct buf out = prefilled(), before = prefilled();
    uint8_t data[20000], name[32];
    fill_ckpt(data, sizeof data, 5);
    CHECK(codec_name(c, data, sizeof data, name) == 0);
    struct buf good = { 0 }, raw = { 0 };
    ref_encode2(data, sizeof data, name, 1, &good);
    ref_encode2(data, sizeof data, name, 0, &raw);
    CHECK(good.data[5] == 1 && raw.data[5] == 0, "version 2 samples");

    /* Both decode, whole and in place (raw: after the header, in place). */
    for (int k = 0; k < 2; k++) {
        const struct buf *b = k ? &raw : &good;
        out.len = 6;
        int rc = decode_copy(c, b->data, b->len, name, &out);
        CHECK(rc == 0 && out.len == 6 + sizeof data && memcmp(out.data + 6, data, sizeof data) == 0,
              "version 2 %s: %s", k ? "raw" : "compressed", err_msg(rc));
        out.len = 6;
        struct buf chunk = { 0 }, spare = { 0 };
        size_t start = 99;
        buf_append(&chunk, b->data, b->len);
        uint64_t sums[4];
        size_t nsums = 4;
        rc = codec_decode_in_place(c, &chunk, name, &start, &spare, sums, &nsums);
        CHECK(nsums == 0, "version 2 %s: a version 2 chunk gave %zu sums", k ? "raw" : "compressed",
              nsums);
        CHECK(rc == 0 && start == (k ? HDR_PLAIN : 0) && chunk.len - start == sizeof data &&
                  memcmp(chunk.data + start, data, sizeof data) == 0,
              "version 2 %s in place: %s, start %zu", k ? "raw" : "compressed", err_msg(rc), start);
        buf_free(&chunk);
        buf_free(&spare);
        size_t need = 0;
        struct codec_index *ix = NULL;
        rc = codec_index_parse(c, b->data, b->len, name, &need, &ix);
        CHECK(rc == -ENOTSUP, "version 2 %s: index: %d", k ? "raw" : "compressed", rc);
        /* Every bit of the header and checksum flipped. */
        uint8_t *e = malloc(b->len);
        for (size_t i = 0; i < HDR_PLAIN; i++) {
            for (int bit = 0; bit < 8; bit++) {
                memcpy(e, b->data, b->len);
                e[i] ^= (uint8_t)(1 << bit);
                int want = flip_want(b->data, i, bit, 0);
                rc = decode_copy(c, e, b->len, name, &out);
                /* Versions 1 and 2 check that the sizes add up before the key. */
                if (want == -ENOKEY && rc == -EBADMSG)
                    want = -EBADMSG;
                CHECK_ERR(rc, want, &out, &before, "version 2 %s: header byte %zu bit %d",
                          k ? "raw" : "compressed", i, bit);
            }
        }
        free(e);
    }
    out.len = 6;
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
    /* Truncated. */
    size_t cuts[] = { 0, 4, 15, 16, 31, 32, 33, n / 2, n - 1 };
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++)
        CHECK_ERR(decode_copy(c, good.data, cuts[i], name, &out), -EBADMSG, &out, &before,
                  "version 2 cut to %zu of %zu", cuts[i], n);
#undef FORGE

    free(e);
    buf_free(&good);
    buf_free(&raw);
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
 * its layout): later builds must still read them all, and the reference
 * reader must too. */
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
    { "v3 raw", 0, HELLO, "73ba66513fb2ccbd41856d729b68aa6edc1b70afa23f136c04c9478f63706adc",
      "434b4348030010000c000000000000000c000000a16621b61a3199bf8c232692c6101086cbbffc54e4b4d90d68"
      "656c6c6f2c206368756e6b" },
    { "v3 encrypted, raw", 1, HELLO,
      "78edc17f198095fc7d272fe678b575eb3afe2a6a07ab2e8f007c2dca673bbed5",
      "434b4348030210000c000000000000003fe344298c224276ec3cdf220c000000f6b0ed00f3235ce002cdf6dac2"
      "0f2969d105b7142c194eb72e03dcdb87a7a7c8e7fe14e29133143949704f75" },
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
        const char *want = golden[i].text, *what = golden[i].what;
        const uint8_t *key = golden[i].keyed ? key1 : NULL;
        struct codec *c = golden[i].keyed ? keyed : plain;
        uint8_t name[32], enc[160], computed[32];
        size_t n = golden_bytes(i, enc), wlen = strlen(want);
        int rc = codec_name_parse(golden[i].name, name);
        CHECK(rc == 0, "%s: name: %s", what, err_msg(rc));
        CHECK(codec_name(c, want, wlen, computed) == 0);
        CHECK(memcmp(name, computed, 32) == 0, "%s: the name has changed", what);

        /* The reference reader, from the layout, agrees. */
        size_t rlen = 0;
        uint8_t *rp = ref_decode(key, enc, n, name, &rlen);
        CHECK(rp && rlen == wlen && memcmp(rp, want, wlen) == 0,
              "%s: the reference reader disagrees", what);
        free(rp);

        struct buf out = { 0 };
        rc = codec_decode(c, enc, n, name, &out);
        CHECK(rc == 0, "%s: %s", what, err_msg(rc));
        CHECK(out.len == wlen && memcmp(out.data, want, out.len) == 0, "%s: wrong plaintext", what);

        /* Only version 3 has an index; its one piece decodes from its span. */
        size_t need = 0;
        struct codec_index *ix = NULL;
        rc = codec_index_parse(c, enc, n, name, &need, &ix);
        if (enc[4] != 3) {
            CHECK(rc == -ENOTSUP, "%s: index: %d (%s)", what, rc, err_msg(rc));
        } else if (rc != 0) {
            CHECK(0, "%s: index: %s", what, err_msg(rc));
        } else {
            uint64_t off = 0, len = 0;
            uint8_t piece[PIECE];
            CHECK(codec_index_plain(ix) == wlen && codec_index_pieces(ix) == 1, "%s: index", what);
            codec_index_span(ix, 0, 1, &off, &len);
            CHECK(off + len == n, "%s: span %llu+%llu of %zu", what, (unsigned long long)off,
                  (unsigned long long)len, n);
            ssize_t r = codec_decode_pieces(c, ix, name, 0, 1, enc + off, (size_t)len, piece);
            CHECK(r == (ssize_t)wlen && memcmp(piece, want, wlen) == 0, "%s: piece: %zd", what, r);
            codec_index_free(ix);
        }
        /* Without a key, version 3 has one encoding: today's encoder writes
         * these bytes, and the check is the layout's. */
        if (enc[4] == 3 && !key) {
            struct buf now = { 0 };
            uint8_t sealed[160];
            CHECK(codec_encode(c, want, wlen, name, &now) == 0);
            CHECK(now.len == n && memcmp(now.data, enc, n) == 0, "%s: the encoder has changed",
                  what);
            buf_free(&now);
            size_t ilen = ref_index_len(0, wlen);
            memcpy(sealed, enc, n);
            memset(sealed + ilen - CHECK_LEN, 0, CHECK_LEN);
            ref_seal(sealed, ilen, name);
            CHECK(memcmp(sealed, enc, n) == 0, "%s: the index's check is not the layout's", what);
        }

        /* One payload byte changed: each version's check catches it. */
        enc[n - 1 - 16 * golden[i].keyed] ^= 0x20;
        rc = codec_decode(c, enc, n, name, &out);
        CHECK(rc == -EBADMSG, "%s, last byte changed: %s", what, err_msg(rc));
        if (!golden[i].keyed && enc[5] == 0)
            CHECK(strstr(err_msg(rc),
                         enc[4] == 1 ? "does not match its name" : "does not match its checksum"),
                  "%s: message: %s", what, err_msg(rc));
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
        { "moved pieces", test_moved_pieces },
        { "pieces", test_pieces },
        { "forged indexes", test_forged },
        { "forged v2", test_forged_v2 },
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
