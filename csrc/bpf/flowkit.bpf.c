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
 * Cost (docs/datapath.md, "The flow cache"): the hit path reads the headers in place (direct
 * packet access, 16- and 32-bit loads), then finds the flow in this CPU's flow cache (an inlined
 * per-CPU array lookup and a 48-byte compare: no hash map lookup) and reads the coarse clock only
 * when the jiffy has changed. An IPv4 or IPv6 frame whose headers are not in the linear area
 * (frames sent through AF_PACKET, as trafgen's) first has them pulled into it with one
 * bpf_skb_pull_data, the move the receive path would make a moment later (ip_rcv pulls the
 * same headers), and is then read in place too. VLAN-tagged frames, frames too short for the
 * window and frames whose pull fails are copied to the stack with one bpf_skb_load_bytes of a
 * fixed header window; IPv4 options and IPv6 extension headers take one extra load each.
 *
 * Types, UAPI definitions and kernel (CO-RE) types shared with the probes: csrc/bpf/kernel.h.
 */

#include "bpf/kernel.h"
#include "flow.h"

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
/* ENABLE_DNS_TRACKING and DNS_TRACKING_PORT: DNS messages over UDP and TCP to or from this port
 * are tracked on the TC path. */
volatile const __u8 enable_dns = 0;
volatile const __u16 dns_port = 53;
/* 1: packets go through the per-CPU flow cache (`cache_a`/`cache_b`, see account_cached) before
 * the flow map; the ebpf tracer sets it, as its drainer empties the caches with the maps.
 * 0 (the object's default, for loaders that drain only the flow maps): every packet updates
 * the flow map. */
volatile const __u8 flow_cache = 0;
/* FLOW_FILTER_RULES: 1 when rules are loaded into `filter_rules`; then a packet is kept only
 * if the rule deciding for it accepts it. */
volatile const __u8 filter_enabled = 0;

/* The kernel's sk_buff behind a TC program's context (Linux >= 6.3; weak so that the object
 * still loads without it when NETWORK_NAMESPACES is off). */
extern void *bpf_cast_to_kern_ctx(void *) __ksym __weak;

/* ---- maps ---- */

/* Two maps of one kind and the array of maps whose slot 0 names the one the programs use (the
 * first at load). The drainer points the slot at the other map and empties the old one once no
 * program can still be using it (csrc/native/kernel_drain.c). */
#define DOUBLE_BUFFERED(kind, first, second, selector)                                           \
    struct kind first SEC(".maps");                                                              \
    struct kind second SEC(".maps");                                                             \
    struct {                                                                                     \
        __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);                                                \
        __uint(max_entries, 1);                                                                  \
        __type(key, __u32);                                                                      \
        __array(values, struct kind);                                                            \
    } selector SEC(".maps") = {                                                                  \
        .values = {[0] = &first},                                                                \
    }

/* The map a selector names now (NULL only if its slot is empty). */
static __always_inline void *selected(void *selector)
{
    __u32 zero = 0;
    return bpf_map_lookup_elem(selector, &zero);
}

/* Sized by CACHE_MAX_FLOWS before load (both maps get the same size). */
struct fk_flow_map {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 5000);
    __type(key, struct fk_flow_key);
    __type(value, struct fk_flow_value);
};

DOUBLE_BUFFERED(fk_flow_map, flows_a, flows_b, flow_selector);

/* The flow cache: per CPU, FK_FLOW_CACHE_SLOTS slots each holding one flow's key and the
 * packets of it not yet added to the flow map; double-buffered behind `cache_selector`, which
 * the drainer flips together with `flow_selector` (csrc/native/kernel_drain.c). */
struct fk_cache_map {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, FK_FLOW_CACHE_SLOTS);
    __type(key, __u32);
    __type(value, struct fk_flow_event);
};

DOUBLE_BUFFERED(fk_cache_map, cache_a, cache_b, cache_selector);

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 20); /* bytes; about 8,000 single-packet records */
} flow_events SEC(".maps");

