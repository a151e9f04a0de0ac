//! Overlapping tiles, feathered blending and cropping, for running a network on images
//! larger than fit in memory at once.

use crate::buffer::{pixel_count, Image};
use crate::error::{Error, Result};

/// A rectangle of pixels: top-left corner `(x, y)`, size `w × h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width in pixels.
    pub w: u32,
    /// Height in pixels.
    pub h: u32,
}

impl Rect {
    /// A rectangle from its corner and size.
    pub const fn new(x: u32, y: u32, w: u32, h: u32) -> Rect {
        Rect { x, y, w, h }
    }

    /// Number of pixels.
    pub fn area(&self) -> usize {
        pixel_count(self.w, self.h)
    }

    /// Whether the rectangle lies entirely inside a `width × height` image.
    pub fn fits_in(&self, width: u32, height: u32) -> bool {
        u64::from(self.x) + u64::from(self.w) <= u64::from(width)
            && u64::from(self.y) + u64::from(self.h) <= u64::from(height)
    }

    /// The part of the rectangle inside a `width × height` image (possibly empty).
    pub fn clamp_to(&self, width: u32, height: u32) -> Rect {
        let x = self.x.min(width);
        let y = self.y.min(height);
        Rect {
            x,
            y,
            w: self.w.min(width - x),
            h: self.h.min(height - y),
        }
    }
}

/// Overlapping tiles covering a `width × height` image.
///
/// Along each axis tiles start every `tile - overlap` pixels; the last one is moved back
/// to end exactly at the border, so when the image is larger than `tile` every tile is a
/// full `tile × tile` (the last overlap may then be wider than `overlap`). An axis no longer
/// than `tile` gets a single tile spanning it. Tiles are listed row by row.
///
/// Only the tile positions along each axis are stored, so even a fine grid costs little
/// memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileGrid {
    width: u32,
    height: u32,
    tile: u32,
    overlap: u32,
    xs: Vec<(u32, u32)>,
    ys: Vec<(u32, u32)>,
}

impl TileGrid {
    /// Plans the tiles.
    ///
    /// # Errors
    /// [`Error::InvalidTiling`] when `tile` is 0 or `overlap >= tile`.
    pub fn new(width: u32, height: u32, tile: u32, overlap: u32) -> Result<TileGrid> {
        if tile == 0 {
            return Err(Error::InvalidTiling("tile size is 0".to_owned()));
        }
        if overlap >= tile {
            return Err(Error::InvalidTiling(format!(
                "overlap {overlap} must be smaller than the tile size {tile}"
            )));
        }
        Ok(TileGrid {
            width,
            height,
            tile,
            overlap,
            xs: axis(width, tile, overlap),
            ys: axis(height, tile, overlap),
        })
    }

    /// The fewest tiles of at most `max_tile` pixels a side that cover the image with
    /// neighbours overlapping by at least `overlap`, made as small as that allows and spread
    /// evenly: a 4096-px side with `max_tile` 1024 and `overlap` 32 gets five 844-px tiles
    /// rather than four of 1024 and a fifth mostly overlapping its neighbour. Tile sides and
    /// starts are multiples of `align` (a network's size multiple keeps every tile in the
    /// untiled image's downsampling phase), so `width`, `height`, `max_tile` and `overlap`
    /// should be too.
    ///
    /// # Errors
    /// [`Error::InvalidTiling`] when `max_tile` or `align` is 0 or `overlap >= max_tile`.
    pub fn balanced(
        width: u32,
        height: u32,
        max_tile: u32,
        overlap: u32,
        align: u32,
    ) -> Result<TileGrid> {
        if max_tile == 0 || align == 0 {
            return Err(Error::InvalidTiling(
                "tile size and alignment must be at least 1".to_owned(),
            ));
        }
        if overlap >= max_tile {
            return Err(Error::InvalidTiling(format!(
                "overlap {overlap} must be smaller than the tile size {max_tile}"
            )));
        }
        let xs = balanced_axis(width, max_tile, overlap, align);
        let ys = balanced_axis(height, max_tile, overlap, align);
        let tile = xs.iter().chain(&ys).map(|t| t.1).max().unwrap_or(0);
        Ok(TileGrid {
            width,
            height,
            tile,
            overlap,
            xs,
            ys,
        })
    }

