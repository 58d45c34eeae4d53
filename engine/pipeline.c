/* The step loop (contract in pipeline.h). */
#include "pipeline.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/checkpoint.h"
#include "engine/input.h"
#include "engine/ivm.h"
#include "engine/journal.h"
#include "engine/output.h"
#include "util/buf.h"
#include "util/err.h"

/* A table's rows are prepared for its views (ivm_prepare) where they are
 * parsed: after the table's columns, each view's prepared change in turn. */
struct table_views {
    const struct program *g;
    const struct table *t;
    const size_t *at; /* per view of t: where its prepared change starts */
};

struct pipeline {
    struct program *prog;
    struct table_views *tv;  /* per table: the parse-ahead thread reads it */
    size_t *prep_at;         /* per view: table_views' at */
    struct input **inputs;   /* per table; NULL for a table without a connector */
    struct ivm **views;      /* per view */
    struct output **outputs; /* per view; NULL for a view without a connector */
    uint64_t step, records;
    struct ckpt *ckpt;  /* NULL without fault tolerance */
    const char **names; /* the views' */
    char resumed_from[CKPT_ID_LEN], last_checkpoint[CKPT_ID_LEN];
    uint64_t checkpoints, checkpoint_step;
    int failed; /* a step failed half done: its state must never be checkpointed */
    enum ft ft;
    const char *storage;
    int standby;             /* loads checkpoints, writes nothing (pipeline_activate) */
    struct journal *journal; /* exactly_once */
    uint64_t *expect;        /* per view: its output's length as the journal accounts for it */
    uint64_t replayed;       /* steps rebuilt from the journal */
    char crash_at[32];       /* the test hook below */
};

/* A test hook: CKPTPIPE_CRASH_AT=journal:N or output:N kills the process
 * (SIGKILL) right after step N's journal entry is durable, or after its
 * output is written: the crash tests hit those instants every time, not by
 * luck. */
static void crash_point(const struct pipeline *p, const char *where)
{
    char here[32];
    snprintf(here, sizeof here, "%s:%llu", where, (unsigned long long)p->step);
    if (p->crash_at[0] && !strcmp(here, p->crash_at))
        raise(SIGKILL);
}

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

static void prepare(const void *ctx, struct value *row)
{
    const struct table_views *tv = ctx;
    for (size_t i = 0; i < tv->g->nviews; i++)
        if (tv->g->views[i].from == tv->t)
            ivm_prepare(&tv->g->views[i], row, row + tv->at[i]);
}

/* Lays out table i's rows: its columns, then its views' prepared changes. */
static struct input_prep layout_rows(struct pipeline *p, size_t i)
{
    const struct program *g = p->prog;
    size_t at = g->tables[i]->ncols;
    p->tv[i] = (struct table_views){ g, g->tables[i], p->prep_at };
    for (size_t v = 0; v < g->nviews; v++)
        if (g->views[v].from == g->tables[i]) {
            p->prep_at[v] = at;
            at += IVM_PREP_WIDTH;
        }
    return (struct input_prep){ prepare, &p->tv[i], at - g->tables[i]->ncols };
}

static int open_connectors(struct pipeline *p)
{
    struct program *g = p->prog;
    size_t nv = g->nviews ? g->nviews : 1;
    p->tv = calloc(g->ntables + 1, sizeof *p->tv);
    p->prep_at = calloc(nv, sizeof *p->prep_at);
    p->inputs = calloc(g->ntables + 1, sizeof *p->inputs);
    p->views = calloc(nv, sizeof *p->views);
    p->outputs = calloc(nv, sizeof *p->outputs);
    p->expect = calloc(nv, sizeof *p->expect);
    if (!p->tv || !p->prep_at || !p->inputs || !p->views || !p->outputs || !p->expect)
        return -ENOMEM;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < g->ntables; i++) {
        struct input_prep prep = layout_rows(p, i);
        if (!option_get(g->tables[i]->opts, g->tables[i]->nopts, "connector"))
            continue;
        rc = input_open(g->tables[i], &prep, &p->inputs[i]);
        if (rc == 0 && p->ft == FT_EXACTLY_ONCE)
            input_hash_spans(p->inputs[i]);
    }
    for (size_t i = 0; rc == 0 && i < g->nviews; i++)
        rc = ivm_new(&g->views[i], &p->views[i]);
    return rc;
}