/* Feature data (drops, RTT, DNS), keyed like the flow maps and double-buffered the same way
 * behind `extra_selector`; sized by CACHE_MAX_FLOWS when a feature is on, else 1 entry. */
struct fk_extra_map {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 1);
    __type(key, struct fk_flow_key);
    __type(value, struct fk_flow_extra);
};

DOUBLE_BUFFERED(fk_extra_map, extras_a, extras_b, extra_selector);

/* DNS queries waiting for their response: the query's addresses, ports, protocol and id ->
 * the time it was seen. LRU: unanswered queries make room for new ones. Sized by the tracer
 * (1 entry when DNS tracking is off). */
struct fk_dns_key {
    __u8 src_ip[16];
    __u8 dst_ip[16];
    __u16 src_port;
    __u16 dst_port;
    __u16 id;
    __u8 proto;
    __u8 pad;
};

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 1);
    __type(key, struct fk_dns_key);
    __type(value, __u64);
} dns_queries SEC(".maps");

/* FLOW_FILTER_RULES: an LPM trie from an address prefix (IPv4 as IPv4-mapped, so /N of IPv4 is
 * /96+N) to the rules of that prefix, in the order they were given. Filled by the tracer before
 * attaching (1 entry when there are no rules). */
struct fk_filter_key {
    __u32 prefix_len;
    __u8 ip[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, 1);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct fk_filter_key);
    __type(value, struct fk_filter_rules);
} filter_rules SEC(".maps");

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
    __u8 pad;
    __u32 l4_off; /* packet offset of the transport header (set only for DNS tracking) */
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
    if (enable_dns)
        p->l4_off = ip_off + ihl;
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
        if (enable_dns)
            p->l4_off = ip_off + 40;
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
    if (enable_dns)
        p->l4_off = off;
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

/* An untagged IPv4 or IPv6 frame whose window is not in the linear area (frames sent through
 * AF_PACKET, by trafgen for instance, carry only the Ethernet header there) has the window
 * pulled into it, so that parse_linear reads it in place. The pull moves the bytes that the
 * stack itself would pull a moment later (ip_rcv and the transport's receive pull the network
 * and transport headers; on egress, drivers read them): the packet and its length are
 * unchanged, only where its first bytes are stored. Cheaper for the host than copying the
 * window to the stack and leaving the stack to pull it again (docs/datapath.md, "Frames whose
 * headers are not in the linear area"). Frames shorter than the window are left alone (the
 * copy path reads them), and so is a frame whose pull fails (no memory): nothing is lost.
 * Returns 1 when the window was pulled. */
static __always_inline int pull_headers(struct __sk_buff *skb)
{
    const __u8 *data = (const __u8 *)(long)skb->data;
    const __u8 *end = (const __u8 *)(long)skb->data_end;
    if (data + ETH_HLEN > end)
        return 0;
    __u16 etype = be16(data + 12);
    __u32 want;
    if (etype == ETH_P_IP)
        want = L3_OFF + IPV4_WANT;
    else if (etype == ETH_P_IPV6)
        want = WINDOW;
    else
        return 0;
    if (data + want <= end || skb->len < want)
        return 0;
    return bpf_skb_pull_data(skb, want) == 0;
}

/* Any frame parse_linear refused (a VLAN tag, a frame shorter than the window, a failed pull):
 * the window is copied to the stack with bpf_skb_load_bytes.
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

/* ---- optional features: data kept in the extras maps ---- */

/* The calling CPU's feature slot of `key` in the active extras map, created when missing;
 * NULL (counted) when the map is full. */
static __always_inline struct fk_flow_extra *extra_for(const struct fk_flow_key *key, __u64 now)
{
    void *extras = selected(&extra_selector);
    if (!extras)
        return 0;
    struct fk_flow_extra *x = bpf_map_lookup_elem(extras, key);
    if (!x) {
        struct fk_flow_extra fresh;
        __builtin_memset(&fresh, 0, sizeof(fresh));
        /* NOEXIST: if another CPU created the entry meanwhile, our slot of it is zero. */
        bpf_map_update_elem(extras, key, &fresh, BPF_NOEXIST);
        x = bpf_map_lookup_elem(extras, key);
        if (!x) {
            count(FK_COUNTER_EXTRA_LOST);
            return 0;
        }
    }
    if (x->first_ns == 0)
        x->first_ns = now;
    x->last_ns = now;
    return x;
}

