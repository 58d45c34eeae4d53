/*
 * exactly_once's journal: entries come back as appended, across segments
 * and checkpoints; a torn last entry is dropped and cut off; damage to any
 * byte of an earlier entry is an error, never a crash or a wrong entry
 * (this runs under ASan/UBSan too).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "engine/journal.h"
#include "util/err.h"

#include <xxhash.h>

#define STEPS 6

static char dir[] = "/tmp/test_journal.XXXXXX";

/* Step s's entry: a file input, an HTTP input with s bytes of data, two outputs. */
static void entry_for(uint64_t s, struct journal_entry *e, struct journal_input in[2],
                      struct journal_output out[2], char *data)
{
    for (uint64_t i = 0; i < s; i++)
        data[i] = (char)('a' + (s + i) % 26);
    in[0] = (struct journal_input){ "clicks",    s * 100, s * 10, s * 100 + 100,
                                    s * 10 + 10, 9,       s * 7,  NULL };
    in[1] = (struct journal_input){ "orders", s * s, s, s * s + s, s + 1, 1, s * 11, data };
    out[0] = (struct journal_output){ "totals", s * 1000, 1000, s ^ 0x55 };
    out[1] = (struct journal_output){ "by_user", s * 30, 30, s ^ 0xaa };
    *e = (struct journal_entry){ s, in, 2, out, 2 };
}

struct seen {
    uint64_t steps[64];
    size_t n;
    int wrong;
};

static int record(void *arg, const struct journal_entry *e)
{
    struct seen *s = arg;
    struct journal_input in[2];
    struct journal_output out[2];
    struct journal_entry want;
    char data[64];
    entry_for(e->step, &want, in, out, data);
    int same = e->nin == 2 && e->nout == 2;
    for (size_t i = 0; same && i < 2; i++) {
        same &= !strcmp(e->in[i].name, in[i].name) && e->in[i].from == in[i].from &&
                e->in[i].to == in[i].to && e->in[i].from_line == in[i].from_line &&
                e->in[i].to_line == in[i].to_line && e->in[i].count == in[i].count &&
                e->in[i].hash == in[i].hash && (e->in[i].data == NULL) == (in[i].data == NULL);
        same &= !in[i].data || !memcmp(e->in[i].data, in[i].data, in[i].to - in[i].from);
        same &= !strcmp(e->out[i].name, out[i].name) && e->out[i].before == out[i].before &&
                e->out[i].len == out[i].len && e->out[i].hash == out[i].hash;
    }
    s->wrong += !same;
    if (s->n < 64)
        s->steps[s->n++] = e->step;
    return 0;
}

static void append_steps(struct journal *j, uint64_t from, uint64_t to)
{
    for (uint64_t s = from; s <= to; s++) {
        struct journal_input in[2];
        struct journal_output out[2];
        struct journal_entry e;
        char data[64];
        entry_for(s, &e, in, out, data);
        CHECK_EQ(journal_append(j, &e), 0);
    }
}

static int replay(int read_only, uint64_t after, struct seen *s)
{
    struct journal *j = NULL;
    memset(s, 0, sizeof *s);
    int rc = journal_open(dir, read_only, &j);
    if (rc == 0)
        rc = journal_replay(j, after, record, s);
    journal_close(j);
    return rc;
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) ? -1 : (long)st.st_size;
}

static void test_round_trip_and_segments(void)
{
    struct journal *j = NULL;
    struct seen s;
    CHECK_EQ(journal_open(dir, 0, &j), 0);
    CHECK(journal_append(j, &(struct journal_entry){ .step = 1 }) == -EINVAL); /* not replayed */
    CHECK_EQ(journal_replay(j, 0, record, &s), 0);
    append_steps(j, 1, 3);
    CHECK_EQ(journal_checkpointed(j, 0), 0); /* step 4 on: a second segment */
    append_steps(j, 4, STEPS);
    journal_close(j);
    CHECK_EQ(replay(1, 0, &s), 0);
    CHECK_EQ(s.n, STEPS);
    CHECK_EQ(s.wrong, 0);
    CHECK_EQ(replay(1, 4, &s), 0); /* after a checkpoint at step 4 */
    CHECK(s.n == 2 && s.steps[0] == 5 && s.steps[1] == 6);
    CHECK_EQ(replay(1, STEPS, &s), 0);
    CHECK_EQ(s.n, 0);
}

/* Every byte of the first segment flipped in turn: an error or the same
 * entries, never others. A flip in the last entry's own bytes counts as
 * torn when the last segment is damaged. */
static void test_damage(void)
{
    char path[300];
    snprintf(path, sizeof path, "%s/journal/%016x.jnl", dir, 1);
    int fd = open(path, O_RDWR);
    long size = file_size(path);
    CHECK(fd >= 0 && size > 8);
    for (long at = 0; fd >= 0 && at < size; at++) {
        unsigned char c, d;
        struct seen s;
        CHECK(pread(fd, &c, 1, at) == 1);
        d = c ^ 0x10;
        CHECK(pwrite(fd, &d, 1, at) == 1);
        int rc = replay(1, 0, &s); /* read-only: nothing is cut */
        CHECK(rc == -EBADMSG || (rc == 0 && s.n == STEPS), "byte %ld: rc %d, %zu steps", at, rc,
              s.n);
        CHECK_EQ(s.wrong, 0);
        CHECK(pwrite(fd, &c, 1, at) == 1);
    }
    if (fd >= 0)
        close(fd);
}

