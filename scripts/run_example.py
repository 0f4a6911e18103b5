"""`make run`: start the bundled sandbox, provision the example manifest, print the summary."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The example has two deliberately invalid rows, so a healthy demo run exits 1.
EXPECTED_EXIT = 1


def main() -> int:
    """Run the demo; exit 0 when the run ended as the example expects."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out/example")
    parser.add_argument("--manifest", default=str(ROOT / "examples" / "campaigns.csv"))
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    key = "sandbox-key"
    # The sandbox knows the example's campaigns, as a Braze workspace would, so the run's
    # campaign check (GET /campaigns/list) has something to list.
    book = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)  # noqa: SIM115
    with book, open(args.manifest, newline="", encoding="utf-8") as manifest:
        ids = {(row.get("campaign_id") or "").strip() for row in csv.DictReader(manifest)}
        book.writelines(f"{c}\n" for c in sorted(ids) if c)
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "provisioner", "sandbox", "--api-key", key,
         "--campaigns", book.name],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert sandbox.stdout is not None
        url = sandbox.stdout.readline().strip()
        print(f"sandbox listening on {url}", file=sys.stderr)
        env = dict(os.environ, BRAZE_API_KEY=key)
        cmd = [
            sys.executable,
            "-m",
            "provisioner",
            "run",
            args.manifest,
            "--out",
            str(out),
            "--config",
            str(ROOT / "configs" / "sandbox.toml"),
            "--base-url",
            url,
            "--state",
            str(out / "state.sqlite3"),
            "--log-format",
            "console",
        ]
        code = subprocess.call(cmd, env=env)
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)
        os.unlink(book.name)
    summary = out / "summary.json"
    if summary.exists():
        print(json.dumps(json.loads(summary.read_text()), indent=2))
    print(
        f"exit code {code} (the example expects {EXPECTED_EXIT}: it has two invalid rows)",
        file=sys.stderr,
    )
    return 0 if code == EXPECTED_EXIT else code


if __name__ == "__main__":
    sys.exit(main())
