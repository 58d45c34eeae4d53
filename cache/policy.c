/* Segmented LRU (contract in policy.h). Two circular lists with sentinels;
 * the head of each is its most recently used block. */
#include "policy.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "util/hmap.h"

enum { PROBATION, PROTECTED };

struct node {
    struct node *prev, *next;
    uint64_t ino, idx;
    int seg;
};

struct policy {
    struct hmap *map; /* (ino, idx) -> node */
    struct node seg[2];
    size_t count[2];
    size_t protect_max; /* blocks protected at most */
    int segmented;
};

static void unlink_node(struct policy *p, struct node *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    p->count[n->seg]--;
}

static void push_head(struct policy *p, struct node *n, int seg)
{
    struct node *s = &p->seg[seg];
    n->seg = seg;
    n->next = s->next;
    n->prev = s;
    s->next->prev = n;
    s->next = n;
    p->count[seg]++;
}

int policy_new(unsigned protect_pct, size_t capacity, struct policy **out)
{
    struct policy *p = calloc(1, sizeof *p);
    if (!p || !(p->map = hmap_new())) {
        free(p);
        return -ENOMEM;
    }
    for (int i = 0; i < 2; i++)
        p->seg[i].prev = p->seg[i].next = &p->seg[i];
    p->segmented = protect_pct > 0;
    p->protect_max = capacity ? capacity * (protect_pct > 100 ? 100 : protect_pct) / 100 : SIZE_MAX;
    *out = p;
    return 0;
}

void policy_free(struct policy *p)
{
    if (!p)
        return;
    for (int i = 0; i < 2; i++)
        for (struct node *n = p->seg[i].next, *next; n != &p->seg[i]; n = next) {
            next = n->next;
            free(n);
        }
    hmap_free(p->map);
    free(p);
}

/* Keeps protected within its share: its coldest go back to probation. */
static void rebalance(struct policy *p)
{
    while (p->count[PROTECTED] > p->protect_max) {
        struct node *n = p->seg[PROTECTED].prev;
        unlink_node(p, n);
        push_head(p, n, PROBATION);
    }
}

void policy_hit(struct policy *p, uint64_t ino, uint64_t idx)
{
    struct node *n = hmap_get(p->map, ino, idx);
    if (!n)
        return;
    unlink_node(p, n);
    push_head(p, n, p->segmented ? PROTECTED : PROBATION);
    rebalance(p);
}

int policy_add(struct policy *p, uint64_t ino, uint64_t idx)
{
    if (hmap_get(p->map, ino, idx)) {
        policy_hit(p, ino, idx);
        return 0;
    }
    struct node *n = calloc(1, sizeof *n);
    if (!n || hmap_put(p->map, ino, idx, n)) {
        free(n);
        return -ENOMEM;
    }
    n->ino = ino;
    n->idx = idx;
    push_head(p, n, PROBATION);
    return 0;
}

void policy_remove(struct policy *p, uint64_t ino, uint64_t idx)
{
    struct node *n = hmap_del(p->map, ino, idx);
    if (n) {
        unlink_node(p, n);
        free(n);
    }
}

size_t policy_coldest(const struct policy *p, size_t n, uint64_t (*out)[2])
{
    size_t k = 0;
    for (int i = PROBATION; i <= PROTECTED; i++)
        for (const struct node *x = p->seg[i].prev; k < n && x != &p->seg[i]; x = x->prev) {
            out[k][0] = x->ino;
            out[k++][1] = x->idx;
        }
    return k;
}

size_t policy_count(const struct policy *p)
{
    return p->count[PROBATION] + p->count[PROTECTED];
}
