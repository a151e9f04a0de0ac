//! [`Map`]: one image's feature map in NHWC, and layout conversion at the network's edges.

use rayon::prelude::*;

/// A feature map of one image, channels last: element `(y, x, c)` at `(y·w + x)·c_count + c`.
#[derive(Debug, Clone, PartialEq)]
pub struct Map {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<f32>,
}

/// Reusable buffers for one network's activations.
///
/// Activation maps of a 512² image are tens of MiB: fresh from the allocator they come as
/// new pages (a page fault and a zeroed page per 4 KiB, ~10 ms per map here). A workspace
/// hands freed buffers back out instead. Buffers come back with unspecified contents (stale
/// values, never uninitialized memory): every kernel writes all of its output.
///
/// It also counts bytes: those handed out and not yet given back plus those kept for reuse,
/// and the high-water mark of that sum ([`Workspace::peak_bytes`]), which is what a forward
/// pass costs in memory; [`Workspace::trim`] bounds what stays kept between calls.
#[derive(Debug, Default)]
pub struct Workspace {
    free: std::sync::Mutex<Vec<Vec<f32>>>,
    /// Bytes taken and not given back; can go below zero when buffers that did not come from
    /// [`Workspace::take`] are given (a network's input).
    out: std::sync::atomic::AtomicI64,
    /// Bytes of the buffers in `free`.
    kept: std::sync::atomic::AtomicI64,
    peak: std::sync::atomic::AtomicI64,
    /// When a buffer was last taken, in ms since [`epoch`].
    last_take_ms: std::sync::atomic::AtomicU64,
    /// Passes run with this workspace calibrate the int8 convolutions they go through
    /// ([`Workspace::calibrating`]).
    calibrating: bool,
}

/// The process's first use of a workspace (a monotonic origin for `last_take_ms`).
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// Asks Linux to back a fresh, untouched buffer of several MiB with 2 MiB pages where
/// transparent huge pages are enabled on request (`madvise`, the common default): its first
/// touch then takes one fault per 2 MiB instead of one per 4 KiB, and the kernels' passes
/// over it miss the TLB less. Contents and semantics are unchanged; elsewhere a no-op.
fn advise_huge_pages(v: &[f32]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = v.as_ptr() as usize;
        let len = std::mem::size_of_val(v);
        if len < 4 * HUGE {
            return;
        }
        let first = start.next_multiple_of(HUGE);
        let last = (start + len) / HUGE * HUGE;
        if last > first {
            // SAFETY: [first, last) lies inside `v`'s allocation; MADV_HUGEPAGE changes how
            // the kernel backs those pages, never their contents. A failure (THP disabled)
            // leaves the pages as they were.
            #[allow(unsafe_code)]
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

fn bytes(v: &Vec<f32>) -> i64 {
    (v.capacity() * std::mem::size_of::<f32>()) as i64
}

impl Workspace {
    /// A workspace whose passes calibrate the int8 convolutions they run: each fixes its
    /// smoothing factors and quantized weights on the input it sees (the first calibration
    /// wins), where uncalibrated ones derive both from every input anew.
    pub fn calibrating() -> Self {
        Self {
            calibrating: true,
            ..Self::default()
        }
    }

    /// Whether passes with this workspace calibrate (see [`Workspace::calibrating`]).
    pub fn is_calibrating(&self) -> bool {
        self.calibrating
    }

    /// At most this many buffers are kept.
    const KEEP: usize = 12;

    fn count(&self, out: i64, kept: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        let o = self.out.fetch_add(out, Relaxed) + out;
        let k = self.kept.fetch_add(kept, Relaxed) + kept;
        self.peak.fetch_max(o + k, Relaxed);
    }

    /// A buffer of `n` floats with unspecified contents.
    pub fn take(&self, n: usize) -> Vec<f32> {
        self.last_take_ms.store(
            epoch().elapsed().as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let found = {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= n)
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i);
            best.map(|i| free.swap_remove(i))
        };
        match found {
            Some(mut v) => {
                let b = bytes(&v);
                self.count(b, -b);
                if v.len() >= n {
                    v.truncate(n);
                } else {
                    v.resize(n, 0.0);
                }
                v
            }
            None => {
                let v = vec![0.0; n];
                advise_huge_pages(&v);
                self.count(bytes(&v), 0);
                v
            }
        }
    }

    /// Returns a buffer for reuse.
    pub fn give(&self, v: Vec<f32>) {
        let b = bytes(&v);
        if v.capacity() < 1 << 12 {
            self.count(-b, 0);
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.push(v);
        let mut dropped = 0;
        if free.len() > Self::KEEP {
            // Drop the smallest.
            if let Some(i) = free
                .iter()
                .enumerate()
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i)
            {
                dropped = bytes(&free.swap_remove(i));
            }
        }
        self.count(-b, b - dropped);
    }

    /// Drops kept buffers, largest first, until at most `max_bytes` stay kept.
    pub fn trim(&self, max_bytes: usize) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.sort_by_key(|v| v.capacity());
        let mut dropped = 0;
        while free.iter().map(bytes).sum::<i64>() > max_bytes as i64 {
            match free.pop() {
                Some(v) => dropped += bytes(&v),
                None => break,
            }
        }
        self.count(0, -dropped);
    }

    /// How long since a buffer was last taken (since the first use of any workspace if this
    /// one never gave out a buffer).
    pub fn idle_for(&self) -> std::time::Duration {
        let last = self.last_take_ms.load(std::sync::atomic::Ordering::Relaxed);
        epoch()
            .elapsed()
            .saturating_sub(std::time::Duration::from_millis(last))
    }

    /// Bytes of the buffers kept for reuse.
    pub fn kept_bytes(&self) -> usize {
        self.kept.load(std::sync::atomic::Ordering::Relaxed).max(0) as usize
    }

    /// The most bytes handed out and kept at once since the workspace was made (or
    /// [`Workspace::reset_peak`]).
    pub fn peak_bytes(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::Relaxed).max(0) as usize
    }

    /// Starts a new high-water mark from what is handed out and kept now.
    pub fn reset_peak(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.out.load(Relaxed) + self.kept.load(Relaxed);
        self.peak.store(now, Relaxed);
    }

    /// A map with unspecified contents.
    pub fn map(&self, h: usize, w: usize, c: usize) -> Map {
        Map {
            h,
            w,
            c,
            data: self.take(h * w * c),
        }
    }

    /// Returns a map's buffer.
    pub fn recycle(&self, m: Map) {
        self.give(m.data)
    }
}

