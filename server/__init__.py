"""The HTTP side: FastAPI app, routes, auth, errors, image codec, CLI (`python -m server`)."""
