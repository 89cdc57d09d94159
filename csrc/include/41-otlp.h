/* flowkit OTLP log records (csrc/native/otlp.c, flowkit/otlp.py).
 *
 * Serializes one opentelemetry.proto.logs.v1.LogRecord per flow, each already framed as the
 * `log_records` field (2) of a ScopeLogs message, so that Python only wraps the blob in
 * ScopeLogs / ResourceLogs / ExportLogsServiceRequest. The bytes equal what the protobuf runtime
 * writes for the records flowkit/otlp.py builds (reference_request); tests/unit/test_otlp.py
 * checks it on random batches. Interface names come from a struct fk_ipfix_names table. */
#ifndef FLOWKIT_OTLP_H
#define FLOWKIT_OTLP_H

#include <stdint.h>
#include "flow.h"
#include "40-ipfix.h"

/* Output size that is always enough for n flows. */
uint64_t fk_otlp_bound(const struct fk_ipfix_names *names, uint64_t n);

/* The n flows as framed LogRecords; `ends[i]` (if not NULL) receives the end offset of flow i.
 * Returns the bytes written, -ENOSPC when capacity is below fk_otlp_bound. */
int64_t fk_otlp_log_records(const struct fk_ipfix_names *names, const struct fk_flow_out *flows,
                            uint64_t n, uint8_t *out, uint64_t capacity, uint64_t *ends);

#endif
