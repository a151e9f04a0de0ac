//! Training-curve plots (GAN losses over steps) rendered straight to an RGB
//! image or PNG, with no dependencies beyond `image` and no font files: text
//! uses a built-in 5×9 bitmap font.
//!
//! A figure is a list of [`Chart`]s stacked vertically, each with its own
//! axes, title, axis labels and legend. Every [`Series`] is a polyline of
//! `(x, y)` points (typically `(step, loss)`).
//!
//! ```
//! use atelier_plot::{render_png, Chart, Series};
//!
//! let losses: Vec<(f64, f64)> = (0..1000).map(|i| (i as f64, 1.0 / (1.0 + i as f64))).collect();
//! let chart = Chart {
//!     title: "Generator".into(),
//!     x_label: "step".into(),
//!     y_label: "loss".into(),
//!     series: vec![Series::new("G_GAN", losses)],
//!     ..Chart::default()
//! };
//! let png = render_png(&[chart], 800, 400).unwrap();
//! assert_eq!(&png[1..4], b"PNG");
//! ```
//!
//! # What gets drawn
//!
//! - **Axes.** Auto-ranged from the data unless [`Chart::x_range`] /
//!   [`Chart::y_range`] are set. The x axis spans the data exactly; the y
//!   axis gets 5 % padding on each side. Ticks are "nice" numbers
//!   ([`nice_ticks`]) with compact labels ([`format_tick`]); a log y axis
//!   ([`Chart::log_y`]) ticks whole decades where possible.
//! - **Outlier-robust y range.** With at least 20 finite y values, let `p1`
//!   and `p99` be their 1st and 99th percentiles and `c = p99 - p1`. If the
//!   full range `max - min` exceeds `2.2 × c` (outliers would squash the
//!   rest into a thin band), the range becomes `[p1 - 0.05c, p99 + 0.05c]`
//!   (the central 98 % widened by 10 %), never extending past the data;
//!   lines to clipped points leave the plot area through its edge. On a log
//!   axis the rule applies to `log10(y)`.
//! - **Smoothing** ([`Smoothing`]). Noisy series are drawn twice: the raw
//!   line faded to 25 % opacity and a centred running mean on top at full
//!   opacity, in the same colour.
//! - **Robustness.** Points with a non-finite coordinate, and points with
//!   `y <= 0` on a log axis, are skipped and break the line. Empty series,
//!   single points, constant values, huge or tiny ranges and images too small
//!   for a plot area all render without panicking; the image always has the
//!   requested size.
//! - **Text** uses a built-in 5×9 pixel font covering printable ASCII;
//!   other characters are drawn as `?`. It is drawn at twice its size when
//!   the image is at least 800 pixels wide and each chart at least 300 tall.
//! - **Speed.** Before rasterisation every line is reduced to at most four
//!   points per pixel column (first, min, max, last), which draws exactly
//!   the same pixels, so hundreds of thousands of points render in
//!   milliseconds.

mod canvas;
mod font;
mod ticks;

use std::path::Path;

use canvas::{draw_text, draw_text_up, fill_rect, line_height, text_width, Color, Mask};
use font::{ADVANCE, CAP_H};
use image::{Rgb, RgbImage};

pub use ticks::{format_tick, nice_ticks};

/// Series colours, used in order and repeating: matplotlib's `tab10`
/// ("Tableau 10") palette — blue, orange, green, red, purple, brown, pink,
/// grey, olive, cyan.
pub const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

const WHITE: Color = [255, 255, 255];
const TEXT: Color = [40, 40, 40];
const MUTED: Color = [90, 90, 90];
const GRID: Color = [232, 232, 232];
const FRAME: Color = [150, 150, 150];

/// Opacity of the raw line underneath a smoothed one.
const RAW_OPACITY_WHEN_SMOOTHED: f32 = 0.25;

/// One named line on a chart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Legend label, e.g. `G_GAN` or `D(x)`. An empty name gets no legend entry.
    pub name: String,
    /// `(x, y)` points, drawn as a polyline in the given order (normally
    /// increasing x, e.g. `(step, loss)`).
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series named `name` with the given `(x, y)` points.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
        }
    }

    /// A series whose x values are the indices `0, 1, 2, …` of `values`.
    pub fn from_values(name: impl Into<String>, values: &[f64]) -> Self {
        Series::new(
            name,
            values
                .iter()
                .enumerate()
                .map(|(i, &v)| (i as f64, v))
                .collect(),
        )
    }
}

