"""The sandbox provider: a local, faithful stand-in for the video-generation API.

In-process::

    from ops.sandbox import Sandbox, SandboxConfig

    sb = Sandbox(SandboxConfig(flavor="router", api_key="sk-test", fast=True))
    with sb.serve() as url:
        ...

From a shell: ``videoqueue sandbox --port 8300 --api-key sk-test --flavor router``.
"""

from .config import SandboxConfig
from .service import Sandbox

__all__ = ["Sandbox", "SandboxConfig"]