/* ---- FLOW_FILTER_RULES ---- */

static __always_inline int port_matches(const struct fk_port_match *m, __u16 port)
{
    if (m->kind == 0)
        return 1;
    if (m->kind == 1)
        return port >= m->lo && port <= m->hi;
    return port == m->list[0] || port == m->list[1] || port == m->list[2] || port == m->list[3];
}

static __always_inline int rule_matches(const struct fk_filter_rule *r, const struct fk_parse *p,
                                        const __u8 *peer, __u8 is_drop)
{
    if (r->action == 0)
        return 0;
    if (r->direction && r->direction != p->key.direction + 1)
        return 0;
    if (r->proto && r->proto != p->key.proto)
        return 0;
    if ((r->match & FK_MATCH_DROPS) && !is_drop)
        return 0;
    if ((r->match & FK_MATCH_ICMP_TYPE) && r->icmp_type != p->key.icmp_type)
        return 0;
    if ((r->match & FK_MATCH_ICMP_CODE) && r->icmp_code != p->key.icmp_code)
        return 0;
    if (r->tcp_flags && (p->flags & r->tcp_flags) != r->tcp_flags)
        return 0;
    if (!port_matches(&r->src_port, p->key.src_port) ||
        !port_matches(&r->dst_port, p->key.dst_port))
        return 0;
    if (!port_matches(&r->any_port, p->key.src_port) &&
        !port_matches(&r->any_port, p->key.dst_port))
        return 0;
#pragma unroll
    for (int i = 0; i < 16; i += 4) {
        if ((ld32(peer + i) & ld32(r->peer_mask + i)) != ld32(r->peer_ip + i))
            return 0;
    }
    return 1;
}

/* The rules of the longest prefix holding `ip`: the first that matches decides. Returns the
 * action (0: no rule of that prefix matches) and the rule's sampling in *sample. */
static __always_inline __u8 filter_lookup(const struct fk_parse *p, const __u8 *ip,
                                          const __u8 *peer, __u8 is_drop, __u32 *sample)
{
    struct fk_filter_key k __attribute__((aligned(4)));
    k.prefix_len = 128;
    copy_ipv6_addr(k.ip, ip);
    const struct fk_filter_rules *rules = bpf_map_lookup_elem(&filter_rules, &k);
    if (!rules)
        return 0;
#pragma unroll
    for (int i = 0; i < FK_FILTER_RULES_PER_PREFIX; i++) {
        if (rule_matches(&rules->rules[i], p, peer, is_drop)) {
            *sample = rules->rules[i].sample;
            return rules->rules[i].action;
        }
    }
    return 0;
}

/* NetObserv's semantics: the source address's longest prefix decides, else the destination's;
 * a packet no rule matches is not kept. Returns 1 to keep the packet. */
static __always_inline int filter_keeps(const struct fk_parse *p, __u8 is_drop, __u32 *sample)
{
    __u8 action = filter_lookup(p, p->key.src_ip, p->key.dst_ip, is_drop, sample);
    if (!action)
        action = filter_lookup(p, p->key.dst_ip, p->key.src_ip, is_drop, sample);
    return action == FK_FILTER_ACCEPT;
}

/* ---- ENABLE_DNS_TRACKING ---- */

#define DNS_HEADER 12
#define DNS_QR 0x8000

/* A DNS message to or from dns_port over UDP or TCP: queries are remembered in `dns_queries`,
 * and the flow of every DNS message gets its id, flags, name and, for a response, the latency
 * since its query (or DnsErrno ENOENT when the query was not seen, E2BIG when it could not be
 * remembered). */
