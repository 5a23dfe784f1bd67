/* kvcodec: native backend of kvstore's value codec. See kvcodec.h for the
 * interface and docs/native.md for the design.
 *
 * Record (value format v1 and v3, little endian):
 *   offset 0  u8   version (1, or 3: checksum seeded with the key's hash)
 *   offset 1  u8   flags
 *   offset 2  u32  raw_len
 *   offset 6  u32  dict_id
 *   offset 10 u64  XXH64 of the payload: seed 0 (v1), seed XXH64(key) (v3)
 *   offset 18      payload
 */
#include "kvcodec.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__GNUC__)
#define KVC_LIKELY(x) __builtin_expect(!!(x), 1)
#define KVC_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define KVC_LIKELY(x) (x)
#define KVC_UNLIKELY(x) (x)
#endif

#define KNOWN_FLAGS (KVC_FLAG_MSGPACK | KVC_FLAG_ZSTD | KVC_FLAG_DICT)

/* ------------------------------------------------------------------------
 * Little-endian loads and stores through memcpy: safe at any alignment, and
 * compilers turn them into single moves.
 */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define KVC_BIG_ENDIAN 1
#else
#define KVC_BIG_ENDIAN 0
#endif

static inline uint64_t load64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
#if KVC_BIG_ENDIAN
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline uint32_t load32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
#if KVC_BIG_ENDIAN
    v = __builtin_bswap32(v);
#endif
    return v;
}

static inline void store64(unsigned char *p, uint64_t v)
{
#if KVC_BIG_ENDIAN
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, sizeof v);
}

static inline void store32(unsigned char *p, uint32_t v)
{
#if KVC_BIG_ENDIAN
    v = __builtin_bswap32(v);
#endif
    memcpy(p, &v, sizeof v);
}

/* ------------------------------------------------------------------------
 * XXH64, written from the xxHash specification (doc/xxhash_spec.md of the
 * xxHash project), with a seed.
 */

#define P64_1 0x9E3779B185EBCA87ULL
#define P64_2 0xC2B2AE3D27D4EB4FULL
#define P64_3 0x165667B19E3779F9ULL
#define P64_4 0x85EBCA77C2B2AE63ULL
#define P64_5 0x27D4EB2F165667C5ULL

static inline uint64_t rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

/* One lane step: accumulate an 8-byte input lane. */
static inline uint64_t xxh_round(uint64_t acc, uint64_t lane)
{
    acc += lane * P64_2;
    acc = rotl64(acc, 31);
    return acc * P64_1;
}

static inline uint64_t xxh_merge(uint64_t acc, uint64_t lane_acc)
{
    acc ^= xxh_round(0, lane_acc);
    return acc * P64_1 + P64_4;
}

uint64_t kvc_xxh64_seeded(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = (const unsigned char *)data;
    const unsigned char *end = p + len;
    uint64_t acc;

    if (len >= 32) {
        /* Four accumulators, each fed every fourth lane of a 32-byte stripe. */
        uint64_t v1 = seed + P64_1 + P64_2;
        uint64_t v2 = seed + P64_2;
        uint64_t v3 = seed;
        uint64_t v4 = seed - P64_1;
        const unsigned char *limit = end - 32;
        do {
            v1 = xxh_round(v1, load64(p));
            v2 = xxh_round(v2, load64(p + 8));
            v3 = xxh_round(v3, load64(p + 16));
            v4 = xxh_round(v4, load64(p + 24));
            p += 32;
        } while (p <= limit);
        acc = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        acc = xxh_merge(acc, v1);
        acc = xxh_merge(acc, v2);
        acc = xxh_merge(acc, v3);
        acc = xxh_merge(acc, v4);
    } else {
        acc = seed + P64_5;
    }
    acc += (uint64_t)len;

    /* The remaining 0..31 bytes: 8-byte lanes, one 4-byte lane, then bytes. */
    while (end - p >= 8) {
        acc ^= xxh_round(0, load64(p));
        acc = rotl64(acc, 27) * P64_1 + P64_4;
        p += 8;
    }
    if (end - p >= 4) {
        acc ^= (uint64_t)load32(p) * P64_1;
        acc = rotl64(acc, 23) * P64_2 + P64_3;
        p += 4;
    }
    while (p < end) {
        acc ^= (uint64_t)(*p) * P64_5;
        acc = rotl64(acc, 11) * P64_1;
        p++;
    }

    /* Avalanche. */
    acc ^= acc >> 33;
    acc *= P64_2;
    acc ^= acc >> 29;
    acc *= P64_3;
    acc ^= acc >> 32;
    return acc;
}

uint64_t kvc_xxh64(const void *data, size_t len)
{
    return kvc_xxh64_seeded(data, len, 0);
}

/* The seed of a record's checksum: none (v1) when key is NULL, else the
 * key's XXH64 (v3). */
struct keyed {
    int version;
    uint64_t seed;
};

static inline struct keyed keyed_of(const char *key, size_t key_len)
{
    struct keyed k = {KVC_VERSION, 0};
    if (key != NULL) {
        k.version = KVC_VERSION_KEYED;
        k.seed = kvc_xxh64(key, key_len);
    }
    return k;
}

/* ------------------------------------------------------------------------
 * zstd, reached at run time. The prototypes below are our own declarations
 * of zstd's stable API (zstd.h, "stable API" sections, present since 1.4.0);
 * contexts and dictionaries are opaque pointers to us. The numeric constants
 * are the values zstd.h and zstd_errors.h pin down.
 */

