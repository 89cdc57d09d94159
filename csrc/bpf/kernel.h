/* flowkit: what the eBPF programs (flowkit.bpf.c) and the feature probes (probes.bpf.c) share:
 * fixed-width types, libbpf's helper and CO-RE headers, the UAPI definitions used and the kernel
 * types read with CO-RE.
 *
 * The UAPI headers are not included on purpose: <linux/types.h> needs <asm/types.h>, which is
 * not on the include path of `-target bpf` on Debian. The few UAPI definitions used are below;
 * their values are fixed by the kernel ABI.
 */
#ifndef FLOWKIT_BPF_KERNEL_H
#define FLOWKIT_BPF_KERNEL_H

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

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

/* ---- UAPI subset (linux/bpf.h, linux/pkt_cls.h, linux/if_ether.h, linux/in.h) ---- */

enum {
    BPF_MAP_TYPE_HASH = 1,
    BPF_MAP_TYPE_PERCPU_HASH = 5,
    BPF_MAP_TYPE_PERCPU_ARRAY = 6,
    BPF_MAP_TYPE_LRU_HASH = 9,
    BPF_MAP_TYPE_LPM_TRIE = 11,
    BPF_MAP_TYPE_ARRAY_OF_MAPS = 12,
    BPF_MAP_TYPE_RINGBUF = 27,
};

#define BPF_ANY 0
#define BPF_NOEXIST 1
#define BPF_F_NO_PREALLOC 1
#define ENOENT 2
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

/* ---- kernel types read with CO-RE (the tracing programs of ENABLE_PKT_DROPS and ENABLE_RTT,
 * NETWORK_NAMESPACES in the TC programs, and their probes) ----
 * Only the fields used are declared; preserve_access_index makes libbpf relocate every access
 * to the running kernel's layout (CO-RE, from /sys/kernel/btf/vmlinux). */
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
    int ifindex;
    possible_net_t nd_net;
} __attribute__((preserve_access_index));

struct sock_common {
    volatile unsigned char skc_state;
    possible_net_t skc_net;
} __attribute__((preserve_access_index));

struct sock {
    struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct tcp_sock {
    __u32 srtt_us; /* smoothed RTT in microseconds, << 3 */
} __attribute__((preserve_access_index));

struct dst_entry {
    struct net_device *dev;
} __attribute__((preserve_access_index));

struct sk_buff {
    struct net_device *dev;
    unsigned long _skb_refdst; /* struct dst_entry *, bit 0: SKB_DST_NOREF */
    struct sock *sk;
    int skb_iif;
    unsigned int len;
    __be16 protocol;
    __u16 transport_header;
    __u16 network_header;
    unsigned char *head;
} __attribute__((preserve_access_index));

/* The two values of enum skb_drop_reason that are not drops; their numbers are read from the
 * kernel's BTF at load time (bpf_core_enum_value). */
enum skb_drop_reason {
    SKB_NOT_DROPPED_YET = 0,
    SKB_CONSUMED = 1,
};

#endif
