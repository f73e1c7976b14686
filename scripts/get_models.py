"""Fetch real trained models and real-photo inputs for layerdiff's own checks and benchmarks.

Models: PP-OCR (PaddleOCR) detection, direction-classification and recognition models, as shipped inside
the `rapidocr-onnxruntime` wheel on PyPI (downloaded with pip, never committed). Inputs: photos from
scikit-image's `skimage.data`, preprocessed as PP-OCR does (scikit-image comes with the `models` extra).

    pip install -e '.[models]'              # scikit-image, once
    python scripts/get_models.py            # -> models/<name>/model.onnx, {inputs,calib,holdout}/*.npz
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "rapidocr-onnxruntime==1.4.4"
MODELS = {
    "ppocr_det": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "ppocr_cls": "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "ppocr_rec": "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
}
ROOT = Path(__file__).resolve().parent.parent


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    from skimage.transform import resize

    return resize(img, (h, w), anti_aliasing=True, preserve_range=True).astype(np.float32)


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


DET_PHOTOS = ("astronaut", "coffee", "rocket", "text", "page", "chelsea")  # inputs, then calib
DET_HELD_OUT = ("camera", "coins", "logo", "hubble_deep_field", "immunohistochemistry", "moon")


def det_samples(h: int = 480, w: int = 640, photos: tuple[str, ...] = DET_PHOTOS) -> list[np.ndarray]:
    """PP-OCR detection preprocessing: RGB, ImageNet mean/std, CHW."""
    import skimage.data as data

    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    out = []
    for name in photos:
        img = _resize(_rgb(getattr(data, name)()), h, w) / 255.0
        out.append((((img - mean) / std).transpose(2, 0, 1)[None]).astype(np.float32))
    return out


def text_line_samples(h: int, w: int, held_out: bool = False) -> list[np.ndarray]:
    """PP-OCR classification/recognition preprocessing of text-line crops: (x/255 - 0.5) / 0.5. Held out:
    three of the crops turned upside down (what the direction classifier is for) and three lines cut
    at other heights."""
    import skimage.data as data

    text, page = data.text(), data.page()
    crops = [text[20:70, 10:430], text[90:150, 20:440], page[10:45, 0:380], page[60:95, 0:380],
             page[110:145, 0:380], page[150:185, 0:380]]
    if held_out:
        crops = [c[::-1, ::-1] for c in crops[:3]] + [page[30:65, 0:380], page[85:120, 0:380], text[50:110, 10:430]]
    out = []
    for crop in crops:
        img = _resize(_rgb(crop), h, w) / 255.0
        out.append((((img - 0.5) / 0.5).transpose(2, 0, 1)[None]).astype(np.float32))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models")
    args = parser.parse_args()
    try:
        import skimage  # noqa: F401
    except ImportError:
        print("get_models.py makes inputs from scikit-image's photos: pip install -e '.[models]' (or "
              "pip install scikit-image), then run it again", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL], check=True)
        wheel = zipfile.ZipFile(next(Path(tmp).glob("*.whl")))
        for name, member in MODELS.items():
            d = args.out / name
            d.mkdir(parents=True, exist_ok=True)
            (d / "model.onnx").write_bytes(wheel.read(member))
    samples = {"ppocr_det": det_samples(), "ppocr_cls": text_line_samples(48, 192),
               "ppocr_rec": text_line_samples(48, 320)}
    held = {"ppocr_det": det_samples(photos=DET_HELD_OUT), "ppocr_cls": text_line_samples(48, 192, True),
            "ppocr_rec": text_line_samples(48, 320, True)}
    for name, feeds in samples.items():
        for split, part in (("inputs", feeds[:3]), ("calib", feeds[3:]), ("holdout", held[name])):
            d = args.out / name / split
            d.mkdir(parents=True, exist_ok=True)
            for i, x in enumerate(part):
                np.savez(d / f"{i}.npz", x=x)
        print(f"{name}: {args.out / name / 'model.onnx'}, inputs {feeds[0].shape} x3, calib x{len(feeds) - 3}, "
              f"holdout x{len(held[name])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
