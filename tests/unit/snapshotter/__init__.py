"""Unit tests of lazyimage.snapshotter."""
