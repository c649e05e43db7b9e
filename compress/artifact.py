"""The NOLA artifact: one safetensors file, written and read here.

tensors   `nola.codes` (uint8: every factor's exponents and packed codes), `nola.scales` (fp16 group
          scales), and every tensor NOLA does not model under its PEFT key (lossless).
metadata  format name/version and the PEFT config (see codec.py); `nola.header`: JSON (zlib, then
          base64, since per-module records would otherwise outweigh a small adapter's coefficients)
          with the generator (name, version, seed, fingerprint), basis family, layout, group size,
          the source digest, the codec parameters and fidelity summary, and one record per module
          (shapes, dtypes, and per factor: each row's k and format, byte ranges, basis digest,
          errors);
          `nola.checksum`: sha256 of everything else, so any corruption or edit is caught.
`adapters inspect` prints the header.

Reading checks, in order: the checksum, the generator's name, version and fingerprint on this device,
every byte range, every coefficient format, and every module's basis digest: only then are the
factors rebuilt, batch by batch of same-shaped modules (bounded memory).
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from . import philox, stfile, transform, transform_read, transform_v2
from .bases import FAMILIES, basis_key, make_basis
from .errors import InvalidArtifact
from .peft_io import KEY_PREFIX, LoraCheckpoint, LoraPair, config_json
from .protocol import CONFIG_KEY, FORMAT_KEY, VERSION_KEY
from .quant import FORMATS, FactorCode

FORMAT = "nola"
# Version 2 added the transform layout (transform.py); version 3 codes its integers under tabulated
# models (transform_entropy.py). Version 1 files (rows layout) and version 2 files still read.
FORMAT_VERSION = 3
READ_VERSIONS = (1, 2, 3)
HEADER_KEY = "nola.header"
CHECKSUM_KEY = "nola.checksum"
CODES_KEY = "nola.codes"
SCALES_KEY = "nola.scales"
CONFIG_FIELD = "peft_config"  # the header field holding the PEFT config (transform layout)
LAYOUT = "rows"
_DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
_DTYPES = {v: k for k, v in _DTYPE_NAMES.items()}
DIGEST_MISMATCH = "basis digest mismatch (generator or module list differ)"
# Modules decoded together are bounded so the largest intermediate stays near this many numbers.
BATCH_ELEMENTS = 1 << 25


def default_keys(module: str) -> tuple[str, str]:
    return f"{KEY_PREFIX}{module}.lora_A.weight", f"{KEY_PREFIX}{module}.lora_B.weight"


def encode_header(header: dict[str, Any]) -> str:
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return base64.b64encode(zlib.compress(text, 9)).decode()


def decode_header(value: str) -> dict[str, Any]:
    try:
        header = json.loads(zlib.decompress(base64.b64decode(value, validate=True)))
    except (ValueError, zlib.error):
        raise InvalidArtifact("corrupt: the NOLA header cannot be read") from None
    if not isinstance(header, dict):
        raise InvalidArtifact("corrupt: the NOLA header is not an object")
    return header


def checksum(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    meta = {k: v for k, v in metadata.items() if k != CHECKSUM_KEY}
    return hashlib.sha256(stfile.dumps(tensors, meta)).hexdigest()


def basis_digests(
    modules: Sequence[tuple[LoraPair, FactorCode, FactorCode]], family: str, seed: int, device: torch.device
) -> list[tuple[str, str]]:
    """Each module's (A, B) basis digests, building the bases batched by size."""
    out: dict[tuple[str, int], str] = {}
    for side in ("A", "B"):
        by_n: dict[int, list[int]] = defaultdict(list)
        for i, (pair, _, _) in enumerate(modules):
            by_n[pair.in_features if side == "A" else pair.out_features].append(i)
        for n, members in by_n.items():
            ks = [max(1, modules[i][1 if side == "A" else 2].kmax) for i in members]
            keys = [basis_key(seed, modules[i][0].module, side) for i in members]
            for i, digest in zip(members, make_basis(family, n, ks, keys, device).digests()):
                out[(side, i)] = digest
    return [(out[("A", i)], out[("B", i)]) for i in range(len(modules))]


