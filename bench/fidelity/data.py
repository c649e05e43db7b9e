"""Build a real-text 20-class topic task from documentation prose installed on this machine.

Each class is one Python package or stdlib area; its texts are paragraphs of the docstrings (module,
class and function) found in that package's source files, read with `ast` (nothing is imported).
Paragraphs are cleaned (doctest lines, RST underlines and directives dropped, `:role:`x`` markup
reduced to x), kept when they hold 20-120 words and read as prose (most words alphabetic), and the
packages' own names are masked ("torch.nn.Linear" -> "package.nn.Linear") so the task is about what
the text says rather than a name lookup. Exact and near duplicates (same first and last words) are
dropped, also across classes. Every class gets the same number of paragraphs, drawn with a seeded
generator, and is split into train / validation / calibration / test.

Output (under --out, default bench/out/data): `train.jsonl`, `validation.jsonl`, `calibration.jsonl`,
`test.jsonl` (objects with text, label, label_name, source) and `manifest.json` (classes, sources,
counts, package versions, sha256 of each split).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import random
import re
import sys
import sysconfig
import time
from importlib import metadata
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "out" / "data"

# label -> top-level modules / packages whose docstrings make up the class
CLASSES: dict[str, tuple[str, ...]] = {
    "concurrency": (
        "asyncio",
        "concurrent",
        "multiprocessing",
        "threading",
        "queue",
        "selectors",
        "subprocess",
        "sched",
        "asyncore",
        "asynchat",
        "_threading_local",
        "signal",
        "anyio",
    ),
    "stdlib-net-email": (
        "email",
        "http",
        "urllib",
        "smtplib",
        "imaplib",
        "poplib",
        "ftplib",
        "mailbox",
        "xmlrpc",
        "wsgiref",
        "socketserver",
        "ssl",
        "socket",
    ),
    "stdlib-tkinter-idle": ("tkinter", "idlelib", "turtle", "turtledemo"),
    "cli": ("click", "typer", "rich", "argparse", "optparse", "getopt", "cmd", "shlex"),
    "torch": ("torch",),
    "numpy": ("numpy",),
    "scipy": ("scipy",),
    "scikit-learn": ("sklearn",),
    "sympy": ("sympy",),
    "mpmath": ("mpmath",),
    "networkx": ("networkx",),
    "sqlalchemy": ("sqlalchemy", "alembic"),
    "aws": ("boto3", "botocore", "s3transfer"),
    "pydantic": ("pydantic", "pydantic_settings"),
    "transformers": ("transformers",),
    "huggingface-hub": ("huggingface_hub",),
    "web": ("werkzeug", "flask", "starlette", "fastapi", "uvicorn"),
    "testing": ("_pytest", "hypothesis", "unittest"),
    "packaging": ("setuptools", "pip"),
    "templating": ("jinja2", "mako", "pygments", "markdown_it"),
}
# Distribution names for the manifest (where they differ from the module name).
DISTRIBUTIONS = {"sklearn": "scikit-learn", "_pytest": "pytest", "markdown_it": "markdown-it-py"}
# Names that would give the label away; replaced by MASK wherever they occur as a word.
MASKED = (
    "asyncio",
    "anyio",
    "tkinter",
    "idlelib",
    "tk",
    "tcl",
    "idle",
    "turtle",
    "argparse",
    "optparse",
    "getopt",
    "click",
    "typer",
    "rich",
    "torch",
    "pytorch",
    "numpy",
    "np",
    "scipy",
    "sklearn",
    "scikit-learn",
    "sympy",
    "mpmath",
    "networkx",
    "nx",
    "sqlalchemy",
    "alembic",
    "boto3",
    "botocore",
    "boto",
    "s3transfer",
    "pydantic",
    "transformers",
    "huggingface_hub",
    "huggingface",
    "hugging face",
    "werkzeug",
    "flask",
    "starlette",
    "fastapi",
    "uvicorn",
    "pytest",
    "_pytest",
    "hypothesis",
    "unittest",
    "setuptools",
    "distutils",
    "pip",
    "jinja2",
    "jinja",
    "mako",
    "pygments",
    "markdown_it",
    "markdown-it",
)
MASK = "package"
SKIP_DIRS = {"tests", "test", "testing", "_vendor", "vendor", "__pycache__", "benchmarks", "examples"}
SPLITS = ("train", "validation", "calibration", "test")
MIN_WORDS, MAX_WORDS = 20, 120

_ROLE = re.compile(r":[\w:.-]+:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")
_MASK_RE = re.compile(r"(?<![\w-])(" + "|".join(re.escape(n) for n in MASKED) + r")(?![\w-])", re.IGNORECASE)
_UNDERLINE = re.compile(r"^\s*([=\-~^\"'*+#`])\1{2,}\s*$")
_DIRECTIVE = re.compile(r"^\s*\.\.\s")
_WORD = re.compile(r"^[A-Za-z][a-z'-]*[.,;:!?)]*$|^\(?[A-Za-z][a-z'-]*$")


def module_roots(name: str) -> list[Path]:
    """The .py files or the package folder of a top-level module, in the stdlib or site-packages."""
    paths = sysconfig.get_paths()
    for base in (paths["stdlib"], paths["purelib"]):
        folder, single = Path(base) / name, Path(base) / f"{name}.py"
        if folder.is_dir():
            return [folder]
        if single.is_file():
            return [single]
    raise SystemExit(f"module {name!r} not found in the stdlib or site-packages")


def source_files(modules: tuple[str, ...]) -> list[Path]:
    files: list[Path] = []
    for name in modules:
        for root in module_roots(name):
            if root.is_file():
                files.append(root)
                continue
            files.extend(
                p for p in root.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])
            )
    return sorted(files)


def docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [d for node in ast.walk(tree) if isinstance(node, kinds) and (d := ast.get_docstring(node))]


def clean(paragraph: str) -> str | None:
    """Prose of one docstring paragraph with markup reduced, or None when it is not prose."""
    lines = []
    for line in paragraph.splitlines():
        s = line.strip()
        if not s or s.startswith((">>>", "...", "$ ", "%")) or _UNDERLINE.match(s) or _DIRECTIVE.match(s):
            continue
        lines.append(s)
    text = " ".join(lines)
    text = _ROLE.sub(r"\1", text).replace("``", "").replace("`", "")
    text = re.sub(r"\s+", " ", text).strip()
    words = text.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    if sum(bool(_WORD.match(w)) for w in words) < 0.6 * len(words):
        return None  # code, tables, parameter lists
    return _MASK_RE.sub(MASK, text)


def near_key(text: str) -> str:
    words = re.findall(r"[a-z]+", text.lower())
    return " ".join([*words[:8], "|", *words[-8:]])


def collect(label: str, modules: tuple[str, ...], want: int, rng: random.Random) -> list[dict]:
    """Cleaned paragraphs of one class, reading its files in a seeded order until there are enough."""
    files = source_files(modules)
    rng.shuffle(files)
    out: list[dict] = []
    for path in files:
        for doc in docstrings(path):
            for para in re.split(r"\n\s*\n", doc):
                text = clean(para)
                if text is not None:
                    module = path.stem if path.stem != "__init__" else path.parent.name
                    out.append({"text": text, "label_name": label, "source": module})
        if len(out) >= want:
            break
    return out


def build(per_class: int, split_sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
    if sum(split_sizes.values()) != per_class:
        raise SystemExit("split sizes must add up to --per-class")
    pools: dict[str, list[dict]] = {}
    for i, (label, modules) in enumerate(CLASSES.items()):
        # Read about 3x what is needed: duplicates and cross-class collisions are removed below.
        pools[label] = collect(label, modules, 3 * per_class, random.Random(f"{seed}:{i}"))
    # Drop exact and near duplicates, within and across classes (keys seen in two classes go).
    owner: dict[str, set[str]] = {}
    for label, items in pools.items():
        for item in items:
            for key in (item["text"].lower(), near_key(item["text"])):
                owner.setdefault(key, set()).add(label)
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for index, (label, items) in enumerate(pools.items()):
        seen: set[str] = set()
        unique = []
        for item in items:
            keys = (item["text"].lower(), near_key(item["text"]))
            if any(len(owner[k]) > 1 or k in seen for k in keys):
                continue
            seen.update(keys)
            unique.append(item)
        if len(unique) < per_class:
            raise SystemExit(f"class {label}: only {len(unique)} unique paragraphs (< {per_class})")
        rng = random.Random(f"{seed}:pick:{label}")
        chosen = rng.sample(unique, per_class)
        start = 0
        for split in SPLITS:
            for item in chosen[start : start + split_sizes[split]]:
                splits[split].append({"text": item["text"], "label": index, **item})
            start += split_sizes[split]
    for split, items in splits.items():
        random.Random(f"{seed}:order:{split}").shuffle(items)
    return splits


def version(module: str) -> str:
    try:
        return metadata.version(DISTRIBUTIONS.get(module, module))
    except metadata.PackageNotFoundError:
        return f"stdlib {sys.version.split()[0]}"


def write(splits: dict[str, list[dict]], out: Path, args: argparse.Namespace) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "task": "20-class topic of documentation paragraphs (docstrings of installed packages)",
        "seed": args.seed,
        "words": [MIN_WORDS, MAX_WORDS],
        "mask": MASK,
        "labels": list(CLASSES),
        "sources": {label: list(mods) for label, mods in CLASSES.items()},
        "versions": {m: version(m) for mods in CLASSES.values() for m in mods},
        "splits": {},
    }
    for split, items in splits.items():
        data = "".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in items)
        (out / f"{split}.jsonl").write_text(data, encoding="utf-8")
        words = [len(item["text"].split()) for item in items]
        manifest["splits"][split] = {
            "texts": len(items),
            "per_class": len(items) // len(CLASSES),
            "mean_words": round(sum(words) / len(words), 1),
            "sha256": hashlib.sha256(data.encode()).hexdigest(),
        }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_split(split: str, data_dir: Path = OUT) -> tuple[list[str], list[int]]:
    """(texts, labels) of one split."""
    items = [json.loads(line) for line in (data_dir / f"{split}.jsonl").read_text("utf-8").splitlines()]
    return [i["text"] for i in items], [int(i["label"]) for i in items]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=400, help="paragraphs per class")
    parser.add_argument(
        "--splits",
        default="200,40,80,80",
        help="per-class sizes of train,validation,calibration,test (default: %(default)s)",
    )
    args = parser.parse_args()
    sizes = dict(zip(SPLITS, (int(x) for x in args.splits.split(","))))
    start = time.perf_counter()
    splits = build(args.per_class, sizes, args.seed)
    manifest = write(splits, args.out, args)
    took = time.perf_counter() - start
    for split, info in manifest["splits"].items():
        per_class, words = info["per_class"], info["mean_words"]
        print(f"{split:12s} {info['texts']:5d} texts ({per_class} per class), {words} words on average")
    print(f"{len(CLASSES)} classes, written to {args.out} in {took:.1f}s")


if __name__ == "__main__":
    main()