/* Not on a standby: the shared output is the active pipeline's alone. */
static int open_outputs(struct pipeline *p)
{
    struct program *g = p->prog;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < g->nviews; i++)
        if (option_get(g->views[i].opts, g->views[i].nopts, "connector"))
            rc = output_open(&g->views[i], &p->outputs[i]);
    return rc;
}

static const struct ckpt_pos *pos_named(const struct ckpt_pos *v, size_t n, const char *name)
{
    for (size_t k = 0; k < n; k++)
        if (!strcmp(v[k].name, name))
            return &v[k];
    return NULL;
}

/* Positions of a checkpoint back into the inputs (by table name), and
 * where its outputs ended. */
static int seek_inputs(struct pipeline *p, const struct ckpt_image *img)
{
    for (size_t i = 0; i < p->prog->ntables; i++) /* all there before anything moves */
        if (p->inputs[i] && !pos_named(img->inputs, img->ninputs, p->prog->tables[i]->name))
            return err_set(-EBADMSG,
                           "the checkpoint has no position for table %s (was the "
                           "program changed?)",
                           p->prog->tables[i]->name);
    for (size_t i = 0; i < p->prog->nviews; i++) {
        const struct ckpt_pos *at = pos_named(img->outputs, img->noutputs, p->prog->views[i].name);
        p->expect[i] = at ? at->offset : 0;
    }
    for (size_t i = 0; i < p->prog->ntables; i++) {
        const struct ckpt_pos *at = pos_named(img->inputs, img->ninputs, p->prog->tables[i]->name);
        if (p->inputs[i])
            input_seek(p->inputs[i], at->offset, at->line);
    }
    return 0;
}

static void free_views(struct pipeline *p, struct ivm **v)
{
    for (size_t i = 0; v && i < p->prog->nviews; i++)
        ivm_free(v[i]);
    free(v);
}

/* Checkpoint id becomes the state, in views of its own: on an error the
 * state is as it was. */
static int load(struct pipeline *p, const char *id)
{
    struct ckpt_image img = { 0 };
    struct ivm **v = calloc(p->prog->nviews + 1, sizeof *v);
    int rc = v ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < p->prog->nviews; i++)
        rc = ivm_new(&p->prog->views[i], &v[i]);
    rc = rc ? rc : ckpt_load(p->ckpt, id, v, &img);
    rc = rc ? rc : seek_inputs(p, &img);
    if (rc == 0) {
        struct ivm **old = p->views;
        p->views = v, v = old;
        p->step = img.step;
        snprintf(p->resumed_from, sizeof p->resumed_from, "%s", id);
    }
    free_views(p, v);
    ckpt_image_free(&img);
    return rc ? err_wrap(rc, "resuming from checkpoint %s", id) : 0;
}

/* Where the state comes from: a checkpoint, or (none yet) the beginning. */
static int resume(struct pipeline *p, const struct pipeline_options *o)
{
    char id[CKPT_ID_LEN];
    int rc = o->start_from ? (snprintf(id, sizeof id, "%s", o->start_from), 0)
                           : ckpt_latest(p->ckpt, id);
    if (rc == -ENOENT && o->fail_if_none && !o->standby)
        return err_set(-ENOENT, "%s holds no checkpoint (--fail-if-no-checkpoint)", o->storage);
    if (rc == -ENOENT)
        return 0; /* backfill: the inputs from their beginning (a standby: wait for one) */
    return load(p, id);
}

static int open_checkpoints(struct pipeline *p, const struct pipeline_options *o)
{
    p->names = calloc(p->prog->nviews + 1, sizeof *p->names);
    if (!p->names)
        return -ENOMEM;
    for (size_t i = 0; i < p->prog->nviews; i++)
        p->names[i] = p->prog->views[i].name;
    int rc = ckpt_open(o->storage, p->names, p->prog->nviews, o->standby, &p->ckpt);
    return rc ? rc : resume(p, o);
}