def pack(
    checkpoint: LoraCheckpoint,
    modules: Sequence[tuple[LoraPair, FactorCode, FactorCode]],
    digests: Sequence[tuple[str, str]],
) -> tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor]:
    """Module records and the concatenated byte and scale tensors they point into."""
    records, codes, scales = [], [], []
    offsets = [0, 0]
    for (pair, qa, qb), (digest_a, digest_b) in zip(modules, digests):
        record: dict[str, Any] = {
            "module": pair.module,
            "rank": pair.rank,
            "in": pair.in_features,
            "out": pair.out_features,
            "dtype_a": _DTYPE_NAMES[checkpoint.tensors[pair.a_key].dtype],
            "dtype_b": _DTYPE_NAMES[checkpoint.tensors[pair.b_key].dtype],
        }
        if (pair.a_key, pair.b_key) != default_keys(pair.module):
            record.update(a_key=pair.a_key, b_key=pair.b_key)
        for side, code, digest in (("A", qa, digest_a), ("B", qb, digest_b)):
            payload, row_scales = code.payload(), code.scales()
            record[side] = {
                "k": code.ks,
                "format": code.fmts,
                "digest": digest,
                "codes": [offsets[0], payload.numel()],
                "scales": [offsets[1], row_scales.numel()],
            }
            offsets[0] += payload.numel()
            offsets[1] += row_scales.numel()
            codes.append(payload)
            scales.append(row_scales)
        records.append(record)
    codes_t = torch.cat(codes) if codes else torch.empty(0, dtype=torch.uint8)
    scales_t = torch.cat(scales) if scales else torch.empty(0, dtype=torch.float16)
    return records, codes_t, scales_t


