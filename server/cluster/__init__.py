"""Scale-out on Ray Serve (imported only with --workers / --ray-address): see launch.py."""