static __always_inline void track_dns(struct __sk_buff *skb, const struct fk_parse *p, __u64 now)
{
    __u32 off = p->l4_off;
    if (p->key.proto == IPPROTO_UDP) {
        off += 8;
    } else if (p->key.proto == IPPROTO_TCP) {
        __u8 doff;
        if (bpf_skb_load_bytes(skb, off + 12, &doff, 1) < 0)
            return;
        off += (doff >> 4) * 4 + 2; /* DNS over TCP: a 2-byte length, then the message */
    } else {
        return;
    }
    __u8 msg[DNS_HEADER + FK_DNS_NAME_LEN] __attribute__((aligned(4)));
    __builtin_memset(msg, 0, sizeof(msg));
    __u32 n = load_upto(skb, off, msg, sizeof(msg));
    if (n < DNS_HEADER)
        return;
    __u16 id = be16(msg);
    __u16 flags = be16(msg + 2);
    struct fk_dns_key q __attribute__((aligned(4)));
    __builtin_memset(&q, 0, sizeof(q));
    q.id = id;
    q.proto = p->key.proto;
    __u8 err = 0;
    __u64 latency = 0;
    if (!(flags & DNS_QR)) {
        copy_ipv6_addr(q.src_ip, p->key.src_ip);
        copy_ipv6_addr(q.dst_ip, p->key.dst_ip);
        q.src_port = p->key.src_port;
        q.dst_port = p->key.dst_port;
        if (bpf_map_update_elem(&dns_queries, &q, &now, BPF_ANY)) {
            err = E2BIG;
            count(FK_COUNTER_DNS_UNTRACKED);
        }
    } else {
        /* The query went the other way. */
        copy_ipv6_addr(q.src_ip, p->key.dst_ip);
        copy_ipv6_addr(q.dst_ip, p->key.src_ip);
        q.src_port = p->key.dst_port;
        q.dst_port = p->key.src_port;
        __u64 *sent = bpf_map_lookup_elem(&dns_queries, &q);
        if (sent && now >= *sent)
            latency = now - *sent;
        else
            err = ENOENT;
    }
    struct fk_flow_extra *x = extra_for(&p->key, now);
    if (!x)
        return;
    x->dns_ns = now;
    x->dns_id = id;
    x->dns_flags = flags;
    x->dns_latency_ns = latency;
    x->dns_errno = err;
    __builtin_memcpy(x->dns_name, msg + DNS_HEADER, FK_DNS_NAME_LEN);
    x->features |= FK_FEATURE_DNS;
}

/* ---- the tracing programs: headers of a kernel sk_buff ---- */

/* The flow fields of a kernel sk_buff whose network header is set (as in the stack's receive
 * and transmit paths). Returns 0 for non-IP packets and for packets of network namespaces the
 * agent does not report. The tracepoints' sk_buff and sock are BTF pointers: their fields are
 * read with plain (CO-RE relocated, fault-tolerant) loads, which cost a fraction of a
 * bpf_probe_read_kernel call each; only the packet bytes are copied with that helper. */
