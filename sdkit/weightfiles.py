"""Weight files made by other people: what a file is (read from its bytes, never its name), whether it may be loaded,
and one-line refusals when torch's weights_only loader finds code in a pickle.

    weights_format(path)                      # "safetensors", "pickle", or what it is instead ("text", "empty", ...)
    check_weights(path, "--lora", allow_pickle)
    with refusing_code([path]):               # a pickle that holds code -> UserError "refused: PATH contains code ..."
        pipe.load_lora_weights(str(path))

A pickle can run code when it is loaded, whatever the file is called: a pickled LoRA renamed `lora` or
`lora.safetensors` is still a pickle, so `--allow-pickle` is asked for by content. Pickles that are allowed are loaded
by torch with `weights_only=True` (diffusers and transformers pass it), which refuses any object other than tensors
and plain containers; `refusing_code` turns that refusal (an UnpicklingError deep inside diffusers' OSError) into
exit 2 naming the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import re
import tarfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from sdkit.errors import UserError

SAFETENSORS = "safetensors"
PICKLE = "pickle"  # torch's zip format, a raw pickle (protocol 2-5, also torch's legacy format), or torch's old tar
MAX_HEADER = 100 * 2**20
# file starts that are neither safetensors nor a pickle, named for the error message
MAGIC = (
    (b"version https://git-lfs", "a git-LFS pointer"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GGUF", "a GGUF file"),
    (b"\x1f\x8b", "a gzip archive"),
)
REFUSE_FIX = "use a .safetensors file from a trusted source"


def weights_format(path: Path) -> str:
    """What the bytes of `path` are: SAFETENSORS (an 8-byte little-endian header length, then a JSON object), PICKLE
    (a zip holding `data.pkl` as torch.save writes, the pickle opcode PROTO 2-5, or torch's old tar with a `pickle`
    member), or else a few words saying what it is instead: "empty", "a git-LFS pointer", "an HTML page", "text", ..."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(512)
    if size == 0:
        return "empty"
    length = int.from_bytes(head[:8], "little") if size >= 8 else -1
    if 2 <= length <= min(MAX_HEADER, size - 8) and head[8:9] == b"{":
        return SAFETENSORS
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return PICKLE
    if head.startswith(b"PK\x03\x04"):
        return PICKLE if _zip_holds_pickle(path) else "a zip archive without a torch pickle"
    if head[257:262] == b"ustar":
        return PICKLE if _tar_holds_pickle(path) else "a tar archive without a torch pickle"
    for magic, what in MAGIC:
        if head.startswith(magic):
            return what
    if head.lstrip()[:1] == b"<" and b"html" in head.lower():
        return "an HTML page"
    try:
        text = head.decode()
    except UnicodeDecodeError as err:  # a character cut at the end of the 512 bytes is still text
        if err.start < len(head) - 3:
            return "unrecognised bytes"
        text = head[: err.start].decode()
    return "text" if all(c.isprintable() or c.isspace() for c in text) else "unrecognised bytes"


