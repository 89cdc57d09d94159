// Programs in section names that cilium/ebpf understands and libbpf 1.x does not (or only
// partly). Each returns a distinct value so that a test run proves which program ran.
// Build: clang -O2 -g -target bpf -c sections.c -o sections.o
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("classifier/ingress")
int classifier_prog(struct __sk_buff *skb)
{
    return 11;
}

SEC("tc/egress")
int tc_prog(struct __sk_buff *skb)
{
    return 12;
}

SEC("tcx/ingress")
int tcx_prog(struct __sk_buff *skb)
{
    return 13;
}

SEC("xdp/custom")
int xdp_prog(struct xdp_md *ctx)
{
    return XDP_PASS; /* 2 */
}

SEC("socket/filter")
int socket_prog(struct __sk_buff *skb)
{
    return 14;
}

SEC("kprobe/tcp_v4_connect")
int kprobe_prog(void *ctx)
{
    return 0;
}

SEC("tracepoint/net/netif_receive_skb")
int tracepoint_prog(void *ctx)
{
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
