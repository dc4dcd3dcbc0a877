"""Pack what the GPU tier needs into one folder that travels to a GPU machine with no network, and unpack it there.

    python benchmarks/gpu_kit.py pack      # here: the prepared CIFAR-10-LT data + the missing wheels -> .gpu_kit/
    python benchmarks/gpu_kit.py unpack    # there: verify, rebuild the prepared data where long_tail.py looks

The device tool sends the repository and the folders named in ``carry`` (64 MiB in all), not ``../shared``, and
its GPU machine has PyTorch but not this project's ``datasets`` / ``transformers`` versions. So the kit holds

- ``data.npz.xz``: the GPU tier's prepared splits (long-tailed train, the validation split carved from train, the
  balanced test subset) as uint8 pixel arrays + labels, lzma-compressed (about 43 MB for 18,156 images);
- ``wheels/``: the pure-Python wheels of ``WHEELS`` at the versions installed here, for Python 3.12;
- ``manifest.json``: the columns' features, class names, split sizes, the setting's preparation and the data
  file's sha256.

``benchmarks/gpu_session.sh`` is the one command of a device session: install the wheels, unpack, run the tier
within its budget, copy the report out.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import tiers as lt  # noqa: E402
from hf_semscale.atomic import atomic_path  # noqa: E402

KIT_DIR = REPO_ROOT / ".gpu_kit"
DATA_FILE = "data.npz.xz"
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "validation", "test")
# Packages the GPU machine lacks, or holds at versions this project does not support (its image: transformers
# 5.17, no datasets / evaluate); pure Python, so one wheel serves any platform.
WHEELS = ("transformers", "datasets", "evaluate", "dill", "multiprocess", "fsspec", "huggingface_hub")
TRAVEL_LIMIT = 64 * 2**20  # what one device call may carry: repository + kit
PIP_PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:", "--no-deps"]


def pack_dataset(folder: Path, kit: Path, preparation: dict[str, Any]) -> dict[str, Any]:
    """Write ``folder``'s (a saved DatasetDict with ``image`` / ``label``) splits into ``kit/DATA_FILE`` and
    ``kit/MANIFEST_FILE``; returns the manifest."""
    import datasets

    dd = datasets.load_from_disk(str(folder))
    arrays, sizes = {}, {}
    for split in SPLITS:
        part = dd[split].with_format("numpy")  # an Image or an Array3D column, either way decoded to pixel arrays
        arrays[f"{split}_images"] = np.asarray(part["image"], dtype=np.uint8)
        arrays[f"{split}_labels"] = np.asarray(part["label"], dtype=np.int64)
        sizes[split] = len(part)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    packed = lzma.compress(buffer.getvalue(), preset=6)
    kit.mkdir(parents=True, exist_ok=True)
    with atomic_path(kit / DATA_FILE) as tmp:
        tmp.write_bytes(packed)
    manifest = {
        "features": dd["train"].features.to_dict(),
        "class_names": dd["train"].features["label"].names,
        "sizes": sizes,
        "preparation": preparation,
        "sha256": hashlib.sha256(packed).hexdigest(),
    }
    with atomic_path(kit / MANIFEST_FILE) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def unpack_dataset(kit: Path, target: Path) -> Path:
    """Rebuild the saved DatasetDict that :func:`pack_dataset` packed at ``target`` (pixels, labels and column
    features exact); refuses a data file whose checksum differs from the manifest's."""
    import datasets

    from hf_semscale.data import save_dataset_dict

    manifest_path, data_path = kit / MANIFEST_FILE, kit / DATA_FILE
    if not manifest_path.is_file() or not data_path.is_file():
        raise FileNotFoundError(
            f"no kit at {kit} ({MANIFEST_FILE} and {DATA_FILE} expected): run `python benchmarks/gpu_kit.py pack` "
            "on the machine with the data, and carry the folder"
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    packed = data_path.read_bytes()
    if hashlib.sha256(packed).hexdigest() != manifest["sha256"]:
        raise ValueError(
            f"{data_path} does not match its manifest's sha256 (a broken copy or a re-pack half done): pack again"
        )
    with np.load(io.BytesIO(lzma.decompress(packed))) as arrays:
        features = datasets.Features.from_dict(manifest["features"])
        dd = datasets.DatasetDict(
            {
                split: datasets.Dataset.from_dict(
                    {"image": list(arrays[f"{split}_images"]), "label": arrays[f"{split}_labels"].tolist()},
                    features=features,
                )
                for split in SPLITS
            }
        )
    return save_dataset_dict(dd, target)


def download_wheels(folder: Path) -> list[Path]:
    """The wheels of ``WHEELS`` at the versions installed here, for CPython 3.12 (the GPU machine's)."""
    folder.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={metadata.version(name)}" for name in WHEELS]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", *PIP_PLATFORM, "-d", str(folder), *pins], check=True)
    return sorted(folder.glob("*.whl"))


def repository_bytes() -> int:
    """Bytes of the files git would send (tracked, and untracked but not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    ).stdout
    return sum(
        (REPO_ROOT / name).stat().st_size for name in listed.decode().split("\0") if (REPO_ROOT / name).is_file()
    )


def data_target(work_dir: Path) -> Path:
    """Where ``long_tail.prepare_image_data`` finds the GPU tier's prepared data."""
    return work_dir / "gpu" / "cache" / f"{lt.tier_settings('gpu')[0]['name']}_data"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("--kit", type=Path, default=KIT_DIR)
    parser.add_argument("--work-dir", type=Path, default=lt.DEFAULT_WORK_DIR)
    parser.add_argument("--data-root", type=Path, default=lt.DEFAULT_DATA_ROOT)
    args = parser.parse_args(argv)
    if args.action == "unpack":
        print(f"unpacked {unpack_dataset(args.kit, data_target(args.work_dir))}")
        return
    setting = lt.tier_settings("gpu")[0]
    folder = lt.prepare_image_data(setting, args.data_root, args.work_dir / "gpu" / "cache")
    shutil.rmtree(args.kit / "wheels", ignore_errors=True)
    manifest = pack_dataset(folder, args.kit, setting["prepare"])
    wheels = download_wheels(args.kit / "wheels")
    kit_bytes = sum(p.stat().st_size for p in args.kit.rglob("*") if p.is_file())
    total = kit_bytes + repository_bytes()
    print(
        f"{args.kit}: {manifest['sizes']} images, {len(wheels)} wheels, {kit_bytes / 2**20:.1f} MiB; with the "
        f"repository {total / 2**20:.1f} MiB of the device tool's {TRAVEL_LIMIT / 2**20:.0f} MiB"
    )
    if total > TRAVEL_LIMIT:
        raise SystemExit(
            f"the kit and the repository ({total / 2**20:.1f} MiB) exceed what one device call carries "
            f"({TRAVEL_LIMIT / 2**20:.0f} MiB): shrink the test subset (test_per_class) or move large untracked "
            "files out of the repository"
        )


if __name__ == "__main__":
    main()
