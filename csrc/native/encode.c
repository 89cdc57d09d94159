/* flowkit fast flow encoders: NetObserv JSON and pbflow protobuf straight from struct fk_flow_out.
 *
 * The Python encoders (flowkit.model.flow_to_json_dict + orjson, and
 * flowkit.pbflow.convert.flow_to_record + SerializeToString) are the specification; this
 * file reproduces their bytes exactly and tests/unit/test_encoding.py checks it on random
 * batches. Points that matter for byte identity:
 *
 * JSON (orjson, compact): keys in flow_to_json_dict's order; integers in decimal; MACs lower-case
 * hex; IPv4-mapped addresses as dotted quads, other addresses as Python's str(IPv6Address)
 * (lower-case hex without leading zeros, the first longest run of two or more zero groups
 * replaced by "::"); strings escaped like orjson ('"', '\\', \b \t \n \f \r, other control
 * characters as \u00xx with lower-case hex, everything else including non-ASCII verbatim);
 * "AgentIP" last and only when the agent address is known.
 *
 * Protobuf (proto3, fields in number order as upb writes them): scalars equal to zero and an
 * empty interface name are omitted; the Timestamp, DataLink, Network and Transport sub-messages
 * are always present (the Python encoder always sets them), even when empty; IP addresses always
 * carry their oneof member (ipv4 as fixed32 of the big-endian value, even 0.0.0.0, or ipv6 as 16
 * bytes), and agent_ip is present only when known.
 *
 * Every function works on caller-provided memory, holds no global state and is safe to call
 * from several threads at once (the encoder is read-only once built); cffi releases the GIL.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "30-encode.h"

/* Upper bounds of one flow, without the interface name, the agent address and the drop cause
 * name: the JSON keys take under 600 bytes, twenty-six integers at most 20 digits each, two MACs
 * 34, two addresses 78, the DNS name 6 * 31 escaped, the TCP state and rcode names under 64. A
 * protobuf Record takes at most about 350 bytes. */
#define FK_JSON_FLOW_MAX 1536
#define FK_PB_FLOW_MAX 512
#define FK_IP_PB_MAX 18

struct fk_iface {
    uint64_t id;        /* netns << 32 | if_index (flowkit.model.interface_key) */
    uint32_t json_len;  /* escaped, quotes included */
    uint32_t pb_len;    /* raw UTF-8 bytes */
    uint64_t json_off;  /* into fk_encoder.json_names */
    uint64_t pb_off;    /* into fk_encoder.pb_names */
};

/* A JSON string for each value of a number the kernel records (drop causes, TCP states). */
struct fk_names {
    uint32_t *values;   /* sorted */
    uint64_t *offsets;  /* n + 1 offsets into text */
    uint8_t *text;      /* escaped JSON strings, quotes included */
    uint32_t n;
    uint32_t max_len;
};

struct fk_encoder {
    struct fk_names names[FK_NAMES_KINDS];
    struct fk_iface *ifaces; /* sorted by id */
    uint32_t n_ifaces;
    uint32_t max_json_name;
    uint32_t max_pb_name;
    int has_agent;
    uint8_t *json_names;
    uint8_t *pb_names;
    uint8_t *agent_json; /* escaped "AgentIP" value, quotes included */
    uint32_t agent_json_len;
    uint32_t agent_pb_len; /* the serialized IP message */
    uint8_t agent_pb[FK_IP_PB_MAX];
};

