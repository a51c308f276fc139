"""The lazyimage operator: LazyImage objects, the pod watch and prefetch orders."""
