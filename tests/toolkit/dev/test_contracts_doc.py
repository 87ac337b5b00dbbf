"""docs/contracts.md documents every contract and never goes stale."""

from __future__ import annotations

from toolkit.data import schemas
from toolkit.dev import contracts_doc


def test_docs_contracts_md_is_up_to_date():
    current = contracts_doc.doc_path().read_text() if contracts_doc.doc_path().exists() else ""
    assert current == contracts_doc.render(), (
        "docs/contracts.md differs from toolkit/data/schemas.py: run `toolkit schemas docs`"
    )


def test_every_contract_and_column_is_documented():
    text = contracts_doc.render()
    for name, model in schemas.CONTRACTS.items():
        section = text.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        assert model.__doc__.strip().splitlines()[0] in section
        for column, spec in model.to_schema().columns.items():
            row = next(line for line in section.splitlines() if line.startswith(f"| `{column}` |"))
            assert spec.description in row
            assert ("| yes |" if spec.nullable else "| no |") in row


def test_checks_are_described_in_words():
    text = contracts_doc.render()
    assert "| `week` | datetime | no | weeks start on Monday |" in text
    assert "| `promo_share` | float64 | no | >= 0; <= 1 |" in text
    assert "| `product_id` | string | no | unique; matches `^P[0-9]+\\Z` | Key. |" in text
    assert "`cost_below_price`: unit cost is below list price." in text
    assert "Each combination of `product_id`, `week` appears once." in text
    assert "Columns appear in exactly this order." in text  # Export


def test_plan_runtime_constraints_are_explained():
    text = contracts_doc.render()
    plan = text.split("\n## Plan\n", 1)[1].split("\n## ", 1)[0]
    assert "schemas.plan_contract(constraints)" in plan
    for check in ["discount at most 25%", "keep margin >= 15%", "at most 25 price changes"]:
        assert check in plan


def test_write_creates_the_file(tmp_path):
    path = contracts_doc.write(tmp_path / "docs" / "contracts.md")
    assert path.read_text() == contracts_doc.render()