#define ZSTD_c_compressionLevel 100
#define ZSTD_c_contentSizeFlag 200
#define ZSTD_c_checksumFlag 201
#define ZSTD_c_dictIDFlag 202
#define ZSTD_CONTENTSIZE_UNKNOWN (0ULL - 1)
#define ZSTD_CONTENTSIZE_ERROR (0ULL - 2)
#define ZSTD_error_memory_allocation 64
#define ZSTD_error_dstSize_tooSmall 70
#define ZSTD_MIN_VERSION 10400 /* compress2, CCtx_setParameter, refCDict */

typedef unsigned (*fn_versionNumber)(void);
typedef unsigned (*fn_isError)(size_t code);
typedef const char *(*fn_getErrorName)(size_t code);
typedef int (*fn_getErrorCode)(size_t code); /* returns enum ZSTD_ErrorCode */
typedef size_t (*fn_compressBound)(size_t src_size);
typedef void *(*fn_createCtx)(void);  /* ZSTD_createCCtx, ZSTD_createDCtx */
typedef size_t (*fn_freeObj)(void *); /* ZSTD_free{C,D}Ctx, ZSTD_free{C,D}Dict */
typedef size_t (*fn_CCtx_setParameter)(void *cctx, int param, int value);
typedef size_t (*fn_CCtx_refCDict)(void *cctx, const void *cdict);
typedef size_t (*fn_compress2)(void *cctx, void *dst, size_t dst_cap,
                               const void *src, size_t src_size);
typedef void *(*fn_createCDict)(const void *dict, size_t dict_size, int level);
typedef void *(*fn_createDDict)(const void *dict, size_t dict_size);
typedef size_t (*fn_decompressDCtx)(void *dctx, void *dst, size_t dst_cap,
                                    const void *src, size_t src_size);
typedef size_t (*fn_decompress_usingDDict)(void *dctx, void *dst, size_t dst_cap,
                                           const void *src, size_t src_size,
                                           const void *ddict);
typedef unsigned long long (*fn_getFrameContentSize)(const void *src, size_t src_size);
typedef size_t (*fn_findFrameCompressedSize)(const void *src, size_t src_size);

struct zstd_api {
    fn_versionNumber versionNumber;
    fn_isError isError;
    fn_getErrorName getErrorName;
    fn_getErrorCode getErrorCode;
    fn_compressBound compressBound;
    fn_createCtx createCCtx;
    fn_freeObj freeCCtx;
    fn_CCtx_setParameter CCtx_setParameter;
    fn_CCtx_refCDict CCtx_refCDict;
    fn_compress2 compress2;
    fn_createCDict createCDict;
    fn_freeObj freeCDict;
    fn_createCtx createDCtx;
    fn_freeObj freeDCtx;
    fn_decompressDCtx decompressDCtx;
    fn_createDDict createDDict;
    fn_freeObj freeDDict;
    fn_decompress_usingDDict decompress_usingDDict;
    fn_getFrameContentSize getFrameContentSize;
    fn_findFrameCompressedSize findFrameCompressedSize;
};

static struct zstd_api Z;
static volatile int z_loaded = 0;
static void *z_handle = NULL;

/* Where each symbol goes in struct zstd_api. */
#define SYM(name) { "ZSTD_" #name, offsetof(struct zstd_api, name) }
static const struct {
    const char *symbol;
    size_t offset;
} z_symbols[] = {
    SYM(versionNumber), SYM(isError), SYM(getErrorName), SYM(getErrorCode),
    SYM(compressBound), SYM(createCCtx), SYM(freeCCtx), SYM(CCtx_setParameter),
    SYM(CCtx_refCDict), SYM(compress2), SYM(createCDict), SYM(freeCDict),
    SYM(createDCtx), SYM(freeDCtx), SYM(decompressDCtx), SYM(createDDict),
    SYM(freeDDict), SYM(decompress_usingDDict), SYM(getFrameContentSize),
    SYM(findFrameCompressedSize),
};
#undef SYM

int kvc_load_zstd(const char *path, char *msg, size_t msg_cap)
{
    struct zstd_api api;
    void *handle;
    size_t i;

    if (z_loaded)
        return 0;
    if (msg_cap)
        msg[0] = '\0';
    dlerror();
    handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        const char *why = dlerror();
        snprintf(msg, msg_cap, "dlopen(%s) failed: %s", path, why ? why : "unknown error");
        return -1;
    }
    memset(&api, 0, sizeof api);
    for (i = 0; i < sizeof z_symbols / sizeof z_symbols[0]; i++) {
        void *sym = dlsym(handle, z_symbols[i].symbol);
        if (sym == NULL) {
            snprintf(msg, msg_cap, "%s does not export %s", path, z_symbols[i].symbol);
            dlclose(handle);
            return -1;
        }
        /* POSIX guarantees that object and function pointers convert. */
        memcpy((char *)&api + z_symbols[i].offset, &sym, sizeof sym);
    }
    if (api.versionNumber() < ZSTD_MIN_VERSION) {
        unsigned v = api.versionNumber();
        snprintf(msg, msg_cap, "%s is zstd %u.%u.%u; kvstore needs 1.4.0 or newer", path,
                 v / 10000, (v / 100) % 100, v % 100);
        dlclose(handle);
        return -1;
    }
    Z = api;
    z_handle = handle; /* kept open for the life of the process */
    z_loaded = 1;
    return 0;
}

