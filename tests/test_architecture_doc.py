"""docs/architecture.md names only modules and attributes that exist (a renamed or removed
module makes this fail until the page follows)."""
from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "legseg_tf"
FILE_ENDINGS = (".json", ".html", ".tsv", ".md", ".py", ".sh", ".yml", ".txt", ".h5")


def _modules() -> set[str]:
    names = {p.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".")
             for p in PACKAGE.rglob("*.py")}
    return {name.removesuffix(".__init__") for name in names}


def unknown_references(text: str) -> list[str]:
    """Backticked ``module.attribute`` references of ``text`` that do not resolve: to a legseg
    module (or subpackage) and its attributes, else to an importable module (``os.replace``);
    ``Class.attribute`` references are left alone."""
    modules = _modules()
    tops = {name.split(".")[0] for name in modules}
    unknown = []
    for ref in sorted(set(re.findall(r"`([a-z_]+(?:\.[A-Za-z_0-9]+)+)", text))):
        parts = ref.split(".")
        if ref.endswith(FILE_ENDINGS):
            continue
        if parts[0] not in tops:
            if importlib.util.find_spec(parts[0]) is None:
                unknown.append(ref)
            continue
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in modules:
                target = importlib.import_module("legseg_tf." + ".".join(parts[:i]))
                for name in parts[i:]:
                    if not hasattr(target, name):
                        unknown.append(ref)
                        break
                    target = getattr(target, name)
                break
        else:
            unknown.append(ref)
    return unknown


def test_architecture_page_names_existing_modules():
    assert unknown_references((ROOT / "docs" / "architecture.md").read_text()) == []


def test_a_missing_module_is_reported():
    assert unknown_references("the `layout.find` module and `split.decide_side`") == [
        "layout.find", "split.decide_side"]