def serialize(config: dict[str, Any], header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    """The artifact file. The transform layout keeps the PEFT config inside the compressed header (as
    its canonical JSON text) rather than as plain metadata: on a small adapter it is a tenth of the file."""
    metadata = {FORMAT_KEY: FORMAT, VERSION_KEY: str(FORMAT_VERSION)}
    if header.get("layout") == transform.LAYOUT:
        header = {**header, CONFIG_FIELD: config_json(config)}
    else:
        metadata[CONFIG_KEY] = config_json(config)
    metadata[HEADER_KEY] = encode_header(header)
    metadata[CHECKSUM_KEY] = checksum(tensors, metadata)
    return stfile.dumps(tensors, metadata)


def annotate(data: bytes, fields: dict[str, Any]) -> bytes:
    """The artifact `data` with `fields` added to its header (the gate's verdict, measured figures):
    the same tensors, a new checksum."""
    tensors, metadata = stfile.loads(data)
    header = decode_header(metadata[HEADER_KEY]) | fields
    return serialize(json.loads(config_text(metadata)), header, tensors)


def config_text(metadata: dict[str, str]) -> str:
    """The PEFT config's JSON text: plain metadata, or inside the header (transform layout)."""
    if CONFIG_KEY in metadata:
        return metadata[CONFIG_KEY]
    if HEADER_KEY not in metadata:
        raise InvalidArtifact("corrupt: the artifact has no NOLA header")
    text = decode_header(metadata[HEADER_KEY]).get(CONFIG_FIELD)
    if not isinstance(text, str):
        raise InvalidArtifact("corrupt: the artifact carries no PEFT config")
    return text


def decode(tensors: dict[str, torch.Tensor], metadata: dict[str, str], device: torch.device):
    """Every PEFT tensor an artifact stands for, after checking everything that can be checked."""
    if metadata.get(CHECKSUM_KEY) != checksum(tensors, metadata):
        raise InvalidArtifact("checksum mismatch: the artifact was corrupted or edited")
    if HEADER_KEY not in metadata:
        raise InvalidArtifact("corrupt: the artifact has no NOLA header")
    return decode_tensors(decode_header(metadata[HEADER_KEY]), tensors, device)


def decode_tensors(
    header: dict[str, Any], tensors: dict[str, torch.Tensor], device: torch.device
) -> dict[str, torch.Tensor]:
    """Rebuild every PEFT tensor from the header and stored coefficients, module batch by batch."""
    seed = check_generator(header, device)
    if header.get("layout") == transform.LAYOUT:
        out = _decode_transform(header, tensors, seed, device)
    else:
        out = _decode_rows(header, tensors, seed, device)
    for key in widened_extras(header, out):
        out[key] = out[key].float()
    return out


def widened_extras(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> list[str]:
    """The keys of the fp16 tensors a reader widens back to fp32, checked against `tensors`."""
    widened = header.get("fp16_extras", [])
    if not isinstance(widened, list) or any(not isinstance(k, str) or k not in tensors for k in widened):
        raise InvalidArtifact("corrupt: the fp16 tensors the header lists are not in the artifact")
    for key in widened:
        if tensors[key].dtype != torch.float16:
            raise InvalidArtifact(f"corrupt: {key} is listed as fp16 but is stored as {tensors[key].dtype}")
    return widened


def store_extras(
    extras: dict[str, torch.Tensor], precision: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Tensors NOLA does not model, as stored: exact, or fp32 ones as fp16 with `precision` fp16
    (where fp16 holds their range); returns them and the keys a reader widens back to fp32."""
    if precision == "exact":
        return dict(extras), []
    stored, widened = {}, []
    for key, value in extras.items():
        fits = value.dtype == torch.float32 and bool(value.abs().max() < 60000) if value.numel() else False
        stored[key] = value.half() if fits else value
        if fits:
            widened.append(key)
    return stored, sorted(widened)


def _decode_rows(
    header: dict[str, Any], tensors: dict[str, torch.Tensor], seed: int, device: torch.device
) -> dict[str, torch.Tensor]:
    try:
        family, layout, group_size = header["basis"], header["layout"], int(header["group_size"])
        records = header["modules"]
    except (KeyError, TypeError, ValueError):
        raise InvalidArtifact("corrupt: the NOLA header lacks required fields") from None
    if layout != LAYOUT or family not in FAMILIES:
        raise InvalidArtifact(f"unsupported basis {family!r} / layout {layout!r}")
    codes, scales = tensors.get(CODES_KEY), tensors.get(SCALES_KEY)
    if codes is None or scales is None or codes.dtype != torch.uint8 or scales.dtype != torch.float16:
        raise InvalidArtifact("corrupt: coefficient tensors missing or of the wrong type")
    out = {k: v for k, v in tensors.items() if k not in (CODES_KEY, SCALES_KEY)}
    by_shape: dict[tuple[int, int, int], list[dict]] = defaultdict(list)
    try:
        for record in records:
            by_shape[(int(record["rank"]), int(record["in"]), int(record["out"]))].append(record)
        for (rank, n_in, n_out), members in sorted(by_shape.items()):
            size = max(1, BATCH_ELEMENTS // (max(n_in, n_out) * (rank + 64)))
            for start in range(0, len(members), size):
                chunk = members[start : start + size]
                a_hat = _expand_side(chunk, "A", n_in, rank, family, seed, group_size, codes, scales, device)
                b_hat = _expand_side(chunk, "B", n_out, rank, family, seed, group_size, codes, scales, device)
                for record, a, b in zip(chunk, a_hat, b_hat):
                    key_a, key_b = default_keys(record["module"])
                    out[record.get("a_key", key_a)] = a.to(_DTYPES[record["dtype_a"]]).cpu()
                    out[record.get("b_key", key_b)] = b.T.to(_DTYPES[record["dtype_b"]]).contiguous().cpu()
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArtifact(f"corrupt module record: {exc}") from None
    return out


def check_generator(header: dict[str, Any], device: torch.device) -> int:
    """The seed, once the generator named in the header is this build's and gives the same numbers here."""
    try:
        generator = header["generator"]
        seed = int(generator["seed"])
    except (KeyError, TypeError, ValueError):
        raise InvalidArtifact("corrupt: the NOLA header lacks required fields") from None
    if (generator.get("name"), generator.get("version")) != (philox.GENERATOR, philox.GENERATOR_VERSION):
        raise InvalidArtifact(
            f"artifact made with generator {generator.get('name')} v{generator.get('version')}; "
            f"this build has {philox.GENERATOR} v{philox.GENERATOR_VERSION}"
        )
    if generator.get("fingerprint") != philox.fingerprint(seed, device):
        raise InvalidArtifact("generator fingerprint mismatch: the bases would not be the ones fitted")
    return seed


def transform_records(checkpoint: LoraCheckpoint, pairs: Sequence[LoraPair]) -> list[list[Any]]:
    """The transform layout's module list: [module, rank, in, out, dtype A, dtype B, scale] (+ keys
    when they are not PEFT's default ones)."""
    records = []
    for p in pairs:
        record = [
            p.module,
            p.rank,
            p.in_features,
            p.out_features,
            _DTYPE_NAMES[checkpoint.tensors[p.a_key].dtype],
            _DTYPE_NAMES[checkpoint.tensors[p.b_key].dtype],
            p.scale,
        ]
        if (p.a_key, p.b_key) != default_keys(p.module):
            record += [p.a_key, p.b_key]
        records.append(record)
    return records


def transform_plan(
    header: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> tuple[list[LoraPair], list[tuple[torch.dtype, torch.dtype]], float, int, str]:
    """The transform layout's modules, their (A, B) dtypes, step, bound and coefficient model, checked
    against the stored stream (InvalidArtifact where they do not fit)."""
    try:
        code = header["code"]
        step, bound = float(code["step"]), int(code["bound"])
        pairs, dtypes = [], []
        for record in header["modules"]:
            module, rank, n_in, n_out, dtype_a, dtype_b, scale = record[:7]
            key_a, key_b = record[7:9] if len(record) > 7 else default_keys(module)
            pairs.append(
                LoraPair(module, key_a, key_b, "linear", int(rank), int(n_in), int(n_out), float(scale))
            )
            dtypes.append((_DTYPES[dtype_a], _DTYPES[dtype_b]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArtifact(f"corrupt: the transform header is unreadable ({exc})") from None
    codes = tensors.get(CODES_KEY)
    if codes is None or codes.dtype != torch.uint8 or SCALES_KEY in tensors:
        raise InvalidArtifact("corrupt: coefficient tensors missing or of the wrong type")
    if codes.numel() != code.get("bytes"):
        raise InvalidArtifact("corrupt: the coefficient stream is not the length the header records")
    model = code.get("model")
    if model not in (transform.MODEL, transform_v2.MODEL):
        raise InvalidArtifact(f"unsupported coefficient model {model!r}")
    return pairs, dtypes, step, bound, model


def _decode_transform(
    header: dict[str, Any], tensors: dict[str, torch.Tensor], seed: int, device: torch.device
) -> dict[str, torch.Tensor]:
    pairs, dtypes, step, bound, model = transform_plan(header, tensors)
    codes = tensors[CODES_KEY]
    scales = [p.scale for p in pairs]
    try:
        if model == transform.MODEL:
            factors, digest = transform_read.decode(
                pairs, scales, step, bound, codes.numpy().tobytes(), seed, device, dtypes
            )
        else:  # format 2: float64 factors, converted below
            factors, digest = transform_v2.decode(
                pairs, scales, step, bound, codes.numpy().tobytes(), seed, device
            )
    except (ValueError, RuntimeError) as exc:
        raise InvalidArtifact(f"corrupt: {exc}") from None
    if digest != header.get("digest"):
        raise InvalidArtifact(DIGEST_MISMATCH)
    out = {k: v for k, v in tensors.items() if k != CODES_KEY}
    for i, (pair, (dtype_a, dtype_b)) in enumerate(zip(pairs, dtypes)):
        a, b = factors[i]
        factors[i] = None  # the working factors go as soon as converted: a lower peak
        out[pair.a_key], out[pair.b_key] = a.to(dtype_a), b.to(dtype_b)
    return out


def _expand_side(
    records: Sequence[dict],
    side: str,
    n: int,
    rank: int,
    family: str,
    seed: int,
    group_size: int,
    codes: torch.Tensor,
    scales: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """Rows of one factor for a batch of modules: A^ [b, r, in] or B^T [b, r, out]."""
    row_ks = [[int(k) for k in r[side]["k"]] for r in records]
    fmts = [list(r[side]["format"]) for r in records]
    for ks, fs in zip(row_ks, fmts):
        if len(ks) != rank or len(fs) != rank or any(k < 0 or k > n for k in ks):
            raise InvalidArtifact(f"corrupt: row sizes must be {rank} values in 0..{n}")
        if any(k and f not in FORMATS for k, f in zip(ks, fs)):
            raise InvalidArtifact("corrupt: unknown coefficient format")
    kmax = [max(1, *ks) for ks in row_ks]
    basis = make_basis(family, n, kmax, [basis_key(seed, r["module"], side) for r in records], device)
    for record, digest in zip(records, basis.digests()):
        if record[side]["digest"] != digest:
            raise InvalidArtifact(f"{record['module']}: basis digest mismatch (generator or k differ)")
    coeffs = torch.zeros(len(records), rank, basis.kmax, dtype=torch.float32, device=device)
    for i, record in enumerate(records):
        entry = record[side]
        payload, row_scales = _slice(codes, entry["codes"]), _slice(scales, entry["scales"])
        code = FactorCode.decode(row_ks[i], fmts[i], group_size, payload, row_scales)
        coeffs[i, :, : kmax[i]] = code.values(kmax[i]).to(device)
    return basis.expand(coeffs)  # [b, r, n]


def _slice(flat: torch.Tensor, span: Sequence[int]) -> torch.Tensor:
    start, length = int(span[0]), int(span[1])
    if start < 0 or length < 0 or start + length > flat.numel():
        raise InvalidArtifact("corrupt: a coefficient range lies outside the stored data")
    return flat[start : start + length]
