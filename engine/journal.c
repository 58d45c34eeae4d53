/*
 * The journal (contract in journal.h). In the storage directory:
 *
 *   journal/STEP.jnl   a segment: entries of steps from STEP (16 hex digits) on
 *
 * A segment, little-endian:
 *
 *   "CKJN" u32 version (1)
 *   entry: u32 body length, u64 XXH3 of the body, the body:
 *     u64 step
 *     u32 inputs, each: str name, u64 from, from_line, to, to_line, count,
 *                       hash, u8 has data, [the to - from bytes]
 *     u32 outputs, each: str name, u64 before, len, hash
 *   str: u16 length and the bytes
 *
 * Invariants:
 *   1. An entry is durable (fdatasync) before its step writes any output:
 *      output never holds a step the journal does not.
 *   2. Entries are in step order without gaps, across segments too; a new
 *      segment starts after each checkpoint and when one passes SEGMENT_MAX,
 *      so what a publish of the journal sends stays small.
 *   3. Only the last entry of the last segment may be torn (the crash came
 *      while writing it, before its output); replaying a journal that is
 *      written to cuts it off, so that later entries never follow one.
 */
#include "journal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
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
#include "util/le.h"
#include "util/paths.h"

#define MAGIC       "CKJN"
#define VERSION     1
#define HEAD_LEN    8
#define ENTRY_HEAD  12
#define SEGMENT_MAX ((uint64_t)1 << 20)
#define NAME_LEN    21 /* 16 hex digits, ".jnl", NUL */

struct journal {
    char *dir;
    int read_only;
    int replayed;
    int fd;              /* the segment being appended to, or -1: the next append starts one */
    char path[PATH_MAX]; /* its path */
    uint64_t len;        /* its length */
    uint64_t last_step;
    struct buf scratch;
};

struct segment {
    uint64_t first;
    char name[NAME_LEN];
};

static void segment_path(const struct journal *j, const char *name, char out[PATH_MAX])
{
    snprintf(out, PATH_MAX, "%s/%s", j->dir, name);
}

int journal_open(const char *dir, int read_only, struct journal **out)
{
    struct journal *j = calloc(1, sizeof *j);
    size_t n = strlen(dir) + sizeof JOURNAL_DIR + 1;
    if (!j || !(j->dir = malloc(n))) {
        free(j);
        return -ENOMEM;
    }
    snprintf(j->dir, n, "%s/%s", dir, JOURNAL_DIR);
    j->read_only = read_only;
    j->fd = -1;
    int rc = read_only ? 0 : make_dirs(j->dir, 0755, 1);
    if (rc) {
        journal_close(j);
        return rc;
    }
    *out = j;
    return 0;
}

void journal_close(struct journal *j)
{
    if (!j)
        return;
    if (j->fd >= 0)
        close(j->fd);
    buf_free(&j->scratch);
    free(j->dir);
    free(j);
}

/* ---- segments ---- */

static int by_first(const void *a, const void *b)
{
    const struct segment *x = a, *y = b;
    return x->first < y->first ? -1 : x->first > y->first;
}

/* The segments, oldest first (*v allocated; none if there is no directory). */
static int list_segments(const struct journal *j, struct segment **v, size_t *n)
{
    size_t cap = 0;
    *v = NULL;
    *n = 0;
    DIR *d = opendir(j->dir);
    if (!d)
        return errno == ENOENT ? 0 : io_error("cannot list", j->dir);
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d))) {
        char *end;
        uint64_t first = strtoull(e->d_name, &end, 16);
        if (strlen(e->d_name) != NAME_LEN - 1 || strcmp(end, ".jnl"))
            continue;
        if ((rc = array_grow((void **)v, &cap, *n, sizeof **v)) == 0) {
            (*v)[*n].first = first;
            memcpy((*v)[(*n)++].name, e->d_name, NAME_LEN);
        }
    }
    closedir(d);
    if (rc == 0 && *n)
        qsort(*v, *n, sizeof **v, by_first);
    return rc;
}

