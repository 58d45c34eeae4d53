/*
 * Single-thread throughput of the chunk codec and of its parts, in MB/s
 * (10^6 bytes per second) of plaintext, on 4 MiB chunks.
 *
 *   bench_codec [--json] [--seconds S] [--wall]
 *
 * Prints a markdown table, or with --json one JSON object per row. Each row
 * runs enough iterations to take about S seconds (default 0.5) and reports
 * the best of three runs, so a stray interruption does not set the number.
 *
 * Time is the thread's CPU time unless --wall is given: the figure wanted is
 * per core, and on a shared machine wall time mostly measures the neighbours.
 * The target is a full encode (name + compress + encrypt) at level 1 of at
 * least 400 MB/s per core on checkpoint-like data.
 */
#include "cache/codec.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <zstd.h>

#include "util/buf.h"
#include "util/err.h"

#define CHUNK      (4u << 20)
#define TARGET_MBS 400.0

struct bench {
    const uint8_t *data;
    struct codec *c;
    ZSTD_CCtx *z;
    EVP_CIPHER_CTX *x;
    uint8_t *dst;
    size_t dst_cap;
    struct buf out;
    struct buf enc; /* an encoded chunk, for decode rows */
    uint8_t name[CODEC_NAME_LEN];
};

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_codec: %s: %s\n", what, err_msg(rc));
    exit(1);
}

/* ---- data -------------------------------------------------------------- */

static uint64_t rng(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static void fill_random(uint8_t *p, size_t n)
{
    uint64_t s = 0x1234567;
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint64_t v = rng(&s);
        memcpy(p + i, &v, 8);
    }
}

/* What an optimizer or data-loader checkpoint tends to hold: records sorted
 * by id, small counters and shapes, a handful of repeated tensor and field
 * names, and one noisy value per record that does not compress. */
static void fill_checkpoint(uint8_t *p, size_t n)
{
    static const char *const names[] = {
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.mlp.gate_proj",
        "model.embed_tokens",
        "optimizer.state.exp_avg",
        "optimizer.state.exp_avg_sq",
        "lr_scheduler.step",
        "model.norm.weight",
        "rng_state",
    };
    uint64_t s = 42, id = 1000;
    size_t i = 0;
    while (i < n) {
        uint8_t rec[64];
        uint64_t r = rng(&s);
        const char *name = names[r % 8];
        size_t len = strlen(name) < 32 ? strlen(name) : 32;
        id += 1 + (r >> 8) % 4;
        uint32_t small = (uint32_t)(r >> 16) % 100;
        uint16_t shape[2] = { (uint16_t)(1 << ((r >> 24) % 12)), 4096 };
        uint32_t noise = (uint32_t)(rng(&s) >> 32);
        size_t k = 0;
        memcpy(rec + k, &id, 8), k += 8;
        memcpy(rec + k, &small, 4), k += 4;
        memcpy(rec + k, shape, 4), k += 4;
        memcpy(rec + k, &noise, 4), k += 4;
        rec[k++] = (uint8_t)len;
        memcpy(rec + k, name, len), k += len;
        for (size_t j = 0; j < k && i < n; j++)
            p[i++] = rec[j];
    }
}

/* ---- operations --------------------------------------------------------- */

static void op_name(struct bench *b)
{
    codec_name(b->c, b->data, CHUNK, b->name);
}

static void op_zstd(struct bench *b)
{
    size_t r = ZSTD_compress2(b->z, b->dst, b->dst_cap, b->data, CHUNK);
    if (ZSTD_isError(r))
        die(ZSTD_getErrorName(r), -EIO);
}

static void op_gcm(struct bench *b)
{
    static const uint8_t nonce[12];
    uint8_t tag[16];
    int l;
    if (EVP_EncryptInit_ex2(b->x, NULL, NULL, nonce, NULL) != 1 ||
        EVP_EncryptUpdate(b->x, b->dst, &l, b->data, CHUNK) != 1 ||
        EVP_EncryptFinal_ex(b->x, b->dst + CHUNK, &l) != 1 ||
        EVP_CIPHER_CTX_ctrl(b->x, EVP_CTRL_GCM_GET_TAG, 16, tag) != 1)
        die("AES-256-GCM", -EIO);
}

