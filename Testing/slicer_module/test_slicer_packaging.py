"""Static checks of the Slicer extension: what CMake ships, what the index is told, what
the panel uses, and which way the imports go."""
import ast
import dataclasses
import functools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

from samed2.choices import EngineSettings

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "SAMed2Slicer"
MODULE_NAME = "SAMed2Slicer"
NOT_SHIPPED_DIRS = {"__pycache__"}
NOT_SHIPPED_SUFFIXES = {".pyc", ".egg-info"}
UI_OBJECT_TAGS = {"widget", "layout", "action", "actiongroup", "spacer"}
SCHEMA = Path(__file__).with_name("extension_catalog_schema.json")


def cmake_sets(path):
    """{variable: [words]} of every set(...) in a CMakeLists.txt, ${MODULE_NAME} expanded."""
    text = re.sub(r"#[^\n]*", "", path.read_text())
    sets = {}
    for name, body in re.findall(r'\bset\(\s*(\w+)((?:\s+(?:"[^"]*"|[^\s()"]+))*)\s*\)', text):
        sets[name] = [w.strip('"') for w in re.findall(r'"[^"]*"|\S+', body)]
    module_name = sets.get("MODULE_NAME", [""])[0]
    return {k: [w.replace("${MODULE_NAME}", module_name) for w in v] for k, v in sets.items()}


def extension_variables():
    """EXTENSION_* values of the top-level CMakeLists.txt, and the project name."""
    path = REPO / "CMakeLists.txt"
    values = {k: " ".join(v) for k, v in cmake_sets(path).items() if k.startswith("EXTENSION_")}
    values["project"] = re.search(r"\bproject\(\s*(\w+)", path.read_text()).group(1)
    return values


def s4ext_fields(path):
    fields = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            fields[key] = value.strip()
    return fields


def shipped_files():
    """Files under SAMed2Slicer/ that the built module must contain, relative to it."""
    files = set()
    for path in MODULE_DIR.rglob("*"):
        relative = path.relative_to(MODULE_DIR)
        if any(p in NOT_SHIPPED_DIRS or Path(p).suffix in NOT_SHIPPED_SUFFIXES for p in relative.parts):
            continue
        if path.is_file() and relative != Path("CMakeLists.txt"):
            files.add(relative.as_posix())
    return files


CMAKE_PROBE = """cmake_minimum_required(VERSION 3.16)
project(probe NONE)
macro(slicerMacroBuildScriptedModule)  # as Slicer's macro parses its arguments
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  message(STATUS "SCRIPTS=${MY_SLICER_SCRIPTS}")
  message(STATUS "RESOURCES=${MY_SLICER_RESOURCES}")
endmacro()
add_subdirectory("MODULE_DIR" module)
"""


def cmake_executable():
    beside_python = Path(sys.executable).with_name("cmake")  # the test extra's cmake wheel
    return str(beside_python) if beside_python.is_file() else shutil.which("cmake")


@functools.lru_cache(maxsize=None)
def module_lists():
    """The SCRIPTS and RESOURCES the module's CMakeLists.txt hands slicerMacroBuildScriptedModule,
    from a real CMake configure of it (its globs evaluated by CMake)."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "CMakeLists.txt").write_text(CMAKE_PROBE.replace("MODULE_DIR", MODULE_DIR.as_posix()))
        result = subprocess.run([cmake_executable(), "-S", folder, "-B", f"{folder}/build"],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lists = dict(re.findall(r"^-- (SCRIPTS|RESOURCES)=(.*)$", result.stdout, re.MULTILINE))
    return lists["SCRIPTS"].split(";"), lists["RESOURCES"].split(";")


def ui_object_names(path):
    root = ElementTree.parse(path).getroot()
    return [e.get("name") for e in root.iter() if e.tag in UI_OBJECT_TAGS and e.get("name")]


def self_ui_names(path):
    """Names used as self.ui.<name> in a Python file."""
    return {node.attr for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"}


def imported_top_names(path, module_level_only=False):
    """Top-level package names a Python file imports: anywhere, or in its module body only."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in (tree.body if module_level_only else ast.walk(tree)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def raw_url_path(url, homepage):
    """Repository path of a raw.githubusercontent.com URL of the homepage's repository."""
    owner_repo = urlparse(homepage).path.strip("/")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    assert url.startswith(prefix), f"{url} is not a file of {homepage} (expected {prefix}...)"
    return REPO / url[len(prefix):]


