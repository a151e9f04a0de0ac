//! Pixel-level drawing: clipped rectangles, bitmap text, and anti-aliased
//! thick polylines rasterised into a coverage mask.

use crate::font::{glyph, ADVANCE, GLYPH_H, GLYPH_W};
use image::{Rgb, RgbImage};

/// An RGB colour.
pub(crate) type Color = [u8; 3];

/// Blends `color` over the pixel at `(x, y)` with opacity `alpha` (0..=1);
/// pixels outside the image are ignored.
pub(crate) fn blend(img: &mut RgbImage, x: i64, y: i64, color: Color, alpha: f32) {
    if x < 0 || y < 0 || x >= i64::from(img.width()) || y >= i64::from(img.height()) {
        return;
    }
    let a = alpha.clamp(0.0, 1.0);
    if a <= 0.0 {
        return;
    }
    let px = img.get_pixel_mut(x as u32, y as u32);
    for (dst, &src) in px.0.iter_mut().zip(color.iter()) {
        let v = f32::from(*dst) * (1.0 - a) + f32::from(src) * a;
        *dst = v.round().clamp(0.0, 255.0) as u8;
    }
}

/// Fills the rectangle `[x, x+w) × [y, y+h)`, clipped to the image.
pub(crate) fn fill_rect(img: &mut RgbImage, x: i64, y: i64, w: i64, h: i64, color: Color) {
    let x0 = x.max(0);
    let y0 = y.max(0);
    let x1 = (x.saturating_add(w)).min(i64::from(img.width()));
    let y1 = (y.saturating_add(h)).min(i64::from(img.height()));
    for yy in y0..y1 {
        for xx in x0..x1 {
            img.put_pixel(xx as u32, yy as u32, Rgb(color));
        }
    }
}

/// Width in pixels of `text` drawn at integer `scale`.
pub(crate) fn text_width(text: &str, scale: i64) -> i64 {
    let n = text.chars().count() as i64;
    if n == 0 {
        0
    } else {
        (n * ADVANCE - 1) * scale
    }
}

/// Draws `text` with the top-left corner of its first glyph cell at
/// `(x, y)`. With `bold`, every glyph is struck twice one pixel apart.
pub(crate) fn draw_text(
    img: &mut RgbImage,
    x: i64,
    y: i64,
    text: &str,
    scale: i64,
    color: Color,
    bold: bool,
) {
    let mut cx = x;
    for c in text.chars() {
        let rows = glyph(c);
        for (r, &bits) in rows.iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits & (1 << (GLYPH_W - 1 - col)) != 0 {
                    let px = cx + col * scale;
                    let py = y + r as i64 * scale;
                    fill_rect(img, px, py, scale + i64::from(bold), scale, color);
                }
            }
        }
        cx += ADVANCE * scale;
    }
}

/// Draws `text` rotated 90° counter-clockwise (reading bottom to top) with
/// the bottom-left corner of its first glyph cell at `(x, y)`; the text
/// occupies columns `x .. x + GLYPH_H*scale` and rows above `y`.
pub(crate) fn draw_text_up(
    img: &mut RgbImage,
    x: i64,
    y: i64,
    text: &str,
    scale: i64,
    color: Color,
) {
    let mut cy = y;
    for c in text.chars() {
        let rows = glyph(c);
        for (r, &bits) in rows.iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits & (1 << (GLYPH_W - 1 - col)) != 0 {
                    // Unrotated (col, r) -> rotated (r, -col).
                    let px = x + r as i64 * scale;
                    let py = cy - (col + 1) * scale;
                    fill_rect(img, px, py, scale, scale, color);
                }
            }
        }
        cy -= ADVANCE * scale;
    }
}

/// Height in pixels of one text line (including descenders) at `scale`.
pub(crate) fn line_height(scale: i64) -> i64 {
    GLYPH_H * scale
}

