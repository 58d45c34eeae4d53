/*
 * The chunk codec (contract in codec.h).
 *
 * Encoded chunk, version 3. The plaintext is cut into pieces of 2^shift
 * bytes (CODEC_PIECE; the last one may be shorter), each compressed and
 * encrypted on its own, so that once a reader has the index at the chunk's
 * start it can fetch and check any run of pieces with one ranged GET: a
 * random 4 KiB read costs a piece, not the whole chunk. All integers are
 * little-endian; n = ceil(L / 2^shift) pieces.
 *
 *   offset  size  field
 *        0     4  magic, the bytes 'C' 'K' 'C' 'H'
 *        4     1  format version, 3 (1 and 2 are still read: below)
 *        5     1  flags: bit 0 COMPRESSED (some piece is), bit 1 ENCRYPTED
 *        6     1  piece shift: 16, pieces of 64 KiB
 *        7     1  reserved, 0
 *        8     8  plaintext length L, at most CODEC_MAX_CHUNK
 *       16    12  salt: random                                (ENCRYPTED only)
 *        H   4 n  each piece's stored length: its plaintext length if it is
 *                 stored raw, less if it is one zstd frame. H = 16, or 28
 *   H+4n     8 n  each piece's XXH3-64 (of its plaintext)      (not ENCRYPTED)
 *   I-16      16  the index's check, over bytes [0, I-16): their XXH3-128
 *                 seeded with the XXH3-64 of the name, low half first; or,
 *                 ENCRYPTED, a GCM tag of no plaintext, with those bytes and
 *                 the name as additional data, under nonce 0
 *      I         piece 0's stored bytes, then (ENCRYPTED) its 16-byte GCM
 *                 tag; piece 1's; ... to the end of the chunk, exactly
 *
 * ENCRYPTED chunks each have their own AES-256 key, derived from the data
 * key by HKDF-SHA-256 with the salt (info "ckptfs v3 chunk"); piece i is the
 * GCM ciphertext of its stored bytes under that key and nonce i+1 (a 96-bit
 * big-endian counter), with the name as additional data. Nonces are then
 * unique by construction; two chunks share a key only if their 96-bit salts
 * collide (below 2^-32 at 2^32 chunks); and one key seals at most 16385
 * pieces, far inside GCM's limits. A piece moved within its chunk or into
 * another fails its tag.
 *
 * How a fetched chunk is checked, and why that suffices:
 *   1. The index, by its check, before anything in it is believed: lengths
 *      that were damaged could make a reader allocate or read anywhere.
 *      Bound to the name (seed, or additional data), so a genuine chunk
 *      copied under another name fails.
 *   2. Each piece: ENCRYPTED, by its tag (only a key holder can make a piece
 *      that passes; a checksum in the clear would let anyone confirm a guess
 *      of the plaintext, which keyed names exist to prevent); else by its
 *      XXH3-64 in the checked index. Anyone who can write the bucket can
 *      forge any chunk (and any snapshot) anyway; what a check can catch is
 *      damage and mix-ups, which these do at a tenth of the CPU of SHA-256.
 *      The pieces' sums are the disk tier's own (blocks.c), unseeded so that
 *      it can keep them instead of hashing the bytes a second time.
 *   3. The tag of an ENCRYPTED piece is checked before it is decompressed:
 *      zstd never sees bytes an attacker chose, unless there is no key.
 * Recomputing the name from the content is left to `ckptctl verify`.
 *
 * Versions 1 and 2, still read: one zstd frame or raw plaintext for the
 * whole chunk, after a header of magic, version, flags (as above), two
 * reserved zero bytes and L (16 bytes), then
 *   version 2: an XXH3-128 of the plaintext seeded as above (16 B), or, if
 *              ENCRYPTED, a nonce (12 B), the payload encrypted whole with
 *              the header and name as additional data, and its GCM tag;
 *   version 1: nothing more (checked against the name, by SHA-256), or, if
 *              ENCRYPTED, as version 2.
 */
#include "cache/codec.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <xxhash.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "util/err.h"
#include "util/le.h"
#include "util/hex.h"

#define MAGIC        CODEC_MAGIC
#define MAGIC_LEN    CODEC_MAGIC_LEN
#define VERSION      3
#define VERSION_2    2
#define VERSION_1    1
#define OFF_VERSION  4
#define OFF_FLAGS    5
#define OFF_RESERVED 6 /* versions 1 and 2 */
#define OFF_SHIFT    6 /* version 3 */
#define OFF_LENGTH   8
#define OFF_SUM      16
#define SUM_LEN      16
#define OFF_NONCE    16
#define NONCE_LEN    12
#define TAG_LEN      16
#define HDR_V1       16 /* a version 1 chunk's header when not encrypted */
#define HDR_PLAIN    (OFF_SUM + SUM_LEN)
#define HDR_ENC      (OFF_NONCE + NONCE_LEN)
#define HDR3_PLAIN   16
#define HDR3_ENC     (OFF_NONCE + NONCE_LEN)
#define CHECK_LEN    16 /* the index's check */
#define PIECE_SHIFT  16

_Static_assert(CODEC_PIECE == (size_t)1 << PIECE_SHIFT, "the piece size is the format's");

#define F_COMPRESSED 0x01
#define F_ENCRYPTED  0x02
#define F_KNOWN      (F_COMPRESSED | F_ENCRYPTED)

#define MAX_LEVEL 19 /* 20..22 need far more memory per context than a chunk justifies */

/* A workspace that once decoded an unusually large chunk should not pin that
 * memory for the life of the process. */
#define SCRATCH_KEEP (64u << 20)

#define INFO_NAME  "ckptfs v1 name"
#define INFO_DATA  "ckptfs v1 data"
#define INFO_CHUNK "ckptfs v3 chunk"

/* EVP update calls take int lengths. */
_Static_assert(CODEC_MAX_CHUNK <= INT_MAX, "a chunk must fit an int");

/* What one encode or decode call needs besides the codec's constants. A
 * fresh zstd context allocates and clears its tables on first use, a fixed
 * cost that is a few percent of a 4 MiB level-1 compress and dominates for
 * small chunks; a cipher context would re-expand the AES key. So workspaces
 * are pooled and reused. A pool rather than thread-local storage ties their
 * lifetime to the codec: codec_free releases everything, and threads that
 * come and go (FUSE spawns them) leave nothing behind. */
struct ws {
    struct ws *next;
    ZSTD_CCtx *cctx; /* level already set */
    ZSTD_DCtx *dctx;
    EVP_CIPHER_CTX *seal; /* AES-256-GCM for encryption; keyed per call */
    EVP_CIPHER_CTX *open; /* and for decryption */
    struct buf scratch;   /* decrypted compressed payload */
};

