"""The gRPC gateway in front of Triton: ``matteserve.v1.BackgroundRemoval`` with limits, auth and metrics.

``GatewayProcess(GatewayConfig(tritons=("127.0.0.1:8001",))).start()`` runs one in a child process;
``matteserve gateway --help`` lists its options. Its API (proto and stubs) is matteserve.api.
"""

from matteserve.gateway.config import GatewayConfig, TLSConfig
from matteserve.gateway.launcher import GatewayProcess

__all__ = ["GatewayConfig", "GatewayProcess", "TLSConfig"]