/// A per-pixel coverage buffer (0..=1) for one stroke. Strokes are
/// accumulated with `max`, so overlapping segments of the same polyline do
/// not darken their joints, and the whole stroke is composited once.
pub(crate) struct Mask {
    w: i64,
    h: i64,
    data: Vec<f32>,
    /// Bounding box of touched pixels, to keep clearing and compositing cheap.
    bbox: Option<(i64, i64, i64, i64)>,
}

impl Mask {
    /// A mask covering `w × h` pixels.
    pub(crate) fn new(w: i64, h: i64) -> Self {
        let (w, h) = (w.max(0), h.max(0));
        Mask {
            w,
            h,
            data: vec![0.0; (w * h) as usize],
            bbox: None,
        }
    }

    fn touch(&mut self, x: i64, y: i64, cov: f32) {
        if x < 0 || y < 0 || x >= self.w || y >= self.h || cov <= 0.0 {
            return;
        }
        let i = (y * self.w + x) as usize;
        if cov > self.data[i] {
            self.data[i] = cov.min(1.0);
        }
        self.bbox = Some(match self.bbox {
            None => (x, y, x, y),
            Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
        });
    }

    /// Adds an anti-aliased capsule (segment with round caps) of radius `r`
    /// from `(ax, ay)` to `(bx, by)`; coordinates are in mask pixels, with
    /// pixel `(i, j)` covering `[i, i+1) × [j, j+1)`. Parts outside the mask
    /// are clipped; non-finite input is ignored.
    pub(crate) fn segment(&mut self, ax: f64, ay: f64, bx: f64, by: f64, r: f64) {
        if ![ax, ay, bx, by, r].iter().all(|v| v.is_finite()) || r <= 0.0 {
            return;
        }
        let m = r + 2.0;
        let Some((ax, ay, bx, by)) = clip_segment(
            (ax, ay, bx, by),
            (-m, -m, self.w as f64 + m, self.h as f64 + m),
        ) else {
            return;
        };
        let steep = (by - ay).abs() > (bx - ax).abs();
        // Work in a frame where the segment is x-major.
        let (mut ax, mut ay, mut bx, mut by) = if steep {
            (ay, ax, by, bx)
        } else {
            (ax, ay, bx, by)
        };
        if ax > bx {
            std::mem::swap(&mut ax, &mut bx);
            std::mem::swap(&mut ay, &mut by);
        }
        let dx = bx - ax;
        let dy = by - ay;
        let slope = if dx > 0.0 { dy / dx } else { 0.0 };
        let len2 = dx * dx + dy * dy;
        let ext = r * (1.0 + slope * slope).sqrt() + 1.0;
        let x_start = (ax - r - 1.0).floor() as i64;
        let x_end = (bx + r + 1.0).ceil() as i64;
        for xi in x_start..=x_end {
            let xc = xi as f64 + 0.5;
            let yc = ay + (xc.clamp(ax, bx) - ax) * slope;
            let y_start = (yc - ext - 0.5).floor() as i64;
            let y_end = (yc + ext + 0.5).ceil() as i64;
            for yi in y_start..=y_end {
                let yp = yi as f64 + 0.5;
                let t = if len2 > 0.0 {
                    (((xc - ax) * dx + (yp - ay) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let ex = xc - (ax + t * dx);
                let ey = yp - (ay + t * dy);
                let d = (ex * ex + ey * ey).sqrt();
                let cov = (r + 0.5 - d).clamp(0.0, 1.0) as f32;
                if cov > 0.0 {
                    if steep {
                        self.touch(yi, xi, cov);
                    } else {
                        self.touch(xi, yi, cov);
                    }
                }
            }
        }
    }

    /// Blends `color` at `opacity × coverage` into `img` with the mask's
    /// origin at `(ox, oy)`, then clears the mask for reuse.
    pub(crate) fn composite_and_clear(
        &mut self,
        img: &mut RgbImage,
        ox: i64,
        oy: i64,
        color: Color,
        opacity: f32,
    ) {
        let Some((x0, y0, x1, y1)) = self.bbox.take() else {
            return;
        };
        for y in y0..=y1 {
            let row = (y * self.w) as usize;
            for x in x0..=x1 {
                let c = &mut self.data[row + x as usize];
                if *c > 0.0 {
                    blend(img, ox + x, oy + y, color, *c * opacity);
                    *c = 0.0;
                }
            }
        }
    }
}

/// Liang–Barsky clipping of a segment to the rectangle
/// `(xmin, ymin, xmax, ymax)`; `None` when nothing is inside.
fn clip_segment(
    (ax, ay, bx, by): (f64, f64, f64, f64),
    (xmin, ymin, xmax, ymax): (f64, f64, f64, f64),
) -> Option<(f64, f64, f64, f64)> {
    let dx = bx - ax;
    let dy = by - ay;
    let mut t0 = 0.0f64;
    let mut t1 = 1.0f64;
    for (p, q) in [
        (-dx, ax - xmin),
        (dx, xmax - ax),
        (-dy, ay - ymin),
        (dy, ymax - ay),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let t = q / p;
            if p < 0.0 {
                t0 = t0.max(t);
            } else {
                t1 = t1.min(t);
            }
            if t0 > t1 {
                return None;
            }
        }
    }
    Some((ax + t0 * dx, ay + t0 * dy, ax + t1 * dx, ay + t1 * dy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_inside_and_cuts_outside() {
        let r = (0.0, 0.0, 10.0, 10.0);
        assert_eq!(
            clip_segment((1.0, 1.0, 9.0, 9.0), r),
            Some((1.0, 1.0, 9.0, 9.0))
        );
        assert_eq!(
            clip_segment((-10.0, 5.0, 20.0, 5.0), r),
            Some((0.0, 5.0, 10.0, 5.0))
        );
        assert_eq!(clip_segment((-10.0, -1.0, 20.0, -1.0), r), None);
        assert_eq!(clip_segment((11.0, 0.0, 20.0, 10.0), r), None);
    }

    #[test]
    fn segment_coverage_is_thick_and_bounded() {
        let mut m = Mask::new(40, 20);
        m.segment(5.0, 10.0, 35.0, 10.0, 1.0);
        // Full coverage on the two pixel rows straddling y = 10.
        assert_eq!(m.data[(9 * 40 + 20) as usize], 1.0);
        assert_eq!(m.data[(10 * 40 + 20) as usize], 1.0);
        // Nothing three rows away, nothing beyond the caps.
        assert_eq!(m.data[(13 * 40 + 20) as usize], 0.0);
        assert_eq!(m.data[(6 * 40 + 20) as usize], 0.0);
        assert_eq!(m.data[(10 * 40 + 38) as usize], 0.0);
        // Far-away, huge and non-finite coordinates are handled.
        m.segment(-1e12, 3.0, 1e12, 3.0, 1.0);
        assert_eq!(m.data[(2 * 40 + 39) as usize], 1.0);
        m.segment(f64::NAN, 0.0, 1.0, 1.0, 1.0);
        m.segment(0.0, -1e300, 0.0, 1e300, 1.0);
    }

    #[test]
    fn text_is_drawn_where_asked() {
        let mut img = RgbImage::from_pixel(60, 30, Rgb([255, 255, 255]));
        draw_text(&mut img, 2, 3, "Hi", 2, [0, 0, 0], false);
        let w = text_width("Hi", 2);
        assert_eq!(w, 22);
        let mut ink = 0;
        for (x, y, p) in img.enumerate_pixels() {
            if p.0 != [255, 255, 255] {
                ink += 1;
                assert!((2..2 + w).contains(&i64::from(x)), "x {x}");
                assert!((3..3 + 7 * 2).contains(&i64::from(y)), "y {y}");
            }
        }
        assert!(ink > 40);
    }
}