/// Whether to overlay a smoothed line (centred running mean) on a series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Smoothing {
    /// Smooth a series when it is noisy: at least 50 valid points and a
    /// total variation (sum of absolute step-to-step changes) above 20 times
    /// its outlier-robust value range, i.e. it goes up and down far more
    /// than a trend would. The window is 2 % of the series length (at least
    /// 5 points). Smooth curves such as learning-rate schedules (monotone,
    /// stepped or a few cosine cycles) are drawn as they are.
    #[default]
    Auto,
    /// Never smooth; draw every series as a single opaque line.
    Off,
    /// Smooth every series with a centred running mean over this many
    /// points (values of 0 or 1 mean no smoothing).
    Window(usize),
}

/// One plot: axes, title, axis labels, legend and its series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chart {
    /// Title drawn at the top left of the chart (bold).
    pub title: String,
    /// Label under the x axis (empty: none).
    pub x_label: String,
    /// Label left of the y axis, written bottom to top (empty: none).
    pub y_label: String,
    /// The lines, coloured by position using [`PALETTE`].
    pub series: Vec<Series>,
    /// Logarithmic (base 10) y axis; points with `y <= 0` are skipped.
    pub log_y: bool,
    /// Fixed x range `(min, max)` instead of the data's range.
    pub x_range: Option<(f64, f64)>,
    /// Fixed y range `(min, max)` in data units (also with `log_y`) instead
    /// of the automatic, outlier-robust one; used without padding.
    pub y_range: Option<(f64, f64)>,
    /// Smoothing of noisy series.
    pub smoothing: Smoothing,
}

impl Chart {
    /// A chart with a title and axis labels, no series, and defaults
    /// elsewhere.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Chart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            ..Chart::default()
        }
    }
}

/// Renders `charts` stacked vertically (each gets an equal share of the
/// height) into a `width × height` image on a white background.
///
/// Text is drawn at twice the font's pixel size when `width >= 800` and each
/// chart is at least 300 pixels tall. The result always has exactly the
/// requested size, even when it is too small to hold a plot area.
pub fn render(charts: &[Chart], width: u32, height: u32) -> RgbImage {
    render_with_layout(charts, width, height).0
}

/// [`render`], encoded as PNG bytes.
///
/// # Errors
/// When the PNG encoder fails, e.g. for a zero width or height.
pub fn render_png(charts: &[Chart], width: u32, height: u32) -> Result<Vec<u8>, image::ImageError> {
    let img = render(charts, width, height);
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

/// [`render`], written to `path` as a PNG file.
///
/// # Errors
/// When the file cannot be written or the image cannot be encoded.
pub fn save_png(
    charts: &[Chart],
    width: u32,
    height: u32,
    path: impl AsRef<Path>,
) -> Result<(), image::ImageError> {
    render(charts, width, height).save_with_format(path, image::ImageFormat::Png)
}

/// A rectangle of pixels: columns `x .. x + w`, rows `y .. y + h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rect {
    x: i64,
    y: i64,
    w: i64,
    h: i64,
}

/// Renders and also returns each chart's plot area (`None` when the panel is
/// too small for one), for tests.
fn render_with_layout(charts: &[Chart], width: u32, height: u32) -> (RgbImage, Vec<Option<Rect>>) {
    let mut img = RgbImage::from_pixel(width, height, Rgb(WHITE));
    let mut rects = Vec::with_capacity(charts.len());
    if charts.is_empty() {
        return (img, rects);
    }
    let n = charts.len() as i64;
    let (w, h) = (i64::from(width), i64::from(height));
    let panel_h = h / n;
    let scale = if w >= 800 && panel_h >= 300 { 2 } else { 1 };
    let m = Metrics::new(scale);
    let plans: Vec<Option<Plan>> = charts
        .iter()
        .enumerate()
        .map(|(i, chart)| {
            let top = i as i64 * panel_h;
            // The last panel takes the rounding remainder.
            let ph = if i as i64 == n - 1 { h - top } else { panel_h };
            plan_chart(chart, top, ph, w, &m)
        })
        .collect();
    // Stacked plot areas share their left edge.
    let plot_x = plans
        .iter()
        .flatten()
        .map(|p| p.min_plot_x)
        .max()
        .unwrap_or(0);
    for (chart, plan) in charts.iter().zip(plans) {
        rects.push(plan.and_then(|plan| {
            draw_header(&mut img, chart, &plan, w, &m);
            draw_chart(&mut img, chart, plan, plot_x, w, &m)
        }));
    }
    (img, rects)
}