/* The last segment cut anywhere: the whole entries before the cut come
 * back, and a writable replay cuts the torn rest off so appends follow. */
static void test_torn_tail(void)
{
    char path[300];
    struct seen s;
    snprintf(path, sizeof path, "%s/journal/%016x.jnl", dir, 4);
    long size = file_size(path);
    for (long cut = size - 1; cut > 8; cut -= 7) {
        CHECK_EQ(truncate(path, cut), 0);
        CHECK_EQ(replay(1, 0, &s), 0);
        CHECK(s.n >= 3 && s.n < STEPS, "cut at %ld: %zu steps", cut, s.n);
        CHECK_EQ(s.wrong, 0);
    }
    struct journal *j = NULL;
    CHECK_EQ(journal_open(dir, 0, &j), 0);
    CHECK_EQ(journal_replay(j, 0, record, &s), 0);
    append_steps(j, s.steps[s.n - 1] + 1, STEPS + 2);
    journal_close(j);
    CHECK_EQ(replay(1, 0, &s), 0);
    CHECK_EQ(s.n, STEPS + 2);
    CHECK_EQ(s.wrong, 0);
}

static void test_retention(void)
{
    struct journal *j = NULL;
    struct seen s;
    CHECK_EQ(journal_open(dir, 0, &j), 0);
    CHECK_EQ(journal_replay(j, 0, record, &s), 0);
    CHECK_EQ(journal_checkpointed(j, 5), 0); /* the oldest kept checkpoint is after step 5 */
    journal_close(j);
    char path[300];
    snprintf(path, sizeof path, "%s/journal/%016x.jnl", dir, 1);
    CHECK(access(path, F_OK) != 0); /* steps 1-3: no kept checkpoint needs them */
    CHECK_EQ(replay(1, 5, &s), 0);
    CHECK(s.n == 3 && s.steps[0] == 6);
    CHECK(replay(1, 0, &s) == -EBADMSG); /* from step 0 on: steps are missing */
    CHECK(strstr(err_msg(-EBADMSG), "steps are missing") != NULL, "%s", err_msg(-EBADMSG));
}

static int accept_any(void *arg, const struct journal_entry *e)
{
    (void)arg;
    for (size_t i = 0; i < e->nin; i++) /* every byte an entry points at is readable */
        if (e->in[i].data && e->in[i].to > e->in[i].from)
            (void)*(volatile const char *)((const char *)e->in[i].data + e->in[i].to -
                                           e->in[i].from - 1);
    return strlen(e->nin ? e->in[0].name : "") > 1000;
}

/* Bodies damaged with their hash made right again (what a checksum cannot
 * catch): counts, lengths and flags out of range are refused, never read
 * past (ASan watches). */
static void test_hostile_bodies(void)
{
    char path[300];
    snprintf(path, sizeof path, "%s/journal/%016x.jnl", dir, 4); /* steps 4 to 8 */
    int fd = open(path, O_RDONLY);
    unsigned char orig[4096];
    ssize_t n = fd >= 0 ? read(fd, orig, sizeof orig) : -1;
    if (fd >= 0)
        close(fd);
    CHECK(n > 20, "%s", path);
    if (n <= 20)
        return;
    uint32_t len = (uint32_t)orig[8] | (uint32_t)orig[9] << 8 | (uint32_t)orig[10] << 16 |
                   (uint32_t)orig[11] << 24;
    CHECK(len + 20 <= (size_t)n);
    unsigned seed = 7;
    for (int round = 0; round < 3000; round++) {
        unsigned char b[4096];
        memcpy(b, orig, (size_t)n);
        for (int k = 0; k < 1 + round % 3; k++) {
            size_t at = 20 + (size_t)rand_r(&seed) % len;
            b[at] = round % 5 == 0 ? 0xff : (unsigned char)rand_r(&seed);
        }
        uint64_t h = XXH3_64bits(b + 20, len);
        for (int i = 0; i < 8; i++)
            b[12 + i] = (unsigned char)(h >> (8 * i));
        fd = open(path, O_WRONLY | O_TRUNC);
        CHECK(fd >= 0 && write(fd, b, (size_t)n) == n);
        close(fd);
        struct journal *j = NULL;
        CHECK_EQ(journal_open(dir, 1, &j), 0);
        int rc = journal_replay(j, 3, accept_any, NULL);
        CHECK(rc == 0 || rc == -EBADMSG, "round %d: rc %d", round, rc);
        journal_close(j);
    }
    fd = open(path, O_WRONLY | O_TRUNC);
    CHECK(fd >= 0 && write(fd, orig, (size_t)n) == n);
    close(fd);
}

int main(void)
{
    if (!mkdtemp(dir))
        return perror("mkdtemp"), 1;
    test_round_trip_and_segments();
    test_damage();
    test_torn_tail();
    test_hostile_bodies();
    test_retention();
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return check_failures ? 1 : 0;
}
