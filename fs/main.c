/*
 * ckptfs: mounts a bucket as a directory. The command line, start-up in an
 * order that fails before anything is written (bootstrap.c), the FUSE
 * session, and an unmount that publishes everything before the daemon exits.
 */
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/store_options.h"
#include "fs/bootstrap.h"
#include "fs/control.h"
#include "fs/follow.h"
#include "fs/fs.h"
#include "fs/snapshot.h"
#include "fs/snapview.h"
#include "fs/writer.h"
#include "util/bufpool.h"
#include "util/err.h"
#include "util/hex.h"
#include "util/log.h"

#define FUSE_THREADS       48 /* writers waiting for room must leave some for everyone else */
#define READ_BUFS          16 /* read replies' buffers kept: reads in flight at once, at most */
#define FETCH_THREADS      8 /* parallel GETs for read-ahead and warm-up: what saturates a server */
#define MIN_CACHE          ((uint64_t)64 << 20) /* room for a few blocks per writer */
#define SLRU_PROTECTED_PCT 80 /* the share of a full cache kept for data read more than once */
#define DEFAULT_FOLLOW_MS  2000

static const char usage_text[] =
    "usage: ckptfs [OPTIONS] URL MOUNTPOINT\n"
    "  URL = s3://BUCKET[/PREFIX] | file:///ABSOLUTE/PATH\n"
    "\n"
    "  -f, --foreground            stay in the foreground (default: daemonize once mounted)\n"
    "  -o OPT[,OPT...]             these options in mount(8) form (cache_dir=DIR, sync=remote,\n"
    "                              allow_other, ...)\n"
    "  --cache-dir DIR             local cache (default /var/cache/ckptfs/HASH-OF-URL)\n"
    "  --sync local|remote         what fsync waits for: the local disk, or a snapshot in\n"
    "                              the bucket (default local)\n"
    "  --publish-on GLOB           renaming onto, or fsyncing, a file whose name matches\n"
    "                              returns once a snapshot holding it is in the bucket\n"
    "                              (repeat it, or join globs with '|', for several)\n"
    "  --snapshot-interval SECS    publish at least this often while changed (default 5,\n"
    "                              at most 900)\n"
    "  --compress LEVEL|off        zstd level, 1 to 19 (default 1)\n"
    "  --encrypt-key FILE          AES-256-GCM client-side encryption (32 bytes or 64 hex)\n"
    "  --force                     take over a bucket whose writer stopped heartbeating\n"
    "  --cache-size SIZE           what the cache directory may hold (default 10G); dirty\n"
    "                              data is never evicted: writers wait for uploads instead\n"
    "  --memory-cache SIZE         decoded chunks kept in memory (default 64M, 0 for none)\n"
    "  --full-timeout SECS         how long a write waits for room in a full cache before\n"
    "                              failing with ENOSPC (default 300)\n"
    "  --eviction slru|lru         which clean data leaves a full cache first (default slru)\n"
    "  --allow-other               let other users use the mount (as -o allow_other)\n"
    "  --read-only                 the newest snapshot, read-only (as -o ro); sends no write\n"
    "                              request of any kind to the bucket\n"
    "  --keep N                    after each publish, delete snapshots older than the newest\n"
    "                              N (and than --keep-age, if given too)\n"
    "  --keep-age DURATION         ... snapshots older than this (90s, 30m, 12h, 7d); the\n"
    "                              newest always stays; chunks are ckptctl gc's to delete\n"
    "  --block-size SIZE           a new bucket's block (and chunk) size, 64K to 64M (default\n"
    "                              4M); smaller blocks fetch less for small random reads\n"
    "  --seed-from URL             a new bucket starts from that bucket's newest snapshot\n"
    "                              (its chunks copied over first; the seed is only read)\n"
    "  --snapshot ID               with --read-only or --seed-from: that snapshot, not the\n"
    "                              newest\n"
    "  --follow[=SECS]             a standby: read-only, polls every SECS (default 2) for a\n"
    "                              newer snapshot, switches to it and fetches its chunks;\n"
    "                              ckptctl promote makes it the writer\n"
    "%s"
    "  -h, --help  --version\n";

