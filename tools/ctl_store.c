/*
 * ckptctl store: the object-store layer by hand, for scripts, tests and
 * people checking a bucket. Every object is named by a URL:
 * s3://BUCKET/KEY or file:///ABSOLUTE/PATH.
 */
#include "ckptctl.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/store.h"
#include "cache/store_options.h"
#include "util/err.h"

#define GET_STEP ((uint64_t)64 << 20) /* bytes per ranged GET when streaming out */

static const char store_usage[] =
    "usage: ckptctl store put [--if-absent] URL/KEY FILE|-\n"
    "       ckptctl store get URL/KEY FILE|-\n"
    "       ckptctl store ls URL[/PREFIX]\n"
    "       ckptctl store rm URL/KEY...\n"
    "       ckptctl store head URL/KEY\n"
    "       ckptctl store probe URL\n"
    "\n"
    "URL is s3://BUCKET or file:///ABSOLUTE/PATH. '-' is standard input or output.\n"
    "put replaces the object atomically (with --if-absent it fails if the key exists);\n"
    "get writes FILE atomically; ls prints every object below URL/PREFIX as a path\n"
    "relative to it, a tab, and its size; probe reports what the server honours.\n"
    "\n"
    "options:\n"
    "%s"
    "  --stats                 print request counters as JSON on standard error\n"
    "  -h, --help              this text\n";

struct args {
    struct store_options opt;
    int if_absent;
    int stats;
    int help;
};

static int on_option(void *arg, int val, const char *value)
{
    (void)value;
    struct args *a = arg;
    if (val == 'a')
        a->if_absent = 1;
    else if (val == 's')
        a->stats = 1;
    else if (val == 'h')
        a->help = 1;
    return 0;
}

