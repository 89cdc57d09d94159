/* TCX links and clsact/direct-action filters (csrc/cdef/15-tc.cdef, flowkit/ebpf/attach.py).
 *
 * libbpf 1.1 has bpf_tc_* for clsact but no TCX helper: TCX links are made with
 * bpf_link_create(prog_fd, ifindex, BPF_TCX_INGRESS/EGRESS, NULL). The attach types are passed
 * as ints because the uapi headers shipped with older distributions do not name them. */
#ifndef FLOWKIT_TC_H
#define FLOWKIT_TC_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#define FKT_TC_INGRESS 1
#define FKT_TC_EGRESS 2
#define FKT_TCX_INGRESS 46
#define FKT_TCX_EGRESS 47

static int fkt_errno(int rc)
{
    /* libbpf returns -errno; some paths return -1 and leave errno set. */
    if (rc == -1 && errno)
        return -errno;
    return rc;
}

static int fkt_tcx_link_create(int prog_fd, int ifindex, int attach_type)
{
    if (attach_type != FKT_TCX_INGRESS && attach_type != FKT_TCX_EGRESS)
        return -EINVAL;
    errno = 0;
    return fkt_errno(bpf_link_create(prog_fd, ifindex, (enum bpf_attach_type)attach_type, NULL));
}

static void fkt_hook(struct bpf_tc_hook *hook, int ifindex, int attach_point)
{
    memset(hook, 0, sizeof(*hook));
    hook->sz = sizeof(*hook);
    hook->ifindex = ifindex;
    hook->attach_point = (enum bpf_tc_attach_point)attach_point;
}

static int fkt_tc_hook_create(int ifindex)
{
    struct bpf_tc_hook hook;
    fkt_hook(&hook, ifindex, BPF_TC_INGRESS);
    return bpf_tc_hook_create(&hook);
}

static int fkt_tc_hook_destroy(int ifindex)
{
    /* Ingress|egress together means "delete the clsact qdisc". */
    struct bpf_tc_hook hook;
    fkt_hook(&hook, ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS);
    return bpf_tc_hook_destroy(&hook);
}

static int fkt_tc_attach(int ifindex, int attach_point, uint32_t handle, uint32_t priority,
                         int prog_fd, uint32_t *prog_id)
{
    if (attach_point != FKT_TC_INGRESS && attach_point != FKT_TC_EGRESS)
        return -EINVAL;
    struct bpf_tc_hook hook;
    fkt_hook(&hook, ifindex, attach_point);
    LIBBPF_OPTS(bpf_tc_opts, opts, .handle = handle, .priority = priority, .prog_fd = prog_fd);
    int rc = bpf_tc_attach(&hook, &opts);
    if (rc == 0 && prog_id)
        *prog_id = opts.prog_id;
    return rc;
}

static int fkt_tc_detach(int ifindex, int attach_point, uint32_t handle, uint32_t priority)
{
    if (attach_point != FKT_TC_INGRESS && attach_point != FKT_TC_EGRESS)
        return -EINVAL;
    struct bpf_tc_hook hook;
    fkt_hook(&hook, ifindex, attach_point);
    LIBBPF_OPTS(bpf_tc_opts, opts, .handle = handle, .priority = priority);
    return bpf_tc_detach(&hook, &opts);
}

static int fkt_tc_query(int ifindex, int attach_point, uint32_t handle, uint32_t priority,
                        uint32_t *prog_id)
{
    if (attach_point != FKT_TC_INGRESS && attach_point != FKT_TC_EGRESS)
        return -EINVAL;
    struct bpf_tc_hook hook;
    fkt_hook(&hook, ifindex, attach_point);
    LIBBPF_OPTS(bpf_tc_opts, opts, .handle = handle, .priority = priority);
    int rc = bpf_tc_query(&hook, &opts);
    if (rc == 0 && prog_id)
        *prog_id = opts.prog_id;
    return rc;
}

#endif
