/* flowkit: the eBPF datapath. Every packet seen on a traced interface updates one flow entry.
 *
 * Build (from the repository root; `make bpf` runs exactly this):
 *     clang -O2 -g -target bpf -fdebug-compilation-dir=. -D__BPF__ -I csrc -c csrc/bpf/flowkit.bpf.c -o flowkit/bpf/flowkit.bpf.o
 *
 * Programs: `flowkit_ingress` and `flowkit_egress` (SEC("tc"): TCX links or clsact
 * direct-action filters). Both return TC_ACT_UNSPEC / TCX_NEXT (-1): flowkit only observes, the
 * packet goes on to the next filter or program exactly as if flowkit were not there.
 *
 * Maps (the accounter in flowkit/accounting.py and csrc/native depends on these names):
 *   flows_a, flows_b  per-CPU hash maps, struct fk_flow_key -> struct fk_flow_value;
 *   flow_selector     array of maps with one slot holding the ACTIVE flow map. The accounter
 *                     swaps the slot to the other map; the kernel waits for running programs
 *                     before the update returns, so the old map can then be drained losslessly;
 *   flow_events       ring buffer of struct fk_flow_event (one packet each) for packets that
 *                     found the active map full;
 *   counters          per-CPU array of u64 indexed by enum fk_counter (csrc/flow.h).
 *
 * Settings live in .rodata and are rewritten by name before the object is loaded.
 *
 * Cost: the hot path reads the headers in place (direct packet access, 16- and 32-bit loads),
 * then does an inlined array-of-maps lookup, one hash lookup and one coarse clock read
 * (bpf_ktime_get_ns only when a flow starts, see `precise_timestamps`). Frames whose headers are
 * not in the linear area, and VLAN-tagged frames, are copied to the stack first with one
 * bpf_skb_load_bytes of a fixed header window; IPv4 options and IPv6 extension headers take one
 * extra load each.
 *
 * The UAPI headers are not included on purpose: <linux/types.h> needs <asm/types.h>, which is
 * not on the include path of `-target bpf` on Debian. The few UAPI definitions used are below;
 * their values are fixed by the kernel ABI.
 */

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u64 __be64;
typedef __u32 __wsum;

#include <bpf/bpf_helpers.h>

#include "flow.h"

/* ---- UAPI subset (linux/bpf.h, linux/pkt_cls.h, linux/if_ether.h, linux/in.h) ---- */

enum {
    BPF_MAP_TYPE_PERCPU_HASH = 5,
    BPF_MAP_TYPE_PERCPU_ARRAY = 6,
    BPF_MAP_TYPE_ARRAY_OF_MAPS = 12,
    BPF_MAP_TYPE_RINGBUF = 27,
};

#define BPF_ANY 0
#define E2BIG 7
#define TC_ACT_UNSPEC (-1) /* == TCX_NEXT: continue with the next filter / program */

/* The leading fields of struct __sk_buff, up to data_end; their offsets are ABI. */
struct __sk_buff {
    __u32 len;
    __u32 pkt_type;
    __u32 mark;
    __u32 queue_mapping;
    __u32 protocol;
    __u32 vlan_present;
    __u32 vlan_tci;
    __u32 vlan_proto;
    __u32 priority;
    __u32 ingress_ifindex;
    __u32 ifindex;
    __u32 tc_index;
    __u32 cb[5];
    __u32 hash;
    __u32 tc_classid;
    __u32 data;
    __u32 data_end;
};

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8

#define IPPROTO_HOPOPTS 0
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_ICMPV6 58
#define IPPROTO_DSTOPTS 60
#define IPPROTO_SCTP 132

/* Flag bits beyond the 8 TCP header flags, set when a packet carries both (the flag values
 * NetObserv collectors understand). */
#define FK_TCP_SYN_ACK 0x100
#define FK_TCP_FIN_ACK 0x200
#define FK_TCP_RST_ACK 0x400

/* ---- settings (.rodata, rewritten by name before load) ---- */

