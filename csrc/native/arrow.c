/* A FlowBatch as one Arrow C data interface record batch; see csrc/include/40-columns.h.
 *
 * Everything the record batch points to lives in one block: the ArrowArray tree, the buffer
 * pointer tables and the column data, each buffer on a 64-byte boundary. Blocks come from a
 * process-wide pool and return to it when the consumer (pyarrow, and through it polars or
 * DuckDB) calls the release callback, from any thread: memory fresh from the allocator costs a
 * page fault per 4 KiB on its first write, more than the copy into it, and allocators hand
 * blocks this large back to the system as soon as they are freed.
 *
 * Columns without data share a read-only mapping of zero pages (never written, so it costs
 * address space, not memory): the optional-feature columns when no flow carries a feature,
 * the DEDUPER lists' offsets when no flow has entries, the agent_ip indices. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "40-columns.h"

#define FK_ALIGN 64
#define FK_POOL_KEEP 4                    /* free blocks kept */
#define FK_POOL_KEEP_BYTES (256ull << 20) /* and at most this many bytes */

struct fk_block {
    struct fk_block *next; /* free list */
    size_t size;           /* bytes of the whole block */
};

static pthread_mutex_t fk_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fk_block *fk_pool_free;
static uint64_t fk_pool_free_bytes, fk_pool_in_use;

static const uint8_t *fk_zeros;
static size_t fk_zeros_size;

static size_t fk_aligned(size_t n)
{
    return (n + FK_ALIGN - 1) & ~(size_t)(FK_ALIGN - 1);
}

/* A new block: whole 2 MiB pages, which the kernel may back with transparent huge pages: the
 * pass writes ~25 columns at once, and with 4 KiB pages every one of them crosses a page, and
 * misses the TLB, every few hundred rows. */
#define FK_HUGE (2u << 20)
static struct fk_block *fk_block_map(size_t size)
{
    size = (size + FK_HUGE - 1) & ~(size_t)(FK_HUGE - 1);
    uint8_t *map = mmap(NULL, size + FK_HUGE, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED)
        return NULL;
    uint8_t *start = (uint8_t *)(((uintptr_t)map + FK_HUGE - 1) & ~(uintptr_t)(FK_HUGE - 1));
    if (start > map)
        munmap(map, (size_t)(start - map));
    if (start + size < map + size + FK_HUGE)
        munmap(start + size, (size_t)(map + size + FK_HUGE - (start + size)));
#ifdef MADV_HUGEPAGE
    madvise(start, size, MADV_HUGEPAGE);
#endif
    struct fk_block *block = (struct fk_block *)(void *)start;
    block->size = size;
    return block;
}

/* A free block of at least `size` bytes (and not much more), or a new one. */
static struct fk_block *fk_pool_get(size_t size)
{
    struct fk_block **best = NULL;
    size = (size + FK_HUGE - 1) & ~(size_t)(FK_HUGE - 1);
    pthread_mutex_lock(&fk_pool_lock);
    for (struct fk_block **b = &fk_pool_free; *b != NULL; b = &(*b)->next) {
        if ((*b)->size >= size && (*b)->size <= 2 * size + (1u << 20) &&
            (best == NULL || (*b)->size < (*best)->size))
            best = b;
    }
    struct fk_block *block = NULL;
    if (best != NULL) {
        block = *best;
        *best = block->next;
        fk_pool_free_bytes -= block->size;
    }
    if (block != NULL)
        fk_pool_in_use++;
    pthread_mutex_unlock(&fk_pool_lock);
    if (block != NULL)
        return block;
    block = fk_block_map(size);
    if (block == NULL)
        return NULL;
    pthread_mutex_lock(&fk_pool_lock);
    fk_pool_in_use++;
    pthread_mutex_unlock(&fk_pool_lock);
    return block;
}

