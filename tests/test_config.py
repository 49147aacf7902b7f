"""Config validation: a bad config names the key, the value and the reason."""

import pytest

from robot_stack.cli import main
from robot_stack.config import ConfigError, load_config

from conftest import REPO


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_shipped_configs_validate():
    for p in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(p)
        assert cfg.nodes


def test_bad_param_value_names_key_value_reason(tmp_path):
    p = write(tmp_path, "nodes:\n  camera:\n    kind: camera\n    params: {rate_hz: -5}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert "nodes.camera.params.rate_hz = -5: Input should be greater than 0" in str(ei.value)


def test_typo_key_is_an_error_not_ignored(tmp_path):
    p = write(tmp_path, "nodes:\n  camera:\n    kind: camera\n    params: {fps: 30}\n")
    with pytest.raises(ConfigError, match=r"nodes.camera.params.fps = 30: unknown key"):
        load_config(p)


def test_unknown_kind_lists_known(tmp_path):
    p = write(tmp_path, "nodes:\n  cam:\n    kind: camra\n")
    with pytest.raises(ConfigError, match=r"nodes.cam.kind = 'camra': unknown node kind \(known: .*camera"):
        load_config(p)


def test_structural_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "nodes: [unclosed"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="nodes: required key is missing"):
        load_config(write(tmp_path, "name: x\n"))
    with pytest.raises(ConfigError, match="node name 'Bad-Name'"):
        load_config(write(tmp_path, "nodes:\n  Bad-Name: {kind: camera}\n"))
    with pytest.raises(ConfigError, match="on_node_exit = 'explode'"):
        load_config(write(tmp_path, "on_node_exit: explode\nnodes:\n  a: {kind: camera}\n"))


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, capsys):
    p = write(tmp_path, "nodes:\n  camera:\n    kind: camera\n    params: {width: 0}\n")
    assert main(["check", str(p)]) == 2
    err = capsys.readouterr().err
    assert "nodes.camera.params.width = 0" in err
