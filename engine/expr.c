/* Evaluating checked expressions (contract in sql.h). */
#include "sql.h"

#include <math.h>

static void arith(enum op op, const struct value *a, const struct value *b, enum type t,
                  struct value *out)
{
    out->t = t;
    if (t == T_BIGINT) {
        int64_t x = a->i, y = b->i, r = 0;
        switch (op) {
        case E_ADD:
            if (__builtin_add_overflow(x, y, &r))
                out->t = T_NULL;
            break;
        case E_SUB:
            if (__builtin_sub_overflow(x, y, &r))
                out->t = T_NULL;
            break;
        case E_MUL:
            if (__builtin_mul_overflow(x, y, &r))
                out->t = T_NULL;
            break;
        default:
            if (y == 0 || (x == INT64_MIN && y == -1))
                out->t = T_NULL;
            else
                r = x / y;
        }
        out->i = r;
        return;
    }
    double x = value_num(a), y = value_num(b);
    out->d = op == E_ADD ? x + y : op == E_SUB ? x - y : op == E_MUL ? x * y : x / y;
    if ((op == E_DIV && y == 0) || isnan(out->d)) /* inf - inf: no number */
        out->t = T_NULL;
}

static int compare(enum op op, int c)
{
    switch (op) {
    case E_EQ:
        return c == 0;
    case E_NE:
        return c != 0;
    case E_LT:
        return c < 0;
    case E_LE:
        return c <= 0;
    case E_GT:
        return c > 0;
    default:
        return c >= 0;
    }
}

/* AND and OR with NULL as "unknown". */
static void logic(enum op op, const struct value *a, const struct value *b, struct value *out)
{
    int decided = op == E_OR; /* TRUE decides an OR, FALSE an AND */
    if ((a->t == T_BOOLEAN && a->b == decided) || (b->t == T_BOOLEAN && b->b == decided))
        *out = (struct value){ .t = T_BOOLEAN, .b = decided };
    else if (a->t == T_NULL || b->t == T_NULL)
        out->t = T_NULL;
    else
        *out = (struct value){ .t = T_BOOLEAN, .b = !decided };
}

/* e's value: a constant or a column where it lies (WHERE's usual operands
 * cost no call and no copy), anything else evaluated into tmp. */
static const struct value *operand(const struct expr *e, const struct value *row, struct value *tmp)
{
    if (e->op == E_CONST)
        return &e->k;
    if (e->op == E_COLUMN)
        return &row[e->column];
    expr_eval(e, row, tmp);
    return tmp;
}

/* NOT and unary minus. */
static void negate(const struct value *a, struct value *out)
{
    *out = *a;
    if (a->t == T_BOOLEAN)
        out->b = !a->b;
    else if (a->t == T_BIGINT && a->i == INT64_MIN)
        out->t = T_NULL;
    else if (a->t == T_BIGINT)
        out->i = -a->i;
    else if (a->t == T_DOUBLE)
        out->d = -a->d;
}

void expr_eval(const struct expr *e, const struct value *row, struct value *out)
{
    struct value ta, tb;
    if (e->op == E_CONST || e->op == E_COLUMN) {
        *out = *operand(e, row, out);
        return;
    }
    const struct value *a = operand(e->a, row, &ta);
    if (e->op == E_IS_NULL || e->op == E_IS_NOT_NULL) {
        *out = (struct value){ .t = T_BOOLEAN, .b = (a->t == T_NULL) == (e->op == E_IS_NULL) };
        return;
    }
    if (e->op == E_NOT || e->op == E_NEG) {
        negate(a, out);
        return;
    }
    const struct value *b = operand(e->b, row, &tb);
    if (e->op == E_AND || e->op == E_OR)
        logic(e->op, a, b, out);
    else if (a->t == T_NULL || b->t == T_NULL)
        out->t = T_NULL;
    else if (e->op >= E_EQ)
        *out = (struct value){ .t = T_BOOLEAN, .b = compare(e->op, value_cmp(a, b)) };
    else
        arith(e->op, a, b, e->type, out);
}
