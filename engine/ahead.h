/*
 * Parsing ahead: a thread that parses an input's next lines while the
 * pipeline applies the ones before, so that a file read from its start
 * (a backfill, a replay) takes both cores.
 *
 * It is a cache, never the only way: the input hands it copies of whole
 * lines it has read (ahead_feed) and asks, line by line, for the row the
 * thread made of one (ahead_take); a line the thread did not parse, or
 * could not (the parse function failed), comes back NULL and the input
 * parses it itself, with its own errors and line numbers. So the rows are
 * the same with or without it.
 */
#ifndef CKPT_ENGINE_AHEAD_H
#define CKPT_ENGINE_AHEAD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "engine/value.h"

struct ahead;

/* The most bytes fed at once: large enough that the thread is handed work
 * once per thousands of lines, small enough that it starts on a block soon
 * after it is read. A line longer than this is never parsed ahead. */
#define AHEAD_BLOCK ((size_t)256 << 10)

/* Parses a line (without its newline) into row[0..ncols): 0, or non-zero
 * if it cannot. Called from the thread: it must touch nothing but row and
 * what ctx holds read-only. */
typedef int (*ahead_parse_fn)(const void *ctx, const char *line, size_t len, struct value *row);

/* A thread parsing rows of ncols values; -ENOMEM, or -EAGAIN if no thread
 * could be started (the input then parses alone). */
int ahead_new(size_t ncols, ahead_parse_fn parse, const void *ctx, struct ahead **out);

/* Joins the thread. NULL is allowed. */
void ahead_free(struct ahead *a);

/* Where the next ahead_feed must start: the end of the lines handed so far
 * (0 before the first). */
uint64_t ahead_end(const struct ahead *a);

/* 1 if the thread has room for more lines now. */
int ahead_wants(const struct ahead *a);

/* Hands the thread a copy of the whole lines at the start of bytes, the
 * input's bytes from offset at on (at >= ahead_end), as many as AHEAD_BLOCK
 * bytes hold. Returns the bytes taken: 0 if none (no room: !ahead_wants, or
 * no newline within AHEAD_BLOCK bytes), or -ENOMEM. */
ssize_t ahead_feed(struct ahead *a, uint64_t at, const char *bytes, size_t len);

/* The row the thread made of the line at byte at, len bytes long (without
 * its newline), or NULL. Waits for the thread if it is still on that
 * line's lines. Lines are taken in order: those before at are let go. The
 * row is valid until the next ahead_take or ahead_reset. */
const struct value *ahead_take(struct ahead *a, uint64_t at, size_t len);

/* Forgets every line handed (the input moved elsewhere: a seek). */
void ahead_reset(struct ahead *a);

#endif
