/*
 * The chunk codec (contract in codec.h).
 *
 * Encoded chunk, version 2. All integers are little-endian and every field
 * sits at a fixed offset, so a reader needs no parsing state:
 *
 *   0       4       5       6       8                      16                          H
 *   +-------+-------+-------+-------+-----------------------+---------------------------+
 *   | magic |version| flags | rsvd  |   plaintext length    | checksum (16 B), or, if   |
 *   | CKCH  |   2   |       |   0   |        u64 LE         | ENCRYPTED, nonce (12 B)   |
 *   +-------+-------+-------+-------+-----------------------+---------------------------+
 *   |                       payload (n bytes)                                           |
 *   |  COMPRESSED: one zstd frame, with its content size; else the plaintext            |
 *   |  ENCRYPTED:  the AES-256-GCM ciphertext of the above                              |
 *   +-------------------------------------------------------+---------------------------+
 *                                                           |  GCM tag (16 B)           |
 *                                                           |  only if ENCRYPTED        |
 *                                                           +---------------------------+
 *
 *   offset  size  field
 *        0     4  magic, the bytes 'C' 'K' 'C' 'H'
 *        4     1  format version, 2 (1 is still read: below)
 *        5     1  flags: bit 0 COMPRESSED, bit 1 ENCRYPTED; other bits 0
 *        6     2  reserved, 0
 *        8     8  plaintext length, at most CODEC_MAX_CHUNK
 *       16    16  checksum: XXH3-128 of the plaintext, seeded with the
 *                 XXH3-64 of the name; low half first        (not ENCRYPTED)
 *       16    12  nonce                                      (ENCRYPTED only)
 *        H     n  payload; H = 32, or 28 when ENCRYPTED
 *      H+n    16  GCM tag                                    (ENCRYPTED only)
 *
 * The payload length is not stored: it is what remains once the header and
 * tag are taken off, so a truncated chunk shows up as a length that does not
 * fit (raw: n != plaintext length; compressed: the frame does not end where
 * the payload does; encrypted: the tag fails).
 *
 * How a fetched chunk is checked, and why that suffices:
 *   1. ENCRYPTED: the GCM tag, whose additional data is the whole header,
 *      nonce included, and the chunk's name. An edited header, or a genuine
 *      chunk copied under another name, fails it; and only a key holder can
 *      make a chunk that passes. (A checksum in the clear would let anyone
 *      confirm a guess of the plaintext, which keyed names exist to prevent.)
 *   2. Not encrypted: the checksum. Anyone who can write the bucket can
 *      forge any chunk (and any snapshot) anyway; what a check can catch is
 *      damage and mix-ups, which the checksum does, a chunk under another's
 *      name included (the seed differs), at a tenth of the CPU of SHA-256:
 *      on a cold read, hashing was a third of the daemon's time.
 *   3. Version 1 chunks (header of 16 bytes when not encrypted: no checksum)
 *      are checked against their name, as version 1 did.
 * Recomputing the name from the content is left to `ckptctl verify`.
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

#define MAGIC        "CKCH"
#define MAGIC_LEN    4
#define VERSION      2
#define VERSION_1    1
#define OFF_VERSION  4
#define OFF_FLAGS    5
#define OFF_RESERVED 6
#define OFF_LENGTH   8
#define OFF_SUM      16
#define SUM_LEN      16
#define OFF_NONCE    16
#define NONCE_LEN    12
#define TAG_LEN      16
#define HDR_V1       16 /* a version 1 chunk's header when not encrypted */
#define HDR_PLAIN    (OFF_SUM + SUM_LEN)
#define HDR_ENC      (OFF_NONCE + NONCE_LEN)

#define F_COMPRESSED 0x01
#define F_ENCRYPTED  0x02
#define F_KNOWN      (F_COMPRESSED | F_ENCRYPTED)

#define MAX_LEVEL 19 /* 20..22 need far more memory per context than a chunk justifies */

/* A workspace that once decoded an unusually large chunk should not pin that
 * memory for the life of the process. */
#define SCRATCH_KEEP (64u << 20)

#define INFO_NAME "ckptfs v1 name"
#define INFO_DATA "ckptfs v1 data"

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
    EVP_CIPHER_CTX *seal; /* keyed with data_key for encryption */
    EVP_CIPHER_CTX *open; /* keyed with data_key for decryption */
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

/* One user key serves two purposes, naming and encrypting; each gets its own
 * derived key so that nothing learned about one use (HMAC outputs are public:
 * they are the object names) can bear on the other. No salt: the input is
 * already a uniformly random 256-bit key, and a fixed derivation keeps names
 * stable across mounts, which deduplication depends on. */
