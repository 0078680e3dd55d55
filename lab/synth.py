"""Synthetic dashcam videos: a small stand-in for the Nexar collision dataset that needs no download.

``generate`` writes real H.264 mp4s (PyAV, libx264, yuv420p) in the Nexar layout that
``lab.datasets`` reads: ``train.csv`` (``id,time_of_event,time_of_alert,target``) and
``train/00000.mp4 ...``, plus ``synth_truth.json`` with what was drawn (scenario, the key vehicle's
pixel box in every frame) so tests can check the pixels against the labels.

The scene is a three-lane road seen from a dashcam (oncoming lane left, ego lane, same-direction
lane right) drawn in perspective with a pinhole camera: a point at lateral offset X and distance
Z metres lands at ``x = cx + f X / Z`` and a ground point at ``y = horizon + f h_cam / Z``. Every
video has one *key* vehicle whose trajectory decides the label, plus background traffic:

- positives (collisions): the key vehicle ends 1.6-2.6 m from the camera (touching the bonnet) at the event
  time (closing on a slower vehicle, the lead braking hard, a cut-in, a vehicle crossing, an
  oncoming vehicle drifting into the lane), so it looms: its size grows like 1/Z, fastest in the
  last second.
- negatives (hard negatives on purpose): most keep a vehicle in our lane at the distances the
  positives show over a window before their prediction times (0.5-1.5 s before contact, about
  4-16 m, and farther earlier in the window): one we follow at a steady gap (5-25 m), one pulling
  away from close behind it (3-6 m), one we close on from 25-45 m and stop 4-9 m behind; the rest
  are the manoeuvres that end well (an aborted cut-in, a crossing at a safe distance, oncoming
  and overtaking traffic that passes to the side).

So the cue is the closing speed, not the apparent size: in any one frame before the prediction
time a positive's key vehicle looks like a negative's, the mean of its sizes over a window does
too (tests/test_synth.py checks both), and only the order of the frames (growing vs steady or
shrinking) tells them apart. A head that pools over time without order (mean pooling) sees the
same sizes in a car we close on and in one pulling away.

Background vehicles stay in the side lanes or far ahead, so only the key vehicle ever reaches the
bottom centre of the frame. Lighting, haze, camera height and shake, focal length, road curve,
ego speed and sensor noise vary per video. ``style="night"`` is a visibly different second task
for transfer experiments (dark sky, city skyline with lit windows, street lamps, tail- and
headlights, the ego headlight pool) with the same labelling logic.

Positive events are placed at least ``MIN_EVENT_S`` (6.8 s) into a long clip, so the longest
window has its full history (4 s window + 1.5 s horizon + clip context). Clips shorter than
``MIN_EVENT_S + END_MARGIN_S`` are DAD/CCD-style short clips (``--seconds 5``): the event falls
in their last second (``SHORT_EVENT_S`` before the end at the earliest), and extraction pads the
history they lack. Negatives have no event; extraction uses the clip end as their reference time.

Frames are drawn with numpy (array slices and broadcast masks, no per-pixel Python loops) and
depend only on the seed: the same seed gives byte-identical frames, and with the encoder pinned
(one thread, fixed CPU kernels, see ``_x264_options``) byte-identical mp4s on x86-64.
"""
from __future__ import annotations

import csv
import io
import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crashsearch.lab._io import atomic_write, publish, temp_beside
from crashsearch.lab.datasets import Dataset, load_dataset, stratified_split
from crashsearch.lab.errors import UserError

STYLES = ("day", "night")
MIN_EVENT_S = 6.8  # 4 s window + 1.5 s horizon + ~1 s of clip context before the event
END_MARGIN_S = 0.3  # an event needs a few frames after it in the clip
# scenarios of the key vehicle and how often each is drawn (module docstring)
POSITIVE_SCENARIOS = ("closing", "brake", "cut_in", "crossing", "oncoming_drift")
POSITIVE_WEIGHTS = (0.3, 0.3, 0.2, 0.1, 0.1)
NEGATIVE_SCENARIOS = ("follow", "pull_away", "brake_stop", "aborted_cut_in", "crossing_clear", "oncoming", "overtake")
NEGATIVE_WEIGHTS = (0.3, 0.25, 0.2, 0.1, 0.05, 0.05, 0.05)
# Hard negatives in our lane (metres; seconds before the clip end). Their ranges match what a
# positive shows over a whole window, not only at the prediction time: a positive approaches from
# far, so with negatives kept close throughout, a window's MEAN apparent size told the classes apart
# (ROC AUC 0.81 over 4 s windows) and an order-blind head learned "small on average = collision".
FOLLOW_MIN_M, FOLLOW_MAX_M = 5.0, 25.0  # steady gap
PA_NEAR, PA_T = (3.0, 6.0), (2.5, 6.0)  # pull-away: starts this close, this long before the end
BS_FROM, BS_STOP = (25.0, 45.0), (4.0, 9.0)  # brake-stop: from this far, stops this far behind
SHORT_EVENT_S = 1.0  # short clips: the event lies within this many seconds of the end
MIN_SECONDS = 2.0  # the shortest clip: the event >= 1 s in, so every horizon has some history
TRUTH_FILE = "synth_truth.json"

LANE_W = 3.5  # metres
ROAD_HALF = 1.5 * LANE_W  # three lanes: oncoming (left), ego (centre), same direction (right)
SHAKE_MARGIN = 4  # pixels of backdrop kept around the frame for camera shake

