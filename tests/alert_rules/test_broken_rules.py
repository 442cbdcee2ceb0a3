"""Every broken-rule file is rejected at the right place with the right words.

Each file starts with ``# expect: LINE:COLUMN: message start``.
"""

from pathlib import Path

import pytest

from alert_rules.errors import RuleFileError
from alert_rules.loader import load_rule_set

CORPUS = sorted((Path(__file__).parent / "broken").glob("*.yaml"))


def _expectation(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path} lacks its expectation header"
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_broken_file_is_rejected_with_position(path: Path) -> None:
    with pytest.raises(RuleFileError) as caught:
        load_rule_set([path])

    printed = [str(problem) for problem in caught.value.problems]
    wanted = f"{path}:{_expectation(path)}"
    assert any(line.startswith(wanted) for line in printed), printed


def test_corpus_is_not_empty() -> None:
    assert len(CORPUS) >= 20


def test_all_problems_of_a_file_are_reported_together(tmp_path: Path) -> None:
    rules = tmp_path / "two.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: A\n"
        "    kind: threshold\n"
        "    kpi: orders_created\n"
        "    grain: 2m\n"
        "    below: {critical: 5}\n"
        "    annotations: {summary: x}\n"
        "  - name: B\n"
        "    kind: absence\n"
        "    grain: 1m\n"
        "    annotations: {summary: x}\n",
        encoding="utf-8",
    )

    with pytest.raises(RuleFileError) as caught:
        load_rule_set([rules])

    printed = [str(problem) for problem in caught.value.problems]
    assert any(":5:12: rule \"A\": 'grain' must be one of" in p for p in printed)
    assert any(":8:5: rule \"B\": an absence rule needs 'for'" in p for p in printed), (
        printed
    )