static int derive(const uint8_t *key, const char *info, uint8_t out[CODEC_KEY_LEN])
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
        OSSL_PARAM_construct_end(),
    };
    int ok = EVP_KDF_derive(kctx, out, CODEC_KEY_LEN, params);
    EVP_KDF_CTX_free(kctx);
    return ok == 1 ? 0 : ossl_fail(-EIO, "HKDF-SHA-256");
}

/* Names are keyed when encrypting because a plain SHA-256 of the plaintext
 * is an oracle: anyone who can list the bucket could hash a guessed chunk
 * (a known model file, a config with one unknown field) and look for that
 * name, learning the content without the key. An HMAC under a secret key
 * gives them nothing to compare against. */
static int setup_key(struct codec *c, const uint8_t *key)
{
    uint8_t name_key[CODEC_KEY_LEN];
    int rc = derive(key, INFO_NAME, name_key);
    if (rc == 0)
        rc = derive(key, INFO_DATA, c->data_key);
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

/* Keyed once; each chunk then only sets its nonce. */
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

/* ---- encode ------------------------------------------------------------ */

/* Returns 1 with the frame in dst, 0 when the chunk is to be stored raw, or
 * an error. dst has room for len bytes, and zstd is given one less: a frame
 * that does not fit is no gain, and stored raw the chunk decodes with a
 * plain copy. */
static int deflate_chunk(const struct codec *c, struct ws *w, const void *src, size_t len,
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

static int seal(const struct codec *c, struct ws *w, const uint8_t *hdr, size_t hlen,
                const uint8_t name[CODEC_NAME_LEN], const uint8_t *in, size_t n, uint8_t *out)
{
    EVP_CIPHER_CTX *x = ws_cipher(c, w, 1);
    int l;
    if (!x)
        return ossl_fail(-ENOMEM, "AES-256-GCM setup");
    if (EVP_EncryptInit_ex2(x, NULL, NULL, hdr + OFF_NONCE, NULL) != 1 ||
        EVP_EncryptUpdate(x, NULL, &l, hdr, (int)hlen) != 1 ||
        EVP_EncryptUpdate(x, NULL, &l, name, CODEC_NAME_LEN) != 1 ||
        (n && EVP_EncryptUpdate(x, out, &l, in, (int)n) != 1) ||
        EVP_EncryptFinal_ex(x, out + n, &l) != 1 ||
        EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_GET_TAG, TAG_LEN, out + n) != 1)
        return ossl_fail(-EIO, "AES-256-GCM encryption");
    return 0;
}

/* Writes the encoded chunk at dst (room for header, len bytes and tag). */
static int pack(const struct codec *c, struct ws *w, const uint8_t *data, size_t len,
                const uint8_t name[CODEC_NAME_LEN], uint8_t *dst, size_t *total)
{
    size_t hlen = c->keyed ? HDR_ENC : HDR_PLAIN;
    uint8_t *payload = dst + hlen;
    size_t n = len;
    int compressed = deflate_chunk(c, w, data, len, payload, &n);
    if (compressed < 0)
        return compressed;

    memcpy(dst, MAGIC, MAGIC_LEN);
    dst[OFF_VERSION] = VERSION;
    dst[OFF_FLAGS] = (uint8_t)((compressed ? F_COMPRESSED : 0) | (c->keyed ? F_ENCRYPTED : 0));
    dst[OFF_RESERVED] = dst[OFF_RESERVED + 1] = 0;
    le_store(dst + OFF_LENGTH, len, 8);
    *total = hlen + n;

    if (!c->keyed) {
        checksum(data, len, name, dst + OFF_SUM);
        if (!compressed && len)
            memcpy(payload, data, len);
        return 0;
    }
    /* Random 96-bit nonces: at 2^32 chunks per key the chance of a repeat is
     * still below 2^-32, and no nonce state has to survive a crash. */
    if (RAND_bytes(dst + OFF_NONCE, NONCE_LEN) != 1)
        return ossl_fail(-EIO, "drawing a random nonce");
    *total += TAG_LEN;
    /* A compressed payload is encrypted in place; a raw one straight from data. */
    return seal(c, w, dst, hlen, name, compressed ? payload : data, n, payload);
}

int codec_encode(struct codec *c, const void *data, size_t len, const uint8_t name[CODEC_NAME_LEN],
                 struct buf *out)
{
    if (len > CODEC_MAX_CHUNK)
        return err_set(-EINVAL, "chunk of %zu bytes exceeds the %u-byte limit", len,
                       CODEC_MAX_CHUNK);
    size_t room = (c->keyed ? HDR_ENC + TAG_LEN : HDR_PLAIN) + len;
    if (buf_reserve(out, room))
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
    if (h->version != VERSION && h->version != VERSION_1)
        return err_set(-EPROTONOSUPPORT,
                       "chunk %s: format version %u is not one this build reads (%u, %u)", hex,
                       h->version, VERSION_1, VERSION);
    h->flags = p[OFF_FLAGS];
    if ((h->flags & ~F_KNOWN) || p[OFF_RESERVED] || p[OFF_RESERVED + 1])
        return err_set(-EBADMSG, "chunk %s: damaged header (unknown flags 0x%02x)", hex, h->flags);

    int encrypted = h->flags & F_ENCRYPTED;
    uint64_t plain = le_load(p + OFF_LENGTH, 8);
    h->start = p;
    h->hlen = encrypted ? HDR_ENC : h->version == VERSION_1 ? HDR_V1 : HDR_PLAIN;
    size_t tlen = encrypted ? TAG_LEN : 0;
    if (len < h->hlen + tlen)
        return err_set(-EBADMSG, "chunk %s: truncated (%zu bytes)", hex, len);
    if (plain > CODEC_MAX_CHUNK)
        return err_set(-EBADMSG, "chunk %s: damaged header (declares %llu bytes, over the limit)",
                       hex, (unsigned long long)plain);
    h->plain_len = (size_t)plain;
    h->payload = p + h->hlen;
    h->payload_len = len - h->hlen - tlen;
    h->tag = h->payload + h->payload_len;
    /* The encoder only compresses when that saves space. */
    int fits = (h->flags & F_COMPRESSED) ? h->payload_len > 0 && h->payload_len < h->plain_len
                                         : h->payload_len == h->plain_len;
    if (!fits)
        return err_set(-EBADMSG, "chunk %s: truncated or damaged (%zu payload bytes for %zu)", hex,
                       h->payload_len, h->plain_len);

    if (encrypted && !c->keyed)
        return err_set(-ENOKEY, "chunk %s is encrypted and no key is configured", hex);
    /* A codec with a key only writes encrypted chunks, so a plain one was
     * put there by someone else, to be taken for ours. */
    if (!encrypted && c->keyed)
        return err_set(-EBADMSG, "chunk %s: not encrypted, but a key is configured", hex);
    return 0;
}

/* Decrypts into dst and checks the tag; dst has room for payload_len. */
static int open_chunk(const struct codec *c, struct ws *w, const struct hdr *h,
                      const uint8_t name[CODEC_NAME_LEN], uint8_t *dst, const char *hex)
{
    EVP_CIPHER_CTX *x = ws_cipher(c, w, 0);
    int l;
    if (!x)
        return ossl_fail(-ENOMEM, "AES-256-GCM setup");
    if (EVP_DecryptInit_ex2(x, NULL, NULL, h->start + OFF_NONCE, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_TAG, TAG_LEN, (void *)h->tag) != 1 ||
        EVP_DecryptUpdate(x, NULL, &l, h->start, (int)h->hlen) != 1 ||
        EVP_DecryptUpdate(x, NULL, &l, name, CODEC_NAME_LEN) != 1 ||
        (h->payload_len && EVP_DecryptUpdate(x, dst, &l, h->payload, (int)h->payload_len) != 1))
        return ossl_fail(-EIO, "AES-256-GCM decryption");
    if (EVP_DecryptFinal_ex(x, dst + h->payload_len, &l) != 1) {
        ERR_clear_error();
        return err_set(-EBADMSG, "chunk %s: authentication failed (wrong key or damaged)", hex);
    }
    return 0;
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
        struct buf old = *chunk;
        *chunk = *spare;
        *spare = old;
        chunk->len = h->plain_len;
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

size_t codec_raw_offset(const struct codec *c)
{
    return c->keyed ? HDR_ENC : HDR_PLAIN;
}

int codec_decode_in_place(struct codec *c, struct buf *chunk, const uint8_t name[CODEC_NAME_LEN],
                          size_t *start, struct buf *spare)
{
    char hex[2 * CODEC_NAME_LEN + 1];
    struct hdr h;
    codec_name_hex(name, hex);
    int rc = parse(c, chunk->data, chunk->len, hex, &h);
    if (rc)
        return rc;
    struct ws *w = ws_get(c);
    if (!w)
        return err_set(-ENOMEM, "no memory to decode chunk %s", hex);
    rc = unpack_in_place(c, w, &h, name, chunk, start, spare, hex);
    ws_put(c, w);
    return rc;
}

int codec_decode(struct codec *c, const void *enc, size_t len, const uint8_t name[CODEC_NAME_LEN],
                 struct buf *out)
{
    char hex[2 * CODEC_NAME_LEN + 1];
    struct hdr h;
    codec_name_hex(name, hex);
    int rc = parse(c, enc, len, hex, &h);
    if (rc)
        return rc;
    struct ws *w = ws_get(c);
    if (!w)
        return err_set(-ENOMEM, "no memory to decode chunk %s", hex);
    rc = unpack(c, w, &h, name, out, hex);
    ws_put(c, w);
    if (rc)
        return rc;
    out->len += h.plain_len;
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
