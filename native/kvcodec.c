/* kvcodec: native backend of kvstore's value codec. See kvcodec.h for the
 * interface and docs/native.md for the design.
 *
 * Record (value format v1, little endian):
 *   offset 0  u8   version (1)
 *   offset 1  u8   flags
 *   offset 2  u32  raw_len
 *   offset 6  u32  dict_id
 *   offset 10 u64  XXH64 (seed 0) of the payload
 *   offset 18      payload
 */
#include "kvcodec.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
 * xxHash project), seed fixed at 0.
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

uint64_t kvc_xxh64(const void *data, size_t len)
{
    const unsigned char *p = (const unsigned char *)data;
    const unsigned char *end = p + len;
    uint64_t acc;

    if (len >= 32) {
        /* Four accumulators, each fed every fourth lane of a 32-byte stripe. */
        uint64_t v1 = P64_1 + P64_2;
        uint64_t v2 = P64_2;
        uint64_t v3 = 0;
        uint64_t v4 = 0 - P64_1;
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
        acc = P64_5;
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
    size_t min_size;       /* compress values of at least this size */
    size_t max_value_size; /* largest serialized value */
    char *out;             /* output buffer of kvc_encode / kvc_decode */
    size_t out_cap;
    kvc_err err;           /* details of the last error */
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
    ctx->min_size = min_size;
    ctx->max_value_size = max_value_size;
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

void kvc_ctx_free(kvc_ctx *ctx)
{
    if (ctx == NULL)
        return;
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

static inline void put_header(unsigned char *out, int flags, uint32_t raw_len,
                              uint32_t dict_id, uint64_t checksum)
{
    out[0] = KVC_VERSION;
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
                          uint32_t dict_id, unsigned char *out, size_t room, kvc_err *err)
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
    put_header(out, flags, (uint32_t)raw_len, rec_dict_id, kvc_xxh64(payload, payload_len));
    return (int64_t)(KVC_HEADER_SIZE + payload_len);
}

static int64_t encode_single(kvc_ctx *ctx, int flags, const char *raw, size_t raw_len,
                             size_t min_size, size_t max_value_size,
                             const kvc_cdict *cdict, uint32_t dict_id,
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
                      max_value_size, cdict, dict_id, (unsigned char *)out, room, err);
}

int64_t kvc_encode(kvc_ctx *ctx, int flags, const char *raw, size_t raw_len)
{
    return encode_single(ctx, flags, raw, raw_len, ctx->min_size, ctx->max_value_size,
                         NULL, 0, ctx->out, ctx->out_cap, &ctx->err);
}

int64_t kvc_encode_into(kvc_ctx *ctx, int flags, const char *raw, size_t raw_len,
                        const kvc_cdict *cdict, uint32_t dict_id, char *out, size_t out_cap)
{
    return encode_single(ctx, flags, raw, raw_len, ctx->min_size, ctx->max_value_size,
                         cdict, dict_id, out, out_cap, &ctx->err);
}

int64_t kvc_encode_many(kvc_ctx *ctx, size_t n, const char *flags,
                        const char *raws, const size_t *lens,
                        const kvc_cdict *cdict, uint32_t dict_id,
                        char *out, size_t out_cap, size_t *out_lens)
{
    size_t min_size = ctx->min_size, max_value_size = ctx->max_value_size;
    kvc_err *err = &ctx->err;
    const unsigned char *src = (const unsigned char *)raws;
    unsigned char *dst = (unsigned char *)out;
    size_t need = 0, i;

    err->zstd_error = NULL;
    err->index = 0;
    if (KVC_UNLIKELY(!z_loaded))
        return KVC_E_NO_ZSTD;
    /* Every record may need its worst case while it is being compressed;
     * what it does not use goes to the next one. */
    for (i = 0; i < n; i++)
        need += encode_room(lens[i], min_size, max_value_size);
    if (out_cap < need) {
        err->a = (int64_t)need;
        return KVC_E_SPACE;
    }
    for (i = 0; i < n; i++) {
        size_t room = encode_room(lens[i], min_size, max_value_size);
        int64_t r = encode_one(ctx, (unsigned char)flags[i], src, lens[i], min_size,
                               max_value_size, cdict, dict_id, dst, room, err);
        if (r < 0) {
            err->index = i;
            return r;
        }
        out_lens[i] = (size_t)r;
        src += lens[i];
        dst += r;
    }
    return (int64_t)(dst - (unsigned char *)out);
}

/* ------------------------------------------------------------------------
 * Decoding. The checks and their order follow format.parse_header and
 * pycodec.Codec.decode, so both backends refuse the same records with the
 * same kind of error.
 */

struct header {
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
    version = rec[0];
    h->flags = rec[1];
    h->raw_len = load32(rec + 2);
    h->dict_id = load32(rec + 6);
    h->checksum = load64(rec + 10);
    if (KVC_UNLIKELY(version != KVC_VERSION)) {
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

/* The checks that need the payload but no output: the checksum, then for a
 * zstd payload the frame's declared content size. */
static int verify_payload(const unsigned char *rec, size_t len, const struct header *h,
                          kvc_err *err)
{
    const unsigned char *payload = rec + KVC_HEADER_SIZE;
    size_t payload_len = len - KVC_HEADER_SIZE;
    unsigned long long declared;

    if (kvc_xxh64(payload, payload_len) != h->checksum)
        return KVC_E_CHECKSUM;
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
                             const kvc_ddict *ddict, char *out, size_t out_cap,
                             kvc_err *err)
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
        rc = verify_payload(r, len, &h, err);
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

int64_t kvc_decode(kvc_ctx *ctx, const char *rec, size_t len)
{
    return decode_single(ctx, rec, len, ctx->max_value_size, 0, NULL, ctx->out, ctx->out_cap,
                         &ctx->err);
}

int64_t kvc_decode_into(kvc_ctx *ctx, const char *rec, size_t len, uint32_t dict_id,
                        const kvc_ddict *ddict, char *out, size_t out_cap)
{
    return decode_single(ctx, rec, len, ctx->max_value_size, dict_id, ddict, out, out_cap,
                         &ctx->err);
}

int64_t kvc_decode_many(kvc_ctx *ctx, size_t n, const char *recs,
                        const size_t *lens, size_t ndicts,
                        const uint32_t *dict_ids, const kvc_ddict *const *ddicts,
                        char *out, size_t out_cap, uint64_t *info)
{
    size_t max_value_size = ctx->max_value_size;
    kvc_err *err = &ctx->err;
    const unsigned char *r = (const unsigned char *)recs;
    unsigned char *dst = (unsigned char *)out;
    size_t need = 0, good, i, j;
    struct header h;
    kvc_err first = {0, 0, 0, NULL};
    int first_rc = 0;

    err->zstd_error = NULL;
    err->index = 0;
    if (KVC_UNLIKELY(!z_loaded))
        return KVC_E_NO_ZSTD;
    /* Pass 1: headers, checksums and declared sizes, up to the first bad
     * record (whose error is kept); the room the good ones need. */
    for (good = 0; good < n; good++) {
        first_rc = parse_header(r, lens[good], max_value_size, &h, &first);
        if (first_rc == 0)
            first_rc = verify_payload(r, lens[good], &h, &first);
        if (first_rc)
            break;
        info[good] = ((uint64_t)h.raw_len << 8) | (uint64_t)h.flags;
        need += h.raw_len;
        r += lens[good];
    }
    if (need > out_cap) {
        err->a = (int64_t)need;
        return KVC_E_SPACE;
    }
    /* Pass 2: decompress the good ones; an error there comes first. */
    r = (const unsigned char *)recs;
    for (i = 0; i < good; i++) {
        const kvc_ddict *ddict = NULL;
        int rc;
        h.flags = (int)(info[i] & 0xff);
        h.raw_len = (uint32_t)(info[i] >> 8);
        h.dict_id = load32(r + 6);
        if (h.flags & KVC_FLAG_DICT) {
            for (j = 0; j < ndicts; j++) {
                if (dict_ids[j] == h.dict_id) {
                    ddict = ddicts[j];
                    break;
                }
            }
        }
        rc = inflate_payload(ctx, r, lens[i], &h, ddict, dst, err);
        if (rc) {
            err->index = i;
            return rc;
        }
        dst += h.raw_len;
        r += lens[i];
    }
    if (first_rc) {
        *err = first;
        err->index = good;
        return first_rc;
    }
    return (int64_t)(dst - (unsigned char *)out);
}
