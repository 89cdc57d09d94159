/* flowkit native accounter: the kernel side.
 *
 * Draining is lossless because the eBPF program writes into whichever of two per-CPU hash maps
 * the selector (an ARRAY_OF_MAPS, slot 0) points at. A drain first points the selector at the
 * other map; updating a map-in-map from user space makes the kernel wait (synchronize_rcu) until
 * every program that may still hold the old map has finished, so the old map is quiescent when
 * we read and delete its entries. Packets arriving meanwhile go to the new map and are taken by
 * the next drain.
 *
 * The ring buffer carries one event (struct fk_flow_event) per packet when the active map is
 * full; a C callback merges each, so Python is never called per packet.
 *
 * The optional feature maps (extras_a/extras_b, struct fk_flow_extra) are double-buffered the
 * same way behind their own selector and drained by a second drainer of kind FK_DRAIN_EXTRAS
 * into the same table.
 *
 * The eBPF program's flow caches (cache_a/cache_b: per-CPU arrays of struct fk_flow_event, one
 * flow per slot and CPU, whose packets are not in the flow map yet) are flipped behind their own
 * selector by a third drainer (FK_DRAIN_CACHE), after the flow maps: a packet cached before the
 * flip is in the old cache or, if its slot was flushed meanwhile, in one of the flow maps; the
 * old cache is quiescent after the flip and its slots are read and zeroed.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>

#include "20-accounter.h"

#ifndef ENOTSUPP
#define ENOTSUPP 524 /* kernel-internal "operation not supported", seen by user space */
#endif

/* The callback's private "stop now" code: not an errno any map operation returns. */
#define FK_STOP_POLL (-ECANCELED)

/* Upper bound of the per-call value buffer, so that machines with many CPUs stay bounded. */
#define FK_VALUES_BUDGET (8u << 20)

struct fk_drainer {
    int selector_fd;
    int map_fds[2];
    uint32_t active;
    uint32_t map_ids[2]; /* to recognise the selector's content */
    uint32_t ncpus;      /* values per key in a lookup (1 for non-per-CPU maps) */
    uint32_t chunk;      /* keys per batch syscall */
    uint32_t kind;       /* what the maps hold: FK_DRAIN_FLOWS or FK_DRAIN_EXTRAS */
    uint32_t value_size; /* kernel value stride: sizeof(the value struct) rounded to 8 */
    uint32_t mode;
    uint32_t forced_mode;
    struct fk_flow_key *keys;
    unsigned char *values;
    uint32_t *slots;     /* FK_DRAIN_CACHE: slot numbers for the batch calls */
    int unread[2];       /* map i may hold flows no drain has read (until one succeeds) */
    int cache_batch;     /* FK_DRAIN_CACHE: 1 while the kernel takes batch calls on the caches */
    uint64_t token[8];   /* batch cursor (a bucket number for hash maps) */
    struct fk_drainer_stats stats;
};

int fk_possible_cpus(void)
{
    return libbpf_num_possible_cpus();
}

int fk_map_info(int fd, uint32_t *type, uint32_t *key_size, uint32_t *value_size,
                uint32_t *max_entries, uint32_t *id)
{
    struct bpf_map_info info;
    uint32_t len = sizeof(info);
    memset(&info, 0, sizeof(info));
    int err = bpf_obj_get_info_by_fd(fd, &info, &len);
    if (err)
        return err < 0 ? err : -errno;
    if (type)
        *type = info.type;
    if (key_size)
        *key_size = info.key_size;
    if (value_size)
        *value_size = info.value_size;
    if (max_entries)
        *max_entries = info.max_entries;
    if (id)
        *id = info.id;
    return 0;
}

int fk_map_create(uint32_t map_type, uint32_t key_size, uint32_t value_size,
                  uint32_t max_entries, int inner_map_fd)
{
    LIBBPF_OPTS(bpf_map_create_opts, opts);
    if (inner_map_fd >= 0)
        opts.inner_map_fd = (uint32_t)inner_map_fd;
    int fd = bpf_map_create((enum bpf_map_type)map_type, "flowkit_acct", key_size, value_size,
                            max_entries, &opts);
    return fd < 0 ? -errno : fd;
}

