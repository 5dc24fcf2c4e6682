"""The README and docs stay true to the tree: every recipe is in the README's index, the status
table is on its first screen, every relative link resolves, and the package keeps its shape
(no package of more than 14 modules at one level, at most 8 at the top of data/)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_recipe_is_in_the_readme_index_and_the_status_table_is_on_the_first_screen():
    readme = (ROOT / "README.md").read_text()
    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        assert f"| `{recipe.stem}` |" in readme, f"{recipe.name} is not in the README's recipe index"
    first = readme.splitlines()[:60]
    assert any(line.startswith("## Status") for line in first)
    assert any("never executed" in line for line in first)
    assert len(readme.splitlines()) <= 250


def test_every_relative_link_of_the_readme_and_docs_resolves():
    pages = [ROOT / "README.md", ROOT / "launch" / "README.md", *(ROOT / "docs").rglob("*.md")]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if not target.startswith(("http://", "https://", "mailto:")) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_no_package_holds_more_than_14_modules_and_data_at_most_8_at_its_top():
    for package in [p.parent for p in (ROOT / "bdh_scale").rglob("__init__.py")]:
        modules = list(package.glob("*.py"))
        assert len(modules) <= 14, f"{package.relative_to(ROOT)} holds {len(modules)} modules"
    assert len(list((ROOT / "bdh_scale" / "data").glob("*.py"))) <= 8
