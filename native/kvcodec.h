/* kvcodec: the native backend of kvstore's value codec (value formats v1, v3).
 *
 * The record layout is defined in kvstore/codec/format.py. This library
 * builds and checks record headers, computes XXH64 and drives zstd,
 * which it reaches at run time through dlopen (see kvc_load_zstd and
 * docs/native.md): no zstd header or library is needed to build it.
 *
 * Nothing here touches a Python object, so cffi calls it with the GIL
 * released. A kvc_ctx belongs to one thread at a time; kvc_cdict and
 * kvc_ddict are read-only once made and may be shared by any number of
 * threads.
 *
 * The part between the CDEF markers is read by native/build_native.py as the
 * cffi declarations: keep it to plain declarations and integer #defines.
 */
#ifndef KVCODEC_H
#define KVCODEC_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
#define KVC_HEADER_SIZE 18
#define KVC_VERSION 1
#define KVC_VERSION_KEYED 3
#define KVC_FLAG_MSGPACK 1
#define KVC_FLAG_ZSTD 2
#define KVC_FLAG_DICT 4

/* Error codes: every entry point that can fail returns one of these
 * (negative) numbers, with the details in a kvc_err. The messages users see
 * are not here: kvstore/codec/nativecodec.py maps each code onto a Reason of
 * the one table of refusals in kvstore/codec/format.py, which the Python
 * backend uses too. */
#define KVC_E_SHORT -1          /* record shorter than the header; a = length */
#define KVC_E_NEWER -2          /* version from a newer kvstore; a = version */
#define KVC_E_VERSION -3        /* version 0; a = version */
#define KVC_E_FLAGS -4          /* unknown flag bits; a = flags */
#define KVC_E_DICT_NO_ZSTD -5   /* FLAG_DICT without FLAG_ZSTD */
#define KVC_E_DICT_ZERO -6      /* FLAG_DICT with dictionary id 0 */
#define KVC_E_DICT_ID -7        /* dictionary id without FLAG_DICT; a = id */
#define KVC_E_TOO_LARGE -8      /* raw_len over max_value_size; a = raw_len, b = limit */
#define KVC_E_RAW_LEN -9        /* uncompressed, raw_len != payload; a = raw_len, b = payload */
#define KVC_E_CHECKSUM -10      /* XXH64 of the payload differs from the header */
#define KVC_E_NOT_FRAME -11     /* payload is not a zstd frame; zstd_error may be set */
#define KVC_E_FRAME_SIZE -12    /* frame content size != raw_len; a = declared (-1 unknown), b = raw_len */
#define KVC_E_NO_DICT -13       /* no dictionary given for the record's id; a = id */
#define KVC_E_INFLATE -14       /* zstd failed to decompress; zstd_error set */
#define KVC_E_INFLATE_SIZE -15  /* decompressed size != raw_len; a = got, b = raw_len */
#define KVC_E_SPACE -16         /* output buffer too small; a = bytes needed */
#define KVC_E_ENCODE_SIZE -17   /* value over max_value_size at encode; a = length, b = limit */
#define KVC_E_COMPRESS -18      /* zstd failed to compress; zstd_error set */
#define KVC_E_NOMEM -19         /* an allocation failed */
#define KVC_E_NO_ZSTD -20       /* kvc_load_zstd has not succeeded */
#define KVC_E_NO_KEY -21        /* a version 3 record decoded without its key */
#define KVC_E_KEY_CHECKSUM -22  /* a version 3 record's checksum fails with the key given */

typedef struct kvc_ctx kvc_ctx;
typedef struct kvc_cdict kvc_cdict;
typedef struct kvc_ddict kvc_ddict;

typedef struct {
    int64_t a;              /* numbers for the message, see the codes */
    int64_t b;
    size_t index;           /* batch calls: position of the failing item */
    const char *zstd_error; /* zstd's name for its error, or NULL (static string) */
} kvc_err;

/* Load libzstd from `path` (a shared object exporting the ZSTD_* API:
 * libzstd.so.1 or the zstandard package's _cffi extension). Returns 0 on
 * success (or if already loaded), -1 with a message in msg otherwise. Call
 * it before anything below except kvc_xxh64, from one thread. */
int kvc_load_zstd(const char *path, char *msg, size_t msg_cap);
unsigned kvc_zstd_version(void);

/* XXH64 with seed 0, and with a seed. */
uint64_t kvc_xxh64(const void *data, size_t len);
uint64_t kvc_xxh64_seeded(const void *data, size_t len, uint64_t seed);

/* Per-thread state: zstd compression and decompression contexts, the
 * settings of a Codec, an output buffer and the last error's details.
 * level is the zstd level used without a dictionary; values of at least
 * min_size bytes are compressed (SIZE_MAX: never); max_value_size bounds
 * what is encoded or decoded. NULL when out of memory. */