/* ---- entries ---- */

static int put_str(struct buf *b, const char *s)
{
    size_t n = strlen(s) + 1;
    int rc = n > UINT16_MAX ? -ENAMETOOLONG : le_put(b, n, 2);
    return rc ? rc : buf_append(b, s, n);
}

static int encode(struct buf *b, const struct journal_entry *e)
{
    buf_reset(b);
    int rc = buf_reserve(b, ENTRY_HEAD);
    b->len = rc ? 0 : ENTRY_HEAD; /* filled in last */
    rc = rc ? rc : le_put(b, e->step, 8);
    rc = rc ? rc : le_put(b, e->nin, 4);
    for (size_t i = 0; rc == 0 && i < e->nin; i++) {
        const struct journal_input *in = &e->in[i];
        const uint64_t v[] = { in->from, in->from_line, in->to, in->to_line, in->count, in->hash };
        rc = put_str(b, in->name);
        for (size_t k = 0; rc == 0 && k < 6; k++)
            rc = le_put(b, v[k], 8);
        rc = rc ? rc : le_put(b, in->data != NULL, 1);
        if (rc == 0 && in->data)
            rc = buf_append(b, in->data, in->to - in->from);
    }
    rc = rc ? rc : le_put(b, e->nout, 4);
    for (size_t i = 0; rc == 0 && i < e->nout; i++) {
        rc = put_str(b, e->out[i].name);
        rc = rc ? rc : le_put(b, e->out[i].before, 8);
        rc = rc ? rc : le_put(b, e->out[i].len, 8);
        rc = rc ? rc : le_put(b, e->out[i].hash, 8);
    }
    if (rc == 0 && b->len - ENTRY_HEAD > UINT32_MAX)
        rc = err_set(-E2BIG, "a step's journal entry is larger than 4 GiB");
    if (rc)
        return rc;
    le_store(b->data, b->len - ENTRY_HEAD, 4);
    le_store(b->data + 4, XXH3_64bits(b->data + ENTRY_HEAD, b->len - ENTRY_HEAD), 8);
    return 0;
}

/* A name: NUL-terminated where it lies in the entry. */
static const char *get_str(struct le_reader *r)
{
    size_t n = (size_t)le_get(r, 2);
    const char *s = (const char *)le_take(r, n);
    if (!s || n == 0 || memchr(s, '\0', n) != s + n - 1) {
        r->bad = 1;
        return "";
    }
    return s;
}

/* An entry's arrays (the rest points into its bytes). */
struct decoded {
    struct journal_entry e;
    struct journal_input *in;
    struct journal_output *out;
};

static void decoded_free(struct decoded *d)
{
    free(d->in);
    free(d->out);
}

/* Counts are checked against the bytes left (each record takes at least
 * min of them) before anything is allocated for them. */
static size_t get_count(struct le_reader *r, size_t min)
{
    size_t n = (size_t)le_get(r, 4);
    if (n > (size_t)(r->end - r->p) / min)
        r->bad = 1;
    return r->bad ? 0 : n;
}

static void decode_input(struct le_reader *r, struct journal_input *in)
{
    in->name = get_str(r);
    uint64_t *v[] = { &in->from, &in->from_line, &in->to, &in->to_line, &in->count, &in->hash };
    for (size_t k = 0; k < 6; k++)
        *v[k] = le_get(r, 8);
    int has_data = (int)le_get(r, 1);
    if (in->to < in->from || has_data > 1)
        r->bad = 1;
    else if (has_data)
        in->data = le_take(r, in->to - in->from);
}