unsigned kvc_zstd_version(void)
{
    return z_loaded ? Z.versionNumber() : 0;
}

/* ------------------------------------------------------------------------
 * Contexts and dictionaries.
 */

struct kvc_ctx {
    void *cctx;
    void *dctx;
    int level;             /* zstd level without a dictionary */
    size_t min_size;       /* compress values of at least this size */
    size_t max_value_size; /* largest serialized value */
    char *out;             /* output buffer of kvc_encode / kvc_decode */
    size_t out_cap;
    kvc_err err;           /* details of the last error */
    /* Group calls of at least split_min bytes run their second part on a
     * thread of their own with the helper's zstd contexts (made on first
     * use); 0 or SIZE_MAX: never. See kvc_ctx_set_split. */
    size_t split_encode_min;
    size_t split_decode_min;
    kvc_ctx *helper;
};

struct kvc_cdict {
    void *cdict;
};

struct kvc_ddict {
    void *ddict;
};

kvc_ctx *kvc_ctx_new(int level, size_t min_size, size_t max_value_size)
{
    kvc_ctx *ctx;
    if (!z_loaded)
        return NULL;
    ctx = (kvc_ctx *)calloc(1, sizeof *ctx);
    if (ctx == NULL)
        return NULL;
    ctx->level = level;
    ctx->min_size = min_size;
    ctx->max_value_size = max_value_size;
    ctx->split_encode_min = SIZE_MAX;
    ctx->split_decode_min = SIZE_MAX;
    ctx->cctx = Z.createCCtx();
    ctx->dctx = Z.createDCtx();
    if (ctx->cctx == NULL || ctx->dctx == NULL)
        goto fail;
    /* Frame parameters of format v1: content size written, no frame
     * checksum (the record has its own), no dictionary id (the record
     * header carries it). Without a dictionary the id is never written. */
    if (Z.isError(Z.CCtx_setParameter(ctx->cctx, ZSTD_c_compressionLevel, level))
        || Z.isError(Z.CCtx_setParameter(ctx->cctx, ZSTD_c_contentSizeFlag, 1))
        || Z.isError(Z.CCtx_setParameter(ctx->cctx, ZSTD_c_checksumFlag, 0))
        || Z.isError(Z.CCtx_setParameter(ctx->cctx, ZSTD_c_dictIDFlag, 0)))
        goto fail;
    return ctx;
fail:
    kvc_ctx_free(ctx);
    return NULL;
}

kvc_err *kvc_ctx_err(kvc_ctx *ctx)
{
    return &ctx->err;
}

void kvc_ctx_set_output(kvc_ctx *ctx, char *out, size_t cap)
{
    ctx->out = out;
    ctx->out_cap = cap;
}

void kvc_ctx_set_split(kvc_ctx *ctx, size_t encode_min, size_t decode_min)
{
    ctx->split_encode_min = encode_min ? encode_min : SIZE_MAX;
    ctx->split_decode_min = decode_min ? decode_min : SIZE_MAX;
}

/* The helper context (same settings), or NULL if it cannot be made. */
static kvc_ctx *helper_of(kvc_ctx *ctx)
{
    if (ctx->helper == NULL)
        ctx->helper = kvc_ctx_new(ctx->level, ctx->min_size, ctx->max_value_size);
    return ctx->helper;
}

/* ------------------------------------------------------------------------
 * The worker: one thread for the whole process, started on the first split
 * group call, that runs the second half of a group while the caller runs
 * the first. One slot holds the half waiting for it. A caller that finds
 * the slot taken (another thread's group) runs both halves itself, and a
 * caller that finishes its half before the worker has picked the other up
 * takes it back and runs it too: a busy or descheduled worker never makes
 * a call slower than running it alone, apart from the wake-up.
 */

struct half {
    void *(*fn)(void *);
    void *arg;
    int state; /* HALF_QUEUED, HALF_RUNNING, HALF_DONE; under w_lock */
};

enum { HALF_QUEUED, HALF_RUNNING, HALF_DONE };

static pthread_mutex_t w_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t w_wake = PTHREAD_COND_INITIALIZER; /* a half was queued */
static pthread_cond_t w_done = PTHREAD_COND_INITIALIZER; /* a half was run */
static struct half *w_slot = NULL;
static int w_state = 0; /* 0 not started, 1 running, -1 cannot start */
static int w_sleeping = 0; /* the worker waits on w_wake */

/* How long the worker looks for the next half before it sleeps: waking a
 * sleeping thread costs tens to hundreds of microseconds on a virtual
 * machine, as much as a small group's work, and group calls come in runs
 * (a scan's chunks, a fill's put_many calls). */
#define SPIN_NS 100000
/* How long a caller waits awake for the worker's last item before it
 * sleeps (the item is short; a sleeping caller is woken late). */