static const uint8_t fk_v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
static const char fk_hex[] = "0123456789abcdef";
static const char fk_digit_pairs[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* ---------------------------------------------------------------------------------------- */
/* Text helpers                                                                              */

uint64_t fk_json_escape(const uint8_t *text, uint64_t len, uint8_t *out)
{
    uint8_t *p = out;
    *p++ = '"';
    for (uint64_t i = 0; i < len; i++) {
        uint8_t c = text[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *p++ = c;
            continue;
        }
        *p++ = '\\';
        switch (c) {
        case '"': *p++ = '"'; break;
        case '\\': *p++ = '\\'; break;
        case '\b': *p++ = 'b'; break;
        case '\t': *p++ = 't'; break;
        case '\n': *p++ = 'n'; break;
        case '\f': *p++ = 'f'; break;
        case '\r': *p++ = 'r'; break;
        default:
            memcpy(p, "u00", 3);
            p[3] = (uint8_t)fk_hex[c >> 4];
            p[4] = (uint8_t)fk_hex[c & 0xf];
            p += 5;
        }
    }
    *p++ = '"';
    return (uint64_t)(p - out);
}

/* Decimal digits of v (no sign); returns the end of the text. */
static inline uint8_t *fk_put_u64(uint8_t *p, uint64_t v)
{
    char tmp[20];
    int i = 20;
    while (v >= 100) {
        uint64_t q = v / 100;
        uint32_t r = (uint32_t)(v - q * 100);
        i -= 2;
        memcpy(tmp + i, fk_digit_pairs + 2 * r, 2);
        v = q;
    }
    if (v >= 10) {
        i -= 2;
        memcpy(tmp + i, fk_digit_pairs + 2 * v, 2);
    } else {
        tmp[--i] = (char)('0' + v);
    }
    memcpy(p, tmp + i, (size_t)(20 - i));
    return p + (20 - i);
}

static inline uint8_t *fk_put_mac(uint8_t *p, const uint8_t *mac)
{
    for (int i = 0; i < 6; i++) {
        p[0] = (uint8_t)fk_hex[mac[i] >> 4];
        p[1] = (uint8_t)fk_hex[mac[i] & 0xf];
        p[2] = ':';
        p += 3;
    }
    return p - 1; /* no colon after the last byte */
}

static inline uint8_t *fk_put_hextet(uint8_t *p, uint32_t h)
{
    if (h >= 0x1000)
        *p++ = (uint8_t)fk_hex[h >> 12];
    if (h >= 0x100)
        *p++ = (uint8_t)fk_hex[(h >> 8) & 0xf];
    if (h >= 0x10)
        *p++ = (uint8_t)fk_hex[(h >> 4) & 0xf];
    *p++ = (uint8_t)fk_hex[h & 0xf];
    return p;
}

static uint8_t *fk_put_ip16(uint8_t *p, const uint8_t *ip)
{
    if (memcmp(ip, fk_v4_mapped_prefix, 12) == 0) {
        for (int i = 12; i < 16; i++) {
            p = fk_put_u64(p, ip[i]);
            *p++ = '.';
        }
        return p - 1;
    }
    uint32_t h[8];
    for (int i = 0; i < 8; i++)
        h[i] = ((uint32_t)ip[2 * i] << 8) | ip[2 * i + 1];
    /* The first longest run of zero groups; only runs of two or more are compressed. */
    int best = -1, best_len = 0, run = -1, run_len = 0;
    for (int i = 0; i < 8; i++) {
        if (h[i] == 0) {
            if (run < 0)
                run = i;
            run_len++;
            if (run_len > best_len) {
                best_len = run_len;
                best = run;
            }
        } else {
            run = -1;
            run_len = 0;
        }
    }
    if (best_len < 2)
        best = -1;
    for (int i = 0; i < 8; i++) {
        if (i == best) {
            /* "::" stands for the run; the separators around it come from the groups. */
            *p++ = ':';
            if (i == 0)
                *p++ = ':';
            i += best_len - 1;
            continue;
        }
        p = fk_put_hextet(p, h[i]);
        if (i != 7)
            *p++ = ':';
    }
    return p;
}

uint32_t fk_format_ip16(const uint8_t *ip, uint8_t *out)
{
    return (uint32_t)(fk_put_ip16(out, ip) - out);
}

/* ---------------------------------------------------------------------------------------- */
/* Encoder                                                                                   */

static void fk_names_clear(struct fk_names *t)
{
    free(t->values);
    free(t->offsets);
    free(t->text);
    memset(t, 0, sizeof(*t));
}

void fk_encoder_free(struct fk_encoder *e)
{
    if (!e)
        return;
    for (int i = 0; i < FK_NAMES_KINDS; i++)
        fk_names_clear(&e->names[i]);
    free(e->ifaces);
    free(e->json_names);
    free(e->pb_names);
    free(e->agent_json);
    free(e);
}

static int fk_iface_cmp(const void *a, const void *b)
{
    uint64_t x = ((const struct fk_iface *)a)->id;
    uint64_t y = ((const struct fk_iface *)b)->id;
    return (x > y) - (x < y);
}

static uint8_t *fk_put_ip_message(uint8_t *p, const uint8_t *ip);

struct fk_encoder *fk_encoder_new(const uint64_t *if_ids, const uint64_t *name_offsets,
                                  const uint8_t *names, uint32_t n_names,
                                  const uint8_t *agent_text, uint32_t agent_text_len,
                                  const uint8_t *agent_ip16, int *err)
{
    *err = 0;
    if ((agent_text == NULL) != (agent_ip16 == NULL) || (n_names && !name_offsets)) {
        *err = -EINVAL;
        return NULL;
    }
    struct fk_encoder *e = calloc(1, sizeof(*e));
    if (!e)
        goto nomem;
    uint64_t total = n_names ? name_offsets[n_names] - name_offsets[0] : 0;
    e->ifaces = calloc(n_names ? n_names : 1, sizeof(*e->ifaces));
    e->pb_names = malloc(total ? total : 1);
    e->json_names = malloc(total * 6 + 2 * (uint64_t)n_names + 1);
    if (!e->ifaces || !e->pb_names || !e->json_names)
        goto nomem;
    uint64_t json_used = 0;
    for (uint32_t i = 0; i < n_names; i++) {
        uint64_t start = name_offsets[i], end = name_offsets[i + 1];
        if (end < start || end - start > UINT32_MAX / 8) {
            fk_encoder_free(e);
            *err = -EINVAL;
            return NULL;
        }
        struct fk_iface *f = &e->ifaces[i];
        f->id = if_ids[i];
        f->pb_off = start - name_offsets[0];
        f->pb_len = (uint32_t)(end - start);
        memcpy(e->pb_names + f->pb_off, names + start, f->pb_len);
        f->json_off = json_used;
        f->json_len = (uint32_t)fk_json_escape(names + start, f->pb_len,
                                               e->json_names + json_used);
        json_used += f->json_len;
        if (f->json_len > e->max_json_name)
            e->max_json_name = f->json_len;
        if (f->pb_len > e->max_pb_name)
            e->max_pb_name = f->pb_len;
    }
    qsort(e->ifaces, n_names, sizeof(*e->ifaces), fk_iface_cmp);
    e->n_ifaces = n_names;
    if (agent_ip16) {
        e->has_agent = 1;
        e->agent_json = malloc((uint64_t)agent_text_len * 6 + 2);
        if (!e->agent_json)
            goto nomem;
        e->agent_json_len = (uint32_t)fk_json_escape(agent_text, agent_text_len, e->agent_json);
        e->agent_pb_len = (uint32_t)(fk_put_ip_message(e->agent_pb, agent_ip16) - e->agent_pb);
    }
    return e;
nomem:
    fk_encoder_free(e);
    *err = -ENOMEM;
    return NULL;
}

struct fk_name_sort {
    uint32_t value;
    uint32_t index;
};

static int fk_name_sort_cmp(const void *a, const void *b)
{
    uint32_t x = ((const struct fk_name_sort *)a)->value;
    uint32_t y = ((const struct fk_name_sort *)b)->value;
    return (x > y) - (x < y);
}

int fk_encoder_set_names(struct fk_encoder *e, uint32_t kind, const uint32_t *values,
                         const uint64_t *name_offsets, const uint8_t *names, uint32_t n)
{
    if (kind >= FK_NAMES_KINDS || (n && (!values || !name_offsets)))
        return -EINVAL;
    struct fk_names *t = &e->names[kind];
    fk_names_clear(t);
    if (n == 0)
        return 0;
    uint64_t total = name_offsets[n] - name_offsets[0];
    struct fk_name_sort *order = calloc(n, sizeof(*order));
    t->values = calloc(n, sizeof(*t->values));
    t->offsets = calloc((uint64_t)n + 1, sizeof(*t->offsets));
    t->text = malloc(total * 6 + 2 * (uint64_t)n + 1);
    if (!order || !t->values || !t->offsets || !t->text) {
        free(order);
        fk_names_clear(t);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (name_offsets[i + 1] < name_offsets[i] ||
            name_offsets[i + 1] - name_offsets[i] > UINT32_MAX / 8) {
            free(order);
            fk_names_clear(t);
            return -EINVAL;
        }
        order[i].value = values[i];
        order[i].index = i;
    }
    qsort(order, n, sizeof(*order), fk_name_sort_cmp);
    uint64_t used = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t j = order[i].index;
        uint64_t start = name_offsets[j], len = name_offsets[j + 1] - start;
        t->values[i] = order[i].value;
        t->offsets[i] = used;
        uint64_t written = fk_json_escape(names + start, len, t->text + used);
        used += written;
        if (written > t->max_len)
            t->max_len = (uint32_t)written;
    }
    t->offsets[n] = used;
    t->n = n;
    free(order);
    return 0;
}