struct codec {
    int level;
    int keyed;
    uint8_t data_key[CODEC_KEY_LEN];
    EVP_MD *sha256;
    EVP_CIPHER *gcm;
    EVP_MAC_CTX *name_mac; /* HMAC-SHA-256 keyed with name_key; copied per call */
    pthread_mutex_t lock;  /* guards idle */
    struct ws *idle;
};

/* A parsed, sanity-checked header. */
struct hdr {
    const uint8_t *start; /* the header bytes, for the AAD */
    size_t hlen;
    unsigned version;
    unsigned flags;
    size_t plain_len;
    const uint8_t *payload;
    size_t payload_len;
    const uint8_t *tag;
};

/* Turns OpenSSL's error queue into the thread's message, and empties the
 * queue so a later, unrelated failure does not report a stale cause. */
static int ossl_fail(int err, const char *what)
{
    char why[256] = "no detail";
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, why, sizeof why);
    ERR_clear_error();
    return err_set(err, "%s failed: %s", what, why);
}

/* ---- keys and names ---------------------------------------------------- */

/* HKDF-SHA-256 of a 256-bit key, with a salt of slen bytes or none. */
static int derive(const uint8_t *key, const uint8_t *salt, size_t slen, const char *info,
                  uint8_t out[CODEC_KEY_LEN])
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    EVP_KDF_free(kdf);
    if (!kctx)
        return ossl_fail(-ENOMEM, "HKDF-SHA-256 setup");
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, CODEC_KEY_LEN),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, strlen(info)),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, slen),
        OSSL_PARAM_construct_end(),
    };
    if (!salt) /* no salt: HKDF's default, zeros */
        params[3] = OSSL_PARAM_construct_end();
    int ok = EVP_KDF_derive(kctx, out, CODEC_KEY_LEN, params);
    EVP_KDF_CTX_free(kctx);
    return ok == 1 ? 0 : ossl_fail(-EIO, "HKDF-SHA-256");
}

/* One user key serves two purposes, naming and encrypting; each gets its own
 * derived key so that nothing learned about one use (HMAC outputs are public:
 * they are the object names) can bear on the other. No salt: the input is
 * already a uniformly random 256-bit key, and a fixed derivation keeps names
 * stable across mounts, which deduplication depends on.
 *
 * Names are keyed when encrypting because a plain SHA-256 of the plaintext
 * is an oracle: anyone who can list the bucket could hash a guessed chunk
 * (a known model file, a config with one unknown field) and look for that
 * name, learning the content without the key. An HMAC under a secret key
 * gives them nothing to compare against. */
static int setup_key(struct codec *c, const uint8_t *key)
{
    uint8_t name_key[CODEC_KEY_LEN];
    int rc = derive(key, NULL, 0, INFO_NAME, name_key);
    if (rc == 0)
        rc = derive(key, NULL, 0, INFO_DATA, c->data_key);
    if (rc == 0) {
        EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
        c->name_mac = mac ? EVP_MAC_CTX_new(mac) : NULL;
        EVP_MAC_free(mac);
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
            OSSL_PARAM_construct_end(),
        };
        if (!c->name_mac || EVP_MAC_init(c->name_mac, name_key, sizeof name_key, params) != 1)
            rc = ossl_fail(-ENOMEM, "HMAC-SHA-256 setup");
    }
    OPENSSL_cleanse(name_key, sizeof name_key);
    c->keyed = rc == 0;
    return rc;
}

/* The keyed MAC context is shared and read-only; each call works on a copy,
 * which keeps codec_name() usable on a const codec from any thread. */
static int name_of(const struct codec *c, const void *data, size_t len,
                   uint8_t name[CODEC_NAME_LEN])
{
    if (!c->name_mac) {
        if (EVP_Digest(data, len, name, NULL, c->sha256, NULL) != 1)
            return ossl_fail(-ENOMEM, "SHA-256");
        return 0;
    }
    size_t n = 0;
    EVP_MAC_CTX *m = EVP_MAC_CTX_dup(c->name_mac);
    int ok = m && EVP_MAC_update(m, data, len) == 1 &&
             EVP_MAC_final(m, name, &n, CODEC_NAME_LEN) == 1 && n == CODEC_NAME_LEN;
    EVP_MAC_CTX_free(m);
    return ok ? 0 : ossl_fail(-ENOMEM, "HMAC-SHA-256");
}

int codec_name(const struct codec *c, const void *data, size_t len, uint8_t name[CODEC_NAME_LEN])
{
    return name_of(c, data, len, name);
}

int codec_check_name(const struct codec *c, const void *data, size_t len,
                     const uint8_t name[CODEC_NAME_LEN])
{
    uint8_t got[CODEC_NAME_LEN];
    char hex[2 * CODEC_NAME_LEN + 1];
    int rc = name_of(c, data, len, got);
    if (rc || CRYPTO_memcmp(got, name, CODEC_NAME_LEN) == 0)
        return rc;
    codec_name_hex(name, hex);
    return err_set(-EBADMSG, "chunk %s: content does not match its name", hex);
}

/* The checksum of a plaintext that is not encrypted (rule 2 at the top). */
static void checksum(const void *data, size_t len, const uint8_t name[CODEC_NAME_LEN],
                     uint8_t sum[SUM_LEN])
{
    XXH128_hash_t x = XXH3_128bits_withSeed(data, len, XXH3_64bits(name, CODEC_NAME_LEN));
    le_store(sum, x.low64, 8);
    le_store(sum + 8, x.high64, 8);
}

/* ---- workspaces --------------------------------------------------------- */

static void ws_free(struct ws *w)
{
    ZSTD_freeCCtx(w->cctx);
    ZSTD_freeDCtx(w->dctx);
    EVP_CIPHER_CTX_free(w->seal);
    EVP_CIPHER_CTX_free(w->open);
    buf_free(&w->scratch);
    free(w);
}

static struct ws *ws_get(struct codec *c)
{
    pthread_mutex_lock(&c->lock);
    struct ws *w = c->idle;
    if (w)
        c->idle = w->next;
    pthread_mutex_unlock(&c->lock);
    return w ? w : calloc(1, sizeof *w);
}

static void ws_put(struct codec *c, struct ws *w)
{
    if (w->scratch.cap > SCRATCH_KEEP)
        buf_free(&w->scratch);
    pthread_mutex_lock(&c->lock);
    w->next = c->idle;
    c->idle = w;
    pthread_mutex_unlock(&c->lock);
}

