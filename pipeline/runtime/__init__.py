"""The runtime: the device worker and its queue, the running job's state, and the typed errors."""