/// How a convolution's border is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    Zero,
    /// PyTorch's `ReflectionPad2d` (the edge pixel is not repeated).
    Reflect,
}

impl Map {
    pub fn zeros(h: usize, w: usize, c: usize) -> Self {
        Self {
            h,
            w,
            c,
            data: vec![0.0; h * w * c],
        }
    }

    /// From planar `(C, H, W)` data (one image of an NCHW tensor).
    pub fn from_chw(chw: &[f32], c: usize, h: usize, w: usize) -> Self {
        Self::from_chw_in(chw, c, h, w, &Workspace::default())
    }

    /// [`Map::from_chw`] into a buffer of `ws`.
    pub fn from_chw_in(chw: &[f32], c: usize, h: usize, w: usize, ws: &Workspace) -> Self {
        assert_eq!(chw.len(), c * h * w, "Map::from_chw: length");
        let mut data = ws.take(c * h * w);
        crate::transpose::transpose(chw, c, h * w, &mut data);
        Self { h, w, c, data }
    }

    /// To planar `(C, H, W)`.
    pub fn to_chw(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.data.len()];
        self.write_chw(&mut out);
        out
    }

    /// Writes the planar `(C, H, W)` values into `out` (of exactly `C·H·W` values), e.g. one
    /// image's slot of a batch.
    pub fn write_chw(&self, out: &mut [f32]) {
        assert_eq!(out.len(), self.data.len(), "Map::write_chw: length");
        crate::transpose::transpose(&self.data, self.h * self.w, self.c, out);
    }

    /// Row-planar copy `(H + 2p, C, W + 2p)` padded by `p` (`mode`): each row holds one
    /// line per channel, so rows stay contiguous for parallel writers and channel lines are
    /// not a power-of-two apart (planar `(C, H, W)` planes alias in the L1 cache).
    pub fn to_hcw_padded(&self, p: usize, mode: PadMode, ws: &Workspace) -> Vec<f32> {
        let (h, w, c) = (self.h, self.w, self.c);
        let (hp, wp) = (h + 2 * p, w + 2 * p);
        let mut out = ws.take(hp * c * wp);
        out.par_chunks_mut(c * wp)
            .enumerate()
            .for_each(|(yp, row)| {
                let Some(y) = source(yp, p, h, mode) else {
                    row.fill(0.0);
                    return;
                };
                let src = &self.data[y * w * c..][..w * c];
                for xp in 0..wp {
                    match source(xp, p, w, mode) {
                        Some(x) => {
                            for (ch, v) in src[x * c..(x + 1) * c].iter().enumerate() {
                                row[ch * wp + xp] = *v;
                            }
                        }
                        None => {
                            for ch in 0..c {
                                row[ch * wp + xp] = 0.0;
                            }
                        }
                    }
                }
            });
        out
    }

    /// Pixel `(y, x)`'s channels.
    pub fn px(&self, y: usize, x: usize) -> &[f32] {
        &self.data[(y * self.w + x) * self.c..][..self.c]
    }
}