#define WAIT_SPIN_NS 1000000

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *worker_main(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&w_lock);
    for (;;) {
        struct half *h;
        if (w_slot == NULL) { /* spin a while, then sleep */
            uint64_t until = now_ns() + SPIN_NS;
            pthread_mutex_unlock(&w_lock);
            while (__atomic_load_n(&w_slot, __ATOMIC_ACQUIRE) == NULL && now_ns() < until) {
                int k;
                for (k = 0; k < 64; k++)
                    cpu_relax();
            }
            pthread_mutex_lock(&w_lock);
            w_sleeping = 1;
            while (w_slot == NULL)
                pthread_cond_wait(&w_wake, &w_lock);
            w_sleeping = 0;
        }
        h = w_slot;
        __atomic_store_n(&w_slot, NULL, __ATOMIC_RELAXED);
        __atomic_store_n(&h->state, HALF_RUNNING, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&w_lock);
        h->fn(h->arg);
        pthread_mutex_lock(&w_lock);
        __atomic_store_n(&h->state, HALF_DONE, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&w_done);
    }
    return NULL;
}

/* A forked child has no worker (and w_lock may have been held by another
 * thread at the fork): start afresh. */
static void worker_prefork(void) { pthread_mutex_lock(&w_lock); }
static void worker_parent(void) { pthread_mutex_unlock(&w_lock); }
static void worker_child(void)
{
    pthread_mutex_init(&w_lock, NULL);
    pthread_cond_init(&w_wake, NULL);
    pthread_cond_init(&w_done, NULL);
    w_slot = NULL;
    w_state = 0;
    w_sleeping = 0;
}

/* Start the worker if need be (under w_lock). Whether it runs. */
static int worker_up(void)
{
    pthread_t t;
    pthread_attr_t attr;
    if (w_state)
        return w_state > 0;
    w_state = -1;
    if (pthread_attr_init(&attr) != 0)
        return 0;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, worker_main, NULL) == 0) {
        w_state = 1;
        pthread_atfork(worker_prefork, worker_parent, worker_child);
    }
    pthread_attr_destroy(&attr);
    return w_state > 0;
}

/* fn(a) here and fn(b) on the worker when it is free, then wait for both. */
static void run_pair(void *(*fn)(void *), void *a, void *b)
{
    struct half other = {fn, b, HALF_QUEUED};
    int queued = 0;
    uint64_t until;

    pthread_mutex_lock(&w_lock);
    if (w_slot == NULL && worker_up()) {
        __atomic_store_n(&w_slot, &other, __ATOMIC_RELEASE);
        queued = 1;
        if (w_sleeping)
            pthread_cond_signal(&w_wake);
    }
    pthread_mutex_unlock(&w_lock);
    fn(a);
    if (!queued) {
        fn(b);
        return;
    }
    pthread_mutex_lock(&w_lock);
    if (other.state == HALF_QUEUED && w_slot == &other) {
        __atomic_store_n(&w_slot, NULL, __ATOMIC_RELAXED); /* not picked up yet: run it here */
        pthread_mutex_unlock(&w_lock);
        fn(b);
        return;
    }
    pthread_mutex_unlock(&w_lock);
    /* The worker is on its last item: wait for it awake, briefly. */
    until = now_ns() + WAIT_SPIN_NS;
    while (__atomic_load_n(&other.state, __ATOMIC_ACQUIRE) != HALF_DONE && now_ns() < until)
        cpu_relax();
    pthread_mutex_lock(&w_lock);
    while (other.state != HALF_DONE)
        pthread_cond_wait(&w_done, &w_lock);
    pthread_mutex_unlock(&w_lock);
}

void kvc_ctx_free(kvc_ctx *ctx)
{
    if (ctx == NULL)
        return;
    kvc_ctx_free(ctx->helper);
    if (ctx->cctx)
        Z.freeCCtx(ctx->cctx);
    if (ctx->dctx)
        Z.freeDCtx(ctx->dctx);
    free(ctx);
}

kvc_cdict *kvc_cdict_new(const void *dict, size_t len, int level)
{
    kvc_cdict *c;
    if (!z_loaded)
        return NULL;
    c = (kvc_cdict *)malloc(sizeof *c);
    if (c == NULL)
        return NULL;
    c->cdict = Z.createCDict(dict, len, level);
    if (c->cdict == NULL) {
        free(c);
        return NULL;
    }
    return c;
}

void kvc_cdict_free(kvc_cdict *c)
{
    if (c == NULL)
        return;
    Z.freeCDict(c->cdict);
    free(c);
}

kvc_ddict *kvc_ddict_new(const void *dict, size_t len)
{
    kvc_ddict *d;
    if (!z_loaded)
        return NULL;
    d = (kvc_ddict *)malloc(sizeof *d);
    if (d == NULL)
        return NULL;
    d->ddict = Z.createDDict(dict, len);
    if (d->ddict == NULL) {
        free(d);
        return NULL;
    }
    return d;
}

void kvc_ddict_free(kvc_ddict *d)
{
    if (d == NULL)
        return;
    Z.freeDDict(d->ddict);
    free(d);
}

/* ------------------------------------------------------------------------
 * Encoding.
 */

static inline void put_header(unsigned char *out, int version, int flags, uint32_t raw_len,
                              uint32_t dict_id, uint64_t checksum)
{
    out[0] = (unsigned char)version;
    out[1] = (unsigned char)flags;
    store32(out + 2, raw_len);
    store32(out + 6, dict_id);
    store64(out + 10, checksum);
}

/* Will encode_one try zstd on a value of this size? */
static inline int wants_zstd(size_t raw_len, size_t min_size)
{
    return raw_len >= min_size && raw_len > 0;
}

/* Room encode_one needs for one record: zstd writes its frame in place and
 * wants its worst-case bound of room to do so (with less it may give up on
 * a frame that would have fitted). 0 when the value is over the limit. */