static __always_inline int parse_skb(struct sk_buff *skb, struct sock *owner, struct fk_parse *p)
{
    unsigned char *head = skb->head;
    __u16 nh = skb->network_header;
    __u16 etype = __builtin_bswap16(skb->protocol);
    __u8 ip[40] __attribute__((aligned(4)));
    const unsigned char *l4 = 0;
    p->key.eth_protocol = etype;
    if (etype == ETH_P_IP) {
        if (bpf_probe_read_kernel(ip, 20, head + nh))
            return 0;
        st16(p->key.src_ip + 10, 0xffff);
        st32(p->key.src_ip + 12, ld32(ip + 12));
        st16(p->key.dst_ip + 10, 0xffff);
        st32(p->key.dst_ip + 12, ld32(ip + 16));
        p->key.proto = ip[9];
        p->dscp = ip[1] >> 2;
        if (!(be16(ip + 6) & 0x1fff))
            l4 = head + nh + (ip[0] & 0x0f) * 4;
    } else if (etype == ETH_P_IPV6) {
        if (bpf_probe_read_kernel(ip, 40, head + nh))
            return 0;
        copy_ipv6_addr(p->key.src_ip, ip + 8);
        copy_ipv6_addr(p->key.dst_ip, ip + 24);
        p->dscp = (((ip[0] & 0x0f) << 4) | (ip[1] >> 4)) >> 2;
        p->key.proto = ip[6];
        if (ip[6] != IPPROTO_HOPOPTS && ip[6] != IPPROTO_ROUTING &&
            ip[6] != IPPROTO_FRAGMENT && ip[6] != IPPROTO_DSTOPTS) {
            l4 = head + nh + 40;
        } else {
            /* Extension headers: the stack has set the transport header by now. */
            __u16 th = skb->transport_header;
            if (th == 0xffff)
                return 1;
            l4 = head + th;
            p->key.proto = 0;
        }
    } else {
        return 0;
    }
    if (l4) {
        __u8 hdr[L4_WANT] __attribute__((aligned(4)));
        if (bpf_probe_read_kernel(hdr, L4_WANT, l4) == 0)
            parse_l4(p, hdr, L4_WANT);
    }
    /* Tracepoints see the whole host. Without NETWORK_NAMESPACES only the agent's own network
     * namespace is reported (as on the TC side, whose interfaces are all in it); with it, the
     * key names the namespace as the TC programs do, so that the keys agree. The namespace is
     * the socket's (the tracepoint's, else the skb's), else the device's. */
    struct net_device *dev = skb->dev;
    struct sock *sk = owner ? owner : skb->sk;
    __u32 inum = host_netns_inum;
    if (sk)
        inum = sk->__sk_common.skc_net.net->ns.inum;
    else if (dev)
        inum = dev->nd_net.net->ns.inum;
    if (trace_netns)
        p->key.netns = inum == host_netns_inum ? 0 : (__u16)inum;
    else if (inum != host_netns_inum)
        return 0;
    return 1;
}

static __always_inline int flow_seen(void *flows, const struct fk_flow_key *key);

/* The key of the flow an sk_buff belongs to, as the TC programs saw it: the ingress flow on the
 * interface it came in on if that flow exists, else the egress flow on its device (or its
 * route's, see below) if that exists, else a new ingress flow (received packets) or egress flow
 * (sent ones). */
static __always_inline void skb_flow(struct sk_buff *skb, struct fk_parse *p)
{
    __u32 iif = skb->skb_iif;
    struct net_device *netdev = skb->dev;
    __u32 dev = netdev ? netdev->ifindex : 0;
    if (!iif && !dev) {
        /* Sent from this host and dropped before it was given a device (netfilter's OUTPUT
         * hook, for instance): the device of its route, the one it would have left on. Without
         * a route either, the drop stays on interface 0 ("no interface"). */
        unsigned long refdst = skb->_skb_refdst & ~1UL;
        if (refdst)
            dev = BPF_CORE_READ((struct dst_entry *)refdst, dev, ifindex);
    }
    void *flows = selected(&flow_selector);
    if (iif) {
        p->key.if_index = iif;
        p->key.direction = FK_DIRECTION_INGRESS;
        if (!flows || flow_seen(flows, &p->key))
            return;
    }
    p->key.if_index = dev;
    p->key.direction = FK_DIRECTION_EGRESS;
    if (iif && !(flows && flow_seen(flows, &p->key))) {
        p->key.if_index = iif;
        p->key.direction = FK_DIRECTION_INGRESS;
    }
}

/* ENABLE_PKT_DROPS: every sk_buff the kernel frees as dropped (not consumed) adds to its flow's
 * drop counters, creating the flow when it has no entry yet. */
