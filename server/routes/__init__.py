"""Route modules, one per area of the API. Each exposes `router`."""
