/* Row-to-column transpose for Arrow export (csrc/native/columns.c, flowkit/arrow.py).
 *
 * A FlowBatch is an array of fixed-size C structs (struct fk_flow_out): the layout the kernel
 * and the accounter share. Arrow wants one contiguous buffer per column. fk_gather_columns copies
 * every requested field of every row into its column buffer in one pass over the rows, in blocks
 * that stay in the L1/L2 cache, so the rows are read from memory once whatever the number of
 * columns. */
#ifndef FLOWKIT_COLUMNS_H
#define FLOWKIT_COLUMNS_H

#include <stddef.h>
#include <stdint.h>

/* One column: `width` bytes at `offset` in each row are copied to dst + i * width. */
struct fk_column {
    uint32_t offset;
    uint32_t width;
    uint8_t *dst;
};

void fk_gather_columns(const uint8_t *rows, uint64_t nrows, uint64_t stride,
                       const struct fk_column *cols, uint32_t ncols);

#endif
