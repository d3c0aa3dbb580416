/* LMDB with MDB_WRITEMAP: the database's pages are written through a
 * shared mapping of data.mdb, the case mkwrite's interposer exists for.
 *
 *   lmdb_records write DIR N   N records in 10 transactions (WRITEMAP)
 *   lmdb_records verify DIR N  reopens read-only and checks every record
 *
 * Progress goes to stdout, one line per committed transaction. */
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAP_SIZE (64u << 20)
#define VALUE_LEN 64
#define TXNS 10

static void check(int rc, const char *what) {
    if (rc != MDB_SUCCESS) {
        fprintf(stderr, "%s: %s\n", what, mdb_strerror(rc));
        exit(1);
    }
}

/* Record i's key and value: both derived from i, so a reader can check. */
static void record(unsigned i, char key[16], char value[VALUE_LEN]) {
    snprintf(key, 16, "k%08u", i);
    for (unsigned j = 0; j < VALUE_LEN; j++)
        value[j] = (char)('a' + (i * 31 + j * 7) % 26);
}

static MDB_env *open_env(const char *dir, unsigned flags) {
    MDB_env *env;
    check(mdb_env_create(&env), "mdb_env_create");
    check(mdb_env_set_mapsize(env, MAP_SIZE), "mdb_env_set_mapsize");
    check(mdb_env_open(env, dir, flags, 0644), "mdb_env_open");
    return env;
}

static void write_records(const char *dir, unsigned n) {
    MDB_env *env = open_env(dir, MDB_WRITEMAP);
    unsigned per_txn = n / TXNS;
    for (unsigned t = 0; t < TXNS; t++) {
        MDB_txn *txn;
        MDB_dbi dbi;
        check(mdb_txn_begin(env, NULL, 0, &txn), "mdb_txn_begin");
        check(mdb_dbi_open(txn, NULL, 0, &dbi), "mdb_dbi_open");
        unsigned end = t + 1 == TXNS ? n : (t + 1) * per_txn;
        for (unsigned i = t * per_txn; i < end; i++) {
            char key[16], value[VALUE_LEN];
            record(i, key, value);
            MDB_val k = {strlen(key), key}, v = {VALUE_LEN, value};
            check(mdb_put(txn, dbi, &k, &v, 0), "mdb_put");
        }
        check(mdb_txn_commit(txn), "mdb_txn_commit");
        printf("committed %u\n", end);
        fflush(stdout);
    }
    mdb_env_close(env);
}

static void verify_records(const char *dir, unsigned n) {
    MDB_env *env = open_env(dir, MDB_RDONLY);
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_stat st;
    check(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), "mdb_txn_begin");
    check(mdb_dbi_open(txn, NULL, 0, &dbi), "mdb_dbi_open");
    check(mdb_stat(txn, dbi, &st), "mdb_stat");
    if (st.ms_entries != n) {
        fprintf(stderr, "%zu records, expected %u\n", st.ms_entries, n);
        exit(1);
    }
    for (unsigned i = 0; i < n; i++) {
        char key[16], value[VALUE_LEN];
        record(i, key, value);
        MDB_val k = {strlen(key), key}, v;
        check(mdb_get(txn, dbi, &k, &v), key);
        if (v.mv_size != VALUE_LEN || memcmp(v.mv_data, value, VALUE_LEN) != 0) {
            fprintf(stderr, "record %u differs\n", i);
            exit(1);
        }
    }
    mdb_txn_abort(txn);
    mdb_env_close(env);
    printf("verified %u\n", n);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s write|verify DIR N\n", argv[0]);
        return 2;
    }
    unsigned n = (unsigned)strtoul(argv[3], NULL, 10);
    if (strcmp(argv[1], "write") == 0)
        write_records(argv[2], n);
    else if (strcmp(argv[1], "verify") == 0)
        verify_records(argv[2], n);
    else
        return 2;
    return 0;
}