struct cli {
    const char *url, *mountpoint;
    char mount_path[PATH_MAX]; /* mountpoint made absolute, for after the daemon's chdir */
    char *cache_dir;
    int foreground, force, allow_other, read_only;
    const char *seed_url;        /* --seed-from */
    size_t block_size;           /* --block-size */
    struct retention keep;       /* --keep, --keep-age */
    int pinned;                  /* --snapshot given */
    unsigned follow_ms;          /* --follow's poll interval, 0 without it */
    struct snapshot_id snapshot; /* its ID */
    enum sync_mode sync;
    char **publish_on; /* --publish-on's globs, NULL-terminated (NULL: none) */
    size_t npublish;
    unsigned interval_s;
    int level;
    const char *key_file;
    struct blocks_options cache;
    unsigned full_timeout_s;
    struct store_options store;
    char *o_copy; /* -o strings point into it */
};

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "ckptfs: %s\n", line);
    return 1;
}

/* ---- options ---- */

static int parse_uint(const char *what, const char *v, unsigned lo, unsigned hi, unsigned *out)
{
    char *end;
    unsigned long n = strtoul(v, &end, 10);
    if (!*v || *end || v[0] == '-' || n < lo || n > hi)
        return err_set(-EINVAL, "%s: '%s' is not a number from %u to %u", what, v, lo, hi);
    *out = (unsigned)n;
    return 0;
}

/* A size: a number of bytes, or with K, M, G or T (powers of 1024). */
static int parse_size(const char *what, const char *v, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    char up = (char)(*end & ~0x20);
    const char *units = "KMGT", *u = up ? strchr(units, up) : NULL;
    int shift = u ? 10 * (int)(u - units + 1) : 0;
    if (u && (end[1] == 'i' || end[1] == 'B') && (end[2] == '\0' || end[2] == 'B'))
        end += end[1] == 'i' ? 2 : 1; /* 4G, 4GB, 4GiB */
    else if (u)
        end++;
    if (!*v || v[0] == '-' || errno || end == v || *end || (shift && n > (~0ULL >> shift)))
        return err_set(-EINVAL, "%s: '%s' is not a size (say 512M or 10G)", what, v);
    *out = (uint64_t)n << shift;
    return 0;
}

/* --publish-on's value: one glob, or several joined by '|'. */
static int add_globs(struct cli *c, const char *v)
{
    for (const char *g = v; g;) {
        const char *bar = strchr(g, '|');
        char **more = realloc(c->publish_on, (c->npublish + 2) * sizeof *more);
        if (!more)
            return -ENOMEM;
        c->publish_on = more;
        if (!(more[c->npublish] = strndup(g, bar ? (size_t)(bar - g) : strlen(g))))
            return -ENOMEM;
        more[++c->npublish] = NULL;
        g = bar ? bar + 1 : NULL;
    }
    return 0;
}

/* One ckptfs option by name, as --name VALUE or -o name=VALUE. Returns 1 if
 * taken, 0 if not ours, -EINVAL if its value is wrong. */
