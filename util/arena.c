/* The bump allocator (contract in arena.h). */
#include "arena.h"

#include <stdalign.h>
#include <stdlib.h>

#define BLOCK ((size_t)1 << 20)

struct arena_block {
    struct arena_block *next;
    size_t size;
    alignas(max_align_t) unsigned char data[];
};

void *arena_alloc(struct arena *a, size_t n)
{
    size_t need = (n + alignof(max_align_t) - 1) & ~(alignof(max_align_t) - 1);
    if (!a->head || a->head->size - a->used < need) {
        size_t size = need > BLOCK ? need : BLOCK;
        struct arena_block *b = malloc(sizeof *b + size);
        if (!b)
            return NULL;
        b->next = a->head;
        b->size = size;
        a->head = b;
        a->used = 0;
    }
    void *p = a->head->data + a->used;
    a->used += need;
    return p;
}

void arena_reset(struct arena *a)
{
    struct arena_block *keep = a->head;
    while (keep && keep->next) { /* the oldest block stays */
        struct arena_block *b = keep;
        keep = b->next;
        free(b);
    }
    a->head = keep;
    a->used = 0;
}

void arena_free(struct arena *a)
{
    arena_reset(a);
    free(a->head);
    a->head = NULL;
}