static size_t encode_room(size_t raw_len, size_t min_size, size_t max_value_size)
{
    size_t bound;
    if (raw_len > max_value_size || raw_len > 0xFFFFFFFFu)
        return 0;
    if (!wants_zstd(raw_len, min_size))
        return KVC_HEADER_SIZE + raw_len;
    bound = Z.compressBound(raw_len);
    if (Z.isError(bound) || bound < raw_len) /* cannot happen below 4 GiB */
        bound = raw_len;
    return KVC_HEADER_SIZE + bound;
}

/* One record into out, which has encode_room() bytes. */
static int64_t encode_one(kvc_ctx *ctx, int flags, const unsigned char *raw, size_t raw_len,
                          size_t min_size, size_t max_value_size, const kvc_cdict *cdict,
                          uint32_t dict_id, struct keyed k, unsigned char *out, size_t room,
                          kvc_err *err)
{
    unsigned char *payload = out + KVC_HEADER_SIZE;
    size_t payload_len = raw_len;
    uint32_t rec_dict_id = 0;
    int compressed = 0;

    if (KVC_UNLIKELY(raw_len > max_value_size || raw_len > 0xFFFFFFFFu)) {
        err->a = (int64_t)raw_len;
        err->b = (int64_t)max_value_size;
        return KVC_E_ENCODE_SIZE;
    }
    /* The frame is written where the payload goes and kept only when it is
     * strictly smaller than the value; otherwise the value is copied over it. */
    if (wants_zstd(raw_len, min_size)) {
        size_t z;
        if (cdict != NULL) {
            z = Z.CCtx_refCDict(ctx->cctx, cdict->cdict);
            if (Z.isError(z)) {
                err->zstd_error = Z.getErrorName(z);
                return KVC_E_COMPRESS;
            }
        }
        z = Z.compress2(ctx->cctx, payload, room - KVC_HEADER_SIZE, raw, raw_len);
        if (cdict != NULL)
            Z.CCtx_refCDict(ctx->cctx, NULL); /* hold no pointer between calls */
        if (Z.isError(z)) {
            err->zstd_error = Z.getErrorName(z);
            return Z.getErrorCode(z) == ZSTD_error_memory_allocation ? KVC_E_NOMEM
                                                                     : KVC_E_COMPRESS;
        }
        if (z < raw_len) {
            compressed = 1;
            payload_len = z;
            flags |= KVC_FLAG_ZSTD;
            if (cdict != NULL) {
                flags |= KVC_FLAG_DICT;
                rec_dict_id = dict_id;
            }
        }
    }
    if (!compressed && raw_len > 0)
        memcpy(payload, raw, raw_len);
    put_header(out, k.version, flags, (uint32_t)raw_len, rec_dict_id,
               kvc_xxh64_seeded(payload, payload_len, k.seed));
    return (int64_t)(KVC_HEADER_SIZE + payload_len);
}

static int64_t encode_single(kvc_ctx *ctx, int flags, const char *raw, size_t raw_len,
                             size_t min_size, size_t max_value_size,
                             const kvc_cdict *cdict, uint32_t dict_id,
                             const char *key, size_t key_len,
                             char *out, size_t out_cap, kvc_err *err)
{
    size_t room;
    err->zstd_error = NULL;
    err->index = 0;
    if (KVC_UNLIKELY(!z_loaded))
        return KVC_E_NO_ZSTD;
    room = encode_room(raw_len, min_size, max_value_size);
    if (out_cap < room) {
        err->a = (int64_t)room;
        return KVC_E_SPACE;
    }
    return encode_one(ctx, flags, (const unsigned char *)raw, raw_len, min_size,
                      max_value_size, cdict, dict_id, keyed_of(key, key_len),
                      (unsigned char *)out, room, err);
}

int64_t kvc_encode(kvc_ctx *ctx, int flags, const char *raw, size_t raw_len,
                   const char *key, size_t key_len)
{
    return encode_single(ctx, flags, raw, raw_len, ctx->min_size, ctx->max_value_size,
                         NULL, 0, key, key_len, ctx->out, ctx->out_cap, &ctx->err);
}

int64_t kvc_encode_into(kvc_ctx *ctx, int flags, const char *raw, size_t raw_len,
                        const kvc_cdict *cdict, uint32_t dict_id,
                        const char *key, size_t key_len, char *out, size_t out_cap)
{
    return encode_single(ctx, flags, raw, raw_len, ctx->min_size, ctx->max_value_size,
                         cdict, dict_id, key, key_len, out, out_cap, &ctx->err);
}

/* Group calls: the items of a group are claimed one at a time from a
 * shared counter by the caller and, for a large enough group, by the
 * worker too, each with zstd contexts of its own; every item's input and
 * output offsets are fixed beforehand, so the order they are done in does
 * not matter, and the faster runner simply does more of them. */

struct runner {
    kvc_ctx *zctx; /* whose zstd contexts this runner uses */
    void *group;
    int rc;        /* 0, or the KVC_E_* code of its lowest failing item */
    size_t bad;    /* that item */
    kvc_err err;
};

static inline size_t claim(size_t *next)
{
    return __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
}

