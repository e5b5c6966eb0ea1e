"""File readers: IDX, pixel CSV, CIFAR-10 batches (binary and pickled) and single pictures."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import zlib

import numpy as np
import pytest
from PIL import Image

from minivision.data import cifar
from minivision.data.csvfile import read_pixel_csv
from minivision.data.idx import read_idx
from minivision.data.images import is_grayscale, open_image
from minivision.errors import DataError


def one_line_naming(excinfo: pytest.ExceptionInfo, name: object) -> str:
    """Every user-facing error is a single line that names the file it is about."""
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    assert str(name) in msg, msg
    return msg


# ------------------------------------------------------------------------------------------------
# IDX
# ------------------------------------------------------------------------------------------------

def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_idx_roundtrip(tmp_path, compress):
    arr = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    data = idx_bytes(arr)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    path.write_bytes(gzip.compress(data) if compress else data)
    out = read_idx(path)
    assert out.shape == (5, 3, 4) and out.dtype == np.uint8
    assert (out == arr).all()
    out[0, 0, 0] = 1  # writable, so torch.from_numpy does not warn


@pytest.mark.parametrize("mutate, expect", [
    (lambda d: b"\x01" + d[1:], "bad magic"),
    (lambda d: d[:2] + b"\x0d" + d[3:], "float"),
    (lambda d: d[:2] + b"\x07" + d[3:], "unknown IDX data type"),
    (lambda d: d[:3] + b"\x00" + d[4:], "dimensions"),
    (lambda d: d[:-7], "truncated"),
    (lambda d: d + b"xx", "extra bytes"),
    (lambda d: d[:2], "not an IDX file"),
])
def test_idx_rejects_malformed(tmp_path, mutate, expect):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(mutate(idx_bytes(np.zeros((4, 2, 2), np.uint8))))
    with pytest.raises(DataError) as e:
        read_idx(path)
    assert expect in one_line_naming(e, path)


def test_idx_truncated_gzip(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.ones((50, 8, 8), np.uint8)))[:-20])
    with pytest.raises(DataError) as e:
        read_idx(path)
    assert "truncated" in one_line_naming(e, path)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError) as e:
        read_idx(tmp_path / "nope.gz")
    one_line_naming(e, "nope.gz")


# ------------------------------------------------------------------------------------------------
# CSV
# ------------------------------------------------------------------------------------------------

def csv_text(x: np.ndarray, y: np.ndarray, header: bool = True, sep: str = ",") -> str:
    flat = x.reshape(len(x), -1)
    lines = ["label," + ",".join(f"pixel{i + 1}" for i in range(flat.shape[1]))] if header else []
    lines += [sep.join(map(str, [int(label), *row.tolist()])) for label, row in zip(y, flat, strict=True)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def pixels():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (1200, 4, 4), dtype=np.uint8), rng.integers(0, 10, 1200)


@pytest.mark.parametrize("header", [True, False])
def test_csv_reads_kaggle_layout(tmp_path, pixels, header):
    x, y = pixels
    path = tmp_path / "train.csv"
    path.write_text(csv_text(x, y, header=header))
    tx, ty = read_pixel_csv(path)
    assert tx.shape == (1200, 1, 4, 4) and str(tx.dtype) == "torch.uint8"
    assert str(ty.dtype) == "torch.int64"
    assert (tx[:, 0].numpy() == x).all() and (ty.numpy() == y).all()


def test_csv_28x28_and_crlf_and_gzip(tmp_path):
    x = np.arange(3 * 784).reshape(3, 28, 28) % 256
    text = csv_text(x, np.array([0, 1, 2])).replace("\n", "\r\n")
    path = tmp_path / "f.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    tx, ty = read_pixel_csv(path)
    assert tx.shape == (3, 1, 28, 28) and ty.tolist() == [0, 1, 2]
    assert (tx[:, 0].numpy() == x).all()


def test_csv_careful_path_matches_fast_path(tmp_path, pixels):
    x, y = pixels
    plain, spaced = tmp_path / "a.csv", tmp_path / "b.csv"
    plain.write_text(csv_text(x, y))
    spaced.write_text(csv_text(x, y, sep=", ").replace("\n", "\n\n"))  # spaces and blank lines
    a, b = read_pixel_csv(plain), read_pixel_csv(spaced)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()


def test_csv_label_column_anywhere(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("p1,p2,label,p3,p4\n1,2,7,3,4\n")
    x, y = read_pixel_csv(path)
    assert y.tolist() == [7] and x.flatten().tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("row, expect", [
    ("3,1,2,3", "line 1201 has 4 columns, expected 17"),
    ("3" + ",1" * 17, "line 1201 has 18 columns"),
    ("3,abc" + ",1" * 15, "line 1201, column 2: 'abc' is not a number"),
    ("3,256" + ",1" * 15, "line 1201, column 2: pixel value 256 is outside 0-255"),
    ("3,-1" + ",1" * 15, "line 1201, column 2: pixel value -1"),
    ("3,1.5" + ",1" * 15, "not a whole number"),
    ("-2" + ",1" * 16, "line 1201: label -2 is negative"),
    ("3,,1" + ",1" * 14, "line 1201"),
])
def test_csv_errors_name_line(tmp_path, pixels, row, expect):
    x, y = pixels
    path = tmp_path / "bad.csv"
    path.write_text(csv_text(x[:1199], y[:1199]) + row + "\n")  # the error is past the first fast chunks
    with pytest.raises(DataError) as e:
        read_pixel_csv(path)
    assert expect in one_line_naming(e, path)


@pytest.mark.parametrize("text, expect", [
    ("label,a,b,c\n1,2,3,4\n", "not a square"),
    ("", "empty"),
    ("label,p1,p2,p3,p4\n", "no data rows"),
    ("name,p1,p2,p3,p4\nx,1,2,3,4\n", "no 'label' column"),
])
def test_csv_shape_errors(tmp_path, text, expect):
    path = tmp_path / "s.csv"
    path.write_text(text)
    with pytest.raises(DataError) as e:
        read_pixel_csv(path)
    assert expect in one_line_naming(e, path)


# ------------------------------------------------------------------------------------------------
# CIFAR-10
# ------------------------------------------------------------------------------------------------

def cifar_records(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def binary_batch(x: np.ndarray, y: np.ndarray) -> bytes:
    return np.concatenate([y[:, None], x.reshape(len(x), -1)], axis=1).tobytes()


def python_batch(x: np.ndarray, y: np.ndarray, protocol: int = 2) -> bytes:
    batch = {b"batch_label": b"testing", b"labels": [int(v) for v in y],
             b"data": x.reshape(len(x), -1), b"filenames": [b"a.png"] * len(x)}
    return pickle.dumps(batch, protocol=protocol)


BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_cifar(folder, kind: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for i, name in enumerate(BATCHES):
        x, y = cifar_records(3, seed=i)
        made[name] = (x, y)
        if kind == "bin":
            (folder / f"{name}.bin").write_bytes(binary_batch(x, y))
        else:
            (folder / name).write_bytes(python_batch(x, y, protocol=4 if kind == "py4" else 2))
    return made


@pytest.mark.parametrize("kind", ["bin", "py", "py4"])
def test_cifar_batches_folder(tmp_path, kind):
    made = write_cifar(tmp_path / f"cifar-10-batches-{kind.rstrip('4')}", kind)
    ds = cifar.read_cifar(tmp_path)  # finds the cifar-10-batches-* subfolder
    assert ds.classes[0] == "airplane" and ds.classes[-1] == "truck"
    assert ds.train.x.shape == (15, 3, 32, 32) and ds.test.x.shape == (3, 3, 32, 32)
    assert (ds.train.x[:3].numpy() == made["data_batch_1"][0]).all()
    assert ds.test.y.tolist() == made["test_batch"][1].tolist()


def test_cifar_binary_planes_are_rgb(tmp_path):
    record = bytes([7]) + bytes([10] * 1024 + [20] * 1024 + [30] * 1024)
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(record * 2)
    ds = cifar.read_cifar(path)
    assert ds.train.y.tolist() == [7, 7]
    assert ds.train.x[0, :, 5, 5].tolist() == [10, 20, 30]


@pytest.mark.parametrize("data, expect", [
    (bytes(3073 * 2 + 5), "not a multiple of the 3073-byte"),
    (bytes([10]) + bytes(3072), "label 10 is out of range"),
])
def test_cifar_binary_errors(tmp_path, data, expect):
    path = tmp_path / "test_batch.bin"
    path.write_bytes(data)
    with pytest.raises(DataError) as e:
        cifar.read_cifar(path)
    assert expect in one_line_naming(e, path)


@pytest.mark.parametrize("kind", ["bin", "py"])
def test_cifar_archive_in_memory(tmp_path, kind):
    made = write_cifar(tmp_path / "src" / f"cifar-10-batches-{kind}", kind)
    archive = tmp_path / f"cifar-10-{'binary' if kind == 'bin' else 'python'}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / f"cifar-10-batches-{kind}", arcname=f"cifar-10-batches-{kind}")
        evil = tarfile.TarInfo("../../escape/test_batch.bin")  # never read, never written
        evil.size = 3073
        tar.addfile(evil, io.BytesIO(bytes(3073)))
    before = set(os.listdir(tmp_path))
    ds = cifar.read_cifar(archive)
    assert set(os.listdir(tmp_path)) == before  # nothing extracted to disk
    assert len(ds.train) == 15 and len(ds.test) == 3
    assert (ds.test.x.numpy() == made["test_batch"][0]).all()


def test_cifar_missing_batch(tmp_path):
    write_cifar(tmp_path, "bin")
    (tmp_path / "data_batch_3.bin").unlink()
    with pytest.raises(DataError) as e:
        cifar.read_cifar(tmp_path)
    assert "data_batch_3.bin" in one_line_naming(e, tmp_path)


class _Exploit:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("payload", ["os.system", "eval"])
def test_cifar_pickle_refuses_code(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = _Exploit(str(marker)) if payload == "os.system" else None
    data = pickle.dumps({b"data": evil, b"labels": []}, protocol=2) if evil else \
        b"cbuiltins\neval\n(Vprint('pwned')\ntR."
    path = tmp_path / "data_batch_1"
    path.write_bytes(data)
    with pytest.raises(DataError) as e:
        cifar.read_cifar(path)
    assert "refused to unpickle" in one_line_naming(e, path)
    assert not marker.exists()


def test_cifar_pickle_wrong_content(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": [1, 2, 3], b"labels": [0]}, protocol=2))
    with pytest.raises(DataError) as e:
        cifar.read_cifar(path)
    one_line_naming(e, path)


def test_restricted_unpickler_is_the_only_load():
    source = open(cifar.__file__).read()
    loads = [line for line in source.splitlines() if ".load(" in line]
    assert loads and all("# safe: restricted unpickler" in line for line in loads)
    assert "pickle.load(" not in source and "pickle.loads(" not in source


# ------------------------------------------------------------------------------------------------
# Single pictures
# ------------------------------------------------------------------------------------------------

def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(mode: str = "RGB", size=(40, 30)) -> Image.Image:
    arr = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


@pytest.mark.parametrize("fmt, mode", [("PNG", "RGB"), ("PNG", "L"), ("JPEG", "RGB"), ("BMP", "RGB"),
                                       ("GIF", "P"), ("TIFF", "RGB"), ("WEBP", "RGB"), ("PPM", "L")])
def test_open_image_formats(tmp_path, fmt, mode):
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(encoded(gradient(mode), fmt))
    img = open_image(path)
    assert img.mode in ("L", "RGB") and img.size == (40, 30)
    assert img.mode == ("L" if mode == "L" else "RGB")


def test_open_image_bytes_and_str_path(tmp_path):
    data = encoded(gradient(), "PNG")
    (tmp_path / "a.png").write_bytes(data)
    assert open_image(data).size == open_image(str(tmp_path / "a.png")).size == (40, 30)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_open_image_rejects_truncated(tmp_path, fmt):
    data = encoded(gradient(size=(64, 64)), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError) as e:
        open_image(path)
    assert "truncated" in one_line_naming(e, path) or "corrupt" in str(e.value)


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("width, height, limit", [(30000, 30000, None), (10000, 10000, None), (50, 50, 100)])
def test_open_image_refuses_decompression_bombs(tmp_path, width, height, limit):
    path = tmp_path / "bomb.png"  # a header that claims a huge image; never decoded
    path.write_bytes(png_header_only(width, height))
    with pytest.raises(DataError) as e:
        open_image(path, **({"max_pixels": limit} if limit else {}))
    assert "decompression bomb" in one_line_naming(e, path)


@pytest.mark.parametrize("name, data, kind", [
    ("a.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "EPS"),
    ("a.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>', "SVG"),
    ("b.svg", b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
    ("a.pdf", b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "PDF"),
    ("a.png", b"definitely not an image", "not a supported image"),
    ("e.png", b"", "empty"),
])
def test_open_image_refuses_other_formats(tmp_path, name, data, kind):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataError) as e:
        open_image(path)
    assert kind in one_line_naming(e, path)


def test_open_image_applies_exif_rotation(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, 10:] = 255  # right half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rot.jpg"
    img.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    out = open_image(path)
    assert out.size == (10, 20)  # width and height swapped
    top, bottom = np.asarray(out)[:5].mean(), np.asarray(out)[-5:].mean()
    assert bottom > 200 > 50 > top  # the white half is now at the bottom


def test_open_image_composites_transparency_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    out = open_image(encoded(rgba, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 0, 0) and out.getpixel((5, 5)) == (255, 255, 255)
    la = Image.new("LA", (4, 4), (0, 0))
    assert open_image(encoded(la, "PNG")).getpixel((1, 1)) == 255
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 9, 9, 9])
    assert open_image(encoded(pal, "GIF", transparency=0)).getpixel((1, 1)) == (255, 255, 255)


def test_open_image_scales_16_bit(tmp_path):
    arr = np.full((4, 4), 65535, np.uint16)
    arr[0, 0] = 0
    out = open_image(encoded(Image.fromarray(arr), "PNG"))
    assert out.mode == "L" and out.getpixel((1, 1)) == 255 and out.getpixel((0, 0)) == 0


def test_is_grayscale():
    assert is_grayscale(gradient("L"))
    assert is_grayscale(gradient("L").convert("RGB"))
    assert not is_grayscale(gradient("RGB"))
    assert is_grayscale(np.zeros((3, 3), np.uint8))


# ------------------------------------------------------------------------------------------------
# CSV: classes from the labels found, names as labels, pandas index and id columns, no label
# ------------------------------------------------------------------------------------------------

def pixel_rows(n: int, npix: int = 4, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [",".join(map(str, rng.integers(0, 256, npix))) for _ in range(n)]


def test_csv_classes_are_the_labels_found_not_zero_to_the_largest(tmp_path):
    from minivision.data import load_dataset

    path = tmp_path / "one-to-ten.csv"
    labels = [1 + i % 10 for i in range(30)]
    path.write_text("label,p1,p2,p3,p4\n" + "\n".join(f"{k},{r}" for k, r in zip(labels, pixel_rows(30),
                                                                                  strict=True)) + "\n")
    ds = load_dataset(path)
    assert ds.classes == [str(k) for k in range(1, 11)]  # no empty class "0"
    assert ds.train.y.tolist() == [k - 1 for k in labels]
    assert any("labels 1-10 found: 10 classes" in n and "no class 0" in n for n in ds.notes), ds.notes
    gaps = tmp_path / "gaps.csv"
    gaps.write_text("label,p1,p2,p3,p4\n" + "\n".join(f"{k},{r}" for k, r in zip([5, 0, 2, 5], pixel_rows(4),
                                                                                  strict=True)) + "\n")
    ds = load_dataset(gaps)
    assert ds.classes == ["0", "2", "5"] and ds.train.y.tolist() == [2, 0, 1, 2]
    plain = tmp_path / "plain.csv"
    plain.write_text("label,p1,p2,p3,p4\n" + "\n".join(f"{i % 3},{r}" for i, r in enumerate(pixel_rows(6))) + "\n")
    ds = load_dataset(plain)
    assert ds.classes == ["0", "1", "2"] and ds.notes == []  # labels 0..K-1: nothing to say


def test_csv_labels_written_as_names_become_the_classes(tmp_path):
    from minivision.data import load_dataset

    path = tmp_path / "named.csv"
    names = ["Ankle boot", "T-shirt/top", '"Coat, long"', "Ankle boot"]
    rows = pixel_rows(4)
    path.write_text("label,p1,p2,p3,p4\n" + "\n".join(f"{n},{r}" for n, r in zip(names, rows, strict=True)) + "\n")
    ds = load_dataset(path)
    assert ds.classes == ["Ankle boot", "Coat, long", "T-shirt/top"]  # sorted, as a folder's classes
    assert ds.train.y.tolist() == [0, 2, 1, 0]
    assert ds.train.x.flatten().tolist() == [int(v) for r in rows for v in r.split(",")]
    last = tmp_path / "last.csv"  # the label column anywhere, found past the fast parser's first chunks
    body = [f"{r},{k % 10}" for k, r in enumerate(pixel_rows(1100))] + [f"{pixel_rows(1)[0]},Bag"]
    last.write_text("p1,p2,p3,p4,label\n" + "\n".join(body) + "\n")
    ds = load_dataset(last)
    assert ds.classes[-1] == "Bag" and len(ds.train) == 1101 and ds.train.y[-1] == len(ds.classes) - 1
    with pytest.raises(DataError) as e:
        read_pixel_csv(last)
    one_line_naming(e, last)


@pytest.mark.parametrize("index_header", ["", "Unnamed: 0", '""'])
def test_csv_index_column_written_by_pandas_is_dropped(tmp_path, index_header):
    from minivision.data import load_dataset

    path = tmp_path / "pandas.csv"
    rows = pixel_rows(3)
    path.write_text(f"{index_header},label,p1,p2,p3,p4\n" + "\n".join(f"{i},{i % 2},{r}" for i, r in enumerate(rows))
                    + "\n")
    ds = load_dataset(path)
    assert ds.image_size == (2, 2) and ds.train.y.tolist() == [0, 1, 0]
    assert ds.train.x.flatten().tolist() == [int(v) for r in rows for v in r.split(",")]
    assert any("index column" in n for n in ds.notes)


def test_csv_without_labels_reads_for_prediction_only(tmp_path):
    from minivision.data.csvfile import read_pixel_table

    rows = pixel_rows(3)
    kaggle = tmp_path / "test.csv"
    kaggle.write_text("pixel1,pixel2,pixel3,pixel4\n" + "\n".join(rows) + "\n")
    t = read_pixel_table(kaggle, need_labels=False)
    assert t.labels is None and t.ids is None and t.x.shape == (3, 1, 2, 2)
    with pytest.raises(DataError) as e:
        read_pixel_table(kaggle)
    assert "no 'label' column" in one_line_naming(e, kaggle) and "minivision predict" in str(e.value)
    ids = tmp_path / "ids.csv"
    ids.write_text("ImageId,pixel1,pixel2,pixel3,pixel4\n" + "\n".join(f"img{i},{r}" for i, r in enumerate(rows))
                   + "\n")
    t = read_pixel_table(ids, need_labels=False)
    assert t.ids == ["img0", "img1", "img2"] and t.x.flatten().tolist() == [int(v) for r in rows for v in r.split(",")]
    bare = tmp_path / "bare.csv"  # no header: 4 columns are 2x2 pixels; 5 would be a label and 4 pixels
    bare.write_text("\n".join(rows) + "\n")
    assert read_pixel_table(bare, need_labels=False).x.shape == (3, 1, 2, 2)


def test_csv_ids_and_index_past_999_and_quoted_names_keep_their_rows(tmp_path):
    from minivision.data.csvfile import read_pixel_table

    rows = pixel_rows(3)
    path = tmp_path / "mixed.csv"
    path.write_text("Unnamed: 0,id,label,p1,p2,p3,p4\n" + "\n".join(
        f'{5000 + i},{12345 + i},"Coat, {i}",{r}' for i, r in enumerate(rows)) + "\n")
    t = read_pixel_table(path)
    assert t.ids == ["12345", "12346", "12347"] and t.labels == ["Coat, 0", "Coat, 1", "Coat, 2"]
    assert t.x.flatten().tolist() == [int(v) for r in rows for v in r.split(",")]
