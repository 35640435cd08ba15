"""README's Python example, run as written against the shared CT and the golden tiny model (standing in for
the SAMed-2 weights that cannot be downloaded here), so the README cannot drift from the engine's API."""
import re

import numpy as np

from suite import REPO


def readme_python_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Python\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_as_written(monkeypatch, ct_volume, tiny_model, capsys):
    import samed2.volume_files
    import samed2.weights

    monkeypatch.setattr(samed2.volume_files, "load_volume", lambda path: ct_volume)
    monkeypatch.setattr(samed2.weights, "load_model", lambda name: tiny_model)
    namespace = {}
    exec(readme_python_example(), namespace)
    labels = namespace["labels"]
    assert labels.shape == ct_volume.array.shape
    assert labels.dtype == bool or np.issubdtype(labels.dtype, np.integer)
    printed = capsys.readouterr().out.splitlines()
    assert printed, "propagation streamed no slice"
    assert all(len(line.split()) == 3 for line in printed)  # index, mask area, confidence
