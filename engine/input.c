/* The file connector (contract in input.h). */
#include "input.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "engine/ahead.h"
#include "util/buf.h"
#include "util/err.h"
#include "util/log.h"

#define READ_SIZE ((size_t)1 << 20)
/* The parse-ahead thread is offered lines each time this many bytes have
 * been consumed: often enough for it never to run dry. */
#define FEED_EVERY ((uint64_t)64 << 10)
/* A longer line is malformed, not a reason to use all memory. */
#define MAX_LINE ((size_t)16 << 20)

/* What the parse-ahead thread reads: fixed while the input is open. */
struct parser {
    const struct table *t;
    struct input_prep prep;
};

struct input {
    const struct table *t;
    struct parser parser;
    const char *path;
    int fd, json, skip_errors, header;
    int http;        /* changes come from input_push, not a file */
    int append_only; /* a delete is a malformed record */
    uint64_t pos, line;
    struct buf pending; /* bytes read past pos: [done, len) not yet consumed */
    size_t done;
    uint64_t limit;         /* bytes from here on are not read (a replay's end) */
    struct input_span step; /* consumed since the last commit */
    int committed;          /* step's bytes are accounted for: the next step starts a span */
    int hash_spans;         /* a journal wants the spans' hashes */
    uint64_t taken;         /* the position at the last commit */
    struct buf unquoted;    /* a CSV line with quotes, unescaped (the input's bytes stay) */
    struct value *row;
    uint64_t skipped;
    int at_end;
    /* A line longer than MAX_LINE being skipped: its bytes read so far, gone
     * from pending into skip_hash. pos stays at the line's start until its
     * end comes, so a step or a checkpoint never ends inside it. */
    uint64_t skip_len;
    XXH3_state_t *skip_hash;
    struct ahead *ahead; /* a CSV file's lines parsed by a thread, or NULL */
    int ahead_at_end;    /* feeding it read the end: no more until a poll's own read */
    uint64_t feed_at;    /* pos from which on it is fed again */
};

static int parse_plain(const void *ctx, const char *line, size_t len, struct value *row);

int input_open(const struct table *t, const struct input_prep *prep, struct input **out)
{
    const char *conn = option_get(t->opts, t->nopts, "connector");
    const char *path = option_get(t->opts, t->nopts, "path");
    const char *format = option_get(t->opts, t->nopts, "format");
    const char *on_error = option_get(t->opts, t->nopts, "on_error");
    const char *header = option_get(t->opts, t->nopts, "header");
    int http = conn && !strcmp(conn, "http");
    if (!conn || (strcmp(conn, "file") && !http))
        return err_set(-EINVAL, "table %s: 'connector' is neither 'file' nor 'http'", t->name);
    if (!http && (!path || !*path))
        return err_set(-EINVAL, "table %s: a file connector needs a 'path'", t->name);
    if (format && strcmp(format, "csv") && strcmp(format, "json"))
        return err_set(-EINVAL, "table %s: 'format' is '%s', neither 'csv' nor 'json'", t->name,
                       format);
    if (on_error && strcmp(on_error, "fail") && strcmp(on_error, "skip"))
        return err_set(-EINVAL, "table %s: 'on_error' is '%s', neither 'fail' nor 'skip'", t->name,
                       on_error);
    if (header && strcmp(header, "true") && strcmp(header, "false"))
        return err_set(-EINVAL, "table %s: 'header' is '%s', neither 'true' nor 'false'", t->name,
                       header);
    const char *append = option_get(t->opts, t->nopts, "append_only");
    if (append && strcmp(append, "true") && strcmp(append, "false"))
        return err_set(-EINVAL, "table %s: 'append_only' is '%s', neither 'true' nor 'false'",
                       t->name, append);
    struct input *in = calloc(1, sizeof *in);
    size_t extra = prep ? prep->extra : 0;
    struct value *row = calloc(t->ncols + extra, sizeof *row);
    if (!in || !row) {
        free(in);
        free(row);
        return -ENOMEM;
    }
    *in = (struct input){ .t = t,
                          .parser = { t, prep ? *prep : (struct input_prep){ 0 } },
                          .path = http ? "POST /ingress" : path,
                          .http = http,
                          .fd = -1,
                          .limit = UINT64_MAX,
                          .committed = 1,
                          .row = row,
                          .json = http ? !format || !strcmp(format, "json")
                                       : format && !strcmp(format, "json"),
                          .skip_errors = on_error && !strcmp(on_error, "skip"),
                          .append_only = table_append_only(t),
                          .header = header && !strcmp(header, "true") };
    int rc =
        http || in->json ? 0 : ahead_new(t->ncols + extra, parse_plain, &in->parser, &in->ahead);
    if (rc == -ENOMEM) {
        input_close(in);
        return rc;
    }
    *out = in;
    return 0;
}

