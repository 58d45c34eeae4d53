/*
 * The SQL front end (dialect in sql.h): a lexer into a token array, a
 * recursive-descent parser, and a checker that resolves names and types.
 * Every error names the line and column of the token it is about.
 */
#include "sql.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/err.h"

/* ---- tokens ---- */

enum tok { K_END, K_NAME, K_QUOTED, K_NUMBER, K_STRING, K_PUNCT };

struct token {
    enum tok kind;
    char *text; /* names lower-cased, strings unquoted */
    int line, col;
};

struct parser {
    struct token *t;
    size_t n, cap, at;
    const char *src;
};

static int fail_at(int line, int col, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail_at(int line, int col, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return err_set(-EINVAL, "line %d, column %d: %s", line, col, what);
}

static int add_token(struct parser *p, enum tok kind, const char *s, size_t len, int line, int col)
{
    if (array_grow((void **)&p->t, &p->cap, p->n, sizeof *p->t))
        return -ENOMEM;
    char *text = strndup(s, len);
    if (!text)
        return -ENOMEM;
    for (char *c = text; kind == K_NAME && *c; c++)
        *c = (char)tolower((unsigned char)*c);
    p->t[p->n++] = (struct token){ kind, text, line, col };
    return 0;
}

/* A quoted run ('string' or "name"), the quote doubled inside it. */
static int quoted(struct parser *p, const char **s, enum tok kind, int line, int col)
{
    char q = **s;
    struct buf b = { 0 };
    const char *c = *s + 1;
    int rc = 0;
    for (; rc == 0; c++) {
        if (!*c) {
            buf_free(&b);
            return fail_at(line, col, "%s not closed", q == '\'' ? "string" : "quoted name");
        }
        if (*c == q && c[1] != q)
            break;
        rc = buf_append(&b, c, 1);
        c += *c == q;
    }
    if (rc == 0)
        rc = add_token(p, kind, b.data ? (char *)b.data : "", b.len, line, col);
    buf_free(&b);
    *s = c + 1;
    return rc;
}

static size_t punct_len(const char *s)
{
    static const char *const two[] = { "<>", "!=", "<=", ">=" };
    for (size_t i = 0; i < 4; i++)
        if (!strncmp(s, two[i], 2))
            return 2;
    return strchr("(),;*=<>+-/.", *s) ? 1 : 0;
}

static int lex(struct parser *p, const char *s)
{
    int line = 1;
    const char *bol = s;
    int rc = 0;
    while (rc == 0 && *s) {
        int col = (int)(s - bol) + 1;
        size_t n = 0;
        if (*s == '\n') {
            line++, s++, bol = s;
        } else if (isspace((unsigned char)*s)) {
            s++;
        } else if (s[0] == '-' && s[1] == '-') {
            while (*s && *s != '\n')
                s++;
        } else if (*s == '\'' || *s == '"') {
            rc = quoted(p, &s, *s == '\'' ? K_STRING : K_QUOTED, line, col);
        } else if (isalpha((unsigned char)*s) || *s == '_') {
            while (isalnum((unsigned char)s[n]) || s[n] == '_')
                n++;
            rc = add_token(p, K_NAME, s, n, line, col);
            s += n;
        } else if (isdigit((unsigned char)*s) || (*s == '.' && isdigit((unsigned char)s[1]))) {
            while (isalnum((unsigned char)s[n]) || s[n] == '.' ||
                   ((s[n] == '+' || s[n] == '-') && (s[n - 1] == 'e' || s[n - 1] == 'E')))
                n++;
            rc = add_token(p, K_NUMBER, s, n, line, col);
            s += n;
        } else if ((n = punct_len(s)) != 0) {
            rc = add_token(p, K_PUNCT, s, n, line, col);
            s += n;
        } else {
            rc = fail_at(line, col, "unexpected character '%c'", *s);
        }
    }
    int col = (int)(s - bol) + 1;
    return rc ? rc : add_token(p, K_END, "", 0, line, col);
}

/* ---- parsing helpers ---- */

static struct token *peek(struct parser *p)
{
    return &p->t[p->at];
}

static const char *shown(const struct token *t)
{
    return t->kind == K_END ? "the end" : t->text;
}

static int is_word(const struct token *t, const char *w)
{
    return t->kind == K_NAME && !strcmp(t->text, w);
}

static int is_punct(const struct token *t, const char *s)
{
    return t->kind == K_PUNCT && !strcmp(t->text, s);
}

static int accept_word(struct parser *p, const char *w)
{
    if (!is_word(peek(p), w))
        return 0;
    p->at++;
    return 1;
}

static int accept_punct(struct parser *p, const char *s)
{
    if (!is_punct(peek(p), s))
        return 0;
    p->at++;
    return 1;
}

static int expected(struct parser *p, const char *what)
{
    struct token *t = peek(p);
    return fail_at(t->line, t->col, "expected %s, found '%s'", what, shown(t));
}

static int want_word(struct parser *p, const char *w)
{
    return accept_word(p, w) ? 0 : expected(p, w);
}

static int want_punct(struct parser *p, const char *s)
{
    char what[8];
    snprintf(what, sizeof what, "'%s'", s);
    return accept_punct(p, s) ? 0 : expected(p, what);
}

static const char *const reserved[] = { "select", "from",   "where", "group", "by",   "as",
                                        "and",    "or",     "not",   "is",    "null", "true",
                                        "false",  "create", "table", "view",  "with", NULL };

static int is_reserved(const char *w)
{
    for (size_t i = 0; reserved[i]; i++)
        if (!strcmp(w, reserved[i]))
            return 1;
    return 0;
}

/* A name: an identifier that is not a keyword, or a "quoted" one. */
static int want_name(struct parser *p, char **out, const char *what)
{
    struct token *t = peek(p);
    if (t->kind != K_QUOTED && (t->kind != K_NAME || is_reserved(t->text)))
        return expected(p, what);
    p->at++;
    return (*out = strdup(t->text)) ? 0 : -ENOMEM;
}

/* ---- expressions ---- */

static void expr_free(struct expr *e)
{
    if (!e)
        return;
    expr_free(e->a);
    expr_free(e->b);
    if (e->k.t == T_VARCHAR) /* a string constant, or a name not resolved yet */
        free((char *)e->k.s);
    free(e);
}

static struct expr *node(enum op op, const struct token *at, struct expr *a, struct expr *b)
{
    struct expr *e = calloc(1, sizeof *e);
    if (!e) {
        expr_free(a);
        expr_free(b);
        return NULL;
    }
    *e = (struct expr){ .op = op, .a = a, .b = b, .line = at->line, .col = at->col };
    return e;
}

/* Column references are kept by name until checked: k holds the name. */
#define E_NAME E_COLUMN

static int parse_expr(struct parser *p, struct expr **out);

static int literal(const struct token *t, struct expr *e)
{
    if (t->kind == K_STRING || t->kind == K_QUOTED || t->kind == K_NAME) {
        if (strlen(t->text) > VALUE_MAX_STRING)
            return fail_at(t->line, t->col, "a string longer than %u bytes", VALUE_MAX_STRING);
        char *s = strdup(t->text);
        if (!s)
            return -ENOMEM;
        e->k = (struct value){ .t = T_VARCHAR, .s = s, .len = (uint32_t)strlen(s) };
        return 0;
    }
    int dotted = strpbrk(t->text, ".eE") != NULL;
    if (value_parse(dotted ? T_DOUBLE : T_BIGINT, t->text, strlen(t->text), &e->k))
        return fail_at(t->line, t->col, "'%s' is not a number", t->text);
    return 0;
}

static int primary(struct parser *p, struct expr **out)
{
    struct token *t = peek(p);
    int rc = 0;
    if (accept_punct(p, "(")) {
        rc = parse_expr(p, out);
        return rc ? rc : want_punct(p, ")");
    }
    struct expr *e = node(E_CONST, t, NULL, NULL);
    if (!e)
        return -ENOMEM;
    *out = e;
    if (t->kind == K_NUMBER || t->kind == K_STRING) {
        p->at++;
        return literal(t, e);
    }
    if (accept_word(p, "null"))
        return 0;
    if (accept_word(p, "true") || accept_word(p, "false")) {
        e->k = (struct value){ .t = T_BOOLEAN, .b = t->text[0] == 't' };
        return 0;
    }
    if (is_word(t, "timestamp") && p->t[p->at + 1].kind == K_STRING) {
        struct token *s = &p->t[p->at + 1];
        p->at += 2;
        if (value_parse(T_TIMESTAMP, s->text, strlen(s->text), &e->k))
            return fail_at(s->line, s->col, "'%s' is not a timestamp (YYYY-MM-DD HH:MM:SS)",
                           s->text);
        return 0;
    }
    if (t->kind == K_QUOTED || (t->kind == K_NAME && !is_reserved(t->text))) {
        p->at++;
        e->op = E_NAME;
        return literal(t, e); /* the name, resolved by the checker */
    }
    return expected(p, "an expression");
}

static int unary(struct parser *p, struct expr **out)
{
    struct token *t = peek(p);
    if (!accept_punct(p, "-"))
        return primary(p, out);
    struct expr *a = NULL;
    int rc = unary(p, &a);
    if (rc == 0 && !(*out = node(E_NEG, t, a, NULL)))
        rc = -ENOMEM;
    return rc;
}

struct binop {
    const char *text;
    enum op op;
};

/* A left-associative level: next (op next)*, ops from table (NULL-ended). */
static int level(struct parser *p, struct expr **out, int (*next)(struct parser *, struct expr **),
                 const struct binop *ops, int words)
{
    int rc = next(p, out);
    for (;;) {
        struct token *t = peek(p);
        const struct binop *o = ops;
        while (rc == 0 && o->text && !(words ? is_word(t, o->text) : is_punct(t, o->text)))
            o++;
        if (rc || !o->text)
            return rc;
        p->at++;
        struct expr *b = NULL;
        if ((rc = next(p, &b)) != 0)
            return rc;
        if (!(*out = node(o->op, t, *out, b)))
            return -ENOMEM;
    }
}

static int product(struct parser *p, struct expr **out)
{
    static const struct binop ops[] = { { "*", E_MUL }, { "/", E_DIV }, { NULL, 0 } };
    return level(p, out, unary, ops, 0);
}

static int sum(struct parser *p, struct expr **out)
{
    static const struct binop ops[] = { { "+", E_ADD }, { "-", E_SUB }, { NULL, 0 } };
    return level(p, out, product, ops, 0);
}

static int comparison(struct parser *p, struct expr **out)
{
    static const struct binop ops[] = { { "=", E_EQ },  { "<>", E_NE }, { "!=", E_NE },
                                        { "<", E_LT },  { "<=", E_LE }, { ">", E_GT },
                                        { ">=", E_GE }, { NULL, 0 } };
    int rc = level(p, out, sum, ops, 0);
    struct token *t = peek(p);
    if (rc == 0 && accept_word(p, "is")) {
        enum op op = accept_word(p, "not") ? E_IS_NOT_NULL : E_IS_NULL;
        if ((rc = want_word(p, "null")) == 0 && !(*out = node(op, t, *out, NULL)))
            rc = -ENOMEM;
    }
    return rc;
}

static int negation(struct parser *p, struct expr **out)
{
    struct token *t = peek(p);
    if (!accept_word(p, "not"))
        return comparison(p, out);
    struct expr *a = NULL;
    int rc = negation(p, &a);
    if (rc == 0 && !(*out = node(E_NOT, t, a, NULL)))
        rc = -ENOMEM;
    return rc;
}

static int conjunction(struct parser *p, struct expr **out)
{
    static const struct binop ops[] = { { "and", E_AND }, { NULL, 0 } };
    return level(p, out, negation, ops, 1);
}

static int parse_expr(struct parser *p, struct expr **out)
{
    static const struct binop ops[] = { { "or", E_OR }, { NULL, 0 } };
    *out = NULL;
    return level(p, out, conjunction, ops, 1);
}

/* ---- checking: names and types ---- */

static int is_num(enum type t)
{
    return t == T_BIGINT || t == T_DOUBLE;
}

/* Whether values of types a and b compare (NULL compares with anything). */
static int comparable(enum type a, enum type b)
{
    return a == T_NULL || b == T_NULL || a == b || (is_num(a) && is_num(b));
}

static int check_operand(const struct expr *e, int ok, const char *what)
{
    return ok ? 0
              : fail_at(e->line, e->col, "%s, not %s", what,
                        e->type == T_NULL ? "NULL" : type_name(e->type));
}

static int check_expr(struct expr *e, const struct table *t);

static int resolve(struct expr *e, const struct table *t)
{
    for (size_t i = 0; i < t->ncols; i++)
        if (!strcmp(t->cols[i].name, e->k.s)) {
            free((char *)e->k.s);
            e->k = (struct value){ .t = T_NULL };
            e->column = i;
            e->type = t->cols[i].type;
            return 0;
        }
    return fail_at(e->line, e->col, "%s has no column %s", t->name, e->k.s);
}

static int check_binary(struct expr *e)
{
    enum type a = e->a->type, b = e->b->type;
    int rc = 0;
    switch (e->op) {
    case E_ADD:
    case E_SUB:
    case E_MUL:
    case E_DIV:
        rc = check_operand(e->a, is_num(a) || a == T_NULL, "arithmetic needs numbers");
        if (rc == 0)
            rc = check_operand(e->b, is_num(b) || b == T_NULL, "arithmetic needs numbers");
        e->type = a == T_DOUBLE || b == T_DOUBLE ? T_DOUBLE : T_BIGINT;
        return rc;
    case E_AND:
    case E_OR:
        rc = check_operand(e->a, a == T_BOOLEAN || a == T_NULL, "AND and OR need BOOLEAN");
        if (rc == 0)
            rc = check_operand(e->b, b == T_BOOLEAN || b == T_NULL, "AND and OR need BOOLEAN");
        e->type = T_BOOLEAN;
        return rc;
    default: /* comparisons */
        e->type = T_BOOLEAN;
        if (comparable(a, b))
            return 0;
        return fail_at(e->line, e->col, "cannot compare %s with %s", type_name(a), type_name(b));
    }
}

static int check_expr(struct expr *e, const struct table *t)
{
    int rc = 0;
    if (e->op == E_CONST) {
        e->type = e->k.t;
        return 0;
    }
    if (e->op == E_NAME && !e->a)
        return resolve(e, t);
    if (e->a && (rc = check_expr(e->a, t)) != 0)
        return rc;
    if (e->b && (rc = check_expr(e->b, t)) != 0)
        return rc;
    switch (e->op) {
    case E_NEG:
        e->type = e->a->type == T_NULL ? T_BIGINT : e->a->type;
        return check_operand(e->a, is_num(e->a->type) || e->a->type == T_NULL,
                             "minus needs a number");
    case E_NOT:
        e->type = T_BOOLEAN;
        return check_operand(e->a, e->a->type == T_BOOLEAN || e->a->type == T_NULL,
                             "NOT needs BOOLEAN");
    case E_IS_NULL:
    case E_IS_NOT_NULL:
        e->type = T_BOOLEAN;
        return 0;
    default:
        return check_binary(e);
    }
}

/* ---- statements ---- */

static int parse_type(struct parser *p, enum type *out)
{
    static const struct {
        const char *word;
        enum type t;
    } types[] = { { "bigint", T_BIGINT },   { "int", T_BIGINT },   { "integer", T_BIGINT },
                  { "double", T_DOUBLE },   { "float", T_DOUBLE }, { "real", T_DOUBLE },
                  { "varchar", T_VARCHAR }, { "text", T_VARCHAR }, { "string", T_VARCHAR },
                  { "boolean", T_BOOLEAN }, { "bool", T_BOOLEAN }, { "timestamp", T_TIMESTAMP } };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (accept_word(p, types[i].word)) {
            *out = types[i].t;
            if (accept_punct(p, "(")) { /* VARCHAR(255), DOUBLE PRECISION-style sizes: ignored */
                if (peek(p)->kind != K_NUMBER)
                    return expected(p, "a length");
                p->at++;
                return want_punct(p, ")");
            }
            return 0;
        }
    return expected(p, "a type (BIGINT, DOUBLE, VARCHAR, BOOLEAN or TIMESTAMP)");
}

static int parse_options(struct parser *p, struct sql_option **opts, size_t *n)
{
    size_t cap = 0;
    int rc = 0;
    if (!accept_word(p, "with"))
        return 0;
    if ((rc = want_punct(p, "(")) != 0)
        return rc;
    do {
        struct token *k = peek(p), *v;
        if (k->kind != K_STRING)
            return expected(p, "an option name in quotes");
        p->at++;
        if ((rc = want_punct(p, "=")) != 0)
            return rc;
        if ((v = peek(p))->kind != K_STRING)
            return expected(p, "an option value in quotes");
        p->at++;
        if (array_grow((void **)opts, &cap, *n, sizeof **opts))
            return -ENOMEM;
        (*opts)[(*n)++] = (struct sql_option){ strdup(k->text), strdup(v->text) };
    } while (accept_punct(p, ","));
    return want_punct(p, ")");
}

static int create_table(struct parser *p, struct program *prog)
{
    size_t cap = prog->ntables;
    struct table *t = calloc(1, sizeof *t);
    if (!t || array_grow((void **)&prog->tables, &cap, prog->ntables, sizeof *prog->tables)) {
        free(t);
        return -ENOMEM;
    }
    prog->tables[prog->ntables++] = t; /* views point at tables: each has its own block */
    struct token *at = peek(p);
    size_t ccap = 0;
    int rc = want_name(p, &t->name, "a table name");
    if (rc == 0 && prog->ntables > 1 && program_table(prog, t->name) != t)
        rc = fail_at(at->line, at->col, "table %s is defined twice", t->name);
    if (rc == 0)
        rc = want_punct(p, "(");
    while (rc == 0) {
        struct column c = { 0 };
        struct token *ct = peek(p);
        rc = want_name(p, &c.name, "a column name");
        if (rc == 0)
            rc = parse_type(p, &c.type);
        for (size_t i = 0; rc == 0 && i < t->ncols; i++)
            if (!strcmp(t->cols[i].name, c.name))
                rc = fail_at(ct->line, ct->col, "column %s is defined twice", c.name);
        if (rc == 0 && array_grow((void **)&t->cols, &ccap, t->ncols, sizeof *t->cols))
            rc = -ENOMEM;
        if (rc) {
            free(c.name);
            return rc;
        }
        t->cols[t->ncols++] = c;
        if (!accept_punct(p, ","))
            break;
    }
    if (rc == 0)
        rc = want_punct(p, ")");
    return rc ? rc : parse_options(p, &t->opts, &t->nopts);
}

static const char *const agg_words[] = { "count", "count", "sum", "min", "max", "avg" };

/* An aggregate call, if the next tokens are one: 1, 0 if not, or an error. */
static int aggregate(struct parser *p, struct item *it)
{
    struct token *t = peek(p);
    int k = -1;
    for (int i = 1; i < 6 && k < 0; i++)
        if (is_word(t, agg_words[i]) && is_punct(&p->t[p->at + 1], "("))
            k = i;
    if (k < 0)
        return 0;
    p->at += 2;
    it->is_agg = 1;
    it->agg = (enum agg)k;
    int rc = 0;
    if (k == A_COUNT && accept_punct(p, "*"))
        it->agg = A_COUNT_STAR;
    else
        rc = parse_expr(p, &it->arg);
    if (rc == 0)
        rc = want_punct(p, ")");
    if (rc == 0 && !it->name) {
        char name[32];
        snprintf(name, sizeof name, "%s", it->agg == A_COUNT_STAR ? "count" : agg_words[k]);
        it->name = strdup(name);
    }
    return rc ? rc : 1;
}

static int select_item(struct parser *p, struct view *v, size_t *cap)
{
    if (array_grow((void **)&v->items, cap, v->nitems, sizeof *v->items))
        return -ENOMEM;
    struct item *it = &v->items[v->nitems++];
    *it = (struct item){ 0 };
    int rc = aggregate(p, it);
    if (rc == 0) { /* a column */
        it->arg = NULL;
        rc = parse_expr(p, &it->arg);
        if (rc == 0 && (it->arg->op != E_NAME || it->arg->a))
            rc = fail_at(it->arg->line, it->arg->col,
                         "a view's column is a GROUP BY column or an aggregate");
        if (rc == 0)
            it->name = strdup(it->arg->k.s);
    }
    if (rc < 0)
        return rc;
    if (accept_word(p, "as")) {
        free(it->name);
        it->name = NULL;
        return want_name(p, &it->name, "a column name after AS");
    }
    return 0;
}

/* A non-aggregate item is a GROUP BY column: its index in the list. */
static int check_item(struct view *v, struct item *it)
{
    if (it->is_agg) {
        int rc = it->arg ? check_expr(it->arg, v->from) : 0;
        enum type a = it->arg ? it->arg->type : T_NULL;
        if (rc)
            return rc;
        if ((it->agg == A_SUM || it->agg == A_AVG) && !is_num(a))
            return fail_at(it->arg->line, it->arg->col, "%s needs a number, not %s",
                           it->agg == A_SUM ? "SUM" : "AVG", type_name(a));
        it->type = it->agg <= A_COUNT ? T_BIGINT : it->agg == A_AVG ? T_DOUBLE : a;
        return 0;
    }
    struct expr *e = it->arg;
    int rc = check_expr(e, v->from);
    for (size_t g = 0; rc == 0 && g < v->ngroup; g++)
        if (v->group[g] == e->column) {
            it->group = g;
            it->type = e->type;
            return 0;
        }
    return rc ? rc
              : fail_at(e->line, e->col, "%s is neither in GROUP BY nor aggregated",
                        v->from->cols[e->column].name);
}

static int group_by(struct parser *p, struct view *v)
{
    size_t cap = 0;
    int rc = 0;
    if (!accept_word(p, "group"))
        return 0;
    if ((rc = want_word(p, "by")) != 0)
        return rc;
    do {
        struct expr *e = NULL;
        rc = primary(p, &e);
        if (rc == 0 && (e->op != E_NAME || e->a))
            rc = fail_at(e->line, e->col, "GROUP BY takes column names");
        if (rc == 0)
            rc = resolve(e, v->from);
        if (rc == 0 && array_grow((void **)&v->group, &cap, v->ngroup, sizeof *v->group))
            rc = -ENOMEM;
        if (rc == 0)
            v->group[v->ngroup++] = e->column;
        expr_free(e);
    } while (rc == 0 && accept_punct(p, ","));
    return rc;
}

static int select_body(struct parser *p, struct program *prog, struct view *v)
{
    size_t cap = 0;
    int rc = want_word(p, "select");
    do
        rc = rc ? rc : select_item(p, v, &cap);
    while (rc == 0 && accept_punct(p, ","));
    if (rc == 0)
        rc = want_word(p, "from");
    struct token *ft = peek(p);
    char *from = NULL;
    if (rc == 0)
        rc = want_name(p, &from, "a table name");
    if (rc == 0 && !(v->from = program_table(prog, from)))
        rc = fail_at(ft->line, ft->col, "there is no table %s", from);
    free(from);
    if (rc == 0 && accept_word(p, "where")) {
        rc = parse_expr(p, &v->where);
        if (rc == 0)
            rc = check_expr(v->where, v->from);
        if (rc == 0 && v->where->type != T_BOOLEAN && v->where->type != T_NULL)
            rc = fail_at(v->where->line, v->where->col, "WHERE needs BOOLEAN, not %s",
                         type_name(v->where->type));
    }
    if (rc == 0)
        rc = group_by(p, v);
    for (size_t i = 0; rc == 0 && i < v->nitems; i++)
        rc = check_item(v, &v->items[i]);
    for (size_t i = 0; rc == 0 && i < v->nitems; i++)
        for (size_t j = 0; rc == 0 && j < i; j++)
            if (!strcmp(v->items[i].name, v->items[j].name))
                rc = err_set(-EINVAL, "view %s has two columns called %s: name one with AS",
                             v->name, v->items[i].name);
    return rc;
}

/* Offset in the source of token i (for the SELECT's text). */
static const char *source_at(const struct parser *p, const struct token *t)
{
    const char *s = p->src;
    for (int line = 1; line < t->line && *s; s++)
        line += *s == '\n';
    return s + t->col - 1;
}

static int create_view(struct parser *p, struct program *prog)
{
    size_t cap = prog->nviews;
    if (array_grow((void **)&prog->views, &cap, prog->nviews, sizeof *prog->views))
        return -ENOMEM;
    struct view *v = &prog->views[prog->nviews++];
    *v = (struct view){ 0 };
    struct token *at = peek(p);
    int rc = want_name(p, &v->name, "a view name");
    for (size_t i = 0; rc == 0 && i + 1 < prog->nviews; i++)
        if (!strcmp(prog->views[i].name, v->name))
            rc = fail_at(at->line, at->col, "view %s is defined twice", v->name);
    if (rc == 0)
        rc = parse_options(p, &v->opts, &v->nopts);
    if (rc == 0)
        rc = want_word(p, "as");
    const char *start = rc ? NULL : source_at(p, peek(p));
    if (rc == 0)
        rc = select_body(p, prog, v);
    if (rc == 0) {
        const char *end = peek(p)->kind == K_END ? start + strlen(start) : source_at(p, peek(p));
        v->sql = strndup(start, (size_t)(end - start));
        rc = v->sql ? 0 : -ENOMEM;
    }
    return rc;
}

static int statement(struct parser *p, struct program *prog)
{
    int rc = want_word(p, "create");
    if (rc)
        return rc;
    if (accept_word(p, "table"))
        return create_table(p, prog);
    if (accept_word(p, "view"))
        return create_view(p, prog);
    return expected(p, "TABLE or VIEW");
}

int program_parse(const char *text, struct program **out)
{
    struct parser p = { .src = text };
    struct program *prog = calloc(1, sizeof *prog);
    int rc = prog ? lex(&p, text) : -ENOMEM;
    while (rc == 0 && peek(&p)->kind != K_END) {
        rc = statement(&p, prog);
        if (rc == 0 && !accept_punct(&p, ";") && peek(&p)->kind != K_END)
            rc = expected(&p, "';'");
    }
    if (rc == 0 && prog->ntables == 0)
        rc = err_set(-EINVAL, "line 1, column 1: the program has no CREATE TABLE");
    for (size_t i = 0; i < p.n; i++)
        free(p.t[i].text);
    free(p.t);
    if (rc) {
        program_free(prog);
        return rc;
    }
    *out = prog;
    return 0;
}

static void options_free(struct sql_option *o, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(o[i].key);
        free(o[i].value);
    }
    free(o);
}