static ZSTD_CCtx *ws_cctx(const struct codec *c, struct ws *w)
{
    if (w->cctx)
        return w->cctx;
    ZSTD_CCtx *z = ZSTD_createCCtx();
    /* The decoder insists on the content size, so do not rely on the default. */
    if (z && (ZSTD_isError(ZSTD_CCtx_setParameter(z, ZSTD_c_compressionLevel, c->level)) ||
              ZSTD_isError(ZSTD_CCtx_setParameter(z, ZSTD_c_contentSizeFlag, 1)))) {
        ZSTD_freeCCtx(z);
        z = NULL;
    }
    return w->cctx = z;
}

static ZSTD_DCtx *ws_dctx(struct ws *w)
{
    if (!w->dctx)
        w->dctx = ZSTD_createDCtx();
    return w->dctx;
}

/* The cipher is fetched once; each call sets its key and nonce. */
static EVP_CIPHER_CTX *ws_cipher(const struct codec *c, struct ws *w, int enc)
{
    EVP_CIPHER_CTX **slot = enc ? &w->seal : &w->open;
    if (*slot)
        return *slot;
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    if (x && EVP_CipherInit_ex2(x, c->gcm, c->data_key, NULL, enc, NULL) != 1) {
        EVP_CIPHER_CTX_free(x);
        x = NULL;
    }
    return *slot = x;
}

/* ---- pieces and their nonces -------------------------------------------- */

static size_t pieces_of(size_t plain)
{
    return (plain + CODEC_PIECE - 1) / CODEC_PIECE;
}

/* Piece i's plaintext length in a chunk of plain bytes. */
static size_t piece_len(size_t plain, size_t i)
{
    size_t left = plain - i * CODEC_PIECE;
    return left < CODEC_PIECE ? left : CODEC_PIECE;
}

static size_t header_len(int encrypted)
{
    return encrypted ? HDR3_ENC : HDR3_PLAIN;
}

/* Where piece 0 starts: the header, the index and its check. */
static size_t index_len(int encrypted, size_t plain)
{
    return header_len(encrypted) + pieces_of(plain) * (encrypted ? 4 : 12) + CHECK_LEN;
}

/* An encrypted chunk's own key, from its salt. */
static int chunk_key(const struct codec *c, const uint8_t *salt, uint8_t key[CODEC_KEY_LEN])
{
    return derive(c->data_key, salt, NONCE_LEN, INFO_CHUNK, key);
}

/* Nonce k under a chunk's key: k as a 96-bit big-endian counter. */
static void nonce_for(uint32_t k, uint8_t out[NONCE_LEN])
{
    memset(out, 0, NONCE_LEN);
    le_store(out + NONCE_LEN - 4, __builtin_bswap32(k), 4);
}

/* AES-256-GCM of n bytes from in to out (in place if equal) under key and
 * nonce, with aad and the name as additional data: encrypting (enc),
 * writes the tag; else checks it, -EBADMSG naming the chunk (hex) if it
 * fails. */
static int gcm(const struct codec *c, struct ws *w, int enc, const uint8_t *key,
               const uint8_t nonce[NONCE_LEN], const uint8_t *aad, size_t alen,
               const uint8_t name[CODEC_NAME_LEN], const uint8_t *in, size_t n, uint8_t *out,
               uint8_t *tag, const char *hex)
{
    EVP_CIPHER_CTX *x = ws_cipher(c, w, enc);
    int l;
    if (!x)
        return ossl_fail(-ENOMEM, "AES-256-GCM setup");
    if (EVP_CipherInit_ex2(x, NULL, key, nonce, enc, NULL) != 1 ||
        (!enc && EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) != 1) ||
        (alen && EVP_CipherUpdate(x, NULL, &l, aad, (int)alen) != 1) ||
        EVP_CipherUpdate(x, NULL, &l, name, CODEC_NAME_LEN) != 1 ||
        (n && EVP_CipherUpdate(x, out, &l, in, (int)n) != 1))
        return ossl_fail(-EIO, enc ? "AES-256-GCM encryption" : "AES-256-GCM decryption");
    uint8_t none[TAG_LEN]; /* GCM's final step writes nothing; out may be NULL */
    if (EVP_CipherFinal_ex(x, out ? out + n : none, &l) != 1) {
        if (enc)
            return ossl_fail(-EIO, "AES-256-GCM encryption");
        ERR_clear_error();
        return err_set(-EBADMSG, "chunk %s: authentication failed (wrong key or damaged)", hex);
    }
    if (enc && EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) != 1)
        return ossl_fail(-EIO, "AES-256-GCM encryption");
    return 0;
}

/* ---- encode ------------------------------------------------------------ */

/* Returns 1 with the frame in dst, 0 when the piece is to be stored raw, or
 * an error. dst has room for len bytes, and zstd is given one less: a frame
 * that does not fit is no gain, and stored raw the piece decodes with a
 * plain copy (or none). */
static int deflate_piece(const struct codec *c, struct ws *w, const void *src, size_t len,
                         uint8_t *dst, size_t *n)
{
    if (c->level == 0 || len == 0)
        return 0;
    ZSTD_CCtx *z = ws_cctx(c, w);
    if (!z)
        return err_set(-ENOMEM, "cannot create a zstd compression context");
    size_t r = ZSTD_compress2(z, dst, len - 1, src, len);
    if (!ZSTD_isError(r)) {
        *n = r;
        return 1;
    }
    if (ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall)
        return 0;
    return err_set(-ENOMEM, "zstd compression failed: %s", ZSTD_getErrorName(r));
}

/* Piece i of data at dst (room for its plaintext and a tag); its stored
 * length into the index. Returns the bytes written, or an error. */
static ssize_t pack_piece(const struct codec *c, struct ws *w, const uint8_t *key,
                          const uint8_t *data, size_t len, const uint8_t name[CODEC_NAME_LEN],
                          size_t i, uint8_t *chunk, uint8_t *dst, int *compressed)
{
    size_t hlen = header_len(c->keyed), n = pieces_of(len), plain = piece_len(len, i), stored = 0;
    const uint8_t *src = data + i * CODEC_PIECE;
    int packed = deflate_piece(c, w, src, plain, dst, &stored);
    if (packed < 0)
        return packed;
    if (!packed)
        stored = plain;
    *compressed |= packed;
    le_store(chunk + hlen + 4 * i, stored, 4);
    if (!c->keyed) {
        le_store(chunk + hlen + 4 * n + 8 * i, XXH3_64bits(src, plain), 8);
        if (!packed)
            memcpy(dst, src, plain);
        return (ssize_t)stored;
    }
    uint8_t nonce[NONCE_LEN];
    nonce_for((uint32_t)i + 1, nonce);
    int rc =
        gcm(c, w, 1, key, nonce, NULL, 0, name, packed ? dst : src, stored, dst, dst + stored, "");
    return rc ? rc : (ssize_t)(stored + TAG_LEN);
}