/* Keep about 1 packet in `sampling` (0 or 1: every packet). Recorded on every flow. */
volatile const __u32 sampling = 0;
/* 0: a packet that updates an existing flow takes its time from the coarse monotonic clock
 * (same epoch as CLOCK_MONOTONIC, one scheduler tick of resolution, ~20 ns cheaper per packet);
 * flow creation always reads the precise clock. 1: every packet reads the precise clock. */
volatile const __u8 precise_timestamps = 0;
/* DIRECTION: a program whose direction is switched off returns at once. */
volatile const __u8 trace_ingress = 1;
volatile const __u8 trace_egress = 1;
/* NETWORK_NAMESPACES: 1 writes the namespace of the packet's device into the key (`netns`: the
 * low 16 bits of its inode number, 0 for `host_netns_inum`, the agent's own namespace). 0: the
 * verifier removes that code and `netns` stays 0. */
volatile const __u8 trace_netns = 0;
volatile const __u32 host_netns_inum = 0;

/* ---- kernel types read with CO-RE (relocated against the running kernel's BTF) ---- */

struct ns_common {
    unsigned int inum;
} __attribute__((preserve_access_index));
struct net {
    struct ns_common ns;
} __attribute__((preserve_access_index));
typedef struct {
    struct net *net;
} possible_net_t;
struct net_device {
    possible_net_t nd_net;
} __attribute__((preserve_access_index));
struct sk_buff {
    struct net_device *dev;
} __attribute__((preserve_access_index));

/* The kernel's sk_buff behind a TC program's context (Linux >= 6.3; weak so that the object
 * still loads without it when NETWORK_NAMESPACES is off). */
extern void *bpf_cast_to_kern_ctx(void *) __ksym __weak;

/* ---- maps ---- */

/* Sized by CACHE_MAX_FLOWS before load (both maps get the same size). */
struct fk_flow_map {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 5000);
    __type(key, struct fk_flow_key);
    __type(value, struct fk_flow_value);
};

struct fk_flow_map flows_a SEC(".maps");
struct fk_flow_map flows_b SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
    __uint(max_entries, 1);
    __type(key, __u32);
    __array(values, struct fk_flow_map);
} flow_selector SEC(".maps") = {
    .values = {[0] = &flows_a},
};

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 20); /* bytes; about 8,000 single-packet records */
} flow_events SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, FK_COUNTER_MAX);
    __type(key, __u32);
    __type(value, __u64);
} counters SEC(".maps");

/* ---- parsing ---- */

/* The header window: Ethernet, then room for an IPv6 header and the first 14 bytes of TCP
 * (enough for the flags); IPv4 fits with room to spare. */
#define L3_OFF ETH_HLEN
#define L3_WINDOW 54
#define WINDOW (ETH_HLEN + L3_WINDOW)
#define L4_WANT 14 /* ports (all), TCP flags at byte 13, ICMP type/code at bytes 0-1 */
#define IPV4_WANT (20 + L4_WANT) /* an IPv4 header without options, then L4_WANT bytes */
#define MAX_IPV6_EXT 6

/* What one packet tells: its flow key, and fields that do not identify the flow. The MACs sit
 * at offsets 48 (0 mod 4) and 54 (2 mod 4), as in struct fk_flow_value, so that copy_macs and
 * the copies into a map value are aligned. */
struct fk_parse {
    struct fk_flow_key key;
    __u8 src_mac[6];
    __u8 dst_mac[6];
    __u16 flags;
    __u8 dscp;
};

static __always_inline void count(__u32 index)
{
    __u64 *value = bpf_map_lookup_elem(&counters, &index);
    if (value)
        *value += 1;
}

/* Header fields are read with 16- and 32-bit loads, not byte by byte. Reading the packet
 * unaligned is fine (the verifier allows it wherever the CPU does); the stack copy of the window
 * is placed so that these loads are aligned there too, as the verifier requires for the stack
 * (see parse_copied). */
typedef __u16 __attribute__((may_alias)) fk_alias16;
typedef __u32 __attribute__((may_alias)) fk_alias32;

