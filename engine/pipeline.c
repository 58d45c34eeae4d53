/* The step loop (contract in pipeline.h). */
#include "pipeline.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/checkpoint.h"
#include "engine/input.h"
#include "engine/ivm.h"
#include "engine/output.h"
#include "util/buf.h"
#include "util/err.h"

struct pipeline {
    struct program *prog;
    struct input **inputs;   /* per table; NULL for a table without a connector */
    struct ivm **views;      /* per view */
    struct output **outputs; /* per view; NULL for a view without a connector */
    uint64_t step, records;
    struct ckpt *ckpt;  /* NULL without fault tolerance */
    const char **names; /* the views' */
    char resumed_from[CKPT_ID_LEN], last_checkpoint[CKPT_ID_LEN];
    uint64_t checkpoints, checkpoint_step;
    int failed; /* a step failed half done: its state must never be checkpointed */
};

static int read_program(const char *path, char **text)
{
    FILE *f = fopen(path, "r");
    struct buf b = { 0 };
    char chunk[65536];
    size_t n;
    if (!f)
        return err_set(-ENOENT, "%s: %s", path, strerror(errno));
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (buf_append(&b, chunk, n)) {
            fclose(f);
            buf_free(&b);
            return -ENOMEM;
        }
    int failed = ferror(f);
    fclose(f);
    if (failed || buf_append(&b, "", 1)) {
        buf_free(&b);
        return failed ? err_set(-EIO, "%s: read error", path) : -ENOMEM;
    }
    *text = (char *)b.data;
    return 0;
}

static int open_connectors(struct pipeline *p)
{
    struct program *g = p->prog;
    p->inputs = calloc(g->ntables, sizeof *p->inputs);
    p->views = calloc(g->nviews ? g->nviews : 1, sizeof *p->views);
    p->outputs = calloc(g->nviews ? g->nviews : 1, sizeof *p->outputs);
    if (!p->inputs || !p->views || !p->outputs)
        return -ENOMEM;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < g->ntables; i++)
        if (option_get(g->tables[i]->opts, g->tables[i]->nopts, "connector"))
            rc = input_open(g->tables[i], &p->inputs[i]);
    for (size_t i = 0; rc == 0 && i < g->nviews; i++) {
        rc = ivm_new(&g->views[i], &p->views[i]);
        if (rc == 0 && option_get(g->views[i].opts, g->views[i].nopts, "connector"))
            rc = output_open(&g->views[i], &p->outputs[i]);
    }
    return rc;
}

/* Positions of a checkpoint back into the inputs (by table name). */
static int seek_inputs(struct pipeline *p, const struct ckpt_image *img)
{
    for (size_t i = 0; i < p->prog->ntables; i++) {
        const struct ckpt_pos *at = NULL;
        for (size_t k = 0; k < img->ninputs; k++)
            if (!strcmp(img->inputs[k].name, p->prog->tables[i]->name))
                at = &img->inputs[k];
        if (p->inputs[i] && !at)
            return err_set(-EBADMSG,
                           "the checkpoint has no position for table %s (was the "
                           "program changed?)",
                           p->prog->tables[i]->name);
        if (p->inputs[i])
            input_seek(p->inputs[i], at->offset, at->line);
    }
    return 0;
}

/* Where the state comes from: a checkpoint, or (none yet) the beginning. */
static int resume(struct pipeline *p, const struct pipeline_options *o)
{
    struct ckpt_image img;
    char id[CKPT_ID_LEN];
    int rc = o->start_from ? (snprintf(id, sizeof id, "%s", o->start_from), 0)
                           : ckpt_latest(p->ckpt, id);
    if (rc == -ENOENT && o->fail_if_none)
        return err_set(-ENOENT, "%s holds no checkpoint (--fail-if-no-checkpoint)", o->storage);
    if (rc == -ENOENT)
        return 0; /* backfill: the inputs from their beginning */
    rc = ckpt_load(p->ckpt, id, p->views, &img);
    if (rc == 0)
        rc = seek_inputs(p, &img);
    if (rc == 0) {
        p->step = img.step;
        snprintf(p->resumed_from, sizeof p->resumed_from, "%s", id);
    }
    ckpt_image_free(&img);
    return rc ? err_wrap(rc, "resuming from checkpoint %s", id) : 0;
}

