"""sisc_train/publishing/hub.py: which files a push uploads (the ignore patterns given to `HfApi.upload_folder`),
and the push itself against a fake Hub (no network).

huggingface_hub 2.x sends every request through one shared httpx2 client built by a factory; the tests install a
factory whose client uses a MockTransport that plays the few Hub endpoints a commit needs, and records everything.
"""

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, constants
from huggingface_hub.utils import close_session, filter_repo_objects, set_client_factory
from huggingface_hub.utils._http import default_client_factory
from safetensors.torch import save_file

try:
    import httpx2 as httpx
except ImportError:  # older huggingface_hub
    import httpx

from sisc_train.publishing.hub import (
    IGNORE_PATTERNS,
    HubPushError,
    check_hub_token,
    files_to_push,
    main,
    push_checkpoint,
)

ENDPOINT = "https://fake-hub.test"
REPO = "someone/sisc-tiny"

EXPECTED = [
    "README.md",
    "config.json",
    "configuration_sisc.py",
    "diagnostics/weights_step000010.png",
    "model.safetensors",
    "modeling_sisc.py",
    "processing_sisc.py",
    "processor_config.json",
    "results.json",
    "tokenizer_config.json",
    "vocab.txt",
]


@pytest.fixture
def ckpt(tmp_path):
    """A hand-made saved checkpoint folder, plus the leftovers a training run leaves next to it."""
    d = tmp_path / "out"
    d.mkdir()
    save_file({"w": torch.arange(4, dtype=torch.float32)}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "sisc", "auto_map": {}}))
    (d / "processor_config.json").write_text("{}")
    (d / "tokenizer_config.json").write_text("{}")
    (d / "vocab.txt").write_text("[PAD]\n[UNK]\nsquare\n")
    for name in ("configuration_sisc.py", "modeling_sisc.py", "processing_sisc.py"):
        (d / name).write_text("# code\n")
    (d / "README.md").write_text("---\nlicense: mit\n---\n# SISC tiny\n")
    (d / "results.json").write_text('{"loss": 1.0}')
    (d / "diagnostics").mkdir()
    (d / "diagnostics" / "weights_step000010.png").write_bytes(b"\x89PNG fake")
    # training-only leftovers
    (d / "checkpoints" / "step_10").mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(d / "checkpoints" / "step_10" / "model.safetensors"))
    (d / "logs" / "pretrain").mkdir(parents=True)
    (d / "logs" / "pretrain" / "events.out.tfevents.1.host").write_bytes(b"tb")
    (d / "best").mkdir()
    (d / "best" / "model.safetensors").write_bytes(b"copy")
    (d / ".hidden").write_text("x")
    (d / ".cache" / "huggingface").mkdir(parents=True)
    (d / ".cache" / "huggingface" / "upload.lock").write_text("x")
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"pyc")
    (d / "diagnostics" / "__pycache__").mkdir()
    (d / "diagnostics" / "__pycache__" / "y.pyc").write_bytes(b"pyc")
    return d


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class FakeHub:
    """Minimal Hub: create repo, branch, README metadata check, preupload (all files "regular") and commit.

    Any other request gets a 404 and is kept in `unexpected`, so a change in the client's protocol fails loudly.
    """

    def __init__(self, status: int | None = None):
        self.status = status  # force every answer to this HTTP status (e.g. 401)
        self.requests: list[tuple[str, str]] = []
        self.unexpected: list[tuple[str, str]] = []
        self.commits: list[dict] = []
        self.auth: set = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.requests.append((method, path))
        self.auth.add(request.headers.get("authorization"))
        if self.status is not None:
            return httpx.Response(self.status, json={"error": "Invalid credentials in Authorization header"})
        base = f"/api/models/{REPO}"
        if method == "POST" and path == "/api/repos/create":
            body = json.loads(request.content)
            assert body["name"] == REPO.split("/")[1] and body["organization"] == REPO.split("/")[0]
            return httpx.Response(200, json={"url": f"{ENDPOINT}/{REPO}", "name": REPO})
        if method == "POST" and path == "/api/validate-yaml":
            return httpx.Response(200, json={"errors": [], "warnings": []})
        if method == "POST" and path.startswith(f"{base}/branch/"):
            return httpx.Response(200, json={})
        if method == "POST" and path.startswith(f"{base}/preupload/"):
            files = json.loads(request.content)["files"]
            return httpx.Response(200, json={"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if method == "POST" and path.startswith(f"{base}/commit/"):
            lines = [json.loads(line) for line in request.content.decode().splitlines() if line.strip()]
            assert lines[0]["key"] == "header"
            assert all(item["key"] == "file" for item in lines[1:]), lines
            self.commits.append({
                "revision": path.rsplit("/", 1)[1],
                "message": lines[0]["value"]["summary"],
                "files": {item["value"]["path"]: base64.b64decode(item["value"]["content"]) for item in lines[1:]},
                "order": [item["value"]["path"] for item in lines[1:]],
            })
            return httpx.Response(200, json={"commitUrl": f"{ENDPOINT}/{REPO}/commit/{'0' * 40}",
                                             "commitOid": "0" * 40, "pullRequestUrl": None})
        self.unexpected.append((method, str(request.url)))
        return httpx.Response(404, json={"error": "not faked"})


@pytest.fixture(autouse=True)
def hub_env(monkeypatch, tmp_path):
    """A token, online mode, no stray token file or telemetry; the default HTTP client is restored afterwards."""
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_home" / "token"))
    monkeypatch.setattr(constants, "ENDPOINT", ENDPOINT)
    # Building the User-Agent header lazily fetches {ENDPOINT}/api/agent-harnesses once per process (telemetry,
    # cached in HF_HOME): disable it so the fake Hub sees only the push, whatever the test order.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "no_home" / "agent_harnesses.json"))
    yield
    set_client_factory(default_client_factory)
    close_session()


def install(hub) -> None:
    set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(hub)))


