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

static int32_t fk_interface_index(const struct fk_interface_map *map, uint64_t key)
{
    uint32_t lo = 0, hi = map->count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (map->keys[mid] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < map->count && map->keys[lo] == key ? map->values[lo] : 0;
}

uint32_t fk_flow_columns(const struct fk_flow_out *rows, uint64_t nrows, uint8_t *const *dst,
                         const struct fk_interface_map *interfaces, int32_t *if_out)
{
    uint8_t *d[FK_FLOW_COLUMNS];
    uint8_t features = 0, dups = 0;
    /* The last interface looked up: flows of a batch come from a handful of interfaces. */
    uint64_t last_key = UINT64_MAX;
    int32_t last_index = 0;

    memcpy(d, dst, sizeof(d));
    for (uint64_t i = 0; i < nrows; i++) {
        const struct fk_flow_out *r = &rows[i];
        uint32_t c = 0;

        /* The rows are read once, sequentially; ask for them a few rows ahead. */
        __builtin_prefetch((const uint8_t *)(r + 8));
        __builtin_prefetch((const uint8_t *)(r + 8) + 64);
        __builtin_prefetch((const uint8_t *)(r + 8) + 128);
        __builtin_prefetch((const uint8_t *)(r + 8) + 192);
        /* Widths and offsets are constants: each copy compiles to one or two moves. */
#define FK_COPY(field)                                                                      \
    memcpy(d[c] + i * FK_FIELD_WIDTH(field), &r->field, FK_FIELD_WIDTH(field));              \
    c++;
        FK_FLOW_COLUMN_LIST(FK_COPY)
#undef FK_COPY
        features |= r->features;
        dups |= r->dup_count;
        if (if_out != NULL) {
            uint64_t key = (uint64_t)r->key.netns << 32 | r->key.if_index;
            if (key != last_key) {
                last_key = key;
                last_index = interfaces != NULL ? fk_interface_index(interfaces, key) : 0;
            }
            if_out[i] = last_index;
        }
    }
    return features | (dups != 0 ? 0x100u : 0u);
}
