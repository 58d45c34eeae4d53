/* Memory in huge pages (contract in slab.h). */
#include "slab.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "util/buf.h"

#define HUGE  ((size_t)2 << 20)
#define LINE  64
#define FIRST ((size_t)16 << 10) /* a slab's first chunk; each next one twice, up to HUGE */
_Static_assert((FIRST << 7) == HUGE, "the eighth chunk is a huge page");

static size_t round_up(size_t n, size_t to)
{
    return (n + to - 1) / to * to;
}

/* From HUGE on, a mapping of whole huge pages, aligned to one: the kernel
 * backs only aligned 2 MiB ranges with a huge page. */
void *huge_calloc(size_t n)
{
    if (n < HUGE) {
        void *p = aligned_alloc(LINE, round_up(n, LINE));
        return p ? memset(p, 0, n) : NULL;
    }
    size_t len = round_up(n, HUGE);
    char *map = mmap(NULL, len + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED)
        return NULL;
    char *p = (char *)(((uintptr_t)map + HUGE - 1) & ~(uintptr_t)(HUGE - 1));
    if (p > map)
        munmap(map, (size_t)(p - map));
    munmap(p + len, HUGE - (size_t)(p - map));
    madvise(p, len, MADV_HUGEPAGE); /* advice: without huge pages, still memory */
    return p;
}

void huge_free(void *p, size_t n)
{
    if (p && n >= HUGE)
        munmap(p, round_up(n, HUGE));
    else
        free(p);
}

/* Chunks start small, so that a table of few blocks (a view without GROUP
 * BY) keeps little memory, and double up to HUGE, in huge pages. */
struct chunk {
    char *p;
    size_t n;
};

struct slab {
    size_t size;
    struct chunk *chunks;
    size_t nchunks, cap;
    size_t carved; /* bytes of the last chunk handed out */
    void *freed;   /* blocks put back, linked through their first word */
};

int slab_new(size_t size, struct slab **out)
{
    if (size > HUGE)
        return -EINVAL;
    struct slab *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->size = round_up(size ? size : 1, LINE);
    *out = s;
    return 0;
}

void slab_free(struct slab *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nchunks; i++)
        huge_free(s->chunks[i].p, s->chunks[i].n);
    free(s->chunks);
    free(s);
}

void *slab_get(struct slab *s)
{
    if (s->freed) {
        void *b = s->freed;
        s->freed = *(void **)b;
        return memset(b, 0, s->size);
    }
    if (!s->nchunks || s->carved + s->size > s->chunks[s->nchunks - 1].n) {
        size_t n = FIRST << (s->nchunks < 7 ? s->nchunks : 7);
        n = n < s->size ? s->size : n;
        char *c;
        if (array_grow((void **)&s->chunks, &s->cap, s->nchunks, sizeof *s->chunks) ||
            !(c = huge_calloc(n)))
            return NULL;
        s->chunks[s->nchunks++] = (struct chunk){ c, n };
        s->carved = 0;
    }
    void *b = s->chunks[s->nchunks - 1].p + s->carved; /* zero: fresh from huge_calloc */
    s->carved += s->size;
    return b;
}

void slab_put(struct slab *s, void *block)
{
    if (!block)
        return;
    *(void **)block = s->freed;
    s->freed = block;
}
