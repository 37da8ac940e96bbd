"""`sdkit serve`: check the settings, recover the queue, and run the app under uvicorn until Ctrl-C / SIGTERM."""

from __future__ import annotations

import shutil
import sys

from sdkit.server.config import ServerConfig, check


def serve(config: ServerConfig, *, log_level: str = "warning") -> None:
    import uvicorn

    from sdkit.server.app import create_app
    from sdkit.server.workers import Hub

    check(config)
    config.state.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(config.state / "unsaved", ignore_errors=True)  # images of A1111 requests no client will read now
    hub = Hub(config)
    for what, ids in hub.recovered.items():
        if ids:
            then = "marked interrupted" if what == "interrupted" else "queued again, to resume from their last checkpoint"
            print(f"sdkit serve: job(s) {', '.join(map(str, ids))} were running when the server stopped: {then}",
                  file=sys.stderr)  # fmt: skip
    app = create_app(config, hub)
    print(f"sdkit serve: {config.url}  (outputs {config.output_dir}, queue {config.state / 'queue.sqlite3'}, "
          f"{len(config.devices)} worker(s): {', '.join(config.devices)})", file=sys.stderr, flush=True)  # fmt: skip
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level, timeout_graceful_shutdown=5)
