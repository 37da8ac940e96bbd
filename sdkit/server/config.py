"""The server's settings (`sdkit serve` flags) and the checks made before anything starts.

Listening beyond the loopback interface needs `--api-auth` (HTTP basic, as A1111's `--api-auth user:pass[,user:pass]`)
or an explicit `--insecure`: an open generation server is a free GPU for anyone on the network.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from sdkit.errors import UserError

STATE_FOLDER = ".sdkit-server"  # under the output folder unless --state-dir: queue.sqlite3, uploads/, jobs/


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 7860
    output_dir: Path = Path("outputs")
    state_dir: Path | None = None
    models_dir: Path | None = None
    api_auth: str | None = None
    insecure: bool = False
    cors_allow_origins: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("auto",)
    dtype: str = "auto"
    max_loaded_models: int = 2  # warm pipelines per worker; the least recently used one is dropped past it
    memory_limit_mb: int | None = None  # and past this many MB of weights (estimated from the files before loading)
    queue_limit: int = 100  # queued jobs; more is 429 with Retry-After
    max_body_mb: int = 64  # request bodies; more is 413
    max_images: int = 100  # images one request may ask for (batch_size x n_iter, num_images)

    @property
    def state(self) -> Path:
        return Path(self.state_dir) if self.state_dir is not None else Path(self.output_dir) / STATE_FOLDER

    @property
    def credentials(self) -> dict[str, str]:
        return parse_auth(self.api_auth) if self.api_auth else {}

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_auth(text: str) -> dict[str, str]:
    """A1111's --api-auth: `user:password`, several separated by commas."""
    users = {}
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise UserError(f"--api-auth {item.strip()!r}: write USER:PASSWORD (several separated by commas)")
        users[user] = password
    return users


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check(config: ServerConfig) -> None:
    """Refuse settings that would expose the server or cannot work; creates nothing."""
    if not 0 < config.port < 65536:
        raise UserError(f"--port {config.port}: give a port in 1..65535")
    config.credentials  # noqa: B018 - parses --api-auth, raising on a malformed one
    if not is_loopback(config.host) and not config.api_auth and not config.insecure:
        raise UserError(
            f"--host {config.host} listens beyond this machine: add --api-auth USER:PASSWORD, or --insecure to serve "
            "without authentication"
        )
    if config.models_dir is not None and not Path(config.models_dir).is_dir():
        raise UserError(f"--models-dir {config.models_dir}: no such folder")
    for name, value, low in (("--max-loaded-models", config.max_loaded_models, 1), ("--queue-limit", config.queue_limit, 1),
                             ("--max-body-mb", config.max_body_mb, 1), ("--max-images", config.max_images, 1)):  # fmt: skip
        if value < low:
            raise UserError(f"{name} {value}: give at least {low}")
    if config.memory_limit_mb is not None and config.memory_limit_mb < 1:
        raise UserError(f"--memory-limit-mb {config.memory_limit_mb}: give a positive number of MB")
    for origin in config.cors_allow_origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise UserError(f"--cors-allow-origins {origin!r}: give origins such as http://localhost:3000 (or *)")
