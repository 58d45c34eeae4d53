#include "control.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "fs/publisher.h"
#include "util/err.h"
#include "util/log.h"

struct control {
    struct fs *fs;
    int sock;
    pthread_t thread;
};

const char *control_socket_path(const struct fs *fs)
{
    static __thread char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/control.sock", fs->cache_dir);
    return path;
}

static void snapshot_name(struct snapshot_id id, char *out, size_t n)
{
    snprintf(out, n, "%08llx-%012llx", (unsigned long long)id.epoch, (unsigned long long)id.seq);
}

static void set_int(json_t *o, const char *k, uint64_t v)
{
    json_object_set_new(o, k, json_integer((json_int_t)v));
}

static json_t *status_json(struct fs *fs)
{
    struct publisher_status ps;
    struct blocks_stats bs;
    struct remote_stats rs;
    struct store_stats ss;
    char last[32];
    publisher_get_status(fs->pub, &ps);
    blocks_get_stats(fs->blocks, &bs);
    remote_get_stats(fs->remote, &rs);
    store_get_stats(fs->store, &ss);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t now_ns = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
    json_t *o = json_object();
    json_object_set_new(o, "ok", json_true());
    json_object_set_new(o, "url", json_string(fs->url));
    json_object_set_new(o, "cache_dir", json_string(fs->cache_dir));
    json_object_set_new(o, "read_only", json_boolean(fs->read_only));
    set_int(o, "dirty_bytes", bs.dirty_bytes);
    set_int(o, "upload_queue", bs.dirty_blocks);
    snapshot_name(ps.last, last, sizeof last);
    json_object_set_new(o, "last_snapshot", ps.last_ns ? json_string(last) : json_null());
    json_object_set_new(o, "last_snapshot_age",
                        ps.last_ns ? json_real((double)(now_ns - ps.last_ns) / 1e9) : json_null());
    set_int(o, "snapshots_published", ps.published);
    json_object_set_new(o, "publishing", json_boolean(ps.publishing));
    json_object_set_new(o, "last_error", json_string(ps.last_error));
    set_int(o, "bytes_uploaded", rs.bytes_put);
    set_int(o, "chunks_uploaded", rs.chunks_put);
    set_int(o, "chunks_deduplicated", rs.chunks_deduped);
    set_int(o, "bytes_deduplicated", rs.bytes_deduped);
    set_int(o, "bytes_fetched", rs.bytes_got);
    set_int(o, "store_retries", ss.op[STORE_OP_PUT].retries + ss.op[STORE_OP_GET].retries);
    return o;
}

static json_t *do_sync(struct fs *fs)
{
    int rc = publisher_sync(fs->pub);
    if (rc)
        return json_pack("{s:b, s:s}", "ok", 0, "error", err_msg(rc));
    struct publisher_status ps;
    char name[32] = "";
    publisher_get_status(fs->pub, &ps);
    if (ps.last_ns)
        snapshot_name(ps.last, name, sizeof name);
    return json_pack("{s:b, s:s?}", "ok", 1, "snapshot", ps.last_ns ? name : NULL);
}

static void *serve_one(void *arg)
{
    struct fs *fs = ((void **)arg)[0];
    int fd = (int)(intptr_t)((void **)arg)[1];
    free(arg);
    char line[64] = "";
    ssize_t n = read(fd, line, sizeof line - 1);
    line[n > 0 ? n : 0] = '\0';
    line[strcspn(line, "\r\n")] = '\0';
    json_t *reply = !strcmp(line, "sync") ? do_sync(fs)
                    : !strcmp(line, "status")
                        ? status_json(fs)
                        : json_pack("{s:b, s:s}", "ok", 0, "error", "unknown request");
    char *text = reply ? json_dumps(reply, JSON_COMPACT) : NULL;
    if (text && write(fd, text, strlen(text)) < 0)
        log_warn("control socket: %s", strerror(errno));
    free(text);
    json_decref(reply);
    close(fd);
    return NULL;
}

static void *accept_loop(void *arg)
{
    struct control *c = arg;
    for (;;) {
        int fd = accept4(c->sock, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return NULL; /* the socket was shut down */
        }
        void **args = malloc(2 * sizeof *args);
        pthread_t t;
        if (args) {
            args[0] = c->fs;
            args[1] = (void *)(intptr_t)fd;
        }
        /* A sync may wait for a publish: each request gets its own thread. */
        if (!args || pthread_create(&t, NULL, serve_one, args)) {
            free(args);
            close(fd);
            continue;
        }
        pthread_detach(t);
    }
}

int control_start(struct fs *fs, struct control **out)
{
    struct control *c = calloc(1, sizeof *c);
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    const char *path = control_socket_path(fs);
    if (!c)
        return -ENOMEM;
    if (strlen(path) >= sizeof addr.sun_path) {
        free(c);
        return err_set(-ENAMETOOLONG, "control socket path %s is too long", path);
    }
    strcpy(addr.sun_path, path);
    unlink(path);
    c->fs = fs;
    c->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->sock < 0 || bind(c->sock, (struct sockaddr *)&addr, sizeof addr) || chmod(path, 0600) ||
        listen(c->sock, 16) || pthread_create(&c->thread, NULL, accept_loop, c)) {
        int rc = err_set(-EIO, "control socket %s: %s", path, strerror(errno));
        if (c->sock >= 0)
            close(c->sock);
        free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void control_stop(struct control *c)
{
    if (!c)
        return;
    shutdown(c->sock, SHUT_RDWR);
    pthread_join(c->thread, NULL);
    close(c->sock);
    unlink(control_socket_path(c->fs));
    free(c);
}
