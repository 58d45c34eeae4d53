/*
 * Memory for a table read at random (a view's groups, their hash slots):
 * in 2 MiB chunks that ask the kernel for huge pages, so that a lookup
 * does not also miss the TLB, and blocks aligned to cache lines, so that a
 * block takes no more lines than its size needs.
 */
#ifndef CKPT_UTIL_SLAB_H
#define CKPT_UTIL_SLAB_H

#include <stddef.h>

/* Blocks of one size, reused once put back. Its chunks start at 16 KiB and
 * double: only a slab of many blocks takes huge pages. */
struct slab;

/* Blocks of size bytes (rounded up to 64), at most 2 MiB: 0, -EINVAL or
 * -ENOMEM. */
int slab_new(size_t size, struct slab **out);

/* Every block goes. NULL is allowed. */
void slab_free(struct slab *s);

/* A zeroed block, or NULL (out of memory). */
void *slab_get(struct slab *s);
void slab_put(struct slab *s, void *block);

/* n zeroed bytes, aligned to 64; from 2 MiB on, in huge pages where the
 * kernel has them. NULL if out of memory. huge_free takes the same n. */
void *huge_calloc(size_t n);
void huge_free(void *p, size_t n);

#endif
