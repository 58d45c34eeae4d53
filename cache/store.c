/*
 * The top of every store stack: picks the backend for a URL, wraps it in the
 * retry layer, and turns the caller's big requests into the backend's unit
 * requests — a large put into parallel parts, a long delete list into
 * batches, a listing into pages — each of which goes through the retry layer
 * on its own, so one failed part costs one part, not the whole object.
 */
#include "store_impl.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util/err.h"
#include "util/log.h"

#define MIB          ((size_t)1 << 20)
#define S3_MIN_PART  (5 * MIB)
#define S3_MAX_PARTS 10000u
#define DELETE_BATCH 1000u

static void fill_defaults(struct store_options *o)
{
    if (!o->connect_timeout_ms)
        o->connect_timeout_ms = 10000;
    if (!o->timeout_ms)
        o->timeout_ms = 30000;
    if (!o->max_attempts)
        o->max_attempts = 6;
    if (!o->backoff_base_ms)
        o->backoff_base_ms = 100;
    if (!o->backoff_cap_ms)
        o->backoff_cap_ms = 5000;
    if (!o->list_page || o->list_page > 1000)
        o->list_page = 1000;
    if (!o->multipart_threshold)
        o->multipart_threshold = 64 * MIB;
    if (!o->part_size)
        o->part_size = 16 * MIB;
    if (o->part_size < S3_MIN_PART)
        o->part_size = S3_MIN_PART;
    if (!o->part_parallel)
        o->part_parallel = 4;
}

struct store *store_new(const struct store_ops *ops, void *impl, const char *url,
                        const struct store_options *opt)
{
    struct store *s = calloc(1, sizeof *s);
    char *u = strdup(url);
    if (!s || !u) {
        free(s);
        free(u);
        ops->close(impl);
        return NULL;
    }
    s->ops = ops;
    s->impl = impl;
    s->url = u;
    if (opt)
        s->opt = *opt;
    /* Only the numbers are used after opening; the caller's strings may not outlive it. */
    s->opt.endpoint = s->opt.region = s->opt.profile = s->opt.credentials_file = NULL;
    fill_defaults(&s->opt);
    return s;
}

int store_open(const char *url, const struct store_options *opt, struct store **out)
{
    struct store_options o = opt ? *opt : (struct store_options){ 0 };
    struct store *backend = NULL;
    int rc;

    fill_defaults(&o);
    err_clear();
    if (strncmp(url, "s3://", 5) == 0)
        rc = s3_store_open(url, &o, &backend);
    else if (strncmp(url, "file://", 7) == 0)
        rc = file_store_open(url, &o, &backend);
    else
        return err_set(-EINVAL,
                       "'%s' is not a store URL (expected s3://BUCKET[/PREFIX] or "
                       "file:///ABSOLUTE/PATH)",
                       url);
    if (rc)
        return rc;
    return retry_store_wrap(backend, out);
}

void store_close(struct store *s)
{
    if (!s)
        return;
    s->ops->close(s->impl);
    free(s->url);
    free(s);
}

const char *store_url(const struct store *s)
{
    return s->url;
}

