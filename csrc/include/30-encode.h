/* flowkit fast flow encoders (csrc/native/encode.c, flowkit/encoding.py).
 *
 * Turn a FlowBatch (an array of struct fk_flow_out) into NetObserv JSON lines or serialized
 * pbflow.Record / pbflow.Records messages in one C call, writing into a caller-provided buffer.
 * The output is byte-identical to flowkit's Python encodings (flowkit.model.flow_to_json_dict +
 * orjson, flowkit.pbflow.convert.flow_to_record + SerializeToString); the unit tests check
 * that property on random batches. Functions returning int64_t return -errno on failure
 * (-ENOSPC: the buffer is smaller than the fk_encoder_*_bound() the caller was told to use). */
#ifndef FLOWKIT_ENCODE_H
#define FLOWKIT_ENCODE_H

#include <stdint.h>
#include "flow.h"

/* What an encoder needs besides the flows: interface names and the agent address. Opaque. */
struct fk_encoder;

/* Build an encoder. Interface `if_ids[i]` (netns << 32 | if_index, flowkit.model.interface_key)
 * is named by the UTF-8 bytes names[name_offsets[i] .. name_offsets[i + 1]) (so name_offsets has
 * n_names + 1 entries, in any order, no duplicate id). `agent_text` (JSON "AgentIP", agent_text_len bytes) and
 * `agent_ip16` (protobuf agent_ip, 16 bytes, IPv4 mapped) are both NULL when the agent address
 * is unknown. Returns NULL with *err set (-ENOMEM, -EINVAL) on failure. */
struct fk_encoder *fk_encoder_new(const uint64_t *if_ids, const uint64_t *name_offsets,
                                  const uint8_t *names, uint32_t n_names,
                                  const uint8_t *agent_text, uint32_t agent_text_len,
                                  const uint8_t *agent_ip16, int *err);
void fk_encoder_free(struct fk_encoder *e);

/* Name tables for numbers the kernel records, used by the JSON encoder: FK_NAMES_DROP_REASON
 * (enum skb_drop_reason, from the kernel's BTF; an unknown value is written as its decimal
 * text) and FK_NAMES_TCP_STATE (an unknown state is "TCP_INVALID_STATE"). values[i] is named by
 * names[name_offsets[i] .. name_offsets[i + 1]). Replaces the kind's table; returns -errno. */
#define FK_NAMES_DROP_REASON 0
#define FK_NAMES_TCP_STATE 1
#define FK_NAMES_KINDS 2
int fk_encoder_set_names(struct fk_encoder *e, uint32_t kind, const uint32_t *values,
                         const uint64_t *name_offsets, const uint8_t *names, uint32_t n);

/* Buffer sizes that are always enough for n flows. */
uint64_t fk_encoder_json_bound(const struct fk_encoder *e, uint64_t n);
uint64_t fk_encoder_records_bound(const struct fk_encoder *e, uint64_t n);

/* One JSON object per flow, each followed by '\n' when `newline` is non-zero. When `offsets`
 * is not NULL it receives n + 1 entries: flow i is out[offsets[i] .. offsets[i + 1]). Returns
 * the number of bytes written. */
int64_t fk_encode_json(const struct fk_encoder *e, const struct fk_flow_out *flows, uint64_t n,
                       uint8_t *out, uint64_t capacity, int newline, uint64_t *offsets);

/* One serialized pbflow.Record per flow, back to back; offsets as for fk_encode_json. */
int64_t fk_encode_records(const struct fk_encoder *e, const struct fk_flow_out *flows,
                          uint64_t n, uint8_t *out, uint64_t capacity, uint64_t *offsets);

/* One serialized pbflow.Records message whose entries are the n flows. */
int64_t fk_encode_records_message(const struct fk_encoder *e, const struct fk_flow_out *flows,
                                  uint64_t n, uint8_t *out, uint64_t capacity);

/* The JSON string literal (quotes included) of UTF-8 text, escaped the way orjson escapes:
 * '"' '\\' and control characters below 0x20 (\b \t \n \f \r by name, others as \u00xx), every
 * other byte as is. `out` needs 6 * len + 2 bytes. Returns the bytes written. */
uint64_t fk_json_escape(const uint8_t *text, uint64_t len, uint8_t *out);

/* Text of a 16-byte address as flowkit shows it: IPv4-mapped as dotted quad, anything else in
 * Python's ipaddress.IPv6Address form (RFC 5952). `out` needs 40 bytes; returns the length. */
uint32_t fk_format_ip16(const uint8_t *ip, uint8_t *out);

#endif
