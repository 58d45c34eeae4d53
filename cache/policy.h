/*
 * Which clean block the disk tier evicts next: a segmented LRU (SLRU).
 *
 * A block enters the probationary segment. A hit there promotes it to the
 * protected segment, which holds at most protect_pct percent of the cache's
 * capacity in blocks; a block pushed out of protected goes back to the head
 * of probation.
 * Victims come from the tail of probation first. So one pass over a lot of
 * data read once (a warm-up, a restore, a backfill) evicts itself rather
 * than the blocks read again and again. protect_pct 0 gives plain LRU.
 * docs/benchmarks.md ("eviction policy") measures the two.
 *
 * Not thread-safe: its owner locks around it.
 */
#ifndef CKPT_CACHE_POLICY_H
#define CKPT_CACHE_POLICY_H

#include <stddef.h>
#include <stdint.h>

struct policy;

/* capacity: blocks the cache holds when full (0: no bound, nothing is ever
 * pushed out of protected). Returns 0 or -ENOMEM. */
int policy_new(unsigned protect_pct, size_t capacity, struct policy **out);
void policy_free(struct policy *p);

/* A block became clean (a hit if it is there already). Returns 0 or -ENOMEM. */
int policy_add(struct policy *p, uint64_t ino, uint64_t idx);

/* A read was served from the block; nothing if it is not there. */
void policy_hit(struct policy *p, uint64_t ino, uint64_t idx);

/* The block is no longer clean, or is gone; nothing if it is not there. */
void policy_remove(struct policy *p, uint64_t ino, uint64_t idx);

/* Fills out with up to n blocks, coldest first, leaving them in place. */
size_t policy_coldest(const struct policy *p, size_t n, uint64_t (*out)[2]);

size_t policy_count(const struct policy *p);

#endif