uint64_t fk_encoder_json_bound(const struct fk_encoder *e, uint64_t n)
{
    /* The interface list: its keys, 6 names and 6 directions of at most 3 digits. */
    uint64_t dups = 40 + FK_MAX_DUPS * ((uint64_t)e->max_json_name + 2 + 4);
    uint64_t per_flow = FK_JSON_FLOW_MAX + (uint64_t)e->max_json_name + e->agent_json_len + dups;
    for (int i = 0; i < FK_NAMES_KINDS; i++)
        per_flow += e->names[i].max_len;
    return n * per_flow;
}

uint64_t fk_encoder_records_bound(const struct fk_encoder *e, uint64_t n)
{
    /* Records adds a tag and a length (at most 5 bytes) per entry. */
    /* dup_list: per entry a 2-byte key, a length, the name with its key and length, and the
     * direction with its key. */
    uint64_t dups = FK_MAX_DUPS * ((uint64_t)e->max_pb_name + 2 + 5 + 1 + 5 + 2);
    uint64_t per_flow = FK_PB_FLOW_MAX + 6 + (uint64_t)e->max_pb_name + e->agent_pb_len + dups;
    return n * per_flow;
}

/* The key of an interface in the encoder (flowkit.model.interface_key). */
static inline uint64_t fk_iface_id(uint32_t if_index, uint16_t netns)
{
    return ((uint64_t)netns << 32) | if_index;
}

