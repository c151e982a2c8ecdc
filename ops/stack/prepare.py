"""What must exist before the stack starts: the data folders and the active model's files."""

from __future__ import annotations

from actors.settings import Settings


def prepare(s: Settings) -> None:
    for sub in ("run", "log", "nats", "redis", "s3"):
        (s.data_dir / sub).mkdir(parents=True, exist_ok=True)
    from ops.models.repository import ensure_models  # model export is heavy: imported only when needed

    ensure_models(s)
