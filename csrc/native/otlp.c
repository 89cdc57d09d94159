/* flowkit OTLP log records, see csrc/include/41-otlp.h.
 *
 * Protobuf wire format as the protobuf runtime writes the messages flowkit/otlp.py builds:
 * LogRecord fields in number order (time_unix_nano = 1, fixed64, omitted when 0; attributes = 6),
 * each attribute a KeyValue {key = 1, value = 2 AnyValue}; an AnyValue always carries its oneof
 * member, even "" or 0 (string_value = 1, int_value = 3 as a varint of the int64). The attribute
 * list and its order are flowkit/otlp.py's LOG_ATTRIBUTES.
 */
#include <errno.h>
#include <string.h>

#include "30-encode.h"
#include "41-otlp.h"

/* Every attribute but the interface name, framing included, stays under this. */
#define FK_OTLP_FLOW_MAX 1024

static const uint8_t fk_otlp_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
static const char fk_otlp_hex[] = "0123456789abcdef";

static inline uint32_t fk_varint_len(uint64_t v)
{
    uint32_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline uint8_t *fk_put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* KeyValue{key, AnyValue{string_value}} as attribute field 6 of a LogRecord. */
static uint8_t *fk_attr_str(uint8_t *p, const char *key, uint32_t klen, const uint8_t *value,
                            uint32_t vlen)
{
    uint64_t any = 1 + fk_varint_len(vlen) + vlen;
    uint64_t kv = 1 + fk_varint_len(klen) + klen + 1 + fk_varint_len(any) + any;
    *p++ = 0x32;
    p = fk_put_varint(p, kv);
    *p++ = 0x0a;
    p = fk_put_varint(p, klen);
    memcpy(p, key, klen);
    p += klen;
    *p++ = 0x12;
    p = fk_put_varint(p, any);
    *p++ = 0x0a;
    p = fk_put_varint(p, vlen);
    if (vlen)
        memcpy(p, value, vlen);
    return p + vlen;
}

/* KeyValue{key, AnyValue{int_value}}. */
static uint8_t *fk_attr_int(uint8_t *p, const char *key, uint32_t klen, uint64_t value)
{
    uint64_t any = 1 + fk_varint_len(value);
    uint64_t kv = 1 + fk_varint_len(klen) + klen + 1 + fk_varint_len(any) + any;
    *p++ = 0x32;
    p = fk_put_varint(p, kv);
    *p++ = 0x0a;
    p = fk_put_varint(p, klen);
    memcpy(p, key, klen);
    p += klen;
    *p++ = 0x12;
    p = fk_put_varint(p, any);
    *p++ = 0x18;
    return fk_put_varint(p, value);
}

#define FK_STR(p, key, value, len) fk_attr_str((p), (key), sizeof(key) - 1, (value), (len))
#define FK_INT(p, key, value) fk_attr_int((p), (key), sizeof(key) - 1, (value))
#define FK_LIT(p, key, lit) FK_STR((p), (key), (const uint8_t *)(lit), sizeof(lit) - 1)

static uint32_t fk_mac_text(const uint8_t *mac, uint8_t *out)
{
    for (int i = 0; i < 6; i++) {
        out[3 * i] = (uint8_t)fk_otlp_hex[mac[i] >> 4];
        out[3 * i + 1] = (uint8_t)fk_otlp_hex[mac[i] & 0xf];
        out[3 * i + 2] = ':';
    }
    return 17;
}

static uint8_t *fk_otlp_record(const struct fk_ipfix_names *t, const struct fk_flow_out *f,
                               const void **hint, uint8_t *p)
{
    const struct fk_flow_key *k = &f->key;
    uint8_t text[48];
    uint32_t len;
    if (f->end_ns) {
        *p++ = 0x09; /* time_unix_nano, fixed64 little-endian */
        for (int i = 0; i < 8; i++)
            *p++ = (uint8_t)(f->end_ns >> (8 * i));
    }
    len = fk_format_ip16(k->src_ip, text);
    p = FK_STR(p, "source.address", text, len);
    p = FK_INT(p, "source.port", k->src_port);
    len = fk_format_ip16(k->dst_ip, text);
    p = FK_STR(p, "destination.address", text, len);
    p = FK_INT(p, "destination.port", k->dst_port);
    switch (k->proto) {
    case 6: p = FK_LIT(p, "network.transport", "tcp"); break;
    case 17: p = FK_LIT(p, "network.transport", "udp"); break;
    case 1: p = FK_LIT(p, "network.transport", "icmp"); break;
    case 58: p = FK_LIT(p, "network.transport", "icmpv6"); break;
    case 132: p = FK_LIT(p, "network.transport", "sctp"); break;
    default: {
        uint8_t digits[3];
        uint32_t n = 0, v = k->proto;
        if (v >= 100)
            digits[n++] = (uint8_t)('0' + v / 100);
        if (v >= 10)
            digits[n++] = (uint8_t)('0' + (v / 10) % 10);
        digits[n++] = (uint8_t)('0' + v % 10);
        p = FK_STR(p, "network.transport", digits, n);
    }
    }
    int v4 = memcmp(k->src_ip, fk_otlp_mapped, 12) == 0 &&
             memcmp(k->dst_ip, fk_otlp_mapped, 12) == 0;
    p = v4 ? FK_LIT(p, "network.type", "ipv4") : FK_LIT(p, "network.type", "ipv6");
    p = k->direction == FK_DIRECTION_INGRESS ? FK_LIT(p, "network.io.direction", "receive")
                                             : FK_LIT(p, "network.io.direction", "transmit");
    const uint8_t *name;
    len = fk_ipfix_name_of(t, k, hint, &name);
    if (len)
        p = FK_STR(p, "network.interface.name", name, len);
    p = FK_INT(p, "flowkit.flow.bytes", f->bytes);
    p = FK_INT(p, "flowkit.flow.packets", f->packets);
    p = FK_INT(p, "flowkit.flow.start_time_unix_nano", f->start_ns);
    p = FK_INT(p, "flowkit.flow.end_time_unix_nano", f->end_ns);
    p = FK_INT(p, "flowkit.tcp.flags", f->flags);
    p = FK_INT(p, "flowkit.icmp.type", k->icmp_type);
    p = FK_INT(p, "flowkit.icmp.code", k->icmp_code);
    p = FK_INT(p, "flowkit.dscp", f->dscp);
    p = FK_INT(p, "flowkit.sampling", f->sampling);
    p = FK_INT(p, "flowkit.ethernet.type", k->eth_protocol);
    len = fk_mac_text(f->src_mac, text);
    p = FK_STR(p, "flowkit.source.mac", text, len);
    len = fk_mac_text(f->dst_mac, text);
    p = FK_STR(p, "flowkit.destination.mac", text, len);
    p = FK_INT(p, "flowkit.interface.index", k->if_index);
    return p;
}

uint64_t fk_otlp_bound(const struct fk_ipfix_names *t, uint64_t n)
{
    return n * (FK_OTLP_FLOW_MAX + 2 * (uint64_t)fk_ipfix_names_max(t) + 16);
}

int64_t fk_otlp_log_records(const struct fk_ipfix_names *t, const struct fk_flow_out *flows,
                            uint64_t n, uint8_t *out, uint64_t capacity, uint64_t *ends)
{
    if (capacity < fk_otlp_bound(t, n))
        return -ENOSPC;
    const void *hint = NULL;
    uint8_t *p = out;
    for (uint64_t i = 0; i < n; i++) {
        /* Write the record after room for the longest length prefix, then close the gap. */
        uint8_t *body = p + 1 + 4;
        uint8_t *end = fk_otlp_record(t, &flows[i], &hint, body);
        uint64_t len = (uint64_t)(end - body);
        *p = 0x12; /* ScopeLogs.log_records */
        uint8_t *after = fk_put_varint(p + 1, len);
        if (after != body)
            memmove(after, body, len);
        p = after + len;
        if (ends)
            ends[i] = (uint64_t)(p - out);
    }
    return p - out;
}
