"""README.md answers a newcomer in at most 150 lines, and its numbers are the committed results' (issue 48).

The results table between the markers is rendered by benchmarks/readme_table.py from docs/benchmarks/*/results.json:
a results.json changed without rerunning the script, or a hand edit of the table, fails here. The demo's printed
tables are the measured run that docs/training.md records. Reads files only; nothing is trained."""

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_table():
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "benchmarks" / "readme_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_table_is_the_rendering_of_the_committed_results():
    table = readme_table()
    text = README.read_text()
    assert text.count(table.START) == 1 and text.count(table.END) == 1
    assert table.current_block(text) == table.render(), \
        "README.md's results table is stale: run python benchmarks/readme_table.py"


def test_the_table_reads_every_source_and_links_it(tmp_path):
    table = readme_table()
    block = table.render()
    rows = [line for line in block.splitlines() if line.startswith("| ")][1:]
    assert 1 <= len(rows) <= 6
    for folder in table.SOURCES.values():
        assert (ROOT / "docs" / "benchmarks" / folder / "results.json").is_file()
        assert f"(docs/benchmarks/{folder}/report.md)" in block
    # A changed results.json changes the rendering (so the first test catches it).
    for folder in table.SOURCES.values():
        target = tmp_path / "docs" / "benchmarks" / folder
        target.mkdir(parents=True)
        (target / "results.json").write_text((ROOT / "docs" / "benchmarks" / folder / "results.json").read_text())
    assert table.render(tmp_path) == block
    results = tmp_path / "docs" / "benchmarks" / table.SOURCES["labeled4"] / "results.json"
    changed = json.loads(results.read_text())
    for summary in changed["summary"]:
        summary["dice"]["mean"] = 0.5
    results.write_text(json.dumps(changed))
    assert table.render(tmp_path) != block


def test_check_mode_reports_a_stale_readme(tmp_path, monkeypatch, capsys):
    table = readme_table()
    stale = tmp_path / "README.md"
    stale.write_text(table.replace_block(README.read_text(), "| stale |\n"))
    monkeypatch.setattr(table, "README", stale)
    assert table.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().out
    assert table.main([]) == 0 and table.main(["--check"]) == 0
    assert stale.read_text() == README.read_text()


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 150


def test_every_relative_link_and_image_in_the_readme_exists():
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", README.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path = target.partition("#")[0]
        if path and not (ROOT / path).exists():
            missing.append(target)
    assert not missing, missing


def test_readme_says_how_to_install_and_test():
    """CI (.ci/run) installs as the README says and runs its test command."""
    text = README.read_text()
    assert "make test" in text and "make setup" in text and 'pip install -e ".[dev]"' in text
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_demo_output_in_the_readme_is_the_measured_run():
    """The demo's printed tables in README.md are those docs/training.md records from the run."""
    text = README.read_text()
    demo = text[text.index("## The demo"):text.index("## Results")]
    blocks, block, language = [], None, None
    for line in demo.splitlines(keepends=True):
        if line.startswith("```"):
            if block is None:
                block, language = [], line.strip()[3:]
            else:
                if not language:  # printed output, not a command
                    blocks.append("".join(block))
                block = None
        elif block is not None:
            block.append(line)
    assert blocks, "no printed output under ## The demo"
    training = (ROOT / "docs" / "training.md").read_text()
    for block in blocks:
        assert block in training, block
