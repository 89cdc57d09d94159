/* Row-to-column transpose for Arrow export (csrc/native/columns.c, flowkit/arrow.py).
 *
 * A FlowBatch is an array of fixed-size C structs (struct fk_flow_out): the layout the kernel
 * and the accounter share. Arrow wants one contiguous buffer per column, so the fields are
 * copied out of the records:
 *
 * - fk_flow_columns copies the columns every flow carries (FK_FLOW_COLUMN_LIST below) in one
 *   pass over the rows, 16 rows at a time with 16-byte vector stores on x86-64 (the small key
 *   and counter fields through 8 x 8 word transposes; any other machine copies a field at a
 *   time), and computes the `interface` dictionary indices in the same pass. It does a
 *   quarter of the instructions of a field-at-a-time copy, so it runs at the speed of reading
 *   the rows from memory.
 * - fk_gather_columns copies any list of (offset, width) fields: the optional-feature columns,
 *   only when a flow of the batch carries such data.
 * - fk_flow_arrow builds the whole record batch of flowkit.arrow.flow_schema() as one Arrow C
 *   data interface array (a struct array, one child per column) in one call: the columns above,
 *   the DEDUPER lists, the dictionary columns and their dictionaries, in memory recycled
 *   through a pool once Arrow releases it. pyarrow imports it without copying. */
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

/* The Arrow C data interface (https://arrow.apache.org/docs/format/CDataInterface.html). */
#ifndef ARROW_C_DATA_INTERFACE
#define ARROW_C_DATA_INTERFACE
struct ArrowArray {
    int64_t length;
    int64_t null_count;
    int64_t offset;
    int64_t n_buffers;
    int64_t n_children;
    const void **buffers;
    struct ArrowArray **children;
    struct ArrowArray *dictionary;
    void (*release)(struct ArrowArray *);
    void *private_data;
};
#endif

/* What each child (column) of the fk_flow_arrow record batch holds, in schema order:
 * FK_ARROW_COLUMN   column `column` of FK_FLOW_COLUMN_LIST;
 * FK_ARROW_GATED    the field at `offset`, `width` bytes, which holds data only in flows with a
 *                   `features` bit (a shared zero buffer when no flow has one);
 * FK_ARROW_LIST     a DEDUPER list: the first dup_count (at most FK_MAX_DUPS) items of `width`
 *                   bytes of the array at `offset`;
 * FK_ARROW_INTERFACE int32 interface indices (the fk_interface_map), dictionary `dictionary`;
 * FK_ARROW_NAMES    indices: the buffer of column `column`, dictionary `dictionary`;
 * FK_ARROW_AGENT    int8 indices, all 0, dictionary `dictionary`; every value null when that
 *                   dictionary is empty. */
#define FK_ARROW_COLUMN 1
#define FK_ARROW_GATED 2
#define FK_ARROW_LIST 3
#define FK_ARROW_INTERFACE 4
#define FK_ARROW_NAMES 5
#define FK_ARROW_AGENT 6

struct fk_arrow_child {
    uint32_t kind;
    uint32_t column;
    uint32_t offset;
    uint32_t width;
    uint32_t dictionary;
};

/* A string dictionary: `count` strings, string i is data[offsets[i] .. offsets[i + 1]). */
struct fk_arrow_strings {
    const int32_t *offsets;
    const uint8_t *data;
    uint32_t count;
};

/* The record batch of rows[0..nrows) as a struct ArrowArray with one child per plan entry
 * (dictionaries and plan are copied: the caller may free them on return). The caller owns
 * the result: import it (pyarrow.RecordBatch._import_from_c) or call its release callback.
 * Its memory comes from a pool and goes back there on release, so the next batch writes to
 * pages already mapped. NULL with *err set (ENOMEM, EINVAL) on failure. */
struct ArrowArray *fk_flow_arrow(const struct fk_flow_out *rows, uint64_t nrows,
                                 const struct fk_arrow_child *plan, uint32_t nchildren,
                                 const struct fk_interface_map *interfaces,
                                 const struct fk_arrow_strings *dictionaries,
                                 uint32_t ndictionaries, int *err);

/* Release a record batch of fk_flow_arrow that was not handed to a consumer (no-op once
 * released or moved). */
void fk_arrow_release(struct ArrowArray *array);

/* Memory the pool holds for reuse (blocks not in use by any record batch), and how many
 * blocks are in use. */
void fk_arrow_pool_stats(uint64_t *free_bytes, uint64_t *blocks_in_use);

#endif