kvc_ctx *kvc_ctx_new(int level, size_t min_size, size_t max_value_size);
void kvc_ctx_free(kvc_ctx *ctx);
/* Where the details of a failed call go (lives as long as ctx). */
kvc_err *kvc_ctx_err(kvc_ctx *ctx);
/* The buffer kvc_encode and kvc_decode write to (owned by the caller). */
void kvc_ctx_set_output(kvc_ctx *ctx, char *out, size_t cap);

/* Let group calls (kvc_encode_many, kvc_decode_many) split their work in
 * two, the second half on a thread of its own (started for the call, with
 * zstd contexts of its own kept in ctx), when the group has at least
 * encode_min bytes of values to encode or decode_min bytes to decompress
 * into; 0 turns splitting off (the default). The output is the same. */
void kvc_ctx_set_split(kvc_ctx *ctx, size_t encode_min, size_t decode_min);

/* Digested dictionaries (the bytes are copied). NULL on failure. */
kvc_cdict *kvc_cdict_new(const void *dict, size_t len, int level);
void kvc_cdict_free(kvc_cdict *cdict);
kvc_ddict *kvc_ddict_new(const void *dict, size_t len);
void kvc_ddict_free(kvc_ddict *ddict);

/* Keys: every encode and decode takes the key the record is stored under
 * (key, key_len; in group calls all keys end to end in `keys`, their
 * lengths in key_lens). Encoding with a key writes a version 3 record,
 * whose checksum is XXH64 of the payload seeded with XXH64 of the key;
 * with key NULL (keys NULL), a version 1 record (seed 0). Decoding checks a
 * version 3 record against the key given (KVC_E_KEY_CHECKSUM; KVC_E_NO_KEY
 * when it is NULL) and a version 1 record as before, whatever the key.
 *
 * One record for serialized bytes `raw` (flags: 0 or KVC_FLAG_MSGPACK),
 * written to out. Compresses when raw_len >= min_size, keeping the frame
 * only if strictly smaller; with cdict, frames carry no dict id and the
 * record gets FLAG_DICT and dict_id. out needs 18 bytes plus
 * ZSTD_compressBound(raw_len) when compressing, else plus raw_len (at most
 * 18 + raw_len + raw_len / 256 + 64 in all); KVC_E_SPACE with the size in
 * err->a otherwise. Returns the record's length, or a KVC_E_* code. */
int64_t kvc_encode_into(kvc_ctx *ctx, int flags, const char *raw, size_t raw_len,
                        const kvc_cdict *cdict, uint32_t dict_id,
                        const char *key, size_t key_len, char *out, size_t out_cap);
/* kvc_encode_into without a dictionary, into the context's buffer. */
int64_t kvc_encode(kvc_ctx *ctx, int flags, const char *raw, size_t raw_len,
                   const char *key, size_t key_len);

/* kvc_encode_into for n values laid end to end in `raws` (lengths in lens,
 * flags one byte each). Records go end to end into out (which needs the
 * sum of what kvc_encode_into would need for each), their lengths into
 * out_lens. Returns the total length or a KVC_E_* code with err->index. */
int64_t kvc_encode_many(kvc_ctx *ctx, size_t n, const char *flags,
                        const char *raws, const size_t *lens,
                        const kvc_cdict *cdict, uint32_t dict_id,
                        const char *keys, const size_t *key_lens,
                        char *out, size_t out_cap, size_t *out_lens);

/* Check a record and write its serialized bytes to out. ddict is the
 * dictionary for id dict_id (NULL: none). Returns (raw_len << 8) | flags,
 * or a KVC_E_* code; KVC_E_SPACE when out_cap < raw_len (err->a), checked
 * after the header, the checksum and the frame's declared size. */
int64_t kvc_decode_into(kvc_ctx *ctx, const char *rec, size_t len, uint32_t dict_id,
                        const kvc_ddict *ddict, const char *key, size_t key_len,
                        char *out, size_t out_cap);
/* kvc_decode_into without a dictionary, into the context's buffer. */
int64_t kvc_decode(kvc_ctx *ctx, const char *rec, size_t len, const char *key, size_t key_len);

/* kvc_decode_into for n records laid end to end in `recs` (lengths in
 * lens), with ndicts dictionaries by id. Serialized bytes go end to end
 * into out, info[i] = (raw_len << 8) | flags. Returns the total written, or
 * a KVC_E_* code for the first bad record (err->index), or KVC_E_SPACE with
 * the size needed in err->a. */
int64_t kvc_decode_many(kvc_ctx *ctx, size_t n, const char *recs,
                        const size_t *lens, size_t ndicts,
                        const uint32_t *dict_ids, const kvc_ddict *const *ddicts,
                        const char *keys, const size_t *key_lens,
                        char *out, size_t out_cap, uint64_t *info);
/* CDEF-END */

#endif