/// A series after axis transformation: `None` marks a skipped point.
type Pts = Vec<Option<(f64, f64)>>;

/// One axis: visible range (in axis units, i.e. `log10` for a log axis) and
/// ticks as `(position in axis units, label)`.
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<(f64, String)>,
}

fn transform(chart: &Chart, s: &Series) -> Pts {
    s.points
        .iter()
        .map(|&(x, y)| {
            if !x.is_finite() || !y.is_finite() {
                return None;
            }
            if chart.log_y {
                (y > 0.0).then(|| (x, y.log10()))
            } else {
                Some((x, y))
            }
        })
        .collect()
}

/// Widens an empty or degenerate range so it can be drawn.
fn widen(lo: f64, hi: f64) -> (f64, f64) {
    // Keep everything well inside f64 so spans never overflow.
    const LIM: f64 = 1e300;
    let (lo, hi) = (lo.clamp(-LIM, LIM), hi.clamp(-LIM, LIM));
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    if hi - lo > lo.abs().max(hi.abs()) * 1e-12 {
        return (lo, hi);
    }
    let mid = 0.5 * (lo + hi);
    let d = if mid == 0.0 { 1.0 } else { mid.abs() * 0.1 };
    (mid - d, mid + d)
}

/// The outlier-robust range of `values` (reordered in place); see the crate
/// docs for the rule. `None` when empty.
fn robust_range(values: &mut [f64]) -> Option<(f64, f64)> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let (min, max) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if n < 20 {
        return Some((min, max));
    }
    let k1 = (0.01 * (n - 1) as f64).floor() as usize;
    let k99 = (0.99 * (n - 1) as f64).ceil() as usize;
    let p99 = *values.select_nth_unstable_by(k99, f64::total_cmp).1;
    // After the selection above, values[..k99] are the k99 smallest, and
    // k1 < k99 because n >= 20.
    let p1 = *values[..k99].select_nth_unstable_by(k1, f64::total_cmp).1;
    let core = p99 - p1;
    if core > 0.0 && max - min > 2.2 * core {
        Some(((p1 - 0.05 * core).max(min), (p99 + 0.05 * core).min(max)))
    } else {
        Some((min, max))
    }
}

fn x_axis_range(chart: &Chart, pts: &[Pts]) -> (f64, f64) {
    if let Some((a, b)) = chart
        .x_range
        .filter(|(a, b)| a.is_finite() && b.is_finite())
    {
        return widen(a, b);
    }
    let (lo, hi) = pts
        .iter()
        .flatten()
        .flatten()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(x, _)| {
            (a.min(x), b.max(x))
        });
    if lo.is_finite() {
        widen(lo, hi)
    } else {
        (0.0, 1.0)
    }
}

fn y_axis_range(chart: &Chart, pts: &[Pts]) -> (f64, f64) {
    if let Some((a, b)) = chart.y_range {
        let fixed = if chart.log_y {
            (a > 0.0 && b > 0.0).then(|| (a.log10(), b.log10()))
        } else {
            Some((a, b))
        };
        if let Some((a, b)) = fixed.filter(|(a, b)| a.is_finite() && b.is_finite()) {
            return widen(a, b);
        }
    }
    let mut ys: Vec<f64> = pts.iter().flatten().flatten().map(|&(_, y)| y).collect();
    match robust_range(&mut ys) {
        Some((lo, hi)) => {
            let (lo, hi) = widen(lo, hi);
            let pad = 0.05 * (hi - lo);
            (lo - pad, hi + pad)
        }
        None => (0.0, 1.0),
    }
}

/// The running-mean window for a series, or `None` for no smoothing.
fn smoothing_window(mode: Smoothing, p: &Pts) -> Option<usize> {
    match mode {
        Smoothing::Off => None,
        Smoothing::Window(w) => (w > 1).then_some(w),
        Smoothing::Auto => {
            let mut ys: Vec<f64> = p.iter().flatten().map(|&(_, y)| y).collect();
            let n = ys.len();
            if n < 50 {
                return None;
            }
            // Total variation: the summed absolute step-to-step change.
            let mut tv = 0.0;
            let mut prev: Option<f64> = None;
            for q in p {
                match q {
                    Some((_, y)) => {
                        if let Some(py) = prev {
                            tv += (y - py).abs();
                        }
                        prev = Some(*y);
                    }
                    None => prev = None,
                }
            }
            let (lo, hi) = robust_range(&mut ys)?;
            let range = hi - lo;
            let noisy = range > 0.0 && tv > 20.0 * range;
            noisy.then(|| (n / 50).max(5))
        }
    }
}

