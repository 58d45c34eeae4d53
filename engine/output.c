/* The file output connector (contract in output.h). */
#include "output.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "util/buf.h"
#include "util/err.h"
#include "util/files.h"
#include "util/paths.h"
#include "util/pool.h"

struct output {
    const struct view *v;
    const char *path;
    int fd;
    uint64_t length; /* the file's */
    uint64_t step;
    struct buf lines;   /* the step's, being collected */
    struct buf writing; /* the last step's, [write_from, len) handed to the writer */
    size_t write_from;
    size_t written;      /* of those, by the writer */
    struct pool *writer; /* one thread; NULL: writes are made in output_end */
    struct batch job;
    int pending; /* job is in flight (initialized) */
    int failed;  /* a write failed: every later call says so (why: its message) */
    char why[512];
    struct buf head[2]; /* {"step": N, "delete": {  and  ... "insert": {  for this step */
    struct buf *keys;   /* per column: "name":  (JSON-escaped once) */
    size_t room;        /* a line's bytes, strings aside, and KEY_COPY of slack (output_emit) */
};

/* A column's key of at most this many bytes (most are) is copied with a
 * copy of this fixed size: a few moves, not a call to memcpy. */
#define KEY_COPY 32

/* A line a crash cut short goes: what follows it starts on a line of its own. */
static int cut_torn_line(struct output *o)
{
    struct stat st;
    char c;
    if (fstat(o->fd, &st))
        return err_set(-EIO, "%s: %s", o->path, strerror(errno));
    off_t end = st.st_size;
    while (end > 0 && pread(o->fd, &c, 1, end - 1) == 1 && c != '\n')
        end--;
    if (end < st.st_size && ftruncate(o->fd, end))
        return err_set(-EIO, "%s: cannot cut a torn last line: %s", o->path, strerror(errno));
    o->length = (uint64_t)end;
    return 0;
}

int output_open(const struct view *v, struct output **out)
{
    const char *conn = option_get(v->opts, v->nopts, "connector");
    const char *path = option_get(v->opts, v->nopts, "path");
    const char *format = option_get(v->opts, v->nopts, "format");
    if (!conn || strcmp(conn, "file"))
        return err_set(-EINVAL, "view %s: 'connector' is not 'file'", v->name);
    if (!path || !*path)
        return err_set(-EINVAL, "view %s: a file connector needs a 'path'", v->name);
    if (format && strcmp(format, "json"))
        return err_set(-EINVAL, "view %s: 'format' is '%s'; outputs are JSON lines ('json')",
                       v->name, format);
    int rc = make_dirs(path, 0755, 0);
    int fd = rc ? -1 : open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (rc == 0 && fd < 0)
        rc = err_set(-EIO, "view %s: cannot open %s: %s", v->name, path, strerror(errno));
    struct output *o = rc ? NULL : calloc(1, sizeof *o);
    if (rc == 0 && !o)
        rc = -ENOMEM;
    if (rc) {
        if (fd >= 0)
            close(fd);
        return rc;
    }
    *o = (struct output){ .v = v, .path = path, .fd = fd };
    if (pool_new(1, 1, &o->writer) == -ENOMEM)
        rc = -ENOMEM; /* without a thread (-EAGAIN), output_end writes itself */
    if (rc == 0 && !(o->keys = calloc(v->nitems, sizeof *o->keys)))
        rc = -ENOMEM;
    for (size_t i = 0; rc == 0 && i < v->nitems; i++) {
        const char *name = v->items[i].name;
        struct value key = { .t = T_VARCHAR, .s = name, .len = (uint32_t)strlen(name) };
        rc = i ? buf_append(&o->keys[i], ", ", 2) : 0;
        rc = rc ? rc : value_json(&key, &o->keys[i]);
        rc = rc ? rc : buf_append(&o->keys[i], ": ", 2);
        rc = rc ? rc : buf_reserve(&o->keys[i], KEY_COPY); /* what a fixed copy reads */
    }
    o->room = 4 + KEY_COPY; /* }}\n and buf's NUL, and a fixed copy's overreach */
    for (size_t i = 0; rc == 0 && i < v->nitems; i++)
        o->room += o->keys[i].len + VALUE_SHORT_MAX;
    if (rc) {
        output_close(o);
        return rc;
    }
    if ((rc = cut_torn_line(o)) != 0) {
        output_close(o);
        return rc;
    }
    *out = o;
    return 0;
}

uint64_t output_length(const struct output *o)
{
    return o->length;
}

void output_collected(const struct output *o, uint64_t *len, uint64_t *hash)
{
    *len = o->lines.len;
    *hash = XXH3_64bits(o->lines.data, o->lines.len);
}

/* A write failed (rc, its message said): every later call says so, since
 * the bytes after it would not be where the journal and the checkpoints
 * put them. */
