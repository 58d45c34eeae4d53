/*
 * The store conformance suite: the same checks for every backend, so "the
 * file backend behaves like S3" is a tested claim rather than a hope.
 *
 *   store_conformance URL [--if-absent yes|no] [--endpoint ...]
 *
 * URL must name an empty bucket or prefix. --if-absent says whether the
 * server is expected to honour conditional puts (file: yes, Swift: no).
 * meson test runs it on a file:// directory; tests/e2e runs it on Swift.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/store.h"
#include "cache/store_options.h"
#include "check.h"
#include "util/err.h"

#define MIB (1u << 20)

static struct store *s;

static void fill(uint8_t *p, size_t n, unsigned seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (uint8_t)x;
    }
}

/* Gets key's range and compares it with want. */
static void check_get(const char *key, uint64_t off, uint64_t len, const void *want, size_t n)
{
    struct buf b = { 0 };
    int rc = store_get(s, key, off, len, &b);
    CHECK_EQ(rc, 0);
    if (rc)
        fprintf(stderr, "  get %s: %s\n", key, err_msg(rc));
    CHECK_EQ(b.len, n);
    CHECK(b.len == n && (n == 0 || memcmp(b.data, want, n) == 0));
    buf_free(&b);
}

static void check_objects(void)
{
    static const char text[] = "0123456789abcdef";
    struct store_object o;
    struct buf b = { 0 };
    printf("objects: put, get ranges, head, overwrite, missing keys\n");
    CHECK_EQ(store_put(s, "obj", text, 16, 0), 0);
    check_get("obj", 0, STORE_TO_END, text, 16);
    check_get("obj", 3, 4, text + 3, 4);
    check_get("obj", 10, STORE_TO_END, text + 10, 6);
    check_get("obj", 12, 100, text + 12, 4); /* cut short at the end */
    CHECK_EQ(store_get(s, "obj", 16, 1, &b), -ERANGE);
    CHECK_EQ(b.len, 0);
    CHECK_EQ(store_head(s, "obj", &o), 0);
    CHECK_EQ(o.size, 16);
    CHECK(o.mtime > 1600000000);
    CHECK_EQ(store_put(s, "obj", "new", 3, 0), 0);
    check_get("obj", 0, STORE_TO_END, "new", 3);
    CHECK_EQ(store_put(s, "obj", "unsigned", 8, STORE_SELF_VERIFYING), 0);
    check_get("obj", 0, STORE_TO_END, "unsigned", 8);
    CHECK_EQ(store_put(s, "empty", "", 0, 0), 0);
    check_get("empty", 0, STORE_TO_END, "", 0);
    check_get("empty", 0, 10, "", 0);
    CHECK_EQ(store_get(s, "empty", 1, 1, &b), -ERANGE);
    CHECK_EQ(store_head(s, "empty", &o), 0);
    CHECK_EQ(o.size, 0);
    CHECK_EQ(store_get(s, "missing", 0, STORE_TO_END, &b), -ENOENT);
    CHECK_EQ(store_head(s, "missing", &o), -ENOENT);
    CHECK_EQ(store_delete(s, "missing"), 0);
    CHECK_EQ(store_delete(s, "obj"), 0);
    CHECK_EQ(store_get(s, "obj", 0, STORE_TO_END, &b), -ENOENT);
    CHECK_EQ(store_delete(s, "empty"), 0);
    buf_free(&b);
}

static void check_odd_keys(void)
{
    static const char *keys[] = { "dir with space/file",
                                  "uni/\xc3\xbc"
                                  "n\xc3\xaf"
                                  "c\xc3\xb6"
                                  "de",
                                  "sym/a+b=c&d?e#f%g", "sym/~tilde.,;:@!$'()*" };
    printf("keys with spaces, UTF-8 and reserved characters\n");
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        CHECK_EQ(store_put(s, keys[i], keys[i], strlen(keys[i]), 0), 0);
        check_get(keys[i], 0, STORE_TO_END, keys[i], strlen(keys[i]));
        CHECK_EQ(store_delete(s, keys[i]), 0);
    }
}