/* Parses options anywhere on the line; leaves the operands in argv[optind..]. */
static int parse(int argc, char **argv, struct args *a)
{
    static const struct option own[] = {
        { "if-absent", no_argument, NULL, 'a' },
        { "stats", no_argument, NULL, 's' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    return ctl_parse(argc, argv, own, &a->opt, on_option, a);
}

static void print_stats(struct store *s)
{
    struct store_stats st;
    store_get_stats(s, &st);
    json_t *root = json_object();
    for (int i = 0; i < STORE_OP_COUNT; i++) {
        const struct store_op_stats *o = &st.op[i];
        if (!o->requests)
            continue;
        json_object_set_new(root, store_op_name(i),
                            json_pack("{sI sI sI sI sI sI}", "requests", (json_int_t)o->requests,
                                      "retries", (json_int_t)o->retries, "errors",
                                      (json_int_t)o->errors, "bytes_up", (json_int_t)o->bytes_up,
                                      "bytes_down", (json_int_t)o->bytes_down, "usec",
                                      (json_int_t)o->usec));
    }
    json_object_set_new(root, "connections", json_integer((json_int_t)st.connections));
    json_object_set_new(root, "connections_reused",
                        json_integer((json_int_t)st.connections_reused));
    json_object_set_new(root, "last_error", json_string(st.last_error));
    char *text = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    if (text)
        fprintf(stderr, "%s\n", text);
    free(text);
    json_decref(root);
}

/* Opens the store an object URL lives in; *key gets the object's key. */
static int open_object(const char *url, const struct args *a, struct store **s, char **key)
{
    char *base = NULL;
    int rc = store_url_split(url, &base, key);
    if (rc == 0)
        rc = store_open(base, &a->opt, s);
    free(base);
    return rc;
}

/* ---- put ---- */

struct input {
    void *data;
    size_t len;
    int mapped;
    struct buf owned;
};

static int read_stream(int fd, struct buf *b)
{
    for (;;) {
        if (buf_reserve(b, 1 << 20))
            return -ENOMEM;
        ssize_t n = read(fd, b->data + b->len, b->cap - b->len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return 0;
        b->len += (size_t)n;
    }
}

static int load_input(const char *path, struct input *in)
{
    int fd = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0)
        return err_set(-errno, "cannot open %s: %s", path, strerror(errno));
    int rc = 0;
    /* Standard input may be a file read from its middle: read it, never map it. */
    if (fd != STDIN_FILENO && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
        /* Map rather than copy: the file may be larger than we would like to hold twice. */
        in->len = (size_t)st.st_size;
        in->data = mmap(NULL, in->len, PROT_READ, MAP_PRIVATE, fd, 0);
        in->mapped = in->data != MAP_FAILED;
        if (!in->mapped)
            rc = err_set(-errno, "cannot map %s: %s", path, strerror(errno));
    } else if ((rc = read_stream(fd, &in->owned)) != 0) {
        err_set(rc, "cannot read %s: %s", path, strerror(-rc));
    } else {
        in->data = in->owned.data;
        in->len = in->owned.len;
    }
    if (fd != STDIN_FILENO)
        close(fd);
    return rc;
}

static void free_input(struct input *in)
{
    if (in->mapped)
        munmap(in->data, in->len);
    buf_free(&in->owned);
}

static int do_put(struct store *s, const char *key, char **files, const struct args *a)
{
    struct input in = { 0 };
    int rc = load_input(files[0], &in);
    if (rc == 0)
        rc = store_put(s, key, in.data, in.len, a->if_absent ? STORE_IF_ABSENT : 0);
    free_input(&in);
    return rc;
}

/* ---- get ---- */

static int write_all(int fd, const void *p, size_t n)
{
    for (const char *c = p; n;) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Streams the object to fd in ranged GETs, so memory stays bounded. */
static int copy_out(struct store *s, const char *key, int fd, const char *dest)
{
    struct buf b = { 0 };
    int rc = 0;
    for (uint64_t off = 0;; off += GET_STEP) {
        buf_reset(&b);
        rc = store_get(s, key, off, GET_STEP, &b);
        if (rc == -ERANGE && off > 0) /* the object ended exactly at a step */
            rc = 0;
        if (rc)
            break;
        if ((rc = write_all(fd, b.data, b.len)) != 0) {
            err_set(rc, "cannot write %s: %s", dest, strerror(-rc));
            break;
        }
        if (b.len < GET_STEP)
            break;
    }
    buf_free(&b);
    return rc;
}

static int do_get(struct store *s, const char *key, char **files, const struct args *a)
{
    (void)a;
    const char *dest = files[0];
    if (strcmp(dest, "-") == 0)
        return copy_out(s, key, STDOUT_FILENO, "standard output");
    /* A temporary name beside dest, renamed only once whole: never a half-written file. */
    char tmp[4096];
    unsigned r = 0;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
        r = (unsigned)getpid();
    snprintf(tmp, sizeof tmp, "%s.ckptctl-%08x", dest, r);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return err_set(-errno, "cannot create %s: %s", tmp, strerror(errno));
    int rc = copy_out(s, key, fd, tmp);
    if (rc == 0 && fsync(fd))
        rc = err_set(-errno, "cannot write %s: %s", tmp, strerror(errno));
    close(fd);
    if (rc == 0 && rename(tmp, dest))
        rc = err_set(-errno, "cannot rename onto %s: %s", dest, strerror(errno));
    if (rc)
        unlink(tmp);
    return rc;
}

/* ---- ls, rm, head, probe ---- */

static int print_object(void *arg, const struct store_object *o)
{
    (void)arg;
    printf("%s\t%llu\n", o->key, (unsigned long long)o->size);
    return ferror(stdout) ? -EIO : 0;
}

/* The URL is opened as a store, so keys come relative to it. */
static int do_ls(struct store *s, const char *key, char **rest, const struct args *a)
{
    (void)key;
    (void)rest;
    (void)a;
    int rc = store_list(s, "", print_object, NULL);
    if (fflush(stdout) && !rc)
        rc = err_set(-EIO, "cannot write the listing: %s", strerror(errno));
    return rc;
}

static int do_head(struct store *s, const char *key, char **rest, const struct args *a)
{
    (void)rest;
    (void)a;
    struct store_object o;
    int rc = store_head(s, key, &o);
    if (rc == 0)
        printf("%llu\t%lld\n", (unsigned long long)o.size, (long long)o.mtime);
    return rc;
}

static int do_probe(struct store *s, const char *key, char **rest, const struct args *a)
{
    (void)key;
    (void)rest;
    (void)a;
    unsigned caps;
    int rc = store_probe(s, &caps);
    if (rc == 0)
        printf("conditional put (If-None-Match: *): %s\n",
               caps & STORE_CAP_IF_ABSENT ? "supported" : "not supported");
    return rc;
}

struct sub {
    const char *name;
    int operands; /* after the URL; -1: one or more URLs (rm) */
    int object;   /* the URL names an object (URL/KEY), not a store */
    int (*run)(struct store *s, const char *key, char **rest, const struct args *a);
};

static const struct sub subs[] = {
    { "put", 1, 1, do_put },   { "get", 1, 1, do_get },     { "ls", 0, 0, do_ls },
    { "head", 0, 1, do_head }, { "probe", 0, 0, do_probe }, { "rm", -1, 1, NULL },
};

static int run_one(const struct sub *sub, const char *url, char **rest, const struct args *a)
{
    struct store *s = NULL;
    char *key = NULL;
    int rc = sub->object ? open_object(url, a, &s, &key) : store_open(url, &a->opt, &s);
    if (rc == 0 && sub->object && !*key)
        rc = err_set(-EINVAL, "'%s' names no object (expected URL/KEY)", url);
    if (rc == 0)
        rc = sub->run ? sub->run(s, key, rest, a) : store_delete(s, key);
    if (s && a->stats)
        print_stats(s);
    store_close(s);
    free(key);
    return rc ? ctl_fail("%s", err_msg(rc)) : EXIT_OK;
}

int cmd_store(int argc, char **argv)
{
    struct args a = { 0 };
    if (argc < 2 || argv[1][0] == '-') {
        int help = argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"));
        fprintf(help ? stdout : stderr, store_usage, store_options_usage);
        return help ? EXIT_OK : EXIT_USAGE;
    }
    const struct sub *sub = NULL;
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++)
        if (strcmp(argv[1], subs[i].name) == 0)
            sub = &subs[i];
    if (!sub)
        return ctl_usage_error("unknown store command '%s'", argv[1]);
    int rc = parse(argc - 1, argv + 1, &a);
    if (rc || a.help) {
        if (a.help)
            printf(store_usage, store_options_usage);
        return rc;
    }
    char **ops = argv + 1 + optind;
    int nops = argc - 1 - optind;
    if (sub->operands >= 0 && nops != 1 + sub->operands)
        return ctl_usage_error("store %s takes %d argument%s", sub->name, 1 + sub->operands,
                               sub->operands ? "s" : "");
    if (nops < 1)
        return ctl_usage_error("store %s needs at least one URL", sub->name);
    int status = EXIT_OK;
    for (int i = 0; i < (sub->operands < 0 ? nops : 1); i++)
        if (run_one(sub, ops[i], ops + 1, &a) != EXIT_OK)
            status = EXIT_FAIL;
    return status;
}
