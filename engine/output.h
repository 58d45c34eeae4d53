/*
 * A view's file connector: WITH ('connector' = 'file', 'path' = P). Each
 * change of the view becomes a JSON line,
 *
 *   {"step": N, "insert": {"col": value, ...}}   or   {"step": N, "delete": {...}}
 *
 * appended to P (its directory made if missing). A step's lines are
 * written together at its end, with one write where the system allows.
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

/* Collects one change of step (an ivm_emit_fn's shape: arg is the output). */
void output_begin(struct output *o, uint64_t step);
int output_emit(void *arg, const struct value *row, int weight);

/* Writes what the step collected. */
int output_end(struct output *o);

/* The file's length now (a checkpoint records it). */
uint64_t output_length(const struct output *o);

#endif
