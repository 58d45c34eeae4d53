/*
 * Incremental view maintenance: a view (sql.h) kept up to date as rows of
 * its table are inserted and deleted, emitting only what changed. Changes
 * come in steps: ivm_change for each input change, then ivm_flush, which
 * emits, for every group the step touched, the deletion of its old output
 * row and the insertion of its new one (nothing for a group whose row did
 * not change). A view without GROUP BY has one row always, as in SQL.
 *
 * Aggregates under deletes: COUNT and SUM keep counts and sums; AVG is
 * their quotient; MIN and MAX keep every value of the group with its
 * multiplicity, so deleting the current extreme finds the next one.
 *
 * Errors: -ENOMEM; -EINVAL (with the thread's message) for a delete of a
 * row the view never saw.
 */
#ifndef CKPT_ENGINE_IVM_H
#define CKPT_ENGINE_IVM_H

#include <stdint.h>

#include "engine/sql.h"

struct ivm;

int ivm_new(const struct view *v, struct ivm **out);
void ivm_free(struct ivm *m);

/* A row of the view's table inserted (weight 1) or deleted (-1). */
int ivm_change(struct ivm *m, const struct value *row, int weight);

/* What a change needs of its row alone (whether it passes WHERE, its
 * group's hash), worked out apart: a pure function of the view, so that a
 * thread parsing rows ahead can do it (input_prep). prep is IVM_PREP_WIDTH
 * values. */
#define IVM_PREP_WIDTH 1
void ivm_prepare(const struct view *v, const struct value *row, struct value *prep);

/* ivm_change of a row and its ivm_prepare. */
int ivm_change_prepared(struct ivm *m, const struct value *row, const struct value *prep,
                        int weight);

/* One output change: a row of the view's nitems values, and +1 or -1. */
typedef int (*ivm_emit_fn)(void *arg, const struct value *row, int weight);

/* Ends a step: emits its changes (per group, a deletion before its
 * insertion). A non-zero return from emit stops the flush with it (the
 * step's changes are then lost: the caller fails the pipeline). */
int ivm_flush(struct ivm *m, ivm_emit_fn emit, void *arg);

/* The view's rows as of the last flush, in no particular order. */
int ivm_scan(struct ivm *m, ivm_emit_fn fn, void *arg);

/* Groups in the view: between steps, all of them; within one, groups of
 * inserts still queued (ivm.c, invariant 5) are not counted yet. */
uint64_t ivm_groups(const struct ivm *m);

/* ---- checkpoints ---- */

/* Appends a batch to out (format in ivm.c): every group (base), or the
 * changes since the last save (delta), and starts recording changes
 * afresh. Called between steps. If the batch is then lost, the next save
 * must be a base. */
int ivm_save(struct ivm *m, int base, struct buf *out);

/* Applies a batch (a base, then its deltas in order) to a new view. -EBADMSG
 * (said) if it is damaged or another view's. */
int ivm_load(struct ivm *m, const void *data, size_t len);

#endif
