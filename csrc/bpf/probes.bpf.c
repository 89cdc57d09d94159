/* flowkit: feature probes for `flowkit-agent check`.
 *
 * Build (from the repository root; `make bpf` runs exactly this):
 *     clang -O2 -g -target bpf -fdebug-compilation-dir=. -D__BPF__ -I csrc -c csrc/bpf/probes.bpf.c -o flowkit/bpf/probes.bpf.o
 *
 * One tiny program per optional feature, each needing exactly what that feature's datapath code
 * needs from the kernel: its program type and attach point, the BTF types and fields it reads
 * (CO-RE relocations against /sys/kernel/btf/vmlinux), its helpers, kfuncs and map types.
 * `flowkit-agent check` loads them one by one: a probe that loads means the kernel can run the
 * feature; the libbpf/verifier error of one that does not says why. They are never attached.
 */

#include "bpf/kernel.h"

extern void *bpf_cast_to_kern_ctx(void *) __ksym;

struct lpm_key {
    __u32 prefixlen;
    __u8 addr[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, 1);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct lpm_key);
    __type(value, __u32);
} probe_lpm SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} probe_hash SEC(".maps");

/* ENABLE_PKT_DROPS: the kfree_skb tracepoint through BTF (no tracefs), with its drop reason
 * (third argument since Linux 5.17). */
SEC("tp_btf/kfree_skb")
int probe_drops(__u64 *ctx)
{
    __u32 reason = (__u32)ctx[2];
    return reason == 0;
}

/* ENABLE_RTT: the BTF tracepoint tcp_probe (fired at the top of tcp_rcv_established with the
 * socket and the segment) reading the socket's smoothed RTT. */
SEC("tp_btf/tcp_probe")
int probe_rtt(__u64 *ctx)
{
    struct tcp_sock *tp = (struct tcp_sock *)ctx[0];
    __u32 srtt = 0;
    bpf_probe_read_kernel(&srtt, sizeof(srtt), &tp->srtt_us);
    return srtt == 0;
}

/* ENABLE_DNS_TRACKING: header copies, a hash map of pending queries and the clock on TC. */
SEC("tc")
int probe_dns(struct __sk_buff *skb)
{
    __u8 header[12];
    __u32 key = 0;
    __u64 now = bpf_ktime_get_ns();
    if (bpf_skb_load_bytes(skb, 0, header, sizeof(header)) == 0)
        bpf_map_update_elem(&probe_hash, &key, &now, 0);
    return TC_ACT_UNSPEC;
}

/* FLOW_FILTER_RULES: longest-prefix-match lookups of addresses. */
SEC("tc")
int probe_filters(struct __sk_buff *skb)
{
    struct lpm_key key = {.prefixlen = 128};
    if (bpf_skb_load_bytes(skb, 0, key.addr, sizeof(key.addr)) == 0 &&
        bpf_map_lookup_elem(&probe_lpm, &key))
        return 0;
    return TC_ACT_UNSPEC;
}

/* NETWORK_NAMESPACES: the namespace of the device a packet is on (skb->dev->nd_net->ns.inum),
 * through the kernel's sk_buff (bpf_cast_to_kern_ctx, Linux 6.3). */
SEC("tc")
int probe_netns(struct __sk_buff *ctx)
{
    struct sk_buff *skb = bpf_cast_to_kern_ctx(ctx);
    struct net_device *dev = skb->dev;
    if (!dev)
        return TC_ACT_UNSPEC;
    return dev->nd_net.net->ns.inum ? TC_ACT_UNSPEC : 0;
}

char LICENSE[] SEC("license") = "GPL";
