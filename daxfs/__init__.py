"""daxfs: filesystem-DAX emulation over FUSE, backed by one pmem image file.

Layering (each module one job, lower layers never import higher ones):
pmem (device, persistence ops) <- format (on-media layout) <- journal, alloc,
extents, directory, inode <- fs (filesystem logic) <- fuse_ops (pyfuse3
translation) <- daemon <- cli.
"""

__version__ = "0.1.0"