static void check_if_absent(int expected)
{
    unsigned caps = 0;
    printf("conditional put (expected %s)\n", expected ? "honoured" : "not implemented");
    CHECK_EQ(store_probe(s, &caps), 0);
    CHECK_EQ(!!(caps & STORE_CAP_IF_ABSENT), expected);
    int rc = store_put(s, "cond", "first", 5, STORE_IF_ABSENT);
    if (expected) {
        CHECK_EQ(rc, 0);
        CHECK_EQ(store_put(s, "cond", "second", 6, STORE_IF_ABSENT), -EEXIST);
        check_get("cond", 0, STORE_TO_END, "first", 5);
        CHECK_EQ(store_delete(s, "cond"), 0);
    } else {
        CHECK_EQ(rc, -ENOTSUP);
    }
}

struct listing {
    struct buf keys; /* "key size\n" lines */
};

static int collect(void *arg, const struct store_object *o)
{
    return buf_printf(&((struct listing *)arg)->keys, "%s %llu\n", o->key,
                      (unsigned long long)o->size);
}

static void check_list(const char *prefix, const char *want)
{
    struct listing l = { { 0 } };
    int rc = store_list(s, prefix, collect, &l);
    CHECK_EQ(rc, 0);
    if (rc)
        fprintf(stderr, "  list %s: %s\n", prefix, err_msg(rc));
    CHECK_STR(l.keys.data ? (char *)l.keys.data : "", want);
    buf_free(&l.keys);
}

static void check_listing(void)
{
    /* Chosen so byte order differs from a naive directory walk: '-' < '.' < '/' < '0'.
     * ("a/b" and "a/b/c" together would be fine for S3 but not for a directory tree.) */
    static const char *keys[] = { "a/b/c", "a0", "a-b", "b", "a.b", "a/c", "a/b0" };
    printf("listing: byte order across directories, prefixes, paging\n");
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        CHECK_EQ(store_put(s, keys[i], "xyz", 1 + i % 3, 0), 0);
    check_list("", "a-b 3\na.b 2\na/b/c 1\na/b0 1\na/c 3\na0 2\nb 1\n");
    check_list("a/", "a/b/c 1\na/b0 1\na/c 3\n");
    check_list("a/b", "a/b/c 1\na/b0 1\n");
    check_list("a", "a-b 3\na.b 2\na/b/c 1\na/b0 1\na/c 3\na0 2\n");
    check_list("nothing/", "");
    CHECK_EQ(store_delete_many(s, keys, sizeof keys / sizeof keys[0]), 0);
    check_list("", "");
}

static void check_many(void)
{
    enum { N = 37 };
    char names[N][24];
    const char *keys[N];
    struct buf want = { 0 };
    printf("%d objects over several list pages, batch delete\n", N);
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "many/%03d", i);
        keys[i] = names[i];
        CHECK_EQ(store_put(s, keys[i], "", 0, 0), 0);
        buf_printf(&want, "%s 0\n", keys[i]);
    }
    check_list("many/", (char *)want.data);
    CHECK_EQ(store_delete_many(s, keys, N), 0);
    check_list("many/", "");
    buf_free(&want);
}

static void check_copy(void)
{
    uint8_t data[3000];
    fill(data, sizeof data, 7);
    printf("copy\n");
    CHECK_EQ(store_put(s, "src/x", data, sizeof data, 0), 0);
    CHECK_EQ(store_copy(s, "src/x", "dst/y"), 0);
    check_get("dst/y", 0, STORE_TO_END, data, sizeof data);
    CHECK_EQ(store_copy(s, "src/none", "dst/z"), -ENOENT);
    const char *keys[] = { "src/x", "dst/y" };
    CHECK_EQ(store_delete_many(s, keys, 2), 0);
}

static void check_large(void)
{
    size_t len = 13 * MIB + 12345; /* three parts with a 6 MiB threshold and 5 MiB parts */
    uint8_t *data = malloc(len);
    struct store_object o;
    printf("large object (multipart where the backend has it)\n");
    fill(data, len, 3);
    CHECK_EQ(store_put(s, "large", data, len, 0), 0);
    CHECK_EQ(store_head(s, "large", &o), 0);
    CHECK_EQ(o.size, len);
    check_get("large", 0, STORE_TO_END, data, len);
    check_get("large", 5 * MIB - 10, 20, data + 5 * MIB - 10, 20); /* across a part boundary */
    CHECK_EQ(store_delete(s, "large"), 0);
    free(data);
}

