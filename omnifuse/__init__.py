"""omnifuse: multimodal clinical fusion with missing modalities (OmniFuse and baselines) on a feature cache."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("omnifuse")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"