void program_free(struct program *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->ntables; i++) {
        struct table *t = p->tables[i];
        for (size_t c = 0; c < t->ncols; c++)
            free(t->cols[c].name);
        free(t->cols);
        free(t->name);
        options_free(t->opts, t->nopts);
        free(t);
    }
    for (size_t i = 0; i < p->nviews; i++) {
        struct view *v = &p->views[i];
        for (size_t k = 0; k < v->nitems; k++) {
            free(v->items[k].name);
            expr_free(v->items[k].arg);
        }
        free(v->items);
        free(v->group);
        expr_free(v->where);
        free(v->name);
        free(v->sql);
        options_free(v->opts, v->nopts);
    }
    free(p->tables);
    free(p->views);
    free(p);
}

struct table *program_table(struct program *p, const char *name)
{
    for (size_t i = 0; i < p->ntables; i++)
        if (!strcmp(p->tables[i]->name, name))
            return p->tables[i];
    return NULL;
}

const char *option_get(const struct sql_option *opts, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(opts[i].key, key))
            return opts[i].value;
    return NULL;
}

int table_append_only(const struct table *t)
{
    const char *set = option_get(t->opts, t->nopts, "append_only");
    const char *conn = option_get(t->opts, t->nopts, "connector");
    const char *format = option_get(t->opts, t->nopts, "format");
    if (set)
        return !strcmp(set, "true");
    if (!conn) /* no input at all */
        return 1;
    int http = !strcmp(conn, "http");
    return format ? !strcmp(format, "csv") : !http; /* a file is csv by default, HTTP json */
}
