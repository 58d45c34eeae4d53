/*
 * A bump allocator for what lives until a known moment (a step's rows):
 * allocations are carved from blocks, and all of them go at once.
 */
#ifndef CKPT_UTIL_ARENA_H
#define CKPT_UTIL_ARENA_H

#include <stddef.h>

struct arena_block;

/* The zero value ({0}) is an empty arena. */
struct arena {
    struct arena_block *head; /* the block being carved; older ones follow it */
    size_t used;              /* bytes of head in use */
};

/* n bytes aligned for any type, or NULL (out of memory). */
void *arena_alloc(struct arena *a, size_t n);

/* Everything allocated goes; the first block is kept for reuse. */
void arena_reset(struct arena *a);

void arena_free(struct arena *a);

#endif
