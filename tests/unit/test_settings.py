import pytest

from diffstream.stream.ops.errors import ConfigError
from diffstream.stream.ops.settings import Settings, config_hash, load_settings

pytestmark = pytest.mark.unit


def _toml(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_are_documented_values():
    s = Settings()
    assert s.required_template_fraction == 0.1
    assert s.detection_threshold == 5.0
    assert s.method == "zogy"


def test_override_order_defaults_override_toml_env_cli(tmp_path, monkeypatch):
    over = _toml(
        tmp_path, "camera.toml", "detection_threshold = 4.0\ntile_size = 256\ncutout_size = 21\n"
    )
    conf = _toml(tmp_path, "run.toml", "[diffstream]\ntile_size = 384\nlanczos_order = 4\n")
    monkeypatch.setenv("DIFFSTREAM_LANCZOS_ORDER", "5")
    s = load_settings(override_file=over, config_file=conf, cli={"cutout_size": 31})
    assert s.detection_threshold == 4.0  # override file beats default
    assert s.tile_size == 384  # TOML beats override file
    assert s.lanczos_order == 5  # env beats TOML
    assert s.cutout_size == 31  # CLI beats everything
    assert Settings().detection_threshold == 5.0  # layering does not leak into the class


def test_unknown_key_in_file_is_refused(tmp_path):
    conf = _toml(tmp_path, "bad.toml", "detection_treshold = 4.0\n")
    with pytest.raises(ConfigError, match="unknown settings.*detection_treshold"):
        load_settings(config_file=conf)


def test_invalid_toml_is_refused(tmp_path):
    conf = _toml(tmp_path, "bad.toml", "tile_size = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config_file=conf)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_file=tmp_path / "nope.toml")


def test_invalid_value_is_refused():
    with pytest.raises(ConfigError, match="tile_size must be even"):
        load_settings(cli={"tile_size": 257})
    with pytest.raises(ConfigError, match="required_template_fraction"):
        load_settings(cli={"required_template_fraction": 1.5})


def test_config_hash_changes_with_science_settings():
    a = config_hash(Settings().science_config())
    b = config_hash(Settings(detection_threshold=6.0).science_config())
    assert a != b and len(a) == 16
    assert a == config_hash(Settings(group_id="other").science_config())
