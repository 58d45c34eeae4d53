/*
 * The layers above a backend: retries, accounting, multipart split, delete
 * batching, paging. A scripted backend stands in for the server so each
 * failure happens exactly where the test wants it; the same layers run
 * against Swift in tests/e2e.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "cache/store_impl.h"
#include "check.h"
#include "util/err.h"

#define MIB (1u << 20)

/* A one-bucket server in memory whose next answers can be scripted. */
struct fake {
    pthread_mutex_t lock;
    int script[16]; /* errors to return for the next calls, 0 = behave */
    int nscript;
    int apply_then_fail; /* do the put, then report this error (an answer lost on the way) */
    struct buf object;   /* the one object, at key "k" */
    int exists;
    unsigned calls;
    size_t del_batches, deleted;
    struct buf parts[8];
    unsigned fail_part; /* part number whose first attempt fails */
};

static int next_error(struct fake *f)
{
    pthread_mutex_lock(&f->lock);
    int rc = 0;
    f->calls++;
    if (f->nscript) {
        rc = f->script[0];
        memmove(f->script, f->script + 1, sizeof f->script - sizeof f->script[0]);
        f->nscript--;
    }
    pthread_mutex_unlock(&f->lock);
    return rc ? err_set(rc, "scripted failure") : 0;
}

static void script(struct fake *f, int n, int err)
{
    f->nscript = n;
    for (int i = 0; i < n; i++)
        f->script[i] = err;
}

static int fk_put(void *impl, const char *key, const void *data, size_t len, unsigned flags)
{
    struct fake *f = impl;
    (void)key;
    int rc = next_error(f);
    if (rc)
        return rc;
    if ((flags & STORE_IF_ABSENT) && f->exists)
        return err_set(-EEXIST, "exists");
    buf_reset(&f->object);
    buf_append(&f->object, data, len);
    f->exists = 1;
    if (f->apply_then_fail) {
        rc = f->apply_then_fail;
        f->apply_then_fail = 0;
        return err_set(rc, "answer lost");
    }
    return 0;
}

static int fk_get(void *impl, const char *key, uint64_t off, uint64_t len, struct buf *out)
{
    struct fake *f = impl;
    (void)key;
    (void)off;
    (void)len;
    int rc = next_error(f);
    /* A failed attempt that still delivered half a body, as a reset connection does. */
    buf_append(out, f->object.data, rc ? f->object.len / 2 : f->object.len);
    return rc;
}

static int fk_head(void *impl, const char *key, struct store_object *o)
{
    struct fake *f = impl;
    o->key = key;
    o->size = f->object.len;
    return next_error(f);
}

static int fk_del(void *impl, const char *key)
{
    (void)key;
    return next_error(impl);
}

static int fk_del_many(void *impl, const char *const *keys, size_t n)
{
    struct fake *f = impl;
    (void)keys;
    CHECK(n <= 1000);
    f->del_batches++;
    f->deleted += n;
    return next_error(f);
}

/* Three pages of keys "0".."9" (4 + 4 + 2). */
static int fk_list_page(void *impl, struct store_page *p)
{
    int rc = next_error(impl);
    if (rc)
        return rc;
    int start = p->marker ? atoi(p->marker) : 0;
    for (int i = start; i < start + 4 && i < 10; i++) {
        char key[16];
        snprintf(key, sizeof key, "%d", i);
        struct store_object o = { key, (uint64_t)i, 0 };
        if ((rc = p->fn(p->arg, &o)) != 0)
            return rc;
    }
    if (start + 4 < 10 && asprintf(&p->next, "%d", start + 4) < 0)
        return -ENOMEM;
    return 0;
}

static int fk_copy(void *impl, const char *a, const char *b)
{
    (void)a;
    (void)b;
    return next_error(impl);
}

static int fk_mp_begin(void *impl, const char *key, char **id)
{
    (void)impl;
    (void)key;
    *id = strdup("upload-1");
    return 0;
}