/// Source index of padded coordinate `i` (may be negative) in `0..n`.
pub(crate) fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let mut i = i.rem_euclid(period);
    if i >= n {
        i = period - i;
    }
    i as usize
}

/// Source index in `0..n` of padded coordinate `i` (with `lead` pixels of padding before the
/// first), or `None` where zero padding applies.
pub(crate) fn source(i: usize, lead: usize, n: usize, mode: PadMode) -> Option<usize> {
    let d = i as isize - lead as isize;
    match mode {
        PadMode::Zero if d < 0 || d >= n as isize => None,
        PadMode::Zero => Some(d as usize),
        PadMode::Reflect => Some(reflect(d, n)),
    }
}

/// Pads `x` by `(top, bottom, left, right)` pixels.
pub fn pad(x: &Map, t: usize, b: usize, l: usize, r: usize, mode: PadMode) -> Map {
    pad_in(x, t, b, l, r, mode, &Workspace::default())
}

/// [`pad`] with the output from `ws`.
pub fn pad_in(
    x: &Map,
    t: usize,
    b: usize,
    l: usize,
    r: usize,
    mode: PadMode,
    ws: &Workspace,
) -> Map {
    let (h, w, c) = (x.h, x.w, x.c);
    let (hp, wp) = (h + t + b, w + l + r);
    let mut out = ws.take(hp * wp * c);
    out.par_chunks_mut(wp * c)
        .enumerate()
        .for_each(|(yp, row)| {
            let Some(src_y) = source(yp, t, h, mode) else {
                row.fill(0.0);
                return;
            };
            let src = &x.data[src_y * w * c..][..w * c];
            row[l * c..(l + w) * c].copy_from_slice(src);
            for xp in (0..l).chain(l + w..wp) {
                match source(xp, l, w, mode) {
                    None => row[xp * c..(xp + 1) * c].fill(0.0),
                    Some(sx) => {
                        row[xp * c..(xp + 1) * c].copy_from_slice(&src[sx * c..(sx + 1) * c])
                    }
                }
            }
        });
    Map {
        h: hp,
        w: wp,
        c,
        data: out,
    }
}

multiversion! {
/// `dst += src` element-wise.
pub(crate) fn add_assign(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}
}

/// The adjoint of [`pad_in`] (training): adds every value of `dxp`, the gradient of an input
/// padded by `(top, bottom, left, right)` in `mode`, to the pixel of `dst` it was copied from
/// (reflected pixels add to their source; zero padding's border is dropped).
#[allow(clippy::too_many_arguments)]
pub fn fold_pad_add(
    dxp: &Map,
    t: usize,
    b: usize,
    l: usize,
    r: usize,
    mode: PadMode,
    dst: &mut Map,
) {
    let (h, w, c) = (dst.h, dst.w, dst.c);
    assert!(
        dxp.h == h + t + b && dxp.w == w + l + r && dxp.c == c,
        "fold_pad_add: shapes"
    );
    let wp = dxp.w;
    // Border rows of `dxp` by the row of `dst` they add to, and border columns with theirs.
    let mut extra_rows: Vec<Vec<usize>> = vec![Vec::new(); h];
    for yp in (0..t).chain(t + h..t + h + b) {
        if let Some(y) = source(yp, t, h, mode) {
            extra_rows[y].push(yp);
        }
    }
    let extra_cols: Vec<(usize, usize)> = (0..l)
        .chain(l + w..wp)
        .filter_map(|xp| source(xp, l, w, mode).map(|x| (xp, x)))
        .collect();
    dst.data
        .par_chunks_mut(w * c)
        .enumerate()
        .for_each(|(y, drow)| {
            for &yp in std::iter::once(&(y + t)).chain(&extra_rows[y]) {
                let srow = &dxp.data[yp * wp * c..][..wp * c];
                add_assign(drow, &srow[l * c..(l + w) * c]);
                for &(xp, x) in &extra_cols {
                    add_assign(&mut drow[x * c..][..c], &srow[xp * c..][..c]);
                }
            }
        });
}