def assert_lists_exactly(variable, listed, on_disk):
    """The CMake list names each file on disk once, and nothing else."""
    twice = sorted({f for f in listed if listed.count(f) > 1})
    unlisted = "\n  ".join(sorted(on_disk - set(listed)))
    absent = "\n  ".join(sorted(set(listed) - on_disk))
    assert not twice, f"{variable} lists these twice: {twice}"
    assert not unlisted, f"add to {variable} in SAMed2Slicer/CMakeLists.txt:\n  {unlisted}"
    assert not absent, f"{variable} lists files that do not exist:\n  {absent}"


def assert_png_size(path, size):
    with Image.open(path) as image:
        assert (image.format, image.size) == ("PNG", size), f"{path}: {image.format} {image.size}"


# --- CMake lists and the module tree --------------------------------------------------

def test_slicer_cmake_lists_every_python_file_and_nothing_else():
    scripts, _ = module_lists()
    on_disk = {f for f in shipped_files() if f.endswith(".py")}
    assert_lists_exactly("MODULE_PYTHON_SCRIPTS", scripts, on_disk)


def test_slicer_cmake_lists_every_resource_file_and_nothing_else():
    _, resources = module_lists()
    on_disk = {f for f in shipped_files() if not f.endswith(".py")}
    assert_lists_exactly("MODULE_PYTHON_RESOURCES", resources, on_disk)


def test_slicer_module_ships_its_icon_and_panel():
    _, resources = module_lists()
    assert f"Resources/Icons/{MODULE_NAME}.png" in resources
    assert f"Resources/UI/{MODULE_NAME}.ui" in resources
    assert_png_size(MODULE_DIR / "Resources" / "Icons" / f"{MODULE_NAME}.png", (128, 128))


OLDEST_SLICER_PYTHON = (3, 9)  # Slicer 5.6 and 5.8 (Slicer_REQUIRED_PYTHON_VERSION 3.9.10)


def annotations(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from (a.annotation for a in node.args.args + node.args.kwonlyargs if a.annotation)
            if node.returns:
                yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def test_slicer_module_parses_and_annotates_for_the_oldest_slicer_python():
    """Every shipped file is valid Python 3.9, and none evaluates `X | Y` annotations at import
    (a TypeError before 3.10) unless it postpones annotations."""
    scripts, _ = module_lists()
    for name in scripts:
        source = (MODULE_DIR / name).read_text()
        tree = ast.parse(source, feature_version=OLDEST_SLICER_PYTHON)
        if "from __future__ import annotations" in source:
            continue
        unions = [ast.unparse(a) for a in annotations(tree)
                  if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(a))]
        assert unions == [], f"{name}: {unions}"


# --- extension description ------------------------------------------------------------

@pytest.mark.parametrize("s4ext_key, cmake_key", [
    ("depends", "EXTENSION_DEPENDS"),
    ("category", "EXTENSION_CATEGORY"),
    ("homepage", "EXTENSION_HOMEPAGE"),
    ("iconurl", "EXTENSION_ICONURL"),
    ("screenshoturls", "EXTENSION_SCREENSHOTURLS"),
    ("description", "EXTENSION_DESCRIPTION"),
    ("contributors", "EXTENSION_CONTRIBUTORS"),
    ("status", "EXTENSION_STATUS"),
])
def test_slicer_s4ext_agrees_with_cmake(s4ext_key, cmake_key):
    s4ext = s4ext_fields(REPO / f"{extension_variables()['project']}.s4ext")
    assert s4ext[s4ext_key] == extension_variables()[cmake_key]


def test_slicer_s4ext_names_the_project_and_its_repository():
    cmake = extension_variables()
    s4ext_path = REPO / f"{cmake['project']}.s4ext"
    assert s4ext_path.is_file(), f"the .s4ext file must be named after project({cmake['project']})"
    s4ext = s4ext_fields(s4ext_path)
    assert s4ext["scm"] == "git"
    assert s4ext["scmurl"] == cmake["EXTENSION_HOMEPAGE"] + ".git"
    assert s4ext["enabled"] == "1"
    assert cmake["EXTENSION_DEPENDS"] == "PyTorch"
    assert cmake["EXTENSION_CATEGORY"] == "Segmentation"


