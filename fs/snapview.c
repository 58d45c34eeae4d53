/*
 * .snapshots (contract in snapview.h).
 *
 *   1. The listing of the bucket's snapshots is taken again when more than
 *      LIST_TTL_MS old; each ID gets a view number the first time it is seen
 *      and keeps it.
 *   2. A view is loaded (fetched, checked, its tree put in views/ID.db) when
 *      something under it is first asked for, and kept while in use; at most
 *      KEPT views stay loaded, the least recently used going first.
 *   3. A snapshot that cannot be loaded is an error for what was asked, and
 *      is tried again next time: the bucket may have been repaired.
 */
#include "snapview.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fs/fs.h"
#include "fs/snapshot.h"
#include "util/clock.h"
#include "util/err.h"

#define KEPT        4
#define LIST_TTL_MS 1000
#define INO_BITS    40
#define VIEW_MAX    ((1u << 23) - 1)

struct view {
    struct snapshot_id id;
    int loaded;
    unsigned users;
    uint64_t used; /* the tick it was last used */
    struct db *db;
    struct ns *ns;
    struct blocks_ref *refs; /* sorted by ino, idx */
    size_t nrefs;
};

struct snapview {
    struct fs *fs;
    pthread_mutex_t lock; /* the table; a view's db and ns are used without it */
    struct view **v;      /* v[k - 1] is view number k (never moves: users hold it) */
    size_t n, cap;
    uint64_t tick;
    int64_t listed_ms; /* when the listing below was taken */
    struct snapshot_entries listed;
    struct timespec born;
};

static uint64_t ino_of(size_t k, uint64_t ino)
{
    return SNAPVIEW_BIT | ((uint64_t)k << INO_BITS) | ino;
}

static size_t view_of(uint64_t ino)
{
    return (size_t)((ino & ~SNAPVIEW_BIT) >> INO_BITS);
}

static uint64_t own_ino(uint64_t ino)
{
    return ino & ((1ULL << INO_BITS) - 1);
}

int snapview_open(struct fs *fs, struct snapview **out)
{
    struct snapview *sv = calloc(1, sizeof *sv);
    if (!sv)
        return -ENOMEM;
    sv->fs = fs;
    pthread_mutex_init(&sv->lock, NULL);
    clock_gettime(CLOCK_REALTIME, &sv->born);
    *out = sv;
    return 0;
}

static void view_path(const struct snapview *sv, struct snapshot_id id, char *path, size_t n)
{
    char text[SNAPSHOT_ID_LEN];
    snapshot_id_text(id, text);
    snprintf(path, n, "%s/views/%s.db", sv->fs->cache_dir, text);
}

/* Its tables go, from memory and disk. Caller holds the lock; no users. */
static void unload(struct snapview *sv, struct view *v)
{
    char path[PATH_MAX];
    ns_close(v->ns);
    db_close(v->db);
    free(v->refs);
    view_path(sv, v->id, path, sizeof path);
    unlink(path);
    strcat(path, "-wal");
    unlink(path);
    path[strlen(path) - 4] = '\0';
    strcat(path, "-shm");
    unlink(path);
    v->ns = NULL;
    v->db = NULL;
    v->refs = NULL;
    v->loaded = 0;
}

void snapview_close(struct snapview *sv)
{
    if (!sv)
        return;
    for (size_t i = 0; i < sv->n; i++) {
        if (sv->v[i]->loaded)
            unload(sv, sv->v[i]);
        free(sv->v[i]);
    }
    free(sv->v);
    free(sv->listed.v);
    pthread_mutex_destroy(&sv->lock);
    free(sv);
}

static int same(struct snapshot_id a, struct snapshot_id b)
{
    return a.epoch == b.epoch && a.seq == b.seq;
}

/* Rule 1: view number of id, given one if new (0 if out of numbers or memory). */
static size_t number(struct snapview *sv, struct snapshot_id id)
{
    for (size_t i = 0; i < sv->n; i++)
        if (same(sv->v[i]->id, id))
            return i + 1;
    struct view *v = sv->n < VIEW_MAX ? calloc(1, sizeof *v) : NULL;
    if (!v || array_grow((void **)&sv->v, &sv->cap, sv->n, sizeof *sv->v)) {
        free(v);
        return 0;
    }
    v->id = id;
    sv->v[sv->n] = v;
    return ++sv->n;
}