SEC("tp_btf/kfree_skb")
int flowkit_drops(__u64 *ctx)
{
    struct sk_buff *skb = (struct sk_buff *)ctx[0];
    __u32 reason = (__u32)ctx[2];
    if (reason == bpf_core_enum_value(enum skb_drop_reason, SKB_NOT_DROPPED_YET) ||
        reason == bpf_core_enum_value(enum skb_drop_reason, SKB_CONSUMED))
        return 0;
    struct fk_parse p __attribute__((aligned(8)));
    __builtin_memset(&p, 0, sizeof(p));
    if (!parse_skb(skb, 0, &p))
        return 0;
    skb_flow(skb, &p);
    if (filter_enabled) {
        __u32 sample = 0;
        if (!filter_keeps(&p, 1, &sample)) {
            count(FK_COUNTER_FILTERED);
            return 0;
        }
    }
    __u64 now = bpf_ktime_get_ns();
    struct fk_flow_extra *x = extra_for(&p.key, now);
    if (!x)
        return 0;
    x->drop_packets += 1;
    x->drop_bytes += skb->len;
    x->drop_ns = now;
    x->drop_cause = reason;
    x->drop_flags = p.flags;
    struct sock *sk = skb->sk;
    x->drop_state = (sk && p.key.proto == IPPROTO_TCP) ? sk->__sk_common.skc_state
                                                       : 0;
    x->features |= FK_FEATURE_DROPS;
    return 0;
}

/* ENABLE_RTT: tcp_probe fires at the start of tcp_rcv_established for every segment an
 * established socket receives; the socket's smoothed RTT goes to the flow of that segment
 * (the largest value of the period is kept). */
SEC("tp_btf/tcp_probe")
int flowkit_rtt(__u64 *ctx)
{
    struct tcp_sock *tp = (struct tcp_sock *)ctx[0];
    struct sk_buff *skb = (struct sk_buff *)ctx[1];
    __u32 srtt = BPF_CORE_READ(tp, srtt_us) >> 3;
    if (srtt == 0)
        return 0;
    struct fk_parse p __attribute__((aligned(8)));
    __builtin_memset(&p, 0, sizeof(p));
    if (!parse_skb(skb, (struct sock *)tp, &p))
        return 0;
    p.key.if_index = skb->skb_iif;
    p.key.direction = FK_DIRECTION_INGRESS;
    if (filter_enabled) {
        __u32 sample = 0;
        if (!filter_keeps(&p, 0, &sample))
            return 0;
    }
    __u64 rtt = (__u64)srtt * 1000;
    struct fk_flow_extra *x = extra_for(&p.key, bpf_ktime_get_ns());
    if (!x)
        return 0;
    if (rtt > x->rtt_ns)
        x->rtt_ns = rtt;
    x->features |= FK_FEATURE_RTT;
    return 0;
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

/* A flow value holding one packet. */
static __always_inline void first_packet(struct fk_flow_value *v, const struct fk_parse *p,
                                         __u64 len, __u64 now, __u32 flow_sampling)
{
    v->packets = 1;
    v->bytes = len;
    v->first_ns = now;
    v->last_ns = now;
    v->flags = p->flags;
    v->dscp = p->dscp;
    v->pad = 0;
    v->sampling = flow_sampling;
    set_macs(v, p);
    v->pad2 = 0;
}

/* One more packet into a flow value. */
static __always_inline void next_packet(struct fk_flow_value *v, const struct fk_parse *p,
                                        __u64 len, __u64 now)
{
    v->packets += 1;
    v->bytes += len;
    v->last_ns = now;
    v->flags |= p->flags;
    v->dscp = p->dscp;
}

static __always_inline void count_n(__u32 index, __u64 n)
{
    __u64 *value = bpf_map_lookup_elem(&counters, &index);
    if (value)
        *value += n;
}

/* Packets of a flow that found the flow map full: one ring buffer record. */
static __always_inline void to_ringbuf(const struct fk_flow_key *key,
                                       const struct fk_flow_value *value)
{
    struct fk_flow_event *rec = bpf_ringbuf_reserve(&flow_events, sizeof(*rec), 0);
    if (!rec) {
        count_n(FK_COUNTER_RINGBUF_LOST, value->packets);
        return;
    }
    rec->key = *key;
    rec->value = *value;
    bpf_ringbuf_submit(rec, 0);
    count_n(FK_COUNTER_RINGBUF_RECORDS, value->packets);
}

/* ---- the flow cache (flow_cache = 1) ----
 *
 * The per-CPU hash lookup of the flow map (jhash of the 48-byte key, bucket walk, key compare)
 * is most of the cost of a packet. Each CPU therefore keeps FK_FLOW_CACHE_SLOTS flows of its
 * own in a per-CPU array (inlined lookup, no hashing in the kernel): a packet whose flow holds
 * its slot updates the slot; any other packet first adds the slot's packets to the flow map
 * (one hash lookup, as without the cache) and then takes the slot over. The slots are drained
 * with the flow maps: `cache_selector` is flipped like `flow_selector`, and the drainer reads
 * every CPU's slots of the old cache once no program can still be using it, so every packet is
 * counted exactly once, in the period it arrived in or the next. In a slot, value.pad2 holds the
 * jiffy of last_ns (zeroed before the value leaves the slot). */

typedef __u64 __attribute__((may_alias)) fk_alias64;

/* The slot of a key: a multiplicative hash of the address words, ports and interface. */
static __always_inline __u32 cache_slot(const struct fk_flow_key *k)
{
    const __u8 *b = (const __u8 *)k;
    __u32 h = ld32(b + 8) ^ ld32(b + 12) ^ ld32(b + 24) ^ ld32(b + 28) ^ ld32(b + 32) ^
              (ld32(b + 36) << 7);
    return (h * 0x9e3779b1u) >> (32 - FK_FLOW_CACHE_SHIFT);
}

static __always_inline int keys_equal(const struct fk_flow_key *a, const struct fk_flow_key *b)
{
    const fk_alias64 *x = (const fk_alias64 *)a;
    const fk_alias64 *y = (const fk_alias64 *)b;
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4]) |
            (x[5] ^ y[5])) == 0;
}

