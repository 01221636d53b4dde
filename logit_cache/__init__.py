"""The HDF5 logit cache: format, writer, reader (see FORMAT.md for the file layout).

A standalone component: it imports only numpy, h5py and the standard library.
"""

from .format import FORMAT_NAME, FORMAT_VERSION, SUPPORTED_VERSIONS, CacheFormatError
from .info import summarize
from .reader import LogitCacheReader
from .writer import LogitCacheWriter

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SUPPORTED_VERSIONS",
    "CacheFormatError",
    "LogitCacheReader",
    "LogitCacheWriter",
    "summarize",
]