/* Rule 1. Caller holds the lock. */
static int refresh_listing(struct snapview *sv)
{
    if (sv->listed_ms && clock_monotonic_ns() / 1000000 - sv->listed_ms < LIST_TTL_MS)
        return 0;
    free(sv->listed.v);
    int rc = snapshot_list_all(sv->fs->store, &sv->listed);
    for (size_t i = 0; rc == 0 && i < sv->listed.n; i++)
        if (!number(sv, sv->listed.v[i].id))
            rc = -ENOMEM;
    sv->listed_ms = rc ? 0 : clock_monotonic_ns() / 1000000;
    return rc;
}

/* Rule 2: the least recently used loaded view nobody uses goes. */
static void make_room(struct snapview *sv)
{
    size_t loaded = 0;
    struct view *oldest = NULL;
    for (size_t i = 0; i < sv->n; i++) {
        struct view *v = sv->v[i];
        loaded += v->loaded;
        if (v->loaded && !v->users && (!oldest || v->used < oldest->used))
            oldest = v;
    }
    if (loaded >= KEPT && oldest)
        unload(sv, oldest);
}

static int load(struct snapview *sv, struct view *v)
{
    struct fs *fs = sv->fs;
    char path[PATH_MAX];
    struct buf plain = { 0 };
    struct snapshot_info info;
    snprintf(path, sizeof path, "%s/views", fs->cache_dir);
    if (mkdir(path, 0700) && errno != EEXIST)
        return err_set(-EIO, "cannot create %s: %s", path, strerror(errno));
    view_path(sv, v->id, path, sizeof path);
    unlink(path);
    int rc = snapshot_fetch(fs->store, fs->codec, v->id, &plain);
    if (rc == 0)
        rc = db_open(path, &v->db);
    if (rc == 0)
        rc = ns_open(v->db, 0, 0, &v->ns);
    if (rc == 0)
        rc = snapshot_load_tree(&plain, v->db, v->ns, blocks_block_size(fs->blocks), &v->refs,
                                &v->nrefs, &info);
    buf_free(&plain);
    v->loaded = 1; /* so that unload can clean up */
    if (rc) {
        unload(sv, v);
        char text[SNAPSHOT_ID_LEN];
        snapshot_id_text(v->id, text);
        return err_wrap(rc, "%s/%s", SNAPVIEW_NAME, text);
    }
    return 0;
}

/* View k, loaded and in use (view_put when done), or NULL with *rc. The
 * load happens under the lock: two readers of a new view load it once. */
static struct view *view_get(struct snapview *sv, size_t k, int *rc)
{
    pthread_mutex_lock(&sv->lock);
    struct view *v = k >= 1 && k <= sv->n ? sv->v[k - 1] : NULL;
    *rc = v ? 0 : -ENOENT;
    if (v && !v->loaded) {
        make_room(sv);
        *rc = load(sv, v);
    }
    if (*rc == 0) {
        v->users++;
        v->used = ++sv->tick;
    }
    pthread_mutex_unlock(&sv->lock);
    return *rc ? NULL : v;
}

static void view_put(struct snapview *sv, struct view *v)
{
    pthread_mutex_lock(&sv->lock);
    v->users--;
    pthread_mutex_unlock(&sv->lock);
}

static void dir_attr(const struct snapview *sv, struct ns_attr *a)
{
    *a = (struct ns_attr){ .ino = SNAPVIEW_DIR,
                           .mode = S_IFDIR | 0555,
                           .nlink = 2,
                           .uid = (uint32_t)getuid(),
                           .gid = (uint32_t)getgid(),
                           .atime = sv->born,
                           .mtime = sv->born,
                           .ctime = sv->born };
}

/* Attributes read from view k's tables, in our inode numbers. */
static void renumber(size_t k, struct ns_attr *a)
{
    a->ino = ino_of(k, a->ino);
}

