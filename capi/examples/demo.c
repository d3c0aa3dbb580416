/* mkwrite from C: the seed scenario (a block smaller than a page, EOF
 * moving across a page holding bytes past it) and a checked write that
 * runs a store out of space, then the file checked byte by byte.
 *
 *   demo seed DIR    -> prints "seed ok"
 *   demo full DIR    -> DIR on a small filesystem; prints "full ok ACCEPTED"
 *   demo kernel DIR  -> dirty pages tracked by the kernel: stores after a
 *                       flush reach the file at the next flush; prints "kernel ok"
 *
 * Built and run by capi/tests/c_example.rs with the system compiler. */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mkwrite.h"

static void fail(const char *what, int rc) {
    fprintf(stderr, "%s: %s (errno %d): %s\n", what, strerror(rc), rc, mkw_last_error());
    exit(1);
}

#define CHECK(call)                  \
    do {                             \
        int rc_ = (call);            \
        if (rc_ != 0) fail(#call, rc_); \
    } while (0)

static unsigned char *read_file(const char *path, long *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END);
    *len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc(*len ? *len : 1);
    if (fread(data, 1, *len, f) != (size_t)*len) { perror("fread"); exit(1); }
    fclose(f);
    return data;
}

static int seed(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/seed.db", dir);
    mkw_options o = mkw_options_default();
    o.create = 1;
    o.block_size = 1024;
    o.capacity = 1 << 20;
    int err = 0;
    mkw_mapping *map = mkw_open(path, &o, &err);
    if (!map) fail("mkw_open", err);
    CHECK(mkw_set_len(map, 0));
    CHECK(mkw_set_len(map, 1024));
    unsigned char x[1024];
    memset(x, 'x', sizeof x);
    size_t done = 0;
    CHECK(mkw_write(map, 0, x, sizeof x, &done));
    if (done != sizeof x) fail("mkw_write count", EIO);
    CHECK(mkw_flush(map));
    unsigned char *p = mkw_ptr(map);
    p[0] = 'a';                      /* a store: the real fault path */
    memset(p + 1024, 'y', 100);      /* past EOF, inside the page */
    CHECK(mkw_set_len(map, 10000));  /* the 'y's must not reappear */
    memset(p + 2048, 'z', 10);
    CHECK(mkw_flush(map));
    CHECK(mkw_close(map));

    long len;
    unsigned char *file = read_file(path, &len);
    if (len != 10000) { fprintf(stderr, "length %ld\n", len); return 1; }
    for (long i = 0; i < len; i++) {
        unsigned char want = i == 0 ? 'a' : i < 1024 ? 'x' : (i >= 2048 && i < 2058) ? 'z' : 0;
        if (file[i] != want) {
            fprintf(stderr, "byte %ld is %d, not %d\n", i, file[i], want);
            return 1;
        }
    }
    free(file);
    printf("seed ok\n");
    return 0;
}

static unsigned char pattern(uint64_t at) { return (unsigned char)(at * 7 + at / 4096); }

static int full(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/full.db", dir);
    mkw_options o = mkw_options_default();
    o.create = 1;
    o.capacity = 64 << 20;
    int err = 0;
    mkw_mapping *map = mkw_open(path, &o, &err);
    if (!map) fail("mkw_open", err);
    CHECK(mkw_set_len(map, 64 << 20)); /* far more than the filesystem holds */
    static unsigned char chunk[65536];
    uint64_t accepted = 0;
    for (;;) {
        for (size_t i = 0; i < sizeof chunk; i++) chunk[i] = pattern(accepted + i);
        size_t done = 0;
        int rc = mkw_write(map, accepted, chunk, sizeof chunk, &done);
        accepted += done;
        if (rc == ENOSPC) break;         /* at the write, with the count that landed */
        if (rc != 0) fail("mkw_write", rc);
        if (accepted >= (64u << 20)) { fprintf(stderr, "never filled\n"); return 1; }
    }
    if (accepted == 0 || accepted % 4096 != 0) {
        fprintf(stderr, "accepted %llu: not whole pages\n", (unsigned long long)accepted);
        return 1;
    }
    CHECK(mkw_flush(map));               /* everything accepted reaches the file */
    CHECK(mkw_close(map));

    long len;
    unsigned char *file = read_file(path, &len);
    for (uint64_t i = 0; i < accepted; i++) {
        if (file[i] != pattern(i)) {
            fprintf(stderr, "accepted byte %llu lost\n", (unsigned long long)i);
            return 1;
        }
    }
    free(file);
    printf("full ok %llu\n", (unsigned long long)accepted);
    return 0;
}

static int kernel(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/kernel.db", dir);
    mkw_options o = mkw_options_default();
    o.create = 1;
    o.capacity = 1 << 20;
    o.dirty_tracking = MKW_DIRTY_TRACKING_KERNEL;
    o.block_size = 1024;                 /* smaller than a page: refused */
    int err = 0;
    if (mkw_open(path, &o, &err) || err != ENOTSUP) {
        fprintf(stderr, "1 KiB blocks with kernel tracking: errno %d, not ENOTSUP\n", err);
        return 1;
    }
    o.block_size = 0;
    mkw_mapping *map = mkw_open(path, &o, &err);
    if (!map) fail("mkw_open", err);
    enum { LEN = 16 * 4096 };
    CHECK(mkw_set_len(map, LEN));
    unsigned char *p = mkw_ptr(map);
    memset(p, 'a', LEN);                 /* first writes: faults allocate */
    CHECK(mkw_flush(map));
    memset(p, 'b', LEN);                 /* after the flush: no fault */
    CHECK(mkw_flush(map));               /* the kernel says which were written */
    CHECK(mkw_close(map));
    long len;
    unsigned char *file = read_file(path, &len);
    for (long i = 0; i < LEN; i++) {
        if (len != LEN || file[i] != 'b') {
            fprintf(stderr, "byte %ld of %ld not written\n", i, len);
            return 1;
        }
    }
    free(file);
    printf("kernel ok\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "seed") == 0) return seed(argv[2]);
    if (argc == 3 && strcmp(argv[1], "full") == 0) return full(argv[2]);
    if (argc == 3 && strcmp(argv[1], "kernel") == 0) return kernel(argv[2]);
    fprintf(stderr, "usage: %s seed|full|kernel DIR\n", argv[0]);
    return 2;
}
