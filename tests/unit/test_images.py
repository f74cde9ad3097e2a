"""read_gray8 on every mode and bit depth a user may have, and on broken files; hashing."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline.data.hashing import hamming, near_duplicates, phash, phash_dihedral
from pipeline.data.images import ImageReadError, read_gray8, read_gray8_with_depth, to_model_input


def _pattern(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth random texture with lines and a blob: structured in both axes, like SEM crops."""
    rng = np.random.default_rng(seed)
    field = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 4)
    img = 60 + 120 * (field - field.min()) / (np.ptp(field) + 1e-6)
    img[:, :: 8 + seed % 5] += 60
    cy, cx = rng.integers(10, min(h, w) - 10, size=2)
    cv2.circle(img, (int(cx), int(cy)), 6, 20, -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_8bit_grey_roundtrip(tmp_path):
    img = _pattern()
    Image.fromarray(img).save(tmp_path / "a.png")
    assert np.array_equal(read_gray8(tmp_path / "a.png"), img)


def test_palette_rgb_and_luma(tmp_path):
    img = _pattern()
    Image.fromarray(img).convert("P").save(tmp_path / "p.png")
    assert np.array_equal(read_gray8(tmp_path / "p.png"), img)
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[..., 1] = 200  # pure green → luma 0.587 * 200
    Image.fromarray(rgb).save(tmp_path / "g.bmp")
    assert read_gray8(tmp_path / "g.bmp")[0, 0] == round(0.587 * 200)


def test_alpha_keeps_partial_pixels_and_blackens_transparent(tmp_path):
    img = np.full((20, 20), 120, np.uint8)
    alpha = np.full((20, 20), 255, np.uint8)
    alpha[:, 0] = 100  # anti-aliased border as in real crops: its colour is kept
    alpha[0, :] = 0  # fully transparent: colour undefined → black
    Image.fromarray(np.dstack([img, alpha]), "LA").save(tmp_path / "la.png")
    rgba = np.dstack([img, img, img, alpha])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    for name in ("la.png", "rgba.png"):
        out = read_gray8(tmp_path / name)
        assert out.dtype == np.uint8 and out.shape == (20, 20)
        assert (out[0] == 0).all()
        assert (out[1:] == 120).all()


def _folder(tmp_path, name):
    (tmp_path / name).mkdir()
    return tmp_path / name


def test_16bit_png_scaled_by_bit_depth(tmp_path):
    grad = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    cv2.imwrite(str(_folder(tmp_path, "16") / "g16.png"), grad)
    out = read_gray8(tmp_path / "16" / "g16.png")
    assert out[0, 0] == 0 and out[-1, -1] == 255
    assert np.array_equal(out, np.rint(grad / 65535 * 255).astype(np.uint8))
    # A 12-bit detector image in a 16-bit container: 4095 is full white, not 1/16 grey.
    grad12 = (grad // 16).astype(np.uint16)
    cv2.imwrite(str(_folder(tmp_path, "12") / "g12.png"), grad12)
    out12 = read_gray8(tmp_path / "12" / "g12.png")
    assert out12.max() == 255
    assert out12[16, 16] == round(int(grad12[16, 16]) / 4095 * 255)
    # Never stretched per image: a dim 16-bit image stays dim.
    dim = np.full((32, 32), 20000, np.uint16)
    cv2.imwrite(str(_folder(tmp_path, "dim") / "dim.png"), dim)
    assert read_gray8(tmp_path / "dim" / "dim.png")[0, 0] == round(20000 / 65535 * 255)


def test_bit_depth_is_decided_per_folder_not_per_image(tmp_path):
    # 16-bit images of a dim scene: one has a single pixel above 4095. Read per image, that
    # one became 16x darker than its neighbours; per folder, both are read as 16-bit.
    scene = np.linspace(0, 4000, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    bright = scene.copy()
    bright[0, 0] = 5000
    cv2.imwrite(str(tmp_path / "a.png"), scene)
    cv2.imwrite(str(tmp_path / "b.png"), bright)
    a, b = read_gray8(tmp_path / "a.png"), read_gray8(tmp_path / "b.png")
    assert np.array_equal(a[1:], b[1:])
    assert a[-1, -1] == round(4000 / 65535 * 255)
    depth = read_gray8_with_depth(tmp_path / "a.png")[1]
    assert (depth.bits, depth.source) == (16, "folder maximum 5000")
    # The same scene alone in its folder: nothing above 4095, so 12-bit.
    cv2.imwrite(str(_folder(tmp_path, "12bit") / "a.png"), scene)
    assert read_gray8(tmp_path / "12bit" / "a.png")[-1, -1] == round(4000 / 4095 * 255)
    assert read_gray8_with_depth(tmp_path / "12bit" / "a.png")[1].bits == 12
    # 8-bit images in the folder neither count nor get a depth.
    cv2.imwrite(str(tmp_path / "c.png"), np.full((32, 32), 200, np.uint8))
    assert read_gray8_with_depth(tmp_path / "c.png")[1] is None


def _png_with_sbit(img: np.ndarray, bits: int) -> bytes:
    """A grey PNG with an sBIT chunk (significant bits) right after IHDR."""
    png = cv2.imencode(".png", img)[1].tobytes()
    chunk = struct.pack(">I4sB", 1, b"sBIT", bits)
    chunk += struct.pack(">I", zlib.crc32(chunk[4:]))
    return png[:33] + chunk + png[33:]  # signature (8) + IHDR (25)


def test_file_metadata_decides_bit_depth_before_the_folder(tmp_path):
    scene = np.linspace(0, 4000, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    cv2.imwrite(str(tmp_path / "bright.png"), np.full((32, 32), 60000, np.uint16))
    (tmp_path / "sbit12.png").write_bytes(_png_with_sbit(scene, 12))
    out, depth = read_gray8_with_depth(tmp_path / "sbit12.png")
    assert out[-1, -1] == round(4000 / 4095 * 255)
    assert (depth.bits, depth.source) == (12, "PNG sBIT 12")
    # Samples scaled to the container, as the PNG spec asks of sBIT writers: 16-bit.
    (tmp_path / "scaled.png").write_bytes(_png_with_sbit(scene * 16, 12))
    assert read_gray8(tmp_path / "scaled.png")[-1, -1] == round(64000 / 65535 * 255)
    # TIFF MaxSampleValue below the container's; a plain 16-bit TIFF follows its folder.
    tifffile.imwrite(tmp_path / "max.tif", scene, extratags=[(281, "H", 1, 4095, False)])
    assert read_gray8_with_depth(tmp_path / "max.tif")[1].source == "TIFF MaxSampleValue 4095"
    assert read_gray8(tmp_path / "max.tif")[-1, -1] == round(4000 / 4095 * 255)
    tifffile.imwrite(tmp_path / "plain.tif", scene)
    assert read_gray8(tmp_path / "plain.tif")[-1, -1] == round(4000 / 65535 * 255)


def test_tiff_16bit_float_and_multipage(tmp_path):
    grad = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    tifffile.imwrite(tmp_path / "a.tif", grad)
    assert read_gray8(tmp_path / "a.tif")[-1, -1] == 255
    f = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    tifffile.imwrite(tmp_path / "f.tiff", f)
    out = read_gray8(tmp_path / "f.tiff")
    assert out[0, 0] == 0 and out[-1, -1] == 255 and out[16, 0] == round(f[16, 0] * 255)
    pages = np.stack([np.full((32, 32), 4095, np.uint16), np.zeros((32, 32), np.uint16)])
    tifffile.imwrite(_folder(tmp_path, "12bit") / "m.tif", pages)
    assert (read_gray8(tmp_path / "12bit" / "m.tif") == 255).all()  # first page only


def test_tiff_layouts_pillow_gets_wrong_or_cannot_open(tmp_path):
    # 12-bit RGB: Pillow would clip it to 8 bits; tifffile keeps the depth.
    planes = np.full((3, 24, 24), 2048, np.uint16)
    tifffile.imwrite(tmp_path / "p.tif", planes, photometric="rgb", planarconfig="separate")
    assert (read_gray8(tmp_path / "p.tif") == round(2048 / 4095 * 255)).all()
    tifffile.imwrite(tmp_path / "f64.tif", np.full((24, 24), 0.5))
    assert (read_gray8(tmp_path / "f64.tif") == 128).all()
    # A rotated TIFF: upright after reading (Pillow scrambles these).
    img = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    tifffile.imwrite(tmp_path / "o.tif", img, extratags=[(274, "H", 1, 6, False)])
    assert np.array_equal(read_gray8(tmp_path / "o.tif"), np.rot90(img, -1))


def test_lzw_tiff_falls_back_to_pillow(tmp_path):
    # tifffile needs imagecodecs for LZW; Pillow decodes it.
    img = np.full((24, 24), 4095, np.uint16)
    Image.fromarray(img).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    assert (read_gray8(tmp_path / "lzw.tif") == 255).all()


def test_exif_orientation_applied(tmp_path):
    img = np.zeros((20, 40), np.uint8)
    img[:, :20] = 255  # left half white
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    pil.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = read_gray8(tmp_path / "o.jpg")
    assert out.shape == (40, 20)
    assert out[:20].mean() > 200 and out[20:].mean() < 50  # white half now on top


@pytest.mark.parametrize(
    ("make", "kwargs", "reason"),
    [
        ("zero", {}, "empty file"),
        ("text", {}, "not an image"),
        ("truncated", {}, "corrupt or truncated"),
        ("tiny", {}, "too small"),
        ("big", {"max_pixels": 1000}, "too large"),
    ],
)
def test_bad_files_raise_with_reason(tmp_path, make, kwargs, reason):
    path = tmp_path / "x.png"
    buf = io.BytesIO()
    Image.fromarray(_pattern()).save(buf, format="PNG")
    data = {
        "zero": b"",
        "text": b"this is not a png\n",
        "truncated": buf.getvalue()[: len(buf.getvalue()) // 2],
        "big": buf.getvalue(),
    }
    if make == "tiny":
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    else:
        path.write_bytes(data[make])
    with pytest.raises(ImageReadError) as info:
        read_gray8(path, **kwargs)
    assert reason in info.value.reason
    assert info.value.path == str(path)


def test_to_model_input_crops_and_resizes():
    img = np.zeros((100, 200), np.uint8)
    img[:, 50:150] = 255  # the centre square is white, the sides black
    out = to_model_input(img, 64)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert (out == 255).all()
    up = to_model_input(np.full((10, 10), 7, np.uint8), 32)
    assert up.shape == (32, 32) and (up == 7).all()


def test_phash_stable_under_noise_and_jpeg_but_tells_images_apart():
    img = _pattern(128, 128)
    rng = np.random.default_rng(1)
    noisy = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 70])
    jpeg = cv2.imdecode(enc, cv2.IMREAD_GRAYSCALE)
    h = phash(img)
    assert 0 <= h < 2**64
    assert hamming(h, phash(noisy)) <= 4
    assert hamming(h, phash(jpeg)) <= 4
    other = _pattern(128, 128, seed=3).T.copy()
    assert hamming(h, phash(other)) > 10


def test_dihedral_catches_flipped_copy():
    img = _pattern(96, 96)
    flipped = np.fliplr(np.rot90(img)).copy()
    assert hamming(phash(img), phash(flipped)) > 10
    variants = phash_dihedral(img)
    assert len(variants) == 8 and variants[0] == phash(img)
    assert min(hamming(v, phash(flipped)) for v in variants) <= 2


def test_near_duplicates_finds_planted_pair():
    rng = np.random.default_rng(0)
    hashes = [int(x) for x in rng.integers(0, 2**63, size=300, dtype=np.int64)]
    a = [(f"a{i}", h) for i, h in enumerate(hashes[:150])]
    b = [(f"b{i}", h) for i, h in enumerate(hashes[150:])]
    b[7] = ("b7", a[42][1] ^ 0b101)  # distance 2
    assert near_duplicates(a, b, 3) == [("a42", "b7", 2)]
    within = a + [("dup", a[5][1] ^ 1)]
    assert near_duplicates(within, None, 1) == [("a5", "dup", 1)]
    assert near_duplicates([], b, 3) == []
