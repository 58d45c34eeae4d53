/*
 * A running program: its tables' input connectors, its views maintained
 * incrementally, their output connectors, and the step loop. A step reads
 * what the inputs have (up to a batch per input), applies it to every view
 * of the table, and writes the views' changes tagged with the step's
 * number; steps without input are not counted.
 *
 * Errors: negative errno with the thread's message set (util/err.h).
 */
#ifndef CKPT_ENGINE_PIPELINE_H
#define CKPT_ENGINE_PIPELINE_H

#include <stdint.h>

#include "engine/sql.h"

struct pipeline;

/* Reads, parses and checks the program at path; opens its connectors
 * (relative paths are relative to the current directory). */
int pipeline_open(const char *path, struct pipeline **out);
void pipeline_close(struct pipeline *p);

/* One step, of at most batch changes per input: 1 if it had input, 0 if
 * there was none, or an error. */
int pipeline_step(struct pipeline *p, size_t batch);

/* Whether every input has reached the end of its file. */
int pipeline_inputs_done(const struct pipeline *p);

struct pipeline_stats {
    uint64_t step;    /* the last step's number (0: none yet) */
    uint64_t records; /* input changes taken */
    uint64_t skipped; /* malformed records skipped */
};
void pipeline_get_stats(const struct pipeline *p, struct pipeline_stats *st);

#endif
