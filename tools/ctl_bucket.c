/*
 * ckptctl's commands on a ckptfs bucket, without a mount: snapshots (list
 * them), verify (every chunk a snapshot names is there and decodes to its
 * name), pull (restore a snapshot into a plain directory) and gc (delete
 * expired snapshots and the chunks no snapshot names).
 *
 * A bucket may be someone else's: every snapshot passes snapshot_walk's
 * checks before anything is done with it, names never leave the directory
 * being restored into (they hold no '/' and are not "." or ".."), and what
 * is restored appears under DIR only once it is whole (it is built in a
 * temporary directory beside DIR and renamed into place).
 */
#include "ckptctl.h"
#include "progress.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "cache/codec.h"
#include "cache/remote.h"
#include "cache/store.h"
#include "cache/store_options.h"
#include "fs/retention.h"
#include "fs/snapshot.h"
#include "util/err.h"
#include "util/hex.h"
#include "util/hmap.h"
#include "util/pool.h"

#define FETCHERS 8 /* parallel GETs, as the mount's read-ahead */

/* ---- options and the bucket ---- */

struct args {
    struct store_options opt;
    const char *key_file;
    const char *snapshot; /* --snapshot ID, or the @ID of a URL */
    int json, help;
    int dry_run;           /* gc's */
    int64_t grace_s;       /* gc's */
    struct retention keep; /* gc's */
};

enum { OPT_KEY = 1, OPT_SNAPSHOT, OPT_JSON, OPT_DRY_RUN, OPT_GRACE, OPT_KEEP, OPT_KEEP_AGE };

static int on_option(void *arg, int val, const char *value)
{
    struct args *a = arg;
    char *end;
    int rc = 0;
    if (val == OPT_KEY)
        a->key_file = value;
    else if (val == OPT_SNAPSHOT)
        a->snapshot = value;
    else if (val == OPT_JSON)
        a->json = 1;
    else if (val == OPT_DRY_RUN)
        a->dry_run = 1;
    else if (val == OPT_GRACE)
        rc = retention_parse_duration("--grace", value, &a->grace_s);
    else if (val == OPT_KEEP_AGE)
        rc = retention_parse_duration("--keep-age", value, &a->keep.keep_age_s);
    else if (val == OPT_KEEP) {
        unsigned long n = strtoul(value, &end, 10);
        if (!*value || *end || value[0] == '-' || n < 1 || n > 1000000)
            rc = err_set(-EINVAL, "--keep: '%s' is not a number from 1 to 1000000", value);
        a->keep.keep = (unsigned)n;
    } else if (val == 'h')
        a->help = 1;
    return rc ? ctl_usage_error("%s", err_msg(rc)) : 0;
}

#define COMMON_OPTIONS                                                                             \
    { "encrypt-key", required_argument, NULL, OPT_KEY }, { "json", no_argument, NULL, OPT_JSON },  \
    {                                                                                              \
        "help", no_argument, NULL, 'h'                                                             \
    }

static int parse(int argc, char **argv, struct args *a)
{
    static const struct option own[] = {
        COMMON_OPTIONS,
        { "snapshot", required_argument, NULL, OPT_SNAPSHOT },
        { 0 },
    };
    static const struct option gc[] = {
        COMMON_OPTIONS,
        { "dry-run", no_argument, NULL, OPT_DRY_RUN },
        { "grace", required_argument, NULL, OPT_GRACE },
        { "keep", required_argument, NULL, OPT_KEEP },
        { "keep-age", required_argument, NULL, OPT_KEEP_AGE },
        { 0 },
    };
    return ctl_parse(argc, argv, strcmp(argv[0], "gc") ? own : gc, &a->opt, on_option, a);
}

/* Parses a command's line into a, for a command taking operands URLs or
 * paths (what says which, for the error). Returns -1 to go on (operands in
 * argv[optind..]), else the exit status: help shown, or bad usage said. */
static int command_line(int argc, char **argv, const char *usage, int operands, const char *what,
                        struct args *a)
{
    int rc = parse(argc, argv, a);
    if (rc)
        return rc;
    if (a->help)
        return printf(usage, store_options_usage), EXIT_OK;
    if (argc - optind != operands)
        return ctl_usage_error("%s takes %s", argv[0], what);
    return -1;
}

struct bucket {
    struct store *store;
    struct codec *codec;
};

static int bucket_open(const char *url, const struct args *a, struct bucket *b)
{
    uint8_t key[CODEC_KEY_LEN];
    int rc = a->key_file ? codec_load_key(a->key_file, key) : 0;
    struct codec_options o = { .level = 1, .key = a->key_file ? key : NULL };
    if (rc == 0)
        rc = codec_new(&o, &b->codec);
    if (rc == 0)
        rc = store_open(url, &a->opt, &b->store);
    return rc;
}

static void bucket_close(struct bucket *b)
{
    store_close(b->store);
    codec_free(b->codec);
}

static int parse_id(const char *text, struct snapshot_id *id)
{
    if (snapshot_parse_id(text, id))
        return err_set(-EINVAL,
                       "'%s' is not a snapshot ID (EEEEEEEE-SSSSSSSSSSSS, as listed by "
                       "ckptctl snapshots)",
                       text);
    return 0;
}

