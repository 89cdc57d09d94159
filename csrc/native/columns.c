/* Row-to-column transpose for Arrow export; see csrc/include/40-columns.h. */
#include <string.h>

#include "40-columns.h"

/* Rows per block: 256 rows of 104 bytes (26 KiB) stay in cache while every column of the
 * block is copied out. */
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
