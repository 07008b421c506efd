/*
 * resblock_block: the ResNet basic block in C99, as a resblock-program/1 program.
 *
 *   resblock_block INPUT_DIR OUTPUT_DIR
 *
 * Reads INPUT_DIR/cases.txt ("resblock-program/1", then one "DIR N H W C" line per
 * case), reads each case's raw little-endian float32 arrays from INPUT_DIR/DIR, runs
 * one training-mode forward and writes y.bin and the updated running stats into
 * OUTPUT_DIR/DIR (the runner has created that directory). See spec/PROGRAM_PROTOCOL.md.
 *
 * The block, NHWC, C == F:
 *   x -> Conv3x3 (+bias) -> BN(train) -> ReLU -> Conv3x3 (+bias) -> BN(train) -> +x -> ReLU
 * Conv: stride 1, zero padding 1, cross-correlation, kernel HWIO (3, 3, C, F).
 * BN:   per-channel mean and biased variance over N, H, W; epsilon 1e-5 inside the sqrt;
 *       running = 0.99 * running + 0.01 * batch (biased variance too, Flax's convention).
 *
 * Arithmetic: arrays and the convolutions are float32; the BN statistics accumulate in
 * double with two passes (mean, then the mean of squared deviations), which stays
 * accurate when a channel's mean is large compared with its spread.
 *
 * Exit status: 0 all outputs written; 1 an input or output error (message on stderr);
 * 2 bad usage. Only libc and libm.
 *
 * Build: cc -O2 -std=c99 -o resblock_block resblock_block.c -lm
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROTOCOL "resblock-program/1"
#define EPSILON 1e-5
#define MOMENTUM 0.99 /* weight of the OLD running value */
#define PATH_MAX_LEN 4096
#define LINE_MAX_LEN 1024

static const char *prog = "resblock_block";

/* Print "resblock_block: MESSAGE" on stderr and exit with status 1. */
static void die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void *xmalloc(size_t count, size_t size, const char *what)
{
    void *p;
    if (count != 0 && size > ((size_t)-1) / count)
        die("array %s is too large", what);
    p = malloc(count * size > 0 ? count * size : 1);
    if (p == NULL)
        die("out of memory allocating %s", what);
    return p;
}

static void join(char *out, const char *dir, const char *sub, const char *file)
{
    int k = snprintf(out, PATH_MAX_LEN, "%s/%s/%s", dir, sub, file);
    if (k < 0 || k >= PATH_MAX_LEN)
        die("path too long: %s/%s/...", dir, sub);
}

/* Read exactly `count` little-endian float32 values from `path`, whatever the host's
   byte order; the file must hold nothing more. */
static void read_f32(const char *path, float *dst, size_t count)
{
    unsigned char b[4];
    size_t i;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        die("cannot open %s for reading: %s", path, strerror(errno));
    for (i = 0; i < count; i++) {
        uint32_t u;
        size_t got = fread(b, 1, 4, f);
        if (got != 4) {
            int err = ferror(f);
            fclose(f);
            if (err)
                die("read error on %s", path);
            die("%s is too short: expected %zu bytes (%zu float32 values), found %zu", path,
                4 * count, count, 4 * i + got);
        }
        u = (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) |
            ((uint32_t)b[3] << 24);
        memcpy(&dst[i], &u, 4);
    }
    if (fgetc(f) != EOF) {
        fclose(f);
        die("%s is too long: expected %zu bytes (%zu float32 values)", path, 4 * count,
            count);
    }
    fclose(f);
}

static void write_f32(const char *path, const float *src, size_t count)
{
    unsigned char b[4];
    size_t i;
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        die("cannot open %s for writing: %s", path, strerror(errno));
    for (i = 0; i < count; i++) {
        uint32_t u;
        memcpy(&u, &src[i], 4);
        b[0] = (unsigned char)(u & 0xffu);
        b[1] = (unsigned char)((u >> 8) & 0xffu);
        b[2] = (unsigned char)((u >> 16) & 0xffu);
        b[3] = (unsigned char)((u >> 24) & 0xffu);
        if (fwrite(b, 1, 4, f) != 4) {
            fclose(f);
            die("write error on %s: %s", path, strerror(errno));
        }
    }
    if (fclose(f) != 0)
        die("cannot close %s: %s", path, strerror(errno));
}

