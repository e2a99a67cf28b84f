"""Test images and the processor references: the pixels transformers' BLIP-2 processor makes, and the PIL
image-decoding fixture."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import Blip2Processor
from transformers.image_utils import PILImageResampling

from .common import CLIP_MEAN, CLIP_STD, FORMAT_VERSION, Refs, SEED, versions, write_json


def legacy_processor_files(directory: Path, processor: Blip2Processor) -> None:
    """The hub's older layout: image processor in preprocessor_config.json, processor_config.json holding only
    num_query_tokens (the files of Salesforce/blip2-* look like this)."""
    processor.image_processor.save_pretrained(directory)
    write_json(directory / "processor_config.json",
               {"num_query_tokens": processor.num_query_tokens, "processor_class": "Blip2Processor"})


# ----------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------


def make_images(out: Path) -> dict[str, Path]:
    """Small deterministic test images: RGB, RGBA, grayscale (8 and 16 bit), gray+alpha, palette with
    transparency, PNG and JPEG, odd sizes for up- and downscaling."""
    rng = np.random.default_rng(SEED + 1)
    out.mkdir(parents=True, exist_ok=True)

    def pattern(h: int, w: int, channels: int, amplitude: float = 255.0) -> np.ndarray:
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        planes = [
            x / max(w - 1, 1),
            y / max(h - 1, 1),
            0.5 + 0.5 * np.sin(x / 2.3 + y / 3.1),
            ((x // 4 + y // 4) % 2) * 0.8 + 0.1,
        ]
        img = np.stack([planes[c % len(planes)] for c in range(channels)], axis=-1)
        img = img + rng.normal(0.0, 0.12, size=img.shape)
        return np.clip(np.round(img * amplitude), 0, amplitude)

    paths = {}

    def save(name: str, image: Image.Image, **kwargs) -> None:
        path = out / name
        image.save(path, **kwargs)
        paths[Path(name).stem] = path

    save("rgb_37x29.png", Image.fromarray(pattern(29, 37, 3).astype(np.uint8), "RGB"))
    rgba = pattern(23, 31, 4).astype(np.uint8)
    rgba[:5, :, 3] = 0  # fully transparent band: composited to white
    rgba[-5:, :, 3] = 255  # opaque band
    save("rgba_31x23.png", Image.fromarray(rgba, "RGBA"))
    save("gray_19x41.png", Image.fromarray(pattern(41, 19, 1)[..., 0].astype(np.uint8), "L"))
    save("gray_alpha_21x21.png", Image.fromarray(pattern(21, 21, 2).astype(np.uint8), "LA"))
    gray16 = pattern(17, 23, 1, amplitude=65535.0)[..., 0].astype(np.uint16)
    save("gray16_23x17.png", Image.fromarray(gray16))  # PIL mode I;16
    pal = Image.fromarray(pattern(19, 25, 3).astype(np.uint8), "RGB").quantize(colors=16, dither=Image.Dither.NONE)
    save("palette_25x19.png", pal, transparency=0)
    save("photo_45x33.jpg", Image.fromarray(pattern(33, 45, 3).astype(np.uint8), "RGB"), quality=90)
    save("large_97x71.png", Image.fromarray(pattern(71, 97, 3).astype(np.uint8), "RGB"))
    save("gray_27x35.jpg", Image.fromarray(pattern(35, 27, 1)[..., 0].astype(np.uint8), "L"), quality=85)
    return paths


def load_image(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()
    return image


def add_processor_refs(refs: Refs, processor: Blip2Processor, images: dict[str, Path]) -> None:
    ip = processor.image_processor
    size = ip.size
    for stem, path in images.items():
        image = load_image(path)
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        refs.add(
            f"processor/pixel_values/{stem}",
            pixel_values,
            f"image processor output for images/{path.name} (mode {image.mode}, {image.width}x{image.height})",
        )
        # The uint8 image after RGB conversion and PIL bicubic resize, before rescale/normalize.
        chw = ip.process_image(load_image(path), do_convert_rgb=True)
        refs.add(
            f"processor/rgb/{stem}",
            torch.from_numpy(np.moveaxis(chw, 0, -1).copy()),
            f"images/{path.name} converted to RGB as HF does (alpha over white), HWC uint8",
        )
        resized = ip.resize(image=chw, size=type(ip.size)(**size) if isinstance(size, dict) else size,
                            resample=PILImageResampling.BICUBIC)
        resized_hwc = torch.from_numpy(np.moveaxis(resized, 0, -1).copy())
        refs.add(
            f"processor/resized/{stem}",
            resized_hwc,
            f"images/{path.name} after PIL bicubic resize to the processor size, HWC uint8",
        )
        # The stored uint8 resize must be exactly what the pixel values were computed from.
        mean = torch.tensor(CLIP_MEAN).view(1, 1, 3)
        std = torch.tensor(CLIP_STD).view(1, 1, 3)
        again = ((resized_hwc.double() / 255.0 - mean) / std).permute(2, 0, 1).float()
        if not torch.allclose(again, pixel_values[0], atol=1e-5):
            raise AssertionError(f"resized uint8 of {stem} does not reproduce pixel_values")


# ----------------------------------------------------------------------------------------------------------------
# PIL pixel references: bicubic resizes, alpha compositing, how PIL opens and converts other kinds of files
# ----------------------------------------------------------------------------------------------------------------


def png_16bit(arr: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (PIL cannot write 16-bit RGB, RGBA or LA): `arr` is [H, W, C] uint16."""
    import struct
    import zlib

    height, width = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