# Body colours, chosen to stand out from asphalt grey so the looming vehicle is measurable.
_CAR_COLOURS = np.array([
    (230, 230, 232), (28, 28, 34), (175, 28, 30), (30, 62, 155), (200, 170, 40),
    (40, 115, 62), (195, 175, 135), (22, 36, 85), (210, 95, 30), (120, 30, 90),
], dtype=np.float32)
_HEADLIGHT = np.array([255, 245, 215], np.float32)
_TAILLIGHT = np.array([235, 25, 20], np.float32)


# ---- scene plan -----------------------------------------------------------------------------

@dataclass
class _Vehicle:
    x: np.ndarray  # (T,) lateral offset of the centre, metres, right positive
    z: np.ndarray  # (T,) distance ahead of the camera, metres
    width: float  # metres across the visible face
    height: float
    kind: str  # "car" | "truck" (box rear) | "side" (seen side-on while crossing)
    colour: np.ndarray  # (3,) albedo
    facing: str  # "away" (tail lights), "toward" (headlights); "side": "left" | "right" = heading
    braking: np.ndarray | None = None  # (T,) bool, brake lights on
    key: bool = False


@dataclass
class _Scene:
    label: int
    scenario: str
    event_time: float | None
    alert_time: float | None
    ref_time: float  # event time, or the moment of closest approach for negatives
    vehicles: list[_Vehicle]
    focal: float  # pixels
    horizon: float  # row of the horizon without shake
    cam_height: float  # metres
    curve: float  # road centre drifts curve * Z^2 metres at distance Z
    travelled: np.ndarray  # (T,) ego distance, metres (scrolls markings and roadside objects)
    shake: np.ndarray  # (T, 2) integer (dy, dx) pixels
    backdrop: np.ndarray  # (H + 2m, W + 2m, 3) sky and skyline, horizon at row horizon + m
    light: np.ndarray | None  # (H, W) night illumination (ambient + headlight pool); None by day
    gain: np.ndarray  # (3,) day exposure and white balance
    road_rgb: np.ndarray
    verge_rgb: np.ndarray
    line_rgb: np.ndarray
    haze_rgb: np.ndarray
    haze_m: float  # metres; day haze distance
    roadside: list[tuple[float, float, float]] = field(default_factory=list)  # (X, spacing, phase): trees/lamps
    lamp_rgb: np.ndarray | None = None
    noise: np.ndarray | None = None  # (K, H, W, 3) sensor noise bank


def _smoothstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3 - 2 * u)