    /// Image width.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Image height.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Nominal tile side.
    pub fn tile(&self) -> u32 {
        self.tile
    }

    /// Nominal overlap between neighbours.
    pub fn overlap(&self) -> u32 {
        self.overlap
    }

    /// Tiles per row.
    pub fn columns(&self) -> usize {
        self.xs.len()
    }

    /// Tiles per column.
    pub fn rows(&self) -> usize {
        self.ys.len()
    }

    /// Total number of tiles.
    pub fn len(&self) -> usize {
        self.xs.len() * self.ys.len()
    }

    /// True for an image with no pixels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tiles, row by row.
    pub fn rects(&self) -> impl ExactSizeIterator<Item = Rect> + '_ {
        let cols = self.xs.len();
        (0..self.len()).map(move |i| {
            let (x, w) = self.xs[i % cols];
            let (y, h) = self.ys[i / cols];
            Rect { x, y, w, h }
        })
    }

    /// Blending weights of a tile of this grid; see [`feather_weight`].
    pub fn weights(&self, rect: Rect) -> Vec<f32> {
        feather_weight(rect, self.width, self.height, self.overlap)
    }
}

/// `(start, len)` of the tiles along one axis.
fn axis(size: u32, tile: u32, overlap: u32) -> Vec<(u32, u32)> {
    if size == 0 {
        return Vec::new();
    }
    if size <= tile {
        return vec![(0, size)];
    }
    let stride = tile - overlap;
    let mut out = Vec::with_capacity((size / stride) as usize + 1);
    let mut pos = 0u32;
    loop {
        if u64::from(pos) + u64::from(tile) >= u64::from(size) {
            out.push((size - tile, tile));
            return out;
        }
        out.push((pos, tile));
        pos += stride;
    }
}

/// `(start, len)` of the tiles along one axis of [`TileGrid::balanced`].
fn balanced_axis(size: u32, max_tile: u32, overlap: u32, align: u32) -> Vec<(u32, u32)> {
    if size == 0 {
        return Vec::new();
    }
    if size <= max_tile {
        return vec![(0, size)];
    }
    let (size, max_tile, overlap, align) = (
        u64::from(size),
        u64::from(max_tile),
        u64::from(overlap),
        u64::from(align),
    );
    // n tiles of side t cover the axis with overlaps ≥ `overlap` iff n·t − (n−1)·overlap ≥ size.
    let n = (size - overlap).div_ceil(max_tile - overlap).max(2);
    let mut tile = (size + (n - 1) * overlap).div_ceil(n).div_ceil(align) * align;
    loop {
        let tile_now = tile.min(size);
        let span = size - tile_now;
        let starts: Vec<u64> = (0..n)
            .map(|i| {
                if i + 1 == n {
                    span
                } else {
                    (i * span / (n - 1)) / align * align
                }
            })
            .collect();
        // Aligning the starts down can widen a gap by up to `align`: grow the tiles until
        // every neighbour overlaps by at least `overlap`.
        let ok = starts.windows(2).all(|p| p[0] + tile_now >= p[1] + overlap);
        if ok || tile_now == size {
            return starts
                .into_iter()
                .map(|s| (s as u32, tile_now as u32))
                .collect();
        }
        tile += align;
    }
}

/// Ramp weights along one side of a tile: `(d + 1) / (overlap + 1)` for the first
/// `overlap` pixels from each edge that has a neighbour, 1 elsewhere.
fn ramp(start: u32, len: u32, size: u32, overlap: u32) -> Vec<f32> {
    let before = start > 0;
    let after = u64::from(start) + u64::from(len) < u64::from(size);
    let step = |d: u32| {
        if d < overlap {
            (d as f32 + 1.0) / (overlap as f32 + 1.0)
        } else {
            1.0
        }
    };
    (0..len)
        .map(|i| {
            let a = if before { step(i) } else { 1.0 };
            let b = if after { step(len - 1 - i) } else { 1.0 };
            a.min(b)
        })
        .collect()
}