/* out[n,h,w,f] = bias[f] + sum_{i,j,c} in[n, h+i-1, w+j-1, c] * k[i, j, c, f], zero pad. */
static void conv3x3(const float *in, long n, long h, long w, long c, const float *k,
                    const float *bias, float *out)
{
    long f = c, bn, y, x, i, j, ci, fo;
    float *acc = xmalloc((size_t)f, sizeof(float), "conv accumulator");
    for (bn = 0; bn < n; bn++)
        for (y = 0; y < h; y++)
            for (x = 0; x < w; x++) {
                for (fo = 0; fo < f; fo++)
                    acc[fo] = 0.0f;
                for (i = 0; i < 3; i++) {
                    long yy = y + i - 1;
                    if (yy < 0 || yy >= h)
                        continue;
                    for (j = 0; j < 3; j++) {
                        long xx = x + j - 1;
                        const float *px;
                        if (xx < 0 || xx >= w)
                            continue;
                        px = in + ((bn * h + yy) * w + xx) * c;
                        for (ci = 0; ci < c; ci++) {
                            const float *pk = k + ((i * 3 + j) * c + ci) * f;
                            float v = px[ci];
                            for (fo = 0; fo < f; fo++)
                                acc[fo] += v * pk[fo];
                        }
                    }
                }
                for (fo = 0; fo < f; fo++)
                    out[((bn * h + y) * w + x) * f + fo] = acc[fo] + bias[fo];
            }
    free(acc);
}

/* Training-mode BatchNorm in place over `count` = N*H*W rows of `f` channels; updates
   the running mean and variance in place. */
static void batch_norm(float *a, size_t count, size_t f, const float *scale, const float *bias,
                       float *run_mean, float *run_var)
{
    size_t ch, r;
    for (ch = 0; ch < f; ch++) {
        double mean = 0.0, var = 0.0, inv;
        float fmean, fmul;
        for (r = 0; r < count; r++)
            mean += a[r * f + ch];
        mean /= (double)count;
        for (r = 0; r < count; r++) {
            double d = a[r * f + ch] - mean;
            var += d * d;
        }
        var /= (double)count; /* biased: divide by N*H*W, not N*H*W - 1 */
        inv = 1.0 / sqrt(var + EPSILON);
        fmean = (float)mean;
        fmul = (float)(inv * scale[ch]);
        for (r = 0; r < count; r++)
            a[r * f + ch] = (a[r * f + ch] - fmean) * fmul + bias[ch];
        run_mean[ch] = (float)(MOMENTUM * run_mean[ch] + (1.0 - MOMENTUM) * mean);
        run_var[ch] = (float)(MOMENTUM * run_var[ch] + (1.0 - MOMENTUM) * var);
    }
}

static const char *PARAM_FILES[8] = {
    "Conv_0.kernel.bin", "Conv_0.bias.bin", "BatchNorm_0.scale.bin", "BatchNorm_0.bias.bin",
    "Conv_1.kernel.bin", "Conv_1.bias.bin", "BatchNorm_1.scale.bin", "BatchNorm_1.bias.bin",
};
static const char *STAT_FILES[4] = {
    "BatchNorm_0.mean.bin", "BatchNorm_0.var.bin", "BatchNorm_1.mean.bin",
    "BatchNorm_1.var.bin",
};

