/* flowkit native accounter: the flow table.
 *
 * Open addressing with linear probing over an index of 64-bit slots (entry number + 1 in the low
 * half, a hash tag in the high half); the flows themselves live densely in insertion order, so an
 * eviction is one sequential pass and clearing touches only the index. The table grows (load
 * factor <= 1/2) instead of refusing flows: the caller decides when to evict (CACHE_MAX_FLOWS),
 * which keeps the eviction policy in one place (flowkit/accounting.py).
 *
 * Merge rules (identical to the pure-Python reference accounter): packets and bytes are summed,
 * first_ns is the minimum over non-zero values, last_ns the maximum, flags are OR-ed, DSCP comes
 * from the record with the newest last_ns (on a tie the incoming record wins), sampling is the
 * maximum and the MACs come from the record with the smallest non-zero first_ns (on a tie the
 * existing one stays). Feature data: times as above, drop bytes/packets summed, the latest drop's
 * fields from the drop-carrying record with the newest drop_ns, the largest RTT, the DNS fields
 * from the DNS-carrying record with the newest dns_ns (incoming wins ties), feature bits OR-ed.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "20-accounter.h"

/* Same layout as struct fk_flow_record; the key's hash is kept in value.pad2 (zeroed whenever an
 * entry is handed out as a record). */
struct fk_entry {
    struct fk_flow_key key;
    struct fk_flow_value value;
    struct fk_flow_extra extra;
};
#define FK_ENTRY_HASH(e) ((e)->value.pad2)

struct fk_table {
    struct fk_entry *entries;
    uint32_t len;
    uint32_t entries_cap;
    uint64_t *index; /* (tag << 32) | (entry + 1); 0 = empty */
    uint32_t mask;   /* index size - 1 (a power of two minus one) */
};

_Static_assert(sizeof(struct fk_entry) == sizeof(struct fk_flow_record), "entry layout");
_Static_assert(sizeof(struct fk_flow_key) == 48, "key layout");
_Static_assert(sizeof(struct fk_flow_value) == 56, "value layout");
_Static_assert(sizeof(struct fk_flow_extra) == 112, "extra layout");
_Static_assert(sizeof(struct fk_flow_record) == 216, "record layout");
_Static_assert(sizeof(struct fk_flow_out) == 224, "output layout");

static inline uint64_t fk_mix(uint64_t a, uint64_t b)
{
    __uint128_t product = (__uint128_t)a * b;
    return (uint64_t)product ^ (uint64_t)(product >> 64);
}

/* A 64-bit hash of the 48 key bytes: multiply-fold mixing of 8-byte words. */
static inline uint64_t fk_key_hash(const struct fk_flow_key *key)
{
    uint64_t w[6];
    memcpy(w, key, 48);
    uint64_t h = 0x243f6a8885a308d3ULL;
    h = fk_mix(w[0] ^ 0x13198a2e03707344ULL ^ h, w[1] ^ 0xa4093822299f31d0ULL);
    h = fk_mix(w[2] ^ 0x082efa98ec4e6c89ULL ^ h, w[3] ^ 0x452821e638d01377ULL);
    h = fk_mix(w[4] ^ 0xbe5466cf34e90c6cULL ^ h, w[5] ^ 0xc0ac29b7c97c50ddULL);
    return fk_mix(h ^ 0xd1310ba698dfb5acULL, 0x2ffd72dbd01adfb7ULL ^ 48);
}

static uint32_t fk_round_pow2(uint64_t n)
{
    uint64_t size = 16;
    while (size < n && size < (1ULL << 31))
        size <<= 1;
    return (uint32_t)size;
}

struct fk_table *fk_table_new(uint32_t expected_flows)
{
    struct fk_table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    uint32_t index_size = fk_round_pow2((uint64_t)expected_flows * 2);
    t->entries_cap = expected_flows ? expected_flows : 16;
    t->entries = malloc((size_t)t->entries_cap * sizeof(struct fk_entry));
    t->index = calloc(index_size, sizeof(uint64_t));
    if (!t->entries || !t->index) {
        fk_table_free(t);
        return NULL;
    }
    t->mask = index_size - 1;
    return t;
}

void fk_table_free(struct fk_table *t)
{
    if (!t)
        return;
    free(t->entries);
    free(t->index);
    free(t);
}

uint32_t fk_table_len(const struct fk_table *t)
{
    return t->len;
}

