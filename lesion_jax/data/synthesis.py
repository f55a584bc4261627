"""Procedural skin-lesion photographs with exact masks, in a dermoscopic and a macroscopic domain.

The paper transfers a segmenter from dermoscopic to macroscopic images (section 2). Its
databases are not redistributable, so tests, demos and smoke runs use this generator instead.
Each image is drawn from a small physical picture of skin:

* skin: a tone drawn from light to dark, low-frequency tone and redness variation, fine texture;
* lesion: an irregular shape (a radial function with random harmonics, perturbed by smooth
  noise) holding melanin (browns to black), and for melanomas also haemoglobin (red) and a
  blue-grey veil; pigment reduces reflectance multiplicatively, so contrast follows skin tone;
* domain artefacts. Dermoscopic: the dermoscope's circular field of view, a pigment network and
  flat lighting. Macroscopic: glare, an uneven light with shadows, hair and small moles nearby.

The mask is exact: the lesion is a signed distance `d` (pixels) to its boundary, the image blends
the pigment in with `alpha = clip(0.5 + d / width)`, and the mask is `d >= 0`, i.e. the blend
thresholded at 0.5. Hair, glare, lighting and moles are drawn on top and never change the mask,
so they act as distractors, as they do in real photographs.

Rendering is deterministic in (seed, domain, size). Every random choice except per-pixel sensor
noise is made in resolution-free coordinates from its own stream, so one seed gives the same
lesion at every size. Everything is vectorised NumPy (no per-pixel Python).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

DOMAINS = ("dermoscopic", "macroscopic")
LABELS = ("nevus", "melanoma")
MIN_SIZE = 16

# Share of melanomas. Higher than in clinical data so that tiny splits still hold both classes.
MELANOMA_PROBABILITY = 0.35
# Share of faint (low-contrast) lesions, which keep segmentation from being trivial.
FAINT_PROBABILITY = 0.25
# Lesion area as a fraction of the image. Dermoscopes are placed over the lesion, so lesions
# fill more of the frame than in photographs taken from a distance.
AREA_FRACTION = {"dermoscopic": (0.18, 0.50), "macroscopic": (0.08, 0.30)}
# Specific absorbance per RGB channel (relative units): melanin absorbs more towards blue
# (browns), haemoglobin absorbs green and blue (reds).
MELANIN = np.array([0.62, 0.92, 1.15], np.float32)
HAEMOGLOBIN = np.array([0.04, 0.80, 0.55], np.float32)
# Skin reflectance from very light to very dark (RGB in [0, 1]).
SKIN_TONES = np.array([[246, 216, 198], [224, 176, 148], [186, 132, 98], [122, 84, 60],
                       [86, 60, 44]], np.float32) / 255.0
# Dermal melanin seen through the skin looks blue-grey (Tyndall effect).
BLUE_GREY = np.array([0.42, 0.47, 0.58], np.float32)
HAIR = np.array([0.10, 0.08, 0.07], np.float32)


@dataclass(frozen=True)
class _Grid:
  """Pixel-centre coordinates in [-1, 1] along each axis (the resolution-free frame)."""
  height: int
  width: int

  @functools.cached_property
  def y(self) -> np.ndarray:
    """(H, 1) float32."""
    return ((np.arange(self.height, dtype=np.float32) + 0.5) * (2 / self.height) - 1)[:, None]

  @functools.cached_property
  def x(self) -> np.ndarray:
    """(1, W) float32."""
    return ((np.arange(self.width, dtype=np.float32) + 0.5) * (2 / self.width) - 1)[None, :]

  @property
  def pixels_per_unit(self) -> float:
    """Pixels per unit of the frame (half the shorter side): converts distances to pixels."""
    return min(self.height, self.width) / 2.0


@functools.lru_cache(maxsize=128)
def _rbf_weights(pixels: int, cells: int) -> np.ndarray:
  """(pixels, cells) Gaussian weights from `cells` lattice points to pixel centres; unit rows.

  Unit-norm rows make a field built from i.i.d. N(0, 1) lattice values exactly unit-variance
  at every pixel, whatever the lattice spacing. Cached: a dataset reuses a few (size, cells).
  """
  coords = (np.arange(pixels, dtype=np.float32) + 0.5) * (2 / pixels) - 1
  centres = np.linspace(-1.2, 1.2, cells, dtype=np.float32)
  width = 0.7 * float(centres[1] - centres[0])
  w = np.exp(-0.5 * ((coords[:, None] - centres[None, :]) / width) ** 2)
  w /= np.sqrt((w * w).sum(1, keepdims=True))
  w.setflags(write=False)
  return w


# OpenBLAS multithreads a matrix product once M*N*K exceeds 65536 * 4. On a busy machine the
# wake-up of the second thread costs ~16 ms (measured; a 256x30x256 product takes 0.04 ms on
# one thread), so products are cut into row blocks below that size.
_SINGLE_THREAD_MNK = 65536 * 4


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """a @ b in row blocks small enough that BLAS stays on the calling thread."""
  rows = max(1, _SINGLE_THREAD_MNK // (a.shape[1] * b.shape[1]))
  if rows >= a.shape[0]:
    return a @ b
  out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))
  for start in range(0, a.shape[0], rows):
    np.matmul(a[start:start + rows], b, out=out[start:start + rows])
  return out


def _smooth_noise(rng: np.random.Generator, grid: _Grid, cells: int) -> np.ndarray:
  """Unit-variance smooth noise (HxW float32) with about `cells` features across the frame.

  The lattice values come from `rng` and do not depend on the image size, so the same field is
  sampled at every resolution. Separable: two small matrix products instead of a convolution.
  """
  wy, wx = _rbf_weights(grid.height, cells), _rbf_weights(grid.width, cells)
  lattice = rng.standard_normal((cells, cells), dtype=np.float32)
  return _matmul(wy, _matmul(lattice, wx.T))


def _smoothstep(edge0: float, edge1: float, v: np.ndarray) -> np.ndarray:
  """0 below edge0, 1 above edge1 (either order), a smooth cubic between; keeps v's dtype."""
  t = np.clip((v - float(edge0)) * (1.0 / (float(edge1) - float(edge0))), 0.0, 1.0)
  return t * t * (3 - 2 * t)


