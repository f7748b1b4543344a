#!/usr/bin/env python3
"""Writes tests/data/bad/: inputs that must be refused cleanly or converted, never crash a run.
Needs Pillow (for the JPEG and CMYK files).

Images: a truncated JPEG, a zero-byte file, a PNG whose IDAT CRC is wrong, a text file named
.jpg, a PNG declaring 100000 x 100000 pixels (a decompression bomb: its IDAT is tiny), a 1x1 image,
an 8-bit grayscale PNG, a 16-bit grayscale PNG and a CMYK JPEG (the last four must be accepted).
Annotations referencing them, with empty, whitespace-only, 10 000-word and (CSV) non-UTF-8
captions, a missing file, malformed JSONL and CSV lines, a malformed JSON list, and a webdataset
tar shard cut in the middle of its third member.

    /path/to/venv/bin/python tools/make_bad_corpus.py
"""
import io
import json
import os
import struct
import tarfile
import zlib

from PIL import Image

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "bad")


def png_chunk(kind, data, crc=None):
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


def png(width, height, bit_depth, color_type, raw):
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")


def save(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def jpeg(img, **kw):
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def main():
    os.makedirs(OUT, exist_ok=True)
    scene = Image.new("RGB", (24, 24), (200, 40, 40))
    good = png(8, 8, 8, 2, b"".join(b"\x00" + bytes([i * 30 % 256, 90, 200] * 8) for i in range(8)))
    save("good.png", good)
    full = jpeg(scene, quality=90)
    save("truncated.jpg", full[: len(full) // 2])
    save("empty.jpg", b"")
    bad_crc = bytearray(good)
    idat = bad_crc.index(b"IDAT")
    length = struct.unpack(">I", bytes(bad_crc[idat - 4:idat]))[0]
    bad_crc[idat + 4 + length] ^= 0xFF  # first byte of the IDAT CRC
    save("corrupt_chunk.png", bytes(bad_crc))
    save("text.jpg", b"this is not an image, only text with a .jpg name\n")
    save("bomb.png", png(100000, 100000, 8, 0, b"\x00" * 64))
    save("one_pixel.png", png(1, 1, 8, 2, b"\x00\x10\x20\x30"))
    save("gray8.png", png(6, 6, 8, 0, b"".join(b"\x00" + bytes(range(i * 6, i * 6 + 6)) for i in range(6))))
    save("gray16.png", png(6, 6, 16, 0, b"".join(b"\x00" + b"".join(struct.pack(">H", (i * 6 + j) * 1000) for j in range(6)) for i in range(6))))
    save("cmyk.jpg", jpeg(scene.convert("CMYK"), quality=90))

    ok = "a small red circle left of a large blue square"
    records = [
        ("good.png", ok), ("truncated.jpg", ok), ("empty.jpg", ok), ("corrupt_chunk.png", ok), ("text.jpg", ok),
        ("bomb.png", ok), ("one_pixel.png", ok), ("gray8.png", ok), ("gray16.png", ok), ("cmyk.jpg", ok),
        ("missing.png", ok), ("good.png", ""), ("good.png", "   \t  "), ("good.png", " ".join(["word"] * 10000)),
    ]
    with open(os.path.join(OUT, "records.jsonl"), "w") as f:
        for image, caption in records:
            f.write(json.dumps({"image": image, "caption": caption}) + "\n")
        f.write('{"image": "good.png", "caption": \n')  # cut mid-object
        f.write("not json at all\n")
        f.write('{"caption": "no image key"}\n')
        f.write('["a", "list"]\n')
    with open(os.path.join(OUT, "records.csv"), "wb") as f:
        f.write(b"image,caption\n")
        f.write(b"good.png,a fine caption\n")
        f.write(b"good.png,\xff\xfe not utf-8 \xc3\x28\n")
        f.write(b"good.png,\"an unterminated quote\n")
        f.write(b"only-one-field\n")
        f.write(b"gray16.png,a gray square\n")
    with open(os.path.join(OUT, "broken_list.json"), "w") as f:
        f.write('[{"image": "good.png", "caption": "fine"}, {"image": "good.png", "caption": ')
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, data in (("000", good), ("001", good), ("002", full)):
            for ext, payload in (("png" if data is good else "jpg", data), ("txt", ok.encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    shard = buf.getvalue()
    cut = shard.index(full[:64]) + len(full) // 3
    save("cut_shard.tar", shard[:cut])
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