/// The adjoint of [`upsample_nearest2_padded`] (training): adds every value of `dxp`, the
/// gradient of `x` upsampled ×2 and padded by `p` in `mode`, to the pixel of `dst` (x's
/// shape) it was copied from.
pub fn fold_upsample2_pad_add(dxp: &Map, p: usize, mode: PadMode, dst: &mut Map) {
    let (h, w, c) = (dst.h, dst.w, dst.c);
    let (hp, wp) = (2 * h + 2 * p, 2 * w + 2 * p);
    assert!(
        dxp.h == hp && dxp.w == wp && dxp.c == c,
        "fold_upsample2_pad_add: shapes"
    );
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); h];
    for yp in 0..hp {
        if let Some(u) = source(yp, p, 2 * h, mode) {
            rows[u / 2].push(yp);
        }
    }
    let cols: Vec<(usize, usize)> = (0..wp)
        .filter_map(|xp| source(xp, p, 2 * w, mode).map(|u| (xp, u / 2)))
        .collect();
    dst.data
        .par_chunks_mut(w * c)
        .enumerate()
        .for_each(|(y, drow)| {
            for &yp in &rows[y] {
                let srow = &dxp.data[yp * wp * c..][..wp * c];
                for &(xp, x) in &cols {
                    add_assign(&mut drow[x * c..][..c], &srow[xp * c..][..c]);
                }
            }
        });
}

/// Nearest-neighbour upsampling by 2 in both directions.
pub fn upsample_nearest2(x: &Map, ws: &Workspace) -> Map {
    let (h, w, c) = (x.h, x.w, x.c);
    let mut out = ws.take(4 * h * w * c);
    out.par_chunks_mut(2 * w * c)
        .enumerate()
        .for_each(|(y, row)| {
            let src = &x.data[(y / 2) * w * c..][..w * c];
            for xo in 0..2 * w {
                row[xo * c..(xo + 1) * c].copy_from_slice(&src[(xo / 2) * c..(xo / 2 + 1) * c]);
            }
        });
    Map {
        h: 2 * h,
        w: 2 * w,
        c,
        data: out,
    }
}

/// Nearest ×2 upsampling written with a border of `p` pixels (`mode`) around the upsampled
/// map, for the convolution that follows.
pub fn upsample_nearest2_padded(x: &Map, p: usize, mode: PadMode, ws: &Workspace) -> Map {
    let (h, w, c) = (x.h, x.w, x.c);
    let (hu, wu) = (2 * h, 2 * w);
    let (hp, wp) = (hu + 2 * p, wu + 2 * p);
    let mut out = ws.take(hp * wp * c);
    // The index into the upsampled map, halved: the source pixel.
    let src_of = |i: usize, n: usize| source(i, p, n, mode).map(|u| u / 2);
    out.par_chunks_mut(wp * c)
        .enumerate()
        .for_each(|(yp, row)| {
            let Some(sy) = src_of(yp, hu) else {
                row.fill(0.0);
                return;
            };
            let src = &x.data[sy * w * c..][..w * c];
            for xp in 0..wp {
                let d = &mut row[xp * c..(xp + 1) * c];
                match src_of(xp, wu) {
                    Some(sx) => d.copy_from_slice(&src[sx * c..(sx + 1) * c]),
                    None => d.fill(0.0),
                }
            }
        });
    Map {
        h: hp,
        w: wp,
        c,
        data: out,
    }
}

