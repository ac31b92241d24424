"""Push a finished checkpoint folder to the Hugging Face Hub with `HfApi.upload_folder`.

Trainers call `push_checkpoint` on the main process *after* the folder is saved locally, so a failed push never
loses work: every `HubPushError` says where the checkpoint is and how to retry from the command line:

    python -m sisc_train.publishing.hub OUTPUT_DIR user/sisc-base [--private] [--dry-run]

What is uploaded: every file of the folder except training-only leftovers, which `IGNORE_PATTERNS` (the
`ignore_patterns` given to `upload_folder`) leaves out:
- top-level `checkpoints/` (accelerate `save_state`: optimizer/RNG state, large and useless for inference),
  `logs/` (tracker event files) and `best/` (a keep-best copy would be a second full model in the same repo;
  to publish it, push that folder itself);
- anywhere: hidden files/folders (`.git`, `.cache`, ...), `__pycache__/` and `*.pyc`.
`diagnostics/` (weight heat maps/histograms) is kept: the plots are useful on the model page.
`files_to_push` (what `--dry-run` prints) lists the same files with huggingface_hub's own pattern filter
(`filter_repo_objects`), so the dry run and the upload agree. Nothing already on the Hub is deleted.

A checkpoint is uploaded in one commit. (With `hf_xet` installed, huggingface_hub splits the upload of a very
large folder into several commits, "... (part 2)" etc.: more than ~256 files, or more than 100 MB of small
non-LFS files; a saved SISC checkpoint is far below both.)
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
from huggingface_hub.utils import filter_repo_objects, validate_repo_id

try:  # huggingface_hub 2.x talks through `httpx2`; older releases through `httpx`
    import httpx2 as _httpx
except ImportError:  # pragma: no cover
    import httpx as _httpx

logger = logging.getLogger(__name__)

EXCLUDED_TOP_DIRS = ("checkpoints", "logs", "best")
# huggingface_hub's patterns are `fnmatch` patterns matched against the whole path relative to the folder, and `*`
# also matches "/": "checkpoints/*" is every file under the top-level checkpoints/ at any depth (but neither a
# nested "x/checkpoints/" nor a top-level file named "checkpoints"); ".*" is a hidden top-level file or anything in
# a hidden top-level folder, "*/.*" the same one or more levels down. (upload_folder adds its own `.git` and
# `.cache/huggingface` patterns, which these already cover.)
IGNORE_PATTERNS = (
    *(f"{name}/*" for name in EXCLUDED_TOP_DIRS),
    ".*",
    "*/.*",
    "__pycache__",
    "__pycache__/*",
    "*/__pycache__",
    "*/__pycache__/*",
    "*.pyc",
)
NO_TOKEN_MESSAGE = "no Hugging Face token found: run `hf auth login` or set HF_TOKEN"


class HubPushError(RuntimeError):
    """A push failed; the message names the repo, the cause, the (safe) local folder and the retry command."""


def files_to_push(folder) -> list[str]:
    """Sorted relative POSIX paths a push uploads: the files `upload_folder` lists, less `IGNORE_PATTERNS`.

    Raises ValueError if `folder` is not a saved checkpoint (no `config.json` or no top-level `*.safetensors`),
    so a wrong path fails before any request instead of publishing an incomplete model.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root.resolve()} is not a directory")
    # the listing HfApi.upload_folder makes, filtered by the same function and patterns
    listed = (path.relative_to(root).as_posix() for path in root.glob("**/*") if path.is_file())
    files = sorted(filter_repo_objects(listed, ignore_patterns=list(IGNORE_PATTERNS)))
    missing = [what for what, ok in (
        ("config.json", "config.json" in files),
        ("a weights file (*.safetensors)", any("/" not in f and f.endswith(".safetensors") for f in files)),
    ) if not ok]
    if missing:
        raise ValueError(f"{root.resolve()} is not a saved checkpoint: it lacks {' and '.join(missing)}")
    return files


def check_hub_token(token: str | None = None) -> str | None:
    """The token a push would use (explicit, else `hf auth login` / HF_TOKEN), or None.

    Trainers call this at start so a missing token is reported before hours of training, not after.
    """
    if token:
        return token
    try:
        return get_token()
    # e.g. a failed OIDC exchange: report it as "no token", never crash the start of a training run
    except Exception as err:  # noqa: BLE001
        logger.debug("get_token() failed: %s", err)
        return None


