/* libbpf for the eBPF object loader (csrc/cdef/10-libbpf.cdef, flowkit/ebpf/loader.py).
 *
 * libbpf uses enums in a few signatures; the fkl_* wrappers take plain ints so that the cdef
 * does not have to declare (and thereby own) the `enum bpf_*` types. The log bridge formats
 * libbpf's printf-style messages in C (Python cannot consume a va_list) and hands each
 * finished message to the extern "Python" callback fkl_libbpf_log. */
#ifndef FLOWKIT_LIBBPF_H
#define FLOWKIT_LIBBPF_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

static int fkl_program_type(const struct bpf_program *prog)
{
    return (int)bpf_program__type(prog);
}

static int fkl_program_set_type(struct bpf_program *prog, int type)
{
    return bpf_program__set_type(prog, (enum bpf_prog_type)type);
}

static int fkl_program_expected_attach_type(const struct bpf_program *prog)
{
    return (int)bpf_program__expected_attach_type(prog);
}

static int fkl_program_set_expected_attach_type(struct bpf_program *prog, int type)
{
    return bpf_program__set_expected_attach_type(prog, (enum bpf_attach_type)type);
}

static int fkl_map_type(const struct bpf_map *map)
{
    return (int)bpf_map__type(map);
}

static int fkl_map_create(int map_type, const char *map_name, uint32_t key_size,
                         uint32_t value_size, uint32_t max_entries,
                         const struct bpf_map_create_opts *opts)
{
    return bpf_map_create((enum bpf_map_type)map_type, map_name, key_size, value_size,
                          max_entries, opts);
}

/* Defined by cffi (extern "Python" in the cdef); declared here so that C can call it. */
static void fkl_libbpf_log(int level, const char *message);

static libbpf_print_fn_t fkl_previous_print;
static int fkl_print_installed;

static int fkl_libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    char small[512];
    va_list copy;
    int len;

    va_copy(copy, ap);
    len = vsnprintf(small, sizeof(small), fmt, copy);
    va_end(copy);
    if (len < 0)
        return 0;
    if ((size_t)len < sizeof(small)) {
        fkl_libbpf_log((int)level, small);
        return len;
    }
    /* Verifier logs arrive as one long message: format them on the heap. */
    char *big = malloc((size_t)len + 1);
    if (!big) {
        fkl_libbpf_log((int)level, small);
        return len;
    }
    vsnprintf(big, (size_t)len + 1, fmt, ap);
    fkl_libbpf_log((int)level, big);
    free(big);
    return len;
}

static void fkl_libbpf_route_log_to_python(void)
{
    if (fkl_print_installed)
        return;
    fkl_previous_print = libbpf_set_print(fkl_libbpf_print);
    fkl_print_installed = 1;
}

static void fkl_libbpf_restore_log(void)
{
    if (!fkl_print_installed)
        return;
    libbpf_set_print(fkl_previous_print);
    fkl_print_installed = 0;
}

#endif /* FLOWKIT_LIBBPF_H */