static int in_view(struct snapview *sv, uint64_t ino,
                   int (*fn)(struct view *v, uint64_t own, void *arg), void *arg)
{
    int rc;
    struct view *v = view_get(sv, view_of(ino), &rc);
    if (!v)
        return rc;
    rc = fn(v, own_ino(ino), arg);
    view_put(sv, v);
    return rc;
}

struct attr_job {
    size_t k;
    const char *name; /* lookup's */
    struct ns_attr *out;
};

static int getattr_in(struct view *v, uint64_t own, void *arg)
{
    struct attr_job *j = arg;
    int rc = ns_getattr(v->ns, own, j->out);
    if (rc == 0)
        renumber(j->k, j->out);
    return rc;
}

static int lookup_in(struct view *v, uint64_t own, void *arg)
{
    struct attr_job *j = arg;
    int rc = ns_lookup(v->ns, own, j->name, j->out);
    if (rc == 0 && j->out->ino >= (1ULL << INO_BITS))
        rc = err_set(-EIO, "an inode number of a snapshot is too large to show");
    if (rc == 0)
        renumber(j->k, j->out);
    return rc;
}

/* The view number of the snapshot called name in .snapshots, or 0. */
static size_t find_listed(struct snapview *sv, const char *name, int *rc)
{
    struct snapshot_id id;
    if (snapshot_parse_id(name, &id))
        return 0;
    pthread_mutex_lock(&sv->lock);
    *rc = refresh_listing(sv);
    size_t k = 0;
    for (size_t i = 0; *rc == 0 && i < sv->listed.n; i++)
        if (same(sv->listed.v[i].id, id))
            k = number(sv, id);
    pthread_mutex_unlock(&sv->lock);
    return k;
}

int snapview_lookup(struct snapview *sv, uint64_t parent, const char *name, struct ns_attr *out)
{
    int rc = 0;
    if (parent == NS_ROOT) {
        dir_attr(sv, out);
        return strcmp(name, SNAPVIEW_NAME) ? -ENOENT : 0;
    }
    if (parent == SNAPVIEW_DIR) {
        size_t k = find_listed(sv, name, &rc);
        struct attr_job j = { k, NULL, out };
        return rc ? rc : !k ? -ENOENT : in_view(sv, ino_of(k, NS_ROOT), getattr_in, &j);
    }
    struct attr_job j = { view_of(parent), name, out };
    return in_view(sv, parent, lookup_in, &j);
}

int snapview_getattr(struct snapview *sv, uint64_t ino, struct ns_attr *out)
{
    if (ino == SNAPVIEW_DIR) {
        dir_attr(sv, out);
        return 0;
    }
    struct attr_job j = { view_of(ino), NULL, out };
    return in_view(sv, ino, getattr_in, &j);
}

/* .snapshots: ".", "..", then the IDs, the cookie of an entry being its
 * place in the listing plus 3. */
static int list_views(struct snapview *sv, uint64_t off, ns_dirent_fn fn, void *arg)
{
    struct ns_attr a;
    char text[SNAPSHOT_ID_LEN];
    dir_attr(sv, &a);
    if (off == 0 && fn(arg, ".", &a, 1))
        return 0;
    a.ino = NS_ROOT;
    if (off <= 1 && fn(arg, "..", &a, 2))
        return 0;
    pthread_mutex_lock(&sv->lock);
    int rc = off <= 2 ? refresh_listing(sv) : 0; /* a listing goes on with the IDs it began */
    size_t n = sv->listed.n;
    struct snapshot_id *ids = rc ? NULL : malloc((n ? n : 1) * sizeof *ids);
    size_t *ks = ids ? malloc((n ? n : 1) * sizeof *ks) : NULL;
    for (size_t i = 0; ks && i < n; i++) {
        ids[i] = sv->listed.v[i].id;
        ks[i] = number(sv, ids[i]);
    }
    pthread_mutex_unlock(&sv->lock);
    if (rc == 0 && !ks)
        rc = -ENOMEM;
    for (size_t i = off > 3 ? off - 3 : 0; rc == 0 && i < n; i++) {
        snapshot_id_text(ids[i], text);
        a = (struct ns_attr){ .ino = ino_of(ks[i], NS_ROOT), .mode = S_IFDIR };
        if (fn(arg, text, &a, i + 4))
            break;
    }
    free(ids);
    free(ks);
    return rc;
}