def _key_vehicle(rng: np.random.Generator, label: int, t: np.ndarray, seconds: float) -> tuple[_Vehicle, str, float]:
    """The vehicle whose trajectory decides the label; returns (vehicle, scenario, reference time)."""
    colour = _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))]
    side = float(rng.choice([-1.0, 1.0]))
    car = dict(width=float(rng.uniform(1.7, 1.95)), height=float(rng.uniform(1.4, 1.75)), kind="car",
               colour=colour, facing="away", key=True)
    if label == 1:
        earliest = MIN_EVENT_S if seconds - END_MARGIN_S >= MIN_EVENT_S else seconds - SHORT_EVENT_S
        te = float(rng.uniform(earliest, seconds - END_MARGIN_S))
        z_hit = float(rng.uniform(1.6, 2.6))  # camera to the other vehicle at contact (the bonnet is ~1.5 m)
        before = np.clip(te - t, 0.0, None)  # (T,) seconds to the event, 0 after it
        scenario = str(rng.choice(POSITIVE_SCENARIOS, p=POSITIVE_WEIGHTS))
        if scenario == "closing":  # a slower or stopped vehicle ahead; we close at a constant speed
            z = z_hit + rng.uniform(3.0, 9.0) * before
            return _Vehicle(0.15 * np.sin(0.4 * t + rng.uniform(0, 6)), z, **car), scenario, te
        if scenario == "brake":  # lead vehicle brakes hard; relative speed grows linearly
            d, z_b, ph = rng.uniform(2.5, 4.0), rng.uniform(14.0, 24.0), rng.uniform(0, 6)
            cruise = z_b + 1.5 * (np.sin(0.6 * t + ph) - np.sin(0.6 * (te - d) + ph))  # continuous at te - d
            brake = z_hit + (z_b - z_hit) * (1 - ((d - before) / d) ** 2)
            z = np.where(before > d, cruise, brake)
            x = 0.2 * np.sin(0.4 * t) * np.clip(before / d, 0, 1)
            if rng.random() < 0.3:
                car.update(kind="truck", width=2.4, height=3.0)
            return _Vehicle(x, z, braking=before <= d, **car), scenario, te
        v = rng.uniform(4.0, 8.0)  # closing speed, m/s
        z = z_hit + v * before
        if scenario == "cut_in":  # a slower car in the right/left lane moves into ours
            t_c = te - rng.uniform(1.5, 2.5)
            x = side * LANE_W * (1 - _smoothstep((t - t_c) / (te - 0.2 - t_c)))
            return _Vehicle(x, z, **car), scenario, te
        if scenario == "crossing":  # a car crossing at an intersection, seen side-on
            u = rng.uniform(4.0, 8.0)
            x = side * u * before
            car.update(kind="side", width=float(rng.uniform(4.2, 4.7)), height=1.45,
                       facing="left" if side > 0 else "right")
            return _Vehicle(x, z, **car), scenario, te
        # an oncoming car drifts over the centre line into the ego lane, head-on
        v = rng.uniform(18.0, 28.0)
        z = z_hit + v * before
        t_d = te - rng.uniform(1.5, 2.5)
        x = -LANE_W * (1 - _smoothstep((t - t_d) / (te - 0.2 - t_d)))
        car.update(facing="toward")
        return _Vehicle(x, z, **car), scenario, te

    tr = float(rng.uniform(max(1.0, seconds - 4.0), seconds - 0.5))  # closest approach
    before = tr - t  # (T,) negative after tr
    scenario = str(rng.choice(NEGATIVE_SCENARIOS, p=NEGATIVE_WEIGHTS))
    wobble = 0.15 * np.sin(0.4 * t + rng.uniform(0, 6))
    if scenario == "follow":  # a lead vehicle at a steady gap in the positives' range of distances
        z_c, amp, ph = rng.uniform(FOLLOW_MIN_M, FOLLOW_MAX_M), rng.uniform(0.2, 1.0), rng.uniform(0, 6)
        return _Vehicle(wobble, z_c + amp * np.sin(0.5 * t + ph), **car), scenario, tr
    if scenario == "pull_away":  # close behind a vehicle that accelerates away: the approach in reverse
        z_near, v, t0 = rng.uniform(*PA_NEAR), rng.uniform(3.0, 9.0), seconds - rng.uniform(*PA_T)
        return _Vehicle(wobble, z_near + v * np.clip(t - t0, 0.0, None), **car), scenario, tr
    if scenario == "brake_stop":  # the lead brakes hard but we stop a few metres behind it
        d, z_b, z_stop = rng.uniform(2.5, 4.0), rng.uniform(*BS_FROM), rng.uniform(*BS_STOP)
        z = z_stop + (z_b - z_stop) * (1 - _smoothstep((d - before) / d))
        x = 0.2 * np.sin(0.4 * t)
        if rng.random() < 0.3:
            car.update(kind="truck", width=2.4, height=3.0)
        return _Vehicle(x, z, braking=(before <= d) & (before > -1.5), **car), scenario, tr
    if scenario == "aborted_cut_in":  # starts into our lane, swerves back, we pass it
        v, z_r = rng.uniform(4.0, 8.0), rng.uniform(5.0, 9.0)
        z = z_r + v * before
        dur = rng.uniform(1.5, 2.5)
        t_s = tr - 0.3 - dur
        reach = rng.uniform(0.6, 1.2)  # how close to our lane centre it gets, metres
        x = side * (LANE_W - (LANE_W - reach) * np.sin(np.pi * np.clip((t - t_s) / dur, 0, 1)))
        return _Vehicle(x, z, **car), scenario, tr
    if scenario == "crossing_clear":  # crosses in front while we wait 12-20 m back
        u, v, z_c = rng.uniform(4.0, 8.0), rng.uniform(3.0, 7.0), rng.uniform(12.0, 20.0)
        z = z_c + v * np.clip(before, 0, None)
        x = side * u * before
        car.update(kind="side", width=float(rng.uniform(4.2, 4.7)), height=1.45,
                   facing="left" if side > 0 else "right")
        return _Vehicle(x, z, **car), scenario, tr
    if scenario == "oncoming":  # oncoming traffic grows fast and passes on the left
        v = rng.uniform(18.0, 28.0)
        x = -LANE_W + 0.3 * np.sin(0.5 * t)
        car.update(facing="toward")
        return _Vehicle(x, v * before, **car), scenario, tr
    # overtake: a faster car comes from behind on the right and pulls away
    v = rng.uniform(3.0, 8.0)
    z = v * (t - tr + rng.uniform(0.0, 1.0))
    return _Vehicle(np.full_like(t, LANE_W), z, **car), scenario, tr


def _traffic(rng: np.random.Generator, t: np.ndarray, lead_ok: bool) -> list[_Vehicle]:
    """Background vehicles: side lanes anywhere, the ego lane only far ahead (>= 22 m)."""
    out = []
    for _ in range(int(rng.integers(1, 5))):
        colour = _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))]
        size = dict(width=float(rng.uniform(1.7, 1.95)), height=float(rng.uniform(1.4, 1.75)), kind="car")
        if rng.random() < 0.15:
            size = dict(width=2.4, height=3.0, kind="truck")
        lane = rng.choice(["oncoming", "right", "lead"] if lead_ok else ["oncoming", "right"])
        if lane == "oncoming":
            z = rng.uniform(15.0, 250.0) - rng.uniform(15.0, 30.0) * t
            x = -LANE_W + 0.2 * np.sin(t + rng.uniform(0, 6))
            out.append(_Vehicle(x, z, colour=colour, facing="toward", **size))
        elif lane == "right":
            z = rng.uniform(3.0, 70.0) + rng.uniform(-4.0, 4.0) * t
            out.append(_Vehicle(np.full_like(t, LANE_W), z, colour=colour, facing="away", **size))
        else:
            z = np.maximum(22.0, rng.uniform(26.0, 50.0) + rng.uniform(-2.0, 2.0) * t)
            out.append(_Vehicle(0.15 * np.sin(0.3 * t + rng.uniform(0, 6)), z, colour=colour, facing="away", **size))
            lead_ok = False
    return out


