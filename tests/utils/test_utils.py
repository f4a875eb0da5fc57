"""The shared helpers: the one image / mask resize, seed derivation, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from thyroaug.utils.atomic import atomic_dir, atomic_path, write_json
from thyroaug.utils.resize import resize_images, resize_masks
from thyroaug.utils.seeds import derive_seed, torch_generator


def test_resize_images_is_antialiased_bilinear_clamped_to_input_range() -> None:
    x = torch.rand(3, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    out = resize_images(x, 16)
    ref = F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    assert out.dtype == torch.float32 and out.shape == (3, 1, 16, 16)
    assert torch.allclose(out, ref.clamp(float(x.min()), float(x.max())), atol=0)
    assert float(out.min()) >= float(x.min()) and float(out.max()) <= float(x.max())
    # a constant image stays exactly constant (no ringing), also when upsampling
    c = torch.full((1, 1, 8, 8), 0.3)
    assert torch.equal(resize_images(c, 20), torch.full((1, 1, 20, 20), 0.3))
    same = torch.rand(1, 1, 8, 8)
    assert resize_images(same, 8) is same  # no copy at the same size
    assert resize_images(torch.zeros(0, 1, 8, 8), 4).shape == (0, 1, 4, 4)


def test_resize_masks_is_nearest_exact_and_keeps_dtype() -> None:
    m = torch.zeros(1, 1, 6, 6, dtype=torch.uint8)
    m[..., 1::2, :] = 1  # rows 1, 3, 5
    out = resize_masks(m, 3)
    # nearest-exact samples pixel centres: output row i reads input row floor((i + 0.5) * 2),
    # i.e. rows 1, 3, 5
    assert out.dtype == torch.uint8 and out.unique().tolist() == [1]
    # PyTorch's legacy "nearest" reads rows 0, 2, 4 (shifted by half a pixel): all zeros
    legacy = F.interpolate(m.float(), size=(3, 3), mode="nearest")
    assert legacy.unique().tolist() == [0.0]
    assert set(resize_masks(m, 13).unique().tolist()) == {0, 1}
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        resize_masks(m[0], 3)


def test_derive_seed_is_the_seedsequence_word_and_validates() -> None:
    assert derive_seed(1, 2, 3) == int(np.random.SeedSequence([1, 2, 3]).generate_state(1)[0])
    assert derive_seed(1, 2, 3) != derive_seed(1, 2, 4)
    a = torch.rand(3, generator=torch_generator(5, 1))
    assert torch.equal(a, torch.rand(3, generator=torch_generator(5, 1)))
    with pytest.raises(ValueError):
        derive_seed(-1)
    with pytest.raises(ValueError):
        derive_seed()


def test_atomic_path_leaves_nothing_half_written(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.json"
    write_json(target, {"a": 1}, mode=0o600)
    assert target.read_text().strip().startswith("{") and (target.stat().st_mode & 0o777) == 0o600
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash while writing")
    assert '"a": 1' in target.read_text()  # the old file is untouched
    assert sorted(os.listdir(target.parent)) == ["file.json"]  # no temp file left


def test_atomic_dir_replaces_only_when_complete(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    with atomic_dir(folder) as tmp:
        (tmp / "x.txt").write_text("1")
    with pytest.raises(FileExistsError), atomic_dir(folder):
        pass
    with pytest.raises(RuntimeError), atomic_dir(folder, replace=True) as tmp:
        (tmp / "x.txt").write_text("2")
        raise RuntimeError("crash")
    assert (folder / "x.txt").read_text() == "1"
    with atomic_dir(folder, replace=True) as tmp:
        (tmp / "x.txt").write_text("3")
    assert (folder / "x.txt").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_staging_of_a_killed_writer_is_swept_on_the_next_write(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(dead.stdout)
    target = tmp_path / "generator"
    left = tmp_path / f".generator.tmp-{pid}-abc"
    left.mkdir()
    (left / "weights").write_bytes(b"x")
    (tmp_path / f".generator.old-{pid}-def").mkdir()
    alive = tmp_path / f".generator.tmp-{os.getpid()}-ghi"  # this process: maybe still writing
    alive.mkdir()
    legacy = tmp_path / ".generator.tmp-xyz"  # no pid in the name: left alone
    legacy.mkdir()
    with atomic_dir(target) as tmp:
        (tmp / "ok").write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["generator", alive.name, legacy.name]
    )