static int open_checkpoints(struct pipeline *p, const struct pipeline_options *o)
{
    p->names = calloc(p->prog->nviews + 1, sizeof *p->names);
    if (!p->names)
        return -ENOMEM;
    for (size_t i = 0; i < p->prog->nviews; i++)
        p->names[i] = p->prog->views[i].name;
    int rc = ckpt_open(o->storage, p->names, p->prog->nviews, &p->ckpt);
    return rc ? rc : resume(p, o);
}

int pipeline_open(const char *path, const struct pipeline_options *o, struct pipeline **out)
{
    char *text = NULL;
    struct pipeline *p = calloc(1, sizeof *p);
    int rc = p ? read_program(path, &text) : -ENOMEM;
    if (rc == 0 && (rc = program_parse(text, &p->prog)) != 0)
        err_wrap(rc, "%s", path);
    free(text);
    if (rc == 0)
        rc = open_connectors(p);
    if (rc == 0 && o->ft != FT_NONE)
        rc = open_checkpoints(p, o);
    if (rc) {
        pipeline_close(p);
        return rc;
    }
    *out = p;
    return 0;
}

void pipeline_close(struct pipeline *p)
{
    if (!p)
        return;
    for (size_t i = 0; p->prog && i < p->prog->ntables; i++)
        input_close(p->inputs ? p->inputs[i] : NULL);
    for (size_t i = 0; p->prog && i < p->prog->nviews; i++) {
        ivm_free(p->views ? p->views[i] : NULL);
        output_close(p->outputs ? p->outputs[i] : NULL);
    }
    ckpt_close(p->ckpt);
    free(p->names);
    free(p->inputs);
    free(p->views);
    free(p->outputs);
    program_free(p->prog);
    free(p);
}

static struct ckpt_pos *positions_of(struct pipeline *p, size_t *ni, size_t *no)
{
    struct program *g = p->prog;
    struct ckpt_pos *v = calloc(g->ntables + g->nviews + 1, sizeof *v);
    *ni = *no = 0;
    for (size_t i = 0; v && i < g->ntables; i++)
        if (p->inputs[i]) {
            struct input_stats st;
            input_get_stats(p->inputs[i], &st);
            v[(*ni)++] = (struct ckpt_pos){ g->tables[i]->name, st.position, st.lines };
        }
    for (size_t i = 0; v && i < g->nviews; i++)
        if (p->outputs[i])
            v[*ni + (*no)++] =
                (struct ckpt_pos){ g->views[i].name, output_length(p->outputs[i]), 0 };
    return v;
}

int pipeline_checkpoint(struct pipeline *p, char *id, size_t n, uint64_t *written)
{
    char made[CKPT_ID_LEN];
    if (!p->ckpt)
        return err_set(-EINVAL, "no fault tolerance (--ft none): no checkpoints");
    if (p->failed)
        return err_set(-EIO, "a step failed half done: its state is not checkpointed");
    /* Step 0 is before the first output: a checkpoint there would skip the
     * initial rows of views without GROUP BY. Take the first step first. */
    int rc = p->step ? 0 : pipeline_step(p, 1);
    if (rc < 0)
        return rc;
    struct ckpt_image img = { .step = p->step };
    struct ckpt_pos *pos = positions_of(p, &img.ninputs, &img.noutputs);
    if (!pos)
        return -ENOMEM;
    img.inputs = pos;
    img.outputs = pos + img.ninputs;
    rc = ckpt_save(p->ckpt, p->views, &img, made, written);
    free(pos);
    if (rc == 0) {
        snprintf(id, n, "%s", made);
        memcpy(p->last_checkpoint, made, sizeof made);
        p->checkpoints++;
        p->checkpoint_step = p->step;
    }
    return rc;
}