static int replay(struct pipeline *p);

/* The active pipeline's part: outputs, and exactly_once's journal replayed. */
static int start_active(struct pipeline *p)
{
    int rc = open_outputs(p);
    if (rc == 0 && p->ft == FT_EXACTLY_ONCE && (rc = journal_open(p->storage, 0, &p->journal)) == 0)
        rc = replay(p);
    return rc;
}

int pipeline_open(const char *path, const struct pipeline_options *o, struct pipeline **out)
{
    char *text = NULL;
    struct pipeline *p = calloc(1, sizeof *p);
    int rc = p ? read_program(path, &text) : -ENOMEM;
    if (rc == 0 && (rc = program_parse(text, &p->prog)) != 0)
        err_wrap(rc, "%s", path);
    free(text);
    if (rc == 0) {
        p->ft = o->ft;
        p->storage = o->storage;
        p->standby = o->standby;
        snprintf(p->crash_at, sizeof p->crash_at, "%s", getenv("CKPTPIPE_CRASH_AT") ?: "");
        rc = open_connectors(p);
    }
    if (rc == 0 && o->ft != FT_NONE)
        rc = open_checkpoints(p, o);
    if (rc == 0 && !o->standby)
        rc = start_active(p);
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
    journal_close(p->journal);
    free(p->expect);
    free(p->names);
    free(p->inputs);
    free(p->tv);
    free(p->prep_at);
    free(p->views);
    free(p->outputs);
    program_free(p->prog);
    free(p);
}

static void commit_inputs(struct pipeline *p)
{
    for (size_t i = 0; i < p->prog->ntables; i++)
        if (p->inputs[i])
            input_commit_step(p->inputs[i]);
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
    /* the lengths a checkpoint names are on disk before it commits */
    for (size_t i = 0; rc == 0 && i < p->prog->nviews; i++)
        rc = p->outputs[i] ? output_sync(p->outputs[i]) : 0;
    if (rc)
        return rc;
    struct ckpt_image img = { .step = p->step };
    struct ckpt_pos *pos = positions_of(p, &img.ninputs, &img.noutputs);
    if (!pos)
        return -ENOMEM;
    img.inputs = pos;
    img.outputs = pos + img.ninputs;
    rc = ckpt_save(p->ckpt, p->views, &img, made, written);
    free(pos);
    if (rc == 0) /* the positions it records account for what was read */
        commit_inputs(p);
    if (rc == 0 && p->journal)
        rc = journal_checkpointed(p->journal, ckpt_oldest_step(p->ckpt));
    if (rc == 0) {
        snprintf(id, n, "%s", made);
        memcpy(p->last_checkpoint, made, sizeof made);
        p->checkpoints++;
        p->checkpoint_step = p->step;
    }
    return rc;
}

static struct input *input_named_in(struct pipeline *p, const char *table)
{
    for (size_t i = 0; i < p->prog->ntables; i++)
        if (!strcmp(p->prog->tables[i]->name, table)) {
            if (!p->inputs[i])
                err_set(-EINVAL, "table %s has no connector", table);
            return p->inputs[i];
        }
    err_set(-ENOENT, "there is no table %s", table);
    return NULL;
}

int pipeline_push(struct pipeline *p, const char *table, const char *body, size_t len,
                  uint64_t *end)
{
    struct input *in = input_named_in(p, table);
    struct input_stats st;
    if (!in)
        return program_table(p->prog, table) ? -EINVAL : -ENOENT;
    int rc = input_push(in, body, len);
    input_get_stats(in, &st);
    *end = st.queued;
    return rc;
}

uint64_t pipeline_taken(struct pipeline *p, const char *table)
{
    struct input *in = input_named_in(p, table);
    struct input_stats st = { 0 };
    if (in)
        input_get_stats(in, &st);
    return st.taken;
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
    const struct table_views *tv;
};