int fk_map_update(int fd, const void *key, const void *value, uint64_t flags)
{
    return bpf_map_update_elem(fd, key, value, flags) ? -errno : 0;
}

int fk_map_lookup(int fd, const void *key, void *value)
{
    return bpf_map_lookup_elem(fd, key, value) ? -errno : 0;
}

int fk_close_fd(int fd)
{
    return close(fd) ? -errno : 0;
}

/* Sum of a u64 counter over CPUs; works for ARRAY and PERCPU_ARRAY counter maps. */
int64_t fk_counter_sum(int fd, uint32_t index, uint32_t ncpus)
{
    uint32_t type = 0, value_size = 0;
    int err = fk_map_info(fd, &type, NULL, &value_size, NULL, NULL);
    if (err)
        return err;
    if (value_size != sizeof(uint64_t))
        return -EINVAL;
    int percpu = type == BPF_MAP_TYPE_PERCPU_ARRAY || type == BPF_MAP_TYPE_PERCPU_HASH ||
                 type == BPF_MAP_TYPE_LRU_PERCPU_HASH;
    uint32_t n = percpu ? (ncpus ? ncpus : (uint32_t)libbpf_num_possible_cpus()) : 1;
    uint64_t *values = calloc(n, sizeof(uint64_t));
    if (!values)
        return -ENOMEM;
    int64_t rc = 0;
    if (bpf_map_lookup_elem(fd, &index, values)) {
        rc = -errno;
    } else {
        uint64_t sum = 0;
        for (uint32_t i = 0; i < n; i++)
            sum += values[i];
        rc = (int64_t)(sum & 0x7fffffffffffffffULL);
    }
    free(values);
    return rc;
}

static int fk_is_percpu(uint32_t type)
{
    return type == BPF_MAP_TYPE_PERCPU_HASH || type == BPF_MAP_TYPE_LRU_PERCPU_HASH ||
           type == BPF_MAP_TYPE_PERCPU_ARRAY;
}

/* The map the selector points at now, as an index into map_fds, or -1 if it points elsewhere. */
static int fk_selector_active(int selector_fd, const uint32_t ids[2])
{
    uint32_t zero = 0, id = 0;
    if (bpf_map_lookup_elem(selector_fd, &zero, &id))
        return -1;
    if (id == ids[0])
        return 0;
    if (id == ids[1])
        return 1;
    return -1;
}

/* The two map kinds a drainer empties: flow maps (struct fk_flow_value) and feature maps
 * (struct fk_flow_extra), both keyed by struct fk_flow_key. */
#define FK_DRAIN_FLOWS 0
#define FK_DRAIN_EXTRAS 1
#define FK_DRAIN_CACHE 2

static struct fk_drainer *fk_drainer_create(uint32_t kind, int selector_fd, int map0_fd,
                                            int map1_fd, uint32_t ncpus, uint32_t chunk, int *err);

struct fk_drainer *fk_drainer_new(int selector_fd, int map0_fd, int map1_fd, uint32_t ncpus,
                                  uint32_t chunk, int *err)
{
    return fk_drainer_create(FK_DRAIN_FLOWS, selector_fd, map0_fd, map1_fd, ncpus, chunk, err);
}

struct fk_drainer *fk_extra_drainer_new(int selector_fd, int map0_fd, int map1_fd,
                                        uint32_t ncpus, uint32_t chunk, int *err)
{
    return fk_drainer_create(FK_DRAIN_EXTRAS, selector_fd, map0_fd, map1_fd, ncpus, chunk, err);
}

struct fk_drainer *fk_cache_drainer_new(int selector_fd, int map0_fd, int map1_fd, int *err)
{
    return fk_drainer_create(FK_DRAIN_CACHE, selector_fd, map0_fd, map1_fd, 0, 0, err);
}

