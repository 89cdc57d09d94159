/* flowkit: the record layouts shared by the eBPF program, the accounting extension and Python.
 *
 * Every struct here is laid out by hand with explicit padding so that the kernel (clang -target
 * bpf), the host compiler (cffi) and numpy (flowkit/model.py) agree byte for byte. Padding bytes
 * are always zero so that keys hash and compare the same everywhere. Changing a field means
 * changing flowkit/model.py (KEY_DTYPE, VALUE_DTYPE, RECORD_DTYPE) in the same commit; a unit test
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

/* Flow identity: 60 bytes, 4-byte aligned. IPv4 addresses are stored IPv4-mapped
 * (::ffff:a.b.c.d). Ports and ethertype are in host byte order. */
struct fk_flow_key {
    fk_u32 if_index;
    fk_u16 eth_protocol;
    fk_u8 direction;
    fk_u8 proto;
    fk_u8 src_mac[6];
    fk_u8 dst_mac[6];
    fk_u8 src_ip[16];
    fk_u8 dst_ip[16];
    fk_u16 src_port;
    fk_u16 dst_port;
    fk_u8 icmp_type;
    fk_u8 icmp_code;
    fk_u8 pad[2];
};

/* Per-CPU aggregate: 40 bytes. Times are CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns). */
struct fk_flow_value {
    fk_u64 packets;
    fk_u64 bytes;
    fk_u64 first_ns;
    fk_u64 last_ns;
    fk_u16 flags; /* OR of the TCP flags seen */
    fk_u8 dscp;
    fk_u8 pad;
    fk_u32 sampling; /* 1 in N packets kept; 0 or 1 means every packet */
};

/* A key with its value: the element of the ring buffer (one packet each, when the flow map is
 * full) and of the arrays the accounters take as input. 104 bytes. */
struct fk_flow_record {
    struct fk_flow_key key;
    fk_u32 pad;
    struct fk_flow_value value;
};

/* A flow handed to exporters: the element of a FlowBatch. Times are unix epoch nanoseconds. */
struct fk_flow_out {
    struct fk_flow_key key;
    fk_u32 pad;
    fk_u64 packets;
    fk_u64 bytes;
    fk_u64 start_ns;
    fk_u64 end_ns;
    fk_u16 flags;
    fk_u8 dscp;
    fk_u8 pad2;
    fk_u32 sampling;
};

/* Indices of the eBPF `counters` map (per-CPU u64), read by the accounter and exposed as metrics.
 * Every packet the eBPF program sees either lands in a flow map entry, or in the ring buffer, or
 * is counted in exactly one of these (except FK_COUNTER_RINGBUF_RECORDS, which counts packets that
 * did reach the ring buffer). */
enum fk_counter {
    FK_COUNTER_RINGBUF_RECORDS = 0, /* packets sent to the ring buffer because the map was full */
    FK_COUNTER_RINGBUF_LOST = 1,    /* map full and ring buffer full: packet lost, counted */
    FK_COUNTER_SAMPLED_OUT = 2,     /* packets skipped by SAMPLING */
    FK_COUNTER_RUNT = 3,            /* frames shorter than an Ethernet header: not counted */
    FK_COUNTER_NO_MAP = 4,          /* flow_selector slot 0 empty: packet lost, counted */
    FK_COUNTER_UPDATE_FAILED = 5,   /* flow map update failed for another reason than full */
    FK_COUNTER_MAX = 8,             /* size of the counters map */
};

#endif
