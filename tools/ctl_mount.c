/*
 * ckptctl sync / status / warm / promote: ask a running mount (through its
 * control socket, fs/control.h) to publish now, how it is doing, to fetch a
 * subtree into its cache, or (a follower) to become the writer.
 */
#include "ckptctl.h"
#include "progress.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <unistd.h>

#define CTL_XATTR "user.ckptfs.control"

/* Sends one request to the mount at mountpoint; *reply is its JSON answer.
 * Lines before the answer report progress: each goes to progress (if any). */
static int request_with(const char *mountpoint, const char *what,
                        void (*progress)(json_t *line, void *arg), void *arg, json_t **reply)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    ssize_t n = getxattr(mountpoint, CTL_XATTR, addr.sun_path, sizeof addr.sun_path - 1);
    if (n < 0)
        return ctl_fail("%s is not a ckptfs mount (%s)", mountpoint, strerror(errno));
    addr.sun_path[n] = '\0';
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr)) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return ctl_fail("cannot reach the ckptfs daemon of %s at %s: %s", mountpoint, addr.sun_path,
                        strerror(e));
    }
    char line[64];
    snprintf(line, sizeof line, "%s\n", what);
    *reply = NULL;
    FILE *in = write(fd, line, strlen(line)) == (ssize_t)strlen(line) ? fdopen(fd, "r") : NULL;
    char *text = NULL;
    size_t cap = 0;
    while (in && !*reply && getline(&text, &cap, in) > 0) {
        json_t *j = json_loads(text, 0, NULL);
        if (j && json_object_get(j, "progress")) {
            if (progress)
                progress(j, arg);
            json_decref(j);
        } else {
            *reply = j;
            break;
        }
    }
    free(text);
    if (in)
        fclose(in);
    else
        close(fd);
    if (!*reply)
        return ctl_fail("the ckptfs daemon of %s gave no readable answer", mountpoint);
    if (!json_is_true(json_object_get(*reply, "ok"))) {
        const char *err = json_string_value(json_object_get(*reply, "error"));
        int rc = ctl_fail("%s", err ? err : "the daemon reported a failure");
        json_decref(*reply);
        return rc;
    }
    return EXIT_OK;
}

static int request(const char *mountpoint, const char *what, json_t **reply)
{
    return request_with(mountpoint, what, NULL, NULL, reply);
}

static int one_mountpoint(int argc, char **argv, const char *usage, int *json)
{
    int paths = 0, at = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && json)
            *json = 1;
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))
            return printf("%s", usage), -1;
        else if (argv[i][0] == '-')
            return ctl_usage_error("%s: unknown option %s", argv[0], argv[i]);
        else
            paths++, at = i;
    }
    if (paths != 1)
        return ctl_usage_error("%s takes one MOUNTPOINT", argv[0]);
    return at;
}

int cmd_sync(int argc, char **argv)
{
    int at = one_mountpoint(argc, argv,
                            "usage: ckptctl sync MOUNTPOINT\n"
                            "Publishes a snapshot with every change made before the call; returns "
                            "once it is in the bucket.\n",
                            NULL);
    if (at <= 0)
        return at < 0 ? EXIT_OK : at;
    json_t *reply;
    int rc = request(argv[at], "sync", &reply);
    if (rc)
        return rc;
    const char *snap = json_string_value(json_object_get(reply, "snapshot"));
    printf("%s: snapshot %s is in the bucket\n", argv[at], snap ? snap : "(none: empty tree)");
    json_decref(reply);
    return EXIT_OK;
}

