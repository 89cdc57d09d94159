/* flowkit IPFIX encoder (RFC 7011), see csrc/include/40-ipfix.h.
 *
 * The specification is the Python encoder (flowkit/ipfix.py: TEMPLATE_V4/V6 and
 * reference_messages); tests/unit/test_ipfix.py checks byte identity on random batches. Every
 * multi-byte number is written in network byte order. A flow goes into the IPv4 template when
 * both its addresses are IPv4-mapped, into the IPv6 template otherwise. Consecutive flows of one
 * family share a data set; a family change opens a new set; a message is closed when the next
 * record would take it over max_message bytes. No padding anywhere.
 *
 * Safe to call from several threads at once (the names table is read-only once built).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "40-ipfix.h"

#define FK_IPFIX_VERSION 10
#define FK_IPFIX_HEADER 16
#define FK_IPFIX_SET_HEADER 4
#define FK_IPFIX_TEMPLATE_SET_ID 2
#define FK_IPFIX_VARLEN 0xFFFF

/* Fixed part of a data record (everything but interfaceName and the exporter address). */
#define FK_IPFIX_FIXED_V4 84
#define FK_IPFIX_FIXED_V6 108

struct fk_ipfix_field {
    uint16_t id;
    uint16_t length;
};

/* The element lists; flowkit/ipfix.py has the same two tables (with names). */
#define FK_IPFIX_COMMON_HEAD                                                                 \
    {152, 8}, /* flowStartMilliseconds */                                                    \
    {153, 8}, /* flowEndMilliseconds */                                                      \
    {1, 8},   /* octetDeltaCount */                                                          \
    {2, 8}    /* packetDeltaCount */

#define FK_IPFIX_COMMON_MID                                                                  \
    {7, 2},   /* sourceTransportPort */                                                      \
    {11, 2},  /* destinationTransportPort */                                                 \
    {4, 1},   /* protocolIdentifier */                                                       \
    {6, 2}    /* tcpControlBits */

#define FK_IPFIX_COMMON_TAIL                                                                 \
    {61, 1},  /* flowDirection */                                                            \
    {195, 1}, /* ipDiffServCodePoint */                                                      \
    {5, 1},   /* ipClassOfService: DSCP << 2, for collectors that only read the TOS byte */   \
    {56, 6},  /* sourceMacAddress */                                                         \
    {80, 6},  /* destinationMacAddress */                                                    \
    {256, 2}, /* ethernetType */                                                             \
    {10, 4},  /* ingressInterface */                                                         \
    {14, 4},  /* egressInterface */                                                          \
    {34, 4},  /* samplingInterval */                                                         \
    {305, 4}  /* samplingPacketInterval */

static const struct fk_ipfix_field fk_ipfix_v4[] = {
    FK_IPFIX_COMMON_HEAD,
    {8, 4},   /* sourceIPv4Address */
    {12, 4},  /* destinationIPv4Address */
    FK_IPFIX_COMMON_MID,
    {32, 2},  /* icmpTypeCodeIPv4 */
    {176, 1}, /* icmpTypeIPv4 */
    {177, 1}, /* icmpCodeIPv4 */
    FK_IPFIX_COMMON_TAIL,
};

static const struct fk_ipfix_field fk_ipfix_v6[] = {
    FK_IPFIX_COMMON_HEAD,
    {27, 16}, /* sourceIPv6Address */
    {28, 16}, /* destinationIPv6Address */
    FK_IPFIX_COMMON_MID,
    {139, 2}, /* icmpTypeCodeIPv6 */
    {178, 1}, /* icmpTypeIPv6 */
    {179, 1}, /* icmpCodeIPv6 */
    FK_IPFIX_COMMON_TAIL,
};

#define FK_IPFIX_N_FIELDS (sizeof(fk_ipfix_v4) / sizeof(fk_ipfix_v4[0]))

/* flowkit's enterprise-specific elements, sent under p->enterprise when it is not 0 (between the
 * exporter address and interfaceName); flowkit/ipfix.py ENTERPRISE_ELEMENTS has their names. */