/* Whether the TC programs have seen the flow of `key` in this period: it is in the flow map, or
 * (packets not written back yet) in this CPU's cache, where a drop or a received segment finds
 * it when it follows the TC program on the same CPU, as it usually does. */
static __always_inline int flow_seen(void *flows, const struct fk_flow_key *key)
{
    if (bpf_map_lookup_elem(flows, key))
        return 1;
    if (!flow_cache)
        return 0;
    void *cache = selected(&cache_selector);
    if (!cache)
        return 0;
    __u32 slot = cache_slot(key);
    const struct fk_flow_event *c = bpf_map_lookup_elem(cache, &slot);
    return c && c->value.packets && keys_equal(&c->key, key);
}

/* Add the packets of a cache slot to the flow map (creating the flow), or to the ring buffer
 * when the map is full. */
static __always_inline void flush_slot(const struct fk_flow_event *c)
{
    const struct fk_flow_value *add = &c->value;
    void *flows = selected(&flow_selector);
    if (!flows) {
        count_n(FK_COUNTER_NO_MAP, add->packets);
        return;
    }
    struct fk_flow_value *v = bpf_map_lookup_elem(flows, &c->key);
    if (v) {
        if (v->packets == 0) {
            v->first_ns = add->first_ns;
            v->sampling = add->sampling;
            st32(v->src_mac, ld32(add->src_mac));
            st32(v->src_mac + 4, ld32(add->src_mac + 4));
            st32(v->src_mac + 8, ld32(add->src_mac + 8));
        }
        v->packets += add->packets;
        v->bytes += add->bytes;
        if (add->last_ns > v->last_ns)
            v->last_ns = add->last_ns;
        v->flags |= add->flags;
        v->dscp = add->dscp;
        return;
    }
    long err = bpf_map_update_elem(flows, &c->key, add, BPF_ANY);
    if (err == -E2BIG) {
        to_ringbuf(&c->key, add);
    } else if (err) {
        count_n(FK_COUNTER_UPDATE_FAILED, add->packets);
    }
}

/* Account one packet through the flow cache. Returns 0 when the cache is unavailable (the
 * caller then updates the flow map itself). */