int cmd_promote(int argc, char **argv)
{
    int at = one_mountpoint(argc, argv,
                            "usage: ckptctl promote MOUNTPOINT\n"
                            "Makes a follower (ckptfs --follow) the writer of its bucket: it "
                            "catches up with the newest snapshot, takes the bucket over with a "
                            "higher epoch, and returns once its first snapshot is in the bucket. "
                            "A writer still running stops publishing before its next snapshot.\n",
                            NULL);
    if (at <= 0)
        return at < 0 ? EXIT_OK : at;
    json_t *reply;
    int rc = request(argv[at], "promote", &reply);
    if (rc)
        return rc;
    const char *snap = json_string_value(json_object_get(reply, "snapshot"));
    printf("%s: promoted in %.2f s; writing epoch %lld, snapshot %s is in the bucket\n", argv[at],
           json_real_value(json_object_get(reply, "seconds")),
           (long long)json_integer_value(json_object_get(reply, "epoch")), snap ? snap : "(none)");
    json_decref(reply);
    return EXIT_OK;
}

static json_int_t num(json_t *r, const char *k)
{
    return json_integer_value(json_object_get(r, k));
}

static void print_cache(json_t *r)
{
    char used[32], limit[32], mem[32], mlimit[32], got[32];
    ctl_size_text((double)num(r, "cache_used"), used, sizeof used);
    ctl_size_text((double)num(r, "cache_limit"), limit, sizeof limit);
    ctl_size_text((double)num(r, "memory_used"), mem, sizeof mem);
    ctl_size_text((double)num(r, "memory_limit"), mlimit, sizeof mlimit);
    ctl_size_text((double)num(r, "bytes_fetched"), got, sizeof got);
    printf("disk cache:     %s of %s; %lld evictions, %lld blocks failed their check\n", used,
           limit, (long long)num(r, "evictions"), (long long)num(r, "corrupt_blocks"));
    printf("memory cache:   %s of %s\n", mem, mlimit);
    printf("reads:          %lld from memory, %lld from disk, %lld fetched (%s); %lld "
           "fetched ahead, %lld fetches queued\n",
           (long long)num(r, "hits_memory"), (long long)num(r, "hits_disk"),
           (long long)num(r, "misses"), got, (long long)num(r, "prefetched"),
           (long long)num(r, "fetch_queue"));
    if (num(r, "writers_waiting") || num(r, "writer_waits"))
        printf("backpressure:   %lld writers waiting for room now; %lld waited, %lld gave up\n",
               (long long)num(r, "writers_waiting"), (long long)num(r, "writer_waits"),
               (long long)num(r, "writer_timeouts"));
}

static void print_status(json_t *r)
{
    char dirty[32], up[32], dedup[32];
    const char *last = json_string_value(json_object_get(r, "last_snapshot"));
    const char *err = json_string_value(json_object_get(r, "last_error"));
    ctl_size_text((double)num(r, "dirty_bytes"), dirty, sizeof dirty);
    ctl_size_text((double)num(r, "bytes_uploaded"), up, sizeof up);
    ctl_size_text((double)num(r, "bytes_deduplicated"), dedup, sizeof dedup);
    printf("url:            %s\n", json_string_value(json_object_get(r, "url")));
    printf("cache:          %s\n", json_string_value(json_object_get(r, "cache_dir")));
    const char *serving = json_string_value(json_object_get(r, "serving"));
    const char *newest = json_string_value(json_object_get(r, "newest"));
    if (serving)
        printf("serving:        snapshot %s; newest in the bucket %s (%lld behind, lag %lld s)\n",
               serving, newest ? newest : "unknown", (long long)num(r, "snapshots_behind"),
               (long long)num(r, "lag_seconds"));
    if (json_is_true(json_object_get(r, "following"))) {
        const char *ferr = json_string_value(json_object_get(r, "follow_error"));
        printf("following:      %lld switches%s; %s\n", (long long)num(r, "switches"),
               json_is_true(json_object_get(r, "warming")) ? ", warming the cache now" : "",
               ferr && *ferr ? ferr : "no error");
    }
    if (json_is_true(json_object_get(r, "fenced")))
        printf("FENCED:         another mount took the bucket over; this one is read-only\n");
    printf("not uploaded:   %s in %lld blocks%s\n", dirty, (long long)num(r, "upload_queue"),
           json_is_true(json_object_get(r, "publishing")) ? " (publishing now)" : "");
    if (last)
        printf("last snapshot:  %s, %.1f s ago\n", last,
               json_real_value(json_object_get(r, "last_snapshot_age")));
    else
        printf("last snapshot:  none published by this mount yet\n");
    printf("uploaded:       %s in %lld chunks; %lld chunks (%s) already in the bucket\n", up,
           (long long)num(r, "chunks_uploaded"), (long long)num(r, "chunks_deduplicated"), dedup);
    print_cache(r);
    printf("last error:     %s\n", err && *err ? err : "none");
}

