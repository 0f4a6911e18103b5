"""The deploy recipes and the docs name the same files: the env example points the wrapper
at the config docs/operations.md installs, and one textfile collector path is used
everywhere (issue 13 item 3)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = ROOT / "deploy" / "provisioner.env.example"


def env_settings(path: Path) -> dict[str, str]:
    """The KEY=value lines of an env file as the wrapper and systemd read them (comments
    and blank lines skipped)."""
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not KEY=value"
        found[key] = value
    return found


def installed_config_path() -> str:
    """Where docs/operations.md installs the config file (its `install ... .toml` line)."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    targets: list[str] = re.findall(r"^install\b.*\s(/\S+\.toml)\b", text, re.M)
    assert len(set(targets)) == 1, f"docs/operations.md installs configs at {targets}"
    return targets[0]


def test_env_example_sets_provisioner_config_to_the_installed_config() -> None:
    """deploy/provisioner.env.example sets PROVISIONER_CONFIG (not commented out) to the path
    docs/operations.md installs the config at, so the cron wrapper reads base_url."""
    settings = env_settings(ENV_EXAMPLE)
    assert "PROVISIONER_CONFIG" in settings, "PROVISIONER_CONFIG is commented out or missing"
    assert settings["PROVISIONER_CONFIG"] == installed_config_path()


def recipe_and_doc_files() -> list[Path]:
    """README.md, docs/*.md and every file under deploy/."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += sorted(p for p in (ROOT / "deploy").rglob("*") if p.is_file())
    return files


def test_one_textfile_collector_path_everywhere() -> None:
    """Every textfile collector path the README, docs and deploy recipes mention is the same
    folder, and every .prom file they name in it is the same file."""
    folders: dict[str, list[str]] = {}
    proms: dict[str, list[str]] = {}
    for path in recipe_and_doc_files():
        text = path.read_text(encoding="utf-8")
        for match in re.findall(r"/[\w./-]*textfile_collector[\w./-]*", text):
            where = str(path.relative_to(ROOT))
            folder, _, name = match.partition("textfile_collector")
            folders.setdefault(folder + "textfile_collector", []).append(where)
            name = name.strip("/")
            if name:
                proms.setdefault(name, []).append(where)
    assert len(folders) == 1, f"textfile collector folders differ: {folders}"
    assert len(proms) == 1, f"metrics file names differ: {proms}"
    # The env example (the cron wrapper) and the systemd unit both name the file.
    ((prom, named_in),) = proms.items()
    assert prom == "provisioner.prom"
    assert {"deploy/provisioner.env.example", "deploy/systemd/provisioner.service"} <= set(named_in)
