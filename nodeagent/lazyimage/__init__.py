"""lazyimage: lazy and pre-warmed container image loading for Kubernetes."""

__version__ = "0.1.0"
