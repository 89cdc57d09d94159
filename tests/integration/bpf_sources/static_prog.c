// Static programs, as older clang / bpf2go output has them: libbpf 1.x refuses objects whose
// program symbols are local ("program ... is static and not supported").
// Build: clang -O2 -g -target bpf -c static_prog.c -o static_prog.o
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

static __attribute__((noinline)) int helper(int x)
{
    return x * 3;
}

/* A static program in a section both loaders know by name. */
SEC("classifier/static")
static int static_classifier(struct __sk_buff *skb)
{
    return helper(7); /* 21 */
}

/* A static program in a custom section: the user sets its program type before load. */
SEC("custom/section")
static int static_custom(struct __sk_buff *skb)
{
    return 33;
}

char LICENSE[] SEC("license") = "GPL";
