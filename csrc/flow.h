/* flowkit: the record layouts shared by the eBPF program, the accounting extension and Python.
 *
 * Every struct here is laid out by hand with explicit padding so that the kernel (clang -target
 * bpf), the host compiler (cffi) and numpy (flowkit/model.py) agree byte for byte. Padding bytes
 * are always zero so that keys hash and compare the same everywhere. Changing a field means
 * changing flowkit/model.py (KEY_DTYPE, VALUE_DTYPE, EXTRA_DTYPE, EVENT_DTYPE, RECORD_DTYPE,
 * FLOW_DTYPE) in the same commit; a unit test
 * compares the sizes.
 */
#ifndef FLOWKIT_FLOW_H
#define FLOWKIT_FLOW_H

#ifdef __BPF__
typedef __u8 fk_u8;
typedef __u16 fk_u16;
typedef __u32 fk_u32;
typedef __u64 fk_u64;
#else
#include <stdint.h>
typedef uint8_t fk_u8;
typedef uint16_t fk_u16;
typedef uint32_t fk_u32;
typedef uint64_t fk_u64;
#endif

#define FK_DIRECTION_INGRESS 0
#define FK_DIRECTION_EGRESS 1

/* Which optional feature data a flow carries (fk_flow_extra.features, fk_flow_out.features). */
#define FK_FEATURE_DROPS 0x01 /* ENABLE_PKT_DROPS: at least one packet of the flow was dropped */
#define FK_FEATURE_RTT 0x02   /* ENABLE_RTT: a smoothed RTT was read */
#define FK_FEATURE_DNS 0x04   /* ENABLE_DNS_TRACKING: a DNS query or response was seen */

#define FK_DNS_NAME_LEN 32 /* bytes of the queried name kept per flow */
#define FK_FLOW_CACHE_SHIFT 8 /* the eBPF program's per-CPU flow cache has 1 << 8 slots */
#define FK_FLOW_CACHE_SLOTS (1 << FK_FLOW_CACHE_SHIFT)
#define FK_MAX_DUPS 6      /* interfaces listed per flow (DEDUPER), NetObserv's maximum */

/* Flow identity: 48 bytes, 4-byte aligned, the hash key of the kernel flow maps (hashed with
 * jhash and compared on every packet, so it holds only what identifies a conversation on one
 * interface in one direction; MACs live in the value). IPv4 addresses are stored IPv4-mapped
 * (::ffff:a.b.c.d). Ports and ethertype are in host byte order. */
struct fk_flow_key {
    fk_u8 src_ip[16];
    fk_u8 dst_ip[16];
    fk_u16 src_port;
    fk_u16 dst_port;
    fk_u32 if_index;
    fk_u16 eth_protocol;
    fk_u8 direction;
    fk_u8 proto;
    fk_u8 icmp_type;
    fk_u8 icmp_code;
    fk_u16 netns; /* network namespace of the interface: 0 = the agent's own (see NETNS) */
};

/* Per-CPU aggregate in the kernel flow maps: 56 bytes. Times are CLOCK_MONOTONIC nanoseconds
 * (bpf_ktime_get_ns). The MACs are those of the flow's first packet (written when the entry, or
 * a CPU's slot of it, is created). */
struct fk_flow_value {
    fk_u64 packets;
    fk_u64 bytes;
    fk_u64 first_ns;
    fk_u64 last_ns;
    fk_u16 flags; /* OR of the TCP flags seen */
    fk_u8 dscp;
    fk_u8 pad;
    fk_u32 sampling; /* 1 in N packets kept; 0 or 1 means every packet */
    fk_u8 src_mac[6];
    fk_u8 dst_mac[6];
    fk_u32 pad2; /* zero (in a slot of the eBPF flow cache only: the jiffy of last_ns) */
};

/* Optional feature data of a flow (ENABLE_PKT_DROPS, ENABLE_RTT, ENABLE_DNS_TRACKING): 112
 * bytes, kept by the kernel in the per-CPU `extras_a`/`extras_b` maps (same key as the flow
 * maps), off the per-packet path of the flow maps. Times are CLOCK_MONOTONIC nanoseconds. */
struct fk_flow_extra {
    fk_u64 first_ns;     /* first event recorded here (0: none) */
    fk_u64 last_ns;      /* last event recorded here */
    fk_u64 drop_bytes;   /* bytes of the flow's dropped packets */
    fk_u64 drop_packets; /* dropped packets */
    fk_u64 drop_ns;      /* time of the latest drop (decides the drop_* "latest" fields) */
    fk_u32 drop_cause;   /* enum skb_drop_reason of the latest drop */
    fk_u16 drop_flags;   /* TCP flags of the latest dropped packet */
    fk_u8 drop_state;    /* TCP state of the socket of the latest drop (0: no socket) */
    fk_u8 features;      /* FK_FEATURE_* bits of the data present */
    fk_u64 rtt_ns;       /* largest smoothed RTT read */
    fk_u64 dns_ns;       /* time of the latest DNS record (decides the dns_* fields) */
    fk_u64 dns_latency_ns; /* response time - query time (responses only) */
    fk_u16 dns_id;
    fk_u16 dns_flags;
    fk_u8 dns_errno;     /* why tracking failed (an errno), 0 if it did not */
    fk_u8 pad[3];
    fk_u8 dns_name[FK_DNS_NAME_LEN]; /* queried name, DNS wire format (labels), truncated */
};