static struct fk_drainer *fk_drainer_create(uint32_t kind, int selector_fd, int map0_fd,
                                            int map1_fd, uint32_t ncpus, uint32_t chunk, int *err)
{
    struct fk_drainer *d = NULL;
    uint32_t value_size = kind == FK_DRAIN_EXTRAS  ? sizeof(struct fk_flow_extra)
                          : kind == FK_DRAIN_CACHE ? sizeof(struct fk_flow_event)
                                                   : sizeof(struct fk_flow_value);
    uint32_t key_size = kind == FK_DRAIN_CACHE ? sizeof(uint32_t) : sizeof(struct fk_flow_key);
    uint32_t types[2], key_sizes[2], value_sizes[2], ids[2], entries[2];
    int fds[2] = {map0_fd, map1_fd};
    int rc = 0;

    for (int i = 0; i < 2; i++) {
        rc = fk_map_info(fds[i], &types[i], &key_sizes[i], &value_sizes[i], &entries[i],
                         &ids[i]);
        if (rc)
            goto fail;
        if (key_sizes[i] != key_size || value_sizes[i] != value_size || types[i] != types[0] ||
            (kind == FK_DRAIN_CACHE &&
             (types[i] != BPF_MAP_TYPE_PERCPU_ARRAY || entries[i] != entries[0]))) {
            rc = -EINVAL;
            goto fail;
        }
    }
    if (kind == FK_DRAIN_CACHE)
        chunk = entries[0]; /* the slots, read one by one */
    d = calloc(1, sizeof(*d));
    if (!d) {
        rc = -ENOMEM;
        goto fail;
    }
    d->selector_fd = selector_fd;
    d->map_ids[0] = ids[0];
    d->map_ids[1] = ids[1];
    d->map_fds[0] = map0_fd;
    d->map_fds[1] = map1_fd;
    d->kind = kind;
    d->unread[0] = d->unread[1] = 1; /* whatever an earlier user of the maps left */
    d->value_size = (value_size + 7) & ~7u;
    if (fk_is_percpu(types[0])) {
        int possible = libbpf_num_possible_cpus();
        if (possible <= 0) {
            rc = possible < 0 ? possible : -EINVAL;
            goto fail;
        }
        /* The kernel writes one value per possible CPU: that is the stride, whatever the
         * caller believes (`ncpus` is only a hint kept for the Python API). */
        (void)ncpus;
        d->ncpus = (uint32_t)possible;
    } else {
        d->ncpus = 1;
    }
    uint32_t budget = FK_VALUES_BUDGET / (d->ncpus * d->value_size);
    if (chunk == 0)
        chunk = 4096;
    if (chunk > budget && kind != FK_DRAIN_CACHE)
        chunk = budget;
    if (chunk < 64 && kind != FK_DRAIN_CACHE)
        chunk = 64;
    d->chunk = chunk;
    d->keys = calloc(chunk, sizeof(struct fk_flow_key));
    d->values = calloc((size_t)chunk * d->ncpus, d->value_size);
    if (kind == FK_DRAIN_CACHE) {
        d->slots = calloc(chunk, sizeof(uint32_t));
        d->cache_batch = 1;
    }
    if (!d->keys || !d->values || (kind == FK_DRAIN_CACHE && !d->slots)) {
        rc = -ENOMEM;
        goto fail;
    }
    int active = fk_selector_active(selector_fd, ids);
    if (active < 0) {
        /* Empty or foreign slot: take control, the kernel writes into map 0 from now on. */
        uint32_t zero = 0;
        uint32_t fd = (uint32_t)map0_fd;
        if (bpf_map_update_elem(selector_fd, &zero, &fd, BPF_ANY)) {
            rc = -errno;
            goto fail;
        }
        active = 0;
    }
    d->active = (uint32_t)active;
    d->stats.active_map = d->active;
    d->mode = FK_DRAIN_LOOKUP_AND_DELETE_BATCH;
    d->stats.mode = d->mode;
    *err = 0;
    return d;
fail:
    fk_drainer_free(d);
    *err = rc ? rc : -EINVAL;
    return NULL;
}

void fk_drainer_free(struct fk_drainer *d)
{
    if (!d)
        return;
    free(d->keys);
    free(d->values);
    free(d->slots);
    free(d);
}

