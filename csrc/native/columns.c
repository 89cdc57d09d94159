/* Row-to-column transpose for Arrow export; see csrc/include/40-columns.h. */
#include <string.h>

#include "40-columns.h"

/* Rows per block: 256 rows of 224 bytes (56 KiB) stay in the L2 cache while every column of
 * the block is copied out. */
#define FK_GATHER_BLOCK 256

#define FK_GATHER_LOOP(type)                                                        \
    do {                                                                            \
        type *out = (type *)(void *)dst;                                            \
        for (uint64_t i = start; i < end; i++) {                                    \
            type v;                                                                 \
            memcpy(&v, src + i * stride, sizeof(type));                             \
            out[i] = v;                                                             \
        }                                                                           \
    } while (0)

void fk_gather_columns(const uint8_t *rows, uint64_t nrows, uint64_t stride,
                       const struct fk_column *cols, uint32_t ncols)
{
    for (uint64_t start = 0; start < nrows; start += FK_GATHER_BLOCK) {
        uint64_t end = start + FK_GATHER_BLOCK < nrows ? start + FK_GATHER_BLOCK : nrows;
        for (uint32_t c = 0; c < ncols; c++) {
            const uint8_t *src = rows + cols[c].offset;
            uint8_t *dst = cols[c].dst;
            uint32_t width = cols[c].width;
            switch (width) {
            case 1:
                FK_GATHER_LOOP(uint8_t);
                break;
            case 2:
                FK_GATHER_LOOP(uint16_t);
                break;
            case 4:
                FK_GATHER_LOOP(uint32_t);
                break;
            case 8:
                FK_GATHER_LOOP(uint64_t);
                break;
            default:
                for (uint64_t i = start; i < end; i++)
                    memcpy(dst + i * width, src + i * stride, width);
                break;
            }
        }
    }
}

#define FK_FIELD_WIDTH(field) sizeof(((const struct fk_flow_out *)0)->field)

uint32_t fk_flow_column_layout(struct fk_field *out, uint32_t max)
{
    uint32_t c = 0;
#define FK_LAYOUT(field)                                                                    \
    if (c < max) {                                                                          \
        out[c].offset = (uint32_t)offsetof(struct fk_flow_out, field);                      \
        out[c].width = (uint32_t)FK_FIELD_WIDTH(field);                                     \
    }                                                                                       \
    c++;
    FK_FLOW_COLUMN_LIST(FK_LAYOUT)
#undef FK_LAYOUT
    return c;
}

/* The interface index of each row of a block: a branch-free binary search over the sorted keys
 * (rows of a batch come from a few interfaces in hash order, so "same as the previous row" is a
 * coin toss that a branch predictor loses). The keys come from the if_index and netns columns
 * just written, still in the L1 cache. */
static void fk_interface_indices(const struct fk_interface_map *map, const uint32_t *if_index,
                                 const uint16_t *netns, uint64_t start, uint64_t end,
                                 int32_t *out)
{
    uint32_t count = map != NULL ? map->count : 0;
    if (count == 0) {
        memset(out + start, 0, (end - start) * sizeof(*out));
        return;
    }
    const uint64_t *keys = map->keys;
    const int32_t *values = map->values;
    for (uint64_t i = start; i < end; i++) {
        uint64_t key = (uint64_t)netns[i] << 32 | if_index[i];
        uint32_t base = 0, len = count;
        while (len > 1) {
            uint32_t half = len / 2;
            base = keys[base + half - 1] < key ? base + half : base;
            len -= half;
        }
        out[i] = keys[base] == key ? values[base] : 0;
    }
}

/* Column numbers in FK_FLOW_COLUMN_LIST order (the vector path below writes them by name). */
enum {
    FK_COL_SRC_IP, FK_COL_DST_IP, FK_COL_SRC_PORT, FK_COL_DST_PORT, FK_COL_IF_INDEX,
    FK_COL_ETH_PROTOCOL, FK_COL_DIRECTION, FK_COL_PROTO, FK_COL_ICMP_TYPE, FK_COL_ICMP_CODE,
    FK_COL_NETNS, FK_COL_PACKETS, FK_COL_BYTES, FK_COL_START_NS, FK_COL_END_NS, FK_COL_FLAGS,
    FK_COL_DSCP, FK_COL_FEATURES, FK_COL_SAMPLING, FK_COL_SRC_MAC, FK_COL_DST_MAC,
    FK_COL_DUP_COUNT, FK_COL_COUNT
};
_Static_assert((int)FK_COL_COUNT == (int)FK_FLOW_COLUMNS, "FK_COL_* must follow FK_FLOW_COLUMN_LIST");