static __always_inline __u16 ld16(const __u8 *p)
{
    return *(const fk_alias16 *)p;
}

static __always_inline __u32 ld32(const __u8 *p)
{
    return *(const fk_alias32 *)p;
}

static __always_inline void st16(__u8 *p, __u16 v)
{
    *(fk_alias16 *)p = v;
}

static __always_inline void st32(__u8 *p, __u32 v)
{
    *(fk_alias32 *)p = v;
}

static __always_inline __u16 be16(const __u8 *p)
{
    return __builtin_bswap16(ld16(p));
}

/* Destination MAC as 2 + 4 bytes, source MAC as 4 + 2: aligned in the key and in the copy. */
static __always_inline void copy_macs(struct fk_parse *p, const __u8 *eth)
{
    st16(p->dst_mac, ld16(eth));
    st32(p->dst_mac + 2, ld32(eth + 2));
    st32(p->src_mac, ld32(eth + 6));
    st16(p->src_mac + 4, ld16(eth + 10));
}

static __always_inline void copy_ipv6_addr(__u8 *dst, const __u8 *src)
{
    st32(dst, ld32(src));
    st32(dst + 4, ld32(src + 4));
    st32(dst + 8, ld32(src + 8));
    st32(dst + 12, ld32(src + 12));
}

/* Read at most `want` bytes at packet offset `off` into `dst`; returns the number read. */
static __always_inline __u32 load_upto(struct __sk_buff *skb, __u32 off, __u8 *dst, __u32 want)
{
    /* 64-bit arithmetic: the verifier must see the clamped length in the very register passed
     * to the helper (a 32-bit clamp lets clang pass the unclamped 64-bit value). */
    __u64 len = skb->len;
    __u64 start = off;
    if (start >= len)
        return 0;
    __u64 n = len - start;
    /* Hide from clang that n > 0 here, so that it keeps the test the verifier needs. */
    asm volatile("" : "+r"(n));
    if (n > want)
        n = want;
    if (n == 0 || bpf_skb_load_bytes(skb, off, dst, n) < 0)
        return 0;
    return n;
}

/* Fill ports, ICMP type/code and TCP flags from the first `avail` bytes of the L4 header. */
static __always_inline void parse_l4(struct fk_parse *p, const __u8 *l4, __u32 avail)
{
    switch (p->key.proto) {
    case IPPROTO_TCP:
        if (avail >= L4_WANT) {
            __u16 f = l4[13];
            if ((f & 0x12) == 0x12)
                f |= FK_TCP_SYN_ACK;
            if ((f & 0x11) == 0x11)
                f |= FK_TCP_FIN_ACK;
            if ((f & 0x14) == 0x14)
                f |= FK_TCP_RST_ACK;
            p->flags = f;
        }
        /* fall through: ports */
    case IPPROTO_UDP:
    case IPPROTO_SCTP:
        if (avail >= 4) {
            p->key.src_port = be16(l4);
            p->key.dst_port = be16(l4 + 2);
        }
        break;
    case IPPROTO_ICMP:
    case IPPROTO_ICMPV6:
        if (avail >= 2) {
            p->key.icmp_type = l4[0];
            p->key.icmp_code = l4[1];
        }
        break;
    }
}

/* IPv4 at `ip` (the window holds `avail` bytes of it). */
static __always_inline void parse_ipv4(struct __sk_buff *skb, struct fk_parse *p, const __u8 *ip,
                                       __u32 avail, __u32 ip_off)
{
    if (avail < 20)
        return;
    st16(p->key.src_ip + 10, 0xffff);
    st32(p->key.src_ip + 12, ld32(ip + 12));
    st16(p->key.dst_ip + 10, 0xffff);
    st32(p->key.dst_ip + 12, ld32(ip + 16));
    p->key.proto = ip[9];
    p->dscp = ip[1] >> 2;
    /* Non-first fragments carry no L4 header. */
    if (be16(ip + 6) & 0x1fff)
        return;
    __u32 ihl = (ip[0] & 0x0f) * 4;
    if (ihl == 20) {
        parse_l4(p, ip + 20, avail - 20);
    } else if (ihl > 20) {
        /* IP options push the L4 header out of the window: load it on its own. */
        __u8 l4[L4_WANT] __attribute__((aligned(4)));
        __u32 n = load_upto(skb, ip_off + ihl, l4, L4_WANT);
        parse_l4(p, l4, n);
    }
}