/* The encoder's entry for interface `id`, or NULL. `hint` remembers the last hit: batches
 * usually hold runs of flows from the same interface. */
static inline const struct fk_iface *fk_lookup(const struct fk_encoder *e, uint64_t id,
                                               const struct fk_iface **hint)
{
    if (*hint && (*hint)->id == id)
        return *hint;
    uint32_t lo = 0, hi = e->n_ifaces;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        uint64_t v = e->ifaces[mid].id;
        if (v == id) {
            *hint = &e->ifaces[mid];
            return *hint;
        }
        if (v < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Entries of a flow's interface list (DEDUPER), at most FK_MAX_DUPS. */
static inline uint32_t fk_dup_count(const struct fk_flow_out *f)
{
    return f->dup_count < FK_MAX_DUPS ? f->dup_count : FK_MAX_DUPS;
}

/* ---------------------------------------------------------------------------------------- */
/* JSON                                                                                      */

#define FK_PUT_LIT(p, lit)                      \
    do {                                        \
        memcpy((p), (lit), sizeof(lit) - 1);    \
        (p) += sizeof(lit) - 1;                 \
    } while (0)

/* Same names as flowkit.model.DNS_RCODE_NAMES. */
static const char *const fk_dns_rcodes[16] = {
    "NoError", "FormErr", "ServFail", "NXDomain", "NotImp", "Refused", "YXDomain", "YXRRSet",
    "NXRRSet", "NotAuth", "NotZone", "DSOTYPENI", "Unassigned", "Unassigned", "Unassigned",
    "Unassigned",
};

/* The JSON string naming `value` in table `t`; when it has none, `fallback` (a plain ASCII
 * string) or, when that is NULL, the decimal value as a string. */
static uint8_t *fk_put_name(uint8_t *p, const struct fk_names *t, uint32_t value,
                            const char *fallback)
{
    uint32_t lo = 0, hi = t->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        uint32_t v = t->values[mid];
        if (v == value) {
            uint64_t len = t->offsets[mid + 1] - t->offsets[mid];
            memcpy(p, t->text + t->offsets[mid], len);
            return p + len;
        }
        if (v < value)
            lo = mid + 1;
        else
            hi = mid;
    }
    *p++ = '"';
    if (fallback) {
        size_t len = strlen(fallback);
        memcpy(p, fallback, len);
        p += len;
    } else {
        p = fk_put_u64(p, value);
    }
    *p++ = '"';
    return p;
}

static uint8_t *fk_json_flow(const struct fk_encoder *e, const struct fk_flow_out *f,
                             const struct fk_iface *iface, uint8_t *p)
{
    const struct fk_flow_key *k = &f->key;
    FK_PUT_LIT(p, "{\"Etype\":");
    p = fk_put_u64(p, k->eth_protocol);
    FK_PUT_LIT(p, ",\"FlowDirection\":");
    p = fk_put_u64(p, k->direction);
    FK_PUT_LIT(p, ",\"SrcMac\":\"");
    p = fk_put_mac(p, f->src_mac);
    FK_PUT_LIT(p, "\",\"DstMac\":\"");
    p = fk_put_mac(p, f->dst_mac);
    FK_PUT_LIT(p, "\",\"SrcAddr\":\"");
    p = fk_put_ip16(p, k->src_ip);
    FK_PUT_LIT(p, "\",\"DstAddr\":\"");
    p = fk_put_ip16(p, k->dst_ip);
    FK_PUT_LIT(p, "\",\"SrcPort\":");
    p = fk_put_u64(p, k->src_port);
    FK_PUT_LIT(p, ",\"DstPort\":");
    p = fk_put_u64(p, k->dst_port);
    FK_PUT_LIT(p, ",\"Proto\":");
    p = fk_put_u64(p, k->proto);
    FK_PUT_LIT(p, ",\"Bytes\":");
    p = fk_put_u64(p, f->bytes);
    FK_PUT_LIT(p, ",\"Packets\":");
    p = fk_put_u64(p, f->packets);
    FK_PUT_LIT(p, ",\"Interface\":");
    if (iface) {
        memcpy(p, e->json_names + iface->json_off, iface->json_len);
        p += iface->json_len;
    } else {
        FK_PUT_LIT(p, "\"\"");
    }
    FK_PUT_LIT(p, ",\"TimeFlowStart\":");
    p = fk_put_u64(p, f->start_ns / 1000000000u);
    FK_PUT_LIT(p, ",\"TimeFlowEnd\":");
    p = fk_put_u64(p, f->end_ns / 1000000000u);
    FK_PUT_LIT(p, ",\"TimeFlowStartMs\":");
    p = fk_put_u64(p, f->start_ns / 1000000u);
    FK_PUT_LIT(p, ",\"TimeFlowEndMs\":");
    p = fk_put_u64(p, f->end_ns / 1000000u);
    FK_PUT_LIT(p, ",\"Flags\":");
    p = fk_put_u64(p, f->flags);
    FK_PUT_LIT(p, ",\"IcmpType\":");
    p = fk_put_u64(p, k->icmp_type);
    FK_PUT_LIT(p, ",\"IcmpCode\":");
    p = fk_put_u64(p, k->icmp_code);
    FK_PUT_LIT(p, ",\"Dscp\":");
    p = fk_put_u64(p, f->dscp);
    FK_PUT_LIT(p, ",\"Sampling\":");
    p = fk_put_u64(p, f->sampling);
    if (f->features & FK_FEATURE_DROPS) {
        FK_PUT_LIT(p, ",\"PktDropBytes\":");
        p = fk_put_u64(p, f->drop_bytes);
        FK_PUT_LIT(p, ",\"PktDropPackets\":");
        p = fk_put_u64(p, f->drop_packets);
        FK_PUT_LIT(p, ",\"PktDropLatestFlags\":");
        p = fk_put_u64(p, f->drop_flags);
        FK_PUT_LIT(p, ",\"PktDropLatestState\":");
        p = fk_put_name(p, &e->names[FK_NAMES_TCP_STATE], f->drop_state, "TCP_INVALID_STATE");
        FK_PUT_LIT(p, ",\"PktDropLatestDropCause\":");
        p = fk_put_name(p, &e->names[FK_NAMES_DROP_REASON], f->drop_cause, NULL);
    }
    if (f->features & FK_FEATURE_RTT) {
        FK_PUT_LIT(p, ",\"TimeFlowRttNs\":");
        p = fk_put_u64(p, f->rtt_ns);
    }
    if (f->features & FK_FEATURE_DNS) {
        FK_PUT_LIT(p, ",\"DnsId\":");
        p = fk_put_u64(p, f->dns_id);
        FK_PUT_LIT(p, ",\"DnsFlags\":");
        p = fk_put_u64(p, f->dns_flags);
        FK_PUT_LIT(p, ",\"DnsFlagsResponseCode\":\"");
        const char *rcode = fk_dns_rcodes[f->dns_flags & 0xf];
        size_t rlen = strlen(rcode);
        memcpy(p, rcode, rlen);
        p += rlen;
        FK_PUT_LIT(p, "\",\"DnsLatencyMs\":");
        p = fk_put_u64(p, f->dns_latency_ns / 1000000u);
        FK_PUT_LIT(p, ",\"DnsErrno\":");
        p = fk_put_u64(p, f->dns_errno);
        FK_PUT_LIT(p, ",\"DnsName\":");
        p += fk_json_escape(f->dns_name, strnlen((const char *)f->dns_name, FK_DNS_NAME_LEN), p);
    }
    uint32_t ndups = fk_dup_count(f);
    if (ndups) {
        const struct fk_iface *hint = NULL;
        FK_PUT_LIT(p, ",\"Interfaces\":[");
        for (uint32_t j = 0; j < ndups; j++) {
            if (j)
                *p++ = ',';
            const struct fk_iface *dup =
                fk_lookup(e, fk_iface_id(f->dup_if_index[j], f->dup_netns[j]), &hint);
            if (dup) {
                memcpy(p, e->json_names + dup->json_off, dup->json_len);
                p += dup->json_len;
            } else {
                FK_PUT_LIT(p, "\"\"");
            }
        }
        FK_PUT_LIT(p, "],\"IfDirections\":[");
        for (uint32_t j = 0; j < ndups; j++) {
            if (j)
                *p++ = ',';
            p = fk_put_u64(p, f->dup_direction[j]);
        }
        *p++ = ']';
    }
    if (e->has_agent) {
        FK_PUT_LIT(p, ",\"AgentIP\":");
        memcpy(p, e->agent_json, e->agent_json_len);
        p += e->agent_json_len;
    }
    *p++ = '}';
    return p;
}

int64_t fk_encode_json(const struct fk_encoder *e, const struct fk_flow_out *flows, uint64_t n,
                       uint8_t *out, uint64_t capacity, int newline, uint64_t *offsets)
{
    const uint64_t per_flow = fk_encoder_json_bound(e, 1);
    const struct fk_iface *hint = NULL;
    uint64_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (capacity - pos < per_flow)
            return -ENOSPC;
        if (offsets)
            offsets[i] = pos;
        const struct fk_flow_out *f = &flows[i];
        const struct fk_iface *iface =
            fk_lookup(e, fk_iface_id(f->key.if_index, f->key.netns), &hint);
        uint8_t *end = fk_json_flow(e, f, iface, out + pos);
        if (newline)
            *end++ = '\n';
        pos = (uint64_t)(end - out);
    }
    if (offsets)
        offsets[n] = pos;
    return (int64_t)pos;
}