/* One row at a time, any machine: each field copied with its compile-time offset and width. */
static void fk_rows_scalar(const struct fk_flow_out *rows, uint64_t start, uint64_t end,
                           uint8_t *const *d, uint8_t *features, uint8_t *dups)
{
    for (uint64_t i = start; i < end; i++) {
        const struct fk_flow_out *r = &rows[i];
        uint32_t c = 0;
#define FK_COPY(field)                                                                      \
    memcpy(d[c] + i * FK_FIELD_WIDTH(field), &r->field, FK_FIELD_WIDTH(field));              \
    c++;
        FK_FLOW_COLUMN_LIST(FK_COPY)
#undef FK_COPY
        *features |= r->features;
        *dups |= r->dup_count;
    }
}

#if defined(__x86_64__) && defined(__SSE2__)
#include <emmintrin.h>

/* The vector path relies on where the small fields sit: 8 16-bit words from key.src_port
 * (src_port, dst_port, if_index low/high, eth_protocol, direction|proto, icmp type|code,
 * netns) and 4 from flags (flags, dscp|features, sampling low/high). */
#define FK_AT(field, at) _Static_assert(offsetof(struct fk_flow_out, field) == (at), #field)
FK_AT(key.src_ip, 0);
FK_AT(key.dst_ip, 16);
FK_AT(key.src_port, 32);
FK_AT(key.dst_port, 34);
FK_AT(key.if_index, 36);
FK_AT(key.eth_protocol, 40);
FK_AT(key.direction, 42);
FK_AT(key.proto, 43);
FK_AT(key.icmp_type, 44);
FK_AT(key.icmp_code, 45);
FK_AT(key.netns, 46);
FK_AT(packets, 48);
FK_AT(bytes, 56);
FK_AT(start_ns, 64);
FK_AT(end_ns, 72);
FK_AT(flags, 80);
FK_AT(dscp, 82);
FK_AT(features, 83);
FK_AT(sampling, 84);
FK_AT(src_mac, 88);
FK_AT(dst_mac, 94);
#undef FK_AT

#define FK_LOAD(p) _mm_loadu_si128((const __m128i *)(const void *)(p))
#define FK_STORE(p, v) _mm_storeu_si128((__m128i *)(void *)(p), (v))
/* The wide columns (addresses, 64-bit counters: 64 of the 101 bytes a flow) take whole cache
 * lines from each group of 16 rows: written with non-temporal stores when aligned, they skip
 * the read of every destination line before its write and leave the cache to the records,
 * which measured 10-20% faster. */
#define FK_WIDE(p, v)                                                                       \
    do {                                                                                    \
        if (stream)                                                                         \
            _mm_stream_si128((__m128i *)(void *)(p), (v));                                  \
        else                                                                                \
            FK_STORE(p, v);                                                                 \
    } while (0)

/* Transpose 8 x 8 16-bit words: x[r] holds the words of row r, then x[w] word w of every row. */
static inline void fk_transpose_8x8(__m128i x[8])
{
    __m128i t0 = _mm_unpacklo_epi16(x[0], x[1]), t1 = _mm_unpackhi_epi16(x[0], x[1]);
    __m128i t2 = _mm_unpacklo_epi16(x[2], x[3]), t3 = _mm_unpackhi_epi16(x[2], x[3]);
    __m128i t4 = _mm_unpacklo_epi16(x[4], x[5]), t5 = _mm_unpackhi_epi16(x[4], x[5]);
    __m128i t6 = _mm_unpacklo_epi16(x[6], x[7]), t7 = _mm_unpackhi_epi16(x[6], x[7]);
    __m128i u0 = _mm_unpacklo_epi32(t0, t2), u1 = _mm_unpackhi_epi32(t0, t2);
    __m128i u2 = _mm_unpacklo_epi32(t1, t3), u3 = _mm_unpackhi_epi32(t1, t3);
    __m128i u4 = _mm_unpacklo_epi32(t4, t6), u5 = _mm_unpackhi_epi32(t4, t6);
    __m128i u6 = _mm_unpacklo_epi32(t5, t7), u7 = _mm_unpackhi_epi32(t5, t7);
    x[0] = _mm_unpacklo_epi64(u0, u4);
    x[1] = _mm_unpackhi_epi64(u0, u4);
    x[2] = _mm_unpacklo_epi64(u1, u5);
    x[3] = _mm_unpackhi_epi64(u1, u5);
    x[4] = _mm_unpacklo_epi64(u2, u6);
    x[5] = _mm_unpackhi_epi64(u2, u6);
    x[6] = _mm_unpacklo_epi64(u3, u7);
    x[7] = _mm_unpackhi_epi64(u3, u7);
}

