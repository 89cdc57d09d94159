// BTF-defined maps (including an array of maps with an initial value) next to a legacy
// `maps` section in one object.
// Build: clang -O2 -g -target bpf -c mixed_maps.c -o mixed_maps.o
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct bpf_map_def {
    unsigned int type;
    unsigned int key_size;
    unsigned int value_size;
    unsigned int max_entries;
    unsigned int map_flags;
};

struct pair {
    __u64 first;
    __u64 second;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u64);
    __type(value, struct pair);
} modern_hash SEC(".maps");

struct inner_array {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u32);
};

struct inner_array inner_a SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
    __uint(max_entries, 1);
    __type(key, __u32);
    __array(values, struct inner_array);
} outer SEC(".maps") = {
    .values = {[0] = &inner_a},
};

struct bpf_map_def SEC("maps") old_array = {
    .type = BPF_MAP_TYPE_ARRAY,
    .key_size = sizeof(__u32),
    .value_size = sizeof(__u64),
    .max_entries = 2,
};

/* Adds 5 to old_array[0], stores 7 in inner_a[3] through `outer`, stores a pair in
 * modern_hash[9] and returns old_array[0]. */
SEC("classifier/mixed")
int mixed_prog(struct __sk_buff *skb)
{
    __u32 zero = 0, three = 3;
    __u64 *total = bpf_map_lookup_elem(&old_array, &zero);
    if (!total)
        return -1;
    *total += 5;

    void *inner = bpf_map_lookup_elem(&outer, &zero);
    if (!inner)
        return -2;
    __u32 seven = 7;
    bpf_map_update_elem(inner, &three, &seven, BPF_ANY);

    __u64 key = 9;
    struct pair value = {.first = 1, .second = 2};
    bpf_map_update_elem(&modern_hash, &key, &value, BPF_ANY);
    return (int)*total;
}

char LICENSE[] SEC("license") = "GPL";
