/* flowkit native accounter: a flow table in C, fed from record arrays, from the kernel flow maps
 * (drained with batch syscalls after flipping the active map) and from the ring buffer (consumed
 * with a C callback). Declarations shared by the C sources in csrc/native and the cffi module; the Python side
 * sees the same API through csrc/cdef/20-accounter.cdef. */
#ifndef FLOWKIT_ACCOUNTER_H
#define FLOWKIT_ACCOUNTER_H

#include <stdint.h>
#include "flow.h"

/* Opaque objects; all functions returning int64_t return -errno on failure. */
struct fk_table;
struct fk_drainer;
struct fk_ringbuf_reader;

/* How a drainer empties a map; FK_DRAIN_AUTO starts with the fastest and falls back. */
enum fk_drain_mode {
    FK_DRAIN_AUTO = 0,
    FK_DRAIN_LOOKUP_AND_DELETE_BATCH = 1,
    FK_DRAIN_LOOKUP_BATCH_THEN_DELETE = 2,
    FK_DRAIN_ITERATE = 3,
};

struct fk_drainer_stats {
    uint64_t drains;        /* completed drains */
    uint64_t keys;          /* keys read from the kernel maps */
    uint64_t empty_values;  /* keys whose per-CPU values all had packets == 0 */
    uint64_t syscalls;      /* batch or per-key map syscalls issued */
    uint64_t fallbacks;     /* times a slower mode was chosen because the faster one failed */
    uint32_t mode;          /* the mode in use (enum fk_drain_mode) */
    uint32_t active_map;    /* index (0/1) of the map the kernel writes into now */
};

struct fk_ringbuf_stats {
    uint64_t records;    /* records consumed */
    uint64_t malformed;  /* samples too short to be a struct fk_flow_event (skipped) */
    uint64_t polls;      /* calls into ring_buffer__poll/consume */
};

/* --- flow table (csrc/native/accounter.c) --- */
struct fk_table *fk_table_new(uint32_t expected_flows);
void fk_table_free(struct fk_table *t);
uint32_t fk_table_len(const struct fk_table *t);
int fk_table_merge(struct fk_table *t, const struct fk_flow_key *key,
                   const struct fk_flow_value *value);
int64_t fk_table_add_records(struct fk_table *t, const struct fk_flow_record *records,
                             uint64_t n, uint32_t limit);
int64_t fk_table_evict(struct fk_table *t, struct fk_flow_out *out, uint64_t capacity,
                       int64_t boot_offset_ns);
int64_t fk_table_take_records(struct fk_table *t, struct fk_flow_record *out, uint64_t capacity);
void fk_table_clear(struct fk_table *t);
int64_t fk_table_add_records_evicting(struct fk_table *t, const struct fk_flow_record *records,
                                      uint64_t n, uint32_t limit, struct fk_flow_out *out,
                                      uint64_t capacity, int64_t boot_offset_ns,
                                      uint64_t *out_len);
int64_t fk_table_absorb(struct fk_table *t, struct fk_table *src, uint32_t limit,
                        struct fk_flow_out *out, uint64_t capacity, int64_t boot_offset_ns,
                        uint64_t *out_len);
void fk_value_merge(struct fk_flow_value *into, const struct fk_flow_value *from);
void fk_extra_merge(struct fk_flow_extra *into, const struct fk_flow_extra *from);
int fk_table_merge_extra(struct fk_table *t, const struct fk_flow_key *key,
                         const struct fk_flow_extra *extra);

/* --- kernel maps (csrc/native/kernel_drain.c) --- */
struct fk_drainer *fk_drainer_new(int selector_fd, int map0_fd, int map1_fd, uint32_t ncpus,
                                  uint32_t chunk, int *err);
struct fk_drainer *fk_extra_drainer_new(int selector_fd, int map0_fd, int map1_fd,
                                        uint32_t ncpus, uint32_t chunk, int *err);
struct fk_drainer *fk_cache_drainer_new(int selector_fd, int map0_fd, int map1_fd, int *err);
void fk_drainer_free(struct fk_drainer *d);
int fk_drainer_set_mode(struct fk_drainer *d, uint32_t mode);
int64_t fk_drainer_drain(struct fk_drainer *d, struct fk_table *t);
int64_t fk_drainer_drain_map(struct fk_drainer *d, uint32_t index, struct fk_table *t);
int fk_drainer_active(const struct fk_drainer *d);
void fk_drainer_get_stats(const struct fk_drainer *d, struct fk_drainer_stats *out);

struct fk_ringbuf_reader *fk_ringbuf_reader_new(int ringbuf_fd, int *err);
void fk_ringbuf_reader_free(struct fk_ringbuf_reader *r);
int fk_ringbuf_wake(struct fk_ringbuf_reader *r);
int fk_ringbuf_wait(struct fk_ringbuf_reader *r, int timeout_ms);
int64_t fk_ringbuf_poll_into_table(struct fk_ringbuf_reader *r, struct fk_table *t,
                                   uint32_t limit, struct fk_flow_out *out, uint64_t capacity,
                                   int64_t boot_offset_ns, uint64_t *out_len, int timeout_ms);
int64_t fk_ringbuf_read_records(struct fk_ringbuf_reader *r, struct fk_flow_record *out,
                                uint64_t capacity, int timeout_ms);
void fk_ringbuf_get_stats(const struct fk_ringbuf_reader *r, struct fk_ringbuf_stats *out);

/* --- small map helpers (tests, counters) --- */
int fk_possible_cpus(void);
int fk_map_create(uint32_t map_type, uint32_t key_size, uint32_t value_size,
                  uint32_t max_entries, int inner_map_fd);
int fk_map_update(int fd, const void *key, const void *value, uint64_t flags);
int fk_map_lookup(int fd, const void *key, void *value);
int fk_map_info(int fd, uint32_t *type, uint32_t *key_size, uint32_t *value_size,
                uint32_t *max_entries, uint32_t *id);
int64_t fk_counter_sum(int fd, uint32_t index, uint32_t ncpus);
int fk_close_fd(int fd);

#endif
