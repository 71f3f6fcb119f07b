"""A real MLflow tracking server on a real PostgreSQL for the tests, started and stopped by
scripts/mlflow-server.sh on free ports; `skip_reason()` says why a machine cannot run one."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "mlflow-server.sh"
START_TIMEOUT_S = 360  # first start creates MLflow's schema; a loaded 2-core machine needed 100 s


def skip_reason() -> str | None:
    """Why no server can start here, or None."""
    if not os.environ.get("AWO_PG_BIN") and not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"):
        return "no PostgreSQL binaries in /usr/lib/postgresql/*/bin (Debian's postgresql; `make services`)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root needs runuser to start PostgreSQL as the postgres user"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "no 'postgres' system user (Debian's postgresql package creates it)"
    if shutil.which("curl") is None:
        return "curl is missing (the script waits for /health with it)"
    return None


@dataclass
class MlflowServer:
    """scripts/mlflow-server.sh's pair in `folder` (which the postgres user must be able to reach)."""

    folder: Path
    port: int = 0
    pg_port: int = 0
    start_seconds: list[float] = field(default_factory=list)

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def artifacts(self) -> Path:
        return self.folder / "artifacts"

    def script(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "AWO_MLFLOW_WORKERS": "1"}  # 2 shared cores
        return subprocess.run([str(SCRIPT), *args, "--dir", str(self.folder)], env=env, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip

    def start(self) -> str:
        """Start on fresh free ports; returns the script's stdout (the eval-able tracking URI line)."""
        self.port, self.pg_port = free_port(), free_port()
        began = time.monotonic()
        done = self.script("start", "--port", str(self.port), "--pg-port", str(self.pg_port),
                           timeout=START_TIMEOUT_S)  # fmt: skip
        self.start_seconds.append(time.monotonic() - began)
        if done.returncode != 0:
            log = self.folder / "mlflow.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"mlflow-server.sh start failed: {done.stderr.strip()}\n{tail}")
        return done.stdout

    def stop(self) -> None:
        self.script("stop")

    def postgres(self) -> Any:
        """A psycopg2 connection to the `mlflow` database, with the password the script keeps."""
        import psycopg2

        password = (self.folder / "pgpass").read_text().strip().rsplit(":", 1)[1]
        return psycopg2.connect(host="127.0.0.1", port=self.pg_port, user="postgres", password=password,
                                dbname="mlflow", connect_timeout=10)  # fmt: skip
