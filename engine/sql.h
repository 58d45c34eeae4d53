/*
 * The program: a SQL file of CREATE TABLE (inputs) and CREATE VIEW (outputs)
 * statements, parsed and checked into the structures below. The dialect:
 *
 *   CREATE TABLE name (col TYPE, ...) [WITH ('key' = 'value', ...)];
 *   CREATE VIEW name [WITH (...)] AS
 *       SELECT item, ... FROM table [WHERE expr] [GROUP BY col, ...];
 *
 * TYPE is BIGINT, DOUBLE, VARCHAR, BOOLEAN or TIMESTAMP (INT, INTEGER,
 * FLOAT, REAL, TEXT, STRING and BOOL name the same). An item is a GROUP BY
 * column or an aggregate, COUNT(*), COUNT(e), SUM(e), MIN(e), MAX(e) or
 * AVG(e), each with an optional AS name. Expressions: literals (numbers,
 * 'strings', TRUE, FALSE, NULL, TIMESTAMP '...'), columns, + - * /,
 * = <> != < <= > >=, AND, OR, NOT, IS [NOT] NULL, parentheses. Names are
 * case-insensitive (kept in lower case) unless "quoted"; -- starts a comment.
 *
 * Errors: -EINVAL with the thread's message "line L, column C: what".
 */
#ifndef CKPT_ENGINE_SQL_H
#define CKPT_ENGINE_SQL_H

#include <stddef.h>

#include "engine/value.h"

enum op {
    E_CONST,
    E_COLUMN,
    E_NEG,
    E_NOT,
    E_IS_NULL,
    E_IS_NOT_NULL,
    E_ADD,
    E_SUB,
    E_MUL,
    E_DIV,
    E_EQ,
    E_NE,
    E_LT,
    E_LE,
    E_GT,
    E_GE,
    E_AND,
    E_OR,
};

struct expr {
    enum op op;
    enum type type; /* of its result, once checked */
    struct value k; /* E_CONST (a VARCHAR's bytes owned by the program) */
    size_t column;  /* E_COLUMN: index in the table's row */
    struct expr *a, *b;
    int line, col;
};

enum agg { A_COUNT_STAR, A_COUNT, A_SUM, A_MIN, A_MAX, A_AVG };

/* An output column of a view: a GROUP BY column, or an aggregate of arg. */
struct item {
    char *name;
    int is_agg;
    enum agg agg;
    struct expr *arg; /* aggregates but COUNT(*) */
    size_t group;     /* not an aggregate: index in the view's GROUP BY list */
    enum type type;   /* of the output column */
};

struct sql_option {
    char *key, *value;
};

struct column {
    char *name;
    enum type type;
};

struct table {
    char *name;
    struct column *cols;
    size_t ncols;
    struct sql_option *opts;
    size_t nopts;
};

struct view {
    char *name;
    struct table *from;
    struct expr *where; /* or NULL */
    size_t *group;      /* GROUP BY: column indexes in from's rows */
    size_t ngroup;
    struct item *items;
    size_t nitems;
    struct sql_option *opts;
    size_t nopts;
    char *sql; /* the SELECT as written, for comparison with other engines */
};

struct program {
    struct table **tables;
    size_t ntables;
    struct view *views;
    size_t nviews;
};

/* Parses and checks text (what names it in messages, a file name). */
int program_parse(const char *text, struct program **out);
void program_free(struct program *p);

struct table *program_table(struct program *p, const char *name);
/* Whether t only ever gets inserts: 'append_only' = 'true', or, unless it
 * says 'false', a CSV input (a CSV line is an insert, there is no way to
 * say delete). Its views keep only the extreme for MIN and MAX, and a
 * delete for it is refused. */
int table_append_only(const struct table *t);

/* An option's value, or NULL. */
const char *option_get(const struct sql_option *opts, size_t n, const char *key);

/* Evaluates e over a row of its table: SQL's three-valued logic (a NULL in,
 * NULL out; FALSE AND NULL is FALSE, TRUE OR NULL is TRUE); division by zero
 * gives NULL. A VARCHAR result points into the row or the program. */
void expr_eval(const struct expr *e, const struct value *row, struct value *out);

#endif
