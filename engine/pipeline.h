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

#include "engine/ivm.h"
#include "engine/sql.h"

struct pipeline;

enum ft { FT_NONE, FT_CHECKPOINT, FT_AT_LEAST_ONCE, FT_EXACTLY_ONCE };

struct pipeline_options {
    const char *storage;    /* where checkpoints go */
    enum ft ft;             /* FT_NONE: no checkpoints at all */
    const char *start_from; /* a checkpoint ID, or NULL for the newest */
    int fail_if_none;       /* no checkpoint: an error, not a start from scratch */
    int standby;            /* load checkpoints as they come, write nothing (below) */
};

/* Reads, parses and checks the program at path; opens its connectors
 * (relative paths are relative to the current directory); with fault
 * tolerance, resumes from a checkpoint in o->storage if there is one (an
 * unreadable one is an error, never a fresh start); with exactly_once,
 * replays the journal's steps after it, writing only the output the files
 * miss (-EBADMSG, said, if a step comes out other than journaled). */
int pipeline_open(const char *path, const struct pipeline_options *o, struct pipeline **out);

/* Commits a checkpoint of the state after the last step; *id gets its ID,
 * *written the bytes of state written. -EINVAL without fault tolerance. */
int pipeline_checkpoint(struct pipeline *p, char *id, size_t n, uint64_t *written);
void pipeline_close(struct pipeline *p);

/* One step, of at most batch changes per input: 1 if it had input, 0 if
 * there was none, or an error (after which no checkpoint is taken). */
int pipeline_step(struct pipeline *p, size_t batch);

/* Steps until one has no input (what was queued or written is all taken,
 * before a final checkpoint). Returns 0 or the failing step's error. */
int pipeline_drain(struct pipeline *p, size_t batch);

/* A standby (o->standby): its storage is read-only (a ckptfs --follow
 * mount), its outputs are not opened. Each poll loads the newest
 * checkpoint if it is not the one loaded: 1 if it loaded one, 0 if not.
 * pipeline_activate makes it the active pipeline: the storage must be
 * writable by then (-EROFS, said, if the mount is not promoted yet); it
 * loads the newest checkpoint, opens the outputs and, with exactly_once,
 * replays the journal. pipeline_step refuses a standby (-EROFS). */
int pipeline_standby_poll(struct pipeline *p);
int pipeline_activate(struct pipeline *p);

/* Whether every input has reached the end of its file. */
int pipeline_inputs_done(const struct pipeline *p);

/* Changes pushed to table (POST /ingress/TABLE): input_push's contract;
 * -ENOENT if there is no such table. *end gets the table's position after
 * them: they are in a step (journaled, with exactly_once) once
 * pipeline_taken(p, table) reaches it. */
int pipeline_push(struct pipeline *p, const char *table, const char *body, size_t len,
                  uint64_t *end);
uint64_t pipeline_taken(struct pipeline *p, const char *table);

/* A view's rows now (as of the last step) to fn; -ENOENT if no such view.
 * *v gets the view (its column names). */
int pipeline_scan(struct pipeline *p, const char *view, const struct view **v, ivm_emit_fn fn,
                  void *arg);

/* Calls fn for each view: its name and number of groups. */
void pipeline_each_view(struct pipeline *p,
                        void (*fn)(void *arg, const char *name, uint64_t groups), void *arg);

struct pipeline_stats {
    uint64_t step;            /* the last step's number (0: none yet) */
    char resumed_from[24];    /* the checkpoint it started from, "" if none */
    char last_checkpoint[24]; /* the last committed by this run, "" if none */
    uint64_t checkpoints;     /* committed by this run */
    uint64_t checkpoint_step; /* the step the last one was taken after */
    uint64_t records;         /* input changes taken */
    uint64_t skipped;         /* malformed records skipped */
    int standby;              /* not activated yet */
    uint64_t replayed;        /* steps rebuilt from the journal at start or activation */
};
void pipeline_get_stats(const struct pipeline *p, struct pipeline_stats *st);

#endif
