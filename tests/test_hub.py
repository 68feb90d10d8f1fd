"""Shipping a .asw through a hub, offline: hf:// and ms:// files in caches laid out the way huggingface_hub and
modelscope lay them out (resolution, revision pins, offline misses, the check on arrival remembered and
invalidated, corrupt blobs refused), ModelScope checkpoints for the converter, model cards, the "requires" map and
the parallel --verify."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ascend_super.runtime import format as fmt
from ascend_super.runtime import hub
from conftest import run_cli

MODEL = "qwen2-gqa-hd64"
COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


# ------------------------------------------------------------------------------------------- cache layouts
def hf_cache_file(hf_home: Path, repo_id: str, commit: str, filename: str, source: Path,
                  refs: tuple[str, ...] = ("main",)) -> Path:
    """One file as hf_hub_download leaves it: blobs/<sha256>, snapshots/<commit>/<filename> -> the blob,
    refs/<name> holding the commit. Returns the blob."""
    repo_dir = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    blob = repo_dir / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, blob)
    link = repo_dir / "snapshots" / commit / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(blob, link.parent), link)
    (repo_dir / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo_dir / "refs" / ref).write_text(commit)
    return blob


def ms_cache_file(ms_cache: Path, repo_id: str, revision: str, filename: str, source: Path) -> Path:
    """One file as modelscope (>= 1.38) leaves it: models/<owner>--<name>/snapshots/<revision>/<filename>."""
    target = ms_cache / "models" / repo_id.replace("/", "--") / "snapshots" / revision / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def offline_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_HOME": str(tmp_path / "hf"), "MODELSCOPE_CACHE": str(tmp_path / "ms"),
            "HF_HUB_OFFLINE": "1"}


def flip_tensor_byte(path: Path, name: str) -> None:
    """Change one byte inside a tensor, keeping the file's mtime (only its ctime shows the change)."""
    with fmt.AswFile.open(path) as asw:
        where = asw.preamble.data_offset + asw.by_name[name].offset
    stat = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(where)
        byte = handle.read(1)
        handle.seek(where)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr, result.stderr


# --------------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("spec, expected", [
    ("hf://Qwen/Qwen2-0.5B-asw/model.asw", ("hf", "Qwen/Qwen2-0.5B-asw", "model.asw", None)),
    ("ms://Qwen/Qwen2-0.5B-asw/fp16/model.asw@v1.0", ("ms", "Qwen/Qwen2-0.5B-asw", "fp16/model.asw", "v1.0")),
    ("hf://o/r/m.asw@refs/pr/3", ("hf", "o/r", "m.asw", "refs/pr/3")),
    ("hf://o/r@" + COMMIT_A + "/m.asw", ("hf", "o/r", "m.asw", COMMIT_A)),  # the fsspec form
])
def test_parse_uris(spec: str, expected: tuple) -> None:
    parsed = hub.parse(spec)
    assert parsed is not None
    assert (parsed.scheme, parsed.repo_id, parsed.filename, parsed.revision) == expected
    assert hub.parse(parsed.uri) == parsed


@pytest.mark.parametrize("spec, message", [
    ("s3://o/r/m.asw", "unknown scheme s3://"),
    ("hf://o/m.asw", "expected hf://OWNER/REPO/FILE.asw"),
    ("hf://o/r/model.safetensors", "is not a .asw file"),
    ("ms://o/r/../m.asw", "expected ms://OWNER/REPO/FILE.asw"),
    ("hf://o/r/m.asw@", "empty revision"),
    ("hf://o w/r/m.asw", "OWNER and REPO"),
    ("ms://o/r/m.asw@../../../elsewhere", "'../../../elsewhere' is not a revision"),  # out of the cache
    ("ms://o/r/m.asw@ v1", "' v1' is not a revision"),
    ("hf://o/r/m.asw@/abs", "'/abs' is not a revision"),
    ("hf://o/r/m.asw@a\\b", "is not a revision"),
    ("hf://o/r/m.asw@main\n", "is not a revision"),
])
def test_bad_uris(spec: str, message: str) -> None:
    with pytest.raises(hub.HubError, match=re.escape(message)):
        hub.parse(spec)


def test_local_paths_pass_through(tmp_path: Path) -> None:
    assert hub.parse(str(tmp_path / "m.asw")) is None
    located = hub.locate(tmp_path / "m.asw")
    assert located.path == tmp_path / "m.asw" and located.origin is None