static const struct fk_ipfix_field fk_ipfix_ent[] = {
    {1, 1},      /* flowkitFeatures */
    {2, 2},      /* flowkitTcpFlags */
    {10, 8},     /* pktDropBytes */
    {11, 8},     /* pktDropPackets */
    {12, 2},     /* pktDropLatestFlags */
    {13, 1},     /* pktDropLatestState */
    {14, 4},     /* pktDropLatestDropCause */
    {20, 8},     /* flowRttNanoseconds */
    {30, 2},     /* dnsId */
    {31, 2},     /* dnsFlags */
    {32, 8},     /* dnsLatencyNanoseconds */
    {33, 1},     /* dnsErrno */
    {34, 0xFFFF}, /* dnsName */
};

#define FK_IPFIX_N_ENT (sizeof(fk_ipfix_ent) / sizeof(fk_ipfix_ent[0]))
#define FK_IPFIX_ENT_FIXED 47 /* the enterprise elements but dnsName */

static const uint8_t fk_ipfix_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

struct fk_ipfix_name {
    uint64_t key; /* netns << 32 | if_index, as flowkit.model keys interface names */
    uint32_t len;
    uint32_t pad;
    uint64_t off;
};

struct fk_ipfix_names {
    struct fk_ipfix_name *entries; /* sorted by key */
    uint32_t n;
    uint32_t max_len;
    uint8_t *blob;
};

void fk_ipfix_names_free(struct fk_ipfix_names *names)
{
    if (!names)
        return;
    free(names->entries);
    free(names->blob);
    free(names);
}

static int fk_ipfix_name_cmp(const void *a, const void *b)
{
    uint64_t x = ((const struct fk_ipfix_name *)a)->key;
    uint64_t y = ((const struct fk_ipfix_name *)b)->key;
    return (x > y) - (x < y);
}

struct fk_ipfix_names *fk_ipfix_names_new(const uint64_t *keys, const uint64_t *name_offsets,
                                          const uint8_t *names, uint32_t n_names, int *err)
{
    *err = 0;
    if (n_names && (!name_offsets || !keys)) {
        *err = -EINVAL;
        return NULL;
    }
    struct fk_ipfix_names *t = calloc(1, sizeof(*t));
    if (!t)
        goto nomem;
    uint64_t total = n_names ? name_offsets[n_names] - name_offsets[0] : 0;
    t->entries = calloc(n_names ? n_names : 1, sizeof(*t->entries));
    t->blob = malloc(total ? total : 1);
    if (!t->entries || !t->blob)
        goto nomem;
    for (uint32_t i = 0; i < n_names; i++) {
        uint64_t start = name_offsets[i], end = name_offsets[i + 1];
        if (end < start || end - start > 0xFFFF) {
            fk_ipfix_names_free(t);
            *err = -EINVAL;
            return NULL;
        }
        struct fk_ipfix_name *e = &t->entries[i];
        e->key = keys[i];
        e->off = start - name_offsets[0];
        e->len = (uint32_t)(end - start);
        memcpy(t->blob + e->off, names + start, e->len);
        if (e->len > t->max_len)
            t->max_len = e->len;
    }
    qsort(t->entries, n_names, sizeof(*t->entries), fk_ipfix_name_cmp);
    t->n = n_names;
    return t;
nomem:
    fk_ipfix_names_free(t);
    *err = -ENOMEM;
    return NULL;
}

static inline uint64_t fk_ipfix_name_key(const struct fk_flow_key *k)
{
    return ((uint64_t)k->netns << 32) | k->if_index;
}

static inline const struct fk_ipfix_name *fk_ipfix_lookup(const struct fk_ipfix_names *t,
                                                          uint64_t key,
                                                          const struct fk_ipfix_name **hint)
{
    if (*hint && (*hint)->key == key)
        return *hint;
    uint32_t lo = 0, hi = t->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        uint64_t v = t->entries[mid].key;
        if (v == key) {
            *hint = &t->entries[mid];
            return *hint;
        }
        if (v < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

uint32_t fk_ipfix_name_of(const struct fk_ipfix_names *t, const struct fk_flow_key *k,
                          const void **hint, const uint8_t **name)
{
    const struct fk_ipfix_name *e =
        fk_ipfix_lookup(t, fk_ipfix_name_key(k), (const struct fk_ipfix_name **)hint);
    if (!e || !e->len) {
        *name = NULL;
        return 0;
    }
    *name = t->blob + e->off;
    return e->len;
}

uint32_t fk_ipfix_names_max(const struct fk_ipfix_names *t)
{
    return t->max_len;
}

static inline uint8_t *fk_be16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
    return p + 2;
}

static inline uint8_t *fk_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
    return p + 4;
}

