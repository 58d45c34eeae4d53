/*
 * Buffers of one size, aligned to BUFPOOL_ALIGN (O_DIRECT can use them),
 * kept for reuse once given back: fresh memory costs a page fault per page
 * the first time it is touched, and on some virtual machines that costs
 * more than the copy the buffer is for. Thread-safe.
 */
#ifndef CKPT_UTIL_BUFPOOL_H
#define CKPT_UTIL_BUFPOOL_H

#include <stddef.h>

#define BUFPOOL_ALIGN 4096

struct bufpool;

/* Buffers of size bytes (a multiple of BUFPOOL_ALIGN); at most keep of
 * them are kept. Returns 0 or -ENOMEM. */
int bufpool_new(size_t size, unsigned keep, struct bufpool **out);
void bufpool_free(struct bufpool *p);

size_t bufpool_size(const struct bufpool *p);

/* A buffer: a kept one if there is one. NULL if out of memory. */
void *bufpool_get(struct bufpool *p);

/* Gives a buffer back: kept if cap is the pool's size and there is room,
 * else freed. NULL is ignored. */
void bufpool_put(struct bufpool *p, void *buf, size_t cap);

#endif
