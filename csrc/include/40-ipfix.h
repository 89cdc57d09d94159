/* flowkit IPFIX encoder (RFC 7011): csrc/native/ipfix.c, flowkit/ipfix.py.
 *
 * Writes whole IPFIX messages (header, data sets) for an array of struct fk_flow_out in one
 * call, filling each message up to a size limit (the path MTU for UDP, a size for TCP), and the
 * template message that describes them. The Python encoder in flowkit/ipfix.py is the
 * specification; tests/unit/test_ipfix.py checks the bytes are identical on random batches.
 * Functions returning int64_t return -errno on failure. */
#ifndef FLOWKIT_IPFIX_H
#define FLOWKIT_IPFIX_H

#include <stdint.h>
#include "flow.h"

/* Interface names by index (opaque). */
struct fk_ipfix_names;

/* What a run of messages needs besides the flows. */
struct fk_ipfix_params {
    uint32_t export_time;   /* exportTime of every message, unix seconds */
    uint32_t sequence;      /* sequence number of the first message */
    uint32_t domain_id;     /* observation domain id */
    uint32_t max_message;   /* most bytes in one message, header included */
    uint16_t template_base; /* template ids: base + 0 IPv4, base + 1 IPv6 */
    uint8_t exporter_kind;  /* 0: no exporter address, 4: exporterIPv4Address, 6: IPv6 */
    uint8_t pad;
    uint8_t exporter_ip[16]; /* IPv4 in the last four bytes when exporter_kind is 4 */
    uint32_t enterprise;     /* PEN of flowkit's enterprise elements; 0: not sent */
};

/* Interface names by key (netns << 32 | if_index, flowkit.model's interface key): name i is
 * names[name_offsets[i] .. name_offsets[i + 1]). NULL with *err on failure. */
struct fk_ipfix_names *fk_ipfix_names_new(const uint64_t *keys, const uint64_t *name_offsets,
                                          const uint8_t *names, uint32_t n_names, int *err);
void fk_ipfix_names_free(struct fk_ipfix_names *names);

/* The UTF-8 name of the interface of flow key k (*name points into the table) and its length;
 * 0 when unknown. `hint` (initialised to NULL by the caller) speeds up runs of one interface. */
uint32_t fk_ipfix_name_of(const struct fk_ipfix_names *names, const struct fk_flow_key *k,
                          const void **hint, const uint8_t **name);
uint32_t fk_ipfix_names_max(const struct fk_ipfix_names *names);

/* Largest data record of any flow (fixed part plus the longest name), in bytes. */
uint32_t fk_ipfix_record_max(const struct fk_ipfix_names *names, const struct fk_ipfix_params *p);

/* Output size that is always enough for n flows in messages of p->max_message bytes. */
uint64_t fk_ipfix_bound(const struct fk_ipfix_names *names, const struct fk_ipfix_params *p,
                        uint64_t n);

/* Encode the n flows as messages. Message i is out[ends[i - 1] .. ends[i]) (ends[-1] = 0) and
 * holds records[i] data records; `ends` and `records` need room for n entries. The sequence
 * number of each message is p->sequence plus the records of the messages before it. Returns the
 * number of messages, or -EMSGSIZE when one record does not fit in p->max_message, -ENOSPC when
 * `capacity` is below fk_ipfix_bound. */
int64_t fk_ipfix_encode(const struct fk_ipfix_names *names, const struct fk_flow_out *flows,
                        uint64_t n, const struct fk_ipfix_params *p, uint8_t *out,
                        uint64_t capacity, uint64_t *ends, uint64_t *records);

/* One message holding only the template set (both templates). Returns its length. */
int64_t fk_ipfix_template_message(const struct fk_ipfix_params *p, uint8_t *out,
                                  uint64_t capacity);

#endif
