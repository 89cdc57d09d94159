// Maps in the legacy `maps` section (struct bpf_map_def), dropped by libbpf 1.0.
// Build: clang -O2 -g -target bpf -c legacy_maps.c -o legacy_maps.o (also without -g)
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct bpf_map_def {
    unsigned int type;
    unsigned int key_size;
    unsigned int value_size;
    unsigned int max_entries;
    unsigned int map_flags;
};

struct bpf_map_def SEC("maps") legacy_counters = {
    .type = BPF_MAP_TYPE_ARRAY,
    .key_size = sizeof(__u32),
    .value_size = sizeof(__u64),
    .max_entries = 4,
};

struct bpf_map_def SEC("maps") legacy_hash = {
    .type = BPF_MAP_TYPE_HASH,
    .key_size = sizeof(__u32),
    .value_size = 24,
    .max_entries = 128,
    .map_flags = BPF_F_NO_PREALLOC,
};

/* Counts runs in legacy_counters[1], records the count in legacy_hash[count] and returns it. */
SEC("classifier/legacy")
int legacy_prog(struct __sk_buff *skb)
{
    __u32 key = 1;
    __u64 *count = bpf_map_lookup_elem(&legacy_counters, &key);
    if (!count)
        return -1;
    __sync_fetch_and_add(count, 1);
    __u32 hkey = (__u32)*count;
    __u8 value[24] = {0};
    value[0] = (__u8)hkey;
    bpf_map_update_elem(&legacy_hash, &hkey, value, BPF_ANY);
    return (int)*count;
}

char LICENSE[] SEC("license") = "GPL";