int fk_drainer_set_mode(struct fk_drainer *d, uint32_t mode)
{
    if (mode > FK_DRAIN_ITERATE)
        return -EINVAL;
    d->forced_mode = mode;
    d->mode = mode == FK_DRAIN_AUTO ? FK_DRAIN_LOOKUP_AND_DELETE_BATCH : mode;
    d->stats.mode = d->mode;
    return 0;
}

/* The index (0/1) of the map the selector points at now, or -ENOENT if neither. */
int fk_drainer_active(const struct fk_drainer *d)
{
    int current = fk_selector_active(d->selector_fd, d->map_ids);
    return current >= 0 ? current : -ENOENT;
}

void fk_drainer_get_stats(const struct fk_drainer *d, struct fk_drainer_stats *out)
{
    *out = d->stats;
}

/* Merge the per-CPU values of `count` keys into the table, skipping idle CPUs. */
static int fk_merge_percpu(struct fk_drainer *d, struct fk_table *t, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++) {
        const unsigned char *base = d->values + (size_t)i * d->ncpus * d->value_size;
        union {
            struct fk_flow_value value;
            struct fk_flow_extra extra;
        } merged, v;
        int seen = 0;
        for (uint32_t cpu = 0; cpu < d->ncpus; cpu++) {
            const unsigned char *slot = base + (size_t)cpu * d->value_size;
            if (d->kind == FK_DRAIN_EXTRAS) {
                memcpy(&v.extra, slot, sizeof(v.extra));
                if (v.extra.features == 0)
                    continue;
                if (seen)
                    fk_extra_merge(&merged.extra, &v.extra);
                else
                    merged.extra = v.extra;
            } else {
                memcpy(&v.value, slot, sizeof(v.value));
                if (v.value.packets == 0)
                    continue;
                if (seen)
                    fk_value_merge(&merged.value, &v.value);
                else
                    merged.value = v.value;
            }
            seen = 1;
        }
        d->stats.keys++;
        if (!seen) {
            d->stats.empty_values++;
            continue;
        }
        int rc = d->kind == FK_DRAIN_EXTRAS ? fk_table_merge_extra(t, &d->keys[i], &merged.extra)
                                            : fk_table_merge(t, &d->keys[i], &merged.value);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int fk_can_fall_back(int err)
{
    return err == EINVAL || err == ENOTSUPP || err == EOPNOTSUPP || err == ENOSYS;
}

/* Result of one drain strategy: >= 0 keys drained, -errno, or a request to fall back. */
#define FK_FALL_BACK (-0x7fff)

static int64_t fk_drain_batch(struct fk_drainer *d, int fd, struct fk_table *t, int and_delete)
{
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    int64_t total = 0;
    void *in = NULL;
    /* A quiescent map cannot hold more than its capacity; the bound only guards against a map
     * that some other writer keeps refilling. */
    uint64_t calls_left = 1u << 20;

    while (calls_left--) {
        uint32_t count = d->chunk;
        int rc;
        if (and_delete)
            rc = bpf_map_lookup_and_delete_batch(fd, in, d->token, d->keys, d->values, &count,
                                                 &opts);
        else
            rc = bpf_map_lookup_batch(fd, in, d->token, d->keys, d->values, &count, &opts);
        d->stats.syscalls++;
        int err = rc ? errno : 0;
        if (err && err != ENOENT) {
            if (total == 0 && count == 0 && fk_can_fall_back(err))
                return FK_FALL_BACK;
            if (err == ENOSPC) /* a hash bucket larger than our chunk: finish key by key */
                return FK_FALL_BACK;
            return -err;
        }
        if (count) {
            int merr = fk_merge_percpu(d, t, count);
            if (merr)
                return merr;
            if (!and_delete) {
                uint32_t deleted = count;
                if (bpf_map_delete_batch(fd, d->keys, &deleted, &opts)) {
                    int derr = errno;
                    if (fk_can_fall_back(derr) && total == 0)
                        return FK_FALL_BACK; /* nothing deleted yet: iterate from scratch */
                    return -derr;
                }
                d->stats.syscalls++;
            }
            total += count;
        }
        if (err == ENOENT || count == 0)
            break; /* end of map, or no progress */
        in = d->token;
    }
    return total;
}

/* Slowest path, for kernels without batch operations: collect a chunk of keys, then look each
 * one up and delete it. Restarting from the first key after every chunk is safe because the
 * chunk's keys are gone by then. */
static int64_t fk_drain_iterate(struct fk_drainer *d, int fd, struct fk_table *t)
{
    int64_t total = 0;
    for (;;) {
        uint32_t count = 0;
        const void *prev = NULL;
        while (count < d->chunk) {
            d->stats.syscalls++;
            if (bpf_map_get_next_key(fd, prev, &d->keys[count])) {
                if (errno == ENOENT)
                    break;
                return -errno;
            }
            prev = &d->keys[count];
            count++;
        }
        if (count == 0)
            return total;
        uint32_t kept = 0;
        for (uint32_t i = 0; i < count; i++) {
            unsigned char *slot = d->values + (size_t)kept * d->ncpus * d->value_size;
            d->stats.syscalls += 2;
            if (bpf_map_lookup_elem(fd, &d->keys[i], slot)) {
                if (errno == ENOENT)
                    continue;
                return -errno;
            }
            if (bpf_map_delete_elem(fd, &d->keys[i]) && errno != ENOENT)
                return -errno;
            if (kept != i)
                d->keys[kept] = d->keys[i];
            kept++;
        }
        int merr = fk_merge_percpu(d, t, kept);
        if (merr)
            return merr;
        total += kept;
        if (count < d->chunk)
            return total;
    }
}

/* Merge the occupied CPU values of one cache slot (its values at `values`); returns the flows
 * merged (0: the slot was empty on every CPU) or -errno. */
static int64_t fk_merge_cache_slot(struct fk_drainer *d, const unsigned char *values,
                                   struct fk_table *t)
{
    int64_t merged = 0;
    for (uint32_t cpu = 0; cpu < d->ncpus; cpu++) {
        struct fk_flow_event ev;
        memcpy(&ev, values + (size_t)cpu * d->value_size, sizeof(ev));
        if (ev.value.packets == 0)
            continue;
        d->stats.keys++;
        ev.value.pad2 = 0; /* the slot's jiffy, see the eBPF program's flow cache */
        int rc = fk_table_merge(t, &ev.key, &ev.value);
        if (rc < 0)
            return rc;
        merged++;
    }
    return merged;
}

/* The slot-by-slot cache drain: one lookup per slot, one update per occupied slot. For kernels
 * without batch operations on arrays. */
static int64_t fk_drain_cache_slots(struct fk_drainer *d, int fd, struct fk_table *t)
{
    int64_t total = 0;
    size_t size = (size_t)d->ncpus * d->value_size;
    for (uint32_t slot = 0; slot < d->chunk; slot++) {
        d->stats.syscalls++;
        if (bpf_map_lookup_elem(fd, &slot, d->values))
            return -errno;
        int64_t merged = fk_merge_cache_slot(d, d->values, t);
        if (merged < 0)
            return merged;
        if (merged == 0)
            continue;
        total += merged;
        memset(d->values, 0, size);
        d->stats.syscalls++;
        if (bpf_map_update_elem(fd, &slot, d->values, BPF_ANY))
            return -errno;
    }
    return total;
}

/* A flow cache (per-CPU array of struct fk_flow_event): every CPU's occupied slots are merged,
 * then zeroed. Two syscalls whatever the number of slots: one batch lookup of every slot, one
 * batch update zeroing the occupied ones (none when all are empty). Returns the number of flows
 * (slot and CPU pairs) read. */
static int64_t fk_drain_cache(struct fk_drainer *d, int fd, struct fk_table *t)
{
    if (!d->cache_batch || d->forced_mode == FK_DRAIN_ITERATE)
        return fk_drain_cache_slots(d, fd, t);
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    uint32_t next = 0, count = d->chunk;
    d->stats.syscalls++;
    int rc = bpf_map_lookup_batch(fd, NULL, &next, d->slots, d->values, &count, &opts);
    int err = rc ? errno : 0;
    if (err && err != ENOENT) {
        if (count == 0 && fk_can_fall_back(err)) {
            d->cache_batch = 0;
            d->stats.fallbacks++;
            return fk_drain_cache_slots(d, fd, t);
        }
        return -err;
    }
    if (count != d->chunk)
        return -EIO; /* an array always has every slot: a short read would skip some */
    size_t stride = (size_t)d->ncpus * d->value_size;
    int64_t total = 0;
    uint32_t dirty = 0;
    for (uint32_t i = 0; i < count; i++) {
        int64_t merged = fk_merge_cache_slot(d, d->values + i * stride, t);
        if (merged < 0)
            return merged;
        if (merged)
            d->slots[dirty++] = d->slots[i];
        total += merged;
    }
    if (dirty == 0)
        return total;
    memset(d->values, 0, dirty * stride);
    uint32_t written = dirty;
    d->stats.syscalls++;
    if (bpf_map_update_batch(fd, d->slots, d->values, &written, &opts)) {
        err = errno;
        if (written != 0 || !fk_can_fall_back(err))
            return -err;
        /* Lookups in batches but not updates: zero the occupied slots one by one. */
        for (uint32_t i = 0; i < dirty; i++) {
            d->stats.syscalls++;
            if (bpf_map_update_elem(fd, &d->slots[i], d->values, BPF_ANY))
                return -errno;
        }
    } else if (written != dirty) {
        return -EIO;
    }
    return total;
}

int64_t fk_drainer_drain_map(struct fk_drainer *d, uint32_t index, struct fk_table *t)
{
    if (index > 1)
        return -EINVAL;
    int fd = d->map_fds[index];
    if (d->kind == FK_DRAIN_CACHE)
        return fk_drain_cache(d, fd, t);
    int64_t total = 0;
    for (;;) {
        int64_t rc;
        if (d->mode == FK_DRAIN_LOOKUP_AND_DELETE_BATCH)
            rc = fk_drain_batch(d, fd, t, 1);
        else if (d->mode == FK_DRAIN_LOOKUP_BATCH_THEN_DELETE)
            rc = fk_drain_batch(d, fd, t, 0);
        else
            rc = fk_drain_iterate(d, fd, t);
        if (rc == FK_FALL_BACK) {
            if (d->mode == FK_DRAIN_ITERATE)
                return -EINVAL;
            /* ENOSPC leaves the faster mode usable next time; anything else is permanent. */
            if (d->forced_mode == FK_DRAIN_AUTO) {
                d->mode++;
                d->stats.mode = d->mode;
            } else {
                uint32_t saved = d->mode;
                d->mode = FK_DRAIN_ITERATE;
                rc = fk_drain_iterate(d, fd, t);
                d->mode = saved;
                if (rc < 0)
                    return rc;
                return total + rc;
            }
            d->stats.fallbacks++;
            continue;
        }
        if (rc < 0)
            return rc;
        return total + rc;
    }
}

/* Whether a hash map has no entry now (one syscall; any error counts as "maybe not"). */
static int fk_hash_map_empty(struct fk_drainer *d, int fd)
{
    d->stats.syscalls++;
    return bpf_map_get_next_key(fd, NULL, d->keys) && errno == ENOENT;
}

int64_t fk_drainer_drain(struct fk_drainer *d, struct fk_table *t)
{
    uint32_t zero = 0;
    /* Trust the selector over our memory: another drainer may have flipped it since. */
    int current = fk_selector_active(d->selector_fd, d->map_ids);
    d->stats.syscalls++;
    uint32_t old = current >= 0 ? (uint32_t)current : d->active;
    uint32_t next = old ^ 1;
    /* Nothing to take: the active flow map is empty and the other one was drained. Flipping
     * would cost a grace period and a batch walk over every bucket of an empty map; a packet
     * arriving after this check is in the same place as one arriving after a flip (taken by
     * the next drain), so skipping changes no flow's period. */
    if (d->kind != FK_DRAIN_CACHE && current >= 0 && !d->unread[next] &&
        fk_hash_map_empty(d, d->map_fds[old])) {
        d->stats.drains++;
        return 0;
    }
    uint32_t next_fd = (uint32_t)d->map_fds[next];
    /* Returns once no program can still be writing into the old map (see the file comment). */
    if (bpf_map_update_elem(d->selector_fd, &zero, &next_fd, BPF_ANY))
        return -errno;
    d->active = next;
    d->stats.active_map = next;
    d->stats.syscalls++;
    d->unread[old] = 1;
    int64_t rc = fk_drainer_drain_map(d, old, t);
    if (rc >= 0) {
        d->unread[old] = 0;
        d->stats.drains++;
    }
    return rc;
}

/* ---------------------------------------------------------------- ring buffer ---------- */

struct fk_ringbuf_reader {
    struct ring_buffer *rb;
    int wake_fd; /* eventfd: fk_ringbuf_wake ends a wait early */
    int epoll_fd; /* waits for the ring buffer or wake_fd */
    /* Destination of the current call: a table (evicting into `flows` whenever it holds `limit`
     * flows) or a plain record array. */
    struct fk_table *table;
    uint32_t limit;
    int error;
    struct fk_flow_out *flows;
    uint64_t flows_cap;
    uint64_t flows_len;
    int64_t boot_offset_ns;
    struct fk_flow_record *out;
    uint64_t out_cap;
    uint64_t out_len;
    struct fk_ringbuf_stats stats;
};

static int fk_on_sample(void *ctx, void *data, size_t size)
{
    struct fk_ringbuf_reader *r = ctx;
    if (size < sizeof(struct fk_flow_event)) {
        r->stats.malformed++;
        return 0;
    }
    r->stats.records++;
    struct fk_flow_event ev;
    memcpy(&ev, data, sizeof(ev));
    if (!r->table) {
        struct fk_flow_record *out = &r->out[r->out_len++];
        memset(out, 0, sizeof(*out));
        out->key = ev.key;
        out->value = ev.value;
        /* The record is consumed once we return; stop while the next one is still unread. */
        return r->out_len >= r->out_cap ? FK_STOP_POLL : 0;
    }
    int rc = fk_table_merge(r->table, &ev.key, &ev.value);
    if (rc < 0) {
        r->error = rc;
        return FK_STOP_POLL;
    }
    if (r->limit && fk_table_len(r->table) >= r->limit) {
        int64_t written = fk_table_evict(r->table, r->flows + r->flows_len,
                                         r->flows_cap - r->flows_len, r->boot_offset_ns);
        if (written < 0) {
            r->error = (int)written;
            return FK_STOP_POLL;
        }
        r->flows_len += (uint64_t)written;
        /* Stop while another full table would still fit in the caller's buffer. */
        if (r->flows_cap - r->flows_len < r->limit)
            return FK_STOP_POLL;
    }
    return 0;
}

struct fk_ringbuf_reader *fk_ringbuf_reader_new(int ringbuf_fd, int *err)
{
    struct fk_ringbuf_reader *r = calloc(1, sizeof(*r));
    if (!r) {
        *err = -ENOMEM;
        return NULL;
    }
    r->wake_fd = -1;
    r->epoll_fd = -1;
    errno = 0;
    r->rb = ring_buffer__new(ringbuf_fd, fk_on_sample, r, NULL);
    if (!r->rb) {
        *err = errno ? -errno : -EINVAL;
        free(r);
        return NULL;
    }
    /* A wait covers the ring buffer's own epoll set (readable when a record is there) and an
     * eventfd, so that another thread can end it at once (fk_ringbuf_wake) instead of the
     * waiting thread waking up regularly to look for a reason to stop. */
    r->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    r->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (r->wake_fd < 0 || r->epoll_fd < 0)
        goto fail;
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.u32 = 0;
    if (epoll_ctl(r->epoll_fd, EPOLL_CTL_ADD, ring_buffer__epoll_fd(r->rb), &ev))
        goto fail;
    ev.data.u32 = 1;
    if (epoll_ctl(r->epoll_fd, EPOLL_CTL_ADD, r->wake_fd, &ev))
        goto fail;
    *err = 0;
    return r;
fail:
    *err = errno ? -errno : -EINVAL;
    fk_ringbuf_reader_free(r);
    return NULL;
}

void fk_ringbuf_reader_free(struct fk_ringbuf_reader *r)
{
    if (!r)
        return;
    ring_buffer__free(r->rb);
    if (r->wake_fd >= 0)
        close(r->wake_fd);
    if (r->epoll_fd >= 0)
        close(r->epoll_fd);
    free(r);
}

/* End the current or next wait of `r` (from any thread). */
int fk_ringbuf_wake(struct fk_ringbuf_reader *r)
{
    uint64_t one = 1;
    if (write(r->wake_fd, &one, sizeof(one)) != sizeof(one) && errno != EAGAIN)
        return -errno;
    return 0;
}

void fk_ringbuf_get_stats(const struct fk_ringbuf_reader *r, struct fk_ringbuf_stats *out)
{
    *out = r->stats;
}

/* Wait up to timeout_ms until a record is there or fk_ringbuf_wake is called (a wake is used
 * up by the wait it ends, or by the next one). Returns 1 when a record may be there, 0 when
 * woken, timed out or interrupted, -errno on failure. */
int fk_ringbuf_wait(struct fk_ringbuf_reader *r, int timeout_ms)
{
    struct epoll_event events[2];
    int n = epoll_wait(r->epoll_fd, events, 2, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    int ready = 0;
    for (int i = 0; i < n; i++) {
        if (events[i].data.u32 == 1) {
            uint64_t count;
            if (read(r->wake_fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
                return -errno;
        } else {
            ready = 1;
        }
    }
    return ready;
}

/* One poll: timeout_ms > 0 first waits (fk_ringbuf_wait), then consumes what is there.
 * -EINTR counts as zero events. */
static int fk_ringbuf_run(struct fk_ringbuf_reader *r, int timeout_ms)
{
    int rc;
    r->stats.polls++;
    r->error = 0;
    if (timeout_ms > 0) {
        rc = fk_ringbuf_wait(r, timeout_ms);
        if (rc < 0)
            return rc;
    }
    rc = ring_buffer__consume(r->rb);
    if (r->error)
        return r->error;
    if (rc == -EINTR || rc == FK_STOP_POLL)
        return 0;
    return rc < 0 ? rc : 0;
}

/* Merge ring-buffer records into the table; whenever it holds `limit` flows, evict it into
 * flows[*out_len...] (capacity must be >= *out_len + limit). Returns the records consumed. */
int64_t fk_ringbuf_poll_into_table(struct fk_ringbuf_reader *r, struct fk_table *t,
                                   uint32_t limit, struct fk_flow_out *flows, uint64_t capacity,
                                   int64_t boot_offset_ns, uint64_t *out_len, int timeout_ms)
{
    if (limit && capacity < *out_len + limit)
        return -ENOBUFS;
    uint64_t before = r->stats.records;
    r->table = t;
    r->limit = limit;
    r->flows = flows;
    r->flows_cap = capacity;
    r->flows_len = *out_len;
    r->boot_offset_ns = boot_offset_ns;
    int rc = fk_ringbuf_run(r, timeout_ms);
    *out_len = r->flows_len;
    r->table = NULL;
    r->flows = NULL;
    if (rc < 0)
        return rc;
    return (int64_t)(r->stats.records - before);
}

/* Copy up to `capacity` ring-buffer records (one packet each) into `out`. */
int64_t fk_ringbuf_read_records(struct fk_ringbuf_reader *r, struct fk_flow_record *out,
                                uint64_t capacity, int timeout_ms)
{
    if (capacity == 0)
        return -EINVAL;
    r->table = NULL;
    r->out = out;
    r->out_cap = capacity;
    r->out_len = 0;
    int rc = fk_ringbuf_run(r, timeout_ms);
    r->out = NULL;
    if (rc < 0)
        return rc;
    return (int64_t)r->out_len;
}