/* Words (lo | hi << 8) of 16 rows, as two vectors of 8, to 16 lo bytes and 16 hi bytes. */
static inline void fk_split_bytes(__m128i a, __m128i b, uint8_t *lo, uint8_t *hi)
{
    const __m128i mask = _mm_set1_epi16(0xff);
    FK_STORE(lo, _mm_packus_epi16(_mm_and_si128(a, mask), _mm_and_si128(b, mask)));
    FK_STORE(hi, _mm_packus_epi16(_mm_srli_epi16(a, 8), _mm_srli_epi16(b, 8)));
}

/* Rows [start, start + 16): every column written with 16-byte stores (SSE2, the x86-64
 * baseline), the small fields through 8 x 8 word transposes. About 2.5x fewer instructions
 * than a field at a time. `stream`: the wide columns are 16-byte aligned (see FK_WIDE). */
static inline void fk_rows16(const struct fk_flow_out *rows, uint64_t start, uint8_t *const *d,
                             __m128i *features, uint8_t *dups, const int stream)
{
    const uint8_t *r = (const uint8_t *)&rows[start];
    const size_t stride = sizeof(struct fk_flow_out);
    for (int j = 0; j < 16; j += 2) {
        const uint8_t *a = r + j * stride, *b = a + stride;
        uint64_t at = start + (uint64_t)j;
        FK_WIDE(d[FK_COL_SRC_IP] + at * 16, FK_LOAD(a));
        FK_WIDE(d[FK_COL_DST_IP] + at * 16, FK_LOAD(a + 16));
        FK_WIDE(d[FK_COL_SRC_IP] + at * 16 + 16, FK_LOAD(b));
        FK_WIDE(d[FK_COL_DST_IP] + at * 16 + 16, FK_LOAD(b + 16));
        __m128i a48 = FK_LOAD(a + 48), b48 = FK_LOAD(b + 48);
        __m128i a64 = FK_LOAD(a + 64), b64 = FK_LOAD(b + 64);
        FK_WIDE(d[FK_COL_PACKETS] + at * 8, _mm_unpacklo_epi64(a48, b48));
        FK_WIDE(d[FK_COL_BYTES] + at * 8, _mm_unpackhi_epi64(a48, b48));
        FK_WIDE(d[FK_COL_START_NS] + at * 8, _mm_unpacklo_epi64(a64, b64));
        FK_WIDE(d[FK_COL_END_NS] + at * 8, _mm_unpackhi_epi64(a64, b64));
    }
    __m128i k[2][8], v[2][8];
    for (int h = 0; h < 2; h++) {
        for (int j = 0; j < 8; j++) {
            const uint8_t *row = r + (size_t)(8 * h + j) * stride;
            k[h][j] = FK_LOAD(row + 32);
            v[h][j] = _mm_loadl_epi64((const __m128i *)(const void *)(row + 80));
        }
        fk_transpose_8x8(k[h]);
        fk_transpose_8x8(v[h]);
        uint64_t at = start + 8 * (uint64_t)h;
        FK_STORE(d[FK_COL_SRC_PORT] + at * 2, k[h][0]);
        FK_STORE(d[FK_COL_DST_PORT] + at * 2, k[h][1]);
        FK_STORE(d[FK_COL_IF_INDEX] + at * 4, _mm_unpacklo_epi16(k[h][2], k[h][3]));
        FK_STORE(d[FK_COL_IF_INDEX] + at * 4 + 16, _mm_unpackhi_epi16(k[h][2], k[h][3]));
        FK_STORE(d[FK_COL_ETH_PROTOCOL] + at * 2, k[h][4]);
        FK_STORE(d[FK_COL_NETNS] + at * 2, k[h][7]);
        FK_STORE(d[FK_COL_FLAGS] + at * 2, v[h][0]);
        FK_STORE(d[FK_COL_SAMPLING] + at * 4, _mm_unpacklo_epi16(v[h][2], v[h][3]));
        FK_STORE(d[FK_COL_SAMPLING] + at * 4 + 16, _mm_unpackhi_epi16(v[h][2], v[h][3]));
        *features = _mm_or_si128(*features, v[h][1]);
    }
    fk_split_bytes(k[0][5], k[1][5], d[FK_COL_DIRECTION] + start, d[FK_COL_PROTO] + start);
    fk_split_bytes(k[0][6], k[1][6], d[FK_COL_ICMP_TYPE] + start, d[FK_COL_ICMP_CODE] + start);
    fk_split_bytes(v[0][1], v[1][1], d[FK_COL_DSCP] + start, d[FK_COL_FEATURES] + start);
    /* MACs (6 bytes): 8-byte stores, each overlapping the next row's slot, which is written
     * after it; the last row of the group stores exactly 6 bytes (it may be the batch's last). */
    for (int j = 0; j < 16; j++) {
        const uint8_t *row = r + (size_t)j * stride;
        uint8_t *src_mac = d[FK_COL_SRC_MAC] + (start + (uint64_t)j) * 6;
        uint8_t *dst_mac = d[FK_COL_DST_MAC] + (start + (uint64_t)j) * 6;
        if (j < 15) {
            uint64_t s, t;
            memcpy(&s, row + 88, 8);
            memcpy(&t, row + 92, 8);
            t >>= 16;
            memcpy(src_mac, &s, 8);
            memcpy(dst_mac, &t, 8);
        } else {
            memcpy(src_mac, row + 88, 6);
            memcpy(dst_mac, row + 94, 6);
        }
        uint8_t dup = row[offsetof(struct fk_flow_out, dup_count)];
        d[FK_COL_DUP_COUNT][start + (uint64_t)j] = dup;
        *dups |= dup;
    }
}