/* Run fn over the two runners, split or not; the first error by item. */
static int run_group(kvc_ctx *ctx, int split, void *(*fn)(void *), void *group,
                     size_t *bad, kvc_err *err)
{
    struct runner r[2];
    kvc_ctx *helper = split ? helper_of(ctx) : NULL;
    int i, rc = 0;

    memset(r, 0, sizeof r);
    r[0].zctx = ctx;
    r[1].zctx = helper;
    r[0].group = r[1].group = group;
    if (helper != NULL)
        run_pair(fn, &r[0], &r[1]);
    else
        fn(&r[0]);
    for (i = 0; i < 2; i++) {
        if (r[i].rc && (rc == 0 || r[i].bad < *bad)) {
            rc = r[i].rc;
            *bad = r[i].bad;
            *err = r[i].err;
        }
    }
    return rc;
}

struct enc_group {
    size_t n;
    size_t next; /* the next item to claim */
    const unsigned char *flags;
    const unsigned char *src;
    const size_t *lens;
    const size_t *src_off; /* where each value starts in src */
    const size_t *room_off; /* where each record is written in out */
    const kvc_cdict *cdict;
    uint32_t dict_id;
    const char *keys;      /* NULL: version 1 records */
    const size_t *key_lens;
    const size_t *key_off; /* where each key starts in keys */
    size_t min_size, max_value_size;
    unsigned char *out;
    size_t *out_lens;
};

static void *enc_run(void *arg)
{
    struct runner *r = (struct runner *)arg;
    struct enc_group *g = (struct enc_group *)r->group;
    size_t i;

    while ((i = claim(&g->next)) < g->n) {
        size_t room = g->room_off[i + 1] - g->room_off[i];
        struct keyed k = keyed_of(g->keys ? g->keys + g->key_off[i] : NULL,
                                  g->keys ? g->key_lens[i] : 0);
        int64_t len = encode_one(r->zctx, g->flags[i], g->src + g->src_off[i], g->lens[i],
                                 g->min_size, g->max_value_size, g->cdict, g->dict_id, k,
                                 g->out + g->room_off[i], room, &r->err);
        if (len < 0) {
            r->rc = (int)len;
            r->bad = i;
            return NULL; /* later items have higher positions */
        }
        g->out_lens[i] = (size_t)len;
    }
    return NULL;
}

int64_t kvc_encode_many(kvc_ctx *ctx, size_t n, const char *flags,
                        const char *raws, const size_t *lens,
                        const kvc_cdict *cdict, uint32_t dict_id,
                        const char *keys, const size_t *key_lens,
                        char *out, size_t out_cap, size_t *out_lens)
{
    kvc_err *err = &ctx->err;
    struct enc_group g;
    size_t *offs, total = 0, at = 0, bad = 0, i;
    int rc;

    err->zstd_error = NULL;
    err->index = 0;
    if (KVC_UNLIKELY(!z_loaded))
        return KVC_E_NO_ZSTD;
    offs = (size_t *)malloc(3 * (n + 1) * sizeof *offs);
    if (offs == NULL)
        return KVC_E_NOMEM;
    offs[2 * n + 2] = 0; /* where each key starts: offs + 2n + 2 */
    for (i = 0; keys != NULL && i < n; i++)
        offs[2 * n + 3 + i] = offs[2 * n + 2 + i] + key_lens[i];
    /* Every record may need its worst case while it is being compressed;
     * the records are moved together afterwards. */
    offs[0] = offs[n + 1] = 0;
    for (i = 0; i < n; i++) {
        offs[i + 1] = offs[i] + encode_room(lens[i], ctx->min_size, ctx->max_value_size);
        offs[n + 2 + i] = offs[n + 1 + i] + lens[i];
    }
    total = offs[2 * n + 1];
    if (out_cap < offs[n]) {
        err->a = (int64_t)offs[n];
        free(offs);
        return KVC_E_SPACE;
    }
    {
        struct enc_group init = {
            .n = n, .flags = (const unsigned char *)flags, .src = (const unsigned char *)raws,
            .lens = lens, .src_off = offs + n + 1, .room_off = offs, .cdict = cdict,
            .dict_id = dict_id, .keys = keys, .key_lens = key_lens, .key_off = offs + 2 * n + 2,
            .min_size = ctx->min_size, .max_value_size = ctx->max_value_size,
            .out = (unsigned char *)out, .out_lens = out_lens,
        };
        g = init;
    }
    rc = run_group(ctx, n >= 2 && total >= ctx->split_encode_min, enc_run, &g, &bad, err);
    if (rc) {
        free(offs);
        err->index = bad;
        return rc;
    }
    for (i = 0; i < n; i++) { /* end to end */
        if (at != offs[i])
            memmove(out + at, out + offs[i], out_lens[i]);
        at += out_lens[i];
    }
    free(offs);
    return (int64_t)at;
}

/* ------------------------------------------------------------------------
 * Decoding. The checks and their order follow format.parse_header and
 * pycodec.Codec.decode, so both backends refuse the same records with the
 * same kind of error.
 */

struct header {
    int version;
    int flags;
    uint32_t raw_len;
    uint32_t dict_id;
    uint64_t checksum;
};