# ------------------------------------------------------------------------------------ lesion


@dataclass(frozen=True)
class _Shape:
  """An irregular closed shape: r(theta) = radius * (1 + sum_k a_k cos(k theta + phase_k))."""
  centre: tuple[float, float]
  radius: float
  stretch: float            # area-preserving ellipse axis ratio
  angle: float
  harmonics: np.ndarray     # (K, 3): k, amplitude, phase
  wobble: float             # amplitude of the smooth-noise perturbation of the boundary


def _draw_shape(rng: np.random.Generator, domain: str, melanoma: bool) -> _Shape:
  low, high = AREA_FRACTION[domain]
  area = rng.uniform(low, high)
  # Melanomas: more and stronger harmonics (asymmetry, irregular border).
  orders = np.arange(2, 9 if melanoma else 5)
  scale = rng.uniform(0.07, 0.13) if melanoma else rng.uniform(0.02, 0.06)
  amplitude = scale * rng.standard_normal(len(orders)) / orders ** 0.7
  phase = rng.uniform(0, 2 * np.pi, len(orders))
  harmonics = np.stack([orders, amplitude, phase], 1).astype(np.float32)
  # Frame area is 4 units^2; the mean of r^2 over theta is radius^2 (1 + sum a_k^2 / 2).
  radius = np.sqrt(area * 4 / np.pi / (1 + 0.5 * np.sum(amplitude ** 2)))
  stretch = rng.uniform(1.0, 1.45)
  angle = rng.uniform(0, np.pi)
  # Keep the lesion inside the frame: the centre may move as far as its extent allows.
  extent = radius * np.sqrt(stretch) * (1 + np.abs(amplitude).sum()) + 0.05
  room = max(0.0, 1.0 - extent)
  jitter = 0.35 if domain == "dermoscopic" else 1.0
  centre = tuple(float(c) for c in rng.uniform(-room, room, 2) * jitter)
  wobble = rng.uniform(0.06, 0.14) if melanoma else rng.uniform(0.02, 0.06)
  return _Shape(centre, float(radius), float(stretch), float(angle), harmonics, float(wobble))


