"""The local stack under supervisord: render its config, start tiers in order, wait for health, stop.

supervisord restarts a crashed process with backoff; this module only adds what it lacks: start in dependency
order and wait for each service's own health probe.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from actors.settings import Settings
from ops.stack.bootstrap import bootstrap
from ops.stack.services import ROOT, VENV_BIN, Service, all_services

log = structlog.get_logger("stack")


class StackError(RuntimeError):
    """A service did not become healthy; the message carries its log tail."""


def settings_env(s: Settings) -> dict[str, str]:
    """Every setting as a MESH_* variable, so children see exactly the launcher's settings."""
    env: dict[str, str] = {}
    for name, value in s.model_dump().items():
        if value is None:
            continue
        env[f"MESH_{name.upper()}"] = str(value.resolve() if isinstance(value, Path) else value)
    env["MESH_DATA_DIR"] = str(s.data_dir.resolve())
    env["MESH_MODEL_REPOSITORY"] = str((ROOT / s.model_repository).resolve())
    return env


def _quote(v: str) -> str:
    # supervisord expands %(...)s; a literal % in a value must be doubled
    return v.replace("%", "%%")


@dataclass
class Stack:
    """The whole local mesh under one supervisord, with its files under ``settings.data_dir``."""

    settings: Settings
    only: tuple[str, ...] | None = None  # a subset of service names (tests that need fewer servers)

    @property
    def services(self) -> list[Service]:
        svcs = all_services(self.settings)
        return [x for x in svcs if self.only is None or x.name in self.only]

    @property
    def run_dir(self) -> Path:
        return self.settings.run_dir.resolve()

    @property
    def log_dir(self) -> Path:
        return self.settings.log_dir.resolve()

    @property
    def conf_path(self) -> Path:
        return self.run_dir / "supervisord.conf"

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    # --- config -----------------------------------------------------------------------------------------
    def render(self) -> str:
        run, logs = self.run_dir, self.log_dir
        lines = [
            "[unix_http_server]",
            f"file={run / 'supervisor.sock'}",
            "chmod=0700",
            "[supervisord]",
            f"logfile={logs / 'supervisord.log'}",
            f"pidfile={run / 'supervisord.pid'}",
            "nodaemon=true",
            "minfds=4096",
            f"directory={ROOT}",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "[supervisorctl]",
            f"serverurl=unix://{run / 'supervisor.sock'}",
        ]
        for svc in self.services:
            # exec keeps the pid, so the pid file names the real server process
            cmd = f"echo $$ > {shlex.quote(str(self.pid_file(svc.name)))}; exec {shlex.join(svc.argv)}"
            env = ",".join(f'{k}="{_quote(v)}"' for k, v in svc.env.items())
            lines += [
                f"[program:{svc.name}]",
                f"command=/bin/sh -c {_quote(shlex.quote(cmd))}",
                f"directory={ROOT}",
                "autostart=false",
                "autorestart=true",
                "startsecs=2",
                "startretries=1000",
                f"priority={100 + svc.tier * 10}",
                "stopsignal=TERM",
                f"stopwaitsecs={svc.stop_wait_s}",
                "stopasgroup=true",
                "killasgroup=true",
                "redirect_stderr=true",
                f"stdout_logfile={logs / (svc.name + '.log')}",
                "stdout_logfile_maxbytes=20MB",
                "stdout_logfile_backups=2",
            ]
            if env:
                lines.append(f"environment={env}")
        return "\n".join(lines) + "\n"

    # --- lifecycle --------------------------------------------------------------------------------------
    def launch_supervisord(self) -> subprocess.Popen[bytes]:
        """Start supervisord (no programs yet) as a child in its own process group."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.touch(mode=0o600)  # it holds credentials
        self.conf_path.write_text(self.render())
        env = {**os.environ, **settings_env(self.settings)}
        out = open(self.log_dir / "supervisord.out", "ab")
        proc = subprocess.Popen(
            [str(VENV_BIN / "supervisord"), "-c", str(self.conf_path)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while self.ctl("pid").returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"supervisord did not start:\n{self.tail('supervisord', 30)}")
            time.sleep(0.2)
        return proc

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "supervisorctl"), "-c", str(self.conf_path), *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def start(self, timeout_s: float = 300) -> None:
        """Start every service tier by tier; each tier must be healthy before the next one starts."""
        tiers = sorted({s.tier for s in self.services})
        for tier in tiers:
            group = [s for s in self.services if s.tier == tier]
            for svc in group:
                self.ctl("start", svc.name)
            self.wait_healthy(group, timeout_s)
            for svc in group:
                log.info("stack.healthy", service=svc.name)
            # the streams every later process expects, the bucket policy, the layout (ops/stack/bootstrap.py)
            servers = tuple(svc.name for svc in group if svc.name in ("nats", "redis", "s3"))
            if servers:
                bootstrap(self.settings, servers=servers)

    def start_service(self, name: str, timeout_s: float = 120) -> None:
        self.ctl("start", name)
        self.wait_healthy([s for s in self.services if s.name == name], timeout_s)

    def stop_service(self, name: str) -> None:
        self.ctl("stop", name)

    def wait_healthy(self, group: list[Service], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = {s.name: s for s in group}
        problems: dict[str, str | None] = {}
        while waiting:
            problems = {n: s.probe() for n, s in waiting.items()}
            for n, p in problems.items():
                if p is None:
                    waiting.pop(n)
            if waiting and time.monotonic() > deadline:
                name = next(iter(waiting))
                raise StackError(
                    f"{name} is not healthy after {timeout_s:.0f}s ({problems[name]}); "
                    f"last lines of {self.log_dir / (name + '.log')}:\n{self.tail(name, 40)}"
                )
            if waiting:
                time.sleep(0.5)

    def health(self) -> dict[str, str | None]:
        """Each service's problem, or None when healthy."""
        return {s.name: s.probe() for s in self.services}

    def shutdown(self, timeout_s: float = 120) -> None:
        """Stop every service in reverse tier order, then supervisord itself."""
        if not (self.run_dir / "supervisor.sock").exists():
            return
        for tier in sorted({s.tier for s in self.services}, reverse=True):
            names = [s.name for s in self.services if s.tier == tier]
            self.ctl("stop", *names)
        self.ctl("shutdown")
        pid = self.supervisord_pid()
        deadline = time.monotonic() + timeout_s
        while pid and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid and _alive(pid):
            os.killpg(pid, signal.SIGKILL)

    def supervisord_pid(self) -> int | None:
        return _read_pid(self.run_dir / "supervisord.pid")

    def pids(self) -> dict[str, int | None]:
        return {s.name: _read_pid(self.pid_file(s.name)) for s in self.services}

    def tail(self, name: str, n: int) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); treat it as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False
