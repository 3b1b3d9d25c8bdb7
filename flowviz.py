"""Flow pictures: the Middlebury colour code and the panels (frame, true and predicted flow, EPE
map) that evaluate.py writes and training sends to TensorBoard.

The Middlebury colour code (Baker et al., "A Database and Evaluation Methodology for Optical
Flow", 2011), drawn as RAFT's flow_viz and the flow_vis package draw it: the hue is the direction
on a 55-colour wheel (right red, down yellow, left cyan, up blue-violet), the saturation the length
relative to a normalisation radius; longer flow is darkened to 75 %.
"""
import io
import os

import matplotlib
import numpy as np
from matplotlib.figure import Figure

import batches
import flowio
import supernet

WHEEL_SEGMENTS = ((15, 0, 1, True), (6, 1, 0, False), (4, 1, 2, True),   # (length, channel held at 255,
                  (11, 2, 1, False), (13, 2, 0, True), (6, 0, 2, False))  # channel ramped, ramp rising)


def make_colorwheel():
    """The 55 x 3 Middlebury colour wheel (0..255): red, yellow, green, cyan, blue, magenta at
    rows 0, 15, 21, 25, 36, 49, with one channel ramped linearly between them."""
    segments = []
    for length, held, ramped, rising in WHEEL_SEGMENTS:
        segment = np.zeros((length, 3))
        segment[:, held] = 255
        steps = np.floor(255 * np.arange(length) / length)
        segment[:, ramped] = steps if rising else 255 - steps
        segments.append(segment)
    return np.concatenate(segments)


def flow_to_color(flow, max_radius=None):
    """RGB uint8 [H, W, 3] of flow [H, W, 2] (u right, v down) in the Middlebury colour code,
    lengths divided by `max_radius` (default: the largest length in `flow`)."""
    flow = np.asarray(flow, np.float64)
    if max_radius is None:
        max_radius = float(np.sqrt(np.square(flow).sum(-1)).max())
    u, v = flow[..., 0] / (max_radius + 1e-5), flow[..., 1] / (max_radius + 1e-5)
    wheel = make_colorwheel() / 255.0
    radius = np.sqrt(u * u + v * v)
    position = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (len(wheel) - 1)
    k0 = np.floor(position).astype(int)
    k1 = (k0 + 1) % len(wheel)
    f = (position - k0)[..., None]
    colour = (1 - f) * wheel[k0] + f * wheel[k1]
    inside = (radius <= 1)[..., None]
    colour = np.where(inside, 1 - radius[..., None] * (1 - colour), colour * 0.75)
    return np.floor(255 * colour).astype(np.uint8)


def flow_panel_png(image0, gt, pred, valid, title):
    """(PNG bytes, height, width) of one sample's panel: frame 0, the true and the predicted flow
    in the Middlebury colours under one normalisation (the longest valid true flow), and the EPE
    map; invalid pixels are black. image0 [H, W, 3] in [-1, 1], gt and pred [H, W, 2], valid [H, W]."""
    mask = valid > 0
    lengths = np.sqrt(np.square(gt).sum(-1))[mask]
    radius = float(lengths.max()) if lengths.size and lengths.max() > 0 else None
    epe = np.where(mask, np.sqrt(np.square(pred - gt).sum(-1)), np.nan)
    height, width = gt.shape[:2]
    figure = Figure(figsize=(10, 2 * 5 * height / width + 1.0), dpi=100, layout="constrained")
    axes = figure.subplots(2, 2)
    shown = [(np.clip((image0 + 1) * 127.5, 0, 255).astype(np.uint8), "frame 0"),
             (flow_to_color(gt, radius) * mask[..., None], f"ground truth (max {radius or 0:.1f} px)"),
             (flow_to_color(pred, radius), "prediction, same colour scale"),
             (epe, f"EPE, mean {np.nanmean(epe):.2f} px")]
    for ax, (picture, label) in zip(axes.flat, shown):
        shown_image = ax.imshow(picture, cmap=matplotlib.colormaps["magma"].with_extremes(bad="black"))
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
    figure.colorbar(shown_image, ax=axes[1, 1], shrink=0.9)
    figure.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue(), int(figure.bbox.height), int(figure.bbox.width)


def best_arch_panel(result, val_batches):
    """flow_panel_png of the first validation sample and the lowest-EPE arch of an `evaluate` result."""
    best = min(result["archs"], key=lambda r: r["epe"])
    images, flows, valid = batches.batch_parts(val_batches[0])
    return flow_panel_png(images[0, ..., :3], flows[0], result["first_predictions"][best["arch"]], valid[0],
                          f"best arch {best['arch']}: EPE {best['epe']:.3f}")


class PredictionWriter:
    """on_prediction callback for `evaluate`: for every scored arch, the panels of the first
    `visualize` validation samples as PNG into `picture_dir`, and with `flow_dir` every predicted
    flow (the padding removed) as `.flo` under flow_dir/<arch digits>/<sample name>.flo."""

    def __init__(self, info, visualize, picture_dir, flow_dir):
        self.info, self.visualize, self.picture_dir, self.flow_dir = info, visualize, picture_dir, flow_dir
        self.start = 0
        self.written = []

    def __call__(self, arch, batch_index, batch, pred):
        digits = supernet.format_arch(arch).replace(",", "")
        self.start = 0 if batch_index == 0 else self.start
        images, flows, valid = batch
        for j in range(len(pred)):
            k = self.start + j
            name = self.info["sample_names"][k]
            h, w = self.info["sample_frame_sizes"][k]
            if self.flow_dir:
                path = os.path.join(self.flow_dir, digits, name + ".flo")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                flowio.write_flo(path, pred[j, :h, :w])
            if k < self.visualize:
                png, _, _ = flow_panel_png(images[j, :h, :w, :3], flows[j, :h, :w], pred[j, :h, :w], valid[j, :h, :w],
                                           f"{self.info['dataset']} {name}, arch {supernet.format_arch(arch)}")
                path = os.path.join(self.picture_dir, f"{name.replace('/', '_')}_arch{digits}.png")
                os.makedirs(self.picture_dir, exist_ok=True)
                with open(path, "wb") as f:
                    f.write(png)
                self.written.append(path)
        self.start += len(pred)
