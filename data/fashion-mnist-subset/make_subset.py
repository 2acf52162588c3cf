"""Writes the class-balanced Fashion-MNIST subset kdna embeds (its default dataset).

Input: the full Fashion-MNIST IDX files (Debian: apt install dataset-fashion-mnist, which puts
them in /usr/share/datasets/fashion-mnist). Output, beside this script: the first 600 images of
each class from the training file and the first 100 of each class from the test file, in file
order, as gzipped IDX files.
"""
import gzip, struct, sys, pathlib

SRC = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist")
OUT = pathlib.Path(__file__).parent

def read(prefix):
    images = gzip.open(SRC / f"{prefix}-images-idx3-ubyte.gz").read()
    labels = gzip.open(SRC / f"{prefix}-labels-idx1-ubyte.gz").read()
    n, h, w = struct.unpack(">III", images[4:16])
    return [(images[16 + i * h * w:16 + (i + 1) * h * w], labels[8 + i]) for i in range(n)], h, w

def write(prefix, items, h, w):
    with gzip.GzipFile(OUT / f"{prefix}-images-idx3-ubyte.gz", "wb", 9, mtime=0) as f:
        f.write(struct.pack(">IIII", 0x803, len(items), h, w) + b"".join(p for p, _ in items))
    with gzip.GzipFile(OUT / f"{prefix}-labels-idx1-ubyte.gz", "wb", 9, mtime=0) as f:
        f.write(struct.pack(">II", 0x801, len(items)) + bytes(l for _, l in items))

for prefix, per_class in [("train", 600), ("t10k", 100)]:
    items, h, w = read(prefix)
    taken, counts = [], [0] * 10
    for p, l in items:
        if counts[l] < per_class:
            counts[l] += 1
            taken.append((p, l))
    write(prefix, taken, h, w)
    print(prefix, len(taken), counts)
