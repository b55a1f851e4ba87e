"""Print the bad-input catalogue as a Markdown table (for docs/reliability.md).

    .venv/bin/python tests/helpers/catalogue_table.py
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import pytest  # noqa: E402

from test_bad_inputs import CASES, MONKEYPATCHED  # noqa: E402

print("| # | input | error | message |\n|---|---|---|---|")
rows = list(CASES.items())
for i, (name, build) in enumerate(rows, 1):
    with tempfile.TemporaryDirectory() as tmp:
        action, error, _ = build(Path(tmp))
        try:
            action()
            message = "NOT RAISED"
        except Exception as exc:  # noqa: BLE001
            message = " ".join(line.strip() for line in str(exc).splitlines()).replace(tmp, "…").replace("|", "\\|")
        print(f"| {i} | {name} | `{error.__name__}` | {message[:220]} |")
monkeypatch = pytest.MonkeyPatch()
for j, (name, (build, error, _)) in enumerate(MONKEYPATCHED.items(), len(rows) + 1):
    with tempfile.TemporaryDirectory() as tmp:
        try:
            build(Path(tmp), monkeypatch)()
            message = "NOT RAISED"
        except Exception as exc:  # noqa: BLE001
            message = str(exc).splitlines()[0].replace(tmp, "…")
        monkeypatch.undo()
        print(f"| {j} | {name} (simulated) | `{error.__name__}` | {message[:150]} |")