/* A change of a table goes to every view of it, prepared (prepare()). */
static int apply(void *arg, const struct value *row, int weight)
{
    const struct applying *a = arg;
    const struct table_views *tv = a->tv;
    for (size_t i = 0; i < tv->g->nviews; i++)
        if (tv->g->views[i].from == tv->t) {
            int rc = ivm_change_prepared(a->p->views[i], row, row + tv->at[i], weight);
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

/* The views' changes of this step, collected by their outputs. */
static int collect(struct pipeline *p)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < p->prog->nviews; i++) {
        struct output *o = p->outputs[i];
        rc = o ? output_begin(o, p->step) : 0;
        if (rc == 0)
            rc = ivm_flush(p->views[i], o ? output_emit : discard, o);
    }
    return rc;
}

/* What the step collected, to the files; at[i]: where view i's bytes
 * start in its file (NULL: at its end). */
static int write_outputs(struct pipeline *p, const uint64_t *at)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < p->prog->nviews; i++)
        if (p->outputs[i])
            rc = output_end(p->outputs[i], at ? at[i] : output_length(p->outputs[i]));
    return rc;
}

/* A step's entry, made from what its inputs consumed and its outputs
 * collected (the arrays are the caller's, sized for every table and view). */
static void entry_of(struct pipeline *p, struct journal_entry *e, struct journal_input *in,
                     struct journal_output *out)
{
    struct program *g = p->prog;
    *e = (struct journal_entry){ .step = p->step, .in = in, .out = out };
    for (size_t i = 0; i < g->ntables; i++)
        if (p->inputs[i]) {
            struct input_span s;
            input_get_span(p->inputs[i], &s);
            in[e->nin++] =
                (struct journal_input){ g->tables[i]->name, s.from,  s.from_line, s.to,
                                        s.to_line,          s.count, s.hash,      s.data };
        }
    for (size_t i = 0; i < g->nviews; i++)
        if (p->outputs[i]) {
            struct journal_output *w = &out[e->nout++];
            w->name = g->views[i].name;
            w->before = output_length(p->outputs[i]);
            output_collected(p->outputs[i], &w->len, &w->hash);
        }
}

/* exactly_once: the step's entry durable before any of its output. */
static int journal_step(struct pipeline *p)
{
    struct journal_entry e;
    struct journal_input *in = calloc(p->prog->ntables + 1, sizeof *in);
    struct journal_output *out = calloc(p->prog->nviews + 1, sizeof *out);
    int rc = in && out ? 0 : -ENOMEM;
    if (rc == 0) {
        entry_of(p, &e, in, out);
        rc = journal_append(p->journal, &e);
    }
    free(in);
    free(out);
    return rc;
}

/* The last step's writes, done (output_settle). */
static int settle_outputs(struct pipeline *p)
{
    int rc = 0;
    for (size_t i = 0; i < p->prog->nviews; i++) {
        int one = p->outputs[i] ? output_settle(p->outputs[i]) : 0;
        rc = rc ? rc : one;
    }
    return rc;
}

/* Reads from every input (up to batch changes each); *taken gets how many. */
static int take_inputs(struct pipeline *p, size_t batch, size_t *taken)
{
    *taken = 0;
    for (size_t i = 0; i < p->prog->ntables; i++) {
        struct applying a = { p, &p->tv[i] };
        if (!p->inputs[i])
            continue;
        input_begin_step(p->inputs[i]);
        ssize_t n = input_poll(p->inputs[i], batch, apply, &a);
        if (n < 0)
            return (int)n;
        *taken += (size_t)n;
    }
    return 0;
}

static int step_once(struct pipeline *p, size_t batch)
{
    size_t taken;
    int rc = take_inputs(p, batch, &taken);
    if (rc || (!taken && p->step)) /* idle: what the last step wrote is in the files */
        return rc ? rc : settle_outputs(p);
    p->step++; /* the first step comes out even without input: views without GROUP BY have a row */
    p->records += taken;
    rc = collect(p);
    if (rc == 0 && p->journal)
        rc = journal_step(p);
    if (rc == 0) { /* what the inputs gave is the step's now (durable with a journal) */
        commit_inputs(p);
        crash_point(p, "journal");
    }
    rc = rc ? rc : write_outputs(p, NULL);
    if (rc == 0 && p->crash_at[0]) /* a crash "after the output" comes after its write */
        rc = settle_outputs(p);
    if (rc == 0)
        crash_point(p, "output");
    return rc ? rc : taken > 0;
}

