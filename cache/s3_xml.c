#include "s3_xml.h"

#include <errno.h>
#include <expat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Walks a document and calls leaf() with the path of each element
 * ("ListBucketResult/Contents/Key") and its text when the element ends. */
typedef void (*leaf_fn)(void *arg, const char *path, const char *text);

struct walker {
    XML_Parser parser;
    char path[512];
    struct buf text;
    leaf_fn leaf;
    void *arg;
    int oom;
    int too_deep; /* a path that does not fit: stop, rather than lose track of where we are */
};

static void XMLCALL on_start(void *u, const XML_Char *name, const XML_Char **attrs)
{
    struct walker *w = u;
    (void)attrs;
    const char *local = strrchr(name, ':'); /* tolerate prefixed names */
    local = local ? local + 1 : name;
    size_t len = strlen(w->path);
    int n = snprintf(w->path + len, sizeof w->path - len, "%s%s", len ? "/" : "", local);
    if (n < 0 || (size_t)n >= sizeof w->path - len) {
        w->too_deep = 1;
        XML_StopParser(w->parser, XML_FALSE);
        return;
    }
    buf_reset(&w->text);
}

static void XMLCALL on_end(void *u, const XML_Char *name)
{
    struct walker *w = u;
    (void)name;
    w->leaf(w->arg, w->path, w->text.data ? (const char *)w->text.data : "");
    buf_reset(&w->text);
    char *slash = strrchr(w->path, '/');
    *(slash ? slash : w->path) = '\0';
}

static void XMLCALL on_text(void *u, const XML_Char *s, int len)
{
    struct walker *w = u;
    if (buf_append(&w->text, s, (size_t)len))
        w->oom = 1;
}

static int walk(const char *doc, size_t len, leaf_fn leaf, void *arg)
{
    struct walker w = { .leaf = leaf, .arg = arg };
    /* Some servers send whitespace before the XML declaration to keep a slow
     * request alive; expat rejects it there. */
    while (len && (*doc == ' ' || *doc == '\t' || *doc == '\r' || *doc == '\n')) {
        doc++;
        len--;
    }
    if (len > INT32_MAX)
        return -EBADMSG;
    XML_Parser p = XML_ParserCreate(NULL);
    if (!p)
        return -ENOMEM;
    w.parser = p;
    XML_SetUserData(p, &w);
    XML_SetElementHandler(p, on_start, on_end);
    XML_SetCharacterDataHandler(p, on_text);
    int ok = XML_Parse(p, doc, (int)len, 1) == XML_STATUS_OK;
    XML_ParserFree(p);
    buf_free(&w.text);
    return w.oom ? -ENOMEM : ok && !w.too_deep ? 0 : -EBADMSG;
}

static void copy_text(char *dst, size_t n, const char *text)
{
    snprintf(dst, n, "%s", text);
}

/* ---- <Error> ---- */

struct error_ctx {
    struct s3_error *err;
    int seen;
};

static void error_leaf(void *arg, const char *path, const char *text)
{
    struct error_ctx *c = arg;
    if (strcmp(path, "Error") == 0)
        c->seen = 1;
    else if (strcmp(path, "Error/Code") == 0)
        copy_text(c->err->code, sizeof c->err->code, text);
    else if (strcmp(path, "Error/Message") == 0)
        copy_text(c->err->message, sizeof c->err->message, text);
    else if (strcmp(path, "Error/Key") == 0)
        copy_text(c->err->key, sizeof c->err->key, text);
}

int s3_xml_error(const char *doc, size_t len, struct s3_error *err)
{
    struct error_ctx c = { .err = err };
    memset(err, 0, sizeof *err);
    int rc = walk(doc, len, error_leaf, &c);
    return rc ? rc : c.seen ? 0 : -EBADMSG;
}

/* ---- a 200 answer that may still be a failure ---- */

struct result_ctx {
    const char *want;
    char root[64];
    struct s3_error *err;
};

static void result_leaf(void *arg, const char *path, const char *text)
{
    struct result_ctx *c = arg;
    if (!strchr(path, '/'))
        copy_text(c->root, sizeof c->root, path);
    else if (strcmp(path, "Error/Code") == 0)
        copy_text(c->err->code, sizeof c->err->code, text);
    else if (strcmp(path, "Error/Message") == 0)
        copy_text(c->err->message, sizeof c->err->message, text);
}

int s3_xml_result(const char *doc, size_t len, const char *root, struct s3_error *err)
{
    struct result_ctx c = { .want = root, .err = err };
    memset(err, 0, sizeof *err);
    int rc = walk(doc, len, result_leaf, &c);
    if (rc)
        return rc;
    if (strcmp(c.root, root) == 0)
        return 0;
    return strcmp(c.root, "Error") == 0 ? 1 : -EBADMSG;
}

/* ---- ListBucketResult ---- */

struct list_ctx {
    struct s3_list *l;
    struct s3_list_item cur;
    size_t cap;
    int seen, oom;
};

static int64_t parse_iso8601(const char *s)
{
    struct tm tm = { 0 };
    if (!strptime(s, "%Y-%m-%dT%H:%M:%S", &tm))
        return 0;
    return (int64_t)timegm(&tm);
}

static void list_push(struct list_ctx *c)
{
    struct s3_list *l = c->l;
    if (l->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 256;
        struct s3_list_item *v = realloc(l->items, cap * sizeof *v);
        if (!v) {
            c->oom = 1;
            free(c->cur.key);
            c->cur = (struct s3_list_item){ 0 };
            return;
        }
        l->items = v;
        c->cap = cap;
    }
    l->items[l->n++] = c->cur;
    c->cur = (struct s3_list_item){ 0 };
}

