"""Storage drivers of the registry server: the interface and the name -> factory table."""

from __future__ import annotations

from strata.registry.server.storage.base import BlobStat as BlobStat
from strata.registry.server.storage.base import DriverFactory as DriverFactory
from strata.registry.server.storage.base import StorageDriver as StorageDriver
from strata.registry.server.storage.base import UploadOffsetError as UploadOffsetError
from strata.registry.server.storage.base import UploadStatus as UploadStatus
from strata.registry.server.storage.base import available_drivers as available_drivers
from strata.registry.server.storage.base import open_driver as open_driver
from strata.registry.server.storage.base import register_driver as register_driver

__all__ = [
    "BlobStat",
    "DriverFactory",
    "StorageDriver",
    "UploadOffsetError",
    "UploadStatus",
    "available_drivers",
    "open_driver",
    "register_driver",
]