static void run_case(const char *in_dir, const char *out_dir, const char *dir, long n, long h,
                     long w, long c)
{
    char path[PATH_MAX_LEN];
    size_t rows, size, ksize = 9 * (size_t)c * (size_t)c, p;
    float *x, *t, *u, *params[8], *stats[4];
    int k;

    rows = (size_t)n * (size_t)h;
    if (h != 0 && rows / (size_t)h != (size_t)n)
        die("case %s: shape too large", dir);
    rows *= (size_t)w;
    size = rows * (size_t)c;
    if (c != 0 && size / (size_t)c != rows)
        die("case %s: shape too large", dir);

    x = xmalloc(size, sizeof(float), "x");
    t = xmalloc(size, sizeof(float), "activations");
    u = xmalloc(size, sizeof(float), "activations");
    join(path, in_dir, dir, "x.bin");
    read_f32(path, x, size);
    for (k = 0; k < 8; k++) {
        size_t cnt = (k == 0 || k == 4) ? ksize : (size_t)c;
        params[k] = xmalloc(cnt, sizeof(float), PARAM_FILES[k]);
        join(path, in_dir, dir, PARAM_FILES[k]);
        read_f32(path, params[k], cnt);
    }
    for (k = 0; k < 4; k++) {
        stats[k] = xmalloc((size_t)c, sizeof(float), STAT_FILES[k]);
        join(path, in_dir, dir, STAT_FILES[k]);
        read_f32(path, stats[k], (size_t)c);
    }

    conv3x3(x, n, h, w, c, params[0], params[1], t);
    batch_norm(t, rows, (size_t)c, params[2], params[3], stats[0], stats[1]);
    for (p = 0; p < size; p++)
        t[p] = t[p] > 0.0f ? t[p] : 0.0f;
    conv3x3(t, n, h, w, c, params[4], params[5], u);
    batch_norm(u, rows, (size_t)c, params[6], params[7], stats[2], stats[3]);
    for (p = 0; p < size; p++) {
        float v = u[p] + x[p];
        u[p] = v > 0.0f ? v : 0.0f;
    }

    join(path, out_dir, dir, "y.bin");
    write_f32(path, u, size);
    for (k = 0; k < 4; k++) {
        join(path, out_dir, dir, STAT_FILES[k]);
        write_f32(path, stats[k], (size_t)c);
    }

    for (k = 0; k < 8; k++)
        free(params[k]);
    for (k = 0; k < 4; k++)
        free(stats[k]);
    free(x);
    free(t);
    free(u);
}

static void chomp(char *s)
{
    size_t len = strlen(s);
    while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r'))
        s[--len] = '\0';
}

int main(int argc, char **argv)
{
    char path[PATH_MAX_LEN], line[LINE_MAX_LEN];
    FILE *f;
    long lineno = 1, cases = 0;
    int k;

    if (argc != 3) {
        fprintf(stderr, "usage: %s INPUT_DIR OUTPUT_DIR\n"
                        "  implements %s; run it through\n"
                        "  resblock check --exec '%s {input} {output}'\n",
                prog, PROTOCOL, argc > 0 ? argv[0] : prog);
        return 2;
    }
    k = snprintf(path, sizeof path, "%s/cases.txt", argv[1]);
    if (k < 0 || k >= (int)sizeof path)
        die("path too long: %s/cases.txt", argv[1]);
    f = fopen(path, "r");
    if (f == NULL)
        die("cannot open %s: %s", path, strerror(errno));
    if (fgets(line, sizeof line, f) == NULL)
        die("%s is empty; expected first line %s", path, PROTOCOL);
    chomp(line);
    if (strcmp(line, PROTOCOL) != 0)
        die("unsupported protocol '%s' in %s; this program implements %s", line, path,
            PROTOCOL);
    while (fgets(line, sizeof line, f) != NULL) {
        char dir[256], extra[2];
        long n, h, w, c;
        int got;
        lineno++;
        if (strchr(line, '\n') == NULL && !feof(f))
            die("%s: line %ld is longer than %d bytes", path, lineno, LINE_MAX_LEN - 1);
        chomp(line);
        if (strspn(line, " \t") == strlen(line))
            continue; /* blank line */
        got = sscanf(line, "%255s %ld %ld %ld %ld %1s", dir, &n, &h, &w, &c, extra);
        if (got != 5 || n < 1 || h < 1 || w < 1 || c < 1)
            die("%s: line %ld is malformed: '%s'; expected 'DIR N H W C' with N, H, W, C >= 1",
                path, lineno, line);
        run_case(argv[1], argv[2], dir, n, h, w, c);
        cases++;
    }
    if (ferror(f))
        die("read error on %s: %s", path, strerror(errno));
    fclose(f);
    if (cases == 0)
        die("%s lists no cases", path);
    return 0;
}