/* IPv6 at `ip`; extension headers (hop-by-hop, routing, fragment, destination options) are
 * skipped with one small load each, at most MAX_IPV6_EXT of them. */
static __always_inline void parse_ipv6(struct __sk_buff *skb, struct fk_parse *p, const __u8 *ip,
                                       __u32 avail, __u32 ip_off)
{
    if (avail < 40)
        return;
    copy_ipv6_addr(p->key.src_ip, ip + 8);
    copy_ipv6_addr(p->key.dst_ip, ip + 24);
    p->dscp = (((ip[0] & 0x0f) << 4) | (ip[1] >> 4)) >> 2;
    __u8 next = ip[6];
    if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_FRAGMENT &&
        next != IPPROTO_DSTOPTS) {
        p->key.proto = next;
        parse_l4(p, ip + 40, avail - 40);
        return;
    }
    __u32 off = ip_off + 40;
    __u8 ext[L4_WANT] __attribute__((aligned(4)));
#pragma unroll
    for (int i = 0; i < MAX_IPV6_EXT; i++) {
        if (load_upto(skb, off, ext, 8) < 8) {
            p->key.proto = next;
            return;
        }
        if (next == IPPROTO_FRAGMENT) {
            next = ext[0];
            off += 8;
            if (be16(ext + 2) & 0xfff8) { /* not the first fragment: no L4 header */
                p->key.proto = next;
                return;
            }
        } else {
            next = ext[0];
            off += ((__u32)ext[1] + 1) * 8;
        }
        if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_FRAGMENT &&
            next != IPPROTO_DSTOPTS)
            break;
    }
    p->key.proto = next;
    __u32 n = load_upto(skb, off, ext, L4_WANT);
    parse_l4(p, ext, n);
}

/* ---- the frame ---- */

/* Untagged IPv4 and IPv6 frames whose window is in the linear area are parsed in place (direct
 * packet access: no helper call, no copy). Returns 0, having written nothing, for any other
 * frame; parse_copied then reads the same fields the same way. */
static __always_inline int parse_linear(struct __sk_buff *skb, struct fk_parse *p)
{
    const __u8 *data = (const __u8 *)(long)skb->data;
    const __u8 *end = (const __u8 *)(long)skb->data_end;
    /* 48 bytes: shorter than any Ethernet frame on the wire. */
    if (data + L3_OFF + IPV4_WANT > end)
        return 0;
    __u16 etype = be16(data + 12);
    if (etype == ETH_P_IP) {
        copy_macs(p, data);
        p->key.eth_protocol = etype;
        parse_ipv4(skb, p, data + L3_OFF, IPV4_WANT, L3_OFF);
        return 1;
    }
    if (etype == ETH_P_IPV6 && data + WINDOW <= end) {
        copy_macs(p, data);
        p->key.eth_protocol = etype;
        parse_ipv6(skb, p, data + L3_OFF, L3_WINDOW, L3_OFF);
        return 1;
    }
    return 0;
}

/* Any frame: the window is copied to the stack with bpf_skb_load_bytes (frames sent through
 * AF_PACKET, by trafgen for instance, carry only the Ethernet header in the linear area).
 * Returns 0 for a frame shorter than an Ethernet header. */
