// A program the verifier refuses (packet read without a bounds check): the load error must
// carry the verifier log.
// Build: clang -O2 -g -target bpf -c verifier_reject.c -o verifier_reject.o
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int unchecked_read(struct __sk_buff *skb)
{
    int *p = (int *)(long)skb->data;
    return *p;
}

char LICENSE[] SEC("license") = "GPL";