/* ---------------------------------------------------------------------------------------- */
/* Protobuf                                                                                  */

static inline uint8_t *fk_put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

static inline uint32_t fk_varint_len(uint64_t v)
{
    uint32_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* A proto3 scalar: tag and value, omitted when zero. `tag` is a one-byte key. */
static inline uint8_t *fk_put_field(uint8_t *p, uint8_t tag, uint64_t v)
{
    if (v) {
        *p++ = tag;
        p = fk_put_varint(p, v);
    }
    return p;
}

/* The body of a pbflow.IP: ipv4 (field 1, fixed32 of the big-endian value) for IPv4-mapped
 * addresses, ipv6 (field 2, 16 bytes) for the rest. */
static uint8_t *fk_put_ip_message(uint8_t *p, const uint8_t *ip)
{
    if (memcmp(ip, fk_v4_mapped_prefix, 12) == 0) {
        p[0] = 0x0d;
        p[1] = ip[15];
        p[2] = ip[14];
        p[3] = ip[13];
        p[4] = ip[12];
        return p + 5;
    }
    p[0] = 0x12;
    p[1] = 16;
    memcpy(p + 2, ip, 16);
    return p + 18;
}

/* A sub-message whose body is shorter than 128 bytes: the tag, a one-byte length slot, then
 * the body written by the caller; fk_close_short fills in the length. */
static inline uint8_t *fk_open_short(uint8_t *p, uint8_t tag, uint8_t **len_slot)
{
    p[0] = tag;
    *len_slot = p + 1;
    return p + 2;
}

static inline void fk_close_short(uint8_t *len_slot, const uint8_t *end)
{
    *len_slot = (uint8_t)(end - len_slot - 1);
}

static inline uint8_t *fk_put_timestamp(uint8_t *p, uint8_t tag, uint64_t ns)
{
    uint8_t *len;
    p = fk_open_short(p, tag, &len);
    p = fk_put_field(p, 0x08, ns / 1000000000u);
    p = fk_put_field(p, 0x10, ns % 1000000000u);
    fk_close_short(len, p);
    return p;
}

/* A proto3 scalar with a two-byte key (field numbers 16 to 2047), omitted when zero. */
static inline uint8_t *fk_put_field2(uint8_t *p, uint8_t k0, uint8_t k1, uint64_t v)
{
    if (v) {
        p[0] = k0;
        p[1] = k1;
        p = fk_put_varint(p + 2, v);
    }
    return p;
}

/* A google.protobuf.Duration sub-message with a two-byte key, always present. */
static inline uint8_t *fk_put_duration2(uint8_t *p, uint8_t k0, uint8_t k1, uint64_t ns)
{
    *p++ = k0;
    uint8_t *len;
    p = fk_open_short(p, k1, &len);
    p = fk_put_field(p, 0x08, ns / 1000000000u);
    p = fk_put_field(p, 0x10, ns % 1000000000u);
    fk_close_short(len, p);
    return p;
}

/* One pbflow.Record (fields in number order); returns the end. */
static uint8_t *fk_record(const struct fk_encoder *e, const struct fk_flow_out *f,
                          const struct fk_iface *iface, uint8_t *p)
{
    const struct fk_flow_key *k = &f->key;
    uint8_t *len;
    p = fk_put_field(p, 0x08, k->eth_protocol);                /* 1 eth_protocol */
    p = fk_put_field(p, 0x10, k->direction);                   /* 2 direction */
    p = fk_put_timestamp(p, 0x1a, f->start_ns);                /* 3 time_flow_start */
    p = fk_put_timestamp(p, 0x22, f->end_ns);                  /* 4 time_flow_end */
    p = fk_open_short(p, 0x2a, &len);                          /* 5 data_link */
    uint64_t src_mac = 0, dst_mac = 0;
    for (int i = 0; i < 6; i++) {
        src_mac = (src_mac << 8) | f->src_mac[i];
        dst_mac = (dst_mac << 8) | f->dst_mac[i];
    }
    p = fk_put_field(p, 0x08, src_mac);
    p = fk_put_field(p, 0x10, dst_mac);
    fk_close_short(len, p);
    uint8_t *ip_len;
    p = fk_open_short(p, 0x32, &len);                          /* 6 network */
    p = fk_open_short(p, 0x0a, &ip_len);
    p = fk_put_ip_message(p, k->src_ip);
    fk_close_short(ip_len, p);
    p = fk_open_short(p, 0x12, &ip_len);
    p = fk_put_ip_message(p, k->dst_ip);
    fk_close_short(ip_len, p);
    p = fk_put_field(p, 0x18, f->dscp);
    fk_close_short(len, p);
    p = fk_open_short(p, 0x3a, &len);                          /* 7 transport */
    p = fk_put_field(p, 0x08, k->src_port);
    p = fk_put_field(p, 0x10, k->dst_port);
    p = fk_put_field(p, 0x18, k->proto);
    fk_close_short(len, p);
    p = fk_put_field(p, 0x40, f->bytes);                       /* 8 bytes */
    p = fk_put_field(p, 0x48, f->packets);                     /* 9 packets */
    if (iface && iface->pb_len) {                              /* 10 interface */
        *p++ = 0x52;
        p = fk_put_varint(p, iface->pb_len);
        memcpy(p, e->pb_names + iface->pb_off, iface->pb_len);
        p += iface->pb_len;
    }
    if (e->has_agent) {                                        /* 12 agent_ip */
        *p++ = 0x62;
        *p++ = (uint8_t)e->agent_pb_len;
        memcpy(p, e->agent_pb, e->agent_pb_len);
        p += e->agent_pb_len;
    }
    p = fk_put_field(p, 0x68, f->flags);                       /* 13 flags */
    p = fk_put_field(p, 0x70, k->icmp_type);                   /* 14 icmp_type */
    p = fk_put_field(p, 0x78, k->icmp_code);                   /* 15 icmp_code */
    p = fk_put_field2(p, 0x80, 0x01, f->drop_bytes);           /* 16 pkt_drop_bytes */
    p = fk_put_field2(p, 0x88, 0x01, f->drop_packets);         /* 17 pkt_drop_packets */
    p = fk_put_field2(p, 0x90, 0x01, f->drop_flags);           /* 18 pkt_drop_latest_flags */
    p = fk_put_field2(p, 0x98, 0x01, f->drop_state);           /* 19 pkt_drop_latest_state */
    p = fk_put_field2(p, 0xa0, 0x01, f->drop_cause);           /* 20 ..._latest_drop_cause */
    p = fk_put_field2(p, 0xa8, 0x01, f->dns_id);               /* 21 dns_id */
    p = fk_put_field2(p, 0xb0, 0x01, f->dns_flags);            /* 22 dns_flags */
    if (f->features & FK_FEATURE_DNS)                          /* 23 dns_latency */
        p = fk_put_duration2(p, 0xba, 0x01, f->dns_latency_ns);
    if (f->features & FK_FEATURE_RTT)                          /* 24 time_flow_rtt */
        p = fk_put_duration2(p, 0xc2, 0x01, f->rtt_ns);
    p = fk_put_field2(p, 0xc8, 0x01, f->dns_errno);            /* 25 dns_errno */
    uint32_t ndups = fk_dup_count(f);
    const struct fk_iface *hint = NULL;
    for (uint32_t j = 0; j < ndups; j++) {                     /* 26 dup_list */
        const struct fk_iface *dup =
            fk_lookup(e, fk_iface_id(f->dup_if_index[j], f->dup_netns[j]), &hint);
        uint32_t name_len = dup ? dup->pb_len : 0;
        uint8_t direction = f->dup_direction[j];
        uint64_t body = (name_len ? 1 + fk_varint_len(name_len) + name_len : 0) +
                        (direction ? 1 + fk_varint_len(direction) : 0);
        p[0] = 0xd2;
        p[1] = 0x01;
        p = fk_put_varint(p + 2, body);
        if (name_len) {                                        /* 1 interface */
            *p++ = 0x0a;
            p = fk_put_varint(p, name_len);
            memcpy(p, e->pb_names + dup->pb_off, name_len);
            p += name_len;
        }
        p = fk_put_field(p, 0x10, direction);                  /* 2 direction */
    }
    p = fk_put_field2(p, 0xe8, 0x01, f->sampling);             /* 29 sampling */
    size_t name_len = strnlen((const char *)f->dns_name, FK_DNS_NAME_LEN);
    if (name_len) {                                            /* 32 dns_name */
        p[0] = 0x82;
        p[1] = 0x02;
        p[2] = (uint8_t)name_len;
        memcpy(p + 3, f->dns_name, name_len);
        p += 3 + name_len;
    }
    return p;
}

int64_t fk_encode_records(const struct fk_encoder *e, const struct fk_flow_out *flows,
                          uint64_t n, uint8_t *out, uint64_t capacity, uint64_t *offsets)
{
    const uint64_t per_flow = fk_encoder_records_bound(e, 1);
    const struct fk_iface *hint = NULL;
    uint64_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (capacity - pos < per_flow)
            return -ENOSPC;
        if (offsets)
            offsets[i] = pos;
        const struct fk_flow_out *f = &flows[i];
        const struct fk_iface *iface =
            fk_lookup(e, fk_iface_id(f->key.if_index, f->key.netns), &hint);
        pos = (uint64_t)(fk_record(e, f, iface, out + pos) - out);
    }
    if (offsets)
        offsets[n] = pos;
    return (int64_t)pos;
}

int64_t fk_encode_records_message(const struct fk_encoder *e, const struct fk_flow_out *flows,
                                  uint64_t n, uint8_t *out, uint64_t capacity)
{
    const uint64_t per_flow = fk_encoder_records_bound(e, 1);
    const struct fk_iface *hint = NULL;
    uint64_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (capacity - pos < per_flow)
            return -ENOSPC;
        const struct fk_flow_out *f = &flows[i];
        /* Entry: key 0x0a, the record's length, the record. Records are nearly always shorter
         * than 128 bytes, so one length byte is reserved and the body moved when it is not. */
        uint8_t *entry = out + pos;
        uint8_t *body = entry + 2;
        const struct fk_iface *iface =
            fk_lookup(e, fk_iface_id(f->key.if_index, f->key.netns), &hint);
        uint8_t *end = fk_record(e, f, iface, body);
        uint64_t size = (uint64_t)(end - body);
        uint32_t size_len = fk_varint_len(size);
        if (size_len > 1)
            memmove(body + size_len - 1, body, size);
        entry[0] = 0x0a;
        fk_put_varint(entry + 1, size);
        pos += 1 + size_len + size;
    }
    return (int64_t)pos;
}