def test_slicer_extensions_index_json_follows_the_newest_catalog_schema():
    """<project>.json is what the Extensions Index reads since Slicer 5.8. The schema beside this test
    states the constraints of Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json (the
    newest there), written here because CI reaches only PyPI."""
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    cmake = extension_variables()
    entry = json.loads((REPO / f"{cmake['project']}.json").read_text())
    jsonschema.validate(entry, schema, cls=jsonschema.Draft7Validator)
    assert entry["$schema"] == schema["$id"]
    assert entry["category"] == cmake["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == cmake["EXTENSION_DEPENDS"].split()
    assert entry["scm_url"] == cmake["EXTENSION_HOMEPAGE"] + ".git"
    assert entry["scm_revision"] == s4ext_fields(REPO / f"{cmake['project']}.s4ext")["scmrevision"]


def test_slicer_extensions_index_json_schema_check_can_fail():
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    with pytest.raises(jsonschema.ValidationError, match="scm_url"):
        jsonschema.validate({"$schema": schema["$id"], "category": "Segmentation"}, schema)
    with pytest.raises(jsonschema.ValidationError, match="description"):
        jsonschema.validate({"$schema": schema["$id"], "category": "Segmentation", "scm_url": "x",
                             "description": "not an index field"}, schema)


def test_slicer_network_self_test_is_not_registered_with_ctest():
    """The module's self-test downloads a sample CT: extension dashboards build offline."""
    text = re.sub(r"#[^\n]*", "", (MODULE_DIR / "CMakeLists.txt").read_text())
    assert "slicer_add_python_unittest" not in text


def test_slicer_extension_icon_is_a_repository_file():
    cmake = extension_variables()
    assert_png_size(raw_url_path(cmake["EXTENSION_ICONURL"], cmake["EXTENSION_HOMEPAGE"]), (128, 128))


def test_slicer_extension_screenshots_are_repository_files():
    cmake = extension_variables()
    for url in cmake["EXTENSION_SCREENSHOTURLS"].split():
        path = raw_url_path(url, cmake["EXTENSION_HOMEPAGE"])
        assert path.is_file(), f"screenshot {path.relative_to(REPO)} is missing"


def test_slicer_module_metadata_matches_the_extension():
    source = (MODULE_DIR / f"{MODULE_NAME}.py").read_text()
    cmake = extension_variables()
    assert f'HOMEPAGE = "{cmake["EXTENSION_HOMEPAGE"]}"' in source
    assert f'contributors = ["{cmake["EXTENSION_CONTRIBUTORS"]}"]' in source
    categories = re.search(r"self\.parent\.categories = (.*)", source).group(1)
    assert f'"{cmake["EXTENSION_CATEGORY"]}"' in categories


# --- panel ----------------------------------------------------------------------------

GUI_FILES_AND_PANELS = [
    (f"{MODULE_NAME}.py", f"{MODULE_NAME}.ui"),
    ("SegmentEditorSAMed2Lib/SegmentEditorEffect.py", "SegmentEditorSAMed2.ui"),
]


@pytest.mark.parametrize("python_file, ui_file", GUI_FILES_AND_PANELS)
def test_slicer_widget_uses_only_names_of_the_ui_file(python_file, ui_file):
    ui_path = MODULE_DIR / "Resources" / "UI" / ui_file
    defined = ui_object_names(ui_path)
    used = self_ui_names(MODULE_DIR / python_file)
    assert len(defined) == len(set(defined)), "object names in the .ui file must be unique"
    assert used, f"{python_file} reads no self.ui.<name>: is the panel loaded?"
    assert sorted(used - set(defined)) == [], f"missing from {ui_file}"


@pytest.mark.parametrize("python_file, ui_file", GUI_FILES_AND_PANELS)
def test_slicer_gui_loads_its_ui_file_from_the_resources(python_file, ui_file):
    source = (MODULE_DIR / python_file).read_text()
    assert "slicer.util.loadUI(" in source and ui_file in source


def class_fields(tree, name):
    """The annotated fields of a class in a parsed file."""
    (cls,) = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name]
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_slicer_panel_settings_are_parameters_that_reach_the_logic():
    """Each widget the .ui binds with SlicerParameterName is a field of the parameter node (Slicer's
    connectGui refuses other names), and the panel hands every setting the Logic has to configure()."""
    panel = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / f"{MODULE_NAME}.ui").getroot()
    bound = {p.find("string").text for p in panel.iter("property") if p.get("name") == "SlicerParameterName"}
    module = ast.parse((MODULE_DIR / f"{MODULE_NAME}.py").read_text())
    assert bound <= class_fields(module, f"{MODULE_NAME}ParameterNode")
    (configure,) = [n for n in ast.walk(module) if isinstance(n, ast.Call)
                    and isinstance(n.func, ast.Attribute) and n.func.attr == "configure"]
    settings = {field.name for field in dataclasses.fields(EngineSettings)}
    assert {k.arg for k in configure.keywords} == settings
    assert settings - {"model"} <= bound, "the model combo is filled by the widget; the others are bound"


