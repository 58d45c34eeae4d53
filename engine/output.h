/*
 * A view's file connector: WITH ('connector' = 'file', 'path' = P). Each
 * change of the view becomes a JSON line,
 *
 *   {"step": N, "insert": {"col": value, ...}}   or   {"step": N, "delete": {...}}
 *
 * appended to P (its directory made if missing). A step's lines are
 * written together at its end, with one write where the system allows,
 * by a thread of the output's own: the write goes on while the next step
 * reads its input, and is waited for (output_settle) before that step's
 * changes are collected, before a sync, and by an idle step.
 */
#ifndef CKPT_ENGINE_OUTPUT_H
#define CKPT_ENGINE_OUTPUT_H

#include <stdint.h>

#include "engine/sql.h"

struct output;

/* -EINVAL naming the option if the view's WITH options are not a file
 * connector's; -EIO (said) if the file cannot be opened. A last line
 * without its newline (a crash while writing it) is cut off. */
int output_open(const struct view *v, struct output **out);
void output_close(struct output *o);

/* Waits for the last step's write: 0, or its error (-EIO, said), after
 * which output_length is the file's true length again. A write that failed
 * fails every later call too (settle, begin, end, sync). */
int output_settle(struct output *o);

/* A step begins: output_settle, then collecting. output_emit collects one
 * change of step (an ivm_emit_fn's shape: arg is the output). */
int output_begin(struct output *o, uint64_t step);
int output_emit(void *arg, const struct value *row, int weight);

/* The length and hash of what the step collected (exactly_once's journal
 * records them before any of it is written). */
void output_collected(const struct output *o, uint64_t *len, uint64_t *hash);

/* Writes what the step collected, whose first byte goes at byte `at` of
 * the file: normally the file's end; for a step replayed after a crash,
 * where it went the first time, and only the part not already in the file
 * is written. The write is handed to the thread: an error of it comes
 * back from output_settle. -EIO (said) if the file is shorter than at. */
int output_end(struct output *o, uint64_t at);

/* The file's length once the write handed to the thread is done (a
 * checkpoint records it, after output_sync). */
uint64_t output_length(const struct output *o);

/* output_settle, then the file's bytes made durable (before a checkpoint
 * names its length). */
int output_sync(struct output *o);

#endif