static int fk_mp_part(void *impl, const char *key, const char *id, unsigned partno,
                      const void *data, size_t len, char **etag)
{
    struct fake *f = impl;
    (void)key;
    CHECK_STR(id, "upload-1");
    pthread_mutex_lock(&f->lock);
    int fail = partno == f->fail_part;
    if (fail)
        f->fail_part = 0;
    pthread_mutex_unlock(&f->lock);
    if (fail)
        return err_set(-ECONNRESET, "part lost");
    buf_reset(&f->parts[partno - 1]);
    buf_append(&f->parts[partno - 1], data, len);
    return asprintf(etag, "\"etag-%u\"", partno) < 0 ? -ENOMEM : 0;
}

static int fk_mp_complete(void *impl, const char *key, const char *id, char *const *etags,
                          unsigned n)
{
    struct fake *f = impl;
    (void)key;
    (void)id;
    buf_reset(&f->object);
    for (unsigned i = 0; i < n; i++) {
        char want[32];
        snprintf(want, sizeof want, "\"etag-%u\"", i + 1);
        CHECK_STR(etags[i], want);
        buf_append(&f->object, f->parts[i].data, f->parts[i].len);
    }
    return 0;
}

static int fk_mp_abort(void *impl, const char *key, const char *id)
{
    (void)impl;
    (void)key;
    (void)id;
    return 0;
}

static void fk_close(void *impl)
{
    (void)impl;
}

static const struct store_ops fake_ops = {
    .put = fk_put,
    .get = fk_get,
    .head = fk_head,
    .del = fk_del,
    .del_many = fk_del_many,
    .list_page = fk_list_page,
    .copy = fk_copy,
    .mp_begin = fk_mp_begin,
    .mp_part = fk_mp_part,
    .mp_complete = fk_mp_complete,
    .mp_abort = fk_mp_abort,
    .close = fk_close,
};

static struct store *open_fake(struct fake *f)
{
    struct store_options o = { .max_attempts = 4,
                               .backoff_base_ms = 1,
                               .backoff_cap_ms = 4,
                               .multipart_threshold = 10 * MIB,
                               .part_size = 5 * MIB,
                               .part_parallel = 3 };
    struct store *inner = store_new(&fake_ops, f, "fake://", &o), *s = NULL;
    CHECK(inner != NULL);
    CHECK_EQ(retry_store_wrap(inner, &s), 0);
    return s;
}

static struct store_op_stats op_stats(struct store *s, enum store_op op)
{
    struct store_stats st;
    store_get_stats(s, &st);
    return st.op[op];
}

static void check_retries(struct fake *f, struct store *s)
{
    script(f, 2, -EAGAIN);
    CHECK_EQ(store_put(s, "k", "hello", 5, 0), 0);
    struct store_op_stats st = op_stats(s, STORE_OP_PUT);
    CHECK_EQ(st.requests, 3);
    CHECK_EQ(st.retries, 2);
    CHECK_EQ(st.errors, 0);
    CHECK_EQ(st.bytes_up, 5);

    /* Never retried: refusals and missing keys. */
    script(f, 1, -EACCES);
    CHECK_EQ(store_delete(s, "k"), -EACCES);
    CHECK_EQ(op_stats(s, STORE_OP_DELETE).requests, 1);
    CHECK_EQ(op_stats(s, STORE_OP_DELETE).errors, 1);
    script(f, 1, -ENOENT);
    struct store_object o;
    CHECK_EQ(store_head(s, "k", &o), -ENOENT);
    CHECK_EQ(op_stats(s, STORE_OP_HEAD).requests, 1);

    /* Transient failures that outlast the attempts: the last error, after max_attempts. */
    script(f, 6, -ETIMEDOUT);
    CHECK_EQ(store_copy(s, "k", "k2"), -ETIMEDOUT);
    CHECK_EQ(op_stats(s, STORE_OP_COPY).requests, 4);
    f->nscript = 0;

    struct store_stats all;
    store_get_stats(s, &all);
    CHECK(strstr(all.last_error, "scripted failure") != NULL);
}

