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

#include "fs/follow.h"
#include "fs/publisher.h"
#include "fs/snapshot.h"
#include "fs/warm.h"
#include "fs/writer.h"
#include "util/clock.h"
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

struct behind {
    struct snapshot_id served, newest;
    uint64_t newer;      /* snapshots newer than the one served */
    int64_t first_newer; /* when the first of them was published (unix seconds), 0 if none */
};

static int count_newer(void *arg, struct snapshot_id id, const struct store_object *o)
{
    struct behind *b = arg;
    if (snapshot_newer(id, b->served) && !b->newer++)
        b->first_newer = o->mtime;
    if (snapshot_newer(id, b->newest))
        b->newest = id;
    return 0;
}

/* The snapshot served: a follower's latest switch, else what the cache loaded. */
static int served(struct fs *fs, struct snapshot_id *id)
{
    char loaded[SNAPSHOT_ID_LEN] = "";
    struct follow_status fst;
    if (fs->follow) {
        follow_get_status(fs->follow, &fst);
        *id = fst.serving;
        return fst.serving.epoch || fst.serving.seq ? 0 : -ENOENT;
    }
    db_meta_get_text(fs->db, "loaded", loaded, sizeof loaded);
    return loaded[0] ? snapshot_parse_id(loaded, id) : -ENOENT;
}

/* A read-only mount or follower: the snapshot it serves, and how far the
 * bucket has moved on since (one listing of the bucket's snapshots): lag is
 * how long ago the first snapshot it does not serve yet was published. */
static void serving_json(struct fs *fs, json_t *o, int64_t now_s)
{
    char text[SNAPSHOT_ID_LEN];
    struct behind b = { { 0, 0 }, { 0, 0 }, 0, 0 };
    if (served(fs, &b.served)) {
        json_object_set_new(o, "serving", json_null());
        return;
    }
    b.newest = b.served;
    snapshot_id_text(b.served, text);
    json_object_set_new(o, "serving", json_string(text));
    if (snapshot_list(fs->store, count_newer, &b) != 0)
        return;
    snapshot_id_text(b.newest, text);
    json_object_set_new(o, "newest", json_string(text));
    set_int(o, "snapshots_behind", b.newer);
    set_int(o, "lag_seconds",
            b.newer && now_s > b.first_newer ? (uint64_t)(now_s - b.first_newer) : 0);
}

static void follow_json(struct fs *fs, json_t *o)
{
    struct follow_status st;
    follow_get_status(fs->follow, &st);
    set_int(o, "switches", st.switches);
    json_object_set_new(o, "warming", json_boolean(st.warming));
    set_int(o, "warm_done", st.warm_done);
    set_int(o, "warm_total", st.warm_total);
    json_object_set_new(o, "follow_error", json_string(st.last_error));
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
    json_object_set_new(o, "read_only", json_boolean(fs_read_only(fs)));
    json_object_set_new(o, "following", json_boolean(fs_following(fs)));
    json_object_set_new(o, "fenced", json_boolean(ps.fenced));
    if (fs_following(fs))
        follow_json(fs, o);
    if (fs_following(fs) || (fs_read_only(fs) && !fs->pub))
        serving_json(fs, o, now.tv_sec);
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
    set_int(o, "chunks_fetched", rs.chunks_got);
    set_int(o, "pieces_fetched", rs.pieces_got);
    set_int(o, "store_retries", ss.op[STORE_OP_PUT].retries + ss.op[STORE_OP_GET].retries);
    set_int(o, "cache_used", bs.cache_used);
    set_int(o, "cache_limit", bs.cache_limit);
    set_int(o, "cache_reserved", bs.cache_reserved);
    set_int(o, "clean_blocks", bs.clean_blocks);
    set_int(o, "memory_used", bs.memory_used);
    set_int(o, "memory_limit", bs.memory_limit);
    set_int(o, "hits_memory", bs.hits_memory);
    set_int(o, "hits_disk", bs.hits_disk);
    set_int(o, "misses", bs.fetches);
    set_int(o, "evictions", bs.evictions);
    set_int(o, "corrupt_blocks", bs.corrupt);
    set_int(o, "prefetched", bs.prefetched);
    set_int(o, "fetch_queue", bs.prefetch_queue);
    set_int(o, "writers_waiting", bs.writers_waiting);
    set_int(o, "writer_waits", bs.writer_waits);
    set_int(o, "writer_timeouts", bs.writer_timeouts);
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

static json_t *do_promote(struct fs *fs)
{
    int64_t t0 = clock_monotonic_ns();
    int rc = writer_promote(fs, fs->boot, &fs->writer);
    if (rc)
        return json_pack("{s:b, s:s}", "ok", 0, "error", err_msg(rc));
    double secs = (double)(clock_monotonic_ns() - t0) / 1e9;
    json_t *reply = do_sync(fs);
    json_object_set_new(reply, "epoch", json_integer((json_int_t)fs->boot->claim.epoch));
    json_object_set_new(reply, "seconds", json_real(secs));
    return reply;
}

/* Sends one JSON line (and drops it). */
static void send_line(int fd, json_t *msg)
{
    char *text = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
    if (text && (write(fd, text, strlen(text)) < 0 || write(fd, "\n", 1) < 0))
        log_debug("control socket: %s", strerror(errno));
    free(text);
    json_decref(msg);
}

static json_t *warm_json(const struct warm_progress *p)
{
    return json_pack("{s:b, s:I, s:I, s:I, s:I}", "progress", 1, "done", (json_int_t)p->done,
                     "total", (json_int_t)p->total, "files_done", (json_int_t)p->files_done,
                     "files", (json_int_t)p->files);
}

/* "warm INO": fetches what the subtree needs, a progress line every 200 ms. */
static json_t *do_warm(struct fs *fs, int fd, const char *arg)
{
    char *end;
    uint64_t ino = strtoull(arg, &end, 10);
    struct warm *w = NULL;
    struct warm_progress p;
    int rc = *arg && !*end ? warm_start(fs, ino, &w)
                           : err_set(-EINVAL, "warm: '%s' is not an inode number", arg);
    if (rc)
        return json_pack("{s:b, s:s}", "ok", 0, "error", err_msg(rc));
    while (warm_poll(w, &p)) {
        send_line(fd, warm_json(&p));
        struct timespec pause = { 0, 200 * 1000000L };
        nanosleep(&pause, NULL);
    }
    if ((rc = warm_finish(w, &p)) != 0)
        return json_pack("{s:b, s:s, s:I}", "ok", 0, "error", err_msg(rc), "done",
                         (json_int_t)p.done);
    return json_pack("{s:b, s:I, s:I}", "ok", 1, "fetched", (json_int_t)p.done, "files",
                     (json_int_t)p.files);
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
    json_t *reply = !strcmp(line, "sync")      ? do_sync(fs)
                    : !strcmp(line, "status")  ? status_json(fs)
                    : !strcmp(line, "promote") ? do_promote(fs)
                    : !strncmp(line, "warm ", 5)
                        ? do_warm(fs, fd, line + 5)
                        : json_pack("{s:b, s:s}", "ok", 0, "error", "unknown request");
    send_line(fd, reply);
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