static __always_inline int account_cached(struct __sk_buff *skb, const struct fk_parse *p,
                                          __u64 len, __u32 flow_sampling)
{
    void *cache = selected(&cache_selector);
    if (!cache)
        return 0;
    __u32 slot = cache_slot(&p->key);
    struct fk_flow_event *c = bpf_map_lookup_elem(cache, &slot);
    if (!c)
        return 0;
    if (c->value.packets) {
        if (keys_equal(&c->key, &p->key)) {
            __u64 now;
            if (precise_timestamps) {
                now = bpf_ktime_get_ns();
            } else {
                /* The coarse clock moves once per tick: read it only for the first packet of
                 * the slot in a tick (bpf_jiffies64 is a plain load; the clock is a call). */
                __u32 tick = (__u32)bpf_jiffies64();
                if (tick == c->value.pad2) {
                    now = c->value.last_ns;
                } else {
                    c->value.pad2 = tick;
                    now = bpf_ktime_get_coarse_ns();
                    /* The coarse clock lags the precise one by up to a tick. */
                    if (now < c->value.last_ns)
                        now = c->value.last_ns;
                }
            }
            next_packet(&c->value, p, len, now);
            return 1;
        }
        c->value.pad2 = 0;
        flush_slot(c);
    }
    __u64 now = packet_time(skb, 1, 0);
    c->key = p->key;
    first_packet(&c->value, p, len, now, flow_sampling);
    c->value.pad2 = (__u32)bpf_jiffies64();
    return 1;
}

/* `replay` is a compile-time constant: 0 in the live programs (whose code is then exactly what
 * it is without replay), 1 in the flowkit_replay_* programs (see below). */
static __always_inline int account(struct __sk_buff *skb, __u8 direction, const int replay)
{
    /* With filter rules, sampling waits for the rule that may set its own. */
    if (!filter_enabled && sampling > 1 && bpf_get_prandom_u32() % sampling != 0) {
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
    /* In place; else, once, after pulling the headers into the linear area (not replayed
     * frames: they are whole in the test run's linear buffer). A loop, so that parse_linear's
     * code exists once and a linear frame pays nothing for the pull's test. */
    int parsed = 0;
#pragma clang loop unroll(disable)
    for (int i = 0; i < 2; i++) {
        if (i == 1 && (replay || !pull_headers(skb)))
            break;
        parsed = parse_linear(skb, &p);
        if (parsed)
            break;
    }
    if (!parsed && !parse_copied(skb, &p)) {
        count(FK_COUNTER_RUNT);
        return TC_ACT_UNSPEC;
    }

    __u32 flow_sampling = sampling;
    if (filter_enabled) {
        __u32 rule_sample = 0;
        if (!filter_keeps(&p, 0, &rule_sample)) {
            count(FK_COUNTER_FILTERED);
            return TC_ACT_UNSPEC;
        }
        if (rule_sample)
            flow_sampling = rule_sample;
        if (flow_sampling > 1 && bpf_get_prandom_u32() % flow_sampling != 0) {
            count(FK_COUNTER_SAMPLED_OUT);
            return TC_ACT_UNSPEC;
        }
    }
    /* The port test first: the clock is read only for DNS messages. */
    if (enable_dns && (p.key.src_port == dns_port || p.key.dst_port == dns_port))
        track_dns(skb, &p, packet_time(skb, 1, replay));

    __u64 len = replay ? replay_word(skb, FK_REPLAY_CB_LEN) : skb->len;
    if (!replay && flow_cache && account_cached(skb, &p, len, flow_sampling))
        return TC_ACT_UNSPEC;
    void *flows = selected(&flow_selector);
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
            v->sampling = flow_sampling;
            set_macs(v, &p);
        } else {
            now = packet_time(skb, precise_timestamps, replay);
            /* The coarse clock lags the precise one by up to a tick. */
            if (now < v->first_ns)
                now = v->first_ns;
        }
        next_packet(v, &p, len, now);
        return TC_ACT_UNSPEC;
    }

    now = packet_time(skb, 1, replay);
    struct fk_flow_value fresh;
    first_packet(&fresh, &p, len, now, flow_sampling);
    /* BPF_ANY: if another CPU created the entry meanwhile, this writes only our CPU's slot,
     * which was zero. */
    long err = bpf_map_update_elem(flows, &p.key, &fresh, BPF_ANY);
    if (err == -E2BIG)
        to_ringbuf(&p.key, &fresh);
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