/* A flow's packets sent to the `flow_events` ring buffer when the active flow map is full (one
 * packet, or the packets a slot of the flow cache held), and the value of a flow cache slot:
 * 104 bytes. */
struct fk_flow_event {
    struct fk_flow_key key;
    struct fk_flow_value value;
};

/* A key with everything known about it: the element of the arrays the accounters take as input
 * (and of their flow tables). 216 bytes. */
struct fk_flow_record {
    struct fk_flow_key key;
    struct fk_flow_value value;
    struct fk_flow_extra extra;
};

/* A flow handed to exporters: the element of a FlowBatch (224 bytes). Times are unix epoch
 * nanoseconds. Feature fields are zero unless `features` has the feature's bit. */
struct fk_flow_out {
    struct fk_flow_key key;
    fk_u64 packets;
    fk_u64 bytes;
    fk_u64 start_ns;
    fk_u64 end_ns;
    fk_u16 flags;
    fk_u8 dscp;
    fk_u8 features; /* FK_FEATURE_* */
    fk_u32 sampling;
    fk_u8 src_mac[6];
    fk_u8 dst_mac[6];
    fk_u16 drop_flags;
    fk_u8 drop_state;
    fk_u8 dns_errno;
    fk_u64 drop_bytes;
    fk_u64 drop_packets;
    fk_u32 drop_cause;
    fk_u16 dns_id;
    fk_u16 dns_flags;
    fk_u64 rtt_ns;
    fk_u64 dns_latency_ns;
    fk_u8 dns_name[FK_DNS_NAME_LEN]; /* dotted text, NUL padded (decoded from the wire labels) */
    /* DEDUPER: the interfaces the flow was seen on, the kept one included (dup_count). */
    fk_u32 dup_if_index[FK_MAX_DUPS];
    fk_u16 dup_netns[FK_MAX_DUPS];
    fk_u8 dup_direction[FK_MAX_DUPS];
    fk_u8 dup_count;
    fk_u8 pad[5];
};

/* FLOW_FILTER_RULES, as the eBPF program reads them from its `filter_rules` LPM trie: the value
 * of one address prefix is the rules given for that prefix, in order (see flowkit/filters.py). */
#define FK_FILTER_RULES_PER_PREFIX 4
#define FK_FILTER_ACCEPT 1
#define FK_FILTER_REJECT 2
#define FK_MATCH_ICMP_TYPE 0x01
#define FK_MATCH_ICMP_CODE 0x02
#define FK_MATCH_DROPS 0x04

/* A port condition: kind 0 any port, 1 the range lo..hi, 2 one of list[] (unused entries repeat
 * list[0]). */
struct fk_port_match {
    fk_u16 lo;
    fk_u16 hi;
    fk_u16 list[4];
    fk_u8 kind;
    fk_u8 pad[3];
};

/* One rule: 92 bytes. action 0 marks an unused slot. */
struct fk_filter_rule {
    fk_u8 peer_ip[16];   /* the other address, masked by peer_mask (all zero: any peer) */
    fk_u8 peer_mask[16];
    fk_u32 sample;       /* keep 1 packet in `sample` (0: the global SAMPLING) */
    fk_u16 tcp_flags;    /* the packet's flags must include these (0: any) */
    fk_u8 action;        /* FK_FILTER_ACCEPT or FK_FILTER_REJECT */
    fk_u8 direction;     /* 0 any, 1 ingress, 2 egress */
    fk_u8 proto;         /* 0 any */
    fk_u8 icmp_type;
    fk_u8 icmp_code;
    fk_u8 match;         /* FK_MATCH_* bits */
    struct fk_port_match src_port;
    struct fk_port_match dst_port;
    struct fk_port_match any_port; /* source or destination */
};

struct fk_filter_rules {
    struct fk_filter_rule rules[FK_FILTER_RULES_PER_PREFIX];
};

/* Indices of the eBPF `counters` map (per-CPU u64), read by the accounter and exposed as metrics.
 * Every packet the eBPF program sees either lands in a flow map entry (directly or through a slot
 * of the flow cache), or in the ring buffer, or is counted in exactly one of these (except
 * FK_COUNTER_RINGBUF_RECORDS, which counts packets that did reach the ring buffer). */
enum fk_counter {
    FK_COUNTER_RINGBUF_RECORDS = 0, /* packets sent to the ring buffer because the map was full */
    FK_COUNTER_RINGBUF_LOST = 1,    /* map full and ring buffer full: packet lost, counted */
    FK_COUNTER_SAMPLED_OUT = 2,     /* packets skipped by SAMPLING */
    FK_COUNTER_RUNT = 3,            /* frames shorter than an Ethernet header: not counted */
    FK_COUNTER_NO_MAP = 4,          /* flow_selector slot 0 empty: packet lost, counted */
    FK_COUNTER_UPDATE_FAILED = 5,   /* flow map update failed for another reason than full */
    FK_COUNTER_FILTERED = 6,        /* FLOW_FILTER_RULES: rejected, or matched no rule */
    FK_COUNTER_EXTRA_LOST = 7,      /* feature data (drop, RTT, DNS) lost: extras map full */
    FK_COUNTER_DNS_UNTRACKED = 8,   /* DNS queries not tracked: query map full */
    FK_COUNTER_MAX = 16,            /* size of the counters map */
};

#endif