static int parse_header(const unsigned char *rec, size_t len, size_t max_value_size,
                        struct header *h, kvc_err *err)
{
    int version;
    if (len < KVC_HEADER_SIZE) {
        err->a = (int64_t)len;
        return KVC_E_SHORT;
    }
    version = h->version = rec[0];
    h->flags = rec[1];
    h->raw_len = load32(rec + 2);
    h->dict_id = load32(rec + 6);
    h->checksum = load64(rec + 10);
    if (KVC_UNLIKELY(version != KVC_VERSION && version != KVC_VERSION_KEYED)) {
        err->a = version;
        return version > KVC_VERSION ? KVC_E_NEWER : KVC_E_VERSION;
    }
    if (KVC_UNLIKELY(h->flags & ~KNOWN_FLAGS)) {
        err->a = h->flags;
        return KVC_E_FLAGS;
    }
    if (h->flags & KVC_FLAG_DICT) {
        if (!(h->flags & KVC_FLAG_ZSTD))
            return KVC_E_DICT_NO_ZSTD;
        if (h->dict_id == 0)
            return KVC_E_DICT_ZERO;
    } else if (KVC_UNLIKELY(h->dict_id != 0)) {
        err->a = h->dict_id;
        return KVC_E_DICT_ID;
    }
    if (KVC_UNLIKELY(h->raw_len > max_value_size)) {
        err->a = h->raw_len;
        err->b = (int64_t)max_value_size;
        return KVC_E_TOO_LARGE;
    }
    if (!(h->flags & KVC_FLAG_ZSTD) && h->raw_len != len - KVC_HEADER_SIZE) {
        err->a = h->raw_len;
        err->b = (int64_t)(len - KVC_HEADER_SIZE);
        return KVC_E_RAW_LEN;
    }
    return 0;
}

/* The checks that need the payload but no output: the checksum (of a v3
 * record, seeded with the hash of key, which it needs), then for a zstd
 * payload the frame's declared content size. */
static int verify_payload(const unsigned char *rec, size_t len, const struct header *h,
                          const char *key, size_t key_len, kvc_err *err)
{
    const unsigned char *payload = rec + KVC_HEADER_SIZE;
    size_t payload_len = len - KVC_HEADER_SIZE;
    unsigned long long declared;

    if (h->version == KVC_VERSION_KEYED) {
        if (KVC_UNLIKELY(key == NULL))
            return KVC_E_NO_KEY;
        if (kvc_xxh64_seeded(payload, payload_len, kvc_xxh64(key, key_len)) != h->checksum)
            return KVC_E_KEY_CHECKSUM;
    } else if (kvc_xxh64(payload, payload_len) != h->checksum) {
        return KVC_E_CHECKSUM;
    }
    if (!(h->flags & KVC_FLAG_ZSTD))
        return 0;
    declared = Z.getFrameContentSize(payload, payload_len);
    if (declared == ZSTD_CONTENTSIZE_ERROR)
        return KVC_E_NOT_FRAME;
    if (declared != h->raw_len) {
        err->a = declared == ZSTD_CONTENTSIZE_UNKNOWN ? -1 : (int64_t)declared;
        err->b = h->raw_len;
        return KVC_E_FRAME_SIZE;
    }
    return 0;
}

/* The serialized bytes of a verified record into out (room for raw_len). */
static int inflate_payload(kvc_ctx *ctx, const unsigned char *rec, size_t len,
                           const struct header *h, const kvc_ddict *ddict,
                           unsigned char *out, kvc_err *err)
{
    const unsigned char *payload = rec + KVC_HEADER_SIZE;
    size_t payload_len = len - KVC_HEADER_SIZE;
    size_t frame_len, got;

    if (!(h->flags & KVC_FLAG_ZSTD)) {
        if (payload_len)
            memcpy(out, payload, payload_len);
        return 0;
    }
    if ((h->flags & KVC_FLAG_DICT) && ddict == NULL) {
        err->a = h->dict_id;
        return KVC_E_NO_DICT;
    }
    /* Only the first frame counts, as in the Python backend (the zstandard
     * package stops after one frame and ignores what follows). */
    frame_len = Z.findFrameCompressedSize(payload, payload_len);
    if (Z.isError(frame_len)) {
        err->zstd_error = Z.getErrorName(frame_len);
        return KVC_E_INFLATE;
    }
    /* dst capacity is raw_len: zstd cannot write past it, whatever the
     * frame holds, and fails with dstSize_tooSmall instead. */
    if (h->flags & KVC_FLAG_DICT)
        got = Z.decompress_usingDDict(ctx->dctx, out, h->raw_len, payload, frame_len,
                                      ddict->ddict);
    else
        got = Z.decompressDCtx(ctx->dctx, out, h->raw_len, payload, frame_len);
    if (Z.isError(got)) {
        err->zstd_error = Z.getErrorName(got);
        return KVC_E_INFLATE;
    }
    if (got != h->raw_len) {
        err->a = (int64_t)got;
        err->b = h->raw_len;
        return KVC_E_INFLATE_SIZE;
    }
    return 0;
}

static int64_t decode_single(kvc_ctx *ctx, const char *rec, size_t len,
                             size_t max_value_size, uint32_t dict_id,
                             const kvc_ddict *ddict, const char *key, size_t key_len,
                             char *out, size_t out_cap, kvc_err *err)
{
    const unsigned char *r = (const unsigned char *)rec;
    struct header h;
    int rc;

    err->zstd_error = NULL;
    err->index = 0;
    if (KVC_UNLIKELY(!z_loaded))
        return KVC_E_NO_ZSTD;
    rc = parse_header(r, len, max_value_size, &h, err);
    if (rc == 0)
        rc = verify_payload(r, len, &h, key, key_len, err);
    if (rc)
        return rc;
    if (h.raw_len > out_cap) {
        err->a = h.raw_len;
        return KVC_E_SPACE;
    }
    if ((h.flags & KVC_FLAG_DICT) && h.dict_id != dict_id)
        ddict = NULL;
    rc = inflate_payload(ctx, r, len, &h, ddict, (unsigned char *)out, err);
    if (rc)
        return rc;
    return ((int64_t)h.raw_len << 8) | h.flags;
}

