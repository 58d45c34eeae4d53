/* Snapshot retention (contract in retention.h). */
#include "retention.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fs/snapshot.h"
#include "util/buf.h"
#include "util/err.h"

int retention_set(const struct retention *r)
{
    return r->keep || r->keep_age_s;
}

/* 1. the listing comes in publishing order, so the newest is last;
 * 2. it is never deleted, whatever the rules say. */
int retention_expires(const struct retention *r, size_t i, size_t n, int64_t mtime, int64_t now_s)
{
    int beyond = !r->keep || i + r->keep < n;
    int old = !r->keep_age_s || now_s - mtime > r->keep_age_s;
    return retention_set(r) && i + 1 < n && beyond && old;
}

int retention_parse_duration(const char *what, const char *v, int64_t *out)
{
    static const char units[] = "smhdw";
    static const int64_t secs[] = { 1, 60, 3600, 86400, 7 * 86400 };
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    const char *u = *end ? strchr(units, *end) : units;
    if (!*v || errno || end == v || n <= 0 || !u || (*end && end[1]) ||
        n > INT64_MAX / secs[u - units])
        return err_set(-EINVAL, "%s: '%s' is not a duration (say 90s, 30m, 12h or 7d)", what, v);
    *out = n * secs[u - units];
    return 0;
}

int retention_apply(struct store *s, const struct retention *r, int64_t now_s, unsigned *deleted)
{
    struct snapshot_entries l;
    *deleted = 0;
    if (!retention_set(r))
        return 0;
    int rc = snapshot_list_all(s, &l);
    char(*keys)[SNAPSHOT_KEY_LEN] = rc ? NULL : malloc((l.n + 1) * sizeof *keys);
    const char **ptrs = keys ? malloc((l.n + 1) * sizeof *ptrs) : NULL;
    if (rc == 0 && (!keys || !ptrs))
        rc = -ENOMEM;
    size_t n = 0;
    for (size_t i = 0; rc == 0 && i < l.n; i++)
        if (retention_expires(r, i, l.n, l.v[i].mtime, now_s)) {
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