/* The index's check (rule 1 at the top), over the bytes before it; key is
 * the chunk's own, if it is encrypted. */
static int index_check(const struct codec *c, struct ws *w, int enc, const uint8_t *key,
                       const uint8_t *chunk, size_t ilen, const uint8_t name[CODEC_NAME_LEN],
                       uint8_t *check, const char *hex)
{
    if (!(chunk[OFF_FLAGS] & F_ENCRYPTED)) {
        uint8_t sum[CHECK_LEN];
        checksum(chunk, ilen - CHECK_LEN, name, sum);
        if (enc)
            memcpy(check, sum, CHECK_LEN);
        else if (memcmp(sum, check, CHECK_LEN) != 0)
            return err_set(-EBADMSG, "chunk %s: damaged index (it does not match its checksum)",
                           hex);
        return 0;
    }
    uint8_t nonce[NONCE_LEN];
    nonce_for(0, nonce);
    return gcm(c, w, enc, key, nonce, chunk, ilen - CHECK_LEN, name, NULL, 0, NULL, check, hex);
}

/* Writes the encoded chunk at dst (room for encode_room bytes). */
static int pack(const struct codec *c, struct ws *w, const uint8_t *data, size_t len,
                const uint8_t name[CODEC_NAME_LEN], uint8_t *dst, size_t *total)
{
    size_t ilen = index_len(c->keyed, len), pos = ilen;
    int compressed = 0, rc = 0;
    uint8_t key[CODEC_KEY_LEN];
    memcpy(dst, MAGIC, MAGIC_LEN);
    dst[OFF_VERSION] = VERSION;
    dst[OFF_SHIFT] = PIECE_SHIFT;
    dst[OFF_SHIFT + 1] = 0;
    le_store(dst + OFF_LENGTH, len, 8);
    /* A random salt, hence a key of its own: no nonce state has to survive
     * a crash (the top of the file says why this suffices). */
    if (c->keyed && RAND_bytes(dst + OFF_NONCE, NONCE_LEN) != 1)
        return ossl_fail(-EIO, "drawing a random salt");
    if (c->keyed && (rc = chunk_key(c, dst + OFF_NONCE, key)) != 0)
        return rc;
    for (size_t i = 0; rc == 0 && i < pieces_of(len); i++) {
        ssize_t put = pack_piece(c, w, key, data, len, name, i, dst, dst + pos, &compressed);
        rc = put < 0 ? (int)put : 0;
        pos += put < 0 ? 0 : (size_t)put;
    }
    dst[OFF_FLAGS] = (uint8_t)((compressed ? F_COMPRESSED : 0) | (c->keyed ? F_ENCRYPTED : 0));
    *total = pos;
    if (rc == 0)
        rc = index_check(c, w, 1, key, dst, ilen, name, dst + ilen - CHECK_LEN, "");
    OPENSSL_cleanse(key, sizeof key);
    return rc;
}

/* The most an encoding of len bytes takes: every piece raw. */
static size_t encode_room(const struct codec *c, size_t len)
{
    return index_len(c->keyed, len) + len + (c->keyed ? pieces_of(len) * TAG_LEN : 0);
}

int codec_encode(struct codec *c, const void *data, size_t len, const uint8_t name[CODEC_NAME_LEN],
                 struct buf *out)
{
    if (len > CODEC_MAX_CHUNK)
        return err_set(-EINVAL, "chunk of %zu bytes exceeds the %u-byte limit", len,
                       CODEC_MAX_CHUNK);
    if (buf_reserve(out, encode_room(c, len)))
        return err_set(-ENOMEM, "no memory to encode a chunk of %zu bytes", len);
    struct ws *w = ws_get(c);
    if (!w)
        return err_set(-ENOMEM, "no memory to encode a chunk");
    size_t total = 0;
    int rc = pack(c, w, data, len, name, out->data + out->len, &total);
    ws_put(c, w);
    if (rc)
        return rc;
    out->len += total;
    out->data[out->len] = 0;
    return 0;
}

/* ---- decode ------------------------------------------------------------ */

static int bad_version(unsigned version, const char *hex)
{
    return err_set(-EPROTONOSUPPORT,
                   "chunk %s: format version %u is not one this build reads (%u to %u)", hex,
                   version, VERSION_1, VERSION);
}

/* Whether a chunk's encryption is the codec's: any version. */
static int check_keying(const struct codec *c, unsigned flags, const char *hex)
{
    if ((flags & F_ENCRYPTED) && !c->keyed)
        return err_set(-ENOKEY, "chunk %s is encrypted and no key is configured", hex);
    /* A codec with a key only writes encrypted chunks, so a plain one was
     * put there by someone else, to be taken for ours. */
    if (!(flags & F_ENCRYPTED) && c->keyed)
        return err_set(-EBADMSG, "chunk %s: not encrypted, but a key is configured", hex);
    return 0;
}

/* The plaintext length a header declares, if it is within the limit. */
static int check_length(const uint8_t *p, const char *hex, size_t *plain)
{
    uint64_t l = le_load(p + OFF_LENGTH, 8);
    if (l > CODEC_MAX_CHUNK)
        return err_set(-EBADMSG, "chunk %s: damaged header (declares %llu bytes, over the limit)",
                       hex, (unsigned long long)l);
    *plain = (size_t)l;
    return 0;
}

/* Checks everything that can be checked without the key or the payload's
 * content, in the order codec.h promises, so that nothing is allocated or
 * decrypted on the word of a header that does not add up. */
static int parse(const struct codec *c, const uint8_t *p, size_t len, const char *hex,
                 struct hdr *h)
{
    if (len < HDR_V1) /* the shortest header of any version */
        return err_set(-EBADMSG, "chunk %s: truncated (%zu bytes, less than a header)", hex, len);
    if (memcmp(p, MAGIC, MAGIC_LEN) != 0)
        return err_set(-EBADMSG, "chunk %s: not a ckptfs chunk (bad magic)", hex);
    h->version = p[OFF_VERSION];
    if (h->version != VERSION_2 && h->version != VERSION_1)
        return bad_version(h->version, hex);
    h->flags = p[OFF_FLAGS];
    if ((h->flags & ~F_KNOWN) || p[OFF_RESERVED] || p[OFF_RESERVED + 1])
        return err_set(-EBADMSG, "chunk %s: damaged header (unknown flags 0x%02x)", hex, h->flags);

