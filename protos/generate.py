"""Regenerate wool's protobuf messages from ``protos/`` with betterproto2.

Usage: ``python protos/generate.py [--check]``. Messages only: the grpclib
service mapping is hand-written in ``wool.transport``. With ``--check`` nothing is
written; the exit status says whether the committed code is current.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
TARGET = ROOT / "src" / "wool" / "transport" / "_protocol"


def generate(out: Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    # The betterproto2 plugin and the ruff it formats with live beside this Python.
    env = dict(
        os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_betterproto2_out={out}",
            "--python_betterproto2_opt=client_generation=none,server_generation=none",
            *sources,
        ],
        check=True,
        cwd=PROTOS,
        env=env,
    )


def differences(a: Path, b: Path) -> list[str]:
    files_a = {p.relative_to(a) for p in a.rglob("*.py")}
    files_b = {p.relative_to(b) for p in b.rglob("*.py")}
    changed = [str(p) for p in files_a & files_b if not filecmp.cmp(a / p, b / p, shallow=False)]
    return sorted(changed + [str(p) for p in files_a ^ files_b])


def main() -> int:
    check = "--check" in sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="wool-proto-") as tmp:
        out = Path(tmp)
        generate(out)
        if check:
            stale = differences(out, TARGET)
            if stale:
                print(
                    "generated protobuf code is stale; run `make proto`:",
                    *stale,
                    sep="\n  ",
                    file=sys.stderr,
                )
                return 1
            return 0
        if TARGET.exists():
            shutil.rmtree(TARGET)
        shutil.copytree(out, TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
