// Variables rewritten before load: a `.rodata` constant that changes the program's result,
// plus `.data` and `.bss` variables.
// Build: clang -O2 -g -target bpf -c rodata.c -o rodata.o
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

volatile const __u32 answer = 1;
volatile const __u8 enabled = 0;
volatile const __u64 wide = 0;
__u32 data_offset = 100;
__u32 bss_runs;

SEC("tc")
int rodata_prog(struct __sk_buff *skb)
{
    bss_runs++;
    if (enabled)
        return answer + data_offset + (__u32)wide;
    return answer;
}

char LICENSE[] SEC("license") = "GPL";