def _shape_level(shape: _Shape, y: np.ndarray, x: np.ndarray,
                 wobble_field: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
  """(signed distance to the boundary in frame units, positive inside; normalised radius)."""
  # Python-float parameters throughout: NumPy float64 scalars would promote float32 arrays.
  dy, dx = y - shape.centre[0], x - shape.centre[1]
  c, s, root = math.cos(shape.angle), math.sin(shape.angle), math.sqrt(shape.stretch)
  u = (dx * c + dy * s) * (1 / root)
  v = (-dx * s + dy * c) * root
  rho = np.sqrt(u * u + v * v)
  theta = np.arctan2(v, u)
  profile = np.ones_like(theta)
  for k, a, phase in shape.harmonics.tolist():
    profile = profile + a * np.cos(k * theta + phase)
  boundary = shape.radius * profile * (1 + shape.wobble * wobble_field)
  return boundary - rho, rho / boundary


def _pigment_network(rng: np.random.Generator, grid: _Grid, cells: int) -> np.ndarray:
  """Reticular lines in [0, 1]: the edges of a jittered Voronoi tessellation (Worley F2 - F1).

  The network's holes are the cells; its lines are where the two nearest seeds are equidistant.
  Only the 3x3 neighbouring lattice cells can hold the two nearest seeds, so this is 9 passes,
  and with an unwarped lattice each pass gathers with separable (row, column) indices.
  """
  # One seed per lattice cell (`cells` across the frame) plus a ring of cells outside it.
  jitter = rng.uniform(0.1, 0.9, (2, cells + 2, cells + 2)).astype(np.float32)
  # Broken, wavy lines: perturb the distance gap and the line width with smooth noise.
  gap_noise = _smooth_noise(rng, grid, cells)
  width_noise = _smooth_noise(rng, grid, 6)
  gy = (grid.y[:, 0] + 1) * (cells / 2.0)
  gx = (grid.x[0] + 1) * (cells / 2.0)
  iy = np.clip(np.floor(gy).astype(np.int32), 0, cells - 1)
  ix = np.clip(np.floor(gx).astype(np.int32), 0, cells - 1)
  f1 = np.full((gy.size, gx.size), np.inf, np.float32)   # squared distance to nearest seed
  f2 = f1.copy()                                          # ... and to the second nearest
  for oy in (-1, 0, 1):
    rows = (iy + oy + 1)[:, None]
    by = (gy - (iy + oy).astype(np.float32))[:, None]
    for ox in (-1, 0, 1):
      cols = (ix + ox + 1)[None, :]
      bx = (gx - (ix + ox).astype(np.float32))[None, :]
      dy = by - jitter[0][rows, cols]
      dx = bx - jitter[1][rows, cols]
      d2 = dy * dy + dx * dx
      np.minimum(f2, np.maximum(f1, d2), out=f2)
      np.minimum(f1, d2, out=f1)
  gap = np.sqrt(f2) - np.sqrt(f1) + 0.06 * gap_noise
  width = 0.13 * (1 + 0.3 * width_noise)
  return np.exp(-(gap / width) ** 2)


def _draw_skin(rng: np.random.Generator, grid: _Grid, domain: str) -> tuple[np.ndarray, np.ndarray]:
  """(skin reflectance HxWx3 in [0, 1], skin haemoglobin density HxW)."""
  spread = 0.55 if domain == "dermoscopic" else 1.0
  tone = rng.uniform(0, spread) * (len(SKIN_TONES) - 1)
  low = int(tone)
  high = min(low + 1, len(SKIN_TONES) - 1)
  base = SKIN_TONES[low] + (tone - low) * (SKIN_TONES[high] - SKIN_TONES[low])
  # Dermoscopes light the skin evenly with a cold-white LED; cameras see ambient light casts.
  cast = rng.normal(0, 0.025 if domain == "dermoscopic" else 0.05, 3).astype(np.float32)
  base = np.clip(base * (1 + cast), 0, 1)
  tone_field = 0.035 * _smooth_noise(rng, grid, 5)
  redness = np.maximum(0, rng.uniform(0.0, 0.12) + 0.08 * _smooth_noise(rng, grid, 6))
  texture = 0.018 * _smooth_noise(rng, grid, 70)
  skin = base * (1 + tone_field + texture)[..., None]
  return skin, redness


def _paint_lesion(rng: np.random.Generator, grid: _Grid, domain: str, melanoma: bool,
                  radial: np.ndarray):
  """Pigment densities inside the lesion: (melanin HxW, haemoglobin HxW, veil HxW in [0, 1])."""
  # Mostly clear lesions, with a share of faint ones (low contrast, as light nevi are).
  if rng.uniform() < FAINT_PROBABILITY:
    base = float(rng.uniform(0.18, 0.38))
  else:
    base = float(rng.uniform(0.45, 1.35))
  if melanoma:
    base *= 1.15
  centre_weight = float(rng.uniform(-0.2, 0.6))   # darker (or lighter) centre
  inner = np.clip(1 - radial, 0, 1)
  # Blotches: darker and lighter areas, stronger and more asymmetric in melanomas.
  blotches = _smooth_noise(rng, grid, int(rng.integers(6, 14)))
  spread = float(rng.uniform(0.3, 0.55) if melanoma else rng.uniform(0.1, 0.3))
  melanin = base * (1 + centre_weight * inner + spread * blotches)
  if melanoma:
    # Multi-coloured: very dark blotches, reddish areas and a blue-grey veil.
    dark = _smoothstep(0.5, 1.4, _smooth_noise(rng, grid, 11))
    melanin = melanin + float(rng.uniform(0.5, 1.4)) * dark
    haemoglobin = float(rng.uniform(0.2, 0.7)) * _smoothstep(0.2, 1.2, _smooth_noise(rng, grid, 8))
    veil = float(rng.uniform(0.25, 0.6)) * _smoothstep(0.5, 1.3, _smooth_noise(rng, grid, 7))
  else:
    # Some nevi are pinkish (little melanin, some vessels).
    haemoglobin = np.full_like(melanin, float(rng.uniform(0, 0.25)))
    veil = np.zeros_like(melanin)
  if domain == "dermoscopic":
    # The dermoscope shows the pigment network: present in patches, fading towards the border,
    # thicker and more irregular in melanomas.
    cells = int(rng.integers(22, 36))
    network = _pigment_network(rng, grid, cells)
    patches = _smoothstep(-0.8, 0.6, _smooth_noise(rng, grid, 5))
    strength = float(rng.uniform(0.25, 0.6)) * (1.5 if melanoma else 1.0)
    fade = _smoothstep(0.0, 0.4, 1 - radial)
    melanin = melanin + strength * base * network * (0.4 + 0.6 * fade) * patches
    # Dots and globules: small dark spots, mostly towards the periphery.
    dots = _smoothstep(2.0, 2.6, _smooth_noise(rng, grid, 50))
    melanin = melanin + (1.2 if melanoma else 0.5) * dots * _smoothstep(0.3, 0.5, radial)
  # Never let the border pale so much that the visible edge would move inside the mask.
  melanin = np.maximum(melanin, 0.55 * base)
  return melanin, haemoglobin, veil


def _blur(image: np.ndarray) -> np.ndarray:
  """A [1, 2, 1] / 4 blur along both axes (edge-replicated): a slightly soft camera lens."""
  padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
  rows = padded[:-2] + 2 * padded[1:-1] + padded[2:]
  return (rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]) * (1 / 16)