def _zip_holds_pickle(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name == "data.pkl" or name.endswith("/data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _tar_holds_pickle(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:") as archive:
            return "pickle" in archive.getnames()
    except (tarfile.TarError, OSError):
        return False


NOT_WEIGHTS_FIX = {
    "empty": "is empty (0 bytes): download it again",
    "a git-LFS pointer": "is a git-LFS pointer, not the weights: run `git lfs pull` in its repository",
    "an HTML page": "is an HTML page, not weights (a failed download?): download the file again",
}


def check_safetensors(path: Path, label: str = "") -> None:
    """Raise a UserError unless `path` is a complete safetensors file (header and data length agree); the message
    starts with `label` (the flag that named the file), if given."""
    path = Path(path)
    where = f"{label} {path}" if label else str(path)
    kind = weights_format(path)
    if kind == PICKLE or kind.startswith("a zip"):
        raise UserError(f"{where} {_renamed_pickle(path)}")
    if kind in NOT_WEIGHTS_FIX:
        raise UserError(f"{where} {NOT_WEIGHTS_FIX[kind]}")
    if kind not in (SAFETENSORS, "unrecognised bytes"):
        raise UserError(f"{where} is not a safetensors file (it is {kind}): check the file or download it again")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if size >= 8 else -1
        if not 2 <= length <= min(MAX_HEADER, size - 8):
            raise UserError(f"{where} is not a safetensors file (bad header length): check the file or download it again")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{where} is not a safetensors file (unreadable header): download it again") from None
    if not isinstance(header, dict):
        raise UserError(f"{where} is not a safetensors file (header is not a table): download it again")
    offsets = [v.get("data_offsets") if isinstance(v, dict) else None for k, v in header.items() if k != "__metadata__"]
    if not all(isinstance(o, list) and len(o) == 2 and all(isinstance(n, int) for n in o) for o in offsets):
        raise UserError(f"{where} is not a safetensors file (a tensor entry has no data offsets): download it again")
    end = max((o[1] for o in offsets), default=0)
    if 8 + length + end > size:
        raise UserError(f"{where} is truncated ({size} bytes, needs {8 + length + end}): download it again")


def _renamed_pickle(path: Path) -> str:
    with Path(path).open("rb") as f:
        what = "a zip" if f.read(2) == b"PK" else "a pickle"
    return f"is {what} (a pickled torch file renamed .safetensors), not safetensors: convert it or use the real file"


def check_weights(path: Path, label: str, allow_pickle: bool, *, by_name: bool = False) -> str:
    """Check a weights file by its bytes and return its format (SAFETENSORS or PICKLE); raise a UserError for a pickle
    without `allow_pickle`, a damaged safetensors file, or a file that is neither.

    `by_name`: the loader picks its reader from the file name (diffusers' single-file and folder loaders), so the name
    must agree with the bytes; LoRA and embedding loaders try safetensors first whatever the name."""
    path = Path(path)
    where = f"{label} {path}" if label else str(path)
    kind = weights_format(path)
    if kind == PICKLE:
        if path.suffix == ".safetensors":
            raise UserError(f"{where} {_renamed_pickle(path)}")
        if not allow_pickle:
            raise UserError(
                f"{where} is a pickle file, which can run code when loaded: use a .safetensors file, "
                "or pass --allow-pickle to load it with torch's weights_only=True"
            )
        return PICKLE
    if kind == SAFETENSORS or path.suffix == ".safetensors":
        check_safetensors(path, label)
        if by_name and path.suffix != ".safetensors":
            raise UserError(
                f"{where} holds safetensors but is named {path.suffix or 'without an extension'}, and the loader goes "
                f"by the name: rename it to {path.stem}.safetensors"
            )
        return SAFETENSORS
    if kind in NOT_WEIGHTS_FIX:
        raise UserError(f"{where} {NOT_WEIGHTS_FIX[kind]}")
    raise UserError(f"{where} is not a weights file (it is {kind}, neither safetensors nor a torch pickle): give a .safetensors file")


def unpickling_error(err: BaseException | None) -> pickle.UnpicklingError | None:
    """The UnpicklingError behind `err` (diffusers re-raises it as OSError, two exceptions up), if any."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, pickle.UnpicklingError):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def _chain_text(err: BaseException | None) -> str:
    """The messages of `err` and the exceptions it was raised from or during, one after another."""
    chain = []
    while err is not None and len(chain) < 10:
        chain.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(chain)


def refusal(path: Path | str, err: pickle.UnpicklingError, fix: str = REFUSE_FIX) -> UserError:
    """The one-line error for a pickle that torch's weights_only loader refused."""
    text = _chain_text(err)
    found = re.search(r"GLOBAL (\S+)", text)
    if found:
        return UserError(f"refused: {path} contains code, not just tensors (it calls {found.group(1)}): {fix}")
    detail = re.search(r"Unsupported [^\n]*|Trying to load [^\n]*", text)
    return UserError(
        f"refused: {path} is not a pickle of plain tensors that torch's weights_only loader reads "
        f"({detail.group(0).strip()[:120] if detail else 'unreadable'}): {fix}"
    )


@contextlib.contextmanager
def refusing_code(files: Sequence[Path], where: Path | str | None = None, fix: str = REFUSE_FIX) -> Iterator[None]:
    """Turn torch's weights_only refusal of one of `files` (raised anywhere inside) into a UserError naming the file.

    The file is the one the error chain names (diffusers does), else the only candidate, else the first candidate
    that torch refuses again (only on this error path), else `where`."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        refused = unpickling_error(err)
        if refused is None:
            raise
        raise refusal(_culprit(err, files, where), refused, fix) from None


def _culprit(err: BaseException, files: Sequence[Path], where: Path | str | None) -> Path | str:
    text = _chain_text(err)
    named = [f for f in files if str(f) in text]
    if named:
        return named[0]
    if len(files) == 1:
        return files[0]
    quoted = re.search(r"checkpoint file for '([^']+)'", text)  # diffusers' OSError, e.g. a file in the hub cache
    if quoted:
        return quoted.group(1)
    import torch

    for file in files:
        try:
            torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
        except pickle.UnpicklingError:
            return file
        except Exception:  # damaged in another way: not the file we look for
            continue
    return where if where is not None else (files[0] if files else "a pickle file")


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """diffusers, transformers and peft say nothing inside (log records of any level, Python warnings): sdkit turns
    their failures into its own one-line error, and their logs repeat it over dozens of lines (a LoRA that does not
    fit an SDXL UNet logs one line per mismatched layer). The loggers' levels are restored on exit."""
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers", "peft")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