/* The snapshot a command works on: --snapshot's, else the newest. */
static int pick(struct bucket *b, const struct args *a, const char *url, struct snapshot_id *id)
{
    if (a->snapshot)
        return parse_id(a->snapshot, id);
    int rc = snapshot_latest(b->store, id);
    return rc == -ENOENT ? err_set(-ENOENT, "%s holds no snapshot", url) : rc;
}

/* Fetches and checks snapshot id; its plaintext in plain, what it said in info. */
static int load(struct bucket *b, struct snapshot_id id, const struct snapshot_visitor *v,
                void *arg, struct buf *plain, struct snapshot_info *info)
{
    char text[SNAPSHOT_ID_LEN];
    snapshot_id_text(id, text);
    int rc = snapshot_fetch(b->store, b->codec, id, plain); /* its errors name the snapshot */
    if (rc == -ENOENT)
        return err_set(rc, "there is no snapshot %s", text);
    if (rc == 0 && (rc = snapshot_walk(plain, 0, v, arg, info)) != 0)
        err_wrap(rc, "snapshot %s", text);
    return rc;
}

struct ids {
    struct snapshot_id *v;
    size_t n, cap;
};

static int add_id(void *arg, struct snapshot_id id, const struct store_object *o)
{
    (void)o;
    struct ids *l = arg;
    if (array_grow((void **)&l->v, &l->cap, l->n, sizeof *l->v))
        return -ENOMEM;
    l->v[l->n++] = id;
    return 0;
}

/* Every snapshot of the bucket, or the one --snapshot names. */
static int snapshots_of(struct bucket *b, const struct args *a, struct ids *out)
{
    *out = (struct ids){ 0 };
    if (!a->snapshot)
        return snapshot_list(b->store, add_id, out);
    struct snapshot_id id;
    int rc = parse_id(a->snapshot, &id);
    return rc ? rc : add_id(out, id, NULL);
}

/* ---- snapshots ---- */