# ------------------------------------------------------------------------------------------- huggingface_hub
def test_hf_resolution_pins_and_remembered_check(tmp_path: Path, converted) -> None:
    env = offline_env(tmp_path)
    source = converted(MODEL)
    blob = hf_cache_file(tmp_path / "hf", "ascend/tiny", COMMIT_A, "tiny.asw", source)
    other = tmp_path / "other.asw"  # a different file under a tag: same model converted to bf16
    shutil.copyfile(converted(MODEL, "bf16"), other)
    hf_cache_file(tmp_path / "hf", "ascend/tiny", COMMIT_B, "tiny.asw", other, refs=("v1",))

    first = run_cli("ascend-inspect", "hf://ascend/tiny/tiny.asw", "--json", env=env)
    assert first.returncode == 0, first.stderr
    info = json.loads(first.stdout)
    assert info["origin"]["revision"] == COMMIT_A and info["dtype"] == "fp16"
    assert f"revision {COMMIT_A}" in first.stderr
    assert "all" in first.stderr and "tensor hashes match (remembered in" in first.stderr
    record = hub.record_path(blob)
    assert record.parent == blob.parent and record.is_file()  # beside the blob, not in the snapshot

    again = run_cli("ascend-inspect", "hf://ascend/tiny/tiny.asw", "--json", env=env)
    assert again.returncode == 0 and "tensor hashes match" not in again.stderr  # remembered: not checked again

    for pin, commit, dtype in (("@v1", COMMIT_B, "bf16"), (f"@{COMMIT_A}", COMMIT_A, "fp16"),
                               ("@main", COMMIT_A, "fp16")):
        pinned = run_cli("ascend-inspect", f"hf://ascend/tiny/tiny.asw{pin}", "--json", env=env)
        assert pinned.returncode == 0, pinned.stderr
        assert json.loads(pinned.stdout)["origin"]["revision"] == commit
        assert json.loads(pinned.stdout)["dtype"] == dtype

    run = run_cli("ascend-run", "hf://ascend/tiny/tiny.asw", "--prompt", "Hello", "-n", "4", "--json", env=env)
    assert run.returncode == 0, run.stderr
    assert len(json.loads(run.stdout)["generated_token_ids"]) >= 1
    assert "tensor hashes match" not in run.stderr


def test_hf_offline_misses_are_one_line(tmp_path: Path, converted) -> None:
    env = offline_env(tmp_path)
    hf_cache_file(tmp_path / "hf", "ascend/tiny", COMMIT_A, "tiny.asw", converted(MODEL))
    for spec in ("hf://ascend/tiny/other.asw", "hf://ascend/none/tiny.asw", "hf://ascend/tiny/tiny.asw@v9"):
        result = run_cli("ascend-run", spec, "--prompt", "Hello", env=env)
        assert result.returncode == 2 and "not in the local huggingface_hub cache" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        no_traceback(result)