def pil_image_fixture(out: Path, images: dict[str, Path], seed: int) -> None:
    """PIL's own pixels, for blip2-processor: `Image.resize(..., BICUBIC)` at many sizes (up, down, odd,
    non-square, 1 pixel, identity, large factors) of stored uint8 sources; `Image.alpha_composite` onto white
    for every (value, alpha) pair; CMYK -> RGB for every (ink, black) pair; and HF `convert_to_rgb` of files
    in modes the shared images do not cover, and of JPEGs of every kind (PIL decodes with libjpeg-turbo)."""
    from PIL import features
    from transformers.image_transforms import convert_to_rgb

    directory = out / "pil-image"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    refs = Refs()

    y, x = np.mgrid[0:9, 0:16]
    checker = np.where((x + y) % 2 == 0, 255, 0).astype(np.uint8)
    sources = {
        "large_97x71": (np.array(load_image(images["large_97x71"]).convert("RGB")), "images/large_97x71.png"),
        # Full-range noise and a one-pixel checkerboard: the cubic's negative lobes overshoot, so both the
        # intermediate and the final clamp to 0..255 are reached.
        "noise_13x11": (rng.integers(0, 256, size=(11, 13, 3), dtype=np.uint8), "uniform random uint8"),
        "checker_16x9": (np.stack([checker, 255 - checker, checker], axis=-1), "0/255 checkerboard, 1 px cells"),
        "tall_11x41": (rng.integers(0, 256, size=(41, 11, 3), dtype=np.uint8), "uniform random uint8, tall"),
    }
    # Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many pixels as the
    # width (python-pillow/Pillow#9549); the intermediate uint8 rounding makes the order visible. Sizes on
    # both sides of that rule and at its boundary (equality: horizontal first):
    targets = {
        "large_97x71": [(5, 5), (1, 1), (97, 71), (224, 224), (13, 71), (97, 13), (31, 17), (1, 71), (97, 1),
                        (3, 50), (200, 150), (30, 30), (48, 35), (90, 50), (92, 61), (92, 60)],
        "noise_13x11": [(37, 29), (5, 4), (1, 1), (26, 22), (12, 11), (13, 10), (2, 30), (14, 12)],
        "checker_16x9": [(7, 5), (33, 19), (16, 4), (5, 9), (3, 2)],
        "tall_11x41": [(30, 30), (9, 20), (5, 40), (6, 31), (7, 32), (11, 5), (3, 41), (24, 24)],
    }
    for name, (array, what) in sources.items():
        refs.add(f"source/{name}", array, f"resize source, HWC uint8: {what}")
        image = Image.fromarray(array, "RGB")
        for width, height in targets[name]:
            resized = image.resize((width, height), resample=Image.Resampling.BICUBIC, reducing_gap=None)
            refs.add(f"resize/{name}/{width}x{height}", np.array(resized),
                     f"PIL Image.resize(({width}, {height}), BICUBIC, reducing_gap=None) of source/{name}, HWC uint8")

    # Every (value, alpha) pair: value varies along x, alpha along y; the red channel after convert_to_rgb.
    value, alpha = np.mgrid[0:256, 0:256][::-1].astype(np.uint8)
    rgba = np.stack([value, 255 - value, value, alpha], axis=-1)
    over_white = convert_to_rgb(Image.fromarray(rgba, "RGBA"), return_numpy=True)
    refs.add("alpha/over_white", over_white[..., 0],
             "HF convert_to_rgb (PIL alpha_composite onto white) of value x (column) with alpha y (row): red channel")

    # Every (ink, black) pair of mode CMYK: ink varies along x (as C and Y, 255 - ink as M), black along y.
    ink, black = np.mgrid[0:256, 0:256][::-1].astype(np.uint8)
    cmyk = np.stack([ink, 255 - ink, ink, black], axis=-1)
    cmyk_rgb = convert_to_rgb(Image.fromarray(cmyk, "CMYK"), return_numpy=True)
    refs.add("cmyk/to_rgb", cmyk_rgb[..., 0],
             "HF convert_to_rgb (PIL CMYK -> RGB) of C = M' = Y = x (column), K = y (row): red channel")

    # Files in modes the shared images do not cover, and HF convert_to_rgb of what PIL opens.
    pattern = (rng.random((7, 13, 4)) * 65536).astype(np.uint16)
    pattern[0, :4] = [0, 255, 256, 65535]
    files = {}
    for stem, color_type, channels in [("rgb16_13x7", 2, 3), ("rgba16_13x7", 6, 4), ("la16_13x7", 4, 2)]:
        files[stem + ".png"] = png_16bit(pattern[..., :channels], color_type)
    small = (rng.random((9, 11, 3)) * 256).astype(np.uint8)
    small[2, 3] = small[5, 7] = (10, 20, 30)
    keyed = Image.fromarray(small, "RGB")
    gray = Image.fromarray(small[..., 0], "L")
    palette = Image.fromarray(small, "RGB").quantize(colors=8, dither=Image.Dither.NONE)
    frames = [Image.fromarray(small, "RGB").quantize(colors=8, dither=Image.Dither.NONE),
              Image.fromarray(255 - small, "RGB").quantize(colors=8, dither=Image.Dither.NONE)]
    rgba8 = np.concatenate([small, (small[..., :1] // 2 + 60)], axis=-1)
    rgba8[0, :] = 0
    savers = {
        "rgb_key_11x9.png": lambda f: keyed.save(f, "PNG", transparency=(10, 20, 30)),
        "gray_key_11x9.png": lambda f: gray.save(f, "PNG", transparency=int(small[5, 7, 0])),
        "palette_alpha_11x9.png": lambda f: palette.save(f, "PNG", transparency=bytes([0, 64, 128, 200, 255, 255, 30, 90])),
        "bilevel_11x9.png": lambda f: gray.convert("1", dither=Image.Dither.NONE).save(f, "PNG"),
        "anim_11x9.gif": lambda f: frames[0].save(f, "GIF", save_all=True, append_images=frames[1:], transparency=2,
                                                  duration=100, loop=0),
        "rgba_11x9.webp": lambda f: Image.fromarray(rgba8, "RGBA").save(f, "WEBP", lossless=True),
        "rgb_11x9.bmp": lambda f: keyed.save(f, "BMP"),
        "rgba_11x9.tiff": lambda f: Image.fromarray(rgba8, "RGBA").save(f, "TIFF"),
    }
    for name, save in savers.items():
        buffer = io.BytesIO()
        save(buffer)
        files[name] = buffer.getvalue()

    # JPEGs as Pillow writes them, one of each kind a decoder handles differently: gray, chroma 4:2:0 (Pillow's
    # default), 4:2:2 and 4:4:4, RGB stored without YCbCr (keep_rgb), progressive colour and gray, restart
    # intervals, CMYK (PIL reads it Adobe-inverted), an EXIF orientation (neither PIL nor HF applies it), sizes
    # that are not a multiple of the 8 or 16 pixel MCU, and two damaged scans followed by the end marker
    # (libjpeg warns and fills what it cannot decode; PIL ignores the warnings and returns those pixels).
    def photo(h: int, w: int, channels: int) -> np.ndarray:
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        planes = [x / (w - 1), y / (h - 1), 0.5 + 0.5 * np.sin(x / 2.3 + y / 3.1), 0.5 + 0.4 * np.cos(x / 3.7 - y / 1.9)]
        img = np.stack(planes[:channels], axis=-1) + rng.normal(0.0, 0.1, size=(h, w, channels))
        return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)

    def jpeg(image: Image.Image, **options) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", **options)
        return buffer.getvalue()

    def middle_of_scan(data: bytes) -> int:
        sos = data.rfind(b"\xff\xda")
        start = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
        return (start + len(data) - 2) // 2

    orientation = Image.Exif()
    orientation[0x0112] = 6  # "rotate 90 CW to display"
    restart = jpeg(Image.fromarray(photo(25, 33, 3), "RGB"), quality=90, restart_marker_blocks=2)
    cut_scan = jpeg(Image.fromarray(photo(23, 31, 3), "RGB"), quality=90)
    files.update({
        "gray_13x11.jpg": jpeg(Image.fromarray(photo(11, 13, 1)[..., 0], "L"), quality=85),
        "gray_progressive_21x13.jpg": jpeg(Image.fromarray(photo(13, 21, 1)[..., 0], "L"), quality=80,
                                           progressive=True),
        "yuv420_17x9.jpg": jpeg(Image.fromarray(photo(9, 17, 3), "RGB"), quality=90),
        "yuv420_97x71.jpg": jpeg(Image.fromarray(sources["large_97x71"][0], "RGB"), quality=75),
        "yuv422_23x15.jpg": jpeg(Image.fromarray(photo(15, 23, 3), "RGB"), quality=90, subsampling="4:2:2"),
        "yuv444_13x11.jpg": jpeg(Image.fromarray(photo(11, 13, 3), "RGB"), quality=90, subsampling="4:4:4"),
        "rgb_11x9.jpg": jpeg(Image.fromarray(photo(9, 11, 3), "RGB"), quality=90, keep_rgb=True),
        "progressive_29x21.jpg": jpeg(Image.fromarray(photo(21, 29, 3), "RGB"), quality=80, progressive=True),
        "restart_33x25.jpg": restart,
        "cmyk_15x13.jpg": jpeg(Image.fromarray(photo(13, 15, 4), "CMYK"), quality=90),
        "exif_rotated_13x11.jpg": jpeg(Image.fromarray(photo(11, 13, 3), "RGB"), quality=90,
                                       exif=orientation.tobytes()),
        # The scan cut in the middle and the end marker written after it: "premature end of data segment".
        "cut_scan_31x23.jpg": cut_scan[:middle_of_scan(cut_scan)] + b"\xff\xd9",
        # 40 bytes taken out of the middle of the scan: "bad Huffman code", resynchronised at a restart marker.
        "damaged_restart_33x25.jpg": restart[:middle_of_scan(restart)] + restart[middle_of_scan(restart) + 40:],
    })
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        image = load_image(path)
        refs.add(f"rgb/{name}", convert_to_rgb(image, return_numpy=True),
                 f"HF convert_to_rgb of pil-image/{name} as PIL opens it (mode {image.mode}), HWC uint8")

    meta = {"format_version": FORMAT_VERSION, "fixture": "pil-image", "versions": versions(), "seed": seed,
            "libjpeg_turbo": features.version("libjpeg_turbo"), "files": sorted(files)}
    refs.save(directory, meta)