    int encrypted = h->flags & F_ENCRYPTED;
    h->start = p;
    h->hlen = encrypted ? HDR_ENC : h->version == VERSION_1 ? HDR_V1 : HDR_PLAIN;
    size_t tlen = encrypted ? TAG_LEN : 0;
    if (len < h->hlen + tlen)
        return err_set(-EBADMSG, "chunk %s: truncated (%zu bytes)", hex, len);
    int rc = check_length(p, hex, &h->plain_len);
    if (rc)
        return rc;
    h->payload = p + h->hlen;
    h->payload_len = len - h->hlen - tlen;
    h->tag = h->payload + h->payload_len;
    /* The encoder only compresses when that saves space. */
    int fits = (h->flags & F_COMPRESSED) ? h->payload_len > 0 && h->payload_len < h->plain_len
                                         : h->payload_len == h->plain_len;
    if (!fits)
        return err_set(-EBADMSG, "chunk %s: truncated or damaged (%zu payload bytes for %zu)", hex,
                       h->payload_len, h->plain_len);
    return check_keying(c, h->flags, hex);
}

/* Decrypts into dst and checks the tag; dst has room for payload_len. */
static int open_chunk(const struct codec *c, struct ws *w, const struct hdr *h,
                      const uint8_t name[CODEC_NAME_LEN], uint8_t *dst, const char *hex)
{
    return gcm(c, w, 0, c->data_key, h->start + OFF_NONCE, h->start, h->hlen, name, h->payload,
               h->payload_len, dst, (uint8_t *)h->tag, hex);
}

/* Before anything is reserved for it: exactly one frame, spanning the
 * payload, declaring the size the header declares. Without a key both sizes
 * are only claims, but they must agree and cannot exceed CODEC_MAX_CHUNK. */
static int check_frame(const uint8_t *src, size_t n, size_t want, const char *hex)
{
    if (ZSTD_findFrameCompressedSize(src, n) != n || ZSTD_getFrameContentSize(src, n) != want)
        return err_set(-EBADMSG, "chunk %s: damaged compressed payload", hex);
    return 0;
}

/* dst has room for exactly want bytes, so an overlong frame fails too. */
static int inflate_chunk(struct ws *w, const uint8_t *src, size_t n, uint8_t *dst, size_t want,
                         const char *hex)
{
    ZSTD_DCtx *z = ws_dctx(w);
    if (!z)
        return err_set(-ENOMEM, "cannot create a zstd decompression context");
    size_t r = ZSTD_decompressDCtx(z, dst, want, src, n);
    if (ZSTD_isError(r))
        return err_set(-EBADMSG, "chunk %s: damaged compressed payload: %s", hex,
                       ZSTD_getErrorName(r));
    if (r != want)
        return err_set(-EBADMSG, "chunk %s: decompressed to %zu bytes, not %zu", hex, r, want);
    return 0;
}

/* The tag is checked before decompressing: zstd never sees bytes an
 * attacker chose, unless there is no key to check them with. */
static int unpack_compressed(const struct codec *c, struct ws *w, const struct hdr *h,
                             const uint8_t name[CODEC_NAME_LEN], struct buf *out, const char *hex)
{
    const uint8_t *payload = h->payload;
    if (h->flags & F_ENCRYPTED) {
        if (buf_reserve(&w->scratch, h->payload_len))
            return err_set(-ENOMEM, "no memory to decode chunk %s", hex);
        int rc = open_chunk(c, w, h, name, w->scratch.data, hex);
        if (rc)
            return rc;
        payload = w->scratch.data;
    }
    int rc = check_frame(payload, h->payload_len, h->plain_len, hex);
    if (rc)
        return rc;
    if (buf_reserve(out, h->plain_len))
        return err_set(-ENOMEM, "no memory to decode chunk %s", hex);
    return inflate_chunk(w, payload, h->payload_len, out->data + out->len, h->plain_len, hex);
}

/* Raw: plain_len equals the payload length, so reserving it is safe. */
static int unpack_raw(const struct codec *c, struct ws *w, const struct hdr *h,
                      const uint8_t name[CODEC_NAME_LEN], struct buf *out, const char *hex)
{
    if (buf_reserve(out, h->plain_len))
        return err_set(-ENOMEM, "no memory to decode chunk %s", hex);
    if (h->flags & F_ENCRYPTED)
        return open_chunk(c, w, h, name, out->data + out->len, hex);
    if (h->plain_len)
        memcpy(out->data + out->len, h->payload, h->plain_len);
    return 0;
}

/* The plaintext's check, as rules 1 to 3 at the top say (the tag of an
 * encrypted chunk has passed already). */
static int check_plain(const struct codec *c, const struct hdr *h,
                       const uint8_t name[CODEC_NAME_LEN], const uint8_t *plain, const char *hex)
{
    if (h->version == VERSION_1)
        return codec_check_name(c, plain, h->plain_len, name);
    if (h->flags & F_ENCRYPTED)
        return 0;
    uint8_t sum[SUM_LEN];
    checksum(plain, h->plain_len, name, sum);
    if (memcmp(sum, h->start + OFF_SUM, SUM_LEN) != 0)
        return err_set(-EBADMSG, "chunk %s: content does not match its checksum", hex);
    return 0;
}

/* Leaves the plaintext at out->data + out->len without committing it, so a
 * failure leaves out as it was. */
static int unpack(const struct codec *c, struct ws *w, const struct hdr *h,
                  const uint8_t name[CODEC_NAME_LEN], struct buf *out, const char *hex)
{
    int rc = (h->flags & F_COMPRESSED) ? unpack_compressed(c, w, h, name, out, hex)
                                       : unpack_raw(c, w, h, name, out, hex);
    return rc ? rc : check_plain(c, h, name, out->data + out->len, hex);
}

/* The plaintext, len bytes decoded into spare, becomes chunk; the chunk's
 * old buffer is handed back in spare. */
static void trade(struct buf *chunk, struct buf *spare, size_t len)
{
    struct buf old = *chunk;
    *chunk = *spare;
    *spare = old;
    chunk->len = len;
}

/* The plaintext of h, in chunk's own bytes where it can be (a raw payload,
 * decrypted in place), else decompressed into spare, which then trades
 * places with chunk. */
static int unpack_in_place(const struct codec *c, struct ws *w, const struct hdr *h,
                           const uint8_t name[CODEC_NAME_LEN], struct buf *chunk, size_t *start,
                           struct buf *spare, const char *hex)
{
    if (h->flags & F_COMPRESSED) {
        spare->len = 0;
        int rc = unpack(c, w, h, name, spare, hex);
        if (rc)
            return rc;
        trade(chunk, spare, h->plain_len);
        *start = 0;
        return 0;
    }
    uint8_t *payload = chunk->data + (h->payload - chunk->data);
    int rc = h->flags & F_ENCRYPTED ? open_chunk(c, w, h, name, payload, hex) : 0;
    if (rc == 0)
        rc = check_plain(c, h, name, payload, hex);
    if (rc == 0) {
        *start = (size_t)(payload - chunk->data);
        chunk->len = *start + h->plain_len;
    }
    return rc;
}