/* What the cache does with a new chunk: name it, then encode it. */
static void op_encode(struct bench *b)
{
    codec_name(b->c, b->data, CHUNK, b->name);
    buf_reset(&b->out);
    int rc = codec_encode(b->c, b->data, CHUNK, b->name, &b->out);
    if (rc)
        die("encode", rc);
}

/* Decoding includes checking the name, as every read does. */
static void op_decode(struct bench *b)
{
    buf_reset(&b->out);
    int rc = codec_decode(b->c, b->enc.data, b->enc.len, b->name, &b->out);
    if (rc)
        die("decode", rc);
}

/* ---- timing ------------------------------------------------------------- */

static clockid_t clock_id = CLOCK_THREAD_CPUTIME_ID;

static double now(void)
{
    struct timespec t;
    clock_gettime(clock_id, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double run(void (*op)(struct bench *), struct bench *b, long n)
{
    double t0 = now();
    for (long i = 0; i < n; i++)
        op(b);
    return now() - t0;
}

/* MB/s: iterations sized to ~seconds per run, best of three runs. */
static double measure(void (*op)(struct bench *), struct bench *b, double seconds, long *iters)
{
    op(b); /* warm up: contexts, buffers, caches */
    long n = 1;
    double t;
    while ((t = run(op, b, n)) < 0.05)
        n *= 2;
    n = (long)ceil(n * seconds / t);
    double best = 0;
    for (int i = 0; i < 3; i++) {
        double mbs = (double)n * CHUNK / run(op, b, n) / 1e6;
        if (mbs > best)
            best = mbs;
    }
    *iters = n;
    return best;
}

/* ---- rows --------------------------------------------------------------- */

enum kind { K_NAME, K_ZSTD, K_GCM, K_ENCODE, K_DECODE };

struct row {
    const char *op;
    enum kind kind;
    int level;
    int keyed;
};

static const struct row rows[] = {
    { "SHA-256 name", K_NAME, 0, 0 },           { "HMAC-SHA-256 name", K_NAME, 0, 1 },
    { "zstd -1 compress", K_ZSTD, 1, 0 },       { "zstd -3 compress", K_ZSTD, 3, 0 },
    { "AES-256-GCM encrypt", K_GCM, 0, 1 },     { "encode level 1", K_ENCODE, 1, 0 },
    { "encode level 1 + key", K_ENCODE, 1, 1 }, { "encode level 3", K_ENCODE, 3, 0 },
    { "encode level 3 + key", K_ENCODE, 3, 1 }, { "decode level 1", K_DECODE, 1, 0 },
    { "decode level 1 + key", K_DECODE, 1, 1 }, { "decode level 3", K_DECODE, 3, 0 },
    { "decode level 3 + key", K_DECODE, 3, 1 },
};

static const uint8_t bench_key[CODEC_KEY_LEN] = "0123456789abcdef0123456789abcde";

static void setup(struct bench *b, const struct row *r, const uint8_t *data)
{
    *b = (struct bench){ .data = data };
    struct codec_options o = { .level = r->level, .key = r->keyed ? bench_key : NULL };
    int rc = codec_new(&o, &b->c);
    if (rc)
        die("codec_new", rc);
    b->dst_cap = ZSTD_compressBound(CHUNK) + 64;
    b->dst = malloc(b->dst_cap);
    b->z = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(b->z, ZSTD_c_compressionLevel, r->level);
    b->x = EVP_CIPHER_CTX_new();
    static const uint8_t nonce[12];
    if (!b->dst || !b->z || !b->x ||
        EVP_EncryptInit_ex2(b->x, EVP_aes_256_gcm(), bench_key, nonce, NULL) != 1)
        die("setup", -ENOMEM);
    if (r->kind == K_DECODE) {
        codec_name(b->c, data, CHUNK, b->name);
        rc = codec_encode(b->c, data, CHUNK, b->name, &b->enc);
        if (rc)
            die("encode", rc);
    }
}

static void teardown(struct bench *b)
{
    codec_free(b->c);
    ZSTD_freeCCtx(b->z);
    EVP_CIPHER_CTX_free(b->x);
    free(b->dst);
    buf_free(&b->out);
    buf_free(&b->enc);
}

static void (*const ops[])(struct bench *) = {
    [K_NAME] = op_name,     [K_ZSTD] = op_zstd,     [K_GCM] = op_gcm,
    [K_ENCODE] = op_encode, [K_DECODE] = op_decode,
};

static double ratio(const uint8_t *data, int level)
{
    size_t cap = ZSTD_compressBound(CHUNK);
    void *dst = malloc(cap);
    size_t n = ZSTD_compress(dst, cap, data, CHUNK, level);
    free(dst);
    return ZSTD_isError(n) ? 0 : (double)CHUNK / (double)n;
}

/* What the codec stores: its 64 KiB pieces compress apart, so a chunk is a
 * little bigger than one zstd frame of the same bytes. */
static double chunk_ratio(const uint8_t *data, int level)
{
    struct codec *c;
    struct codec_options o = { .level = level };
    uint8_t name[CODEC_NAME_LEN];
    struct buf enc = { 0 };
    int rc = codec_new(&o, &c);
    if (rc == 0)
        rc = codec_name(c, data, CHUNK, name);
    if (rc == 0)
        rc = codec_encode(c, data, CHUNK, name, &enc);
    if (rc)
        die("encode", rc);
    double r = (double)CHUNK / (double)enc.len;
    buf_free(&enc);
    codec_free(c);
    return r;
}

int main(int argc, char **argv)
{
    int json = 0;
    double seconds = 0.5;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
            seconds = atof(argv[++i]);
        } else if (strcmp(argv[i], "--wall") == 0) {
            clock_id = CLOCK_MONOTONIC;
        } else {
            fprintf(stderr, "usage: %s [--json] [--seconds S] [--wall]\n", argv[0]);
            return 2;
        }
    }

    uint8_t *ckpt = malloc(CHUNK), *rnd = malloc(CHUNK);
    if (!ckpt || !rnd)
        die("data", -ENOMEM);
    fill_checkpoint(ckpt, CHUNK);
    fill_random(rnd, CHUNK);
    fprintf(stderr,
            "4 MiB chunks, %s time; checkpoint data compresses %.2fx at zstd -1, %.2fx at -3\n",
            clock_id == CLOCK_MONOTONIC ? "wall" : "CPU", ratio(ckpt, 1), ratio(ckpt, 3));

    struct {
        const char *name;
        const uint8_t *data;
    } sets[] = { { "checkpoint", ckpt }, { "random", rnd } };
    double encode_l1 = 0;

    if (json)
        printf("{\"ratio\":{\"zstd_frame\":%.2f,\"chunk\":%.2f}}\n", ratio(ckpt, 1),
               chunk_ratio(ckpt, 1));
    else
        printf("| operation | data | MB/s |\n|---|---|---:|\n");
    for (size_t r = 0; r < sizeof rows / sizeof *rows; r++) {
        for (int s = 0; s < 2; s++) {
            struct bench b;
            long iters;
            setup(&b, &rows[r], sets[s].data);
            double mbs = measure(ops[rows[r].kind], &b, seconds, &iters);
            teardown(&b);
            if (rows[r].kind == K_ENCODE && rows[r].level == 1 && rows[r].keyed && s == 0)
                encode_l1 = mbs;
            if (json)
                printf("{\"operation\":\"%s\",\"data\":\"%s\",\"mb_per_s\":%.1f,"
                       "\"iterations\":%ld,\"chunk_bytes\":%u}\n",
                       rows[r].op, sets[s].name, mbs, iters, CHUNK);
            else
                printf("| %s | %s | %.0f |\n", rows[r].op, sets[s].name, mbs);
            fflush(stdout);
        }
    }
    if (!json)
        printf("\nTarget: encode level 1 + key >= %.0f MB/s on checkpoint data: %.0f MB/s, %s.\n",
               TARGET_MBS, encode_l1, encode_l1 >= TARGET_MBS ? "met" : "NOT met");
    free(ckpt);
    free(rnd);
    return 0;
}