static int set_option(struct cli *c, const char *name, const char *v)
{
    unsigned n = 0;
    int rc;
    if (!strcmp(name, "cache-dir") || !strcmp(name, "cache_dir")) {
        free(c->cache_dir);
        c->cache_dir = strdup(v);
    } else if (!strcmp(name, "sync")) {
        if (strcmp(v, "local") && strcmp(v, "remote"))
            return err_set(-EINVAL, "--sync: '%s' is neither local nor remote", v);
        c->sync = v[0] == 'r' ? SYNC_REMOTE : SYNC_LOCAL;
    } else if (!strcmp(name, "publish-on") || !strcmp(name, "publish_on")) {
        if ((rc = add_globs(c, v)) != 0)
            return rc;
    } else if (!strcmp(name, "snapshot-interval") || !strcmp(name, "snapshot_interval")) {
        /* At most a quarter of gc's least grace (cache/remote.h): a chunk uploaded ahead
         * is named by a snapshot long before gc may take it for garbage. */
        if ((rc = parse_uint("--snapshot-interval", v, 1, GC_MIN_GRACE / 4, &c->interval_s)) != 0)
            return rc;
    } else if (!strcmp(name, "compress")) {
        if (!strcmp(v, "off"))
            c->level = 0;
        else if ((rc = parse_uint("--compress", v, 1, 19, &n)) != 0)
            return rc;
        else
            c->level = (int)n;
    } else if (!strcmp(name, "encrypt-key") || !strcmp(name, "encrypt_key")) {
        c->key_file = v;
    } else if (!strcmp(name, "cache-size") || !strcmp(name, "cache_size")) {
        if ((rc = parse_size("--cache-size", v, &c->cache.cache_size)) != 0)
            return rc;
        if (c->cache.cache_size < MIN_CACHE)
            return err_set(-EINVAL, "--cache-size: %s is too small; give at least 64M", v);
    } else if (!strcmp(name, "memory-cache") || !strcmp(name, "memory_cache")) {
        uint64_t m;
        if ((rc = parse_size("--memory-cache", v, &m)) != 0)
            return rc;
        c->cache.memory_cache = (size_t)m;
    } else if (!strcmp(name, "full-timeout") || !strcmp(name, "full_timeout")) {
        if ((rc = parse_uint("--full-timeout", v, 1, 7 * 86400, &c->full_timeout_s)) != 0)
            return rc;
    } else if (!strcmp(name, "keep")) {
        if ((rc = parse_uint("--keep", v, 1, 1000000, &c->keep.keep)) != 0)
            return rc;
    } else if (!strcmp(name, "keep-age") || !strcmp(name, "keep_age")) {
        if ((rc = retention_parse_duration("--keep-age", v, &c->keep.keep_age_s)) != 0)
            return rc;
    } else if (!strcmp(name, "block-size") || !strcmp(name, "block_size")) {
        uint64_t bs;
        if ((rc = parse_size("--block-size", v, &bs)) != 0)
            return rc;
        if (bs < MARKER_MIN_BLOCK || bs > MARKER_MAX_BLOCK || bs % MARKER_MIN_BLOCK)
            return err_set(-EINVAL, "--block-size: %s is not a multiple of 64K from 64K to 64M", v);
        c->block_size = (size_t)bs;
    } else if (!strcmp(name, "seed-from") || !strcmp(name, "seed_from")) {
        c->seed_url = v;
    } else if (!strcmp(name, "snapshot")) {
        if (snapshot_parse_id(v, &c->snapshot))
            return err_set(-EINVAL,
                           "--snapshot: '%s' is not a snapshot ID (EEEEEEEE-SSSSSSSSSSSS, "
                           "as ckptctl snapshots lists them)",
                           v);
        c->pinned = 1;
    } else if (!strcmp(name, "follow")) {
        unsigned secs;
        if ((rc = parse_uint("--follow", v, 1, 3600, &secs)) != 0)
            return rc;
        c->follow_ms = secs * 1000;
    } else if (!strcmp(name, "eviction")) {
        if (strcmp(v, "slru") && strcmp(v, "lru"))
            return err_set(-EINVAL, "--eviction: '%s' is neither slru nor lru", v);
        c->cache.protect_pct = v[0] == 's' ? SLRU_PROTECTED_PCT : 0;
    } else {
        return store_options_set(&c->store, name, v);
    }
    return 1;
}

/* mount(8) options that mean nothing here, or that the kernel already applied. */
static int ignorable(const char *o)
{
    static const char *const words[] = { "rw",       "defaults", "auto",   "noauto",
                                         "nofail",   "_netdev",  "user",   "users",
                                         "nouser",   "dev",      "nodev",  "suid",
                                         "nosuid",   "exec",     "noexec", "default_permissions",
                                         "relatime", "async" };
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (!strcmp(o, words[i]))
            return 1;
    return !strncmp(o, "x-", 2) || !strncmp(o, "comment=", 8);
}

static int parse_o(struct cli *c, const char *list)
{
    char *save = NULL;
    free(c->o_copy);
    c->o_copy = strdup(list);
    for (char *o = strtok_r(c->o_copy, ",", &save); o; o = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(o, '=');
        if (eq)
            *eq = '\0';
        int rc = 0;
        if (!strcmp(o, "allow_other"))
            c->allow_other = 1;
        else if (!strcmp(o, "force"))
            c->force = 1;
        else if (!strcmp(o, "ro"))
            c->read_only = 1;
        else if (!strcmp(o, "follow") && !eq)
            c->follow_ms = DEFAULT_FOLLOW_MS;
        else if (eq)
            rc = set_option(c, o, eq + 1);
        if (rc < 0)
            return rc;
        if (rc == 0 && !eq && !ignorable(o) && strcmp(o, "allow_other") && strcmp(o, "force") &&
            strcmp(o, "ro") && strcmp(o, "follow"))
            return err_set(-EINVAL, "-o %s: unknown option", o);
        if (rc == 0 && eq)
            return err_set(-EINVAL, "-o %s: unknown option", o);
    }
    return 0;
}