/* ---- decode, version 3 -------------------------------------------------- */

struct codec_index {
    unsigned flags;
    size_t plain, n, ilen;
    uint8_t key[CODEC_KEY_LEN]; /* the chunk's own, if ENCRYPTED */
    uint64_t *off;  /* n + 1 of them: piece i is bytes [off[i], off[i+1]) of the chunk */
    uint64_t *sums; /* n of them; none when ENCRYPTED */
};

void codec_index_free(struct codec_index *ix)
{
    if (ix)
        OPENSSL_cleanse(ix->key, sizeof ix->key);
    free(ix);
}

/* The header's fields, checked as parse() checks a version 2 header. */
static int parse_header3(const struct codec *c, const uint8_t *p, const char *hex, unsigned *flags,
                         size_t *plain)
{
    *flags = p[OFF_FLAGS];
    if ((*flags & ~F_KNOWN) || p[OFF_SHIFT] != PIECE_SHIFT || p[OFF_SHIFT + 1])
        return err_set(-EBADMSG, "chunk %s: damaged header (flags 0x%02x, piece shift %u)", hex,
                       *flags, p[OFF_SHIFT]);
    int rc = check_length(p, hex, plain);
    return rc ? rc : check_keying(c, *flags, hex);
}

/* The pieces' places from their checked lengths. */
static int place_pieces(const uint8_t *p, const char *hex, struct codec_index *ix)
{
    int enc = ix->flags & F_ENCRYPTED;
    size_t hlen = header_len(enc);
    ix->off[0] = ix->ilen;
    for (size_t i = 0; i < ix->n; i++) {
        size_t stored = (size_t)le_load(p + hlen + 4 * i, 4), plain = piece_len(ix->plain, i);
        if (stored == 0 || stored > plain || (!(ix->flags & F_COMPRESSED) && stored != plain))
            return err_set(-EBADMSG, "chunk %s: damaged index (piece %zu: %zu bytes for %zu)", hex,
                           i, stored, plain);
        ix->off[i + 1] = ix->off[i] + stored + (enc ? TAG_LEN : 0);
        if (!enc)
            ix->sums[i] = le_load(p + hlen + 4 * ix->n + 8 * i, 8);
    }
    return 0;
}

/* Rule 1: the index of the len bytes at p, checked. Returns 1 and *need if
 * they are too few to hold it. */
static int parse_index(const struct codec *c, struct ws *w, const uint8_t *p, size_t len,
                       const uint8_t name[CODEC_NAME_LEN], const char *hex, size_t *need,
                       struct codec_index **out)
{
    unsigned flags = 0;
    size_t plain = 0;
    *need = header_len(c->keyed);
    if (len < *need)
        return 1;
    if (memcmp(p, MAGIC, MAGIC_LEN) != 0)
        return err_set(-EBADMSG, "chunk %s: not a ckptfs chunk (bad magic)", hex);
    if (p[OFF_VERSION] == VERSION_1 || p[OFF_VERSION] == VERSION_2)
        return err_set(-ENOTSUP, "chunk %s: a version %u chunk has no piece index", hex,
                       p[OFF_VERSION]);
    if (p[OFF_VERSION] != VERSION)
        return bad_version(p[OFF_VERSION], hex);
    int rc = parse_header3(c, p, hex, &flags, &plain);
    if (rc)
        return rc;
    size_t n = pieces_of(plain), ilen = index_len(flags & F_ENCRYPTED, plain);
    if (len < ilen) {
        *need = ilen;
        return 1;
    }
    uint8_t key[CODEC_KEY_LEN] = { 0 };
    if ((flags & F_ENCRYPTED) && (rc = chunk_key(c, p + OFF_NONCE, key)) != 0)
        return rc;
    if ((rc = index_check(c, w, 0, key, p, ilen, name, (uint8_t *)p + ilen - CHECK_LEN, hex))) {
        OPENSSL_cleanse(key, sizeof key);
        return rc;
    }
    struct codec_index *ix = calloc(1, sizeof *ix + (2 * n + 1) * sizeof(uint64_t));
    if (ix)
        memcpy(ix->key, key, sizeof key);
    OPENSSL_cleanse(key, sizeof key);
    if (!ix)
        return err_set(-ENOMEM, "no memory for the index of chunk %s", hex);
    ix->flags = flags;
    ix->plain = plain;
    ix->n = n;
    ix->ilen = ilen;
    ix->off = (uint64_t *)(ix + 1);
    ix->sums = ix->off + n + 1;
    if ((rc = place_pieces(p, hex, ix)) != 0) {
        codec_index_free(ix);
        return rc;
    }
    *out = ix;
    return 0;
}

/* Rules 2 and 3: piece i, whose stored bytes (and tag) are at src, into
 * dst (room for CODEC_PIECE bytes; src itself for a raw piece checked in
 * place). */
static int decode_piece(const struct codec *c, struct ws *w, const struct codec_index *ix,
                        const uint8_t name[CODEC_NAME_LEN], const char *hex, size_t i,
                        const uint8_t *src, uint8_t *dst)
{
    int enc = ix->flags & F_ENCRYPTED, rc = 0;
    size_t stored = ix->off[i + 1] - ix->off[i] - (enc ? TAG_LEN : 0);
    size_t plain = piece_len(ix->plain, i);
    if (enc) {
        uint8_t nonce[NONCE_LEN], *to = dst;
        nonce_for((uint32_t)i + 1, nonce);
        if (stored < plain && buf_reserve(&w->scratch, stored))
            return err_set(-ENOMEM, "no memory to decode chunk %s", hex);
        if (stored < plain)
            to = w->scratch.data;
        rc = gcm(c, w, 0, ix->key, nonce, NULL, 0, name, src, stored, to, (uint8_t *)src + stored,
                 hex);
        src = to;
    }
    if (rc == 0 && stored < plain)
        rc = inflate_chunk(w, src, stored, dst, plain, hex);
    else if (rc == 0 && src != dst)
        memcpy(dst, src, plain);
    if (rc == 0 && !enc && XXH3_64bits(dst, plain) != ix->sums[i])
        rc = err_set(-EBADMSG, "chunk %s: piece %zu does not match its checksum", hex, i);
    return rc;
}