static int decode(const uint8_t *body, size_t len, struct decoded *d)
{
    struct le_reader r = { body, body + len, 0 };
    *d = (struct decoded){ 0 };
    d->e.step = le_get(&r, 8);
    d->e.nin = get_count(&r, 52);
    if (!(d->in = calloc(d->e.nin + 1, sizeof *d->in)))
        return -ENOMEM;
    for (size_t i = 0; !r.bad && i < d->e.nin; i++)
        decode_input(&r, &d->in[i]);
    d->e.nout = get_count(&r, 26);
    if (!(d->out = calloc(d->e.nout + 1, sizeof *d->out))) {
        decoded_free(d);
        return -ENOMEM;
    }
    for (size_t i = 0; !r.bad && i < d->e.nout; i++) {
        d->out[i].name = get_str(&r);
        d->out[i].before = le_get(&r, 8);
        d->out[i].len = le_get(&r, 8);
        d->out[i].hash = le_get(&r, 8);
    }
    d->e.in = d->in;
    d->e.out = d->out;
    if (r.bad || r.p != r.end) {
        decoded_free(d);
        return -EBADMSG;
    }
    return 0;
}

/* ---- replay ---- */

struct replaying {
    struct journal *j;
    uint64_t after, last; /* the last step passed to fn (or after) */
    journal_fn fn;
    void *arg;
};

/* Whether a whole entry (its hash right) starts anywhere from `from` on: a
 * damaged length, not a torn end, if so. */
static int whole_entry_after(const struct buf *b, size_t from)
{
    for (size_t at = from; at + ENTRY_HEAD <= b->len; at++) {
        struct le_reader head = { b->data + at, b->data + at + ENTRY_HEAD, 0 };
        uint64_t len = le_get(&head, 4), hash = le_get(&head, 8);
        if (len >= 8 && len <= b->len - at - ENTRY_HEAD &&
            XXH3_64bits(b->data + at + ENTRY_HEAD, len) == hash)
            return 1;
    }
    return 0;
}

/* The entries of one segment's bytes b; *good gets the length of its
 * whole entries (those after it are torn or damaged). */
static int replay_bytes(struct replaying *r, const struct segment *s, const struct buf *b,
                        size_t *good)
{
    *good = 0;
    if (b->len < HEAD_LEN || memcmp(b->data, MAGIC, 4))
        return 0;
    if (le_load(b->data + 4, 4) != VERSION)
        return err_set(-EBADMSG, "%s/%s: journal version %u, this ckptpipe reads version %d",
                       r->j->dir, s->name, (unsigned)b->data[4], VERSION);
    size_t at = HEAD_LEN;
    int rc = 0;
    *good = at;
    while (b->len - at >= ENTRY_HEAD) {
        struct le_reader head = { b->data + at, b->data + at + ENTRY_HEAD, 0 };
        uint64_t len = le_get(&head, 4), hash = le_get(&head, 8);
        const uint8_t *body = b->data + at + ENTRY_HEAD;
        size_t room = b->len - at - ENTRY_HEAD;
        int whole = len <= room && XXH3_64bits(body, len) == hash;
        struct decoded d;
        if (!whole && len >= room && !whole_entry_after(b, at + 1)) /* the last, cut short */
            return 0;
        if (!whole || (rc = decode(body, len, &d)) == -EBADMSG)
            return err_set(-EBADMSG,
                           "%s/%s is damaged at byte %zu (an entry that is not the "
                           "last)",
                           r->j->dir, s->name, at);
        if (rc)
            return rc;
        if (d.e.step > r->after && d.e.step != r->last + 1)
            rc = err_set(-EBADMSG,
                         "%s/%s: the journal has step %" PRIu64 " after step %" PRIu64
                         " (steps are missing)",
                         r->j->dir, s->name, d.e.step, r->last);
        else if (d.e.step > r->after && (rc = r->fn(r->arg, &d.e)) == 0)
            r->last = d.e.step;
        decoded_free(&d);
        if (rc)
            return rc;
        at += ENTRY_HEAD + len;
        *good = at;
    }
    return 0;
}

/* A torn end of the last segment goes; anywhere else it is damage. */
static int torn(struct replaying *r, const struct segment *s, int fd, size_t good, int last,
                const char *path)
{
    if (!last)
        return err_set(-EBADMSG, "%s/%s is damaged at byte %zu (a later segment follows)",
                       r->j->dir, s->name, good);
    if (r->j->read_only)
        return 0;
    if (ftruncate(fd, (off_t)good) || fdatasync(fd))
        return io_error("cannot cut the torn end of", path);
    return 0;
}