/* Back to the pool; the largest free blocks go first when it holds too much. */
static void fk_pool_put(struct fk_block *block)
{
    struct fk_block *drop = NULL;
    pthread_mutex_lock(&fk_pool_lock);
    fk_pool_in_use--;
    block->next = fk_pool_free;
    fk_pool_free = block;
    fk_pool_free_bytes += block->size;
    uint32_t count = 0;
    for (struct fk_block *b = fk_pool_free; b != NULL; b = b->next)
        count++;
    while (count > FK_POOL_KEEP || fk_pool_free_bytes > FK_POOL_KEEP_BYTES) {
        struct fk_block **largest = &fk_pool_free;
        for (struct fk_block **b = &fk_pool_free; *b != NULL; b = &(*b)->next)
            if ((*b)->size > (*largest)->size)
                largest = b;
        struct fk_block *victim = *largest;
        *largest = victim->next;
        fk_pool_free_bytes -= victim->size;
        victim->next = drop;
        drop = victim;
        count--;
    }
    pthread_mutex_unlock(&fk_pool_lock);
    while (drop != NULL) {
        struct fk_block *next = drop->next;
        munmap(drop, drop->size);
        drop = next;
    }
}

void fk_arrow_release(struct ArrowArray *array)
{
    if (array != NULL && array->release != NULL)
        array->release(array);
}

void fk_arrow_pool_stats(uint64_t *free_bytes, uint64_t *blocks_in_use)
{
    pthread_mutex_lock(&fk_pool_lock);
    *free_bytes = fk_pool_free_bytes;
    *blocks_in_use = fk_pool_in_use;
    pthread_mutex_unlock(&fk_pool_lock);
}

/* At least `size` bytes of zeros that nobody writes. A larger mapping replaces a smaller one;
 * the smaller stays mapped (record batches may still point into it). */
static const uint8_t *fk_zero_pages(size_t size)
{
    const uint8_t *zeros;
    pthread_mutex_lock(&fk_pool_lock);
    if (fk_zeros_size < size) {
        size_t want = size < (64u << 20) ? (64u << 20) : size + (size >> 1);
        void *map = mmap(NULL, want, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                         -1, 0);
        if (map != MAP_FAILED) {
            fk_zeros = map;
            fk_zeros_size = want;
        }
    }
    zeros = fk_zeros_size >= size ? fk_zeros : NULL;
    pthread_mutex_unlock(&fk_pool_lock);
    return zeros;
}

/* Children are released with their parent (the consumer calls the parent's callback only). */
static void fk_release_child(struct ArrowArray *array)
{
    array->release = NULL;
}

static void fk_release_batch(struct ArrowArray *array)
{
    for (int64_t i = 0; i < array->n_children; i++) {
        struct ArrowArray *child = array->children[i];
        if (child->release != NULL)
            child->release(child);
        for (int64_t j = 0; j < child->n_children; j++)
            if (child->children[j]->release != NULL)
                child->children[j]->release(child->children[j]);
        if (child->dictionary != NULL && child->dictionary->release != NULL)
            child->dictionary->release(child->dictionary);
    }
    array->release = NULL;
    fk_pool_put(array->private_data);
}

/* Large batches are transposed by two threads: the pass is bound by
 * how fast one core can pull the records from memory (about 19 GB/s here; a 100,000-flow batch
 * is 22.4 MB), and a second core doubles that. Below this many rows a thread costs more than
 * it saves. */
#define FK_PARALLEL_ROWS 32768
/* Rows are handed out in chunks, taken by whichever thread is free: the second thread may
 * start tens of microseconds late (its CPU has to wake up), and then takes fewer chunks instead
 * of finishing last. Chunks start on 64-row boundaries, so no two threads write to one cache
 * line of a column. */
#define FK_CHUNK_ROWS 4096

struct fk_split {
    const struct fk_flow_out *rows;
    uint64_t nrows;
    uint8_t *const *columns;
    const uint32_t *widths;
    const struct fk_interface_map *interfaces;
    int32_t *if_out;
    uint64_t next; /* next chunk (atomic) */
};

struct fk_worker {
    struct fk_split *split;
    uint32_t gates;
};