static void list_leaf(void *arg, const char *path, const char *text)
{
    struct list_ctx *c = arg;
    if (strncmp(path, "ListBucketResult", 16) != 0)
        return;
    c->seen = 1;
    path += 16;
    if (strcmp(path, "/Contents/Key") == 0) {
        free(c->cur.key);
        if (!(c->cur.key = strdup(text)))
            c->oom = 1;
    } else if (strcmp(path, "/Contents/Size") == 0) {
        c->cur.size = strtoull(text, NULL, 10);
    } else if (strcmp(path, "/Contents/LastModified") == 0) {
        c->cur.mtime = parse_iso8601(text);
    } else if (strcmp(path, "/Contents") == 0) {
        if (c->cur.key)
            list_push(c);
        c->cur = (struct s3_list_item){ 0 }; /* nothing of a keyless entry carries over */
    } else if (strcmp(path, "/IsTruncated") == 0) {
        c->l->truncated = strcmp(text, "true") == 0;
    } else if (strcmp(path, "/NextContinuationToken") == 0) {
        free(c->l->next_token);
        if (!(c->l->next_token = strdup(text)))
            c->oom = 1;
    }
}

int s3_xml_list(const char *doc, size_t len, struct s3_list *out)
{
    struct list_ctx c = { .l = out };
    memset(out, 0, sizeof *out);
    int rc = walk(doc, len, list_leaf, &c);
    free(c.cur.key);
    if (rc == 0 && c.oom)
        rc = -ENOMEM;
    if (rc == 0 && !c.seen)
        rc = -EBADMSG;
    /* A truncated page must say where to go on, or paging would loop. */
    if (rc == 0 && out->truncated && (!out->next_token || !out->next_token[0]))
        rc = -EBADMSG;
    return rc;
}

void s3_list_free(struct s3_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->items[i].key);
    free(l->items);
    free(l->next_token);
    memset(l, 0, sizeof *l);
}

/* ---- InitiateMultipartUploadResult ---- */

static void upload_leaf(void *arg, const char *path, const char *text)
{
    char **id = arg;
    if (strcmp(path, "InitiateMultipartUploadResult/UploadId") == 0 && !*id)
        *id = strdup(text);
}

int s3_xml_upload_id(const char *doc, size_t len, char **upload_id)
{
    *upload_id = NULL;
    int rc = walk(doc, len, upload_leaf, upload_id);
    if (rc == 0 && (!*upload_id || !**upload_id))
        rc = -EBADMSG;
    if (rc) {
        free(*upload_id);
        *upload_id = NULL;
    }
    return rc;
}

/* ---- DeleteResult ---- */

struct delete_ctx {
    struct s3_error *err;
    int found;
    int done; /* the first error is complete */
    int seen;
};

static void delete_leaf(void *arg, const char *path, const char *text)
{
    struct delete_ctx *c = arg;
    if (strncmp(path, "DeleteResult", 12) == 0)
        c->seen = 1;
    if (strncmp(path, "DeleteResult/Error", 18) != 0 || c->done)
        return;
    c->found = 1;
    path += 18;
    if (strcmp(path, "/Key") == 0)
        copy_text(c->err->key, sizeof c->err->key, text);
    else if (strcmp(path, "/Code") == 0)
        copy_text(c->err->code, sizeof c->err->code, text);
    else if (strcmp(path, "/Message") == 0)
        copy_text(c->err->message, sizeof c->err->message, text);
    else if (*path == '\0')
        c->done = 1;
}

int s3_xml_delete_result(const char *doc, size_t len, struct s3_error *err)
{
    struct delete_ctx c = { .err = err };
    memset(err, 0, sizeof *err);
    int rc = walk(doc, len, delete_leaf, &c);
    if (rc == 0 && !c.seen)
        rc = -EBADMSG;
    return rc ? rc : c.found;
}

/* ---- request bodies ---- */

static int append_escaped(struct buf *out, const char *s)
{
    int rc = 0;
    for (; rc == 0 && *s; s++) {
        switch (*s) {
        case '&':
            rc = buf_append(out, "&amp;", 5);
            break;
        case '<':
            rc = buf_append(out, "&lt;", 4);
            break;
        case '>':
            rc = buf_append(out, "&gt;", 4);
            break;
        case '"':
            rc = buf_append(out, "&quot;", 6);
            break;
        case '\'':
            rc = buf_append(out, "&apos;", 6);
            break;
        default:
            rc = buf_append(out, s, 1);
        }
    }
    return rc;
}

int s3_xml_delete_body(struct buf *out, const char *prefix, const char *const *keys, size_t n)
{
    int rc = buf_printf(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
                             "<Delete><Quiet>true</Quiet>");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = buf_printf(out, "<Object><Key>");
        if (rc == 0)
            rc = append_escaped(out, prefix);
        if (rc == 0)
            rc = append_escaped(out, keys[i]);
        if (rc == 0)
            rc = buf_printf(out, "</Key></Object>");
    }
    return rc ? rc : buf_printf(out, "</Delete>");
}

int s3_xml_complete_body(struct buf *out, char *const *etags, unsigned n)
{
    int rc = buf_printf(out, "<CompleteMultipartUpload>");
    for (unsigned i = 0; rc == 0 && i < n; i++) {
        rc = buf_printf(out, "<Part><PartNumber>%u</PartNumber><ETag>", i + 1);
        if (rc == 0)
            rc = append_escaped(out, etags[i]);
        if (rc == 0)
            rc = buf_printf(out, "</ETag></Part>");
    }
    return rc ? rc : buf_printf(out, "</CompleteMultipartUpload>");
}