static void check_get_rewinds(struct fake *f, struct store *s)
{
    struct buf out = { 0 };
    buf_append(&out, "prefix:", 7);
    script(f, 1, -ECONNRESET);
    CHECK_EQ(store_get(s, "k", 0, STORE_TO_END, &out), 0);
    CHECK_STR((char *)out.data, "prefix:hello");
    buf_free(&out);
}

static void check_conditional_put_after_lost_answer(struct fake *f, struct store *s)
{
    f->exists = 0;
    f->apply_then_fail = -ECONNRESET; /* our put lands, its answer does not */
    CHECK_EQ(store_put(s, "k", "mine", 4, STORE_IF_ABSENT), 0);
    /* Someone else's object under the key: a real conflict. */
    CHECK_EQ(store_put(s, "k", "other", 5, STORE_IF_ABSENT), -EEXIST);
    f->apply_then_fail = 0;
}

static int count_keys(void *arg, const struct store_object *o)
{
    (void)o;
    return ++*(int *)arg == 6 ? 42 : 0;
}

static int collect(void *arg, const struct store_object *o)
{
    return buf_append(arg, o->key, strlen(o->key));
}

static void check_list_and_batches(struct fake *f, struct store *s)
{
    struct buf keys = { 0 };
    script(f, 1, -EAGAIN); /* the first page fails once: nothing delivered twice */
    CHECK_EQ(store_list(s, "", collect, &keys), 0);
    CHECK_STR((char *)keys.data, "0123456789");
    buf_free(&keys);
    int n = 0;
    CHECK_EQ(store_list(s, "", count_keys, &n), 42); /* the caller's stop, not retried */
    CHECK_EQ(n, 6);

    const char **many = calloc(2500, sizeof *many);
    for (int i = 0; i < 2500; i++)
        many[i] = "k";
    CHECK_EQ(store_delete_many(s, many, 2500), 0);
    CHECK_EQ(f->del_batches, 3);
    CHECK_EQ(f->deleted, 2500);
    free(many);
}

static void check_multipart(struct fake *f, struct store *s)
{
    size_t len = 23 * MIB + 17;
    uint8_t *data = malloc(len);
    for (size_t i = 0; i < len; i++)
        data[i] = (uint8_t)(i * 2654435761u >> 13);
    f->fail_part = 3; /* one part fails once: only it is sent again */
    CHECK_EQ(store_put(s, "k", data, len, 0), 0);
    CHECK_EQ(f->object.len, len);
    CHECK(f->object.len == len && memcmp(f->object.data, data, len) == 0);
    struct store_op_stats st = op_stats(s, STORE_OP_PART);
    CHECK_EQ(st.retries, 1);
    CHECK_EQ(st.bytes_up, len);
    /* A conditional put is never split: parts cannot be conditional. */
    f->exists = 1;
    CHECK_EQ(store_put(s, "k", data, len, STORE_IF_ABSENT), -EEXIST);
    free(data);
}

static void check_keys(struct store *s)
{
    CHECK_EQ(store_put(s, "", "x", 1, 0), -EINVAL);
    CHECK_EQ(store_put(s, "a//b", "x", 1, 0), -EINVAL);
    CHECK_EQ(store_put(s, "a/../b", "x", 1, 0), -EINVAL);
    CHECK_EQ(store_put(s, "./a", "x", 1, 0), -EINVAL);
    CHECK_EQ(store_put(s, "a/", "x", 1, 0), -EINVAL);
}

int main(void)
{
    struct fake f = { .lock = PTHREAD_MUTEX_INITIALIZER };
    struct store *s = open_fake(&f);
    check_retries(&f, s);
    check_get_rewinds(&f, s);
    check_conditional_put_after_lost_answer(&f, s);
    check_list_and_batches(&f, s);
    check_multipart(&f, s);
    check_keys(s);
    store_close(s);
    buf_free(&f.object);
    for (int i = 0; i < 8; i++)
        buf_free(&f.parts[i]);
    return check_done("test_store_layers");
}