int64_t kvc_decode(kvc_ctx *ctx, const char *rec, size_t len, const char *key, size_t key_len)
{
    return decode_single(ctx, rec, len, ctx->max_value_size, 0, NULL, key, key_len, ctx->out,
                         ctx->out_cap, &ctx->err);
}

int64_t kvc_decode_into(kvc_ctx *ctx, const char *rec, size_t len, uint32_t dict_id,
                        const kvc_ddict *ddict, const char *key, size_t key_len,
                        char *out, size_t out_cap)
{
    return decode_single(ctx, rec, len, ctx->max_value_size, dict_id, ddict, key, key_len, out,
                         out_cap, &ctx->err);
}

struct dec_group {
    size_t n;
    size_t next; /* the next item to claim */
    const unsigned char *recs;
    const size_t *lens;
    const size_t *rec_off; /* where each record starts in recs */
    const size_t *out_off; /* where its serialized bytes go in out */
    const uint64_t *info;  /* from pass 1 */
    size_t ndicts;
    const uint32_t *dict_ids;
    const kvc_ddict *const *ddicts;
    unsigned char *out;
};

static void *dec_run(void *arg)
{
    struct runner *r = (struct runner *)arg;
    struct dec_group *g = (struct dec_group *)r->group;
    struct header h;
    size_t i, k;

    while ((i = claim(&g->next)) < g->n) {
        const unsigned char *rec = g->recs + g->rec_off[i];
        const kvc_ddict *ddict = NULL;
        int rc;
        h.flags = (int)(g->info[i] & 0xff);
        h.raw_len = (uint32_t)(g->info[i] >> 8);
        h.dict_id = load32(rec + 6);
        if (h.flags & KVC_FLAG_DICT) {
            for (k = 0; k < g->ndicts; k++) {
                if (g->dict_ids[k] == h.dict_id) {
                    ddict = g->ddicts[k];
                    break;
                }
            }
        }
        rc = inflate_payload(r->zctx, rec, g->lens[i], &h, ddict, g->out + g->out_off[i], &r->err);
        if (rc) {
            r->rc = rc;
            r->bad = i;
            return NULL;
        }
    }
    return NULL;
}

int64_t kvc_decode_many(kvc_ctx *ctx, size_t n, const char *recs,
                        const size_t *lens, size_t ndicts,
                        const uint32_t *dict_ids, const kvc_ddict *const *ddicts,
                        const char *keys, const size_t *key_lens,
                        char *out, size_t out_cap, uint64_t *info)
{
    size_t max_value_size = ctx->max_value_size;
    kvc_err *err = &ctx->err;
    size_t *offs, need, at, good, bad = 0, key_at = 0;
    struct header h;
    struct dec_group g;
    kvc_err first = {0, 0, 0, NULL};
    int first_rc = 0, rc;

    err->zstd_error = NULL;
    err->index = 0;
    if (KVC_UNLIKELY(!z_loaded))
        return KVC_E_NO_ZSTD;
    offs = (size_t *)malloc(2 * (n + 1) * sizeof *offs);
    if (offs == NULL)
        return KVC_E_NOMEM;
    /* Pass 1: headers, checksums and declared sizes, up to the first bad
     * record (whose error is kept); where each good one's bytes go. */
    offs[0] = offs[n + 1] = 0;
    for (good = 0; good < n; good++) {
        at = offs[good];
        first_rc = parse_header((const unsigned char *)recs + at, lens[good], max_value_size,
                                &h, &first);
        if (first_rc == 0)
            first_rc = verify_payload((const unsigned char *)recs + at, lens[good], &h,
                                      keys ? keys + key_at : NULL, keys ? key_lens[good] : 0,
                                      &first);
        if (first_rc)
            break;
        if (keys != NULL)
            key_at += key_lens[good];
        info[good] = ((uint64_t)h.raw_len << 8) | (uint64_t)h.flags;
        offs[good + 1] = at + lens[good];
        offs[n + 2 + good] = offs[n + 1 + good] + h.raw_len;
    }
    need = offs[n + 1 + good];
    if (need > out_cap) {
        free(offs);
        err->a = (int64_t)need;
        return KVC_E_SPACE;
    }
    /* Pass 2: decompress the good ones; an error there comes first. */
    memset(&g, 0, sizeof g);
    g.n = good;
    g.recs = (const unsigned char *)recs;
    g.lens = lens;
    g.rec_off = offs;
    g.out_off = offs + n + 1;
    g.info = info;
    g.ndicts = ndicts;
    g.dict_ids = dict_ids;
    g.ddicts = ddicts;
    g.out = (unsigned char *)out;
    rc = run_group(ctx, good >= 2 && need >= ctx->split_decode_min, dec_run, &g, &bad, err);
    free(offs);
    if (rc) {
        err->index = bad;
        return rc;
    }
    if (first_rc) {
        *err = first;
        err->index = good;
        return first_rc;
    }
    return (int64_t)need;
}