/// Centred running mean over `window` valid points (skipped points are
/// ignored, not treated as breaks). Near the ends the window shrinks
/// symmetrically down to half its width and is truncated beyond that: a
/// compromise between following a steep trend at the start of training and
/// not letting the last few raw points show through as noise.
fn smooth(p: &Pts, window: usize) -> Pts {
    let valid: Vec<(f64, f64)> = p.iter().flatten().copied().collect();
    let n = valid.len();
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0f64);
    for &(_, y) in &valid {
        prefix.push(prefix[prefix.len() - 1] + y);
    }
    let half = window / 2;
    (0..n)
        .map(|i| {
            let h = half.min(i).min(n - 1 - i).max(half / 2);
            let (a, b) = (i.saturating_sub(h), (i + h + 1).min(n));
            let mean = (prefix[b] - prefix[a]) / (b - a) as f64;
            Some((valid[i].0, mean))
        })
        .collect()
}

/// Maps axis units to plot-local pixel coordinates. Pixel column `i` covers
/// `[i, i+1)`; the axis range maps onto pixel centres `0.5 ..= w - 0.5`.
struct Mapper {
    x0: f64,
    sx: f64,
    y0: f64,
    sy: f64,
    h: f64,
}

impl Mapper {
    fn new(xa: &Axis, ya: &Axis, w: i64, h: i64) -> Self {
        Mapper {
            x0: xa.lo,
            sx: (w - 1).max(1) as f64 / (xa.hi - xa.lo),
            y0: ya.lo,
            sy: (h - 1).max(1) as f64 / (ya.hi - ya.lo),
            h: h as f64,
        }
    }
    fn x(&self, x: f64) -> f64 {
        ((x - self.x0) * self.sx + 0.5).clamp(-1e7, 1e7)
    }
    fn y(&self, y: f64) -> f64 {
        (self.h - 0.5 - (y - self.y0) * self.sy).clamp(-1e7, 1e7)
    }
}

/// Maps points to pixels and keeps at most the first, min, max and last
/// point of every run of consecutive points in the same pixel column. This
/// rasterises to the same pixels as the full polyline.
fn to_pixels_decimated(p: &Pts, m: &Mapper) -> Pts {
    struct Bucket {
        col: i64,
        first: (usize, (f64, f64)),
        min: (usize, (f64, f64)),
        max: (usize, (f64, f64)),
        last: (usize, (f64, f64)),
    }
    fn flush(b: &Bucket, out: &mut Pts) {
        let mut pts = [b.first, b.min, b.max, b.last];
        pts.sort_by_key(|&(i, _)| i);
        let mut prev = usize::MAX;
        for (i, q) in pts {
            if i != prev {
                out.push(Some(q));
                prev = i;
            }
        }
    }
    let mut out = Vec::new();
    let mut cur: Option<Bucket> = None;
    for (i, q) in p.iter().enumerate() {
        let Some((x, y)) = *q else {
            if let Some(b) = cur.take() {
                flush(&b, &mut out);
                out.push(None);
            }
            continue;
        };
        let pt = (m.x(x), m.y(y));
        let col = pt.0.floor() as i64;
        match &mut cur {
            Some(b) if b.col == col => {
                if pt.1 < b.min.1 .1 {
                    b.min = (i, pt);
                }
                if pt.1 > b.max.1 .1 {
                    b.max = (i, pt);
                }
                b.last = (i, pt);
            }
            _ => {
                if let Some(b) = cur.take() {
                    flush(&b, &mut out);
                }
                cur = Some(Bucket {
                    col,
                    first: (i, pt),
                    min: (i, pt),
                    max: (i, pt),
                    last: (i, pt),
                });
            }
        }
    }
    if let Some(b) = cur.take() {
        flush(&b, &mut out);
    }
    out
}