static void write_failed(struct output *o, int rc)
{
    o->failed = rc;
    snprintf(o->why, sizeof o->why, "%s", err_msg(rc));
}

/* A write's end (rc its result): the length the file's again, a failure
 * kept. */
static void write_done(struct output *o, int rc)
{
    o->length -= o->writing.len - o->write_from - o->written; /* what it could not write */
    if (rc)
        write_failed(o, rc);
}

/* The writer's job done (write_done). */
static void wait_write(struct output *o)
{
    if (!o->pending)
        return;
    int rc = batch_wait(&o->job);
    batch_destroy(&o->job);
    o->pending = 0;
    write_done(o, rc);
}

int output_settle(struct output *o)
{
    wait_write(o);
    return o->failed ? err_set(o->failed, "%s", o->why) : 0;
}

int output_sync(struct output *o)
{
    int rc = output_settle(o);
    if (rc)
        return rc;
    if (fdatasync(o->fd))
        return err_set(-EIO, "view %s: cannot sync %s: %s", o->v->name, o->path, strerror(errno));
    return 0;
}

void output_close(struct output *o)
{
    if (!o)
        return;
    wait_write(o); /* its error is not said again: the caller's message stays */
    pool_free(o->writer);
    close(o->fd);
    buf_free(&o->lines);
    buf_free(&o->writing);
    buf_free(&o->head[0]);
    buf_free(&o->head[1]);
    for (size_t i = 0; o->keys && i < o->v->nitems; i++)
        buf_free(&o->keys[i]);
    free(o->keys);
    free(o);
}

int output_begin(struct output *o, uint64_t step)
{
    int rc = output_settle(o);
    o->step = step;
    buf_reset(&o->lines);
    for (int i = 0; i < 2; i++) {
        buf_reset(&o->head[i]);
        buf_printf(&o->head[i], "{\"step\": %llu, \"%s\": {", (unsigned long long)step,
                   i ? "insert" : "delete");
    }
    return rc;
}

int output_emit(void *arg, const struct value *row, int weight)
{
    struct output *o = arg;
    const struct buf *head = &o->head[weight > 0];
    /* Room for the line is reserved at once (again after a string), so that
     * most lines are written without a check per piece. */
    int rc = buf_append(&o->lines, head->data, head->len);
    rc = rc ? rc : buf_reserve(&o->lines, o->room);
    for (size_t i = 0; rc == 0 && i < o->v->nitems; i++) {
        char *p = (char *)o->lines.data + o->lines.len;
        if (o->keys[i].len <= KEY_COPY)
            memcpy(p, o->keys[i].data, KEY_COPY);
        else
            memcpy(p, o->keys[i].data, o->keys[i].len);
        size_t n = value_json_short(&row[i], p + o->keys[i].len);
        o->lines.len += o->keys[i].len + n;
        if (!n) { /* a string: escaped, checked, then room again */
            rc = value_json(&row[i], &o->lines);
            rc = rc ? rc : buf_reserve(&o->lines, o->room);
        }
    }
    if (rc)
        return rc;
    memcpy(o->lines.data + o->lines.len, "}}\n", 4);
    o->lines.len += 3;
    return 0;
}

/* Writes writing[write_from, len): on the writer thread, or, without one,
 * in output_end. */
static int write_job(void *arg)
{
    struct output *o = arg;
    int rc = write_full(o->fd, o->writing.data + o->write_from, o->writing.len - o->write_from, -1,
                        &o->written, o->path);
    return rc ? err_wrap(rc, "view %s", o->v->name) : 0;
}

/* 1 if the writer took the job. */
static int hand_to_writer(struct output *o)
{
    if (!o->writer)
        return 0;
    batch_init(&o->job);
    o->pending = pool_submit(o->writer, &o->job, write_job, o) == 0;
    if (!o->pending)
        batch_destroy(&o->job);
    return o->pending;
}

int output_end(struct output *o, uint64_t at)
{
    int rc = output_settle(o);
    if (rc)
        return rc;
    if (o->length < at)
        return err_set(-EIO,
                       "view %s: %s is %llu bytes, but the step's output starts at byte %llu "
                       "(output written before it is lost)",
                       o->v->name, o->path, (unsigned long long)o->length, (unsigned long long)at);
    uint64_t have = o->length - at; /* of this step's bytes, already in the file */
    size_t from = have < o->lines.len ? (size_t)have : o->lines.len;
    /* The buffers trade places: the next step collects in the other. */
    struct buf b = o->writing;
    o->writing = o->lines;
    o->lines = b;
    buf_reset(&o->lines);
    o->write_from = from;
    o->written = 0;
    o->length += o->writing.len - from;
    if (from == o->writing.len || hand_to_writer(o))
        return 0;
    write_done(o, write_job(o)); /* no writer (or no room for the job): here */
    return output_settle(o);
}
