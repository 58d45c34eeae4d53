/* Snapshot retention (contract in retention.h). */
#include "retention.h"

#include <errno.h>
#include <stdlib.h>

#include "fs/snapshot.h"
#include "util/buf.h"

struct listed {
    struct snapshot_id id;
    int64_t mtime;
};

struct listing {
    struct listed *v;
    size_t n, cap;
};

static int add(void *arg, struct snapshot_id id, const struct store_object *o)
{
    struct listing *l = arg;
    if (array_grow((void **)&l->v, &l->cap, l->n, sizeof *l->v))
        return -ENOMEM;
    l->v[l->n++] = (struct listed){ id, o->mtime };
    return 0;
}

int retention_set(const struct retention *r)
{
    return r->keep || r->keep_age_s;
}

/* 1. the listing comes in publishing order, so the newest is last;
 * 2. it is never deleted, whatever the rules say. */
static int expired(const struct retention *r, const struct listing *l, size_t i, int64_t now_s)
{
    int beyond = !r->keep || i + r->keep < l->n;
    int old = !r->keep_age_s || now_s - l->v[i].mtime > r->keep_age_s;
    return i + 1 < l->n && beyond && old;
}

int retention_apply(struct store *s, const struct retention *r, int64_t now_s, unsigned *deleted)
{
    struct listing l = { 0 };
    *deleted = 0;
    if (!retention_set(r))
        return 0;
    int rc = snapshot_list(s, add, &l);
    char(*keys)[SNAPSHOT_KEY_LEN] = rc ? NULL : malloc((l.n + 1) * sizeof *keys);
    const char **ptrs = keys ? malloc((l.n + 1) * sizeof *ptrs) : NULL;
    if (rc == 0 && (!keys || !ptrs))
        rc = -ENOMEM;
    size_t n = 0;
    for (size_t i = 0; rc == 0 && i < l.n; i++)
        if (expired(r, &l, i, now_s)) {
            snapshot_key(l.v[i].id, keys[n]);
            ptrs[n] = keys[n];
            n++;
        }
    if (rc == 0 && n)
        rc = store_delete_many(s, ptrs, n);
    if (rc == 0)
        *deleted = (unsigned)n;
    free(ptrs);
    free(keys);
    free(l.v);
    return rc;
}
