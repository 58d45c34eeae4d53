/*
 * The disk tier's budget: the bytes the cache directory holds, against
 * --cache-size. Writers reserve what they are about to add and wait while
 * the budget is spent (backpressure); the evictor frees clean bytes and
 * uploads turn dirty bytes clean, and each change of the bytes on disk is
 * reported with space_add, measured from the files (st_blocks), not guessed.
 *
 * The evictor keeps usage under the low watermark, limit - headroom, so
 * that reads and writes normally find room without waiting.
 */
#ifndef CKPT_CACHE_SPACE_H
#define CKPT_CACHE_SPACE_H

#include <stdint.h>

struct space;

struct space_stats {
    uint64_t limit, used, reserved;
    uint64_t waiting;  /* writers waiting for room now */
    uint64_t waits;    /* writers that had to wait, ever */
    uint64_t timeouts; /* writers that gave up (ENOSPC) */
};

/* limit 0: no bound (usage is still counted). Returns 0 or -ENOMEM. */
int space_new(uint64_t limit, struct space **out);
void space_free(struct space *s);

/* The bytes on disk changed by delta. */
void space_add(struct space *s, int64_t delta);

/* Reserves bytes before adding them, waiting up to wait_ms (0: not at all)
 * for room. Returns 0, or -ENOSPC with a message if there was none. */
int space_reserve(struct space *s, uint64_t bytes, int64_t wait_ms);
void space_release(struct space *s, uint64_t bytes);

/* For the evictor: bytes to free to get under the low watermark (0 if
 * none), after sleeping up to ms while there are none. */
uint64_t space_await_excess(struct space *s, int64_t ms);

/* Wakes the evictor (stopping, or something may have become evictable). */
void space_wake(struct space *s);

void space_get_stats(struct space *s, struct space_stats *st);

#endif