int pipeline_push(struct pipeline *p, const char *table, const char *body, size_t len)
{
    for (size_t i = 0; i < p->prog->ntables; i++)
        if (!strcmp(p->prog->tables[i]->name, table))
            return p->inputs[i] ? input_push(p->inputs[i], body, len)
                                : err_set(-EINVAL, "table %s has no connector", table);
    return err_set(-ENOENT, "there is no table %s", table);
}

int pipeline_scan(struct pipeline *p, const char *view, const struct view **v, ivm_emit_fn fn,
                  void *arg)
{
    for (size_t i = 0; i < p->prog->nviews; i++)
        if (!strcmp(p->prog->views[i].name, view)) {
            *v = &p->prog->views[i];
            return ivm_scan(p->views[i], fn, arg);
        }
    return err_set(-ENOENT, "there is no view %s", view);
}

void pipeline_each_view(struct pipeline *p,
                        void (*fn)(void *arg, const char *name, uint64_t groups), void *arg)
{
    for (size_t i = 0; i < p->prog->nviews; i++)
        fn(arg, p->prog->views[i].name, ivm_groups(p->views[i]));
}

struct applying {
    struct pipeline *p;
    const struct table *t;
};

/* A change of table t goes to every view of t. */
static int apply(void *arg, const struct value *row, int weight)
{
    struct applying *a = arg;
    struct program *g = a->p->prog;
    for (size_t i = 0; i < g->nviews; i++)
        if (g->views[i].from == a->t) {
            int rc = ivm_change(a->p->views[i], row, weight);
            if (rc)
                return rc;
        }
    return 0;
}

static int discard(void *arg, const struct value *row, int weight)
{
    (void)arg;
    (void)row;
    (void)weight;
    return 0;
}

/* The views' changes of this step, to their outputs. */
static int flush_views(struct pipeline *p)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < p->prog->nviews; i++) {
        struct output *o = p->outputs[i];
        if (o)
            output_begin(o, p->step);
        rc = ivm_flush(p->views[i], o ? output_emit : discard, o);
        if (rc == 0 && o)
            rc = output_end(o);
    }
    return rc;
}

static int step_once(struct pipeline *p, size_t batch);

int pipeline_step(struct pipeline *p, size_t batch)
{
    int rc = step_once(p, batch);
    if (rc < 0)
        p->failed = 1;
    return rc;
}

int pipeline_drain(struct pipeline *p, size_t batch)
{
    int rc;
    while ((rc = pipeline_step(p, batch)) > 0)
        ;
    return rc;
}

static int step_once(struct pipeline *p, size_t batch)
{
    size_t taken = 0;
    for (size_t i = 0; i < p->prog->ntables; i++) {
        struct applying a = { p, p->prog->tables[i] };
        ssize_t n = p->inputs[i] ? input_poll(p->inputs[i], batch, apply, &a) : 0;
        if (n < 0)
            return (int)n;
        taken += (size_t)n;
    }
    if (!taken && p->step)
        return 0;
    p->step++; /* the first step comes out even without input: views without GROUP BY have a row */
    p->records += taken;
    int rc = flush_views(p);
    return rc ? rc : taken > 0;
}

int pipeline_inputs_done(const struct pipeline *p)
{
    for (size_t i = 0; i < p->prog->ntables; i++) {
        struct input_stats st;
        if (!p->inputs[i])
            continue;
        input_get_stats(p->inputs[i], &st);
        if (!st.at_end)
            return 0;
    }
    return 1;
}

void pipeline_get_stats(const struct pipeline *p, struct pipeline_stats *st)
{
    *st = (struct pipeline_stats){ .step = p->step, .records = p->records };
    snprintf(st->resumed_from, sizeof st->resumed_from, "%s", p->resumed_from);
    snprintf(st->last_checkpoint, sizeof st->last_checkpoint, "%s", p->last_checkpoint);
    st->checkpoints = p->checkpoints;
    st->checkpoint_step = p->checkpoint_step;
    for (size_t i = 0; i < p->prog->ntables; i++) {
        struct input_stats in;
        if (p->inputs[i]) {
            input_get_stats(p->inputs[i], &in);
            st->skipped += in.skipped;
        }
    }
}