static inline uint8_t *fk_be64(uint8_t *p, uint64_t v)
{
    p = fk_be32(p, (uint32_t)(v >> 32));
    return fk_be32(p, (uint32_t)v);
}

static inline uint32_t fk_ipfix_exporter_len(const struct fk_ipfix_params *p)
{
    return p->exporter_kind == 4 ? 4 : p->exporter_kind == 6 ? 16 : 0;
}

/* Length of the interfaceName field: 1 length byte below 255, else 255 + 2 length bytes. */
static inline uint32_t fk_ipfix_varlen(uint32_t len)
{
    return len < 255 ? 1 + len : 3 + len;
}

static inline uint32_t fk_ipfix_ent_max(const struct fk_ipfix_params *p)
{
    return p->enterprise ? FK_IPFIX_ENT_FIXED + 1 + FK_DNS_NAME_LEN : 0;
}

uint32_t fk_ipfix_record_max(const struct fk_ipfix_names *names, const struct fk_ipfix_params *p)
{
    return FK_IPFIX_FIXED_V6 + fk_ipfix_exporter_len(p) + fk_ipfix_ent_max(p) +
           fk_ipfix_varlen(names->max_len);
}

static inline uint32_t fk_ipfix_dns_name_len(const struct fk_flow_out *f)
{
    uint32_t n = 0;
    while (n < FK_DNS_NAME_LEN && f->dns_name[n])
        n++;
    return n;
}

uint64_t fk_ipfix_bound(const struct fk_ipfix_names *names, const struct fk_ipfix_params *p,
                        uint64_t n)
{
    /* Worst case: every record in its own set and its own message. */
    return n * ((uint64_t)fk_ipfix_record_max(names, p) + FK_IPFIX_SET_HEADER + FK_IPFIX_HEADER);
}

static uint8_t *fk_ipfix_header(uint8_t *p, const struct fk_ipfix_params *prm, uint32_t sequence)
{
    p = fk_be16(p, FK_IPFIX_VERSION);
    p = fk_be16(p, 0); /* length, patched when the message is closed */
    p = fk_be32(p, prm->export_time);
    p = fk_be32(p, sequence);
    return fk_be32(p, prm->domain_id);
}

static int fk_ipfix_is_v4(const struct fk_flow_out *f)
{
    return memcmp(f->key.src_ip, fk_ipfix_mapped, 12) == 0 &&
           memcmp(f->key.dst_ip, fk_ipfix_mapped, 12) == 0;
}