static __always_inline int parse_copied(struct __sk_buff *skb, struct fk_parse *p)
{
    /* The frame starts 2 bytes into an 8-aligned buffer, so that its network header is
     * 8-aligned and every ld16/ld32 of the parser is aligned. */
    __u8 copy[2 + WINDOW] __attribute__((aligned(8)));
    __u8 *buf = copy + 2;
    __u32 n = load_upto(skb, 0, buf, WINDOW);
    if (n < ETH_HLEN)
        return 0;
    copy_macs(p, buf);

    __u16 etype = be16(buf + 12);
    __u8 *l3 = buf + L3_OFF;
    __u32 l3_off = L3_OFF;
    __u32 avail = n - L3_OFF;
    if (etype == ETH_P_8021Q || etype == ETH_P_8021AD) {
        /* One VLAN tag: the network header starts 4 bytes later; reload the window there. */
        if (avail < 4) {
            etype = 0;
        } else {
            etype = be16(buf + 16);
            l3_off = L3_OFF + 4;
            avail = load_upto(skb, l3_off, l3, L3_WINDOW);
        }
    }
    p->key.eth_protocol = etype;
    if (etype == ETH_P_IP)
        parse_ipv4(skb, p, l3, avail, l3_off);
    else if (etype == ETH_P_IPV6)
        parse_ipv6(skb, p, l3, avail, l3_off);
    return 1;
}

/* ---- accounting ---- */

/* skb->cb[] words of a replayed frame: interface index, original frame length (the data may be
 * cut to fit BPF_PROG_TEST_RUN's one-page limit), capture time in unix ns (low, high word). */
#define FK_REPLAY_CB_IFINDEX 0
#define FK_REPLAY_CB_LEN 1
#define FK_REPLAY_CB_TIME_LO 2
#define FK_REPLAY_CB_TIME_HI 3

/* skb->cb[i] of a replayed frame (cb[] starts at byte 48 of struct __sk_buff). Loaded in asm:
 * in C, clang merges `replay ? skb->cb[i] : skb->field` into one load at a computed context
 * offset, which the verifier refuses. */
static __always_inline __u32 replay_word(struct __sk_buff *skb, const int i)
{
    __u32 v;
    asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(v) : "r"(skb), "i"(48 + 4 * i));
    return v;
}

/* The packet's time: the monotonic clock (precise or coarse), or the capture time in replay. */
static __always_inline __u64 packet_time(struct __sk_buff *skb, int precise, const int replay)
{
    if (replay)
        return ((__u64)replay_word(skb, FK_REPLAY_CB_TIME_HI) << 32) |
               replay_word(skb, FK_REPLAY_CB_TIME_LO);
    return precise ? bpf_ktime_get_ns() : bpf_ktime_get_coarse_ns();
}

/* The MACs of a packet into a flow value (both 12 bytes at the same alignment). */
static __always_inline void set_macs(struct fk_flow_value *v, const struct fk_parse *p)
{
    st32(v->src_mac, ld32(p->src_mac));
    st32(v->src_mac + 4, ld32(p->src_mac + 4));
    st32(v->src_mac + 8, ld32(p->src_mac + 8));
}

static __always_inline void to_ringbuf(struct fk_parse *p, __u64 len, __u64 now)
{
    struct fk_flow_event *rec = bpf_ringbuf_reserve(&flow_events, sizeof(*rec), 0);
    if (!rec) {
        count(FK_COUNTER_RINGBUF_LOST);
        return;
    }
    rec->key = p->key;
    set_macs(&rec->value, p);
    rec->value.pad2 = 0;
    rec->value.packets = 1;
    rec->value.bytes = len;
    rec->value.first_ns = now;
    rec->value.last_ns = now;
    rec->value.flags = p->flags;
    rec->value.dscp = p->dscp;
    rec->value.pad = 0;
    rec->value.sampling = sampling;
    bpf_ringbuf_submit(rec, 0);
    count(FK_COUNTER_RINGBUF_RECORDS);
}

/* `replay` is a compile-time constant: 0 in the live programs (whose code is then exactly what
 * it is without replay), 1 in the flowkit_replay_* programs (see below). */