void fk_table_clear(struct fk_table *t)
{
    if (t->len == 0)
        return;
    /* Clearing slot by slot is cheaper than a memset when the index is mostly empty. */
    if ((uint64_t)t->len * 8 < (uint64_t)t->mask + 1) {
        for (uint32_t i = 0; i < t->len; i++) {
            uint32_t pos = FK_ENTRY_HASH(&t->entries[i]) & t->mask;
            while ((uint32_t)t->index[pos] != i + 1)
                pos = (pos + 1) & t->mask;
            t->index[pos] = 0;
        }
    } else {
        memset(t->index, 0, ((size_t)t->mask + 1) * sizeof(uint64_t));
    }
    t->len = 0;
}

static int fk_table_grow_index(struct fk_table *t)
{
    uint64_t new_size = ((uint64_t)t->mask + 1) * 2;
    if (new_size > (1ULL << 31))
        return -ENOSPC;
    uint64_t *index = calloc(new_size, sizeof(uint64_t));
    if (!index)
        return -ENOMEM;
    uint32_t mask = (uint32_t)(new_size - 1);
    for (uint32_t i = 0; i < t->len; i++) {
        uint64_t h = fk_key_hash(&t->entries[i].key);
        uint32_t pos = (uint32_t)h & mask;
        while (index[pos])
            pos = (pos + 1) & mask;
        index[pos] = (h & 0xffffffff00000000ULL) | (uint64_t)(i + 1);
    }
    free(t->index);
    t->index = index;
    t->mask = mask;
    return 0;
}

static int fk_table_grow_entries(struct fk_table *t)
{
    uint64_t cap = (uint64_t)t->entries_cap * 2;
    if (cap > 0xfffffffeULL)
        return -ENOSPC;
    struct fk_entry *entries = realloc(t->entries, cap * sizeof(struct fk_entry));
    if (!entries)
        return -ENOMEM;
    t->entries = entries;
    t->entries_cap = (uint32_t)cap;
    return 0;
}

void fk_value_merge(struct fk_flow_value *into, const struct fk_flow_value *from)
{
    into->packets += from->packets;
    into->bytes += from->bytes;
    if (from->first_ns && (into->first_ns == 0 || from->first_ns < into->first_ns)) {
        into->first_ns = from->first_ns;
        memcpy(into->src_mac, from->src_mac, sizeof(into->src_mac));
        memcpy(into->dst_mac, from->dst_mac, sizeof(into->dst_mac));
    }
    if (from->last_ns >= into->last_ns) {
        into->last_ns = from->last_ns;
        into->dscp = from->dscp;
    }
    into->flags |= from->flags;
    if (from->sampling > into->sampling)
        into->sampling = from->sampling;
}

void fk_extra_merge(struct fk_flow_extra *into, const struct fk_flow_extra *from)
{
    if (from->first_ns && (into->first_ns == 0 || from->first_ns < into->first_ns))
        into->first_ns = from->first_ns;
    if (from->last_ns > into->last_ns)
        into->last_ns = from->last_ns;
    into->drop_bytes += from->drop_bytes;
    into->drop_packets += from->drop_packets;
    if ((from->features & FK_FEATURE_DROPS) && from->drop_ns >= into->drop_ns) {
        into->drop_ns = from->drop_ns;
        into->drop_cause = from->drop_cause;
        into->drop_flags = from->drop_flags;
        into->drop_state = from->drop_state;
    }
    if (from->rtt_ns > into->rtt_ns)
        into->rtt_ns = from->rtt_ns;
    if ((from->features & FK_FEATURE_DNS) && from->dns_ns >= into->dns_ns) {
        into->dns_ns = from->dns_ns;
        into->dns_latency_ns = from->dns_latency_ns;
        into->dns_id = from->dns_id;
        into->dns_flags = from->dns_flags;
        into->dns_errno = from->dns_errno;
        memcpy(into->pad, from->pad, sizeof(into->pad));
        memcpy(into->dns_name, from->dns_name, sizeof(into->dns_name));
    }
    into->features |= from->features;
}

/* The entry of `key`, created (value and extra zero) when missing; *created tells which.
 * NULL with *err set when the table cannot grow. */
