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

enum ft { FT_NONE, FT_CHECKPOINT, FT_AT_LEAST_ONCE, FT_EXACTLY_ONCE };

struct pipeline_options {
    const char *storage;    /* where checkpoints go */
    enum ft ft;             /* FT_NONE: no checkpoints at all */
    const char *start_from; /* a checkpoint ID, or NULL for the newest */
    int fail_if_none;       /* no checkpoint: an error, not a start from scratch */
};

/* Reads, parses and checks the program at path; opens its connectors
 * (relative paths are relative to the current directory); with fault
 * tolerance, resumes from a checkpoint in o->storage if there is one (an
 * unreadable one is an error, never a fresh start). */
int pipeline_open(const char *path, const struct pipeline_options *o, struct pipeline **out);

/* Commits a checkpoint of the state after the last step; *id gets its ID,
 * *written the bytes of state written. -EINVAL without fault tolerance. */
int pipeline_checkpoint(struct pipeline *p, char *id, size_t n, uint64_t *written);
void pipeline_close(struct pipeline *p);

/* One step, of at most batch changes per input: 1 if it had input, 0 if
 * there was none, or an error. */
int pipeline_step(struct pipeline *p, size_t batch);

/* Whether every input has reached the end of its file. */
int pipeline_inputs_done(const struct pipeline *p);

struct pipeline_stats {
    uint64_t step;         /* the last step's number (0: none yet) */
    char resumed_from[24]; /* the checkpoint it started from, "" if none */
    uint64_t records;      /* input changes taken */
    uint64_t skipped;      /* malformed records skipped */
};
void pipeline_get_stats(const struct pipeline *p, struct pipeline_stats *st);

#endif