/// Per-pixel blending weights (row-major, `rect.w × rect.h`) for a tile of a
/// `width × height` image: a linear ramp from `1 / (overlap + 1)` up to 1 across the first
/// `overlap` pixels of every side that has a neighbour (i.e. does not touch the image
/// border), 1 elsewhere; the two axes multiply. Every weight is strictly positive, and across
/// an overlap of exactly `overlap` pixels the two ramps sum to 1.
pub fn feather_weight(rect: Rect, width: u32, height: u32, overlap: u32) -> Vec<f32> {
    let wx = ramp(rect.x, rect.w, width, overlap);
    let wy = ramp(rect.y, rect.h, height, overlap);
    let mut out = Vec::with_capacity(rect.area());
    for y in &wy {
        out.extend(wx.iter().map(|x| x * y));
    }
    out
}

/// Accumulates overlapping tiles into one image with [`feather_weight`]s and normalises at
/// the end. Memory: the output (`channels × width × height` sums) plus one weight per pixel;
/// tiles are consumed as they come, so at most one needs to be alive at a time.
#[derive(Debug, Clone)]
pub struct Blender {
    width: u32,
    height: u32,
    channels: usize,
    overlap: u32,
    acc: Vec<f32>,
    wsum: Vec<f32>,
}

impl Blender {
    /// An empty accumulator for a `channels × width × height` (CHW) result, feathering over
    /// `overlap` pixels.
    pub fn new(width: u32, height: u32, channels: usize, overlap: u32) -> Blender {
        let n = pixel_count(width, height);
        Blender {
            width,
            height,
            channels,
            overlap,
            acc: vec![0.0; n.saturating_mul(channels)],
            wsum: vec![0.0; n],
        }
    }

    /// An accumulator matching a [`TileGrid`].
    pub fn for_grid(grid: &TileGrid, channels: usize) -> Blender {
        Blender::new(grid.width, grid.height, channels, grid.overlap)
    }

    /// Adds one tile: `tile_chw` holds `channels` planes of `rect.w × rect.h` values.
    ///
    /// # Errors
    /// [`Error::TileMismatch`] when `rect` is not inside the image or `tile_chw` has the
    /// wrong length; nothing is added then.
    pub fn add(&mut self, rect: Rect, tile_chw: &[f32]) -> Result<()> {
        if !rect.fits_in(self.width, self.height) {
            return Err(Error::TileMismatch(format!(
                "{}×{} tile at ({}, {}) is outside the {}×{} image",
                rect.w, rect.h, rect.x, rect.y, self.width, self.height
            )));
        }
        let area = rect.area();
        let want = area.saturating_mul(self.channels);
        if tile_chw.len() != want {
            return Err(Error::TileMismatch(format!(
                "{}×{} tile with {} channels needs {want} values, got {}",
                rect.w,
                rect.h,
                self.channels,
                tile_chw.len()
            )));
        }
        if area == 0 {
            return Ok(());
        }
        let wx = ramp(rect.x, rect.w, self.width, self.overlap);
        let wy = ramp(rect.y, rect.h, self.height, self.overlap);
        let (img_w, tw) = (self.width as usize, rect.w as usize);
        let (x0, y0) = (rect.x as usize, rect.y as usize);
        let n = pixel_count(self.width, self.height);
        for (ty, wyv) in wy.iter().enumerate() {
            let row = (y0 + ty) * img_w + x0;
            for (w_acc, wxv) in self.wsum[row..row + tw].iter_mut().zip(&wx) {
                *w_acc += wxv * wyv;
            }
            for c in 0..self.channels {
                let src = &tile_chw[c * area + ty * tw..][..tw];
                let dst = &mut self.acc[c * n + row..][..tw];
                for ((d, s), wxv) in dst.iter_mut().zip(src).zip(&wx) {
                    *d += s * wxv * wyv;
                }
            }
        }
        Ok(())
    }

    /// Whether every pixel has received a tile.
    pub fn is_complete(&self) -> bool {
        self.wsum.iter().all(|&w| w > 0.0)
    }

