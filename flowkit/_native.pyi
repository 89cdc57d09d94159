"""Type stub of the compiled cffi extension ``flowkit._native`` (csrc/build_ffi.py).

Generated from csrc/cdef/*.cdef by scripts/gen-native-stub.py: do not edit. Only the facade
(``flowkit/native/``) uses it; see docs/architecture.md.
"""

from typing import Protocol, TypeAlias

from _cffi_backend import FFI

CData: TypeAlias = FFI.CData

ffi: FFI

class struct_fk_flow_key(Protocol):
    src_ip: CData
    dst_ip: CData
    src_port: int
    dst_port: int
    if_index: int
    eth_protocol: int
    direction: int
    proto: int
    icmp_type: int
    icmp_code: int
    netns: int

class struct_fk_flow_value(Protocol):
    packets: int
    bytes: int
    first_ns: int
    last_ns: int
    flags: int
    dscp: int
    pad: int
    sampling: int
    src_mac: CData
    dst_mac: CData
    pad2: int

class struct_fk_flow_extra(Protocol):
    first_ns: int
    last_ns: int
    drop_bytes: int
    drop_packets: int
    drop_ns: int
    drop_cause: int
    drop_flags: int
    drop_state: int
    features: int
    rtt_ns: int
    dns_ns: int
    dns_latency_ns: int
    dns_id: int
    dns_flags: int
    dns_errno: int
    pad: CData
    dns_name: CData

class struct_fk_flow_event(Protocol):
    key: struct_fk_flow_key
    value: struct_fk_flow_value

class struct_fk_flow_record(Protocol):
    key: struct_fk_flow_key
    value: struct_fk_flow_value
    extra: struct_fk_flow_extra

class struct_fk_flow_out(Protocol):
    key: struct_fk_flow_key
    packets: int
    bytes: int
    start_ns: int
    end_ns: int
    flags: int
    dscp: int
    features: int
    sampling: int
    src_mac: CData
    dst_mac: CData
    drop_flags: int
    drop_state: int
    dns_errno: int
    drop_bytes: int
    drop_packets: int
    drop_cause: int
    dns_id: int
    dns_flags: int
    rtt_ns: int
    dns_latency_ns: int
    dns_name: CData
    dup_if_index: CData
    dup_netns: CData
    dup_direction: CData
    dup_count: int
    pad: CData

class struct_fk_port_match(Protocol):
    lo: int
    hi: int
    list: CData
    kind: int
    pad: CData

class struct_fk_filter_rule(Protocol):
    peer_ip: CData
    peer_mask: CData
    sample: int
    tcp_flags: int
    action: int
    direction: int
    proto: int
    icmp_type: int
    icmp_code: int
    match: int
    src_port: struct_fk_port_match
    dst_port: struct_fk_port_match
    any_port: struct_fk_port_match

class struct_fk_filter_rules(Protocol):
    rules: CData

class struct_bpf_object_open_opts(Protocol):
    sz: int
    object_name: CData
    relaxed_maps: bool
    pin_root_path: CData
    kernel_log_buf: CData
    kernel_log_size: int
    kernel_log_level: int

class struct_bpf_map_create_opts(Protocol):
    sz: int
    btf_fd: int
    btf_key_type_id: int
    btf_value_type_id: int
    btf_vmlinux_value_type_id: int
    inner_map_fd: int
    map_flags: int
    map_extra: int
    numa_node: int
    map_ifindex: int

class struct_bpf_map_batch_opts(Protocol):
    sz: int
    elem_flags: int
    flags: int

class struct_bpf_test_run_opts(Protocol):
    sz: int
    data_in: CData
    data_out: CData
    data_size_in: int
    data_size_out: int
    ctx_in: CData
    ctx_out: CData
    ctx_size_in: int
    ctx_size_out: int
    retval: int
    repeat: int
    duration: int
    flags: int
    cpu: int
    batch_size: int

class struct_bpf_prog_info(Protocol):
    type: int
    id: int
    tag: CData
    jited_prog_len: int
    xlated_prog_len: int
    nr_map_ids: int
    map_ids: int
    name: CData
    ifindex: int
    btf_id: int
    run_time_ns: int
    run_cnt: int

class struct_bpf_map_info(Protocol):
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    name: CData
    btf_id: int