def test_hf_corrupt_blob_is_refused_and_change_invalidates_the_record(tmp_path: Path, converted) -> None:
    env = offline_env(tmp_path)
    blob = hf_cache_file(tmp_path / "hf", "ascend/tiny", COMMIT_A, "tiny.asw", converted(MODEL))
    ok = run_cli("ascend-inspect", "hf://ascend/tiny/tiny.asw", env=env)
    assert ok.returncode == 0 and hub.record_path(blob).is_file()

    os.utime(blob)  # a touch is a change: checked again (and passes)
    touched = run_cli("ascend-inspect", "hf://ascend/tiny/tiny.asw", env=env)
    assert touched.returncode == 0 and "tensor hashes match" in touched.stderr

    flip_tensor_byte(blob, "blk.1.ffn_down.weight")  # same size, same mtime: only the ctime differs
    bad = run_cli("ascend-run", "hf://ascend/tiny/tiny.asw", "--prompt", "Hello", env=env)
    assert bad.returncode == 2, bad.stderr
    assert "blk.1.ffn_down.weight" in bad.stderr and "is corrupt or incomplete and was not used" in bad.stderr
    assert f"delete {blob}" in bad.stderr
    no_traceback(bad)
    assert not hub.record_path(blob).exists()  # a failed file keeps no record
    api = subprocess.run([sys.executable, "-c", "import ascend_super; ascend_super.load('hf://ascend/tiny/tiny.asw')"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert api.returncode != 0 and "HashMismatch" in api.stderr  # the API refuses it too

    with open(blob, "r+b") as handle:  # a partial download: the data region is cut short
        handle.truncate(blob.stat().st_size - 4096)
    short = run_cli("ascend-inspect", "hf://ascend/tiny/tiny.asw", env=env)
    assert short.returncode == 2 and "truncated" in short.stderr and "was not used" in short.stderr
    no_traceback(short)


def test_hf_blob_replaced_by_another_whole_file_is_refused(tmp_path: Path, converted) -> None:
    """huggingface_hub names an LFS blob by the SHA-256 the hub published; another whole, self-consistent .asw in its
    place passes the tensor hashes, and the first-use check refuses it on that SHA-256."""
    env = offline_env(tmp_path)
    blob = hf_cache_file(tmp_path / "hf", "ascend/tiny", COMMIT_A, "tiny.asw", converted(MODEL))
    shutil.copyfile(converted(MODEL, "bf16"), blob)  # a valid file, not the one published
    result = run_cli("ascend-inspect", f"hf://ascend/tiny/tiny.asw@{COMMIT_A}", env=env)
    assert result.returncode == 1, result.stdout
    assert f"SHA-256 is {hashlib.sha256(blob.read_bytes()).hexdigest()}, not {blob.name}" in result.stderr
    assert f"delete {blob}" in result.stderr and not hub.record_path(blob).exists()
    no_traceback(result)
    shutil.copyfile(converted(MODEL), blob)  # the published file passes, both hashes
    good = run_cli("ascend-inspect", f"hf://ascend/tiny/tiny.asw@{COMMIT_A}", env=env)
    assert good.returncode == 0 and "and the SHA-256 the hub published" in good.stderr, good.stderr


def test_python_api_loads_hub_uri(tmp_path: Path, converted) -> None:
    env = offline_env(tmp_path)
    hf_cache_file(tmp_path / "hf", "ascend/tiny", COMMIT_A, "tiny.asw", converted(MODEL))
    code = ("import ascend_super\n"
            "with ascend_super.load('hf://ascend/tiny/tiny.asw', backend='cpu') as m:\n"
            "    print(m.asw.path)\n"
            "    print(len(list(m.generate_tokens(m.prompt_ids('Hello'), ascend_super.Sampling(max_new_tokens=3)))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    path, count = result.stdout.split()
    assert f"snapshots/{COMMIT_A}/tiny.asw" in path and int(count) >= 1


def test_bus_error_guard_covers_the_first_hash_check(tmp_path: Path, converted) -> None:
    """The console scripts guard a hub file's mapping before its first check reads every byte (a file truncated
    under that check is one line naming it, not a bare SIGBUS)."""
    env = offline_env(tmp_path)
    hf_cache_file(tmp_path / "hf", "ascend/tiny", COMMIT_A, "tiny.asw", converted(MODEL))
    code = ("from ascend_super.runtime import busguard, cliutil, hub\n"
            "real_verify, real_guard = hub.verify, busguard.exit_on_bus_error\n"
            "hub.verify = lambda *a, **k: (print('verify', flush=True), real_verify(*a, **k))\n"
            "busguard.exit_on_bus_error = lambda asw: (print('guard', flush=True), real_guard(asw))\n"
            "cliutil.open_model('hf://ascend/tiny/tiny.asw', 'cpu', 1, 0, False).close()\n"
            "print('loaded')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["guard", "verify", "loaded"]


# ------------------------------------------------------------------------------------------------ modelscope
def test_ms_resolution_pins_offline_and_corruption(tmp_path: Path, converted) -> None:
    pytest.importorskip("modelscope_hub")
    env = offline_env(tmp_path)
    master = ms_cache_file(tmp_path / "ms", "ascend/tiny", "master", "fp16/tiny.asw", converted(MODEL))
    ms_cache_file(tmp_path / "ms", "ascend/tiny", "v1", "fp16/tiny.asw", converted(MODEL, "bf16"))

    first = run_cli("ascend-inspect", "ms://ascend/tiny/fp16/tiny.asw", "--json", env=env)
    assert first.returncode == 0, first.stderr
    info = json.loads(first.stdout)
    assert info["origin"]["revision"] == "master" and info["origin"]["hub"] == "ModelScope"
    assert info["dtype"] == "fp16" and "tensor hashes match (remembered in" in first.stderr
    assert "checking every tensor hash" in first.stderr and "before its first use" in first.stderr  # off-terminal
    assert hub.record_path(master).parent == master.parent

    pinned = run_cli("ascend-inspect", "ms://ascend/tiny/fp16/tiny.asw@v1", "--json", env=env)
    assert pinned.returncode == 0 and json.loads(pinned.stdout)["dtype"] == "bf16"
    assert json.loads(pinned.stdout)["origin"]["revision"] == "v1"

    run = run_cli("ascend-run", "ms://ascend/tiny/fp16/tiny.asw", "--prompt", "Hello", "-n", "3", env=env)
    assert run.returncode == 0 and "tensor hashes match" not in run.stderr, run.stderr

    missing = run_cli("ascend-run", "ms://ascend/tiny/fp16/tiny.asw@v2", "--prompt", "Hello", env=env)
    assert missing.returncode == 2 and "not in the local modelscope cache" in missing.stderr
    no_traceback(missing)

    flip_tensor_byte(master, "token_embd.weight")
    bad = run_cli("ascend-inspect", "ms://ascend/tiny/fp16/tiny.asw", env=env)
    assert bad.returncode == 1 and "token_embd.weight" in bad.stderr and f"delete {master}" in bad.stderr
    no_traceback(bad)


def test_ms_older_cache_layout_is_no_pinned_revision(tmp_path: Path, converted) -> None:
    """modelscope returns a file of its older flat cache (models/OWNER/REPO/FILE, no revision kept) for any revision
    asked, if that cache exists: a pinned revision is refused in one line (it was shown as that revision), an
    unpinned one is shown with no revision; a branch's cached copy is reported as such."""
    pytest.importorskip("modelscope_hub")
    env = offline_env(tmp_path)
    legacy = tmp_path / "ms" / "models" / "ascend" / "tiny" / "tiny.asw"
    legacy.parent.mkdir(parents=True)
    shutil.copyfile(converted(MODEL), legacy)
    ms_cache_file(tmp_path / "ms", "ascend/tiny", "v1", "tiny.asw", converted(MODEL, "bf16"))

    pinned = run_cli("ascend-inspect", "ms://ascend/tiny/tiny.asw@v1", "--json", env=env)
    assert pinned.returncode == 2, pinned.stdout
    assert f"modelscope returned {legacy}, from its older cache layout, which keeps no revision" in pinned.stderr
    no_traceback(pinned)
    unpinned = run_cli("ascend-inspect", "ms://ascend/tiny/tiny.asw", "--json", env=env)
    assert unpinned.returncode == 0, unpinned.stderr
    assert json.loads(unpinned.stdout)["origin"]["revision"] is None
    assert "revision unknown" in unpinned.stderr and "older cache layout" in unpinned.stderr

    shutil.rmtree(legacy.parent.parent)
    master = ms_cache_file(tmp_path / "ms", "ascend/tiny", "master", "tiny.asw", converted(MODEL))
    os.utime(master, (1e9, 1e9))  # downloaded long ago
    branch = run_cli("ascend-inspect", "ms://ascend/tiny/tiny.asw", "--json", env=env)
    assert branch.returncode == 0 and json.loads(branch.stdout)["origin"]["revision"] == "master"
    assert "reuses a cached copy of a branch without asking the hub" in branch.stderr


def test_the_record_describes_the_file_that_was_checked(tmp_path: Path, converted, monkeypatch) -> None:
    """A hub file replaced at its path while its first check runs: the record names the file that was checked
    (its status when opened), so the replacement is checked on its next open instead of being taken as checked."""
    blob = hf_cache_file(tmp_path / "hf", "ascend/tiny", COMMIT_A, "tiny.asw", converted(MODEL))
    link = tmp_path / "hf" / "hub" / "models--ascend--tiny" / "snapshots" / COMMIT_A / "tiny.asw"
    located = hub.Located(link, hub.HubFile("hf", "ascend/tiny", "tiny.asw", COMMIT_A), COMMIT_A)
    corrupt = tmp_path / "corrupt.asw"
    shutil.copyfile(blob, corrupt)
    flip_tensor_byte(corrupt, "output_norm.weight")
    real_verify = fmt.AswFile.verify

    def verify_while_replaced(self: fmt.AswFile, *args: object, **kwargs: object) -> None:
        real_verify(self, *args, **kwargs)
        os.replace(corrupt, blob)  # another process rewrote the cached file meanwhile

    monkeypatch.setattr(fmt.AswFile, "verify", verify_while_replaced)
    hub.open_model_file(located, "cpu").close()  # the check passes, on the file that was opened
    monkeypatch.setattr(fmt.AswFile, "verify", real_verify)
    with pytest.raises(fmt.HashMismatch, match="output_norm.weight"):
        hub.open_model_file(located, "cpu")  # the replacement is not taken for checked

    def verify_while_removed(self: fmt.AswFile, *args: object, **kwargs: object) -> None:
        real_verify(self, *args, **kwargs)
        blob.unlink()  # `hf cache delete` meanwhile: the open file is still whole, and no stat of the path fails

    shutil.copyfile(converted(MODEL), blob)
    monkeypatch.setattr(fmt.AswFile, "verify", verify_while_removed)
    with hub.open_model_file(located, "cpu") as asw:
        assert len(asw.tensors) > 0


def inspect_with_modules_hidden(spec: str, hidden: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """ascend-inspect in a child process where importing each module in `hidden` fails (as if not installed)."""
    code = (f"import sys; sys.modules.update(dict.fromkeys({hidden!r}))\n"
            f"from ascend_super.runtime.inspect import main; sys.argv = ['ascend-inspect', {spec!r}, '--json']; main()")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)


def test_ms_without_a_client_is_one_line(tmp_path: Path) -> None:
    hidden = ["modelscope_hub", "modelscope_hub.compat", "modelscope", "modelscope.hub"]
    result = inspect_with_modules_hidden("ms://ascend/tiny/tiny.asw", hidden, offline_env(tmp_path))
    assert result.returncode == 2 and "pip install 'ascend-super[modelscope]'" in result.stderr
    no_traceback(result)


@pytest.mark.parametrize("how", ["--hub", "env"])
def test_convert_from_modelscope_alias(how: str, tmp_path: Path, checkpoint_dir) -> None:
    pytest.importorskip("modelscope_hub")
    env = offline_env(tmp_path)
    for file in checkpoint_dir(MODEL).iterdir():
        ms_cache_file(tmp_path / "ms", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "master", file.name, file)
    args = ["ascend-convert", "deepseek-r1-1.5b", "-o", str(tmp_path / "m.asw"), "--align", "4096", "--card"]
    if how == "--hub":
        args += ["--hub", "modelscope"]
    else:
        env["ASCEND_USE_MODELSCOPE"] = "1"
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    with fmt.AswFile.open(tmp_path / "m.asw") as asw:
        source = asw.manifest["source"]
        manifest_hash = fmt.hash_hex(asw.preamble.manifest_xxh3_64)
    assert source["kind"] == "ms-hub" and source["revision"] == "master"
    assert source["id"] == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    card = (tmp_path / "m.README.md").read_text()
    for text in ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "from ModelScope at revision `master`", "| dtype | fp16 |",
                 "| layout | nd |", "cpu or aclnn", manifest_hash, "ascend-run hf://OWNER/REPO/m.asw",
                 "ascend-super 0.1.0", "`model.safetensors`:"):
        assert text in card, text
    if how == "env":  # a repo that is not cached: one line naming ModelScope
        missing = run_cli("ascend-convert", "someone/not-cached", "-o", str(tmp_path / "x.asw"), env=env)
        assert missing.returncode == 2 and "not in the local modelscope cache" in missing.stderr
        no_traceback(missing)


# ---------------------------------------------------------------------------------- requirements on arrival
def test_requirements_in_manifest_and_inspect(converted) -> None:
    nd, nz = converted(MODEL), converted(MODEL, "fp16", "nz")
    with fmt.AswFile.open(nd) as asw:
        assert asw.manifest["requires"] == {"format_major": 1, "layout": "nd", "backends": ["cpu", "aclnn"],
                                            "soc": None}
        assert (asw.preamble.version_major, asw.preamble.version_minor) == (fmt.VERSION_MAJOR, fmt.VERSION_MINOR)
    shown = run_cli("ascend-inspect", str(nz))
    assert shown.returncode == 0
    assert "layout nz, backend aclnn, SoC ascend910b/ascend910_93" in shown.stdout.replace("\n", " ")
    refused = run_cli("ascend-run", str(nz), "--backend", "cpu", "--prompt", "Hello")
    assert refused.returncode == 2 and "runs on the aclnn backend, not cpu" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    no_traceback(refused)
    with fmt.AswFile.open(nz) as asw:
        asw.check_runnable("aclnn", soc="Ascend910_9391")
        with pytest.raises(fmt.IncompatibleFile, match="laid out for SoC family ascend910b/ascend910_93"):
            asw.check_runnable("aclnn", soc="Ascend310P3")


def test_old_files_derive_requirements() -> None:
    golden = Path(__file__).resolve().parent.parent / "artifacts" / "golden-qwen2.asw"
    with fmt.AswFile.open(golden) as asw:  # written as format 1.0, before "requires" existed
        assert "requires" not in asw.manifest and asw.preamble.version_minor == 0
        assert asw.requires == fmt.requirements("nd")


@pytest.mark.parametrize("requires, message", [
    ({"format_major": 1, "layout": "nz", "backends": ["cpu", "aclnn"], "soc": "ascend910b"}, "cannot run layout nz"),
    ({"format_major": 2, "layout": "nz", "backends": ["aclnn"], "soc": "ascend910b"}, "format_major 2"),
    ({"format_major": 1, "layout": "nd", "backends": ["aclnn"], "soc": None}, "is not the file's 'nz'"),
    ({"format_major": 1, "layout": "nz", "backends": ["aclnn"], "soc": None}, "requires.soc is null"),
    ({"format_major": 1, "layout": "nz", "backends": []}, "requires is not a map with the keys"),
])
def test_bad_requirements_are_refused(requires: dict, message: str, tmp_path: Path, converted) -> None:
    from test_format import read_parts, rebuild

    path = tmp_path / "m.asw"
    _, manifest, data = read_parts(converted(MODEL, "fp16", "nz"))
    manifest["requires"] = requires
    rebuild(path, manifest, data)
    with pytest.raises(fmt.ManifestInvalid, match=message):
        fmt.AswFile.open(path)


# ------------------------------------------------------------------------------------------ parallel verify
@pytest.mark.parametrize("threads", [1, 3])
def test_parallel_verify_names_the_first_bad_tensor(threads: int, tmp_path: Path, converted, monkeypatch) -> None:
    path = tmp_path / "m.asw"
    shutil.copyfile(converted("llama-sharded-bf16"), path)
    monkeypatch.setattr(fmt, "VERIFY_CHUNK", 4096)  # several chunks (and readahead calls) per tensor
    with fmt.AswFile.open(path) as asw:
        seen: list[str] = []
        asw.verify(lambda entry: seen.append(entry.name), threads=threads)
        assert seen == [e.name for e in sorted(asw.tensors, key=lambda e: e.offset)]  # in file order
        assert asw.by_name["token_embd.weight"].nbytes > 3 * 4096
    for name in ("blk.2.ffn_down.weight", "token_embd.weight"):  # two bad tensors: the earlier one is named
        flip_tensor_byte(path, name)
    with fmt.AswFile.open(path) as asw, pytest.raises(fmt.HashMismatch, match="'token_embd.weight'"):
        asw.verify(threads=threads)



def test_card_of_an_nz_file_says_how_to_run_it(converted) -> None:
    from ascend_super.convert.card import render_card

    with fmt.AswFile.open(converted(MODEL, "fp16", "nz")) as asw:
        card = render_card(asw, "m.asw")
    assert "| layout | nz |" in card and "aclnn (SoC ascend910b/ascend910_93)" in card
    assert 'ascend-run hf://OWNER/REPO/m.asw --backend aclnn --prompt "Hello"' in card
    assert "base_model" not in card  # only hub sources name a base model


def test_convert_refuses_a_revision_that_leaves_the_cache(tmp_path: Path) -> None:
    result = run_cli("ascend-convert", "someone/model", "--revision", "../../elsewhere", "-o", str(tmp_path / "m.asw"),
                     env=offline_env(tmp_path))
    assert result.returncode == 2 and "'../../elsewhere' is not a revision" in result.stderr, result.stderr
    no_traceback(result)
    assert not (tmp_path / "m.asw").exists()
