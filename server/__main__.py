"""`python -m server [--host H] [--port P] [--models-dir D] [--device cpu|cuda] ...`"""
from __future__ import annotations

import logging

import uvicorn

from server.app import create_app
from server.config import from_args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = from_args(argv)
    app = create_app(config)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