static int replay_segment(struct replaying *r, const struct segment *s, int last)
{
    char path[PATH_MAX];
    segment_path(r->j, s->name, path);
    int fd = open(path, (r->j->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (fd < 0)
        return io_error("cannot open", path);
    size_t good = 0;
    buf_reset(&r->j->scratch);
    int rc = read_full(fd, &r->j->scratch, path);
    rc = rc ? rc : replay_bytes(r, s, &r->j->scratch, &good);
    if (rc == 0 && good < r->j->scratch.len)
        rc = torn(r, s, fd, good, last, path);
    close(fd);
    return rc;
}

int journal_replay(struct journal *j, uint64_t after, journal_fn fn, void *arg)
{
    struct segment *segs;
    size_t n;
    struct replaying r = { j, after, after, fn, arg };
    int rc = list_segments(j, &segs, &n);
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (i + 1 == n || segs[i + 1].first > after + 1) /* else all its steps are <= after */
            rc = replay_segment(&r, &segs[i], i + 1 == n);
    free(segs);
    buf_free(&j->scratch);
    if (rc)
        return rc;
    j->last_step = r.last;
    j->replayed = 1;
    return 0;
}

/* ---- appending ---- */

static int start_segment(struct journal *j, uint64_t step)
{
    char name[NAME_LEN];
    uint8_t head[HEAD_LEN] = MAGIC;
    le_store(head + 4, VERSION, 4);
    snprintf(name, NAME_LEN, "%016" PRIx64 ".jnl", step);
    segment_path(j, name, j->path);
    j->fd = open(j->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (j->fd < 0)
        return io_error("cannot create", j->path);
    int rc = write_full(j->fd, head, HEAD_LEN, 0, NULL, j->path);
    if (rc) {
        close(j->fd);
        j->fd = -1;
        return rc;
    }
    j->len = HEAD_LEN;
    return 0;
}

int journal_append(struct journal *j, const struct journal_entry *e)
{
    if (j->read_only || !j->replayed || e->step != j->last_step + 1)
        return err_set(-EINVAL,
                       "journal: step %" PRIu64 " cannot follow step %" PRIu64
                       " (read-only, or not replayed first)",
                       e->step, j->last_step);
    int fresh = j->fd < 0 || j->len > SEGMENT_MAX;
    if (fresh && j->fd >= 0)
        close(j->fd), j->fd = -1;
    int rc = fresh ? start_segment(j, e->step) : 0;
    rc = rc ? rc : encode(&j->scratch, e);
    rc = rc ? rc
            : write_full(j->fd, j->scratch.data, j->scratch.len, (int64_t)j->len, NULL, j->path);
    if (rc == 0 && fdatasync(j->fd))
        rc = io_error("cannot sync", j->path);
    if (rc == 0 && fresh)
        rc = sync_dir(j->dir);
    if (rc) { /* no torn entry stays where a later one could follow it */
        if (j->fd >= 0 && ftruncate(j->fd, (off_t)j->len))
            j->replayed = 0;
        return rc;
    }
    j->len += j->scratch.len;
    j->last_step = e->step;
    if (j->scratch.cap > SEGMENT_MAX)
        buf_free(&j->scratch);
    return 0;
}

int journal_checkpointed(struct journal *j, uint64_t oldest)
{
    struct segment *segs;
    size_t n;
    if (j->fd >= 0)
        close(j->fd);
    j->fd = -1; /* the next entry starts a segment: the step after the checkpoint */
    int rc = oldest ? list_segments(j, &segs, &n) : 0;
    for (size_t i = 0; oldest && rc == 0 && i + 1 < n && segs[i + 1].first <= oldest + 1; i++) {
        char path[PATH_MAX];
        segment_path(j, segs[i].name, path);
        if (unlink(path) && errno != ENOENT)
            rc = io_error("cannot delete", path);
    }
    if (oldest)
        free(segs);
    return rc;
}
