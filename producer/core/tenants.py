"""Tenants: every job, batch and API key belongs to one, named by the caller.

A tenant is a name, not a record: it is created by using it (`enqueue(..., tenant="acme")`,
`videoqueue keys create --tenant acme`). Its name travels in Redis keys (the tenant's job
index, its idempotency claims), so it is kept to a few safe characters.
"""

from __future__ import annotations

import re

from producer.core.errors import InvalidRequest

# The tenant of everything enqueued without one: every job before tenants existed too.
DEFAULT_TENANT = "default"
# No ":" or "@": a tenant's name is part of key names (producer/core/names.py), and these
# two separate the name from what follows it there.
_TENANT = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_tenant(tenant: object) -> str:
    """The tenant's name (DEFAULT_TENANT for None).

    Raises:
        InvalidRequest: naming `tenant`, when it is not 1-64 of A-Z a-z 0-9 . _ -.
    """
    if tenant is None:
        return DEFAULT_TENANT
    if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
        raise InvalidRequest.of_field("tenant", "1-64 characters of letters, digits and ._-")
    return tenant
