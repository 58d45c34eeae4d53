/*
 * The chunk codec: how a chunk's bytes become an object in the bucket and
 * back. The encoded layout is drawn at the top of codec.c.
 *
 * A chunk is named by a 32-byte digest of its plaintext: SHA-256, or, when
 * encrypting, HMAC-SHA-256 under a key derived from the encryption key (a
 * plain hash of the plaintext would let anyone holding the bucket confirm a
 * guess of a chunk's content). Decoding checks that a chunk is the one its
 * name says: by its GCM tag when encrypted, else by a checksum bound to the
 * name (the rules are at the top of codec.c); a chunk that fails is an error,
 * never data. Decoding does not recompute the name, which costs a SHA-256
 * pass: callers that must know the name is right (ckptctl verify) call
 * codec_name on the plaintext.
 *
 * A codec is thread-safe: any number of threads may encode and decode at once.
 *
 * Errors (negative errno, with the thread's message set, util/err.h):
 *   -EBADMSG          damaged: bad magic, truncated, bad tag, or content not matching its
 *                     checksum (or, in a version 1 chunk, its name)
 *   -EPROTONOSUPPORT  a format version this build does not know
 *   -ENOKEY           the chunk is encrypted and the codec has no key
 *   -EINVAL           bad argument (level out of range, chunk too large)
 *   -ENOMEM           out of memory
 */
#ifndef CKPT_CACHE_CODEC_H
#define CKPT_CACHE_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

#define CODEC_NAME_LEN  32         /* bytes in a chunk name */
#define CODEC_KEY_LEN   32         /* bytes in an encryption key (AES-256) */
#define CODEC_MAX_CHUNK (1u << 30) /* largest plaintext a chunk may hold */

struct codec;

struct codec_options {
    int level;          /* zstd level 1..19, or 0 to store uncompressed */
    const uint8_t *key; /* CODEC_KEY_LEN bytes to encrypt with AES-256-GCM, or NULL */
};

/* Returns 0 and *out, or -EINVAL (bad level), -ENOMEM. */
int codec_new(const struct codec_options *opt, struct codec **out);
void codec_free(struct codec *c);

/* The name of a plaintext (see above). Returns 0, or -ENOMEM if OpenSSL
 * could not allocate (the only way hashing fails). */
int codec_name(const struct codec *c, const void *data, size_t len, uint8_t name[CODEC_NAME_LEN]);

/* 0 if plaintext data is named name, else -EBADMSG ("chunk HEX: content
 * does not match its name"), or -ENOMEM. A SHA-256 (or HMAC) pass: what
 * version 1 chunks are checked by, and what ckptctl verify adds. */
int codec_check_name(const struct codec *c, const void *data, size_t len,
                     const uint8_t name[CODEC_NAME_LEN]);

/* Appends the encoded form of data, whose name is name, to out. */
int codec_encode(struct codec *c, const void *data, size_t len, const uint8_t name[CODEC_NAME_LEN],
                 struct buf *out);

/* Appends the plaintext of an encoded chunk to out, after checking that it is
 * whole and the chunk named name (see above). On error out is unchanged. */
int codec_decode(struct codec *c, const void *enc, size_t len, const uint8_t name[CODEC_NAME_LEN],
                 struct buf *out);

/* The bytes before the plaintext in a chunk this codec encodes raw (not
 * compressed): where a reader can place the chunk so the plaintext lands
 * aligned. */
size_t codec_raw_offset(const struct codec *c);

/* As codec_decode, without copying what need not be: on success the
 * plaintext is chunk->data + *start up to chunk->len. A raw chunk's bytes
 * are decrypted in place; a compressed one is decompressed into spare (grown
 * if it is too small), which then trades places with chunk, so that the
 * caller chooses where plaintext lands and gets the old buffer back in
 * spare. On error chunk may be damaged, never grown. */
int codec_decode_in_place(struct codec *c, struct buf *chunk, const uint8_t name[CODEC_NAME_LEN],
                          size_t *start, struct buf *spare);

/* Reads a key file: exactly 32 raw bytes, or 64 hex digits and an optional
 * newline. Refuses a file others can read (-EACCES), since the key is the
 * whole secret. */
int codec_load_key(const char *path, uint8_t key[CODEC_KEY_LEN]);

/* Lowercase hex of a name (65 bytes with the NUL), and back (-EINVAL if not
 * exactly 64 hex digits). */
void codec_name_hex(const uint8_t name[CODEC_NAME_LEN], char hex[2 * CODEC_NAME_LEN + 1]);
int codec_name_parse(const char *hex, uint8_t name[CODEC_NAME_LEN]);

#endif