def test_slicer_ui_files_are_qt_designer_files():
    for path in (MODULE_DIR / "Resources" / "UI").glob("*.ui"):
        root = ElementTree.parse(path).getroot()
        assert root.tag == "ui" and root.get("version") == "4.0", path.name
        assert root.find("widget") is not None, f"{path.name} has no top-level widget"


# --- import direction -----------------------------------------------------------------

def test_slicer_engine_never_imports_slicer_qt_or_the_tools():
    forbidden = {"slicer", "qt", "ctk", "vtk", "SAMed2SlicerLib", MODULE_NAME, "samed2_tools", "samed2_web"}
    offenders = {f"{p.relative_to(MODULE_DIR)}: {sorted(imported_top_names(p) & forbidden)}"
                 for p in (MODULE_DIR / "samed2").rglob("*.py") if imported_top_names(p) & forbidden}
    assert sorted(offenders) == []


def test_engine_and_tools_import_absolutely():
    """One import style: `from samed2.x import y` everywhere, never `from .x import y`."""
    packages = [MODULE_DIR / "samed2", REPO / "tools" / "samed2_tools"]
    offenders = sorted(str(p.relative_to(REPO)) for package in packages for p in package.rglob("*.py")
                       if any(isinstance(node, ast.ImportFrom) and node.level
                              for node in ast.walk(ast.parse(p.read_text()))))
    assert offenders == []


def test_slicer_logic_is_qt_free():
    qt = {"qt", "ctk"}
    offenders = {f"{p.name}: {sorted(imported_top_names(p) & qt)}"
                 for p in (MODULE_DIR / "SAMed2SlicerLib").rglob("*.py") if imported_top_names(p) & qt}
    assert sorted(offenders) == []


