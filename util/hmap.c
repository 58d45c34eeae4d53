#include "hmap.h"

#include <errno.h>
#include <stdlib.h>

struct entry {
    uint64_t a, b;
    void *v;
    struct entry *next;
};

struct hmap {
    struct entry **slots;
    size_t nslots, count;
};

static size_t slot_of(const struct hmap *m, uint64_t a, uint64_t b)
{
    uint64_t h = a * 0x9e3779b97f4a7c15ull ^ (b + 0x632be59bd9b4e019ull) * 0xbf58476d1ce4e5b9ull;
    return (size_t)(h ^ h >> 31) & (m->nslots - 1);
}

struct hmap *hmap_new(void)
{
    struct hmap *m = calloc(1, sizeof *m);
    if (m && !(m->slots = calloc(m->nslots = 64, sizeof *m->slots))) {
        free(m);
        m = NULL;
    }
    return m;
}

void hmap_free(struct hmap *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nslots; i++)
        for (struct entry *e = m->slots[i], *n; e; e = n) {
            n = e->next;
            free(e);
        }
    free(m->slots);
    free(m);
}

static struct entry **find(const struct hmap *m, uint64_t a, uint64_t b)
{
    struct entry **p = &m->slots[slot_of(m, a, b)];
    while (*p && ((*p)->a != a || (*p)->b != b))
        p = &(*p)->next;
    return p;
}

void *hmap_get(const struct hmap *m, uint64_t a, uint64_t b)
{
    struct entry *e = *find(m, a, b);
    return e ? e->v : NULL;
}

/* Doubles the table when it averages more than one entry per slot. */
static void grow(struct hmap *m)
{
    size_t n = m->nslots * 2;
    struct entry **slots = calloc(n, sizeof *slots);
    if (!slots)
        return; /* longer chains, still correct */
    struct entry **old = m->slots;
    size_t oldn = m->nslots;
    m->slots = slots;
    m->nslots = n;
    for (size_t i = 0; i < oldn; i++)
        for (struct entry *e = old[i], *next; e; e = next) {
            next = e->next;
            size_t s = slot_of(m, e->a, e->b);
            e->next = slots[s];
            slots[s] = e;
        }
    free(old);
}

int hmap_put(struct hmap *m, uint64_t a, uint64_t b, void *v)
{
    struct entry **p = find(m, a, b);
    if (*p) {
        (*p)->v = v;
        return 0;
    }
    struct entry *e = malloc(sizeof *e);
    if (!e)
        return -ENOMEM;
    *e = (struct entry){ a, b, v, NULL };
    *p = e;
    if (++m->count > m->nslots)
        grow(m);
    return 0;
}

void *hmap_del(struct hmap *m, uint64_t a, uint64_t b)
{
    struct entry **p = find(m, a, b), *e = *p;
    if (!e)
        return NULL;
    void *v = e->v;
    *p = e->next;
    free(e);
    m->count--;
    return v;
}

size_t hmap_count(const struct hmap *m)
{
    return m->count;
}

void hmap_each(const struct hmap *m, void (*fn)(void *arg, uint64_t a, uint64_t b, void *v),
               void *arg)
{
    for (size_t i = 0; i < m->nslots; i++)
        for (struct entry *e = m->slots[i]; e; e = e->next)
            fn(arg, e->a, e->b, e->v);
}