int pipeline_step(struct pipeline *p, size_t batch)
{
    if (p->standby)
        return err_set(-EROFS, "a standby takes no steps (POST /activate first)");
    if (p->failed)
        return err_set(-EIO, "an earlier step failed half done: restart the pipeline");
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

/* ---- exactly_once's replay ---- */

static const struct journal_input *input_named(const struct journal_entry *e, const char *name)
{
    for (size_t k = 0; k < e->nin; k++)
        if (!strcmp(e->in[k].name, name))
            return &e->in[k];
    return NULL;
}

static const struct journal_output *output_named(const struct journal_entry *e, const char *name)
{
    for (size_t k = 0; k < e->nout; k++)
        if (!strcmp(e->out[k].name, name))
            return &e->out[k];
    return NULL;
}

/* The journaled step's input again, checked against what it took then. */
static int replay_input(struct pipeline *p, size_t i, const struct journal_entry *e, size_t *taken)
{
    const char *name = p->prog->tables[i]->name;
    const struct journal_input *j = input_named(e, name);
    struct applying a = { p, &p->tv[i] };
    struct input_span s;
    if (!j)
        return err_set(-EBADMSG,
                       "the journal's step %llu has nothing of table %s (was the "
                       "program changed?)",
                       (unsigned long long)e->step, name);
    input_get_span(p->inputs[i], &s);
    if ((s.data != NULL) != (j->data != NULL))
        return err_set(-EBADMSG,
                       "the journal's step %llu has table %s as %s input (was the "
                       "program changed?)",
                       (unsigned long long)e->step, name, j->data ? "HTTP" : "file");
    if (s.to != j->from || s.to_line != j->from_line)
        return err_set(-EBADMSG,
                       "the journal's step %llu reads table %s from byte %llu, but the "
                       "input stands at byte %llu",
                       (unsigned long long)e->step, name, (unsigned long long)j->from,
                       (unsigned long long)s.to);
    s = (struct input_span){ j->from, j->from_line, j->to, j->to_line, 0, 0, j->data };
    int rc = input_replay(p->inputs[i], &s);
    ssize_t n = rc ? rc : input_poll(p->inputs[i], SIZE_MAX, apply, &a);
    input_replay_end(p->inputs[i]);
    if (n < 0)
        return (int)n;
    *taken += (size_t)n;
    input_get_span(p->inputs[i], &s);
    if (s.to != j->to || s.to_line != j->to_line || s.count != j->count || s.hash != j->hash)
        return err_set(-EBADMSG,
                       "replaying step %llu: table %s gave %llu changes up to byte %llu, "
                       "the journal says %llu up to byte %llu with another hash (was the "
                       "input file changed?)",
                       (unsigned long long)e->step, name, (unsigned long long)s.count,
                       (unsigned long long)s.to, (unsigned long long)j->count,
                       (unsigned long long)j->to);
    return 0;
}

/* The step's output checked against the journal; at[i] gets where it goes. */
static int replay_output(struct pipeline *p, size_t i, const struct journal_entry *e, uint64_t *at)
{
    const char *name = p->prog->views[i].name;
    const struct journal_output *j = output_named(e, name);
    uint64_t len, hash;
    if (!j)
        return err_set(-EBADMSG,
                       "the journal's step %llu has nothing of view %s (was the "
                       "program changed?)",
                       (unsigned long long)e->step, name);
    output_collected(p->outputs[i], &len, &hash);
    if (len != j->len || hash != j->hash)
        return err_set(-EBADMSG,
                       "replaying step %llu: view %s came out different (%llu bytes, "
                       "the journal says %llu)",
                       (unsigned long long)e->step, name, (unsigned long long)len,
                       (unsigned long long)j->len);
    if (j->before != p->expect[i])
        return err_set(-EBADMSG,
                       "the journal's step %llu writes view %s at byte %llu, but its "
                       "output ends at byte %llu before it",
                       (unsigned long long)e->step, name, (unsigned long long)j->before,
                       (unsigned long long)p->expect[i]);
    at[i] = j->before;
    p->expect[i] = j->before + j->len;
    return 0;
}

static int replay_step(void *arg, const struct journal_entry *e)
{
    struct pipeline *p = arg;
    size_t taken = 0;
    int rc = 0;
    uint64_t *at = calloc(p->prog->nviews + 1, sizeof *at);
    for (size_t i = 0; at && rc == 0 && i < p->prog->ntables; i++)
        rc = p->inputs[i] ? replay_input(p, i, e, &taken) : 0;
    if (!at || rc) {
        free(at);
        return at ? rc : -ENOMEM;
    }
    p->step = e->step;
    p->records += taken;
    commit_inputs(p);
    rc = collect(p);
    for (size_t i = 0; rc == 0 && i < p->prog->nviews; i++)
        rc = p->outputs[i] ? replay_output(p, i, e, at) : 0;
    rc = rc ? rc : write_outputs(p, at);
    free(at);
    p->replayed += rc == 0;
    return rc;
}

/* Each output as the checkpoint left it, then the journal's steps after it
 * again: whatever of their output the files miss is written; then nothing
 * may be in a file that the journal does not account for. */
static int replay(struct pipeline *p)
{
    for (size_t i = 0; i < p->prog->nviews; i++)
        if (p->outputs[i] && output_length(p->outputs[i]) < p->expect[i])
            return err_set(-EIO,
                           "view %s: its output is %llu bytes, shorter than the %llu of "
                           "checkpoint %s (output was lost)",
                           p->prog->views[i].name, (unsigned long long)output_length(p->outputs[i]),
                           (unsigned long long)p->expect[i], p->resumed_from);
    int rc = journal_replay(p->journal, p->step, replay_step, p);
    if (rc)
        return err_wrap(rc, "replaying the journal");
    for (size_t i = 0; i < p->prog->nviews; i++)
        if (p->outputs[i] && output_length(p->outputs[i]) > p->expect[i])
            return err_set(-EBADMSG,
                           "view %s: its output holds %llu bytes beyond what the "
                           "checkpoint and the journal account for: it was written by something "
                           "else (move it away, or start from the checkpoint that wrote it)",
                           p->prog->views[i].name,
                           (unsigned long long)(output_length(p->outputs[i]) - p->expect[i]));
    return 0;
}

/* ---- standby ---- */

int pipeline_standby_poll(struct pipeline *p)
{
    char id[CKPT_ID_LEN];
    if (!p->standby)
        return 0;
    int rc = ckpt_refresh(p->ckpt);
    rc = rc ? rc : ckpt_latest(p->ckpt, id);
    if (rc == -ENOENT || (rc == 0 && !strcmp(id, p->resumed_from)))
        return 0;
    rc = rc ? rc : load(p, id);
    return rc ? rc : 1;
}

int pipeline_activate(struct pipeline *p)
{
    if (!p->standby)
        return err_set(-EINVAL, "this pipeline is not a standby");
    int rc = ckpt_writable(p->ckpt);
    if (rc == -EROFS)
        return err_set(-EROFS,
                       "%s is read-only: promote its mount first (ckptctl promote "
                       "MOUNTPOINT), then activate",
                       p->storage);
    if (rc)
        return rc;
    if ((rc = pipeline_standby_poll(p)) < 0) /* the newest checkpoint, promotion's own too */
        return rc;
    p->standby = 0;
    rc = start_active(p);
    if (rc)
        p->failed = 1; /* half active: no step, no checkpoint */
    return rc;
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
    *st = (struct pipeline_stats){
        .step = p->step, .records = p->records, .standby = p->standby, .replayed = p->replayed
    };
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
