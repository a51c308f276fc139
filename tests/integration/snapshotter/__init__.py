"""The snapshotter service over real overlayfs mounts, containerd's own snapshotter test suite,
and a real containerd using it as a proxy plugin."""