static struct fk_entry *fk_table_entry(struct fk_table *t, const struct fk_flow_key *key,
                                       int *created, int *err)
{
    uint64_t h = fk_key_hash(key);
    uint64_t tag = h & 0xffffffff00000000ULL;
    uint32_t pos = (uint32_t)h & t->mask;
    *created = 0;
    for (;;) {
        uint64_t slot = t->index[pos];
        if (slot == 0)
            break;
        if ((slot & 0xffffffff00000000ULL) == tag) {
            struct fk_entry *e = &t->entries[(uint32_t)slot - 1];
            if (memcmp(&e->key, key, sizeof(*key)) == 0)
                return e;
        }
        pos = (pos + 1) & t->mask;
    }
    /* New flow. */
    if (t->len == t->entries_cap) {
        *err = fk_table_grow_entries(t);
        if (*err)
            return NULL;
    }
    if ((uint64_t)(t->len + 1) * 2 > (uint64_t)t->mask + 1) {
        *err = fk_table_grow_index(t);
        if (*err)
            return NULL;
        pos = (uint32_t)h & t->mask;
        while (t->index[pos])
            pos = (pos + 1) & t->mask;
    }
    struct fk_entry *e = &t->entries[t->len];
    memset(e, 0, sizeof(*e));
    memcpy(&e->key, key, sizeof(*key));
    t->len++;
    t->index[pos] = tag | (uint64_t)t->len;
    *created = 1;
    FK_ENTRY_HASH(e) = (uint32_t)h;
    return e;
}

int fk_table_merge(struct fk_table *t, const struct fk_flow_key *key,
                   const struct fk_flow_value *value)
{
    int created, err = 0;
    struct fk_entry *e = fk_table_entry(t, key, &created, &err);
    if (!e)
        return err;
    if (created) {
        uint32_t hash = FK_ENTRY_HASH(e);
        e->value = *value;
        FK_ENTRY_HASH(e) = hash;
    } else {
        fk_value_merge(&e->value, value);
    }
    return created;
}

int fk_table_merge_extra(struct fk_table *t, const struct fk_flow_key *key,
                         const struct fk_flow_extra *extra)
{
    int created, err = 0;
    struct fk_entry *e = fk_table_entry(t, key, &created, &err);
    if (!e)
        return err;
    if (created)
        e->extra = *extra;
    else
        fk_extra_merge(&e->extra, extra);
    return created;
}

static int fk_table_merge_record(struct fk_table *t, const struct fk_flow_record *r)
{
    int created, err = 0;
    struct fk_entry *e = fk_table_entry(t, &r->key, &created, &err);
    if (!e)
        return err;
    if (created) {
        uint32_t hash = FK_ENTRY_HASH(e);
        e->value = r->value;
        e->extra = r->extra;
        FK_ENTRY_HASH(e) = hash;
    } else {
        fk_value_merge(&e->value, &r->value);
        fk_extra_merge(&e->extra, &r->extra);
    }
    return created;
}

/* Dotted text of a wire-format DNS name (see flowkit.model.dns_name_from_wire): labels joined
 * by '.', stopping at the root label, a compression pointer or the end; bytes outside printable
 * ASCII become '?'. `out` gets FK_DNS_NAME_LEN bytes, NUL padded. */
static void fk_dns_name_text(const uint8_t *wire, uint8_t *out)
{
    uint32_t i = 0, o = 0;
    memset(out, 0, FK_DNS_NAME_LEN);
    while (i < FK_DNS_NAME_LEN) {
        uint32_t len = wire[i];
        if (len == 0 || (len & 0xc0))
            break;
        if (o)
            out[o++] = '.';
        for (uint32_t j = 0; j < len && i + 1 + j < FK_DNS_NAME_LEN; j++) {
            uint8_t c = wire[i + 1 + j];
            out[o++] = (c >= 0x20 && c < 0x7f) ? c : '?';
        }
        i += 1 + len;
    }
}

/* Merge records in order; stop right after the merge that makes the table hold `limit` flows
 * (limit 0 = never). Returns how many records were consumed. */
int64_t fk_table_add_records(struct fk_table *t, const struct fk_flow_record *records,
                             uint64_t n, uint32_t limit)
{
    for (uint64_t i = 0; i < n; i++) {
        int rc = fk_table_merge_record(t, &records[i]);
        if (rc < 0)
            return rc;
        if (limit && t->len >= limit)
            return (int64_t)(i + 1);
    }
    return (int64_t)n;
}