# -------------------------------------------------------------------------------- artefacts


def _curve_coverage(grid: _Grid, curves: list[tuple[np.ndarray, float]]) -> np.ndarray:
  """Coverage in [0, 1] of thin curves, by bilinear splatting of points along each curve.

  `curves` holds (control points (3, 2) of a quadratic Bezier in frame units, width in px).
  Points are spaced half a pixel apart along and across the curve, so each covered pixel
  receives about 4 points of weight 1 in total.
  """
  h, w = grid.height, grid.width
  to_px = np.array([h / 2, w / 2], np.float32)
  ys, xs = [], []
  for control, width_px in curves:
    p = (control + 1) * to_px                              # pixel coordinates (y, x)
    length = np.linalg.norm(p[1] - p[0]) + np.linalg.norm(p[2] - p[1])
    t = np.linspace(0, 1, max(2, int(length * 2)), dtype=np.float32)[:, None]
    points = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t ** 2 * p[2]
    tangent = 2 * (1 - t) * (p[1] - p[0]) + 2 * t * (p[2] - p[1])
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-6
    offsets = np.arange(-width_px / 2 + 0.25, width_px / 2, 0.5, dtype=np.float32)
    if offsets.size == 0:
      offsets = np.zeros(1, np.float32)
    across = points[None] + offsets[:, None, None] * normal[None]
    ys.append(across[..., 0].ravel() - 0.5)
    xs.append(across[..., 1].ravel() - 0.5)
  y, x = np.concatenate(ys), np.concatenate(xs)
  y0, x0 = np.floor(y), np.floor(x)
  fy, fx = y - y0, x - x0
  canvas = np.zeros((h + 2) * (w + 2), np.float32)
  for dy, wy in ((0, 1 - fy), (1, fy)):
    for dx, wx in ((0, 1 - fx), (1, fx)):
      # Padding by one pixel catches points just outside the image; they are dropped below.
      yy = np.clip(y0 + dy + 1, 0, h + 1).astype(np.int64)
      xx = np.clip(x0 + dx + 1, 0, w + 1).astype(np.int64)
      canvas += np.bincount(yy * (w + 2) + xx, weights=wy * wx, minlength=canvas.size)
  coverage = canvas.reshape(h + 2, w + 2)[1:-1, 1:-1]
  # Points are half a pixel apart in both directions; thinner-than-a-pixel hair stays faint.
  return np.clip(coverage / 4.0, 0, 1)