static void *fk_worker_run(void *arg)
{
    struct fk_worker *w = arg;
    struct fk_split *s = w->split;
    uint8_t *columns[FK_FLOW_COLUMNS];
    for (;;) {
        uint64_t start = __atomic_fetch_add(&s->next, 1, __ATOMIC_RELAXED) * FK_CHUNK_ROWS;
        if (start >= s->nrows)
            break;
        uint64_t end = start + FK_CHUNK_ROWS < s->nrows ? start + FK_CHUNK_ROWS : s->nrows;
        for (uint32_t c = 0; c < FK_FLOW_COLUMNS; c++)
            columns[c] = s->columns[c] + start * s->widths[c];
        w->gates |= fk_flow_columns(s->rows + start, end - start, columns, s->interfaces,
                                    s->if_out != NULL ? s->if_out + start : NULL);
    }
    return NULL;
}

static int fk_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) != 0)
        return 1;
    return CPU_COUNT(&set);
}

static uint32_t fk_columns_parallel(const struct fk_flow_out *rows, uint64_t nrows,
                                    uint8_t *const *columns, const uint32_t *widths,
                                    const struct fk_interface_map *interfaces, int32_t *if_out)
{
    struct fk_split split = {rows, nrows, columns, widths, interfaces, if_out, 0};
    struct fk_worker first = {&split, 0}, second = {&split, 0};
    pthread_t thread;
    if (nrows < FK_PARALLEL_ROWS || fk_cpus() < 2 ||
        pthread_create(&thread, NULL, fk_worker_run, &second) != 0) {
        return fk_flow_columns(rows, nrows, columns, interfaces, if_out);
    }
    fk_worker_run(&first);
    pthread_join(thread, NULL);
    return first.gates | second.gates;
}

/* One node of the tree: `n_buffers` buffer pointers follow in `table`. */
static void fk_node(struct ArrowArray *node, int64_t length, int64_t n_buffers,
                    const void **table)
{
    memset(node, 0, sizeof(*node));
    node->length = length;
    node->n_buffers = n_buffers;
    node->buffers = table;
    node->release = fk_release_child;
}