struct readdir_job {
    size_t k;
    uint64_t dir; /* the snapshot's own number of the directory listed */
    uint64_t off;
    size_t max;
    ns_dirent_fn fn;
    void *arg;
    struct snapview *sv;
};

/* Entries of a view's directory, renumbered; ".." of its root is .snapshots. */
static int renumbered(void *arg, const char *name, const struct ns_attr *attr, uint64_t next_off)
{
    struct readdir_job *j = arg;
    struct ns_attr a = *attr;
    if (a.ino >= (1ULL << INO_BITS))
        return 0; /* cannot be shown (lookup says why) */
    if (!strcmp(name, "..") && j->dir == NS_ROOT)
        dir_attr(j->sv, &a);
    else
        renumber(j->k, &a);
    return j->fn(j->arg, name, &a, next_off);
}

static int readdir_in(struct view *v, uint64_t own, void *arg)
{
    struct readdir_job *j = arg;
    return ns_readdir(v->ns, own, j->off, j->max, renumbered, j);
}

int snapview_readdir(struct snapview *sv, uint64_t dir, uint64_t off, size_t max, ns_dirent_fn fn,
                     void *arg)
{
    if (dir == SNAPVIEW_DIR)
        return list_views(sv, off, fn, arg);
    struct readdir_job j = { view_of(dir), own_ino(dir), off, max, fn, arg, sv };
    return in_view(sv, dir, readdir_in, &j);
}

struct buf_job {
    const char *name;
    struct buf *out;
};

static int readlink_in(struct view *v, uint64_t own, void *arg)
{
    return ns_readlink(v->ns, own, ((struct buf_job *)arg)->out);
}

static int getxattr_in(struct view *v, uint64_t own, void *arg)
{
    struct buf_job *j = arg;
    return ns_getxattr(v->ns, own, j->name, j->out);
}

static int listxattr_in(struct view *v, uint64_t own, void *arg)
{
    return ns_listxattr(v->ns, own, ((struct buf_job *)arg)->out);
}

int snapview_readlink(struct snapview *sv, uint64_t ino, struct buf *out)
{
    struct buf_job j = { NULL, out };
    return ino == SNAPVIEW_DIR ? -EINVAL : in_view(sv, ino, readlink_in, &j);
}

int snapview_getxattr(struct snapview *sv, uint64_t ino, const char *name, struct buf *out)
{
    struct buf_job j = { name, out };
    return ino == SNAPVIEW_DIR ? -ENODATA : in_view(sv, ino, getxattr_in, &j);
}

int snapview_listxattr(struct snapview *sv, uint64_t ino, struct buf *out)
{
    struct buf_job j = { NULL, out };
    return ino == SNAPVIEW_DIR ? 0 : in_view(sv, ino, listxattr_in, &j);
}

struct version_job {
    struct snapview *sv;
    struct blocks_version **out;
};

static int version_in(struct view *v, uint64_t own, void *arg)
{
    struct version_job *j = arg;
    struct ns_attr a;
    int rc = ns_getattr(v->ns, own, &a);
    if (rc == 0 && !S_ISREG(a.mode))
        rc = -EISDIR;
    size_t lo = 0, hi = v->nrefs;
    while (lo < hi) { /* the first block of own */
        size_t mid = lo + (hi - lo) / 2;
        if (v->refs[mid].ino < own)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (hi = lo; hi < v->nrefs && v->refs[hi].ino == own; hi++)
        ;
    return rc ? rc
              : blocks_version_of(j->sv->fs->blocks, own, a.size, v->refs + lo, hi - lo, j->out);
}

int snapview_version(struct snapview *sv, uint64_t ino, struct blocks_version **out)
{
    struct version_job j = { sv, out };
    return ino == SNAPVIEW_DIR ? -EISDIR : in_view(sv, ino, version_in, &j);
}