def _backdrop(rng: np.random.Generator, width: int, height: int, horizon: float, night: bool) -> np.ndarray:
    """Sky and skyline as a (H + 2m, W + 2m, 3) image; rows below the horizon are filler."""
    m = SHAKE_MARGIN
    hh, ww = height + 2 * m, width + 2 * m
    hz = horizon + m
    rows = np.arange(hh, dtype=np.float32)[:, None, None]
    u = np.clip(rows / max(hz, 1.0), 0, 1)  # 0 at the top, 1 at the horizon
    if night:
        top, low = np.array([4, 6, 18], np.float32), np.array([28, 24, 38], np.float32) * rng.uniform(0.7, 1.3)
    else:
        top = np.array([70, 125, 205], np.float32) * rng.uniform(0.8, 1.1)
        low = np.array([200, 215, 230], np.float32) * rng.uniform(0.85, 1.05)
    img = np.broadcast_to(top * (1 - u) + low * u, (hh, ww, 3)).copy()
    xs = np.arange(ww, dtype=np.float32)
    ys = np.arange(hh, dtype=np.float32)[:, None]
    if night:  # city skyline: blocks of buildings with a grid of lit windows
        x = 0
        while x < ww:
            bw = int(rng.integers(max(3, ww // 20), max(5, ww // 7)))
            top_row = hz - rng.uniform(0.08, 0.38) * height
            shade = np.float32(rng.uniform(12, 30))
            block = img[int(max(top_row, 0)):int(hz) + 1, x:x + bw]
            block[:] = (shade, shade, shade * 1.1)
            cell = max(2, height // 40)
            wy, wx = np.mgrid[0:block.shape[0], 0:block.shape[1]]
            lit = (wy % (2 * cell) < cell) & (wx % (2 * cell) < cell) & (wy > cell) & (wx > 0)
            lit &= rng.random(block.shape[:2]) < 0.35
            block[lit] = np.array([255, 205, 120], np.float32) * rng.uniform(0.5, 1.0)
            x += bw + int(rng.integers(0, max(2, ww // 30)))
    else:  # far hills, then a nearer tree line, both pale with haze
        for amp, freq, colour in ((0.10, 0.02, (120, 140, 150)), (0.05, 0.09, (70, 105, 70))):
            phase = rng.uniform(0, 2 * np.pi, 3)
            wave = 0.25 * np.sin(freq * xs + phase[0]) + 0.15 * np.sin(2.7 * freq * xs + phase[1])
            prof = amp * height * (0.6 + wave)  # (W + 2m,) skyline height in pixels
            mask = (ys > hz - prof[None, :]) & (ys <= hz + 1)
            img[mask] = np.array(colour, np.float32) * rng.uniform(0.8, 1.1)
    return img


def _plan(rng: np.random.Generator, label: int, style: str, width: int, height: int, fps: int,
          seconds: float) -> _Scene:
    n = int(round(seconds * fps))
    t = np.arange(n, dtype=np.float64) / fps  # (T,)
    night = style == "night"
    key, scenario, ref = _key_vehicle(rng, label, t, seconds)
    # a far lead vehicle only where the key vehicle is not the lead itself or crossing ahead
    lead_ok = scenario in ("cut_in", "oncoming_drift", "aborted_cut_in", "oncoming", "overtake")
    vehicles = [key] + _traffic(rng, t, lead_ok=lead_ok)
    event = ref if label == 1 else None
    alert = round(event - float(rng.uniform(0.5, 1.5)), 3) if event is not None else None
    if event is not None:
        event = round(event, 3)

    # ego motion: cruise speed; after a collision the car stops (markings stop scrolling)
    speed = rng.uniform(8.0, 22.0) * (1 + 0.05 * np.sin(0.3 * t + rng.uniform(0, 6)))
    if label == 1:
        speed = np.where(t < ref, speed, 0.0)
    elif scenario in ("brake_stop", "crossing_clear"):
        speed = speed * np.clip((ref - t) / 3.0, 0.0, 1.0)
    travelled = np.concatenate([[0.0], np.cumsum(speed[:-1] / fps)])

    # camera shake: a smoothed random walk, plus a jolt at the impact
    amp = rng.uniform(0.0, 1.3)
    walk = np.cumsum(rng.normal(0, 1, (n + 8, 2)), axis=0)
    walk = np.stack([np.convolve(walk[:, k], np.ones(8) / 8, mode="valid")[:n] for k in range(2)], axis=1)
    walk -= walk.mean(axis=0)
    walk = amp * walk / (np.abs(walk).max() + 1e-6)
    if label == 1:
        jolt = np.where(t >= ref, np.exp(-(t - ref) * 1.5), 0.0)[:, None] * rng.normal(0, 2.5, (n, 2))
        walk = walk + jolt
    shake = np.clip(np.round(walk), -SHAKE_MARGIN, SHAKE_MARGIN).astype(int)

    horizon = height * rng.uniform(0.38, 0.46)
    scene = _Scene(
        label=label, scenario=scenario, event_time=event, alert_time=alert, ref_time=float(ref), vehicles=vehicles,
        focal=width * rng.uniform(0.6, 0.8), horizon=horizon, cam_height=rng.uniform(1.2, 1.45),
        curve=rng.uniform(-0.0015, 0.0015), travelled=travelled, shake=shake,
        backdrop=_backdrop(rng, width, height, horizon, night), light=None,
        gain=np.float32(rng.uniform(0.72, 1.15)) * rng.uniform(0.93, 1.07, 3).astype(np.float32),
        road_rgb=np.float32(rng.uniform(80, 115)) * np.array([1, 1, 1.04], np.float32),
        verge_rgb=np.array([85, 120, 60], np.float32) * rng.uniform(0.75, 1.15),
        line_rgb=np.array([235, 235, 225], np.float32), haze_rgb=np.array([200, 210, 220], np.float32),
        haze_m=float(rng.uniform(80.0, 400.0)),
    )
    if night:
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        ambient = rng.uniform(0.12, 0.22)
        pool = rng.uniform(0.9, 1.3) * np.exp(-(((xs + 0.5 - width / 2) / (0.45 * width)) ** 2
                                                 + ((ys + 0.5 - 1.05 * height) / (0.55 * height)) ** 2))
        scene.light = (ambient + pool).astype(np.float32)
        scene.road_rgb = np.float32(rng.uniform(70, 100)) * np.array([1, 1, 1.05], np.float32)
        scene.verge_rgb = np.array([55, 55, 58], np.float32) * rng.uniform(0.8, 1.2)  # pavement
        scene.lamp_rgb = np.array([255, 175, 85] if rng.random() < 0.6 else [225, 235, 255], np.float32)
        sides = [-1.0, 1.0] if rng.random() < 0.6 else [float(rng.choice([-1.0, 1.0]))]
        scene.roadside = [(s * 6.3, float(rng.uniform(22.0, 35.0)), float(rng.uniform(0, 30))) for s in sides]
    else:
        scene.roadside = [(s * rng.uniform(7.0, 9.5), float(rng.uniform(10.0, 30.0)), float(rng.uniform(0, 30)))
                          for s in (-1.0, 1.0) if rng.random() < 0.85]
    sigma = rng.uniform(3.0, 7.0) if night else rng.uniform(1.5, 4.0)
    scene.noise = rng.normal(0.0, sigma, (4, height, width, 3)).astype(np.float32)
    return scene


# ---- rasterisation --------------------------------------------------------------------------

class _Canvas:
    """Albedo (lit by the scene light) and, at night, emitted light (sky, lamps, vehicle lights)."""

    def __init__(self, albedo: np.ndarray, emissive: np.ndarray | None):
        self.albedo, self.emissive = albedo, emissive
        self.h, self.w = albedo.shape[:2]

    def _clip(self, x0, y0, x1, y1):
        a, b = max(int(math.floor(y0 + 0.5)), 0), min(int(math.floor(y1 + 0.5)), self.h)
        c, d = max(int(math.floor(x0 + 0.5)), 0), min(int(math.floor(x1 + 0.5)), self.w)
        return (a, b, c, d) if a < b and c < d else None

    def rect(self, x0, y0, x1, y1, colour, shade: tuple[float, float] | None = None):
        """Fill an opaque rectangle (pixel coords, half-open); ``shade`` = top and bottom brightness."""
        box = self._clip(x0, y0, x1, y1)
        if box is None:
            return None
        a, b, c, d = box
        if shade is None:
            self.albedo[a:b, c:d] = colour
        else:
            rows = np.arange(a, b, dtype=np.float32) + 0.5
            f = shade[0] + (shade[1] - shade[0]) * np.clip((rows - y0) / max(y1 - y0, 1e-3), 0, 1)
            self.albedo[a:b, c:d] = colour * f[:, None, None]  # (rows, cols, 3)
        if self.emissive is not None:
            self.emissive[a:b, c:d] = 0.0
        return box

    def lamp(self, x0, y0, x1, y1, colour, on: bool, glow: float = 0.0):
        """A light: emits (and glows) at night or when ``on``; otherwise a coloured lens."""
        if self.emissive is None:
            self.rect(x0, y0, x1, y1, colour if on else colour * 0.6)
            return
        self.rect(x0, y0, x1, y1, colour * 0.3)
        box = self._clip(x0, y0, x1, y1)
        if box is not None:
            a, b, c, d = box
            self.emissive[a:b, c:d] += colour
        if glow > 0:
            self.glow((x0 + x1) / 2, (y0 + y1) / 2, glow, colour * 0.6)

    def disc(self, cx, cy, r, colour):
        box = self._clip(cx - r, cy - r, cx + r, cy + r)
        if box is None:
            return
        a, b, c, d = box
        ys, xs = np.ogrid[a:b, c:d]
        inside = (xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 <= r * r  # (rows, cols)
        self.albedo[a:b, c:d][inside] = colour
        if self.emissive is not None:
            self.emissive[a:b, c:d][inside] = 0.0

    def glow(self, cx, cy, r, colour):
        """Add a soft Gaussian halo of radius ``r`` pixels to the emitted light (night only)."""
        if self.emissive is None or r <= 0:
            return
        box = self._clip(cx - 2.5 * r, cy - 2.5 * r, cx + 2.5 * r, cy + 2.5 * r)
        if box is None:
            return
        a, b, c, d = box
        ys, xs = np.ogrid[a:b, c:d]
        g = np.exp(-((xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2) / (r * r)).astype(np.float32)
        self.emissive[a:b, c:d] += g[:, :, None] * colour


def _draw_vehicle(cv: _Canvas, v: _Vehicle, i: int, sx: float, yb: float, w: float, h: float, haze: float, haze_rgb):
    """One vehicle whose face spans [sx - w/2, sx + w/2] x [yb - h, yb] in pixels."""
    x0, x1, yt = sx - w / 2, sx + w / 2, yb - h
    body = v.colour * (1 - haze) + haze_rgb * haze
    if w < 2.5:  # a few pixels: a blob is all a camera would resolve
        return cv.rect(x0, yt, x1, yb, body * 0.8)
    dark = np.float32(25) * (1 - haze) + haze_rgb * haze
    night = cv.emissive is not None
    braking = bool(v.braking[i]) if v.braking is not None else False
    cv.rect(x0 - 0.05 * w, yb - 0.04 * h, x1 + 0.05 * w, yb + 0.03 * h, dark)  # shadow underneath
    if v.kind == "side":
        cv.rect(x0 + 0.1 * w, yb - 0.3 * h, x0 + 0.3 * w, yb, dark)  # wheels
        cv.rect(x1 - 0.3 * w, yb - 0.3 * h, x1 - 0.1 * w, yb, dark)
        box = cv.rect(x0, yb - 0.58 * h, x1, yb - 0.16 * h, body, shade=(1.1, 0.75))
        cv.rect(x0 + 0.22 * w, yt, x1 - 0.18 * w, yb - 0.56 * h, body * 0.9)
        cv.rect(x0 + 0.26 * w, yt + 0.1 * h, sx - 0.02 * w, yb - 0.6 * h, dark * 1.6)  # windows
        cv.rect(sx + 0.02 * w, yt + 0.1 * h, x1 - 0.22 * w, yb - 0.6 * h, dark * 1.6)
        front = x0 if v.facing == "left" else x1 - 0.05 * w
        back = x1 - 0.05 * w if v.facing == "left" else x0
        cv.lamp(front, yb - 0.52 * h, front + 0.05 * w, yb - 0.4 * h, _HEADLIGHT, night, 0.15 * w)
        cv.lamp(back, yb - 0.52 * h, back + 0.05 * w, yb - 0.4 * h, _TAILLIGHT, night, 0.06 * w)
        return _union(box, cv._clip(x0, yt, x1, yb))
    cv.rect(x0 + 0.04 * w, yb - 0.16 * h, x0 + 0.22 * w, yb, dark)  # wheels
    cv.rect(x1 - 0.22 * w, yb - 0.16 * h, x1 - 0.04 * w, yb, dark)
    if v.kind == "truck":  # box body of a delivery truck
        cv.rect(x0, yt, x1, yb - 0.12 * h, body, shade=(1.05, 0.8))
        cv.rect(sx - 0.01 * w - 0.5, yt + 0.05 * h, sx + 0.01 * w + 0.5, yb - 0.2 * h, body * 0.6)  # door seam
        cv.rect(x0, yb - 0.18 * h, x1, yb - 0.12 * h, dark * 1.5)  # under-run bar
        light_y = (yb - 0.28 * h, yb - 0.2 * h)
    else:
        cv.rect(x0, yb - 0.6 * h, x1, yb - 0.1 * h, body, shade=(1.08, 0.78))
        cv.rect(x0 + 0.1 * w, yt, x1 - 0.1 * w, yb - 0.58 * h, body * 0.92)  # cabin
        cv.rect(x0 + 0.16 * w, yt + 0.08 * h, x1 - 0.16 * w, yb - 0.63 * h, dark * 1.8)  # rear/front window
        cv.rect(x0 + 0.03 * w, yb - 0.24 * h, x1 - 0.03 * w, yb - 0.1 * h, body * 0.45)  # bumper
        cv.rect(sx - 0.12 * w, yb - 0.34 * h, sx + 0.12 * w, yb - 0.26 * h, np.float32(215))  # number plate
        light_y = (yb - 0.52 * h, yb - 0.42 * h)
    if v.facing == "toward":
        colour, on, glow = _HEADLIGHT, night, 0.22 * w
    else:
        colour, on, glow = _TAILLIGHT, night or braking, (0.1 if night else 0.0) * w
        if braking and night:
            colour, glow = colour * 1.5, 0.18 * w
    cv.lamp(x0 + 0.03 * w, light_y[0], x0 + 0.19 * w, light_y[1], colour, on, glow)
    cv.lamp(x1 - 0.19 * w, light_y[0], x1 - 0.03 * w, light_y[1], colour, on, glow)
    return cv._clip(x0, yt, x1, yb)


def _union(a, b):
    if a is None or b is None:
        return b if a is None else a
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _render(sc: _Scene, i: int, width: int, height: int, noise_pick: int) -> tuple[np.ndarray, list[int] | None]:
    """Frame i as (H, W, 3) uint8, and the key vehicle's visible box [x0, y0, x1, y1] (or None)."""
    m = SHAKE_MARGIN
    dy, dx = int(sc.shake[i, 0]), int(sc.shake[i, 1])
    crop = sc.backdrop[m - dy:m - dy + height, m - dx:m - dx + width]
    hz, cx, f = sc.horizon + dy, width / 2 + dx, sc.focal
    night = sc.light is not None
    albedo = np.zeros((height, width, 3), np.float32) if night else crop.copy()
    emissive = crop.copy() if night else None

    # ground: every pixel below the horizon maps to a road point (X lateral, Z ahead)
    r0 = max(int(math.floor(hz)) + 1, 0)
    if r0 < height:
        dist = np.arange(r0, height, dtype=np.float32)[:, None] + 0.5 - hz  # (R, 1) pixels below horizon
        ppm = dist / sc.cam_height  # pixels per metre at that row
        z = f / ppm  # (R, 1)
        xw = (np.arange(width, dtype=np.float32)[None, :] + 0.5 - cx) / ppm - sc.curve * z * z  # (R, W)
        ax = np.abs(xw)
        half = np.maximum(0.07, 0.55 / ppm)  # lines at least ~1 px wide
        dash = ((z + sc.travelled[i]) % 12.0) < 4.5
        lines = (np.abs(ax - (ROAD_HALF - 0.25)) < half) | ((np.abs(ax - LANE_W / 2) < half) & dash)
        texture = 1 + 0.06 * np.sin(0.45 * (z + sc.travelled[i]))  # (R, 1) bands that scroll with motion
        ground = np.where((ax < ROAD_HALF)[..., None], sc.road_rgb * (1 + 0.03 * np.sin(1.7 * xw))[..., None],
                          sc.verge_rgb * texture[..., None])
        ground = np.where(lines[..., None], sc.line_rgb, ground)  # (R, W, 3)
        if not night:
            fog = (1 - np.exp(-z / sc.haze_m))[..., None]
            ground = ground * (1 - fog) + sc.haze_rgb * fog
        albedo[r0:] = ground
        if night:
            emissive[r0:] = 0.0
    cv = _Canvas(albedo, emissive)

    def project(x, zz, hgt):
        """Screen centre x, bottom row, pixels per metre for a point on the ground."""
        p = f / zz
        return cx + p * (x + sc.curve * zz * zz), hz + p * sc.cam_height, p

    # roadside: trees by day, street lamps at night; far to near
    items = []
    for x_side, spacing, phase in sc.roadside:
        first = spacing - ((sc.travelled[i] + phase) % spacing)
        for zz in np.arange(first, 90.0, spacing):
            if zz > 1.5:
                items.append((zz, x_side))
    for v in sc.vehicles:
        zz = float(v.z[i])
        if 1.0 < zz < 200.0:
            items.append((zz, v))
    key_box = None
    for zz, obj in sorted(items, key=lambda it: -it[0]):
        if isinstance(obj, _Vehicle):
            sx, yb, p = project(float(obj.x[i]), zz, 0)
            haze = 0.0 if night else float(1 - math.exp(-zz / sc.haze_m))
            box = _draw_vehicle(cv, obj, i, sx, yb, p * obj.width, p * obj.height, haze, sc.haze_rgb)
            if obj.key:
                key_box = box
        elif night:
            sx, yb, p = project(obj, zz, 0)
            top = yb - 7.0 * p
            cv.rect(sx - 0.1 * p - 0.3, top, sx + 0.1 * p + 0.3, yb, np.float32(40))  # pole
            head = sx - np.sign(obj) * 1.4 * p
            cv.rect(min(sx, head), top, max(sx, head), top + 0.15 * p + 0.5, np.float32(40))  # arm
            cv.lamp(head - 0.35 * p, top, head + 0.35 * p, top + 0.2 * p + 0.5, sc.lamp_rgb, True, 1.0 * p + 0.8)
        else:
            sx, yb, p = project(obj, zz, 0)
            haze = float(1 - math.exp(-zz / sc.haze_m))
            trunk = np.array([90, 70, 50], np.float32) * (1 - haze) + sc.haze_rgb * haze
            leaves = np.array([50, 95, 45], np.float32) * (1 - haze) + sc.haze_rgb * haze
            cv.rect(sx - 0.15 * p - 0.3, yb - 3.0 * p, sx + 0.15 * p + 0.3, yb, trunk)
            cv.disc(sx, yb - 4.2 * p, 1.8 * p + 0.5, leaves)

    if night:
        out = albedo * sc.light[..., None] + emissive
    else:
        out = albedo * sc.gain
    out += sc.noise[noise_pick]
    key = None if key_box is None else [key_box[2], key_box[0], key_box[3], key_box[1]]
    return np.clip(out, 0, 255).astype(np.uint8), key


# ---- writing --------------------------------------------------------------------------------

def _x264_options(fps: int) -> dict[str, str]:
    """libx264 settings that make the bytes a function of the frames alone.

    x264's output depends on its thread count, and its AVX-512 kernels gave different bytes from run
    to run for the same frames (measured on an AMD EPYC with AVX-512, libx264 core 165; with AVX2 or SSE
    kernels it was stable). So: one thread and, on x86-64 with SSE4.2, a fixed CPU mask (MMX..SSE4.2
    without LZCNT), which also makes the bytes the same across such machines for one x264 build.
    Elsewhere x264 picks its own kernels and the bytes may vary; the frames never do.
    """
    options = {"crf": "20", "preset": "veryfast", "threads": "1", "g": str(2 * fps)}
    if platform.machine().lower() in ("x86_64", "amd64"):
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            flags = []
        if "sse4_2" in flags and "ssse3" in flags:
            options["x264-params"] = "asm=495"  # x264 CPU flag bits: MMX..SSE4.2 minus LZCNT
    return options


def _encode(path: Path, frames: np.ndarray, width: int, height: int, fps: int) -> None:
    """Write frames (T, H, W, 3 uint8) as H.264 yuv420p mp4; written to a temp file, then published
    (lab/_io.py: fsynced, renamed into place)."""
    import av

    tmp = temp_beside(path)
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options=_x264_options(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")  # the encoder converts to yuv420p
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    publish(tmp, path)


def render_video(seed: int, index: int, label: int, style: str = "day", width: int = 160, height: int = 96,
                 fps: int = 8, seconds: float = 10.0) -> tuple[np.ndarray, dict]:
    """Render one video's frames without encoding: ((T, H, W, 3) uint8, truth dict).

    Same arguments give identical frames; ``generate`` uses this per video.
    """
    _check(style, width, height, fps, seconds)
    rng = np.random.default_rng([seed, index, STYLES.index(style)])
    scene = _plan(rng, label, style, width, height, fps, seconds)
    picks = rng.integers(0, len(scene.noise), len(scene.travelled))
    frames, boxes = [], []
    for i in range(len(scene.travelled)):
        frame, box = _render(scene, i, width, height, int(picks[i]))
        frames.append(frame)
        boxes.append(box)
    truth = {"label": label, "scenario": scene.scenario, "event_time": scene.event_time,
             "alert_time": scene.alert_time, "ref_time": round(scene.ref_time, 3), "key_box": boxes}
    return np.stack(frames), truth


def _check(style: str, width: int, height: int, fps: int, seconds: float) -> None:
    if style not in STYLES:
        raise UserError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise UserError(f"frame size {width}x{height} must be even and at least 16x16 (H.264 yuv420p)")
    if fps < 1:
        raise UserError(f"fps {fps} must be at least 1")
    if not seconds >= MIN_SECONDS:
        raise UserError(f"seconds {seconds} is too short: clips need >= {MIN_SECONDS} s (the event at least "
                         f"{MIN_SECONDS - SHORT_EVENT_S:g} s in, so there is time to predict it)")


def generate(out: str | Path, videos: int = 48, seed: int = 0, style: str = "day", width: int = 160, height: int = 96,
             fps: int = 8, seconds: float = 10.0, positive_rate: float = 0.5, progress: bool = False,
             split_fractions: tuple[float, float, float] | None = None) -> Dataset:
    """Write a synthetic dashcam dataset in the Nexar layout under ``out`` and return it loaded.

    Exactly round(videos * positive_rate) videos are positives. ``split_fractions`` (train, val,
    test) writes a ``split`` column (stratified by label); without it the reader's default split
    (70/15/15) applies. Overwrites an earlier synthetic
    dataset in ``out`` but refuses a folder holding another dataset. Raises ValueError on bad
    arguments (unknown style, odd frame size, clips too short for the event placement).
    """
    _check(style, width, height, fps, seconds)
    if videos < 1:
        raise UserError(f"videos {videos} must be at least 1")
    if not 0.0 <= positive_rate <= 1.0:
        raise UserError(f"positive_rate {positive_rate} must be within [0, 1]")
    if split_fractions is not None:
        stratified_split([], fractions=tuple(split_fractions))  # bad fractions fail before any rendering
    out = Path(out).expanduser().resolve()
    if (out / "train.csv").exists() and not (out / TRUTH_FILE).exists():
        raise UserError(f"{out} already holds a dataset that is not synthetic; choose another --out")
    train = out / "train"
    try:
        train.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # --out where no folder can be made
        raise UserError(f"cannot create {train}: {exc.strerror or exc}") from None
    for old in train.glob("[0-9]*.mp4"):  # a previous synthetic run's videos
        old.unlink()

    n_pos = int(round(videos * positive_rate))
    labels = np.random.default_rng([seed, 10_000 + STYLES.index(style)]).permutation(
        np.array([1] * n_pos + [0] * (videos - n_pos)))
    truth, rows = {}, []
    indices = range(videos)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"synth {style}", unit="video")
    for k in indices:
        frames, info = render_video(seed, k, int(labels[k]), style, width, height, fps, seconds)
        _encode(train / f"{k:05d}.mp4", frames, width, height, fps)
        truth[f"{k:05d}"] = info
        rows.append([k, "" if info["event_time"] is None else f"{info['event_time']:.3f}",
                     "" if info["alert_time"] is None else f"{info['alert_time']:.3f}", info["label"]])

    header = ["id", "time_of_event", "time_of_alert", "target"]
    if split_fractions is not None:
        chosen = stratified_split([(str(r[0]), int(r[3])) for r in rows], seed=seed, fractions=tuple(split_fractions))
        header.append("split")
        rows = [r + [chosen[str(r[0])]] for r in rows]
    meta = {"generator": "crashsearch.lab.synth", "seed": seed, "style": style, "width": width, "height": height, "fps": fps,
            "seconds": seconds, "frames": int(round(seconds * fps)), "videos": truth}
    (out / TRUTH_FILE).write_text(json.dumps(meta, separators=(",", ":")))
    manifest = io.StringIO(newline="")
    writer = csv.writer(manifest)
    writer.writerow(header)
    writer.writerows(rows)
    # the manifest last: a half-written run is not a dataset
    atomic_write(out / "train.csv", lambda f: f.write(manifest.getvalue().encode()))
    return load_dataset(out, seed=seed)