/// Strokes a pixel-space polyline (breaks at `None`) into `mask`; isolated
/// points become dots of radius `dot_r`.
fn stroke(mask: &mut Mask, px: &Pts, r: f64, dot_r: f64) {
    let mut run_start = 0;
    for i in 0..=px.len() {
        if i < px.len() && px[i].is_some() {
            continue;
        }
        let run: Vec<(f64, f64)> = px[run_start..i].iter().flatten().copied().collect();
        match run.len() {
            0 => {}
            1 => mask.segment(run[0].0, run[0].1, run[0].0, run[0].1, dot_r),
            _ => {
                for w in run.windows(2) {
                    mask.segment(w[0].0, w[0].1, w[1].0, w[1].1, r);
                }
            }
        }
        run_start = i + 1;
    }
}

/// Legend entries laid out in rows: `(x offset, colour, name)` per entry.
type LegendRow = Vec<(i64, Color, String)>;

fn layout_legend(chart: &Chart, avail: i64, s: i64) -> (Vec<LegendRow>, i64) {
    let swatch = CAP_H * s;
    let gap = 14 * s;
    let mut rows: Vec<LegendRow> = Vec::new();
    let mut row: LegendRow = Vec::new();
    let mut x = 0;
    let mut widest = 0;
    for (i, series) in chart.series.iter().enumerate() {
        if series.name.is_empty() {
            continue;
        }
        let w = swatch + 4 * s + text_width(&series.name, s);
        if !row.is_empty() && x + gap + w > avail {
            widest = widest.max(x);
            rows.push(std::mem::take(&mut row));
            x = 0;
        }
        let at = if row.is_empty() { 0 } else { x + gap };
        row.push((at, PALETTE[i % PALETTE.len()], series.name.clone()));
        x = at + w;
    }
    if !row.is_empty() {
        widest = widest.max(x);
        rows.push(row);
    }
    (rows, widest)
}

fn draw_legend_row(img: &mut RgbImage, row: &LegendRow, x: i64, y: i64, s: i64) {
    let swatch = CAP_H * s;
    for (dx, color, name) in row {
        fill_rect(img, x + dx, y, swatch, swatch, *color);
        draw_text(img, x + dx + swatch + 4 * s, y, name, s, TEXT, false);
    }
}

/// Layout decided before drawing: header, vertical extent of the plot area
/// and the y axis (whose label widths set the left margin).
struct Plan {
    top: i64,
    legend_rows: Vec<LegendRow>,
    legend_w: i64,
    /// Title and legend share the first header row.
    shared: bool,
    plot_y: i64,
    plot_h: i64,
    pts: Vec<Pts>,
    ya: Axis,
    /// The smallest plot-area left edge that leaves room for the y axis.
    min_plot_x: i64,
}

/// Margins shared by planning and drawing.
struct Metrics {
    s: i64,
    pad: i64,
    right: i64,
    lh: i64,
    tick_len: i64,
    row_h: i64,
}

impl Metrics {
    fn new(s: i64) -> Self {
        let pad = 8 * s;
        Metrics {
            s,
            pad,
            // Room for half of the last x tick label.
            right: pad + 2 * ADVANCE * s,
            lh: line_height(s),
            tick_len: 4 * s,
            row_h: line_height(s) + 3 * s,
        }
    }
}

/// Plans one chart in the panel `[0, width) × [top, top + panel_h)`;
/// `None` when the panel has no room for a plot area.
fn plan_chart(chart: &Chart, top: i64, panel_h: i64, width: i64, m: &Metrics) -> Option<Plan> {
    let Metrics {
        s,
        pad,
        right,
        lh,
        tick_len,
        row_h,
    } = *m;
    // Header: title on the left, legend on the right of the same row when
    // it fits, otherwise in rows of its own under the title.
    let avail = width - pad - right;
    let title_w = text_width(&chart.title, s) + i64::from(!chart.title.is_empty());
    let (legend_rows, legend_w) = layout_legend(chart, avail, s);
    let shared = legend_rows.len() == 1 && title_w + 24 * s + legend_w <= avail;
    let header_rows = if shared {
        1
    } else {
        i64::from(!chart.title.is_empty()) + legend_rows.len() as i64
    };
    let plot_y = top + pad + header_rows * row_h + 3 * s;
    let x_label_h = if chart.x_label.is_empty() {
        0
    } else {
        3 * s + lh
    };
    let bottom = tick_len + 3 * s + lh + x_label_h + pad;
    let plot_h = top + panel_h - bottom - plot_y;
    if plot_h < 8 {
        return None;
    }

    // Data in axis units, y range and ticks.
    let pts: Vec<Pts> = chart.series.iter().map(|s| transform(chart, s)).collect();
    let (ylo, yhi) = y_axis_range(chart, &pts);
    let max_y_ticks = (plot_h / (lh * 3)).clamp(2, 10) as usize;
    let y_ticks: Vec<(f64, String)> = if chart.log_y {
        ticks::log_ticks(ylo, yhi, max_y_ticks)
            .into_iter()
            .map(|(v, l)| (v.log10(), l))
            .collect()
    } else {
        let (t, step) = ticks::nice_ticks_with_step(ylo, yhi, max_y_ticks);
        t.into_iter().map(|v| (v, format_tick(v, step))).collect()
    };
    let ya = Axis {
        lo: ylo,
        hi: yhi,
        ticks: y_ticks,
    };
    let label_w = ya
        .ticks
        .iter()
        .map(|(_, l)| text_width(l, s))
        .max()
        .unwrap_or(0);
    let y_label_w = if chart.y_label.is_empty() {
        0
    } else {
        lh + 4 * s
    };
    Some(Plan {
        top,
        legend_rows,
        legend_w,
        shared,
        plot_y,
        plot_h,
        pts,
        ya,
        min_plot_x: pad + y_label_w + label_w + 3 * s + tick_len,
    })
}

