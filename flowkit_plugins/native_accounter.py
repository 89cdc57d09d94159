"""The ``native`` accounter (the default ACCOUNTER): flow aggregation in C.

Same results as the ``python`` reference accounter, at a fraction of the cost: records are
merged in a C hash table, the kernel flow maps are drained with batch syscalls (flipping between
two maps so no packet is lost) and the ring buffer is consumed by a C callback. See
:mod:`flowkit.accounting` and ``docs/accounter.md``.
"""

from __future__ import annotations

from flowkit import hookimpl
from flowkit.components import AccounterSpec, ComponentContext


def _make(context: ComponentContext) -> object:
    # Imported here so that listing plugins does not load the C extension.
    from flowkit.accounting import NativeAccounter

    return NativeAccounter(
        context.tracer, context.config.cache_max_flows, metrics=context.metrics
    )


@hookimpl
def flowkit_accounters() -> list[AccounterSpec]:
    """The ``native`` accounter."""
    return [
        AccounterSpec(
            name="native",
            factory=_make,
            description="C accounter: kernel map drains, ring buffer and merging in C (default)",
        )
    ]