    /// The blended `channels × width × height` result; pixels no tile covered are 0.
    pub fn finish(self) -> Vec<f32> {
        let n = self.wsum.len();
        let mut acc = self.acc;
        if n == 0 {
            return acc;
        }
        for plane in acc.chunks_exact_mut(n) {
            for (v, w) in plane.iter_mut().zip(&self.wsum) {
                *v = if *w > 0.0 { *v / w } else { 0.0 };
            }
        }
        acc
    }

    /// The blended result as an [`Image`] with the given alpha plane (3 channels only).
    ///
    /// # Errors
    /// [`Error::InvalidImage`] when the blender does not have 3 channels or `alpha` has the
    /// wrong length.
    pub fn into_image(self, alpha: Option<Vec<f32>>) -> Result<Image> {
        if self.channels != 3 {
            return Err(Error::InvalidImage(format!(
                "an image needs 3 colour channels, the blender has {}",
                self.channels
            )));
        }
        let (width, height) = (self.width, self.height);
        Image::new(width, height, self.finish(), alpha)
    }
}

/// Copies the pixels of `rect` (clamped to the image) out of `img`, alpha included.
pub fn crop(img: &Image, rect: Rect) -> Image {
    let r = rect.clamp_to(img.width, img.height);
    Image {
        width: r.w,
        height: r.h,
        rgb: crop_chw(&img.rgb, img.width, img.height, 3, r),
        alpha: img
            .alpha
            .as_deref()
            .map(|a| crop_chw(a, img.width, img.height, 1, r)),
    }
}

/// The largest centred square of `img` (a copy; square images come back unchanged).
pub fn center_square(img: &Image) -> Image {
    let side = img.width.min(img.height);
    crop(
        img,
        Rect {
            x: (img.width - side) / 2,
            y: (img.height - side) / 2,
            w: side,
            h: side,
        },
    )
}

