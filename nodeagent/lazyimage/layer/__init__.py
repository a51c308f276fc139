"""One remote layer as a filesystem tree, without FUSE: the overlayfs view of a TOC
(whiteouts, opaque directories, hidden landmarks, hardlinks), file reads through a chunk
reader, and the access recorder that yields a startup profile.
"""

from lazyimage.layer._layer import Following, ReadChunks, ReadSlice, RemoteLayer
from lazyimage.layer._recorder import AccessRecorder, ProfileEntry
from lazyimage.layer._tree import OPAQUE_XATTR, ROOT, Attr, LayerTree

__all__ = [
    "OPAQUE_XATTR",
    "ROOT",
    "AccessRecorder",
    "Attr",
    "Following",
    "LayerTree",
    "ProfileEntry",
    "ReadChunks",
    "ReadSlice",
    "RemoteLayer",
]
