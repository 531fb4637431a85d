"""elastic_distort: Simard et al.'s elastic distortion keeps what a digit is, and moves its strokes a little."""

from __future__ import annotations

import torch

from conftest import centre_of_mass
from experiments import elastic_distort  # an experiment's tool: the notebook does not use it


def dot(size: int = 3, batch: int = 64) -> torch.Tensor:
    """(batch, 1, 28, 28) images of one bright size x size square at the centre."""
    images = torch.zeros(batch, 1, 28, 28)
    start = 14 - size // 2
    images[:, :, start:start + size, start:start + size] = 1.0
    return images


def test_it_keeps_shape_dtype_and_range():
    images = torch.rand(16, 1, 28, 28)
    out = elastic_distort(images, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0 and out.max() <= 1


def test_zero_strength_is_the_identity_and_a_seed_repeats_it():
    images = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(elastic_distort(images, alpha=0.0), images, atol=1e-5, rtol=0)
    first = elastic_distort(images, generator=torch.Generator().manual_seed(1))
    again = elastic_distort(images, generator=torch.Generator().manual_seed(1))
    other = elastic_distort(images, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_a_centred_dot_stays_near_the_centre_but_does_move():
    images = dot()
    out = elastic_distort(images, generator=torch.Generator().manual_seed(0))
    shift = (centre_of_mass(out) - centre_of_mass(images)).norm(dim=1)  # (B,) pixels
    assert shift.max() < 5.0 and shift.mean() < 2.5  # Simard's alpha=34, sigma=4: about 1.4 px (sd) per axis
    assert shift.mean() > 0.3  # ...but it does move: this is augmentation, not a no-op
    kept = out.sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))
    assert kept.min() > 0.4 and kept.max() < 2.5  # stretched or squeezed, never erased or smeared out


def test_each_image_gets_its_own_field_and_neighbours_move_together():
    images = dot(batch=2)
    out = elastic_distort(images, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(out[0], out[1])  # the same input, two different distortions
    # A smooth field: a 3x3 dot stays one blob (its bright pixels touch), as a bent stroke would.
    bright = (out[0, 0] > 0.3).nonzero()
    assert len(bright) >= 3 and (bright.max(0).values - bright.min(0).values).max() <= 5


def test_it_runs_on_the_images_device_and_in_their_dtype():
    images = dot(batch=4).to(torch.float64)
    assert elastic_distort(images, generator=torch.Generator().manual_seed(0)).dtype == torch.float64
    # "meta", a device that is not the CPU: a field, scale or grid left on the CPU fails where it meets the images'
    # tensors, as it would on a GPU (meta does not check a convolution's weights, so the Gaussian kernel escapes).
    on_meta = elastic_distort(images.to("meta"), generator=torch.Generator().manual_seed(0))
    assert on_meta.device.type == "meta" and on_meta.dtype == torch.float64 and on_meta.shape == images.shape
