/*
 * The memory tier: decoded chunks, keyed by name, up to a byte budget,
 * least recently used out first. Chunks never change, so an entry is never
 * stale: a file rewritten gets new chunk names, not new bytes under an old
 * one. Thread-safe; a chunk being copied out stays alive until the copy ends.
 */
#ifndef CKPT_CACHE_MEMCACHE_H
#define CKPT_CACHE_MEMCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "cache/codec.h"
#include "util/bufpool.h"

struct memcache;

struct memcache_stats {
    uint64_t limit, bytes, chunks;
    uint64_t hits, misses;
};

/* limit 0 keeps nothing. buf_size: the size of the buffers it hands out
 * (memcache_buffer), a multiple of BUFPOOL_ALIGN. Returns 0 or -ENOMEM. */
int memcache_new(size_t limit, size_t buf_size, struct memcache **out);

/* A buffer of buf_size bytes, BUFPOOL_ALIGN-aligned, to fetch a chunk
 * into: one that held an evicted chunk if there is one (see bufpool.h).
 * NULL if out of memory. */
void *memcache_buffer(struct memcache *m);

/* Gives back a block that is no longer needed: kept for memcache_buffer if
 * it is cap == buf_size bytes (and not too many are kept), else freed. */
void memcache_recycle(struct memcache *m, void *base, size_t cap);
void memcache_free(struct memcache *m);

/* The bytes of chunk name (*len of them), or NULL on a miss. They stay
 * valid, evicted or not, until memcache_unpin(*pin). */
const void *memcache_pin(struct memcache *m, const uint8_t name[CODEC_NAME_LEN], size_t *len,
                         void **pin);
void memcache_unpin(struct memcache *m, void *pin);

/* Copies len bytes at off of chunk name into out (zeros past the chunk's
 * end). Returns 1 on a hit, 0 on a miss. */
int memcache_read(struct memcache *m, const uint8_t name[CODEC_NAME_LEN], size_t off, size_t len,
                  void *out);

/* Keeps the len bytes at data as chunk name; they lie in base, a block of
 * cap bytes from malloc that is taken over (recycled when evicted). If the
 * chunk is there already or is bigger than the budget, base is recycled at
 * once. */
void memcache_put(struct memcache *m, const uint8_t name[CODEC_NAME_LEN], void *base, size_t cap,
                  const void *data, size_t len);

void memcache_get_stats(struct memcache *m, struct memcache_stats *st);

#endif