/* Pieces [first, first+count), whose bytes start at src, to dst. */
static int decode_run(const struct codec *c, struct ws *w, const struct codec_index *ix,
                      const uint8_t name[CODEC_NAME_LEN], const char *hex, size_t first,
                      size_t count, const uint8_t *src, uint8_t *dst)
{
    int rc = 0;
    for (size_t i = first; rc == 0 && i < first + count; i++)
        rc = decode_piece(c, w, ix, name, hex, i, src + (ix->off[i] - ix->off[first]),
                          dst + (i - first) * CODEC_PIECE);
    return rc;
}

/* The index of a whole chunk: it must end where the index says. */
static int parse_whole(const struct codec *c, struct ws *w, const uint8_t *p, size_t len,
                       const uint8_t name[CODEC_NAME_LEN], const char *hex, struct codec_index **ix)
{
    size_t need;
    int rc = parse_index(c, w, p, len, name, hex, &need, ix);
    if (rc == 1)
        return err_set(-EBADMSG, "chunk %s: truncated (%zu bytes, less than its index)", hex, len);
    if (rc == 0 && (*ix)->off[(*ix)->n] != len) {
        rc = err_set(-EBADMSG, "chunk %s: truncated or damaged (%zu bytes, its index says %llu)",
                     hex, len, (unsigned long long)(*ix)->off[(*ix)->n]);
        codec_index_free(*ix);
    }
    return rc;
}

/* The pieces' sums of a chunk just decoded, for codec_decode_in_place. */
static void give_sums(const struct codec_index *ix, uint64_t *sums, size_t *nsums)
{
    if (!sums)
        return;
    if (ix->flags & F_ENCRYPTED || ix->n > *nsums)
        *nsums = 0;
    else
        memcpy(sums, ix->sums, (*nsums = ix->n) * sizeof *sums);
}

/* The plaintext of a whole chunk at out->data + out->len, uncommitted. */
static int unpack3(const struct codec *c, struct ws *w, const uint8_t *p, size_t len,
                   const uint8_t name[CODEC_NAME_LEN], const char *hex, struct buf *out,
                   uint64_t *sums, size_t *nsums)
{
    struct codec_index *ix;
    int rc = parse_whole(c, w, p, len, name, hex, &ix);
    if (rc)
        return rc;
    if (buf_reserve(out, ix->plain))
        rc = err_set(-ENOMEM, "no memory to decode chunk %s", hex);
    else
        rc = decode_run(c, w, ix, name, hex, 0, ix->n, p + ix->ilen, out->data + out->len);
    if (rc == 0)
        give_sums(ix, sums, nsums);
    codec_index_free(ix);
    return rc;
}

/* A chunk with neither compressed nor encrypted pieces is its plaintext,
 * after the index: only checked. Others are decoded into spare, which then
 * trades places with chunk. */
static int unpack3_in_place(const struct codec *c, struct ws *w, struct buf *chunk,
                            const uint8_t name[CODEC_NAME_LEN], size_t *start, struct buf *spare,
                            uint64_t *sums, size_t *nsums, const char *hex)
{
    uint8_t flags = chunk->data[OFF_FLAGS];
    if (flags & (F_COMPRESSED | F_ENCRYPTED)) {
        spare->len = 0;
        int rc = unpack3(c, w, chunk->data, chunk->len, name, hex, spare, sums, nsums);
        if (rc)
            return rc;
        trade(chunk, spare, (size_t)le_load(chunk->data + OFF_LENGTH, 8));
        *start = 0;
        return 0;
    }
    struct codec_index *ix;
    int rc = parse_whole(c, w, chunk->data, chunk->len, name, hex, &ix);
    if (rc)
        return rc;
    uint8_t *plain = chunk->data + ix->ilen;
    rc = decode_run(c, w, ix, name, hex, 0, ix->n, plain, plain);
    if (rc == 0)
        give_sums(ix, sums, nsums);
    *start = ix->ilen;
    codec_index_free(ix);
    return rc;
}

size_t codec_index_size(const struct codec *c, size_t max_plain)
{
    return index_len(c->keyed, max_plain);
}

int codec_index_parse(struct codec *c, const void *head, size_t len,
                      const uint8_t name[CODEC_NAME_LEN], size_t *need, struct codec_index **out)
{
    char hex[2 * CODEC_NAME_LEN + 1];
    codec_name_hex(name, hex);
    struct ws *w = ws_get(c);
    if (!w)
        return err_set(-ENOMEM, "no memory to decode chunk %s", hex);
    int rc = parse_index(c, w, head, len, name, hex, need, out);
    ws_put(c, w);
    return rc;
}

size_t codec_index_plain(const struct codec_index *ix)
{
    return ix->plain;
}

size_t codec_index_pieces(const struct codec_index *ix)
{
    return ix->n;
}

/* Cuts [*first, *first + *count) to the chunk's pieces. */
static void cut(const struct codec_index *ix, size_t *first, size_t *count)
{
    *first = *first < ix->n ? *first : ix->n;
    *count = *count < ix->n - *first ? *count : ix->n - *first;
}

size_t codec_index_span(const struct codec_index *ix, size_t first, size_t count, uint64_t *off,
                        uint64_t *len)
{
    cut(ix, &first, &count);
    *off = ix->off[first];
    *len = ix->off[first + count] - ix->off[first];
    return count;
}

ssize_t codec_decode_pieces(struct codec *c, const struct codec_index *ix,
                            const uint8_t name[CODEC_NAME_LEN], size_t first, size_t count,
                            const void *enc, size_t len, void *out)
{
    char hex[2 * CODEC_NAME_LEN + 1];
    uint64_t off, want;
    codec_name_hex(name, hex);
    cut(ix, &first, &count);
    codec_index_span(ix, first, count, &off, &want);
    if (len != want)
        return err_set(-EBADMSG, "chunk %s: pieces %zu to %zu are %llu bytes, not %zu", hex, first,
                       first + count, (unsigned long long)want, len);
    if (count == 0)
        return 0;
    struct ws *w = ws_get(c);
    if (!w)
        return err_set(-ENOMEM, "no memory to decode chunk %s", hex);
    int rc = decode_run(c, w, ix, name, hex, first, count, enc, out);
    ws_put(c, w);
    size_t end = (first + count) * CODEC_PIECE;
    return rc ? rc : (ssize_t)((end < ix->plain ? end : ix->plain) - first * CODEC_PIECE);
}

size_t codec_encoded_max(const struct codec *c, size_t plain)
{
    return encode_room(c, plain);
}

size_t codec_raw_offset(const struct codec *c, size_t plain)
{
    return index_len(c->keyed, plain);
}

static int is_v3(const uint8_t *p, size_t len)
{
    return len >= HDR3_PLAIN && memcmp(p, MAGIC, MAGIC_LEN) == 0 && p[OFF_VERSION] == VERSION;
}