def _draw_hair(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
  count = int(rng.choice([0, 2, 4, 8, 14], p=[0.25, 0.2, 0.2, 0.2, 0.15]))
  curves = []
  scale = grid.pixels_per_unit / 128
  for _ in range(count):
    start = rng.uniform(-1.1, 1.1, 2)
    direction = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.5, 2.2)
    end = start + length * np.array([np.sin(direction), np.cos(direction)])
    bend = rng.normal(0, 0.25, 2)
    middle = (start + end) / 2 + bend
    width = rng.uniform(0.8, 2.0) * scale
    curves.append((np.stack([start, middle, end]).astype(np.float32), float(width)))
  if not curves:
    return np.zeros((grid.height, grid.width), np.float32)
  return _curve_coverage(grid, curves)


def _draw_moles(rng: np.random.Generator, grid: _Grid, shape: _Shape) -> np.ndarray:
  """Melanin density of small moles placed clear of the lesion (distractors, not in the mask)."""
  count = int(rng.choice([0, 1, 2, 3, 4], p=[0.3, 0.25, 0.2, 0.15, 0.1]))
  # A fixed number of candidates keeps the random stream independent of where moles land.
  candidates = rng.uniform(-0.95, 0.95, (12, 2)).astype(np.float32)
  radii = rng.uniform(0.02, 0.05, 12).astype(np.float32)
  stretch = rng.uniform(0.7, 1.4, 12).astype(np.float32)
  densities = rng.uniform(0.6, 1.5, 12).astype(np.float32)
  level, _ = _shape_level(shape, candidates[:, 0], candidates[:, 1], 0.0)
  # Clear of the lesion by the mole radius plus a margin for the boundary wobble.
  clear = level < -(radii + 0.06 + shape.wobble * shape.radius * 3.5)
  moles = np.zeros((grid.height, grid.width), np.float32)
  for i in np.flatnonzero(clear)[:count]:
    (cy, cx), r = candidates[i].tolist(), float(radii[i])
    d2 = ((grid.y - cy) * float(stretch[i])) ** 2 + ((grid.x - cx) / float(stretch[i])) ** 2
    moles += densities[i] * _smoothstep(1.0, 0.6, np.sqrt(d2) / r)
  return moles