def test_slicer_logic_imports_without_torch():
    """torch comes later, from the PyTorch extension: importing the module must not need it."""
    modules = sorted("SAMed2SlicerLib." + p.stem if p.stem != "__init__" else "SAMed2SlicerLib"
                     for p in (MODULE_DIR / "SAMed2SlicerLib").glob("*.py"))
    code = (f"import sys; sys.path.insert(0, {str(MODULE_DIR)!r}); "
            f"import {', '.join(modules)}; print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False", f"{modules} import torch"


def gui_files():
    return [MODULE_DIR / f"{MODULE_NAME}.py", *sorted((MODULE_DIR / "SAMed2SlicerQt").glob("*.py")),
            *sorted((MODULE_DIR / "SegmentEditorSAMed2Lib").glob("*.py"))]


def test_slicer_gui_module_imports_no_torch_at_import_time():
    for path in gui_files():
        assert "torch" not in imported_top_names(path, module_level_only=True), path.name


def test_slicer_qt_stays_in_the_gui_files():
    gui = {path.relative_to(MODULE_DIR) for path in gui_files()}
    users = {p.relative_to(MODULE_DIR) for p in MODULE_DIR.rglob("*.py")
             if "__pycache__" not in p.parts and imported_top_names(p) & {"qt", "ctk"}}
    assert users <= gui, f"Qt imported outside the GUI files: {sorted(map(str, users - gui))}"


# --- Extensions Index ------------------------------------------------------------------

def git_files():
    result = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [REPO / name for name in result.stdout.split("\0") if name]


IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF"}


def index_check_failures(entry_path):
    """What Slicer/ExtensionsIndex scripts/check_description_files.py would reject in an entry
    (<extension>.json) and the repository it points at (this checkout), for the checks that
    need no network: file format, extension name, category, scm_url and repository name, the
    top-level CMakeLists.txt (project name, icon and screenshot URLs read with the script's
    patterns, each naming an image file of the repository), size and licence. Left to the
    index's CI: the schema download (the local copy is checked above), the GitHub topic
    `3d-slicer-extension`, and that the URLs serve images once pushed."""
    failures = []
    name = entry_path.stem
    raw = entry_path.read_bytes()
    entry = json.loads(raw)
    if b"\r" in raw:
        failures.append("the entry must use LF line endings only")
    if name.lower().startswith("slicer"):
        failures.append(f"extension name {name!r} must not start with 'Slicer'")
    if entry.get("category") not in {"Segmentation"}:  # one of the index's accepted categories
        failures.append(f"category {entry.get('category')!r}")
    url = urlparse(entry["scm_url"].strip().strip("/"))
    if url.scheme not in ("git", "https") or not url.netloc:
        failures.append(f"scm_url {entry['scm_url']!r} is not git:// or https://host/path")
    repository = Path(url.path).stem
    if not re.match(r"Slicer([-_]|Extension[-_])?", repository):
        failures.append(f"repository name {repository!r} must start with 'Slicer'")
    cmake = (REPO / "CMakeLists.txt").read_text()
    project = re.findall(r"project\s*\(\s*([^\s)\n\r]+)", cmake, re.IGNORECASE)
    if not project or project[0].strip("\"'") != name:
        failures.append(f"CMakeLists.txt project({project[:1]}) does not match the entry's name {name!r}")
    icon = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', cmake, re.IGNORECASE)
    shots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmake, re.IGNORECASE)
    if not icon or not shots:
        failures.append("EXTENSION_ICONURL or EXTENSION_SCREENSHOTURLS is not found by the index's patterns")
    raw_prefix = f"https://raw.githubusercontent.com{url.path.removesuffix('.git')}/{entry['scm_revision']}/"
    for image_url in icon[:1] + (shots[0].split() if shots else []):
        path = REPO / image_url.removeprefix(raw_prefix)
        kind = IMAGE_SUFFIXES.get(Path(image_url).suffix.lower())
        if not image_url.startswith(raw_prefix) or not path.is_file():
            failures.append(f"{image_url} is not a file of the repository at {entry['scm_revision']}")
        elif kind is None or Image.open(path).format != kind:
            failures.append(f"{image_url} is not a PNG, JPEG or GIF image")
    if sum(path.stat().st_size for path in git_files() if path.is_file()) > 100 * 2**20:
        failures.append("the repository is over 100 MB")
    if not any((REPO / licence).is_file() for licence in ("LICENSE", "LICENCE", "License.txt", "LICENSE.txt")):
        failures.append("no licence file at the repository root")
    return failures


def test_slicer_extensions_index_checks_pass_offline():
    assert index_check_failures(REPO / f"{extension_variables()['project']}.json") == []


def test_slicer_extensions_index_checks_can_fail(tmp_path):
    """The entry as it was: a repository named SAMed2Slicer, and an entry named SlicerSAMed2."""
    entry = json.loads((REPO / "SAMed2.json").read_text())
    entry["scm_url"] = "https://github.com/samed2slicer/SAMed2Slicer.git"
    old = tmp_path / "SlicerSAMed2.json"
    old.write_text(json.dumps(entry).replace("\n", "\r\n") + "\r\n")
    failures = "\n".join(index_check_failures(old))
    for expected in ("LF line endings", "must not start with 'Slicer'", "repository name 'SAMed2Slicer'",
                     "does not match the entry's name", "is not a file of the repository"):
        assert expected in failures


def test_slicer_screenshot_is_a_slicer_window():
    """The index shows it on the extension's page: Slicer's layout (the web app, which runs
    Slicer's own views), not a plot; wide enough to read."""
    with Image.open(REPO / "Resources" / "Screenshot01.png") as image:
        assert image.format == "PNG" and image.width >= 1200 and image.height >= 700


def test_slicer_panel_and_effect_ui_files_share_no_widget_name():
    """The module's panel embeds a Segment Editor holding the effect's options, and
    slicer.util.childWidgetVariables keeps the last widget of a name it finds: a name used in both
    files would give the panel the effect's widget (its status line was the effect's)."""
    names = [set(ui_object_names(MODULE_DIR / "Resources" / "UI" / ui)) for _, ui in GUI_FILES_AND_PANELS]
    assert names[0] & names[1] == set()