def _fail(repo_id, folder, cause: str, revision=None, saved: bool = True) -> HubPushError:
    retry = f"python -m sisc_train.publishing.hub {shlex.quote(str(folder))} {shlex.quote(str(repo_id))}"
    if revision:
        retry += f" --revision {shlex.quote(revision)}"
    # `saved=False`: the folder itself is the problem, so do not call it a safe checkpoint.
    where = f"the checkpoint is saved in {folder}" if saved else f"nothing was uploaded from {folder}; fix it, then"
    return HubPushError(f"could not push to Hub repo {repo_id!r}: {cause}; {where}; retry with `{retry}`")


def _human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def push_checkpoint(folder, repo_id: str, *, token=None, private: bool | None = None,
                    commit_message: str = "Upload SISC checkpoint", revision=None, endpoint: str | None = None) -> str:
    """Create `repo_id` if needed and upload the folder less `IGNORE_PATTERNS` (= `files_to_push(folder)`) with
    `HfApi.upload_folder`; return the commit URL.

    `private` only applies when the repo is created. `revision` is a branch, created from main if missing.
    `endpoint` overrides the Hub URL (default: HF_ENDPOINT / huggingface.co), mainly for tests.
    All failures raise HubPushError; the local folder is never modified.
    """
    folder = Path(folder).resolve()
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise _fail(repo_id, folder, f"invalid repo id ({err})", revision) from err
    try:
        files = files_to_push(folder)
    except ValueError as err:
        raise _fail(repo_id, folder, str(err), revision, saved=False) from err
    token = check_hub_token(token)
    if token is None:  # checked before any request: an anonymous push can only fail, after a slow round trip
        raise _fail(repo_id, folder, NO_TOKEN_MESSAGE, revision)

    api = HfApi(endpoint=endpoint, token=token)
    total = sum((folder / f).stat().st_size for f in files)
    logger.info("Pushing %d files (%s) from %s to %s/%s", len(files), _human_size(total), folder, api.endpoint, repo_id)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        # No delete_patterns: nothing already on the Hub is deleted. A list copy: upload_folder appends its
        # default patterns to the list it is given.
        info = api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            ignore_patterns=list(IGNORE_PATTERNS),
            commit_message=commit_message,
            revision=revision,
        )
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            cause = (f"the Hub refused the token (HTTP {status}): check that it is valid and has write access "
                     f"to {repo_id.split('/')[0] if '/' in repo_id else 'your namespace'}")
        else:
            cause = f"the Hub answered HTTP {status}: {err.server_message or err}"
        raise _fail(repo_id, folder, cause, revision) from err
    except OfflineModeIsEnabled as err:
        raise _fail(repo_id, folder, "offline mode is enabled (unset HF_HUB_OFFLINE)", revision) from err
    except (_httpx.TransportError, ConnectionError, TimeoutError) as err:
        cause = f"could not reach the Hugging Face Hub at {api.endpoint} ({type(err).__name__}: {err})"
        raise _fail(repo_id, folder, cause, revision) from err
    except (ValueError, OSError) as err:  # invalid README.md metadata, unreadable local file
        raise _fail(repo_id, folder, f"{type(err).__name__}: {err}", revision) from err
    logger.info("Pushed %s to %s: %s", folder, repo_id, info.commit_url)
    return str(info.commit_url)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sisc_train.publishing.hub", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="saved checkpoint folder (config.json + *.safetensors)")
    parser.add_argument("repo_id", help="Hub repo id, e.g. user/sisc-base")
    parser.add_argument("--private", action="store_true", help="create the repo private (if it does not exist)")
    parser.add_argument("--token", default=None, help="Hub token (default: `hf auth login` or HF_TOKEN)")
    parser.add_argument("--commit-message", default="Upload SISC checkpoint")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    parser.add_argument("--dry-run", action="store_true", help="print the files that would be pushed and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.dry_run:
            try:
                validate_repo_id(args.repo_id)
                files = files_to_push(args.folder)
            except ValueError as err:
                raise _fail(args.repo_id, Path(args.folder).resolve(), str(err), args.revision, saved=False) from err
            for f in files:
                print(f)
            total = sum((Path(args.folder) / f).stat().st_size for f in files)
            print(f"# dry run: {len(files)} files ({_human_size(total)}) would be pushed to {args.repo_id}")
            if check_hub_token(args.token) is None:
                print(f"# warning: {NO_TOKEN_MESSAGE}", file=sys.stderr)
            return 0
        url = push_checkpoint(args.folder, args.repo_id, token=args.token, private=args.private or None,
                              commit_message=args.commit_message, revision=args.revision)
    except HubPushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