/// Copies `rect` (clamped to the image) out of planar `channels × width × height` data.
/// Samples missing from a too-short `data` read as 0.
pub fn crop_chw(data: &[f32], width: u32, height: u32, channels: usize, rect: Rect) -> Vec<f32> {
    let r = rect.clamp_to(width, height);
    let n = pixel_count(width, height);
    let (w, x0, y0) = (r.w as usize, r.x as usize, r.y as usize);
    let mut out = Vec::with_capacity(r.area().saturating_mul(channels));
    for c in 0..channels {
        for y in 0..r.h as usize {
            let start = c * n + (y0 + y) * width as usize + x0;
            let row = data.get(start..).unwrap_or(&[]);
            let have = row.len().min(w);
            out.extend_from_slice(&row[..have]);
            out.extend(std::iter::repeat_n(0.0, w - have));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coverage(grid: &TileGrid) -> Vec<u32> {
        let mut hits = vec![0u32; (grid.width() * grid.height()) as usize];
        for r in grid.rects() {
            assert!(r.fits_in(grid.width(), grid.height()), "{r:?}");
            for y in r.y..r.y + r.h {
                for x in r.x..r.x + r.w {
                    hits[(y * grid.width() + x) as usize] += 1;
                }
            }
        }
        hits
    }

    #[test]
    fn grid_covers_every_pixel() {
        for (w, h, tile, overlap) in [
            (1000, 700, 256, 32),
            (256, 256, 256, 32),
            (257, 100, 256, 32),
            (100, 50, 256, 16),
            (513, 1, 128, 0),
            (31, 17, 4, 3),
            (1, 1, 1, 0),
        ] {
            let grid = TileGrid::new(w, h, tile, overlap).unwrap();
            assert!(
                coverage(&grid).iter().all(|&c| c > 0),
                "{w}x{h} t{tile} o{overlap}"
            );
            assert_eq!(grid.rects().len(), grid.len());
            for r in grid.rects() {
                assert!(r.w <= tile && r.h <= tile);
                // Full-size tiles whenever the image is larger than a tile.
                assert_eq!(r.w, w.min(tile));
                assert_eq!(r.h, h.min(tile));
            }
        }
    }

    #[test]
    fn balanced_grids_have_the_fewest_even_tiles() {
        // 4096 px, tiles ≤ 1024 overlapping ≥ 32: five tiles (four cover only 4000).
        let g = TileGrid::balanced(4096, 4096, 1024, 32, 4).unwrap();
        assert_eq!((g.columns(), g.rows()), (5, 5));
        assert!(
            g.tile() <= 1024 && g.tile().is_multiple_of(4),
            "{}",
            g.tile()
        );
        assert_eq!(coverage(&g).iter().min(), Some(&1));
        for size in [1, 3, 100, 1023, 1024, 1025, 2048, 2049, 3000, 4096, 9999] {
            for (max, overlap, align) in [(1024, 32, 4), (512, 32, 4), (64, 16, 1), (300, 0, 1)] {
                let g = TileGrid::balanced(size, 77, max, overlap, align).unwrap();
                let rects: Vec<Rect> = g.rects().filter(|r| r.y == 0).collect();
                assert!(coverage(&g).iter().all(|&c| c > 0), "{size} {max}: a gap");
                // The fewest tiles: one fewer could not cover the axis.
                let n = rects.len() as u32;
                if n > 1 {
                    assert!(
                        (n - 1) * max - (n - 2) * overlap < size,
                        "{size} {max}: {n}"
                    );
                }
                for r in &rects {
                    assert!(r.w <= max.max(1) || size <= max, "{size} {max}: {r:?}");
                    if size > max && size.is_multiple_of(align) {
                        assert_eq!(r.x % align, 0);
                        assert_eq!(r.w % align, 0);
                    }
                }
                for p in rects.windows(2) {
                    assert!(p[0].x + p[0].w >= p[1].x + overlap, "{size} {max}: {p:?}");
                    assert!(p[1].x > p[0].x);
                }
            }
        }
        assert!(TileGrid::balanced(10, 10, 0, 0, 1).is_err());
        assert!(TileGrid::balanced(10, 10, 8, 8, 1).is_err());
        assert!(TileGrid::balanced(10, 10, 8, 2, 0).is_err());
    }

    #[test]
    fn grid_positions() {
        let grid = TileGrid::new(1000, 256, 256, 32).unwrap();
        let xs: Vec<u32> = grid.rects().map(|r| r.x).collect();
        assert_eq!(xs, vec![0, 224, 448, 672, 744]);
        assert_eq!(grid.rows(), 1);
        // Neighbours overlap by at least `overlap`.
        for pair in xs.windows(2) {
            assert!(pair[0] + 256 >= pair[1] + 32);
        }
    }

    #[test]
    fn invalid_grids() {
        assert!(matches!(
            TileGrid::new(10, 10, 0, 0),
            Err(Error::InvalidTiling(_))
        ));
        assert!(matches!(
            TileGrid::new(10, 10, 8, 8),
            Err(Error::InvalidTiling(_))
        ));
        let empty = TileGrid::new(0, 10, 8, 2).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.rects().count(), 0);
    }

    #[test]
    fn weights_sum_positive_everywhere() {
        for (w, h, tile, overlap) in [(300, 200, 64, 16), (65, 64, 64, 8), (50, 40, 8, 7)] {
            let grid = TileGrid::new(w, h, tile, overlap).unwrap();
            let mut sum = vec![0.0f32; (w * h) as usize];
            for r in grid.rects() {
                let wt = grid.weights(r);
                assert_eq!(wt.len(), r.area());
                assert!(wt.iter().all(|&v| v > 0.0 && v <= 1.0));
                for y in 0..r.h {
                    for x in 0..r.w {
                        sum[((r.y + y) * w + r.x + x) as usize] += wt[(y * r.w + x) as usize];
                    }
                }
            }
            assert!(sum.iter().all(|&s| s > 0.0));
        }
    }

    #[test]
    fn feather_shape() {
        // Middle tile of three along x: ramps on both sides, flat on top/bottom borders.
        let wt = feather_weight(Rect::new(10, 0, 20, 1), 50, 1, 4);
        assert!((wt[0] - 0.2).abs() < 1e-6);
        assert!((wt[3] - 0.8).abs() < 1e-6);
        assert_eq!(wt[4], 1.0);
        assert!((wt[19] - 0.2).abs() < 1e-6);
        // A tile covering the whole image is all ones.
        assert!(feather_weight(Rect::new(0, 0, 5, 5), 5, 5, 3)
            .iter()
            .all(|&v| v == 1.0));
        // Partition of unity over an exact overlap.
        let left = feather_weight(Rect::new(0, 0, 10, 1), 16, 1, 4);
        let right = feather_weight(Rect::new(6, 0, 10, 1), 16, 1, 4);
        for i in 6..10 {
            assert!((left[i] + right[i - 6] - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn blending_constant_returns_constant() {
        let (w, h) = (300u32, 170u32);
        let grid = TileGrid::new(w, h, 64, 12).unwrap();
        let mut blender = Blender::for_grid(&grid, 3);
        for r in grid.rects() {
            let mut tile = Vec::new();
            for v in [0.3f32, -0.7, 1.0] {
                tile.extend(std::iter::repeat_n(v, r.area()));
            }
            blender.add(r, &tile).unwrap();
        }
        assert!(blender.is_complete());
        let out = blender.finish();
        let n = (w * h) as usize;
        for (c, v) in [0.3f32, -0.7, 1.0].iter().enumerate() {
            assert!(out[c * n..(c + 1) * n].iter().all(|x| (x - v).abs() < 1e-5));
        }
    }

    #[test]
    fn blending_identity_tiles_reconstructs_image() {
        let (w, h) = (97u32, 61u32);
        let n = (w * h) as usize;
        let rgb: Vec<f32> = (0..3 * n)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let img = Image::new(w, h, rgb, Some(vec![0.5; n])).unwrap();
        let grid = TileGrid::new(w, h, 32, 8).unwrap();
        let mut blender = Blender::for_grid(&grid, 3);
        for r in grid.rects() {
            blender.add(r, &crop(&img, r).rgb).unwrap();
        }
        let out = blender.into_image(img.alpha.clone()).unwrap();
        let p = crate::psnr(&img.rgb, &out.rgb, 2.0);
        assert!(p > 100.0, "psnr {p}");
    }

    #[test]
    fn blender_rejects_bad_tiles() {
        let mut b = Blender::new(10, 10, 3, 2);
        assert!(matches!(
            b.add(Rect::new(5, 5, 6, 2), &[0.0; 36]),
            Err(Error::TileMismatch(_))
        ));
        assert!(matches!(
            b.add(Rect::new(0, 0, 2, 2), &[0.0; 11]),
            Err(Error::TileMismatch(_))
        ));
        assert!(matches!(
            b.add(Rect::new(u32::MAX, 0, 2, 2), &[0.0; 12]),
            Err(Error::TileMismatch(_))
        ));
        assert!(!b.is_complete());
        assert!(b.finish().iter().all(|&v| v == 0.0));
        assert!(Blender::new(2, 2, 1, 0).into_image(None).is_err());
    }

    #[test]
    fn crop_copies_and_clamps() {
        let (w, h) = (5u32, 4u32);
        let n = (w * h) as usize;
        let rgb: Vec<f32> = (0..3 * n).map(|i| i as f32).collect();
        let alpha: Vec<f32> = (0..n).map(|i| i as f32 / n as f32).collect();
        let img = Image::new(w, h, rgb, Some(alpha)).unwrap();
        let c = crop(&img, Rect::new(1, 2, 2, 2));
        assert_eq!((c.width, c.height), (2, 2));
        assert_eq!(&c.rgb[..4], &[11.0, 12.0, 16.0, 17.0]);
        assert_eq!(&c.rgb[4..8], &[31.0, 32.0, 36.0, 37.0]);
        assert_eq!(c.alpha.as_ref().unwrap().len(), 4);
        let c = crop(&img, Rect::new(3, 3, 100, 100));
        assert_eq!((c.width, c.height), (2, 1));
        assert!(c.validate().is_ok());
        let c = crop(&img, Rect::new(50, 50, 2, 2));
        assert_eq!((c.width, c.height), (0, 0));
        assert!(crop_chw(&[1.0; 3], 4, 4, 2, Rect::new(0, 0, 2, 2))
            .iter()
            .all(|&v| v == 0.0 || v == 1.0));
    }
}
