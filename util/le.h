/*
 * Little-endian integers in byte buffers: what the file formats (chunk
 * headers, snapshots, ckptpipe's batches and journal) are written in,
 * whatever the machine's own order.
 */
#ifndef CKPT_UTIL_LE_H
#define CKPT_UTIL_LE_H

#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

/* Stores the low `bytes` (1 to 8) bytes of v at p. */
void le_store(uint8_t *p, uint64_t v, int bytes);

/* The `bytes` (1 to 8) bytes at p as a number. */
uint64_t le_load(const uint8_t *p, int bytes);

/* Appends the low `bytes` (1 to 8) bytes of v. Returns 0 or -ENOMEM. */
int le_put(struct buf *b, uint64_t v, int bytes);

/* Reads bytes [p, end). A read past the end returns 0 (or NULL) and sets
 * bad, so a format's reader checks once, at its end. */
struct le_reader {
    const uint8_t *p, *end;
    int bad;
};

uint64_t le_get(struct le_reader *r, int bytes);

/* The next n bytes (NULL and bad if there are fewer). */
const uint8_t *le_take(struct le_reader *r, size_t n);

#endif