/// f32 → bf16 bits, rounding to nearest even (NaN stays NaN).
#[inline]
pub(crate) fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// bf16 bits → f32.
#[inline]
#[cfg(test)]
pub(crate) fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// A bf16 copy of `data` (see [`bf16_into`]).
pub(crate) fn to_bf16(data: &[f32]) -> Vec<u16> {
    let mut out = vec![0u16; data.len()];
    out.par_chunks_mut(1 << 14)
        .zip(data.par_chunks(1 << 14))
        .for_each(|(o, i)| bf16_into(i, o));
    out
}

/// `out[i] = bf16_bits(src[i])` for every `i` of the shorter slice; with `vcvtneps2bf16`
/// where the CPU has AVX512_BF16 (the same rounding to nearest even; the instruction reads
/// denormal inputs as zero, and only runs where bf16 kernels do).
pub(crate) fn bf16_into(src: &[f32], out: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if crate::Isa::detect().has_bf16() {
        // SAFETY: AVX-512F and AVX512_BF16 were detected.
        #[allow(unsafe_code)]
        unsafe {
            bf16_into_avx512(src, out)
        };
        return;
    }
    for (o, i) in out.iter_mut().zip(src) {
        *o = bf16_bits(*i);
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_into_avx512(src: &[f32], out: &mut [u16]) {
    use std::arch::x86_64::*;
    let n = src.len().min(out.len());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY (of the pointer arithmetic): i + 16 ≤ n ≤ both lengths.
        let v = _mm512_loadu_ps(src.as_ptr().add(i));
        let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
        _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, b);
        i += 16;
    }
    for (o, x) in out[i..n].iter_mut().zip(&src[i..n]) {
        *o = bf16_bits(*x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// `fold_upsample2_pad_add` is the adjoint of `upsample_nearest2_padded`.
    #[test]
    fn fold_upsample_is_the_adjoint_of_upsample_and_pad() {
        for (mode, p) in [
            (PadMode::Reflect, 1),
            (PadMode::Zero, 2),
            (PadMode::Reflect, 0),
        ] {
            let (h, w, c) = (4, 3, 5);
            let x = Map {
                h,
                w,
                c,
                data: noise(h * w * c, 7),
            };
            let ws = Workspace::default();
            let up = upsample_nearest2_padded(&x, p, mode, &ws);
            let y = Map {
                h: up.h,
                w: up.w,
                c,
                data: noise(up.data.len(), 8),
            };
            let lhs: f64 = up
                .data
                .iter()
                .zip(&y.data)
                .map(|(a, b)| (a * b) as f64)
                .sum();
            let mut f = Map::zeros(h, w, c);
            fold_upsample2_pad_add(&y, p, mode, &mut f);
            let rhs: f64 = x
                .data
                .iter()
                .zip(&f.data)
                .map(|(a, b)| (a * b) as f64)
                .sum();
            assert!((lhs - rhs).abs() < 1e-4, "{mode:?} {p}: {lhs} vs {rhs}");
        }
    }

    /// `fold_pad_add` is the adjoint of `pad`: ⟨pad(x), y⟩ = ⟨x, fold(y)⟩ for every x, y,
    /// checked on random maps, both modes and uneven borders; and it adds to what `dst` holds.
    #[test]
    fn fold_pad_add_is_the_adjoint_of_pad() {
        for (mode, (t, b, l, r)) in [
            (PadMode::Reflect, (1, 1, 1, 1)),
            (PadMode::Reflect, (3, 3, 3, 3)),
            (PadMode::Reflect, (2, 0, 1, 3)),
            (PadMode::Zero, (1, 2, 0, 1)),
        ] {
            let (h, w, c) = (7, 5, 3);
            let x = Map {
                h,
                w,
                c,
                data: noise(h * w * c, 1),
            };
            let (hp, wp) = (h + t + b, w + l + r);
            let y = Map {
                h: hp,
                w: wp,
                c,
                data: noise(hp * wp * c, 2),
            };
            let px = pad(&x, t, b, l, r, mode);
            let lhs: f64 = px
                .data
                .iter()
                .zip(&y.data)
                .map(|(a, b)| (a * b) as f64)
                .sum();
            let base = noise(h * w * c, 3);
            let mut f = Map {
                h,
                w,
                c,
                data: base.clone(),
            };
            fold_pad_add(&y, t, b, l, r, mode, &mut f);
            let rhs: f64 = x
                .data
                .iter()
                .zip(f.data.iter().zip(&base))
                .map(|(a, (v, b0))| (a * (v - b0)) as f64)
                .sum();
            assert!(
                (lhs - rhs).abs() < 1e-4,
                "{mode:?} {t} {b} {l} {r}: {lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn workspace_counts_its_high_water_mark_and_trims() {
        let ws = Workspace::default();
        let mb = 1 << 18; // floats in a MiB
        let a = ws.take(4 * mb);
        let b = ws.take(2 * mb);
        assert_eq!(ws.peak_bytes(), 6 << 20);
        ws.give(a);
        // Reusing the kept 4 MiB buffer for 3 MiB allocates nothing new.
        let c = ws.take(3 * mb);
        assert_eq!(ws.peak_bytes(), 6 << 20);
        ws.give(b);
        ws.give(c);
        assert_eq!(ws.kept_bytes(), 6 << 20);
        let d = ws.take(8 * mb);
        assert_eq!(ws.peak_bytes(), 14 << 20);
        ws.give(d);
        ws.trim(7 << 20);
        // Largest first: the 8 MiB buffer goes, 2 + 4 stay.
        assert_eq!(ws.kept_bytes(), 6 << 20);
        ws.trim(0);
        assert_eq!(ws.kept_bytes(), 0);
        ws.reset_peak();
        assert_eq!(ws.peak_bytes(), 0);
        let _ = ws.take(8);
        assert!(ws.idle_for() < std::time::Duration::from_secs(5));
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(ws.idle_for() >= std::time::Duration::from_millis(30));
    }

    #[test]
    fn layout_round_trip_and_reflection() {
        let chw: Vec<f32> = (0..2 * 3 * 4).map(|v| v as f32).collect();
        let m = Map::from_chw(&chw, 2, 3, 4);
        assert_eq!(m.px(1, 2), &[6.0, 18.0]);
        assert_eq!(m.to_chw(), chw);
        // ReflectionPad2d(2) of a row 0 1 2 3 is 2 1 | 0 1 2 3 | 2 1.
        let idx: Vec<usize> = (-2..6).map(|i| reflect(i, 4)).collect();
        assert_eq!(idx, [2, 1, 0, 1, 2, 3, 2, 1]);
        let p = pad(&m, 1, 2, 2, 1, PadMode::Reflect);
        assert_eq!((p.h, p.w), (6, 7));
        assert_eq!(p.px(0, 0), m.px(1, 2));
        assert_eq!(p.px(5, 6), m.px(0, 2));
        let z = pad(&m, 1, 0, 0, 1, PadMode::Zero);
        assert_eq!(z.px(0, 0), &[0.0, 0.0]);
        assert_eq!(z.px(1, 4), &[0.0, 0.0]);
        assert_eq!(z.px(1, 3), m.px(0, 3));
    }

    #[test]
    fn padded_upsampling_is_upsample_then_pad() {
        let chw: Vec<f32> = (0..2 * 3 * 5).map(|v| v as f32).collect();
        let m = Map::from_chw(&chw, 2, 3, 5);
        let ws = Workspace::default();
        for mode in [PadMode::Reflect, PadMode::Zero] {
            let want = pad(&upsample_nearest2(&m, &ws), 1, 1, 1, 1, mode);
            assert_eq!(upsample_nearest2_padded(&m, 1, mode, &ws), want);
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_to_f32(bf16_bits(1.0)), 1.0);
        // The vectorized conversion rounds as bf16_bits (normal numbers, ties, the tail).
        let v: Vec<f32> = (0..1000)
            .map(|i| (i as f32 - 500.0) * 1.000_977 + f32::from_bits(0x3F80_8000) * (i % 3) as f32)
            .chain([
                1.0 + 1.0 / 256.0,
                1.0 + 3.0 / 256.0,
                -2.5e-3,
                65504.0,
                f32::MAX,
            ])
            .collect();
        let fast = to_bf16(&v);
        for (x, b) in v.iter().zip(&fast) {
            assert_eq!(*b, bf16_bits(*x), "{x}");
        }
        // 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7: ties to even (1).
        assert_eq!(bf16_to_f32(bf16_bits(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(bf16_to_f32(bf16_bits(1.0 + 3.0 / 256.0)), 1.0 + 1.0 / 64.0);
        assert!(bf16_to_f32(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(half::bf16::from_f32(-3.3).to_bits(), bf16_bits(-3.3));
    }
}