static void time_text(int64_t ns, char *out, size_t n)
{
    time_t t = (time_t)(ns / 1000000000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static json_t *describe(struct bucket *b, struct snapshot_id id, int *bad)
{
    struct buf plain = { 0 };
    struct snapshot_info info;
    char text[SNAPSHOT_ID_LEN], when[32];
    snapshot_id_text(id, text);
    int rc = load(b, id, NULL, NULL, &plain, &info);
    buf_free(&plain);
    if (rc) {
        *bad = 1;
        return json_pack("{ss sI sI ss}", "id", text, "epoch", (json_int_t)id.epoch, "seq",
                         (json_int_t)id.seq, "error", err_msg(rc));
    }
    time_text(info.created_ns, when, sizeof when);
    return json_pack("{ss sI sI ss sI sI sI}", "id", text, "epoch", (json_int_t)id.epoch, "seq",
                     (json_int_t)id.seq, "created", when, "files", (json_int_t)info.files, "bytes",
                     (json_int_t)info.bytes, "inodes", (json_int_t)info.inodes);
}

static void print_table(json_t *list)
{
    printf("%-21s  %8s  %-20s  %8s  %12s\n", "ID", "EPOCH", "CREATED", "FILES", "BYTES");
    size_t i;
    json_t *s;
    json_array_foreach(list, i, s)
    {
        json_t *err = json_object_get(s, "error");
        if (err) {
            printf("%-21s  %8lld  damaged: %s\n", json_string_value(json_object_get(s, "id")),
                   (long long)json_integer_value(json_object_get(s, "epoch")),
                   json_string_value(err));
            continue;
        }
        printf("%-21s  %8lld  %-20s  %8lld  %12lld\n", json_string_value(json_object_get(s, "id")),
               (long long)json_integer_value(json_object_get(s, "epoch")),
               json_string_value(json_object_get(s, "created")),
               (long long)json_integer_value(json_object_get(s, "files")),
               (long long)json_integer_value(json_object_get(s, "bytes")));
    }
}

int cmd_snapshots(int argc, char **argv)
{
    static const char usage[] =
        "usage: ckptctl snapshots URL [--json] [--encrypt-key FILE] [store options]\n"
        "Lists the snapshots in a ckptfs bucket, oldest first: ID, epoch, creation time (UTC),\n"
        "regular files and their bytes. A snapshot that cannot be read is listed as damaged,\n"
        "and the exit status is then 1.\n"
        "\noptions:\n%s";
    struct args a = { 0 };
    int rc = command_line(argc, argv, usage, 1, "one URL", &a);
    if (rc >= 0)
        return rc;
    struct bucket b = { 0 };
    struct ids ids = { 0 };
    if ((rc = bucket_open(argv[optind], &a, &b)) == 0)
        rc = snapshot_list(b.store, add_id, &ids);
    int bad = 0;
    json_t *list = json_array();
    for (size_t i = 0; rc == 0 && i < ids.n; i++)
        json_array_append_new(list, describe(&b, ids.v[i], &bad));
    if (rc == 0 && a.json) {
        char *text = json_dumps(list, JSON_INDENT(2));
        printf("%s\n", text ? text : "[]");
        free(text);
    } else if (rc == 0) {
        print_table(list);
    }
    json_decref(list);
    free(ids.v);
    bucket_close(&b);
    if (rc)
        return ctl_fail("%s", err_msg(rc));
    return bad ? EXIT_FAIL : EXIT_OK;
}

/* ---- verify ---- */

/* A chunk some snapshot names, and the first snapshot that does. */
struct ref {
    uint8_t name[CODEC_NAME_LEN];
    struct snapshot_id by;
};

struct refs {
    struct ref *v;
    size_t n, cap;
    struct snapshot_id current;
};

static int add_ref(void *arg, uint64_t ino, uint64_t idx, const uint8_t name[CODEC_NAME_LEN])
{
    (void)ino;
    (void)idx;
    struct refs *r = arg;
    if (array_grow((void **)&r->v, &r->cap, r->n, sizeof *r->v))
        return -ENOMEM;
    memcpy(r->v[r->n].name, name, CODEC_NAME_LEN);
    r->v[r->n++].by = r->current;
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return memcmp(((const struct ref *)a)->name, ((const struct ref *)b)->name, CODEC_NAME_LEN);
}

static void unique(struct refs *r)
{
    qsort(r->v, r->n, sizeof *r->v, by_name);
    size_t k = 0;
    for (size_t i = 0; i < r->n; i++)
        if (k == 0 || by_name(&r->v[k - 1], &r->v[i]))
            r->v[k++] = r->v[i];
    r->n = k;
}

/* What a run of chunk jobs shares: counters and who may print. */
struct tally {
    pthread_mutex_t lock;
    uint64_t bytes, done, total, problems;
    uint64_t bytes_total; /* for the progress bar; 0 if unknown */
    int tty;
    const char *what;
};

static void tally_add(struct tally *t, uint64_t bytes, const char *problem)
{
    pthread_mutex_lock(&t->lock);
    t->bytes += bytes;
    t->done++;
    if (problem) {
        if (t->tty)
            fputc('\n', stderr);
        fprintf(stderr, "ckptctl: %s\n", problem);
        t->problems++;
    }
    if (t->tty)
        ctl_progress((double)t->bytes, (double)(t->bytes_total ? t->bytes_total : t->bytes),
                     (long long)t->done, (long long)t->total, t->what);
    pthread_mutex_unlock(&t->lock);
}

/* A chunk's plaintext, checked as a mount checks it (cache/codec.h). */
static int fetch_chunk(struct bucket *b, const uint8_t name[CODEC_NAME_LEN], struct buf *plain)
{
    char key[82];
    remote_chunk_key(name, key);
    struct buf enc = { 0 };
    int rc = store_get(b->store, key, 0, (uint64_t)CODEC_MAX_CHUNK + 4096, &enc);
    if (rc == 0)
        rc = codec_decode(b->codec, enc.data, enc.len, name, plain);
    buf_free(&enc);
    return rc ? err_wrap(rc, "%s", key) : 0;
}

struct checking {
    struct bucket *b;
    struct tally *t;
    const struct refs *refs;
};

/* Verify goes past what a fetch checks: the name is recomputed from the
 * content, so a chunk stored under a name its writer got wrong shows. */
static int fetch_named_right(struct bucket *b, const uint8_t name[CODEC_NAME_LEN],
                             struct buf *plain)
{
    int rc = fetch_chunk(b, name, plain);
    return rc ? rc : codec_check_name(b->codec, plain->data, plain->len, name);
}

static int check_one(void *arg, size_t i)
{
    struct checking *c = arg;
    const struct ref *ref = &c->refs->v[i];
    struct buf plain = { 0 };
    int rc = fetch_named_right(c->b, ref->name, &plain);
    char problem[1024], by[SNAPSHOT_ID_LEN];
    snapshot_id_text(ref->by, by);
    if (rc)
        snprintf(problem, sizeof problem, "%s: %s (named by snapshot %s)",
                 rc == -ENOENT ? "missing" : "damaged", err_msg(rc), by);
    tally_add(c->t, plain.len, rc ? problem : NULL);
    buf_free(&plain);
    return 0;
}

static int check_chunks(struct bucket *b, const struct refs *r, struct tally *t)
{
    struct checking c = { b, t, r };
    return pool_for_each(FETCHERS, r->n, check_one, &c);
}

int cmd_verify(int argc, char **argv)
{
    static const char usage[] =
        "usage: ckptctl verify URL [--snapshot ID] [--encrypt-key FILE] [store options]\n"
        "Checks every snapshot in a ckptfs bucket (or the one given): that it decodes and\n"
        "obeys the format, and that every chunk it names is in the bucket, decodes, and\n"
        "hashes to its name. Names each problem; exits 1 if there is any. Shows progress on\n"
        "a terminal.\n"
        "\noptions:\n%s";
    struct args a = { 0 };
    int rc = command_line(argc, argv, usage, 1, "one URL", &a);
    if (rc >= 0)
        return rc;
    const char *url = argv[optind];
    struct bucket b = { 0 };
    struct ids ids = { 0 };
    struct refs refs = { 0 };
    struct tally t = { PTHREAD_MUTEX_INITIALIZER, .tty = isatty(STDERR_FILENO), .what = "chunks" };
    if ((rc = bucket_open(url, &a, &b)) == 0)
        rc = snapshots_of(&b, &a, &ids);
    if (rc == 0 && ids.n == 0)
        rc = err_set(-ENOENT, "%s holds no snapshot", url);
    uint64_t bad_snapshots = 0;
    for (size_t i = 0; rc == 0 && i < ids.n; i++) {
        static const struct snapshot_visitor collect = { .block = add_ref };
        struct buf plain = { 0 };
        struct snapshot_info info;
        refs.current = ids.v[i];
        size_t before = refs.n;
        int one = load(&b, ids.v[i], &collect, &refs, &plain, &info);
        buf_free(&plain);
        if (one == -ENOMEM)
            rc = one;
        else if (one) {
            refs.n = before;
            bad_snapshots++;
            fprintf(stderr, "ckptctl: %s\n", err_msg(one));
        }
    }
    if (rc == 0) {
        unique(&refs);
        t.total = refs.n;
        rc = check_chunks(&b, &refs, &t);
        if (t.tty)
            fputc('\n', stderr);
    }
    free(refs.v);
    free(ids.v);
    bucket_close(&b);
    if (rc)
        return ctl_fail("%s", err_msg(rc));
    char size[32];
    ctl_size_text((double)t.bytes, size, sizeof size);
    uint64_t problems = bad_snapshots + t.problems;
    printf("%s: %zu snapshots, %llu chunks (%s): %s\n", url, ids.n, (unsigned long long)t.total,
           size, problems ? "PROBLEMS FOUND" : "all good");
    if (problems)
        return ctl_fail("%llu damaged snapshots, %llu missing or damaged chunks",
                        (unsigned long long)bad_snapshots, (unsigned long long)t.problems);
    return EXIT_OK;
}

/* ---- pull ---- */

struct node { /* an inode of the snapshot, as restored */
    struct ns_attr a;
    char *target;    /* symlinks */
    char *path;      /* relative to the root; set once it exists */
    uint64_t parent; /* directories */
    const char *name;
};

struct entry {
    uint64_t parent, ino;
    char *name;
};

struct block {
    uint64_t ino, idx;
    uint8_t name[CODEC_NAME_LEN];
};

struct xattr {
    uint64_t ino;
    char *name;
    void *value;
    size_t len;
};

struct tree {
    struct hmap *nodes; /* ino -> struct node */
    struct entry *entries;
    size_t nentries, entries_cap;
    struct xattr *xattrs;
    size_t nxattrs, xattrs_cap;
    struct block *blocks; /* in snapshot order: ino ascending, then idx */
    size_t nblocks, blocks_cap;
};

static int t_inode(void *arg, const struct ns_attr *a, const void *target, size_t target_len)
{
    struct tree *t = arg;
    struct node *n = calloc(1, sizeof *n);
    if (!n || (target_len && !(n->target = strndup(target, target_len))) ||
        hmap_put(t->nodes, a->ino, 0, n)) {
        if (n)
            free(n->target);
        free(n);
        return -ENOMEM;
    }
    n->a = *a;
    return 0;
}

static int t_dentry(void *arg, uint64_t parent, const char *name, size_t len, uint64_t ino)
{
    struct tree *t = arg;
    if (array_grow((void **)&t->entries, &t->entries_cap, t->nentries, sizeof *t->entries))
        return -ENOMEM;
    char *copy = strndup(name, len);
    if (!copy)
        return -ENOMEM;
    t->entries[t->nentries++] = (struct entry){ parent, ino, copy };
    struct node *n = hmap_get(t->nodes, ino, 0);
    if (S_ISDIR(n->a.mode)) {
        n->parent = parent;
        n->name = copy;
    }
    return 0;
}

static int t_xattr(void *arg, uint64_t ino, const char *name, size_t name_len, const void *value,
                   size_t value_len)
{
    struct tree *t = arg;
    if (array_grow((void **)&t->xattrs, &t->xattrs_cap, t->nxattrs, sizeof *t->xattrs))
        return -ENOMEM;
    char *n = strndup(name, name_len);
    void *v = malloc(value_len ? value_len : 1);
    if (!n || !v) {
        free(n);
        free(v);
        return -ENOMEM;
    }
    memcpy(v, value, value_len);
    t->xattrs[t->nxattrs++] = (struct xattr){ ino, n, v, value_len };
    return 0;
}

static int t_block(void *arg, uint64_t ino, uint64_t idx, const uint8_t name[CODEC_NAME_LEN])
{
    struct tree *t = arg;
    if (array_grow((void **)&t->blocks, &t->blocks_cap, t->nblocks, sizeof *t->blocks))
        return -ENOMEM;
    struct block *k = &t->blocks[t->nblocks++];
    *k = (struct block){ .ino = ino, .idx = idx };
    memcpy(k->name, name, CODEC_NAME_LEN);
    return 0;
}

static void free_node(void *arg, uint64_t a, uint64_t b, void *v)
{
    (void)arg, (void)a, (void)b;
    struct node *n = v;
    free(n->target);
    free(n->path);
    free(n);
}

static void tree_free(struct tree *t)
{
    if (t->nodes)
        hmap_each(t->nodes, free_node, NULL);
    hmap_free(t->nodes);
    for (size_t i = 0; i < t->nentries; i++)
        free(t->entries[i].name);
    free(t->entries);
    for (size_t i = 0; i < t->nxattrs; i++)
        free(t->xattrs[i].name), free(t->xattrs[i].value);
    free(t->xattrs);
    free(t->blocks);
}

/* A directory's path below the root, made from its parents' (the walk
 * proved every directory reaches the root). */
static int dir_path(struct tree *t, struct node *n, char **out)
{
    if (n->path || n->a.ino == NS_ROOT) {
        *out = n->path ? n->path : "";
        return 0;
    }
    char *up;
    int rc = dir_path(t, hmap_get(t->nodes, n->parent, 0), &up);
    if (rc)
        return rc;
    size_t len = strlen(up) + strlen(n->name) + 2;
    if (len > PATH_MAX)
        return err_set(-ENAMETOOLONG, "a directory's path is longer than PATH_MAX");
    if (!(n->path = malloc(len)))
        return -ENOMEM;
    snprintf(n->path, len, "%s%s%s", up, *up ? "/" : "", n->name);
    *out = n->path;
    return 0;
}

static int fail_at(const char *what, const char *path)
{
    return err_set(-errno, "%s %s: %s", what, path, strerror(errno));
}

/* Makes the entry's file, directory, link or special file at rel below root. */
static int make_one(int root, struct node *n, const char *rel, int privileged)
{
    mode_t type = n->a.mode & S_IFMT;
    if (type == S_IFDIR)
        return mkdirat(root, rel, 0700) ? fail_at("cannot create directory", rel) : 0;
    if (type == S_IFLNK)
        return symlinkat(n->target, root, rel) ? fail_at("cannot create symlink", rel) : 0;
    if (type == S_IFREG) {
        int fd = openat(root, rel, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0)
            return fail_at("cannot create", rel);
        int rc = ftruncate(fd, (off_t)n->a.size) ? fail_at("cannot size", rel) : 0;
        close(fd);
        return rc;
    }
    if (type == S_IFIFO)
        return mkfifoat(root, rel, 0600) ? fail_at("cannot create fifo", rel) : 0;
    if ((type == S_IFCHR || type == S_IFBLK) && privileged)
        return mknodat(root, rel, type | 0600, (dev_t)n->a.rdev) ? fail_at("cannot create", rel)
                                                                 : 0;
    fprintf(stderr, "ckptctl: skipped %s: a %s is not restored%s\n", rel,
            type == S_IFSOCK ? "socket" : "device file", type == S_IFSOCK ? "" : " unless root");
    return 1;
}

/* Every entry made, directories first (parents before children). */
static int make_tree(struct tree *t, int root, int privileged)
{
    int rc = 0;
    for (int dirs = 1; rc == 0 && dirs >= 0; dirs--)
        for (size_t i = 0; rc == 0 && i < t->nentries; i++) {
            struct entry *e = &t->entries[i];
            struct node *n = hmap_get(t->nodes, e->ino, 0);
            if (S_ISDIR(n->a.mode) != dirs)
                continue;
            char *up, rel[PATH_MAX];
            rc = dir_path(t, hmap_get(t->nodes, e->parent, 0), &up);
            if (rc == 0 &&
                snprintf(rel, sizeof rel, "%s%s%s", up, *up ? "/" : "", e->name) >= (int)sizeof rel)
                rc = err_set(-ENAMETOOLONG, "a path is longer than PATH_MAX");
            if (rc == 0 && dirs) {
                char *own;
                rc = dir_path(t, n, &own); /* records its path */
                rc = rc ? rc : make_one(root, n, own, privileged);
            } else if (rc == 0 && n->path) { /* a hard link to a file already made */
                rc = linkat(root, n->path, root, rel, 0) ? fail_at("cannot link", rel) : 0;
            } else if (rc == 0) {
                rc = make_one(root, n, rel, privileged);
                if (rc == 0 && !(n->path = strdup(rel)))
                    rc = -ENOMEM;
                rc = rc == 1 ? 0 : rc;
            }
        }
    return rc;
}

struct pulling {
    struct bucket *b;
    struct tally *t;
    const struct tree *tree;
    int root;
    size_t block_size;
};

/* Block i of the snapshot into its file (if an entry names the file). */
static int pull_one(void *arg, size_t i)
{
    struct pulling *p = arg;
    const struct block *k = &p->tree->blocks[i];
    const struct node *n = hmap_get(p->tree->nodes, k->ino, 0);
    if (!n->path)
        return 0;
    uint64_t off = k->idx * p->block_size, limit = n->a.size;
    struct buf plain = { 0 };
    int rc = fetch_chunk(p->b, k->name, &plain);
    if (rc == 0 && plain.len > p->block_size)
        rc = err_set(-EBADMSG, "a chunk of %s holds more than a block", n->path);
    size_t len = plain.len;
    if (rc == 0 && off + len > limit) /* past the end: zeros, or a lie */
        len = off < limit ? (size_t)(limit - off) : 0;
    int fd = rc ? -1 : openat(p->root, n->path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
    if (rc == 0 && fd < 0)
        rc = fail_at("cannot open", n->path);
    for (size_t done = 0; rc == 0 && done < len;) {
        ssize_t w = pwrite(fd, plain.data + done, len - done, (off_t)(off + done));
        if (w < 0 && errno != EINTR)
            rc = fail_at("cannot write", n->path);
        done += w > 0 ? (size_t)w : 0;
    }
    if (fd >= 0 && close(fd) && rc == 0)
        rc = fail_at("cannot write", n->path);
    if (rc == 0)
        tally_add(p->t, len, NULL);
    buf_free(&plain);
    return rc;
}

static int fill_files(struct bucket *b, struct tree *t, int root, size_t block_size,
                      struct tally *tl)
{
    struct pulling p = { b, tl, t, root, block_size };
    return pool_for_each(FETCHERS, t->nblocks, pull_one, &p);
}

/* Xattrs, times, owners (as root) and modes, once the bytes are in: the
 * deepest entries first, so a directory's time is set after its children. */
static int finish_tree(struct tree *t, int root, int privileged)
{
    for (size_t i = 0; i < t->nxattrs; i++) {
        struct xattr *x = &t->xattrs[i];
        struct node *n = hmap_get(t->nodes, x->ino, 0);
        if (n->path && n->a.ino != NS_ROOT) {
            char path[PATH_MAX + 32];
            snprintf(path, sizeof path, "/proc/self/fd/%d/%s", root, n->path);
            if (lsetxattr(path, x->name, x->value, x->len, 0))
                fprintf(stderr, "ckptctl: xattr %s of %s not restored: %s\n", x->name, n->path,
                        strerror(errno));
        }
    }
    /* Times before modes: a directory without write or search permission
     * would refuse them to its children (chmod and chown leave them be). */
    for (int dirs = 0; dirs <= 1; dirs++)
        for (size_t k = t->nentries; k > 0; k--) {
            struct node *n = hmap_get(t->nodes, t->entries[k - 1].ino, 0);
            struct timespec ts[2] = { n->a.atime, n->a.mtime };
            if (n->path && S_ISDIR(n->a.mode) == dirs &&
                utimensat(root, n->path, ts, AT_SYMLINK_NOFOLLOW))
                return fail_at("cannot set the times of", n->path);
        }
    for (size_t k = t->nentries; k > 0; k--) {
        struct node *n = hmap_get(t->nodes, t->entries[k - 1].ino, 0);
        if (!n->path || S_ISLNK(n->a.mode))
            continue;
        if (privileged && fchownat(root, n->path, n->a.uid, n->a.gid, AT_SYMLINK_NOFOLLOW))
            return fail_at("cannot chown", n->path);
        if (fchmodat(root, n->path, n->a.mode & 07777, 0))
            return fail_at("cannot chmod", n->path);
    }
    return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)flag, (void)f;
    remove(path);
    return 0;
}

/* DIR must not exist yet; the restore is built in DIR.pull-XXXXXX beside it. */
static int make_staging(const char *dir, char *staging, size_t n)
{
    struct stat st;
    if (lstat(dir, &st) == 0)
        return err_set(-EEXIST, "%s exists: pull restores into a directory it creates", dir);
    if (snprintf(staging, n, "%s.pull-XXXXXX", dir) >= (int)n)
        return err_set(-ENAMETOOLONG, "%s: name too long", dir);
    return mkdtemp(staging) ? 0 : fail_at("cannot create", staging);
}

static int restore(struct bucket *b, struct tree *t, const struct snapshot_info *info,
                   const char *dir)
{
    char staging[PATH_MAX];
    int rc = make_staging(dir, staging, sizeof staging);
    if (rc)
        return rc;
    int root = open(staging, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int privileged = geteuid() == 0;
    struct tally tl = { PTHREAD_MUTEX_INITIALIZER, .tty = isatty(STDERR_FILENO),
                        .bytes_total = info->bytes, .total = t->nblocks, .what = "chunks" };
    rc = root < 0 ? fail_at("cannot open", staging) : make_tree(t, root, privileged);
    if (rc == 0)
        rc = fill_files(b, t, root, info->block_size, &tl);
    if (tl.tty)
        fputc('\n', stderr);
    if (rc == 0)
        rc = finish_tree(t, root, privileged);
    struct node *top = hmap_get(t->nodes, NS_ROOT, 0);
    struct timespec ts[2] = { top->a.atime, top->a.mtime };
    if (rc == 0 && (fchmod(root, top->a.mode & 07777) || futimens(root, ts)))
        rc = fail_at("cannot set the mode and times of", staging);
    if (rc == 0 && fsync(root))
        rc = fail_at("cannot sync", staging);
    if (root >= 0)
        close(root);
    if (rc == 0 && rename(staging, dir))
        rc = fail_at("cannot rename into place", dir);
    if (rc) /* nothing half-written is left behind */
        nftw(staging, remove_entry, 32, FTW_DEPTH | FTW_PHYS);
    return rc;
}

/* URL@ID: the ID apart (a snapshot ID holds no '@'; a URL may). */
static const char *split_at_id(char *url)
{
    char *at = strrchr(url, '@');
    if (!at || strchr(at, '/'))
        return NULL;
    *at = '\0';
    return at + 1;
}

int cmd_pull(int argc, char **argv)
{
    static const char usage[] =
        "usage: ckptctl pull URL[@ID] DIR [--snapshot ID] [--encrypt-key FILE] [store options]\n"
        "Restores a snapshot of a ckptfs bucket (the newest, or ID) into DIR, a directory it\n"
        "creates: files, directories, symlinks, hard links, modes, times, xattrs (and owners\n"
        "when run as root), with 8 parallel GETs and progress on a terminal. DIR appears only\n"
        "once the restore is whole; every chunk is checked before it is written.\n"
        "\noptions:\n%s";
    struct args a = { 0 };
    int rc = command_line(argc, argv, usage, 2, "URL[@ID] and DIR", &a);
    if (rc >= 0)
        return rc;
    char *url = strdup(argv[optind]);
    const char *dir = argv[optind + 1];
    const char *at = url ? split_at_id(url) : NULL;
    if (at && a.snapshot && strcmp(at, a.snapshot)) {
        rc =
            ctl_usage_error("pull: two snapshot IDs given (@%s and --snapshot %s)", at, a.snapshot);
        free(url);
        return rc;
    }
    a.snapshot = at ? at : a.snapshot;
    static const struct snapshot_visitor build = { t_inode, t_dentry, t_xattr, t_block };
    struct bucket b = { 0 };
    struct tree t = { .nodes = hmap_new() };
    struct buf plain = { 0 };
    struct snapshot_info info;
    struct snapshot_id id;
    rc = !url || !t.nodes ? -ENOMEM : bucket_open(url, &a, &b);
    if (rc == 0)
        rc = pick(&b, &a, url, &id);
    if (rc == 0)
        rc = load(&b, id, &build, &t, &plain, &info);
    buf_free(&plain);
    if (rc == 0)
        rc = restore(&b, &t, &info, dir);
    tree_free(&t);
    bucket_close(&b);
    free(url);
    if (rc)
        return ctl_fail("%s", err_msg(rc));
    char text[SNAPSHOT_ID_LEN], size[32];
    snapshot_id_text(id, text);
    ctl_size_text((double)info.bytes, size, sizeof size);
    printf("%s: snapshot %s restored, %llu files, %s\n", dir, text, (unsigned long long)info.files,
           size);
    return EXIT_OK;
}

/* ---- gc ---- */

#define GC_DEFAULT_GRACE (24 * 3600)

/* A chunk object of the bucket, and what gc makes of it. */
struct chunk_obj {
    char key[82];
    uint8_t name[CODEC_NAME_LEN];
    uint64_t size;
    int64_t mtime;
};

struct chunk_objs {
    struct chunk_obj *v;
    size_t n, cap;
};

/* chunks/NN/NAME as remote_chunk_key writes them; anything else under
 * chunks/ is not ours to judge, and stays. */
static int add_chunk_obj(void *arg, const struct store_object *o)
{
    struct chunk_objs *l = arg;
    uint8_t name[CODEC_NAME_LEN];
    char key[82];
    if (strlen(o->key) != 74 || hex_decode(o->key + 10, CODEC_NAME_LEN, name, 0))
        return 0;
    remote_chunk_key(name, key);
    if (strcmp(key, o->key))
        return 0;
    if (array_grow((void **)&l->v, &l->cap, l->n, sizeof *l->v))
        return -ENOMEM;
    struct chunk_obj *c = &l->v[l->n++];
    memcpy(c->key, key, sizeof key);
    memcpy(c->name, name, CODEC_NAME_LEN);
    c->size = o->size;
    c->mtime = o->mtime;
    return 0;
}

/* What gc found, and did or would do. */
struct gc_plan {
    struct snapshot_entries snaps;
    int64_t now;
    size_t expired, kept;
    struct refs refs; /* named by the snapshots that stay, sorted, unique */
    struct chunk_objs chunks;
    const char **doomed; /* keys: expired snapshots first, then chunks */
    char (*snap_keys)[SNAPSHOT_KEY_LEN];
    size_t ndoomed, named, young;
    uint64_t doomed_bytes;
};

/* Steps 1 and 2: which snapshots go, and what the others name. Any snapshot
 * that cannot be read stops gc: what it names would be unknown. */
static int gc_refs(struct bucket *b, const struct args *a, const char *url, struct gc_plan *p)
{
    int rc = snapshot_list_all(b->store, &p->snaps);
    if (rc == 0 && p->snaps.n == 0)
        rc = err_set(-ENOENT,
                     "%s holds no snapshot: gc would delete every chunk, so it deletes "
                     "nothing (is this the right bucket?)",
                     url);
    p->snap_keys = rc ? NULL : calloc(p->snaps.n, sizeof *p->snap_keys);
    if (rc == 0 && !p->snap_keys)
        rc = -ENOMEM;
    for (size_t i = 0; rc == 0 && i < p->snaps.n; i++) {
        static const struct snapshot_visitor collect = { .block = add_ref };
        struct buf plain = { 0 };
        struct snapshot_info info;
        if (retention_expires(&a->keep, i, p->snaps.n, p->snaps.v[i].mtime, p->now)) {
            snapshot_key(p->snaps.v[i].id, p->snap_keys[p->expired++]);
            continue;
        }
        p->kept++;
        p->refs.current = p->snaps.v[i].id;
        rc = load(b, p->snaps.v[i].id, &collect, &p->refs, &plain, &info);
        buf_free(&plain);
        if (rc == -ENOENT)
            rc = err_set(rc, "%s: it went while gc ran (a writer's retention?); run gc again",
                         err_msg(rc));
    }
    if (rc == 0)
        unique(&p->refs);
    return rc ? err_wrap(rc, "nothing deleted") : 0;
}

static int named(const struct refs *r, const uint8_t name[CODEC_NAME_LEN])
{
    struct ref key;
    memcpy(key.name, name, CODEC_NAME_LEN);
    return bsearch(&key, r->v, r->n, sizeof *r->v, by_name) != NULL;
}

/* Step 3: the chunks no remaining snapshot names and older than the grace. */
static int gc_chunks(struct bucket *b, const struct args *a, struct gc_plan *p)
{
    int rc = store_list(b->store, "chunks/", add_chunk_obj, &p->chunks);
    p->doomed = rc ? NULL : calloc(p->expired + p->chunks.n + 1, sizeof *p->doomed);
    if (rc == 0 && !p->doomed)
        return -ENOMEM;
    for (size_t i = 0; rc == 0 && i < p->expired; i++)
        p->doomed[p->ndoomed++] = p->snap_keys[i];
    for (size_t i = 0; rc == 0 && i < p->chunks.n; i++) {
        const struct chunk_obj *c = &p->chunks.v[i];
        if (named(&p->refs, c->name))
            p->named++;
        else if (p->now - c->mtime < a->grace_s)
            p->young++;
        else {
            p->doomed[p->ndoomed++] = c->key;
            p->doomed_bytes += c->size;
        }
    }
    return rc;
}

static void gc_free(struct gc_plan *p)
{
    free(p->snaps.v);
    free(p->refs.v);
    free(p->chunks.v);
    free(p->doomed);
    free(p->snap_keys);
}

static void gc_report(const char *url, const struct args *a, const struct gc_plan *p)
{
    char size[32];
    const char *verb = a->dry_run ? "would delete" : "deleted";
    ctl_size_text((double)p->doomed_bytes, size, sizeof size);
    if (a->json) {
        json_t *j = json_pack(
            "{s:s, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "url", url, "dry_run", a->dry_run,
            "snapshots_kept", (json_int_t)p->kept, "snapshots_deleted", (json_int_t)p->expired,
            "chunks_named", (json_int_t)p->named, "chunks_young", (json_int_t)p->young,
            "chunks_deleted", (json_int_t)(p->ndoomed - p->expired), "bytes_deleted",
            (json_int_t)p->doomed_bytes, "grace_seconds", (json_int_t)a->grace_s);
        json_dumpf(j, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
        putchar('\n');
        json_decref(j);
        return;
    }
    printf("%s: %zu snapshots stay, %s %zu expired\n", url, p->kept, verb, p->expired);
    printf("chunks: %zu named by a snapshot, %zu unnamed but younger than the grace (%llds), "
           "%s %zu (%s)\n",
           p->named, p->young, (long long)a->grace_s, verb, p->ndoomed - p->expired, size);
}

int cmd_gc(int argc, char **argv)
{
    static const char usage[] =
        "usage: ckptctl gc URL [--dry-run] [--grace DURATION] [--keep N] [--keep-age DURATION]\n"
        "                  [--json] [--encrypt-key FILE] [store options]\n"
        "Deletes the snapshots --keep and --keep-age let go (as a writer's retention does; the\n"
        "newest always stays), then every chunk no remaining snapshot names whose object is\n"
        "older than the grace (default 24h, at least 1h): a chunk a running writer uploaded\n"
        "for a snapshot it has not published yet is younger than that, so gc is safe while\n"
        "writers run. A snapshot that cannot be read stops it before anything is deleted.\n"
        "\noptions:\n%s";
    struct args a = { .grace_s = GC_DEFAULT_GRACE };
    int rc = command_line(argc, argv, usage, 1, "one URL", &a);
    if (rc >= 0)
        return rc;
    if (a.grace_s < GC_MIN_GRACE)
        return ctl_usage_error("--grace: at least %ds: a writer trusts a chunk it put for half "
                               "of that without putting it again",
                               GC_MIN_GRACE);
    const char *url = argv[optind];
    struct bucket b = { 0 };
    struct gc_plan p = { .now = (int64_t)time(NULL) };
    rc = bucket_open(url, &a, &b);
    if (rc == 0)
        rc = gc_refs(&b, &a, url, &p);
    if (rc == 0)
        rc = gc_chunks(&b, &a, &p);
    /* Expired snapshots go first: a crash between leaves no snapshot naming a deleted chunk. */
    if (rc == 0 && !a.dry_run && p.ndoomed)
        rc = store_delete_many(b.store, p.doomed, p.ndoomed);
    if (rc == 0)
        gc_report(url, &a, &p);
    gc_free(&p);
    bucket_close(&b);
    return rc ? ctl_fail("%s", err_msg(rc)) : EXIT_OK;
}