static int parse_args(int argc, char **argv, struct cli *c)
{
    static const struct option own[] = {
        { "foreground", no_argument, NULL, 'f' },
        { "force", no_argument, NULL, 'F' },
        { "allow-other", no_argument, NULL, 'A' },
        { "read-only", no_argument, NULL, 'R' },
        { "follow", optional_argument, NULL, 'W' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "cache-dir", required_argument, NULL, 'x' },
        { "sync", required_argument, NULL, 'x' },
        { "publish-on", required_argument, NULL, 'x' },
        { "snapshot-interval", required_argument, NULL, 'x' },
        { "compress", required_argument, NULL, 'x' },
        { "encrypt-key", required_argument, NULL, 'x' },
        { "cache-size", required_argument, NULL, 'x' },
        { "memory-cache", required_argument, NULL, 'x' },
        { "full-timeout", required_argument, NULL, 'x' },
        { "eviction", required_argument, NULL, 'x' },
        { "snapshot", required_argument, NULL, 'x' },
        { "seed-from", required_argument, NULL, 'x' },
        { "block-size", required_argument, NULL, 'x' },
        { "keep", required_argument, NULL, 'x' },
        { "keep-age", required_argument, NULL, 'x' },
    };
    struct option all[sizeof own / sizeof own[0] + 16];
    size_t n = 0;
    for (; n < sizeof own / sizeof own[0]; n++)
        all[n] = own[n];
    for (const struct option *o = store_long_options; o->name; o++)
        all[n++] = *o;
    all[n] = (struct option){ 0 };
    int ch, idx, rc = 0;
    opterr = 0; /* our own messages, in our own words */
    while (rc >= 0 && (ch = getopt_long(argc, argv, ":fo:h", all, &idx)) != -1) {
        if (ch == 'f')
            c->foreground = 1;
        else if (ch == 'F')
            c->force = 1;
        else if (ch == 'A')
            c->allow_other = 1;
        else if (ch == 'R')
            c->read_only = 1;
        else if (ch == 'W' && !optarg)
            c->follow_ms = DEFAULT_FOLLOW_MS;
        else if (ch == 'W')
            rc = set_option(c, "follow", optarg);
        else if (ch == 'o')
            rc = parse_o(c, optarg);
        else if (ch == 'x' || ch >= STORE_OPT_BASE)
            rc = set_option(c, all[idx].name, optarg);
        else if (ch == 'h' || ch == 'V')
            return ch;
        else if (ch == ':')
            return err_set(-EINVAL, "option %s needs a value", argv[optind - 1]);
        else
            return err_set(-EINVAL, "unknown option %s", argv[optind - 1]);
    }
    if (rc < 0)
        return rc;
    if (argc - optind != 2)
        return err_set(-EINVAL, "expected URL and MOUNTPOINT");
    c->url = argv[optind];
    c->mountpoint = argv[optind + 1];
    if (!realpath(c->mountpoint, c->mount_path))
        snprintf(c->mount_path, sizeof c->mount_path, "%s", c->mountpoint);
    return 0;
}

/* ---- checks before anything else ---- */

