"""worker.config: typed config; invalid values are rejected naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]

VALID = """
[listener]
ae_title = "OSSA"
host = "127.0.0.1"
port = 11112
allowed_calling_aets = ["STORESCU", "ORTHANC"]
[study]
completion_timeout_s = 10.0
[storage]
root = "var"
[model]
bundle = "var/models/demo"
[[destinations]]
name = "pacs"
type = "dimse"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = 4242
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_in_repo_is_valid() -> None:
    config = load_config(REPO / "config.toml")
    assert config.listener.ae_title == "OSSA"
    assert config.listener.allowed_calling_aets == ("STORESCU", "ORTHANC")
    assert config.destinations[0].ae_title == "ORTHANC"
    assert config.storage.root == REPO / "var"


def test_relative_paths_resolve_against_config_dir(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, VALID))
    assert config.storage.root == tmp_path.resolve() / "var"
    assert config.model.bundle == tmp_path.resolve() / "var/models/demo"
    assert config.study.completion_timeout_s == 10.0
    assert config.destinations[0].port == 4242


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("port = 11112", "port = 0", "listener.port"),
        ("port = 11112", "port = 70000", "listener.port"),
        ('ae_title = "OSSA"', 'ae_title = "THIS_TITLE_IS_TOO_LONG"', "listener.ae_title"),
        ('ae_title = "OSSA"', 'ae_title = "BAD\\\\AE"', "listener.ae_title"),
        ("completion_timeout_s = 10.0", "completion_timeout_s = -1", "study.completion_timeout_s"),
        ('type = "dimse"', 'type = "ftp"', "destinations.0.type"),
        ("port = 4242", 'port = "x"', "destinations.0.port"),
        (
            'allowed_calling_aets = ["STORESCU", "ORTHANC"]',
            'allowed_calling_aets = [""]',
            "listener.allowed_calling_aets",
        ),
        ('root = "var"', 'root = "var"\nspeed = 3', "storage.speed"),
        ('root = "var"', 'root = "var"\nretention_days = -1', "storage.retention_days"),
        (
            'root = "var"',
            'root = "var"\n[delivery]\ngive_up_after_s = 0',
            "delivery.give_up_after_s",
        ),
        (
            'root = "var"',
            'root = "var"\n[delivery]\nretry_initial_interval_s = 600\nretry_max_interval_s = 60',
            "delivery.retry_initial_interval_s",
        ),
    ],
)
def test_invalid_value_names_the_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    assert old in VALID
    path = _write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert key in str(info.value)
    assert str(path) in str(info.value)


def test_missing_required_destination_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"destinations\.0\.host"):
        load_config(
            _write(tmp_path, VALID.replace('host = "127.0.0.1"\nport = 4242', "port = 4242"))
        )


def test_duplicate_destination_names(tmp_path: Path) -> None:
    text = VALID + VALID[VALID.index("[[destinations]]") :]
    with pytest.raises(ConfigError, match="unique"):
        load_config(_write(tmp_path, text))


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[listener\nport = 1"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(ValueError, match="frozen"):
        config.listener.port = 1  # type: ignore[misc]


def test_example_config_toml_is_valid_and_sets_the_outbox() -> None:
    config = load_config(Path(__file__).resolve().parents[1] / "config.toml")
    assert config.delivery.retry_max_interval_s == 300
    assert config.delivery.give_up_after_s == 86400
    assert config.storage.retention_days == 30


def test_example_source_in_config_toml_is_valid_once_uncommented(tmp_path: Path) -> None:
    """The commented ``[[sources]]`` block of the example is a working configuration."""
    text = (Path(__file__).resolve().parents[1] / "config.toml").read_text(encoding="utf-8")
    block = text[text.index("# [[sources]]"):]
    uncommented = "\n".join(line[2:] for line in block.splitlines() if line.startswith("# "))
    path = tmp_path / "config.toml"
    path.write_text(text + "\n" + uncommented + "\n", encoding="utf-8")
    (source,) = load_config(path).sources
    assert source.name == "archive" and source.type == "dicomweb"
    assert source.results_to == ("pacs",) and source.poll_interval_s == 30


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('name = "a"\ntype = "ftp"', 'sources.0.type: type must be "dicomweb" or "dimse"'),
        ('name = "a-name-longer-than-16"\ntype = "dicomweb"\nurl = "http://x"',
         "sources.0.name"),
        ('name = "a"\ntype = "dicomweb"\nurl = "http://x"\nresults_to = "nowhere"',
         "results_to names no destination: ['nowhere']"),
        ('name = "a"\ntype = "dicomweb"\nurl = "http://x"\nfilters = { StudyDate = "2024" }',
         "StudyDate is set by Ossa"),
        ('name = "a"\ntype = "dicomweb"\nurl = "http://x"\nmodalities = ["cr"]',
         "is not a modality"),
        ('name = "a"\ntype = "dimse"\nae_title = "PACS"\nhost = "h"\nport = 104\n'
         'retrieve = "c-find"', "sources.0.retrieve"),
        ('name = "a"\ntype = "dicomweb"\nurl = "http://x"\nauth = "basic"',
         "needs secret_file or secret_env"),
    ],
)
def test_invalid_sources_are_refused_naming_the_key(tmp_path: Path, toml: str,
                                                     message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"[[sources]]\n{toml}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert message in str(raised.value)


def test_sources_need_unique_names(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[[sources]]\nname = "a"\ntype = "dicomweb"\nurl = "http://x"\n' * 2,
                    encoding="utf-8")
    with pytest.raises(ConfigError, match="sources: names must be unique"):
        load_config(path)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://user:pw@pacs.example/dicom-web", "credentials"),
        ("http://pacs.example:99999/dicom-web", "invalid port"),
        ("ftp://pacs.example/dicom-web", "url"),
    ],
)
def test_stowrs_url_is_checked(tmp_path: Path, url: str, message: str) -> None:
    text = VALID + f'''
[[destinations]]
name = "web"
type = "stowrs"
url = "{url}"
'''
    with pytest.raises(ConfigError, match=message) as info:
        load_config(_write(tmp_path, text))
    assert "destinations.1.url" in str(info.value)


def test_stowrs_destination_with_basic_auth(tmp_path: Path) -> None:
    text = VALID + '''
[[destinations]]
name = "web"
type = "stowrs"
url = "https://pacs.example/dicom-web/"
auth = "basic"
username = "ossa"
secret_file = "secrets/pacs.txt"
'''
    config = load_config(_write(tmp_path, text))
    web = config.destinations[1]
    assert web.type == "stowrs" and web.url == "https://pacs.example/dicom-web"
    assert web.secret_file == tmp_path / "secrets" / "pacs.txt"  # relative to the file
    with pytest.raises(ConfigError, match=r"destinations\.1.*needs username"):
        load_config(_write(tmp_path, text.replace('username = "ossa"\n', "")))
