"""The Zarr v3 feature cache: schema, writer (chunk-aligned, resumable), reader and ``info``."""

from omnifuse.cache.fingerprint import cache_fingerprint, fingerprint_differences
from omnifuse.cache.info import cache_info, format_info
from omnifuse.cache.reader import Cache, CacheData, LabelData, ModalityData, load_cache, open_cache, to_torch
from omnifuse.cache.schema import (
    SCHEMA_VERSION,
    CacheError,
    CacheSpec,
    IncompleteCacheError,
    ModalitySpec,
    SchemaMismatchError,
    TaskSpec,
)
from omnifuse.cache.writer import CacheWriter

__all__ = [
    "SCHEMA_VERSION",
    "Cache",
    "CacheData",
    "CacheError",
    "CacheSpec",
    "CacheWriter",
    "IncompleteCacheError",
    "LabelData",
    "ModalityData",
    "ModalitySpec",
    "SchemaMismatchError",
    "TaskSpec",
    "cache_fingerprint",
    "cache_info",
    "fingerprint_differences",
    "format_info",
    "load_cache",
    "open_cache",
    "to_torch",
]