static uint8_t *fk_ipfix_record(const struct fk_ipfix_names *t, const struct fk_ipfix_params *prm,
                                const struct fk_flow_out *f, int v4,
                                const struct fk_ipfix_name **hint, uint8_t *p)
{
    const struct fk_flow_key *k = &f->key;
    p = fk_be64(p, f->start_ns / 1000000);
    p = fk_be64(p, f->end_ns / 1000000);
    p = fk_be64(p, f->bytes);
    p = fk_be64(p, f->packets);
    if (v4) {
        memcpy(p, k->src_ip + 12, 4);
        memcpy(p + 4, k->dst_ip + 12, 4);
        p += 8;
    } else {
        memcpy(p, k->src_ip, 16);
        memcpy(p + 16, k->dst_ip, 16);
        p += 32;
    }
    p = fk_be16(p, k->src_port);
    p = fk_be16(p, k->dst_port);
    *p++ = k->proto;
    p = fk_be16(p, f->flags & 0xFF); /* header flags only: bits 8+ are NetObserv's, not RFC 7125's */
    *p++ = k->icmp_type;
    *p++ = k->icmp_code;
    *p++ = k->icmp_type;
    *p++ = k->icmp_code;
    *p++ = k->direction;
    *p++ = f->dscp;
    *p++ = (uint8_t)(f->dscp << 2);
    memcpy(p, f->src_mac, 6);
    memcpy(p + 6, f->dst_mac, 6);
    p += 12;
    p = fk_be16(p, k->eth_protocol);
    p = fk_be32(p, k->direction == FK_DIRECTION_INGRESS ? k->if_index : 0);
    p = fk_be32(p, k->direction == FK_DIRECTION_INGRESS ? 0 : k->if_index);
    p = fk_be32(p, f->sampling);
    p = fk_be32(p, f->sampling);
    if (prm->exporter_kind == 4) {
        memcpy(p, prm->exporter_ip + 12, 4);
        p += 4;
    } else if (prm->exporter_kind == 6) {
        memcpy(p, prm->exporter_ip, 16);
        p += 16;
    }
    if (prm->enterprise) {
        *p++ = f->features;
        p = fk_be16(p, f->flags);
        p = fk_be64(p, f->drop_bytes);
        p = fk_be64(p, f->drop_packets);
        p = fk_be16(p, f->drop_flags);
        *p++ = f->drop_state;
        p = fk_be32(p, f->drop_cause);
        p = fk_be64(p, f->rtt_ns);
        p = fk_be16(p, f->dns_id);
        p = fk_be16(p, f->dns_flags);
        p = fk_be64(p, f->dns_latency_ns);
        *p++ = f->dns_errno;
        uint32_t dns_len = fk_ipfix_dns_name_len(f);
        *p++ = (uint8_t)dns_len;
        memcpy(p, f->dns_name, dns_len);
        p += dns_len;
    }
    const struct fk_ipfix_name *name = fk_ipfix_lookup(t, fk_ipfix_name_key(k), hint);
    uint32_t len = name ? name->len : 0;
    if (len < 255) {
        *p++ = (uint8_t)len;
    } else {
        *p++ = 255;
        p = fk_be16(p, len);
    }
    if (len) {
        memcpy(p, t->blob + name->off, len);
        p += len;
    }
    return p;
}

static inline uint32_t fk_ipfix_record_len(const struct fk_ipfix_names *t,
                                           const struct fk_ipfix_params *prm,
                                           const struct fk_flow_out *f, int v4,
                                           const struct fk_ipfix_name **hint)
{
    const struct fk_ipfix_name *name = fk_ipfix_lookup(t, fk_ipfix_name_key(&f->key), hint);
    uint32_t ent = prm->enterprise ? FK_IPFIX_ENT_FIXED + 1 + fk_ipfix_dns_name_len(f) : 0;
    return (v4 ? FK_IPFIX_FIXED_V4 : FK_IPFIX_FIXED_V6) + fk_ipfix_exporter_len(prm) + ent +
           fk_ipfix_varlen(name ? name->len : 0);
}