static void *worker(void *arg)
{
    unsigned id = (unsigned)(uintptr_t)arg;
    uint8_t data[70000];
    for (unsigned i = 0; i < 10; i++) {
        char key[64];
        size_t n = (id * 7919u + i * 104729u) % sizeof data;
        snprintf(key, sizeof key, "conc/%u/%u", id, i);
        fill(data, n, id * 100 + i);
        CHECK_EQ(store_put(s, key, data, n, 0), 0);
        check_get(key, 0, STORE_TO_END, data, n);
        CHECK_EQ(store_delete(s, key), 0);
    }
    return NULL;
}

static void check_concurrency(void)
{
    pthread_t t[8];
    printf("8 threads sharing one store\n");
    for (uintptr_t i = 0; i < 8; i++)
        pthread_create(&t[i], NULL, worker, (void *)i);
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
}

/* Puts and deletes under shared parent directories, all at once: the file
 * backend prunes emptied directories while other threads create them. */
struct race {
    unsigned id, rounds;
};

static void *racer(void *arg)
{
    struct race *r = arg;
    char key[64];
    snprintf(key, sizeof key, "race/a/b/%u/k", r->id); /* own leaf, shared parents */
    for (unsigned i = 0; i < r->rounds; i++) {
        CHECK_EQ(store_put(s, key, "x", 1, 0), 0);
        CHECK_EQ(store_delete(s, key), 0);
    }
    return NULL;
}

static void check_put_delete_race(unsigned rounds)
{
    pthread_t t[4];
    struct race r[4];
    printf("puts racing deletes under shared directories (%u rounds)\n", rounds);
    for (unsigned i = 0; i < 4; i++) {
        r[i] = (struct race){ i, rounds };
        pthread_create(&t[i], NULL, racer, &r[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    check_list("race/", "");
}

/* File backend only: trees deeper than S3 keys may be, and symlinks. */
static void check_file_specifics(const char *root)
{
    struct buf key = { 0 }, b = { 0 };
    printf("file backend: a 1000-level tree, symlinks are not objects\n");
    buf_printf(&key, "deep");
    for (int i = 0; i < 1000; i++)
        buf_printf(&key, "/d");
    CHECK_EQ(store_put(s, (char *)key.data, "z", 1, 0), 0);
    buf_printf(&b, "%s 1\n", (char *)key.data);
    check_list("", (char *)b.data);
    CHECK_EQ(store_delete(s, (char *)key.data), 0);
    buf_reset(&b);
    buf_printf(&b, "%s/link", root);
    CHECK_EQ(symlink("/etc/hostname", (char *)b.data), 0);
    CHECK_EQ(store_get(s, "link", 0, STORE_TO_END, &key), -ENOENT);
    unlink((char *)b.data);
    buf_free(&key);
    buf_free(&b);
}

static int is_empty(void *arg, const struct store_object *o)
{
    fprintf(stderr, "store_conformance: the store is not empty: %s\n", o->key);
    *(int *)arg = 1;
    return 1;
}

int main(int argc, char **argv)
{
    struct store_options opt = { .multipart_threshold = 6 * MIB,
                                 .part_size = 5 * MIB,
                                 .list_page = 7 };
    int if_absent = -1;
    const char *url = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--if-absent") == 0 && i + 1 < argc)
            if_absent = strcmp(argv[++i], "yes") == 0;
        else if (strncmp(argv[i], "--", 2) == 0 && i + 1 < argc &&
                 store_options_set(&opt, argv[i] + 2, argv[i + 1]) == 1)
            i++;
        else
            url = argv[i];
    }
    if (!url || if_absent < 0) {
        fprintf(stderr, "usage: store_conformance URL --if-absent yes|no [store options]\n");
        return 2;
    }
    int rc = store_open(url, &opt, &s);
    if (rc) {
        fprintf(stderr, "store_conformance: %s\n", err_msg(rc));
        return 1;
    }
    int busy = 0;
    store_list(s, "", is_empty, &busy);
    if (busy)
        return 1;
    check_objects();
    check_odd_keys();
    check_if_absent(if_absent);
    check_listing();
    check_many();
    check_copy();
    check_large();
    check_concurrency();
    int file = strncmp(url, "file://", 7) == 0;
    check_put_delete_race(file ? 2000 : 5);
    if (file)
        check_file_specifics(url + 7);
    struct store_stats st;
    store_get_stats(s, &st);
    CHECK(st.op[STORE_OP_PUT].requests > 100);
    CHECK(st.op[STORE_OP_GET].bytes_down > 13 * MIB);
    store_close(s);
    return check_done("store_conformance");
}