def test_files_to_push_skips_training_leftovers(ckpt):
    assert files_to_push(ckpt) == EXPECTED
    assert files_to_push(str(ckpt)) == EXPECTED


def excluded_by_the_documented_rule(path: str) -> bool:
    """The rule of the module docstring, written out by hand (it was the implementation before upload_folder)."""
    parts = path.split("/")
    if parts[0] in ("checkpoints", "logs", "best") and len(parts) > 1:
        return True
    return any(p.startswith(".") or p == "__pycache__" for p in parts) or parts[-1].endswith(".pyc")


@pytest.mark.parametrize("path", [
    "config.json", "model.safetensors", "diagnostics/weights_step000010.png", "diagnostics/a/b/c.png",
    "checkpoints/step_10/model.safetensors", "checkpoints/step_10/sub/dir/optimizer.bin", "checkpoints/x",
    "logs/pretrain/events.out.tfevents.1.host", "best/model.safetensors", "best/a/b.json",
    "checkpoints", "logs", "best",  # top-level files of those names are not folders: kept
    "sub/checkpoints/x.bin", "sub/logs/x", "a/b/best/c",  # only the top-level folders are left out
    "bestiary/x", "checkpoints_old/x", "logs.txt", "my_logs/x",
    ".hidden", ".gitattributes", ".git/HEAD", ".cache/huggingface/upload.lock", "a/.hidden", "a/b/.c/d", "a/.b/c/d",
    "a.b/c", "file.with.dots", "x./y",
    "__pycache__/x.cpython-311.pyc", "__pycache__/x.txt", "diagnostics/__pycache__/y.pyc", "a/b/__pycache__/c",
    "my__pycache__/x", "__pycache__x/y", "x.pyc", "a/b/x.pyc", "x.pyc.txt", "a/x.pycx",
])
def test_ignore_patterns_follow_the_documented_rule(path):
    """huggingface_hub's filter (fnmatch, `*` crossing "/") with IGNORE_PATTERNS leaves out exactly what the
    documented rule leaves out, including nested files and names that only look like the excluded ones."""
    kept = list(filter_repo_objects([path], ignore_patterns=list(IGNORE_PATTERNS)))
    assert (kept == []) == excluded_by_the_documented_rule(path)