static __always_inline int account(struct __sk_buff *skb, __u8 direction, const int replay)
{
    if (sampling > 1 && bpf_get_prandom_u32() % sampling != 0) {
        count(FK_COUNTER_SAMPLED_OUT);
        return TC_ACT_UNSPEC;
    }

    struct fk_parse p __attribute__((aligned(8)));
    __builtin_memset(&p, 0, sizeof(p));
    p.key.if_index = replay ? replay_word(skb, FK_REPLAY_CB_IFINDEX) : skb->ifindex;
    p.key.direction = direction;
    if (trace_netns) {
        struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);
        struct net_device *dev = kskb->dev;
        __u32 inum = dev ? dev->nd_net.net->ns.inum : host_netns_inum;
        p.key.netns = inum == host_netns_inum ? 0 : (__u16)inum;
    }
    if (!parse_linear(skb, &p) && !parse_copied(skb, &p)) {
        count(FK_COUNTER_RUNT);
        return TC_ACT_UNSPEC;
    }

    __u64 len = replay ? replay_word(skb, FK_REPLAY_CB_LEN) : skb->len;
    __u32 zero = 0;
    void *flows = bpf_map_lookup_elem(&flow_selector, &zero);
    if (!flows) {
        count(FK_COUNTER_NO_MAP);
        return TC_ACT_UNSPEC;
    }

    struct fk_flow_value *v = bpf_map_lookup_elem(flows, &p.key);
    __u64 now;
    if (v) {
        /* A per-CPU slot starts zeroed when another CPU created the entry. */
        if (v->packets == 0) {
            now = packet_time(skb, 1, replay);
            v->first_ns = now;
            v->sampling = sampling;
            set_macs(v, &p);
        } else {
            now = packet_time(skb, precise_timestamps, replay);
            /* The coarse clock lags the precise one by up to a tick. */
            if (now < v->first_ns)
                now = v->first_ns;
        }
        v->packets += 1;
        v->bytes += len;
        v->last_ns = now;
        v->flags |= p.flags;
        v->dscp = p.dscp;
        return TC_ACT_UNSPEC;
    }

    now = packet_time(skb, 1, replay);
    struct fk_flow_value fresh = {
        .packets = 1,
        .bytes = len,
        .first_ns = now,
        .last_ns = now,
        .flags = p.flags,
        .dscp = p.dscp,
        .pad = 0,
        .sampling = sampling,
        .pad2 = 0,
    };
    set_macs(&fresh, &p);
    /* BPF_ANY: if another CPU created the entry meanwhile, this writes only our CPU's slot,
     * which was zero. */
    long err = bpf_map_update_elem(flows, &p.key, &fresh, BPF_ANY);
    if (err == -E2BIG)
        to_ringbuf(&p, len, now);
    else if (err)
        count(FK_COUNTER_UPDATE_FAILED);
    return TC_ACT_UNSPEC;
}

SEC("tc")
int flowkit_ingress(struct __sk_buff *skb)
{
    if (!trace_ingress)
        return TC_ACT_UNSPEC;
    return account(skb, FK_DIRECTION_INGRESS, 0);
}

SEC("tc")
int flowkit_egress(struct __sk_buff *skb)
{
    if (!trace_egress)
        return TC_ACT_UNSPEC;
    return account(skb, FK_DIRECTION_EGRESS, 0);
}

/* Offline replay (flowkit_plugins/replay_tracer.py): frames of a capture file are run through
 * these with BPF_PROG_TEST_RUN. Same code as the live programs, except that the interface index,
 * the byte count (the frame's original length: the data may be cut to fit the test run's
 * one-page limit) and the time (the capture timestamp) come from skb->cb[] (FK_REPLAY_CB_*),
 * set through the test run's context. Never attached; the ebpf tracer does not load them. */
SEC("tc")
int flowkit_replay_ingress(struct __sk_buff *skb)
{
    return account(skb, FK_DIRECTION_INGRESS, 1);
}

SEC("tc")
int flowkit_replay_egress(struct __sk_buff *skb)
{
    return account(skb, FK_DIRECTION_EGRESS, 1);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