int store_check_key(const char *key)
{
    const char *seg = key;
    if (!*key)
        return err_set(-EINVAL, "empty object key");
    for (;;) {
        const char *end = strchr(seg, '/');
        size_t n = end ? (size_t)(end - seg) : strlen(seg);
        if (n == 0 || (n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.'))
            return err_set(-EINVAL,
                           "bad object key '%s': empty, '.' or '..' path segments are not allowed",
                           key);
        if (!end)
            return 0;
        seg = end + 1;
    }
}

/* ---- multipart: parts go up in parallel, each through the retry layer ---- */

struct mp_job {
    struct store *s;
    const char *key;
    const char *upload_id;
    const uint8_t *data;
    size_t len;
    size_t part_size;
    unsigned nparts;
    char **etags;
    pthread_mutex_t lock;
    unsigned next; /* next part to send, 0-based */
    int rc;        /* first failure */
    char err[512];
};

static int mp_take(struct mp_job *j, unsigned *part)
{
    pthread_mutex_lock(&j->lock);
    int ok = j->rc == 0 && j->next < j->nparts;
    if (ok)
        *part = j->next++;
    pthread_mutex_unlock(&j->lock);
    return ok;
}

static void mp_fail(struct mp_job *j, int rc)
{
    pthread_mutex_lock(&j->lock);
    if (!j->rc) {
        j->rc = rc;
        snprintf(j->err, sizeof j->err, "%s", err_msg(rc));
    }
    pthread_mutex_unlock(&j->lock);
}

static void *mp_worker(void *arg)
{
    struct mp_job *j = arg;
    unsigned p;
    while (mp_take(j, &p)) {
        size_t off = (size_t)p * j->part_size;
        size_t n = j->len - off < j->part_size ? j->len - off : j->part_size;
        int rc = j->s->ops->mp_part(j->s->impl, j->key, j->upload_id, p + 1, j->data + off, n,
                                    &j->etags[p]);
        if (rc)
            mp_fail(j, rc);
    }
    return NULL;
}

static int mp_run(struct mp_job *j, unsigned nthreads)
{
    pthread_t tid[16];
    unsigned started = 0;
    if (nthreads > 16)
        nthreads = 16;
    for (; started + 1 < nthreads; started++)
        if (pthread_create(&tid[started], NULL, mp_worker, j))
            break;
    mp_worker(j); /* the calling thread works too */
    for (unsigned i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
    return j->rc ? err_set(j->rc, "%s", j->err) : 0;
}

static int put_multipart(struct store *s, const char *key, const void *data, size_t len)
{
    size_t part = s->opt.part_size;
    while ((len + part - 1) / part > S3_MAX_PARTS)
        part *= 2;
    struct mp_job j = { .s = s, .key = key, .data = data, .len = len, .part_size = part };
    j.nparts = (unsigned)((len + part - 1) / part);
    j.etags = calloc(j.nparts, sizeof *j.etags);
    char *upload_id = NULL;
    int rc = j.etags ? s->ops->mp_begin(s->impl, key, &upload_id) : -ENOMEM;
    if (rc == 0) {
        j.upload_id = upload_id;
        pthread_mutex_init(&j.lock, NULL);
        rc = mp_run(&j, s->opt.part_parallel);
        pthread_mutex_destroy(&j.lock);
        if (rc == 0)
            rc = s->ops->mp_complete(s->impl, key, upload_id, j.etags, j.nparts);
        if (rc) {
            /* Abandoned parts cost storage until aborted; the put's own error is the one to report.
             */
            char keep[512];
            snprintf(keep, sizeof keep, "%s", err_msg(rc));
            int arc = s->ops->mp_abort(s->impl, key, upload_id);
            if (arc)
                log_warn("could not abort the multipart upload of %s (%s): its parts stay in the "
                         "bucket until a lifecycle rule removes them",
                         key, err_msg(arc));
            err_set(rc, "%s", keep);
        }
    }
    for (unsigned i = 0; j.etags && i < j.nparts; i++)
        free(j.etags[i]);
    free(j.etags);
    free(upload_id);
    return rc;
}

int store_put(struct store *s, const char *key, const void *data, size_t len, unsigned flags)
{
    int rc = store_check_key(key);
    if (rc)
        return rc;
    /* A conditional put must be one request: parts cannot be made conditional. */
    if (len > s->opt.multipart_threshold && s->ops->mp_begin && !(flags & STORE_IF_ABSENT))
        return put_multipart(s, key, data, len);
    return s->ops->put(s->impl, key, data, len, flags);
}

int store_get(struct store *s, const char *key, uint64_t off, uint64_t len, struct buf *out)
{
    int rc = store_check_key(key);
    if (rc || len == 0)
        return rc;
    return s->ops->get(s->impl, key, off, len, out);
}

int store_head(struct store *s, const char *key, struct store_object *obj)
{
    int rc = store_check_key(key);
    return rc ? rc : s->ops->head(s->impl, key, obj);
}

int store_delete(struct store *s, const char *key)
{
    int rc = store_check_key(key);
    return rc ? rc : s->ops->del(s->impl, key);
}

int store_delete_many(struct store *s, const char *const *keys, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int rc = store_check_key(keys[i]);
        if (rc)
            return rc;
    }
    for (size_t i = 0; i < n; i += DELETE_BATCH) {
        size_t k = n - i < DELETE_BATCH ? n - i : DELETE_BATCH;
        int rc = s->ops->del_many(s->impl, keys + i, k);
        if (rc)
            return rc;
    }
    return 0;
}

/* A prefix's directory part (up to its last '/') must be a valid key, or a
 * file backend's walk could leave its root; the part after it only filters. */
static int check_prefix(const char *prefix)
{
    const char *slash = strrchr(prefix, '/');
    if (!slash)
        return 0;
    char *dir = strndup(prefix, (size_t)(slash - prefix));
    int rc = dir ? store_check_key(dir) : -ENOMEM;
    free(dir);
    return rc ? err_set(rc, "bad prefix '%s': empty, '.' or '..' segments are not allowed", prefix)
              : 0;
}

/* What a listing delivers is checked here, for every backend alike: only
 * keys under the prefix, only well-formed keys (a console's "folder/" object
 * or a hostile "../x" is skipped), and in strictly increasing order, so a
 * server that repeats itself cannot make the caller see an object twice. */
struct list_guard {
    const char *prefix;
    size_t prefix_len;
    store_list_fn fn;
    void *arg;
    struct buf last; /* the previous key delivered */
};

static int guarded(void *arg, const struct store_object *o)
{
    struct list_guard *g = arg;
    if (strncmp(o->key, g->prefix, g->prefix_len) != 0)
        return 0;
    if (store_check_key(o->key) != 0) {
        log_warn("listing: skipping object '%s': not a key this store can name", o->key);
        return 0;
    }
    if (g->last.len && strcmp(o->key, (char *)g->last.data) <= 0)
        return err_set(-EBADMSG, "the server listed '%s' after '%s': out of order", o->key,
                       (char *)g->last.data);
    buf_reset(&g->last);
    if (buf_append(&g->last, o->key, strlen(o->key) + 1))
        return -ENOMEM;
    return g->fn(g->arg, o);
}

int store_list(struct store *s, const char *prefix, store_list_fn fn, void *arg)
{
    struct list_guard g = { prefix ? prefix : "", 0, fn, arg, { 0 } };
    char *marker = NULL;
    int rc = check_prefix(g.prefix);
    g.prefix_len = strlen(g.prefix);
    while (rc == 0) {
        struct store_page page = { .prefix = g.prefix,
                                   .marker = marker,
                                   .max_keys = s->opt.list_page,
                                   .fn = guarded,
                                   .arg = &g };
        rc = s->ops->list_page(s->impl, &page);
        if (rc == 0 && page.next && marker && strcmp(page.next, marker) == 0)
            rc = err_set(-EBADMSG, "listing %s: the server's pages do not advance", s->url);
        free(marker);
        marker = page.next;
        if (!marker)
            break;
    }
    free(marker);
    buf_free(&g.last);
    return rc;
}

int store_copy(struct store *s, const char *from, const char *to)
{
    int rc = store_check_key(from);
    if (!rc)
        rc = store_check_key(to);
    return rc ? rc : s->ops->copy(s->impl, from, to);
}

static int same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

int store_copy_from(struct store *dst, struct store *src, const char *key)
{
    int s3 = !strncmp(dst->url, "s3://", 5) && !strncmp(src->url, "s3://", 5);
    int file = !strncmp(dst->url, "file://", 7) && !strncmp(src->url, "file://", 7);
    const struct store_options *a = &dst->opt, *b = &src->opt;
    int one_server =
        file || (s3 && same(a->endpoint, b->endpoint) && same(a->region, b->region) &&
                 same(a->profile, b->profile) && same(a->credentials_file, b->credentials_file));
    if (!one_server || !src->ops->copy_source)
        return -EXDEV;
    int rc = store_check_key(key);
    struct buf from = { 0 };
    if (rc == 0)
        rc = src->ops->copy_source(src->impl, key, &from);
    if (rc == 0)
        rc = dst->ops->copy(dst->impl, (const char *)from.data, key);
    buf_free(&from);
    return rc;
}

/* A probe key no one else uses, so two probing processes cannot confuse each other. */
static void probe_key(char *key, size_t n)
{
    unsigned long long r = 0;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
        r = (unsigned long long)time(NULL) ^ ((unsigned long long)getpid() << 32);
    snprintf(key, n, ".ckptfs-probe-%016llx", r);
}

int store_probe(struct store *s, unsigned *caps)
{
    char key[64];
    probe_key(key, sizeof key);
    *caps = 0;
    int rc = s->ops->put(s->impl, key, "1", 1, STORE_IF_ABSENT);
    if (rc == -ENOTSUP) /* 501: the server says it does not implement the header */
        return 0;
    if (rc)
        return rc;
    /* A server that ignores the header lets this second put overwrite. */
    rc = s->ops->put(s->impl, key, "2", 1, STORE_IF_ABSENT);
    if (rc == -EEXIST)
        *caps |= STORE_CAP_IF_ABSENT;
    int del = s->ops->del(s->impl, key);
    return rc && rc != -EEXIST ? rc : del;
}

void store_get_stats(struct store *s, struct store_stats *st)
{
    memset(st, 0, sizeof *st);
    if (s->ops->stats)
        s->ops->stats(s->impl, st);
}

const char *store_op_name(enum store_op op)
{
    static const char *const names[STORE_OP_COUNT] = { "put",         "get",  "head", "delete",
                                                       "delete_many", "list", "copy", "multipart" };
    return op < STORE_OP_COUNT ? names[op] : "?";
}

/* The deepest existing directory above path, so that tools working on one
 * object never create or prune directories outside what they were given. */
static size_t existing_parent(const char *path)
{
    char *dir = strdup(path);
    size_t n = 1;
    for (char *slash; dir && (slash = strrchr(dir, '/')) != NULL && slash != dir;) {
        *slash = '\0';
        struct stat st;
        if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) {
            n = strlen(dir);
            break;
        }
    }
    free(dir);
    return n;
}

int store_url_split(const char *object_url, char **store_url, char **key)
{
    size_t base, skip;
    if (strncmp(object_url, "s3://", 5) == 0) {
        const char *slash = strchr(object_url + 5, '/');
        base = slash ? (size_t)(slash - object_url) : strlen(object_url);
        if (base == 5)
            return err_set(-EINVAL, "'%s' names no bucket", object_url);
        skip = slash ? 1 : 0;
    } else if (strncmp(object_url, "file:///", 8) == 0) {
        base = 7 + existing_parent(object_url + 7);
        skip = object_url[base] == '/' ? 1 : 0;
    } else if (strncmp(object_url, "file://", 7) == 0) {
        return err_set(-EINVAL, "'%s': a file URL needs an absolute path (file:///DIR)",
                       object_url);
    } else {
        return err_set(-EINVAL,
                       "'%s' is not an object URL (expected s3://BUCKET/KEY or "
                       "file:///ABSOLUTE/PATH)",
                       object_url);
    }
    *store_url = strndup(object_url, base);
    *key = strdup(object_url + base + skip);
    if (!*store_url || !*key) {
        free(*store_url);
        free(*key);
        return -ENOMEM;
    }
    return 0;
}
