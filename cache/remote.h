/*
 * The remote tier: chunks in the bucket, named by their content (codec.h),
 * under chunks/NN/NAME where NAME is 64 hex digits and NN its first two.
 * Chunks are immutable, so a chunk known to be in the bucket is not sent
 * again: meta.db's table chunks(name, put_at) lists the ones we uploaded.
 * That is the deduplication (blocks that did not change are not even named
 * again: they stay clean under their chunk's name).
 *
 * Garbage collection (ckptctl gc) deletes chunks no snapshot names once
 * their objects are older than its grace period (at least GC_MIN_GRACE).
 * So a chunk is only trusted to be there without a new upload if we put it
 * less than REMOTE_DEDUP_SECS ago: half the least grace, so whatever a
 * snapshot published soon after names is safe. Chunks only seen named by a
 * snapshot, or put long ago, are put again when new data has their bytes
 * (which refreshes the object's time); unchanged blocks are named by the
 * newest snapshot, which gc never collects from.
 */
#ifndef CKPT_CACHE_REMOTE_H
#define CKPT_CACHE_REMOTE_H

#include <stdint.h>

#include "cache/codec.h"
#include "cache/store.h"
#include "util/buf.h"
#include "util/db.h"

#define GC_MIN_GRACE      3600
#define REMOTE_DEDUP_SECS (GC_MIN_GRACE / 2)

struct remote;

struct remote_stats {
    uint64_t chunks_put, bytes_put;         /* uploaded (bytes before encoding) */
    uint64_t chunks_deduped, bytes_deduped; /* not uploaded: already in the bucket */
    uint64_t chunks_got, bytes_got;         /* fetched (bytes after decoding) */
    uint64_t pieces_got;                    /* fetched alone, not with their whole chunk */
};

/* Uses store, codec and db, which must outlive it. Returns 0 or -EIO. */
int remote_open(struct store *store, struct codec *codec, struct db *db, struct remote **out);
void remote_close(struct remote *r);

/* Names data (codec_name). */
int remote_name(struct remote *r, const void *data, size_t len, uint8_t name[CODEC_NAME_LEN]);

/* Makes chunk name, whose plaintext is data, present in the bucket: uploads
 * it unless it is known to be there. Safe to call for the same chunk from
 * several threads. Returns 0 or a store/codec error. */
int remote_put(struct remote *r, const uint8_t name[CODEC_NAME_LEN], const void *data, size_t len);

/* Whether we put chunk name recently enough that a snapshot may name it
 * without putting it again (REMOTE_DEDUP_SECS). */
int remote_fresh(struct remote *r, const uint8_t name[CODEC_NAME_LEN]);

/* Appends the plaintext of chunk name to out, checked as codec.h says. */
int remote_get(struct remote *r, const uint8_t name[CODEC_NAME_LEN], struct buf *out);

/* The same into chunk (its buffer is used as is when big enough), without
 * copying: the plaintext is chunk->data + *start up to chunk->len. A
 * compressed chunk is decompressed into spare, which then trades places with
 * chunk; the pieces' sums come as codec_decode_in_place gives them. The
 * caller frees both buffers. */
int remote_fetch(struct remote *r, const uint8_t name[CODEC_NAME_LEN], struct buf *chunk,
                 size_t *start, struct buf *spare, uint64_t *sums, size_t *nsums);

/* codec_raw_offset and codec_encoded_max of the chunks this fetches. */
size_t remote_raw_offset(const struct remote *r, size_t plain);
size_t remote_encoded_max(const struct remote *r, size_t plain);

/* Pieces [first, first+count) of chunk name (codec.h), fetched alone: one
 * ranged GET, plus one for the chunk's index the first time (enough for a
 * chunk of max_plain bytes; a chunk that holds more is -EBADMSG). The index
 * is kept for later calls, and fetched again if the pieces fail their
 * check under it: the chunk may have been put again since, encoded anew. Their plaintext goes to
 * out (room for count * CODEC_PIECE bytes), *got bytes of it: fewer where
 * the chunk ends, 0 past its end. -ENOTSUP if the chunk has no pieces (made
 * by an older version: fetch it whole); else as remote_fetch. */
int remote_get_pieces(struct remote *r, const uint8_t name[CODEC_NAME_LEN], size_t max_plain,
                      size_t first, size_t count, uint8_t *out, size_t *got);

/* The object key of a chunk: "chunks/NN/NAME" (room for 82 bytes). */
void remote_chunk_key(const uint8_t name[CODEC_NAME_LEN], char key[82]);

void remote_get_stats(struct remote *r, struct remote_stats *st);

#endif