static int check_mountpoint(const char *path)
{
    struct stat st;
    if (stat(path, &st))
        return err_set(-ENOENT, "mount point %s: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return err_set(-ENOTDIR, "mount point %s is not a directory", path);
    DIR *d = opendir(path);
    struct dirent *de;
    int entries = 0;
    while (d && (de = readdir(d)) != NULL)
        entries += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    if (d)
        closedir(d);
    if (!d)
        return err_set(-EACCES, "mount point %s: %s", path, strerror(errno));
    return entries ? err_set(-ENOTEMPTY, "mount point %s is not empty", path) : 0;
}

static char *default_cache_dir(const char *url)
{
    unsigned char md[32];
    char hex[65], *dir = NULL;
    unsigned int n;
    EVP_Digest(url, strlen(url), md, &n, EVP_sha256(), NULL);
    hex_encode(md, 8, hex);
    return asprintf(&dir, "/var/cache/ckptfs/%s", hex) < 0 ? NULL : dir;
}

static int open_codec(struct cli *c, struct fs *fs)
{
    uint8_t key[CODEC_KEY_LEN];
    int rc = c->key_file ? codec_load_key(c->key_file, key) : 0;
    struct codec_options o = { .level = c->level, .key = c->key_file ? key : NULL };
    if (rc == 0)
        rc = codec_new(&o, &fs->codec);
    fs->codec_keyed = c->key_file != NULL;
    OPENSSL_cleanse(key, sizeof key);
    return rc;
}

/* ---- the session ---- */

static struct fuse_session *mount_session(struct cli *c, struct fs *fs)
{
    char opts[4096];
    snprintf(opts, sizeof opts, "fsname=%s,subtype=ckptfs,default_permissions%s%s", c->url,
             c->allow_other ? ",allow_other" : "", c->read_only ? ",ro" : "");
    /* CKPTFS_FUSE_DEBUG=1: libfuse logs every request (for debugging, -f). */
    char *argv[] = { "ckptfs", "-o", opts, getenv("CKPTFS_FUSE_DEBUG") ? "-d" : NULL, NULL };
    struct fuse_args args = FUSE_ARGS_INIT(argv[3] ? 4 : 3, argv);
    struct fuse_session *se = fuse_session_new(&args, &ckptfs_ops, sizeof ckptfs_ops, fs);
    fuse_opt_free_args(&args);
    if (!se)
        return NULL;
    if (fuse_set_signal_handlers(se) || fuse_session_mount(se, c->mountpoint)) {
        fuse_remove_signal_handlers(se);
        fuse_session_destroy(se);
        return NULL;
    }
    return se;
}

/* After daemonizing, the log goes to the cache directory, and a pid file
 * there tells scripts which process to wait for after an unmount (the
 * daemon exits once its last snapshot is in the bucket). */
static void daemon_files(const struct fs *fs, int foreground)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/ckptfs.pid", fs->cache_dir);
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "%d\n", (int)getpid());
        fclose(f);
    }
    if (foreground)
        return;
    snprintf(path, sizeof path, "%s/ckptfs.log", fs->cache_dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd >= 0) {
        dup2(fd, STDERR_FILENO);
        close(fd);
    }
}

static void remove_pid_file(const struct fs *fs)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/ckptfs.pid", fs->cache_dir);
    unlink(path);
}

static int serve(struct cli *c, struct fs *fs, struct bootstrap *b, struct fuse_session *se)
{
    struct control *ctl = NULL;
    b->pub.interval_ms = c->interval_s * 1000;
    b->pub.keep = c->keep;
    /* Threads start here, after the fork into the background, never before. */
    /* Half the memory tier at most (what is fetched ahead must still be there when the
     * reader comes); without one, read-ahead lands on disk only. */
    size_t half = fs->cache.memory_cache / 2;
    fs->read_ahead = half && half < FS_READ_AHEAD_MAX ? half : FS_READ_AHEAD_MAX;
    int rc = blocks_evictor_start(fs->blocks);
    if (rc == 0)
        rc = snapview_open(fs, &fs->views);
    if (rc == 0)
        rc = pool_new(FETCH_THREADS, 8 * FETCH_THREADS, &fs->fetches);
    if (rc == 0)
        rc = bufpool_new(FS_MAX_READ, READ_BUFS, &fs->read_bufs);
    if (rc == 0)
        blocks_prefetch_start(fs->blocks, fs->fetches, fs->read_ahead);
    if (rc == 0 && !fs->read_only)
        rc = writer_start(fs, b, &fs->writer);
    if (rc == 0 && fs->following)
        rc = follow_start(fs, c->follow_ms, &fs->follow);
    if (rc == 0)
        rc = control_start(fs, &ctl);
    if (rc == 0) {
        struct fuse_loop_config *cfg = fuse_loop_cfg_create();
        fuse_loop_cfg_set_max_threads(cfg, FUSE_THREADS);
        fuse_session_loop_mt(se, cfg);
        fuse_loop_cfg_destroy(cfg);
        fuse_session_unmount(se);
    }
    control_stop(ctl);
    writer_promotions_end(); /* waits for one under way */
    follow_stop(fs->follow);
    int final = writer_stop(fs->writer);
    follow_free(fs->follow);
    blocks_prefetch_stop(fs->blocks);
    pool_free(fs->fetches);
    fs->fetches = NULL;
    bufpool_free(fs->read_bufs);
    fs->read_bufs = NULL;
    snapview_close(fs->views);
    fs->views = NULL;
    return rc ? rc : final;
}