struct ArrowArray *fk_flow_arrow(const struct fk_flow_out *rows, uint64_t nrows,
                                 const struct fk_arrow_child *plan, uint32_t nchildren,
                                 const struct fk_interface_map *interfaces,
                                 const struct fk_arrow_strings *dictionaries,
                                 uint32_t ndictionaries, int *err)
{
    static const uint32_t widths[FK_FLOW_COLUMNS] = {
#define FK_WIDTH(field) (uint32_t)sizeof(((const struct fk_flow_out *)0)->field),
        FK_FLOW_COLUMN_LIST(FK_WIDTH)
#undef FK_WIDTH
    };
    *err = 0;
    /* Check the plan and size everything before writing anything. */
    uint32_t nlists = 0, ngated = 0;
    size_t widest = 1;
    for (uint32_t c = 0; c < nchildren; c++) {
        const struct fk_arrow_child *p = &plan[c];
        int bad = 0;
        switch (p->kind) {
        case FK_ARROW_COLUMN:
        case FK_ARROW_NAMES:
            bad = p->column >= FK_FLOW_COLUMNS ||
                  (p->kind == FK_ARROW_NAMES && p->dictionary >= ndictionaries);
            break;
        case FK_ARROW_GATED:
        case FK_ARROW_LIST:
            bad = p->width == 0 || p->width > sizeof(struct fk_flow_out) ||
                  p->offset > sizeof(struct fk_flow_out) - p->width ||
                  (p->kind == FK_ARROW_LIST &&
                   (p->width > 8 ||
                    p->offset + (size_t)p->width * FK_MAX_DUPS > sizeof(struct fk_flow_out)));
            if (p->kind == FK_ARROW_LIST)
                nlists++;
            else
                ngated++;
            if (p->width > widest)
                widest = p->width;
            break;
        case FK_ARROW_INTERFACE:
        case FK_ARROW_AGENT:
            bad = p->dictionary >= ndictionaries;
            break;
        default:
            bad = 1;
        }
        if (bad) {
            *err = EINVAL;
            return NULL;
        }
    }
    size_t n = (size_t)nrows;
    /* Zeros for the columns without data: widest gated value, list offsets, validity. */
    const uint8_t *zeros = fk_zero_pages(fk_aligned(widest * n + 4 * (n + 1) + FK_ALIGN));
    if (zeros == NULL) {
        *err = ENOMEM;
        return NULL;
    }
    /* Nodes: the batch, each child, a list's values or a dictionary. */
    size_t nodes = 1 + (size_t)nchildren + nlists + nchildren;
    size_t meta = fk_aligned(sizeof(struct fk_block)) +
                  fk_aligned(nodes * sizeof(struct ArrowArray)) +
                  fk_aligned(nodes * sizeof(struct ArrowArray *)) +
                  fk_aligned(3 * nodes * sizeof(void *));
    size_t data = 0, column_at[FK_FLOW_COLUMNS];
    for (uint32_t c = 0; c < FK_FLOW_COLUMNS; c++) {
        column_at[c] = data;
        data += fk_aligned(widths[c] * n);
    }
    size_t interface_at = data;
    data += fk_aligned(4 * n);
    size_t gated_at = data; /* reserved; written only when a flow carries a feature */
    for (uint32_t c = 0; c < nchildren; c++)
        if (plan[c].kind == FK_ARROW_GATED)
            data += fk_aligned(plan[c].width * n);
    size_t lists_at = data; /* offsets, then each list's values (at most FK_MAX_DUPS a flow) */
    if (nlists) {
        data += fk_aligned(4 * (n + 1));
        for (uint32_t c = 0; c < nchildren; c++)
            if (plan[c].kind == FK_ARROW_LIST)
                data += fk_aligned((size_t)plan[c].width * FK_MAX_DUPS * n);
    }
    size_t dictionaries_at = data;
    for (uint32_t k = 0; k < ndictionaries; k++) {
        const struct fk_arrow_strings *s = &dictionaries[k];
        data += fk_aligned(4 * ((size_t)s->count + 1));
        data += fk_aligned(s->count ? (size_t)s->offsets[s->count] : 0);
    }
    struct fk_block *block = fk_pool_get(meta + data);
    if (block == NULL) {
        *err = ENOMEM;
        return NULL;
    }
    uint8_t *base = (uint8_t *)block;
    struct ArrowArray *node = (struct ArrowArray *)(void *)(base +
                                                            fk_aligned(sizeof(struct fk_block)));
    struct ArrowArray **pointers = (struct ArrowArray **)(void *)((uint8_t *)node +
                                     fk_aligned(nodes * sizeof(struct ArrowArray)));
    const void **tables = (const void **)(void *)((uint8_t *)pointers +
                                                  fk_aligned(nodes * sizeof(*pointers)));
    uint8_t *out = base + meta;

    /* The columns every flow carries, and the interface indices. */
    uint8_t *columns[FK_FLOW_COLUMNS];
    for (uint32_t c = 0; c < FK_FLOW_COLUMNS; c++)
        columns[c] = out + column_at[c];
    int32_t *interface_index = (int32_t *)(void *)(out + interface_at);
    int32_t *if_out = NULL;
    for (uint32_t c = 0; c < nchildren; c++)
        if (plan[c].kind == FK_ARROW_INTERFACE)
            if_out = interface_index;
    uint32_t gates = fk_columns_parallel(rows, nrows, columns, widths, interfaces, if_out);

    /* Optional-feature columns: copied only when a flow carries a feature. */
    if ((gates & 0xffu) != 0 && ngated) {
        struct fk_column specs[ngated];
        uint32_t g = 0;
        size_t at = gated_at;
        for (uint32_t c = 0; c < nchildren; c++) {
            if (plan[c].kind != FK_ARROW_GATED)
                continue;
            specs[g].offset = plan[c].offset;
            specs[g].width = plan[c].width;
            specs[g].dst = out + at;
            at += fk_aligned(plan[c].width * n);
            g++;
        }
        fk_gather_columns((const uint8_t *)rows, nrows, sizeof(struct fk_flow_out), specs, ngated);
    }

    /* DEDUPER lists: the first dup_count items of each flow. */
    int dups = (gates & 0x100u) != 0 && nlists;
    const int32_t *list_offsets = (const int32_t *)(const void *)zeros;
    int64_t list_items = 0;
    if (dups) {
        int32_t *offsets = (int32_t *)(void *)(out + lists_at);
        offsets[0] = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t count = rows[i].dup_count < FK_MAX_DUPS ? rows[i].dup_count : FK_MAX_DUPS;
            offsets[i + 1] = offsets[i] + (int32_t)count;
        }
        list_offsets = offsets;
        list_items = offsets[n];
    }

    /* Dictionaries, copied next to the data. */
    const int32_t *dict_offsets[ndictionaries ? ndictionaries : 1];
    const uint8_t *dict_data[ndictionaries ? ndictionaries : 1];
    {
        size_t at = dictionaries_at;
        for (uint32_t k = 0; k < ndictionaries; k++) {
            const struct fk_arrow_strings *s = &dictionaries[k];
            int32_t *offsets = (int32_t *)(void *)(out + at);
            if (s->count)
                memcpy(offsets, s->offsets, 4 * ((size_t)s->count + 1));
            else
                offsets[0] = 0;
            at += fk_aligned(4 * ((size_t)s->count + 1));
            size_t bytes = s->count ? (size_t)s->offsets[s->count] : 0;
            if (bytes)
                memcpy(out + at, s->data, bytes);
            dict_offsets[k] = offsets;
            dict_data[k] = bytes ? out + at : zeros;
            at += fk_aligned(bytes);
        }
    }

    /* The tree. */
    struct ArrowArray *batch = node++;
    fk_node(batch, (int64_t)n, 1, tables);
    tables[0] = NULL;
    tables += 1;
    batch->n_children = nchildren;
    batch->children = pointers;
    batch->release = fk_release_batch;
    batch->private_data = block;
    size_t gated_next = gated_at;
    size_t list_next = lists_at + fk_aligned(4 * (n + 1));
    for (uint32_t c = 0; c < nchildren; c++) {
        const struct fk_arrow_child *p = &plan[c];
        struct ArrowArray *child = node++;
        pointers[c] = child;
        fk_node(child, (int64_t)n, 2, tables);
        tables[0] = NULL;
        switch (p->kind) {
        case FK_ARROW_COLUMN:
            tables[1] = columns[p->column];
            break;
        case FK_ARROW_GATED:
            tables[1] = (gates & 0xffu) != 0 ? out + gated_next : zeros;
            gated_next += fk_aligned(p->width * n);
            break;
        case FK_ARROW_LIST: {
            tables[1] = list_offsets;
            struct ArrowArray *values = node++;
            const void **values_table = tables + 2;
            fk_node(values, list_items, 2, values_table);
            values_table[0] = NULL;
            values_table[1] = zeros;
            if (dups) {
                uint8_t *dst = out + list_next;
                size_t w = p->width;
                for (size_t i = 0; i < n; i++) {
                    size_t count = (size_t)(list_offsets[i + 1] - list_offsets[i]);
                    memcpy(dst + (size_t)list_offsets[i] * w,
                           (const uint8_t *)&rows[i] + p->offset, count * w);
                }
                values_table[1] = dst;
            }
            list_next += fk_aligned((size_t)p->width * FK_MAX_DUPS * n);
            child->n_children = 1;
            child->children = &pointers[nchildren + c];
            pointers[nchildren + c] = values;
            tables += 2;
            break;
        }
        case FK_ARROW_INTERFACE:
        case FK_ARROW_NAMES:
        case FK_ARROW_AGENT: {
            const struct fk_arrow_strings *s = &dictionaries[p->dictionary];
            if (p->kind == FK_ARROW_INTERFACE)
                tables[1] = interface_index;
            else if (p->kind == FK_ARROW_NAMES)
                tables[1] = columns[p->column];
            else
                tables[1] = zeros;
            if (p->kind == FK_ARROW_AGENT && s->count == 0) {
                tables[0] = zeros; /* validity: every value null */
                child->null_count = (int64_t)n;
            }
            struct ArrowArray *dictionary = node++;
            const void **dictionary_table = tables + 2;
            fk_node(dictionary, s->count, 3, dictionary_table);
            dictionary_table[0] = NULL;
            dictionary_table[1] = dict_offsets[p->dictionary];
            dictionary_table[2] = dict_data[p->dictionary];
            child->dictionary = dictionary;
            tables += 3;
            break;
        }
        }
        tables += 2;
    }
    return batch;
}