/* Write every flow (insertion order) with wall-clock times and empty the table. */
int64_t fk_table_evict(struct fk_table *t, struct fk_flow_out *out, uint64_t capacity,
                       int64_t boot_offset_ns)
{
    if (capacity < t->len)
        return -ENOBUFS;
    uint64_t offset = (uint64_t)boot_offset_ns; /* modular addition, like numpy's uint64 */
    for (uint32_t i = 0; i < t->len; i++) {
        const struct fk_entry *e = &t->entries[i];
        struct fk_flow_out *o = &out[i];
        const struct fk_flow_value *v = &e->value;
        const struct fk_flow_extra *x = &e->extra;
        memset(o, 0, sizeof(*o));
        memcpy(&o->key, &e->key, sizeof(o->key));
        o->packets = v->packets;
        o->bytes = v->bytes;
        /* The flow's times span its packets and its feature events; 0 is "none". */
        uint64_t first = v->first_ns;
        if (x->first_ns && (first == 0 || x->first_ns < first))
            first = x->first_ns;
        o->start_ns = first + offset;
        o->end_ns = (v->last_ns > x->last_ns ? v->last_ns : x->last_ns) + offset;
        o->flags = v->flags;
        o->dscp = v->dscp;
        o->sampling = v->sampling;
        memcpy(o->src_mac, v->src_mac, sizeof(o->src_mac));
        memcpy(o->dst_mac, v->dst_mac, sizeof(o->dst_mac));
        o->features = x->features;
        o->drop_bytes = x->drop_bytes;
        o->drop_packets = x->drop_packets;
        o->drop_flags = x->drop_flags;
        o->drop_state = x->drop_state;
        o->drop_cause = x->drop_cause;
        o->rtt_ns = x->rtt_ns;
        o->dns_id = x->dns_id;
        o->dns_flags = x->dns_flags;
        o->dns_latency_ns = x->dns_latency_ns;
        o->dns_errno = x->dns_errno;
        if (x->features & FK_FEATURE_DNS)
            fk_dns_name_text(x->dns_name, o->dns_name);
    }
    int64_t n = t->len;
    fk_table_clear(t);
    return n;
}

/* Write every flow as a record (monotonic times, as the kernel keeps them) and empty the table. */
int64_t fk_table_take_records(struct fk_table *t, struct fk_flow_record *out, uint64_t capacity)
{
    if (capacity < t->len)
        return -ENOBUFS;
    for (uint32_t i = 0; i < t->len; i++) {
        memcpy(&out[i], &t->entries[i], sizeof(out[i]));
        out[i].value.pad2 = 0;
    }
    int64_t n = t->len;
    fk_table_clear(t);
    return n;
}

/* Merge records in order, evicting the whole table into out[*out_len...] each time it comes to
 * hold `limit` flows (limit 0 = never). `capacity` must be at least *out_len + table length + n
 * for every record to fit, which is what the Python side allocates. Returns the number of
 * evictions. */
int64_t fk_table_add_records_evicting(struct fk_table *t, const struct fk_flow_record *records,
                                      uint64_t n, uint32_t limit, struct fk_flow_out *out,
                                      uint64_t capacity, int64_t boot_offset_ns,
                                      uint64_t *out_len)
{
    int64_t evictions = 0;
    for (uint64_t i = 0; i < n; i++) {
        int rc = fk_table_merge_record(t, &records[i]);
        if (rc < 0)
            return rc;
        if (limit && t->len >= limit) {
            int64_t written = fk_table_evict(t, out + *out_len, capacity - *out_len,
                                             boot_offset_ns);
            if (written < 0)
                return written;
            *out_len += (uint64_t)written;
            evictions++;
        }
    }
    return evictions;
}

/* fk_table_add_records_evicting() with the flows of `src` as input (in its insertion order);
 * `src` is emptied. */
int64_t fk_table_absorb(struct fk_table *t, struct fk_table *src, uint32_t limit,
                        struct fk_flow_out *out, uint64_t capacity, int64_t boot_offset_ns,
                        uint64_t *out_len)
{
    /* struct fk_entry has the layout of struct fk_flow_record (asserted above); the hash in
     * value.pad2 is ignored by the merge and overwritten when an entry is created. */
    const struct fk_flow_record *records = (const struct fk_flow_record *)src->entries;
    int64_t rc = fk_table_add_records_evicting(t, records, src->len, limit, out, capacity,
                                               boot_offset_ns, out_len);
    fk_table_clear(src);
    return rc;
}