/// Draws the header of a chart (title and legend).
fn draw_header(img: &mut RgbImage, chart: &Chart, plan: &Plan, width: i64, m: &Metrics) {
    let (s, pad) = (m.s, m.pad);
    let mut y = plan.top + pad;
    if !chart.title.is_empty() {
        draw_text(img, pad, y, &chart.title, s, TEXT, true);
    }
    if plan.shared {
        let x = width - m.right - plan.legend_w;
        draw_legend_row(img, &plan.legend_rows[0], x, y, s);
    } else {
        if !chart.title.is_empty() {
            y += m.row_h;
        }
        for row in &plan.legend_rows {
            draw_legend_row(img, row, pad, y, s);
            y += m.row_h;
        }
    }
}

/// Draws a planned chart with its plot area's left edge at `plot_x` and
/// returns the plot area; `None` when it is too narrow to draw.
fn draw_chart(
    img: &mut RgbImage,
    chart: &Chart,
    plan: Plan,
    plot_x: i64,
    width: i64,
    m: &Metrics,
) -> Option<Rect> {
    let Metrics {
        s,
        pad,
        right,
        lh,
        tick_len,
        ..
    } = *m;
    let Plan {
        plot_y,
        plot_h,
        pts,
        ya,
        ..
    } = plan;
    let plot_w = width - plot_x - right;
    if plot_w < 8 {
        return None;
    }

    let (mut xlo, mut xhi) = x_axis_range(chart, &pts);
    // The most ticks whose labels fit side by side.
    let mut max_x = (plot_w / (20 * s)).clamp(2, 15) as usize;
    let x_ticks = loop {
        let (t, step) = ticks::nice_ticks_with_step(xlo, xhi, max_x);
        let labelled: Vec<(f64, String)> =
            t.into_iter().map(|v| (v, format_tick(v, step))).collect();
        let widest = labelled
            .iter()
            .map(|(_, l)| text_width(l, s))
            .max()
            .unwrap_or(0);
        if labelled.len() as i64 * (widest + 10 * s) <= plot_w || max_x <= 2 {
            break (labelled, step);
        }
        max_x -= 1;
    };
    let (mut x_ticks, x_step) = x_ticks;
    // An automatic x range that ends just short of a tick (e.g. steps
    // 0..4999 with ticks every 500) is extended to it.
    if chart.x_range.is_none() && x_step > 0.0 {
        let snap = 0.02 * (xhi - xlo);
        let up = (xhi / x_step).ceil() * x_step;
        let down = (xlo / x_step).floor() * x_step;
        let mut changed = false;
        if up - xhi > 0.0 && up - xhi <= snap {
            xhi = up;
            changed = true;
        }
        if xlo - down > 0.0 && xlo - down <= snap {
            xlo = down;
            changed = true;
        }
        if changed {
            let (t, step) = ticks::nice_ticks_with_step(xlo, xhi, max_x);
            x_ticks = t.into_iter().map(|v| (v, format_tick(v, step))).collect();
        }
    }
    let xa = Axis {
        lo: xlo,
        hi: xhi,
        ticks: x_ticks,
    };
    let rect = Rect {
        x: plot_x,
        y: plot_y,
        w: plot_w,
        h: plot_h,
    };
    let map = Mapper::new(&xa, &ya, plot_w, plot_h);

    // Grid.
    for (v, _) in &ya.ticks {
        let row = map.y(*v).floor() as i64;
        if (0..plot_h).contains(&row) {
            fill_rect(img, plot_x, plot_y + row, plot_w, 1, GRID);
        }
    }
    for (v, _) in &xa.ticks {
        let col = map.x(*v).floor() as i64;
        if (0..plot_w).contains(&col) {
            fill_rect(img, plot_x + col, plot_y, 1, plot_h, GRID);
        }
    }

    // Lines: all faded raw lines first, then full-opacity lines on top.
    let r = 0.5 + 0.5 * s as f64;
    let r_faint = 0.35 + 0.35 * s as f64;
    let dot_r = 1.5 * r + 0.5;
    let mut mask = Mask::new(plot_w, plot_h);
    let mut top_lines: Vec<(Pts, Color)> = Vec::new();
    let mut any_data = false;
    for (i, p) in pts.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let px = to_pixels_decimated(p, &map);
        any_data |= px.iter().any(Option::is_some);
        match smoothing_window(chart.smoothing, p) {
            Some(window) => {
                stroke(&mut mask, &px, r_faint, dot_r);
                mask.composite_and_clear(img, plot_x, plot_y, color, RAW_OPACITY_WHEN_SMOOTHED);
                top_lines.push((to_pixels_decimated(&smooth(p, window), &map), color));
            }
            None => top_lines.push((px, color)),
        }
    }
    for (px, color) in &top_lines {
        stroke(&mut mask, px, r, dot_r);
        mask.composite_and_clear(img, plot_x, plot_y, *color, 1.0);
    }
    if !any_data {
        let msg = "no data";
        let tx = plot_x + (plot_w - text_width(msg, s)) / 2;
        let ty = plot_y + (plot_h - CAP_H * s) / 2;
        draw_text(img, tx, ty, msg, s, MUTED, false);
    }

    // Frame, ticks and tick labels.
    fill_rect(img, plot_x - 1, plot_y - 1, plot_w + 2, 1, FRAME);
    fill_rect(img, plot_x - 1, plot_y + plot_h, plot_w + 2, 1, FRAME);
    fill_rect(img, plot_x - 1, plot_y - 1, 1, plot_h + 2, FRAME);
    fill_rect(img, plot_x + plot_w, plot_y - 1, 1, plot_h + 2, FRAME);
    let tick_w = s.max(1);
    for (v, label) in &ya.ticks {
        let row = map.y(*v).floor() as i64;
        if !(0..plot_h).contains(&row) {
            continue;
        }
        let ty = plot_y + row;
        fill_rect(
            img,
            plot_x - 1 - tick_len,
            ty - (tick_w - 1) / 2,
            tick_len,
            tick_w,
            FRAME,
        );
        let lx = plot_x - 1 - tick_len - 3 * s - text_width(label, s);
        let ly = ty - (CAP_H * s) / 2;
        draw_text(img, lx, ly, label, s, MUTED, false);
    }
    for (v, label) in &xa.ticks {
        let col = map.x(*v).floor() as i64;
        if !(0..plot_w).contains(&col) {
            continue;
        }
        let tx = plot_x + col;
        fill_rect(
            img,
            tx - (tick_w - 1) / 2,
            plot_y + plot_h + 1,
            tick_w,
            tick_len,
            FRAME,
        );
        let lw = text_width(label, s);
        let lx = (tx - lw / 2).clamp(0, (width - lw).max(0));
        draw_text(
            img,
            lx,
            plot_y + plot_h + 1 + tick_len + 3 * s,
            label,
            s,
            MUTED,
            false,
        );
    }

    // Axis labels.
    if !chart.x_label.is_empty() {
        let lw = text_width(&chart.x_label, s);
        let lx = plot_x + (plot_w - lw) / 2;
        let ly = plot_y + plot_h + 1 + tick_len + 3 * s + lh + 3 * s;
        draw_text(img, lx, ly, &chart.x_label, s, TEXT, false);
    }
    if !chart.y_label.is_empty() {
        let lw = text_width(&chart.y_label, s);
        let ly = plot_y + (plot_h + lw) / 2;
        draw_text_up(img, pad, ly, &chart.y_label, s, TEXT);
    }
    Some(rect)
}

#[cfg(test)]
mod tests;
