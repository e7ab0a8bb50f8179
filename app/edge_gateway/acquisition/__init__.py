"""Line threads that poll devices and hand frames to the bus; never touch the disk."""
