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
#include <sys/types.h>

#include "util/buf.h"

#define CODEC_NAME_LEN  32                 /* bytes in a chunk name */
#define CODEC_KEY_LEN   32                 /* bytes in an encryption key (AES-256) */
#define CODEC_MAX_CHUNK (1u << 30)         /* largest plaintext a chunk may hold */
#define CODEC_PIECE     ((size_t)64 << 10) /* a chunk's pieces hold this many bytes */
#define CODEC_MAGIC     "CKCH"             /* what every chunk starts with, in every version */
#define CODEC_MAGIC_LEN 4

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

/* The most bytes a chunk of plain bytes takes encoded, in any version this
 * build reads: what to fetch one into. */
size_t codec_encoded_max(const struct codec *c, size_t plain);

/* The bytes before the plaintext in a chunk of plain bytes that this codec
 * stores raw (not compressed, not encrypted): where a reader can place the
 * chunk so the plaintext lands aligned. */
size_t codec_raw_offset(const struct codec *c, size_t plain);

/* As codec_decode, without copying what need not be: on success the
 * plaintext is chunk->data + *start up to chunk->len. A raw chunk's bytes
 * are decrypted in place; a compressed one is decompressed into spare (grown
 * if it is too small), which then trades places with chunk, so that the
 * caller chooses where plaintext lands and gets the old buffer back in
 * spare. On error chunk may be damaged, never grown.
 * sums (NULL if not wanted), *nsums its room: the XXH3-64 of each piece's
 * plaintext, checked, where the chunk carries them (version 3, not
 * encrypted, at most *nsums pieces), so that a caller who keeps such sums
 * need not hash the bytes again; *nsums is set to their number, or 0. */
int codec_decode_in_place(struct codec *c, struct buf *chunk, const uint8_t name[CODEC_NAME_LEN],
                          size_t *start, struct buf *spare, uint64_t *sums, size_t *nsums);

/*
 * Pieces. A chunk's plaintext is cut into pieces of CODEC_PIECE bytes (the
 * last may be shorter), each encoded and checked on its own, and an index
 * at the chunk's start says where each lies. A reader that wants a few
 * pieces fetches the index (codec_index_size bytes from the start), then
 * just the pieces' bytes (codec_index_span), and decodes them.
 */
struct codec_index;

/* The bytes at the start of a chunk of at most max_plain bytes that hold
 * its index: what to fetch first. */
size_t codec_index_size(const struct codec *c, size_t max_plain);

/* Parses and checks the index at the start of chunk name, len bytes of it.
 * Returns 0 and *out; 1 and *need, the bytes it takes, if len is short of
 * them; -ENOTSUP if the chunk has no index (format versions 1 and 2: decode
 * it whole); or codec_decode's errors. */
int codec_index_parse(struct codec *c, const void *head, size_t len,
                      const uint8_t name[CODEC_NAME_LEN], size_t *need, struct codec_index **out);
void codec_index_free(struct codec_index *ix);

/* The chunk's plaintext length, and its number of pieces. */
size_t codec_index_plain(const struct codec_index *ix);
size_t codec_index_pieces(const struct codec_index *ix);

/* Where the bytes of pieces [first, first+count) lie in the chunk: *len
 * bytes from *off. The run is cut at the last piece; returns its count. */
size_t codec_index_span(const struct codec_index *ix, size_t first, size_t count, uint64_t *off,
                        uint64_t *len);

/* Decodes pieces [first, first+count) from enc, the len bytes of their span
 * (count cut as codec_index_span cuts it), into out (room for count *
 * CODEC_PIECE bytes), each checked as
 * codec_decode checks a chunk. Returns the plaintext bytes written (the
 * chunk's last piece may be short), or -EBADMSG (damaged, or len is not
 * their span), -ENOMEM, -EIO (OpenSSL failed). */
ssize_t codec_decode_pieces(struct codec *c, const struct codec_index *ix,
                            const uint8_t name[CODEC_NAME_LEN], size_t first, size_t count,
                            const void *enc, size_t len, void *out);

/* Reads a key file: exactly 32 raw bytes, or 64 hex digits and an optional
 * newline. Refuses a file others can read (-EACCES), since the key is the
 * whole secret. */
int codec_load_key(const char *path, uint8_t key[CODEC_KEY_LEN]);

/* Lowercase hex of a name (65 bytes with the NUL), and back (-EINVAL if not
 * exactly 64 hex digits). */
void codec_name_hex(const uint8_t name[CODEC_NAME_LEN], char hex[2 * CODEC_NAME_LEN + 1]);
int codec_name_parse(const char *hex, uint8_t name[CODEC_NAME_LEN]);

#endif