static uint8_t fk_features_of(__m128i words)
{
    uint16_t w[8];
    uint8_t out = 0;
    _mm_storeu_si128((__m128i *)(void *)w, words);
    for (int j = 0; j < 8; j++)
        out |= (uint8_t)(w[j] >> 8);
    return out;
}
#endif

uint32_t fk_flow_columns(const struct fk_flow_out *rows, uint64_t nrows, uint8_t *const *dst,
                         const struct fk_interface_map *interfaces, int32_t *if_out)
{
    uint8_t *d[FK_FLOW_COLUMNS];
    uint8_t features = 0, dups = 0;

    memcpy(d, dst, sizeof(d));
#if defined(__x86_64__) && defined(__SSE2__)
    uintptr_t wide = (uintptr_t)d[FK_COL_SRC_IP] | (uintptr_t)d[FK_COL_DST_IP] |
                     (uintptr_t)d[FK_COL_PACKETS] | (uintptr_t)d[FK_COL_BYTES] |
                     (uintptr_t)d[FK_COL_START_NS] | (uintptr_t)d[FK_COL_END_NS];
    const int stream = (wide & 15) == 0;
#endif
    /* Blocks of FK_GATHER_BLOCK rows: the block's if_index and netns values are still in the
     * L1 cache when its interface indices are looked up. */
    for (uint64_t start = 0; start < nrows; start += FK_GATHER_BLOCK) {
        uint64_t end = start + FK_GATHER_BLOCK < nrows ? start + FK_GATHER_BLOCK : nrows;
        uint64_t i = start;
#if defined(__x86_64__) && defined(__SSE2__)
        __m128i words = _mm_setzero_si128();
        if (stream)
            for (; i + 16 <= end; i += 16)
                fk_rows16(rows, i, d, &words, &dups, 1);
        else
            for (; i + 16 <= end; i += 16)
                fk_rows16(rows, i, d, &words, &dups, 0);
        features |= fk_features_of(words);
#endif
        fk_rows_scalar(rows, i, end, d, &features, &dups);
        if (if_out != NULL)
            fk_interface_indices(interfaces, (const uint32_t *)(const void *)d[FK_COL_IF_INDEX],
                                 (const uint16_t *)(const void *)d[FK_COL_NETNS], start, end,
                                 if_out);
    }
#if defined(__x86_64__) && defined(__SSE2__)
    _mm_sfence(); /* the non-temporal stores are visible before the caller goes on */
#endif
    return features | (dups != 0 ? 0x100u : 0u);
}
