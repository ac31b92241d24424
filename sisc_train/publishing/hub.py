"""Push a finished checkpoint folder to the Hugging Face Hub, in one commit.

Trainers call `push_checkpoint` on the main process *after* the folder is saved locally, so a failed push never
loses work: every `HubPushError` says where the checkpoint is and how to retry from the command line:

    python -m sisc_train.publishing.hub OUTPUT_DIR user/sisc-base [--private] [--dry-run]

What is uploaded (`files_to_push`): every file of the folder except training-only leftovers:
- top-level `checkpoints/` (accelerate `save_state`: optimizer/RNG state, large and useless for inference),
  `logs/` (tracker event files) and `best/` (a keep-best copy would be a second full model in the same repo;
  to publish it, push that folder itself);
- anywhere: hidden files/folders (`.git`, `.cache`, ...), `__pycache__/` and `*.pyc`.
`diagnostics/` (weight heat maps/histograms) is kept: the plots are useful on the model page.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id

try:  # huggingface_hub 2.x talks through `httpx2`; older releases through `httpx`
    import httpx2 as _httpx
except ImportError:  # pragma: no cover
    import httpx as _httpx

logger = logging.getLogger(__name__)

EXCLUDED_TOP_DIRS = ("checkpoints", "logs", "best")
NO_TOKEN_MESSAGE = "no Hugging Face token found: run `hf auth login` or set HF_TOKEN"


class HubPushError(RuntimeError):
    """A push failed; the message names the repo, the cause, the (safe) local folder and the retry command."""


def _excluded(rel_parts: tuple[str, ...]) -> bool:
    if rel_parts[0] in EXCLUDED_TOP_DIRS and len(rel_parts) > 1:
        return True
    return any(p.startswith(".") or p == "__pycache__" for p in rel_parts) or rel_parts[-1].endswith(".pyc")


def files_to_push(folder) -> list[str]:
    """Sorted relative POSIX paths a push uploads (see the module docstring for the rule).

    Raises ValueError if `folder` is not a saved checkpoint (no `config.json` or no top-level `*.safetensors`),
    so a wrong path fails before any request instead of publishing an incomplete model.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root.resolve()} is not a directory")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        # Prune excluded folders early: checkpoints/ can hold many GB of optimizer state.
        dirnames[:] = sorted(d for d in dirnames if not _excluded((rel_dir / d / "x").parts))
        for name in filenames:
            rel = rel_dir / name
            if not _excluded(rel.parts):
                files.append(rel.as_posix())
    files.sort()
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
    """Create `repo_id` if needed and upload exactly `files_to_push(folder)` in one commit; return the commit URL.

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
        # create_commit with explicit operations (not upload_folder + glob patterns): the uploaded set is
        # exactly the list above, and nothing already on the Hub is deleted.
        info = api.create_commit(
            repo_id,
            [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in files],
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
