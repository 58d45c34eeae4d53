/*
 * A hash map from a pair of 64-bit integers (an inode, or an inode and a
 * block index) to a pointer. Not thread-safe: its owner locks around it.
 */
#ifndef CKPT_UTIL_HMAP_H
#define CKPT_UTIL_HMAP_H

#include <stddef.h>
#include <stdint.h>

struct hmap;

struct hmap *hmap_new(void);
void hmap_free(struct hmap *m); /* the values are the caller's */

void *hmap_get(const struct hmap *m, uint64_t a, uint64_t b);

/* Sets (a, b) to v, replacing any value. Returns 0 or -ENOMEM. */
int hmap_put(struct hmap *m, uint64_t a, uint64_t b, void *v);

/* Removes (a, b) and returns its value, or NULL. */
void *hmap_del(struct hmap *m, uint64_t a, uint64_t b);

size_t hmap_count(const struct hmap *m);

/* Calls fn for each entry; fn must not change the map. */
void hmap_each(const struct hmap *m, void (*fn)(void *arg, uint64_t a, uint64_t b, void *v),
               void *arg);

#endif
