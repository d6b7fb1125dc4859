"""Native runs only: makes the ``wit_world`` bindings importable outside a component.

Inside a component componentize-py provides them; in CPython (the native tests) they are
generated with ``componentize-py bindings`` into ``.bindings/`` of the project, once per
contract and world, from the project's ``pyproject.toml`` ``[tool.pgferry]`` table.
"""

import subprocess
import sys
import tomllib
from pathlib import Path


def ensure() -> None:
    try:
        import wit_world  # noqa: F401
        return
    except ImportError:
        pass
    # The tests run from the project's directory, as `python3 -m unittest discover -s tests`.
    project = Path.cwd()
    try:
        with open(project / "pyproject.toml", "rb") as f:
            tool = tomllib.load(f)["tool"]["pgferry"]
    except (OSError, KeyError) as e:
        sys.exit(f"run the tests from the plugin project's directory: {project / 'pyproject.toml'} with a [tool.pgferry] table is needed ({e!r})")
    out = project / ".bindings"
    marker = out / ".generated-from"
    wanted = f"{tool['wit']} {tool['world']}"
    if not (marker.exists() and marker.read_text() == wanted):
        cmd = ["componentize-py", "-d", str(project / tool["wit"]), "-w", tool["world"], "bindings", str(out)]
        try:
            subprocess.run(cmd, check=True)
        except FileNotFoundError:
            sys.exit("componentize-py is not installed: run `pip install componentize-py==0.25.1` (it generates the WIT bindings the tests use)")
        marker.write_text(wanted)
    sys.path.insert(0, str(out))