class struct_fk_drainer_stats(Protocol):
    drains: int
    keys: int
    empty_values: int
    syscalls: int
    fallbacks: int
    mode: int
    active_map: int

class struct_fk_ringbuf_stats(Protocol):
    records: int
    malformed: int
    polls: int

class struct_fk_field(Protocol):
    offset: int
    width: int

class struct_fk_interface_map(Protocol):
    keys: CData
    values: CData
    count: int

class struct_fk_arrow_child(Protocol):
    kind: int
    column: int
    offset: int
    width: int
    dictionary: int

class struct_fk_arrow_strings(Protocol):
    offsets: CData
    data: CData
    count: int

class struct_fk_ipfix_params(Protocol):
    export_time: int
    sequence: int
    domain_id: int
    max_message: int
    template_base: int
    exporter_kind: int
    pad: int
    exporter_ip: CData
    enterprise: int

class _Lib:
    FKT_TCX_EGRESS: int
    FKT_TCX_INGRESS: int
    FKT_TC_EGRESS: int
    FKT_TC_INGRESS: int
    FK_ARROW_AGENT: int
    FK_ARROW_COLUMN: int
    FK_ARROW_GATED: int
    FK_ARROW_INTERFACE: int
    FK_ARROW_LIST: int
    FK_ARROW_NAMES: int
    FK_DRAIN_AUTO: int
    FK_DRAIN_ITERATE: int
    FK_DRAIN_LOOKUP_AND_DELETE_BATCH: int
    FK_DRAIN_LOOKUP_BATCH_THEN_DELETE: int
    FK_NAMES_DROP_REASON: int
    FK_NAMES_KINDS: int
    FK_NAMES_TCP_STATE: int
    @staticmethod
    def bpf_link_detach(link_fd: int, /) -> int: ...
    @staticmethod
    def bpf_map__autocreate(map: CData, /) -> bool: ...
    @staticmethod
    def bpf_map__fd(map: CData, /) -> int: ...
    @staticmethod
    def bpf_map__initial_value(map: CData, psize: CData, /) -> CData: ...
    @staticmethod
    def bpf_map__inner_map(map: CData, /) -> CData: ...
    @staticmethod
    def bpf_map__is_internal(map: CData, /) -> bool: ...
    @staticmethod
    def bpf_map__key_size(map: CData, /) -> int: ...
    @staticmethod
    def bpf_map__map_flags(map: CData, /) -> int: ...
    @staticmethod
    def bpf_map__max_entries(map: CData, /) -> int: ...
    @staticmethod
    def bpf_map__name(map: CData, /) -> CData: ...
    @staticmethod
    def bpf_map__reuse_fd(map: CData, fd: int, /) -> int: ...
    @staticmethod
    def bpf_map__set_autocreate(map: CData, autocreate: bool, /) -> int: ...
    @staticmethod
    def bpf_map__set_initial_value(map: CData, data: CData | bytes, size: int, /) -> int: ...
    @staticmethod
    def bpf_map__set_inner_map_fd(map: CData, fd: int, /) -> int: ...
    @staticmethod
    def bpf_map__set_map_flags(map: CData, flags: int, /) -> int: ...
    @staticmethod
    def bpf_map__set_max_entries(map: CData, max_entries: int, /) -> int: ...
    @staticmethod
    def bpf_map__value_size(map: CData, /) -> int: ...
    @staticmethod
    def bpf_map_delete_batch(fd: int, keys: CData | bytes, count: CData, opts: CData, /) -> int: ...
    @staticmethod
    def bpf_map_delete_elem(fd: int, key: CData | bytes, /) -> int: ...
    @staticmethod
    def bpf_map_get_fd_by_id(id: int, /) -> int: ...
    @staticmethod
    def bpf_map_get_next_key(fd: int, key: CData | bytes, next_key: CData, /) -> int: ...
    @staticmethod
    def bpf_map_lookup_and_delete_batch(
        fd: int,
        in_batch: CData,
        out_batch: CData,
        keys: CData,
        values: CData,
        count: CData,
        opts: CData,
        /,
    ) -> int: ...
    @staticmethod
    def bpf_map_lookup_and_delete_elem(fd: int, key: CData | bytes, value: CData, /) -> int: ...
    @staticmethod
    def bpf_map_lookup_batch(
        fd: int,
        in_batch: CData,
        out_batch: CData,
        keys: CData,
        values: CData,
        count: CData,
        opts: CData,
        /,
    ) -> int: ...
    @staticmethod
    def bpf_map_lookup_elem(fd: int, key: CData | bytes, value: CData, /) -> int: ...
    @staticmethod
    def bpf_map_lookup_elem_flags(
        fd: int,
        key: CData | bytes,
        value: CData,
        flags: int,
        /,
    ) -> int: ...
    @staticmethod
    def bpf_map_update_batch(
        fd: int,
        keys: CData | bytes,
        values: CData | bytes,
        count: CData,
        opts: CData,
        /,
    ) -> int: ...
    @staticmethod
    def bpf_map_update_elem(
        fd: int,
        key: CData | bytes,
        value: CData | bytes,
        flags: int,
        /,
    ) -> int: ...
    @staticmethod
    def bpf_obj_get_info_by_fd(bpf_fd: int, info: CData, info_len: CData, /) -> int: ...
    @staticmethod
    def bpf_object__close(obj: CData, /) -> None: ...
    @staticmethod
    def bpf_object__find_map_by_name(obj: CData, name: CData | bytes, /) -> CData: ...
    @staticmethod
    def bpf_object__find_program_by_name(obj: CData, name: CData | bytes, /) -> CData: ...
    @staticmethod
    def bpf_object__load(obj: CData, /) -> int: ...
    @staticmethod
    def bpf_object__name(obj: CData, /) -> CData: ...
    @staticmethod
    def bpf_object__next_map(obj: CData, map: CData, /) -> CData: ...
    @staticmethod
    def bpf_object__next_program(obj: CData, prog: CData, /) -> CData: ...
    @staticmethod
    def bpf_object__open_mem(obj_buf: CData | bytes, obj_buf_sz: int, opts: CData, /) -> CData: ...
    @staticmethod
    def bpf_prog_get_fd_by_id(id: int, /) -> int: ...
    @staticmethod
    def bpf_prog_test_run_opts(prog_fd: int, opts: CData, /) -> int: ...
    @staticmethod
    def bpf_program__autoload(prog: CData, /) -> bool: ...
    @staticmethod
    def bpf_program__fd(prog: CData, /) -> int: ...
    @staticmethod
    def bpf_program__flags(prog: CData, /) -> int: ...
    @staticmethod
    def bpf_program__log_level(prog: CData, /) -> int: ...
    @staticmethod
    def bpf_program__name(prog: CData, /) -> CData: ...
    @staticmethod
    def bpf_program__section_name(prog: CData, /) -> CData: ...
    @staticmethod
    def bpf_program__set_autoload(prog: CData, autoload: bool, /) -> int: ...
    @staticmethod
    def bpf_program__set_flags(prog: CData, flags: int, /) -> int: ...
    @staticmethod
    def bpf_program__set_log_buf(prog: CData, log_buf: CData, log_size: int, /) -> int: ...
    @staticmethod
    def bpf_program__set_log_level(prog: CData, log_level: int, /) -> int: ...
    @staticmethod
    def bpf_raw_tracepoint_open(name: CData | bytes, prog_fd: int, /) -> int: ...
    @staticmethod
    def fk_arrow_pool_stats(free_bytes: CData, blocks_in_use: CData, /) -> None: ...
    @staticmethod
    def fk_arrow_release(array: CData, /) -> None: ...
    @staticmethod
    def fk_cache_drainer_new(
        selector_fd: int,
        map0_fd: int,
        map1_fd: int,
        err: CData,
        /,
    ) -> CData: ...
    @staticmethod
    def fk_close_fd(fd: int, /) -> int: ...
    @staticmethod
    def fk_counter_sum(fd: int, index: int, ncpus: int, /) -> int: ...
    @staticmethod
    def fk_drainer_active(d: CData, /) -> int: ...
    @staticmethod
    def fk_drainer_drain(d: CData, t: CData, /) -> int: ...
    @staticmethod
    def fk_drainer_drain_map(d: CData, index: int, t: CData, /) -> int: ...
    @staticmethod
    def fk_drainer_free(d: CData, /) -> None: ...
    @staticmethod
    def fk_drainer_get_stats(d: CData, out: CData, /) -> None: ...
    @staticmethod
    def fk_drainer_new(
        selector_fd: int,
        map0_fd: int,
        map1_fd: int,
        ncpus: int,
        chunk: int,
        err: CData,
        /,
    ) -> CData: ...
    @staticmethod
    def fk_drainer_set_mode(d: CData, mode: int, /) -> int: ...
    @staticmethod
    def fk_encode_json(
        e: CData,
        flows: CData,
        n: int,
        out: CData,
        capacity: int,
        newline: int,
        offsets: CData,
        /,
    ) -> int: ...
    @staticmethod
    def fk_encode_records(
        e: CData,
        flows: CData,
        n: int,
        out: CData,
        capacity: int,
        offsets: CData,
        /,
    ) -> int: ...
    @staticmethod
    def fk_encode_records_message(
        e: CData,
        flows: CData,
        n: int,
        out: CData,
        capacity: int,
        /,
    ) -> int: ...
    @staticmethod
    def fk_encoder_free(e: CData, /) -> None: ...
    @staticmethod
    def fk_encoder_json_bound(e: CData, n: int, /) -> int: ...
    @staticmethod
    def fk_encoder_new(
        if_ids: CData,
        name_offsets: CData,
        names: CData | bytes,
        n_names: int,
        agent_text: CData | bytes,
        agent_text_len: int,
        agent_ip16: CData | bytes,
        err: CData,
        /,
    ) -> CData: ...
    @staticmethod
    def fk_encoder_records_bound(e: CData, n: int, /) -> int: ...
    @staticmethod
    def fk_encoder_set_names(
        e: CData,
        kind: int,
        values: CData,
        name_offsets: CData,
        names: CData | bytes,
        n: int,
        /,
    ) -> int: ...
    @staticmethod
    def fk_extra_drainer_new(
        selector_fd: int,
        map0_fd: int,
        map1_fd: int,
        ncpus: int,
        chunk: int,
        err: CData,
        /,
    ) -> CData: ...
    @staticmethod
    def fk_extra_merge(into: CData, from_: CData, /) -> None: ...
    @staticmethod
    def fk_flow_arrow(
        rows: CData,
        nrows: int,
        plan: CData,
        nchildren: int,
        interfaces: CData,
        dictionaries: CData,
        ndictionaries: int,
        err: CData,
        /,
    ) -> CData: ...
    @staticmethod
    def fk_flow_column_layout(out: CData, max: int, /) -> int: ...
    @staticmethod
    def fk_format_ip16(ip: CData | bytes, out: CData, /) -> int: ...
    @staticmethod
    def fk_ipfix_bound(names: CData, p: CData, n: int, /) -> int: ...
    @staticmethod
    def fk_ipfix_encode(
        names: CData,
        flows: CData,
        n: int,
        p: CData,
        out: CData,
        capacity: int,
        ends: CData,
        records: CData,
        /,
    ) -> int: ...
    @staticmethod
    def fk_ipfix_names_free(names: CData, /) -> None: ...
    @staticmethod
    def fk_ipfix_names_new(
        keys: CData,
        name_offsets: CData,
        names: CData | bytes,
        n_names: int,
        err: CData,
        /,
    ) -> CData: ...
    @staticmethod
    def fk_ipfix_record_max(names: CData, p: CData, /) -> int: ...
    @staticmethod
    def fk_ipfix_template_message(p: CData, out: CData, capacity: int, /) -> int: ...
    @staticmethod
    def fk_json_escape(text: CData | bytes, len: int, out: CData, /) -> int: ...
    @staticmethod
    def fk_map_create(
        map_type: int,
        key_size: int,
        value_size: int,
        max_entries: int,
        inner_map_fd: int,
        /,
    ) -> int: ...
    @staticmethod
    def fk_map_info(
        fd: int,
        type: CData,
        key_size: CData,
        value_size: CData,
        max_entries: CData,
        id: CData,
        /,
    ) -> int: ...
    @staticmethod
    def fk_map_lookup(fd: int, key: CData | bytes, value: CData, /) -> int: ...
    @staticmethod
    def fk_map_update(fd: int, key: CData | bytes, value: CData | bytes, flags: int, /) -> int: ...
    @staticmethod
    def fk_otlp_bound(names: CData, n: int, /) -> int: ...
    @staticmethod
    def fk_otlp_log_records(
        names: CData,
        flows: CData,
        n: int,
        out: CData,
        capacity: int,
        ends: CData,
        /,
    ) -> int: ...
    @staticmethod
    def fk_possible_cpus() -> int: ...
    @staticmethod
    def fk_ringbuf_get_stats(r: CData, out: CData, /) -> None: ...
    @staticmethod
    def fk_ringbuf_poll_into_table(
        r: CData,
        t: CData,
        limit: int,
        out: CData,
        capacity: int,
        boot_offset_ns: int,
        out_len: CData,
        timeout_ms: int,
        /,
    ) -> int: ...
    @staticmethod
    def fk_ringbuf_read_records(r: CData, out: CData, capacity: int, timeout_ms: int, /) -> int: ...
    @staticmethod
    def fk_ringbuf_reader_free(r: CData, /) -> None: ...
    @staticmethod
    def fk_ringbuf_reader_new(ringbuf_fd: int, err: CData, /) -> CData: ...
    @staticmethod
    def fk_ringbuf_wait(r: CData, timeout_ms: int, /) -> int: ...
    @staticmethod
    def fk_ringbuf_wake(r: CData, /) -> int: ...
    @staticmethod
    def fk_table_absorb(
        t: CData,
        src: CData,
        limit: int,
        out: CData,
        capacity: int,
        boot_offset_ns: int,
        out_len: CData,
        /,
    ) -> int: ...
    @staticmethod
    def fk_table_add_records(t: CData, records: CData, n: int, limit: int, /) -> int: ...
    @staticmethod
    def fk_table_add_records_evicting(
        t: CData,
        records: CData,
        n: int,
        limit: int,
        out: CData,
        capacity: int,
        boot_offset_ns: int,
        out_len: CData,
        /,
    ) -> int: ...
    @staticmethod
    def fk_table_clear(t: CData, /) -> None: ...
    @staticmethod
    def fk_table_evict(t: CData, out: CData, capacity: int, boot_offset_ns: int, /) -> int: ...
    @staticmethod
    def fk_table_free(t: CData, /) -> None: ...
    @staticmethod
    def fk_table_len(t: CData, /) -> int: ...
    @staticmethod
    def fk_table_merge(t: CData, key: CData, value: CData, /) -> int: ...
    @staticmethod
    def fk_table_merge_extra(t: CData, key: CData, extra: CData, /) -> int: ...
    @staticmethod
    def fk_table_new(expected_flows: int, /) -> CData: ...
    @staticmethod
    def fk_table_take_records(t: CData, out: CData, capacity: int, /) -> int: ...
    @staticmethod
    def fk_value_merge(into: CData, from_: CData, /) -> None: ...
    @staticmethod
    def fkl_libbpf_log(level: int, message: CData | bytes, /) -> None: ...
    @staticmethod
    def fkl_libbpf_restore_log() -> None: ...
    @staticmethod
    def fkl_libbpf_route_log_to_python() -> None: ...
    @staticmethod
    def fkl_map_create(
        map_type: int,
        map_name: CData | bytes,
        key_size: int,
        value_size: int,
        max_entries: int,
        opts: CData,
        /,
    ) -> int: ...
    @staticmethod
    def fkl_map_type(map: CData, /) -> int: ...
    @staticmethod
    def fkl_program_expected_attach_type(prog: CData, /) -> int: ...
    @staticmethod
    def fkl_program_set_expected_attach_type(prog: CData, type: int, /) -> int: ...
    @staticmethod
    def fkl_program_set_type(prog: CData, type: int, /) -> int: ...
    @staticmethod
    def fkl_program_type(prog: CData, /) -> int: ...
    @staticmethod
    def fkt_tc_attach(
        ifindex: int,
        attach_point: int,
        handle: int,
        priority: int,
        prog_fd: int,
        prog_id: CData,
        /,
    ) -> int: ...
    @staticmethod
    def fkt_tc_detach(ifindex: int, attach_point: int, handle: int, priority: int, /) -> int: ...
    @staticmethod
    def fkt_tc_hook_create(ifindex: int, /) -> int: ...
    @staticmethod
    def fkt_tc_hook_destroy(ifindex: int, /) -> int: ...
    @staticmethod
    def fkt_tc_query(
        ifindex: int,
        attach_point: int,
        handle: int,
        priority: int,
        prog_id: CData,
        /,
    ) -> int: ...
    @staticmethod
    def fkt_tcx_link_create(prog_fd: int, ifindex: int, attach_type: int, /) -> int: ...
    @staticmethod
    def libbpf_num_possible_cpus() -> int: ...

lib: _Lib