static int run(struct cli *c)
{
    struct fs fs = { .url = (char *)c->url,
                     .cache_dir = c->cache_dir,
                     .sync = c->sync,
                     .read_only = c->read_only || c->follow_ms,
                     .following = c->follow_ms != 0,
                     .pinned = c->pinned,
                     .seed_url = c->seed_url,
                     .block_size = c->block_size,
                     .snapshot = c->snapshot,
                     .publish_on = c->publish_on,
                     .mount_path = c->mount_path,
                     .cache = c->cache };
    fs.cache.full_timeout_ms = (int64_t)c->full_timeout_s * 1000;
    struct bootstrap b = { .force = c->force };
    fs.boot = &b;
    int rc = check_mountpoint(c->mountpoint);
    if (rc == 0 && c->pinned && !c->read_only && !c->seed_url)
        rc = err_set(-EINVAL, "--snapshot needs --read-only or --seed-from: a writable mount "
                              "continues from the newest snapshot");
    if (rc == 0 && retention_set(&c->keep) && c->read_only)
        rc = err_set(-EINVAL, "--keep and --keep-age are for the writer; a read-only mount "
                              "deletes nothing");
    if (rc == 0 && c->seed_url && c->read_only)
        rc = err_set(-EINVAL, "--seed-from is for a writable mount; mount the seed itself "
                              "--read-only to browse it");
    if (rc == 0 && c->follow_ms && (c->read_only || c->pinned || c->seed_url))
        rc = err_set(-EINVAL, "--follow is a standby that follows the newest snapshot and can be "
                              "promoted: it takes no --read-only, --snapshot or --seed-from");
    if (rc == 0 && c->seed_url && !strcmp(c->seed_url, c->url))
        rc = err_set(-EINVAL, "--seed-from names the mount's own bucket");
    if (rc == 0)
        rc = store_open(c->url, &c->store, &fs.store);
    if (rc == 0 && c->seed_url)
        rc = store_open(c->seed_url, &c->store, &fs.seed_store);
    if (rc == 0)
        rc = open_codec(c, &fs);
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    /* A freeze must not wait behind an endless stream of writers. */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&fs.freeze, &attr);
    pthread_mutex_init(&fs.inodes_lock, NULL);
    fs.inodes = hmap_new();
    if (rc == 0)
        rc = bootstrap_open(&fs, &b);
    if (rc)
        return fail("%s", err_msg(rc));
    struct fuse_session *se = mount_session(c, &fs);
    if (!se) {
        if (!fs.read_only)
            owner_release(fs.store, &b.claim);
        bootstrap_close(&fs);
        return fail("cannot mount %s on %s (see the message above)", c->url, c->mountpoint);
    }
    fs.se = se;
    fuse_daemonize(c->foreground);
    daemon_files(&fs, c->foreground);
    rc = serve(c, &fs, &b, se);
    remove_pid_file(&fs);
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    bootstrap_close(&fs);
    codec_free(fs.codec);
    store_close(fs.store);
    store_close(fs.seed_store);
    inode_table_free(&fs);
    return rc ? fail("%s", err_msg(rc)) : 0;
}

int main(int argc, char **argv)
{
    struct cli c = { .interval_s = 5,
                     .level = 1,
                     .full_timeout_s = 300,
                     .cache = { .cache_size = (uint64_t)10 << 30,
                                .memory_cache = (size_t)64 << 20,
                                .protect_pct = SLRU_PROTECTED_PCT } };
    log_init("ckptfs", LOG_WARN);
    signal(SIGPIPE, SIG_IGN);
    int rc = parse_args(argc, argv, &c);
    if (rc == 'h')
        return printf(usage_text, store_options_usage), 0;
    if (rc == 'V')
        return puts("ckptfs " CKPT_VERSION), 0;
    if (rc < 0) {
        fail("%s", err_msg(rc));
        fprintf(stderr, "Try 'ckptfs --help'.\n");
        return 2;
    }
    if (!c.cache_dir && !(c.cache_dir = default_cache_dir(c.url)))
        return fail("out of memory");
    rc = run(&c);
    free(c.cache_dir);
    for (size_t i = 0; i < c.npublish; i++)
        free(c.publish_on[i]);
    free(c.publish_on);
    free(c.o_copy);
    return rc;
}
