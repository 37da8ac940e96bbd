"""Where annotator weights come from: a local folder (flag / recipe field, or $SDKIT_ANNOTATORS) or the Hugging Face Hub.

Local layout: files of `lllyasviel/Annotators` at the top of the folder (a clone of that repository works as is);
files of any other repository under its id, e.g. `ANNOTATORS/Intel/dpt-hybrid-midas/config.json`.

    folder = weights_folder("lllyasviel/Annotators", ("body_pose_model.pth",), annotators_dir, "openpose")

returns a local folder holding every listed file (downloading into the hub cache when no folder is given), or raises a
one-line UserError naming the missing file and how to supply it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sdkit.errors import UserError
from sdkit.schema.control import ANNOTATORS_ENV

DEFAULT_REPO = "lllyasviel/Annotators"
HOW = f"pass --annotators-dir DIR (or set ${ANNOTATORS_ENV}) pointing at a folder that holds it"


def annotators_dir(given: Path | str | None) -> Path | None:
    """The local annotator folder to use: the given one, else $SDKIT_ANNOTATORS, else None (the hub)."""
    if given is None:
        env = os.environ.get(ANNOTATORS_ENV, "").strip()
        if not env:
            return None
        given, source = env, f"${ANNOTATORS_ENV}"
    else:
        source = "--annotators-dir"
    folder = Path(given).expanduser()
    if not folder.is_dir():
        raise UserError(f"{source} {folder} is not a folder: give the folder that holds the annotator weights")
    return folder


def local_folder(root: Path, repo: str) -> Path:
    """Where `repo`'s files live inside a local annotator folder."""
    return root if repo == DEFAULT_REPO else root.joinpath(*repo.split("/"))


def weights_folder(repo: str, files: Sequence[str], root: Path | None, kind: str) -> Path:
    """A local folder holding `files` of hub repository `repo` (see the module docstring). An entry "a|b" is satisfied
    by either file (e.g. "model.safetensors|pytorch_model.bin": the first one the folder or repository has)."""
    if root is not None:
        folder = local_folder(root, repo)
        for entry in files:
            choices = entry.split("|")
            if not any((folder / name).is_file() for name in choices):
                raise UserError(
                    f"{kind} weights {folder / choices[0]} not found: copy {' or '.join(choices)} from the hub "
                    f"repository {repo} there, or leave --annotators-dir unset to download it"
                )
        return folder
    folders = {_hub_file(repo, entry.split("|"), kind) for entry in files}
    if len(folders) != 1:
        raise ValueError(f"{kind}: expected one snapshot folder for {repo}, got {sorted(map(str, folders))}")
    return folders.pop()


def _hub_file(repo: str, choices: Sequence[str], kind: str) -> Path:
    """Download the first of `choices` the repository has; return its snapshot folder."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    for i, name in enumerate(choices):
        try:
            path = Path(hf_hub_download(repo, name))
        except (LocalEntryNotFoundError, OSError) as err:  # not cached while offline, network or repository errors
            if i + 1 < len(choices) and isinstance(err, LocalEntryNotFoundError):
                continue  # the cache may hold another alternative
            offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
            why = "the hub is offline (HF_HUB_OFFLINE=1)" if offline else f"download failed ({type(err).__name__})"
            raise UserError(
                f"{kind} weights {' or '.join(choices)} of hub repository {repo} not available, {why}: {HOW}"
            ) from None
        except EntryNotFoundError:  # the repository exists but lacks this alternative
            if i + 1 < len(choices):
                continue
            raise UserError(f"{kind} weights: hub repository {repo} has no {' or '.join(choices)}: {HOW}") from None
        for _ in Path(name).parts:
            path = path.parent
        return path
    raise ValueError(f"{kind}: no file alternatives given for {repo}")
