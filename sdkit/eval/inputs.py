"""What the metrics read: folders of images, each image's prompt, prompts files and edit-pair files.

Images and the text inside them come from anyone: images are opened through `sdkit.images.load_image` (refused past
MAX_PIXELS before decoding), PNG text through `sdkit.outputs`' bounded readers, and prompts/pairs files are refused
past `MAX_TEXT_FILE` bytes before they are parsed.

    images = list_images(Path("outputs"), "IMAGES")          # sorted; companions such as 00001-1.control-0-canny.png skipped
    prompt_of(images[0])                                       # the recipe's prompt (sdkit) or the infotext's (A1111)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from sdkit.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_IMAGES = 100_000  # a folder's images; features of 100,000 images at 2048 floats are 0.8 GB
MAX_TEXT_FILE = 64 * 2**20  # prompts and pairs files
# A1111's infotext parameters line: `Key: value, Key: "quoted, value", ...` (modules/infotext_utils.py's re_param)
INFOTEXT_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def list_images(folder: Path, flag: str) -> list[Path]:
    """The images directly inside `folder`, sorted by name. A name with two suffixes (`<stem>.<tag>.png`) is a
    companion sdkit wrote beside an image (control maps, figures) and is skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{flag} {folder} is not a folder: give a folder of images")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and len(p.suffixes) == 1 and p.is_file())
    if not found:
        raise UserError(f"{flag} {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): give a folder of images")
    if len(found) > MAX_IMAGES:
        raise UserError(f"{flag} {folder} holds {len(found):,} images, more than the limit of {MAX_IMAGES:,}: score a subset")
    return found


def load_rgb(path: Path):
    """An image as RGB, refused past sdkit.images.MAX_PIXELS before decoding."""
    from sdkit.images import load_image

    return load_image(path, "image")


def prompt_of(path: Path) -> str | None:
    """The prompt an image was made from: its sdkit recipe's, else its A1111 `parameters` infotext's; None if neither."""
    from sdkit.outputs import read_recipe, read_text_chunks

    chunks = read_text_chunks(path)
    if "sdkit" in chunks:
        prompt = read_recipe(path)["recipe"].get("prompt")
        if not isinstance(prompt, str):
            raise UserError(f"{path}: the prompt in its sdkit metadata is not text: give prompts with --prompts")
        return prompt
    if "parameters" in chunks:
        return infotext_prompt(chunks["parameters"])
    return None


def infotext_prompt(text: str) -> str:
    """The positive prompt of an A1111 infotext: the lines before `Negative prompt:` and before the parameters line
    (the last line, when it holds at least three `Key: value` pairs, as A1111's own reader decides)."""
    lines = text.strip().split("\n")
    if len(INFOTEXT_PARAM.findall(lines[-1])) >= 3:
        lines = lines[:-1]
    prompt = []
    for line in lines:
        if line.startswith("Negative prompt:"):
            break
        prompt.append(line)
    return "\n".join(prompt).strip()


def read_text_file(path: Path, flag: str) -> str:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    size = path.stat().st_size
    if size > MAX_TEXT_FILE:
        raise UserError(f"{flag} {path} is {size:,} bytes, more than the limit of {MAX_TEXT_FILE:,}: split it")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{flag} {path} is not UTF-8 text: save it as UTF-8") from None


def json_lines(path: Path, flag: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSON-lines file; anything but an object is refused."""
    rows = [(number, json_value(line, f"{path}:{number}"))
            for number, line in enumerate(read_text_file(path, flag).splitlines(), 1) if line.strip()]  # fmt: skip
    for where, row in rows:
        if not isinstance(row, dict):
            raise UserError(f"{path}:{where}: a line must be a JSON object, not {type(row).__name__}")
    return rows


def json_value(text: str, where: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise UserError(f"{where}: not valid JSON: write one JSON object per line") from None


def prompts_for(images: list[Path], prompts_file: Path | None) -> list[str]:
    """One prompt per image: from `prompts_file` (metadata.jsonl with file_name/text, or one line per image), else
    from each image's own metadata."""
    if prompts_file is None:
        prompts = []
        for image in images:
            prompt = prompt_of(image)
            if prompt is None:
                raise UserError(f"{image} has no prompt in its metadata (no sdkit recipe, no A1111 infotext): give --prompts FILE")
            prompts.append(prompt)
        return prompts
    if Path(prompts_file).suffix == ".jsonl":
        by_name = {}
        for number, row in json_lines(prompts_file, "--prompts"):
            name, text = row.get("file_name"), row.get("text")
            if not isinstance(name, str) or not isinstance(text, str):
                raise UserError(f"{prompts_file}:{number}: give file_name and text as strings (a Hugging Face imagefolder's metadata)")
            by_name[Path(name).name] = text
        missing = [p.name for p in images if p.name not in by_name]
        if missing:
            raise UserError(f"--prompts {prompts_file} has no line for {missing[0]} ({len(missing)} image(s) without a prompt): add them")
        return [by_name[p.name] for p in images]
    lines = [line.strip() for line in read_text_file(prompts_file, "--prompts").splitlines() if line.strip()]
    if len(lines) != len(images):
        raise UserError(
            f"--prompts {prompts_file} has {len(lines)} prompt(s) for {len(images)} image(s): give one line per image, "
            "in file-name order"
        )
    return lines


@dataclass(frozen=True)
class EditPair:
    init: Path
    output: Path
    source: str
    edit: str


PAIR_KEYS = ("init", "output", "source", "edit")


def read_pairs(path: Path) -> list[EditPair]:
    """The edits of a pairs file: one JSON object per line with init/output (image paths, relative to the file) and
    source/edit (captions)."""
    pairs = []
    for number, row in json_lines(path, "PAIRS"):
        if sorted(row) != sorted(PAIR_KEYS) or not all(isinstance(row[k], str) and row[k] for k in PAIR_KEYS):
            raise UserError(f"{path}:{number}: give exactly {', '.join(PAIR_KEYS)} as non-empty strings (got {', '.join(row)})")
        base = Path(path).parent
        pairs.append(EditPair(base / row["init"], base / row["output"], row["source"], row["edit"]))
    if not pairs:
        raise UserError(f"{path} holds no pairs: write one JSON object per line")
    return pairs