def test_push_hands_the_patterns_to_upload_folder(ckpt, monkeypatch):
    """push_checkpoint uploads through HfApi.upload_folder with IGNORE_PATTERNS and nothing to delete; the files
    those patterns keep are files_to_push (what --dry-run prints)."""
    calls = []
    real_upload_folder = HfApi.upload_folder

    def spy(self, **kwargs):
        calls.append({name: list(v) if isinstance(v, list) else v for name, v in kwargs.items()})  # as given
        return real_upload_folder(self, **kwargs)

    monkeypatch.setattr(HfApi, "upload_folder", spy)
    hub = FakeHub()
    install(hub)
    push_checkpoint(ckpt, REPO, commit_message="m", revision="step-10")
    push_checkpoint(ckpt, REPO)
    assert len(calls) == 2 and len(hub.commits) == 2
    assert hub.unexpected == []
    for call in calls:
        assert call["ignore_patterns"] == list(IGNORE_PATTERNS)
        assert call.get("delete_patterns") is None and call.get("allow_patterns") is None
        assert Path(call["folder_path"]) == ckpt.resolve() and call["repo_id"] == REPO
    assert (calls[0]["commit_message"], calls[0]["revision"]) == ("m", "step-10")
    everything = [p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()]
    assert sorted(filter_repo_objects(everything, ignore_patterns=calls[0]["ignore_patterns"])) == EXPECTED
    assert [sorted(commit["files"]) for commit in hub.commits] == [EXPECTED, EXPECTED]


def test_files_to_push_rejects_a_folder_that_is_not_a_checkpoint(tmp_path, ckpt):
    (ckpt / "model.safetensors").unlink()  # only checkpoints/step_10/model.safetensors is left: not enough
    with pytest.raises(ValueError, match=r"safetensors"):
        files_to_push(ckpt)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"config\.json"):
        files_to_push(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a directory"):
        files_to_push(tmp_path / "missing")


def test_push_uploads_exactly_the_listed_files_in_one_commit(ckpt):
    hub = FakeHub()
    install(hub)
    before = snapshot(ckpt)
    url = push_checkpoint(ckpt, REPO, commit_message="SISC tiny, step 10")
    assert hub.unexpected == []
    assert url == f"{ENDPOINT}/{REPO}/commit/{'0' * 40}"
    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert commit["message"] == "SISC tiny, step 10"
    assert commit["revision"] == "main"
    assert sorted(commit["files"]) == files_to_push(ckpt) == EXPECTED
    for name in ("config.json", "model.safetensors", "diagnostics/weights_step000010.png"):
        assert commit["files"][name] == (ckpt / name).read_bytes()
    assert hub.auth == {"Bearer hf_fake"}
    assert [m for m, p in hub.requests if p.endswith("/commit/main")] == ["POST"]
    assert snapshot(ckpt) == before  # pushing never touches the local folder


def test_push_to_a_branch_with_an_explicit_endpoint(ckpt, monkeypatch):
    monkeypatch.setattr(constants, "ENDPOINT", "https://must-not-be-used.test")
    hub = FakeHub()
    install(hub)
    push_checkpoint(ckpt, REPO, token="hf_explicit", revision="step-10", endpoint=ENDPOINT)
    assert hub.unexpected == []
    assert ("POST", f"/api/models/{REPO}/branch/step-10") in hub.requests
    assert [c["revision"] for c in hub.commits] == ["step-10"]
    assert hub.auth == {"Bearer hf_explicit"}


def test_missing_token_fails_before_any_request(ckpt, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    assert check_hub_token() is None
    assert check_hub_token("hf_x") == "hf_x"
    hub = FakeHub()
    install(hub)
    with pytest.raises(HubPushError) as info:
        push_checkpoint(ckpt, REPO)
    msg = str(info.value)
    assert "token" in msg and "hf auth login" in msg and REPO in msg and str(ckpt.resolve()) in msg
    assert f"python -m sisc_train.publishing.hub {ckpt.resolve()} {REPO}" in msg
    assert hub.requests == []


def test_invalid_repo_id_and_non_checkpoint_fail_before_any_request(ckpt, tmp_path):
    hub = FakeHub()
    install(hub)
    with pytest.raises(HubPushError, match=r"invalid repo id") as info:
        push_checkpoint(ckpt, "a/b/c")
    assert str(ckpt.resolve()) in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HubPushError, match=r"not a saved checkpoint.*nothing was uploaded from"):
        push_checkpoint(tmp_path / "empty", REPO)
    assert hub.requests == []


def test_unreachable_hub(ckpt):
    before = snapshot(ckpt)
    # The real default client against a closed local port: a genuine connection error, no network needed.
    with pytest.raises(HubPushError) as info:
        push_checkpoint(ckpt, REPO, endpoint="http://127.0.0.1:9")
    msg = str(info.value)
    assert "could not reach the Hugging Face Hub" in msg and "127.0.0.1:9" in msg
    assert str(ckpt.resolve()) in msg and REPO in msg
    assert snapshot(ckpt) == before


def test_connect_error_from_transport(ckpt):
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(refuse)))
    with pytest.raises(HubPushError, match="could not reach the Hugging Face Hub"):
        push_checkpoint(ckpt, REPO)


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_token(ckpt, status):
    hub = FakeHub(status=status)
    install(hub)
    with pytest.raises(HubPushError) as info:
        push_checkpoint(ckpt, REPO)
    msg = str(info.value)
    assert f"HTTP {status}" in msg and "token" in msg and "write access" in msg
    assert REPO in msg and str(ckpt.resolve()) in msg
    assert hub.commits == []


