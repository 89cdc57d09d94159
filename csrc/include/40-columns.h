/* Row-to-column transpose for Arrow export (csrc/native/columns.c, flowkit/arrow.py).
 *
 * A FlowBatch is an array of fixed-size C structs (struct fk_flow_out): the layout the kernel
 * and the accounter share. Arrow wants one contiguous buffer per column, so the fields are
 * copied out of the records:
 *
 * - fk_flow_columns copies the columns every flow carries (FK_FLOW_COLUMN_LIST below) in one
 *   pass over the rows, with the field offsets and widths known at compile time, and computes
 *   the `interface` dictionary indices in the same pass. The batch is read from memory once:
 *   the pass runs at the speed of reading the rows.
 * - fk_gather_columns copies any list of (offset, width) fields; flowkit.arrow uses it for the
 *   optional-feature columns, only when a flow of the batch carries such data. */
#ifndef FLOWKIT_COLUMNS_H
#define FLOWKIT_COLUMNS_H

#include <stddef.h>
#include <stdint.h>

#include "flow.h"

/* One column: `width` bytes at `offset` in each row are copied to dst + i * width. */
struct fk_column {
    uint32_t offset;
    uint32_t width;
    uint8_t *dst;
};

void fk_gather_columns(const uint8_t *rows, uint64_t nrows, uint64_t stride,
                       const struct fk_column *cols, uint32_t ncols);

/* The columns of fk_flow_columns, in this order (flowkit.arrow checks the list against
 * FLOW_DTYPE through fk_flow_column_layout; a unit test fails when they drift apart). */
#define FK_FLOW_COLUMN_LIST(X)                                                              \
    X(key.src_ip) X(key.dst_ip) X(key.src_port) X(key.dst_port) X(key.if_index)              \
    X(key.eth_protocol) X(key.direction) X(key.proto) X(key.icmp_type) X(key.icmp_code)      \
    X(key.netns) X(packets) X(bytes) X(start_ns) X(end_ns) X(flags) X(dscp) X(features)      \
    X(sampling) X(src_mac) X(dst_mac) X(dup_count)

#define FK_FLOW_COLUMN_COUNT_ONE(field) +1
enum { FK_FLOW_COLUMNS = 0 FK_FLOW_COLUMN_LIST(FK_FLOW_COLUMN_COUNT_ONE) };

/* Offset and width in struct fk_flow_out of column i of fk_flow_columns. */
struct fk_field {
    uint32_t offset;
    uint32_t width;
};

/* Write the layout of the fk_flow_columns columns to out[0..max); returns FK_FLOW_COLUMNS. */
uint32_t fk_flow_column_layout(struct fk_field *out, uint32_t max);

/* Interface names as dictionary indices: if_keys (sorted ascending) are interface keys
 * (netns << 32 | if_index), if_values their indices; a key not listed gets index 0. */
struct fk_interface_map {
    const uint64_t *keys;
    const int32_t *values;
    uint32_t count;
};

/* Copy the FK_FLOW_COLUMNS columns of rows[0..nrows) to dst[c] + i * width(c), and write
 * each row's interface index to if_out[i] (if_out may be NULL). Returns the OR of every row's
 * `features`, plus 0x100 when a row has dup_count != 0: which optional columns hold data. */
uint32_t fk_flow_columns(const struct fk_flow_out *rows, uint64_t nrows, uint8_t *const *dst,
                         const struct fk_interface_map *interfaces, int32_t *if_out);

#endif