int64_t fk_ipfix_encode(const struct fk_ipfix_names *t, const struct fk_flow_out *flows,
                        uint64_t n, const struct fk_ipfix_params *prm, uint8_t *out,
                        uint64_t capacity, uint64_t *ends, uint64_t *records)
{
    if (prm->max_message > 0xFFFF || prm->max_message < FK_IPFIX_HEADER + FK_IPFIX_SET_HEADER)
        return -EINVAL;
    if (n == 0)
        return 0;
    if (capacity < fk_ipfix_bound(t, prm, n))
        return -ENOSPC;
    const struct fk_ipfix_name *hint = NULL;
    uint8_t *p = out;
    uint8_t *msg = NULL; /* start of the open message */
    uint8_t *set = NULL; /* start of the open set */
    int set_v4 = -1;
    int64_t n_msgs = 0;
    uint64_t in_msg = 0;
    uint32_t sequence = prm->sequence;
    for (uint64_t i = 0; i < n; i++) {
        const struct fk_flow_out *f = &flows[i];
        int v4 = fk_ipfix_is_v4(f);
        uint32_t len = fk_ipfix_record_len(t, prm, f, v4, &hint);
        if ((uint64_t)FK_IPFIX_HEADER + FK_IPFIX_SET_HEADER + len > prm->max_message)
            return -EMSGSIZE;
        uint64_t need = len + (set && set_v4 == v4 ? 0 : FK_IPFIX_SET_HEADER);
        if (msg && (uint64_t)(p - msg) + need > prm->max_message) {
            fk_be16(set + 2, (uint32_t)(p - set));
            fk_be16(msg + 2, (uint32_t)(p - msg));
            ends[n_msgs] = (uint64_t)(p - out);
            records[n_msgs] = in_msg;
            n_msgs++;
            sequence += (uint32_t)in_msg;
            msg = set = NULL;
        }
        if (!msg) {
            msg = p;
            p = fk_ipfix_header(p, prm, sequence);
            in_msg = 0;
        }
        if (!set || set_v4 != v4) {
            if (set)
                fk_be16(set + 2, (uint32_t)(p - set));
            set = p;
            set_v4 = v4;
            p = fk_be16(p, prm->template_base + (v4 ? 0 : 1));
            p = fk_be16(p, 0);
        }
        p = fk_ipfix_record(t, prm, f, v4, &hint, p);
        in_msg++;
    }
    fk_be16(set + 2, (uint32_t)(p - set));
    fk_be16(msg + 2, (uint32_t)(p - msg));
    ends[n_msgs] = (uint64_t)(p - out);
    records[n_msgs] = in_msg;
    return n_msgs + 1;
}

static uint8_t *fk_ipfix_template(uint8_t *p, const struct fk_ipfix_params *prm, uint16_t id,
                                  const struct fk_ipfix_field *fields, int v4)
{
    uint32_t extra = (prm->exporter_kind ? 1 : 0) + (prm->enterprise ? FK_IPFIX_N_ENT : 0);
    p = fk_be16(p, id);
    p = fk_be16(p, (uint32_t)(FK_IPFIX_N_FIELDS + extra + 1));
    for (size_t i = 0; i < FK_IPFIX_N_FIELDS; i++) {
        p = fk_be16(p, fields[i].id);
        p = fk_be16(p, fields[i].length);
    }
    (void)v4;
    if (prm->exporter_kind == 4) {
        p = fk_be16(p, 130); /* exporterIPv4Address */
        p = fk_be16(p, 4);
    } else if (prm->exporter_kind == 6) {
        p = fk_be16(p, 131); /* exporterIPv6Address */
        p = fk_be16(p, 16);
    }
    if (prm->enterprise) {
        for (size_t i = 0; i < FK_IPFIX_N_ENT; i++) {
            p = fk_be16(p, 0x8000u | fk_ipfix_ent[i].id); /* enterprise bit */
            p = fk_be16(p, fk_ipfix_ent[i].length);
            p = fk_be32(p, prm->enterprise);
        }
    }
    p = fk_be16(p, 82); /* interfaceName */
    return fk_be16(p, FK_IPFIX_VARLEN);
}

int64_t fk_ipfix_template_message(const struct fk_ipfix_params *prm, uint8_t *out,
                                  uint64_t capacity)
{
    uint64_t need = FK_IPFIX_HEADER + FK_IPFIX_SET_HEADER +
                    2 * (4 + 4 * (FK_IPFIX_N_FIELDS + 2) + 8 * FK_IPFIX_N_ENT);
    if (capacity < need)
        return -ENOSPC;
    uint8_t *p = fk_ipfix_header(out, prm, prm->sequence);
    uint8_t *set = p;
    p = fk_be16(p, FK_IPFIX_TEMPLATE_SET_ID);
    p = fk_be16(p, 0);
    p = fk_ipfix_template(p, prm, prm->template_base, fk_ipfix_v4, 1);
    p = fk_ipfix_template(p, prm, (uint16_t)(prm->template_base + 1), fk_ipfix_v6, 0);
    fk_be16(set + 2, (uint32_t)(p - set));
    fk_be16(out + 2, (uint32_t)(p - out));
    return p - out;
}