def test_other_http_error(ckpt):
    hub = FakeHub(status=422)
    install(hub)
    with pytest.raises(HubPushError, match=r"HTTP 422"):
        push_checkpoint(ckpt, REPO)


def test_cli_dry_run_lists_files_without_requests(ckpt, capsys):
    hub = FakeHub()
    install(hub)
    assert main([str(ckpt), REPO, "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if not line.startswith("#")] == EXPECTED
    assert re.search(rf"{len(EXPECTED)} files .* {REPO}", out[-1])
    assert hub.requests == []


def test_cli_push_and_error_exit_code(ckpt, capsys, monkeypatch):
    hub = FakeHub()
    install(hub)
    assert main([str(ckpt), REPO, "--commit-message", "from the CLI"]) == 0
    assert capsys.readouterr().out.strip().endswith("0" * 40)
    assert hub.commits[0]["message"] == "from the CLI"
    monkeypatch.delenv("HF_TOKEN")
    assert main([str(ckpt), REPO]) == 1
    assert "no Hugging Face token found" in capsys.readouterr().err


def test_module_runs_as_script(ckpt):
    """`python -m sisc_train.publishing.hub` from the repo root (offline: a dry run makes no request)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "sisc_train.publishing.hub", str(ckpt), REPO, "--dry-run"],
                          check=False, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:len(EXPECTED)] == EXPECTED


def test_train_hub_entry_point_exit_status(ckpt, tmp_path):
    """`python -m train.hub` (the command the README gives): 0 for a dry run, 1 when the folder is no checkpoint."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for folder, status in ((ckpt, 0), (tmp_path / "missing", 1)):
        proc = subprocess.run([sys.executable, "-m", "train.hub", str(folder), REPO, "--dry-run"],
                              check=False, cwd=root, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == status, proc.stderr
    assert "not a directory" in proc.stderr


# ---- the trainers' --push_to_hub -------------------------------------------------------------------------------


def tiny_pretrain(tmp_path, *extra):
    from tests.helpers.tiny_data import write_karpathy
    from sisc_train.tasks import pretraining as pretrain

    data = write_karpathy(tmp_path / "data")
    out = tmp_path / "run"
    args = ["--dataset", str(data), "--output_dir", str(out), "--image_size", "16", "--hidden_size", "32",
            "--per_device_batch_size", "4", "--num_workers", "0", "--report_to", "none", "--max_steps", "2",
            "--eval_split", "test", "--warmup_steps", "1", *extra]
    return out, lambda: pretrain.main(args)


def test_trainer_pushes_the_saved_checkpoint(tmp_path):
    hub = FakeHub()
    install(hub)
    out, train = tiny_pretrain(tmp_path, "--push_to_hub", REPO)
    train()
    assert hub.unexpected == [] and len(hub.commits) == 1
    uploaded = sorted(hub.commits[0]["files"])
    assert uploaded == files_to_push(out)
    assert {"README.md", "config.json", "model.safetensors", "results.json", "processor_config.json",
            "configuration_sisc.py", "modeling_sisc.py", "processing_sisc.py"} <= set(uploaded)
    assert not any(name.startswith(("checkpoints/", "logs/")) for name in uploaded)
    assert hub.commits[0]["files"]["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert REPO in hub.commits[0]["files"]["README.md"].decode()  # the card's usage snippet names the Hub repo


def test_trainer_without_token_saves_first_then_fails_clearly(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("HF_TOKEN")
    hub = FakeHub()
    install(hub)
    out, train = tiny_pretrain(tmp_path, "--push_to_hub", REPO)
    with pytest.raises(HubPushError, match="token") as error:
        train()
    assert str(out.resolve()) in str(error.value) and hub.requests == []
    for name in ("model.safetensors", "config.json", "README.md", "results.json"):
        assert (out / name).is_file(), name  # nothing lost
    assert "no Hugging Face token found" in caplog.text  # warned at the start, not only at the end
