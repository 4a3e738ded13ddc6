"""Running the ``patchflow`` command in tests: :class:`CLI` (``from clirun import CLI``).

(A plain module, not a ``conftest.py``: a second ``conftest`` module would shadow
``tests/conftest.py`` for the tests that ``from conftest import ...``.)

``cli.run(...)`` starts the installed ``patchflow`` console script in a fresh process (the
real command: its own interpreter, environment and exit status); ``cli.call(...)`` runs the
same entry point in this process, output and exit status captured the same way. A process
costs about a second of imports (two or three more with torch), so each feature gets at
least one ``run`` and its other cases ``call`` (with ``sys.path``/``os.environ`` patched
where the subprocess would get ``PYTHONPATH`` or an environment variable). Both return a
:class:`subprocess.CompletedProcess`.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path


class CLI:
    """The ``patchflow`` command, run as a subprocess or in-process."""

    script = Path(sys.executable).parent / "patchflow"

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        pre: str | None = None,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        """The installed command in a fresh process; with ``pre``, ``python -c`` running
        that code first (e.g. :func:`blocker`), then the same entry point."""
        if pre is not None:
            code = f"{pre}\nimport sys\nfrom patchflow.__main__ import main\nsys.exit(main())"
            argv = [sys.executable, "-c", code, *args]
        elif self.script.exists():
            argv = [str(self.script), *args]
        else:  # pragma: no cover - an environment without the console script
            argv = [sys.executable, "-m", "patchflow", *args]
        full = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
        return subprocess.run(argv, capture_output=True, text=True, env=full, timeout=timeout)

    def call(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``patchflow.cli.main(args)`` in this process, its output captured."""
        from patchflow.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(list(args))
        return subprocess.CompletedProcess(list(args), status, out.getvalue(), err.getvalue())

    @staticmethod
    def ok(proc: subprocess.CompletedProcess[str]) -> str:
        """stdout of a command that must succeed."""
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    @staticmethod
    def error(proc: subprocess.CompletedProcess[str], status: int) -> str:
        """The one stderr line of a failed command, checking the exit status."""
        assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("patchflow: error: "), proc.stderr
        assert "Traceback" not in proc.stderr
        return lines[0]

    @staticmethod
    def blocker(*modules: str) -> str:
        """Code making ``modules`` unimportable (a meta-path finder), as if not installed."""
        names = ", ".join(repr(m) for m in modules)
        return (
            "import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in ({names},):\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Block())\n"
        )