def _dermoscope_field(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
  """Illumination of the dermoscope: flat inside a circular field of view, dark outside."""
  radius = rng.uniform(0.95, 1.2)   # corners (at sqrt(2)) always fall outside the field
  cy, cx = rng.normal(0, 0.04, 2).tolist()
  edge = rng.uniform(0.02, 0.08)
  outside = rng.uniform(0.02, 0.08)
  aspect = grid.width / grid.height
  r = np.hypot((grid.y - cy) * min(1.0, 1 / aspect), (grid.x - cx) * min(1.0, aspect))
  inside = _smoothstep(radius, radius - edge, r)
  falloff = 1 - 0.12 * (r / radius) ** 4
  return outside + (1 - outside) * inside * falloff


def _camera_light(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
  """Uneven ambient light: a gradient, smooth variation, optional cast shadow, lens falloff."""
  direction = rng.uniform(0, 2 * np.pi)
  slope = rng.uniform(0.08, 0.3)
  light = 1 + slope * (math.sin(direction) * grid.y + math.cos(direction) * grid.x)
  light = light + 0.06 * _smooth_noise(rng, grid, 4)
  has_shadow = rng.uniform() < 0.4
  shadow_angle = rng.uniform(0, 2 * np.pi)
  shadow_offset = rng.uniform(0.3, 0.9)
  shadow_depth = rng.uniform(0.25, 0.45)
  shadow_soft = rng.uniform(0.1, 0.35)
  if has_shadow:
    along = math.sin(shadow_angle) * grid.y + math.cos(shadow_angle) * grid.x
    light = light * (1 - shadow_depth * _smoothstep(shadow_offset - shadow_soft,
                                                    shadow_offset + shadow_soft, along))
  light = light * (1 - 0.1 * (grid.y ** 2 + grid.x ** 2))
  return np.clip(light, 0.3, 1.5)


def _glare(rng: np.random.Generator, grid: _Grid, shape: _Shape) -> np.ndarray:
  """Specular highlights in [0, 1]: a faint sheen with bright speckles in a few shiny zones.

  The skin's micro-relief reflects the light source in many tiny spots; they cluster where the
  surface faces the camera, which for a raised lesion is often on the lesion itself.
  """
  zones = int(rng.integers(1, 4))
  sheen = np.zeros((grid.height, grid.width), np.float32)
  on_lesion = rng.uniform() < 0.6
  for z in range(zones):
    if z == 0 and on_lesion:
      cy, cx = (np.array(shape.centre) + rng.normal(0, 0.4 * shape.radius, 2)).tolist()
    else:
      cy, cx = rng.uniform(-0.9, 0.9, 2).tolist()
    sy, sx = rng.uniform(0.06, 0.22, 2).tolist()
    zone = np.exp(-0.5 * (((grid.y - cy) / sy) ** 2 + ((grid.x - cx) / sx) ** 2))
    sheen = np.maximum(sheen, zone)
  speckle = _smooth_noise(rng, grid, int(rng.integers(90, 130)))
  spots = _smoothstep(1.0, 1.6, speckle + 1.4 * sheen - 0.6)
  # The brightest zone's centre is a saturated catchlight; its size varies with the light.
  core = _smoothstep(float(rng.uniform(0.55, 0.85)), 1.0, sheen)
  return np.maximum(np.maximum(0.25 * sheen, core), spots * _smoothstep(0.1, 0.5, sheen))


# ------------------------------------------------------------------------------------ public


def _check_seed(seed: int, where: str) -> int:
  if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
    raise ValueError(f"{where}: seed must be a non-negative int, got {seed!r}")
  return int(seed)


def _check_domain(domain: str, where: str) -> str:
  if domain not in DOMAINS:
    raise ValueError(f"{where}: unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
  return domain


def _check_size(size: int | tuple[int, int]) -> tuple[int, int]:
  def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
  if is_int(size):
    height = width = int(size)
  elif isinstance(size, (tuple, list)) and len(size) == 2 and all(is_int(s) for s in size):
    height, width = (int(s) for s in size)
  else:
    raise ValueError(f"render_lesion: size must be an int or (height, width), got {size!r}")
  if min(height, width) < MIN_SIZE:
    raise ValueError(f"render_lesion: size {size!r} is too small; each side must be "
                     f">= {MIN_SIZE} pixels")
  return height, width


def _scene_streams(seed: int, domain: str) -> tuple[np.random.Generator, np.random.SeedSequence]:
  """(scene generator, sensor-noise seed) of one image.

  Scene choices are resolution-free and sensor noise is per pixel; separate streams keep the
  scene identical at every size. The domain is mixed in so both domains are independent draws.
  """
  scene, noise = np.random.SeedSequence([seed, DOMAINS.index(domain)]).spawn(2)
  return np.random.default_rng(scene), noise


def _draw_melanoma(rng: np.random.Generator) -> bool:
  # The first draw of every scene, so `lesion_label` can read it without rendering.
  return bool(rng.uniform() < MELANOMA_PROBABILITY)


def lesion_label(seed: int, domain: str) -> str:
  """The label `render_lesion(seed, domain, size)` returns, without rendering (for splitting)."""
  seed = _check_seed(seed, "lesion_label")
  domain = _check_domain(domain, "lesion_label")
  return LABELS[int(_draw_melanoma(_scene_streams(seed, domain)[0]))]


def image_seed(dataset_seed: int, index: int) -> int:
  """The render seed of image `index` of a dataset drawn with `dataset_seed` (a 64-bit hash).

  Hashing (rather than e.g. dataset_seed * N + index) keeps datasets with different seeds
  free of shared images whatever their sizes.
  """
  dataset_seed = _check_seed(dataset_seed, "image_seed")
  state = np.random.SeedSequence([dataset_seed, int(index)]).generate_state(1, np.uint64)
  return int(state[0])


def render_lesion(seed: int, domain: str,
                  size: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray, str]:
  """One synthetic lesion image: (image uint8 HxWx3, mask uint8 HxW in {0, 1}, label).

  `domain` is 'dermoscopic' or 'macroscopic'; `size` is an int (square) or (height, width);
  `label` is 'nevus' or 'melanoma'. Deterministic in (seed, domain, size), and the same seed
  gives the same scene at every size (only the sensor noise differs).
  """
  seed = _check_seed(seed, "render_lesion")
  domain = _check_domain(domain, "render_lesion")
  height, width = _check_size(size)
  grid = _Grid(height, width)
  rng, noise_seed = _scene_streams(seed, domain)

  melanoma = _draw_melanoma(rng)
  shape = _draw_shape(rng, domain, melanoma)
  # Coarse bulges plus finer notches: an irregular border at two scales.
  wobble_field = _smooth_noise(rng, grid, 6) + 0.45 * _smooth_noise(rng, grid, 16)
  level, radial = _shape_level(shape, grid.y, grid.x, wobble_field)
  distance_px = level * grid.pixels_per_unit
  # Soft border: the pigment blends in over a few pixels; the mask is the 0.5 level of the blend.
  # Photographs (not in contact with the skin) are a little softer than dermoscopy.
  border_px = rng.uniform(1.2, 3.0 if domain == "dermoscopic" else 4.5) * grid.pixels_per_unit / 128
  alpha = np.clip(0.5 + distance_px / max(border_px, 1e-3), 0.0, 1.0)
  mask = (distance_px >= 0).astype(np.uint8)

  skin, skin_blood = _draw_skin(rng, grid, domain)
  melanin, haemoglobin, veil = _paint_lesion(rng, grid, domain, melanoma, radial)
  melanin = alpha * melanin
  haemoglobin = skin_blood + alpha * haemoglobin
  veil = alpha * veil
  if domain == "macroscopic":
    melanin = melanin + _draw_moles(rng, grid, shape)
  absorbance = melanin[..., None] * MELANIN + haemoglobin[..., None] * HAEMOGLOBIN
  image = skin * np.exp(-absorbance)
  image = image + veil[..., None] * (BLUE_GREY * skin.mean(-1, keepdims=True) - image)

  if domain == "dermoscopic":
    image = image * _dermoscope_field(rng, grid)[..., None]
    noise_level = 0.012
  else:
    hair = _draw_hair(rng, grid)
    image = image + (0.85 * hair)[..., None] * (HAIR - image)
    image = image * _camera_light(rng, grid)[..., None]
    image = _blur(image)
    # Glare after the lens blur: highlights saturate the sensor, so they stay crisp and white.
    glare = _glare(rng, grid, shape)
    image = image + glare[..., None] * (1.0 - image)
    noise_level = 0.02
  # Sensor noise, mostly in luminance (chroma noise is smoothed away by camera processing).
  noise = np.random.default_rng(noise_seed).standard_normal(image.shape[:2], dtype=np.float32)
  image = image + (noise_level * noise)[..., None]
  image = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
  return image, mask, LABELS[int(melanoma)]