int codec_decode_in_place(struct codec *c, struct buf *chunk, const uint8_t name[CODEC_NAME_LEN],
                          size_t *start, struct buf *spare, uint64_t *sums, size_t *nsums)
{
    char hex[2 * CODEC_NAME_LEN + 1];
    struct hdr h;
    codec_name_hex(name, hex);
    int v3 = is_v3(chunk->data, chunk->len);
    int rc = v3 ? 0 : parse(c, chunk->data, chunk->len, hex, &h);
    if (rc)
        return rc;
    struct ws *w = ws_get(c);
    if (!w)
        return err_set(-ENOMEM, "no memory to decode chunk %s", hex);
    if (!v3 && sums)
        *nsums = 0;
    rc = v3 ? unpack3_in_place(c, w, chunk, name, start, spare, sums, nsums, hex)
            : unpack_in_place(c, w, &h, name, chunk, start, spare, hex);
    ws_put(c, w);
    return rc;
}

int codec_decode(struct codec *c, const void *enc, size_t len, const uint8_t name[CODEC_NAME_LEN],
                 struct buf *out)
{
    char hex[2 * CODEC_NAME_LEN + 1];
    struct hdr h;
    codec_name_hex(name, hex);
    int v3 = is_v3(enc, len);
    int rc = v3 ? 0 : parse(c, enc, len, hex, &h);
    if (rc)
        return rc;
    struct ws *w = ws_get(c);
    if (!w)
        return err_set(-ENOMEM, "no memory to decode chunk %s", hex);
    rc =
        v3 ? unpack3(c, w, enc, len, name, hex, out, NULL, NULL) : unpack(c, w, &h, name, out, hex);
    ws_put(c, w);
    if (rc)
        return rc;
    out->len += v3 ? (size_t)le_load((const uint8_t *)enc + OFF_LENGTH, 8) : h.plain_len;
    out->data[out->len] = 0;
    return 0;
}

/* ---- lifetime ---------------------------------------------------------- */

int codec_new(const struct codec_options *opt, struct codec **out)
{
    if (opt->level < 0 || opt->level > MAX_LEVEL)
        return err_set(-EINVAL, "compression level %d is out of range (0 to %d)", opt->level,
                       MAX_LEVEL);
    struct codec *c = calloc(1, sizeof *c);
    if (!c)
        return err_set(-ENOMEM, "no memory for a codec");
    c->level = opt->level;
    pthread_mutex_init(&c->lock, NULL);
    /* Fetched once: EVP_sha256() and friends would look the algorithm up in
     * the provider on every use. */
    c->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    c->gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    int rc = c->sha256 && c->gcm ? 0 : ossl_fail(-ENOMEM, "loading SHA-256 and AES-256-GCM");
    if (rc == 0 && opt->key)
        rc = setup_key(c, opt->key);
    if (rc) {
        codec_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void codec_free(struct codec *c)
{
    if (!c)
        return;
    while (c->idle) {
        struct ws *w = c->idle;
        c->idle = w->next;
        ws_free(w);
    }
    EVP_MAC_CTX_free(c->name_mac);
    EVP_MD_free(c->sha256);
    EVP_CIPHER_free(c->gcm);
    OPENSSL_cleanse(c->data_key, sizeof c->data_key);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* ---- key files and hex ------------------------------------------------- */

static int check_key_mode(int fd, const char *path)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return err_set(-errno, "key file %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return err_set(-EINVAL, "key file %s is not a regular file", path);
    if (st.st_mode & (S_IRGRP | S_IWGRP | S_IROTH | S_IWOTH))
        return err_set(-EACCES,
                       "key file %s is open to group or others (mode %03o); "
                       "the key is the whole secret: chmod 600 it",
                       path, (unsigned)(st.st_mode & 0777));
    return 0;
}

/* Reads up to cap bytes; a file that fills cap is too long to be a key. */
static int read_small(int fd, const char *path, uint8_t *p, size_t cap, size_t *n)
{
    *n = 0;
    while (*n < cap) {
        ssize_t r = read(fd, p + *n, cap - *n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return err_set(-errno, "key file %s: %s", path, strerror(errno));
        if (r == 0)
            break;
        *n += (size_t)r;
    }
    return 0;
}

static int parse_key(const char *path, const uint8_t *p, size_t n, uint8_t key[CODEC_KEY_LEN])
{
    if (n == CODEC_KEY_LEN) {
        memcpy(key, p, CODEC_KEY_LEN);
        return 0;
    }
    size_t digits = 2 * CODEC_KEY_LEN;
    if (n == digits || (n == digits + 1 && p[digits] == '\n')) {
        if (hex_decode((const char *)p, CODEC_KEY_LEN, key, 1) == 0)
            return 0;
        OPENSSL_cleanse(key, CODEC_KEY_LEN);
        return err_set(-EINVAL, "key file %s: 64 characters but not all hex digits", path);
    }
    return err_set(-EINVAL, "key file %s holds %s%zu bytes; a key is 32 raw bytes or 64 hex digits",
                   path, n == digits + 2 ? "at least " : "", n);
}

int codec_load_key(const char *path, uint8_t key[CODEC_KEY_LEN])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return err_set(-errno, "cannot open key file %s: %s", path, strerror(errno));
    uint8_t raw[2 * CODEC_KEY_LEN + 2]; /* 64 digits, a newline, and one byte to see excess */
    size_t n = 0;
    int rc = check_key_mode(fd, path);
    if (rc == 0)
        rc = read_small(fd, path, raw, sizeof raw, &n);
    if (rc == 0)
        rc = parse_key(path, raw, n, key);
    close(fd);
    OPENSSL_cleanse(raw, sizeof raw);
    return rc;
}

void codec_name_hex(const uint8_t name[CODEC_NAME_LEN], char hex[2 * CODEC_NAME_LEN + 1])
{
    hex_encode(name, CODEC_NAME_LEN, hex);
}

/* Lowercase only: names are object keys, and accepting two spellings of one
 * name would let the same chunk be looked up under a key that is not its own. */
int codec_name_parse(const char *hex, uint8_t name[CODEC_NAME_LEN])
{
    uint8_t tmp[CODEC_NAME_LEN];
    /* strnlen stops at the NUL, so a short string is never read past. */
    if (strnlen(hex, 2 * CODEC_NAME_LEN + 1) != 2 * CODEC_NAME_LEN ||
        hex_decode(hex, CODEC_NAME_LEN, tmp, 0) != 0)
        return err_set(-EINVAL, "'%.80s' is not a chunk name (64 lowercase hex digits)", hex);
    memcpy(name, tmp, CODEC_NAME_LEN);
    return 0;
}
