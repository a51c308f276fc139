"""The node agent: wiring of the lazy filesystem, cache, fetcher and snapshotter."""