int cmd_status(int argc, char **argv)
{
    int json = 0;
    int at = one_mountpoint(argc, argv,
                            "usage: ckptctl status [--json] MOUNTPOINT\n"
                            "What the mount has not uploaded yet, its last snapshot, its last "
                            "error.\n",
                            &json);
    if (at <= 0)
        return at < 0 ? EXIT_OK : at;
    json_t *reply;
    int rc = request(argv[at], "status", &reply);
    if (rc)
        return rc;
    if (json) {
        json_object_del(reply, "ok");
        json_dumpf(reply, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
        putchar('\n');
    } else {
        print_status(reply);
    }
    json_decref(reply);
    return EXIT_OK;
}

/* ---- warm ---- */

static void progress_bar(json_t *line, void *arg)
{
    (void)arg;
    ctl_progress((double)num(line, "done"), (double)num(line, "total"),
                 (long long)num(line, "files_done"), (long long)num(line, "files"), "files");
}

/* PATH's inode number, if PATH is inside the mount at mountpoint. */
static int inode_in(const char *mountpoint, const char *path, unsigned long long *ino)
{
    struct stat m, p;
    if (stat(mountpoint, &m))
        return ctl_fail("%s: %s", mountpoint, strerror(errno));
    if (stat(path, &p))
        return ctl_fail("%s: %s", path, strerror(errno));
    if (p.st_dev != m.st_dev)
        return ctl_fail("%s is not inside the mount %s", path, mountpoint);
    *ino = (unsigned long long)p.st_ino;
    return EXIT_OK;
}

int cmd_warm(int argc, char **argv)
{
    static const char usage[] =
        "usage: ckptctl warm MOUNTPOINT [PATH]\n"
        "Fetches the files under PATH (default: all of the mount) into the mount's disk cache,\n"
        "so that reading them later sends no request to the bucket. Shows progress on a\n"
        "terminal. Fails if they do not fit in the cache.\n";
    const char *args[2];
    int n = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))
            return printf("%s", usage), EXIT_OK;
        if (argv[i][0] == '-')
            return ctl_usage_error("warm: unknown option %s", argv[i]);
        if (n == 2)
            return ctl_usage_error("warm takes MOUNTPOINT and at most one PATH");
        args[n++] = argv[i];
    }
    if (n == 0)
        return ctl_usage_error("warm takes MOUNTPOINT and at most one PATH");
    unsigned long long ino = 0;
    int rc = inode_in(args[0], n == 2 ? args[1] : args[0], &ino);
    if (rc)
        return rc;
    char what[64];
    snprintf(what, sizeof what, "warm %llu", ino);
    json_t *reply;
    int tty = isatty(STDERR_FILENO);
    rc = request_with(args[0], what, tty ? progress_bar : NULL, NULL, &reply);
    if (tty)
        fputc('\n', stderr);
    if (rc)
        return rc;
    char got[32];
    ctl_size_text((double)num(reply, "fetched"), got, sizeof got);
    printf("%s: %lld files warm, %s fetched\n", n == 2 ? args[1] : args[0],
           (long long)num(reply, "files"), got);
    json_decref(reply);
    return EXIT_OK;
}
