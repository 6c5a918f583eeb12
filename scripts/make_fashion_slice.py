#!/usr/bin/env python3
"""Writes nn/data/fashion2000.bin, the embedded default dataset of `fastlayers train`.

Source: the Fashion-MNIST test set (Zalando Research, MIT licence,
https://github.com/zalandoresearch/fashion-mnist), as Debian's package dataset-fashion-mnist
installs it (`apt-get install dataset-fashion-mnist`: /usr/share/datasets/fashion-mnist/).
The file is its first 2,000 test images in their original order, one record per image:
1 label byte (0-9) then 784 pixel bytes (28x28 grey, row-major), 1,570,000 bytes in all.
nn/src/data/embedded.rs pads each image to 32x32 and repeats it over 3 channels.
"""
import gzip, struct, sys, pathlib

src = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist")
out = pathlib.Path(__file__).resolve().parent.parent / "nn" / "data" / "fashion2000.bin"
N = 2000
with gzip.open(src / "t10k-images-idx3-ubyte.gz") as f:
    magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
    assert (magic, rows, cols) == (2051, 28, 28) and n >= N, (magic, n, rows, cols)
    images = f.read(N * 784)
with gzip.open(src / "t10k-labels-idx1-ubyte.gz") as f:
    magic, n = struct.unpack(">II", f.read(8))
    assert magic == 2049 and n >= N, (magic, n)
    labels = f.read(N)
assert max(labels) <= 9
rec = bytearray()
for i in range(N):
    rec.append(labels[i])
    rec += images[i * 784:(i + 1) * 784]
out.write_bytes(bytes(rec))
print(f"wrote {out} ({len(rec)} bytes), label counts", [labels.count(c) for c in range(10)])