void input_close(struct input *in)
{
    if (!in)
        return;
    ahead_free(in->ahead);
    if (in->fd >= 0)
        close(in->fd);
    buf_free(&in->pending);
    buf_free(&in->unquoted);
    XXH3_freeState(in->skip_hash);
    free(in->row);
    free(in);
}

/* ---- records ---- */

static int bad(struct input *in, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(struct input *in, const char *fmt, ...)
{
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (in->http)
        return err_set(-EBADMSG, "line %llu of the request: %s", (unsigned long long)in->line, why);
    return err_set(-EBADMSG, "%s:%llu: %s", in->path, (unsigned long long)in->line, why);
}

static int field(struct input *in, size_t c, const char *s, size_t len, int quoted)
{
    const struct column *col = &in->t->cols[c];
    if (len == 0 && !quoted) {
        in->row[c].t = T_NULL;
        return 0;
    }
    if (value_parse(col->type, s, len, &in->row[c]) == 0)
        return 0;
    return bad(in, "%s: '%.*s' is not a %s", col->name, (int)(len > 40 ? 40 : len), s,
               type_name(col->type));
}

/* A line without quotes, split in one pass: 0, or -1 if it has a quote or
 * is malformed (csv_line's careful pass then takes it, and says what is
 * wrong). Pure: the parse-ahead thread calls it too. */
static int csv_plain(const struct table *t, const char *s, size_t len, struct value *row)
{
    const char *end = s + len;
    for (size_t c = 0;; c++) {
        const char *start = s;
        while (s < end && *s != ',' && *s != '"')
            s++;
        if (c >= t->ncols || (s < end && *s == '"'))
            return -1;
        if (s == start) /* an empty unquoted field */
            row[c].t = T_NULL;
        else if (value_parse(t->cols[c].type, start, (size_t)(s - start), &row[c]))
            return -1;
        if (s++ >= end)
            return c + 1 == t->ncols ? 0 : -1;
    }
}

static void prepare(const struct parser *p, struct value *row)
{
    if (p->prep.fn)
        p->prep.fn(p->prep.ctx, row);
}

/* The parse-ahead thread's: ctx is a struct parser. */
static int parse_plain(const void *ctx, const char *line, size_t len, struct value *row)
{
    const struct parser *p = ctx;
    if (len && line[len - 1] == '\r')
        len--;
    if (csv_plain(p->t, line, len, row))
        return -1;
    prepare(p, row);
    return 0;
}

/* One CSV line. A quoted field is unescaped in a copy of the line: the
 * input's own bytes are what the journal keeps and hashes. */
static int csv_line(struct input *in, const char *line, size_t len)
{
    size_t c = 0, ncols = in->t->ncols;
    if (len && line[len - 1] == '\r')
        len--;
    if (csv_plain(in->t, line, len, in->row) == 0)
        return 0;
    buf_reset(&in->unquoted);
    if (buf_append(&in->unquoted, line, len))
        return -ENOMEM;
    char *s = (char *)in->unquoted.data, *end = s + len;
    for (;;) {
        char *start = s, *w = s;
        int quoted = s < end && *s == '"';
        if (quoted) {
            for (start = w = ++s;; s++) {
                if (s >= end)
                    return bad(in, "a quoted field is not closed");
                if (*s == '"' && (s + 1 >= end || s[1] != '"'))
                    break;
                s += *s == '"';
                *w++ = *s;
            }
            s++;
            if (s < end && *s != ',')
                return bad(in, "text after a quoted field");
        } else {
            while (s < end && *s != ',')
                s++;
            w = s;
        }
        if (c >= ncols)
            return bad(in, "more than the %zu fields of table %s", ncols, in->t->name);
        int rc = field(in, c++, start, (size_t)(w - start), quoted);
        if (rc)
            return rc;
        if (s >= end)
            break;
        s++; /* the comma */
    }
    return c == ncols ? 0 : bad(in, "%zu fields, table %s has %zu", c, in->t->name, ncols);
}

static int json_value(struct input *in, size_t c, json_t *v)
{
    const struct column *col = &in->t->cols[c];
    struct value *out = &in->row[c];
    enum type t = col->type;
    if (json_is_null(v))
        out->t = T_NULL;
    else if (t == T_BIGINT && json_is_integer(v))
        *out = (struct value){ .t = T_BIGINT, .i = json_integer_value(v) };
    else if (t == T_DOUBLE && json_is_number(v))
        *out = (struct value){ .t = T_DOUBLE, .d = json_number_value(v) };
    else if (t == T_BOOLEAN && json_is_boolean(v))
        *out = (struct value){ .t = T_BOOLEAN, .b = json_is_true(v) };
    else if ((t == T_VARCHAR || t == T_TIMESTAMP) && json_is_string(v))
        return field(in, c, json_string_value(v), json_string_length(v), 1);
    else
        return bad(in, "%s: not a %s", col->name, type_name(t));
    return 0;
}

static int has_column(const struct table *t, const char *name)
{
    for (size_t c = 0; c < t->ncols; c++)
        if (!strcmp(t->cols[c].name, name))
            return 1;
    return 0;
}

static int json_line(struct input *in, const char *s, size_t len, json_t **keep, int *weight)
{
    json_error_t jerr;
    json_t *j = json_loadb(s, len, JSON_REJECT_DUPLICATES, &jerr), *row = NULL;
    *keep = j;
    if (!j)
        return bad(in, "not JSON: %s", jerr.text);
    const char *what = NULL;
    if (json_is_object(j) && json_object_size(j) == 1) {
        what = json_object_iter_key(json_object_iter(j));
        row = json_object_iter_value(json_object_iter(j));
    }
    if (!what || !json_is_object(row) || (strcmp(what, "insert") && strcmp(what, "delete")))
        return bad(in, "expected {\"insert\": {...}} or {\"delete\": {...}}");
    *weight = what[0] == 'i' ? 1 : -1;
    if (*weight < 0 && in->append_only)
        return bad(in, "table %s is append-only ('append_only' = 'true'): no deletes", in->t->name);
    size_t matched = 0;
    for (size_t c = 0; c < in->t->ncols; c++) {
        json_t *v = json_object_get(row, in->t->cols[c].name);
        int rc = v ? json_value(in, c, v) : (in->row[c].t = T_NULL, 0);
        if (rc)
            return rc;
        matched += v != NULL;
    }
    if (matched < json_object_size(row)) {
        const char *key;
        json_t *v;
        json_object_foreach(row, key, v) if (!has_column(in->t, key)) return bad(
            in, "table %s has no column %s", in->t->name, key);
    }
    return 0;
}

/* One line: 1 if a change went to fn, 0 if none (skipped, a header), or an error. */
static int one_line(struct input *in, char *s, size_t len, input_fn fn, void *arg)
{
    json_t *keep = NULL;
    int weight = 1, rc;
    in->line++;
    if (in->header && in->line == 1)
        return 0;
    if (len == 0 || (len == 1 && s[0] == '\r'))
        return 0;
    const struct value *row = in->ahead ? ahead_take(in->ahead, in->pos, len) : NULL;
    rc = row ? 0 : in->json ? json_line(in, s, len, &keep, &weight) : csv_line(in, s, len);
    if (rc == 0 && !row) {
        prepare(&in->parser, in->row);
        row = in->row;
    }
    if (rc == 0)
        rc = fn(arg, row, weight);
    json_decref(keep);
    if (rc == -EBADMSG && in->skip_errors) {
        log_warn("%s (skipped)", err_msg(rc));
        in->skipped++;
        return 0;
    }
    return rc ? rc : 1;
}

/* ---- the file ---- */

/* More bytes from the file into pending: 1 if some came, 0 at its end. */
static int read_more(struct input *in)
{
    if (in->http) /* the queue: what is not in it has not come */
        return 0;
    if (in->fd < 0 && (in->fd = open(in->path, O_RDONLY | O_CLOEXEC)) < 0)
        return errno == ENOENT ? 0 : err_set(-EIO, "%s: %s", in->path, strerror(errno));
    /* The unconsumed bytes move to the front once most of what is
     * read is consumed, and a few reads' worth: parsing ahead reads far. */
    if (in->done > in->pending.len / 2 && in->done >= 4 * READ_SIZE) {
        memmove(in->pending.data, in->pending.data + in->done, in->pending.len - in->done);
        in->pending.len -= in->done;
        in->done = 0;
    }
    if (buf_reserve(&in->pending, READ_SIZE))
        return -ENOMEM;
    uint64_t at = in->pos + in->skip_len + (in->pending.len - in->done);
    if (at >= in->limit)
        return 0;
    size_t want = in->limit - at < READ_SIZE ? (size_t)(in->limit - at) : READ_SIZE;
    ssize_t n = pread(in->fd, in->pending.data + in->pending.len, want, (off_t)at);
    if (n < 0)
        return err_set(-EIO, "%s: %s", in->path, strerror(errno));
    in->pending.len += (size_t)n;
    return n > 0;
}

/* Keeps the parse-ahead thread busy: the whole lines read past those it
 * has, reading on if none are. Not while a line too long is skipped, since
 * pending's first byte is then not at pos. */
static int feed_ahead(struct input *in)
{
    in->feed_at = in->pos + FEED_EVERY;
    while (ahead_wants(in->ahead) && !in->skip_len && !in->ahead_at_end) {
        uint64_t from = ahead_end(in->ahead) > in->pos ? ahead_end(in->ahead) : in->pos;
        size_t at = in->done + (size_t)(from - in->pos);
        ssize_t fed = 0;
        if (at < in->pending.len &&
            (fed = ahead_feed(in->ahead, from, (const char *)in->pending.data + at,
                              in->pending.len - at)) < 0)
            return (int)fed;
        if (fed > 0)
            continue;
        if (in->pending.len - at >= AHEAD_BLOCK) /* a line longer than a block: parsed here */
            return 0;
        int rc = read_more(in);
        in->ahead_at_end = rc == 0;
        if (rc <= 0)
            return rc;
    }
    return 0;
}

/* The start of a line longer than MAX_LINE, or more of it: malformed, so
 * the input fails, or, skipping errors, its bytes leave pending (the rest
 * of it follows them until its newline comes: end_overlong). Whether a line
 * is too long depends on its length alone, never on where reads cut the
 * file: a replay must take the same lines. */
static int overlong(struct input *in, const char *s, size_t n)
{
    if (!in->skip_len) {
        in->line++; /* the line's number, as one_line would give it */
        int rc = in->skip_errors ? 0 : bad(in, "a line longer than %zu bytes", MAX_LINE);
        in->line--;
        if (rc)
            return rc;
        if (!in->skip_hash && !(in->skip_hash = XXH3_createState()))
            return -ENOMEM;
        XXH3_64bits_reset(in->skip_hash);
    }
    XXH3_64bits_update(in->skip_hash, s, n);
    in->skip_len += n;
    in->done += n;
    return 0;
}

/* The rest of a skipped line, n bytes up to its newline included. Its span
 * hash is over its digest: the same however the reads cut it. */
static void end_overlong(struct input *in, const char *s, size_t n)
{
    XXH3_64bits_update(in->skip_hash, s, n);
    uint64_t digest = XXH3_64bits_digest(in->skip_hash);
    if (in->hash_spans)
        in->step.hash = XXH3_64bits_withSeed(&digest, sizeof digest, in->step.hash);
    in->line++;
    log_warn("%s:%llu: a line longer than %zu bytes (skipped)", in->path,
             (unsigned long long)in->line, MAX_LINE);
    in->skipped++;
    in->done += n;
    in->pos += in->skip_len + n;
    in->skip_len = 0;
}

ssize_t input_poll(struct input *in, size_t max, input_fn fn, void *arg)
{
    size_t got = 0;
    in->at_end = 0;
    while (got < max) {
        int rc = in->ahead && in->pos >= in->feed_at ? feed_ahead(in) : 0;
        if (rc < 0)
            return rc;
        char *s = (char *)in->pending.data + in->done;
        size_t avail = in->pending.len - in->done;
        char *nl = avail ? memchr(s, '\n', avail) : NULL;
        if (nl && in->skip_len) {
            end_overlong(in, s, (size_t)(nl - s) + 1);
            continue;
        }
        if (!nl) {
            rc = avail > MAX_LINE || in->skip_len ? overlong(in, s, avail) : 0;
            if (rc == 0)
                rc = read_more(in);
            in->ahead_at_end = 0;
            if (rc < 0)
                return rc;
            if (rc == 0) {
                in->at_end = 1;
                break;
            }
            continue;
        }
        size_t len = (size_t)(nl - s);
        if (len > MAX_LINE) { /* its end came in the read that took it past the limit */
            rc = overlong(in, s, 0);
            if (rc < 0)
                return rc;
            end_overlong(in, s, len + 1);
            continue;
        }
        rc = one_line(in, s, len, fn, arg);
        if (rc < 0) {
            in->line--; /* the same line again next time, with the same number */
            return rc;
        }
        if (in->hash_spans)
            in->step.hash = XXH3_64bits_withSeed(s, len + 1, in->step.hash);
        in->done += len + 1;
        in->pos += len + 1;
        got += (size_t)rc;
    }
    in->step.count += got;
    return (ssize_t)got;
}

void input_begin_step(struct input *in)
{
    if (!in->committed) /* polls that took nothing: their bytes join the next step's */
        return;
    if (in->http && in->done) { /* what the last step took leaves the queue */
        in->pending.len -= in->done;
        memmove(in->pending.data, in->pending.data + in->done, in->pending.len);
        in->done = 0;
    }
    in->step = (struct input_span){ .from = in->pos, .from_line = in->line };
    in->committed = 0;
}

void input_hash_spans(struct input *in)
{
    in->hash_spans = 1;
}

void input_commit_step(struct input *in)
{
    in->committed = 1;
    in->taken = in->pos;
}

void input_get_span(const struct input *in, struct input_span *s)
{
    *s = in->step;
    s->to = in->pos;
    s->to_line = in->line;
    s->data = in->http ? (in->pending.data ? (const char *)in->pending.data : "") : NULL;
}

int input_replay(struct input *in, const struct input_span *s)
{
    input_seek(in, s->from, s->from_line);
    in->limit = s->to;
    if (in->http && s->to > s->from && buf_append(&in->pending, s->data, s->to - s->from))
        return -ENOMEM;
    input_begin_step(in);
    return 0;
}

void input_replay_end(struct input *in)
{
    in->limit = UINT64_MAX;
}

static int check_only(void *arg, const struct value *row, int weight)
{
    (void)arg;
    (void)row;
    (void)weight;
    return 0;
}

int input_push(struct input *in, const char *body, size_t len)
{
    if (!in->http)
        return err_set(-EINVAL, "table %s is not fed over HTTP", in->t->name);
    char *copy = malloc(len + 1); /* a CSV line is unescaped in place */
    if (!copy)
        return -ENOMEM;
    memcpy(copy, body, len);
    copy[len] = '\n';
    uint64_t line = in->line, count = 0;
    int header = in->header, skip = in->skip_errors, rc = 0;
    in->line = 0;
    in->header = in->skip_errors = 0; /* a request is whole or refused */
    for (char *s = copy, *end = copy + len; rc >= 0 && s < end;) {
        char *nl = memchr(s, '\n', (size_t)(end + 1 - s));
        rc = one_line(in, s, (size_t)(nl - s), check_only, NULL);
        count += rc > 0;
        s = nl + 1;
    }
    in->line = line;
    in->header = header;
    in->skip_errors = skip;
    free(copy);
    if (rc < 0)
        return err_wrap(rc, "table %s", in->t->name);
    rc = buf_append(&in->pending, body, len);
    if (rc == 0 && len && body[len - 1] != '\n')
        rc = buf_append(&in->pending, "\n", 1);
    return rc ? rc : (int)(count > INT32_MAX ? INT32_MAX : count);
}

void input_seek(struct input *in, uint64_t offset, uint64_t line)
{
    in->pos = in->taken = offset;
    in->line = line;
    in->committed = 1;
    in->done = 0;
    in->pending.len = 0;
    in->at_end = 0;
    in->skip_len = 0;
    in->ahead_at_end = 0;
    in->feed_at = 0;
    if (in->ahead)
        ahead_reset(in->ahead);
}

void input_get_stats(const struct input *in, struct input_stats *st)
{
    *st =
        (struct input_stats){ in->pos,     in->line,
                              in->skipped, in->at_end,
                              in->taken,   in->pos + in->skip_len + (in->pending.len - in->done) };
}
