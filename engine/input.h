/*
 * A table's connector: WITH ('connector' = 'file', 'path' = P,
 * 'format' = 'csv' | 'json', 'on_error' = 'fail' | 'skip', 'header' =
 * 'true' | 'false'). It follows a growing file: each poll reads the
 * complete lines written since the last one (a line still being written
 * waits for its newline); a file that does not exist yet is empty.
 *
 * csv: one insert per line, fields in the table's column order, separated
 * by commas, "quoted" where they hold commas or quotes (""), never a
 * newline (a record is a line); an empty unquoted field is NULL, "" the
 * empty string.
 * json: a change per line, {"insert": {COLUMN: VALUE, ...}} or
 * {"delete": {...}}; a missing column is NULL.
 *
 * A malformed record is reported as PATH:LINE: reason, then skipped
 * ('on_error' = 'skip', counted) or fails the poll ('fail', the default).
 * The position of an input is the byte offset of its next unread line,
 * so that a checkpoint can resume from it.
 */
#ifndef CKPT_ENGINE_INPUT_H
#define CKPT_ENGINE_INPUT_H

#include <stdint.h>
#include <sys/types.h>

#include "engine/sql.h"

struct input;

/* What the consumer of the rows does with a row alone, done where the row
 * is parsed: on the parse-ahead thread for a line it parsed, else just
 * before the row is passed on. fn fills row[ncols .. ncols + extra) from
 * row[0 .. ncols); it may read nothing else but ctx, which must not change
 * while the input is open. */
struct input_prep {
    void (*fn)(const void *ctx, struct value *row);
    const void *ctx;
    size_t extra;
};

/* -EINVAL naming the option if the table's WITH options are not a file
 * connector's. prep may be NULL: rows are the table's columns alone. */
int input_open(const struct table *t, const struct input_prep *prep, struct input **out);
void input_close(struct input *in);

/* Called with each change read: row (valid during the call: the table's
 * columns, then prep's values) and +1 or -1. */
typedef int (*input_fn)(void *arg, const struct value *row, int weight);

/* Reads up to max changes that are complete in the file now. Returns how
 * many were passed to fn, or an error (a malformed record with 'fail', an
 * I/O error, or fn's). */
ssize_t input_poll(struct input *in, size_t max, input_fn fn, void *arg);

struct input_stats {
    uint64_t position; /* byte offset of the next unread line */
    uint64_t lines;    /* lines read */
    uint64_t skipped;  /* malformed records skipped */
    int at_end;        /* the last poll reached the end of the file */
    uint64_t taken;    /* the position at the last input_commit_step */
    uint64_t queued;   /* HTTP: the position after everything queued */
};
void input_get_stats(const struct input *in, struct input_stats *st);

/* An HTTP table ('connector' = 'http'; 'format' 'json' by default): the
 * changes of a request body, checked whole (a malformed line refuses them
 * all: -EBADMSG naming the line) and then queued for the next poll.
 * Returns how many changes were queued. */
int input_push(struct input *in, const char *body, size_t len);

/* Reads on from offset, whose line is line + 1 (a checkpoint's position). */
void input_seek(struct input *in, uint64_t offset, uint64_t line);

/* What a step consumed of an input (for exactly_once's journal): its
 * position before and after (byte offset, lines), the changes taken, a
 * hash of the bytes consumed, and for HTTP those bytes (to - from of them,
 * valid until the next step begins; NULL for a file, which can be read
 * again). */
struct input_span {
    uint64_t from, from_line, to, to_line, count, hash;
    const char *data;
};

/* A step begins: if the last span was committed, what it consumed is let
 * go and a new span starts where the input stands; if not (polls that took
 * no change, so no step was counted: blank lines, skipped records), the
 * span goes on, so that the bytes those polls consumed are in the next
 * step's. input_commit_step: the span is accounted for (by the journal, or
 * by a checkpoint of the position). */
void input_begin_step(struct input *in);

/* Spans carry the hash of their bytes from now on (exactly_once's journal
 * checks replays with it); without, the hash is 0 and costs nothing. */
void input_hash_spans(struct input *in);
void input_commit_step(struct input *in);
void input_get_span(const struct input *in, struct input_span *s);

/* A journaled step again: the input is put back at s's start, with s's
 * bytes queued for HTTP, and polls read nothing past s's end until
 * input_replay_end. Returns 0 or -ENOMEM. */
int input_replay(struct input *in, const struct input_span *s);
void input_replay_end(struct input *in);

#endif
